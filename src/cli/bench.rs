//! `selfspec bench`.

use std::path::PathBuf;

use clap::Subcommand;

use super::complete::KvCache;
use super::model::ModelArgs;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// BM25 queries/s over an index: every line of QUERIES is one query.
    Search {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        queries: PathBuf,
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The cost of a retrieval-marginalised decoding step (k prompts mixed, eq. 2) against a plain
    /// one-prompt step, on random prompts of the same length.
    Marginal {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 5)]
        k: usize,
        #[arg(long, default_value_t = 256)]
        prompt_len: usize,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Measured runs; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// QLoRA's choice of block type: bytes of the projections and the logit error against the
    /// full-precision model, for q4_0, q4k and q8_0 (dequantized on the fly, as training uses them).
    Qlora {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
    },
    /// Memory bandwidth on all cores: a 512 MiB buffer copied (bytes copied per second) and read
    /// (summed), median of 5: the ceiling that weight-streaming decode is measured against.
    Memory {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prefill and decode tokens/s of greedy generation on random prompts (EOS ignored).
    Decode {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// Untimed runs before the measured ones.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Measured runs; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// The key/value cache's type: f32, or f16 as generate keeps it by default.
        #[arg(long, value_enum, default_value_t = KvCache::F32)]
        kv_cache: KvCache,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl BenchCommand {
    /// Runs the benchmark.
    pub fn run(self, defaults: &super::model::Defaults) -> anyhow::Result<()> {
        use selfspec::bench;
        match self {
            BenchCommand::Search { index, queries, k, json } => bench::search(&index, &queries, k, json),
            BenchCommand::Qlora { model, prompt_len } => {
                bench::qlora(&model.exact_choice(defaults, "bench qlora")?, prompt_len)
            }
            BenchCommand::Memory { json } => bench::memory(json),
            BenchCommand::Marginal { model, k, prompt_len, new_tokens, repeat, json } => {
                bench::marginal(&model.choice(defaults)?, k, prompt_len, new_tokens, repeat, json)
            }
            BenchCommand::Decode { model, batch, prompt_len, new_tokens, warmup, repeat, kv_cache, json } => {
                let shape = bench::Shape { batch, prompt_len, new_tokens, warmup, repeat, half_kv: kv_cache.half() };
                bench::decode(&model.choice(defaults)?, shape, json)
            }
        }
    }
}
