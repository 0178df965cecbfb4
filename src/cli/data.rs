//! The commands over a workspace's data: corpus indexes, samples, seeds and adapters.

use std::path::PathBuf;

use clap::Subcommand;

use super::choices::{Combine, Decision, Format};

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Index a corpus: a JSONL file ({id, title?, text} a line) or a folder of .txt files.
    Build {
        corpus: PathBuf,
        /// The index folder to create.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing index folder.
        #[arg(long)]
        force: bool,
    },
    /// What a corpus holds: its document count, the distribution of document lengths, and the
    /// state of its index (missing, current, or older than the corpus).
    Info {
        /// The corpus: a JSONL file or a folder of .txt files.
        corpus: PathBuf,
        /// Its index folder (default: NAME.index beside NAME.corpus.jsonl, as the workbench keeps it).
        #[arg(long)]
        index: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The best documents for a query by BM25.
    Search {
        /// The index folder.
        index: PathBuf,
        query: String,
        /// How many documents.
        #[arg(short, long, default_value_t = 5)]
        k: usize,
        /// Print a JSON list of {id, score, title, text}, best first.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SamplesCommand {
    /// Write a run's accepted and edited samples as Alpaca JSONL ({instruction, input, output}).
    Export {
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Overwrite the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Make a sample (as reviewed: an edited response replaces the generated one) a seed of the
    /// domain's seed file: a new id, the task given, tagged sample:RUN/ID, validated, saved.
    Promote {
        run: PathBuf,
        id: String,
        /// The seed's task (qa, ner, re, sa, cls, sum, gen, other).
        #[arg(long)]
        task: String,
        /// The seed file (default: the one the run was generated from).
        #[arg(long)]
        seeds: Option<PathBuf>,
    },
    /// Why each token of a sample was chosen: its response decoded again with the run's prompts,
    /// documents, weights and seed, then teacher-forced under each document (eq. 2): per token
    /// the mixture's probability and entropy, each document's probability, weight and top tokens.
    Trace {
        run: PathBuf,
        id: String,
        /// Print one JSON object ({id, mode, reproduced, tokens: [{id, text, p, entropy, docs, contrast}]}).
        #[arg(long)]
        json: bool,
        /// Top tokens kept per document and token.
        #[arg(long, default_value_t = 5)]
        top: usize,
    },
    /// Record a review decision on one sample (saved at once, as the Review tab does).
    Decide {
        run: PathBuf,
        id: String,
        #[arg(value_enum)]
        decision: Decision,
        /// A new response: the sample becomes edited (implies accepting it).
        #[arg(long)]
        output: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum SeedsCommand {
    /// Check seed files; prints every problem with file:line:column, exits 0 only if all are valid.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Seeds per task and length statistics.
    Stats {
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a seed file from another tool's format.
    Import {
        /// The input format.
        #[arg(long = "from", value_enum)]
        format: Format,
        input: PathBuf,
        output: PathBuf,
        /// Domain name (default: the input's own, else the output file's name).
        #[arg(long)]
        domain: Option<String>,
        /// Give every imported seed this task (qa, ner, re, sa, cls, sum, gen, other).
        #[arg(long)]
        task: Option<String>,
        /// Import the valid records and report the others, instead of importing nothing.
        #[arg(long)]
        skip_invalid: bool,
        /// Overwrite the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Write the seeds as JSONL ({id, instruction, input, output, task, tags} a line).
    Export {
        file: PathBuf,
        output: PathBuf,
        /// Overwrite the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Rewrite seed files in the canonical layout the editor saves (comments are dropped).
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only report files that are not canonical; exit 1 if any.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Subcommand)]
pub enum AdaptersCommand {
    /// Combine adapters of one base model into one PEFT adapter, as PEFT's add_weighted_adapter
    /// does: linear (equal ranks; sums the factors), cat (stacks them: exact, rank Σr) or svd
    /// (the best rank-R approximation of the weighted sum of updates).
    Merge {
        /// The adapter folders (PEFT format).
        #[arg(required = true, num_args = 1..)]
        adapters: Vec<PathBuf>,
        /// One weight per adapter, comma-separated (default: 1/n each, the average).
        #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
        weights: Vec<f64>,
        #[arg(long, value_enum)]
        method: Combine,
        /// The merged rank for svd, 1 to 1024 and at most the layers' sizes (default: the
        /// largest rank among the adapters).
        #[arg(long, value_parser = selfspec::bounds::flag::rank)]
        rank: Option<usize>,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
    },
}

impl SeedsCommand {
    /// Runs the seed command; its exit code.
    pub fn run(self, limits: &selfspec::seeds::Limits) -> anyhow::Result<u8> {
        use selfspec::seeds::command;
        let ok = |r: anyhow::Result<()>| r.map(|()| 0);
        match self {
            SeedsCommand::Validate { files } => Ok(command::validate(&files, limits)),
            SeedsCommand::Stats { file, json } => ok(command::stats(&file, json, limits)),
            SeedsCommand::Import { format, input, output, domain, task, skip_invalid, force } => {
                let args = command::Import { format: format.into(), input, output, domain, task, skip_invalid, force };
                ok(command::import(args, limits))
            }
            SeedsCommand::Export { file, output, force } => ok(command::export(&file, &output, force, limits)),
            SeedsCommand::Fmt { files, check } => command::fmt(&files, check, limits),
        }
    }
}

impl IndexCommand {
    pub fn run(self) -> anyhow::Result<()> {
        use selfspec::corpus::command;
        match self {
            IndexCommand::Build { corpus, out, force } => command::build(&corpus, &out, force),
            IndexCommand::Info { corpus, index, json } => command::info(&corpus, index.as_deref(), json),
            IndexCommand::Search { index, query, k, json } => command::search(&index, &query, k, json),
        }
    }
}

impl SamplesCommand {
    pub fn run(self, limits: &selfspec::seeds::Limits) -> anyhow::Result<()> {
        use selfspec::generate::command;
        match self {
            SamplesCommand::Export { run, out, force } => command::export(&run, &out, force),
            SamplesCommand::Promote { run, id, task, seeds } => {
                command::promote(&run, &id, &task, seeds.as_deref(), limits)
            }
            SamplesCommand::Trace { run, id, json, top } => command::trace(&run, &id, json, top),
            SamplesCommand::Decide { run, id, decision, output } => command::decide(&run, &id, decision.into(), output),
        }
    }
}
