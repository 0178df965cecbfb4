//! How a sweep runs its stages: each in a process of its own (`sweep --stage`), its start and
//! end in the sweep's event log, within the time the sweep may take.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::layout;
use super::spec::Point;
use crate::runs::{End, Kind, RunEvent};

/// What a sweep reports as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SweepEvent {
    Started {
        points: Vec<Point>,
    },
    /// A stage starts (or continues): `generate` (per seed count), `train` (per point), `eval`.
    Stage {
        stage: String,
        name: String,
    },
    /// A generation run stopped at its prompt budget with fewer samples than asked.
    Short {
        seeds: usize,
        asked: usize,
        kept: usize,
    },
    Stopped {
        stage: String,
        name: String,
    },
    Finished {
        report: PathBuf,
    },
}

impl RunEvent for SweepEvent {
    fn end(&self) -> Option<End> {
        match self {
            SweepEvent::Finished { .. } => Some(End::Finished),
            SweepEvent::Stopped { .. } => Some(End::Stopped),
            _ => None,
        }
    }
}

/// How a sweep runs its stages. Each stage runs in a process of its own (`sweep --stage`): a
/// stage's memory is returned to the system when it ends, so the sweep's peak is its largest
/// stage's, not their sum.
pub(super) struct Stages<'a> {
    pub(super) dir: &'a Path,
    pub(super) log: crate::runs::Log<SweepEvent>,
    pub(super) budget: &'a Budget,
    pub(super) detached: bool,
    pub(super) cancel: Arc<AtomicBool>,
}

impl Stages<'_> {
    /// Runs the stage `stage` `name` (the child's stage `child_name`, its run folder `stage_dir`)
    /// unless the budget is spent; Some(exit code) when the sweep stops there.
    pub(super) fn run(
        &mut self,
        stage: &str,
        name: &str,
        child_name: &str,
        stage_dir: &Path,
        what: &str,
    ) -> anyhow::Result<Option<u8>> {
        if self.budget.spent() {
            return self.budget.stop(&mut self.log, stage, name).map(Some);
        }
        self.log.append(&SweepEvent::Stage { stage: stage.into(), name: name.into() })?;
        eprintln!("── {stage} {what}");
        if child(self.dir, child_name, stage_dir, self.detached, &self.cancel)? == 130 {
            self.log.append(&SweepEvent::Stopped { stage: stage.into(), name: name.into() })?;
            return Ok(Some(130));
        }
        Ok(None)
    }
}

impl Stages<'_> {
    /// Evaluates point `name` as soon as it is trained (the base with the first point) in the
    /// one evaluation run, which grows by each point's adapters, so the curves fill in as points
    /// finish; nothing to do when that run already finished with `last`, the point's last
    /// adapter. Some(exit code) when the sweep stops there.
    pub(super) fn eval_point(&mut self, name: &str, last: &str, first: bool) -> anyhow::Result<Option<u8>> {
        let eval_dir = layout::eval(self.dir);
        let evaluated = crate::runs::state(&eval_dir) == crate::runs::State::Finished
            && crate::runs::read_job::<crate::eval::run::EvalJob>(&eval_dir, Kind::Eval)
                .ok()
                .flatten()
                .is_some_and(|job| job.adapters.iter().any(|(n, _)| n == last));
        if evaluated {
            return Ok(None);
        }
        let what = format!("{name}{}", if first { " and the base" } else { "" });
        self.run("eval", name, &format!("eval:{name}"), &eval_dir, &what)
    }
}

/// Runs stage `name` as a child process (this program, `sweep --stage`) and waits for it; a
/// cancelled sweep passes SIGTERM on, and the child is told SIGTERM if the sweep dies (even by
/// kill -9). Before starting it waits for a stopping stage process of an earlier sweep process.
fn child(dir: &Path, name: &str, stage_dir: &Path, detached: bool, cancel: &AtomicBool) -> anyhow::Result<u8> {
    let waited = std::time::Instant::now();
    while let crate::runs::State::Running(_) = crate::runs::state(stage_dir) {
        if waited.elapsed() > std::time::Duration::from_secs(60) {
            anyhow::bail!(
                "{} is still in use by another process; stop it (`selfspec stop {}`) and run the sweep again",
                stage_dir.display(),
                stage_dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let exe = std::env::current_exe().context("cannot find this program to run the stage")?;
    let mut cmd = std::process::Command::new(exe);
    // The options before the command (--config, --workspace) hold for the stage too.
    cmd.args(std::env::args_os().skip(1).take_while(|a| a != "sweep"));
    cmd.arg("sweep").arg("--run").arg(dir).arg("--stage").arg(name);
    if detached {
        cmd.arg("--detached");
    }
    let status = crate::runs::run_child(&mut cmd, cancel).with_context(|| format!("cannot run the stage {name}"))?;
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(0),
        (Some(130), _) => Ok(130),
        (Some(code), _) => anyhow::bail!("the stage {name} failed (exit code {code}); its error is above"),
        (None, Some(sig)) => anyhow::bail!(
            "the stage {name} was killed by signal {sig}{}; run the sweep again to continue it",
            if sig == libc::SIGKILL { " (out of memory?)" } else { "" }
        ),
        (None, None) => anyhow::bail!("the stage {name} ended without an exit code"),
    }
}

/// The time a sweep may take (`--max-hours`), checked before each stage.
pub struct Budget {
    start: std::time::Instant,
    hours: Option<f64>,
}

impl Budget {
    /// From now, `hours` at most (None: no limit).
    pub fn new(hours: Option<f64>) -> Budget {
        Budget { start: std::time::Instant::now(), hours }
    }

    fn spent(&self) -> bool {
        self.hours.is_some_and(|h| self.start.elapsed().as_secs_f64() >= h * 3600.0)
    }

    fn stop(&self, log: &mut crate::runs::Log<SweepEvent>, stage: &str, name: &str) -> anyhow::Result<u8> {
        eprintln!(
            "stopped before {stage} {name}: --max-hours {} is spent; run the same command to continue",
            self.hours.unwrap_or(0.0)
        );
        log.append(&SweepEvent::Stopped { stage: stage.into(), name: name.into() })?;
        Ok(130)
    }
}
