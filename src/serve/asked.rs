//! A request's body read into the engine's [`Request`]: the typed wire form
//! ([`crate::openai::Request`]) checked field by field, every refusal naming its field.

use serde_json::Value;

use super::shared::Shared;
use crate::bounds::{self, out_of_range};
use crate::decode::{Request, Sampling, SamplingParams};
use crate::model::text::chat::Message;
use crate::model::text::tokenizer::Tokenizer;
use crate::openai::{self as wire, Prompt};

/// A refusal: the HTTP status and the message.
pub(super) type Refused = (u16, String);

fn bad(message: String) -> Refused {
    (400, message)
}

/// A request's fields, read and checked.
pub(super) struct Asked {
    pub model: String,
    pub ids: Vec<u32>,
    pub request: Request,
    pub stream: bool,
    pub logprobs: Option<usize>,
    /// vLLM's `return_tokens_as_token_ids`: log-probabilities name tokens `token_id:N`, so a
    /// client stepping in ids never reads a token's text back.
    pub as_ids: bool,
}

pub(super) fn parse(shared: &Shared, body: &Value, chat: bool) -> Result<Asked, Refused> {
    let r: wire::Request = wire::from_object(body).map_err(bad)?;
    let model = r.model.clone().ok_or_else(|| bad("`model` is required (see /v1/models)".into()))?;
    let adapter = served_adapter(shared, &model)?;
    refuse_unserved(&r)?;
    let tokenizer = &shared.model.tokenizer;
    let ids = if chat { chat_ids(tokenizer, &r)? } else { prompt_ids(tokenizer, &r)? };
    let vocab = shared.model.decoder.spec.vocab_size;
    if ids.is_empty() {
        return Err(bad("the prompt has no tokens".into()));
    }
    if let Some(id) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(bad(format!("token id {id} is outside the vocabulary ({vocab})")));
    }
    let max_tokens = max_tokens(&r, chat)?;
    let context = shared.model.decoder.spec.max_position_embeddings;
    if context > 0 && ids.len().saturating_add(max_tokens) > context {
        return Err(bad(format!(
            "the prompt ({} tokens) and max_tokens ({max_tokens}) exceed the model's context of {context} tokens",
            ids.len()
        )));
    }
    let logprobs = logprobs(&r, chat, vocab)?;
    let stream = r.stream.unwrap_or(false);
    if stream && logprobs.is_some() {
        return Err(bad("log-probabilities are served without streaming only".into()));
    }
    let request = Request {
        stop: r.stop.clone().map(wire::Stop::into_vec).unwrap_or_default(),
        sampling: sampling(&r, vocab)?,
        ignore_eos: r.ignore_eos.unwrap_or(false),
        adapter,
        top_logprobs: logprobs,
        ..Request::new(ids.clone(), max_tokens)
    };
    let as_ids = r.return_tokens_as_token_ids.unwrap_or(false);
    Ok(Asked { model, ids, request, stream, logprobs, as_ids })
}

/// The adapter `model` names: None for the base; 404 for a name this server does not serve.
fn served_adapter(shared: &Shared, model: &str) -> Result<Option<String>, Refused> {
    if model == shared.base {
        return Ok(None);
    }
    if shared.adapters.iter().any(|a| a == model) {
        return Ok(Some(model.to_string()));
    }
    let mut known = vec![shared.base.clone()];
    known.extend(shared.adapters.iter().cloned());
    Err((404, format!("the model `{model}` does not exist; this server serves: {}", known.join(", "))))
}

/// What the request asks that this server does not do.
fn refuse_unserved(r: &wire::Request) -> Result<(), Refused> {
    if r.n.as_ref().and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is served".into()));
    }
    if r.echo == Some(true) {
        return Err(bad("echo is not served".into()));
    }
    for (field, value) in [("presence_penalty", &r.presence_penalty), ("frequency_penalty", &r.frequency_penalty)] {
        if value.as_ref().and_then(Value::as_f64).is_some_and(|v| v != 0.0) {
            return Err(bad(format!("{field} is not served (repetition_penalty is)")));
        }
    }
    Ok(())
}

/// A number, or none when absent or null.
fn number(field: &str, value: &Option<Value>) -> Result<Option<f64>, Refused> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(format!("`{field}` must be a number, not {v}"))),
    }
}

/// A whole number from `min` to `max` (a string, a fraction or a negative is refused).
fn whole(field: &str, value: &Option<Value>, min: u64, max: u64) -> Result<Option<u64>, Refused> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(bad(out_of_range(&format!("`{field}`"), v, &format!("a whole number from {min} to {max}")))),
        },
    }
}

/// A chat request's conversation, rendered by the model's template and tokenized.
fn chat_ids(tokenizer: &Tokenizer, r: &wire::Request) -> Result<Vec<u32>, Refused> {
    let messages: Vec<Message> = match &r.messages {
        Some(list) if !list.is_empty() => list.iter().map(|m| Message::new(&m.role, &m.text())).collect(),
        _ => return Err(bad("`messages` must be a non-empty list".into())),
    };
    let continue_final = r.continue_final_message.unwrap_or(false);
    if continue_final && r.add_generation_prompt == Some(true) {
        return Err(bad("continue_final_message and add_generation_prompt cannot both be true".into()));
    }
    if !tokenizer.has_chat_template() {
        return Err(bad("this model has no chat template: use /v1/completions".into()));
    }
    let text = if continue_final {
        let last = messages
            .last()
            .filter(|m| m.role == "assistant")
            .ok_or_else(|| bad("continue_final_message needs the last message to be the assistant's".into()))?;
        let rendered = tokenizer.apply_chat_template(&messages, false).map_err(|e| bad(format!("{e:#}")))?;
        // The template closes the final turn; the text is cut right after its content.
        let at = rendered
            .rfind(last.content.as_str())
            .ok_or_else(|| bad("the chat template changes the final message, so it cannot be continued".into()))?;
        rendered[..at + last.content.len()].to_string()
    } else {
        let open = r.add_generation_prompt.unwrap_or(true);
        tokenizer.apply_chat_template(&messages, open).map_err(|e| bad(format!("{e:#}")))?
    };
    tokenizer.encode_plain(&text).map_err(|e| bad(format!("{e:#}")))
}

/// A completions request's prompt: a text (alone or in a list of one) tokenized, or token ids.
fn prompt_ids(tokenizer: &Tokenizer, r: &wire::Request) -> Result<Vec<u32>, Refused> {
    let encode = |s: &str| tokenizer.encode(s).map_err(|e| bad(format!("{e:#}")));
    match &r.prompt {
        Some(Prompt::Text(s)) => encode(s),
        Some(Prompt::Texts(list)) if list.len() == 1 => encode(&list[0]),
        Some(Prompt::Ids(ids)) if !ids.is_empty() => ids
            .iter()
            .map(|&id| u32::try_from(id).map_err(|_| bad(format!("token id {id} is outside the vocabulary"))))
            .collect(),
        Some(_) => Err(bad("one prompt per request: a string, or an array of token ids".into())),
        None => Err(bad("`prompt` is required: a string or an array of token ids".into())),
    }
}

/// The most tokens to write: `max_completion_tokens`, else `max_tokens`, else the endpoint's
/// default (chat 1,024, completions 16, as OpenAI's).
fn max_tokens(r: &wire::Request, chat: bool) -> Result<usize, Refused> {
    let most = bounds::MAX_NEW_TOKENS as u64;
    let asked = match whole("max_completion_tokens", &r.max_completion_tokens, 1, most)? {
        Some(n) => Some(n),
        None => whole("max_tokens", &r.max_tokens, 1, most)?,
    };
    Ok(match asked {
        Some(n) => n as usize,
        None if chat => 1024,
        None => 16,
    })
}

/// Temperature, top-p, top-k, seed and repetition penalty, each in its range.
fn sampling(r: &wire::Request, vocab: usize) -> Result<SamplingParams, Refused> {
    let temperature = number("temperature", &r.temperature)?.unwrap_or(1.0);
    bounds::temperature(temperature).map_err(|why| bad(out_of_range("`temperature`", temperature, why)))?;
    let top_p = number("top_p", &r.top_p)?;
    if let Some(p) = top_p {
        bounds::top_p(p).map_err(|why| bad(out_of_range("`top_p`", p, why)))?;
    }
    // vLLM's convention: -1 (or 0) turns top-k off.
    let top_k = match &r.top_k {
        None | Some(Value::Null) => None,
        Some(v) if v.as_i64() == Some(-1) || v.as_i64() == Some(0) => None,
        Some(v) => match v.as_u64() {
            Some(k) if k <= vocab as u64 => Some(k as usize),
            _ => {
                let range = format!("a whole number from 1 to {vocab}, or -1 or 0 for none");
                return Err(bad(out_of_range("`top_k`", v, &range)));
            }
        },
    };
    let sampling = if temperature == 0.0 { Sampling::Greedy } else { Sampling::Sample { temperature, top_k, top_p } };
    let seed = whole("seed", &r.seed, 0, u64::MAX)?.unwrap_or(0);
    let repetition_penalty = match number("repetition_penalty", &r.repetition_penalty)? {
        Some(p) => {
            bounds::repetition_penalty(p).map_err(|why| bad(out_of_range("`repetition_penalty`", p, why)))?;
            Some(p as f32).filter(|p| *p != 1.0)
        }
        None => None,
    };
    Ok(SamplingParams { sampling, seed, repetition_penalty })
}

/// How many alternatives to report per step: completions give the number in `logprobs`, chat
/// says `logprobs: true` and the number in `top_logprobs`.
fn logprobs(r: &wire::Request, chat: bool, vocab: usize) -> Result<Option<usize>, Refused> {
    if !chat {
        return Ok(whole("logprobs", &r.logprobs, 0, vocab as u64)?.map(|n| n as usize));
    }
    let top = whole("top_logprobs", &r.top_logprobs, 0, vocab as u64)?;
    match &r.logprobs {
        Some(Value::Bool(true)) => Ok(Some(top.unwrap_or(0) as usize)),
        Some(Value::Bool(false)) | Some(Value::Null) | None => Ok(None),
        Some(v) => Err(bad(format!("`logprobs` must be true or false in a chat request, not {v}"))),
    }
}
