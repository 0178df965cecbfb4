//! One file per architecture: each maps its `config.json` to a [`DecoderSpec`]. Adding an
//! architecture is a file here and a line in [`ARCHITECTURES`].

mod falcon;
mod gemma3;
mod llama;
mod mistral;
mod mpt;
mod qwen2;
mod qwen3;

use super::config::{Activation, ConfigJson, DecoderSpec};
use super::ModelError;

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

/// The fields every Llama-like config shares, with Llama's defaults.
/// Qwen's rule: a sliding window only with `use_sliding_window`, in the layers from
/// `max_window_layers` on (or as `layer_types` says).
pub(super) fn qwen_sliding(cfg: &ConfigJson, spec: &mut DecoderSpec) -> Result<(), ModelError> {
    if cfg.bool_or("use_sliding_window", false)? {
        spec.sliding_window = cfg.opt_usize("sliding_window")?;
        if spec.sliding_window.is_some() {
            let first = cfg.usize_or("max_window_layers", spec.num_layers)?;
            spec.sliding_layers = cfg.sliding_layers(spec.num_layers, first)?;
        }
    }
    Ok(())
}

pub(super) fn llama_like(
    cfg: &ConfigJson,
    architecture: &'static str,
    default_theta: f64,
) -> Result<DecoderSpec, ModelError> {
    cfg.require_silu()?;
    let hidden_size = cfg.usize("hidden_size")?;
    let num_heads = cfg.usize("num_attention_heads")?;
    if num_heads == 0 || hidden_size % num_heads != 0 && cfg.get("head_dim").is_none() {
        return Err(ModelError::Config {
            file: cfg.file.to_path_buf(),
            key: "num_attention_heads".into(),
            message: format!("{num_heads} does not divide hidden_size {hidden_size}, and no head_dim is given"),
        });
    }
    let num_kv_heads = cfg.usize_or("num_key_value_heads", num_heads)?;
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(ModelError::Config {
            file: cfg.file.to_path_buf(),
            key: "num_key_value_heads".into(),
            message: format!("{num_kv_heads} must divide num_attention_heads {num_heads}"),
        });
    }
    let attention_bias = cfg.bool_or("attention_bias", false)?;
    Ok(DecoderSpec {
        architecture,
        vocab_size: cfg.usize("vocab_size")?,
        hidden_size,
        intermediate_size: cfg.usize("intermediate_size")?,
        num_layers: cfg.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim: cfg.usize_or("head_dim", hidden_size / num_heads)?,
        rms_norm_eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
        rope: cfg.rope(default_theta)?,
        max_position_embeddings: cfg.usize_or("max_position_embeddings", 4096)?,
        tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        mlp_bias: cfg.bool_or("mlp_bias", false)?,
        activation: Activation::Silu,
        qk_norm: false,
        sliding_window: None,
        sliding_layers: vec![false; cfg.usize("num_hidden_layers")?],
        rope_interleaved: false,
        rope_freq_factors: None,
        eos_token_ids: cfg.token_ids("eos_token_id")?,
        bos_token_id: cfg.token_ids("bos_token_id")?.first().copied(),
        gemma: None,
        gpt: None,
    })
}
