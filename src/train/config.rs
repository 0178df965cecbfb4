//! The training settings ([`TrainConfig`], under Hugging Face's and PEFT's names) and where an
//! adapter starts ([`Init`]).

use serde::{Deserialize, Serialize};

use crate::model::adapters::adapter;
use crate::model::Model;

/// The training settings, under Hugging Face's and PEFT's names (`train:` in config.yaml, or
/// `--config FILE`). Defaults are the paper's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub learning_rate: f64,
    pub num_train_epochs: usize,
    /// Stop after this many optimiser steps (null: the epochs decide).
    pub max_steps: Option<usize>,
    pub per_device_train_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub warmup_steps: usize,
    /// The warm-up as a share of the run's steps (transformers' name; rounded up): when set,
    /// it is used instead of warmup_steps.
    pub warmup_ratio: Option<f64>,
    /// `cosine` or `constant` (both after the linear warm-up).
    pub lr_scheduler_type: Schedule,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// A checkpoint every this many steps (and at the end, and on SIGTERM).
    pub save_steps: usize,
    pub seed: u64,
    /// Longer examples are cut to this many tokens (and counted).
    pub max_seq_length: usize,
    /// How the adapter starts: `standard` (PEFT's), `random:SIGMA`, `from:DIR`, `task:NAME` or
    /// `reptile[:OUTER[:INNER]]`.
    pub init: Init,
    /// Keep only each block's input in the forward and run each block again in the backward
    /// (transformers' name): far less memory for long rows, one more forward of time. The loss
    /// and gradients are the same either way.
    pub gradient_checkpointing: bool,
}

/// How a new adapter starts (`init:` in the training settings; `train --init-from DIR` is
/// `from:DIR`). Recorded in the run's config as its string.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Init {
    /// PEFT's default: A kaiming-uniform (±1/√in), B zero, so the adapter starts as the identity.
    #[default]
    Standard,
    /// A and B both drawn from N(0, σ²) (`random:σ`; `random` is σ = 0.01): the adapter starts
    /// away from the identity.
    Random(f64),
    /// Another adapter's A and B — a seed expert's, say — with its r, lora_alpha and targets, and
    /// a fresh optimiser.
    From(std::path::PathBuf),
    /// The expert of task NAME as the start: a standard adapter trained first, with the run's
    /// settings, on the data's examples whose `task` is NAME (see [`super::warm`]).
    Task(String),
    /// Meta-learned: first-order Reptile over the data's tasks for `outer` steps of `inner`
    /// AdamW steps each (see [`super::warm`]).
    Reptile { outer: usize, inner: usize },
}

/// Reptile's outer and inner steps when `reptile` names neither.
pub const REPTILE_DEFAULT: (usize, usize) = (20, 4);

impl TryFrom<String> for Init {
    type Error = String;

    fn try_from(s: String) -> Result<Init, String> {
        match s.split_once(':') {
            None if s == "standard" => Ok(Init::Standard),
            None if s == "random" => Ok(Init::Random(0.01)),
            Some(("random", sigma)) => match sigma.trim().parse::<f64>() {
                Ok(x) if x > 0.0 && x.is_finite() => Ok(Init::Random(x)),
                _ => Err(format!("init {s:?}: random:SIGMA takes a positive number")),
            },
            Some(("from", dir)) if !dir.trim().is_empty() => Ok(Init::From(dir.trim().into())),
            Some(("task", name)) if !name.trim().is_empty() => Ok(Init::Task(name.trim().into())),
            None if s == "reptile" => Ok(Init::Reptile { outer: REPTILE_DEFAULT.0, inner: REPTILE_DEFAULT.1 }),
            Some(("reptile", steps)) => {
                let mut parts = steps.split(':').map(|x| x.trim().parse::<usize>());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Ok(outer)), None, None) if outer > 0 => Ok(Init::Reptile { outer, inner: REPTILE_DEFAULT.1 }),
                    (Some(Ok(outer)), Some(Ok(inner)), None) if outer > 0 && inner > 0 => {
                        Ok(Init::Reptile { outer, inner })
                    }
                    _ => Err(format!("init {s:?}: reptile:OUTER[:INNER] takes step counts of at least 1")),
                }
            }
            _ => Err(format!(
                "init {s:?}: choose standard, random[:SIGMA], from:ADAPTER_DIR, task:NAME or reptile[:OUTER[:INNER]]"
            )),
        }
    }
}

impl From<Init> for String {
    fn from(i: Init) -> String {
        match i {
            Init::Standard => "standard".into(),
            Init::Random(x) => format!("random:{x}"),
            Init::From(d) => format!("from:{}", d.display()),
            Init::Task(name) => format!("task:{name}"),
            Init::Reptile { outer, inner } => format!("reptile:{outer}:{inner}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Cosine,
    Constant,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: adapter::ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
            learning_rate: 3e-4,
            num_train_epochs: 3,
            max_steps: None,
            per_device_train_batch_size: 4,
            gradient_accumulation_steps: 8,
            warmup_steps: 10,
            warmup_ratio: None,
            lr_scheduler_type: Schedule::Cosine,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            save_steps: 50,
            seed: 42,
            max_seq_length: 1024,
            init: Init::Standard,
            gradient_checkpointing: false,
        }
    }
}

/// The length rows are cut to: `max_seq_length`, or the model's context when that is shorter
/// (a longer row has positions the model was never trained to, and its attention scores grow
/// with the square of its length, so a large setting never takes more than the context does).
pub fn row_length(model: &Model, max_seq_length: usize) -> usize {
    match model.decoder.spec.max_position_embeddings {
        0 => max_seq_length,
        context => max_seq_length.min(context),
    }
}

/// The most optimiser steps a run may plan (its epochs × steps per epoch, or max_steps): the
/// plan is held in memory, about 300 bytes a step at the defaults.
pub const MAX_STEPS: usize = 100_000;

impl TrainConfig {
    /// Every setting within its range; the error names the key, the value and the range.
    pub fn check(&self) -> Result<(), String> {
        for (name, v, max) in [
            ("r", self.r, 1024),
            ("num_train_epochs", self.num_train_epochs, 10_000),
            ("per_device_train_batch_size", self.per_device_train_batch_size, 4096),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps, 4096),
            ("save_steps", self.save_steps, MAX_STEPS),
            ("max_seq_length", self.max_seq_length, 1 << 17),
            ("max_steps", self.max_steps.unwrap_or(1), MAX_STEPS),
        ] {
            if !(1..=max).contains(&v) {
                let null = if name == "max_steps" { " (or null: the epochs decide)" } else { "" };
                return Err(format!("{name}: {v} is out of range; it takes 1 to {max}{null}"));
            }
        }
        if self.warmup_steps > MAX_STEPS {
            return Err(format!("warmup_steps: {} is out of range; it takes 0 to {MAX_STEPS}", self.warmup_steps));
        }
        if let Some(r) = self.warmup_ratio {
            if !(0.0..1.0).contains(&r) {
                return Err(crate::bounds::out_of_range("warmup_ratio", r, "a share from 0 to below 1 (or null)"));
            }
        }
        if let Init::Reptile { outer, inner } = self.init {
            if outer > 10_000 || inner > 1_000 {
                return Err(format!(
                    "init reptile:{outer}:{inner} is out of range; it takes at most 10000 outer steps of 1000"
                ));
            }
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err("lora_dropout must be in [0, 1)".into());
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return Err("lora_alpha must be > 0".into());
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return Err("max_grad_norm must be ≥ 0 (0 turns clipping off)".into());
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err("weight_decay must be ≥ 0".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return Err(crate::bounds::out_of_range(
                "learning_rate",
                self.learning_rate,
                "a number above 0 and at most 1",
            ));
        }
        if let Init::Random(sigma) = self.init {
            if sigma > 10.0 {
                return Err(format!("init random:{sigma} is out of range; σ takes a number above 0 and at most 10"));
            }
        }
        if self.target_modules.is_empty() {
            return Err("target_modules names no module".into());
        }
        let known = adapter::known_targets();
        if let Some(bad) = self.target_modules.iter().find(|t| !known.contains(&t.as_str())) {
            return Err(format!(
                "target_modules: unknown module {bad:?}; choose from {} (MPT's and Falcon's own names, or the \
                 Llama names, which mean the same projections in every family)",
                known.join(", ")
            ));
        }
        Ok(())
    }

    /// The warm-up steps of a run of `total` steps: `ceil(warmup_ratio · total)` when the ratio
    /// is set, else warmup_steps.
    pub fn warmup(&self, total: usize) -> usize {
        match self.warmup_ratio {
            Some(r) => (r * total as f64).ceil() as usize,
            None => self.warmup_steps,
        }
    }

    /// The learning rate of optimiser step `step` (0-based) of `total`: transformers'
    /// warm-up-then-cosine (or constant) schedule.
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        let warm = self.warmup(total);
        let factor = if step < warm {
            step as f64 / warm.max(1) as f64
        } else {
            match self.lr_scheduler_type {
                Schedule::Constant => 1.0,
                Schedule::Cosine => {
                    let progress = (step - warm) as f64 / total.saturating_sub(warm).max(1) as f64;
                    (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
                }
            }
        };
        self.learning_rate * factor
    }
}
