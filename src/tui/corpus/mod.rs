//! The Corpus screen: the workspace's corpora and their indexes — document count, the lengths of
//! the documents, the index's state — BM25 search as you type with scores and the query's words
//! marked, and for a seed (`[ ]`) or a reviewed sample (the Review tab's `c`) the documents
//! retrieval gives it with their eq. 2 weights. `b` builds (or rebuilds) the index on a thread,
//! with progress; reading a corpus's lengths runs on a thread too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::shared::{truncate, Outcome};
use super::theme::Theme;
use crate::corpus::profile::{corpus_name, index_beside, IndexState, Profile, BUCKETS};
use crate::corpus::{Highlight, Searcher};
use crate::generate::pipeline::{Job, Settings};
use crate::generate::samples::{DocumentRef, Mode};
use crate::workspace::Workspace;

mod view;

/// Hits shown for a typed query.
const SEARCH_HITS: usize = 10;
/// The longest passage shown of a hit, in bytes.
const PASSAGE: usize = 240;

/// A corpus of the workspace: its file (none: an index found alone) and its index folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: String,
    pub source: Option<PathBuf>,
    pub index: PathBuf,
    pub state: IndexState,
}

enum Lengths {
    Reading { rx: Receiver<Result<Profile, String>>, read: Arc<AtomicUsize> },
    Ready(Profile),
    Failed(String),
}

struct Building {
    index: PathBuf,
    rx: Receiver<Result<crate::corpus::BuildStats, String>>,
    read: Arc<AtomicUsize>,
    started: Instant,
}

/// What the hits answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// Nothing yet.
    Empty,
    /// Typed with `/`.
    Typed(String),
    /// A seed of the corpus's domain (its index in the seed file): instruction and input.
    Seed { file: PathBuf, ix: usize, id: String, text: String },
    /// A generated sample: instruction and input, with the documents and weights its run recorded.
    Sample { run: PathBuf, id: String, text: String, recorded: Vec<DocumentRef>, mode: Mode },
}

/// One hit as shown: its rank data, and the weight eq. 2 gives it when it is among the k mixed.
pub struct Row {
    pub id: String,
    pub title: String,
    pub score: f32,
    pub weight: Option<f64>,
    /// The weight the sample's run recorded for this document, if it recorded it.
    pub recorded: Option<f64>,
    pub passage: Highlight,
}

pub struct CorpusScreen {
    workspace: Workspace,
    pub entries: Vec<Entry>,
    pub selected: usize,
    lengths: Option<(PathBuf, Lengths)>,
    building: Option<Building>,
    searcher: Option<(PathBuf, Searcher)>,
    pub query: Query,
    /// The query being typed (`/`); each key searches again.
    pub typing: Option<String>,
    pub rows: Vec<Row>,
    /// Recorded documents retrieval no longer gives.
    pub missing: Vec<DocumentRef>,
    /// Why there are no rows (no index, no match, an error).
    pub note: String,
    /// The workspace's generation settings: k and the weighting of a seed's or typed query's
    /// documents (a sample uses its run's).
    settings: Settings,
    /// The settings the rows were weighted with (a sample's run's, or `settings`).
    shown: Settings,
    scroll: usize,
    /// The domain's seed file as last read, with its modification time: `[` and `]` read it
    /// again only when it changed.
    seeds: Option<(PathBuf, Option<std::time::SystemTime>, crate::seeds::SeedFile)>,
}

impl CorpusScreen {
    /// The screen, empty until [`CorpusScreen::rescan`] (the tab's first showing) lists the corpora.
    pub fn new(workspace: &Workspace, settings: &Settings) -> CorpusScreen {
        CorpusScreen {
            workspace: workspace.clone(),
            entries: Vec::new(),
            selected: 0,
            lengths: None,
            building: None,
            searcher: None,
            query: Query::Empty,
            typing: None,
            rows: Vec::new(),
            missing: Vec::new(),
            note: String::new(),
            settings: settings.clone(),
            shown: settings.clone(),
            scroll: 0,
            seeds: None,
        }
    }

    /// Lists the corpora folder again: each `.jsonl` file with the index beside it, and indexes
    /// found without their file. The selection stays on the same index where it can.
    pub fn rescan(&mut self) {
        let keep = self.entries.get(self.selected).map(|e| e.index.clone());
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.workspace.corpora_dir())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        found.sort();
        let mut entries: Vec<Entry> = Vec::new();
        for p in found.iter().filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "jsonl")) {
            let index = index_beside(p);
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let state = IndexState::of(Some(p), &index);
            entries.push(Entry { name, source: Some(p.clone()), index, state });
        }
        for p in found.iter().filter(|p| crate::corpus::is_index(p) && !crate::corpus::is_build_folder(p)) {
            if !entries.iter().any(|e| &e.index == p) {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let state = IndexState::of(None, p);
                entries.push(Entry { name, source: None, index: p.clone(), state });
            }
        }
        // A sample's index from outside the corpora folder stays listed.
        if let Some(extra) = keep.as_ref().filter(|k| !entries.iter().any(|e| &e.index == *k)) {
            if let Some(e) = self.entries.iter().find(|e| &e.index == extra) {
                entries.push(Entry { state: IndexState::of(e.source.as_deref(), extra), ..e.clone() });
            }
        }
        self.entries = entries;
        self.selected = keep.and_then(|k| self.entries.iter().position(|e| e.index == k)).unwrap_or(0);
        self.select(self.selected);
    }

    pub fn is_typing(&self) -> bool {
        self.typing.is_some()
    }

    pub fn is_building(&self) -> bool {
        self.building.is_some()
    }

    fn entry(&self) -> Option<&Entry> {
        self.entries.get(self.selected)
    }

    /// Selects corpus `ix`: its lengths are read (on a thread) and the query asked of it.
    fn select(&mut self, ix: usize) {
        self.selected = ix.min(self.entries.len().saturating_sub(1));
        let Some(e) = self.entry().cloned() else {
            self.lengths = None;
            self.rows.clear();
            self.note =
                format!("no corpora in {}: put NAME.corpus.jsonl files there", self.workspace.corpora_dir().display());
            return;
        };
        let source = e.source.clone();
        match source {
            Some(src) if self.lengths.as_ref().is_none_or(|(p, _)| p != &src) => {
                let read = Arc::new(AtomicUsize::new(0));
                let (tx, rx) = std::sync::mpsc::channel();
                let counter = read.clone();
                let path = src.clone();
                std::thread::spawn(move || {
                    let r = Profile::read(&path, &mut |n| counter.store(n, Ordering::Relaxed));
                    let _ = tx.send(r.map_err(|e| e.to_string()));
                });
                self.lengths = Some((src, Lengths::Reading { rx, read }));
            }
            Some(_) => {}
            None => self.lengths = None,
        }
        self.ask();
    }

    /// The searcher of the selected corpus's index, opened once.
    fn searcher(&mut self) -> Result<&Searcher, String> {
        let Some(e) = self.entries.get(self.selected) else { return Err("no corpus".into()) };
        if self.building.as_ref().is_some_and(|b| b.index == e.index) {
            return Err("the index is being built".into());
        }
        if !matches!(e.state, IndexState::Current { .. } | IndexState::Stale { .. }) {
            return Err(format!("the index {}; b builds it", e.state.describe()));
        }
        if self.searcher.as_ref().is_none_or(|(p, _)| p != &e.index) {
            let s = Searcher::open(&e.index).map_err(|e| e.to_string())?;
            self.searcher = Some((e.index.clone(), s));
        }
        Ok(&self.searcher.as_ref().expect("opened above").1)
    }

    /// Asks the current query of the selected corpus.
    fn ask(&mut self) {
        self.rows.clear();
        self.missing.clear();
        self.scroll = 0;
        let (text, k, weighted) = match &self.query {
            Query::Empty => {
                self.note = "/ types a query; [ ] take the domain's seeds; the Review tab's c shows a sample's".into();
                return;
            }
            Query::Typed(t) => (t.clone(), SEARCH_HITS.max(self.settings.k), true),
            Query::Seed { text, .. } => (text.clone(), self.settings.k, true),
            Query::Sample { text, mode, .. } => {
                let k = match mode {
                    Mode::None => 0,
                    Mode::Top1 => 1,
                    Mode::Marginal => self.shown.k,
                };
                (text.clone(), k, *mode != Mode::None)
            }
        };
        if !matches!(self.query, Query::Sample { .. }) {
            self.shown = self.settings.clone();
        }
        let settings = self.shown.clone();
        let recorded = match &self.query {
            Query::Sample { recorded, .. } => recorded.clone(),
            _ => Vec::new(),
        };
        if k == 0 && recorded.is_empty() {
            self.note = "this sample was generated without documents (mode none)".into();
            return;
        }
        let hits = match self
            .searcher()
            .and_then(|s| s.search_highlighted(&text, k.max(1), PASSAGE).map_err(|e| e.to_string()))
        {
            Ok(h) => h,
            Err(e) => {
                self.note = e;
                return;
            }
        };
        // Eq. 2 mixes the k best; their weights come from their scores alone.
        let mixed = settings.k.min(hits.len());
        let scores: Vec<f32> = hits.iter().take(mixed).map(|(h, _)| h.score).collect();
        let weights = if weighted && mixed > 0 { settings.weighting.weights(&scores) } else { Vec::new() };
        for (i, (hit, passage)) in hits.into_iter().enumerate() {
            let recorded_w = recorded.iter().find(|d| d.id == hit.id).map(|d| d.weight);
            self.rows.push(Row {
                id: hit.id,
                title: hit.title,
                score: hit.score,
                weight: weights.get(i).copied(),
                recorded: recorded_w,
                passage,
            });
        }
        self.missing = recorded.into_iter().filter(|d| !self.rows.iter().any(|r| r.id == d.id)).collect();
        self.note = if self.rows.is_empty() { "no document matches".into() } else { String::new() };
    }

    /// Shows what retrieval gives sample `id` of the generation run `run`: the run's index
    /// selected (listed if it is outside the corpora folder), its settings, its recorded weights.
    pub fn show_sample(&mut self, run: &Path, id: &str) -> Outcome {
        let job = match crate::runs::read_job::<Job>(run, crate::runs::Kind::Generate) {
            Ok(Some(job)) => job,
            Ok(None) => return Outcome::Error(format!("{} has no config.yaml", run.display())),
            Err(e) => return Outcome::Error(format!("{e:#}")),
        };
        let store = crate::generate::samples::SampleStore::open(&run.join(crate::generate::pipeline::SAMPLES));
        let sample = match store {
            Ok((s, _)) => s.samples().iter().find(|s| s.id == id).cloned(),
            Err(e) => return Outcome::Error(e.to_string()),
        };
        let Some(sample) = sample else { return Outcome::Error(format!("{} has no sample {id}", run.display())) };
        let Some(index) = job.corpus.clone() else {
            return Outcome::Error(format!("{id} was generated without a corpus (mode {})", job.mode));
        };
        let same = |a: &Path, b: &Path| a == b || std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok();
        let ix = match self.entries.iter().position(|e| same(&e.index, &index)) {
            Some(ix) => ix,
            None => {
                let name = index.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let state = IndexState::of(None, &index);
                self.entries.push(Entry { name, source: None, index, state });
                self.entries.len() - 1
            }
        };
        self.shown = job.settings.clone();
        self.query = Query::Sample {
            run: run.to_path_buf(),
            id: id.to_string(),
            text: format!("{}\n{}", sample.instruction, sample.input),
            recorded: sample.provenance.documents.clone(),
            mode: sample.provenance.mode.unwrap_or(job.mode),
        };
        self.select(ix);
        Outcome::Done
    }

    /// The seeds of the selected corpus's domain: the seed file named like it, if any.
    fn domain_seeds(&mut self) -> Result<(PathBuf, crate::seeds::SeedFile), String> {
        let e = self.entry().ok_or("no corpus")?;
        let file = self.workspace.seeds_dir().join(format!("{}.yaml", corpus_name(&e.name)));
        if !file.exists() {
            return Err(format!("no seed file {} for this corpus", file.display()));
        }
        let modified = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
        if let Some((f, m, seeds)) = &self.seeds {
            if f == &file && *m == modified && modified.is_some() {
                return Ok((file, seeds.clone()));
            }
        }
        let loaded = crate::seeds::command::load_usable(&file, &crate::seeds::Limits::default())
            .map_err(|e| format!("{e:#}"))?;
        self.seeds = Some((file.clone(), modified, loaded.file.clone()));
        Ok((file, loaded.file))
    }

    fn step_seed(&mut self, by: isize) -> Outcome {
        let (file, seeds) = match self.domain_seeds() {
            Ok(s) => s,
            Err(e) => return Outcome::Error(e),
        };
        let n = seeds.seeds.len();
        if n == 0 {
            return Outcome::Error(format!("{} has no seeds", file.display()));
        }
        let ix = match &self.query {
            Query::Seed { file: f, ix, .. } if f == &file => (*ix as isize + by).rem_euclid(n as isize) as usize,
            _ if by < 0 => n - 1,
            _ => 0,
        };
        let seed = &seeds.seeds[ix];
        self.query =
            Query::Seed { file, ix, id: seed.id.clone(), text: format!("{}\n{}", seed.instruction, seed.input) };
        self.ask();
        Outcome::Done
    }

    /// Builds the selected corpus's index on a thread; a rebuild replaces the old one only
    /// when the new one is complete.
    fn build(&mut self) -> Outcome {
        if self.building.is_some() {
            return Outcome::Error("an index is being built".into());
        }
        let Some(e) = self.entry().cloned() else { return Outcome::Error("no corpus".into()) };
        let Some(source) = e.source.clone() else {
            return Outcome::Error(format!("{} has no corpus file beside it to build from", e.index.display()));
        };
        if self.searcher.as_ref().is_some_and(|(p, _)| p == &e.index) {
            self.searcher = None;
        }
        let read = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let counter = read.clone();
        let index = e.index.clone();
        std::thread::spawn(move || {
            let r = crate::corpus::rebuild(&source, &index, &mut |n, _| counter.store(n, Ordering::Relaxed));
            let _ = tx.send(r.map_err(|e| e.to_string()));
        });
        self.building = Some(Building { index: e.index, rx, read, started: Instant::now() });
        self.note = "building the index…".into();
        self.rows.clear();
        Outcome::Done
    }

    /// Picks up lengths read and a finished build.
    pub fn tick(&mut self) -> Option<Outcome> {
        if let Some((_, Lengths::Reading { rx, .. })) = &self.lengths {
            let got = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => Some(Err("the reader stopped".into())),
            };
            if let (Some(r), Some((_, l))) = (got, self.lengths.as_mut()) {
                *l = match r {
                    Ok(p) => Lengths::Ready(p),
                    Err(e) => Lengths::Failed(e),
                };
            }
        }
        let b = self.building.as_ref()?;
        let done = match b.rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err("the build stopped".into()),
        };
        let index = b.index.clone();
        self.building = None;
        self.rescan();
        let name = index.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Some(match done {
            Ok(stats) => {
                self.ask();
                Outcome::Notice(format!("{name}: {} documents indexed in {:.1} s", stats.documents, stats.seconds))
            }
            Err(e) => Outcome::Error(format!("building {name} failed: {e}")),
        })
    }

    /// Waits (for tests) until the lengths are read and no index is being built.
    pub fn settle(&mut self, limit: std::time::Duration) -> Option<Outcome> {
        let until = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < until {
            if let Some(o) = self.tick() {
                last = Some(o);
            }
            if self.building.is_none() && !matches!(self.lengths, Some((_, Lengths::Reading { .. }))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        last
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Outcome {
        if let Some(text) = self.typing.as_mut() {
            let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
            match key.code {
                KeyCode::Enter => self.typing = None,
                KeyCode::Esc => {
                    self.typing = None;
                    self.query = Query::Empty;
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char('u') if ctrl => text.clear(),
                KeyCode::Char(c) if !ctrl => text.push(c),
                _ => return Outcome::Done,
            }
            if let Some(t) = &self.typing {
                self.query = if t.trim().is_empty() { Query::Empty } else { Query::Typed(t.clone()) };
            }
            self.ask();
            return Outcome::Done;
        }
        match key.code {
            KeyCode::Char('j') | KeyCode::Down => {
                self.select((self.selected + 1).min(self.entries.len().saturating_sub(1)))
            }
            KeyCode::Char('k') | KeyCode::Up => self.select(self.selected.saturating_sub(1)),
            KeyCode::Char('/') => {
                let now = match &self.query {
                    Query::Typed(t) => t.clone(),
                    _ => String::new(),
                };
                self.typing = Some(now);
            }
            KeyCode::Char(']') => return self.step_seed(1),
            KeyCode::Char('[') => return self.step_seed(-1),
            KeyCode::Char('b') => return self.build(),
            KeyCode::Char('R') => self.rescan(),
            KeyCode::PageDown | KeyCode::Char('J') => {
                self.scroll = (self.scroll + 1).min(self.rows.len().saturating_sub(1))
            }
            KeyCode::PageUp | KeyCode::Char('K') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Esc => {
                self.query = Query::Empty;
                self.ask();
            }
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    pub fn status_line(&self) -> String {
        match self.entry() {
            Some(e) => format!("{} · index {}", e.name, e.state.describe()),
            None => "no corpora".into(),
        }
    }
}
