//! Starting points learned from the training data itself, before the run's own steps:
//!
//! - `task:NAME` — the expert of task NAME: a standard adapter (A kaiming-uniform, B zero)
//!   trained with the run's settings (its epochs or max_steps, batch, schedule) on the examples
//!   whose `task` is NAME. The run then trains that adapter on all its data, with a fresh
//!   optimiser.
//! - `reptile:T:K` — meta-learned by first-order Reptile (Nichol, Achiam & Schulman, 2018) over
//!   the data's tasks. From the standard start φ₀, for outer step t = 0 … T−1:
//!
//!   ```text
//!   τ   ~ uniform over the tasks                      (seeded)
//!   φ'  = K AdamW steps on τ from φ_t                  (fresh moments, constant lr, one
//!                                                       micro-batch of τ's examples per step)
//!   φ_{t+1} = φ_t + ε_t · (φ' − φ_t),  ε_t = 1 − t/T  (the outer step size, annealed to 0)
//!   ```
//!
//!   φ is every A and B of the adapter; φ_T is the run's start.
//!
//! Either start is saved to the run's `start/` (a PEFT adapter) and read from there when the run
//! is continued before its first checkpoint.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use super::config::{Init, Schedule, TrainConfig};
use super::data::{self, Encoded};
use super::trainer::Trainer;
use crate::model::adapters::adapter;
use crate::model::Model;

/// What the warm start did, for the run's log.
pub struct Started {
    pub trainer: Trainer,
    pub note: String,
}

/// The examples of each task (sorted by name): indices into `tasks`. Every example must name
/// its task.
fn by_task(tasks: &[Option<String>]) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    let missing = tasks.iter().filter(|t| t.is_none()).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} of {} training examples have no \"task\"; task: and reptile starts need every line to \
         name its task ({{\"task\": \"NAME\", \"instruction\": …}})",
        tasks.len()
    );
    let mut out: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, t) in tasks.iter().enumerate() {
        out.entry(t.clone().unwrap_or_default()).or_default().push(i);
    }
    Ok(out.into_iter().collect())
}

/// Builds the start named by `config.init` (`task:` or `reptile`) on `model` as adapter `name` and returns a
/// trainer over it with the run's settings and a fresh optimiser; None when `cancel` was set
/// on the way. `tasks[i]` is `encoded[i]`'s task.
// The training run's own values (model, settings, encoded data, base, folder, cancel flag),
// passed on once from train::run; none is used apart from the run.
#[allow(clippy::too_many_arguments)]
pub fn start(
    model: &mut Model,
    name: &str,
    config: &TrainConfig,
    encoded: &[Encoded],
    tasks: &[Option<String>],
    base: &str,
    dir: &Path,
    cancel: &AtomicBool,
) -> anyhow::Result<Option<Started>> {
    let saved = dir.join("start");
    if saved.join("adapter_model.safetensors").exists() {
        let adapter_cfg = adapter::AdapterConfig::new(
            config.r,
            config.lora_alpha,
            config.lora_dropout,
            adapter::model_targets(&config.target_modules, &model.decoder.spec),
            base,
        );
        adapter::load(model, &saved, name)?;
        let trainer = Trainer::from_loaded(model, name, config.clone(), adapter_cfg)?;
        return Ok(Some(Started { trainer, note: format!("start read from {}", saved.display()) }));
    }
    let groups = by_task(tasks)?;
    let standard = TrainConfig { init: Init::Standard, ..config.clone() };
    let mut trainer = Trainer::new(model, name, standard.clone(), base)?;
    let note = match &config.init {
        Init::Task(task) => task_expert(model, &mut trainer, task, &groups, encoded, &standard, cancel)?,
        Init::Reptile { outer, inner } => {
            trainer.config = TrainConfig { lr_scheduler_type: Schedule::Constant, warmup_steps: 0, ..standard.clone() };
            let batch = config.per_device_train_batch_size;
            let seed = config.seed;
            reptile(model, &mut trainer, (*outer, *inner), batch, seed, &groups, encoded, cancel)?
        }
        other => anyhow::bail!("init {}: not a learned start", String::from(other.clone())),
    };
    let Some(note) = note else { return Ok(None) };
    let tmp = dir.join(".start.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    adapter::save(model, name, &trainer.adapter, &tmp)?;
    let _ = std::fs::remove_dir_all(&saved);
    std::fs::rename(&tmp, &saved)?;
    // The run's own settings (and schedule) from here, with a fresh optimiser.
    trainer.config = config.clone();
    trainer.reset_optimizer()?;
    Ok(Some(Started { trainer, note }))
}

/// The expert of `task`: the trainer trained on that task's examples alone, on the run's
/// schedule. Returns its note; None when `cancel` was set.
fn task_expert(
    model: &mut Model,
    trainer: &mut Trainer,
    task: &str,
    groups: &[(String, Vec<usize>)],
    encoded: &[Encoded],
    standard: &TrainConfig,
    cancel: &AtomicBool,
) -> anyhow::Result<Option<String>> {
    let Some((_, rows)) = groups.iter().find(|(t, _)| t == task) else {
        let names: Vec<&str> = groups.iter().map(|(t, _)| t.as_str()).collect();
        anyhow::bail!(
            "init task:{task}: no training example has task {task:?}; the data's tasks: {}",
            names.join(", ")
        );
    };
    let lengths: Vec<usize> = rows.iter().map(|&i| encoded[i].ids.len()).collect();
    let (steps, _) = data::schedule(&lengths, standard)?;
    let mut losses = Vec::new();
    for step in &steps {
        if cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let micro: Vec<_> =
            step.iter().map(|b| data::batch(encoded, &b.iter().map(|&j| rows[j]).collect::<Vec<_>>())).collect();
        losses.push(trainer.step(model, &micro, steps.len())?.loss);
    }
    Ok(Some(format!(
        "start: the expert of task {task}, {} steps on its {} examples (loss {:.4} → {:.4})",
        steps.len(),
        rows.len(),
        losses.first().copied().unwrap_or(f64::NAN),
        losses.last().copied().unwrap_or(f64::NAN)
    )))
}

/// Reptile over the tasks: `outer` times, a random task's `inner` steps of `batch` random
/// examples from where the adapter is, then the adapter moved toward the result by a share
/// that falls from 1 to 0. Returns its note; None when `cancel` was set.
// The trainer, its data and the two loop counts, from `start` alone.
#[allow(clippy::too_many_arguments)]
fn reptile(
    model: &mut Model,
    trainer: &mut Trainer,
    (outer, inner): (usize, usize),
    batch: usize,
    seed: u64,
    groups: &[(String, Vec<usize>)],
    encoded: &[Encoded],
    cancel: &AtomicBool,
) -> anyhow::Result<Option<String>> {
    let mut rng = crate::rng::Rng::new(seed ^ 0x7e97_11e5);
    let mut last = Vec::new();
    for t in 0..outer {
        let (_, rows) = &groups[(rng.next_u64() % groups.len() as u64) as usize];
        let before: Vec<(Tensor, Tensor)> = trainer
            .params
            .iter()
            .map(|p| Ok((p.a.as_tensor().copy()?, p.b.as_tensor().copy()?)))
            .collect::<candle_core::Result<_>>()?;
        trainer.reset_optimizer()?;
        for _ in 0..inner {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let pick: Vec<usize> =
                (0..batch.min(rows.len())).map(|_| rows[(rng.next_u64() % rows.len() as u64) as usize]).collect();
            let loss = trainer.step(model, &[data::batch(encoded, &pick)], inner)?.loss;
            if t + 1 == outer {
                last.push(loss);
            }
        }
        let eps = 1.0 - t as f64 / outer as f64;
        for (p, (a0, b0)) in trainer.params.iter().zip(before) {
            for (var, old) in [(&p.a, a0), (&p.b, b0)] {
                let moved = (&old + ((var.as_tensor() - &old)? * eps)?)?;
                var.set(&moved)?;
            }
        }
    }
    Ok(Some(format!(
        "start: Reptile over {} tasks, {outer} outer steps of {inner} (last inner losses {})",
        groups.len(),
        last.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>().join(" ")
    )))
}
