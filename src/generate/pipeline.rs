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
use crate::decode::{Completion, Event, Finish, Request, Sampling, SamplingParams};
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
    /// Task lists sampled from one prompt (one draw of demonstrations), each with its own seed:
    /// the prompt's tokens are run once for all of them. 1 draws demonstrations for every list,
    /// as the paper did.
    pub lists_per_prompt: usize,
    /// The most task lists a run asks for, even if fewer than N samples were kept (null: 4 for
    /// every sample asked for, and at least 50). Lists are asked for only while the tasks
    /// waiting and the lists decoding, at the yield measured so far, fall short of N.
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
    /// And to this many tokens of the model's tokenizer (null: no cap, the paper's setting;
    /// through a server without its tokenizer, 4 characters a token).
    pub document_max_tokens: Option<usize>,
    pub filters: Filters,
    /// MiB the decoding's key/value cache may hold (rows wait, or are set aside and decoded
    /// again, to stay within it), an eighth of it for the prefix cache of recent prompts.
    pub kv_cache_mib: usize,
    /// Activations rounded to int8 for the products with GGML-block weights (integer dot
    /// products, as llama.cpp's Q8 activations): faster prefill, not exact. Off by default.
    pub int8_activations: bool,
    /// The decoding's keys and values in f16 on the CPU (as llama.cpp keeps them): a step reads
    /// half the bytes and the budget holds twice the rows; not exact. f32 keeps them as the
    /// model computes them. Null: f16, resolved when a run starts and recorded; a run recorded
    /// before the setting existed has none and kept f32.
    pub kv_cache_dtype: Option<KvDtype>,
}

/// The type the decoding's key/value cache is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    F16,
    F32,
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
            lists_per_prompt: 4,
            prompt_budget: None,
            response_temperature: None,
            response_top_p: None,
            response_max_new_tokens: 512,
            responses_per_batch: 8,
            k: 5,
            weighting: Weighting::Softmax { temperature: 1.0 },
            document_max_chars: 2000,
            document_max_tokens: None,
            filters: Filters::default(),
            kv_cache_mib: 768,
            int8_activations: false,
            kv_cache_dtype: None,
        }
    }
}

impl Settings {
    pub fn budget(&self, n: usize) -> usize {
        self.prompt_budget.unwrap_or_else(|| (4 * n).max(50))
    }

    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::{self, out_of_range};
        for (name, v, max) in [
            ("k", self.k, bounds::MAX_K),
            ("demos", self.demos, bounds::MAX_DEMOS),
            ("tasks_per_prompt", self.tasks_per_prompt, 1000),
            ("instruction_max_new_tokens", self.instruction_max_new_tokens, bounds::MAX_NEW_TOKENS),
            ("response_max_new_tokens", self.response_max_new_tokens, bounds::MAX_NEW_TOKENS),
            ("prompts_per_batch", self.prompts_per_batch, 1024),
            ("lists_per_prompt", self.lists_per_prompt, 64),
            ("responses_per_batch", self.responses_per_batch, 1024),
            ("kv_cache_mib", self.kv_cache_mib, 1 << 20),
        ] {
            bounds::count(v, 1, max).map_err(|r| out_of_range(&format!("generation.{name}"), v, &r))?;
        }
        for (name, t) in [
            ("instruction_temperature", self.instruction_temperature),
            ("response_temperature", self.response_temperature),
        ] {
            if let Some(t) = t {
                bounds::temperature(t).map_err(|r| out_of_range(&format!("generation.{name}"), t, r))?;
            }
        }
        for (name, p) in [("instruction_top_p", self.instruction_top_p), ("response_top_p", self.response_top_p)] {
            if let Some(p) = p {
                bounds::top_p(p).map_err(|r| out_of_range(&format!("generation.{name}"), p, r))?;
            }
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
        s.kv_cache_dtype.get_or_insert(KvDtype::F16);
        s
    }

    /// Whether decoding keeps its keys and values in f16 (`kv_cache_dtype`; a run recorded
    /// without it kept f32).
    pub fn half_kv(&self) -> bool {
        self.kv_cache_dtype == Some(KvDtype::F16)
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

    pub(crate) fn response_sampling(&self, seed: u64) -> SamplingParams {
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
        j.settings.kv_cache_mib = 0;
        j.backend = j.backend.map(|b| b.identity());
        j
    }

    /// What differs in the parts that must not change, one line per key.
    pub fn differences(&self, other: &Job) -> Vec<String> {
        crate::runs::differences(&self.identity(), &other.identity())
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
    /// Tasks that passed the filters and wait for a response.
    pub waiting: usize,
    /// Where the time went.
    pub time: TimeSpent,
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
    /// tasks.jsonl: each decoded task list's tasks that passed the filters.
    tasks: JsonLog,
    /// Prompts whose task lists are decoded (in tasks.jsonl).
    lists_done: HashSet<usize>,
    /// Tasks in tasks.jsonl neither kept nor dropped: answered before any new list is asked for.
    waiting: std::collections::VecDeque<Task>,
}

/// The name the second round's adapter is loaded under.
pub const ADAPTER: &str = "tuned";
pub const SAMPLES: &str = "samples.jsonl";
pub const FILTERED: &str = "filtered.jsonl";
pub const EVENTS: &str = "events.jsonl";
pub const TASKS: &str = "tasks.jsonl";

/// One line of filtered.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilteredRecord {
    pub id: String,
    pub instruction: String,
    pub input: String,
    pub rejection: serde_json::Value,
    pub most_similar: Option<String>,
    /// The response, when the response was what the filters dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
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
        let (store, opened) = SampleStore::open(&dir.join(SAMPLES))?;
        let filtered_path = dir.join(FILTERED);
        let filtered_ids: HashSet<String> =
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
        if opened.torn_bytes > 0 {
            notes.push(format!(
                "{}: the last line was cut short ({} bytes, no whole sample) and is dropped; its task is answered again",
                dir.join(SAMPLES).display(),
                opened.torn_bytes
            ));
        }
        notes.extend(read.dropped);
        // The task lists decoded and the tasks still waiting. A run from before tasks.jsonl
        // decoded its prompts in order: the ones below its count are done.
        let tasks_path = dir.join(TASKS);
        let tasks = JsonLog::open(&tasks_path)?;
        if let Some((line, bytes)) = tasks.cut {
            notes.push(format!("{}: line {line} was cut short ({bytes} bytes) and is dropped", tasks_path.display()));
        }
        let lists = crate::fsutil::read_jsonl::<ListRecord>(&tasks_path)?;
        let mut lists_done: HashSet<usize> = lists.iter().map(|l| l.prompt).collect();
        if lists_done.is_empty() {
            lists_done.extend(0..counters.prompts);
        }
        let waiting = lists
            .into_iter()
            .flat_map(|l| l.tasks)
            .filter(|t| !store.contains(&t.id) && !filtered_ids.contains(&t.id))
            .collect::<std::collections::VecDeque<_>>();
        counters.waiting = waiting.len();
        let resumed = store.len();
        let run = Run {
            dir: dir.to_path_buf(),
            job,
            store,
            filtered,
            filtered_ids,
            events: Some(events),
            counters,
            notes,
            tasks,
            lists_done,
            waiting,
        };
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

/// A task that passed the filters and waits for its response (kept in tasks.jsonl, so a
/// continued run answers it before asking for new task lists).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub instruction: String,
    pub input: String,
    pub demos: Vec<String>,
    pub instruction_sampling: SamplingParams,
    /// The most similar instruction of the pool when it was filtered, and its ROUGE-L.
    pub most_similar: Option<(String, f64)>,
}

/// One line of tasks.jsonl: a decoded task list's tasks that passed the filters (maybe none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListRecord {
    pub prompt: usize,
    pub tasks: Vec<Task>,
    /// The list as the model wrote it (after the primer), and why it ended: what a user reads to
    /// see why a list gave few tasks. Absent in runs from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<Finish>,
}

/// Where a run's time went, over all its sessions (seconds; tokens are cache-row tokens).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeSpent {
    /// Running prompts through the model (and joining their rows to the batch).
    pub prefill_secs: f64,
    /// Of which joining new rows' keys and values to the batch's.
    pub join_secs: f64,
    /// Decoding steps through the model.
    pub decode_secs: f64,
    /// Mixing (eq. 2), sampling, stops and streaming.
    pub sampling_secs: f64,
    /// Parsing task lists, the filters, retrieval and storing samples.
    pub filter_secs: f64,
    pub prefill_tokens: usize,
    /// Prompt tokens taken from the prefix cache instead of run.
    pub cached_tokens: usize,
    pub padding_tokens: usize,
    /// Tokens decoded, each cache row counted (a mixture of k prompts counts k).
    pub decoded_row_tokens: usize,
    pub steps: usize,
    /// Free rows summed over the steps: `idle_row_steps / (steps · rows)` of the batch was
    /// unused.
    pub idle_row_steps: usize,
    /// The batch's rows.
    pub rows: usize,
    /// Requests set aside to keep the cache within its budget (decoded again later).
    pub set_aside: usize,
}

impl TimeSpent {
    fn add(&self, t: &crate::decode::Timing, filter_secs: f64, rows: usize) -> TimeSpent {
        TimeSpent {
            prefill_secs: self.prefill_secs + t.prefill_secs,
            join_secs: self.join_secs + t.join_secs,
            decode_secs: self.decode_secs + t.decode_secs,
            sampling_secs: self.sampling_secs + t.pick_secs,
            filter_secs: self.filter_secs + filter_secs,
            prefill_tokens: self.prefill_tokens + t.prefill_tokens,
            cached_tokens: self.cached_tokens + t.cached_tokens,
            padding_tokens: self.padding_tokens + t.padding_tokens,
            decoded_row_tokens: self.decoded_row_tokens + t.decode_row_tokens,
            steps: self.steps + t.steps,
            idle_row_steps: self.idle_row_steps + t.idle_row_steps,
            rows,
            set_aside: self.set_aside + t.set_aside,
        }
    }

    /// The share of the batch's row slots left empty over the decoding steps.
    pub fn idle_share(&self) -> f64 {
        let slots = (self.steps * self.rows.max(1)) as f64;
        if slots > 0.0 {
            self.idle_row_steps as f64 / slots
        } else {
            0.0
        }
    }

    /// One line: where the time went and the true token rates.
    pub fn line(&self) -> String {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        format!(
            "prefill {:.0}s ({:.0} tokens/s, {:.0}% from the prefix cache) · decode {:.0}s ({:.0} row-tokens/s) · sampling {:.0}s · filters {:.0}s · idle rows {:.0}%",
            self.prefill_secs,
            rate(self.prefill_tokens, self.prefill_secs),
            100.0 * self.cached_tokens as f64 / (self.prefill_tokens + self.cached_tokens).max(1) as f64,
            self.decode_secs,
            rate(self.decoded_row_tokens, self.decode_secs),
            self.sampling_secs,
            self.filter_secs,
            100.0 * self.idle_share()
        )
    }
}

/// What a request handed to the engine is for.
enum Work {
    List { prompt: usize, primer: String, demos: Vec<String>, sampling: SamplingParams },
    Response { task: Task, documents: Vec<DocumentRef>, sampling: SamplingParams },
    Judge { sample: Box<Sample> },
}

/// The run as a [`backend::JobFeed`]: responses to waiting tasks first, then new task lists while
/// the tasks waiting and in flight, with the yield measured so far, fall short of N.
struct Feeder<'r, 'a, 's> {
    run: &'r mut Run,
    inputs: &'r Inputs<'a>,
    job: &'r Job,
    sink: &'r mut Sink<'s>,
    pool: &'r mut Pool,
    pool_text: &'r mut Vec<String>,
    seeds: Vec<&'a Seed>,
    budget: usize,
    /// The next prompt index to look at.
    cursor: usize,
    work: std::collections::HashMap<usize, Work>,
    next_id: usize,
    lists_in_flight: usize,
    responses_in_flight: usize,
    /// Samples that passed the filters and wait for the judge, and the judge requests decoding.
    judging: std::collections::VecDeque<Sample>,
    judges_in_flight: usize,
    /// This session: lists decoded, tasks they gave, responses answered and kept.
    lists: usize,
    passed: usize,
    answered: usize,
    kept: usize,
    halt: &'r AtomicBool,
    cancel: &'r AtomicBool,
    error: Option<anyhow::Error>,
    started: Instant,
    base: Counters,
    timing: crate::decode::Timing,
    filter_secs: f64,
    rows: usize,
    last_batch: Option<Instant>,
}

impl Feeder<'_, '_, '_> {
    /// Samples kept, and samples the responses and judge passes under way may still keep.
    fn promised(&self) -> usize {
        self.run.store.len() + self.responses_in_flight + self.judging.len() + self.judges_in_flight
    }

    fn issued(&self) -> usize {
        self.run.lists_done.len() + self.lists_in_flight
    }

    /// Samples a new task list is expected to give: tasks passing the filters per list times
    /// the share of responses kept, this session (one of each added, so the first list counts).
    fn yield_per_list(&self) -> f64 {
        (self.passed as f64 + 1.0) / (self.lists as f64 + 1.0) * (self.kept as f64 + 1.0) / (self.answered as f64 + 1.0)
    }

    fn fail(&mut self, e: anyhow::Error) {
        self.error.get_or_insert(e);
        self.halt.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn list_job(&mut self, p: usize) -> anyhow::Result<backend::Job> {
        let s = &self.job.settings;
        // The list's own draw, which its sampling seed follows; a list after the first of its
        // prompt takes the first one's demonstrations.
        let mut rng = prompt_rng(self.job.seed, p);
        let mut picks = draw(&mut rng, self.seeds.len(), s.demos);
        let first = p - p % s.lists_per_prompt.max(1);
        if first != p {
            picks = draw(&mut prompt_rng(self.job.seed, first), self.seeds.len(), s.demos);
        }
        let demos: Vec<&Seed> = picks.into_iter().map(|i| self.seeds[i]).collect();
        let (prompt, primer) = prompts::instruction_prompt(
            &self.inputs.templates.instruction,
            &self.inputs.seeds.domain,
            &self.inputs.seeds.description,
            &demos,
            s.tasks_per_prompt,
        )?;
        let stop = format!("Task {}", demos.len() + s.tasks_per_prompt + 1);
        let request = Request {
            stop: vec![stop],
            sampling: s.instruction_sampling(rng.next_u64()),
            stop_on_loop: true,
            stop_when: Some(prompts::list_gone_bad),
            ..tuned(self.job, 1, Request::new(Vec::new(), s.instruction_max_new_tokens))
        };
        let job = backend::Job::new(vec![prompt_of(s.prompt_format, &prompt, &primer)], request);
        let sampling = job.request.sampling;
        let demos = demos.iter().map(|d| d.id.clone()).collect();
        self.work.insert(self.next_id, Work::List { prompt: p, primer, demos, sampling });
        Ok(job)
    }

    fn response_job(&mut self, task: &Task) -> anyhow::Result<(backend::Job, Vec<DocumentRef>)> {
        let s = &self.job.settings;
        let started = Instant::now();
        let query = format!("{}\n{}", task.instruction, task.input);
        let docs = match self.inputs.searcher {
            Some(searcher) => retrieve(searcher, self.job.mode, s, &query)?,
            None => Vec::new(),
        };
        let texts = response_texts(self.inputs, s, &task.instruction, &task.input, &docs)?;
        let documents = docs.iter().map(|(h, w)| DocumentRef { id: h.id.clone(), weight: *w }).collect();
        let request = Request {
            weights: docs.iter().map(|(_, w)| *w).collect(),
            sampling: s.response_sampling(task.instruction_sampling.seed ^ 0xa5a5_a5a5),
            stop_on_loop: true,
            ..Request::new(Vec::new(), s.response_max_new_tokens)
        };
        let request = tuned(self.job, texts.len(), request);
        self.filter_secs += started.elapsed().as_secs_f64();
        Ok((backend::Job::new(texts, request), documents))
    }

    /// The counters now, with the time so far.
    fn counters(&self) -> Counters {
        let mut c = self.run.counters.clone();
        c.kept = self.run.store.len();
        c.prompts = self.run.lists_done.len();
        c.waiting = self.run.waiting.len();
        c.seconds = self.base.seconds + self.started.elapsed().as_secs_f64();
        c.time = self.base.time.add(&self.timing, self.filter_secs, self.rows);
        c
    }

    /// The counters as an event: at most one a second unless `now`.
    fn batch(&mut self, now: bool) {
        if !now && self.last_batch.is_some_and(|t| t.elapsed().as_secs_f64() < 1.0) {
            return;
        }
        self.last_batch = Some(Instant::now());
        let counters = self.counters();
        self.run.counters = counters.clone();
        self.sink.emit(&Progress::Batch { counters });
    }

    fn on_list(
        &mut self,
        prompt: usize,
        primer: String,
        demos: Vec<String>,
        sampling: SamplingParams,
        list: &Completion,
    ) -> anyhow::Result<()> {
        self.lists_in_flight -= 1;
        if list.finish == Finish::Cancelled {
            // Not recorded: a continued run decodes it again.
            return Ok(());
        }
        let started = Instant::now();
        let s = &self.job.settings;
        let c = &mut self.run.counters;
        c.instruction_tokens += list.ids.len();
        let text = format!("{primer} {}", list.text);
        let (parsed, mut failures) = prompts::parse_tasks(&text, matches!(list.finish, Finish::Length | Finish::Loop));
        if list.finish == Finish::Loop {
            // The item the loop is in is dropped, and counted as the loop it is.
            if let Some(last) = failures.iter_mut().rfind(|f| **f == prompts::Unparsed::Truncated) {
                *last = prompts::Unparsed::Loop;
            }
        }
        c.parsed += parsed.len();
        for f in failures {
            *c.unparsed.entry(serde_name(&f, None)).or_default() += 1;
        }
        let mut tasks = Vec::new();
        for (t, task) in parsed.into_iter().enumerate() {
            let id = format!("p{prompt:06}-{t:02}");
            if self.run.store.contains(&id) {
                continue;
            }
            let verdict = s.filters.check(&task.instruction, &task.input, self.pool);
            let most_similar = verdict.most_similar.map(|(i, score)| (self.pool_text[i].clone(), score));
            if let Some(rejection) = verdict.rejected {
                self.reject(&id, &task.instruction, &task.input, &rejection, most_similar.map(|m| m.0), None)?;
                continue;
            }
            self.pool.add(&task.instruction);
            self.pool_text.push(format!("sample {id}: {}", task.instruction.trim()));
            tasks.push(Task {
                id,
                instruction: task.instruction,
                input: task.input,
                demos: demos.clone(),
                instruction_sampling: sampling,
                most_similar,
            });
        }
        self.run.tasks.append(&ListRecord {
            prompt,
            tasks: tasks.clone(),
            text: Some(text),
            finish: Some(list.finish.clone()),
        })?;
        self.run.lists_done.insert(prompt);
        self.lists += 1;
        self.passed += tasks.len();
        self.run.waiting.extend(tasks);
        self.filter_secs += started.elapsed().as_secs_f64();
        self.batch(true);
        Ok(())
    }

    /// Records a task or sample the filters dropped (filtered.jsonl and the counters).
    fn reject(
        &mut self,
        id: &str,
        instruction: &str,
        input: &str,
        rejection: &super::filters::Rejection,
        most_similar: Option<String>,
        output: Option<String>,
    ) -> anyhow::Result<()> {
        use super::filters::Rejection;
        let name = serde_name(rejection, Some("filter"));
        let c = &mut self.run.counters;
        match rejection {
            Rejection::EmptyResponse => c.empty_responses += 1,
            Rejection::LoopingResponse => c.looping_responses += 1,
            _ => *c.filtered.entry(name.clone()).or_default() += 1,
        }
        self.sink.emit(&Progress::Filtered {
            id: id.to_string(),
            instruction: instruction.to_string(),
            rejection: name,
        });
        if self.run.filtered_ids.insert(id.to_string()) {
            let record = FilteredRecord {
                id: id.to_string(),
                instruction: instruction.to_string(),
                input: input.to_string(),
                rejection: serde_json::to_value(rejection)?,
                most_similar,
                output,
            };
            self.run.filtered.append(&record)?;
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        task: Task,
        documents: Vec<DocumentRef>,
        sampling: SamplingParams,
        completion: &Completion,
    ) -> anyhow::Result<()> {
        use super::filters::Rejection;
        self.responses_in_flight -= 1;
        if completion.finish == Finish::Cancelled {
            // Still waiting (in tasks.jsonl, neither kept nor dropped).
            self.run.waiting.push_front(task);
            return Ok(());
        }
        let started = Instant::now();
        self.run.counters.response_tokens += completion.ids.len();
        self.answered += 1;
        let output = completion.text.trim().to_string();
        let filters = &self.job.settings.filters;
        let rejection = if completion.finish == Finish::Loop {
            Some(Rejection::LoopingResponse)
        } else {
            filters.check_response(&task.instruction, &task.input, &output)
        };
        if let Some(rejection) = rejection {
            self.reject(&task.id, &task.instruction, &task.input, &rejection, None, Some(output))?;
            self.filter_secs += started.elapsed().as_secs_f64();
            return Ok(());
        }
        let job = self.job;
        let sample = Sample {
            id: task.id,
            instruction: task.instruction,
            input: task.input,
            output,
            status: Status::Pending,
            provenance: Provenance {
                demos: task.demos,
                model: job.model.clone(),
                sampling: Some(task.instruction_sampling),
                response_sampling: Some(sampling),
                mode: Some(job.mode),
                documents,
                most_similar: task.most_similar.as_ref().map(|m| m.0.clone()),
                rouge_l: task.most_similar.as_ref().map(|m| m.1),
                finish: Some(completion.finish.clone()),
                adapter: job.tuned_model(),
                contrastive_alpha: job.contrastive.filter(|_| job.tuned_model().is_some()),
                created: now_secs(),
                judge_score: None,
            },
        };
        if filters.judge.is_some() {
            self.judging.push_back(sample);
        } else {
            self.keep(sample)?;
        }
        self.filter_secs += started.elapsed().as_secs_f64();
        self.batch(false);
        Ok(())
    }

    fn keep(&mut self, sample: Sample) -> anyhow::Result<()> {
        if self.run.store.append(sample.clone())? {
            self.kept += 1;
            self.sink.emit(&Progress::Kept { sample: Box::new(sample) });
        }
        if self.run.store.len() >= self.job.n {
            self.halt.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// The judge's request for `sample`: the rubric, greedy, a few tokens.
    fn judge_job(&self, sample: &Sample) -> anyhow::Result<backend::Job> {
        let judge = self.job.settings.filters.judge.clone().unwrap_or_default();
        let text = prompts::render(
            "generation.filters.judge.rubric",
            &judge.rubric,
            &[
                ("domain", &self.inputs.seeds.domain),
                ("instruction", &sample.instruction),
                ("input", &sample.input),
                ("output", &sample.output),
            ],
        )?;
        let request = Request { stop: vec!["\n".into()], ..Request::new(Vec::new(), 4) };
        Ok(backend::Job::new(vec![prompt_of(self.job.settings.prompt_format, &text, "")], request))
    }

    fn on_judge(&mut self, mut sample: Sample, completion: &Completion) -> anyhow::Result<()> {
        use super::filters::{Judge, Rejection};
        self.judges_in_flight -= 1;
        if completion.finish == Finish::Cancelled {
            // Its task is still waiting in tasks.jsonl for a continued run.
            return Ok(());
        }
        let min = self.job.settings.filters.judge.as_ref().map_or(0, |j| j.min_score);
        let score = Judge::score(&completion.text);
        if score.is_none_or(|s| s < min) {
            let rejection = Rejection::JudgedLow { score };
            let output = Some(sample.output.clone());
            return self.reject(&sample.id, &sample.instruction, &sample.input, &rejection, None, output);
        }
        sample.provenance.judge_score = score;
        self.keep(sample)?;
        self.batch(false);
        Ok(())
    }
}

impl backend::JobFeed for Feeder<'_, '_, '_> {
    fn take(&mut self, room: crate::decode::Room) -> Vec<(usize, backend::Job)> {
        use std::sync::atomic::Ordering;
        if self.cancel.load(Ordering::Relaxed) {
            self.halt.store(true, Ordering::Relaxed);
        }
        let n = self.job.n;
        if self.error.is_some() || self.halt.load(Ordering::Relaxed) || self.run.store.len() >= n {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut rows = room.rows;
        let mut first = room.idle;
        // Samples waiting for the judge first: they are done but for it.
        while first || rows > 0 {
            let Some(sample) = self.judging.pop_front() else { break };
            let job = match self.judge_job(&sample) {
                Ok(j) => j,
                Err(e) => {
                    self.fail(e);
                    return out;
                }
            };
            first = false;
            rows = rows.saturating_sub(1);
            self.work.insert(self.next_id, Work::Judge { sample: Box::new(sample) });
            out.push((self.next_id, job));
            self.next_id += 1;
            self.judges_in_flight += 1;
        }
        // Responses to waiting tasks: as many as could still be needed.
        while self.promised() < n {
            let Some(task) = self.run.waiting.pop_front() else { break };
            let (job, documents) = match self.response_job(&task) {
                Ok(j) => j,
                Err(e) => {
                    self.run.waiting.push_front(task);
                    self.fail(e);
                    return out;
                }
            };
            let width = job.width(room);
            if !first && width > rows {
                self.run.waiting.push_front(task);
                break;
            }
            first = false;
            rows = rows.saturating_sub(width);
            self.sink.emit(&Progress::Responding { ids: vec![task.id.clone()] });
            let sampling = job.request.sampling;
            self.work.insert(self.next_id, Work::Response { task, documents, sampling });
            out.push((self.next_id, job));
            self.next_id += 1;
            self.responses_in_flight += 1;
        }
        // A task waits for rows to answer it: no list takes them first (a response needs k rows
        // at once, and lists taking rows one by one as they free would starve it).
        if self.promised() < n && !self.run.waiting.is_empty() {
            return out;
        }
        // New task lists while rows are free and what waits and decodes is not expected to
        // reach N. The lists of one prompt go out together (they share its prefill) unless rows
        // run out.
        let per_prompt = self.job.settings.lists_per_prompt.max(1);
        let mut issued_now = false;
        while self.issued() < self.budget && (first || rows > 0) {
            let expected =
                (self.promised() + self.run.waiting.len()) as f64 + self.lists_in_flight as f64 * self.yield_per_list();
            let mid_prompt = issued_now && !self.cursor.is_multiple_of(per_prompt);
            if expected >= n as f64 && !mid_prompt {
                break;
            }
            while self.run.lists_done.contains(&self.cursor) {
                self.cursor += 1;
            }
            let p = self.cursor;
            self.cursor += 1;
            let job = match self.list_job(p) {
                Ok(j) => j,
                Err(e) => {
                    self.fail(e);
                    return out;
                }
            };
            self.sink.emit(&Progress::Prompts { first: p, count: 1 });
            first = false;
            issued_now = true;
            rows = rows.saturating_sub(1);
            out.push((self.next_id, job));
            self.next_id += 1;
            self.lists_in_flight += 1;
        }
        out
    }

    fn event(&mut self, e: Event) {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            self.halt.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match e {
            Event::Token { request, text, .. } => {
                if text.is_empty() {
                    return;
                }
                let p = match self.work.get(&request) {
                    Some(Work::List { prompt, .. }) => {
                        Progress::InstructionText { prompt: *prompt, text: text.to_string() }
                    }
                    Some(Work::Response { task, .. }) => {
                        Progress::ResponseText { id: task.id.clone(), text: text.to_string() }
                    }
                    Some(Work::Judge { .. }) | None => return,
                };
                self.sink.emit(&p);
            }
            Event::Note { text } => self.sink.emit(&Progress::Note { text: text.to_string() }),
            Event::Finished { request, completion } => {
                let result = match self.work.remove(&request) {
                    Some(Work::List { prompt, primer, demos, sampling }) => {
                        self.on_list(prompt, primer, demos, sampling, completion)
                    }
                    Some(Work::Response { task, documents, sampling }) => {
                        self.on_response(task, documents, sampling, completion)
                    }
                    Some(Work::Judge { sample }) => self.on_judge(*sample, completion),
                    None => Ok(()),
                };
                if let Err(e) = result.and_then(|()| self.sink.check()) {
                    self.fail(e);
                }
            }
        }
    }

    fn timing(&mut self, t: &crate::decode::Timing) {
        self.timing = *t;
    }
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
        s.demos <= seeds.len(),
        "generation.demos: {} is out of range; it takes 1 to the seed file's {} seeds ({}): lower it or add seeds",
        s.demos,
        seeds.len(),
        job.seeds.display()
    );
    anyhow::ensure!(
        (1..=crate::bounds::MAX_SAMPLES).contains(&job.n),
        "{}",
        crate::bounds::out_of_range("--n", job.n, &format!("a whole number from 1 to {}", crate::bounds::MAX_SAMPLES))
    );
    anyhow::ensure!(
        job.mode == Mode::None || inputs.searcher.is_some(),
        "mode {} needs a corpus: pass --corpus (a JSONL corpus, a folder of .txt files, or an index folder)",
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
    for task in &run.waiting {
        pool.add(&task.instruction);
        pool_text.push(format!("sample {}: {}", task.id, task.instruction.trim()));
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
    let rows = s.prompts_per_batch + s.responses_per_batch * s.k.max(1);
    // Every prompt begins like the others of its kind (the chat template's head, the fixed text
    // of the instruction and response templates): a prefix cache of an eighth of the KV budget
    // keeps recent prompts, and a new one runs only what it does not share. Rows are gated (a
    // request naming no adapter runs on the base) so that stored rows are keyed by adapter.
    let kv_budget = s.kv_cache_mib << 20;
    let opts = crate::decode::Options {
        prompt_top: 0,
        max_batch: rows,
        kv_budget: Some(kv_budget - kv_budget / 8),
        gated: true,
        prefix: Some(std::sync::Arc::new(crate::decode::PrefixCache::new(kv_budget / 8))),
        half_kv: s.half_kv(),
    };
    let halt = AtomicBool::new(false);
    let mut base = run.counters.clone();
    base.seconds = base_seconds;
    let mut feeder = Feeder {
        run,
        inputs,
        job: &job,
        sink,
        pool,
        pool_text,
        seeds: inputs.seeds.seeds.iter().collect(),
        budget,
        cursor: 0,
        work: Default::default(),
        next_id: 0,
        lists_in_flight: 0,
        responses_in_flight: 0,
        judging: Default::default(),
        judges_in_flight: 0,
        lists: 0,
        passed: 0,
        answered: 0,
        kept: 0,
        halt: &halt,
        cancel,
        error: None,
        started,
        base,
        timing: Default::default(),
        filter_secs: 0.0,
        rows,
        last_batch: None,
    };
    let result = inputs.engine.run(&mut feeder, &opts, &halt);
    let counters = feeder.counters();
    let error = feeder.error.take();
    run.counters = counters;
    result?;
    if let Some(e) = error {
        return Err(e);
    }
    let outcome = if run.store.len() >= job.n {
        Outcome::Done
    } else if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        Outcome::Cancelled
    } else {
        Outcome::Budget { budget }
    };
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
pub(crate) fn tuned(job: &Job, prompts: usize, request: Request) -> Request {
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

/// The prompts of one response: one per document (cut to the settings' length), or the
/// document-free prompt when there is none.
pub(crate) fn response_texts(
    inputs: &Inputs,
    s: &Settings,
    instruction: &str,
    input: &str,
    docs: &[(Hit, f64)],
) -> anyhow::Result<Vec<backend::Prompt>> {
    let domain = &inputs.seeds.domain;
    let mut texts = Vec::new();
    if docs.is_empty() {
        let text = prompts::response_prompt(inputs.templates, domain, None, instruction, input)?;
        texts.push(prompt_of(s.prompt_format, &text, ""));
    }
    for (hit, _) in docs {
        let document = cut(&hit.text, s.document_max_chars);
        let capped;
        let document = match (s.document_max_tokens, inputs.engine) {
            (Some(n), backend::Engine::Local(model)) => {
                let ids = model.tokenizer.encode_plain(document)?;
                capped = if ids.len() > n { model.tokenizer.decode(&ids[..n])? } else { document.to_string() };
                capped.as_str()
            }
            (Some(n), backend::Engine::Remote(_)) => cut(document, 4 * n),
            (None, _) => document,
        };
        let text = prompts::response_prompt(inputs.templates, domain, Some(document), instruction, input)?;
        texts.push(prompt_of(s.prompt_format, &text, ""));
    }
    Ok(texts)
}

/// The documents of one response and their weights.
pub(crate) fn retrieve(searcher: &Searcher, mode: Mode, s: &Settings, query: &str) -> anyhow::Result<Vec<(Hit, f64)>> {
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
        // The key/value cache: f16 unless set; a run recorded before the setting kept f32.
        assert!(small.half_kv() && !Settings::default().half_kv());
        let f32_set = Settings { kv_cache_dtype: Some(KvDtype::F32), ..Settings::default() };
        assert!(!f32_set.resolve(135_000_000, true).half_kv());
        let recorded: Settings = crate::yaml::from_str("k: 5").unwrap();
        assert!(!recorded.half_kv(), "an older run's settings, without the key, decode with f32");
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
