//! The command line: clap's definitions of every command and flag, and the choices that mirror
//! the engine's enums (the engine does not know clap). main.rs dispatches what this parses.

mod backend;
mod bench;
mod choices;
mod complete;
mod data;
mod eval;
mod generate;
mod model;
mod train;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use bench::*;
pub use choices::*;
pub use complete::*;
pub use data::*;
pub use eval::*;
pub use generate::*;
pub use model::*;
pub use train::*;

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
