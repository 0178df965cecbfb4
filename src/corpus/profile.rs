//! What a corpus holds and the state of its index: document count, the distribution of document
//! lengths, and whether the index is missing, current or older than the corpus. The Corpus tab
//! and `selfspec index info` show it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::{CorpusError, Searcher};

/// The upper bounds (in words) of the length histogram's buckets; the last bucket is open.
pub const BUCKETS: [u32; 7] = [25, 50, 100, 200, 500, 1000, 2000];

/// Document lengths of a corpus, in words (whitespace-separated).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub documents: usize,
    pub bytes: u64,
    /// Every document's length, ascending (4 bytes a document).
    #[serde(skip)]
    pub words: Vec<u32>,
    /// The documents in each bucket of [`BUCKETS`], and one more for the longer ones.
    pub histogram: Vec<usize>,
    pub min: u32,
    pub median: u32,
    pub mean: f64,
    pub p90: u32,
    pub max: u32,
    /// The records `read` refused (their messages, at most twenty).
    pub problems: Vec<String>,
}

impl Profile {
    /// Reads every document of `source`; `progress` hears the count read so far every 1,000.
    /// Bad records do not stop it: they are listed in `problems`. Only a source that cannot be
    /// read at all is an error.
    pub fn read(source: &Path, progress: &mut dyn FnMut(usize)) -> Result<Profile, CorpusError> {
        let mut words = Vec::new();
        let mut bytes = 0u64;
        let result = super::read(source, &mut |d| {
            bytes += d.text.len() as u64;
            words.push(d.text.split_whitespace().count().min(u32::MAX as usize) as u32);
            if words.len().is_multiple_of(1000) {
                progress(words.len());
            }
            Ok(())
        });
        let problems = match result {
            Ok(_) => Vec::new(),
            Err(CorpusError::Many(all)) => all.iter().map(|e| e.to_string()).collect(),
            Err(e @ CorpusError::Record { .. }) => vec![e.to_string()],
            Err(e) if words.is_empty() => return Err(e),
            Err(e) => vec![e.to_string()],
        };
        Ok(Profile::of(words, bytes, problems))
    }

    fn of(mut words: Vec<u32>, bytes: u64, problems: Vec<String>) -> Profile {
        words.sort_unstable();
        let n = words.len();
        let at = |q: f64| if n == 0 { 0 } else { words[((n - 1) as f64 * q).round() as usize] };
        let mut histogram = vec![0; BUCKETS.len() + 1];
        for &w in &words {
            histogram[BUCKETS.iter().position(|&b| w < b).unwrap_or(BUCKETS.len())] += 1;
        }
        Profile {
            documents: n,
            bytes,
            histogram,
            min: at(0.0),
            median: at(0.5),
            mean: if n == 0 { 0.0 } else { words.iter().map(|&w| w as f64).sum::<f64>() / n as f64 },
            p90: at(0.9),
            max: at(1.0),
            words,
            problems,
        }
    }

    /// The histogram's bucket names: `<25`, `25–49`, …, `≥2000`.
    pub fn bucket_labels() -> Vec<String> {
        let mut labels = Vec::with_capacity(BUCKETS.len() + 1);
        let mut lo = 0;
        for &b in &BUCKETS {
            labels.push(if lo == 0 { format!("<{b}") } else { format!("{lo}–{}", b - 1) });
            lo = b;
        }
        labels.push(format!("≥{lo}"));
        labels
    }
}

/// The state of a corpus's index.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum IndexState {
    /// No index has been built.
    Missing,
    /// Built after the corpus last changed.
    Current { documents: u64 },
    /// The corpus changed after the index was built: retrieval does not see the change.
    Stale { documents: u64 },
    /// The folder is there but tantivy cannot open it.
    Broken { message: String },
}

impl IndexState {
    /// The state of `index` for the corpus `source` (none: an index without its corpus).
    pub fn of(source: Option<&Path>, index: &Path) -> IndexState {
        if !super::is_index(index) {
            return IndexState::Missing;
        }
        let documents = match Searcher::open(index) {
            Ok(s) => s.num_docs(),
            Err(e) => return IndexState::Broken { message: e.to_string() },
        };
        let changed = |p: &Path| -> Option<SystemTime> { std::fs::metadata(p).and_then(|m| m.modified()).ok() };
        match (source.and_then(newest_change), changed(&index.join("meta.json"))) {
            (Some(corpus), Some(built)) if corpus > built => IndexState::Stale { documents },
            _ => IndexState::Current { documents },
        }
    }

    pub fn describe(&self) -> String {
        match self {
            IndexState::Missing => "not built".into(),
            IndexState::Current { documents } => format!("built, {documents} documents"),
            IndexState::Stale { documents } => {
                format!("stale: the corpus changed after it was built ({documents} documents indexed)")
            }
            IndexState::Broken { message } => format!("cannot be opened: {message}"),
        }
    }
}

/// The last change to a corpus: its file's, or the newest of its folder's files and folders.
fn newest_change(source: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(source).ok()?;
    let mut newest = meta.modified().ok()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(source).ok()?.flatten() {
            if let Some(t) = newest_change(&entry.path()) {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}

/// Where the index of a corpus lives when none is named: beside it, `NAME.index` for
/// `NAME.corpus.jsonl`, `NAME.jsonl` or a folder `NAME`.
pub fn index_beside(source: &Path) -> PathBuf {
    let name = source.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    source.with_file_name(format!("{}.index", corpus_name(&name)))
}

/// A corpus's name from its file or index name: `biomedical.corpus.jsonl`, `biomedical.jsonl`
/// and `biomedical.index` are all `biomedical` (the name its index and its domain's seed file
/// take).
pub fn corpus_name(file_name: &str) -> &str {
    file_name.trim_end_matches('/').trim_end_matches(".jsonl").trim_end_matches(".index").trim_end_matches(".corpus")
}

/// What [`ensure_index`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Indexed {
    /// The path was an index, or its corpus's index was current.
    Used,
    Built,
    /// The corpus had changed after its index was built (or the index could not be opened).
    Rebuilt,
}

/// The index to retrieve from for `corpus`, the one rule every command and tab follows: an index
/// folder is used as it is; a corpus (a JSONL file, or a folder of .txt files) is indexed beside
/// itself ([`index_beside`]), built when missing and rebuilt when the corpus changed after it.
pub fn ensure_index(corpus: &Path, progress: &mut dyn FnMut(usize, f64)) -> Result<(PathBuf, Indexed), CorpusError> {
    if super::is_index(corpus) {
        return Ok((corpus.to_path_buf(), Indexed::Used));
    }
    if !corpus.exists() {
        return Err(CorpusError::File {
            file: corpus.to_path_buf(),
            message: "does not exist; name a corpus (JSONL or a folder of .txt files) or an index folder".into(),
        });
    }
    let index = index_beside(corpus);
    // The state is read under the lock: another process may have just built it.
    let _lock = super::build_lock(&index)?;
    let done = match IndexState::of(Some(corpus), &index) {
        IndexState::Current { .. } => return Ok((index, Indexed::Used)),
        IndexState::Missing => Indexed::Built,
        IndexState::Stale { .. } | IndexState::Broken { .. } => Indexed::Rebuilt,
    };
    super::rebuild_locked(corpus, &index, progress)?;
    Ok((index, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_summarised_and_bucketed() {
        let p = Profile::of(vec![30, 10, 600, 20, 2500, 99, 100], 0, Vec::new());
        assert_eq!((p.documents, p.min, p.median, p.max), (7, 10, 99, 2500));
        assert_eq!(p.p90, 600);
        assert_eq!(p.histogram, vec![2, 1, 1, 1, 0, 1, 0, 1]);
        assert_eq!(Profile::bucket_labels()[1], "25–49");
        assert_eq!(Profile::bucket_labels().len(), p.histogram.len());
        let empty = Profile::of(Vec::new(), 0, Vec::new());
        assert_eq!((empty.median, empty.mean), (0, 0.0));
    }

    #[test]
    fn the_index_lives_beside_its_corpus() {
        assert_eq!(index_beside(Path::new("c/finance.corpus.jsonl")), Path::new("c/finance.index"));
        assert_eq!(index_beside(Path::new("c/news.jsonl")), Path::new("c/news.index"));
        assert_eq!(index_beside(Path::new("c/texts")), Path::new("c/texts.index"));
    }
}
