//! One file per architecture: each maps its `config.json` to a [`DecoderSpec`]. Adding an
//! architecture is a file here and a line in [`ARCHITECTURES`].

mod falcon;
mod gemma3;
mod llama;
mod llama_like;
mod mistral;
mod mpt;
mod qwen2;
mod qwen3;

use std::path::Path;

use super::config::{ConfigJson, DecoderSpec};
use super::error::ModelError;

type SpecFn = fn(&ConfigJson) -> Result<DecoderSpec, ModelError>;

/// `model_type` in config.json → its mapping.
pub const ARCHITECTURES: [(&str, SpecFn); 8] = [
    ("llama", llama::spec),
    ("mistral", mistral::spec),
    ("qwen2", qwen2::spec),
    ("qwen3", qwen3::spec),
    ("gemma3_text", gemma3::spec),
    ("gemma3", gemma3::spec),
    ("mpt", mpt::spec),
    ("falcon", falcon::spec),
];

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    let model_type = cfg.str_or("model_type", "")?;
    match ARCHITECTURES.iter().find(|(name, _)| *name == model_type) {
        Some((_, f)) => f(cfg),
        None => {
            let known: Vec<&str> = ARCHITECTURES.iter().map(|(n, _)| *n).collect();
            Err(ModelError::Config {
                file: cfg.file.to_path_buf(),
                key: "model_type".into(),
                message: if model_type.is_empty() {
                    format!("is missing; selfspec supports {}", known.join(", "))
                } else {
                    format!("\"{model_type}\" is not supported; selfspec supports {}", known.join(", "))
                },
            })
        }
    }
}

/// The decoder description of config.json at `path`.
pub fn read_spec(path: &Path) -> Result<DecoderSpec, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::MissingFile {
            path: path.to_path_buf(),
            hint: "every Hugging Face model folder has a config.json".into(),
        },
        _ => ModelError::Io { file: path.to_path_buf(), source: e },
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Json { file: path.to_path_buf(), source: e })?;
    if !value.is_object() {
        return Err(ModelError::Config {
            file: path.to_path_buf(),
            key: "(top level)".into(),
            message: "must be a JSON object".into(),
        });
    }
    spec(&super::config::ConfigJson { value: &value, file: path })
}
