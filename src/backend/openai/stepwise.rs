//! The paper's two step-wise decodings through a server: each step asks for the next token's
//! top log-probabilities (the k document prompts for the eq. 2 mixture, the tuned and the base
//! model's names for the eq. 3 contrast), combines them here (`decode::mixing`) and chooses the
//! token; the grown prompt goes back as text, or as token ids with a tokenizer.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use super::client::{Client, Msg, TextSide, END_TEXTS};
use crate::backend::job::Job;
use crate::backend::throttle::StopFlag;
use crate::backend::wire::{ids_body, prompt_body, token_id};
use crate::decode::mixing::{contrast_of_tops, mixture_of_tops};
use crate::decode::{sampling, Completion, Finish, Request, Rng, Timing};
use crate::openai::{self as api, Answer};

impl Client {
    /// The top log-probabilities of the next token for the request `body` to `path`.
    fn top(
        &self,
        path: &str,
        mut body: api::Request,
        cancel: &StopFlag,
        timing: &mut Timing,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        let n = self.remote.top_logprobs;
        let model = body.model.clone().unwrap_or_default();
        body.max_tokens = Some(1.into());
        body.temperature = Some(0.0.into());
        if path == "chat/completions" {
            body.logprobs = Some(true.into());
            body.top_logprobs = Some(n.into());
        } else {
            body.logprobs = Some(n.into());
        }
        let flag = AtomicBool::new(cancel.get());
        let answer: Answer = self.post_json(path, &body, &flag)?;
        // A server with a prefix cache says how much of the prompt it did not run again.
        let (ran, cached) = answer.usage.as_ref().map(api::Usage::prompt_split).unwrap_or_default();
        timing.prefill_tokens += ran;
        timing.cached_tokens += cached;
        let choice = answer.choices.into_iter().next().unwrap_or_default();
        let mut out = choice.logprobs.as_ref().map(api::Logprobs::first_top).unwrap_or_default();
        // llama.cpp's server reports nothing when its own greedy choice ends the text: that step's
        // distribution is taken as the end, with certainty.
        if out.is_empty() && choice.finish_reason.as_deref() == Some("stop") {
            return Ok(vec![(String::new(), 0.0)]);
        }
        anyhow::ensure!(
            !out.is_empty(),
            "{path}: the server sent no log-probabilities for {model}; mixing documents (eq. 2) and contrastive \
             decoding (eq. 3) through a server need them (llama-cpp-python: start it with --logits_all true)"
        );
        out.retain(|(_, l)| l.is_finite());
        Ok(out)
    }

    /// The eq. 2 mixture or the eq. 3 contrast, a token a step, chosen here. With a tokenizer
    /// ([`crate::backend::Remote::tokenizer`]) the prompts go as token ids and the chosen id is
    /// appended; without one, the chosen token's text is appended and the server tokenizes the
    /// grown prompt again.
    pub(super) fn stepwise(
        &self,
        i: usize,
        job: &Job,
        tx: &mpsc::Sender<Msg>,
        cancel: &StopFlag,
        timing: &mut Timing,
    ) -> anyhow::Result<Completion> {
        let r = &job.request;
        let encoded: Vec<Vec<u32>> = match &self.text_side {
            Some(side) => job.prompts.iter().map(|p| p.encode(&side.tokenizer)).collect::<anyhow::Result<_>>()?,
            None => Vec::new(),
        };
        let stepping = Stepping {
            client: self,
            job,
            encoded,
            weights: crate::decode::normalised(&r.weights, job.prompts.len()).map_err(anyhow::Error::msg)?,
            cancel,
        };
        let mut rng = Rng::new(r.sampling.seed);
        let mut grown = Grown::default();
        let finish = loop {
            if cancel.get() {
                break Finish::Cancelled;
            }
            let mut candidates = stepping.candidates(&grown, timing)?;
            // Best first, ties by text: the order decides the argmax and the draws.
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let mut scores: Vec<f32> = candidates.iter().map(|c| c.1).collect();
            let pick = sampling::choose(&mut scores, &r.sampling, &[], &mut rng) as usize;
            let old = grown.text.len();
            if let Some(end) = grown.append(&candidates[pick].0, self.text_side.as_deref(), r)? {
                break end;
            }
            timing.decode_tokens += 1;
            let (end, said) = grown.ended(old, r);
            if let Some(text) = said {
                let _ = tx.send(Msg::Token { request: i, text });
            }
            if let Some(end) = end {
                break end;
            }
        };
        let mut text = grown.text;
        if let (Some(side), false) = (&self.text_side, matches!(finish, Finish::Stop(_))) {
            let rest = grown.stream.finish(&side.tokenizer)?;
            if !rest.is_empty() {
                text.push_str(&rest);
                let _ = tx.send(Msg::Token { request: i, text: rest });
            }
        }
        let ids = if self.text_side.is_some() { grown.ids } else { Vec::new() };
        Ok(Completion { ids, text, finish, prompt_top: Vec::new(), logprobs: Vec::new(), cached_tokens: 0 })
    }
}

/// One step-wise request under way: what each step asks the server.
struct Stepping<'a> {
    client: &'a Client,
    job: &'a Job,
    /// The prompts as token ids (with a tokenizer; empty otherwise).
    encoded: Vec<Vec<u32>>,
    /// The documents' weights (eq. 2), summing to 1.
    weights: Vec<f64>,
    cancel: &'a StopFlag<'a>,
}

impl Stepping<'_> {
    /// The next token's top after prompt `j` and what is generated so far, on `model`.
    fn ask(&self, model: &str, j: usize, grown: &Grown, timing: &mut Timing) -> anyhow::Result<Vec<(String, f64)>> {
        let (path, body) = match self.client.text_side {
            Some(_) => ("completions", ids_body(model, self.encoded[j].iter().chain(&grown.ids).copied())),
            None => prompt_body(model, &self.job.prompts[j], &grown.text),
        };
        self.client.top(path, body, self.cancel, timing)
    }

    /// The next token's candidates and their scores: the contrast of the tuned and the base
    /// model (eq. 3), or the weighted mixture over the document prompts (eq. 2).
    fn candidates(&self, grown: &Grown, timing: &mut Timing) -> anyhow::Result<Vec<(String, f32)>> {
        let r = &self.job.request;
        let client = self.client;
        Ok(match &r.contrast {
            Some(c) => {
                let tuned = self.ask(client.served(Some(&c.adapter))?, 0, grown, timing)?;
                let base = self.ask(client.served(r.adapter.as_deref())?, 0, grown, timing)?;
                contrast_of_tops(&tuned, &base, c.alpha)
            }
            None => {
                let model = client.served(r.adapter.as_deref())?;
                let mut tops = Vec::with_capacity(self.job.prompts.len());
                for j in 0..self.job.prompts.len() {
                    tops.push(self.ask(model, j, grown, timing)?);
                }
                mixture_of_tops(&tops, &self.weights)
            }
        })
    }
}

/// What a step-wise request has generated: its text, its ids (the server's with a tokenizer,
/// else one made-up id per distinct token text, for the loop check) and the detokenizer.
#[derive(Default)]
struct Grown {
    text: String,
    ids: Vec<u32>,
    stream: crate::decode::TextStream,
    vocab: HashMap<String, u32>,
}

impl Grown {
    /// Appends the chosen token; the end it marks instead, if it is an end token.
    fn append(&mut self, token: &str, side: Option<&TextSide>, r: &Request) -> anyhow::Result<Option<Finish>> {
        match side {
            Some(side) => {
                // llama.cpp's empty answer at the end aside, every token is named by its id.
                let id = match token {
                    "" => None,
                    t => Some(token_id(t)?),
                };
                if !r.ignore_eos && id.is_none_or(|id| side.eos.contains(&id)) {
                    return Ok(Some(Finish::Eos));
                }
                let id = id.unwrap_or_default();
                self.ids.push(id);
                self.text.push_str(&self.stream.push(id, &side.tokenizer)?);
            }
            None => {
                if !r.ignore_eos && END_TEXTS.contains(&token) {
                    return Ok(Some(Finish::Eos));
                }
                let next = self.vocab.len() as u32;
                self.ids.push(*self.vocab.entry(token.to_string()).or_insert(next));
                self.text.push_str(token);
            }
        }
        Ok(None)
    }

    /// After a token that grew the text from `old` bytes: how the request ends, if it does (a
    /// stop string, a loop, the length), and the new text to pass on.
    fn ended(&mut self, old: usize, r: &Request) -> (Option<Finish>, Option<String>) {
        // A stop string may begin before `old`: then nothing new is said.
        let new = |text: &str| text.get(old..).filter(|t| !t.is_empty()).map(str::to_string);
        if let Some((at, stop)) = crate::decode::find_stop(&self.text, &r.stop, old) {
            self.text.truncate(at);
            return (Some(Finish::Stop(stop)), new(&self.text));
        }
        let said = new(&self.text);
        let new_line = self.text[old..].contains('\n');
        let looping = r.stop_on_loop
            && (crate::decode::looping(&self.ids).is_some() || (new_line && crate::decode::looping_lines(&self.text)));
        let end = if looping || (new_line && r.stop_when.is_some_and(|bad| bad(&self.text))) {
            Some(Finish::Loop)
        } else if self.ids.len() >= r.max_new_tokens {
            Some(Finish::Length)
        } else {
            None
        };
        (end, said)
    }
}
