//! LoRA adapters in PEFT's format: `adapter_config.json` (PEFT's field names) and
//! `adapter_model.safetensors` with PEFT's tensor names
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, `[r, in]`, and `lora_B`,
//! `[out, r]`). Adapters PEFT saved load here, and ours load in PEFT.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::loaded::Model;
use crate::model::network::linear::LoraAdapter;

/// The projections LoRA can target, by their last name component (PEFT's `target_modules`), in
/// the Llama-style families' names; [`FAMILY_TARGETS`] gives MPT's and Falcon's.
pub const ALL_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// Each of [`ALL_TARGETS`] in MPT's and Falcon's names: their one fused q/k/v projection serves
/// q_proj, k_proj and v_proj, and neither has a gate.
pub const FAMILY_TARGETS: [(&str, [&str; 2]); 7] = [
    ("q_proj", ["Wqkv", "query_key_value"]),
    ("k_proj", ["Wqkv", "query_key_value"]),
    ("v_proj", ["Wqkv", "query_key_value"]),
    ("o_proj", ["out_proj", "dense"]),
    ("gate_proj", ["", ""]),
    ("up_proj", ["up_proj", "dense_h_to_4h"]),
    ("down_proj", ["down_proj", "dense_4h_to_h"]),
];

/// Every module name `target_modules` may hold: the Llama-style names and MPT's and Falcon's.
pub fn known_targets() -> Vec<&'static str> {
    let mut all: Vec<&str> = ALL_TARGETS.to_vec();
    for (_, names) in FAMILY_TARGETS {
        for n in names {
            if !n.is_empty() && !all.contains(&n) {
                all.push(n);
            }
        }
    }
    all
}

/// `targets` (selfspec's config: Llama's names, or the model's own) as the module names of the
/// model `spec` describes, each once, in order: what PEFT's `target_modules` must say for it.
pub fn model_targets(targets: &[String], spec: &crate::model::config::DecoderSpec) -> Vec<String> {
    let family = spec.gpt.as_ref().map(|g| g.family as usize);
    let mut out: Vec<String> = Vec::new();
    for t in targets {
        let name = match (family, FAMILY_TARGETS.iter().find(|(llama, _)| llama == t)) {
            (Some(f), Some((_, names))) => names[f].to_string(),
            _ => t.clone(),
        };
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{}: {message}", path.display())]
    Bad { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

fn bad(path: &Path, message: impl Into<String>) -> AdapterError {
    AdapterError::Bad { path: path.to_path_buf(), message: message.into() }
}

/// `target_modules`: a list of module names, or PEFT's `"all-linear"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    List(Vec<String>),
    Named(String),
}

impl Targets {
    pub fn matches(&self, linear: &str) -> bool {
        let last = linear.rsplit('.').next().unwrap_or(linear);
        match self {
            Targets::List(names) => {
                names.iter().any(|n| n == last || linear.ends_with(&format!(".{n}")) || n == linear)
            }
            Targets::Named(s) if s == "all-linear" => known_targets().contains(&last),
            Targets::Named(s) => s == last,
        }
    }
}

/// The keys of adapter_config.json this program reads and writes; PEFT's other keys are kept as
/// they were when an adapter is saved again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(default = "lora")]
    pub peft_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Targets,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default = "none")]
    pub bias: String,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn lora() -> String {
    "LORA".into()
}

fn none() -> String {
    "none".into()
}

impl AdapterConfig {
    pub fn new(r: usize, lora_alpha: f64, lora_dropout: f64, targets: Vec<String>, base: &str) -> AdapterConfig {
        let mut other = serde_json::Map::new();
        for (k, v) in [
            ("inference_mode", serde_json::json!(true)),
            ("init_lora_weights", serde_json::json!(true)),
            ("modules_to_save", serde_json::Value::Null),
            ("layers_to_transform", serde_json::Value::Null),
            ("rank_pattern", serde_json::json!({})),
            ("alpha_pattern", serde_json::json!({})),
            ("revision", serde_json::Value::Null),
        ] {
            other.insert(k.into(), v);
        }
        AdapterConfig {
            peft_type: lora(),
            r,
            lora_alpha,
            lora_dropout,
            target_modules: Targets::List(targets),
            use_rslora: false,
            use_dora: false,
            fan_in_fan_out: false,
            bias: none(),
            base_model_name_or_path: Some(base.to_string()),
            task_type: Some("CAUSAL_LM".into()),
            other,
        }
    }

    /// PEFT's scaling: alpha / r, or alpha / √r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    pub fn read(dir: &Path) -> Result<AdapterConfig, AdapterError> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => bad(
                &path,
                "missing: an adapter folder holds adapter_config.json and adapter_model.safetensors (PEFT's save_pretrained)",
            ),
            _ => AdapterError::Io { path: path.clone(), source: e },
        })?;
        let cfg: AdapterConfig = serde_json::from_str(&text).map_err(|e| bad(&path, format!("{e}")))?;
        if cfg.peft_type != "LORA" {
            return Err(bad(&path, format!("peft_type {}: only LORA adapters are supported", cfg.peft_type)));
        }
        if cfg.use_dora {
            return Err(bad(&path, "use_dora: DoRA adapters are not supported"));
        }
        if cfg.fan_in_fan_out {
            return Err(bad(&path, "fan_in_fan_out: only Linear (not Conv1D) layers are supported"));
        }
        if cfg.bias != "none" {
            return Err(bad(&path, format!("bias {:?}: only bias \"none\" is supported", cfg.bias)));
        }
        if cfg.r == 0 {
            return Err(bad(&path, "r must be at least 1"));
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if cfg.other.get(key).and_then(|v| v.as_object()).is_some_and(|m| !m.is_empty()) {
                return Err(bad(&path, format!("{key}: per-module ranks and alphas are not supported")));
            }
        }
        if cfg.other.get("modules_to_save").is_some_and(|v| !v.is_null()) {
            return Err(bad(&path, "modules_to_save: fully trained extra modules are not supported"));
        }
        Ok(cfg)
    }
}

/// The file of an adapter folder that holds its tensors (PEFT's name; adapter_config.json beside it).
pub const WEIGHTS: &str = "adapter_model.safetensors";

/// Whether `dir` holds a saved adapter's tensors.
pub fn saved(dir: &Path) -> bool {
    dir.join(WEIGHTS).exists()
}

/// PEFT's tensor name of a projection's A or B.
pub fn tensor_name(linear: &str, which: char) -> String {
    format!("base_model.model.{linear}.lora_{which}.weight")
}

/// Loads the adapter in `dir` onto `model` under `name` (enabled). Every targeted projection
/// must have both tensors with the right shapes; a tensor for anything else is an error.
pub fn load(model: &mut Model, dir: &Path, name: &str) -> Result<AdapterConfig, AdapterError> {
    let cfg = AdapterConfig::read(dir)?;
    let path = dir.join(WEIGHTS);
    if !path.exists() {
        let bin = dir.join("adapter_model.bin");
        let hint = if bin.exists() {
            "only adapter_model.bin is there: save it with safe_serialization=True (PEFT's default)"
        } else {
            "missing"
        };
        return Err(bad(&path, hint));
    }
    let device = model.decoder.device().clone();
    let dtype = model.decoder.dtype();
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(&path, &device).map_err(|e| bad(&path, format!("cannot read: {e}")))?;
    let mut used = 0;
    let scale = cfg.scale();
    let gate = crate::model::network::linear::new_gate();
    for (linear_name, linear) in model.decoder.linears_mut() {
        if !cfg.target_modules.matches(&linear_name) {
            continue;
        }
        let (inf, outf) = linear.features().map_err(|e| bad(&path, e.to_string()))?;
        let get = |which: char, shape: (usize, usize)| -> Result<Tensor, AdapterError> {
            let key = tensor_name(&linear_name, which);
            let t = tensors
                .get(&key)
                .ok_or_else(|| bad(&path, format!("tensor {key} is missing (target_modules names {linear_name})")))?;
            if t.dims() != [shape.0, shape.1] {
                return Err(bad(
                    &path,
                    format!(
                        "tensor {key} has shape {:?}, expected {:?} (r {}, the base model's sizes)",
                        t.dims(),
                        [shape.0, shape.1],
                        cfg.r
                    ),
                ));
            }
            let finite = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| bad(&path, e.to_string()))?
                .iter()
                .all(|x| x.is_finite());
            if !finite {
                return Err(bad(
                    &path,
                    format!("tensor {key} holds NaN or infinite values (a training run that diverged?)"),
                ));
            }
            t.to_dtype(if dtype == DType::F32 { DType::F32 } else { dtype }).map_err(|e| bad(&path, e.to_string()))
        };
        let a = get('A', (cfg.r, inf))?;
        let b = get('B', (outf, cfg.r))?;
        used += 2;
        linear.adapters.retain(|x| x.name != name);
        linear.adapters.push(LoraAdapter {
            name: name.to_string(),
            a,
            b,
            scale,
            enabled: true,
            dropout: None,
            gate: gate.clone(),
        });
    }
    if used == 0 {
        return Err(bad(&path, "target_modules matches no projection of this model"));
    }
    if used != tensors.len() {
        let extra: Vec<&String> = tensors
            .keys()
            .filter(|k| {
                !model
                    .decoder
                    .linears_mut()
                    .iter()
                    .any(|(n, _)| **k == tensor_name(n, 'A') || **k == tensor_name(n, 'B'))
            })
            .take(3)
            .collect();
        return Err(bad(&path, format!("tensors for modules this program cannot adapt: {extra:?}")));
    }
    Ok(cfg)
}

/// Writes `cfg` and the named adapter's tensors of `model` to `dir` (created; files written
/// atomically).
pub fn save(model: &mut Model, name: &str, cfg: &AdapterConfig, dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (linear_name, linear) in model.decoder.linears_mut() {
        if let Some(a) = linear.adapters.iter().find(|a| a.name == name) {
            out.insert(tensor_name(&linear_name, 'A'), a.a.to_dtype(DType::F32)?.contiguous()?);
            out.insert(tensor_name(&linear_name, 'B'), a.b.to_dtype(DType::F32)?.contiguous()?);
        }
    }
    anyhow::ensure!(!out.is_empty(), "no adapter named {name} is loaded");
    let tmp = dir.join(format!("{WEIGHTS}.partial"));
    candle_core::safetensors::save(&out, &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let file = std::fs::File::open(&tmp)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(WEIGHTS))?;
    crate::fsutil::atomic_write(&dir.join("adapter_config.json"), serde_json::to_string_pretty(cfg)?.as_bytes())?;
    Ok(())
}

/// Writes the model in `base_dir` with the adapter in `adapter_dir` merged into its weights
/// (W + scale·B·A, computed in f32 and stored in each weight's own dtype) as a new model folder
/// `out`: model.safetensors plus the base folder's other files (config, tokenizer, …).
pub fn merge(base_dir: &Path, adapter_dir: &Path, out: &Path) -> anyhow::Result<usize> {
    use anyhow::Context;
    let cfg = AdapterConfig::read(adapter_dir)?;
    let apath = adapter_dir.join(WEIGHTS);
    let lora = candle_core::safetensors::load(&apath, &candle_core::Device::Cpu)
        .map_err(|e| bad(&apath, format!("cannot read: {e}")))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(base_dir)
        .with_context(|| format!("cannot list {}", base_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "{}: no .safetensors weights to merge into", base_dir.display());
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        weights.extend(
            candle_core::safetensors::load(f, &candle_core::Device::Cpu)
                .with_context(|| format!("cannot read {}", f.display()))?,
        );
    }
    let scale = cfg.scale();
    let mut merged = 0;
    for key in lora.keys().filter(|k| k.ends_with(".lora_A.weight")) {
        let linear = key.trim_start_matches("base_model.model.").trim_end_matches(".lora_A.weight");
        let b_key = tensor_name(linear, 'B');
        let b = lora.get(&b_key).ok_or_else(|| bad(&apath, format!("tensor {b_key} is missing")))?;
        let w_key = format!("{linear}.weight");
        let w = weights.get(&w_key).ok_or_else(|| {
            bad(
                &apath,
                format!("{w_key} is not in the base model {}: is this adapter for another model?", base_dir.display()),
            )
        })?;
        let delta = (b.to_dtype(DType::F32)?.matmul(&lora[key].to_dtype(DType::F32)?)? * scale)?;
        anyhow::ensure!(
            delta.dims() == w.dims(),
            "{w_key}: the adapter's update is {:?}, the weight {:?}",
            delta.dims(),
            w.dims()
        );
        let new = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
        weights.insert(w_key, new);
        merged += 1;
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for entry in std::fs::read_dir(base_dir)? {
        let p = entry?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if p.is_file() && !name.ends_with(".safetensors") && name != "model.safetensors.index.json" {
            std::fs::copy(&p, out.join(&name)).with_context(|| format!("cannot copy {}", p.display()))?;
        }
    }
    let tmp = out.join("model.safetensors.partial");
    candle_core::safetensors::save(&weights, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, out.join("model.safetensors"))?;
    Ok(merged)
}

/// An adapter as a command names it: `DIR` or `NAME=DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub dir: PathBuf,
}

impl Spec {
    /// Parses `[NAME=]DIR`. Without a name the adapter goes by its folder's name, or, for a run's
    /// `adapter/` folder, by the run's (runs/train-x/adapter is `train-x`).
    pub fn parse(spec: &str) -> Spec {
        let (name, dir) = match spec.split_once('=') {
            Some((n, d)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), PathBuf::from(d)),
            _ => (None, PathBuf::from(spec)),
        };
        let name = name.unwrap_or_else(|| {
            let own = dir.file_name().map_or(spec.to_string(), |n| n.to_string_lossy().to_string());
            let parent = dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().to_string());
            match parent {
                Some(p) if own == "adapter" => p,
                _ => own,
            }
        });
        Spec { name, dir }
    }
}

/// Loads each adapter onto `model` under its name; two adapters of one name are refused.
pub fn load_all(model: &mut Model, specs: &[Spec]) -> anyhow::Result<()> {
    for (i, s) in specs.iter().enumerate() {
        anyhow::ensure!(
            !specs[..i].iter().any(|o| o.name == s.name),
            "two adapters are named {:?}; name them apart with NAME=DIR",
            s.name
        );
        load(model, &s.dir, &s.name)?;
    }
    Ok(())
}

/// Enables only the adapter named `name` (None: the base alone).
pub fn enable_only(model: &mut Model, name: Option<&str>) {
    for (_, linear) in model.decoder.linears_mut() {
        for a in &mut linear.adapters {
            a.enabled = name == Some(a.name.as_str());
        }
    }
}

#[cfg(test)]
mod spec_tests {
    use super::*;

    #[test]
    fn an_adapter_is_named_one_way() {
        assert_eq!(Spec::parse("a=x/y").name, "a");
        assert_eq!(Spec::parse("runs/train-1/adapter").name, "train-1");
        assert_eq!(Spec::parse("loras/math").name, "math");
        assert_eq!(Spec::parse("/abs/a=b/c").dir, PathBuf::from("/abs/a=b/c"));
    }
}
