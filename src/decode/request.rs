//! What a caller asks of the decoder and what it gets back: requests, completions, the events
//! streamed while they decode, the time spent, and the decoder's options.

use serde::Serialize;

use std::sync::Arc;

use super::prefix::PrefixCache;
use super::sampling::SamplingParams;

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
    pub(super) fn rows(&self) -> Vec<&Vec<u32>> {
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
    pub(super) fn row_adapters(&self) -> Vec<Option<&str>> {
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
