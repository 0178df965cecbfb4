//! Generation: many prompts of different lengths decoded together, each with its own sampling,
//! stop conditions and length, leaving the batch when done; text streamed as it is made.

pub mod filters;
pub mod pipeline;
pub mod prompts;
pub mod review;
pub mod samples;
pub mod sampling;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::model::{Model, Pass};
pub use sampling::{Rng, Sampling, SamplingParams};
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// Generated ids (an end-of-sequence token included when it ended the text).
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: Finish,
    /// The highest logits at the last prompt position, best first (as many as asked for).
    pub prompt_top: Vec<(u32, f32)>,
}

/// What generation reports while it runs.
pub enum Event<'a> {
    Token { request: usize, id: u32, text: &'a str },
    Finished { request: usize, completion: &'a Completion },
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

pub struct Options {
    /// How many top logits of the last prompt position to keep per request.
    pub prompt_top: usize,
    /// Most rows decoded at once; more requests run in successive waves.
    pub max_batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { prompt_top: 0, max_batch: 64 }
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
}

pub fn generate(
    model: &Model,
    requests: &[Request],
    opts: &Options,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> anyhow::Result<(Vec<Completion>, Timing)> {
    let mut done: Vec<Option<Completion>> = vec![None; requests.len()];
    let mut timing = Timing::default();
    let mut weights = Vec::with_capacity(requests.len());
    for (i, r) in requests.iter().enumerate() {
        if r.prompts.is_empty() || r.prompts.iter().any(|p| p.is_empty()) {
            anyhow::bail!("request {i}: a prompt has no tokens");
        }
        weights.push(normalised(&r.weights, r.prompts.len()).map_err(|e| anyhow::anyhow!("request {i}: {e}"))?);
    }
    // Waves of whole requests, at most `max_batch` rows each (a wider request gets a wave alone).
    let mut first = 0;
    while first < requests.len() {
        let mut end = first;
        let mut rows = 0;
        while end < requests.len() && (end == first || rows + requests[end].prompts.len() <= opts.max_batch.max(1)) {
            rows += requests[end].prompts.len();
            end += 1;
        }
        let ids: Vec<usize> = (first..end).collect();
        run_wave(model, requests, &weights, &ids, opts, on_event, cancel, &mut done, &mut timing)?;
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
    let prompts = || wave.iter().flat_map(|&i| requests[i].prompts.iter());
    let longest = prompts().map(Vec::len).max().unwrap_or(0);
    let row_count = prompts().count();
    let mut tokens = Vec::with_capacity(row_count * longest);
    let mut pad = Vec::with_capacity(row_count);
    for p in prompts() {
        pad.push(longest - p.len());
        tokens.extend(std::iter::repeat_n(0u32, longest - p.len()));
        tokens.extend_from_slice(p);
    }
    let mut rows: Vec<Row> = wave
        .iter()
        .map(|&i| Row {
            request: i,
            width: requests[i].prompts.len(),
            prompt_top: Vec::new(),
            stream: TextStream::new(),
            text: String::new(),
            seen: requests[i].prompts[0].clone(),
            prompt_len: requests[i].prompts[0].len(),
            rng: Rng::new(requests[i].sampling.seed),
        })
        .collect();
    let mut cache = decoder.new_cache(pad);
    let started = Instant::now();
    let input = Tensor::from_vec(tokens, (row_count, longest), device)?;
    let mut logits = decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(1)?;
    if opts.prompt_top > 0 {
        let all = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut at = 0;
        for row in rows.iter_mut() {
            row.prompt_top = top_logits(&all[at], opts.prompt_top);
            at += row.width;
        }
    }
    timing.prefill_tokens += prompts().map(Vec::len).sum::<usize>();
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
        logits = decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(1)?;
        timing.decode_tokens += rows.len();
    }
    timing.decode_secs += decode_started.elapsed().as_secs_f64();
    Ok(())
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
fn find_stop(text: &str, stops: &[String], from: usize) -> Option<(usize, String)> {
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
