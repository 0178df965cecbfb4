//! What a generation run has reported, as one state: built by applying its events in order, the
//! same way by `selfspec generate`'s progress lines, the workbench's Generate screen and
//! `selfspec attach` (which replays events.jsonl first).

use std::collections::{BTreeMap, VecDeque};

use super::pipeline::{Counters, Outcome, Progress};
use crate::runs::Entry;

/// Kept instructions remembered for display.
pub const RECENT: usize = 50;

#[derive(Debug, Clone, Default)]
pub struct Generation {
    pub counters: Counters,
    /// Samples asked for.
    pub target: usize,
    pub budget: usize,
    /// Samples kept before this session started (a continued run).
    pub kept_at_start: usize,
    pub weighting: String,
    /// The prompt being decoded and its text so far.
    pub current: Option<(usize, String)>,
    /// The response being decoded.
    pub response: Option<(String, String)>,
    /// Kept instructions, newest first.
    pub recent: VecDeque<String>,
    /// One line saying where the run stands.
    pub state: String,
    /// Whether `state` reports a failure (or a spent budget).
    pub error: bool,
    /// Whether the run has ended (finished, stopped, failed).
    pub ended: bool,
    /// The event times (Unix seconds) of this session's start and of the newest event.
    pub session_start: f64,
    pub last_time: f64,
    /// Notes the run wrote (a torn line cut), newest last.
    pub notes: Vec<String>,
}

impl crate::runs::Follow for Generation {
    type Event = Progress;

    /// Applies one logged event.
    fn apply_entry(&mut self, entry: &Entry<Progress>) {
        if entry.time > 0.0 {
            self.last_time = entry.time;
        }
        match &entry.event {
            Some(p) => {
                if matches!(p, Progress::Started { .. }) {
                    self.session_start = entry.time;
                }
                self.apply(p.clone());
            }
            None => {
                if let Some(crate::runs::End::Failed { error }) = &entry.end {
                    self.fail(error);
                }
            }
        }
    }

    fn note(&mut self, dropped: Vec<String>) {
        self.notes.extend(dropped);
    }
}

impl Generation {
    /// The run failed with `error`.
    pub fn fail(&mut self, error: &str) {
        self.state = format!("failed: {error}");
        self.error = true;
        self.ended = true;
        self.current = None;
        self.response = None;
    }

    /// Applies one event.
    pub fn apply(&mut self, p: Progress) {
        match p {
            Progress::Started { n, budget, resumed, counters, weighting, .. } => {
                self.target = n;
                self.budget = budget;
                self.kept_at_start = resumed;
                self.counters = counters;
                self.counters.kept = resumed;
                self.weighting = weighting;
                self.error = false;
                self.ended = false;
                self.state =
                    if resumed > 0 { format!("running (continued with {resumed} kept)") } else { "running".into() };
            }
            Progress::Prompts { first, count } => {
                self.current = None;
                self.state = format!("decoding instruction prompts {}–{}", first + 1, first + count);
            }
            Progress::InstructionText { prompt, text } => match self.current.as_mut() {
                Some((p, t)) if *p == prompt => t.push_str(&text),
                _ => self.current = Some((prompt, text)),
            },
            Progress::Responding { ids } => {
                self.response = None;
                self.state = format!("decoding {} responses", ids.len());
            }
            Progress::ResponseText { id, text } => match self.response.as_mut() {
                Some((i, t)) if *i == id => t.push_str(&text),
                _ => self.response = Some((id, text)),
            },
            Progress::Filtered { rejection, .. } => {
                *self.counters.filtered.entry(rejection).or_default() += 1;
            }
            Progress::Kept { sample } => {
                self.counters.kept += 1;
                self.recent.push_front(sample.instruction.replace('\n', " "));
                self.recent.truncate(RECENT);
            }
            Progress::Batch { counters } => self.counters = counters,
            Progress::Note { text } => self.notes.push(text),
            Progress::Finished { outcome, counters } => {
                self.counters = counters;
                self.ended = true;
                self.current = None;
                self.response = None;
                self.state = match outcome {
                    Outcome::Done => format!("done: {} samples; review them on the Review tab", self.counters.kept),
                    Outcome::Cancelled => "stopped; s continues the run".into(),
                    Outcome::Budget { budget } => {
                        self.error = true;
                        format!(
                            "stopped: {budget} task lists gave only {} samples (the prompt budget; raise \
                             generation.prompt_budget, or use more varied seeds or a larger model)",
                            self.counters.kept
                        )
                    }
                };
            }
        }
    }

    /// Samples kept this session.
    pub fn kept_now(&self) -> usize {
        self.counters.kept.saturating_sub(self.kept_at_start)
    }

    /// Seconds this session has gone on, by the events' clock.
    pub fn session_secs(&self) -> f64 {
        (self.last_time - self.session_start).max(0.0)
    }

    /// Samples a minute this session, and the seconds left at that rate (None before the first).
    pub fn rate(&self, secs: f64) -> (f64, Option<f64>) {
        let new = self.kept_now();
        let per_min = if secs > 0.0 { new as f64 / secs * 60.0 } else { 0.0 };
        let left = self.target.saturating_sub(self.counters.kept);
        let eta = (new > 0 && secs > 0.0).then(|| left as f64 / (new as f64 / secs));
        (per_min, eta)
    }

    /// The progress line `selfspec generate` prints after each batch.
    pub fn line(&self, secs: f64) -> String {
        let c = &self.counters;
        let (per_min, eta) = self.rate(secs);
        let eta = eta.map_or("?".to_string(), |s| format!("{s:.0}s"));
        let filtered: usize = c.filtered.values().sum();
        let unparsed: usize = c.unparsed.values().sum();
        format!(
            "prompts {} · kept {}/{} · waiting {} · parsed {} · filtered {filtered} · unparsed {unparsed} · {per_min:.1} samples/min · ETA {eta}\n  {}",
            c.prompts,
            c.kept,
            self.target,
            c.waiting,
            c.parsed,
            c.time.line()
        )
    }

    /// The summary `selfspec generate` prints at the end.
    pub fn summary(&self, samples: &std::path::Path) -> String {
        let c = &self.counters;
        let reasons = |m: &BTreeMap<String, usize>| {
            if m.is_empty() {
                "none".to_string()
            } else {
                m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
            }
        };
        format!(
            "{} samples in {}; {} prompts, {} tasks parsed, {} waiting; unparsed: {}; filtered: {}; empty responses: {}; looping responses: {}\ntime: {}",
            c.kept,
            samples.display(),
            c.prompts,
            c.parsed,
            c.waiting,
            reasons(&c.unparsed),
            reasons(&c.filtered),
            c.empty_responses,
            c.looping_responses,
            c.time.line()
        )
    }
}
