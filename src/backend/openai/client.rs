//! The client's transport: connecting (the served names checked), posting with retries and
//! backoff, the requests in flight pulled from a JobFeed by worker threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::backend::job::{Job, JobFeed, ListJobs};
use crate::backend::remote::Remote;
use crate::backend::throttle::{StopFlag, Throttle};
use crate::backend::wire::{cut, ids_body, message, token_id, IDS_ADVICE};
use crate::decode::{Completion, Event, Timing};
use crate::openai::{self as api, Answer};

/// Token texts servers give the end of a sequence in their log-probabilities (llama.cpp gives
/// special tokens an empty text).
pub(super) const END_TEXTS: &[&str] =
    &["", "</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// The most a response body may hold (a step's log-probabilities included).
const BODY_LIMIT: u64 = 64 << 20;

pub struct Client {
    pub remote: Remote,
    agent: ureq::Agent,
    key: Option<String>,
    /// The served model's tokenizer and end ids, when stepping in token ids.
    pub(super) text_side: Option<Box<TextSide>>,
}

pub(super) struct TextSide {
    pub(super) tokenizer: crate::model::Tokenizer,
    pub(super) eos: Vec<u32>,
}

/// What one try of a request came to.
pub(super) enum Try {
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
pub(super) enum Msg {
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
    pub(super) fn served(&self, adapter: Option<&str>) -> anyhow::Result<&str> {
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
        let body = api::Request {
            max_tokens: Some(1.into()),
            temperature: Some(0.into()),
            logprobs: Some(1.into()),
            ..ids_body(&self.remote.served_model, prompt)
        };
        let refused = |why: String| {
            let why = cut(why.lines().next().unwrap_or_default(), 200);
            anyhow::anyhow!(
                "--tokenizer: the server at {} did not answer a step in token ids ({why}); {IDS_ADVICE}",
                self.remote.endpoint
            )
        };
        let body = serde_json::to_string(&body)?;
        let answer: Answer = match self.post("completions", &body) {
            Ok(resp) => {
                let text = read_body(resp).map_err(|e| refused(format!("reading the answer: {e}")))?;
                serde_json::from_str(&text).map_err(|_| refused(format!("not JSON: {}", cut(&text, 200))))?
            }
            Err(Try::Again(why)) => return Err(refused(why)),
            Err(Try::Fail(e)) => return Err(refused(format!("{e:#}"))),
        };
        let named = answer
            .choices
            .first()
            .and_then(|c| c.logprobs.as_ref()?.tokens.as_ref()?.first().cloned())
            .unwrap_or_default();
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
        let list: api::ModelList = serde_json::from_str(&body)
            .with_context(|| format!("{url}: not the JSON of an OpenAI-compatible model list: {}", cut(&body, 200)))?;
        let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
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

    pub(super) fn post(&self, path: &str, body: &str) -> Result<ureq::http::Response<ureq::Body>, Try> {
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
    pub(super) fn with_retries<T>(
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

    pub(super) fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &api::Request,
        cancel: &AtomicBool,
    ) -> anyhow::Result<T> {
        let text = serde_json::to_string(body)?;
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
}

fn read_body(resp: ureq::http::Response<ureq::Body>) -> Result<String, ureq::Error> {
    resp.into_body().with_config().limit(BODY_LIMIT).read_to_string()
}
