//! Opening a model as a command names it: a folder, `org/name` in the local Hugging Face cache,
//! a .gguf file or a fetchable model's id, on the device and in the type asked for.

use std::path::Path;

use candle_core::{DType, Device};

use super::arch::read_spec;
use super::config::GenerationConfig;
use super::error::ModelError;
use super::fetching::{fetch, hub};
use super::gguf;
use super::loaded::Model;
use super::network::decoder::Decoder;
use super::network::weights;
use super::text::tokenizer::Tokenizer;

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

/// A model as a command names it: where it is (resolved: a folder, org/name or a .gguf file),
/// where it runs and in what type.
#[derive(Debug, Clone)]
pub struct Choice {
    pub name: String,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Round the activations of GGML-block weights to int8 (integer products, as llama.cpp's
    /// Q8 activations): faster prefill, not exact ([`super::kernels::int8`]).
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

impl Model {
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
