//! The Sweeps screen: the workspace's sweeps with their state, each stage's run (generation per
//! seed count, training per point, the evaluation) with its state, and the curves of F1 against
//! the chosen axis — live: the scores are the means of the evaluation's predictions as they are
//! appended, read by offset.
//!
//! `n` opens the start panel: the workspace's sweep files (`<workspace>/sweeps/*.yaml`; a starter
//! file per domain is written when there is none), the chosen file's plan (`selfspec sweep
//! --plan`, computed on a thread), and `s` to start it detached into `runs/sweep-<file>`. `s` on a
//! sweep that is not running continues it.
//!
//! A Seeded LoRA sweep (`seeded:` in its file) lists its seed-expert, expert, LMC and eval
//! stages, and its chart is the loss along the line between each pair of a point's experts
//! (each point's `lmc.json`); `a` moves to the next point.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph};
use ratatui::Frame;

use super::shared::Outcome;
use super::theme::Theme;
use crate::eval::run::Prediction;
use crate::runs::{Following, Kind, State, Tail};
use crate::sweep::follow::Sweeping;
use crate::sweep::{layout, Point, Spec, SweepEvent};
use crate::workspace::Workspace;

mod view;

/// One sweep folder and what it holds.
pub struct SweepView {
    pub dir: PathBuf,
    pub spec: Option<Spec>,
    events: Following<SweepEvent>,
    /// What the sweep's log says (the stage being run).
    pub progress: Sweeping,
    predictions: Tail,
    /// Each stage, its run folder and its state as of the last refresh.
    pub stages: Vec<(String, PathBuf, State)>,
    /// (model, k) → dataset → example index → F1, as the evaluation's predictions come in.
    scores: BTreeMap<(String, usize), BTreeMap<String, BTreeMap<usize, f64>>>,
    /// The curves of the last draw, for as long as no new prediction arrives: (axis, count of
    /// predictions) and the (tuned, base, tuned's low band, tuned's high band) points.
    curves: std::cell::RefCell<Option<((String, usize), Curves)>>,
    /// Predictions read so far.
    seen: usize,
    /// A seeded sweep's LMC per point, as its points' `lmc.json` hold it (in point order).
    pub lmc: Vec<(String, Vec<crate::sweep::seeded::Pair>)>,
    /// What could not be read (event and prediction lines, LMC files), each naming its file and
    /// line: shown under the stages, never dropped silently. The first 20 are kept.
    pub left_out: Vec<String>,
}

impl SweepView {
    pub fn open(dir: &Path) -> SweepView {
        let mut v = SweepView {
            dir: dir.to_path_buf(),
            spec: crate::runs::read_job(dir, Kind::Sweep).ok().flatten(),
            events: Following::new(dir, None),
            progress: Sweeping::default(),
            predictions: Tail::file(&layout::eval(dir).join(crate::eval::run::PREDICTIONS)),
            scores: BTreeMap::new(),
            curves: std::cell::RefCell::new(None),
            seen: 0,
            stages: Vec::new(),
            lmc: Vec::new(),
            left_out: Vec::new(),
        };
        v.refresh();
        v
    }

    /// Reads what was appended since the last call.
    fn refresh(&mut self) {
        if self.spec.is_none() {
            self.spec = crate::runs::read_job(&self.dir, Kind::Sweep).ok().flatten();
        }
        self.events.poll(&mut self.progress);
        let dropped = std::mem::take(&mut self.progress.notes);
        self.note(dropped);
        let predictions = self.predictions.read_records::<Prediction>();
        for e in predictions.entries {
            self.scores.entry((e.model, e.k)).or_default().entry(e.dataset).or_default().insert(e.index, e.f1);
            self.seen += 1;
        }
        self.note(predictions.dropped);
        self.events.refresh_state();
        if let Some(seeded) = self.spec.as_ref().and_then(|s| s.seeded.as_ref()) {
            let have: Vec<String> = self.lmc.iter().map(|(p, _)| p.clone()).collect();
            for p in seeded.points().iter().map(|p| p.name()).filter(|p| !have.contains(p)) {
                let path = layout::lmc_file(&layout::point(&self.dir, &p));
                // Absent until the point's LMC stage ends (it writes the file whole, atomically).
                let Ok(text) = crate::fsutil::read_regular_text(&path) else { continue };
                match serde_json::from_str(&text) {
                    Ok(pairs) => self.lmc.push((p, pairs)),
                    Err(e) => {
                        let message = format!("{}: not an LMC result ({e})", path.display());
                        if !self.left_out.contains(&message) {
                            self.note(vec![message]);
                        }
                    }
                }
            }
        }
        self.stages = self
            .stage_dirs()
            .into_iter()
            .map(|(label, dir)| {
                // An LMC stage's folder holds only its lock; its result is the point's lmc.json.
                let done = label.starts_with("lmc ") && dir.parent().is_some_and(|p| layout::lmc_file(p).exists());
                let state = if done { State::Finished } else { crate::runs::state(&dir) };
                (label, dir, state)
            })
            .collect();
    }

    /// The sweep's state as of the last refresh.
    pub fn state(&self) -> &State {
        self.events.state()
    }

    /// Keeps messages of what could not be read (the first 20).
    fn note(&mut self, messages: Vec<String>) {
        let room = 20usize.saturating_sub(self.left_out.len());
        self.left_out.extend(messages.into_iter().take(room));
    }

    fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }

    /// Each stage's label and run folder.
    fn stage_dirs(&self) -> Vec<(String, PathBuf)> {
        let Some(spec) = &self.spec else { return Vec::new() };
        if let Some(seeded) = &spec.seeded {
            // The tasks as the sweep wrote them (tasks/NAME.jsonl).
            let tasks = layout::task_names(&self.dir);
            let mut out = Vec::new();
            for p in seeded.points() {
                let pd = layout::point(&self.dir, &p.name());
                out.push((format!("seed {}", p.name()), layout::seed_run(&pd)));
                out.extend(tasks.iter().map(|t| (format!("expert {} {t}", p.name()), layout::expert(&pd, t))));
                out.push((format!("lmc {}", p.name()), layout::lmc_run(&pd)));
            }
            out.push(("eval".into(), layout::eval(&self.dir)));
            return out;
        }
        let mut out: Vec<(String, PathBuf)> = spec
            .generation_runs()
            .keys()
            .map(|&(s, r)| Spec::gen_name(s, r))
            .map(|name| (format!("generate {name}"), self.dir.join(name)))
            .collect();
        out.extend(spec.runs().iter().map(|(p, r)| {
            let name = crate::sweep::replicate(&p.name(), *r);
            (format!("train {name}"), layout::point_train(&self.dir, &name))
        }));
        out.push(("eval".into(), layout::eval(&self.dir)));
        out
    }

    /// The curves of mean F1 (over datasets) against `axis` at the first k — the tuned points
    /// (their replicates together), the base, and the tuned points' 95 % interval (bootstrap over
    /// the examples scored so far, and the replicates) — recomputed only when predictions came in.
    fn curves(&self, axis: &str) -> Curves {
        let key = (axis.to_string(), self.seen);
        if let Some((k, c)) = self.curves.borrow().as_ref() {
            if *k == key {
                return c.clone();
            }
        }
        let c = self.compute_curves(axis);
        *self.curves.borrow_mut() = Some((key, c.clone()));
        c
    }

    fn compute_curves(&self, axis: &str) -> Curves {
        use crate::eval::stats::{self, Group};
        let Some(spec) = &self.spec else { return Curves::default() };
        let k = spec.shots.first().copied().unwrap_or(0);
        // Per dataset, the examples every replicate has scored, one row per replicate.
        let groups = |models: &[String]| -> Vec<Group> {
            let per: Vec<_> = models.iter().filter_map(|m| self.scores.get(&(m.clone(), k))).collect();
            if per.len() != models.len() {
                return Vec::new();
            }
            per[0]
                .iter()
                .filter_map(|(d, first)| {
                    let common: Vec<usize> = first
                        .keys()
                        .copied()
                        .filter(|i| per.iter().all(|p| p.get(d).is_some_and(|m| m.contains_key(i))))
                        .collect();
                    let rows: Vec<Vec<f64>> = per.iter().map(|p| common.iter().map(|i| p[d][i]).collect()).collect();
                    (!common.is_empty()).then_some(Group { rows })
                })
                .collect()
        };
        let values: Vec<(usize, Point)> = match axis {
            "seeds" => spec.axes.seeds.iter().map(|&s| (s, Point { seeds: s, samples: spec.base.samples })).collect(),
            _ => spec.axes.samples.iter().map(|&n| (n, Point { seeds: spec.base.seeds, samples: n })).collect(),
        };
        let mut c = Curves::default();
        for (v, p) in &values {
            let names: Vec<String> = (0..spec.repeats.max(1)).map(|r| crate::sweep::replicate(&p.name(), r)).collect();
            let g = groups(&names);
            if g.is_empty() {
                continue;
            }
            // Fewer resamples than a report's: this is redrawn as answers come in.
            let e = stats::estimate(&g, &stats::Settings { resamples: 400, trials: 0, seed: 1 });
            let [lo, hi] = e.ci;
            let x = *v as f64;
            c.tuned.push((x, e.mean));
            c.low.push((x, lo));
            c.high.push((x, hi));
        }
        let base = groups(&[crate::eval::run::BASE.to_string()]);
        if !base.is_empty() {
            let f = stats::statistic(&base);
            c.base = values.iter().map(|(v, _)| (*v as f64, f)).collect();
        }
        c
    }
}

/// A sweep's curves as the Sweeps tab draws them.
#[derive(Debug, Clone, Default)]
pub struct Curves {
    pub tuned: super::train::Points,
    pub base: super::train::Points,
    pub low: super::train::Points,
    pub high: super::train::Points,
}

pub struct SweepsScreen {
    pub sweeps: Vec<SweepView>,
    pub selected: usize,
    /// The chart's axis: `seeds` or `samples`.
    pub axis: &'static str,
    /// A seeded sweep's chart: the point whose LMC curves are shown.
    pub lmc_point: usize,
    workspace: Workspace,
    config_file: PathBuf,
    limits: crate::seeds::Limits,
    /// The start panel, while open.
    pub starting: Option<Starting>,
    ticks: u32,
}

/// The start panel: sweep files, the chosen one's plan.
pub struct Starting {
    pub files: Vec<PathBuf>,
    pub selected: usize,
    /// The plan of a file (or why there is none), once computed.
    pub plan: Option<(PathBuf, Result<String, String>)>,
    rx: Option<std::sync::mpsc::Receiver<(PathBuf, Result<String, String>)>>,
}

/// The run folder a sweep file starts in: `runs/sweep-<stem>`, or the first `-2`, `-3`… that is
/// free or holds the same spec (which continues it).
pub fn run_dir(workspace: &Workspace, file: &Path, spec: &Spec) -> PathBuf {
    let stem = file.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "sweep".into());
    let runs = workspace.runs_dir();
    (1..)
        .map(|i| runs.join(if i == 1 { format!("sweep-{stem}") } else { format!("sweep-{stem}-{i}") }))
        .find(|d| match crate::runs::read_job::<Spec>(d, Kind::Sweep) {
            Ok(Some(old)) => old == *spec,
            Ok(None) => !d.join(crate::runs::CONFIG).exists(),
            Err(_) => false,
        })
        .expect("an unbounded range finds a free folder")
}

/// Writes a starter sweep file per domain that has seeds, a corpus and evaluation sets, sized
/// for a CPU (the two axes around 80 seeds and 60 samples, or the seeds the file holds); the
/// files written.
pub fn write_starters(
    workspace: &Workspace,
    model: &str,
    limits: &crate::seeds::Limits,
) -> Result<Vec<PathBuf>, String> {
    let dir = workspace.sweeps_dir();
    let mut written = Vec::new();
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(workspace.seeds_dir())
        .map_err(|e| format!("cannot list {}: {e}", workspace.seeds_dir().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    seeds.sort();
    for file in seeds {
        let Some(domain) = file.file_stem().map(|s| s.to_string_lossy().to_string()) else { continue };
        let corpus = workspace.corpora_dir().join(format!("{domain}.corpus.jsonl"));
        if !workspace.eval_dir().join(&domain).is_dir() {
            continue;
        }
        let Ok(loaded) = crate::seeds::load(&file, limits) else { continue };
        let n = loaded.file.seeds.len().min(80);
        if n < 4 || !loaded.is_valid() {
            continue;
        }
        let corpus_line = if corpus.is_file() {
            format!("corpus: ../corpora/{domain}.corpus.jsonl   # retrieval for the responses (eq. 2)\n")
        } else {
            String::new()
        };
        let text = format!(
            "# A sweep of the paper's two missing ablations, sized for a CPU: edit it, then `n` and `s` on the\n\
             # Sweeps tab, or `selfspec sweep sweeps/{domain}.yaml --run runs/sweep-{domain}`.\n\
             model: {model:?}\n\
             seeds: ../seeds/{domain}.yaml\n\
             {corpus_line}\
             eval: ../eval/{domain}\n\
             shots: [0, 1]\n\
             base: {{seeds: {n}, samples: 60}}\n\
             axes: {{seeds: [{}, {}, {n}], samples: [20, 40, 60]}}\n\
             seed: 1\n\
             generation: {{k: 5, prompt_budget: 120, response_max_new_tokens: 256}}\n\
             train: {{max_seq_length: 512, per_device_train_batch_size: 4, gradient_accumulation_steps: 2, warmup_steps: 2}}\n",
            n / 4,
            n / 2
        );
        let path = dir.join(format!("{domain}.yaml"));
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        crate::fsutil::atomic_write(&path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn sweep_files(workspace: &Workspace) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace.sweeps_dir())
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

impl SweepsScreen {
    pub fn new(workspace: &Workspace, config_file: &Path, limits: &crate::seeds::Limits) -> SweepsScreen {
        let mut s = SweepsScreen {
            sweeps: Vec::new(),
            selected: 0,
            axis: "seeds",
            lmc_point: 0,
            workspace: workspace.clone(),
            config_file: config_file.to_path_buf(),
            limits: *limits,
            starting: None,
            ticks: 0,
        };
        s.rescan(None);
        s
    }

    /// Re-lists the sweeps (the workspace's, and `prefer` wherever it is), keeping the selection.
    pub fn rescan(&mut self, prefer: Option<&Path>) {
        let current = prefer.map(Path::to_path_buf).or_else(|| self.sweeps.get(self.selected).map(|s| s.dir.clone()));
        let mut dirs = self.workspace.runs_newest_first(|p| crate::runs::kind(p) == Some(Kind::Sweep));
        if let Some(c) = current.as_ref().filter(|c| !dirs.contains(c)) {
            dirs.insert(0, c.clone());
        }
        let mut old = std::mem::take(&mut self.sweeps);
        self.sweeps = dirs
            .into_iter()
            .map(|d| match old.iter().position(|s| s.dir == d) {
                Some(i) => old.swap_remove(i),
                None => SweepView::open(&d),
            })
            .collect();
        self.selected = current.and_then(|c| self.sweeps.iter().position(|s| s.dir == c)).unwrap_or(0);
    }

    /// Follows the selected sweep; once a second, every sweep's state.
    pub fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(10) {
            for s in &mut self.sweeps {
                s.events.refresh_state();
            }
        }
        if let Some(s) = self.sweeps.get_mut(self.selected) {
            s.refresh();
        }
        if let Some(st) = &mut self.starting {
            if let Some(plan) = st.rx.as_ref().and_then(|rx| rx.try_recv().ok()) {
                st.plan = Some(plan);
                st.rx = None;
            }
        }
    }

    /// Opens the start panel (writing starter files when the workspace has no sweep file).
    fn open_start(&mut self, model: &str) -> Outcome {
        let mut files = sweep_files(&self.workspace);
        let mut notice = None;
        if files.is_empty() {
            if model.is_empty() {
                return Outcome::Error(
                    "no sweep file in sweeps/ and no model to write one for: fetch or choose a model (Generate tab)"
                        .into(),
                );
            }
            match write_starters(&self.workspace, model, &self.limits) {
                Ok(written) if !written.is_empty() => {
                    notice = Some(format!(
                        "wrote {} starter sweep file(s) in {}; edit them to change the points",
                        written.len(),
                        self.workspace.sweeps_dir().display()
                    ));
                }
                Ok(_) => {
                    return Outcome::Error(
                        "no sweep file in sweeps/, and no domain has seeds and eval sets to write one for".into(),
                    )
                }
                Err(e) => return Outcome::Error(e),
            }
            files = sweep_files(&self.workspace);
        }
        self.starting = Some(Starting { files, selected: 0, plan: None, rx: None });
        self.plan_selected();
        notice.map_or(Outcome::Done, Outcome::Notice)
    }

    /// Computes the chosen file's plan on a thread (it loads the model and probes its speed).
    fn plan_selected(&mut self) {
        let Some(st) = &mut self.starting else { return };
        let Some(file) = st.files.get(st.selected).cloned() else { return };
        let (tx, rx) = std::sync::mpsc::channel();
        let (workspace, limits) = (self.workspace.clone(), self.limits);
        std::thread::spawn(move || {
            let plan = Spec::load(&file).and_then(|spec| {
                let dir = run_dir(&workspace, &file, &spec);
                crate::sweep::plan(&spec, &dir, &limits)
            });
            let _ = tx.send((file, plan.map_err(|e| format!("{e:#}"))));
        });
        st.plan = None;
        st.rx = Some(rx);
    }

    fn start_key(&mut self, key: KeyEvent) -> Outcome {
        let Some(st) = &mut self.starting else { return Outcome::Ignored };
        match key.code {
            KeyCode::Esc => self.starting = None,
            KeyCode::Char('j') | KeyCode::Down | KeyCode::Char('k') | KeyCode::Up => {
                let last = st.files.len().saturating_sub(1);
                let next = match key.code {
                    KeyCode::Char('j') | KeyCode::Down => (st.selected + 1).min(last),
                    _ => st.selected.saturating_sub(1),
                };
                if next != st.selected {
                    st.selected = next;
                    self.plan_selected();
                }
            }
            KeyCode::Char('s') | KeyCode::Enter => {
                let Some(file) = st.files.get(st.selected).cloned() else { return Outcome::Ignored };
                let spec = match Spec::load(&file) {
                    Ok(s) => s,
                    Err(e) => return Outcome::Error(format!("{e:#}")),
                };
                if let Some((_, Err(e))) = st.plan.as_ref().filter(|(f, _)| *f == file) {
                    return Outcome::Error(format!("not started: {e}"));
                }
                let dir = run_dir(&self.workspace, &file, &spec);
                let launch = crate::launch::Launch::Sweep { spec: Some(file), run: dir.clone() };
                return match crate::launch::start(&self.config_file, &self.workspace.root, &launch) {
                    Ok(_) => {
                        self.starting = None;
                        self.rescan(Some(&dir));
                        Outcome::Notice(format!(
                            "sweep started in {} (it goes on after the workbench closes)",
                            dir.display()
                        ))
                    }
                    Err(e) => Outcome::Error(e),
                };
            }
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    pub fn handle_key(&mut self, key: KeyEvent, model: &str) -> Outcome {
        if self.starting.is_some() {
            return self.start_key(key);
        }
        match key.code {
            KeyCode::Char('n') => return self.open_start(model),
            KeyCode::Char('s') => {
                let Some(s) = self.sweeps.get(self.selected) else { return Outcome::Error("no sweep selected".into()) };
                if s.state().is_running() {
                    return Outcome::Error(format!("{} is running already", s.name()));
                }
                let dir = s.dir.clone();
                let launch = crate::launch::Launch::Sweep { spec: None, run: dir.clone() };
                return match crate::launch::start(&self.config_file, &self.workspace.root, &launch) {
                    Ok(_) => Outcome::Notice(format!("continuing the sweep in {}", dir.display())),
                    Err(e) => Outcome::Error(e),
                };
            }
            KeyCode::Char('j') | KeyCode::Down => {
                self.selected = (self.selected + 1).min(self.sweeps.len().saturating_sub(1))
            }
            KeyCode::Char('k') | KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('a') => match self.sweeps.get(self.selected) {
                Some(s) if s.spec.as_ref().is_some_and(|sp| sp.seeded.is_some()) => {
                    self.lmc_point = (self.lmc_point + 1) % s.lmc.len().max(1)
                }
                _ => self.axis = if self.axis == "seeds" { "samples" } else { "seeds" },
            },
            KeyCode::Char('R') => self.rescan(None),
            KeyCode::Char('x') => {
                let Some(s) = self.sweeps.get(self.selected) else { return Outcome::Error("no sweep selected".into()) };
                return match crate::runs::stop(&s.dir) {
                    Ok(_) => Outcome::Notice(format!("stopping {}: its current stage saves its work", s.name())),
                    Err(e) => Outcome::Error(e),
                };
            }
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweeps_unreadable_lines_are_shown_with_their_file_and_line_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let eval = layout::eval(dir.path());
        std::fs::create_dir_all(&eval).unwrap();
        let good = r#"{"model":"base","dataset":"d","k":0,"index":0,"prediction":"x","references":["x"],"f1":1.0,"rougeL":1.0}"#;
        std::fs::write(eval.join(crate::eval::run::PREDICTIONS), format!("{good}\nnot json\n")).unwrap();
        std::fs::write(dir.path().join(crate::runs::EVENTS), "{\"time\": \n").unwrap();
        let view = SweepView::open(dir.path());
        assert_eq!(view.seen, 1, "the good line is read");
        assert_eq!(view.left_out.len(), 2, "{:?}", view.left_out);
        assert!(view.left_out.iter().any(|m| m.contains("predictions.jsonl:2:")), "{:?}", view.left_out);
        assert!(view.left_out.iter().any(|m| m.contains("events.jsonl:1:")), "{:?}", view.left_out);
    }
}
