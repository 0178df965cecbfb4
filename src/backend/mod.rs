//! Where decoding runs: in this process (the local engine, [`crate::decode`]) or on an
//! OpenAI-compatible server ([`openai`]: vLLM, llama.cpp, TGI, `selfspec serve`). Generation and
//! evaluation build text-level [`Job`]s; the local engine tokenizes them, a server is sent text.

pub mod openai;

use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};

use crate::decode::{Completion, Event, Request, Timing};
use crate::model::chat::Message;
use crate::model::Model;

/// A prompt as text, before any tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text the model continues (a server's completions endpoint).
    Text(String),
    /// A conversation in the model's chat template with the assistant's turn opened and begun
    /// with `primer` (empty: nothing), as `add_generation_prompt` renders it.
    Chat { messages: Vec<Message>, primer: String },
}

impl Prompt {
    /// The ids the local engine decodes: plain text with the tokenizer's special tokens, or the
    /// rendered template with the primer appended, tokenized as it is.
    pub fn encode(&self, tokenizer: &crate::model::Tokenizer) -> anyhow::Result<Vec<u32>> {
        match self {
            Prompt::Text(text) => tokenizer.encode(text),
            Prompt::Chat { messages, primer } => {
                let mut text = tokenizer.apply_chat_template(messages, true)?;
                text.push_str(primer);
                tokenizer.encode_plain(&text)
            }
        }
    }
}

/// One request as text: its prompts (several for the eq. 2 mixture), and everything else as
/// [`Request`] says (its `prompts` are filled by the local engine).
#[derive(Debug, Clone)]
pub struct Job {
    pub prompts: Vec<Prompt>,
    pub request: Request,
}

impl Job {
    pub fn new(prompts: Vec<Prompt>, request: Request) -> Job {
        Job { prompts, request }
    }

    /// The place it takes in `room`: its cache rows (a contrastive pair is two), or one request
    /// slot of a server.
    pub fn width(&self, room: crate::decode::Room) -> usize {
        match () {
            _ if room.per_request => 1,
            _ if self.request.contrast.is_some() => 2,
            _ => self.prompts.len(),
        }
    }
}

/// The engine a run decodes with.
#[derive(Clone, Copy)]
pub enum Engine<'a> {
    Local(&'a Model),
    Remote(&'a openai::Client),
}

impl Engine<'_> {
    /// Decodes `jobs` (as [`crate::decode::generate`] does, events included): locally, in
    /// batches of at most `opts.max_batch` rows; on a server, `concurrency` requests at a time.
    pub fn generate(
        &self,
        jobs: &[Job],
        opts: &crate::decode::Options,
        on_event: &mut (dyn FnMut(Event) + Send),
        cancel: &AtomicBool,
    ) -> anyhow::Result<(Vec<Completion>, Timing)> {
        match self {
            Engine::Local(model) => {
                let mut requests = Vec::with_capacity(jobs.len());
                for job in jobs {
                    let prompts =
                        job.prompts.iter().map(|p| p.encode(&model.tokenizer)).collect::<anyhow::Result<Vec<_>>>()?;
                    requests.push(Request { prompts, ..job.request.clone() });
                }
                crate::decode::generate(model, &requests, opts, on_event, cancel)
            }
            Engine::Remote(client) => client.generate(jobs, on_event, cancel),
        }
    }

    /// Decodes what `feed` hands out as rows (locally) or request slots (on a server) come free,
    /// until it hands out nothing while nothing decodes: continuous batching
    /// ([`crate::decode::continuous`]) here, `concurrency` requests in flight on a server.
    pub fn run(
        &self,
        feed: &mut (dyn JobFeed + Send),
        opts: &crate::decode::Options,
        cancel: &AtomicBool,
    ) -> anyhow::Result<Timing> {
        match self {
            Engine::Local(model) => {
                let mut encoding = Encoding { model, feed, error: None };
                let timing = crate::decode::continuous(model, opts, &mut encoding, cancel)?;
                encoding.error.map_or(Ok(timing), Err)
            }
            Engine::Remote(client) => client.run(feed, cancel),
        }
    }
}

/// Where [`Engine::run`] gets its jobs and sends what they make: [`crate::decode::Feed`] at the
/// level of text.
pub trait JobFeed {
    fn take(&mut self, room: crate::decode::Room) -> Vec<(usize, Job)>;
    fn event(&mut self, e: Event);
    /// The time spent so far.
    fn timing(&mut self, _timing: &Timing) {}
}

/// A [`JobFeed`] as the local engine takes it: prompts tokenized. A prompt that cannot be
/// tokenized ends the feeding (the rows decoding finish) and the run fails with it.
struct Encoding<'a, 'b> {
    model: &'a Model,
    feed: &'b mut (dyn JobFeed + Send),
    error: Option<anyhow::Error>,
}

impl crate::decode::Feed for Encoding<'_, '_> {
    fn take(&mut self, room: crate::decode::Room) -> Vec<(usize, Request)> {
        if self.error.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, job) in self.feed.take(room) {
            let prompts =
                job.prompts.iter().map(|p| p.encode(&self.model.tokenizer)).collect::<anyhow::Result<Vec<_>>>();
            match prompts {
                Ok(prompts) => out.push((i, Request { prompts, ..job.request })),
                Err(e) => {
                    self.error = Some(e.context(format!("request {}", i + 1)));
                    break;
                }
            }
        }
        out
    }

    fn event(&mut self, e: Event) {
        self.feed.event(e)
    }

    fn timing(&mut self, timing: &Timing) {
        self.feed.timing(timing)
    }
}

/// A fixed list of jobs as a [`JobFeed`], handed out in order; completions kept by index.
pub struct ListJobs<'a, 'b> {
    jobs: &'a [Job],
    next: usize,
    done: Vec<Option<Completion>>,
    on_event: &'b mut (dyn FnMut(Event) + Send),
}

impl<'a, 'b> ListJobs<'a, 'b> {
    pub fn new(jobs: &'a [Job], on_event: &'b mut (dyn FnMut(Event) + Send)) -> Self {
        ListJobs { jobs, next: 0, done: vec![None; jobs.len()], on_event }
    }

    /// Every job's completion (cancelled where it never ran).
    pub fn done(self) -> Vec<Completion> {
        self.done.into_iter().map(|c| c.unwrap_or_else(Completion::cancelled)).collect()
    }
}

impl JobFeed for ListJobs<'_, '_> {
    fn take(&mut self, room: crate::decode::Room) -> Vec<(usize, Job)> {
        let mut out = Vec::new();
        let mut rows = 0;
        while let Some(job) = self.jobs.get(self.next) {
            let width = job.width(room);
            if !(out.is_empty() && room.idle) && rows + width > room.rows {
                break;
            }
            rows += width;
            out.push((self.next, job.clone()));
            self.next += 1;
        }
        out
    }

    fn event(&mut self, e: Event) {
        if let Event::Finished { request, completion } = &e {
            self.done[*request] = Some((*completion).clone());
        }
        (self.on_event)(e)
    }
}

/// What a command decodes with: a model loaded here, or a server.
pub enum Backend {
    Local(crate::model::Choice),
    Remote(Remote),
}

impl Backend {
    /// The model loaded with `adapters`, or the server connected (and checked). A server serves
    /// its own adapters: `adapters` must be empty there, and `instead` says what to pass.
    pub fn load(&self, adapters: &[crate::model::adapter::Spec], instead: &str) -> anyhow::Result<Loaded> {
        match self {
            Backend::Local(choice) => {
                let mut model = choice.load()?;
                crate::model::adapter::load_all(&mut model, adapters)?;
                Ok(Loaded::Local(Box::new(model)))
            }
            Backend::Remote(remote) => {
                anyhow::ensure!(
                    adapters.is_empty(),
                    "--adapter loads a folder into this process; through a server, {instead}"
                );
                Ok(Loaded::Remote(Box::new(openai::Client::connect(remote.clone())?)))
            }
        }
    }
}

/// A backend made ready: the model in memory, or the server's client.
pub enum Loaded {
    Local(Box<Model>),
    Remote(Box<openai::Client>),
}

impl Loaded {
    pub fn engine(&self) -> Engine<'_> {
        match self {
            Loaded::Local(model) => Engine::Local(model),
            Loaded::Remote(client) => Engine::Remote(client),
        }
    }

    /// The server as the run records it (none: local).
    pub fn remote(&self) -> Option<&Remote> {
        match self {
            Loaded::Local(_) => None,
            Loaded::Remote(client) => Some(&client.remote),
        }
    }
}

/// An OpenAI-compatible server as a run records it (never the API key itself: the name of the
/// variable that holds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The API's base URL, `…/v1` (a bare `http://host:port` gets `/v1`).
    pub endpoint: String,
    /// The base model's name on the server.
    pub served_model: String,
    /// (name in selfspec, name on the server) of each adapter the run uses: the tuned model of a
    /// second round, or the adapters an evaluation compares (vLLM serves LoRA adapters by name).
    #[serde(default)]
    pub adapters: Vec<(String, String)>,
    /// The environment variable holding the API key, sent as a bearer token.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Alternatives asked for at each step of a mixture (eq. 2) or contrastive (eq. 3) decoding
    /// through the server: the mixture is exact over the union of every prompt's top N, and
    /// treats every other token as probability 0.
    #[serde(default = "default_top_logprobs")]
    pub top_logprobs: usize,
    /// Seconds one HTTP request may take before it is retried.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Tries after the first on a dropped connection, a timeout, 429 or 5xx, with backoff.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// The served model's tokenizer (a model folder, org/name or .gguf file): eq. 2 and eq. 3
    /// then step in token ids (prompts as ids, log-probabilities by id through vLLM's
    /// `return_tokens_as_token_ids`), so a chosen token is never tokenized again as text.
    #[serde(default)]
    pub tokenizer: Option<String>,
}

fn default_concurrency() -> usize {
    8
}
fn default_top_logprobs() -> usize {
    20
}
fn default_timeout() -> f64 {
    600.0
}
fn default_retries() -> usize {
    6
}

impl Remote {
    pub fn new(endpoint: &str, served_model: &str) -> Remote {
        Remote {
            endpoint: normalise_endpoint(endpoint),
            served_model: served_model.to_string(),
            adapters: Vec::new(),
            api_key_env: None,
            concurrency: default_concurrency(),
            top_logprobs: default_top_logprobs(),
            timeout_secs: default_timeout(),
            retries: default_retries(),
            tokenizer: None,
        }
    }

    /// The settings that decide what a run produces (what a resumed run must keep): the served
    /// names and N. The endpoint, key, concurrency, timeout and retries may change.
    pub fn identity(&self) -> Remote {
        Remote {
            endpoint: String::new(),
            api_key_env: None,
            concurrency: 0,
            timeout_secs: 0.0,
            retries: 0,
            ..self.clone()
        }
    }

    /// Checks the settings alone (before any connection).
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://"),
            "--endpoint {}: not an http:// or https:// URL",
            self.endpoint
        );
        anyhow::ensure!(!self.served_model.trim().is_empty(), "--served-model names no model");
        use crate::bounds::out_of_range;
        anyhow::ensure!(
            (1..=1024).contains(&self.concurrency),
            "{}",
            out_of_range("--concurrency", self.concurrency, "1 to 1024 requests at once")
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.top_logprobs),
            "{}",
            out_of_range("--top-logprobs", self.top_logprobs, "1 to 1000000")
        );
        anyhow::ensure!(
            self.timeout_secs > 0.0 && self.timeout_secs <= 86_400.0,
            "{}",
            out_of_range("--timeout", self.timeout_secs, "a number of seconds above 0 and at most 86400")
        );
        anyhow::ensure!(self.retries <= 100, "{}", out_of_range("--retries", self.retries, "0 to 100"));
        Ok(())
    }
}

/// `http://host:port` (or with a trailing slash) gets `/v1`; a URL with a path is kept as given.
pub fn normalise_endpoint(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.contains('/') {
        url.to_string()
    } else {
        format!("{url}/v1")
    }
}

#[cfg(test)]
mod tests {
    use super::normalise_endpoint;

    #[test]
    fn endpoints_get_v1_only_without_a_path() {
        assert_eq!(normalise_endpoint("http://127.0.0.1:8000"), "http://127.0.0.1:8000/v1");
        assert_eq!(normalise_endpoint("http://127.0.0.1:8000/"), "http://127.0.0.1:8000/v1");
        assert_eq!(normalise_endpoint("https://h/v1/"), "https://h/v1");
        assert_eq!(normalise_endpoint("https://h/openai/v1"), "https://h/openai/v1");
    }
}
