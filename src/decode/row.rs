//! One request being decoded (a Row: its cache rows, text, sampling state) and what each step
//! does to the rows: the next tokens chosen (plain, eq. 2 mixtures, eq. 3 pairs) and appended.

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

use super::ends::{find_stop, looping, looping_lines};
use super::mixing::{contrast_scores, log_softmax, mix};
use super::request::*;
use super::sampling;
use super::stream::TextStream;
use crate::model::Model;
use crate::rng::Rng;

/// One request being decoded: `width` cache rows (its prompts) that share one text.
pub(super) struct Row {
    /// The caller's number for the request (events name it).
    pub(super) request: usize,
    pub(super) req: Request,
    /// The mixture weights of its rows.
    pub(super) weights: Vec<f64>,
    pub(super) width: usize,
    /// The top logits at the last prompt position (empty unless asked for).
    pub(super) prompt_top: Vec<(u32, f32)>,
    pub(super) stream: TextStream,
    pub(super) text: String,
    /// The first prompt and the tokens generated so far (for the repetition penalty).
    pub(super) seen: Vec<u32>,
    pub(super) prompt_len: usize,
    pub(super) rng: Rng,
    pub(super) logprobs: Vec<TokenLogprob>,
    /// Tokens of the first prompt taken from the prefix cache.
    pub(super) cached: usize,
    /// Bytes of text already streamed before the row was set aside to free memory: its replay
    /// (the same seed, the same tokens) does not stream them again.
    pub(super) streamed: usize,
    /// When it was admitted (the newest rows are set aside first).
    pub(super) admitted: usize,
}

impl Row {
    pub(super) fn new(request: usize, req: Request, weights: Vec<f64>, streamed: usize, admitted: usize) -> Row {
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

pub(super) fn top_logits(row: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    idx.into_iter().take(n).map(|i| (i as u32, row[i])).collect()
}

/// Appends `id` to `row`: streams its text, and returns the completion when it ends the request.
pub(super) fn advance(
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

/// The next token of every request. Plain requests choose from their logits (an argmax where the
/// logits are when every request is plain greedy); mixtures from the log of the mixed
/// distribution, with the same sampling rules.
pub(super) fn pick(logits: &Tensor, rows: &mut [Row]) -> anyhow::Result<Vec<u32>> {
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
