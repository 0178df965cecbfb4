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

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::model::{Model, Pass};
pub use crate::rng::Rng;
pub use prefix::PrefixCache;
pub use sampling::{Sampling, SamplingParams};
pub use stream::TextStream;

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

/// The shortest period of a repetition loop at the end of `tokens`: the last `p` tokens (p ≤ 32)
/// repeated back to back at least 4 times and over at least 48 tokens — "The answer is: The
/// answer is: …", a list item written again and again. A list whose items only share a layout
/// is not a loop: its items differ.
pub fn looping(tokens: &[u32]) -> Option<usize> {
    (1..=32usize).find(|&p| {
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
    })
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

/// One generated token's log-probability and the most likely tokens of its step, best first.
#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What generation reports while it runs.
pub enum Event<'a> {
    Token { request: usize, id: u32, text: &'a str },
    Finished { request: usize, completion: &'a Completion },
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    /// Prompt tokens run through the model (every prompt of a mixture counted).
    pub prefill_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache instead.
    pub cached_tokens: usize,
    pub prefill_secs: f64,
    /// Tokens generated by decoding steps (a mixture's token counted once).
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

pub struct Options {
    /// How many top logits of the last prompt position to keep per request.
    pub prompt_top: usize,
    /// Most rows decoded at once; more requests run in successive waves.
    pub max_batch: usize,
    /// Every row gets only its own adapter (none for a request naming none), even when no
    /// request of the call names one: a server's base requests never see its adapters.
    pub gated: bool,
    /// Prompts' keys and values kept between calls (used only when `gated`, where each row's
    /// adapter is known): a prompt starting like a stored one runs only its new tokens.
    pub prefix: Option<Arc<PrefixCache>>,
}

impl Default for Options {
    fn default() -> Self {
        Options { prompt_top: 0, max_batch: 64, gated: false, prefix: None }
    }
}

/// One request being decoded: `width` cache rows (its prompts) that share one text.
struct Row {
    request: usize,
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
}

/// Decodes `requests` in batches of at most `opts.max_batch`, reporting through `on_event`.
/// The decoding runs on a worker of rayon's pool ([`crate::parallel::on_worker`]), so
/// `on_event` is called from that thread (hence `Send`); the caller waits for the result.
pub fn generate(
    model: &Model,
    requests: &[Request],
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
    cancel: &AtomicBool,
) -> anyhow::Result<(Vec<Completion>, Timing)> {
    crate::parallel::on_worker(|| generate_on_worker(model, requests, opts, on_event, cancel))
}

fn generate_on_worker(
    model: &Model,
    requests: &[Request],
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
    cancel: &AtomicBool,
) -> anyhow::Result<(Vec<Completion>, Timing)> {
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let mut timing = Timing::default();
    let mut weights = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.prompts.is_empty() || r.prompts.iter().any(|p| p.is_empty()) {
            anyhow::bail!("request {i}: a prompt has no tokens");
        }
        if let Some(c) = &r.contrast {
            anyhow::ensure!(r.prompts.len() == 1, "request {i}: contrastive decoding takes one prompt");
            anyhow::ensure!(c.alpha > 0.0 && c.alpha <= 1.0, "request {i}: the contrastive α must be in (0, 1]");
        }
        for name in r.adapter.iter().chain(r.contrast.as_ref().map(|c| &c.adapter)) {
            anyhow::ensure!(model.decoder.gate(name).is_some(), "request {i}: no adapter named {name} is loaded");
        }
        weights.push(match r.contrast {
            // The mixture of a contrastive pair is its tuned row (used only for shapes).
            Some(_) => vec![1.0, 0.0],
            None => normalised(&r.weights, r.prompts.len()).map_err(|e| anyhow::anyhow!("request {i}: {e}"))?,
        });
    }
    // Waves of whole requests, at most `max_batch` rows each (a wider request gets a wave alone).
    // With a prefix cache, requests go by how many prompt tokens they must run (the rest is
    // stored), fewest first, and a request that must run far more than the wave so far starts a
    // new one: every row of a wave runs as many new tokens as its longest.
    // (Each wave looks its rows up again: the waves before it may have stored longer prompts.)
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
    let mut first = 0;
    while first < order.len() {
        let mut end = first;
        let mut rows = 0;
        let width = |at: usize| requests[order[at]].rows().len();
        let far_more = |at: usize| !fresh.is_empty() && fresh[order[at]] > 8 * fresh[order[at - 1]].max(16);
        while end < order.len() && (end == first || (rows + width(end) <= opts.max_batch.max(1) && !far_more(end))) {
            rows += width(end);
            end += 1;
        }
        run_wave(model, requests, &weights, &order[first..end], opts, on_event, cancel, &mut done, &mut timing)?;
        first = end;
    }
    Ok((done.into_iter().map(|c| c.expect("every request finishes")).collect(), timing))
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

/// The prefix cache when this call may use it.
fn prefix_cache(opts: &Options) -> Option<&PrefixCache> {
    opts.prefix.as_deref().filter(|_| opts.gated)
}

fn top_logits(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(n).map(|i| (i as u32, row[i])).collect()
}

#[allow(clippy::too_many_arguments)]
fn run_wave(
    model: &Model,
    requests: &[Request],
    weights: &[Vec<f64>],
    wave: &[usize],
    opts: &Options,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
    done: &mut [Option<Completion>],
    timing: &mut Timing,
) -> anyhow::Result<()> {
    let decoder = &model.decoder;
    let device = decoder.device();
    let prompts = || wave.iter().flat_map(|&i| requests[i].rows());
    let adapters = || wave.iter().flat_map(|&i| requests[i].row_adapters());
    let row_count = prompts().count();
    let prefix = prefix_cache(opts);
    // From the prefix cache: each row's stored beginning (at least its last token is run, for
    // its logits). All rows run the same number of new tokens `new`, the longest new part; a
    // row reuses what comes before its last `new` tokens.
    let hits: Vec<Option<prefix::Hit>> = match prefix {
        Some(cache) => prompts().zip(adapters()).map(|(p, a)| cache.find(a, p, p.len() - 1)).collect(),
        None => prompts().map(|_| None).collect(),
    };
    let new = prompts().zip(&hits).map(|(p, h)| p.len() - h.as_ref().map_or(0, |h| h.len)).max().unwrap_or(0);
    let takes: Vec<usize> = prompts().map(|p| p.len().saturating_sub(new)).collect();
    let reused: usize = takes.iter().sum();
    let (mut cache, width) = if reused > 0 {
        let rows: Vec<(Option<&crate::model::RowKv>, usize)> =
            hits.iter().zip(&takes).map(|(h, &t)| (h.as_ref().map(|h| &h.kv), t)).collect();
        let mut cache = crate::model::Cache::from_rows(&rows)?;
        // A row shorter than the new part is padded inside it too.
        for (pad, p) in cache.pad.iter_mut().zip(prompts()) {
            *pad += new - p.len().min(new);
        }
        (cache, new)
    } else {
        let longest = prompts().map(Vec::len).max().unwrap_or(0);
        (decoder.new_cache(prompts().map(|p| longest - p.len()).collect()), longest)
    };
    let mut tokens = Vec::with_capacity(row_count * width);
    for (p, &take) in prompts().zip(&takes) {
        let fed = &p[take..];
        tokens.extend(std::iter::repeat_n(0u32, width - fed.len()));
        tokens.extend_from_slice(fed);
    }
    let mut rows: Vec<Row> = wave
        .iter()
        .map(|&i| Row {
            request: i,
            width: requests[i].rows().len(),
            prompt_top: Vec::new(),
            stream: TextStream::new(),
            text: String::new(),
            seen: requests[i].prompts[0].clone(),
            prompt_len: requests[i].prompts[0].len(),
            rng: Rng::new(requests[i].sampling.seed),
            logprobs: Vec::new(),
            cached: 0,
        })
        .collect();
    let mut at = 0;
    for row in rows.iter_mut() {
        row.cached = takes[at];
        at += row.width;
    }
    let started = Instant::now();
    let gates = Gates::new(model, requests, opts.gated);
    gates.set(requests, &rows)?;
    let input = Tensor::from_vec(tokens, (row_count, width), device)?;
    let mut logits = decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(1)?;
    if let Some(store) = prefix {
        for (r, (p, a)) in prompts().zip(adapters()).enumerate() {
            store.store(a, p, cache.row_kv(r)?);
        }
    }
    if opts.prompt_top > 0 {
        let all = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut at = 0;
        for row in rows.iter_mut() {
            row.prompt_top = top_logits(&all[at], opts.prompt_top);
            at += row.width;
        }
    }
    timing.prefill_tokens += prompts().map(Vec::len).sum::<usize>() - reused;
    timing.cached_tokens += reused;
    timing.prefill_secs += started.elapsed().as_secs_f64();

    let decode_started = Instant::now();
    loop {
        let next = pick(&logits, &mut rows, requests, weights)?;
        let mut keep = Vec::with_capacity(rows.len());
        let mut keep_rows = Vec::with_capacity(cache.rows());
        let mut feed = Vec::with_capacity(cache.rows());
        let cancelled = cancel.load(Ordering::Relaxed);
        let mut at = 0;
        for (r, (row, &id)) in rows.iter_mut().zip(&next).enumerate() {
            let req = &requests[row.request];
            match advance(model, req, row, id, cancelled, on_event)? {
                Some(completion) => {
                    on_event(Event::Finished { request: row.request, completion: &completion });
                    done[row.request] = Some(completion);
                }
                None => {
                    keep.push(r);
                    keep_rows.extend(at..at + row.width);
                    feed.extend(std::iter::repeat_n(id, row.width));
                }
            }
            at += row.width;
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < rows.len() {
            cache.retain(&keep_rows)?;
            let mut kept = Vec::with_capacity(keep.len());
            for (r, row) in rows.into_iter().enumerate() {
                if keep.contains(&r) {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        let input = Tensor::from_vec(feed, (keep_rows.len(), 1), device)?;
        gates.set(requests, &rows)?;
        logits = decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(1)?;
        timing.decode_tokens += rows.len();
    }
    timing.decode_secs += decode_started.elapsed().as_secs_f64();
    Ok(())
}

/// The adapters' row gates while a batch with per-request adapters decodes; put back to "every
/// row" when dropped.
struct Gates {
    gates: Vec<(String, crate::model::linear::Gate)>,
    device: candle_core::Device,
}

impl Gates {
    /// Gated when any request of the whole call names an adapter or decodes contrastively (so a
    /// wave of base-only requests still runs without adapters).
    fn new(model: &Model, requests: &[Request], always: bool) -> Gates {
        let gated = always || requests.iter().any(|r| r.adapter.is_some() || r.contrast.is_some());
        let names = if gated { model.decoder.adapter_names() } else { Vec::new() };
        let gates = names.into_iter().filter_map(|n| model.decoder.gate(&n).map(|g| (n, g))).collect();
        Gates { gates, device: model.decoder.device().clone() }
    }

    /// Each adapter on exactly the rows that use it.
    fn set(&self, requests: &[Request], rows: &[Row]) -> candle_core::Result<()> {
        use crate::model::linear::GateState;
        for (name, gate) in &self.gates {
            let mut mask = Vec::new();
            for row in rows {
                let req = &requests[row.request];
                for j in 0..row.width {
                    let on = match &req.contrast {
                        Some(c) => j == 0 && c.adapter == *name,
                        None => req.adapter.as_deref() == Some(name.as_str()),
                    };
                    mask.push(if on { 1f32 } else { 0f32 });
                }
            }
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
    req: &Request,
    row: &mut Row,
    id: u32,
    cancelled: bool,
    on_event: &mut dyn FnMut(Event),
) -> anyhow::Result<Option<Completion>> {
    row.seen.push(id);
    let mut finish = None;
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
                let shown = row.text.get(old.min(at)..).unwrap_or("").to_string();
                on_event(Event::Token { request: row.request, id, text: &shown });
                finish = Some(Finish::Stop(stop));
            }
            None => on_event(Event::Token { request: row.request, id, text: &delta }),
        }
    }
    let generated = row.seen.len() - row.prompt_len;
    if finish.is_none() && req.stop_on_loop && looping(&row.seen[row.prompt_len..]).is_some() {
        finish = Some(Finish::Loop);
    }
    if finish.is_none() && generated >= req.max_new_tokens {
        finish = Some(Finish::Length);
    }
    if finish.is_none() && cancelled {
        finish = Some(Finish::Cancelled);
    }
    let Some(finish) = finish else { return Ok(None) };
    if !matches!(finish, Finish::Stop(_)) {
        let rest = row.stream.finish(&model.tokenizer)?;
        if !rest.is_empty() {
            row.text.push_str(&rest);
            on_event(Event::Token { request: row.request, id, text: &rest });
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
fn pick(logits: &Tensor, rows: &mut [Row], requests: &[Request], weights: &[Vec<f64>]) -> anyhow::Result<Vec<u32>> {
    let per_row = |r: &Row| requests[r.request].contrast.is_some() || requests[r.request].top_logprobs.is_some();
    if rows.iter().any(per_row) {
        // Per request on the CPU: contrastive pairs, mixtures and plain rows side by side.
        // Mixtures (if any in the batch) are mixed where the logits are, all in one product.
        let any_mixture = rows.iter().any(|r| r.width > 1 && requests[r.request].contrast.is_none());
        let mixed = if any_mixture {
            let widths: Vec<usize> = rows.iter().map(|r| r.width).collect();
            let ws: Vec<&[f64]> = rows.iter().map(|r| weights[r.request].as_slice()).collect();
            mix(logits, &widths, &ws)?.to_vec2::<f32>()?
        } else {
            Vec::new()
        };
        let all = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut at = 0;
        let mut out = Vec::with_capacity(rows.len());
        for (g, row) in rows.iter_mut().enumerate() {
            let req = &requests[row.request];
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
        let ws: Vec<&[f64]> = rows.iter().map(|r| weights[r.request].as_slice()).collect();
        mix(logits, &widths, &ws)?
    };
    if rows.iter().all(|r| requests[r.request].sampling.is_plain_greedy()) {
        return Ok(scores.argmax(D::Minus1)?.to_vec1::<u32>()?);
    }
    let all = scores.to_vec2::<f32>()?;
    Ok(rows
        .iter_mut()
        .zip(all)
        .map(|(row, mut l)| sampling::choose(&mut l, &requests[row.request].sampling, &row.seen, &mut row.rng))
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
    use super::looping;

    #[test]
    fn a_loop_is_a_short_stretch_repeated_and_a_list_is_not() {
        // "The answer is:" as 4 tokens, 12 times.
        let phrase = [10, 11, 12, 13];
        let tokens: Vec<u32> = (0..12).flat_map(|_| phrase).collect();
        assert_eq!(looping(&tokens), Some(4));
        // Only 8 repeats of 4 tokens: 32 < 48, not yet.
        assert_eq!(looping(&tokens[..32]), None);
        // A numbered list shares its layout, but its items differ.
        let list: Vec<u32> = (0..40).flat_map(|i| [1, 2, 100 + i, 3, 4, 200 + i]).collect();
        assert_eq!(looping(&list), None);
        // One token repeated.
        assert_eq!(looping(&[7; 60]), Some(1));
    }
}
