//! A client of an OpenAI-compatible server: `/v1/models` checked at connect, plain requests
//! streamed from `/v1/completions` or `/v1/chat/completions`, and the paper's two step-wise
//! decodings done here over the server's top log-probabilities: the eq. 2 mixture (each step
//! asks the k prompts for one token) and the eq. 3 contrast (the tuned and the base model's
//! names). Many requests are in flight at once; a dropped connection, a timeout, 429 or 5xx is
//! retried with backoff; anything else fails with the server's own message.
//!
//! Truncation: a server reports only its top N log-probabilities per step. The mixture here is
//! Σ_j w_j·p_j(t) over the union of the prompts' top-N tokens, each p_j(t) outside prompt j's
//! top N taken as 0; the contrast bounds log p_base(t) of a token outside the base's top N by
//! the smallest log-probability reported. Tokens are keyed by their text, so the chosen token
//! is appended as text and the server tokenizes the grown prompt again. llama.cpp's server
//! reports no log-probabilities when its own greedy token ends the text; such a step counts as
//! the end with certainty for that prompt. Tied scores are ranked by token text (the local
//! engine ranks them by id), so a sampled step may draw another of the tied tokens.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::job::{Job, JobFeed, ListJobs};
use super::remote::Remote;
use super::throttle::{StopFlag, Throttle, CUT};
use super::wire::{cut, message, prompt_body, token_id, IDS_ADVICE};
use crate::decode::mixing::{contrast_of_tops, mixture_of_tops};
use crate::decode::{sampling, Completion, Event, Finish, Rng, Sampling, Timing};

/// Token texts servers give the end of a sequence in their log-probabilities (llama.cpp gives
/// special tokens an empty text).
const END_TEXTS: &[&str] = &["", "</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// The most a response body may hold (a step's log-probabilities included).
const BODY_LIMIT: u64 = 64 << 20;

pub struct Client {
    pub remote: Remote,
    agent: ureq::Agent,
    key: Option<String>,
    /// The served model's tokenizer and end ids, when stepping in token ids.
    text_side: Option<Box<TextSide>>,
}

struct TextSide {
    tokenizer: crate::model::Tokenizer,
    eos: Vec<u32>,
}

/// What one try of a request came to.
enum Try {
    /// Worth trying again (a dropped connection, a timeout, 429, 5xx): what happened.
    Again(String),
    Fail(anyhow::Error),
}

impl From<anyhow::Error> for Try {
    fn from(e: anyhow::Error) -> Try {
        Try::Fail(e)
    }
}

/// What a worker tells the caller's thread.
enum Msg {
    Token {
        request: usize,
        text: String,
    },
    Finished {
        request: usize,
        completion: Completion,
        timing: Timing,
    },
    Failed(anyhow::Error),
    /// Something the user should be told once (the concurrency lowered).
    Note(String),
}

impl Client {
    /// Checks `remote`, reads its key, and asks the server which models it serves: an
    /// unreachable endpoint, a refused key and a name the server does not serve are errors here,
    /// before any work.
    pub fn connect(remote: Remote) -> anyhow::Result<Client> {
        remote.check()?;
        let key = match &remote.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "--api-key-env {var}: the environment variable {var} is not set (it must hold the API key)"
                )
            })?),
            None => None,
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs_f64(remote.timeout_secs)))
            .max_idle_connections_per_host(remote.concurrency.clamp(1, 1024) * 2)
            .build();
        let text_side = match &remote.tokenizer {
            Some(model) => {
                let (tokenizer, eos) = crate::model::load_text_side(model)
                    .with_context(|| format!("--tokenizer {model}: the served model's tokenizer"))?;
                anyhow::ensure!(
                    !eos.is_empty(),
                    "--tokenizer {model}: no end-of-sequence id (generation_config.json, config.json or the GGUF \
                     metadata name none), so a response could not end"
                );
                Some(Box::new(TextSide { tokenizer, eos }))
            }
            None => None,
        };
        let client = Client { agent: config.into(), key, remote, text_side };
        client.check_models()?;
        if client.text_side.is_some() {
            client.check_token_ids()?;
        }
        Ok(client)
    }

    /// The server name of the model a request runs on: the base, or its adapter's served name.
    fn served(&self, adapter: Option<&str>) -> anyhow::Result<&str> {
        match adapter {
            None => Ok(&self.remote.served_model),
            Some(name) => {
                self.remote.adapters.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_str()).with_context(|| {
                    format!("no served model is named for the adapter {name}: pass --served-adapter {name}=SERVED_NAME")
                })
            }
        }
    }

    /// One step in token ids, tried once before any work: a server that does not take a prompt
    /// of ids or name tokens by id (llama.cpp's) is said here, not after a run's retries.
    fn check_token_ids(&self) -> anyhow::Result<()> {
        let side = self.text_side.as_ref().expect("checked with a tokenizer");
        let prompt = side.tokenizer.encode("Hello")?;
        let body = json!({"model": self.remote.served_model, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                          "logprobs": 1, "return_tokens_as_token_ids": true});
        let refused = |why: String| {
            let why = cut(why.lines().next().unwrap_or_default(), 200);
            anyhow::anyhow!(
                "--tokenizer: the server at {} did not answer a step in token ids ({why}); {IDS_ADVICE}",
                self.remote.endpoint
            )
        };
        let v: Value = match self.post("completions", &body.to_string()) {
            Ok(resp) => {
                let text = read_body(resp).map_err(|e| refused(format!("reading the answer: {e}")))?;
                serde_json::from_str(&text).map_err(|_| refused(format!("not JSON: {}", cut(&text, 200))))?
            }
            Err(Try::Again(why)) => return Err(refused(why)),
            Err(Try::Fail(e)) => return Err(refused(format!("{e:#}"))),
        };
        let named = v["choices"][0]["logprobs"]["tokens"][0].as_str().unwrap_or_default().to_string();
        token_id(&named).map_err(|_| refused(format!("it named a token {named:?}, not token_id:N")))?;
        Ok(())
    }

    fn check_models(&self) -> anyhow::Result<()> {
        let endpoint = &self.remote.endpoint;
        let url = format!("{endpoint}/models");
        let mut req = self.agent.get(&url);
        if let Some(key) = &self.key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let resp = req.call().map_err(|e| {
            anyhow::anyhow!("cannot reach the server at {endpoint}: {e}; is it running, and is --endpoint right?")
        })?;
        let status = resp.status().as_u16();
        let body = read_body(resp).unwrap_or_default();
        match status {
            200..=299 => {}
            401 | 403 => anyhow::bail!(
                "the server at {endpoint} refused the API key (HTTP {status}): {}; put the key in an environment \
                 variable and name it with --api-key-env",
                message(&body)
            ),
            404 => {
                eprintln!("warning: {url} answers 404: the served model names cannot be checked before the run");
                return Ok(());
            }
            _ => anyhow::bail!("{url}: HTTP {status}: {}", message(&body)),
        }
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("{url}: not the JSON of an OpenAI-compatible model list: {}", cut(&body, 200)))?;
        let ids: Vec<&str> =
            v["data"].as_array().map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect()).unwrap_or_default();
        let wanted = std::iter::once(self.remote.served_model.as_str())
            .chain(self.remote.adapters.iter().map(|(_, s)| s.as_str()));
        for name in wanted {
            anyhow::ensure!(
                ids.contains(&name),
                "the server at {endpoint} does not serve a model named {name:?}; it serves: {}. Name one of these \
                 (llama.cpp's server names its model by the file's path unless started with --model_alias)",
                if ids.is_empty() { "nothing".to_string() } else { ids.join(", ") }
            );
        }
        Ok(())
    }

    fn post(&self, path: &str, body: &str) -> Result<ureq::http::Response<ureq::Body>, Try> {
        let url = format!("{}/{path}", self.remote.endpoint);
        let mut req = self.agent.post(&url).header("Content-Type", "application/json");
        if let Some(key) = &self.key {
            req = req.header("Authorization", format!("Bearer {key}"));
        }
        let resp = req.send(body).map_err(|e| Try::Again(e.to_string()))?;
        let status = resp.status().as_u16();
        if status < 300 {
            return Ok(resp);
        }
        let text = read_body(resp).unwrap_or_default();
        let msg = message(&text);
        if status == 429 || status >= 500 {
            return Err(Try::Again(format!("HTTP {status}: {msg}")));
        }
        Err(Try::Fail(anyhow::anyhow!("{url}: the server refused the request (HTTP {status}): {msg}")))
    }

    /// Runs `attempt` until it succeeds, fails for good, or `retries` more tries (waiting 0.5,
    /// 1, 2, 4, 8, 8 … s between them) have failed too.
    fn with_retries<T>(
        &self,
        path: &str,
        cancel: &AtomicBool,
        mut attempt: impl FnMut() -> Result<T, Try>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let mut last = String::new();
        for n in 0..=self.remote.retries {
            if n > 0 {
                let wait = Duration::from_secs_f64((0.5 * 2f64.powi(n as i32 - 1)).min(8.0));
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    anyhow::ensure!(!cancel.load(Ordering::Relaxed), "stopped");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Try::Fail(e)) => return Err(e),
                Err(Try::Again(what)) => last = what,
            }
        }
        anyhow::bail!(
            "{}/{path}: no answer after {} tries over {:.0} s (last: {last}); what the run finished is kept: when the \
             server is back, run the same command again to continue",
            self.remote.endpoint,
            self.remote.retries + 1,
            started.elapsed().as_secs_f64()
        )
    }

    fn post_json(&self, path: &str, body: &Value, cancel: &AtomicBool) -> anyhow::Result<Value> {
        let text = body.to_string();
        self.with_retries(path, cancel, || {
            let resp = self.post(path, &text)?;
            let body = read_body(resp).map_err(|e| Try::Again(format!("reading the answer: {e}")))?;
            serde_json::from_str(&body).map_err(|e| {
                Try::Fail(anyhow::anyhow!("{path}: the server's answer is not JSON ({e}): {}", cut(&body, 300)))
            })
        })
    }

    /// Decodes `jobs`, `concurrency` at a time, reporting through `on_event` on this thread.
    pub fn generate(
        &self,
        jobs: &[Job],
        on_event: &mut (dyn FnMut(Event) + Send),
        cancel: &AtomicBool,
    ) -> anyhow::Result<(Vec<Completion>, Timing)> {
        let mut feed = ListJobs::new(jobs, on_event);
        let timing = self.run(&mut feed, cancel)?;
        Ok((feed.done(), timing))
    }

    fn check_job(&self, job: &Job) -> anyhow::Result<()> {
        anyhow::ensure!(!job.prompts.is_empty(), "no prompt");
        if let Some(c) = &job.request.contrast {
            anyhow::ensure!(job.prompts.len() == 1, "contrastive decoding takes one prompt");
            self.served(Some(&c.adapter))?;
        }
        self.served(job.request.adapter.as_deref())?;
        anyhow::ensure!(
            job.request.sampling.repetition_penalty.is_none_or(|p| p == 1.0),
            "a repetition penalty cannot be sent to a server"
        );
        Ok(())
    }

    /// Decodes what `feed` hands out, at most `concurrency` requests in flight (fewer once the
    /// server has cut answers, see [`Throttle`]); `feed` hears every event on this thread.
    pub fn run(&self, feed: &mut (dyn JobFeed + Send), cancel: &AtomicBool) -> anyhow::Result<Timing> {
        let started = Instant::now();
        let mut timing = Timing::default();
        let abort = AtomicBool::new(false);
        let stop = || cancel.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
        let workers = self.remote.concurrency.max(1);
        let throttle = Throttle::new(workers);
        let feed = std::sync::Mutex::new(feed);
        let mut failure = None;
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<Msg>();
            for _ in 0..workers {
                let tx = tx.clone();
                let (stop, throttle, feed) = (&stop, &throttle, &feed);
                scope.spawn(move || loop {
                    if stop() {
                        break;
                    }
                    // Jobs are taken only while a slot under the limit is free.
                    if !throttle.acquire(stop) {
                        break;
                    }
                    // Read under the feed's lock: a finished job's events reach the feed, and
                    // only then is it counted out, under the same lock.
                    let (idle, taken) = {
                        let mut feed = feed.lock().unwrap_or_else(|e| e.into_inner());
                        let idle = throttle.in_flight.load(Ordering::SeqCst) == 0;
                        let taken = feed.take(crate::decode::Room { rows: 1, idle, per_request: true });
                        throttle.in_flight.fetch_add(taken.len(), Ordering::SeqCst);
                        (idle, taken)
                    };
                    if taken.is_empty() {
                        throttle.release();
                        // Nothing now, and nothing in flight: nothing will come.
                        if idle {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    let mut msgs = Vec::with_capacity(taken.len());
                    for (i, job) in taken {
                        let mut timing = Timing::default();
                        let result = self
                            .check_job(&job)
                            .and_then(|()| self.run_job(i, &job, &tx, &stop, throttle, &mut timing))
                            .map_err(|e| e.context(format!("request {}", i + 1)));
                        msgs.push(match result {
                            Ok(completion) => Msg::Finished { request: i, completion, timing },
                            Err(_) if stop() => {
                                Msg::Finished { request: i, completion: Completion::cancelled(), timing }
                            }
                            Err(e) => Msg::Failed(e),
                        });
                    }
                    throttle.release();
                    if msgs.into_iter().any(|msg| tx.send(msg).is_err()) {
                        break;
                    }
                });
            }
            drop(tx);
            for msg in rx {
                let mut feed = feed.lock().unwrap_or_else(|e| e.into_inner());
                match msg {
                    Msg::Token { request, text } => feed.event(Event::Token { request, id: 0, text: &text }),
                    Msg::Note(text) => feed.event(Event::Note { text: &text }),
                    Msg::Finished { request, completion, timing: t } => {
                        timing.prefill_tokens += t.prefill_tokens;
                        timing.cached_tokens += t.cached_tokens;
                        timing.decode_tokens += t.decode_tokens;
                        // Wall time waiting on the server (requests overlap, and a cut one
                        // waits for a slot: their own times would add up to more than it).
                        timing.decode_secs = started.elapsed().as_secs_f64();
                        feed.event(Event::Finished { request, completion: &completion });
                        feed.timing(&timing);
                        // Counted out only now: what the event added to the feed is there for
                        // the workers to take.
                        throttle.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                    Msg::Failed(e) => {
                        abort.store(true, Ordering::Relaxed);
                        throttle.in_flight.fetch_sub(1, Ordering::SeqCst);
                        failure.get_or_insert(e);
                    }
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(timing)
    }

    fn run_job(
        &self,
        i: usize,
        job: &Job,
        tx: &mpsc::Sender<Msg>,
        stop: &(dyn Fn() -> bool + Sync),
        throttle: &Throttle,
        timing: &mut Timing,
    ) -> anyhow::Result<Completion> {
        let started = Instant::now();
        let cancel = StopFlag(stop);
        let result = if job.request.contrast.is_some() || job.prompts.len() > 1 {
            self.stepwise(i, job, tx, &cancel, timing)
        } else {
            self.plain(i, job, tx, &cancel, throttle, timing)
        };
        timing.decode_secs += started.elapsed().as_secs_f64();
        result
    }

    /// One prompt, streamed: the server samples (with the request's seed).
    fn plain(
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
        body["max_tokens"] = json!(r.max_new_tokens);
        body["stream"] = json!(true);
        body["seed"] = json!(r.sampling.seed);
        match r.sampling.sampling {
            Sampling::Greedy => body["temperature"] = json!(0.0),
            Sampling::Sample { temperature, top_k, top_p } => {
                body["temperature"] = json!(temperature);
                if let Some(p) = top_p {
                    body["top_p"] = json!(p);
                }
                if let Some(k) = top_k {
                    body["top_k"] = json!(k);
                }
            }
        }
        if !r.stop.is_empty() {
            body["stop"] = json!(r.stop);
        }
        if r.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        // llama.cpp's Python server penalises repeats (1.1) and cuts to min-p 0.05 unless told
        // otherwise, which changes even greedy text; vLLM reads min_p and ignores the other.
        body["repeat_penalty"] = json!(1.0);
        body["min_p"] = json!(0.0);
        let text_body = body.to_string();
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
                let v: Value = serde_json::from_str(data).map_err(|e| {
                    Try::Fail(anyhow::anyhow!("{path}: a streamed chunk is not JSON ({e}): {}", cut(data, 300)))
                })?;
                if v.get("error").is_some() {
                    return Err(Try::Again(format!("the server failed mid-answer: {}", message(data))));
                }
                let choice = &v["choices"][0];
                let delta = choice["text"].as_str().or_else(|| choice["delta"]["content"].as_str()).unwrap_or("");
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
                if let Some(reason) = choice["finish_reason"].as_str() {
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

    /// The top log-probabilities of the next token for the request `body` to `path`.
    fn top(
        &self,
        path: &str,
        mut body: Value,
        cancel: &StopFlag,
        timing: &mut Timing,
    ) -> anyhow::Result<Vec<(String, f64)>> {
        let n = self.remote.top_logprobs;
        let model = body["model"].as_str().unwrap_or_default().to_string();
        body["max_tokens"] = json!(1);
        body["temperature"] = json!(0.0);
        if path == "chat/completions" {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(n);
        } else {
            body["logprobs"] = json!(n);
        }
        let flag = AtomicBool::new(cancel.get());
        let v = self.post_json(path, &body, &flag)?;
        // A server with a prefix cache says how much of the prompt it did not run again.
        let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as usize;
        timing.prefill_tokens += prompt.saturating_sub(cached);
        timing.cached_tokens += cached.min(prompt);
        let lp = &v["choices"][0]["logprobs"];
        let mut out: Vec<(String, f64)> = if let Some(content) = lp["content"].as_array() {
            content
                .first()
                .and_then(|c| c["top_logprobs"].as_array())
                .map(|a| {
                    a.iter().filter_map(|t| Some((t["token"].as_str()?.to_string(), t["logprob"].as_f64()?))).collect()
                })
                .unwrap_or_default()
        } else {
            lp["top_logprobs"]
                .get(0)
                .and_then(Value::as_object)
                .map(|m| m.iter().filter_map(|(t, l)| Some((t.clone(), l.as_f64()?))).collect())
                .unwrap_or_default()
        };
        // llama.cpp's server reports nothing when its own greedy choice ends the text: that step's
        // distribution is taken as the end, with certainty.
        if out.is_empty() && v["choices"][0]["finish_reason"].as_str() == Some("stop") {
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
    /// ([`Remote::tokenizer`]) the prompts go as token ids and the chosen id is appended; without
    /// one, the chosen token's text is appended and the server tokenizes the grown prompt again.
    fn stepwise(
        &self,
        i: usize,
        job: &Job,
        tx: &mpsc::Sender<Msg>,
        cancel: &StopFlag,
        timing: &mut Timing,
    ) -> anyhow::Result<Completion> {
        let r = &job.request;
        let weights = crate::decode::normalised(&r.weights, job.prompts.len()).map_err(anyhow::Error::msg)?;
        let encoded: Vec<Vec<u32>> = match &self.text_side {
            Some(side) => job.prompts.iter().map(|p| p.encode(&side.tokenizer)).collect::<anyhow::Result<_>>()?,
            None => Vec::new(),
        };
        let mut rng = Rng::new(r.sampling.seed);
        let mut text = String::new();
        let mut ids: Vec<u32> = Vec::new();
        let mut stream = crate::decode::TextStream::new();
        let mut vocab: HashMap<String, u32> = HashMap::new();
        // The next token's top after prompt `j` and what is generated so far, on `model`.
        let ask = |model: &str, j: usize, text: &str, ids: &[u32], timing: &mut Timing| {
            let (path, body) = match self.text_side {
                Some(_) => {
                    let prompt = [encoded[j].as_slice(), ids].concat();
                    ("completions", json!({"model": model, "prompt": prompt, "return_tokens_as_token_ids": true}))
                }
                None => prompt_body(model, &job.prompts[j], text),
            };
            self.top(path, body, cancel, timing)
        };
        let finish = loop {
            if cancel.get() {
                break Finish::Cancelled;
            }
            let mut candidates: Vec<(String, f32)> = match &r.contrast {
                Some(c) => {
                    let tuned = ask(self.served(Some(&c.adapter))?, 0, &text, &ids, timing)?;
                    let base = ask(self.served(r.adapter.as_deref())?, 0, &text, &ids, timing)?;
                    contrast_of_tops(&tuned, &base, c.alpha)
                }
                None => {
                    let model = self.served(r.adapter.as_deref())?;
                    let mut tops = Vec::with_capacity(job.prompts.len());
                    for j in 0..job.prompts.len() {
                        tops.push(ask(model, j, &text, &ids, timing)?);
                    }
                    mixture_of_tops(&tops, &weights)
                }
            };
            // Best first, ties by text: the order decides the argmax and the draws.
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let mut scores: Vec<f32> = candidates.iter().map(|c| c.1).collect();
            let pick = sampling::choose(&mut scores, &r.sampling, &[], &mut rng) as usize;
            let token = &candidates[pick].0;
            let old = text.len();
            match &self.text_side {
                Some(side) => {
                    // llama.cpp's empty answer at the end aside, every token is named by its id.
                    let id = match token.as_str() {
                        "" => None,
                        t => Some(token_id(t)?),
                    };
                    if !r.ignore_eos && id.is_none_or(|id| side.eos.contains(&id)) {
                        break Finish::Eos;
                    }
                    let id = id.unwrap_or_default();
                    ids.push(id);
                    text.push_str(&stream.push(id, &side.tokenizer)?);
                }
                None => {
                    if !r.ignore_eos && END_TEXTS.contains(&token.as_str()) {
                        break Finish::Eos;
                    }
                    let next = vocab.len() as u32;
                    ids.push(*vocab.entry(token.clone()).or_insert(next));
                    text.push_str(token);
                }
            }
            timing.decode_tokens += 1;
            if let Some((at, stop)) = crate::decode::find_stop(&text, &r.stop, old) {
                text.truncate(at);
                if at > old {
                    let _ = tx.send(Msg::Token { request: i, text: text[old..].to_string() });
                }
                break Finish::Stop(stop);
            }
            if text.len() > old {
                let _ = tx.send(Msg::Token { request: i, text: text[old..].to_string() });
            }
            let new_line = text[old..].contains('\n');
            if r.stop_on_loop
                && (crate::decode::looping(&ids).is_some() || (new_line && crate::decode::looping_lines(&text)))
            {
                break Finish::Loop;
            }
            if new_line && r.stop_when.is_some_and(|bad| bad(&text)) {
                break Finish::Loop;
            }
            if ids.len() >= r.max_new_tokens {
                break Finish::Length;
            }
        };
        if let (Some(side), false) = (&self.text_side, matches!(finish, Finish::Stop(_))) {
            let rest = stream.finish(&side.tokenizer)?;
            if !rest.is_empty() {
                text.push_str(&rest);
                let _ = tx.send(Msg::Token { request: i, text: rest });
            }
        }
        let ids = if self.text_side.is_some() { ids } else { Vec::new() };
        Ok(Completion { ids, text, finish, prompt_top: Vec::new(), logprobs: Vec::new(), cached_tokens: 0 })
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

fn read_body(resp: ureq::http::Response<ureq::Body>) -> Result<String, ureq::Error> {
    resp.into_body().with_config().limit(BODY_LIMIT).read_to_string()
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
