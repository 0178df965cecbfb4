//! The OpenAI wire format, typed once for both ends: the client (`backend::openai`) writes its
//! requests and reads the answers with these types, the server (`serve`) reads the requests and
//! writes the answers with them, so a field's name and shape cannot drift between the two.
//!
//! Servers of other makes (llama.cpp, vLLM) leave fields out or send them as null: every field of
//! an answer is optional or defaulted, and unknown fields are ignored. The numbers of a request
//! are kept as sent ([`Value`]): the server refuses a wrong one in its own words, naming the
//! field and the value (`` `max_tokens`: "50" is out of range; … ``), which a typed number would
//! turn into a parser's message without the field.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A request to `/v1/completions` (`prompt`) or `/v1/chat/completions` (`messages`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Prompt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    /// Chat: whether the template opens the assistant's turn (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
    /// Chat: continue the last (assistant) message instead of closing it (vLLM's extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_final_message: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<Value>,
    /// vLLM's and llama.cpp's extension; -1 or 0 turns it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<Value>,
    /// vLLM's name; selfspec serve reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<Value>,
    /// llama.cpp's name (its server's default is 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<Value>,
    /// Completions: how many alternatives per step (a number); chat: whether to report them
    /// (true or false, the number in `top_logprobs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
    /// vLLM's extension: log-probabilities name tokens `token_id:N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_tokens_as_token_ids: Option<bool>,
}

/// A completions prompt: a text, token ids, or (OpenAI's batch form) a list of texts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of token ids")]
pub enum Prompt {
    Text(String),
    Ids(Vec<u64>),
    Texts(Vec<String>),
}

/// One chat message; `content` a text or a list of text parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.to_string(), content: Some(Content::Text(content.to_string())) }
    }

    /// The message's text: its parts' texts joined.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "expected text, or a list of parts with text")]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    #[serde(default)]
    pub text: Option<String>,
}

/// Where to stop: one string or several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of strings")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// An answer, whole or (streamed) one chunk of it. A streamed error comes as `error` alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Answer {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub object: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub created: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Choice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// What the server put there (servers differ); [`crate::backend`] reads its message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One choice of an answer: completions fill `text`, chat `message`, a streamed chat chunk
/// `delta`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Choice {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    pub logprobs: Option<Logprobs>,
    pub finish_reason: Option<String>,
}

impl Choice {
    /// The text this choice adds: completions' `text`, or a chat delta's or message's content.
    pub fn added_text(&self) -> String {
        if let Some(t) = &self.text {
            return t.clone();
        }
        if let Some(d) = &self.delta {
            return d.content.clone().unwrap_or_default();
        }
        self.message.as_ref().map(Message::text).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// Log-probabilities as each endpoint reports them: chat a list per step (`content`),
/// completions parallel lists with a map from token text to log-probability per step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Logprobs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<TokenLogprob>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<Option<f64>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<Option<StepTop>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_offset: Option<Vec<usize>>,
}

impl Logprobs {
    /// The first step's alternatives, as (token text, log-probability), in either endpoint's
    /// form; a value a server sent as null (−∞ written by a JSON encoder) is left out.
    pub fn first_top(&self) -> Vec<(String, f64)> {
        if let Some(content) = &self.content {
            return content
                .first()
                .map(|c| c.top_logprobs.iter().filter_map(|t| Some((t.token.clone(), t.logprob?))).collect())
                .unwrap_or_default();
        }
        self.top_logprobs
            .as_ref()
            .and_then(|steps| steps.first().cloned().flatten())
            .map(|m| m.into_iter().filter_map(|(t, l)| Some((t, l?))).collect())
            .unwrap_or_default()
    }
}

/// One step's alternatives in completions' form: token text to log-probability (null where a
/// server wrote −∞).
pub type StepTop = BTreeMap<String, Option<f64>>;

/// One step of chat log-probabilities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: Option<f64>,
    pub bytes: Option<Vec<u32>>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: Option<f64>,
    pub bytes: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    /// The prompt tokens the server ran, and those it took from its prefix cache.
    pub fn prompt_split(&self) -> (usize, usize) {
        let prompt = self.prompt_tokens as usize;
        let cached = self.prompt_tokens_details.as_ref().map_or(0, |d| d.cached_tokens as usize).min(prompt);
        (prompt - cached, cached)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

/// `/v1/models`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// An error answer as OpenAI shapes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: u16,
}

/// Reads a JSON object as a `T` whose fields are all optional ([`Request`]); a field of the
/// wrong shape is named in the error
/// (`` `stop`: expected a string or an array of strings ``), which serde's own message does not.
pub fn from_object<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    let Value::Object(fields) = value else { return Err("the body must be a JSON object".into()) };
    // Read in place: a body (a long prompt of ids) is not copied on the way.
    T::deserialize(value).map_err(|whole| {
        // Each field alone, to find the one at fault (every field of a `T` read this way is
        // optional, so a lone field reads unless it is itself wrong).
        for (name, v) in fields {
            let alone = Value::Object(std::iter::once((name.clone(), v.clone())).collect());
            if let Err(e) = T::deserialize(&alone) {
                return format!("`{name}`: {e}");
            }
        }
        whole.to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_field_of_the_wrong_shape_is_named() {
        let e = from_object::<Request>(&json!({"model": "m", "prompt": "x", "stop": 5})).unwrap_err();
        assert_eq!(e, "`stop`: expected a string or an array of strings");
        let e = from_object::<Request>(&json!({"model": "m", "messages": [{"content": "hi"}]})).unwrap_err();
        assert!(e.starts_with("`messages`: missing field `role`"), "{e}");
        let e = from_object::<Request>(&json!({"stream": "yes"})).unwrap_err();
        assert!(e.starts_with("`stream`: invalid type: string \"yes\", expected a boolean"), "{e}");
        assert_eq!(from_object::<Request>(&json!([1])).unwrap_err(), "the body must be a JSON object");
        // Numbers are kept as sent, for the server to judge.
        let r: Request = from_object(&json!({"max_tokens": "50", "prompt": [1, 2]})).unwrap();
        assert_eq!(r.max_tokens, Some(json!("50")));
        assert_eq!(r.prompt, Some(Prompt::Ids(vec![1, 2])));
    }

    #[test]
    fn answers_of_other_servers_read_with_their_gaps() {
        // llama.cpp's completions log-probabilities, a null where a value was -inf.
        let a: Answer = serde_json::from_value(json!({
            "choices": [{"text": " a", "finish_reason": null,
                         "logprobs": {"tokens": [" a"], "token_logprobs": [null],
                                      "top_logprobs": [{" a": -0.1, " b": null}]}}],
            "usage": {"prompt_tokens": 7, "prompt_tokens_details": null}}))
        .unwrap();
        let lp = a.choices[0].logprobs.as_ref().unwrap();
        assert_eq!(lp.first_top(), vec![(" a".to_string(), -0.1)]);
        assert_eq!(a.usage.unwrap().prompt_split(), (7, 0));
        // Chat's form, and a streamed chat delta.
        let c: Answer = serde_json::from_value(json!({
            "choices": [{"delta": {"content": "x"}, "logprobs": {"content": [
                {"token": "x", "logprob": -0.5, "top_logprobs": [{"token": "x", "logprob": -0.5}, {"token": "y", "logprob": -1.0}]}]}}]}))
        .unwrap();
        assert_eq!(c.choices[0].added_text(), "x");
        assert_eq!(c.choices[0].logprobs.as_ref().unwrap().first_top().len(), 2);
        // What the server writes reads back as itself.
        let written = Answer {
            id: "cmpl-1".into(),
            object: "text_completion".into(),
            choices: vec![Choice { text: Some("t".into()), finish_reason: Some("stop".into()), ..Choice::default() }],
            ..Answer::default()
        };
        let text = serde_json::to_string(&written).unwrap();
        assert!(text.contains("\"logprobs\":null") && text.contains("\"finish_reason\":\"stop\""), "{text}");
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), written);
    }
}
