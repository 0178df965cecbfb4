//! What a training run has reported, as one state built by applying its events in order: used by
//! `selfspec train`'s progress lines and by the workbench's Train screen (live and attached).

use super::run::{TrainEvent, TrainJob};
use crate::runs::{End, Entry};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    pub epoch: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Training {
    pub job: Option<TrainJob>,
    /// Every step event (a resumed run's redone steps replace the old ones).
    pub steps: Vec<Step>,
    pub total_steps: usize,
    /// The newest event of the run's own kind.
    pub last: Option<TrainEvent>,
    /// How the run ended, as its log says.
    pub end: Option<End>,
    pub notes: Vec<String>,
    /// The plan the run said at its start.
    pub plan: Option<super::plan::Plan>,
}

impl crate::runs::Follow for Training {
    type Event = TrainEvent;

    fn apply_entry(&mut self, entry: &Entry<TrainEvent>) {
        if entry.end.is_some() {
            self.end = entry.end.clone();
        }
        if let Some(e) = &entry.event {
            self.apply(e);
        }
    }

    fn note(&mut self, dropped: Vec<String>) {
        self.notes.extend(dropped);
    }
}

impl Training {
    pub fn apply(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Started { total_steps, resumed_from, plan, .. } => {
                self.total_steps = *total_steps;
                self.plan = plan.clone();
                self.end = None;
                // Steps after the checkpoint are done again: the new ones replace them.
                let from = resumed_from.unwrap_or(0);
                self.steps.retain(|s| s.step <= from);
            }
            TrainEvent::Step { step, epoch, loss, lr, tokens_per_s, eta_s, .. } => self.steps.push(Step {
                step: *step,
                loss: *loss,
                lr: *lr,
                tokens_per_s: *tokens_per_s,
                eta_s: *eta_s,
                epoch: *epoch,
            }),
            TrainEvent::Note { text } => {
                self.notes.push(text.clone());
                return;
            }
            _ => {}
        }
        self.last = Some(event.clone());
    }

    /// The line `selfspec train` prints for `event` (None: nothing to print).
    pub fn line(event: &TrainEvent) -> Option<String> {
        Some(match event {
            TrainEvent::Started { examples, truncated, dropped, total_steps, resumed_from, plan, .. } => {
                let from = resumed_from.map(|s| format!(", resuming after step {s}")).unwrap_or_default();
                let plan = plan.as_ref().map(|p| format!("\n{}", p.line())).unwrap_or_default();
                format!(
                    "{examples} examples ({truncated} cut to max_seq_length, {dropped} left out: no response token fits), {total_steps} steps{from}{plan}"
                )
            }
            TrainEvent::Step { step, epoch, loss, lr, grad_norm, tokens_per_s, eta_s, .. } => format!(
                "step {step} · epoch {epoch:.2} · loss {loss:.4} · lr {lr:.2e} · grad norm {grad_norm:.3} · {tokens_per_s:.0} tokens/s · ETA {eta_s:.0}s"
            ),
            TrainEvent::Checkpoint { path, .. } => format!("checkpoint {}", path.display()),
            TrainEvent::Finished { adapter, .. } => format!("done: adapter in {}", adapter.display()),
            TrainEvent::Stopped { checkpoint, .. } => {
                format!("stopped; checkpoint {}; continue with --resume", checkpoint.display())
            }
            TrainEvent::Note { text } => format!("note: {text}"),
        })
    }
}
