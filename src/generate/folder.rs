//! A generation run's folder: config.yaml (the job), samples.jsonl (kept samples, fsynced one at
//! a time), filtered.jsonl (what the filters dropped, and why), tasks.jsonl (each decoded task
//! list's tasks that passed the filters) and events.jsonl; opened, continued and written here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::job::Job;
use super::progress::{Counters, Progress};
use super::samples::{Sample, SampleStore};
use crate::decode::{Finish, SamplingParams};
use crate::lines::JsonLog;

/// A run folder being written.
pub struct Run {
    pub dir: PathBuf,
    pub job: Job,
    pub(super) store: SampleStore,
    pub(super) filtered: JsonLog,
    pub(super) filtered_ids: HashSet<String>,
    /// events.jsonl's writer (lent to the [`Sink`] while [`run`] goes).
    pub(super) events: Option<crate::runs::Log<Progress>>,
    pub counters: Counters,
    /// What opening found that the user should know (a torn log line cut).
    pub notes: Vec<String>,
    /// tasks.jsonl: each decoded task list's tasks that passed the filters.
    pub(super) tasks: JsonLog,
    /// Prompts whose task lists are decoded (in tasks.jsonl).
    pub(super) lists_done: HashSet<usize>,
    /// Tasks in tasks.jsonl neither kept nor dropped: answered before any new list is asked for.
    pub(super) waiting: std::collections::VecDeque<Task>,
}

pub const SAMPLES: &str = "samples.jsonl";
pub const FILTERED: &str = "filtered.jsonl";
pub const EVENTS: &str = "events.jsonl";
pub const TASKS: &str = "tasks.jsonl";

/// One line of filtered.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilteredRecord {
    pub id: String,
    pub instruction: String,
    pub input: String,
    pub rejection: serde_json::Value,
    pub most_similar: Option<String>,
    /// The response, when the response was what the filters dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl Run {
    /// Opens (or starts) the run in `dir` for `job`; the caller holds the folder's lock and has
    /// read the job `dir` records (`recorded`, None for a new run). A run started with other
    /// settings is refused with the differences.
    pub fn open(
        _lock: &crate::runs::Lock,
        dir: &Path,
        recorded: Option<&Job>,
        job: Job,
    ) -> anyhow::Result<(Run, usize)> {
        use crate::runs::Kind;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
        if let Some(old) = recorded {
            let diffs = old.differences(&job);
            if !diffs.is_empty() {
                anyhow::bail!(
                    "{} was started with other settings:\n  {}\nrun the same command again to continue it, or pass a new --run folder",
                    dir.display(),
                    diffs.join("\n  ")
                );
            }
        }
        crate::runs::write_config(dir, Kind::Generate, &job)?;
        let (store, opened) = SampleStore::open(&dir.join(SAMPLES))?;
        let filtered_path = dir.join(FILTERED);
        let filtered_ids: HashSet<String> =
            crate::lines::read_jsonl::<FilteredRecord>(&filtered_path)?.into_iter().map(|r| r.id).collect();
        let filtered = JsonLog::open(&filtered_path)?;
        let (events, torn) = crate::runs::Log::<Progress>::open(dir)?;
        let mut counters = Counters::default();
        let mut tail = crate::runs::Tail::new(dir);
        let read = tail.read::<Progress>();
        for entry in read.entries {
            if let Some(Progress::Batch { counters: c } | Progress::Finished { counters: c, .. }) = entry.event {
                counters = c;
            }
        }
        counters.kept = store.len();
        let mut notes: Vec<String> = torn.into_iter().collect();
        if opened.torn_bytes > 0 {
            notes.push(format!(
                "{}: the last line was cut short ({} bytes, no whole sample) and is dropped; its task is answered again",
                dir.join(SAMPLES).display(),
                opened.torn_bytes
            ));
        }
        notes.extend(read.dropped);
        // The task lists decoded and the tasks still waiting. A run from before tasks.jsonl
        // decoded its prompts in order: the ones below its count are done.
        let tasks_path = dir.join(TASKS);
        let tasks = JsonLog::open(&tasks_path)?;
        if let Some((line, bytes)) = tasks.cut {
            notes.push(format!("{}: line {line} was cut short ({bytes} bytes) and is dropped", tasks_path.display()));
        }
        let lists = crate::lines::read_jsonl::<ListRecord>(&tasks_path)?;
        let mut lists_done: HashSet<usize> = lists.iter().map(|l| l.prompt).collect();
        if lists_done.is_empty() {
            lists_done.extend(0..counters.prompts);
        }
        let waiting = lists
            .into_iter()
            .flat_map(|l| l.tasks)
            .filter(|t| !store.contains(&t.id) && !filtered_ids.contains(&t.id))
            .collect::<std::collections::VecDeque<_>>();
        counters.waiting = waiting.len();
        let resumed = store.len();
        let run = Run {
            dir: dir.to_path_buf(),
            job,
            store,
            filtered,
            filtered_ids,
            events: Some(events),
            counters,
            notes,
            tasks,
            lists_done,
            waiting,
        };
        Ok((run, resumed))
    }

    pub fn samples(&self) -> &[Sample] {
        self.store.samples()
    }
}

/// A task that passed the filters and waits for its response (kept in tasks.jsonl, so a
/// continued run answers it before asking for new task lists).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub instruction: String,
    pub input: String,
    pub demos: Vec<String>,
    pub instruction_sampling: SamplingParams,
    /// The most similar instruction of the pool when it was filtered, and its ROUGE-L.
    pub most_similar: Option<(String, f64)>,
}

/// One line of tasks.jsonl: a decoded task list's tasks that passed the filters (maybe none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListRecord {
    pub prompt: usize,
    pub tasks: Vec<Task>,
    /// The list as the model wrote it (after the primer), and why it ended: what a user reads to
    /// see why a list gave few tasks. Absent in runs from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<Finish>,
}
