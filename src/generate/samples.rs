//! The samples a run generates: `samples.jsonl`, one JSON object a line, appended and fsynced
//! one sample at a time, so a run killed at any moment keeps every sample it reported.
//!
//! A kill can still cut the line being written; opening the file drops that torn tail (and
//! says so). Anything else wrong — a bad line in the middle — is an error naming the line:
//! nothing is dropped silently.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::SamplingParams;

/// Which documents a response is conditioned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// No documents: the base model answers from what it knows.
    None,
    /// The best BM25 document in the prompt.
    Top1,
    /// The top-k documents, one prompt each, next-token distributions mixed by retriever weight.
    #[default]
    Marginal,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Top1 => "top1",
            Mode::Marginal => "marginal",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Accepted,
    Rejected,
    Edited,
}

/// A retrieved document used for a response, with its mixture weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentRef {
    pub id: String,
    pub weight: f64,
}

/// Where a sample came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Provenance {
    /// Ids of the seeds shown as demonstrations.
    pub demos: Vec<String>,
    pub model: String,
    /// The instruction prompt's sampling.
    pub sampling: Option<SamplingParams>,
    pub response_sampling: Option<SamplingParams>,
    /// How the response was conditioned on documents.
    pub mode: Option<Mode>,
    /// The documents of the response with their mixture weights (best first).
    pub documents: Vec<DocumentRef>,
    /// The filters' record: the most similar instruction and its ROUGE-L.
    pub most_similar: Option<String>,
    pub rouge_l: Option<f64>,
    /// How the response ended (length: cut by the token limit).
    pub finish: Option<crate::decode::Finish>,
    /// The second round: the adapter of the tuned model, and α when decoding was contrastive.
    pub adapter: Option<String>,
    pub contrastive_alpha: Option<f64>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The judge's score (1–5), when the run judged its samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub judge_score: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub instruction: String,
    pub input: String,
    pub output: String,
    pub status: Status,
    pub provenance: Provenance,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: {message}; the file is left as it is", path.display())]
    Corrupt { path: PathBuf, line: usize, message: String },
}

pub struct SampleStore {
    path: PathBuf,
    file: File,
    samples: Vec<Sample>,
    ids: HashSet<String>,
}

/// What opening found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub samples: usize,
    /// Bytes of a torn last line that were dropped.
    pub torn_bytes: usize,
}

impl SampleStore {
    /// Opens (or creates) `path`, reading every sample in it.
    pub fn open(path: &Path) -> Result<(SampleStore, Opened), StoreError> {
        let io = |source| StoreError::Io { path: path.to_path_buf(), source };
        // Read line by line (the store may hold more than memory should).
        let mut lines = match crate::lines::Lines::open(path) {
            Ok(lines) => Some(lines),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let mut samples = Vec::new();
        let mut ids = HashSet::new();
        let mut keep = |n: usize, line: &[u8]| -> Result<(), StoreError> {
            let corrupt = |message: String| StoreError::Corrupt { path: path.to_path_buf(), line: n, message };
            let sample: Sample = serde_json::from_slice(line).map_err(|e| corrupt(format!("not a sample: {e}")))?;
            if !ids.insert(sample.id.clone()) {
                return Err(corrupt(format!("sample id {} appears twice", sample.id)));
            }
            samples.push(sample);
            Ok(())
        };
        let (mut complete, mut unterminated, mut torn_bytes) = (0, false, 0);
        if let Some(lines) = lines.as_mut() {
            for item in lines.by_ref() {
                let (n, line) = item.map_err(|e| match e {
                    crate::lines::LineError::Io { source, .. } => io(source),
                    e => StoreError::Corrupt { path: path.to_path_buf(), line: e.line(), message: e.to_string() },
                })?;
                keep(n, &line)?;
            }
            complete = lines.complete();
            // Everything after the last newline is a line whose writing was cut off — unless it
            // is a whole sample that only lacks its newline (a file edited by hand): that one is
            // kept.
            if lines.unterminated() && serde_json::from_slice::<Sample>(lines.tail()).is_ok() {
                keep(lines.lines() + 1, lines.tail())?;
                unterminated = true;
            } else {
                torn_bytes = lines.tail().len();
            }
        }
        let file = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(path).map_err(io)?;
        if torn_bytes > 0 {
            file.set_len(complete).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        if unterminated {
            use std::io::{Seek, Write};
            let mut f = &file;
            f.seek(std::io::SeekFrom::End(0)).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let opened = Opened { samples: samples.len(), torn_bytes };
        let mut store = SampleStore { path: path.to_path_buf(), file, samples, ids };
        store.seek_end()?;
        Ok((store, opened))
    }

    fn seek_end(&mut self) -> Result<(), StoreError> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::End(0))
            .map(|_| ())
            .map_err(|source| StoreError::Io { path: self.path.clone(), source })
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Appends `sample` and fsyncs; `false` (and nothing written) when its id is already there.
    pub fn append(&mut self, sample: Sample) -> Result<bool, StoreError> {
        if self.ids.contains(&sample.id) {
            return Ok(false);
        }
        let io = |source| StoreError::Io { path: self.path.clone(), source };
        let mut line = serde_json::to_vec(&sample).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.ids.insert(sample.id.clone());
        self.samples.push(sample);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> Sample {
        Sample {
            id: id.into(),
            instruction: format!("Instruction {id} — with ünïcode and \"quotes\"\nand a newline"),
            input: String::new(),
            output: "out".into(),
            status: Status::Pending,
            provenance: Provenance {
                demos: vec!["bio-001".into()],
                documents: vec![DocumentRef { id: "d1".into(), weight: 0.6 }],
                ..Default::default()
            },
        }
    }

    #[test]
    fn appends_survive_reopening_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.jsonl");
        let (mut store, opened) = SampleStore::open(&path).unwrap();
        assert_eq!(opened, Opened { samples: 0, torn_bytes: 0 });
        for id in ["s1", "s2", "s3"] {
            assert!(store.append(sample(id)).unwrap());
        }
        assert!(!store.append(sample("s2")).unwrap(), "duplicate ids are refused");
        drop(store);
        // A kill while writing the fourth line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"id":"s4","instruction":"cut of"#).unwrap();
        drop(f);
        let (mut store, opened) = SampleStore::open(&path).unwrap();
        assert_eq!(opened.samples, 3);
        assert!(opened.torn_bytes > 0);
        assert_eq!(store.samples()[1], sample("s2"));
        assert!(store.append(sample("s4")).unwrap());
        drop(store);
        let (store, opened) = SampleStore::open(&path).unwrap();
        assert_eq!((opened.samples, opened.torn_bytes), (4, 0));
        assert!(store.contains("s4"));
    }

    #[test]
    fn a_whole_last_sample_without_its_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.jsonl");
        let (mut store, _) = SampleStore::open(&path).unwrap();
        assert!(store.append(sample("s1")).unwrap());
        drop(store);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(serde_json::to_string(&sample("s2")).unwrap().as_bytes()).unwrap();
        drop(f);
        let (mut store, opened) = SampleStore::open(&path).unwrap();
        assert_eq!((opened.samples, opened.torn_bytes), (2, 0));
        assert!(store.append(sample("s3")).unwrap());
        drop(store);
        let (store, opened) = SampleStore::open(&path).unwrap();
        assert_eq!(opened.samples, 3);
        assert!(store.contains("s2") && store.contains("s3"));
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error_and_nothing_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("samples.jsonl");
        let good = serde_json::to_string(&sample("a")).unwrap();
        let text = format!("{good}\n{{broken\n{good}\n");
        std::fs::write(&path, &text).unwrap();
        let err = SampleStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("samples.jsonl:2: not a sample"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
