//! The Sweeps screen: the workspace's sweeps with their state, each stage's run (generation per
//! seed count, training per point, the evaluation) with its state, and the curves of F1 against
//! the chosen axis — live: the scores are the means of the evaluation's predictions as they are
//! appended, read by offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph};
use ratatui::Frame;

use super::seeds::Outcome;
use super::theme::Theme;
use crate::eval::run::Prediction;
use crate::runs::{Kind, State, Tail};
use crate::sweep::{Point, Spec, SweepEvent};
use crate::workspace::Workspace;

/// One sweep folder and what it holds.
pub struct SweepView {
    pub dir: PathBuf,
    pub spec: Option<Spec>,
    events: Tail,
    /// The stage being run, as the sweep's log says.
    pub stage: Option<(String, String)>,
    predictions: Tail,
    /// Each stage, its run folder and its state as of the last refresh.
    pub stages: Vec<(String, PathBuf, State)>,
    /// (model, k) → (sum of F1, count), over every dataset.
    scores: BTreeMap<(String, usize), (f64, usize)>,
    pub state: State,
}

impl SweepView {
    fn open(dir: &Path) -> SweepView {
        let mut v = SweepView {
            dir: dir.to_path_buf(),
            spec: crate::runs::read_job(dir, Kind::Sweep).ok().flatten(),
            events: Tail::new(dir),
            stage: None,
            predictions: Tail::file(&dir.join("eval").join(crate::eval::run::PREDICTIONS)),
            scores: BTreeMap::new(),
            stages: Vec::new(),
            state: State::New,
        };
        v.refresh();
        v
    }

    /// Reads what was appended since the last call.
    fn refresh(&mut self) {
        for e in self.events.read::<SweepEvent>().entries {
            if let Some(SweepEvent::Stage { stage, name }) = e.event {
                self.stage = Some((stage, name));
            }
        }
        for e in self.predictions.read_records::<Prediction>().entries {
            let s = self.scores.entry((e.model, e.k)).or_default();
            s.0 += e.f1;
            s.1 += 1;
        }
        self.state = crate::runs::state(&self.dir);
        self.stages = self
            .stage_dirs()
            .into_iter()
            .map(|(label, dir)| {
                let state = crate::runs::state(&dir);
                (label, dir, state)
            })
            .collect();
    }

    fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    }

    /// Each stage's label and run folder.
    fn stage_dirs(&self) -> Vec<(String, PathBuf)> {
        let Some(spec) = &self.spec else { return Vec::new() };
        let points = spec.points();
        let mut seeds: Vec<usize> = points.iter().map(|p| p.seeds).collect();
        seeds.sort();
        seeds.dedup();
        let mut out: Vec<(String, PathBuf)> =
            seeds.iter().map(|s| (format!("generate gen-s{s}"), self.dir.join(format!("gen-s{s}")))).collect();
        out.extend(
            points
                .iter()
                .map(|p| (format!("train {}", p.name()), self.dir.join("points").join(p.name()).join("train"))),
        );
        out.push(("eval".into(), self.dir.join("eval")));
        out
    }

    /// The curve of mean F1 (over datasets) against `axis` at the first k: (tuned, base) points.
    fn curves(&self, axis: &str) -> (super::train::Points, super::train::Points) {
        let Some(spec) = &self.spec else { return (Vec::new(), Vec::new()) };
        let k = spec.shots.first().copied().unwrap_or(0);
        let mean = |model: &str| self.scores.get(&(model.to_string(), k)).map(|(s, n)| s / *n as f64);
        let values: Vec<(usize, Point)> = match axis {
            "seeds" => spec.axes.seeds.iter().map(|&s| (s, Point { seeds: s, samples: spec.base.samples })).collect(),
            _ => spec.axes.samples.iter().map(|&n| (n, Point { seeds: spec.base.seeds, samples: n })).collect(),
        };
        let tuned = values.iter().filter_map(|(v, p)| mean(&p.name()).map(|f| (*v as f64, f))).collect();
        let base = match mean(crate::eval::run::BASE) {
            Some(f) => values.iter().map(|(v, _)| (*v as f64, f)).collect(),
            None => Vec::new(),
        };
        (tuned, base)
    }
}

pub struct SweepsScreen {
    pub sweeps: Vec<SweepView>,
    pub selected: usize,
    /// The chart's axis: `seeds` or `samples`.
    pub axis: &'static str,
    workspace: Workspace,
    ticks: u32,
}

impl SweepsScreen {
    pub fn new(workspace: &Workspace) -> SweepsScreen {
        let mut s =
            SweepsScreen { sweeps: Vec::new(), selected: 0, axis: "seeds", workspace: workspace.clone(), ticks: 0 };
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
                s.state = crate::runs::state(&s.dir);
            }
        }
        if let Some(s) = self.sweeps.get_mut(self.selected) {
            s.refresh();
        }
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Outcome {
        match key.code {
            KeyCode::Char('j') | KeyCode::Down => {
                self.selected = (self.selected + 1).min(self.sweeps.len().saturating_sub(1))
            }
            KeyCode::Char('k') | KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('a') => self.axis = if self.axis == "seeds" { "samples" } else { "seeds" },
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

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let list_width = (area.width / 3).clamp(20.min(area.width), 34);
        let [list, right] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        let empty =
            "No sweeps yet. `selfspec sweep SPEC.yaml --run <workspace>/runs/NAME` starts one (see README, Sweeps).";
        let rows: Vec<(State, String)> = self.sweeps.iter().map(|s| (s.state.clone(), s.name())).collect();
        super::train::render_runs(frame, list, " Sweeps ", empty, &rows, self.selected, theme);
        if self.sweeps.is_empty() {
            return;
        }
        let Some(s) = self.sweeps.get(self.selected) else { return };
        let stages = &s.stages;
        let height = (stages.len() as u16 + 2).min(right.height / 2).max(3);
        let [table, chart] = Layout::vertical([Constraint::Length(height), Constraint::Min(4)]).areas(right);
        let title = match &s.stage {
            Some((stage, name)) if s.state.is_running() => format!(" Stages · now {stage} {name} "),
            _ => format!(" Stages · {} ", s.state.label()),
        };
        let inner = super::panel(frame, table, &title, theme.border, theme);
        let lines: Vec<Line> = stages
            .iter()
            .map(|(label, _, state)| {
                Line::from(vec![
                    Span::styled(format!("{:<9}", super::train::short(state)), super::train::state_style(state, theme)),
                    Span::raw(label.clone()),
                ])
            })
            .collect();
        frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
        self.render_chart(s, frame, chart, theme);
    }

    fn render_chart(&self, s: &SweepView, frame: &mut Frame, area: Rect, theme: &Theme) {
        let k = s.spec.as_ref().and_then(|sp| sp.shots.first().copied()).unwrap_or(0);
        let title = format!(" F1 (mean over datasets, {k}-shot) against {} · a: other axis ", self.axis);
        let block =
            Block::default().borders(Borders::ALL).border_style(theme.border).title(Span::styled(title, theme.title));
        let (tuned, base) = s.curves(self.axis);
        if tuned.is_empty() {
            let inner = block.inner(area);
            frame.render_widget(block, area);
            let text = "No scores yet: the curves fill in as the evaluation scores each point's answers.";
            frame.render_widget(Paragraph::new(text).style(theme.muted), inner);
            return;
        }
        let xs = tuned.iter().chain(&base).map(|p| p.0);
        let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
        let ys = tuned.iter().chain(&base).map(|p| p.1);
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
        let pad = ((hi - lo) * 0.1).max(1.0);
        let datasets = vec![
            Dataset::default()
                .name("tuned")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme.accent)
                .data(&tuned),
            Dataset::default()
                .name("base")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme.muted)
                .data(&base),
        ];
        let axis = |st| Axis::default().style(st);
        let chart = Chart::new(datasets)
            .block(block)
            .style(theme.base)
            .x_axis(axis(theme.muted).bounds([x0, x1.max(x0 + 1.0)]).labels([format!("{x0:.0}"), format!("{x1:.0}")]))
            .y_axis(
                axis(theme.muted)
                    .bounds([(lo - pad).max(0.0), hi + pad])
                    .labels([format!("{:.1}", (lo - pad).max(0.0)), format!("{:.1}", hi + pad)]),
            );
        frame.render_widget(chart, area);
    }
}
