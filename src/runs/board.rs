//! TensorBoard event files in run folders, so that `tensorboard --logdir WORKSPACE/runs` compares
//! runs: training writes its loss, learning rate, gradient norm and tokens/s every step
//! ([`TrainBoard`]); an evaluation writes its metrics when its report is written
//! ([`write_eval`]). The records are TensorBoard's (TFRecord-framed `Event` protos with simple
//! scalar summaries), written by the syntaxdot-summary crate; each event is flushed as it is
//! written, so a run killed mid-step leaves at most its last record torn, which TensorBoard's
//! reader stops at.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::Context;
use syntaxdot_summary::SummaryWriter;

use crate::eval::report::Report;

/// An open event file.
pub struct Board {
    writer: SummaryWriter<BufWriter<File>>,
    path: PathBuf,
}

impl Board {
    /// A new event file in `dir`, named as TensorBoard's own writers name theirs
    /// (`events.out.tfevents.<seconds>.<host>.<pid>`): a resumed run adds a file, and TensorBoard
    /// reads every file of a folder as one run.
    pub fn create(dir: &Path) -> anyhow::Result<Board> {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let name = format!("events.out.tfevents.{secs:010}.{host}.{}", std::process::id());
        Board::at(&dir.join(name))
    }

    fn at(path: &Path) -> anyhow::Result<Board> {
        let file = File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        let writer =
            SummaryWriter::new(BufWriter::new(file)).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Board { writer, path: path.to_path_buf() })
    }

    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> anyhow::Result<()> {
        self.writer
            .write_scalar(tag, step, value as f32)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Training's scalars, one set per optimiser step.
pub fn write_step(
    board: &mut Board,
    step: usize,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens_per_s: f64,
) -> anyhow::Result<()> {
    let step = step as i64;
    board.scalar("train/loss", step, loss)?;
    board.scalar("train/learning_rate", step, lr)?;
    board.scalar("train/grad_norm", step, grad_norm)?;
    board.scalar("train/tokens_per_s", step, tokens_per_s)
}

/// The evaluation's event file: one name per run folder, rewritten whole with the report (a
/// report computed again replaces it rather than adding a second set of points).
pub const EVAL_EVENTS: &str = "events.out.tfevents.selfspec-eval";

/// Every cell's F1 and ROUGE-L (and each model's average over the datasets) as
/// `eval/<dataset>/<metric>/<model>` with the step the number of shots, so each chart draws a
/// model's score against k.
pub fn write_eval(dir: &Path, report: &Report) -> anyhow::Result<()> {
    let tmp = dir.join(".eval-events.partial");
    {
        let mut board = Board::at(&tmp)?;
        for c in &report.cells {
            let k = c.k as i64;
            board.scalar(&format!("eval/{}/f1/{}", c.dataset, c.model), k, c.f1)?;
            board.scalar(&format!("eval/{}/rougeL/{}", c.dataset, c.model), k, c.rouge_l)?;
        }
        for a in &report.averages {
            let k = a.k as i64;
            board.scalar(&format!("eval/average/f1/{}", a.model), k, a.f1.mean)?;
            board.scalar(&format!("eval/average/rougeL/{}", a.model), k, a.rouge_l.mean)?;
        }
    }
    std::fs::rename(&tmp, dir.join(EVAL_EVENTS)).with_context(|| format!("cannot write {}", dir.display()))
}
