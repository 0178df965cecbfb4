//! What a training run will take before it starts: its steps, memory and time ([`Plan`]), from
//! the model's shape and a [`Cost`] per micro-batch.

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::model::Model;

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
    /// rate of a probe step on this machine ([`super::trainer::Trainer::probe`]); within ~20 % on SmolLM2.
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
            qlora: base_record(model),
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
    /// [`super::data::schedule`] plans, from the count alone).
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

/// How the frozen base is stored, as a run records it: its projections' GGML block types
/// ("q4_1"; "q4k+q6k" for a file that mixes them), None when they are dense.
pub fn base_record(model: &Model) -> Option<String> {
    let types = model.decoder.projection_block_types();
    (!types.is_empty()).then(|| types.iter().map(|t| format!("{t:?}").to_lowercase()).collect::<Vec<_>>().join("+"))
}
