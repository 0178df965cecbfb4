//! What a generation run reports: its counters, where its time went, its events (the log's and
//! the printer's), and the text events gathered for the log.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::samples::{Mode, Sample};

/// Running totals of a run (over all its sessions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Instruction prompts decoded (the next prompt's index).
    pub prompts: usize,
    /// Tasks read from the model's lists.
    pub parsed: usize,
    /// List items not read, by reason.
    pub unparsed: BTreeMap<String, usize>,
    /// Instructions dropped, by filter.
    pub filtered: BTreeMap<String, usize>,
    /// Responses dropped (empty, or cut by a stop).
    pub empty_responses: usize,
    /// Responses dropped: caught in a repetition loop.
    pub looping_responses: usize,
    /// Samples kept.
    pub kept: usize,
    pub instruction_tokens: usize,
    pub response_tokens: usize,
    /// Seconds spent generating, over all sessions.
    pub seconds: f64,
    /// Tasks that passed the filters and wait for a response.
    pub waiting: usize,
    /// Where the time went.
    pub time: TimeSpent,
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// N samples are kept.
    Done,
    /// The prompt budget was used up first.
    Budget { budget: usize },
    /// Stopped on request; running the same command again continues.
    Cancelled,
}

/// What a run reports while it goes (`selfspec generate --progress jsonl` prints these; the TUI
/// reads them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Started {
        n: usize,
        budget: usize,
        resumed: usize,
        counters: Counters,
        mode: Mode,
        weighting: String,
    },
    /// A batch of instruction prompts starts decoding.
    Prompts {
        first: usize,
        count: usize,
    },
    /// Text of instruction prompt `prompt`, as it is decoded.
    InstructionText {
        prompt: usize,
        text: String,
    },
    /// Responses for these ids start decoding.
    Responding {
        ids: Vec<String>,
    },
    ResponseText {
        id: String,
        text: String,
    },
    Filtered {
        id: String,
        instruction: String,
        rejection: String,
    },
    Kept {
        sample: Box<Sample>,
    },
    /// A batch is finished (also written to events.jsonl).
    Batch {
        counters: Counters,
    },
    Finished {
        outcome: Outcome,
        counters: Counters,
    },
    /// Something the user should know (a torn log line cut on continuing).
    Note {
        text: String,
    },
}

impl crate::runs::RunEvent for Progress {
    fn end(&self) -> Option<crate::runs::End> {
        match self {
            Progress::Finished { outcome: Outcome::Cancelled, .. } => Some(crate::runs::End::Stopped),
            Progress::Finished { .. } => Some(crate::runs::End::Finished),
            _ => None,
        }
    }

    fn durable(&self) -> bool {
        !matches!(self, Progress::InstructionText { .. } | Progress::ResponseText { .. })
    }
}

/// Text events gathered for the log: each stream's text (a batch decodes many at once) written
/// as one line per quarter second, not one per token (the caller's sink still sees every token).
#[derive(Default)]
pub(super) struct Coalesced {
    /// One pending text event per stream, in order of first arrival.
    pending: Vec<Progress>,
    since: Option<Instant>,
}

impl Coalesced {
    /// Adds a text event; returns the events to write now.
    pub(super) fn push(&mut self, p: &Progress) -> Vec<Progress> {
        let merged = self.pending.iter_mut().any(|q| match (q, p) {
            (Progress::InstructionText { prompt: a, text }, Progress::InstructionText { prompt: b, text: t })
                if a == b =>
            {
                text.push_str(t);
                true
            }
            (Progress::ResponseText { id: a, text }, Progress::ResponseText { id: b, text: t }) if a == b => {
                text.push_str(t);
                true
            }
            _ => false,
        });
        if !merged {
            self.pending.push(p.clone());
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed().as_millis() >= 250 {
            return self.flush();
        }
        Vec::new()
    }

    pub(super) fn flush(&mut self) -> Vec<Progress> {
        self.since = None;
        std::mem::take(&mut self.pending)
    }
}

/// Where a run's time went, over all its sessions (seconds; tokens are cache-row tokens).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeSpent {
    /// Running prompts through the model (and joining their rows to the batch).
    pub prefill_secs: f64,
    /// Of which joining new rows' keys and values to the batch's.
    pub join_secs: f64,
    /// Decoding steps through the model.
    pub decode_secs: f64,
    /// Mixing (eq. 2), sampling, stops and streaming.
    pub sampling_secs: f64,
    /// Parsing task lists, the filters, retrieval and storing samples.
    pub filter_secs: f64,
    pub prefill_tokens: usize,
    /// Prompt tokens taken from the prefix cache instead of run.
    pub cached_tokens: usize,
    pub padding_tokens: usize,
    /// Tokens decoded, each cache row counted (a mixture of k prompts counts k).
    pub decoded_row_tokens: usize,
    pub steps: usize,
    /// Free rows summed over the steps: `idle_row_steps / (steps · rows)` of the batch was
    /// unused.
    pub idle_row_steps: usize,
    /// The batch's rows.
    pub rows: usize,
    /// Requests set aside to keep the cache within its budget (decoded again later).
    pub set_aside: usize,
}

impl TimeSpent {
    pub(super) fn add(&self, t: &crate::decode::Timing, filter_secs: f64, rows: usize) -> TimeSpent {
        TimeSpent {
            prefill_secs: self.prefill_secs + t.prefill_secs,
            join_secs: self.join_secs + t.join_secs,
            decode_secs: self.decode_secs + t.decode_secs,
            sampling_secs: self.sampling_secs + t.pick_secs,
            filter_secs: self.filter_secs + filter_secs,
            prefill_tokens: self.prefill_tokens + t.prefill_tokens,
            cached_tokens: self.cached_tokens + t.cached_tokens,
            padding_tokens: self.padding_tokens + t.padding_tokens,
            decoded_row_tokens: self.decoded_row_tokens + t.decode_row_tokens,
            steps: self.steps + t.steps,
            idle_row_steps: self.idle_row_steps + t.idle_row_steps,
            rows,
            set_aside: self.set_aside + t.set_aside,
        }
    }

    /// The share of the batch's row slots left empty over the decoding steps.
    pub fn idle_share(&self) -> f64 {
        let slots = (self.steps * self.rows.max(1)) as f64;
        if slots > 0.0 {
            self.idle_row_steps as f64 / slots
        } else {
            0.0
        }
    }

    /// One line: where the time went and the true token rates.
    pub fn line(&self) -> String {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        format!(
            "prefill {:.0}s ({:.0} tokens/s, {:.0}% from the prefix cache) · decode {:.0}s ({:.0} row-tokens/s) · sampling {:.0}s · filters {:.0}s · idle rows {:.0}%",
            self.prefill_secs,
            rate(self.prefill_tokens, self.prefill_secs),
            100.0 * self.cached_tokens as f64 / (self.prefill_tokens + self.cached_tokens).max(1) as f64,
            self.decode_secs,
            rate(self.decoded_row_tokens, self.decode_secs),
            self.sampling_secs,
            self.filter_secs,
            100.0 * self.idle_share()
        )
    }
}

/// Where a run's events go: events.jsonl (text gathered, see [`Coalesced`]) and the caller.
pub(super) struct Sink<'a> {
    pub(super) log: crate::runs::Log<Progress>,
    pub(super) text: Coalesced,
    pub(super) on_progress: &'a mut (dyn FnMut(&Progress) + Send),
    /// The first failed write; the run stops with it at the next check.
    pub(super) error: Option<anyhow::Error>,
}

impl Sink<'_> {
    pub(super) fn emit(&mut self, p: &Progress) {
        let written = if crate::runs::RunEvent::durable(p) {
            self.text.flush().iter().try_for_each(|e| self.log.append(e)).and_then(|()| self.log.append(p))
        } else {
            self.text.push(p).iter().try_for_each(|e| self.log.append(e))
        };
        if let Err(e) = written {
            self.error.get_or_insert(e);
        }
        (self.on_progress)(p);
    }

    pub(super) fn check(&mut self) -> anyhow::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }
}
