//! The bodies of `selfspec generate`, `complete` and `samples`: building a generation job from
//! what the command was given, running it under the run protocol, and printing its progress.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use super::follow::Generation;
use super::pipeline::{self, Job, Mode, Outcome, Progress};
use crate::backend::{Backend, Loaded};
use crate::decode::{Request, Sampling, SamplingParams};
use crate::model::adapters::adapter::Spec;
use crate::model::Choice;
use crate::seeds;

/// What `selfspec generate` was asked.
pub struct Options {
    pub seeds: PathBuf,
    /// The model here, or a server (its tuned model, for a second round, among its adapters
    /// under [`pipeline::ADAPTER`]).
    pub backend: Backend,
    pub n: usize,
    pub run: PathBuf,
    pub corpus: Option<PathBuf>,
    pub k: Option<usize>,
    pub mode: Option<Mode>,
    pub seed: u64,
    /// Every event as a JSON line on stdout instead of progress lines on stderr.
    pub jsonl: bool,
    pub adapter: Option<PathBuf>,
    pub contrastive: bool,
    pub alpha: f64,
    /// Started by the workbench: a SIGHUP does not stop it.
    pub detached: bool,
}

/// Runs `selfspec generate`; the exit code (0 done, 130 stopped, 3 budget spent).
pub fn generate(
    opts: Options,
    settings: &pipeline::Settings,
    limits: &seeds::Limits,
    workspace: &Path,
) -> anyhow::Result<u8> {
    let lock = crate::runs::Lock::acquire(&opts.run)?;
    let result = generate_locked(&lock, &opts, settings, limits, workspace);
    if let Err(e) = &result {
        crate::runs::record_failure(&opts.run, &format!("{e:#}"));
    }
    result
}

fn generate_locked(
    lock: &crate::runs::Lock,
    opts: &Options,
    settings: &pipeline::Settings,
    limits: &seeds::Limits,
    workspace: &Path,
) -> anyhow::Result<u8> {
    // The run's recorded job, read once (None for a new run): what a continued run keeps, and
    // what Run::open compares the new job with.
    let recorded = crate::runs::read_job::<Job>(&opts.run, crate::runs::Kind::Generate)?;
    let loaded = load_seeds(&opts.seeds, limits)?;
    let mut settings = settings.clone();
    if let Some(k) = opts.k {
        settings.k = k;
    }
    settings.check().map_err(anyhow::Error::msg)?;
    let mode = opts.mode.unwrap_or(if opts.corpus.is_some() { Mode::Marginal } else { Mode::None });
    let index = match &opts.corpus {
        Some(corpus) => Some(index_of(corpus)?),
        None if mode != Mode::None => {
            anyhow::bail!("--mode {mode} needs --corpus (a JSONL corpus, a folder of .txt files, or an index folder)")
        }
        None => None,
    };
    let searcher = index.as_deref().map(crate::corpus::Searcher::open).transpose()?;
    anyhow::ensure!(opts.n > 0, "--n must be at least 1");
    anyhow::ensure!(opts.alpha > 0.0 && opts.alpha <= 1.0, "--alpha must be in (0, 1]");
    // A run keeps the templates it started with: a run begun before the workspace had its
    // prompts/ folder continues on the built-in ones.
    let prompts_dir = match &recorded {
        Some(old) => old.prompts.clone(),
        None => Some(workspace.join("prompts")).filter(|d| d.is_dir()),
    };
    let templates = crate::prompts::Templates::load(prompts_dir.as_deref(), &loaded.file.prompts)?;
    let adapters: Vec<Spec> =
        opts.adapter.iter().map(|dir| Spec { name: pipeline::ADAPTER.into(), dir: dir.clone() }).collect();
    let mut ready =
        opts.backend.load(&adapters, "name the tuned model the server serves with --served-adapter NAME")?;
    int8_activations(&opts.backend, &mut ready, &mut settings);
    let tuned = opts.adapter.is_some() || ready.remote().is_some_and(|r| !r.adapters.is_empty());
    anyhow::ensure!(
        !opts.contrastive || tuned,
        "--contrastive needs the tuned model: --adapter DIR (or --served-adapter NAME through a server)"
    );
    let settings = resolve(settings, recorded.as_ref(), &ready);
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let job = Job {
        seeds: absolute(&opts.seeds),
        model: match &opts.backend {
            Backend::Local(choice) => choice.name.clone(),
            Backend::Remote(remote) => remote.served_model.clone(),
        },
        backend: ready.remote().cloned(),
        n: opts.n,
        mode,
        corpus: index.as_deref().map(absolute),
        seed: opts.seed,
        prompts: prompts_dir,
        adapter: opts.adapter.as_deref().map(absolute),
        contrastive: (opts.contrastive && tuned).then_some(opts.alpha),
        settings,
    };
    let (mut run, _) = pipeline::Run::open(lock, &opts.run, recorded.as_ref(), job)?;
    say_how(&run.job);
    let cancel = Arc::new(AtomicBool::new(false));
    crate::signals::watch(cancel.clone(), opts.detached);
    let inputs = pipeline::Inputs {
        engine: ready.engine(),
        seeds: &loaded.file,
        templates: &templates,
        searcher: searcher.as_ref(),
    };
    let outcome = pipeline::run(&mut run, &inputs, &cancel, &mut printer(opts.jsonl))?;
    Ok(said_end(&run, outcome, opts.n))
}

/// The seed file, its warnings printed; refused with its problems when it has any.
fn load_seeds(path: &Path, limits: &seeds::Limits) -> anyhow::Result<seeds::Loaded> {
    let loaded = seeds::load(path, limits).with_context(|| format!("cannot read the seed file {}", path.display()))?;
    for p in loaded.problems.iter().filter(|p| p.warning) {
        eprintln!("warning: {p}");
    }
    if !loaded.is_valid() {
        for p in loaded.problems.iter().filter(|p| !p.warning) {
            eprintln!("{p}");
        }
        anyhow::bail!(
            "{}: {} problems; fix them (`selfspec seeds validate` lists them) before generating",
            path.display(),
            loaded.errors()
        );
    }
    Ok(loaded)
}

/// The index to retrieve from: a corpus named as a file or .txt folder is indexed beside itself
/// (built when missing, rebuilt when the corpus changed), the one rule of
/// [`crate::corpus::profile::ensure_index`], said on stderr when it builds; the run records the
/// index. A sweep indexes its corpus with it once before its generation stages.
pub fn index_of(corpus: &Path) -> anyhow::Result<PathBuf> {
    use crate::corpus::profile::{ensure_index, Indexed};
    let (index, done) = ensure_index(corpus, &mut |n, _| {
        if n.is_multiple_of(10_000) {
            eprint!("\rindexing {}: {n} documents", corpus.display());
        }
    })?;
    match done {
        Indexed::Used => {}
        Indexed::Built => eprintln!("\rindexed {} into {}", corpus.display(), index.display()),
        Indexed::Rebuilt => eprintln!(
            "\r{} changed after its index was built: indexed it again into {}",
            corpus.display(),
            index.display()
        ),
    }
    Ok(index)
}

/// Int8 activations, from --int8-activations or the configuration, set on a local model and
/// recorded in the run; a server decodes as it is set up to.
fn int8_activations(backend: &Backend, ready: &mut Loaded, settings: &mut pipeline::Settings) {
    match (backend, ready) {
        (Backend::Local(choice), Loaded::Local(model)) => {
            settings.int8_activations |= choice.int8;
            if settings.int8_activations && !choice.int8 {
                if let Some(note) = model.set_int8_activations(true) {
                    eprintln!("note: {note}");
                }
            }
        }
        _ if settings.int8_activations => {
            eprintln!("note: int8_activations is this process's setting; the server decodes as it is set up to");
            settings.int8_activations = false;
        }
        _ => {}
    }
}

/// A new run resolves what the configuration leaves to selfspec (the prompt format, the sampling
/// of task lists) for this model; a continued run keeps what it resolved. A served model's size
/// and template are not known here: it gets the paper's sampling and plain prompts unless the
/// configuration says otherwise.
fn resolve(settings: pipeline::Settings, recorded: Option<&Job>, ready: &Loaded) -> pipeline::Settings {
    match recorded {
        Some(old) => {
            let mut s = settings;
            if s.prompt_format == pipeline::PromptFormat::Auto {
                s.prompt_format = old.settings.prompt_format;
            }
            s.instruction_temperature = s.instruction_temperature.or(old.settings.instruction_temperature);
            s.instruction_top_p = s.instruction_top_p.or(old.settings.instruction_top_p);
            s.kv_cache_dtype = s.kv_cache_dtype.or(old.settings.kv_cache_dtype);
            s
        }
        None => match ready {
            Loaded::Local(model) => {
                settings.resolve(model.decoder.spec.parameters(), model.tokenizer.has_chat_template())
            }
            Loaded::Remote(_) => settings.resolve(u64::MAX, false),
        },
    }
}

/// Says where the run decodes and how its prompts are written.
fn say_how(job: &Job) {
    let s = &job.settings;
    let format = match s.prompt_format {
        pipeline::PromptFormat::Chat => "chat (the model's template)",
        _ => "plain text",
    };
    if let Some(remote) = &job.backend {
        eprintln!(
            "decoding on {} at {} ({} requests at a time)",
            remote.served_model, remote.endpoint, remote.concurrency
        );
    }
    eprintln!(
        "prompts as {format}; task lists sampled at temperature {}, top-p {}",
        s.instruction_temperature.unwrap_or(1.0),
        s.instruction_top_p.unwrap_or(0.98)
    );
}

/// What hears the run's progress: each event as a JSON line on stdout (`--jsonl`), or a line on
/// stderr at the start, every 5 s and for each note.
fn printer(jsonl: bool) -> impl FnMut(&Progress) {
    let started = std::time::Instant::now();
    let mut last: Option<std::time::Instant> = None;
    let mut view = Generation::default();
    move |p: &Progress| {
        if jsonl {
            use std::io::Write;
            // Not a lock held across the run: the decoding runs on a pool worker.
            if let Ok(text) = serde_json::to_string(p) {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            return;
        }
        view.apply(p.clone());
        match p {
            Progress::Started { n, budget, resumed, mode, weighting, .. } => {
                let resumed = if *resumed > 0 { format!(", continuing with {resumed} kept") } else { String::new() };
                let weights = if *mode == Mode::Marginal { format!(", weights: {weighting}") } else { String::new() };
                eprintln!("generating {n} samples (mode {mode}{weights}; budget {budget} prompts{resumed})");
            }
            // One line every 5 s at most (the counters come once a second).
            Progress::Batch { .. } if last.is_none_or(|t: std::time::Instant| t.elapsed().as_secs_f64() >= 5.0) => {
                last = Some(std::time::Instant::now());
                eprintln!("{}", view.line(started.elapsed().as_secs_f64()))
            }
            Progress::Note { text } => eprintln!("note: {text}"),
            _ => {}
        }
    }
}

/// Says how the run ended and what to do next; the exit code (0 done, 130 stopped, 3 the
/// prompt budget spent).
fn said_end(run: &pipeline::Run, outcome: Outcome, n: usize) -> u8 {
    let view = Generation { counters: run.counters.clone(), ..Generation::default() };
    let summary = view.summary(&run.dir.join(pipeline::SAMPLES));
    match outcome {
        Outcome::Done => {
            eprintln!("done: {summary}");
            0
        }
        Outcome::Cancelled => {
            eprintln!("stopped: {summary}\nrun the same command again to continue");
            130
        }
        Outcome::Budget { budget } => {
            eprintln!(
                "stopped: the prompt budget ({budget} prompts) is spent with {} of {} samples kept.\n{summary}\n\
                 The model writes too few usable tasks: try a larger model, more or more varied seeds, or raise \
                 generation.prompt_budget in the config; running the same command continues from here.",
                run.counters.kept, n
            );
            3
        }
    }
}

/// What `selfspec complete` was asked.
pub struct CompleteOptions {
    pub model: Choice,
    pub adapters: Vec<Spec>,
    /// The adapter applied (`none`: the base alone; default: the last loaded).
    pub use_adapter: Option<String>,
    pub prompt: String,
    pub chat: bool,
    pub system: Option<String>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keys and values kept in f16 (`--kv-cache f16`).
    pub half_kv: bool,
    pub json: bool,
}

/// Runs `selfspec complete`: the continuation streamed to stdout, or one JSON object.
pub fn complete(opts: CompleteOptions) -> anyhow::Result<()> {
    let mut model = opts.model.load()?;
    crate::model::adapters::adapter::load_all(&mut model, &opts.adapters)?;
    let chosen = match opts.use_adapter.as_deref() {
        Some("none") => None,
        Some(n) => {
            anyhow::ensure!(
                opts.adapters.iter().any(|s| s.name == n),
                "--use {n}: no adapter of that name (loaded: {})",
                opts.adapters.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            );
            Some(n.to_string())
        }
        None => opts.adapters.last().map(|s| s.name.clone()),
    };
    crate::model::adapters::adapter::enable_only(&mut model, chosen.as_deref());
    let model = model;
    let prompt_ids = if opts.chat {
        let mut messages = Vec::new();
        if let Some(system) = &opts.system {
            messages.push(crate::model::text::chat::Message::new("system", system));
        }
        messages.push(crate::model::text::chat::Message::new("user", &opts.prompt));
        model.tokenizer.encode_chat(&messages)?
    } else {
        model.tokenizer.encode(&opts.prompt)?
    };
    let request = Request {
        stop: opts.stop.clone(),
        sampling: opts.sampling,
        ..Request::new(prompt_ids.clone(), opts.max_new_tokens)
    };
    let options = crate::decode::Options { prompt_top: 5, max_batch: 1, half_kv: opts.half_kv, ..Default::default() };
    let cancel = AtomicBool::new(false);
    let json = opts.json;
    let mut out = std::io::stdout();
    let mut on_event = |event: crate::decode::Event| {
        if let (false, crate::decode::Event::Token { text, .. }) = (json, event) {
            use std::io::Write;
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    };
    let (completions, timing) = crate::decode::generate(&model, &[request], &options, &mut on_event, &cancel)?;
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
    Ok(())
}

/// The sampling `complete` asks for: greedy unless a temperature is given.
pub fn sampling(temperature: Option<f64>, top_k: Option<usize>, top_p: Option<f64>) -> Sampling {
    match temperature {
        Some(temperature) => Sampling::Sample { temperature, top_k, top_p },
        None => Sampling::Greedy,
    }
}

/// A review decision given on the command line.
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    Accept,
    Reject,
    Pending,
}

/// `selfspec samples promote`: prints the new seed's id and file.
pub fn promote(
    run: &Path,
    id: &str,
    task: &str,
    seeds: Option<&Path>,
    limits: &crate::seeds::Limits,
) -> anyhow::Result<()> {
    let p = super::promote::promote(run, id, task, seeds, limits)?;
    println!("{id} → seed {} in {}", p.id, p.seeds.display());
    Ok(())
}

/// `selfspec samples trace`: the trace as JSON or as text.
pub fn trace(run: &Path, id: &str, json: bool, top: usize) -> anyhow::Result<()> {
    let t = super::trace::trace(run, id, top)?;
    match json {
        true => println!("{}", serde_json::to_string(&t)?),
        false => print!("{}", super::trace::to_text(&t)),
    }
    Ok(())
}

/// `selfspec samples export`: the accepted and edited samples as Alpaca JSONL.
pub fn export(run: &Path, out: &Path, force: bool) -> anyhow::Result<()> {
    crate::fsutil::refuse_overwrite(out, force, &[run])?;
    let n = super::review::Review::open_run(run)?.export_alpaca(out)?;
    println!("{n} samples written to {}", out.display());
    Ok(())
}

/// `selfspec samples decide`: one review decision, saved at once.
pub fn decide(run: &Path, id: &str, decision: Decision, output: Option<String>) -> anyhow::Result<()> {
    use super::samples::Status;
    if let Some(o) = &output {
        anyhow::ensure!(
            !o.trim().is_empty(),
            "--output is empty: an edited sample needs the response; to drop the sample, reject it"
        );
        anyhow::ensure!(
            !matches!(decision, Decision::Reject | Decision::Pending),
            "--output edits the response of a sample kept for training; it does not go with reject or pending"
        );
    }
    let mut review = super::review::Review::open_run(run)?;
    let status = match (decision, &output) {
        (_, Some(_)) => Status::Edited,
        (Decision::Accept, None) => Status::Accepted,
        (Decision::Reject, None) => Status::Rejected,
        (Decision::Pending, None) => Status::Pending,
    };
    review.decide(id, status, output)?;
    println!("{id}: {}", serde_json::to_value(status)?.as_str().unwrap_or_default());
    Ok(())
}
