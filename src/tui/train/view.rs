//! How the tab draws itself.

use super::*;

impl TrainScreen {
    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let list_width = (area.width / 3).clamp(20.min(area.width), 36);
        let [list, right] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        self.render_list(frame, list, theme);
        let [chart, info] = Layout::vertical([Constraint::Min(6), Constraint::Length(5)]).areas(right);
        match &self.pending {
            Some(p) => {
                let inner = crate::tui::shared::panel(
                    frame,
                    chart,
                    " New training run: its settings ",
                    theme.border_focus,
                    theme,
                );
                let lines: Vec<Line> = p
                    .lines()
                    .into_iter()
                    .map(|l| if l.starts_with("warning:") { Line::styled(l, theme.error) } else { Line::from(l) })
                    .collect();
                frame.render_widget(
                    Paragraph::new(lines).wrap(ratatui::widgets::Wrap { trim: false }).style(theme.base),
                    inner,
                );
            }
            None => self.render_chart(frame, chart, theme),
        }
        self.render_info(frame, info, theme);
    }

    fn render_list(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let empty = "No training runs yet. s trains on the accepted samples of the run shown on the Review tab.";
        let rows: Vec<(RunState, String)> = self.runs.iter().map(|r| (r.state(), r.name())).collect();
        render_runs(frame, area, " Runs ", empty, &rows, self.selected, theme);
    }

    fn render_chart(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let title = format!(
            " Loss · {} (w: {}) ",
            self.current().map(|r| r.name()).unwrap_or_default(),
            if self.whole { "whole run" } else { "recent" }
        );
        let block =
            Block::default().borders(Borders::ALL).border_style(theme.border).title(Span::styled(title, theme.title));
        let Some(run) = self.current().map(|r| &r.view).filter(|r| !r.steps.is_empty()) else {
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
        let view = &run.view;
        let last = view.steps.last();
        let state = run.state();
        let model = view.job.as_ref().map(|j| j.model.clone()).unwrap_or_default();
        let line1 = match last {
            Some(s) => format!(
                "{} · step {}/{} · epoch {:.2} · loss {:.4} · lr {:.2e} · {:.0} tokens/s",
                short(&state),
                s.step,
                view.total_steps,
                s.epoch,
                s.loss,
                s.lr,
                s.tokens_per_s
            ),
            None => match &view.plan {
                Some(plan) => format!("{} · {}", short(&state), plan.line()),
                None => format!("{} · waiting for the first step", short(&state)),
            },
        };
        let line2 = match (&state, &view.last) {
            (RunState::Failed(e), _) => format!("failed: {e}"),
            (RunState::Interrupted, _) => {
                let said = crate::runs::last_output(&run.dir).unwrap_or_else(|| "no message".into());
                format!("interrupted (killed?): {said}; `selfspec train … --resume` continues")
            }
            (_, Some(TrainEvent::Finished { adapter, .. })) => format!("adapter: {}", adapter.display()),
            (_, Some(TrainEvent::Stopped { checkpoint, .. })) => {
                format!("stopped at {}; `selfspec train … --resume` continues", checkpoint.display())
            }
            _ => match view.notes.last() {
                Some(note) => format!("note: {note}"),
                None => format!("model {model}"),
            },
        };
        let w = inner.width as usize;
        let style = if matches!(state, RunState::Failed(_) | RunState::Interrupted) { theme.error } else { theme.base };
        frame.render_widget(
            Paragraph::new(vec![Line::from(truncate(&line1, w)), Line::from(Span::styled(truncate(&line2, w), style))])
                .style(theme.base),
            text,
        );
        let done = last.map_or(0, |s| s.step);
        let ratio = if view.total_steps > 0 { (done as f64 / view.total_steps as f64).min(1.0) } else { 0.0 };
        let eta = match (&state, last) {
            (RunState::Running(_), Some(s)) => format!(" ETA {:.0}s", s.eta_s),
            _ => String::new(),
        };
        frame.render_widget(
            Gauge::default().gauge_style(theme.ok).ratio(ratio).label(format!("{:.0}%{eta}", ratio * 100.0)),
            gauge,
        );
    }
}
