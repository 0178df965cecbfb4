//! A training run folder: `config.yaml` (the job), `events.jsonl` (one JSON object per line —
//! what the Train screen shows), `checkpoints/checkpoint-N/` every `save_steps` (the adapter in
//! PEFT's format, AdamW's moments, the step and data position) and the final adapter in
//! `adapter/`.
//!
//! Resuming loads the newest checkpoint and goes on from its step; the data order of an epoch
//! depends only on (seed, epoch) and dropout masks only on (seed, step), so every later step's
//! loss equals the uninterrupted run's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::data::{self, Encoded, Example};
use super::trainer::{Batch, Trainer};
use crate::model::adapters::adapter;
use crate::model::Model;

pub const ADAPTER_NAME: &str = "train";

/// A training run's finished adapter, in PEFT's layout: `RUN/adapter`.
pub fn adapter_dir(run: &Path) -> PathBuf {
    run.join("adapter")
}

/// Where the workbench writes the settings it starts a training with (`--train-config`), beside
/// what the run records in its config.yaml.
pub fn settings_file(run: &Path) -> PathBuf {
    run.join("train-settings.yaml")
}

/// Whether the training run in `run` finished and saved its adapter.
pub fn trained(run: &Path) -> bool {
    adapter::saved(&adapter_dir(run))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainJob {
    pub model: String,
    pub data: PathBuf,
    pub config: TrainConfig,
    /// QLoRA's block type for the frozen base (null: full precision).
    #[serde(default)]
    pub qlora: Option<String>,
    /// The template examples are written in: plain (Alpaca) or chat (the model's); `auto` in a
    /// run recorded before formats existed means plain.
    #[serde(default)]
    pub prompt_format: crate::prompts::PromptFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        examples: usize,
        truncated: usize,
        /// Examples left out: their prompt alone fills max_seq_length, so no response token
        /// remains to learn from.
        #[serde(default)]
        dropped: usize,
        total_steps: usize,
        steps_per_epoch: usize,
        resumed_from: Option<usize>,
        /// The schedule, the memory estimate and the warnings (runs before it was recorded: none).
        #[serde(default)]
        plan: Option<super::plan::Plan>,
    },
    Step {
        step: usize,
        epoch: f64,
        loss: f64,
        lr: f64,
        grad_norm: f64,
        /// Seconds this step took.
        step_s: f64,
        tokens_per_s: f64,
        peak_memory_mb: f64,
        eta_s: f64,
    },
    Checkpoint {
        step: usize,
        path: PathBuf,
    },
    Finished {
        step: usize,
        adapter: PathBuf,
    },
    Stopped {
        step: usize,
        checkpoint: PathBuf,
    },
    /// Something the user should know (a torn log line cut on resuming).
    Note {
        text: String,
    },
}

impl crate::runs::RunEvent for TrainEvent {
    fn end(&self) -> Option<crate::runs::End> {
        match self {
            TrainEvent::Finished { .. } => Some(crate::runs::End::Finished),
            TrainEvent::Stopped { .. } => Some(crate::runs::End::Stopped),
            _ => None,
        }
    }
}

/// What a checkpoint needs besides the adapter and AdamW's moments. The data position and every
/// random draw follow from these: epoch e's order comes from (seed, e), dropout masks from
/// (seed, step, micro-batch, layer).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    #[serde(default)]
    seed: u64,
    /// The next batch: its epoch and its index within the epoch.
    #[serde(default)]
    epoch: usize,
    #[serde(default)]
    batch_in_epoch: usize,
}

/// Peak resident memory of this process in MiB (VmHWM), 0 where unknown.
pub fn peak_memory_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn newest_checkpoint(dir: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(dir.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n = name.strip_prefix("checkpoint-")?.parse::<usize>().ok()?;
            e.path().join("trainer_state.json").exists().then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

fn save_checkpoint(
    model: &mut Model,
    trainer: &Trainer,
    dir: &Path,
    total_steps: usize,
    steps_per_epoch: usize,
) -> anyhow::Result<PathBuf> {
    let final_dir = dir.join("checkpoints").join(format!("checkpoint-{}", trainer.step));
    let tmp = dir.join("checkpoints").join(format!(".checkpoint-{}.partial", trainer.step));
    let _ = std::fs::remove_dir_all(&tmp);
    adapter::save(model, &trainer.name, &trainer.adapter, &tmp)?;
    let moments: HashMap<String, candle_core::Tensor> = trainer.state()?.into_iter().collect();
    candle_core::safetensors::save(&moments, tmp.join("optimizer.safetensors"))?;
    let per_epoch = steps_per_epoch.max(1);
    let state = TrainerState {
        step: trainer.step,
        total_steps,
        seed: trainer.config.seed,
        epoch: trainer.step / per_epoch,
        batch_in_epoch: trainer.step % per_epoch,
    };
    // trainer_state.json last: a checkpoint without it is never read.
    crate::fsutil::atomic_write(&tmp.join("trainer_state.json"), serde_json::to_string_pretty(&state)?.as_bytes())?;
    let _ = std::fs::remove_dir_all(&final_dir);
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("cannot write {}", final_dir.display()))?;
    Ok(final_dir)
}

/// The examples of a run encoded for `model` (those with nothing left to learn dropped) and the
/// run's schedule of micro-batches.
struct Prepared {
    encoded: Vec<Encoded>,
    tasks: Vec<Option<String>>,
    truncated: usize,
    dropped: usize,
    steps: Vec<Vec<Vec<usize>>>,
    per_epoch: usize,
}

fn prepare(model: &Model, job: &TrainJob, examples: &[Example]) -> anyhow::Result<Prepared> {
    let c = &job.config;
    let max_len = super::config::row_length(model, c.max_seq_length);
    let eos = model.eos_token_ids.first().copied();
    let encoded: Vec<Encoded> = examples
        .iter()
        .map(|e| data::encode(&model.tokenizer, eos, e, max_len, job.prompt_format))
        .collect::<anyhow::Result<_>>()?;
    let truncated = encoded.iter().filter(|e| e.truncated).count();
    let before = encoded.len();
    let (encoded, tasks): (Vec<Encoded>, Vec<Option<String>>) = encoded
        .into_iter()
        .zip(examples.iter().map(|e| e.task.clone()))
        .filter(|(e, _)| super::trainer::targets(&e.labels) > 0)
        .unzip();
    let dropped = before - encoded.len();
    anyhow::ensure!(
        !encoded.is_empty(),
        "every example's prompt fills the rows' length ({max_len}: max_seq_length or the model's context): \
         raise max_seq_length if the context allows, nothing is left to learn from"
    );
    let lengths: Vec<usize> = encoded.iter().map(|e| e.ids.len()).collect();
    let (steps, per_epoch) = data::schedule(&lengths, c)?;
    Ok(Prepared { encoded, tasks, truncated, dropped, steps, per_epoch })
}

impl Prepared {
    /// The plan of the steps from `trainer`'s on: the memory of the longest micro-batch, and
    /// the seconds of their micro-batches' [`super::plan::Cost`] at the rate of a probe step of up to
    /// 256 tokens on this machine.
    fn plan(&self, model: &mut Model, trainer: &Trainer) -> anyhow::Result<super::plan::Plan> {
        let c = &trainer.config;
        let longest = self.encoded.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let tokens = c.per_device_train_batch_size.min(self.encoded.len()) * longest;
        let n = 256.min(super::config::row_length(model, c.max_seq_length)).max(1);
        let probe: Vec<u32> = self.encoded[0].ids.iter().copied().cycle().take(n).collect();
        let per_unit = trainer.probe(model, &probe)?;
        let cost = super::plan::Cost::new(model, c.gradient_checkpointing);
        let mut units = 0.0;
        for micro in self.steps[trainer.step.min(self.steps.len())..].iter().flatten() {
            let lens: Vec<usize> = micro.iter().map(|&i| self.encoded[i].ids.len()).collect();
            let targets = micro.iter().map(|&i| super::trainer::targets(&self.encoded[i].labels)).sum();
            units += cost.micro(lens.iter().copied().max().unwrap_or(0), &lens, targets);
        }
        let steps = (self.steps.len(), self.per_epoch);
        let available = super::plan::available_memory_mb();
        Ok(super::plan::Plan::new(model, c, self.encoded.len(), tokens, steps, available, Some(units * per_unit)))
    }
}

/// What a run of `job` would do (`selfspec train --plan`, the Train tab): the examples encoded,
/// the schedule, the memory and a probe step timed, with the adapter attached to `model` but
/// nothing written.
pub fn plan(model: &mut Model, job: &TrainJob, examples: &[Example]) -> anyhow::Result<super::plan::Plan> {
    job.config.check().map_err(anyhow::Error::msg)?;
    let prepared = prepare(model, job, examples)?;
    let trainer = Trainer::new(model, ADAPTER_NAME, job.config.clone(), &job.model)?;
    prepared.plan(model, &trainer)
}

/// Trains to the end (or until `cancel`), writing the run folder `dir`, whose lock the caller
/// holds. `on_event` sees every event written to events.jsonl.
// The run protocol's parts (the lock held, the job, the folder, resume, cancel, the event
// callback) and the kind's inputs (model, examples), as evaluate and generate take theirs.
#[allow(clippy::too_many_arguments)]
pub fn train(
    _lock: &crate::runs::Lock,
    model: &mut Model,
    job: &TrainJob,
    examples: &[Example],
    dir: &Path,
    resume: bool,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> anyhow::Result<TrainEvent> {
    let c = &job.config;
    c.check().map_err(anyhow::Error::msg)?;
    use crate::runs::Log;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let checkpoint = newest_checkpoint(dir);
    check_folder(dir, job, resume, checkpoint.is_some())?;
    let prepared = prepare(model, job, examples)?;
    let (total, per_epoch, truncated, dropped) =
        (prepared.steps.len(), prepared.per_epoch, prepared.truncated, prepared.dropped);
    let resumed = checkpoint.as_ref().filter(|_| resume).map(|(_, path)| path.as_path());
    let Some((mut trainer, warm_note)) = start_trainer(model, job, &prepared, dir, resumed, cancel)? else {
        return stopped_at_start(dir, job, on_event);
    };
    let (mut events, torn) = Log::<TrainEvent>::open(dir)?;
    let mut board = crate::runs::board::Board::create(dir)?;
    let mut emit = |e: &TrainEvent, on_event: &mut dyn FnMut(&TrainEvent)| -> anyhow::Result<()> {
        events.append(e)?;
        if let TrainEvent::Step { step, loss, lr, grad_norm, tokens_per_s, .. } = e {
            crate::runs::board::write_step(&mut board, *step, *loss, *lr, *grad_norm, *tokens_per_s)?;
        }
        on_event(e);
        Ok(())
    };
    for text in torn.into_iter().chain(warm_note) {
        emit(&TrainEvent::Note { text }, on_event)?;
    }
    let resumed_from = if resume { checkpoint.as_ref().map(|(n, _)| *n) } else { None };
    let plan = prepared.plan(model, &trainer)?;
    let warnings = plan.warnings.clone();
    emit(
        &TrainEvent::Started {
            examples: examples.len(),
            truncated,
            dropped,
            total_steps: total,
            steps_per_epoch: per_epoch,
            resumed_from,
            plan: Some(plan),
        },
        on_event,
    )?;
    for text in warnings {
        emit(&TrainEvent::Note { text: format!("warning: {text}") }, on_event)?;
    }
    let started = Instant::now();
    let first = trainer.step;
    while trainer.step < total {
        if cancel.load(Ordering::Relaxed) {
            let path = save_checkpoint(model, &trainer, dir, total, per_epoch)?;
            let e = TrainEvent::Stopped { step: trainer.step, checkpoint: path };
            emit(&e, on_event)?;
            return Ok(e);
        }
        let micro: Vec<Batch> =
            prepared.steps[trainer.step].iter().map(|rows| data::batch(&prepared.encoded, rows)).collect();
        let t0 = Instant::now();
        let stats = trainer.step(model, &micro, total)?;
        let secs = t0.elapsed().as_secs_f64();
        let eta = started.elapsed().as_secs_f64() / (trainer.step - first) as f64 * (total - trainer.step) as f64;
        emit(&step_event(trainer.step, per_epoch, &stats, secs, eta), on_event)?;
        // A diverged run is an error, not a finished adapter of NaNs (nothing after this step is
        // saved; the last checkpoint is kept).
        anyhow::ensure!(
            stats.loss.is_finite() && stats.grad_norm.is_finite(),
            "step {}: the loss is {} and the gradient norm {}: training diverged; lower learning_rate (now {}) \
             or set max_grad_norm, and start a new --run",
            trainer.step,
            stats.loss,
            stats.grad_norm,
            c.learning_rate
        );
        if trainer.step % c.save_steps == 0 && trainer.step < total {
            let path = save_checkpoint(model, &trainer, dir, total, per_epoch)?;
            emit(&TrainEvent::Checkpoint { step: trainer.step, path }, on_event)?;
        }
    }
    let out = save_adapter(model, &trainer, dir)?;
    let e = TrainEvent::Finished { step: trainer.step, adapter: out };
    emit(&e, on_event)?;
    Ok(e)
}

/// The event of step `step`, which took `secs`, with the time left (`eta`).
fn step_event(step: usize, per_epoch: usize, stats: &super::trainer::StepStats, secs: f64, eta: f64) -> TrainEvent {
    TrainEvent::Step {
        step,
        epoch: step as f64 / per_epoch.max(1) as f64,
        loss: stats.loss,
        lr: stats.lr,
        grad_norm: stats.grad_norm,
        step_s: secs,
        tokens_per_s: stats.tokens as f64 / secs.max(1e-9),
        peak_memory_mb: peak_memory_mb(),
        eta_s: eta,
    }
}

/// The events of a run stopped while its start (a warm start's search) was being found:
/// nothing is kept, and the next run finds the start again.
fn stopped_at_start(dir: &Path, job: &TrainJob, on_event: &mut dyn FnMut(&TrainEvent)) -> anyhow::Result<TrainEvent> {
    let (mut events, _) = crate::runs::Log::<TrainEvent>::open(dir)?;
    let text =
        format!("stopped while finding the start ({}); --resume finds it again", String::from(job.config.init.clone()));
    let note = TrainEvent::Note { text };
    events.append(&note)?;
    on_event(&note);
    let e = TrainEvent::Stopped { step: 0, checkpoint: dir.to_path_buf() };
    events.append(&e)?;
    on_event(&e);
    Ok(e)
}

/// Writes the trained adapter into the run folder (beside it first, then renamed into place).
fn save_adapter(model: &mut Model, trainer: &Trainer, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = adapter_dir(dir);
    let tmp = dir.join(".adapter.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    adapter::save(model, &trainer.name, &trainer.adapter, &tmp)?;
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Whether `dir` may take this training: a resumed run must have been started with the same
/// job and not have finished; a new run needs a folder without one (its job is written then).
fn check_folder(dir: &Path, job: &TrainJob, resume: bool, has_checkpoint: bool) -> anyhow::Result<()> {
    use crate::runs::Kind;
    if resume {
        let old: TrainJob = crate::runs::read_job(dir, Kind::Train)?
            .with_context(|| format!("--resume: {} has no config.yaml, so no run to resume", dir.display()))?;
        anyhow::ensure!(
            old == *job,
            "{} was started with other settings; run --resume with the same --model, --data and config",
            dir.display()
        );
        // The adapter folder appears only when the last step is done (checkpoints stop before
        // it): resuming from the newest checkpoint would redo finished steps and replace it.
        anyhow::ensure!(
            !adapter_dir(dir).exists(),
            "{} has finished (its adapter is in {}); there is nothing to resume",
            dir.display(),
            adapter_dir(dir).display()
        );
    } else {
        anyhow::ensure!(
            !has_checkpoint && !adapter_dir(dir).exists(),
            "{} already holds a training run; pass --resume to continue it, or choose a new --run folder",
            dir.display()
        );
        crate::runs::write_config(dir, Kind::Train, job)?;
    }
    Ok(())
}

/// The trainer to start from, with a note to log: the checkpoint `resumed` (adapter, optimizer
/// moments, step), an adapter to start from (`init: DIR`), a task or Reptile start found first
/// (None when stopped while finding it), or a fresh adapter.
fn start_trainer(
    model: &mut Model,
    job: &TrainJob,
    prepared: &Prepared,
    dir: &Path,
    resumed: Option<&Path>,
    cancel: &AtomicBool,
) -> anyhow::Result<Option<(Trainer, Option<String>)>> {
    let (c, base) = (&job.config, &job.model);
    if let Some(path) = resumed {
        let cfg = adapter::load(model, path, ADAPTER_NAME)?;
        let mut t = Trainer::from_loaded(model, ADAPTER_NAME, c.clone(), cfg)?;
        let state: TrainerState = serde_json::from_str(&std::fs::read_to_string(path.join("trainer_state.json"))?)?;
        let device = model.decoder.device().clone();
        let moments = candle_core::safetensors::load(path.join("optimizer.safetensors"), &device)?;
        t.restore_moments(&moments, &device)?;
        t.step = state.step;
        return Ok(Some((t, None)));
    }
    Ok(Some(match &c.init {
        super::config::Init::From(dir) => {
            adapter::load(model, dir, ADAPTER_NAME)?;
            let modules = adapter::model_targets(&c.target_modules, &model.decoder.spec);
            let cfg = adapter::AdapterConfig::new(c.r, c.lora_alpha, c.lora_dropout, modules, base);
            (Trainer::from_loaded(model, ADAPTER_NAME, c.clone(), cfg)?, None)
        }
        super::config::Init::Task(_) | super::config::Init::Reptile { .. } => {
            let found =
                super::warm::start(model, ADAPTER_NAME, c, &prepared.encoded, &prepared.tasks, base, dir, cancel)?;
            match found {
                Some(s) => (s.trainer, Some(s.note)),
                None => return Ok(None),
            }
        }
        _ => (Trainer::new(model, ADAPTER_NAME, c.clone(), base)?, None),
    }))
}
