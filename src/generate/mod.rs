//! Generation: many prompts of different lengths decoded together, each with its own sampling,
//! stop conditions and length, leaving the batch when done; text streamed as it is made.

pub mod filters;
pub mod prompts;
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
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    /// Generation stops when the text contains one of these; the text returned ends before it.
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    /// Keep going past end-of-sequence tokens (benchmarks).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

struct Row {
    request: usize,
    /// The top logits at the last prompt position (empty unless asked for).
    prompt_top: Vec<(u32, f32)>,
    stream: TextStream,
    text: String,
    seen: Vec<u32>,
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
    for (i, r) in requests.iter().enumerate() {
        if r.prompt.is_empty() {
            anyhow::bail!("request {i}: the prompt has no tokens");
        }
    }
    let wave = opts.max_batch.max(1);
    for first in (0..requests.len()).step_by(wave) {
        let ids: Vec<usize> = (first..(first + wave).min(requests.len())).collect();
        run_wave(model, requests, &ids, opts, on_event, cancel, &mut done, &mut timing)?;
    }
    Ok((done.into_iter().map(|c| c.expect("every request finishes")).collect(), timing))
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
    wave: &[usize],
    opts: &Options,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
    done: &mut [Option<Completion>],
    timing: &mut Timing,
) -> anyhow::Result<()> {
    let decoder = &model.decoder;
    let device = decoder.device();
    let longest = wave.iter().map(|&i| requests[i].prompt.len()).max().unwrap_or(0);
    let mut tokens = Vec::with_capacity(wave.len() * longest);
    let mut pad = Vec::with_capacity(wave.len());
    for &i in wave {
        let p = &requests[i].prompt;
        pad.push(longest - p.len());
        tokens.extend(std::iter::repeat_n(0u32, longest - p.len()));
        tokens.extend_from_slice(p);
    }
    let mut rows: Vec<Row> = wave
        .iter()
        .map(|&i| Row {
            request: i,
            prompt_top: Vec::new(),
            stream: TextStream::new(),
            text: String::new(),
            seen: requests[i].prompt.clone(),
            rng: Rng::new(requests[i].sampling.seed),
        })
        .collect();
    let mut cache = decoder.new_cache(pad);
    let started = Instant::now();
    let input = Tensor::from_vec(tokens, (wave.len(), longest), device)?;
    let mut logits = decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(1)?;
    if opts.prompt_top > 0 {
        let all = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        for (row, l) in rows.iter_mut().zip(&all) {
            row.prompt_top = top_logits(l, opts.prompt_top);
        }
    }
    timing.prefill_tokens += wave.iter().map(|&i| requests[i].prompt.len()).sum::<usize>();
    timing.prefill_secs += started.elapsed().as_secs_f64();

    let decode_started = Instant::now();
    loop {
        let next = pick(&logits, &mut rows, requests)?;
        let mut keep = Vec::with_capacity(rows.len());
        let mut feed = Vec::with_capacity(rows.len());
        let cancelled = cancel.load(Ordering::Relaxed);
        for (r, (row, &id)) in rows.iter_mut().zip(&next).enumerate() {
            let req = &requests[row.request];
            row.seen.push(id);
            let is_eos = !req.ignore_eos && model.eos_token_ids.contains(&id);
            let mut finish = None;
            if is_eos {
                // The end-of-sequence token is kept in ids, not in text.
                finish = Some(Finish::Eos);
            } else {
                let delta = row.stream.push(id, &model.tokenizer)?;
                if !delta.is_empty() {
                    let old = row.text.len();
                    row.text.push_str(&delta);
                    if let Some((at, stop)) = find_stop(&row.text, &req.stop, old) {
                        row.text.truncate(at);
                        let shown = row.text.get(old.min(at)..).unwrap_or("").to_string();
                        on_event(Event::Token { request: row.request, id, text: &shown });
                        finish = Some(Finish::Stop(stop));
                    } else {
                        on_event(Event::Token { request: row.request, id, text: &delta });
                    }
                } else {
                    on_event(Event::Token { request: row.request, id, text: "" });
                }
            }
            let generated = row.seen.len() - req.prompt.len();
            if finish.is_none() && generated >= req.max_new_tokens {
                finish = Some(Finish::Length);
            }
            if finish.is_none() && cancelled {
                finish = Some(Finish::Cancelled);
            }
            match finish {
                Some(finish) => {
                    if !matches!(finish, Finish::Stop(_)) {
                        let rest = row.stream.finish(&model.tokenizer)?;
                        if !rest.is_empty() {
                            row.text.push_str(&rest);
                            on_event(Event::Token { request: row.request, id, text: &rest });
                        }
                    }
                    let completion = Completion {
                        ids: row.seen[req.prompt.len()..].to_vec(),
                        text: std::mem::take(&mut row.text),
                        finish,
                        prompt_top: std::mem::take(&mut row.prompt_top),
                    };
                    on_event(Event::Finished { request: row.request, completion: &completion });
                    done[row.request] = Some(completion);
                }
                None => {
                    keep.push(r);
                    feed.push(id);
                }
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < rows.len() {
            cache.retain(&keep)?;
            let mut kept = Vec::with_capacity(keep.len());
            for (r, row) in rows.into_iter().enumerate() {
                if keep.contains(&r) {
                    kept.push(row);
                }
            }
            rows = kept;
        }
        let input = Tensor::from_vec(feed, (rows.len(), 1), device)?;
        logits = decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(1)?;
        timing.decode_tokens += rows.len();
    }
    timing.decode_secs += decode_started.elapsed().as_secs_f64();
    Ok(())
}

/// The next token of every row: an argmax where the logits are when every row is plain greedy,
/// else each row's own sampling on the CPU.
fn pick(logits: &Tensor, rows: &mut [Row], requests: &[Request]) -> anyhow::Result<Vec<u32>> {
    if rows.iter().all(|r| requests[r.request].sampling.is_plain_greedy()) {
        return Ok(logits.to_dtype(DType::F32)?.argmax(D::Minus1)?.to_vec1::<u32>()?);
    }
    let all = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
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
