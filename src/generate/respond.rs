//! What every request of a run is made of: its prompts (task lists from seed demos, responses
//! with their retrieved documents), each prompt's random stream, and the inputs a run reads.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::job::{Job, ADAPTER};
use super::samples::Mode;
use super::settings::{PromptFormat, Settings};
use crate::backend::{self, Engine, Prompt};
use crate::corpus::{Hit, Searcher};
use crate::decode::Request;
use crate::prompts::{self, Templates};
use crate::rng::Rng;
use crate::seeds::SeedFile;

pub(super) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Prompt `p`'s own random stream: the same for every session of the run.
pub(super) fn prompt_rng(seed: u64, p: usize) -> Rng {
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
pub(super) fn serde_name(value: &impl Serialize, tag: Option<&str>) -> String {
    let v = serde_json::to_value(value).unwrap_or_default();
    let v = match tag {
        Some(t) => &v[t],
        None => &v,
    };
    v.as_str().unwrap_or("unknown").to_string()
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

/// `prompt` in `format`: the text as it is (plain), or the prompt as a user message in the chat
/// template with the assistant's turn opened and begun with `primer` (which `prompt` ends with,
/// for task lists; empty for responses).
pub(super) fn prompt_of(format: PromptFormat, prompt: &str, primer: &str) -> Prompt {
    match format {
        PromptFormat::Chat => {
            let question = prompt.strip_suffix(primer).unwrap_or(prompt).trim_end();
            Prompt::Chat {
                messages: vec![crate::model::text::chat::Message::new("user", question)],
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

pub(super) fn cut(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}
