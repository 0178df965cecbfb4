//! Decoding: many prompts of different lengths decoded together, each with its own sampling,
//! stop conditions and length, leaving the batch when done; text streamed as it is made; k
//! prompts mixed into one distribution (eq. 2) and contrastive pairs (eq. 3). Generation,
//! training and evaluation all decode through here.

pub mod prefix;
pub mod sampling;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor, D};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{Model, Pass};
pub use crate::rng::Rng;
pub use prefix::PrefixCache;
pub use sampling::{Sampling, SamplingParams};
pub use stream::TextStream;

/// Whether a text being generated has gone bad and should end (see [`Request::stop_when`]).
pub type StopWhen = fn(&str) -> bool;

#[derive(Debug, Clone)]
pub struct Request {
    /// The prompt, or for retrieval-marginalised decoding (the paper's eq. 2) the prompts decoded in
    /// step: at every step the next token is drawn from Σ_j w_j·p_j (p_j: prompt j's next-token
    /// distribution) and appended to every prompt.
    pub prompts: Vec<Vec<u32>>,
    /// w_j, one per prompt (normalised to sum to 1); empty means equal weights.
    pub weights: Vec<f64>,
    pub max_new_tokens: usize,
    /// Generation stops when the text contains one of these; the text returned ends before it.
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
    /// The LoRA adapter this request runs with. When any request of a `generate` call names one
    /// (or decodes contrastively), every row is gated: each gets only its own adapter, and a
    /// request naming none runs on the base. Otherwise the enabled adapters apply to all.
    pub adapter: Option<String>,
    /// Contrastive decoding (the paper's eq. 3): the prompt is decoded twice in the batch, with
    /// the adapter and without it, and the token is chosen from log p_tuned − log p_base over
    /// the tokens with p_tuned ≥ α·max p_tuned.
    pub contrast: Option<Contrast>,
    /// End the text when it is caught in a repetition loop ([`looping`]): `Finish::Loop`.
    pub stop_on_loop: bool,
    /// End the text as `Finish::Loop` when this says it has gone bad, asked each time a line
    /// ends (a task list whose items stopped being usable: [`crate::prompts::list_gone_bad`]).
    pub stop_when: Option<StopWhen>,
    /// Record each generated token's log-probability and the `n` most likely tokens of its step
    /// (under the distribution it was chosen from: the model's, or the mixture's), as
    /// OpenAI-compatible servers report them.
    pub top_logprobs: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Contrast {
    pub adapter: String,
    pub alpha: f64,
}

impl Request {
    /// One prompt, greedy, stopping at end-of-sequence.
    pub fn new(prompt: Vec<u32>, max_new_tokens: usize) -> Request {
        Request {
            prompts: vec![prompt],
            weights: Vec::new(),
            max_new_tokens,
            stop: Vec::new(),
            sampling: SamplingParams::greedy(),
            ignore_eos: false,
            adapter: None,
            contrast: None,
            stop_on_loop: false,
            stop_when: None,
            top_logprobs: None,
        }
    }

    /// The cache rows of this request: its prompts, or one prompt twice when contrastive
    /// (with the adapter, then without).
    fn rows(&self) -> Vec<&Vec<u32>> {
        match &self.contrast {
            Some(_) => vec![&self.prompts[0], &self.prompts[0]],
            None => self.prompts.iter().collect(),
        }
    }

    /// How many cache rows it takes.
    pub fn width(&self) -> usize {
        self.rows().len()
    }

    /// The adapter each cache row runs with in a gated batch (`None`: the base).
    fn row_adapters(&self) -> Vec<Option<&str>> {
        match &self.contrast {
            Some(c) => vec![Some(c.adapter.as_str()), None],
            None => vec![self.adapter.as_deref(); self.prompts.len()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    Stop(String),
    Length,
    Cancelled,
    /// Caught in a repetition loop (with `stop_on_loop`): the text ends in one short stretch of
    /// tokens repeated over and over.
    Loop,
}

/// The shortest period of a repetition loop at the end of `tokens`, either
/// - the last `p` tokens (p ≤ 32) repeated back to back at least 4 times and over at least 48
///   tokens: "The answer is: The answer is: …", a list item written again and again; or
/// - a stretch of [`LOOP_STRETCH`] to [`LOOP_STRETCH_MAX`] tokens, not itself a repeat of a
///   shorter one, written twice back to back: a sentence or paragraph said again word for word,
///   which models this small go on repeating (docs/PERFORMANCE.md, "Answers said twice": the
///   kept answers this rule would have stopped ran on to the token limit).
///
/// A list whose items only share a layout is not a loop: its items differ.
pub fn looping(tokens: &[u32]) -> Option<usize> {
    let short = (1..=32usize).find(|&p| {
        if tokens.len() < 2 * p {
            return false;
        }
        let tail = &tokens[tokens.len() - p..];
        let mut reps = 1;
        while (reps + 1) * p <= tokens.len() && &tokens[tokens.len() - (reps + 1) * p..tokens.len() - reps * p] == tail
        {
            reps += 1;
        }
        reps >= 4 && reps * p >= 48
    });
    short.or_else(|| {
        // The shortest stretch that ends the text twice over; one shorter than LOOP_STRETCH is
        // a short phrase (the rule above judges those).
        let n = tokens.len();
        let last = *tokens.last()?;
        let p = (1..=LOOP_STRETCH_MAX.min(n / 2))
            .find(|&p| tokens[n - 1 - p] == last && tokens[n - 2 * p..n - p] == tokens[n - p..])?;
        (p >= LOOP_STRETCH).then_some(p)
    })
}

/// The shortest stretch of tokens [`looping`] calls a loop when it is written twice in a row.
pub const LOOP_STRETCH: usize = 10;
/// The longest such stretch it looks for.
pub const LOOP_STRETCH_MAX: usize = 256;

/// Lines [`looping_lines`] compares at most: 4 repeats of a block of up to 4 lines.
const LOOP_LINES: usize = 16;

/// Whether `text` ends in a block of 1 to 4 lines written at least 4 times over, the item
/// numbers aside: "123. Determine which disease is linked …", then 124, 125; or "Task 17" /
/// "Instruction: X", then "Task 18" / the same X. Numbering changes the tokens of each item, so
/// [`looping`] does not see these; a list ran to its token limit this way. Blank lines are
/// skipped, and so is the line still being written; a block needs at least 8 letters (a column of bare numbers is not a loop). Only
/// an item's leading number is set aside: rows of a table whose figures differ are not a loop.
pub fn looping_lines(text: &str) -> bool {
    // Complete lines only: the one being written is compared once it ends.
    let Some(end) = text.rfind('\n') else { return false };
    let mut lines: Vec<&str> =
        text[..end].rsplit('\n').map(str::trim).filter(|l| !l.is_empty()).take(LOOP_LINES).map(unnumbered).collect();
    lines.reverse();
    (1..=4usize).any(|p| {
        let n = lines.len();
        if n < 4 * p {
            return false;
        }
        let block = &lines[n - p..];
        let letters: usize = block.iter().map(|l| l.chars().filter(|c| c.is_alphabetic()).count()).sum();
        letters >= 8 && (2..=4).all(|r| &lines[n - r * p..n - (r - 1) * p] == block)
    })
}

/// A line without its leading item number: "12. X", "12) X", "Task 12: X", "Task 12" → the
/// rest ("Task" kept, so that "Task 12" and "Task 13" compare equal).
fn unnumbered(line: &str) -> &str {
    let word = line.find(|c: char| !c.is_alphabetic()).unwrap_or(line.len());
    let after_word = line[word..].trim_start();
    let digits = after_word.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_word.len());
    if digits == 0 || (word > 0 && after_word.len() == line[word..].len()) {
        // No number, or a word run into its digits ("COVID19").
        return line;
    }
    let rest = after_word[digits..].trim_start_matches(['.', ')', ':', '-']).trim_start();
    if word == 0 {
        rest
    } else if rest.is_empty() {
        &line[..word]
    } else {
        // "Task 12: X" compares as "X"; the word before a number is the item's label.
        rest
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// Generated ids (an end-of-sequence token included when it ended the text).
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    /// The highest logits at the last prompt position, best first (as many as asked for).
    pub prompt_top: Vec<(u32, f32)>,
    /// Per generated token, when the request asked (`top_logprobs`).
    pub logprobs: Vec<TokenLogprob>,
    /// How many of the (first) prompt's tokens came from the prefix cache instead of the model.
    pub cached_tokens: usize,
}

impl Completion {
    /// A request stopped before it started.
    pub fn cancelled() -> Completion {
        Completion {
            ids: Vec::new(),
            text: String::new(),
            finish: Finish::Cancelled,
            prompt_top: Vec::new(),
            logprobs: Vec::new(),
            cached_tokens: 0,
        }
    }
}

/// One generated token's log-probability and the most likely tokens of its step, best first.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What generation reports while it runs.
pub enum Event<'a> {
    Token {
        request: usize,
        id: u32,
        text: &'a str,
    },
    Finished {
        request: usize,
        completion: &'a Completion,
    },
    /// Something the user should know (a server's concurrency lowered).
    Note {
        text: &'a str,
    },
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    /// Padding positions run with the prompts (rows prefilled together are as long as the
    /// longest).
    pub padding_tokens: usize,
    /// Seconds choosing tokens: mixing (eq. 2), contrast (eq. 3), sampling, stops, streaming.
    pub pick_secs: f64,
    /// Decoding steps, and the free rows summed over them (rows a full batch would have used).
    pub steps: usize,
    pub idle_row_steps: usize,
    /// Requests set aside to keep the cache within its budget (decoded again later).
    pub set_aside: usize,
    /// Prompt tokens run through the model (every prompt of a mixture counted).
    pub prefill_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead.
    pub cached_tokens: usize,
    pub prefill_secs: f64,
    /// Seconds joining prefilled rows to the rows decoding (part of `prefill_secs`).
    pub join_secs: f64,
    /// Tokens generated by decoding steps (a mixture's token counted once).
    pub decode_tokens: usize,
    /// The same, each cache row counted (a mixture of k prompts counts k).
    pub decode_row_tokens: usize,
    pub decode_secs: f64,
}

pub struct Options {
    /// How many top logits of the last prompt position to keep per request.
    pub prompt_top: usize,
    /// Most rows decoded at once; more requests join as rows finish.
    pub max_batch: usize,
    /// Bytes the KV cache may hold (rows × the longest row); rows past it wait. None: no limit.
    pub kv_budget: Option<usize>,
    /// Every row gets only its own adapter (none for a request naming none), even when no
    /// request of the call names one: a server's base requests never see its adapters.
    pub gated: bool,
    /// Prompts' keys and values kept between calls (used only when `gated`, where each row's
    /// adapter is known): a prompt starting like a stored one runs only its new tokens.
    pub prefix: Option<Arc<PrefixCache>>,
    /// Keys and values kept in f16 where the model allows it ([`Decoder::half_store`]): half
    /// the bytes a step reads and twice the rows a budget holds, as llama.cpp keeps its cache;
    /// not exact.
    ///
    /// [`Decoder::half_store`]: crate::model::Decoder::half_store
    pub half_kv: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { prompt_top: 0, max_batch: 64, kv_budget: None, gated: false, prefix: None, half_kv: false }
    }
}

/// One request being decoded: `width` cache rows (its prompts) that share one text.
struct Row {
    /// The caller's number for the request (events name it).
    request: usize,
    req: Request,
    /// The mixture weights of its rows.
    weights: Vec<f64>,
    width: usize,
    /// The top logits at the last prompt position (empty unless asked for).
    prompt_top: Vec<(u32, f32)>,
    stream: TextStream,
    text: String,
    /// The first prompt and the tokens generated so far (for the repetition penalty).
    seen: Vec<u32>,
    prompt_len: usize,
    rng: Rng,
    logprobs: Vec<TokenLogprob>,
    /// Tokens of the first prompt taken from the prefix cache.
    cached: usize,
    /// Bytes of text already streamed before the row was set aside to free memory: its replay
    /// (the same seed, the same tokens) does not stream them again.
    streamed: usize,
    /// When it was admitted (the newest rows are set aside first).
    admitted: usize,
}

impl Row {
    fn new(request: usize, req: Request, weights: Vec<f64>, streamed: usize, admitted: usize) -> Row {
        Row {
            request,
            width: req.width(),
            weights,
            prompt_top: Vec::new(),
            stream: TextStream::new(),
            text: String::new(),
            seen: req.prompts[0].clone(),
            prompt_len: req.prompts[0].len(),
            rng: Rng::new(req.sampling.seed),
            logprobs: Vec::new(),
            cached: 0,
            streamed,
            admitted,
            req,
        }
    }
}

/// Where the continuous decoder gets its requests and sends what they make. Requests are handed
/// out as rows come free; each carries the caller's number, which its events name.
pub trait Feed {
    /// Requests to start now: at most `room.rows` cache rows in all (one wider request may be
    /// given when nothing decodes). Nothing, when nothing decodes, ends the decoding.
    fn take(&mut self, room: Room) -> Vec<(usize, Request)>;
    fn event(&mut self, e: Event);
    /// The time spent so far (after every step).
    fn timing(&mut self, _timing: &Timing) {}
    /// Whether whoever asked for `request` is gone (a server's client that closed its
    /// connection): its rows end as cancelled at the next step.
    fn gone(&mut self, _request: usize) -> bool {
        false
    }
}

/// What the decoder can take.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// Free cache rows.
    pub rows: usize,
    /// Nothing decodes.
    pub idle: bool,
    /// Each request takes one place whatever its prompts (a server's request slots).
    pub per_request: bool,
}

/// Decodes `requests` with at most `opts.max_batch` rows at once, reporting through `on_event`:
/// a finished request's rows go to the next waiting request (see [`continuous`]).
/// The decoding runs on a worker of rayon's pool ([`crate::parallel::on_worker`]), so
/// `on_event` is called from that thread (hence `Send`); the caller waits for the result.
pub fn generate(
    model: &Model,
    requests: &[Request],
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
    cancel: &AtomicBool,
) -> anyhow::Result<(Vec<Completion>, Timing)> {
    for (i, r) in requests.iter().enumerate() {
        check(model, r).map_err(|e| anyhow::anyhow!("request {i}: {e}"))?;
    }
    // With a prefix cache, requests go by how many prompt tokens they must run (the rest is
    // stored), fewest first, and a request that must run far more than the ones before it waits
    // until those decode: the rows prefilled together all run as many new tokens as the longest.
    let (order, fresh): (Vec<usize>, Vec<usize>) = match prefix_cache(opts) {
        Some(cache) => {
            let fresh = |r: &Request| {
                let rows = r.rows().into_iter().zip(r.row_adapters());
                rows.map(|(p, a)| p.len() - cache.find(a, p, p.len() - 1).map_or(0, |h| h.len)).max().unwrap_or(0)
            };
            let fresh: Vec<usize> = requests.iter().map(fresh).collect();
            let mut order: Vec<usize> = (0..requests.len()).collect();
            order.sort_by_key(|&i| fresh[i]);
            (order, fresh)
        }
        None => ((0..requests.len()).collect(), Vec::new()),
    };
    let mut feed = ListFeed { requests, order, fresh, next: 0, done: vec![None; requests.len()], on_event };
    // Gated from the first row when any request of the call names an adapter: a base request
    // decoding before the adapter's request starts must not see the adapter either.
    let gated = opts.gated || requests.iter().any(|r| r.adapter.is_some() || r.contrast.is_some());
    let timing = crate::parallel::on_worker(|| Scheduler::new(model, opts, gated).run(&mut feed, cancel))?;
    // Requests never started (stopped before their turn) end as cancelled.
    Ok((feed.done.into_iter().map(|c| c.unwrap_or_else(Completion::cancelled)).collect(), timing))
}

/// A fixed list of requests as a [`Feed`].
struct ListFeed<'a, 'b> {
    requests: &'a [Request],
    order: Vec<usize>,
    /// Prompt tokens each must run (with a prefix cache).
    fresh: Vec<usize>,
    next: usize,
    done: Vec<Option<Completion>>,
    on_event: &'b mut (dyn FnMut(Event) + Send),
}

impl Feed for ListFeed<'_, '_> {
    fn take(&mut self, room: Room) -> Vec<(usize, Request)> {
        let mut out = Vec::new();
        let mut rows = 0;
        while let Some(&i) = self.order.get(self.next) {
            let width = self.requests[i].width();
            let first = out.is_empty() && room.idle;
            let far_more = !out.is_empty() && !self.fresh.is_empty() && {
                let before = self.order[self.next - 1];
                self.fresh[i] > 8 * self.fresh[before].max(16)
            };
            if !first && (rows + width > room.rows || far_more) {
                break;
            }
            rows += width;
            out.push((i, self.requests[i].clone()));
            self.next += 1;
        }
        out
    }

    fn event(&mut self, e: Event) {
        if let Event::Finished { request, completion } = &e {
            self.done[*request] = Some((*completion).clone());
        }
        (self.on_event)(e);
    }
}

/// Why a request cannot be decoded.
fn check(model: &Model, r: &Request) -> Result<Vec<f64>, String> {
    if r.prompts.is_empty() || r.prompts.iter().any(|p| p.is_empty()) {
        return Err("a prompt has no tokens".into());
    }
    r.sampling.check()?;
    let context = model.decoder.spec.max_position_embeddings;
    if let Some(longest) = r.prompts.iter().map(Vec::len).max().filter(|&n| context > 0 && n >= context) {
        return Err(format!(
            "the prompt has {longest} tokens, but the model's context holds {context} (and the answer must fit too); \
             shorten the prompt"
        ));
    }
    if r.max_new_tokens == 0 {
        return Err(crate::bounds::out_of_range("max_new_tokens", 0, "a whole number of at least 1"));
    }
    if let Some(c) = &r.contrast {
        if r.prompts.len() != 1 {
            return Err("contrastive decoding takes one prompt".into());
        }
        if !(c.alpha > 0.0 && c.alpha <= 1.0) {
            return Err("the contrastive α must be in (0, 1]".into());
        }
    }
    for name in r.adapter.iter().chain(r.contrast.as_ref().map(|c| &c.adapter)) {
        if model.decoder.gate(name).is_none() {
            return Err(format!("no adapter named {name} is loaded"));
        }
    }
    match r.contrast {
        // The mixture of a contrastive pair is its tuned row (used only for shapes).
        Some(_) => Ok(vec![1.0, 0.0]),
        None => normalised(&r.weights, r.prompts.len()),
    }
}

/// Continuous batching: requests from `feed` decode together, at most `opts.max_batch` rows;
/// when rows finish, waiting requests are prefilled apart and join the rows decoding at the
/// next step (once a quarter of the rows is free, or at once when fewer rows decode than
/// that), instead of waiting for the whole batch to end. With `opts.kv_budget`, a request joins
/// only while the cache (rows × the longest row, in f32) stays within it, and when the rows
/// grow past it the newest rows are set aside and decoded again later, from the start, with
/// the same seed (their text is not streamed twice). Runs on a rayon worker.
pub fn continuous(
    model: &Model,
    opts: &Options,
    feed: &mut (dyn Feed + Send),
    cancel: &AtomicBool,
) -> anyhow::Result<Timing> {
    crate::parallel::on_worker(|| Scheduler::new(model, opts, opts.gated).run(feed, cancel))
}

struct Scheduler<'a> {
    model: &'a Model,
    opts: &'a Options,
    rows: Vec<Row>,
    cache: crate::model::Cache,
    /// Logits of the rows' next step, `[cache rows, vocab]`.
    logits: Option<Tensor>,
    /// Requests taken but not yet started (over the memory budget, or set aside), first first.
    held: std::collections::VecDeque<(usize, Request, Vec<f64>, usize)>,
    timing: Timing,
    admitted: usize,
    gated: bool,
    /// The adapters' row gates while the scheduler runs (made again when `gated` turns on).
    gates: Gates,
    slot_bytes: usize,
    /// The type the cache keeps keys and values in (none: the model's).
    store: Option<DType>,
}

impl<'a> Scheduler<'a> {
    fn new(model: &'a Model, opts: &'a Options, gated: bool) -> Scheduler<'a> {
        let store = model.decoder.half_store().filter(|_| opts.half_kv);
        Scheduler {
            model,
            opts,
            rows: Vec::new(),
            cache: model.decoder.new_cache(Vec::new()),
            logits: None,
            held: Default::default(),
            timing: Timing::default(),
            admitted: 0,
            gated,
            gates: Gates::new(model, gated),
            slot_bytes: store.map_or(model.decoder.kv_slot_bytes(), |d| model.decoder.kv_slot_bytes_in(d)),
            store,
        }
    }

    fn live_rows(&self) -> usize {
        self.rows.iter().map(|r| r.width).sum()
    }

    /// The cache's size if `rows` rows reaching `len` slots decode.
    fn bytes(&self, rows: usize, len: usize) -> usize {
        rows * len.next_multiple_of(crate::model::decoder::KV_STEP) * self.slot_bytes
    }

    fn run(mut self, feed: &mut (dyn Feed + Send), cancel: &AtomicBool) -> anyhow::Result<Timing> {
        let max_batch = self.opts.max_batch.max(1);
        loop {
            let cancelled = cancel.load(Ordering::Relaxed);
            let live = self.live_rows();
            // New requests join when enough rows are free.
            if !cancelled && (live == 0 || max_batch - live.min(max_batch) >= (max_batch / 4).max(1)) {
                self.admit(feed, max_batch)?;
            }
            if self.rows.is_empty() {
                if cancelled {
                    // Requests taken but never started end as cancelled.
                    for (request, ..) in std::mem::take(&mut self.held) {
                        let completion = Completion::cancelled();
                        feed.event(Event::Finished { request, completion: &completion });
                    }
                }
                break;
            }
            self.timing.idle_row_steps += max_batch.saturating_sub(self.live_rows());
            self.timing.steps += 1;
            self.step(feed, cancelled)?;
            feed.timing(&self.timing);
        }
        Ok(self.timing)
    }

    /// Takes requests (held ones first) while rows and the memory budget allow, prefills them
    /// apart and joins them to the rows decoding.
    fn admit(&mut self, feed: &mut (dyn Feed + Send), max_batch: usize) -> anyhow::Result<()> {
        let live = self.live_rows();
        let mut free = max_batch.saturating_sub(live);
        let mut group: Vec<Row> = Vec::new();
        let mut rows_after = live;
        let mut longest = if self.rows.is_empty() { 0 } else { self.cache.len };
        let fits = |s: &Self, rows: usize, len: usize, first: bool| {
            first || s.opts.kv_budget.is_none_or(|b| s.bytes(rows, len + crate::model::decoder::KV_STEP) <= b)
        };
        // Held requests first, in order.
        while let Some((_, req, _, _)) = self.held.front() {
            let width = req.width();
            let len = req.prompts.iter().map(Vec::len).max().unwrap_or(0);
            let first = live == 0 && group.is_empty();
            if !first && (width > free || !fits(self, rows_after + width, longest.max(len), false)) {
                return self.start(group);
            }
            let (request, req, weights, streamed) = self.held.pop_front().expect("front exists");
            free = free.saturating_sub(width);
            rows_after += width;
            longest = longest.max(len);
            self.admitted += 1;
            group.push(Row::new(request, req, weights, streamed, self.admitted));
        }
        // Requests still held wait first: the feed is asked for more only when none is left,
        // and for no more rows than the budget has room for at the rows' present length (a
        // request taken goes on in the order taken, so asking for more than fits would queue
        // the feed's later, more urgent requests behind it).
        if !self.held.is_empty() {
            return self.start(group);
        }
        if let Some(budget) = self.opts.kv_budget {
            let per_row = self.bytes(1, longest + crate::model::decoder::KV_STEP).max(1);
            free = free.min((budget / per_row).saturating_sub(rows_after));
            // Rows join in groups (each join copies the cache once): a quarter of the rows
            // decoding, at least one.
            if free < (rows_after / 4).max(1) && !(live == 0 && group.is_empty()) {
                return self.start(group);
            }
        }
        let taken = feed.take(Room { rows: free, idle: live == 0 && group.is_empty(), per_request: false });
        for (request, req) in taken {
            let weights = match check(self.model, &req) {
                Ok(w) => w,
                Err(e) => anyhow::bail!("request {request}: {e}"),
            };
            if !self.gated && (req.contrast.is_some() || req.adapter.is_some()) {
                self.gated = true;
                self.gates = Gates::new(self.model, true);
            }
            let width = req.width();
            let len = req.prompts.iter().map(Vec::len).max().unwrap_or(0);
            let first = live == 0 && group.is_empty();
            if !self.held.is_empty() || !fits(self, rows_after + width, longest.max(len), first) {
                self.held.push_back((request, req, weights, 0));
                continue;
            }
            rows_after += width;
            longest = longest.max(len);
            self.admitted += 1;
            group.push(Row::new(request, req, weights, 0, self.admitted));
        }
        self.start(group)
    }

    /// Prefills `group` (through the prefix cache where it may) and joins it to the rows. Rows
    /// whose prompt and adapter repeat an earlier row's of the group (task lists sampled from one
    /// prompt) are run once: the copies take that row's keys, values and logits. The prompts of
    /// one mixture share their common beginning: it runs once, as its own row, first.
    fn start(&mut self, mut group: Vec<Row>) -> anyhow::Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let all_prompts: Vec<Vec<u32>> = group.iter().flat_map(|r| r.req.rows()).cloned().collect();
        let all_adapters: Vec<Option<String>> =
            group.iter().flat_map(|r| r.req.row_adapters()).map(|a| a.map(String::from)).collect();
        let (unique, source) = distinct_rows(&all_prompts, &all_adapters);
        let prompts: Vec<&Vec<u32>> = unique.iter().map(|&i| &all_prompts[i]).collect();
        let adapters: Vec<Option<String>> = unique.iter().map(|&i| all_adapters[i].clone()).collect();
        if let Some(cache) = prefix_cache(self.opts) {
            let stems = stems(&group, cache);
            if !stems.is_empty() {
                let started = Instant::now();
                let (stem_prompts, stem_adapters): (Vec<&Vec<u32>>, Vec<Option<String>>) =
                    stems.iter().map(|(p, a)| (p, a.clone())).unzip();
                self.prefill(&stem_prompts, &stem_adapters)?;
                self.timing.prefill_secs += started.elapsed().as_secs_f64();
            }
        }
        let started = Instant::now();
        let (mut cache, mut logits, takes) = self.prefill(&prompts, &adapters)?;
        // A copy took its whole prompt from the row it repeats.
        let mut at = 0;
        for row in group.iter_mut() {
            let s = source[at];
            row.cached = if unique[s] == at { takes[s] } else { all_prompts[at].len() };
            at += row.width;
        }
        let device = self.model.decoder.device();
        let run: usize = prompts.iter().map(|p| p.len()).sum::<usize>() - takes.iter().sum::<usize>();
        let all: usize = all_prompts.iter().map(|p| p.len()).sum();
        if prompts.len() < all_prompts.len() {
            cache.retain(&source)?;
            let index = Tensor::new(source.iter().map(|&s| s as u32).collect::<Vec<_>>(), device)?;
            logits = logits.index_select(&index, 0)?;
        }
        self.timing.cached_tokens += all - run;
        if self.opts.prompt_top > 0 {
            let all = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let mut at = 0;
            for row in group.iter_mut() {
                row.prompt_top = top_logits(&all[at], self.opts.prompt_top);
                at += row.width;
            }
        }
        // Join the rows decoding.
        self.logits = Some(match self.logits.take() {
            Some(old) if !self.rows.is_empty() => Tensor::cat(&[&old, &logits], 0)?,
            _ => logits,
        });
        let joining = Instant::now();
        self.cache.join(cache)?;
        self.timing.join_secs += joining.elapsed().as_secs_f64();
        self.rows.extend(group);
        crate::parallel::release_free_memory();
        self.timing.prefill_secs += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Runs `prompts` (each under its adapter) through the model, each from the longest
    /// beginning the prefix cache holds for it, and stores them there. Returns their cache,
    /// the logits of their last positions and how many tokens of each came from the prefix
    /// cache; counts the tokens run and the padding.
    fn prefill(
        &mut self,
        prompts: &[&Vec<u32>],
        adapters: &[Option<String>],
    ) -> anyhow::Result<(crate::model::Cache, Tensor, Vec<usize>)> {
        let decoder = &self.model.decoder;
        let device = decoder.device();
        let row_count = prompts.len();
        let prefix = prefix_cache(self.opts);
        // From the prefix cache: each row's stored beginning (at least its last token is run,
        // for its logits). All rows run the same number of new tokens `new`, the longest new
        // part; a row reuses what comes before its last `new` tokens.
        let hits: Vec<Option<prefix::Hit>> = match prefix {
            Some(cache) => {
                prompts.iter().zip(adapters).map(|(p, a)| cache.find(a.as_deref(), p, p.len() - 1)).collect()
            }
            None => prompts.iter().map(|_| None).collect(),
        };
        let new = prompts.iter().zip(&hits).map(|(p, h)| p.len() - h.as_ref().map_or(0, |h| h.len)).max().unwrap_or(0);
        let takes: Vec<usize> = prompts.iter().map(|p| p.len().saturating_sub(new)).collect();
        let reused: usize = takes.iter().sum();
        let (mut cache, width) = if reused > 0 {
            let rows: Vec<(Option<&crate::model::RowKv>, usize)> =
                hits.iter().zip(&takes).map(|(h, &t)| (h.as_ref().map(|h| &h.kv), t)).collect();
            let mut cache = crate::model::Cache::from_rows(&rows)?.stored_as(self.store)?;
            // A row shorter than the new part is padded inside it too.
            for (pad, p) in cache.pad.iter_mut().zip(prompts) {
                *pad += new - p.len().min(new);
            }
            (cache, new)
        } else {
            let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
            (decoder.new_cache(prompts.iter().map(|p| longest - p.len()).collect()).stored_as(self.store)?, longest)
        };
        let mut tokens = Vec::with_capacity(row_count * width);
        for (p, &take) in prompts.iter().zip(&takes) {
            let fed = &p[take..];
            tokens.extend(std::iter::repeat_n(0u32, width - fed.len()));
            tokens.extend_from_slice(fed);
        }
        self.gates.set(adapters)?;
        let input = Tensor::from_vec(tokens, (row_count, width), device)?;
        let logits = decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(1)?;
        if let Some(store) = prefix {
            for (r, (p, a)) in prompts.iter().zip(adapters).enumerate() {
                store.store(a.as_deref(), p, cache.row_kv(r)?);
            }
        }
        let run: usize = prompts.iter().map(|p| p.len()).sum::<usize>() - reused;
        self.timing.prefill_tokens += run;
        self.timing.padding_tokens += row_count * width - run;
        Ok((cache, logits, takes))
    }

    /// Picks every row's next token, ends the rows that are done, sets rows aside when the
    /// cache would outgrow the budget, and runs the rest one step.
    fn step(&mut self, feed: &mut (dyn Feed + Send), cancelled: bool) -> anyhow::Result<()> {
        let picked = Instant::now();
        let logits = self.logits.take().context("rows decode without logits")?;
        let next = pick(&logits, &mut self.rows)?;
        drop(logits);
        let gone: Vec<bool> = self.rows.iter().map(|row| feed.gone(row.request)).collect();
        let mut keep = Vec::with_capacity(self.rows.len());
        let mut at = 0;
        let mut on_event = |e: Event| feed.event(e);
        for (r, (row, &id)) in self.rows.iter_mut().zip(&next).enumerate() {
            match advance(self.model, row, id, cancelled || gone[r], &mut on_event)? {
                Some(completion) => on_event(Event::Finished { request: row.request, completion: &completion }),
                None => keep.push((r, at, id)),
            }
            at += row.width;
        }
        self.timing.pick_secs += picked.elapsed().as_secs_f64();
        // Over the budget at the next slot: the newest rows wait (never the last one).
        if let Some(budget) = self.opts.kv_budget {
            let needed = self.cache.len + 1;
            if needed > self.cache.capacity() {
                let mut rows: usize = keep.iter().map(|&(r, _, _)| self.rows[r].width).sum();
                let longest = |keep: &[(usize, usize, u32)], rows: &[Row]| {
                    keep.iter().map(|&(r, _, _)| rows[r].seen.len()).max().unwrap_or(0)
                };
                while keep.len() > 1 && self.bytes(rows, needed.max(longest(&keep, &self.rows))) > budget {
                    let newest = (0..keep.len()).max_by_key(|&i| self.rows[keep[i].0].admitted).expect("rows");
                    let (r, _, _) = keep.remove(newest);
                    let row = &self.rows[r];
                    rows -= row.width;
                    self.held.push_front((
                        row.request,
                        row.req.clone(),
                        row.weights.clone(),
                        row.streamed.max(row.text.len()),
                    ));
                    self.timing.set_aside += 1;
                }
            }
        }
        if keep.is_empty() {
            self.rows.clear();
            self.cache = self.model.decoder.new_cache(Vec::new()).stored_as(self.store)?;
            return Ok(());
        }
        let keep_rows: Vec<usize> = keep.iter().flat_map(|&(r, at, _)| at..at + self.rows[r].width).collect();
        let feed_ids: Vec<u32> =
            keep.iter().flat_map(|&(r, _, id)| std::iter::repeat_n(id, self.rows[r].width)).collect();
        if keep.len() < self.rows.len() {
            self.cache.retain(&keep_rows)?;
            crate::parallel::release_free_memory();
            let mut old: Vec<Option<Row>> = std::mem::take(&mut self.rows).into_iter().map(Some).collect();
            self.rows = keep.iter().map(|&(r, _, _)| old[r].take().expect("kept once")).collect();
        }
        let started = Instant::now();
        let adapters: Vec<Option<String>> =
            self.rows.iter().flat_map(|r| r.req.row_adapters()).map(|a| a.map(String::from)).collect();
        self.gates.set(&adapters)?;
        let input = Tensor::from_vec(feed_ids, (keep_rows.len(), 1), self.model.decoder.device())?;
        self.logits = Some(self.model.decoder.forward(&input, &mut self.cache, Pass::Inference, true)?.squeeze(1)?);
        self.timing.decode_tokens += self.rows.len();
        self.timing.decode_row_tokens += keep_rows.len();
        self.timing.decode_secs += started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// The weights of `n` prompts made to sum to 1 (equal when none are given).
pub fn normalised(weights: &[f64], n: usize) -> Result<Vec<f64>, String> {
    if weights.is_empty() {
        return Ok(vec![1.0 / n as f64; n]);
    }
    if weights.len() != n {
        return Err(format!("{} weights for {n} prompts", weights.len()));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(format!("weights must be finite and ≥ 0, got {weights:?}"));
    }
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return Err("the weights sum to 0".into());
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

/// The rows of `prompts` (with their `adapters`) that differ from every earlier one, and for
/// each row the index, among those, of the one it equals.
fn distinct_rows(prompts: &[Vec<u32>], adapters: &[Option<String>]) -> (Vec<usize>, Vec<usize>) {
    let mut first: std::collections::HashMap<(&Vec<u32>, &Option<String>), usize> = Default::default();
    let mut unique = Vec::new();
    let source = prompts
        .iter()
        .zip(adapters)
        .enumerate()
        .map(|(i, (p, a))| {
            *first.entry((p, a)).or_insert_with(|| {
                unique.push(i);
                unique.len() - 1
            })
        })
        .collect();
    (unique, source)
}

/// Tokens a mixture's prompts must share, beyond what the prefix cache holds, for that beginning
/// to run once on its own before them.
const STEM_MIN: usize = 16;

/// The common beginnings of the group's mixtures (a request's k prompts) worth running once
/// first: longer by [`STEM_MIN`] tokens than what `cache` already holds of them, each once.
fn stems(group: &[Row], cache: &PrefixCache) -> Vec<(Vec<u32>, Option<String>)> {
    let mut out: Vec<(Vec<u32>, Option<String>)> = Vec::new();
    for row in group {
        let req = &row.req;
        if req.contrast.is_some() || req.prompts.len() < 2 {
            continue;
        }
        let first = &req.prompts[0];
        let shared = req.prompts[1..].iter().map(|p| prefix::common(first, p)).min().unwrap_or(0);
        // At least the last token of every prompt runs, for its logits.
        let shared = req.prompts.iter().map(|p| p.len().saturating_sub(1)).fold(shared, usize::min);
        let stem = &first[..shared];
        let adapter = req.adapter.clone();
        if shared < STEM_MIN || out.iter().any(|(s, a)| s == stem && *a == adapter) {
            continue;
        }
        let held = cache.find(adapter.as_deref(), stem, shared).map_or(0, |h| h.len);
        if shared >= held + STEM_MIN {
            out.push((stem.to_vec(), adapter));
        }
    }
    out
}

/// The prefix cache when this call may use it.
fn prefix_cache(opts: &Options) -> Option<&PrefixCache> {
    opts.prefix.as_deref().filter(|_| opts.gated)
}

fn top_logits(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(n).map(|i| (i as u32, row[i])).collect()
}

/// The adapters' row gates while a batch with per-request adapters decodes; put back to "every
/// row" when dropped.
struct Gates {
    gates: Vec<(String, crate::model::linear::Gate)>,
    device: candle_core::Device,
}

impl Gates {
    /// Gated when any request so far named an adapter or decoded contrastively, or the call
    /// asks for it (so rows of base-only requests still run without adapters).
    fn new(model: &Model, gated: bool) -> Gates {
        let names = if gated { model.decoder.adapter_names() } else { Vec::new() };
        let gates = names.into_iter().filter_map(|n| model.decoder.gate(&n).map(|g| (n, g))).collect();
        Gates { gates, device: model.decoder.device().clone() }
    }

    /// Each adapter on exactly the cache rows that use it (`adapters`: each row's, in order).
    fn set(&self, adapters: &[Option<String>]) -> candle_core::Result<()> {
        use crate::model::linear::GateState;
        for (name, gate) in &self.gates {
            let mask: Vec<f32> =
                adapters.iter().map(|a| if a.as_deref() == Some(name.as_str()) { 1.0 } else { 0.0 }).collect();
            let state = if mask.iter().all(|&m| m == 1.0) {
                GateState::All
            } else if mask.iter().all(|&m| m == 0.0) {
                GateState::Off
            } else {
                let n = mask.len();
                GateState::Rows(Tensor::from_vec(mask, (n, 1, 1), &self.device)?)
            };
            *gate.write().unwrap_or_else(|e| e.into_inner()) = state;
        }
        Ok(())
    }
}

impl Drop for Gates {
    fn drop(&mut self) {
        for (_, gate) in &self.gates {
            *gate.write().unwrap_or_else(|e| e.into_inner()) = crate::model::linear::GateState::All;
        }
    }
}

/// log softmax(l), summed in f64.
pub fn log_softmax(l: &[f32]) -> Vec<f32> {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z = l.iter().map(|x| ((x - m) as f64).exp()).sum::<f64>().ln() as f32 + m;
    l.iter().map(|x| x - z).collect()
}

/// Contrastive scores (eq. 3) from the tuned and base logits of one step: log p_tuned −
/// log p_base where p_tuned ≥ α·max p_tuned, −∞ elsewhere.
pub fn contrast_scores(tuned: &[f32], base: &[f32], alpha: f64) -> Vec<f32> {
    let (lt, lb) = (log_softmax(tuned), log_softmax(base));
    let best = lt.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let floor = best + alpha.ln() as f32;
    lt.iter().zip(&lb).map(|(&t, &b)| if t >= floor { t - b } else { f32::NEG_INFINITY }).collect()
}

/// Appends `id` to `row`: streams its text, and returns the completion when it ends the request.
fn advance(
    model: &Model,
    row: &mut Row,
    id: u32,
    cancelled: bool,
    on_event: &mut dyn FnMut(Event),
) -> anyhow::Result<Option<Completion>> {
    row.seen.push(id);
    let text_before = row.text.len();
    let req = &row.req;
    let mut finish = None;
    // Text from byte `from` on is new to the listener, except what a replay already streamed.
    let request = row.request;
    let emit = |text: &str, from: usize, streamed: usize, on_event: &mut dyn FnMut(Event)| {
        let start = from.max(streamed);
        let replaying = from < streamed && start >= text.len();
        if let Some(new) = text.get(start..).filter(|_| !replaying) {
            on_event(Event::Token { request, id, text: new });
        }
    };
    if !req.ignore_eos && model.eos_token_ids.contains(&id) {
        // The end-of-sequence token is kept in ids, not in text.
        finish = Some(Finish::Eos);
    } else {
        let delta = row.stream.push(id, &model.tokenizer)?;
        let old = row.text.len();
        row.text.push_str(&delta);
        match find_stop(&row.text, &req.stop, old).filter(|_| !delta.is_empty()) {
            Some((at, stop)) => {
                row.text.truncate(at);
                emit(&row.text, old.min(at), row.streamed, on_event);
                finish = Some(Finish::Stop(stop));
            }
            None => emit(&row.text, old, row.streamed, on_event),
        }
    }
    let generated = row.seen.len() - row.prompt_len;
    let new_line = row.text.len() > text_before && row.text[text_before..].contains('\n');
    if finish.is_none()
        && req.stop_on_loop
        && (looping(&row.seen[row.prompt_len..]).is_some() || (new_line && looping_lines(&row.text)))
    {
        finish = Some(Finish::Loop);
    }
    if finish.is_none() && new_line && req.stop_when.is_some_and(|bad| bad(&row.text)) {
        finish = Some(Finish::Loop);
    }
    if finish.is_none() && generated >= req.max_new_tokens {
        finish = Some(Finish::Length);
    }
    // The model's context ends the text too: no position past the one it was trained to.
    let context = model.decoder.spec.max_position_embeddings;
    if finish.is_none() && context > 0 && req.prompts.iter().map(Vec::len).max().unwrap_or(0) + generated >= context {
        finish = Some(Finish::Length);
    }
    if finish.is_none() && cancelled {
        finish = Some(Finish::Cancelled);
    }
    let Some(finish) = finish else { return Ok(None) };
    if !matches!(finish, Finish::Stop(_)) {
        let rest = row.stream.finish(&model.tokenizer)?;
        if !rest.is_empty() {
            let old = row.text.len();
            row.text.push_str(&rest);
            emit(&row.text, old, row.streamed, on_event);
        }
    }
    Ok(Some(Completion {
        ids: row.seen[row.prompt_len..].to_vec(),
        text: std::mem::take(&mut row.text),
        finish,
        prompt_top: std::mem::take(&mut row.prompt_top),
        logprobs: std::mem::take(&mut row.logprobs),
        cached_tokens: row.cached,
    }))
}

/// log Σ_j w_j·softmax(l_j) for each request (its rows' logits `l_j`, weights `w_j`), computed
/// where the logits are: `[rows, vocab]` → `[requests, vocab]`. Tokens no prompt can produce get
/// −∞.
pub fn mix(logits: &Tensor, widths: &[usize], weights: &[&[f64]]) -> candle_core::Result<Tensor> {
    let total: usize = widths.iter().sum();
    let mut w = vec![0f32; widths.len() * total];
    let mut at = 0;
    for (g, (&width, ws)) in widths.iter().zip(weights).enumerate() {
        for j in 0..width {
            w[g * total + at + j] = ws[j] as f32;
        }
        at += width;
    }
    let w = Tensor::from_vec(w, (widths.len(), total), logits.device())?;
    let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    w.matmul(&probs)?.log()
}

/// The next token of every request. Plain requests choose from their logits (an argmax where the
/// logits are when every request is plain greedy); mixtures from the log of the mixed
/// distribution, with the same sampling rules.
fn pick(logits: &Tensor, rows: &mut [Row]) -> anyhow::Result<Vec<u32>> {
    let per_row = |r: &Row| r.req.contrast.is_some() || r.req.top_logprobs.is_some();
    if rows.iter().any(per_row) {
        // Per request on the CPU: contrastive pairs, mixtures and plain rows side by side.
        // Mixtures (if any in the batch) are mixed where the logits are, all in one product.
        let any_mixture = rows.iter().any(|r| r.width > 1 && r.req.contrast.is_none());
        let mixed = if any_mixture {
            let widths: Vec<usize> = rows.iter().map(|r| r.width).collect();
            let ws: Vec<&[f64]> = rows.iter().map(|r| r.weights.as_slice()).collect();
            mix(logits, &widths, &ws)?.to_vec2::<f32>()?
        } else {
            Vec::new()
        };
        let all = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut at = 0;
        let mut out = Vec::with_capacity(rows.len());
        for (g, row) in rows.iter_mut().enumerate() {
            let req = &row.req;
            let mut scores = match &req.contrast {
                Some(c) => contrast_scores(&all[at], &all[at + 1], c.alpha),
                None if row.width == 1 => all[at].clone(),
                None => mixed[g].clone(),
            };
            // A contrastive step reports the tuned model's distribution.
            let logprobs = req.top_logprobs.map(|n| {
                let source = if req.contrast.is_some() || row.width == 1 { &all[at] } else { &scores };
                (n, log_softmax(source))
            });
            at += row.width;
            let id = sampling::choose(&mut scores, &req.sampling, &row.seen, &mut row.rng);
            if let Some((n, lp)) = logprobs {
                let top = top_logits(&lp, n);
                row.logprobs.push(TokenLogprob { id, logprob: lp[id as usize], top });
            }
            out.push(id);
        }
        return Ok(out);
    }
    let scores = if rows.iter().all(|r| r.width == 1) {
        logits.to_dtype(DType::F32)?
    } else {
        let widths: Vec<usize> = rows.iter().map(|r| r.width).collect();
        let ws: Vec<&[f64]> = rows.iter().map(|r| r.weights.as_slice()).collect();
        mix(logits, &widths, &ws)?
    };
    if rows.iter().all(|r| r.req.sampling.is_plain_greedy()) {
        return Ok(scores.argmax(D::Minus1)?.to_vec1::<u32>()?);
    }
    // Each row draws from its own generator, so drawing rows in parallel draws the same tokens.
    let all = scores.to_vec2::<f32>()?;
    Ok(rows
        .par_iter_mut()
        .zip(all)
        .map(|(row, mut l)| sampling::choose(&mut l, &row.req.sampling, &row.seen, &mut row.rng))
        .collect())
}

/// The first stop string in `text` that ends after byte `from` (so it was completed by the
/// newest text), with where it starts.
pub(crate) fn find_stop(text: &str, stops: &[String], from: usize) -> Option<(usize, String)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let search_from = from.saturating_sub(s.len() - 1);
            let start = (search_from..=from).find(|&i| text.is_char_boundary(i))?;
            text[start..].find(s.as_str()).map(|at| (start + at, s.clone()))
        })
        .min_by_key(|(at, _)| *at)
}

#[cfg(test)]
mod tests {
    use super::{looping, looping_lines};

    #[test]
    fn numbered_items_written_again_are_a_loop() {
        let items: String =
            (120..126).map(|i| format!("{i}. Determine which disease is linked to the findings.\n")).collect();
        assert!(looping_lines(&items));
        assert!(looping_lines(&format!("{items}127. Determine which")), "a line being written is not compared");
        let tasks: String =
            (5..10).map(|i| format!("Task {i}\nInstructions: This is a study of a new drug.\n\n")).collect();
        assert!(looping_lines(&tasks));
        // Three times is not yet a loop; items that differ never are.
        let three: String = (1..4).map(|i| format!("{i}) Name the drug.\n")).collect();
        assert!(!looping_lines(&three));
        let list: String = (1..30).map(|i| format!("{i}. Name drug number {}.\n", i * 7)).collect();
        assert!(!looping_lines(&list));
        // A table whose figures differ, and a column of bare numbers.
        let table: String = (2019..2025).map(|y| format!("Year {y}: revenue {} million\n", y - 1000)).collect();
        assert!(!looping_lines(&table));
        let column: String = (1..20).map(|i| format!("{i}. 1\n")).collect();
        assert!(!looping_lines(&column));
        assert!(!looping_lines(""));
        // A word run into digits is not an item number.
        let same: String = (0..5).map(|_| "COVID19 spreads by air.\n").collect();
        assert!(looping_lines(&same));
        let variants: String = (15..20).map(|i| format!("COVID{i} spreads by air.\n")).collect();
        assert!(!looping_lines(&variants));
    }

    #[test]
    fn a_loop_is_a_short_stretch_repeated_and_a_list_is_not() {
        // "The answer is:" as 4 tokens, 12 times.
        let phrase = [10, 11, 12, 13];
        let tokens: Vec<u32> = (0..12).flat_map(|_| phrase).collect();
        assert_eq!(looping(&tokens), Some(4));
        // Only 8 repeats of 4 tokens: 32 < 48, not yet.
        assert_eq!(looping(&tokens[..32]), None);
        // A sentence of 12 tokens said twice is a loop at once; once, or with a word changed,
        // is not; a stretch of 9 tokens said twice is not either.
        let sentence: Vec<u32> = (50..62).collect();
        let twice: Vec<u32> = [&[1, 2, 3][..], &sentence, &sentence].concat();
        assert_eq!(looping(&twice), Some(12));
        assert_eq!(looping(&twice[..twice.len() - 1]), None);
        let mut changed = twice.clone();
        changed[10] = 99;
        assert_eq!(looping(&changed), None);
        let nine = [&sentence[..9], &sentence[..9]].concat();
        assert_eq!(looping(&nine), None);
        // A numbered list shares its layout, but its items differ.
        let list: Vec<u32> = (0..40).flat_map(|i| [1, 2, 100 + i, 3, 4, 200 + i]).collect();
        assert_eq!(looping(&list), None);
        // One token repeated.
        assert_eq!(looping(&[7; 60]), Some(1));
    }
}
