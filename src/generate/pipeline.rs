//! Stages 2 and 3 of self-specialization as one resumable run: the base model writes task lists
//! from random seed demos, the filters keep new and well-formed instructions, and each kept
//! instruction gets a response — without documents, with the top BM25 document, or marginalised
//! over the top-k documents (the paper's eq. 2).
//!
//! A run folder holds `config.yaml` (the job), `samples.jsonl` (kept samples, fsynced one at a
//! time), `filtered.jsonl` (instructions the filters dropped, and why) and `events.jsonl` (one
//! line per finished batch of prompts, with the counters).
//!
//! Resuming is a replay. Prompt `p` draws its demos and sampling seed from `(seed, p)` alone, and
//! a task's sample id is its place, `p{prompt}-{task}`; the counters and the next prompt come
//! from the last batch event. A batch cut by a kill is decoded again from its start: tasks whose
//! ids are already stored are skipped, the store refuses a second copy of an id, and so nothing
//! is duplicated or lost.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::filters::{Filters, Pool};
use super::samples::{DocumentRef, Provenance, Sample, SampleStore, Status};
use crate::backend::{self, Engine, Prompt, Remote};
use crate::corpus::{Hit, Searcher};
use crate::decode::{Event, Finish, Request, Sampling, SamplingParams};
use crate::fsutil::JsonLog;
use crate::prompts::{self, Templates};
use crate::rng::Rng;
use crate::seeds::{Seed, SeedFile};

pub use super::samples::Mode;

pub use crate::prompts::PromptFormat;

/// How BM25 scores become mixture weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Weighting {
    /// w_j ∝ exp(score_j / temperature): the retriever as a distribution over documents (RAG).
    Softmax { temperature: f64 },
    /// w_j = score_j / Σ scores.
    L1,
}

impl Weighting {
    pub fn weights(&self, scores: &[f32]) -> Vec<f64> {
        match *self {
            Weighting::Softmax { temperature } => {
                let t = temperature.max(1e-6);
                let max = scores.iter().map(|&s| s as f64).fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|&s| ((s as f64 - max) / t).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|x| x / sum).collect()
            }
            Weighting::L1 => {
                let sum: f64 = scores.iter().map(|&s| (s as f64).max(0.0)).sum();
                if sum <= 0.0 {
                    return vec![1.0 / scores.len() as f64; scores.len()];
                }
                scores.iter().map(|&s| (s as f64).max(0.0) / sum).collect()
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Weighting::Softmax { temperature } => format!("softmax of BM25 scores, temperature {temperature}"),
            Weighting::L1 => "BM25 scores over their sum".into(),
        }
    }
}

/// The generation settings (`generation:` in config.yaml; recorded in each run's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Seeds shown as demonstrations in each instruction prompt.
    pub demos: usize,
    /// Tasks each instruction prompt asks for.
    pub tasks_per_prompt: usize,
    /// How prompts reach the model: the paper's plain text, or each prompt as a user message in
    /// the model's chat template. `auto` picks chat when the model has a chat template; a run
    /// records what was picked.
    pub prompt_format: PromptFormat,
    /// Sampling of the task lists; null: chosen by the model's size ([`Settings::resolve`]) and
    /// recorded in the run.
    pub instruction_temperature: Option<f64>,
    pub instruction_top_p: Option<f64>,
    pub instruction_max_new_tokens: usize,
    /// Instruction prompts decoded together.
    pub prompts_per_batch: usize,
    /// Stop after this many prompts even if fewer than N samples were kept (null: 10 prompts for
    /// every `tasks_per_prompt` samples asked for, and at least 20).
    pub prompt_budget: Option<usize>,
    /// Responses: greedy when null, else sampled at this temperature.
    pub response_temperature: Option<f64>,
    pub response_top_p: Option<f64>,
    pub response_max_new_tokens: usize,
    /// Samples whose responses are decoded together (each is k rows in marginal mode).
    pub responses_per_batch: usize,
    /// Documents retrieved per response in marginal mode.
    pub k: usize,
    pub weighting: Weighting,
    /// A retrieved document is cut to this many characters in the prompt.
    pub document_max_chars: usize,
    pub filters: Filters,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            demos: 3,
            tasks_per_prompt: 20,
            prompt_format: PromptFormat::Auto,
            instruction_temperature: None,
            instruction_top_p: None,
            instruction_max_new_tokens: 2048,
            prompts_per_batch: 8,
            prompt_budget: None,
            response_temperature: None,
            response_top_p: None,
            response_max_new_tokens: 512,
            responses_per_batch: 8,
            k: 5,
            weighting: Weighting::Softmax { temperature: 1.0 },
            document_max_chars: 2000,
            filters: Filters::default(),
        }
    }
}

impl Settings {
    pub fn budget(&self, n: usize) -> usize {
        self.prompt_budget.unwrap_or_else(|| (10 * n.div_ceil(self.tasks_per_prompt.max(1))).max(20))
    }

    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("demos", self.demos),
            ("tasks_per_prompt", self.tasks_per_prompt),
            ("instruction_max_new_tokens", self.instruction_max_new_tokens),
            ("prompts_per_batch", self.prompts_per_batch),
            ("response_max_new_tokens", self.response_max_new_tokens),
            ("responses_per_batch", self.responses_per_batch),
            ("k", self.k),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("generation.{name} must be at least 1"));
        }
        if self.instruction_top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return Err("generation.instruction_top_p must be in (0, 1]".into());
        }
        if self.instruction_temperature.is_some_and(|t| t < 0.0) || self.response_temperature.is_some_and(|t| t < 0.0) {
            return Err("generation temperatures must be ≥ 0".into());
        }
        if let Weighting::Softmax { temperature } = self.weighting {
            if temperature <= 0.0 || !temperature.is_finite() {
                return Err("generation.weighting.temperature must be > 0".into());
            }
        }
        Ok(())
    }

    /// The settings a new run records for a model of `parameters` weights with (or without) a
    /// chat template: `auto` and null resolved. The paper sampled its 30B base model's task lists
    /// at temperature 1.0 and top-p 0.98; a model under 1B parameters writes noise at those
    /// (docs/RESULTS.md), so smaller models sample cooler: under 1B 0.7 and 0.9, under 7B 0.9 and
    /// 0.95, the paper's values from 7B up.
    pub fn resolve(&self, parameters: u64, chat_template: bool) -> Settings {
        let mut s = self.clone();
        if s.prompt_format == PromptFormat::Auto {
            s.prompt_format = if chat_template { PromptFormat::Chat } else { PromptFormat::Plain };
        }
        let (t, p) = match parameters {
            n if n < 1_000_000_000 => (0.7, 0.9),
            n if n < 7_000_000_000 => (0.9, 0.95),
            _ => (1.0, 0.98),
        };
        s.instruction_temperature.get_or_insert(t);
        s.instruction_top_p.get_or_insert(p);
        s
    }

    /// The task lists' sampling; a run recorded before these were chosen by size used the
    /// paper's values.
    fn instruction_sampling(&self, seed: u64) -> SamplingParams {
        let temperature = self.instruction_temperature.unwrap_or(1.0);
        let sampling = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample { temperature, top_k: None, top_p: Some(self.instruction_top_p.unwrap_or(0.98)) }
        };
        SamplingParams { sampling, seed, repetition_penalty: None }
    }

    fn response_sampling(&self, seed: u64) -> SamplingParams {
        let sampling = match self.response_temperature {
            Some(t) if t > 0.0 => Sampling::Sample { temperature: t, top_k: None, top_p: self.response_top_p },
            _ => Sampling::Greedy,
        };
        SamplingParams { sampling, seed, repetition_penalty: None }
    }
}

/// One generation job: what `selfspec generate` was asked, saved as the run's config.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub seeds: PathBuf,
    pub model: String,
    /// Samples to keep.
    pub n: usize,
    pub mode: Mode,
    pub corpus: Option<PathBuf>,
    pub seed: u64,
    /// Where editable templates are read from (a workspace's prompts/), if anywhere.
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// The second round: a LoRA adapter (the tuned model) over `model`.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// Contrastive decoding against the base with this α (needs `adapter`, or a served adapter).
    #[serde(default)]
    pub contrastive: Option<f64>,
    /// The server the run decodes on (none: this process). Its tuned model, for a second round,
    /// is its adapter named [`ADAPTER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Remote>,
    #[serde(default)]
    pub settings: Settings,
}

impl Job {
    /// The tuned model of a second round: its adapter folder, or its name on the server.
    pub fn tuned_model(&self) -> Option<String> {
        let served = self.backend.as_ref().and_then(|b| b.adapters.iter().find(|(n, _)| n == ADAPTER));
        self.adapter.as_ref().map(|p| p.display().to_string()).or_else(|| served.map(|(_, s)| s.clone()))
    }

    /// The parts that must not change when a run is resumed (N, the budget and batch sizes may).
    fn identity(&self) -> Job {
        let mut j = self.clone();
        j.n = 0;
        j.settings.prompt_budget = None;
        j.settings.prompts_per_batch = 0;
        j.settings.responses_per_batch = 0;
        j.backend = j.backend.map(|b| b.identity());
        j
    }

    /// What differs in the parts that must not change, one line per key.
    pub fn differences(&self, other: &Job) -> Vec<String> {
        let (a, b) = (self.identity(), other.identity());
        let (a, b) = (serde_json::to_value(&a).unwrap_or_default(), serde_json::to_value(&b).unwrap_or_default());
        let mut out = Vec::new();
        diff("", &a, &b, &mut out);
        out
    }
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = serde_json::Value::Null;
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(&p, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} (run) vs {b} (now)")),
        _ => {}
    }
}

/// Running totals of a run (over all its sessions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Instruction prompts decoded (the next prompt's index).
    pub prompts: usize,
    /// Tasks read from the model's lists.
    pub parsed: usize,
    /// List items not read, by reason.
    pub unparsed: BTreeMap<String, usize>,
    /// Instructions dropped, by filter.
    pub filtered: BTreeMap<String, usize>,
    /// Responses dropped (empty, or cut by a stop).
    pub empty_responses: usize,
    /// Responses dropped: caught in a repetition loop.
    pub looping_responses: usize,
    /// Samples kept.
    pub kept: usize,
    pub instruction_tokens: usize,
    pub response_tokens: usize,
    /// Seconds spent generating, over all sessions.
    pub seconds: f64,
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// N samples are kept.
    Done,
    /// The prompt budget was used up first.
    Budget { budget: usize },
    /// Stopped on request; running the same command again continues.
    Cancelled,
}

/// What a run reports while it goes (`selfspec generate --progress jsonl` prints these; the TUI
/// reads them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Started {
        n: usize,
        budget: usize,
        resumed: usize,
        counters: Counters,
        mode: Mode,
        weighting: String,
    },
    /// A batch of instruction prompts starts decoding.
    Prompts {
        first: usize,
        count: usize,
    },
    /// Text of instruction prompt `prompt`, as it is decoded.
    InstructionText {
        prompt: usize,
        text: String,
    },
    /// Responses for these ids start decoding.
    Responding {
        ids: Vec<String>,
    },
    ResponseText {
        id: String,
        text: String,
    },
    Filtered {
        id: String,
        instruction: String,
        rejection: String,
    },
    Kept {
        sample: Box<Sample>,
    },
    /// A batch is finished (also written to events.jsonl).
    Batch {
        counters: Counters,
    },
    Finished {
        outcome: Outcome,
        counters: Counters,
    },
    /// Something the user should know (a torn log line cut on continuing).
    Note {
        text: String,
    },
}

impl crate::runs::RunEvent for Progress {
    fn end(&self) -> Option<crate::runs::End> {
        match self {
            Progress::Finished { outcome: Outcome::Cancelled, .. } => Some(crate::runs::End::Stopped),
            Progress::Finished { .. } => Some(crate::runs::End::Finished),
            _ => None,
        }
    }

    fn durable(&self) -> bool {
        !matches!(self, Progress::InstructionText { .. } | Progress::ResponseText { .. })
    }
}

/// Text events gathered for the log: each stream's text (a batch decodes many at once) written
/// as one line per quarter second, not one per token (the caller's sink still sees every token).
#[derive(Default)]
struct Coalesced {
    /// One pending text event per stream, in order of first arrival.
    pending: Vec<Progress>,
    since: Option<Instant>,
}

impl Coalesced {
    /// Adds a text event; returns the events to write now.
    fn push(&mut self, p: &Progress) -> Vec<Progress> {
        let merged = self.pending.iter_mut().any(|q| match (q, p) {
            (Progress::InstructionText { prompt: a, text }, Progress::InstructionText { prompt: b, text: t })
                if a == b =>
            {
                text.push_str(t);
                true
            }
            (Progress::ResponseText { id: a, text }, Progress::ResponseText { id: b, text: t }) if a == b => {
                text.push_str(t);
                true
            }
            _ => false,
        });
        if !merged {
            self.pending.push(p.clone());
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed().as_millis() >= 250 {
            return self.flush();
        }
        Vec::new()
    }

    fn flush(&mut self) -> Vec<Progress> {
        self.since = None;
        std::mem::take(&mut self.pending)
    }
}

/// A run folder being written.
pub struct Run {
    pub dir: PathBuf,
    pub job: Job,
    store: SampleStore,
    filtered: JsonLog,
    filtered_ids: HashSet<String>,
    /// events.jsonl's writer (lent to the [`Sink`] while [`run`] goes).
    events: Option<crate::runs::Log<Progress>>,
    pub counters: Counters,
    /// What opening found that the user should know (a torn log line cut).
    pub notes: Vec<String>,
}

/// The name the second round's adapter is loaded under.
pub const ADAPTER: &str = "tuned";
pub const SAMPLES: &str = "samples.jsonl";
pub const FILTERED: &str = "filtered.jsonl";
pub const EVENTS: &str = "events.jsonl";

/// One line of filtered.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilteredRecord {
    pub id: String,
    pub instruction: String,
    pub input: String,
    pub rejection: serde_json::Value,
    pub most_similar: Option<String>,
}

/// The templates folder the generation run in `dir` was started with (`Some(None)`: the
/// built-in templates), or `None` when `dir` holds no readable run config.
pub fn recorded_prompts(dir: &Path) -> Option<Option<PathBuf>> {
    crate::runs::read_job::<Job>(dir, crate::runs::Kind::Generate).ok().flatten().map(|job| job.prompts)
}

impl Run {
    /// Opens (or starts) the run in `dir` for `job`; the caller holds the folder's lock. A run
    /// started with other settings is refused with the differences.
    pub fn open(_lock: &crate::runs::Lock, dir: &Path, job: Job) -> anyhow::Result<(Run, usize)> {
        use crate::runs::Kind;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
        if let Some(old) = crate::runs::read_job::<Job>(dir, Kind::Generate)? {
            let diffs = old.differences(&job);
            if !diffs.is_empty() {
                anyhow::bail!(
                    "{} was started with other settings:\n  {}\nrun the same command again to continue it, or pass a new --run folder",
                    dir.display(),
                    diffs.join("\n  ")
                );
            }
        }
        crate::runs::write_config(dir, Kind::Generate, &job)?;
        let (store, _) = SampleStore::open(&dir.join(SAMPLES))?;
        let filtered_path = dir.join(FILTERED);
        let filtered_ids =
            crate::fsutil::read_jsonl::<FilteredRecord>(&filtered_path)?.into_iter().map(|r| r.id).collect();
        let filtered = JsonLog::open(&filtered_path)?;
        let (events, torn) = crate::runs::Log::<Progress>::open(dir)?;
        let mut counters = Counters::default();
        let mut tail = crate::runs::Tail::new(dir);
        let read = tail.read::<Progress>();
        for entry in read.entries {
            if let Some(Progress::Batch { counters: c } | Progress::Finished { counters: c, .. }) = entry.event {
                counters = c;
            }
        }
        counters.kept = store.len();
        let mut notes: Vec<String> = torn.into_iter().collect();
        notes.extend(read.dropped);
        let resumed = store.len();
        let run =
            Run { dir: dir.to_path_buf(), job, store, filtered, filtered_ids, events: Some(events), counters, notes };
        Ok((run, resumed))
    }

    pub fn samples(&self) -> &[Sample] {
        self.store.samples()
    }
}

/// Where a run's events go: events.jsonl (text gathered, see [`Coalesced`]) and the caller.
struct Sink<'a> {
    log: crate::runs::Log<Progress>,
    text: Coalesced,
    on_progress: &'a mut (dyn FnMut(&Progress) + Send),
    /// The first failed write; the run stops with it at the next check.
    error: Option<anyhow::Error>,
}

impl Sink<'_> {
    fn emit(&mut self, p: &Progress) {
        let written = if crate::runs::RunEvent::durable(p) {
            self.text.flush().iter().try_for_each(|e| self.log.append(e)).and_then(|()| self.log.append(p))
        } else {
            self.text.push(p).iter().try_for_each(|e| self.log.append(e))
        };
        if let Err(e) = written {
            self.error.get_or_insert(e);
        }
        (self.on_progress)(p);
    }

    fn check(&mut self) -> anyhow::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Prompt `p`'s own random stream: the same for every session of the run.
fn prompt_rng(seed: u64, p: usize) -> Rng {
    let mut r = Rng::new(seed ^ 0x5eed_5eed_0000_0000);
    for _ in 0..2 {
        r.next_u64();
    }
    Rng::new(r.next_u64() ^ (p as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// `count` distinct indices below `n`, drawn with `rng` (a partial Fisher–Yates shuffle).
pub fn draw(rng: &mut Rng, n: usize, count: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let count = count.min(n);
    for i in 0..count {
        let j = i + (rng.next_u64() % (n - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(count);
    idx
}

/// The name a filter or parse failure goes by in counters: its serde name (`too_similar`,
/// `truncated`, …), so counters, filtered.jsonl and samples spell it one way.
fn serde_name(value: &impl Serialize, tag: Option<&str>) -> String {
    let v = serde_json::to_value(value).unwrap_or_default();
    let v = match tag {
        Some(t) => &v[t],
        None => &v,
    };
    v.as_str().unwrap_or("unknown").to_string()
}

/// A task that passed the filters and waits for its response.
struct Candidate {
    id: String,
    instruction: String,
    input: String,
    demos: Vec<String>,
    instruction_sampling: SamplingParams,
    most_similar: Option<(String, f64)>,
    documents: Vec<DocumentRef>,
}

/// Everything a run needs besides its folder.
pub struct Inputs<'a> {
    /// The engine: the local model (with the job's adapter, if any, loaded under [`ADAPTER`]),
    /// or a server (the tuned model's served name under [`ADAPTER`]).
    pub engine: Engine<'a>,
    pub seeds: &'a SeedFile,
    pub templates: &'a Templates,
    pub searcher: Option<&'a Searcher>,
}

/// Runs `run` until it holds `job.n` samples, the budget is spent, or `cancel` is set.
pub fn run(
    run: &mut Run,
    inputs: &Inputs,
    cancel: &AtomicBool,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> anyhow::Result<Outcome> {
    let job = run.job.clone();
    let s = &job.settings;
    s.check().map_err(anyhow::Error::msg)?;
    let seeds: Vec<&Seed> = inputs.seeds.seeds.iter().collect();
    anyhow::ensure!(!seeds.is_empty(), "{}: the seed file has no seeds", job.seeds.display());
    anyhow::ensure!(
        job.mode == Mode::None || inputs.searcher.is_some(),
        "mode {} needs a corpus index: pass --corpus INDEX_DIR (build one with `selfspec index build`)",
        job.mode
    );
    let budget = s.budget(job.n);
    let mut pool = Pool::default();
    let mut pool_text: Vec<String> = Vec::new();
    for seed in &seeds {
        pool.add(&seed.instruction);
        pool_text.push(format!("seed {}: {}", seed.id, seed.instruction.trim()));
    }
    for sample in run.samples() {
        pool.add(&sample.instruction);
        pool_text.push(format!("sample {}: {}", sample.id, sample.instruction.trim()));
    }
    let started = Instant::now();
    let base_seconds = run.counters.seconds;
    let log = run.events.take().context("the run's event log is in use")?;
    let mut sink = Sink { log, text: Coalesced::default(), on_progress, error: None };
    let outcome = go(run, inputs, cancel, &mut sink, &mut pool, &mut pool_text, budget, started, base_seconds);
    run.events = Some(sink.log);
    let outcome = outcome?;
    sink.error.map_or(Ok(outcome), Err)
}

#[allow(clippy::too_many_arguments)]
fn go(
    run: &mut Run,
    inputs: &Inputs,
    cancel: &AtomicBool,
    sink: &mut Sink,
    pool: &mut Pool,
    pool_text: &mut Vec<String>,
    budget: usize,
    started: Instant,
    base_seconds: f64,
) -> anyhow::Result<Outcome> {
    let job = run.job.clone();
    let s = &job.settings;
    let seeds: Vec<&Seed> = inputs.seeds.seeds.iter().collect();
    for note in std::mem::take(&mut run.notes) {
        sink.emit(&Progress::Note { text: note });
    }
    sink.emit(&Progress::Started {
        n: job.n,
        budget,
        resumed: run.store.len(),
        counters: run.counters.clone(),
        mode: job.mode,
        weighting: s.weighting.describe(),
    });
    let model_name = job.model.clone();
    let domain = inputs.seeds.domain.clone();
    let outcome = loop {
        if run.store.len() >= job.n {
            break Outcome::Done;
        }
        if run.counters.prompts >= budget {
            break Outcome::Budget { budget };
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            break Outcome::Cancelled;
        }
        let first = run.counters.prompts;
        let count = s.prompts_per_batch.min(budget - first);
        sink.emit(&Progress::Prompts { first, count });
        // Instruction prompts.
        let mut requests = Vec::with_capacity(count);
        let mut shown: Vec<Vec<String>> = Vec::with_capacity(count);
        let mut primers = Vec::with_capacity(count);
        for p in first..first + count {
            let mut rng = prompt_rng(job.seed, p);
            let demos: Vec<&Seed> = draw(&mut rng, seeds.len(), s.demos).into_iter().map(|i| seeds[i]).collect();
            let (prompt, primer) = prompts::instruction_prompt(
                &inputs.templates.instruction,
                &domain,
                &inputs.seeds.description,
                &demos,
                s.tasks_per_prompt,
            )?;
            let stop = format!("Task {}", demos.len() + s.tasks_per_prompt + 1);
            let request = Request {
                stop: vec![stop],
                sampling: s.instruction_sampling(rng.next_u64()),
                stop_on_loop: true,
                ..tuned(&job, 1, Request::new(Vec::new(), s.instruction_max_new_tokens))
            };
            requests.push(backend::Job::new(vec![prompt_of(s.prompt_format, &prompt, &primer)], request));
            shown.push(demos.iter().map(|d| d.id.clone()).collect());
            primers.push(primer);
        }
        let opts = crate::decode::Options { prompt_top: 0, max_batch: s.prompts_per_batch, gated: false, prefix: None };
        let mut on_event = |e: Event| {
            if let Event::Token { request, text, .. } = e {
                if !text.is_empty() {
                    sink.emit(&Progress::InstructionText { prompt: first + request, text: text.to_string() });
                }
            }
        };
        let (lists, timing) = inputs.engine.generate(&requests, &opts, &mut on_event, cancel)?;
        if lists.iter().any(|c| c.finish == Finish::Cancelled) {
            break Outcome::Cancelled;
        }
        let mut counters = run.counters.clone();
        counters.instruction_tokens += timing.decode_tokens + lists.len();
        // Parse and filter, in prompt order.
        let mut candidates = Vec::new();
        for (offset, list) in lists.iter().enumerate() {
            let p = first + offset;
            let text = format!("{} {}", primers[offset], list.text);
            let (tasks, mut failures) =
                prompts::parse_tasks(&text, matches!(list.finish, Finish::Length | Finish::Loop));
            if list.finish == Finish::Loop {
                // The item the loop is in is dropped, and counted as the loop it is.
                if let Some(last) = failures.iter_mut().rfind(|f| **f == prompts::Unparsed::Truncated) {
                    *last = prompts::Unparsed::Loop;
                }
            }
            counters.parsed += tasks.len();
            for f in failures {
                *counters.unparsed.entry(serde_name(&f, None)).or_default() += 1;
            }
            for (t, task) in tasks.into_iter().enumerate() {
                let id = format!("p{p:06}-{t:02}");
                if run.store.contains(&id) {
                    continue;
                }
                let verdict = s.filters.check(&task.instruction, pool);
                let most_similar = verdict.most_similar.map(|(i, score)| (pool_text[i].clone(), score));
                if let Some(rejection) = verdict.rejected {
                    let name = serde_name(&rejection, Some("filter"));
                    *counters.filtered.entry(name.clone()).or_default() += 1;
                    sink.emit(&Progress::Filtered {
                        id: id.clone(),
                        instruction: task.instruction.clone(),
                        rejection: name,
                    });
                    if run.filtered_ids.insert(id.clone()) {
                        let record = FilteredRecord {
                            id,
                            instruction: task.instruction,
                            input: task.input,
                            rejection: serde_json::to_value(&rejection)?,
                            most_similar: most_similar.map(|m| m.0),
                        };
                        run.filtered.append(&record)?;
                    }
                    continue;
                }
                if run.store.len() + candidates.len() >= job.n {
                    continue;
                }
                pool.add(&task.instruction);
                pool_text.push(format!("sample {id}: {}", task.instruction.trim()));
                candidates.push(Candidate {
                    id,
                    instruction: task.instruction,
                    input: task.input,
                    demos: shown[offset].clone(),
                    instruction_sampling: requests[offset].request.sampling,
                    most_similar,
                    documents: Vec::new(),
                });
            }
        }
        // Responses.
        let outcome = respond(run, inputs, &job, &model_name, &mut candidates, &mut counters, cancel, sink)?;
        if let Some(outcome) = outcome {
            break outcome;
        }
        counters.prompts = first + count;
        counters.kept = run.store.len();
        counters.seconds = base_seconds + started.elapsed().as_secs_f64();
        run.counters = counters.clone();
        sink.emit(&Progress::Batch { counters });
        sink.check()?;
    };
    run.counters.kept = run.store.len();
    run.counters.seconds = base_seconds + started.elapsed().as_secs_f64();
    sink.emit(&Progress::Finished { outcome: outcome.clone(), counters: run.counters.clone() });
    Ok(outcome)
}

/// `prompt` in `format`: the text as it is (plain), or the prompt as a user message in the chat
/// template with the assistant's turn opened and begun with `primer` (which `prompt` ends with,
/// for task lists; empty for responses).
fn prompt_of(format: PromptFormat, prompt: &str, primer: &str) -> Prompt {
    match format {
        PromptFormat::Chat => {
            let question = prompt.strip_suffix(primer).unwrap_or(prompt).trim_end();
            Prompt::Chat {
                messages: vec![crate::model::chat::Message::new("user", question)],
                primer: primer.to_string(),
            }
        }
        PromptFormat::Plain | PromptFormat::Auto => Prompt::Text(prompt.to_string()),
    }
}

/// `request` as the job's model runs it: with the tuned adapter, contrastively against the base
/// where asked (a mixture of documents keeps the adapter but is not contrastive).
fn tuned(job: &Job, prompts: usize, request: Request) -> Request {
    if job.tuned_model().is_none() {
        return request;
    }
    match job.contrastive {
        Some(alpha) if prompts == 1 => {
            Request { contrast: Some(crate::decode::Contrast { adapter: ADAPTER.into(), alpha }), ..request }
        }
        _ => Request { adapter: Some(ADAPTER.into()), ..request },
    }
}

/// The documents of one response and their weights.
fn retrieve(searcher: &Searcher, mode: Mode, s: &Settings, query: &str) -> anyhow::Result<Vec<(Hit, f64)>> {
    let k = match mode {
        Mode::None => return Ok(Vec::new()),
        Mode::Top1 => 1,
        Mode::Marginal => s.k,
    };
    let hits = searcher.search(query, k)?;
    let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
    let weights = if hits.is_empty() { Vec::new() } else { s.weighting.weights(&scores) };
    Ok(hits.into_iter().zip(weights).collect())
}

fn cut(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[allow(clippy::too_many_arguments)]
fn respond(
    run: &mut Run,
    inputs: &Inputs,
    job: &Job,
    model_name: &str,
    candidates: &mut [Candidate],
    counters: &mut Counters,
    cancel: &AtomicBool,
    sink: &mut Sink,
) -> anyhow::Result<Option<Outcome>> {
    let s = &job.settings;
    let domain = &inputs.seeds.domain;
    for chunk in candidates.chunks_mut(s.responses_per_batch) {
        let mut requests = Vec::with_capacity(chunk.len());
        for c in chunk.iter_mut() {
            let query = format!("{}\n{}", c.instruction, c.input);
            let docs = match inputs.searcher {
                Some(searcher) => retrieve(searcher, job.mode, s, &query)?,
                None => Vec::new(),
            };
            let mut texts = Vec::new();
            if docs.is_empty() {
                let text = prompts::response_prompt(inputs.templates, domain, None, &c.instruction, &c.input)?;
                texts.push(prompt_of(s.prompt_format, &text, ""));
            }
            for (hit, _) in &docs {
                let text = prompts::response_prompt(
                    inputs.templates,
                    domain,
                    Some(cut(&hit.text, s.document_max_chars)),
                    &c.instruction,
                    &c.input,
                )?;
                texts.push(prompt_of(s.prompt_format, &text, ""));
            }
            c.documents = docs.iter().map(|(h, w)| DocumentRef { id: h.id.clone(), weight: *w }).collect();
            let seed = c.instruction_sampling.seed ^ 0xa5a5_a5a5;
            let request = Request {
                weights: docs.iter().map(|(_, w)| *w).collect(),
                sampling: s.response_sampling(seed),
                stop_on_loop: true,
                ..Request::new(Vec::new(), s.response_max_new_tokens)
            };
            let request = tuned(job, texts.len(), request);
            requests.push(backend::Job::new(texts, request));
        }
        sink.emit(&Progress::Responding { ids: chunk.iter().map(|c| c.id.clone()).collect() });
        let opts = crate::decode::Options {
            prompt_top: 0,
            max_batch: s.responses_per_batch * s.k.max(1),
            gated: false,
            prefix: None,
        };
        let mut finished: Vec<(usize, crate::decode::Completion)> = Vec::new();
        let ids: Vec<String> = chunk.iter().map(|c| c.id.clone()).collect();
        let mut on_event = |e: Event| match e {
            Event::Token { request, text, .. } if !text.is_empty() => {
                sink.emit(&Progress::ResponseText { id: ids[request].clone(), text: text.to_string() })
            }
            Event::Finished { request, completion } => finished.push((request, completion.clone())),
            _ => {}
        };
        let (_, timing) = inputs.engine.generate(&requests, &opts, &mut on_event, cancel)?;
        counters.response_tokens += timing.decode_tokens + requests.len();
        // Stored in the order they finished, each fsynced before the next.
        for (i, completion) in finished {
            if completion.finish == Finish::Cancelled {
                continue;
            }
            let output = completion.text.trim().to_string();
            let c = &chunk[i];
            if completion.finish == Finish::Loop {
                counters.looping_responses += 1;
                continue;
            }
            if output.is_empty() {
                counters.empty_responses += 1;
                continue;
            }
            let sample = Sample {
                id: c.id.clone(),
                instruction: c.instruction.clone(),
                input: c.input.clone(),
                output,
                status: Status::Pending,
                provenance: Provenance {
                    demos: c.demos.clone(),
                    model: model_name.to_string(),
                    sampling: Some(c.instruction_sampling),
                    response_sampling: Some(requests[i].request.sampling),
                    mode: Some(job.mode),
                    documents: c.documents.clone(),
                    most_similar: c.most_similar.as_ref().map(|m| m.0.clone()),
                    rouge_l: c.most_similar.as_ref().map(|m| m.1),
                    finish: Some(completion.finish.clone()),
                    adapter: job.tuned_model(),
                    contrastive_alpha: job.contrastive.filter(|_| job.tuned_model().is_some()),
                    created: now_secs(),
                },
            };
            if run.store.append(sample.clone())? {
                sink.emit(&Progress::Kept { sample: Box::new(sample) });
            }
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(Some(Outcome::Cancelled));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_run_resolves_the_format_and_sampling_for_its_model() {
        let auto = Settings::default();
        let small = auto.resolve(135_000_000, true);
        assert_eq!(small.prompt_format, PromptFormat::Chat);
        assert_eq!((small.instruction_temperature, small.instruction_top_p), (Some(0.7), Some(0.9)));
        let large = auto.resolve(30_000_000_000, false);
        assert_eq!(large.prompt_format, PromptFormat::Plain);
        assert_eq!((large.instruction_temperature, large.instruction_top_p), (Some(1.0), Some(0.98)));
        // What the configuration sets is kept.
        let set = Settings { prompt_format: PromptFormat::Plain, instruction_temperature: Some(0.3), ..auto };
        let kept = set.resolve(135_000_000, true);
        assert_eq!((kept.prompt_format, kept.instruction_temperature), (PromptFormat::Plain, Some(0.3)));
    }

    #[test]
    fn interleaved_streams_are_logged_one_line_each() {
        let mut c = Coalesced::default();
        for (prompt, text) in [(5, "a"), (7, "x"), (5, "b"), (7, "y")] {
            assert!(c.push(&Progress::InstructionText { prompt, text: text.into() }).is_empty());
        }
        let out = c.flush();
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Progress::InstructionText { prompt: 5, text } if text == "ab"));
        assert!(matches!(&out[1], Progress::InstructionText { prompt: 7, text } if text == "xy"));
    }

    #[test]
    fn weights_are_distributions() {
        let soft = Weighting::Softmax { temperature: 1.0 }.weights(&[3.0, 2.0, 1.0]);
        let e: Vec<f64> = [0.0f64, -1.0, -2.0].iter().map(|x| x.exp()).collect();
        let z: f64 = e.iter().sum();
        for (w, x) in soft.iter().zip(&e) {
            assert!((w - x / z).abs() < 1e-12);
        }
        assert_eq!(Weighting::L1.weights(&[3.0, 1.0]), vec![0.75, 0.25]);
        let flat = Weighting::Softmax { temperature: 1e9 }.weights(&[10.0, 1.0]);
        assert!((flat[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn counters_name_failures_as_serde_does() {
        use super::super::filters::Rejection;
        use crate::prompts::Unparsed;
        assert_eq!(serde_name(&Rejection::TooSimilar { to: 1, rouge_l: 0.8 }, Some("filter")), "too_similar");
        assert_eq!(serde_name(&Rejection::StartsNonAscii, Some("filter")), "starts_non_ascii");
        assert_eq!(serde_name(&Unparsed::NoInput, None), "no_input");
    }

    #[test]
    fn draws_are_distinct_and_repeatable() {
        let a = draw(&mut prompt_rng(7, 3), 80, 3);
        assert_eq!(a, draw(&mut prompt_rng(7, 3), 80, 3));
        assert_ne!(a, draw(&mut prompt_rng(7, 4), 80, 3));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 3);
        assert_eq!(draw(&mut Rng::new(1), 2, 3).len(), 2);
    }

    #[test]
    fn a_changed_job_names_what_changed() {
        let job = Job {
            seeds: "a.yaml".into(),
            model: "m".into(),
            n: 10,
            mode: Mode::Marginal,
            corpus: None,
            seed: 1,
            prompts: None,
            adapter: None,
            contrastive: None,
            backend: None,
            settings: Settings::default(),
        };
        // A server's endpoint, key variable and concurrency may change; its served name not.
        let served = Job { backend: Some(Remote::new("http://a:1", "m")), ..job.clone() };
        let mut moved = Remote::new("https://b/v1", "m");
        moved.concurrency = 64;
        moved.api_key_env = Some("KEY".into());
        assert!(served.differences(&Job { backend: Some(moved), ..job.clone() }).is_empty());
        let renamed = Job { backend: Some(Remote::new("http://a:1", "other")), ..job.clone() };
        assert_eq!(served.differences(&renamed).len(), 1, "{:?}", served.differences(&renamed));
        let mut other = Job { n: 50, ..job.clone() };
        other.settings.prompts_per_batch = 2;
        assert!(job.differences(&other).is_empty(), "N and batch sizes may change");
        other.seed = 2;
        other.settings.k = 3;
        assert_eq!(job.differences(&other), vec!["seed: 1 (run) vs 2 (now)", "settings.k: 5 (run) vs 3 (now)"]);
    }
}
