//! The Eval screen: choose the evaluation set, the adapters to compare with the base and the
//! shots; start (a detached `selfspec eval`, like training); the F1 table of the newest run with
//! colour-coded deltas against the base, a bar chart for the selected dataset, and Enter on a
//! cell for the prediction/reference pairs behind it.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Bar, BarChart, BarGroup, Block, Borders, Clear, Gauge, Paragraph, Wrap};
use ratatui::Frame;

use super::shared::{truncate, Outcome};
use super::theme::Theme;
use crate::eval::follow::Evaluation;
use crate::eval::run::{EvalEvent, Prediction, Report, BASE};
use crate::runs::Following;
use crate::workspace::Workspace;

/// The shot sets to choose from.
const SHOTS: [&[usize]; 5] = [&[0, 1, 5], &[0], &[1], &[5], &[0, 1]];

pub struct EvalScreen {
    pub sets: Vec<PathBuf>,
    pub set_ix: usize,
    /// Trained adapters: (name, folder); compared with the base when chosen.
    pub adapters: Vec<(String, PathBuf)>,
    /// Index into `adapters` + 1; 0: every adapter.
    pub adapter_ix: usize,
    pub shots_ix: usize,
    /// The datasets of the chosen set; `dataset_ix` 0 is all of them, else one.
    pub datasets: Vec<String>,
    pub dataset_ix: usize,
    /// The run shown.
    pub run: Option<PathBuf>,
    pub report: Option<Report>,
    /// What the shown run's events say.
    pub view: Evaluation,
    following: Option<Following<EvalEvent>>,
    /// The shown run's state as of the last tick.
    state: Option<crate::runs::State>,
    pub row: usize,
    pub col: usize,
    /// The predictions of the cell opened with Enter, and the scroll.
    pub detail: Option<(String, Vec<Prediction>, usize)>,
    config_file: PathBuf,
    workspace: Workspace,
}

impl EvalScreen {
    pub fn new(workspace: &Workspace, config_file: &Path) -> EvalScreen {
        let mut sets: Vec<PathBuf> = std::fs::read_dir(workspace.eval_dir())
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        sets.sort();
        let mut s = EvalScreen {
            sets,
            set_ix: 0,
            adapters: Vec::new(),
            adapter_ix: 0,
            shots_ix: 0,
            datasets: Vec::new(),
            dataset_ix: 0,
            run: None,
            report: None,
            view: Evaluation::default(),
            following: None,
            state: None,
            row: 0,
            col: 0,
            detail: None,
            config_file: config_file.to_path_buf(),
            workspace: workspace.clone(),
        };
        s.rescan();
        s
    }

    /// Trained adapters, the chosen set's datasets, and the newest evaluation run.
    pub fn rescan(&mut self) {
        self.list_datasets();
        self.adapters = super::shared::trained_adapters(&self.workspace);
        self.adapter_ix = self.adapter_ix.min(self.adapters.len());
        if self.run.is_none() {
            let newest = self
                .workspace
                .runs_newest_first(|p| crate::runs::kind(p) == Some(crate::runs::Kind::Eval))
                .into_iter()
                .next();
            if let Some(dir) = newest {
                self.show(&dir);
            }
        }
        self.tick();
    }

    /// Shows the evaluation run in `dir` (from its first event), following it while it goes.
    pub fn show(&mut self, dir: &Path) {
        self.run = Some(dir.to_path_buf());
        self.report = None;
        self.view = Evaluation::default();
        self.following = Some(Following::new(dir, None));
        self.tick();
    }

    /// Follows the run: its new events, then its report.
    pub fn tick(&mut self) {
        let Some(f) = self.following.as_mut() else { return };
        // Asked before reading, so no event written before the end is missed.
        let running = f.running();
        f.poll(&mut self.view);
        self.state = Some(f.refresh_state().clone());
        if self.report.is_none() && self.view.report.is_some() {
            self.report = crate::eval::run::Report::read(&f.dir).ok();
        }
        if !running {
            self.view.notes.extend(f.torn());
            self.following = None;
        }
    }

    /// The shown run's state, said in a few words.
    fn state_label(&self) -> String {
        match &self.state {
            None => String::new(),
            Some(s) => Self::label(s),
        }
    }

    fn label(state: &crate::runs::State) -> String {
        match state.clone() {
            crate::runs::State::Stopped => "stopped (s with the same settings continues)".into(),
            crate::runs::State::Interrupted => "killed (s with the same settings continues)".into(),
            crate::runs::State::Failed(e) => format!("failed: {e}"),
            crate::runs::State::Running(_) => "running (x stops)".into(),
            crate::runs::State::Finished => "finished".into(),
            crate::runs::State::New => "starting".into(),
        }
    }

    fn stop(&mut self) -> Outcome {
        let Some(dir) = &self.run else { return Outcome::Error("no evaluation run shown".into()) };
        match crate::runs::stop(dir) {
            Ok(_) => Outcome::Notice(format!("stopping {}: its scored answers are kept", dir.display())),
            Err(e) => Outcome::Error(e),
        }
    }

    fn list_datasets(&mut self) {
        let Some(set) = self.sets.get(self.set_ix) else { return };
        let names: Vec<String> =
            crate::eval::data::dataset_files(set).unwrap_or_default().into_iter().map(|(n, _)| n).collect();
        self.datasets = names;
        self.dataset_ix = self.dataset_ix.min(self.datasets.len());
    }

    fn columns(&self) -> Vec<(String, usize)> {
        let Some(r) = &self.report else { return Vec::new() };
        r.shots.iter().flat_map(|&k| r.models.iter().map(move |m| (m.clone(), k))).collect()
    }

    pub fn is_typing(&self) -> bool {
        false
    }

    pub fn handle_key(&mut self, key: KeyEvent, model: &str) -> Outcome {
        if let Some((_, preds, scroll)) = self.detail.as_mut() {
            match key.code {
                KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') => self.detail = None,
                KeyCode::Char('j') | KeyCode::Down => *scroll = (*scroll + 1).min(preds.len().saturating_sub(1)),
                KeyCode::Char('k') | KeyCode::Up => *scroll = scroll.saturating_sub(1),
                _ => {}
            }
            return Outcome::Done;
        }
        let rows = self.report.as_ref().map_or(0, |r| r.datasets.len());
        let cols = self.columns().len();
        match key.code {
            KeyCode::Char('j') | KeyCode::Down => self.row = (self.row + 1).min(rows.saturating_sub(1)),
            KeyCode::Char('k') | KeyCode::Up => self.row = self.row.saturating_sub(1),
            KeyCode::Char('l') | KeyCode::Right => self.col = (self.col + 1).min(cols.saturating_sub(1)),
            KeyCode::Char('h') | KeyCode::Left => self.col = self.col.saturating_sub(1),
            KeyCode::Char('d') => {
                self.set_ix = (self.set_ix + 1) % self.sets.len().max(1);
                self.dataset_ix = 0;
                self.list_datasets();
            }
            KeyCode::Char('t') => self.dataset_ix = (self.dataset_ix + 1) % (self.datasets.len() + 1),
            KeyCode::Char('a') => {
                self.rescan();
                self.adapter_ix = (self.adapter_ix + 1) % (self.adapters.len() + 1);
            }
            KeyCode::Char('n') => self.shots_ix = (self.shots_ix + 1) % SHOTS.len(),
            KeyCode::Enter => return self.open_cell(),
            KeyCode::Char('s') => return self.start(model),
            KeyCode::Char('x') => return self.stop(),
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    fn open_cell(&mut self) -> Outcome {
        let (Some(run), Some(report)) = (&self.run, &self.report) else {
            return Outcome::Error("no report yet".into());
        };
        let Some(dataset) = report.datasets.get(self.row).cloned() else { return Outcome::Ignored };
        let Some((model, k)) = self.columns().get(self.col).cloned() else { return Outcome::Ignored };
        // The run's own reader of appended lines: a line still being written waits, a line
        // that is not a prediction is named, never skipped in silence.
        let path = run.join(crate::eval::run::PREDICTIONS);
        if !path.is_file() {
            return Outcome::Error(format!("{}: no predictions yet", path.display()));
        }
        let batch = crate::runs::Tail::file(&path).read_records::<Prediction>();
        let preds: Vec<Prediction> =
            batch.entries.into_iter().filter(|p| p.model == model && p.dataset == dataset && p.k == k).collect();
        self.detail = Some((format!(" {dataset} · {model} · {k}-shot ({} pairs; Esc closes) ", preds.len()), preds, 0));
        match batch.dropped.first() {
            Some(first) => Outcome::Error(format!("{} line(s) left out: {first}", batch.dropped.len())),
            None => Outcome::Done,
        }
    }

    fn start(&mut self, model: &str) -> Outcome {
        if model.trim().is_empty() {
            return Outcome::Error("no model: set it on the Generate tab (2)".into());
        }
        let Some(set) = self.sets.get(self.set_ix).cloned() else {
            return Outcome::Error(format!("no evaluation sets in {}", self.workspace.eval_dir().display()));
        };
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let name = set.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let dir = self.workspace.runs_dir().join(format!("eval-{name}-{secs}"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return Outcome::Error(format!("cannot create {}: {e}", dir.display()));
        }
        let chosen: Vec<(String, PathBuf)> = match self.adapter_ix {
            0 => self.adapters.clone(),
            i => self.adapters.get(i - 1).cloned().into_iter().collect(),
        };
        let launch = crate::launch::Launch::Eval(crate::launch::Eval {
            model: model.trim().to_string(),
            data: set,
            run: dir.clone(),
            shots: SHOTS[self.shots_ix].to_vec(),
            datasets: self.dataset_ix.checked_sub(1).and_then(|i| self.datasets.get(i)).cloned().into_iter().collect(),
            adapters: chosen,
        });
        match crate::launch::start(&self.config_file, &self.workspace.root, &launch) {
            Ok(child) => {
                self.show(&dir);
                self.following = Some(Following::new(&dir, Some(child)));
                Outcome::Notice(format!("evaluating into {} (detached; x stops it)", dir.display()))
            }
            Err(e) => Outcome::Error(e),
        }
    }

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let [setup, table, chart] =
            Layout::vertical([Constraint::Length(4), Constraint::Min(5), Constraint::Length(7)]).areas(area);
        self.render_setup(frame, setup, theme);
        self.render_table(frame, table, theme);
        self.render_chart(frame, chart, theme);
        if let Some((title, preds, scroll)) = &self.detail {
            let inner = super::shared::overlay_box(
                frame,
                area,
                area.width.saturating_sub(4),
                area.height.saturating_sub(2),
                title,
                theme,
            );
            let mut lines = Vec::new();
            for p in preds.iter().skip(*scroll) {
                lines.push(Line::from(vec![Span::styled(
                    format!("#{} F1 {:.0} ROUGE-L {:.0}  ", p.index, p.f1, p.rouge_l),
                    theme.muted,
                )]));
                lines.push(Line::from(vec![Span::styled("pred ", theme.field_label), Span::raw(p.prediction.clone())]));
                lines.push(Line::from(vec![
                    Span::styled("gold ", theme.field_label),
                    Span::raw(p.references.join(" | ")),
                ]));
            }
            frame.render_widget(Clear, inner);
            frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
        }
    }

    fn render_setup(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = super::shared::panel(frame, area, " Evaluate ", theme.border, theme);
        let set = self
            .sets
            .get(self.set_ix)
            .and_then(|p| p.file_name())
            .map_or("(none)".into(), |n| n.to_string_lossy().to_string());
        let adapters = match self.adapter_ix {
            0 if self.adapters.is_empty() => "no adapters".to_string(),
            0 => format!("all {} adapters", self.adapters.len()),
            i => self.adapters.get(i - 1).map(|a| a.0.clone()).unwrap_or_default(),
        };
        let [text, gauge] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
        let which = match self.dataset_ix {
            0 => "all".to_string(),
            i => self.datasets.get(i - 1).cloned().unwrap_or_default(),
        };
        let line = Line::from(vec![
            Span::styled("d ", theme.key),
            Span::raw(format!("set ‹{set}›  ")),
            Span::styled("t ", theme.key),
            Span::raw(format!("‹{which}›  ")),
            Span::styled("a ", theme.key),
            Span::raw(format!("‹{adapters}›  ")),
            Span::styled("n ", theme.key),
            Span::raw(format!(
                "k ‹{}›  ",
                SHOTS[self.shots_ix].iter().map(usize::to_string).collect::<Vec<_>>().join(",")
            )),
            Span::styled("s ", theme.key),
            Span::raw("start"),
        ]);
        frame.render_widget(Paragraph::new(line).style(theme.base), text);
        let (done, total) = (self.view.done, self.view.requests);
        let ratio = if total > 0 { done as f64 / total as f64 } else { 0.0 };
        let run =
            self.run.as_ref().and_then(|r| r.file_name()).map_or(String::new(), |n| n.to_string_lossy().to_string());
        let state = self.state_label();
        let label =
            if total > 0 { format!("{run}: {done}/{total} answers · {state}") } else { format!("{run} {state}") };
        frame.render_widget(Gauge::default().gauge_style(theme.ok).ratio(ratio.min(1.0)).label(label), gauge);
    }

    fn render_table(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = super::shared::panel(
            frame,
            area,
            " F1 (Δ against the base, * significant after Holm; Enter: the pairs) ",
            theme.border_focus,
            theme,
        );
        let Some(r) = &self.report else {
            let text = if self.run.is_some() {
                "Running…"
            } else {
                "No evaluation yet: s evaluates the base and the trained adapters."
            };
            frame.render_widget(Paragraph::new(text).style(theme.muted), inner);
            return;
        };
        let cols = self.columns();
        let name_w = 14usize;
        let col_w = ((inner.width as usize).saturating_sub(name_w) / cols.len().max(1)).clamp(6, 15);
        let mut header = vec![Span::styled(format!("{:<name_w$}", "dataset"), theme.field_label)];
        for (m, k) in &cols {
            header.push(Span::styled(
                format!("{:>col_w$}", truncate(&format!("{m} {k}s"), col_w - 1)),
                theme.field_label,
            ));
        }
        // A Δ is coloured only when it stays significant after Holm; else it is muted.
        let delta_style = |d: &crate::eval::stats::Delta| match d.significant() {
            true if d.delta > 0.0 => theme.ok,
            true => theme.error,
            false => theme.muted,
        };
        let mut lines = vec![Line::from(header)];
        for (i, d) in r.datasets.iter().enumerate() {
            let mut spans = vec![Span::styled(format!("{:<name_w$}", truncate(d, name_w - 1)), theme.base)];
            for (j, (m, k)) in cols.iter().enumerate() {
                let cell = r.cell(m, d, *k);
                let base = r.cell(BASE, d, *k).map(|c| c.f1);
                let (text, style) = match (cell, base) {
                    (Some(c), _) if c.vs_base.is_some() => {
                        let dl = c.vs_base.as_ref().map(|v| v.f1).expect("checked");
                        let mark = if dl.significant() { "*" } else { " " };
                        (format!("{:.1} {:+.1}{mark}", c.f1, dl.delta), delta_style(&dl))
                    }
                    (Some(c), Some(b)) if m != BASE => (format!("{:.1} {:+.1} ", c.f1, c.f1 - b), theme.muted),
                    (Some(c), _) => (format!("{:.1} ", c.f1), theme.base),
                    _ => ("– ".into(), theme.muted),
                };
                let style = if i == self.row && j == self.col { theme.selection } else { style };
                spans.push(Span::styled(format!("{:>col_w$}", truncate(&text, col_w - 1)), style));
            }
            lines.push(Line::from(spans));
        }
        let mut avg = vec![Span::styled(format!("{:<name_w$}", "average"), theme.field_label)];
        for (m, k) in &cols {
            let (text, style) = match r.average_of(m, *k).and_then(|a| a.vs_base.as_ref().map(|v| (a, v.f1))) {
                Some((a, dl)) => {
                    let mark = if dl.significant() { "*" } else { " " };
                    (format!("{:.1} {:+.1}{mark}", a.f1.mean, dl.delta), delta_style(&dl))
                }
                None => (format!("{:.1} ", r.average(m, *k, true)), theme.field_label),
            };
            avg.push(Span::styled(format!("{:>col_w$}", truncate(&text, col_w - 1)), style));
        }
        lines.push(Line::from(avg));
        lines.push(Line::from(""));
        for text in self.selected_statistics(r) {
            lines.push(Line::from(Span::styled(text, theme.base)));
        }
        frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
    }

    /// The selected cell's numbers in words: its score with the interval, and against the base
    /// Δ with its interval, p, Holm's p and the smallest detectable Δ (both metrics).
    fn selected_statistics(&self, r: &Report) -> Vec<String> {
        use crate::eval::report::{delta_text, p_text, with_interval};
        let (Some(d), Some((m, k))) = (r.datasets.get(self.row), self.columns().get(self.col).cloned()) else {
            return Vec::new();
        };
        let Some(c) = r.cell(&m, d, k) else { return Vec::new() };
        let exact = c.exact.filter(|_| r.labels.contains(d)).map_or(String::new(), |e| format!(", exact match {e:.1}"));
        let mut out = vec![format!("{d} · {m} · {k}-shot, {} examples{exact}", c.n)];
        let against = |dl: Option<crate::eval::stats::Delta>| match dl {
            Some(dl) => format!(
                " Δ {} p {} Holm {} min Δ {:.1}",
                delta_text(&dl),
                p_text(dl.p),
                dl.holm_p.map_or("–".into(), p_text),
                dl.detectable
            ),
            None => String::new(),
        };
        let v = c.vs_base.as_ref();
        out.push(format!("F1  {}{}", with_interval(c.f1, c.f1_ci), against(v.map(|v| v.f1))));
        out.push(format!("RL  {}{}", with_interval(c.rouge_l, c.rouge_l_ci), against(v.map(|v| v.rouge_l))));
        if let Some(p) = v.and_then(|v| v.mcnemar_p) {
            out.push(format!("McNemar's exact p {} (right/wrong against the base)", p_text(p)));
        }
        if v.is_some() {
            out.push("min Δ: the smallest |Δ| these examples detect (80 % power, 5 %)".into());
        } else if r.stats.is_none() {
            out.push("(a report from before intervals: run the evaluation again to add them)".into());
        }
        out
    }

    fn render_chart(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let Some(r) = &self.report else {
            frame.render_widget(Block::default().borders(Borders::ALL).border_style(theme.border), area);
            return;
        };
        let dataset = r.datasets.get(self.row).cloned().unwrap_or_default();
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.border)
            .title(Span::styled(format!(" {dataset}: F1 by model and k "), theme.title));
        let top = r.cells.iter().filter(|c| c.dataset == dataset).map(|c| c.f1).fold(1.0f64, f64::max);
        let mut chart = BarChart::default()
            .block(block)
            .bar_width(5)
            .bar_gap(1)
            .group_gap(2)
            .max(top.ceil() as u64)
            .style(theme.base);
        for &k in &r.shots {
            let bars: Vec<Bar> = r
                .models
                .iter()
                .map(|m| {
                    let v = r.cell(m, &dataset, k).map_or(0.0, |c| c.f1);
                    Bar::default().value(v.round() as u64).label(Line::from(truncate(m, 5))).style(if m == BASE {
                        theme.muted
                    } else {
                        theme.accent
                    })
                })
                .collect();
            chart = chart.data(BarGroup::default().label(Line::from(format!("{k}-shot"))).bars(&bars));
        }
        frame.render_widget(chart, area);
    }
}
