//! The one event log of a run: `events.jsonl`, one JSON object a line, each the run kind's own
//! event with the envelope fields `time` (Unix seconds) and, on the line that ends a run, `end`.
//! One writer appends (fsynced, except the high-rate text events), one reader tails it by offset
//! and names every line it drops.

use std::io::Read as _;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lines::JsonLog;

/// The event log's file name.
pub const EVENTS: &str = "events.jsonl";

/// How a run ended, as its last event says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum End {
    Finished,
    /// Stopped on request (x, SIGTERM, Ctrl-C); running the same command again continues it.
    Stopped,
    Failed {
        error: String,
    },
}

/// An event type of a run kind.
pub trait RunEvent: Serialize + DeserializeOwned {
    /// The end this event marks, if it is the last event of a run.
    fn end(&self) -> Option<End>;
    /// Whether the event must survive a crash (fsynced); text streamed token by token need not.
    fn durable(&self) -> bool {
        true
    }
}

/// The envelope as written.
#[derive(Serialize)]
struct Envelope<'a, E> {
    time: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<End>,
    #[serde(flatten)]
    event: &'a E,
}

/// A failure written by [`record_failure`]: no run kind's own event.
#[derive(Serialize)]
struct Failure<'a> {
    time: f64,
    end: End,
    event: &'a str,
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The writer of a run's events.jsonl.
pub struct Log<E> {
    file: JsonLog,
    _event: PhantomData<fn(&E)>,
}

impl<E: RunEvent> Log<E> {
    /// Opens `dir`'s log for appending. A torn last line (a kill during a write) is cut; the
    /// returned note says so, for the user.
    pub fn open(dir: &Path) -> anyhow::Result<(Log<E>, Option<String>)> {
        let file = JsonLog::open(&dir.join(EVENTS))?;
        let note = file.cut.map(|(line, bytes)| {
            format!(
                "{}: line {line} was torn ({bytes} bytes, written when the run was killed) and is cut; its work is redone",
                dir.join(EVENTS).display()
            )
        });
        Ok((Log { file, _event: PhantomData }, note))
    }

    pub fn append(&mut self, event: &E) -> anyhow::Result<()> {
        let envelope = Envelope { time: now(), end: event.end(), event };
        if event.durable() {
            self.file.append(&envelope)
        } else {
            self.file.append_unsynced(&envelope)
        }
    }
}

/// Appends a failure line to `dir`'s events.jsonl (when the folder has one), so that the run's
/// state reads "failed" with the error and not "interrupted".
pub fn record_failure(dir: &Path, error: &str) {
    if !dir.join(EVENTS).exists() {
        return;
    }
    if let Ok(mut file) = JsonLog::open(&dir.join(EVENTS)) {
        let _ = file.append(&Failure { time: now(), end: End::Failed { error: error.to_string() }, event: "failed" });
    }
}

/// One line read back: the envelope and the event (None on a failure line).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry<E> {
    pub time: f64,
    pub end: Option<End>,
    pub event: Option<E>,
}

/// What one [`Tail::read`] found.
#[derive(Debug)]
pub struct Batch<E> {
    pub entries: Vec<E>,
    /// One message per line left out (not JSON, or not an event of this kind), naming the line.
    pub dropped: Vec<String>,
}

/// Follows a run's events.jsonl: each read returns the whole lines appended since the last.
/// An unterminated last line is read again on the next call from its start, so a torn line the
/// writer cuts and writes again is read as written.
#[derive(Debug, Clone)]
pub struct Tail {
    path: PathBuf,
    /// Where the first line not yet returned starts.
    offset: u64,
    /// Lines returned (or dropped) so far.
    line: usize,
    /// Bytes after `offset` at the last read (an unterminated line).
    pending: usize,
}

impl Tail {
    pub fn new(dir: &Path) -> Tail {
        Tail { path: dir.join(EVENTS), offset: 0, line: 0, pending: 0 }
    }

    /// Follows any JSON-lines file a run appends to (its predictions, its samples) the same way.
    pub fn file(path: &Path) -> Tail {
        Tail { path: path.to_path_buf(), offset: 0, line: 0, pending: 0 }
    }

    /// The whole lines appended since the last call as plain `T` records (no envelope).
    pub fn read_records<T: DeserializeOwned>(&mut self) -> Batch<T> {
        let mut batch = Batch { entries: Vec::new(), dropped: Vec::new() };
        let path = self.path.clone();
        for (line, bytes) in self.new_lines() {
            match serde_json::from_slice::<T>(&bytes) {
                Ok(t) => batch.entries.push(t),
                Err(e) => batch.dropped.push(format!("{}:{line}: {e}; line left out", path.display())),
            }
        }
        batch
    }

    pub fn read<E: DeserializeOwned>(&mut self) -> Batch<Entry<E>> {
        let mut batch = Batch { entries: Vec::new(), dropped: Vec::new() };
        let path = self.path.clone();
        for (line, bytes) in self.new_lines() {
            match parse::<E>(&bytes) {
                Ok(entry) => batch.entries.push(entry),
                Err(why) => batch.dropped.push(format!("{}:{line}: {why}; line left out", path.display())),
            }
        }
        batch
    }

    /// The whole non-blank lines appended since the last call, with their line numbers.
    fn new_lines(&mut self) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        self.offset = self.offset.min(len);
        let Ok(reader) = crate::lines::reader_at(&self.path, self.offset) else { return out };
        // At most 64 MiB a read, so a huge log is followed in bounded steps.
        let mut lines = crate::lines::Lines::new(reader.take(64 << 20), self.line, u64::MAX);
        for item in lines.by_ref() {
            match item {
                Ok(line) => out.push(line),
                // A read that fails is tried again from the same place on the next call.
                Err(_) => break,
            }
        }
        self.pending = lines.tail().len();
        self.offset += lines.complete();
        self.line = lines.lines();
        out
    }

    /// The unterminated last line, said as a dropped line: call once the writer is gone.
    pub fn torn(&self) -> Option<String> {
        (self.pending > 0).then(|| {
            format!(
                "{}:{}: torn line ({} bytes, the run was killed while writing it); left out",
                self.path.display(),
                self.line + 1,
                self.pending
            )
        })
    }
}

fn parse<E: DeserializeOwned>(line: &[u8]) -> Result<Entry<E>, String> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
    let time = value.get("time").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let end = match value.get("end") {
        Some(v) => Some(End::deserialize(v).map_err(|e| format!("bad \"end\" ({e})"))?),
        None => None,
    };
    let event = if value.get("event").and_then(serde_json::Value::as_str) == Some("failed") {
        None
    } else {
        Some(E::deserialize(&value).map_err(|e| format!("not an event of this run ({e})"))?)
    };
    Ok(Entry { time, end, event })
}

/// The end recorded by the last complete line of `dir`'s events.jsonl (None: no such line, or the
/// run has not ended), read from the file's last 64 KiB.
pub fn last_end(dir: &Path) -> Option<End> {
    let line = crate::lines::last_line(&dir.join(EVENTS), 64 << 10).ok()??;
    let value: serde_json::Value = serde_json::from_slice(&line).ok()?;
    End::deserialize(value.get("end")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "event", rename_all = "snake_case")]
    enum Ev {
        Step { n: usize },
        Text { text: String },
        Done,
    }

    impl RunEvent for Ev {
        fn end(&self) -> Option<End> {
            matches!(self, Ev::Done).then_some(End::Finished)
        }
        fn durable(&self) -> bool {
            !matches!(self, Ev::Text { .. })
        }
    }

    #[test]
    fn the_tail_reads_whole_lines_names_drops_and_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, note) = Log::<Ev>::open(dir.path()).unwrap();
        assert!(note.is_none());
        let mut tail = Tail::new(dir.path());
        log.append(&Ev::Step { n: 1 }).unwrap();
        log.append(&Ev::Text { text: "a".into() }).unwrap();
        let got = tail.read::<Ev>();
        assert_eq!(
            got.entries.iter().map(|e| e.event.clone().unwrap()).collect::<Vec<_>>(),
            [Ev::Step { n: 1 }, Ev::Text { text: "a".into() }]
        );
        assert!(got.entries[0].time > 1e9);
        // A foreign line, then half a line.
        use std::io::Write;
        let mut raw = std::fs::OpenOptions::new().append(true).open(dir.path().join(EVENTS)).unwrap();
        raw.write_all(b"{\"event\": \"mystery\"}\n{\"event\": \"st").unwrap();
        let got = tail.read::<Ev>();
        assert!(got.entries.is_empty());
        assert_eq!(got.dropped.len(), 1);
        assert!(got.dropped[0].contains("events.jsonl:3: not an event of this run"), "{:?}", got.dropped);
        assert!(tail.torn().unwrap().contains("events.jsonl:4: torn line (13 bytes"), "{:?}", tail.torn());
        drop(log);
        // Reopening cuts the torn line and says so; the tail follows the cut.
        let (mut log, note) = Log::<Ev>::open(dir.path()).unwrap();
        assert!(note.unwrap().contains("line 4 was torn (13 bytes"));
        log.append(&Ev::Done).unwrap();
        let got = tail.read::<Ev>();
        assert_eq!(got.entries.len(), 1);
        assert_eq!(got.entries[0].end, Some(End::Finished));
        assert_eq!(last_end(dir.path()), Some(End::Finished));
        record_failure(dir.path(), "out of memory");
        assert_eq!(last_end(dir.path()), Some(End::Failed { error: "out of memory".into() }));
        let got = tail.read::<Ev>();
        assert_eq!(got.entries[0].event, None);
        assert!(tail.torn().is_none());
    }
}
