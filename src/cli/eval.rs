//! `selfspec eval` and its subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::backend::BackendArgs;
use super::choices::PromptFormat;
use super::model::{Defaults, ModelArgs};

impl EvalArgs {
    /// What `selfspec eval` was asked (clap ensured --data and --run without a subcommand).
    pub fn options(self, defaults: &Defaults) -> anyhow::Result<selfspec::eval::command::Options> {
        use anyhow::Context;
        Ok(selfspec::eval::command::Options {
            backend: self.server.backend(&self.model, defaults, |s| s.to_string())?,
            adapters: self.adapter.iter().map(|s| selfspec::model::adapters::adapter::Spec::parse(s)).collect(),
            data: self.data.context("--data names the folder of datasets")?,
            datasets: self.datasets,
            shots: self.shots,
            run: self.run.context("--run names the run folder")?,
            max_new_tokens: self.max_new_tokens,
            postprocess: self.postprocess,
            demos_from: self.demos_from,
            split_references: self.split_references,
            prompt_format: self.prompt_format.into(),
            detached: self.detached,
            stats: Some(selfspec::eval::stats::Settings {
                resamples: self.resamples,
                trials: self.resamples,
                seed: self.stats_seed,
            }),
            intervals: true,
        })
    }
}

impl EvalCommand {
    /// What `selfspec eval import` was asked.
    pub fn options(self) -> anyhow::Result<selfspec::eval::import::Options> {
        use anyhow::Context;
        let EvalCommand::Import { files, preset, map, name, out, train, demos, limit, force, list: _ } = self else {
            anyhow::bail!("not an import")
        };
        let map = match (preset, map) {
            (Some(p), None) => selfspec::eval::import::Mapping::preset(&p)?,
            (None, Some(m)) => selfspec::eval::import::Mapping::load(&m)?,
            _ => anyhow::bail!("name a field map: --preset NAME (--list shows them) or --map FILE.yaml"),
        };
        Ok(selfspec::eval::import::Options {
            files,
            map,
            name: name.context("--name names the dataset")?,
            out: out.context("--out names the folder to write")?,
            train,
            demos,
            limit,
            force,
        })
    }
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    /// `import`: a benchmark's files into an evaluation dataset.
    #[command(subcommand)]
    pub import: Option<EvalCommand>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub server: BackendArgs,
    /// An adapter to compare with the base, as DIR or NAME=DIR (repeatable).
    #[arg(long, value_name = "[NAME=]DIR")]
    pub adapter: Vec<String>,
    /// A folder of datasets (NAME.jsonl, optional NAME.train.jsonl for demonstrations).
    #[arg(long, required = true)]
    pub data: Option<PathBuf>,
    /// Only these datasets (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// Numbers of demonstrations (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1,5")]
    pub shots: Vec<usize>,
    /// The run folder.
    #[arg(long, required = true)]
    pub run: Option<PathBuf>,
    /// New tokens per answer instead of the per-task limits (at least 1).
    #[arg(long, value_parser = selfspec::bounds::flag::new_tokens)]
    pub max_new_tokens: Option<usize>,
    /// Keep only the first line of each prediction (off by default).
    #[arg(long, value_parser = ["first-line"])]
    pub postprocess: Option<String>,
    /// Take the demonstrations from this seed file (seeds of the dataset's task first, as the
    /// paper did) instead of each dataset's NAME.train.jsonl.
    #[arg(long, value_name = "SEEDS.yaml")]
    pub demos_from: Option<PathBuf>,
    /// Split each reference on ", " into several (the BoX habit).
    #[arg(long)]
    pub split_references: bool,
    /// k-shot prompts as plain Alpaca text or in the model's chat template (auto: chat when the
    /// model has one; a continued run keeps its own).
    #[arg(long, value_enum, default_value = "auto")]
    pub prompt_format: PromptFormat,
    /// Bootstrap resamples (and randomisation trials) behind the report's intervals and p-values.
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    /// The seed of those resamples and trials.
    #[arg(long, default_value_t = 1)]
    pub stats_seed: u64,
    /// Keep going when the terminal closes (SIGHUP); the workbench starts runs this way.
    #[arg(long, hide = true)]
    pub detached: bool,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// A finished evaluation's report computed again from its predictions (other statistics
    /// settings, or a report written before intervals); loads no model, generates nothing.
    Report {
        /// The evaluation's run folder.
        run: PathBuf,
        /// Bootstrap resamples and randomisation trials (default: the run's, or 10,000).
        #[arg(long)]
        resamples: Option<usize>,
        /// Their seed (default: the run's, or 1).
        #[arg(long)]
        stats_seed: Option<u64>,
    },
    /// A benchmark as published (Hugging Face parquet, JSON or JSON lines files, or a release's
    /// JSON or TSV) into OUT/NAME.jsonl (and NAME.train.jsonl from --train files) by a field
    /// map: a preset for the paper's benchmarks, or --map FILE.yaml.
    Import {
        /// The files of the split to evaluate on (.parquet, .jsonl, .json, .tsv).
        #[arg(required_unless_present = "list")]
        files: Vec<PathBuf>,
        /// A built-in map (`--list` shows them).
        #[arg(long, conflicts_with = "map")]
        preset: Option<String>,
        /// A field map (YAML; the presets in assets/benchmarks/ show the keys).
        #[arg(long, value_name = "MAP.yaml")]
        map: Option<PathBuf>,
        /// The dataset's name (OUT/NAME.jsonl).
        #[arg(long, required_unless_present = "list")]
        name: Option<String>,
        /// The folder of datasets to write into.
        #[arg(long, required_unless_present = "list")]
        out: Option<PathBuf>,
        /// Files of the split the demonstrations come from (its first --demos records).
        #[arg(long, value_name = "FILE")]
        train: Vec<PathBuf>,
        #[arg(long, default_value_t = 5)]
        demos: usize,
        /// Keep at most this many examples (the first ones).
        #[arg(long)]
        limit: Option<usize>,
        /// Replace NAME.jsonl and NAME.train.jsonl when they exist.
        #[arg(long)]
        force: bool,
        /// List the presets and what each reads.
        #[arg(long)]
        list: bool,
    },
}
