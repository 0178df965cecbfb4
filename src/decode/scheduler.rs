//! The continuous decoder: requests from a feed decoded together, each finished request's cache
//! rows going to the next waiting one at once; prefill of new groups, the prefix cache, the
//! adapters' row gates, and a KV budget that sets the newest rows aside. What one step does to
//! each row is in row.rs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};

use super::mixing::normalised;
use super::prefix::{self, PrefixCache};
use super::request::*;
use super::row::{advance, pick, top_logits, Row};
use crate::model::{Model, Pass};

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
        rows * len.next_multiple_of(crate::model::network::decoder::KV_STEP) * self.slot_bytes
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
            first || s.opts.kv_budget.is_none_or(|b| s.bytes(rows, len + crate::model::network::decoder::KV_STEP) <= b)
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
            let per_row = self.bytes(1, longest + crate::model::network::decoder::KV_STEP).max(1);
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

/// The adapters' row gates while a batch with per-request adapters decodes; put back to "every
/// row" when dropped.
struct Gates {
    gates: Vec<(String, crate::model::network::linear::Gate)>,
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
        use crate::model::network::linear::GateState;
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
            *gate.write().unwrap_or_else(|e| e.into_inner()) = crate::model::network::linear::GateState::All;
        }
    }
}
