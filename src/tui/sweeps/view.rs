//! How the tab draws itself.

use super::*;

impl SweepsScreen {
    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let list_width = (area.width / 3).clamp(20.min(area.width), 34);
        let [list, right] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        if let Some(st) = &self.starting {
            self.render_start(st, frame, area, theme);
            return;
        }
        let empty = "No sweeps yet. n: choose a sweep file, see its plan and start it (README, Sweeps).";
        let rows: Vec<(State, String)> = self.sweeps.iter().map(|s| (s.state().clone(), s.name())).collect();
        crate::tui::train::render_runs(frame, list, " Sweeps ", empty, &rows, self.selected, theme);
        if self.sweeps.is_empty() {
            return;
        }
        let Some(s) = self.sweeps.get(self.selected) else { return };
        let stages = &s.stages;
        let height = (stages.len() as u16 + 2 + u16::from(!s.left_out.is_empty())).min(right.height / 2).max(3);
        let [table, chart] = Layout::vertical([Constraint::Length(height), Constraint::Min(4)]).areas(right);
        let title = match &s.progress.stage {
            Some((stage, name)) if s.state().is_running() => format!(" Stages · now {stage} {name} "),
            _ => format!(" Stages · {} ", s.state().label()),
        };
        let inner = crate::tui::shared::panel(frame, table, &title, theme.border, theme);
        let mut lines: Vec<Line> = Vec::new();
        if let Some(first) = s.left_out.first() {
            let more =
                if s.left_out.len() > 1 { format!(" (and {} more)", s.left_out.len() - 1) } else { String::new() };
            lines.push(Line::styled(format!("left out: {first}{more}"), theme.error));
        }
        lines.extend(stages.iter().map(|(label, _, state)| {
            Line::from(vec![
                Span::styled(
                    format!("{:<9}", crate::tui::train::short(state)),
                    crate::tui::train::state_style(state, theme),
                ),
                Span::raw(label.clone()),
            ])
        }));
        frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
        self.render_chart(s, frame, chart, theme);
    }

    fn render_start(&self, st: &Starting, frame: &mut Frame, area: Rect, theme: &Theme) {
        let list_width = (area.width / 3).clamp(20.min(area.width), 34);
        let [list, right] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        let inner = crate::tui::shared::panel(frame, list, " Sweep files · s start · Esc ", theme.border_focus, theme);
        let lines: Vec<Line> = st
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let style = if i == st.selected { theme.selection } else { theme.base };
                Line::styled(format!("{} {name}", if i == st.selected { "›" } else { " " }), style)
            })
            .collect();
        frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
        let file = st.files.get(st.selected);
        let title = match file {
            Some(f) => format!(" Plan · {} ", f.display()),
            None => " Plan ".into(),
        };
        let inner = crate::tui::shared::panel(frame, right, &title, theme.border, theme);
        let (text, style) = match (&st.plan, file) {
            (Some((f, Ok(plan))), Some(g)) if f == g => (plan.clone(), theme.base),
            (Some((f, Err(e))), Some(g)) if f == g => (format!("This sweep cannot start:\n{e}"), theme.error),
            _ => ("Planning: loading the model and measuring its speed on this machine…".into(), theme.muted),
        };
        frame.render_widget(Paragraph::new(text).style(style).wrap(ratatui::widgets::Wrap { trim: false }), inner);
    }

    fn render_chart(&self, s: &SweepView, frame: &mut Frame, area: Rect, theme: &Theme) {
        if s.spec.as_ref().is_some_and(|sp| sp.seeded.is_some()) {
            return self.render_lmc(s, frame, area, theme);
        }
        let k = s.spec.as_ref().and_then(|sp| sp.shots.first().copied()).unwrap_or(0);
        let title = format!(" F1, mean of datasets, {k}-shot (dots: 95 % CI) vs {} · a: axis ", self.axis);
        let block =
            Block::default().borders(Borders::ALL).border_style(theme.border).title(Span::styled(title, theme.title));
        let Curves { tuned, base, low, high } = s.curves(self.axis);
        if tuned.is_empty() {
            let inner = block.inner(area);
            frame.render_widget(block, area);
            let text = "No scores yet: the curves fill in as the evaluation scores each point's answers.";
            frame.render_widget(Paragraph::new(text).style(theme.muted), inner);
            return;
        }
        let xs = tuned.iter().chain(&base).map(|p| p.0);
        let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
        let ys = tuned.iter().chain(&base).chain(&low).chain(&high).map(|p| p.1);
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
            Dataset::default()
                .name("95 %")
                .marker(Marker::Dot)
                .graph_type(GraphType::Line)
                .style(theme.field_label)
                .data(&low),
            Dataset::default().marker(Marker::Dot).graph_type(GraphType::Line).style(theme.field_label).data(&high),
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
            )
            .hidden_legend_constraints((Constraint::Percentage(50), Constraint::Percentage(60)));
        frame.render_widget(chart, area);
    }

    /// A seeded sweep's chart: the loss per token along the ΔW line between each pair of the
    /// chosen point's experts, with the pairs' barriers in the legend.
    fn render_lmc(&self, s: &SweepView, frame: &mut Frame, area: Rect, theme: &Theme) {
        let Some((point, pairs)) = s.lmc.get(self.lmc_point.min(s.lmc.len().saturating_sub(1))) else {
            let block = Block::default()
                .borders(Borders::ALL)
                .border_style(theme.border)
                .title(Span::styled(" Loss between experts ", theme.title));
            let inner = block.inner(area);
            frame.render_widget(block, area);
            let text = "No LMC yet: each point's curves appear when its experts' LMC stage ends.";
            frame.render_widget(Paragraph::new(text).style(theme.muted), inner);
            return;
        };
        let title = format!(
            " Loss between experts · {point} (ΔW line) · a: next point ({}/{}) ",
            self.lmc_point.min(s.lmc.len() - 1) + 1,
            s.lmc.len()
        );
        let block =
            Block::default().borders(Borders::ALL).border_style(theme.border).title(Span::styled(title, theme.title));
        let data: Vec<(String, Vec<(f64, f64)>)> = pairs
            .iter()
            .map(|p| {
                let name = format!("{}–{} barrier {:.3}", p.a, p.b, p.barrier_merged);
                (name, p.alpha.iter().copied().zip(p.merged.iter().copied()).collect())
            })
            .collect();
        let ys = data.iter().flat_map(|(_, d)| d.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
        let pad = ((hi - lo) * 0.1).max(1e-3);
        let styles = [theme.accent, theme.ok, theme.warning, theme.error, theme.title, theme.muted];
        let datasets: Vec<Dataset> = data
            .iter()
            .enumerate()
            .map(|(i, (name, d))| {
                Dataset::default()
                    .name(name.clone())
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(styles[i % styles.len()])
                    .data(d)
            })
            .collect();
        let axis = |st| Axis::default().style(st);
        let chart = Chart::new(datasets)
            .block(block)
            .style(theme.base)
            .x_axis(axis(theme.muted).bounds([0.0, 1.0]).labels(["α 0", "1"]))
            .y_axis(
                axis(theme.muted)
                    .bounds([lo - pad, hi + pad])
                    .labels([format!("{:.3}", lo - pad), format!("{:.3}", hi + pad)]),
            )
            .hidden_legend_constraints((Constraint::Percentage(90), Constraint::Percentage(60)));
        frame.render_widget(chart, area);
    }
}
