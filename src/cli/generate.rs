//! `selfspec generate`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::backend::BackendArgs;
use super::choices::Mode;
use super::model::ModelArgs;

#[derive(Args)]
pub struct GenerateArgs {
    /// The seed file whose seeds are the demonstrations.
    #[arg(long)]
    pub seeds: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub server: BackendArgs,
    /// Samples to keep (1 to 1,000,000).
    #[arg(long, value_parser = selfspec::bounds::flag::samples)]
    pub n: usize,
    /// The run folder (created; an existing one is continued).
    #[arg(long)]
    pub run: PathBuf,
    /// The domain corpus for top1 and marginal: a JSONL file or a folder of .txt files (indexed
    /// beside itself as NAME.index, built when missing and rebuilt when the corpus changed), or a
    /// BM25 index folder (`selfspec index build`).
    #[arg(long, value_name = "CORPUS_OR_INDEX")]
    pub corpus: Option<PathBuf>,
    /// Documents per response in marginal mode, 1 to 64 (default: the config's generation.k, 5).
    #[arg(long, value_parser = selfspec::bounds::flag::k)]
    pub k: Option<usize>,
    /// Responses without documents, with the best one, or marginalised over the top k
    /// (default: marginal with --corpus, else none).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Seed of every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Progress as human-readable lines on stderr, or every event as a JSON line on stdout.
    #[arg(long, value_enum, default_value_t)]
    pub progress: ProgressFormat,
    /// The second round: generate with the tuned model, a LoRA adapter (PEFT format) over --model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Decode contrastively against the base (log p_tuned − log p_base over the tokens with
    /// p_tuned ≥ α·max p_tuned); needs --adapter (or --served-adapter through a server).
    #[arg(long)]
    pub contrastive: bool,
    /// α of --contrastive.
    #[arg(long, default_value_t = 0.1, requires = "contrastive")]
    pub alpha: f64,
    /// Keep going when the terminal closes (SIGHUP); the workbench starts runs this way.
    #[arg(long, hide = true)]
    pub detached: bool,
}

#[derive(Clone, Copy, Default, ValueEnum)]
pub enum ProgressFormat {
    #[default]
    Human,
    Jsonl,
}

impl GenerateArgs {
    /// What `selfspec generate` runs.
    pub fn options(self, defaults: &super::model::Defaults) -> anyhow::Result<selfspec::generate::command::Options> {
        Ok(selfspec::generate::command::Options {
            seeds: self.seeds,
            backend: self.server.for_generation(&self.model, defaults)?,
            n: self.n,
            run: self.run,
            corpus: self.corpus,
            k: self.k,
            mode: self.mode.map(Into::into),
            seed: self.seed,
            jsonl: matches!(self.progress, ProgressFormat::Jsonl),
            adapter: self.adapter,
            contrastive: self.contrastive,
            alpha: self.alpha,
            detached: self.detached,
        })
    }
}
