//! The Train screen: training runs read from their folders (running, finished, stopped,
//! failed), a live loss chart (raw and smoothed; the recent window or the whole history,
//! downsampled to the chart's width), learning rate, tokens/s, a gauge with ETA; start a run from
//! accepted samples, stop one.
//!
//! A run started here is `selfspec train --detached` in its own process group with its output in
//! the run folder: closing the workbench or losing the SSH connection does not stop it, and
//! `selfspec attach RUN` (or this screen in any other workbench) follows it from events.jsonl.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, Gauge, GraphType, Paragraph};
use ratatui::Frame;

use super::seeds::Outcome;
use super::seeds_view::truncate;
use super::theme::Theme;
use crate::train::run::{TrainEvent, TrainJob, PID};
use crate::workspace::Workspace;

/// Steps shown in the recent window.
const RECENT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Finished,
    Stopped,
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Finished => "finished",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }
}

/// One run folder and what its events say.
pub struct RunView {
    pub dir: PathBuf,
    pub job: Option<TrainJob>,
    /// (step, loss, lr, tokens/s, eta, epoch) of every step event.
    pub steps: Vec<Step>,
    pub total_steps: usize,
    pub last: Option<TrainEvent>,
    read_to: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    pub epoch: f64,
}

/// Whether process `pid` is running. A run this workbench started and that has ended stays a
/// zombie (it is never waited for), so state `Z` counts as ended.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).is_some_and(|c| c != 'Z')
        }
        Err(_) => false,
    }
}

/// Whether process `pid` is alive and is the run in `dir`: its command line has `--run` naming
/// that folder (resolved from the process's own working directory). A pid file outlives its
/// process, and the kernel hands the number to others; only a proven owner is signalled.
fn runs(pid: u32, dir: &Path) -> bool {
    if !alive(pid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else { return false };
    let Ok(want) = std::fs::canonicalize(dir) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let mut named = args
        .windows(2)
        .filter(|w| w[0] == b"--run")
        .map(|w| w[1])
        .chain(args.iter().filter_map(|a| a.strip_prefix(b"--run=")));
    named.any(|run| {
        let run = Path::new(std::ffi::OsStr::from_bytes(run));
        std::fs::canonicalize(cwd.join(run)).is_ok_and(|p| p == want)
    })
}

impl RunView {
    fn open(dir: &Path) -> RunView {
        let mut v =
            RunView { dir: dir.to_path_buf(), job: None, steps: Vec::new(), total_steps: 0, last: None, read_to: 0 };
        v.refresh();
        v
    }

    /// Reads the events appended since the last call (whole lines only).
    pub fn refresh(&mut self) -> bool {
        if self.job.is_none() {
            self.job =
                std::fs::read_to_string(self.dir.join("config.yaml")).ok().and_then(|t| crate::yaml::from_str(&t).ok());
        }
        let Ok(bytes) = std::fs::read(self.dir.join("events.jsonl")) else { return false };
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete <= self.read_to {
            return false;
        }
        for line in bytes[self.read_to..complete].split(|&b| b == b'\n') {
            let Ok(event) = serde_json::from_slice::<TrainEvent>(line) else { continue };
            match &event {
                TrainEvent::Started { total_steps, resumed_from, .. } => {
                    self.total_steps = *total_steps;
                    if let Some(from) = resumed_from {
                        // Steps after the checkpoint are done again: the new ones replace them.
                        self.steps.retain(|s| s.step <= *from);
                    }
                }
                TrainEvent::Step { step, epoch, loss, lr, tokens_per_s, eta_s, .. } => self.steps.push(Step {
                    step: *step,
                    loss: *loss,
                    lr: *lr,
                    tokens_per_s: *tokens_per_s,
                    eta_s: *eta_s,
                    epoch: *epoch,
                }),
                _ => {}
            }
            self.last = Some(event);
        }
        self.read_to = complete;
        true
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join(PID)).ok()?.trim().parse().ok()
    }

    pub fn state(&self) -> State {
        match &self.last {
            Some(TrainEvent::Finished { .. }) => State::Finished,
            Some(TrainEvent::Stopped { .. }) => State::Stopped,
            _ if self.pid().is_some_and(|pid| runs(pid, &self.dir)) => State::Running,
            _ => State::Failed,
        }
    }

    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }
}

/// Training run folders under the workspace's runs/, newest first.
pub fn train_runs(workspace: &Workspace) -> Vec<PathBuf> {
    workspace.runs_newest_first(|p| {
        std::fs::read_to_string(p.join("config.yaml"))
            .ok()
            .is_some_and(|t| crate::yaml::from_str::<TrainJob>(&t).is_ok())
    })
}

pub struct TrainScreen {
    pub runs: Vec<RunView>,
    pub selected: usize,
    /// The whole history instead of the recent window.
    pub whole: bool,
    config_file: PathBuf,
    workspace: Workspace,
}

impl TrainScreen {
    pub fn new(workspace: &Workspace, config_file: &Path) -> TrainScreen {
        let mut s = TrainScreen {
            runs: Vec::new(),
            selected: 0,
            whole: false,
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

    /// Follows the selected run's events (and notices runs that end).
    pub fn tick(&mut self) {
        if let Some(r) = self.runs.get_mut(self.selected) {
            r.refresh();
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent, data: Option<&Path>, model: &str) -> Outcome {
        match key.code {
            KeyCode::Char('j') | KeyCode::Down => {
                self.selected = (self.selected + 1).min(self.runs.len().saturating_sub(1));
            }
            KeyCode::Char('k') | KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('w') => self.whole = !self.whole,
            KeyCode::Char('R') => self.rescan(None),
            KeyCode::Char('s') => return self.start(data, model),
            KeyCode::Char('x') => return self.stop(),
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    fn start(&mut self, data: Option<&Path>, model: &str) -> Outcome {
        let Some(data) = data else {
            return Outcome::Error("no samples to train on: generate some, accept them on the Review tab".into());
        };
        if model.trim().is_empty() {
            return Outcome::Error("no model: set it on the Generate tab (2)".into());
        }
        if let Err(e) = crate::train::data::load(data) {
            return Outcome::Error(format!("{e:#}"));
        }
        let stem = data.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let dir = self.workspace.runs_dir().join(format!("train-{stem}-{secs}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Outcome::Error(format!("cannot create {}: {e}", dir.display()));
        }
        let mut args: Vec<std::ffi::OsString> =
            ["train", "--detached", "--model", model.trim(), "--data"].map(Into::into).to_vec();
        args.extend([data.as_os_str().to_owned(), "--run".into(), dir.clone().into_os_string()]);
        // Detached: it outlives the workbench and the SSH session (and ignores SIGHUP); x or
        // SIGTERM stops it with a checkpoint.
        match super::spawn_run(&self.config_file, &self.workspace, &args, &dir.join("train.log"), false) {
            Ok(child) => {
                // The pid file, written before the first look at the run: `state` reads it.
                // (The run writes the same pid itself once it starts.)
                let _ = std::fs::write(dir.join(PID), child.id().to_string());
                // Not waited for: the run belongs to its folder, not to this workbench.
                std::mem::forget(child);
                self.rescan(Some(&dir));
                Outcome::Notice(format!("training in {} (detached; q leaves it running)", dir.display()))
            }
            Err(e) => Outcome::Error(e),
        }
    }

    fn stop(&mut self) -> Outcome {
        let Some(r) = self.current() else { return Outcome::Error("no run selected".into()) };
        if r.state() != State::Running {
            return Outcome::Error(format!("{} is not running", r.name()));
        }
        let Some(pid) = r.pid() else { return Outcome::Error("the run has no pid file".into()) };
        if !runs(pid, &r.dir) {
            return Outcome::Error(format!("process {pid} is no longer {}: nothing was signalled", r.name()));
        }
        match std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status() {
            Ok(s) if s.success() => Outcome::Notice(format!("stopping {}: it writes a checkpoint first", r.name())),
            _ => Outcome::Error(format!("cannot signal process {pid}")),
        }
    }

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let list_width = (area.width / 3).clamp(20.min(area.width), 36);
        let [list, right] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        self.render_list(frame, list, theme);
        let [chart, info] = Layout::vertical([Constraint::Min(6), Constraint::Length(5)]).areas(right);
        self.render_chart(frame, chart, theme);
        self.render_info(frame, info, theme);
    }

    fn render_list(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = super::panel(frame, area, " Runs ", theme.border_focus, theme);
        if self.runs.is_empty() {
            let text = "No training runs yet. s trains on the accepted samples of the run shown on the Review tab.";
            frame.render_widget(
                Paragraph::new(text).style(theme.muted).wrap(ratatui::widgets::Wrap { trim: true }),
                inner,
            );
            return;
        }
        let w = inner.width as usize;
        let lines: Vec<Line> = self
            .runs
            .iter()
            .enumerate()
            .take(inner.height as usize)
            .map(|(i, r)| {
                let state = r.state();
                let style = match state {
                    State::Running => theme.accent,
                    State::Finished => theme.ok,
                    State::Stopped => theme.warning,
                    State::Failed => theme.error,
                };
                let name = truncate(&r.name(), w.saturating_sub(10));
                let row = if i == self.selected { theme.selection } else { theme.base };
                Line::from(vec![Span::styled(format!("{:<9}", state.name()), style), Span::styled(name, row)])
            })
            .collect();
        frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
    }

    fn render_chart(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let title = format!(
            " Loss · {} (w: {}) ",
            self.current().map(|r| r.name()).unwrap_or_default(),
            if self.whole { "whole run" } else { "recent" }
        );
        let block =
            Block::default().borders(Borders::ALL).border_style(theme.border).title(Span::styled(title, theme.title));
        let Some(run) = self.current().filter(|r| !r.steps.is_empty()) else {
            let inner = block.inner(area);
            frame.render_widget(block, area);
            frame.render_widget(Paragraph::new("No steps yet.").style(theme.muted), inner);
            return;
        };
        let steps: &[Step] = if self.whole { &run.steps } else { &run.steps[run.steps.len().saturating_sub(RECENT)..] };
        let width = area.width.saturating_sub(10).max(2) as usize * 2;
        let (raw, smooth) = series(steps, width);
        let (x0, x1) = (steps[0].step as f64, steps[steps.len() - 1].step as f64);
        let (lo, hi) =
            raw.iter().chain(&smooth).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let pad = ((hi - lo) * 0.05).max(1e-3);
        let datasets = vec![
            Dataset::default()
                .name("loss")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme.muted)
                .data(&raw),
            Dataset::default()
                .name("smoothed")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme.accent)
                .data(&smooth),
        ];
        let axis = |s: Style| Axis::default().style(s);
        let chart = Chart::new(datasets)
            .block(block)
            .style(theme.base)
            .x_axis(axis(theme.muted).bounds([x0, x1.max(x0 + 1.0)]).labels([format!("{x0:.0}"), format!("{x1:.0}")]))
            .y_axis(
                axis(theme.muted).bounds([lo - pad, hi + pad]).labels([format!("{:.2}", lo), format!("{:.2}", hi)]),
            );
        frame.render_widget(chart, area);
    }

    fn render_info(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let block = Block::default().borders(Borders::ALL).border_style(theme.border);
        let inner = block.inner(area);
        frame.render_widget(block, area);
        let Some(run) = self.current() else { return };
        let [text, gauge] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
        let last = run.steps.last();
        let state = run.state();
        let model = run.job.as_ref().map(|j| j.model.clone()).unwrap_or_default();
        let line1 = match last {
            Some(s) => format!(
                "{} · step {}/{} · epoch {:.2} · loss {:.4} · lr {:.2e} · {:.0} tokens/s",
                state.name(),
                s.step,
                run.total_steps,
                s.epoch,
                s.loss,
                s.lr,
                s.tokens_per_s
            ),
            None => format!("{} · waiting for the first step", state.name()),
        };
        let line2 = match &run.last {
            Some(TrainEvent::Finished { adapter, .. }) => format!("adapter: {}", adapter.display()),
            Some(TrainEvent::Stopped { checkpoint, .. }) => {
                format!("stopped at {}; `selfspec train … --resume` continues", checkpoint.display())
            }
            _ if state == State::Failed => {
                let log = std::fs::read_to_string(run.dir.join("train.log")).unwrap_or_default();
                format!("failed: {}", log.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message"))
            }
            _ => format!("model {model}"),
        };
        let w = inner.width as usize;
        let style = if state == State::Failed { theme.error } else { theme.base };
        frame.render_widget(
            Paragraph::new(vec![Line::from(truncate(&line1, w)), Line::from(Span::styled(truncate(&line2, w), style))])
                .style(theme.base),
            text,
        );
        let done = last.map_or(0, |s| s.step);
        let ratio = if run.total_steps > 0 { (done as f64 / run.total_steps as f64).min(1.0) } else { 0.0 };
        let eta = match (state, last) {
            (State::Running, Some(s)) => format!(" ETA {:.0}s", s.eta_s),
            _ => String::new(),
        };
        frame.render_widget(
            Gauge::default().gauge_style(theme.ok).ratio(ratio).label(format!("{:.0}%{eta}", ratio * 100.0)),
            gauge,
        );
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

#[cfg(test)]
mod tests {
    use super::{alive, runs};

    #[test]
    fn only_the_process_running_the_folder_owns_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        std::fs::create_dir(&run).unwrap();
        // A stranger holding some pid: alive, but not this run.
        let mut stranger = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        // The run's own process, named by a relative path from its working directory.
        let mut owner = std::process::Command::new("sh")
            // "; true" keeps the shell (and its arguments) from being replaced by sleep.
            .args(["-c", "sleep 5; true", "selfspec", "train", "--run", "run"])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        assert!(alive(stranger.id()) && !runs(stranger.id(), &run));
        // Just after the spawn the new process's command line can still read empty.
        let start = std::time::Instant::now();
        while !runs(owner.id(), &run) {
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "the owner is never recognised");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!runs(owner.id(), dir.path()));
        for c in [&mut stranger, &mut owner] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    #[test]
    fn an_ended_child_never_waited_for_is_not_alive() {
        let mut child = std::process::Command::new("sh").args(["-c", "exit 1"]).spawn().unwrap();
        let pid = child.id();
        let start = std::time::Instant::now();
        while alive(pid) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "still alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(alive(std::process::id()));
        child.wait().unwrap();
    }
}
