//! A request answered: whole, or streamed as server-sent events, in the wire types of
//! [`crate::openai`].

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::asked::{parse, Asked};
use super::http;
use super::shared::{now, peer_closed, Leaving, Reply, Shared, Work};
use crate::decode::{Completion, Finish};
use crate::model::Model;
use crate::openai::{self as wire, Answer, Choice, Delta, Logprobs, TokenLogprob, TopLogprob, Usage};

fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop(_) => "stop",
        Finish::Length | Finish::Loop => "length",
        Finish::Cancelled => "abort",
    }
}

/// `/v1/completions` (`chat` false) or `/v1/chat/completions`.
pub(super) fn complete(
    shared: &Shared,
    req: &http::Request,
    stream: &mut TcpStream,
    chat: bool,
) -> std::io::Result<()> {
    let body: serde_json::Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return http::error(stream, 400, &format!("the body is not JSON: {e}")),
    };
    let asked = match parse(shared, &body, chat) {
        Ok(a) => a,
        Err((status, message)) => return http::error(stream, status, &message),
    };
    let (tx, rx) = mpsc::channel();
    let gone = Arc::new(AtomicBool::new(false));
    // However this handler ends (the client closing the stream included), decoding stops.
    let _leaving = Leaving(gone.clone());
    if shared.work.send(Work { request: asked.request.clone(), reply: tx, gone: gone.clone() }).is_err() {
        return http::error(stream, 503, "the decoder has stopped");
    }
    // The next reply; `None` when the client has closed its connection meanwhile (looked at
    // every quarter second).
    let every = Duration::from_millis(250);
    let mut looked = std::time::Instant::now();
    let mut next = |stream: &TcpStream| loop {
        if looked.elapsed() >= every {
            looked = std::time::Instant::now();
            if peer_closed(stream) {
                gone.store(true, Ordering::Relaxed);
                return None;
            }
        }
        match rx.recv_timeout(every) {
            Ok(reply) => return Some(Ok(reply)),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Some(Err(())),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let head = Answer {
        id: if chat { format!("chatcmpl-{n}") } else { format!("cmpl-{n}") },
        object: if chat { "chat.completion" } else { "text_completion" }.into(),
        created: now(),
        model: asked.model.clone(),
        ..Answer::default()
    };
    if asked.stream {
        let chunk = Answer { object: if chat { "chat.completion.chunk" } else { "text_completion" }.into(), ..head };
        return stream_answer(stream, &chunk, chat, &mut next);
    }
    let completion = loop {
        match next(stream) {
            Some(Ok(Reply::Token(_))) => continue,
            Some(Ok(Reply::Done(c))) => break c,
            Some(Ok(Reply::Failed(message))) => return http::error(stream, 500, &message),
            Some(Err(())) => return http::error(stream, 500, "the decoder stopped"),
            None => return Ok(()),
        }
    };
    let answer = whole_answer(shared, &asked, head, &completion, chat);
    http::json(stream, 200, &answer)
}

/// The answer of a request not streamed: its text, log-probabilities and token counts.
fn whole_answer(shared: &Shared, asked: &Asked, head: Answer, completion: &Completion, chat: bool) -> Answer {
    let usage = Usage {
        prompt_tokens: asked.ids.len() as u64,
        completion_tokens: completion.ids.len() as u64,
        total_tokens: (asked.ids.len() + completion.ids.len()) as u64,
        prompt_tokens_details: Some(wire::PromptTokensDetails { cached_tokens: completion.cached_tokens as u64 }),
    };
    let logprobs = asked.logprobs.map(|_| logprobs(&shared.model, completion, chat, asked.as_ids));
    let text = completion.text.clone();
    let choice = Choice {
        text: (!chat).then(|| text.clone()),
        message: chat.then(|| wire::Message::new("assistant", &text)),
        logprobs,
        finish_reason: Some(finish_reason(&completion.finish).into()),
        ..Choice::default()
    };
    Answer { choices: vec![choice], usage: Some(usage), ..head }
}

/// A streamed answer: a chunk per piece of text, one with the finish reason, then `[DONE]`; a
/// failure as an error event.
fn stream_answer(
    stream: &mut TcpStream,
    chunk: &Answer,
    chat: bool,
    next: &mut impl FnMut(&TcpStream) -> Option<Result<Reply, ()>>,
) -> std::io::Result<()> {
    let send = |stream: &mut TcpStream, choice: Choice| {
        let answer = Answer { choices: vec![choice], ..chunk.clone() };
        http::event(stream, &serde_json::to_string(&answer).unwrap_or_default())
    };
    // Chat deltas; completions pieces of text.
    let piece = |text: String, finish: Option<String>| match chat {
        true => Choice {
            delta: Some(Delta { role: None, content: Some(text).filter(|t| !t.is_empty()) }),
            finish_reason: finish,
            ..Choice::default()
        },
        false => Choice { text: Some(text), finish_reason: finish, ..Choice::default() },
    };
    http::start_events(stream)?;
    if chat {
        let role = Delta { role: Some("assistant".into()), content: None };
        send(stream, Choice { delta: Some(role), ..Choice::default() })?;
    }
    while let Some(Ok(reply)) = next(stream) {
        match reply {
            Reply::Token(text) => send(stream, piece(text, None))?,
            Reply::Done(c) => {
                send(stream, piece(String::new(), Some(finish_reason(&c.finish).into())))?;
                return http::event(stream, "[DONE]");
            }
            Reply::Failed(message) => {
                let e =
                    wire::ErrorAnswer { error: wire::ErrorDetail { message, kind: "server_error".into(), code: 500 } };
                return http::event(stream, &serde_json::to_string(&e).unwrap_or_default());
            }
        }
    }
    Ok(())
}

/// Log-probabilities as each endpoint reports them: completions a map from token text to
/// log-probability per step (a text two tokens share keeps the higher), chat a list per step.
fn logprobs(model: &Model, c: &Completion, chat: bool, as_ids: bool) -> Logprobs {
    let text = |id: u32| match as_ids {
        true => format!("token_id:{id}"),
        false => model.tokenizer.decode(&[id]).unwrap_or_default(),
    };
    if chat {
        let content = c
            .logprobs
            .iter()
            .map(|t| TokenLogprob {
                token: text(t.id),
                logprob: Some(f64::from(t.logprob)),
                bytes: None,
                top_logprobs: t
                    .top
                    .iter()
                    .map(|&(id, lp)| TopLogprob { token: text(id), logprob: Some(f64::from(lp)), bytes: None })
                    .collect(),
            })
            .collect();
        return Logprobs { content: Some(content), ..Logprobs::default() };
    }
    let (mut tokens, mut token_logprobs, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0;
    for t in &c.logprobs {
        let s = text(t.id);
        offsets.push(offset);
        offset += s.len();
        tokens.push(s);
        token_logprobs.push(Some(f64::from(t.logprob)));
        let mut top = std::collections::BTreeMap::new();
        for &(id, l) in &t.top {
            top.entry(text(id)).or_insert(Some(f64::from(l)));
        }
        tops.push(Some(top));
    }
    Logprobs {
        tokens: Some(tokens),
        token_logprobs: Some(token_logprobs),
        top_logprobs: Some(tops),
        text_offset: Some(offsets),
        ..Logprobs::default()
    }
}
