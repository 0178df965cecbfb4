//! What generation and evaluation hand a backend: requests as text ([`Job`], its [`Prompt`]s),
//! and the feed ([`JobFeed`]) a backend takes them from as rows or request slots come free.

use crate::decode::{Completion, Event, Request, Timing};
use crate::model::text::chat::Message;

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

/// Where [`super::Engine::run`] gets its jobs and sends what they make: [`crate::decode::Feed`] at the
/// level of text.
pub trait JobFeed {
    fn take(&mut self, room: crate::decode::Room) -> Vec<(usize, Job)>;
    fn event(&mut self, e: Event);
    /// The time spent so far.
    fn timing(&mut self, _timing: &Timing) {}
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
