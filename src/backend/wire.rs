//! What goes over the wire to an OpenAI-compatible server: a prompt's endpoint and body, the
//! tokens a server names by id, and the server's own words in an error.

use anyhow::Context;
use serde_json::Value;

use super::job::Prompt;
use crate::openai::{self as api, Message};

/// What to do when a server cannot step in token ids.
pub(super) const IDS_ADVICE: &str =
    "stepping in token ids (--tokenizer) needs a server that takes a prompt of token ids and \
                          return_tokens_as_token_ids (vLLM, selfspec serve); llama.cpp's server does not, so leave \
                          --tokenizer out for it";

/// The endpoint and body of `prompt` continued by `generated` on `model`: a text prompt goes to
/// completions; a conversation to chat completions, where a begun assistant turn (primer and
/// generated text) is continued with `continue_final_message` (vLLM's and `selfspec serve`'s
/// extension).
pub(super) fn prompt_body(model: &str, prompt: &Prompt, generated: &str) -> (&'static str, api::Request) {
    let mut body = api::Request { model: Some(model.to_string()), ..api::Request::default() };
    match prompt {
        Prompt::Text(text) => {
            body.prompt = Some(api::Prompt::Text(format!("{text}{generated}")));
            ("completions", body)
        }
        Prompt::Chat { messages, primer } => {
            let mut messages: Vec<Message> = messages.iter().map(|m| Message::new(&m.role, &m.content)).collect();
            let begun = format!("{primer}{generated}");
            if !begun.is_empty() {
                messages.push(Message::new("assistant", &begun));
                body.continue_final_message = Some(true);
                body.add_generation_prompt = Some(false);
            }
            body.messages = Some(messages);
            ("chat/completions", body)
        }
    }
}

/// A completions body whose prompt is token ids, asking the server to name tokens by id
/// (`return_tokens_as_token_ids`): how a client with the served model's tokenizer steps.
pub(super) fn ids_body(model: &str, ids: impl IntoIterator<Item = u32>) -> api::Request {
    api::Request {
        model: Some(model.to_string()),
        prompt: Some(api::Prompt::Ids(ids.into_iter().map(u64::from).collect())),
        return_tokens_as_token_ids: Some(true),
        ..api::Request::default()
    }
}

/// The id in a token named `token_id:N` (vLLM's `return_tokens_as_token_ids`).
pub(super) fn token_id(name: &str) -> anyhow::Result<u32> {
    name.strip_prefix("token_id:")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("the server named a token {name:?}, not token_id:N: {IDS_ADVICE}"))
}

/// The server's own words in an error body: OpenAI's `error.message`, FastAPI's `detail`, or the
/// text itself. Read as untyped JSON on purpose: this is where servers of every make differ.
pub(super) fn message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        for m in [&v["error"]["message"], &v["error"], &v["detail"], &v["message"]] {
            if let Some(s) = m.as_str() {
                return cut(s, 500).to_string();
            }
            if !m.is_null() && !m.is_object() {
                return cut(&m.to_string(), 500).to_string();
            }
        }
    }
    let body = body.trim();
    if body.is_empty() {
        "(no message)".into()
    } else {
        cut(body, 500).to_string()
    }
}

pub(super) fn cut(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_found_where_servers_put_them() {
        assert_eq!(message(r#"{"error":{"message":"bad model"}}"#), "bad model");
        assert_eq!(message(r#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(message("plain words"), "plain words");
        assert_eq!(message(""), "(no message)");
    }

    #[test]
    fn tokens_named_by_id_parse_and_texts_are_refused_with_what_to_do() {
        assert_eq!(token_id("token_id:42").unwrap(), 42);
        let e = format!("{:#}", token_id(" the").unwrap_err());
        assert!(e.contains("\" the\"") && e.contains("return_tokens_as_token_ids") && e.contains("leave"), "{e}");
        assert!(token_id("token_id:x").is_err());
    }
}
