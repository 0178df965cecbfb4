//! Where decoding runs: in this process (the local engine, [`crate::decode`]) or on an
//! OpenAI-compatible server ([`openai`]: vLLM, llama.cpp, TGI, `selfspec serve`). Generation and
//! evaluation build text-level [`Job`]s; the local engine tokenizes them, a server is sent text.

pub mod job;
pub mod openai;
pub mod remote;
mod throttle;
mod wire;

use std::sync::atomic::AtomicBool;

use crate::decode::{Completion, Event, Request, Timing};
use crate::model::Model;

pub use job::{Job, JobFeed, ListJobs, Prompt};
pub use remote::{normalise_endpoint, Remote};

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

/// What a command decodes with: a model loaded here, or a server.
pub enum Backend {
    Local(crate::model::Choice),
    Remote(Remote),
}

impl Backend {
    /// The model loaded with `adapters`, or the server connected (and checked). A server serves
    /// its own adapters: `adapters` must be empty there, and `instead` says what to pass.
    pub fn load(&self, adapters: &[crate::model::adapters::adapter::Spec], instead: &str) -> anyhow::Result<Loaded> {
        match self {
            Backend::Local(choice) => {
                let mut model = choice.load()?;
                crate::model::adapters::adapter::load_all(&mut model, adapters)?;
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
