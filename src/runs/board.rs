//! TensorBoard event files in run folders, so that `tensorboard --logdir WORKSPACE/runs` compares
//! runs: training writes its loss, learning rate, gradient norm and tokens/s every step
//! ([`write_step`]); an evaluation writes its metrics when its report is written
//! (`eval::run::write_board`). The records are TensorBoard's (TFRecord-framed `Event` protos with simple
//! scalar summaries), written by the syntaxdot-summary crate; each event is flushed as it is
//! written, so a run killed mid-step leaves at most its last record torn, which TensorBoard's
//! reader stops at.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::Context;
use syntaxdot_summary::SummaryWriter;

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

    /// An event file at `path` (created, or emptied).
    pub fn at(path: &Path) -> anyhow::Result<Board> {
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
