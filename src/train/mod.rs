//! Stage 4: LoRA tuning of the frozen base model on the generated samples.
//!
//! [`Trainer`] owns the adapter's A and B matrices (as `Var`s attached to the model's linear
//! layers) and AdamW's moments; [`Trainer::step`] runs the micro-batches of one optimiser step
//! through the training pass (differentiable ops only), accumulates gradients, clips them and
//! applies AdamW — the same arithmetic as a PyTorch loop over a PEFT model (tests/lora.rs checks
//! the losses against PEFT's).

pub mod command;
pub mod data;
pub mod follow;
pub mod lmc;
pub mod run;
pub mod warm;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::adapter;
pub use crate::model::adapter::{AdapterConfig, Targets};
use crate::model::linear::{Dropout, LoraAdapter};
use crate::model::{Model, Pass};

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
    /// settings, on the data's examples whose `task` is NAME (see [`warm`]).
    Task(String),
    /// Meta-learned: first-order Reptile over the data's tasks for `outer` steps of `inner`
    /// AdamW steps each (see [`warm`]).
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

/// What a training run will do, said before it starts (the CLI, the Train tab, a sweep's plan):
/// its size, its schedule, the memory it should take, and what looks wrong with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub examples: usize,
    /// Examples per optimiser step (micro-batch × accumulation).
    pub batch: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub warmup_steps: usize,
    pub learning_rate: f64,
    /// Peak resident memory the step should need, in MB (an estimate from the model's shape,
    /// the longest micro-batch and whether blocks are checkpointed; within ~25 % on SmolLM2).
    pub memory_mb: f64,
    /// The run's estimated duration in seconds: [`Cost`] over every step's micro-batches, at the
    /// rate of a probe step on this machine ([`Trainer::probe`]); within ~20 % on SmolLM2.
    #[serde(default)]
    pub seconds: Option<f64>,
    /// The frozen base's GGML block type(s) (QLoRA), as the run records it; None: dense.
    #[serde(default)]
    pub qlora: Option<String>,
    /// What to change, one sentence each: every step inside the warm-up, less data than one
    /// step's batch, more memory than the machine has.
    pub warnings: Vec<String>,
}

/// Bytes of activations a block keeps for its backward, per token (f32): the fused ops' one
/// output each — about eight hidden-wide tensors, two key/value-wide and three MLP-wide (the
/// attention reads the projections token-major, so no head-major copies are kept).
fn block_bytes_per_token(s: &crate::model::config::DecoderSpec) -> f64 {
    let kv = (s.num_kv_heads * s.head_dim) as f64;
    4.0 * (8.0 * s.hidden_size as f64 + 2.0 * kv + 3.0 * s.intermediate_size as f64)
}

impl Plan {
    /// The plan of a run over `examples` examples whose longest micro-batch holds `tokens` tokens
    /// (rows × the longest row), with `total_steps` steps of which `steps_per_epoch` make an
    /// epoch; `available_mb` is the memory the machine has (0: unknown).
    pub fn new(
        model: &Model,
        config: &TrainConfig,
        examples: usize,
        tokens: usize,
        (total_steps, steps_per_epoch): (usize, usize),
        available_mb: f64,
        seconds: Option<f64>,
    ) -> Plan {
        let s = &model.decoder.spec;
        let per_block = block_bytes_per_token(s) * tokens as f64;
        let layers = s.num_layers as f64;
        let kept = if config.gradient_checkpointing {
            // Each block's input, and one block's activations while it is run again.
            4.0 * s.hidden_size as f64 * tokens as f64 * layers + 2.0 * per_block
        } else {
            per_block * layers
        };
        // A step's transient tensors and the allocator's slack, measured on SmolLM2.
        let bytes = model.decoder.step_weight_bytes() as f64 + 1.15 * kept + 200e6;
        let memory_mb = bytes / 1e6;
        let warmup_steps = config.warmup(total_steps);
        let batch = config.per_device_train_batch_size * config.gradient_accumulation_steps;
        let warnings = Plan::warnings(config, examples, total_steps, memory_mb, available_mb);
        Plan {
            examples,
            batch,
            steps_per_epoch,
            total_steps,
            warmup_steps,
            learning_rate: config.learning_rate,
            memory_mb,
            seconds,
            qlora: crate::train::run::base_record(model),
            warnings,
        }
    }

    /// What to change before a run of `examples` examples and `total_steps` steps starts: every
    /// step inside the warm-up, less data than one step's batch, and (with a memory estimate
    /// and the memory available, both in MB; 0 where unknown) more memory than there is.
    pub fn warnings(
        config: &TrainConfig,
        examples: usize,
        total_steps: usize,
        memory_mb: f64,
        available_mb: f64,
    ) -> Vec<String> {
        let batch = config.per_device_train_batch_size * config.gradient_accumulation_steps;
        let mut warnings = Vec::new();
        if examples < batch {
            let fit = (examples / config.per_device_train_batch_size.max(1)).max(1);
            warnings.push(format!(
                "the data ({examples} examples) is smaller than one step's batch ({} × {} = {batch}): each epoch \
                 is one step; set gradient_accumulation_steps: {} (or a smaller per_device_train_batch_size) for \
                 more, smaller steps",
                config.per_device_train_batch_size,
                config.gradient_accumulation_steps,
                (fit / 4).max(1)
            ));
        }
        warnings.extend(Plan::warmup_warning(config, total_steps));
        if available_mb > 0.0 && memory_mb > 0.9 * available_mb {
            let advice = if config.gradient_checkpointing {
                "lower per_device_train_batch_size (raise gradient_accumulation_steps to keep the batch) or max_seq_length"
            } else {
                "set gradient_checkpointing: true (one more forward of time, a fraction of the memory), or lower \
                 per_device_train_batch_size"
            };
            warnings.push(format!(
                "the step should need about {memory_mb:.0} MB and the machine has {available_mb:.0} MB available: {advice}"
            ));
        }
        warnings
    }

    /// The warning when every one of a run's `total_steps` steps falls inside its warm-up.
    pub fn warmup_warning(config: &TrainConfig, total_steps: usize) -> Option<String> {
        let warmup_steps = config.warmup(total_steps);
        (total_steps > 0 && warmup_steps >= total_steps).then(|| {
            format!(
                "every one of the {total_steps} steps falls inside the warm-up of {warmup_steps} steps, so the \
                 learning rate never reaches {} (step 1 trains at 0): set warmup_ratio: 0.1 (here {} steps) or \
                 warmup_steps below {total_steps}, or give it more steps",
                config.learning_rate,
                (0.1 * total_steps as f64).ceil() as usize
            )
        })
    }

    /// Optimiser steps of a run over `examples` examples, and those of one epoch (what
    /// [`data::schedule`] plans, from the count alone).
    pub fn steps(config: &TrainConfig, examples: usize) -> (usize, usize) {
        let micro = examples.div_ceil(config.per_device_train_batch_size.max(1));
        let per_epoch = micro.div_ceil(config.gradient_accumulation_steps.max(1));
        (config.max_steps.unwrap_or(per_epoch.saturating_mul(config.num_train_epochs)), per_epoch)
    }

    /// The plan in one line.
    pub fn line(&self) -> String {
        let base = match &self.qlora {
            Some(q) => format!(", QLoRA over {q} blocks"),
            None => String::new(),
        };
        let time = match self.seconds {
            Some(s) => format!(" and {}", crate::runs::duration(s)),
            None => String::new(),
        };
        format!(
            "plan: {} examples, {} a step, {} steps ({} an epoch), warm-up {} steps to lr {:.1e}{base}, about {:.0} MB{time}",
            self.examples,
            self.batch,
            self.total_steps,
            self.steps_per_epoch,
            self.warmup_steps,
            self.learning_rate,
            self.memory_mb
        )
    }
}

/// The arithmetic of a training micro-batch, in floating-point operations, as the time estimate
/// counts it: the blocks' projections over every row slot (left padding included, as the
/// products run over it), forward and the backward's input gradients; the head over the
/// labelled positions only (`nll_at`); attention over each row's causal triangle (its backward
/// recomputes the scores: about 2.5 forwards); with checkpointing, the blocks' forward once
/// more. The adapters' own products are left out (r is small).
pub struct Cost {
    per_token: f64,
    per_target: f64,
    /// Per query-key pair within a row's causal window, all layers.
    per_pair: f64,
    window: Option<usize>,
}

impl Cost {
    pub fn new(model: &Model, checkpointing: bool) -> Cost {
        let s = &model.decoder.spec;
        let (h, i) = (s.hidden_size as f64, s.intermediate_size as f64);
        let (q, kv) = ((s.num_heads * s.head_dim) as f64, (s.num_kv_heads * s.head_dim) as f64);
        let blocks = s.num_layers as f64 * (h * (q + 2.0 * kv) + q * h + 3.0 * h * i);
        let head = s.vocab_size as f64 * h;
        let blocks_twice = if checkpointing { 3.0 } else { 2.0 };
        let attention = if checkpointing { 18.0 } else { 14.0 };
        Cost {
            per_token: 2.0 * blocks_twice * blocks,
            per_target: 4.0 * head,
            per_pair: attention * s.num_layers as f64 * (s.num_heads * s.head_dim) as f64,
            window: s.sliding_window.filter(|_| s.sliding_layers.iter().all(|&w| w)),
        }
    }

    /// A micro-batch of rows `width` slots wide whose rows hold `lens` tokens, `targets` of them
    /// labelled.
    pub fn micro(&self, width: usize, lens: &[usize], targets: usize) -> f64 {
        let pairs = |n: usize| -> f64 {
            let n = n as f64;
            match self.window.map(|w| w as f64) {
                Some(w) if w < n => n * w - w * w / 2.0,
                _ => n * n / 2.0,
            }
        };
        self.per_token * (lens.len() * width) as f64
            + self.per_target * targets as f64
            + self.per_pair * lens.iter().map(|&n| pairs(n)).sum::<f64>()
    }
}

/// Memory this machine has available now in MB (`MemAvailable`), 0 where unknown.
pub fn available_memory_mb() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One micro-batch: left-padded token rows and their labels (−100: no loss at that position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<Vec<i64>>,
    pub pad: Vec<usize>,
}

/// Labels of one row that count in the loss (each predicts from the position before it, so the
/// first cannot; −100 is none).
pub fn targets(labels: &[i64]) -> usize {
    labels.iter().skip(1).filter(|&&x| x >= 0).count()
}

impl Batch {
    /// Tokens that count in the loss (each label predicts from the position before it).
    pub fn targets(&self) -> usize {
        self.labels.iter().map(|l| targets(l)).sum()
    }

    pub fn tokens(&self) -> usize {
        self.ids.iter().zip(&self.pad).map(|(r, p)| r.len() - p).sum()
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub loss: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
}

/// A trainable adapter on one projection.
pub struct Param {
    pub linear: String,
    pub a: Var,
    pub b: Var,
}

/// AdamW's state for one tensor.
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
}

pub struct Trainer {
    pub name: String,
    pub params: Vec<Param>,
    pub moments: Vec<(Moments, Moments)>,
    /// Optimiser steps taken.
    pub step: usize,
    pub config: TrainConfig,
    pub adapter: AdapterConfig,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Trainer {
    /// Attaches a fresh adapter named `name` to `model` with PEFT's initialisation: A
    /// uniform in ±1/√in (kaiming-uniform with a = √5), B zero — from `config.seed` (or, with
    /// `init: random:σ`, A and B both normal with σ).
    pub fn new(model: &mut Model, name: &str, config: TrainConfig, base: &str) -> anyhow::Result<Trainer> {
        config.check().map_err(anyhow::Error::msg)?;
        let device = model.decoder.device().clone();
        let mut rng = crate::rng::Rng::new(config.seed ^ 0x10_4a);
        let modules = adapter::model_targets(&config.target_modules, &model.decoder.spec);
        let targets = Targets::List(modules.clone());
        let mut params = Vec::new();
        let scale = config.lora_alpha / config.r as f64;
        let gate = crate::model::linear::new_gate();
        for (linear_name, linear) in model.decoder.linears_mut() {
            if !targets.matches(&linear_name) {
                continue;
            }
            let (inf, outf) = linear.features()?;
            anyhow::ensure!(
                config.r <= inf.min(outf),
                "r: {} is out of range for this model: {linear_name} is {inf}→{outf}, so r takes 1 to {}",
                config.r,
                inf.min(outf)
            );
            let (a, b) = match config.init {
                Init::Random(sigma) => {
                    let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.normal() * sigma) as f32).collect() };
                    (normal(config.r * inf), normal(outf * config.r))
                }
                _ => {
                    let bound = 1.0 / (inf as f64).sqrt();
                    let a = (0..config.r * inf).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
                    (a, vec![0.0; outf * config.r])
                }
            };
            let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inf), &device)?)?;
            let b = Var::from_tensor(&Tensor::from_vec(b, (outf, config.r), &device)?)?;
            attach(linear, name, &a, &b, scale, &gate);
            params.push(Param { linear: linear_name, a, b });
        }
        anyhow::ensure!(!params.is_empty(), "target_modules matches no projection of this model");
        let adapter = AdapterConfig::new(config.r, config.lora_alpha, config.lora_dropout, modules, base);
        Ok(Trainer::with_params(name, params, config, adapter)?)
    }

    /// A trainer over the adapter `name` already loaded on `model` (a PEFT adapter to go on
    /// training): its tensors become trainable.
    pub fn from_loaded(
        model: &mut Model,
        name: &str,
        config: TrainConfig,
        adapter: AdapterConfig,
    ) -> anyhow::Result<Trainer> {
        let mut params = Vec::new();
        let gate = crate::model::linear::new_gate();
        for (linear_name, linear) in model.decoder.linears_mut() {
            let Some(found) = linear.adapters.iter().find(|x| x.name == name) else { continue };
            let a = Var::from_tensor(&found.a.to_dtype(DType::F32)?)?;
            let b = Var::from_tensor(&found.b.to_dtype(DType::F32)?)?;
            let scale = found.scale;
            attach(linear, name, &a, &b, scale, &gate);
            params.push(Param { linear: linear_name, a, b });
        }
        anyhow::ensure!(!params.is_empty(), "no adapter named {name} is loaded");
        Ok(Trainer::with_params(name, params, config, adapter)?)
    }

    fn with_params(
        name: &str,
        params: Vec<Param>,
        config: TrainConfig,
        adapter: AdapterConfig,
    ) -> candle_core::Result<Trainer> {
        let mut t = Trainer { name: name.to_string(), params, moments: Vec::new(), step: 0, config, adapter };
        t.reset_optimizer()?;
        Ok(t)
    }

    /// A fresh AdamW: zero moments, step 0 (the adapter's tensors are kept).
    fn reset_optimizer(&mut self) -> candle_core::Result<()> {
        let zeros =
            |t: &Tensor| -> candle_core::Result<Moments> { Ok(Moments { m: t.zeros_like()?, v: t.zeros_like()? }) };
        self.moments = self
            .params
            .iter()
            .map(|p| Ok((zeros(p.a.as_tensor())?, zeros(p.b.as_tensor())?)))
            .collect::<candle_core::Result<_>>()?;
        self.step = 0;
        Ok(())
    }

    fn set_dropout(&self, model: &mut Model, seed: Option<u64>) {
        let p = self.config.lora_dropout;
        for (i, (_, linear)) in model.decoder.linears_mut().into_iter().enumerate() {
            for a in linear.adapters.iter_mut().filter(|a| a.name == self.name) {
                a.dropout = match seed {
                    Some(s) if p > 0.0 => Some(Dropout { p, seed: s ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) }),
                    _ => None,
                };
            }
        }
    }

    /// `batch` as the decoder takes it: the token rows, the positions with labels (indices into
    /// the `rows × width` tokens, each predicting the label after it) and those labels; None
    /// when no position has one.
    fn positions(model: &Model, batch: &Batch) -> candle_core::Result<Option<(Tensor, Tensor, Vec<u32>)>> {
        let device = model.decoder.device();
        let rows = batch.ids.len();
        let width = batch.ids.iter().map(Vec::len).max().unwrap_or(0);
        let flat: Vec<u32> = batch.ids.iter().flat_map(|r| r.iter().copied()).collect();
        let input = Tensor::from_vec(flat, (rows, width), device)?;
        // Position t predicts label t + 1.
        let mut index = Vec::new();
        let mut targets = Vec::new();
        for (r, labels) in batch.labels.iter().enumerate() {
            for t in 0..width.saturating_sub(1) {
                let l = labels[t + 1];
                if l >= 0 {
                    index.push((r * width + t) as u32);
                    targets.push(l as u32);
                }
            }
        }
        if index.is_empty() {
            return Ok(None);
        }
        let n = index.len();
        Ok(Some((input, Tensor::from_vec(index, n, device)?, targets)))
    }

    /// The summed negative log-likelihood of `batch`'s labelled tokens under `model`.
    pub fn nll(model: &Model, batch: &Batch) -> candle_core::Result<Tensor> {
        let Some((input, at, targets)) = Self::positions(model, batch)? else {
            return Tensor::zeros((), DType::F32, model.decoder.device());
        };
        let mut cache = model.decoder.new_cache(batch.pad.clone());
        model.decoder.nll_at(&input, &mut cache, Pass::Training, &at, targets)?.sum_all()
    }

    /// One optimiser step over `micro` (gradient accumulation): the loss is the mean over every
    /// target token of the step. `total_steps` sets the schedule.
    pub fn step(&mut self, model: &mut Model, micro: &[Batch], total_steps: usize) -> anyhow::Result<StepStats> {
        let targets: usize = micro.iter().map(Batch::targets).sum();
        anyhow::ensure!(targets > 0, "a step with no response tokens to learn from");
        let lr = self.config.lr_at(self.step, total_steps);
        let mut grads: Vec<(Option<Tensor>, Option<Tensor>)> = self.params.iter().map(|_| (None, None)).collect();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let params = &self.params;
        let mut absorb = |store: &candle_core::backprop::GradStore| -> candle_core::Result<()> {
            for (p, g) in params.iter().zip(grads.iter_mut()) {
                for (var, acc) in [(&p.a, &mut g.0), (&p.b, &mut g.1)] {
                    if let Some(grad) = store.get(var.as_tensor()) {
                        *acc = Some(match acc.take() {
                            Some(sum) => (sum + grad)?,
                            None => grad.clone(),
                        });
                    }
                }
            }
            Ok(())
        };
        for (j, batch) in micro.iter().enumerate() {
            let seed = self.config.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ ((self.step * 1024 + j) as u64);
            self.set_dropout(model, Some(seed));
            tokens += batch.tokens();
            loss_sum += self.backward(model, batch, targets, &mut absorb)?;
        }
        self.set_dropout(model, None);
        // Missing gradients are zeros (an adapter the loss does not reach).
        let mut all = Vec::with_capacity(grads.len() * 2);
        for (p, (ga, gb)) in self.params.iter().zip(grads) {
            all.push(match ga {
                Some(g) => g,
                None => p.a.as_tensor().zeros_like()?,
            });
            all.push(match gb {
                Some(g) => g,
                None => p.b.as_tensor().zeros_like()?,
            });
        }
        let mut sq = 0.0f64;
        for g in &all {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let grad_norm = sq.sqrt();
        // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        let clip = (self.config.max_grad_norm / (grad_norm + 1e-6)).min(1.0);
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        let wd = self.config.weight_decay;
        for (i, p) in self.params.iter().enumerate() {
            for (k, var) in [&p.a, &p.b].into_iter().enumerate() {
                let g = all[2 * i + k].detach();
                let g = if clip < 1.0 && self.config.max_grad_norm > 0.0 { (g * clip)? } else { g };
                let mom = if k == 0 { &mut self.moments[i].0 } else { &mut self.moments[i].1 };
                mom.m = ((&mom.m * BETA1)? + (&g * (1.0 - BETA1))?)?;
                mom.v = ((&mom.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                let mut theta = var.as_tensor().clone();
                if wd != 0.0 {
                    theta = (theta * (1.0 - lr * wd))?;
                }
                let denom = ((mom.v.sqrt()? / bc2.sqrt())? + EPS)?;
                let update = ((&mom.m / denom)? * (lr / bc1))?;
                var.set(&(theta - update)?)?;
            }
        }
        Ok(StepStats { loss: loss_sum, grad_norm, lr, tokens })
    }

    /// One micro-batch's forward and backward, its gradients (scaled by 1 / `targets`, the
    /// step's target tokens) handed to `absorb`; returns its share of the step's mean loss.
    fn backward(
        &self,
        model: &Model,
        batch: &Batch,
        targets: usize,
        absorb: &mut dyn FnMut(&candle_core::backprop::GradStore) -> candle_core::Result<()>,
    ) -> anyhow::Result<f64> {
        if self.config.gradient_checkpointing {
            let Some((input, at, labels)) = Self::positions(model, batch)? else { return Ok(0.0) };
            let (pad, scale) = (batch.pad.clone(), 1.0 / targets as f64);
            let sum = model.decoder.nll_checkpointed(&input, pad, &at, labels, scale, absorb)?;
            return Ok(sum as f64 / targets as f64);
        }
        let loss = (Self::nll(model, batch)? / targets as f64)?;
        let value = loss.to_scalar::<f32>()? as f64;
        absorb(&loss.backward()?)?;
        Ok(value)
    }

    /// Seconds per unit of [`Cost::micro`] on this machine: one forward and backward of `ids`
    /// (every token a target, after a short warm-up run) through the step's own path, gradients
    /// dropped and nothing changed. What the plan's time estimate scales.
    pub fn probe(&self, model: &mut Model, ids: &[u32]) -> anyhow::Result<f64> {
        let batch = |n: usize| Batch {
            ids: vec![ids[..n].to_vec()],
            labels: vec![ids[..n].iter().map(|&t| t as i64).collect()],
            pad: vec![0],
        };
        let (warm, probe) = (batch(ids.len().min(16)), batch(ids.len()));
        let timed = |model: &Model, b: &Batch| -> anyhow::Result<f64> {
            let started = std::time::Instant::now();
            self.backward(model, b, b.targets().max(1), &mut |_| Ok(()))?;
            Ok(started.elapsed().as_secs_f64())
        };
        self.set_dropout(model, Some(self.config.seed));
        let secs = timed(model, &warm).and_then(|_| timed(model, &probe));
        self.set_dropout(model, None);
        let cost = Cost::new(model, self.config.gradient_checkpointing);
        Ok(secs? / cost.micro(ids.len(), &[ids.len()], probe.targets()).max(1.0))
    }

    /// The adapter's tensors as PEFT names them, with AdamW's moments (for checkpoints).
    pub fn state(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (p, (ma, mb)) in self.params.iter().zip(&self.moments) {
            let a = adapter::tensor_name(&p.linear, 'A');
            let b = adapter::tensor_name(&p.linear, 'B');
            out.push((format!("{a}.exp_avg"), ma.m.clone()));
            out.push((format!("{a}.exp_avg_sq"), ma.v.clone()));
            out.push((format!("{b}.exp_avg"), mb.m.clone()));
            out.push((format!("{b}.exp_avg_sq"), mb.v.clone()));
        }
        Ok(out)
    }

    /// Puts back AdamW's moments saved by [`Trainer::state`].
    pub fn restore_moments(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> anyhow::Result<()> {
        for (p, (ma, mb)) in self.params.iter().zip(self.moments.iter_mut()) {
            for (which, mom) in [('A', ma), ('B', mb)] {
                let base = adapter::tensor_name(&p.linear, which);
                for (suffix, slot) in [("exp_avg", &mut mom.m), ("exp_avg_sq", &mut mom.v)] {
                    let key = format!("{base}.{suffix}");
                    let t = saved.get(&key).ok_or_else(|| anyhow::anyhow!("optimizer.safetensors has no {key}"))?;
                    *slot = t.to_device(device)?;
                }
            }
        }
        Ok(())
    }
}

/// Replaces (or adds) adapter `name` on `linear` with the trainable `a`, `b`.
fn attach(
    linear: &mut crate::model::linear::Linear,
    name: &str,
    a: &Var,
    b: &Var,
    scale: f64,
    gate: &crate::model::linear::Gate,
) {
    linear.adapters.retain(|x| x.name != name);
    linear.adapters.push(LoraAdapter {
        name: name.to_string(),
        a: a.as_tensor().clone(),
        b: b.as_tensor().clone(),
        scale,
        enabled: true,
        dropout: None,
        gate: gate.clone(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        for (yaml, name) in [
            ("max_steps: 0", "max_steps"),
            ("max_grad_norm: -1", "max_grad_norm"),
            ("lora_alpha: 0", "lora_alpha"),
            ("weight_decay: -0.1", "weight_decay"),
            ("lora_dropout: 1.0", "lora_dropout"),
            ("max_steps: 100000000", "max_steps"),
            ("max_steps: 18446744073709551615", "max_steps"),
            ("r: 100000", "r"),
            ("num_train_epochs: 1000000000", "num_train_epochs"),
            ("warmup_steps: 1000000000", "warmup_steps"),
        ] {
            let c: TrainConfig = crate::yaml::from_str(yaml).unwrap();
            let e = c.check().unwrap_err();
            assert!(e.starts_with(name), "{yaml}: {e}");
        }
        let off: TrainConfig = crate::yaml::from_str("max_grad_norm: 0").unwrap();
        assert!(off.check().is_ok(), "0 turns clipping off");
    }

    #[test]
    fn the_schedule_warms_up_then_decays() {
        let c = TrainConfig { learning_rate: 1.0, warmup_steps: 2, ..Default::default() };
        let lrs: Vec<f64> = (0..6).map(|s| c.lr_at(s, 6)).collect();
        assert_eq!(lrs[..3], [0.0, 0.5, 1.0]);
        assert!((lrs[4] - 0.5).abs() < 1e-12 && lrs[5] < lrs[4]);
        let flat = TrainConfig { lr_scheduler_type: Schedule::Constant, ..c };
        assert_eq!(flat.lr_at(5, 6), 1.0);
    }
}
