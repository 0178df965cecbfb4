//! The Generate screen: choose seeds, model, corpus, mode and N; start and stop a generation
//! run; watch instructions stream in, the counters, and a progress bar with ETA.
//!
//! The run is `selfspec generate` started detached ([`crate::runs::spawn`]; the same command a
//! user would type), followed through its events.jsonl: the model never blocks the interface,
//! the run outlives the workbench and the SSH session, and `selfspec attach RUN` shows it from
//! any terminal. `x` asks it to stop (SIGTERM to the proven holder of the run's lock): it
//! finishes its current token and is continued by starting it again.
//!
//! With no model set, `F` fetches the default model ([`crate::model::fetching::fetch`]) on a thread, with
//! a progress bar, and sets it as the model when its hash checks out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph, Wrap};
use ratatui::Frame;

use super::shared::{truncate, Outcome};
use super::theme::Theme;
use crate::generate::follow::Generation;
use crate::generate::pipeline::{Mode, Progress};
use crate::runs::Following;
use crate::workspace::Workspace;

use crate::model::fetching::fetch::{self, Fetchable};

mod view;

const FIELDS: [&str; 6] = ["Seeds", "Model", "Adapter", "Corpus", "Mode", "N"];

/// A fetch of a fetchable model in progress.
struct Fetching {
    model: &'static Fetchable,
    rx: Receiver<FetchMessage>,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stage: &'static str,
    done: u64,
    total: u64,
}

enum FetchMessage {
    Event(crate::model::fetching::fetch::Event),
    Done(anyhow::Result<PathBuf>),
}

/// A choice of the Adapter setting: a trained adapter (the second round), plain or contrastive.
pub struct AdapterChoice {
    pub label: String,
    pub dir: Option<PathBuf>,
    pub contrastive: bool,
}

pub struct GenerateScreen {
    /// Index 0 is "none" (the base model).
    pub adapters: Vec<AdapterChoice>,
    pub adapter_ix: usize,
    pub seed_files: Vec<PathBuf>,
    pub seed_ix: usize,
    /// Index 0 is "none".
    pub corpora: Vec<PathBuf>,
    pub corpus_ix: usize,
    pub mode: Mode,
    pub model: String,
    pub n: usize,
    pub field: usize,
    /// The text being typed into Model or N.
    pub typing: Option<String>,
    /// The run being followed (started here, or attached).
    following: Option<Following<Progress>>,
    /// The run of the last start, continued by the next start if nothing changed.
    last_run: Option<(PathBuf, String)>,
    /// What the run reported.
    pub view: Generation,
    config_file: PathBuf,
    workspace: Workspace,
    /// selfspec's cache folder (where `F` fetches the default model to).
    pub cache_dir: PathBuf,
    fetching: Option<Fetching>,
}

impl GenerateScreen {
    pub fn new(
        workspace: &Workspace,
        config_file: &Path,
        model: Option<String>,
        seeds: Option<&Path>,
    ) -> GenerateScreen {
        let model_set = model.as_ref().is_some_and(|m| !m.trim().is_empty());
        let seed_files = workspace.seed_files().unwrap_or_default();
        let seed_ix = seeds.and_then(|s| seed_files.iter().position(|f| f == s)).unwrap_or(0);
        let mut corpora = vec![PathBuf::new()];
        if let Ok(rd) = std::fs::read_dir(workspace.corpora_dir()) {
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "jsonl")
                        || (crate::corpus::is_index(p) && !crate::corpus::is_build_folder(p))
                })
                .collect();
            found.sort();
            corpora.extend(found);
        }
        let mut screen = GenerateScreen {
            adapters: Vec::new(),
            adapter_ix: 0,
            seed_files,
            seed_ix,
            corpora,
            corpus_ix: 0,
            mode: Mode::None,
            model: model.unwrap_or_default(),
            n: 100,
            field: 0,
            typing: None,
            following: None,
            last_run: None,
            view: Generation {
                state: if model_set {
                    "ready: s starts".into()
                } else {
                    format!(
                        "no model: F fetches {} ({} MB), ←→ picks another, or Enter on Model to type one",
                        fetch::DEFAULT.name,
                        fetch::DEFAULT.gguf_bytes / 1_000_000
                    )
                },
                ..Generation::default()
            },
            config_file: config_file.to_path_buf(),
            workspace: workspace.clone(),
            cache_dir: PathBuf::new(),
            fetching: None,
        };
        screen.match_corpus();
        screen.rescan_adapters();
        screen
    }

    /// The adapters of finished training runs, each plain and contrastive.
    pub fn rescan_adapters(&mut self) {
        let current = self.adapters.get(self.adapter_ix).map(|a| (a.dir.clone(), a.contrastive));
        let mut list = vec![AdapterChoice { label: "none".into(), dir: None, contrastive: false }];
        for (name, dir) in super::shared::trained_adapters(&self.workspace) {
            list.push(AdapterChoice { label: name.clone(), dir: Some(dir.clone()), contrastive: false });
            list.push(AdapterChoice { label: format!("{name}, contrastive"), dir: Some(dir), contrastive: true });
        }
        self.adapters = list;
        self.adapter_ix =
            current.and_then(|(d, c)| self.adapters.iter().position(|a| a.dir == d && a.contrastive == c)).unwrap_or(0);
    }

    /// Picks the corpus named like the chosen seed file (finance.yaml → finance.corpus.jsonl).
    fn match_corpus(&mut self) {
        let Some(stem) =
            self.seed_files.get(self.seed_ix).and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().to_string())
        else {
            return;
        };
        if let Some(i) = self
            .corpora
            .iter()
            .position(|c| c.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}."))))
        {
            self.corpus_ix = i;
            self.mode = Mode::Marginal;
        }
    }

    pub fn is_running(&self) -> bool {
        self.following.is_some()
    }

    pub fn is_typing(&self) -> bool {
        self.typing.is_some()
    }

    fn form_key(&self) -> String {
        format!(
            "{:?}|{}|{:?}|{:?}|{:?}",
            self.seed_files.get(self.seed_ix),
            self.model,
            self.corpora.get(self.corpus_ix),
            self.mode,
            self.adapters.get(self.adapter_ix).map(|a| (&a.dir, a.contrastive))
        )
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Outcome {
        if let Some(text) = self.typing.as_mut() {
            match key.code {
                KeyCode::Enter => {
                    let text = self.typing.take().unwrap_or_default();
                    if self.field == 5 {
                        match text.trim().parse::<usize>() {
                            Ok(n) if n > 0 => self.n = n,
                            _ => return Outcome::Error(format!("N must be a whole number ≥ 1, not {text:?}")),
                        }
                    } else {
                        self.model = text.trim().to_string();
                    }
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return Outcome::Done;
        }
        match key.code {
            KeyCode::Char('j') | KeyCode::Down | KeyCode::Tab => self.field = (self.field + 1) % FIELDS.len(),
            KeyCode::Char('k') | KeyCode::Up | KeyCode::BackTab => {
                self.field = (self.field + FIELDS.len() - 1) % FIELDS.len()
            }
            KeyCode::Left | KeyCode::Char('h') => self.cycle(-1),
            KeyCode::Right | KeyCode::Char('l') => self.cycle(1),
            KeyCode::Enter | KeyCode::Char('e') if self.field == 1 || self.field == 5 => {
                if self.following.is_some() {
                    return Outcome::Error("stop the run (x) before changing it".into());
                }
                self.typing = Some(if self.field == 1 { self.model.clone() } else { self.n.to_string() });
            }
            KeyCode::Enter => self.cycle(1),
            KeyCode::Char('s') => return self.start(),
            KeyCode::Char('x') if self.fetching.is_some() => {
                if let Some(f) = &self.fetching {
                    f.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            KeyCode::Char('x') => return self.stop(),
            KeyCode::Char('F') => return self.start_fetch(),
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    fn cycle(&mut self, delta: isize) {
        if self.following.is_some() {
            return;
        }
        let step = |i: usize, n: usize| ((i as isize + delta).rem_euclid(n.max(1) as isize)) as usize;
        match self.field {
            1 => {
                // The fetchable models in turn: a fetched one by its path, another by its id
                // (F fetches it).
                let models = &fetch::MODELS;
                let i = match self.fetchable() {
                    Some(m) => step(models.iter().position(|x| x == m).unwrap_or(0), models.len()),
                    None if delta < 0 => models.len() - 1,
                    None => 0,
                };
                let m = &models[i];
                match m.installed(&self.cache_dir) {
                    Some(p) => {
                        self.model = p.display().to_string();
                        self.view.error = false;
                        self.view.state = match m.terms_notice_once(&self.cache_dir) {
                            Some(notice) => notice,
                            None => format!("{}: {}; s starts", m.name, m.about),
                        };
                    }
                    None => {
                        self.model = m.id.to_string();
                        self.view.state = format!(
                            "{} is not fetched: F fetches it ({} MB; {})",
                            m.name,
                            m.gguf_bytes / 1_000_000,
                            m.license
                        );
                    }
                }
            }
            0 => {
                self.seed_ix = step(self.seed_ix, self.seed_files.len());
                self.match_corpus();
            }
            2 => {
                self.rescan_adapters();
                self.adapter_ix = step(self.adapter_ix, self.adapters.len());
            }
            3 => {
                self.corpus_ix = step(self.corpus_ix, self.corpora.len());
                if self.corpus_ix == 0 {
                    self.mode = Mode::None;
                } else if self.mode == Mode::None {
                    self.mode = Mode::Marginal;
                }
            }
            4 => {
                let modes = [Mode::None, Mode::Top1, Mode::Marginal];
                let i = modes.iter().position(|m| *m == self.mode).unwrap_or(0);
                self.mode = modes[step(i, 3)];
                if self.mode != Mode::None && self.corpus_ix == 0 && self.corpora.len() > 1 {
                    self.corpus_ix = 1;
                }
            }
            _ => {}
        }
    }

    fn start(&mut self) -> Outcome {
        if self.following.is_some() {
            return Outcome::Error("a run is going; x stops it".into());
        }
        let Some(seeds) = self.seed_files.get(self.seed_ix).cloned() else {
            return Outcome::Error("no seed file in the workspace's seeds/ folder".into());
        };
        if self.model.trim().is_empty() {
            self.field = 1;
            return Outcome::Error("choose a model first: ←→ on Model, or Enter to type one".into());
        }
        if let Some(m) = self.fetchable().filter(|m| m.installed(&self.cache_dir).is_none()) {
            self.field = 1;
            return Outcome::Error(format!("{} is not fetched yet: F fetches it", m.name));
        }
        if self.mode != Mode::None && self.corpus_ix == 0 {
            return Outcome::Error(format!("mode {} needs a corpus", self.mode.as_str()));
        }
        // A JSONL corpus goes to the run as it is: the run's process indexes it (off this
        // thread), by the same rule as the command line.
        let corpus =
            self.corpora.get(self.corpus_ix).filter(|_| self.corpus_ix > 0 && self.mode != Mode::None).cloned();
        let form = self.form_key();
        let run_dir = match &self.last_run {
            Some((dir, key)) if *key == form => dir.clone(),
            _ => {
                let stem = seeds.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.workspace.runs_dir().join(format!("gen-{stem}-{secs}"))
            }
        };
        let seed = run_seed(&run_dir);
        if let Err(e) = std::fs::create_dir_all(&run_dir) {
            return Outcome::Error(format!("cannot create {}: {e}", run_dir.display()));
        }
        let adapter = self.adapters.get(self.adapter_ix).and_then(|a| a.dir.clone().map(|d| (d, a.contrastive)));
        let launch = crate::launch::Launch::Generate(crate::launch::Generate {
            seeds,
            model: self.model.trim().to_string(),
            n: self.n,
            seed,
            mode: self.mode,
            run: run_dir.clone(),
            corpus,
            contrastive: adapter.as_ref().is_some_and(|(_, c)| *c),
            adapter: adapter.map(|(d, _)| d),
        });
        let child = match crate::launch::start(&self.config_file, &self.workspace.root, &launch) {
            Ok(c) => c,
            Err(e) => return Outcome::Error(e),
        };
        self.last_run = Some((run_dir.clone(), form));
        self.follow(&run_dir, Some(child));
        self.view.state = format!("starting: loading {}", self.model.trim());
        Outcome::Notice(format!("generating into {} (detached; q leaves it running)", run_dir.display()))
    }

    /// Shows the run in `dir` (from its first event) and follows it while it goes.
    pub fn follow(&mut self, dir: &Path, child: Option<crate::runs::Spawned>) {
        // The form shows the run's own settings, so `s` after it ends continues this run.
        if let Ok(Some(job)) = crate::runs::read_job::<crate::generate::pipeline::Job>(dir, crate::runs::Kind::Generate)
        {
            self.n = job.n;
            self.mode = job.mode;
            self.model = job.model.clone();
            if let Some(i) = self.seed_files.iter().position(|f| *f == job.seeds) {
                self.seed_ix = i;
            }
            self.last_run = Some((dir.to_path_buf(), self.form_key()));
        } else if self.last_run.as_ref().is_none_or(|(d, _)| d != dir) {
            self.last_run = Some((dir.to_path_buf(), String::new()));
        }
        self.view = Generation { target: self.n, ..Generation::default() };
        self.following = Some(Following::new(dir, child));
        self.tick();
    }

    pub fn stop(&mut self) -> Outcome {
        let Some(f) = self.following.as_ref() else { return Outcome::Error("nothing is running".into()) };
        match crate::runs::stop(&f.dir) {
            Ok(_) => {
                self.view.state = "stopping after the current token…".into();
                Outcome::Done
            }
            Err(e) => Outcome::Error(e),
        }
    }

    /// Reads what the run reported since the last call.
    /// The fetchable model the Model field names (by id, or by its fetched path), if any.
    fn fetchable(&self) -> Option<&'static Fetchable> {
        let model = self.model.trim();
        fetch::MODELS.iter().find(|m| m.id == model || Path::new(model) == m.path(&self.cache_dir))
    }

    /// Starts fetching, on a thread, the fetchable model the Model field names, else the
    /// default (`F`).
    fn start_fetch(&mut self) -> Outcome {
        if self.fetching.is_some() {
            return Outcome::Error("a model is being fetched already (x cancels)".into());
        }
        if self.following.is_some() {
            return Outcome::Error("stop the run (x) before fetching a model".into());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cache, stop) = (self.cache_dir.clone(), cancel.clone());
        let model = self.fetchable().unwrap_or(fetch::DEFAULT);
        std::thread::spawn(move || {
            let events = tx.clone();
            let mut on_event = |e| {
                let _ = events.send(FetchMessage::Event(e));
            };
            let result = fetch::fetch(model, &cache, false, &mut on_event, &stop);
            let _ = tx.send(FetchMessage::Done(result));
        });
        self.fetching = Some(Fetching { model, rx, cancel, stage: "start", done: 0, total: 0 });
        self.view.error = false;
        self.view.state = format!("fetching {} with pip (x cancels)", model.name);
        Outcome::Done
    }

    pub fn is_fetching(&self) -> bool {
        self.fetching.is_some()
    }

    /// Takes what the fetch thread reported.
    fn tick_fetch(&mut self) -> Option<Outcome> {
        use crate::model::fetching::fetch::Event;
        let f = self.fetching.as_mut()?;
        loop {
            match f.rx.try_recv() {
                Ok(FetchMessage::Event(Event::Stage(s))) => (f.stage, f.done, f.total) = (s, 0, 0),
                Ok(FetchMessage::Event(Event::Progress { done, total })) => (f.done, f.total) = (done, total),
                Ok(FetchMessage::Event(Event::Log(_))) => {}
                Ok(FetchMessage::Done(result)) => {
                    let model = f.model;
                    self.fetching = None;
                    return Some(match result {
                        Ok(path) => {
                            self.model = path.display().to_string();
                            self.view.state = match model.terms_notice_once(&self.cache_dir) {
                                Some(notice) => format!("{} fetched and checked. {notice} s starts", model.name),
                                None => format!("{} fetched and checked; s starts", model.name),
                            };
                            Outcome::Done
                        }
                        Err(e) => {
                            self.view.state = format!("fetch failed: {e}");
                            self.view.error = true;
                            Outcome::Error(format!("fetch failed: {e}"))
                        }
                    });
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.fetching = None;
                    self.view.error = true;
                    self.view.state = "the fetch stopped without a result".into();
                    return Some(Outcome::Error(self.view.state.clone()));
                }
            }
        }
    }

    pub fn tick(&mut self) -> Option<Outcome> {
        if let Some(outcome) = self.tick_fetch() {
            return Some(outcome);
        }
        let f = self.following.as_mut()?;
        // Asked before reading, so no event written before the end is missed.
        let running = f.running();
        f.poll(&mut self.view);
        if running {
            return None;
        }
        let mut f = self.following.take()?;
        self.view.notes.extend(f.torn());
        self.view.current = None;
        self.view.response = None;
        match f.refresh_state() {
            crate::runs::State::Failed(e) if !self.view.ended => self.view.fail(e),
            crate::runs::State::Interrupted | crate::runs::State::New if !self.view.ended => {
                let said = crate::runs::last_output(&f.dir).unwrap_or_else(|| "no message".into());
                self.view.fail(&said);
            }
            _ => {}
        }
        if self.view.error && self.view.state.starts_with("failed") {
            return Some(Outcome::Error(format!(
                "generation failed; see {}",
                f.dir.join(crate::runs::OUTPUT).display()
            )));
        }
        None
    }

    /// Applies one event of the run.
    pub fn apply(&mut self, p: Progress) {
        self.view.apply(p);
    }

    /// On exit: a run going on is left to go on (it is detached); the message says where.
    pub fn shutdown(&mut self) -> Option<String> {
        if let Some(f) = self.fetching.take() {
            // The fetch thread kills pip and removes its temporary folder when it sees this.
            f.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = f.rx.recv_timeout(Duration::from_secs(3));
            while let Ok(FetchMessage::Event(_)) = f.rx.recv_timeout(Duration::from_secs(3)) {}
        }
        let f = self.following.as_ref()?;
        Some(format!(
            "generation goes on in {}; `selfspec attach {}` follows it, `selfspec stop {}` stops it",
            f.dir.display(),
            f.dir.display(),
            f.dir.display()
        ))
    }

    pub fn run_dir(&self) -> Option<&Path> {
        self.last_run.as_ref().map(|(d, _)| d.as_path())
    }

    /// N of the run shown, else of the form.
    fn goal(&self) -> usize {
        if self.view.target == 0 {
            self.n
        } else {
            self.view.target
        }
    }

    /// Seconds the shown session has gone on: to now while it runs, else to its last event.
    fn elapsed(&self) -> f64 {
        if self.following.is_some() && self.view.session_start > 0.0 {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            (now - self.view.session_start).max(0.0)
        } else {
            self.view.session_secs()
        }
    }
}

/// The seed of a run: the one its config.yaml records, else a new one from the clock.
fn run_seed(dir: &Path) -> u64 {
    let recorded = crate::runs::read_job::<crate::generate::pipeline::Job>(dir, crate::runs::Kind::Generate)
        .ok()
        .flatten()
        .map(|j| j.seed);
    recorded.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(0)
    })
}
