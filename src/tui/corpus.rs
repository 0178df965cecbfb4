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

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let longest = self.entries.iter().map(|e| e.name.width()).max().unwrap_or(0) as u16;
        let list_width = (longest + 4).clamp(16, 32).min(area.width / 3);
        let [list, detail] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        self.render_list(frame, list, theme);
        self.render_detail(frame, detail, theme);
    }

    fn render_list(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = super::shared::panel(frame, area, " Corpora ", theme.border, theme);
        let w = inner.width as usize;
        let lines: Vec<Line> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mark = match (&e.state, self.building.as_ref().is_some_and(|b| b.index == e.index)) {
                    (_, true) => Span::styled("⟳ ", theme.warning),
                    (IndexState::Current { .. }, _) => Span::styled("✓ ", theme.ok),
                    (IndexState::Stale { .. }, _) => Span::styled("! ", theme.warning),
                    (IndexState::Missing, _) => Span::styled("· ", theme.muted),
                    (IndexState::Broken { .. }, _) => Span::styled("✗ ", theme.error),
                };
                let style = if i == self.selected { theme.selection } else { theme.base };
                Line::from(vec![mark, Span::styled(truncate(&e.name, w.saturating_sub(2)), style)])
            })
            .collect();
        let [list, legend] = Layout::vertical([Constraint::Min(0), Constraint::Length(2)]).areas(inner);
        frame.render_widget(Paragraph::new(lines).style(theme.base), list);
        let legend_text = "✓ indexed  ! stale\n· no index  ⟳ building";
        frame.render_widget(Paragraph::new(legend_text).style(theme.muted), legend);
    }

    fn render_detail(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let title = self.entry().map_or(" Corpus ".to_string(), |e| format!(" {} ", e.name));
        let inner = super::shared::panel(frame, area, &title, theme.border, theme);
        let w = inner.width as usize;
        let mut head: Vec<Line> = Vec::new();
        let Some(e) = self.entry() else {
            frame.render_widget(
                Paragraph::new(self.note.clone()).style(theme.muted).wrap(ratatui::widgets::Wrap { trim: false }),
                inner,
            );
            return;
        };
        match &self.lengths {
            Some((_, Lengths::Reading { read, .. })) => {
                head.push(Line::styled(format!("reading… {} documents", read.load(Ordering::Relaxed)), theme.muted));
            }
            Some((_, Lengths::Ready(p))) => {
                let size = match p.bytes {
                    b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
                    b => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
                };
                head.push(Line::from(vec![
                    Span::styled(format!("{} documents", p.documents), theme.accent),
                    Span::styled(format!(" · {size}"), theme.muted),
                ]));
                head.push(Line::from(vec![
                    Span::styled("words ", theme.muted),
                    Span::styled(
                        truncate(&format!("min {} · median {} · p90 {} · max {}", p.min, p.median, p.p90, p.max), w),
                        theme.base,
                    ),
                ]));
                head.push(histogram(p, theme));
                if let Some(first) = p.problems.first() {
                    let more = p.problems.len() - 1;
                    let text = if more > 0 { format!("{first} (and {more} more)") } else { first.clone() };
                    head.push(Line::styled(truncate(&text, w), theme.error));
                }
            }
            Some((_, Lengths::Failed(msg))) => head.push(Line::styled(truncate(msg, w), theme.error)),
            None => head.push(Line::styled("an index without its corpus file", theme.muted)),
        }
        head.push(match &self.building {
            Some(b) if b.index == e.index => {
                let n = b.read.load(Ordering::Relaxed);
                let total = match &self.lengths {
                    Some((_, Lengths::Ready(p))) if p.documents > 0 => Some(p.documents),
                    _ => None,
                };
                let secs = b.started.elapsed().as_secs_f64();
                let text = match total {
                    Some(t) => {
                        let share = (n as f64 / t as f64).min(1.0);
                        let bar = (share * 20.0) as usize;
                        format!("building {}{} {n}/{t} documents · {secs:.1} s", "█".repeat(bar), "░".repeat(20 - bar))
                    }
                    None => format!("building: {n} documents · {secs:.1} s"),
                };
                Line::styled(text, theme.warning)
            }
            _ => {
                let style = match e.state {
                    IndexState::Current { .. } => theme.ok,
                    IndexState::Missing => theme.muted,
                    _ => theme.warning,
                };
                Line::from(vec![Span::styled("index ", theme.muted), Span::styled(e.state.describe(), style)])
            }
        });
        head.push(self.query_line(theme, w));
        let [top, body] = Layout::vertical([Constraint::Length(head.len() as u16), Constraint::Min(0)]).areas(inner);
        frame.render_widget(Paragraph::new(head).style(theme.base), top);
        let mut lines: Vec<Line> = Vec::new();
        if !self.rows.is_empty() {
            lines.push(Line::styled(truncate(&self.weighting_line(), w), theme.muted));
        }
        for (i, r) in self.rows.iter().enumerate().skip(self.scroll) {
            let mut spans = vec![
                Span::styled(format!("{:>2}. ", i + 1), theme.muted),
                Span::styled(format!("{:>6.2}", r.score), theme.base),
            ];
            if let Some(wt) = r.weight {
                spans.push(Span::styled(format!("  w {wt:.3}"), theme.accent));
            }
            if let Some(rec) = r.recorded {
                spans.push(Span::styled(format!(" (run: {rec:.3})"), theme.muted));
            }
            spans.push(Span::styled(format!("  {}  ", r.id), theme.key));
            let used: usize = spans.iter().map(|s| s.content.width()).sum();
            spans.push(Span::styled(truncate(&r.title, w.saturating_sub(used)), theme.title));
            lines.push(Line::from(spans));
            lines.extend(passage_lines(&r.passage, w, 2, theme.base, theme.search_match));
        }
        for d in &self.missing {
            lines.push(Line::styled(
                format!("    run used {} (w {:.3}); the index no longer ranks it here", d.id, d.weight),
                theme.warning,
            ));
        }
        if self.rows.is_empty() && !self.note.is_empty() {
            for (a, b) in super::editor::wrap_line(&self.note, w) {
                lines.push(Line::styled(self.note.chars().skip(a).take(b - a).collect::<String>(), theme.muted));
            }
        }
        frame.render_widget(Paragraph::new(lines).style(theme.base), body);
    }

    fn query_line(&self, theme: &Theme, w: usize) -> Line<'static> {
        let (label, text) = match (&self.typing, &self.query) {
            (Some(t), _) => ("query ".to_string(), format!("{t}▏")),
            (None, Query::Empty) => ("query ".into(), "(none)".into()),
            (None, Query::Typed(t)) => ("query ".into(), t.clone()),
            (None, Query::Seed { ix, id, text, .. }) => (format!("seed {} ({id}) ", ix + 1), text.replace('\n', " ")),
            (None, Query::Sample { id, text, .. }) => (format!("sample {id} "), text.replace('\n', " ")),
        };
        let rest = w.saturating_sub(label.chars().count());
        Line::from(vec![Span::styled(label, theme.key), Span::styled(truncate(&text, rest), theme.base)])
    }

    fn weighting_line(&self) -> String {
        let s = &self.shown;
        match &self.query {
            Query::Sample { mode: Mode::Top1, .. } => "top1: the best document alone conditions the response".into(),
            _ => format!("w: eq. 2 weights of the best {} ({})", s.k, s.weighting.describe()),
        }
    }
}

/// The length histogram on one line: each bucket's lower bound and a bar scaled to the largest.
fn histogram(p: &Profile, theme: &Theme) -> Line<'static> {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let most = p.histogram.iter().copied().max().unwrap_or(0).max(1);
    let mut spans = vec![Span::styled("lengths ", theme.muted)];
    let short = |n: u32| if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() };
    let lows = std::iter::once(0).chain(BUCKETS).enumerate().map(|(i, low)| match i == BUCKETS.len() {
        true => format!("{}+", short(low)),
        false => short(low),
    });
    for (low, &n) in lows.zip(&p.histogram) {
        let level = if n == 0 { 0 } else { (n * 8).div_ceil(most).clamp(1, 8) };
        spans.push(Span::styled(low.to_string(), theme.muted));
        spans.push(Span::styled(format!("{} ", BARS[level]), theme.accent));
    }
    Line::from(spans)
}

/// A hit's passage in at most `max_lines` lines of `width` columns, indented and wrapped at
/// words, with the query's words in `mark`; '…' ends a passage that was cut.
fn passage_lines(h: &Highlight, width: usize, max_lines: usize, base: Style, mark: Style) -> Vec<Line<'static>> {
    const INDENT: &str = "    ";
    let room = width.saturating_sub(INDENT.len()).max(2);
    // One char for one char, so the wrap's char ranges index both.
    let flat: String = h.text.chars().map(|c| if c.is_whitespace() { ' ' } else { c }).collect();
    let marked: Vec<bool> = h.text.char_indices().map(|(at, _)| h.marked.iter().any(|r| r.contains(&at))).collect();
    let chars: Vec<char> = flat.chars().collect();
    let ranges = super::editor::wrap_line(&flat, room);
    let cut = ranges.len() > max_lines;
    let mut out = Vec::new();
    for (n, &(start, end)) in ranges.iter().take(max_lines).enumerate() {
        let mut spans = vec![Span::raw(INDENT)];
        let mut end = end;
        if cut && n + 1 == max_lines {
            // Room for the ellipsis, after the line's last word.
            let width_of = |a: usize, b: usize| -> usize {
                chars[a..b].iter().map(|&c| unicode_width::UnicodeWidthChar::width(c).unwrap_or(0)).sum()
            };
            while end > start && (chars[end - 1] == ' ' || width_of(start, end) + 1 > room) {
                end -= 1;
            }
        }
        let mut i = start;
        while i < end {
            let m = marked[i];
            let j = (i..end).find(|&j| marked[j] != m).unwrap_or(end);
            spans.push(Span::styled(chars[i..j].iter().collect::<String>(), if m { mark } else { base }));
            i = j;
        }
        if cut && n + 1 == max_lines {
            spans.push(Span::styled("…", base));
        }
        out.push(Line::from(spans));
    }
    out
}
