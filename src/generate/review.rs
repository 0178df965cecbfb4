//! The expert's decisions on a run's samples: `decisions.jsonl` beside `samples.jsonl`, one
//! fsynced line per decision (accept, reject, edit, or back to pending). samples.jsonl is never
//! rewritten — a generator may still be appending to it — so a sample's status is its last
//! decision, and undo is a new decision that puts the previous state back.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::pipeline::SAMPLES;
use super::samples::{Sample, Status};
use crate::lines::read_jsonl;

pub const DECISIONS: &str = "decisions.jsonl";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub id: String,
    pub status: Status,
    /// The edited response (with status edited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// The accepted and edited samples of the run in `dir`, decisions applied, read without opening
/// anything for writing (what training reads).
pub fn accepted(dir: &Path) -> anyhow::Result<Vec<Sample>> {
    let review = Review::open(dir)?;
    review.note_torn();
    Ok(review.samples.into_iter().filter(|s| matches!(s.status, Status::Accepted | Status::Edited)).collect())
}

/// A run's samples with the decisions applied.
pub struct Review {
    pub dir: PathBuf,
    pub samples: Vec<Sample>,
    index: HashMap<String, usize>,
    /// decisions.jsonl, opened for appending at the first decision written: reading a run (to
    /// train on it, to export it) creates nothing in its folder.
    decisions: Option<File>,
    decisions_read: bool,
    /// Bytes of samples.jsonl read so far (to pick up samples a generator appends).
    read_to: u64,
    /// Lines those bytes hold (the next line's number, less one).
    lines_read: usize,
    /// An incomplete last line of samples.jsonl at the last read (skipped): its line number and
    /// length in bytes.
    pub torn: Option<(usize, usize)>,
    undo: Vec<Sample>,
}

impl Review {
    /// A command's review of the run folder `run`: refused when it holds no samples.jsonl, a torn
    /// last line said on stderr.
    pub fn open_run(run: &Path) -> anyhow::Result<Review> {
        anyhow::ensure!(
            run.join(SAMPLES).exists(),
            "{} has no samples.jsonl: not a generation run folder",
            run.display()
        );
        let review = Review::open(run)?;
        review.note_torn();
        Ok(review)
    }

    pub fn open(dir: &Path) -> anyhow::Result<Review> {
        let mut r = Review {
            dir: dir.to_path_buf(),
            samples: Vec::new(),
            index: HashMap::new(),
            decisions: None,
            decisions_read: false,
            read_to: 0,
            lines_read: 0,
            torn: None,
            undo: Vec::new(),
        };
        r.refresh()?;
        Ok(r)
    }

    /// Holds `sample` unless one with its id is held already; whether it was new.
    fn add(&mut self, sample: Sample) -> bool {
        if self.index.contains_key(&sample.id) {
            return false;
        }
        self.index.insert(sample.id.clone(), self.samples.len());
        self.samples.push(sample);
        true
    }

    /// Reads samples appended since the last call (and the decisions, on the first call).
    /// Returns how many new samples arrived.
    pub fn refresh(&mut self) -> anyhow::Result<usize> {
        let path = self.dir.join(SAMPLES);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len == self.read_to && self.decisions_read {
            return Ok(0);
        }
        if len < self.read_to {
            // Replaced by a shorter file: read it again from the start (samples already held are
            // known by their ids).
            (self.read_to, self.lines_read) = (0, 0);
        }
        // Only what was appended since the last call is read.
        let mut lines = match crate::lines::Lines::open_from(&path, self.read_to, self.lines_read) {
            Ok(lines) => Some(lines),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut added = 0;
        self.torn = None;
        if let Some(lines) = lines.as_mut() {
            for item in lines.by_ref() {
                let (n, line) = item.map_err(|e| anyhow::anyhow!(e.at(&path)))?;
                let sample: Sample =
                    serde_json::from_slice(&line).with_context(|| format!("{}:{n}: not a sample", path.display()))?;
                added += usize::from(self.add(sample));
            }
            self.read_to += lines.complete();
            self.lines_read = lines.lines();
            // After the last newline: a whole sample that only lacks its newline (a file edited by
            // hand) is taken (and read again next time, which adds nothing); anything else is a line
            // being written now, or cut by a kill, and is reported.
            if lines.unterminated() {
                match serde_json::from_slice::<Sample>(lines.tail()) {
                    Ok(sample) => added += usize::from(self.add(sample)),
                    Err(_) => self.torn = Some((self.lines_read + 1, lines.tail().len())),
                }
            }
        }
        if !self.decisions_read {
            for d in read_jsonl::<Decision>(&self.dir.join(DECISIONS))? {
                self.apply(&d);
            }
            self.decisions_read = true;
        } else if added > 0 {
            // Decisions may name samples that had not arrived yet when they were read.
            let dpath = self.dir.join(DECISIONS);
            for d in read_jsonl::<Decision>(&dpath)? {
                if self.samples[self.samples.len() - added..].iter().any(|s| s.id == d.id) {
                    self.apply(&d);
                }
            }
        }
        Ok(added)
    }

    /// Says on stderr that an incomplete last line was skipped, if one was.
    pub fn note_torn(&self) {
        if let Some((line, bytes)) = self.torn {
            eprintln!(
                "note: {}:{line}: the last line is incomplete ({bytes} bytes, no whole sample) and is skipped; \
                 a generation killed while writing it leaves this, and `selfspec generate` on the run cuts it",
                self.dir.join(SAMPLES).display()
            );
        }
    }

    fn apply(&mut self, d: &Decision) {
        if let Some(&i) = self.index.get(&d.id) {
            let s = &mut self.samples[i];
            s.status = d.status;
            if let Some(out) = &d.output {
                s.output = out.clone();
            }
        }
    }

    /// Records a decision on sample `id` (saved at once) and remembers the previous state for undo.
    pub fn decide(&mut self, id: &str, status: Status, output: Option<String>) -> anyhow::Result<()> {
        let i = *self.index.get(id).with_context(|| format!("no sample {id} in {}", self.dir.display()))?;
        let before = self.samples[i].clone();
        let output = output.filter(|o| *o != before.output);
        let d = Decision { id: id.to_string(), status, output, at: now() };
        self.write(&d)?;
        self.apply(&d);
        self.undo.push(before);
        Ok(())
    }

    /// Puts back the state before the last decision; the id it concerned.
    pub fn undo(&mut self) -> anyhow::Result<Option<String>> {
        let Some(before) = self.undo.pop() else { return Ok(None) };
        let i = self.index[&before.id];
        let output = (self.samples[i].output != before.output).then(|| before.output.clone());
        let d = Decision { id: before.id.clone(), status: before.status, output, at: now() };
        self.write(&d)?;
        self.apply(&d);
        Ok(Some(before.id))
    }

    fn write(&mut self, d: &Decision) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.dir.join(DECISIONS);
        if self.decisions.is_none() {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            self.decisions = Some(file);
        }
        let file = self.decisions.as_mut().context("the review is not open")?;
        let mut line = serde_json::to_vec(d)?;
        line.push(b'\n');
        file.write_all(&line).with_context(|| format!("cannot write {}", path.display()))?;
        file.sync_data().with_context(|| format!("cannot sync {}", path.display()))?;
        Ok(())
    }

    pub fn count(&self, status: Status) -> usize {
        self.samples.iter().filter(|s| s.status == status).count()
    }

    /// Where the workbench's `x` writes [`Review::export_alpaca`]'s file: beside the samples.
    pub fn alpaca_file(&self) -> PathBuf {
        self.dir.join("accepted.alpaca.jsonl")
    }

    /// Writes the accepted and edited samples as Alpaca JSONL ({instruction, input, output});
    /// returns how many.
    pub fn export_alpaca(&self, out: &Path) -> anyhow::Result<usize> {
        let mut text = String::new();
        let mut n = 0;
        for s in self.samples.iter().filter(|s| matches!(s.status, Status::Accepted | Status::Edited)) {
            #[derive(Serialize)]
            struct Alpaca<'a> {
                instruction: &'a str,
                input: &'a str,
                output: &'a str,
            }
            let rec = Alpaca { instruction: &s.instruction, input: &s.input, output: &s.output };
            text.push_str(&serde_json::to_string(&rec)?);
            text.push('\n');
            n += 1;
        }
        crate::fsutil::atomic_write(out, text.as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
        Ok(n)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::samples::{Provenance, SampleStore};

    fn sample(id: &str) -> Sample {
        Sample {
            id: id.into(),
            instruction: format!("Do {id}"),
            input: String::new(),
            output: format!("out {id}"),
            status: Status::Pending,
            provenance: Provenance::default(),
        }
    }

    #[test]
    fn a_last_sample_without_its_newline_is_read_and_a_torn_one_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SAMPLES);
        let mut text = String::new();
        for id in ["a", "b", "c"] {
            text.push_str(&serde_json::to_string(&sample(id)).unwrap());
            text.push('\n');
        }
        let whole = text.trim_end().to_string();
        std::fs::write(&path, &whole).unwrap();
        let r = Review::open(dir.path()).unwrap();
        assert_eq!(r.samples.len(), 3, "the last sample lacks only its newline");
        assert_eq!(r.torn, None);
        std::fs::write(&path, format!("{whole}\n{{\"id\":\"d\",\"instr")).unwrap();
        let r = Review::open(dir.path()).unwrap();
        assert_eq!(r.samples.len(), 3);
        assert_eq!(r.torn, Some((4, 16)));
        assert_eq!(std::fs::read_to_string(&path).unwrap().len(), whole.len() + 17, "reading changes nothing");
    }

    #[test]
    fn samples_appended_later_are_read_from_where_reading_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SAMPLES);
        let line = |id: &str| format!("{}\n", serde_json::to_string(&sample(id)).unwrap());
        std::fs::write(&path, format!("{}\n{}", line("a"), line("b"))).unwrap();
        let mut r = Review::open(dir.path()).unwrap();
        assert_eq!(r.samples.len(), 2);
        // A line being written is reported, then read once it is whole.
        let c = line("c");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, &c.as_bytes()[..10]).unwrap();
        assert_eq!(r.refresh().unwrap(), 0);
        assert_eq!(r.torn, Some((4, 10)));
        std::io::Write::write_all(&mut f, &c.as_bytes()[10..]).unwrap();
        assert_eq!(r.refresh().unwrap(), 1);
        assert_eq!((r.torn, r.samples[2].id.as_str()), (None, "c"));
        // A bad line is named by its number in the whole file.
        std::io::Write::write_all(&mut f, b"not json\n").unwrap();
        let e = r.refresh().unwrap_err();
        assert!(format!("{e:#}").contains(&format!("{}:5: not a sample", path.display())), "{e:#}");
        // A file replaced by a shorter one is read again from its start.
        std::fs::write(&path, line("z")).unwrap();
        assert_eq!(r.refresh().unwrap(), 1);
        assert_eq!(r.samples.last().unwrap().id, "z");
    }

    #[test]
    fn decisions_persist_undo_and_export() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = SampleStore::open(&dir.path().join(SAMPLES)).unwrap();
        store.append(sample("a")).unwrap();
        store.append(sample("b")).unwrap();
        // Reading a run for training or export writes nothing into it.
        assert!(accepted(dir.path()).unwrap().is_empty(), "nothing accepted yet");
        assert!(!dir.path().join(DECISIONS).exists());
        let mut r = Review::open(dir.path()).unwrap();
        r.decide("a", Status::Accepted, None).unwrap();
        r.decide("b", Status::Edited, Some("better".into())).unwrap();
        r.decide("a", Status::Rejected, None).unwrap();
        assert_eq!(r.undo().unwrap().as_deref(), Some("a"));
        assert_eq!(r.samples[0].status, Status::Accepted);
        // A sample arrives while reviewing.
        store.append(sample("c")).unwrap();
        assert_eq!(r.refresh().unwrap(), 1);
        drop(r);
        let r = Review::open(dir.path()).unwrap();
        assert_eq!(accepted(dir.path()).unwrap().len(), 2);
        assert_eq!(
            r.samples.iter().map(|s| s.status).collect::<Vec<_>>(),
            [Status::Accepted, Status::Edited, Status::Pending]
        );
        assert_eq!(r.samples[1].output, "better");
        let out = dir.path().join("accepted.jsonl");
        assert_eq!(r.export_alpaca(&out).unwrap(), 2);
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().nth(1).unwrap(), r#"{"instruction":"Do b","input":"","output":"better"}"#);
        assert!(r.samples.iter().all(|s| s.status != Status::Rejected));
        assert!(Review::open(dir.path()).is_ok());
        assert!(std::fs::read_to_string(dir.path().join(SAMPLES)).unwrap().lines().all(|l| l.contains("pending")));
    }
}
