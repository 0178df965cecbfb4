//! Loading Hugging Face checkpoints into the shared decoder, on CPU or CUDA.
//!
//! A model folder holds config.json, model.safetensors (or shards with
//! model.safetensors.index.json), tokenizer.json and optionally generation_config.json.
//! `--model org/name` is looked up in the local Hugging Face cache ([`hub`]).

pub mod adapter;
pub mod arch;
pub mod chat;
pub mod combine;
pub mod command;
pub mod config;
pub mod cpu_attention;
pub mod decoder;
#[cfg(feature = "hub-download")]
pub mod download;
pub mod fetch;
pub mod flash;
pub mod fused;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hub;
pub mod int8;
pub mod linear;
pub mod packed;
pub mod qpacked;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

pub use config::{DecoderSpec, GenerationConfig};
pub use decoder::{Cache, Decoder, Pass, RowKv};
pub use tokenizer::Tokenizer;

/// Everything that can go wrong opening a model, each naming the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: not valid JSON: {source}", file.display())]
    Json { file: PathBuf, source: serde_json::Error },
    #[error("{}: {key} {message}", file.display())]
    Config { file: PathBuf, key: String, message: String },
    #[error("{} is missing: {hint}", path.display())]
    MissingFile { path: PathBuf, hint: String },
    #[error("{}: {message}", file.display())]
    Weights { file: PathBuf, message: String },
    #[error("{files}: tensor {tensor} is missing; the checkpoint does not match its config.json (another architecture or size?)")]
    MissingTensor { files: String, tensor: String },
    #[error("{}: tensor {tensor} has shape {found:?}, but config.json ({why}) needs {expected:?}", file.display())]
    Shape { file: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize>, why: String },
    #[error("{}: {message}", file.display())]
    Tokenizer { file: PathBuf, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Where the model runs. `Auto` takes the first CUDA GPU when selfspec was built with the
/// `cuda` feature and one is present, else the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// The device, and a note when the choice could not be honoured.
    pub fn open(self) -> (Device, Option<String>) {
        match self {
            DeviceChoice::Cpu => (Device::Cpu, None),
            DeviceChoice::Auto | DeviceChoice::Cuda => {
                if !cfg!(feature = "cuda") {
                    let note = (self == DeviceChoice::Cuda).then(|| {
                        "this selfspec was built without CUDA (cargo build --features cuda); running on the CPU"
                            .to_string()
                    });
                    return (Device::Cpu, note);
                }
                match Device::new_cuda(0) {
                    Ok(d) => (d, None),
                    Err(e) => (Device::Cpu, Some(format!("no usable CUDA GPU ({e}); running on the CPU"))),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeChoice {
    /// bf16 on a GPU, f32 on the CPU.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl DTypeChoice {
    pub fn resolve(self, device: &Device) -> DType {
        match self {
            DTypeChoice::Auto if device.is_cuda() => DType::BF16,
            DTypeChoice::Auto | DTypeChoice::F32 => DType::F32,
            DTypeChoice::Bf16 => DType::BF16,
            DTypeChoice::F16 => DType::F16,
        }
    }
}

/// A loaded model: the decoder, its tokenizer and the ids that end generation.
/// A model as a command names it: where it is (resolved: a folder, org/name or a .gguf file),
/// where it runs and in what type.
#[derive(Debug, Clone)]
pub struct Choice {
    pub name: String,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Round the activations of GGML-block weights to int8 (integer products, as llama.cpp's
    /// Q8 activations): faster prefill, not exact ([`int8`]).
    pub int8: bool,
}

impl Choice {
    /// Loads it; a device that cannot be honoured is said on stderr (the CPU is used instead).
    pub fn load(&self) -> anyhow::Result<Model> {
        let (device, note) = self.device.open();
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        let mut model = Model::load(&self.name, self.dtype, &device)?;
        if self.int8 {
            if let Some(note) = model.set_int8_activations(true) {
                eprintln!("note: {note}");
            }
        }
        Ok(model)
    }
}

pub struct Model {
    pub dir: PathBuf,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub eos_token_ids: Vec<u32>,
}

impl Model {
    /// Int8 activations for every GGML-block weight (the projections and a quantized head), or
    /// exact ones again. Returns a note when nothing or not all of it can follow: no such
    /// weight (a dense or GPU model), or a CPU without AVX-512 VNNI (plain loops, slower).
    pub fn set_int8_activations(&mut self, on: bool) -> Option<String> {
        let n = self.decoder.set_int8_activations(on);
        if !on {
            return None;
        }
        if n == 0 {
            return Some(
                "--int8-activations applies to GGML-block weights (a .gguf file's Q4_0…Q6_K) on the CPU; \
                 this model has none, so its products stay exact"
                    .into(),
            );
        }
        (int8::IntKernel::detect() == int8::IntKernel::Portable).then(|| {
            "this CPU has no AVX-512 VNNI: the int8 products run in plain loops, slower than the exact ones".into()
        })
    }

    /// Opens `model`: a folder, `org/name` in the local Hugging Face cache, or a .gguf file
    /// (quantized; its activations are f32 whatever `dtype` says).
    pub fn load(model: &str, dtype: DTypeChoice, device: &Device) -> Result<Model, ModelError> {
        let path = Path::new(model);
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return gguf::load(path, device, gguf::Mode::Quantized);
        }
        let dir = hub::resolve(model)?;
        let config_path = dir.join("config.json");
        let spec = read_spec(&config_path)?;
        let generation = GenerationConfig::load(&dir.join("generation_config.json"))?;
        let tokenizer = Tokenizer::load(&dir)?;
        let weights = weights::Weights::open(&dir, dtype.resolve(device), device)?;
        let eos_token_ids = end_ids(&generation, || Ok(spec.eos_token_ids.clone()))?;
        let decoder = Decoder::load(spec, &weights)?;
        Ok(Model { dir, decoder, tokenizer, eos_token_ids })
    }
}

/// The tokenizer of `model` (a folder, `org/name` in the local cache, or a .gguf file) without
/// loading its weights.
pub fn load_tokenizer(model: &str) -> Result<Tokenizer, ModelError> {
    let path = Path::new(model);
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return gguf::load_tokenizer(path);
    }
    Tokenizer::load(&hub::resolve(model)?)
}

/// The tokenizer of `model` and the ids that end its text (generation_config.json, else
/// config.json; a GGUF file's metadata), without its weights.
pub fn load_text_side(model: &str) -> Result<(Tokenizer, Vec<u32>), ModelError> {
    let path = Path::new(model);
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return gguf::load_text_side(path);
    }
    let dir = hub::resolve(model)?;
    let generation = GenerationConfig::load(&dir.join("generation_config.json"))?;
    let eos = end_ids(&generation, || Ok(read_spec(&dir.join("config.json"))?.eos_token_ids))?;
    Ok((Tokenizer::load(&dir)?, eos))
}

/// The ids that end generation in a model folder: generation_config.json's, else config.json's
/// (`from_config`, asked only then).
fn end_ids(
    generation: &GenerationConfig,
    from_config: impl FnOnce() -> Result<Vec<u32>, ModelError>,
) -> Result<Vec<u32>, ModelError> {
    match &generation.eos_token_ids {
        Some(ids) => Ok(ids.clone()),
        None => from_config(),
    }
}

/// What a model name given by the user means: a fetchable model's id (`gemma3-270m`, not an
/// existing path) is its fetched file, with its terms shown once on stderr; anything else is
/// passed on as given. An id not yet fetched is an error that says how to fetch it.
pub fn resolve_name(name: &str, cache: &Path) -> anyhow::Result<String> {
    let Some(model) = fetch::find(name.trim()).filter(|_| !Path::new(name).exists()) else {
        return Ok(name.to_string());
    };
    match model.installed(cache) {
        Some(p) => {
            if let Some(notice) = model.terms_notice_once(cache) {
                eprintln!("note: {notice}");
            }
            Ok(p.display().to_string())
        }
        None => anyhow::bail!(
            "{} ({}) is not fetched yet: run `selfspec model fetch {}` ({} MB)",
            model.id,
            model.name,
            model.id,
            model.gguf_bytes / 1_000_000
        ),
    }
}

/// The model to use when a command names none: the configuration's `model`, else the default
/// model if it has been fetched into `cache`; an error that says how to get one otherwise.
pub fn default_model(configured: Option<&str>, cache: &Path) -> anyhow::Result<String> {
    if let Some(m) = configured.filter(|m| !m.trim().is_empty()) {
        return resolve_name(m, cache);
    }
    match fetch::DEFAULT.installed(cache) {
        Some(p) => Ok(p.display().to_string()),
        None => anyhow::bail!(
            "no model named: pass --model (a model folder, org/name or .gguf file), set `model:` in the \
             configuration, or run `selfspec model fetch` to get the default model, {} ({} MB)",
            fetch::DEFAULT.name,
            fetch::DEFAULT.gguf_bytes / 1_000_000
        ),
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
    arch::spec(&config::ConfigJson { value: &value, file: path })
}
