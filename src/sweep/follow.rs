//! What a sweep has reported, as one state built by applying its events in order: the
//! workbench's Sweeps screen follows a sweep with it. Each stage is a run of its own, followed
//! through its own folder; the sweep's log says which stage runs now.

use super::stages::SweepEvent;
use crate::runs::{End, Entry};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sweeping {
    /// The stage being run (its kind and name), as the last `stage` event said.
    pub stage: Option<(String, String)>,
    pub end: Option<End>,
    /// Lines of the log that could not be read.
    pub notes: Vec<String>,
}

impl crate::runs::Follow for Sweeping {
    type Event = SweepEvent;

    fn apply_entry(&mut self, entry: &Entry<SweepEvent>) {
        if entry.end.is_some() {
            self.end = entry.end.clone();
        }
        match &entry.event {
            Some(SweepEvent::Started { .. }) => self.end = None,
            Some(SweepEvent::Stage { stage, name }) => self.stage = Some((stage.clone(), name.clone())),
            Some(SweepEvent::Short { .. } | SweepEvent::Stopped { .. } | SweepEvent::Finished { .. }) | None => {}
        }
    }

    fn note(&mut self, dropped: Vec<String>) {
        self.notes.extend(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Follow as _;

    #[test]
    fn the_stage_now_follows_the_log() {
        let mut s = Sweeping::default();
        let at = |event| Entry { time: 1.0, end: None, event: Some(event) };
        s.apply_entry(&at(SweepEvent::Stage { stage: "generate".into(), name: "gen-s20".into() }));
        s.apply_entry(&at(SweepEvent::Short { seeds: 20, asked: 10, kept: 7 }));
        s.apply_entry(&at(SweepEvent::Stage { stage: "train".into(), name: "s20-n10".into() }));
        assert_eq!(s.stage, Some(("train".into(), "s20-n10".into())));
        let end = Entry { time: 2.0, end: Some(End::Stopped), event: None };
        s.apply_entry(&end);
        assert_eq!(s.end, Some(End::Stopped));
    }
}
