//! Plain requests: one prompt streamed from the server, which samples with the request's seed;
//! its pieces passed on as they come, stop rules and repetition loops watched here, and an
//! answer cut while others streamed asked again with fewer requests at once.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use super::client::{Client, Msg, Try};
use crate::backend::job::Job;
use crate::backend::throttle::{StopFlag, Throttle, CUT};
use crate::backend::wire::{cut, message, prompt_body};
use crate::decode::{Completion, Finish, Sampling, Timing};
use crate::openai::{self as api, Answer};

impl Client {
    /// One prompt, streamed: the server samples (with the request's seed).
    pub(super) fn plain(
        &self,
        i: usize,
        job: &Job,
        tx: &mpsc::Sender<Msg>,
        cancel: &StopFlag,
        throttle: &Throttle,
        timing: &mut Timing,
    ) -> anyhow::Result<Completion> {
        let r = &job.request;
        let model = self.served(r.adapter.as_deref())?;
        let (path, mut body) = prompt_body(model, &job.prompts[0], "");
        body.max_tokens = Some(r.max_new_tokens.into());
        body.stream = Some(true);
        body.seed = Some(r.sampling.seed.into());
        match r.sampling.sampling {
            Sampling::Greedy => body.temperature = Some(0.0.into()),
            Sampling::Sample { temperature, top_k, top_p } => {
                body.temperature = Some(temperature.into());
                body.top_p = top_p.map(Into::into);
                body.top_k = top_k.map(Into::into);
            }
        }
        if !r.stop.is_empty() {
            body.stop = Some(api::Stop::Many(r.stop.clone()));
        }
        if r.ignore_eos {
            body.ignore_eos = Some(true);
        }
        // llama.cpp's Python server penalises repeats (1.1) and cuts to min-p 0.05 unless told
        // otherwise, which changes even greedy text; vLLM reads min_p and ignores the other.
        body.repeat_penalty = Some(1.0.into());
        body.min_p = Some(0.0.into());
        let text_body = serde_json::to_string(&body)?;
        let flag = AtomicBool::new(false);
        let mut sent = 0;
        let (text, finish, chunks) = self.with_retries(path, &flag, || loop {
            let cut = self.stream(path, &text_body, i, (r.stop_on_loop, r.stop_when), tx, cancel, &mut sent);
            match cut {
                // Cut while other answers streamed: the server stops one answer when another
                // request comes (llama-cpp-python's interrupt_requests). Fewer at once, and the
                // same request again, without counting a try.
                Err(Try::Again(why)) if why == CUT && throttle.cut(&mut |note| drop(tx.send(Msg::Note(note)))) => {
                    throttle.release();
                    if !throttle.acquire(&|| cancel.get()) {
                        return Ok((String::new(), Finish::Cancelled, 0));
                    }
                }
                other => return other,
            }
        })?;
        timing.decode_tokens += chunks;
        Ok(Completion { ids: Vec::new(), text, finish, prompt_top: Vec::new(), logprobs: Vec::new(), cached_tokens: 0 })
    }

    /// One streamed try of a plain request: its text, how it ended, and the chunks read.
    // One try of one request: what it sends, its stop rules, where pieces go, the cancel flag,
    // and the pieces sent so far, which outlives the try (a retry goes on after them).
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        path: &str,
        text_body: &str,
        i: usize,
        (stop_on_loop, stop_when): (bool, Option<crate::decode::StopWhen>),
        tx: &mpsc::Sender<Msg>,
        cancel: &StopFlag,
        sent: &mut usize,
    ) -> Result<(String, Finish, usize), Try> {
        {
            let resp = self.post(path, text_body)?;
            let mut text = String::new();
            let mut words = Words::default();
            let mut chunks = 0;
            let reader = std::io::BufReader::new(resp.into_body().into_reader());
            for line in reader.lines() {
                let line = line.map_err(|e| Try::Again(format!("the connection broke mid-answer: {e}")))?;
                let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
                if data == "[DONE]" {
                    break;
                }
                let chunk: Answer = serde_json::from_str(data).map_err(|e| {
                    Try::Fail(anyhow::anyhow!(
                        "{path}: a streamed chunk is not one of an answer ({e}): {}",
                        cut(data, 300)
                    ))
                })?;
                if chunk.error.is_some() {
                    return Err(Try::Again(format!("the server failed mid-answer: {}", message(data))));
                }
                let choice = chunk.choices.into_iter().next().unwrap_or_default();
                let added = choice.added_text();
                let delta = added.as_str();
                if !delta.is_empty() {
                    chunks += 1;
                    text.push_str(delta);
                    words.push(delta);
                    // A try after a cut streams only what the cut one did not.
                    if let Some(new) = text.get(*sent..).filter(|t| !t.is_empty()) {
                        let _ = tx.send(Msg::Token { request: i, text: new.to_string() });
                        *sent = text.len();
                    }
                }
                if let Some(reason) = choice.finish_reason.as_deref() {
                    let finish = if reason == "length" { Finish::Length } else { Finish::Eos };
                    return Ok((text, finish, chunks));
                }
                // Lines can only start looping when one ends.
                let new_line = delta.contains('\n');
                if stop_on_loop && (words.looping() || (new_line && crate::decode::looping_lines(&text))) {
                    return Ok((text, Finish::Loop, chunks));
                }
                if new_line && stop_when.is_some_and(|bad| bad(&text)) {
                    return Ok((text, Finish::Loop, chunks));
                }
                if cancel.get() {
                    return Ok((text, Finish::Cancelled, chunks));
                }
            }
            Err(Try::Again(CUT.into()))
        }
    }
}

/// Words of a streamed text as ids, to see a repetition loop without the server's tokens.
#[derive(Default)]
struct Words {
    ids: Vec<u32>,
    vocab: HashMap<String, u32>,
    partial: String,
}

impl Words {
    fn push(&mut self, delta: &str) {
        self.partial.push_str(delta);
        while let Some(at) = self.partial.find(char::is_whitespace) {
            let word: String = self.partial.drain(..=at).collect();
            let word = word.trim();
            if !word.is_empty() {
                let next = self.vocab.len() as u32;
                self.ids.push(*self.vocab.entry(word.to_string()).or_insert(next));
            }
        }
    }

    fn looping(&self) -> bool {
        crate::decode::looping(&self.ids).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_see_a_loop() {
        let mut w = Words::default();
        for _ in 0..30 {
            w.push("the answer is ");
        }
        assert!(w.looping());
    }
}
