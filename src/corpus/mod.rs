//! Unlabeled domain documents and BM25 retrieval over them, with tantivy.
//!
//! A corpus is a JSONL file (`{id, title?, text}` a line) or a folder of `.txt` files (id: the
//! path below the folder without `.txt`, title: the file name). An index is built in a
//! temporary folder and renamed into place only when complete, so a killed build never leaves a
//! half index. Queries are plain text: every word of the query is a term (no query syntax, so
//! instructions full of quotes, colons and parentheses search as they read), scored with
//! tantivy's BM25 (k1 1.2, b 0.75) over title and text.

pub mod command;
pub mod profile;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, Value, STORED, STRING, TEXT};
use tantivy::tokenizer::TokenStream;
use tantivy::{doc, Index, IndexReader, TantivyDocument, Term};

/// Most bad records reported before giving up on the rest.
const MAX_REPORTED: usize = 20;
/// The longest document (a .txt file, or a JSON-lines record): 16 MiB, a long book. Indexing
/// takes a multiple of a document's size, and an input with no line end (a device file, a
/// binary) must not be read into memory whole.
pub const MAX_DOCUMENT_BYTES: u64 = 16 << 20;
/// Memory the index writer may use across its threads.
const WRITER_BUDGET: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{}:{line}: {message}", file.display())]
    Record { file: PathBuf, line: usize, message: String },
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<CorpusError>),
    #[error("{}: {message}", path.display())]
    Index { path: PathBuf, message: String },
}

fn index_err(path: &Path, e: impl std::fmt::Display) -> CorpusError {
    CorpusError::Index { path: path.to_path_buf(), message: e.to_string() }
}

/// Calls `each` with every document of `source`; bad records are all collected (up to
/// [`MAX_REPORTED`]) and returned together, after the good ones were passed on.
pub fn read(source: &Path, each: &mut dyn FnMut(Document) -> Result<(), CorpusError>) -> Result<usize, CorpusError> {
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    let mut count = 0;
    let mut accept =
        |doc: Document, file: &Path, line: usize, errors: &mut Vec<CorpusError>| -> Result<(), CorpusError> {
            if !ids.insert(doc.id.clone()) {
                errors.push(CorpusError::Record {
                    file: file.to_path_buf(),
                    line,
                    message: format!("id \"{}\" is used by an earlier document; ids must be unique", doc.id),
                });
                return Ok(());
            }
            count += 1;
            each(doc)
        };
    if source.is_dir() {
        let mut files = Vec::new();
        collect_txt(source, &mut files)
            .map_err(|e| CorpusError::File { file: source.to_path_buf(), message: e.to_string() })?;
        files.sort();
        if files.is_empty() {
            return Err(CorpusError::File { file: source.to_path_buf(), message: "holds no .txt files".into() });
        }
        for path in files {
            let too_big = |file: &Path| CorpusError::File {
                file: file.to_path_buf(),
                message: format!(
                    "is not a regular file of at most {MAX_DOCUMENT_BYTES} bytes; split it or leave it out"
                ),
            };
            let meta = std::fs::metadata(&path)
                .map_err(|e| CorpusError::File { file: path.clone(), message: e.to_string() })?;
            if !meta.is_file() || meta.len() > MAX_DOCUMENT_BYTES {
                errors.push(too_big(&path));
                continue;
            }
            let bytes =
                std::fs::read(&path).map_err(|e| CorpusError::File { file: path.clone(), message: e.to_string() })?;
            let Ok(text) = String::from_utf8(bytes) else {
                errors.push(CorpusError::File {
                    file: path.clone(),
                    message: "is not UTF-8 text; re-save it as UTF-8".into(),
                });
                continue;
            };
            let rel = path.strip_prefix(source).unwrap_or(&path).with_extension("");
            let id = rel.to_string_lossy().replace('\\', "/");
            let title = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            accept(Document { id, title, text }, &path, 1, &mut errors)?;
        }
    } else {
        let lines = crate::lines::Lines::open(source)
            .map_err(|e| CorpusError::File { file: source.to_path_buf(), message: e.to_string() })?
            .at_most(MAX_DOCUMENT_BYTES)
            .all();
        for item in lines {
            if errors.len() > MAX_REPORTED {
                break;
            }
            let (line_no, raw) = match item {
                Ok(line) => line,
                Err(crate::lines::LineError::TooLong { line, .. }) => {
                    errors.push(CorpusError::Record {
                        file: source.to_path_buf(),
                        line,
                        message: format!(
                            "is longer than {MAX_DOCUMENT_BYTES} bytes (is this a JSON-lines file?); split the document"
                        ),
                    });
                    break;
                }
                Err(crate::lines::LineError::Io { source: e, .. }) => {
                    return Err(CorpusError::File { file: source.to_path_buf(), message: e.to_string() })
                }
            };
            let bad = |message: String| CorpusError::Record { file: source.to_path_buf(), line: line_no, message };
            let Ok(text) = std::str::from_utf8(&raw) else {
                errors.push(bad("is not UTF-8".into()));
                continue;
            };
            match parse_record(text) {
                Ok(doc) => accept(doc, source, line_no, &mut errors)?,
                Err(message) => errors.push(bad(message)),
            }
        }
        if count == 0 && errors.is_empty() {
            return Err(CorpusError::File { file: source.to_path_buf(), message: "holds no documents".into() });
        }
    }
    match errors.len() {
        0 => Ok(count),
        1 => Err(errors.remove(0)),
        _ => {
            errors.truncate(MAX_REPORTED);
            Err(CorpusError::Many(errors))
        }
    }
}

fn collect_txt(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_txt(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "txt") {
            out.push(path);
        }
    }
    Ok(())
}

fn parse_record(line: &str) -> Result<Document, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        let message = e.to_string();
        format!("not valid JSON: {}", message.split(" at line ").next().unwrap_or(&message))
    })?;
    let obj = value.as_object().ok_or("each line must be one JSON object {id, title?, text}")?;
    let text_of = |key: &str| -> Result<Option<String>, String> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Number(n)) if key == "id" => Ok(Some(n.to_string())),
            Some(other) => Err(format!("{key} must be a string, found {other}")),
        }
    };
    let id = text_of("id")?.filter(|s| !s.trim().is_empty()).ok_or("id is missing or empty")?;
    let text = text_of("text")?.filter(|s| !s.trim().is_empty()).ok_or("text is missing or empty")?;
    Ok(Document { id, title: text_of("title")?.unwrap_or_default(), text })
}

struct Fields {
    id: Field,
    title: Field,
    text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        title: b.add_text_field("title", TEXT | STORED),
        text: b.add_text_field("text", TEXT | STORED),
    };
    (b.build(), fields)
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BuildStats {
    pub documents: usize,
    pub seconds: f64,
}

/// Indexes `source` into the folder `out`, which must not exist yet. `progress` hears the
/// count of documents read and the seconds elapsed, every 1,000 documents.
pub fn build(source: &Path, out: &Path, progress: &mut dyn FnMut(usize, f64)) -> Result<BuildStats, CorpusError> {
    let _lock = build_lock(out)?;
    build_unlocked(source, out, progress)
}

/// Holds `.NAME.lock` beside the index `out` while it lives: one builder of an index at a time,
/// across processes (a Corpus tab's `b` and a run indexing the same corpus take turns, since
/// both write the same temporary folders).
pub(crate) fn build_lock(out: &Path) -> Result<std::fs::File, CorpusError> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let path = out.with_file_name(format!(".{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| index_err(&path, e))?;
    file.lock().map_err(|e| index_err(&path, e))?;
    Ok(file)
}

fn build_unlocked(source: &Path, out: &Path, progress: &mut dyn FnMut(usize, f64)) -> Result<BuildStats, CorpusError> {
    if out.exists() {
        return Err(index_err(out, "already exists; remove it or pass --force"));
    }
    let partial = out.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| index_err(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| index_err(&partial, e))?;
    let started = Instant::now();
    let result = (|| {
        let (schema, f) = schema();
        let index = Index::create_in_dir(&partial, schema).map_err(|e| index_err(&partial, e))?;
        let mut writer = index.writer::<TantivyDocument>(WRITER_BUDGET).map_err(|e| index_err(&partial, e))?;
        let mut seen = 0;
        let documents = read(source, &mut |d| {
            writer
                .add_document(doc!(f.id => d.id, f.title => d.title, f.text => d.text))
                .map_err(|e| index_err(&partial, e))?;
            seen += 1;
            if seen % 1000 == 0 {
                progress(seen, started.elapsed().as_secs_f64());
            }
            Ok(())
        })?;
        writer.commit().map_err(|e| index_err(&partial, e))?;
        writer.wait_merging_threads().map_err(|e| index_err(&partial, e))?;
        Ok(documents)
    })();
    let documents = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, out).map_err(|e| index_err(out, e))?;
    Ok(BuildStats { documents, seconds: started.elapsed().as_secs_f64() })
}

/// Builds the index `out` of `source`, replacing the one there only once the new one is
/// complete: a failed or killed rebuild leaves the old index as it was.
pub fn rebuild(source: &Path, out: &Path, progress: &mut dyn FnMut(usize, f64)) -> Result<BuildStats, CorpusError> {
    let _lock = build_lock(out)?;
    rebuild_locked(source, out, progress)
}

/// [`rebuild`], for a caller that holds [`build_lock`].
pub(crate) fn rebuild_locked(
    source: &Path,
    out: &Path,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<BuildStats, CorpusError> {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let beside = |suffix: &str| out.with_file_name(format!("{name}.{suffix}"));
    let (next, old) = (beside("next"), beside("old"));
    // A rebuild killed between its two renames left the old index aside: put it back first.
    if !out.exists() && is_index(&old) {
        std::fs::rename(&old, out).map_err(|e| index_err(out, e))?;
    }
    if !out.exists() {
        return build_unlocked(source, out, progress);
    }
    if !is_index(out) {
        return Err(index_err(out, "exists and is not an index; not replacing it"));
    }
    for leftover in [&next, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(|e| index_err(leftover, e))?;
        }
    }
    let stats = build_unlocked(source, &next, progress)?;
    std::fs::rename(out, &old).map_err(|e| index_err(out, e))?;
    if let Err(e) = std::fs::rename(&next, out) {
        // Put the old index back rather than leave none.
        let _ = std::fs::rename(&old, out);
        return Err(index_err(out, e));
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(stats)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub title: String,
    pub text: String,
}

/// Whether `dir` holds an index (tantivy's meta.json): what every caller asks before opening
/// one or building one in its place.
pub fn is_index(dir: &Path) -> bool {
    dir.join("meta.json").exists()
}

/// Whether `dir` is one of a build's temporary folders (`.partial`, `.next`, `.old`), which hold
/// a meta.json too but are no index to list or search.
pub fn is_build_folder(dir: &Path) -> bool {
    dir.extension().is_some_and(|e| e == "partial" || e == "next" || e == "old")
}

/// An opened index, ready for many queries.
pub struct Searcher {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    path: PathBuf,
}

impl Searcher {
    pub fn open(dir: &Path) -> Result<Searcher, CorpusError> {
        if !is_index(dir) {
            return Err(index_err(
                dir,
                "is not a selfspec index (no meta.json); build one with `selfspec index build`",
            ));
        }
        let index = Index::open_in_dir(dir).map_err(|e| index_err(dir, e))?;
        let (_, fields) = schema();
        let reader = index.reader().map_err(|e| index_err(dir, e))?;
        Ok(Searcher { index, reader, fields, path: dir.to_path_buf() })
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The `k` best documents for `query` by BM25, best first. A query with no indexable word
    /// finds nothing.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>, CorpusError> {
        Ok(self.ranked(query, k)?.map(|(hits, _)| hits).unwrap_or_default())
    }

    /// As [`Searcher::search`], each hit with the passage of at most `chars` bytes of its text
    /// where the query's words are densest, and those words' places in it (tantivy's snippets).
    /// A hit that matched on its title alone gets the text's start, with nothing marked.
    pub fn search_highlighted(
        &self,
        query: &str,
        k: usize,
        chars: usize,
    ) -> Result<Vec<(Hit, Highlight)>, CorpusError> {
        let Some((hits, query)) = self.ranked(query, k)? else { return Ok(Vec::new()) };
        let searcher = self.reader.searcher();
        let mut snippets = tantivy::snippet::SnippetGenerator::create(&searcher, &query, self.fields.text)
            .map_err(|e| index_err(&self.path, e))?;
        snippets.set_max_num_chars(chars);
        Ok(hits
            .into_iter()
            .map(|hit| {
                let s = snippets.snippet(&hit.text);
                let highlight = if s.is_empty() {
                    let end = hit.text.char_indices().nth(chars).map_or(hit.text.len(), |(i, _)| i);
                    Highlight { text: hit.text[..end].to_string(), marked: Vec::new() }
                } else {
                    Highlight { text: s.fragment().to_string(), marked: s.highlighted().to_vec() }
                };
                (hit, highlight)
            })
            .collect())
    }

    /// The hits and the query that found them; none when the query has no indexable word.
    fn ranked(&self, query: &str, k: usize) -> Result<Option<(Vec<Hit>, BooleanQuery)>, CorpusError> {
        let mut analyzer = self.index.tokenizer_for_field(self.fields.text).map_err(|e| index_err(&self.path, e))?;
        let mut terms: Vec<String> = Vec::new();
        let mut stream = analyzer.token_stream(query);
        while stream.advance() {
            let t = stream.token().text.clone();
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        // No more hits than documents: a huge k must not size a huge heap.
        let k = k.min(self.reader.searcher().num_docs() as usize);
        if terms.is_empty() || k == 0 {
            return Ok(None);
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for t in &terms {
            for field in [self.fields.title, self.fields.text] {
                let term = Term::from_field_text(field, t);
                clauses.push((Occur::Should, Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs))));
            }
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top =
            searcher.search(&query, &TopDocs::with_limit(k).order_by_score()).map_err(|e| index_err(&self.path, e))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address).map_err(|e| index_err(&self.path, e))?;
            let get = |f: Field| doc.get_first(f).and_then(|v| v.as_str()).unwrap_or("").to_string();
            hits.push(Hit {
                id: get(self.fields.id),
                score,
                title: get(self.fields.title),
                text: get(self.fields.text),
            });
        }
        Ok(Some((hits, query)))
    }
}

/// A passage of a hit's text and the byte ranges in it that a query's words matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Highlight {
    pub text: String,
    pub marked: Vec<std::ops::Range<usize>>,
}
