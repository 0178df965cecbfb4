//! The Train screen: training runs read from their folders (running, finished, stopped,
//! failed), a live loss chart (raw and smoothed; the recent window or the whole history,
//! downsampled to the chart's width), learning rate, tokens/s, a gauge with ETA; start a run from
//! accepted samples, stop one.
//!
//! A run started here is `selfspec train --detached` in its own process group with its output in
//! the run folder: closing the workbench or losing the SSH connection does not stop it, and
//! `selfspec attach RUN` (or this screen in any other workbench) follows it from events.jsonl.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, Gauge, GraphType, Paragraph};
use ratatui::Frame;

use super::shared::{train_runs, truncate, Outcome};
use super::theme::Theme;
use crate::model::gguf::QuantType;
use crate::runs::{Following, State as RunState};
use crate::train::follow::{Step, Training};
use crate::train::run::TrainEvent;
use crate::workspace::Workspace;

mod view;

/// Steps shown in the recent window.
const RECENT: usize = 100;

/// One run folder and what its events say.
pub struct RunView {
    pub dir: PathBuf,
    pub view: Training,
    /// Its log followed; its state as of the last tick (asked of its lock and log, not on every
    /// draw).
    following: Following<TrainEvent>,
}

impl RunView {
    fn open(dir: &Path) -> RunView {
        let mut v = RunView { dir: dir.to_path_buf(), view: Training::default(), following: Following::new(dir, None) };
        v.refresh();
        v
    }

    /// Applies the events appended since the last call (whole lines only).
    pub fn refresh(&mut self) -> bool {
        if self.view.job.is_none() {
            self.view.job = crate::runs::read_job(&self.dir, crate::runs::Kind::Train).ok().flatten();
        }
        let got = self.following.poll(&mut self.view);
        self.following.refresh_state();
        got
    }

    pub fn state(&self) -> RunState {
        self.following.state().clone()
    }

    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }
}

/// How a new run stores the frozen base (p cycles them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseChoice {
    /// As the file has it: a quantized GGUF file's own blocks (QLoRA over them), a dense
    /// model's full-precision weights.
    File,
    /// f32 copies of a quantized file's projections (`--dequantize`).
    Dequantize,
    /// QLoRA in this block type (`--qlora`).
    Qlora(QuantType),
}

impl BaseChoice {
    const ALL: [BaseChoice; 5] = [
        BaseChoice::File,
        BaseChoice::Dequantize,
        BaseChoice::Qlora(QuantType::Q4_0),
        BaseChoice::Qlora(QuantType::Q4k),
        BaseChoice::Qlora(QuantType::Q8_0),
    ];

    fn next(self) -> BaseChoice {
        let at = BaseChoice::ALL.iter().position(|&b| b == self).unwrap_or(0);
        BaseChoice::ALL[(at + 1) % BaseChoice::ALL.len()]
    }

    /// How the run is asked to store the base.
    fn base(self) -> crate::launch::Base {
        use crate::launch::Base;
        match self {
            BaseChoice::File => Base::File,
            BaseChoice::Dequantize => Base::Dequantize,
            BaseChoice::Qlora(q) => Base::Qlora(q),
        }
    }

    /// Its words on the screen.
    fn words(self) -> String {
        match self {
            BaseChoice::File => "as the file stores it".into(),
            BaseChoice::Dequantize => "f32 copies of quantized projections (--dequantize)".into(),
            BaseChoice::Qlora(q) => {
                let name = crate::launch::quant_name(q);
                format!("QLoRA in {name} blocks (--qlora {name})")
            }
        }
    }
}

/// What `selfspec train --plan` prints for the settings shown (the model loaded, a probe step
/// timed): run as its own process, so a model as large as the machine's memory never sits in
/// the workbench's, and waited for on a thread.
type Estimated = Result<crate::train::Plan, String>;

/// A run about to start from this screen: its settings (the configuration's `train:`), shown
/// with the schedule they make and what looks wrong, changed by single keys, started by Enter.
pub struct Pending {
    data: PathBuf,
    model: String,
    /// The workbench's configuration file and workspace, for the estimate's command.
    config_file: PathBuf,
    workspace: PathBuf,
    pub config: crate::train::TrainConfig,
    pub base: BaseChoice,
    examples: usize,
    /// The plan of the settings as they were when it was asked for.
    pub estimate: Option<Estimated>,
    /// The estimate being made, and whether the settings changed since it was asked for.
    asked: Option<std::sync::mpsc::Receiver<Estimated>>,
    stale: bool,
}

/// The next value after `now` in `choices` (round), or the first.
fn cycle(now: usize, choices: &[usize]) -> usize {
    choices.iter().copied().find(|&c| c > now).unwrap_or(choices[0])
}

/// Runs `selfspec ARGS` (a `train --plan`) and reads its plan from the last line it prints.
fn estimate(args: &[std::ffi::OsString]) -> Estimated {
    let exe = crate::runs::program()?;
    let out = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run selfspec train --plan: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("selfspec train --plan failed").to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("selfspec train --plan printed no plan ({e})"))
}

impl Pending {
    fn new(
        screen: &TrainScreen,
        data: &Path,
        model: &str,
        config: crate::train::TrainConfig,
        examples: usize,
    ) -> Pending {
        let mut p = Pending {
            data: data.to_path_buf(),
            model: model.to_string(),
            config_file: screen.config_file.clone(),
            workspace: screen.workspace.root.clone(),
            config,
            base: BaseChoice::File,
            examples,
            estimate: None,
            asked: None,
            stale: false,
        };
        p.ask();
        p
    }

    /// Starts estimating the plan of the settings as they are now (or, while an estimate runs,
    /// asks for another once it ends: one at a time on a machine's few cores).
    fn ask(&mut self) {
        if self.asked.is_some() {
            self.stale = true;
            return;
        }
        self.stale = false;
        let (tx, rx) = std::sync::mpsc::channel();
        static ASKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let settings = std::env::temp_dir().join(format!("selfspec-plan-{}-{n}.yaml", std::process::id()));
        let args = crate::launch::foreground_argv(&self.config_file, &self.workspace, &self.launch(&settings, None));
        let text = crate::yaml::to_string(&self.config);
        std::thread::spawn(move || {
            let result = text
                .map_err(|e| format!("{e:#}"))
                .and_then(|text| {
                    std::fs::write(&settings, text).map_err(|e| format!("cannot write {}: {e}", settings.display()))
                })
                .and_then(|()| estimate(&args));
            let _ = std::fs::remove_file(&settings);
            let _ = tx.send(result);
        });
        self.asked = Some(rx);
    }

    /// Takes a finished estimate; true when the panel changed.
    pub fn poll(&mut self) -> bool {
        let Some(rx) = &self.asked else { return false };
        let got = match rx.try_recv() {
            Ok(got) => got,
            Err(std::sync::mpsc::TryRecvError::Empty) => return false,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err("the estimate stopped before it ended".into()),
        };
        self.asked = None;
        if self.stale {
            self.ask();
        } else {
            self.estimate = Some(got);
        }
        true
    }

    /// Whether an estimate of the settings shown is still being made.
    pub fn estimating(&self) -> bool {
        self.asked.is_some()
    }

    /// `selfspec train` with the model, the data, the settings written to `settings` and the
    /// base chosen, into `run` (None: the plan): what the estimate and the run both take.
    fn launch(&self, settings: &Path, run: Option<PathBuf>) -> crate::launch::Launch {
        crate::launch::Launch::Train(crate::launch::Train {
            model: self.model.clone(),
            data: self.data.clone(),
            settings: settings.to_path_buf(),
            base: self.base.base(),
            run,
        })
    }

    fn handle_key(&mut self, key: KeyCode) -> bool {
        let changed = self.change(key);
        if changed {
            self.ask();
        }
        changed
    }

    fn change(&mut self, key: KeyCode) -> bool {
        if key == KeyCode::Char('p') {
            self.base = self.base.next();
            return true;
        }
        let c = &mut self.config;
        match key {
            KeyCode::Char('b') => {
                c.per_device_train_batch_size = cycle(c.per_device_train_batch_size, &[1, 2, 4, 8, 16])
            }
            KeyCode::Char('a') => {
                c.gradient_accumulation_steps = cycle(c.gradient_accumulation_steps, &[1, 2, 4, 8, 16, 32])
            }
            KeyCode::Char('e') => c.num_train_epochs = cycle(c.num_train_epochs, &[1, 2, 3, 5, 10]),
            KeyCode::Char('l') => c.max_seq_length = cycle(c.max_seq_length, &[256, 512, 1024, 2048, 4096]),
            KeyCode::Char('w') => c.warmup_ratio = if c.warmup_ratio.is_some() { None } else { Some(0.1) },
            KeyCode::Char('c') => c.gradient_checkpointing = !c.gradient_checkpointing,
            _ => return false,
        }
        true
    }

    /// The settings, the schedule and the warnings, a line each.
    pub fn lines(&self) -> Vec<String> {
        let c = &self.config;
        let (total, per_epoch) = crate::train::Plan::steps(c, self.examples);
        let warm = match c.warmup_ratio {
            Some(r) => format!("{} steps (ratio {r})", c.warmup(total)),
            None => format!("{} steps", c.warmup(total)),
        };
        let mut out = vec![
            format!("{} accepted examples · model {}", self.examples, self.model),
            format!(
                "b micro-batch {} · a accumulation {} ({} a step) · e epochs {} · l max_seq_length {}",
                c.per_device_train_batch_size,
                c.gradient_accumulation_steps,
                c.per_device_train_batch_size * c.gradient_accumulation_steps,
                c.num_train_epochs,
                c.max_seq_length
            ),
            format!(
                "{total} steps ({per_epoch} an epoch) · w warm-up {warm} · peak lr {:.1e} · c gradient checkpointing {}",
                c.learning_rate,
                if c.gradient_checkpointing { "on" } else { "off" }
            ),
        ];
        let base = match (&self.estimate, self.base) {
            (Some(Ok(plan)), BaseChoice::File) if !self.estimating() => match &plan.qlora {
                Some(q) => format!("QLoRA over the file's own {q} blocks"),
                None => "full precision (the file is not quantized)".to_string(),
            },
            (_, b) => b.words(),
        };
        out.push(format!("p frozen base: {base}"));
        let mut warnings = crate::train::Plan::warnings(c, self.examples, total, 0.0, 0.0);
        match (&self.estimate, self.estimating()) {
            (_, true) => out.push("estimating memory and time (the model loaded, a probe step timed)…".into()),
            (Some(Ok(plan)), false) => {
                let time = plan.seconds.map(crate::runs::duration).unwrap_or_else(|| "unknown".into());
                out.push(format!(
                    "estimate: about {:.0} MB at the peak, about {time} in all (a probe step timed here)",
                    plan.memory_mb
                ));
                warnings = plan.warnings.clone();
            }
            (Some(Err(e)), false) => out.push(format!("warning: no estimate: {e}")),
            (None, false) => {}
        }
        for w in warnings {
            out.push(format!("warning: {w}"));
        }
        out.push("Enter starts · Esc cancels · the run records these settings in its config.yaml".into());
        out
    }
}

pub struct TrainScreen {
    pub runs: Vec<RunView>,
    /// Settings being looked at before a run starts (s opens them).
    pub pending: Option<Pending>,
    pub selected: usize,
    /// The whole history instead of the recent window.
    pub whole: bool,
    ticks: u32,
    config_file: PathBuf,
    workspace: Workspace,
}

impl TrainScreen {
    pub fn new(workspace: &Workspace, config_file: &Path) -> TrainScreen {
        let mut s = TrainScreen {
            runs: Vec::new(),
            pending: None,
            selected: 0,
            whole: false,
            ticks: 0,
            config_file: config_file.to_path_buf(),
            workspace: workspace.clone(),
        };
        s.rescan(None);
        s
    }

    /// Re-lists the run folders, keeping `prefer` (or the selected run) selected.
    pub fn rescan(&mut self, prefer: Option<&Path>) {
        let current = prefer.map(Path::to_path_buf).or_else(|| self.runs.get(self.selected).map(|r| r.dir.clone()));
        let mut dirs = train_runs(&self.workspace);
        if let Some(c) = &current {
            // A run just started may not have written its config yet.
            if !dirs.contains(c) && c.is_dir() {
                dirs.insert(0, c.clone());
            }
        }
        let mut old: Vec<RunView> = std::mem::take(&mut self.runs);
        self.runs = dirs
            .into_iter()
            .map(|d| match old.iter().position(|r| r.dir == d) {
                Some(i) => old.swap_remove(i),
                None => RunView::open(&d),
            })
            .collect();
        self.selected = current.and_then(|c| self.runs.iter().position(|r| r.dir == c)).unwrap_or(0);
    }

    pub fn current(&self) -> Option<&RunView> {
        self.runs.get(self.selected)
    }

    /// Follows the selected run's events; once a second, every listed run's state.
    pub fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(10) {
            for r in &mut self.runs {
                r.following.refresh_state();
            }
        }
        if let Some(r) = self.runs.get_mut(self.selected) {
            r.refresh();
        }
        if let Some(p) = &mut self.pending {
            p.poll();
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent, data: Option<&Path>, model: &str) -> Outcome {
        if let Some(p) = &mut self.pending {
            return match key.code {
                KeyCode::Enter => match self.pending.take() {
                    Some(p) => self.start(p),
                    None => Outcome::Done,
                },
                KeyCode::Esc => {
                    self.pending = None;
                    Outcome::Notice("no run started".into())
                }
                code if p.handle_key(code) => Outcome::Done,
                _ => Outcome::Ignored,
            };
        }
        match key.code {
            KeyCode::Char('j') | KeyCode::Down => {
                self.selected = (self.selected + 1).min(self.runs.len().saturating_sub(1));
            }
            KeyCode::Char('k') | KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('w') => self.whole = !self.whole,
            KeyCode::Char('R') => self.rescan(None),
            KeyCode::Char('s') => return self.prepare(data, model),
            KeyCode::Char('x') => return self.stop(),
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    /// Opens the settings of a new run on `data` (s): the configuration's `train:` section.
    fn prepare(&mut self, data: Option<&Path>, model: &str) -> Outcome {
        let Some(data) = data else {
            return Outcome::Error("no samples to train on: generate some, accept them on the Review tab".into());
        };
        if model.trim().is_empty() {
            return Outcome::Error("no model: set it on the Generate tab (2)".into());
        }
        let examples = match crate::train::data::load(data) {
            Ok(e) => e.len(),
            Err(e) => return Outcome::Error(format!("{e:#}")),
        };
        let config = match crate::config::Config::load(&self.config_file) {
            Ok(c) => c.train,
            Err(e) => return Outcome::Error(format!("{e:#}")),
        };
        self.pending = Some(Pending::new(self, data, model.trim(), config, examples));
        Outcome::Done
    }

    fn start(&mut self, pending: Pending) -> Outcome {
        if let Err(e) = pending.config.check() {
            return Outcome::Error(format!("training settings: {e}"));
        }
        let stem = pending.data.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let dir = self.workspace.runs_dir().join(format!("train-{stem}-{secs}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Outcome::Error(format!("cannot create {}: {e}", dir.display()));
        }
        // The settings as shown, in the run folder beside what the run records.
        let settings = crate::train::run::settings_file(&dir);
        let written = crate::yaml::to_string(&pending.config)
            .and_then(|text| crate::fsutil::atomic_write(&settings, text.as_bytes()).map_err(Into::into));
        if let Err(e) = written {
            return Outcome::Error(format!("cannot write {}: {e:#}", settings.display()));
        }
        let launch = pending.launch(&settings, Some(dir.clone()));
        // Detached: it outlives the workbench and the SSH session; x or SIGTERM stops it with a
        // checkpoint.
        match crate::launch::start(&self.config_file, &self.workspace.root, &launch) {
            Ok(_) => {
                self.rescan(Some(&dir));
                Outcome::Notice(format!("training in {} (detached; q leaves it running)", dir.display()))
            }
            Err(e) => Outcome::Error(e),
        }
    }

    fn stop(&mut self) -> Outcome {
        let Some(r) = self.current() else { return Outcome::Error("no run selected".into()) };
        match crate::runs::stop(&r.dir) {
            Ok(_) => Outcome::Notice(format!("stopping {}: it writes a checkpoint first", r.name())),
            Err(e) => Outcome::Error(e),
        }
    }
}

/// A list of runs, one a line: its state in a word (coloured), then its name; `selected`
/// highlighted; `empty` said when there are none.
pub fn render_runs(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    empty: &str,
    rows: &[(RunState, String)],
    selected: usize,
    theme: &Theme,
) {
    let inner = super::shared::panel(frame, area, title, theme.border_focus, theme);
    if rows.is_empty() {
        frame
            .render_widget(Paragraph::new(empty).style(theme.muted).wrap(ratatui::widgets::Wrap { trim: true }), inner);
        return;
    }
    let w = inner.width as usize;
    let lines: Vec<Line> = rows
        .iter()
        .enumerate()
        .take(inner.height as usize)
        .map(|(i, (state, name))| {
            let row = if i == selected { theme.selection } else { theme.base };
            Line::from(vec![
                Span::styled(format!("{:<9}", short(state)), state_style(state, theme)),
                Span::styled(truncate(name, w.saturating_sub(10)), row),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
}

/// A run's state in one word (the list's column).
pub fn short(state: &RunState) -> &'static str {
    match state {
        RunState::Running(_) => "running",
        RunState::Finished => "finished",
        RunState::Stopped => "stopped",
        RunState::Failed(_) => "failed",
        RunState::Interrupted => "killed",
        RunState::New => "starting",
    }
}

pub fn state_style(state: &RunState, theme: &Theme) -> Style {
    match state {
        RunState::Running(_) | RunState::New => theme.accent,
        RunState::Finished => theme.ok,
        RunState::Stopped => theme.warning,
        RunState::Failed(_) | RunState::Interrupted => theme.error,
    }
}

/// The raw losses and an exponential moving average (α 0.1), as (step, loss) points; more points
/// than `width` are downsampled by averaging buckets.
/// Chart points: (step, loss).
pub type Points = Vec<(f64, f64)>;

pub fn series(steps: &[Step], width: usize) -> (Points, Points) {
    let mut ema = None;
    let mut smooth = Vec::with_capacity(steps.len());
    for s in steps {
        let e = match ema {
            None => s.loss,
            Some(prev) => 0.9 * prev + 0.1 * s.loss,
        };
        ema = Some(e);
        smooth.push((s.step as f64, e));
    }
    let raw: Vec<(f64, f64)> = steps.iter().map(|s| (s.step as f64, s.loss)).collect();
    (downsample(&raw, width), downsample(&smooth, width))
}

fn downsample(points: &[(f64, f64)], width: usize) -> Vec<(f64, f64)> {
    if points.len() <= width.max(1) {
        return points.to_vec();
    }
    let bucket = points.len().div_ceil(width.max(1));
    points
        .chunks(bucket)
        .map(|c| {
            let n = c.len() as f64;
            (c.iter().map(|p| p.0).sum::<f64>() / n, c.iter().map(|p| p.1).sum::<f64>() / n)
        })
        .collect()
}
