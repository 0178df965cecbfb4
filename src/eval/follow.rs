//! What an evaluation run has reported, as one state built by applying its events in order: used
//! by `selfspec eval`'s progress lines and by the workbench's Eval screen.

use std::path::PathBuf;

use super::run::EvalEvent;
use crate::runs::{End, Entry};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Answers in all.
    pub requests: usize,
    /// Answers scored (those kept from before included).
    pub done: usize,
    /// Answers kept from an earlier session when this one started.
    pub scored_before: usize,
    /// The report, once written.
    pub report: Option<PathBuf>,
    pub end: Option<End>,
    pub notes: Vec<String>,
}

impl crate::runs::Follow for Evaluation {
    type Event = EvalEvent;

    fn apply_entry(&mut self, entry: &Entry<EvalEvent>) {
        if entry.end.is_some() {
            self.end = entry.end.clone();
        }
        if let Some(e) = &entry.event {
            self.apply(e);
        }
    }

    fn note(&mut self, dropped: Vec<String>) {
        self.notes.extend(dropped);
    }
}

impl Evaluation {
    pub fn apply(&mut self, event: &EvalEvent) {
        match event {
            EvalEvent::Started { requests, scored } => {
                (self.requests, self.done, self.scored_before) = (*requests, *scored, *scored);
                self.end = None;
            }
            EvalEvent::Progress { done, requests } | EvalEvent::Stopped { done, requests } => {
                (self.done, self.requests) = (*done, *requests)
            }
            EvalEvent::Finished { report } => {
                self.done = self.requests;
                self.report = Some(report.clone());
            }
            EvalEvent::Note { text } => self.notes.push(text.clone()),
        }
    }

    /// The line `selfspec eval` prints for `event`.
    pub fn line(event: &EvalEvent) -> String {
        match event {
            EvalEvent::Started { requests, scored: 0 } => format!("{requests} answers to generate"),
            EvalEvent::Started { requests, scored } => {
                format!("{requests} answers; {scored} scored before are kept, {} to generate", requests - scored)
            }
            EvalEvent::Progress { done, requests } => format!("{done}/{requests}"),
            EvalEvent::Stopped { done, requests } => {
                format!("stopped with {done}/{requests} scored; run the same command again to continue")
            }
            EvalEvent::Finished { report } => format!("report: {}", report.display()),
            EvalEvent::Note { text } => format!("note: {text}"),
        }
    }
}
