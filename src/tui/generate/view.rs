//! How the tab draws itself.

use super::*;

impl GenerateScreen {
    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let [top, middle, bottom] =
            Layout::vertical([Constraint::Length(9), Constraint::Min(4), Constraint::Length(5)]).areas(area);
        let [setup, stats] = Layout::horizontal([Constraint::Percentage(45), Constraint::Min(0)]).areas(top);
        self.render_setup(frame, setup, theme);
        self.render_stats(frame, stats, theme);
        self.render_stream(frame, middle, theme);
        self.render_recent(frame, bottom, theme);
    }

    fn render_setup(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = crate::tui::shared::panel(frame, area, " Setup ", theme.border, theme);
        let width = inner.width.saturating_sub(9) as usize;
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let values = [
            self.seed_files.get(self.seed_ix).map(|p| format!("‹ {} ›", name(p))).unwrap_or("(no seed files)".into()),
            match (&self.typing, self.field) {
                (Some(t), 1) => format!("{t}▏"),
                _ => match (&self.fetching, self.fetchable()) {
                    (Some(f), _) => format!("(fetching {}…)", f.model.name),
                    (None, _) if self.model.is_empty() => {
                        format!("(F fetch {} · ←→ · Enter type one)", fetch::DEFAULT.name)
                    }
                    (None, Some(m)) if m.installed(&self.cache_dir).is_some() => {
                        format!("‹ {}{} ›", m.name, if m.base { " (base)" } else { "" })
                    }
                    (None, Some(m)) => format!("‹ {} (F fetches it) ›", m.name),
                    (None, None) => self.model.clone(),
                },
            },
            format!("‹ {} ›", self.adapters.get(self.adapter_ix).map_or("none", |a| a.label.as_str())),
            if self.corpus_ix == 0 {
                "‹ none ›".into()
            } else {
                format!("‹ {} ›", name(&self.corpora[self.corpus_ix]))
            },
            format!("‹ {} ›", self.mode.as_str()),
            match (&self.typing, self.field) {
                (Some(t), 5) => format!("{t}▏"),
                _ => self.n.to_string(),
            },
        ];
        let mut lines: Vec<Line> = FIELDS
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (label, value))| {
                let style = if i == self.field { theme.field_label_focus } else { theme.field_label };
                let marker = if i == self.field { "›" } else { " " };
                Line::from(vec![
                    Span::styled(format!("{marker}{label:<7} "), style),
                    Span::styled(truncate(&value, width), if i == self.field { theme.selection } else { theme.base }),
                ])
            })
            .collect();
        let action = if self.following.is_some() || self.fetching.is_some() {
            "x stop"
        } else if self.model.is_empty() || self.fetchable().is_some_and(|m| m.installed(&self.cache_dir).is_none()) {
            "F fetch"
        } else {
            "s start"
        };
        lines.push(Line::from(vec![
            Span::styled(format!(" {action}"), theme.key),
            Span::styled("  ←→ change  ↑↓ field", theme.muted),
        ]));
        frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
    }

    fn render_stats(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let title = match self.run_dir() {
            Some(d) => {
                format!(" Progress · {} ", d.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default())
            }
            None => " Progress ".into(),
        };
        let inner = crate::tui::shared::panel(frame, area, &title, theme.border, theme);
        let [text, gauge] = Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
        let c = &self.view.counters;
        let secs = self.elapsed();
        let (per_min, eta) = self.view.rate(secs);
        let reasons = |m: &BTreeMap<String, usize>| {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{} {v}", k.replace('_', " "))).collect();
            if parts.is_empty() {
                String::new()
            } else {
                format!(": {}", parts.join(", "))
            }
        };
        let filtered: usize = c.filtered.values().sum();
        let unparsed: usize = c.unparsed.values().sum();
        let w = inner.width as usize;
        let state_style = if self.view.error { theme.error } else { theme.accent };
        let lines = vec![
            Line::from(Span::styled(truncate(&self.view.state, w), state_style)),
            Line::from(if self.view.budget > 0 {
                format!(
                    "kept {}/{} · prompts {}/{} · parsed {}",
                    c.kept,
                    self.goal(),
                    c.prompts,
                    self.view.budget,
                    c.parsed
                )
            } else {
                format!("kept {}/{} · prompts {} · parsed {}", c.kept, self.goal(), c.prompts, c.parsed)
            }),
            Line::from(format!("{per_min:.1} samples/min · {} tasks waiting", c.waiting)),
            Line::from(Span::styled(truncate(&c.time.line(), w), theme.muted)),
            Line::from(Span::styled(truncate(&format!("filtered {filtered}{}", reasons(&c.filtered)), w), theme.muted)),
            Line::from(Span::styled(truncate(&format!("unparsed {unparsed}{}", reasons(&c.unparsed)), w), theme.muted)),
        ];
        frame.render_widget(Paragraph::new(lines).style(theme.base), text);
        if let Some(f) = &self.fetching {
            let ratio = if f.total > 0 { (f.done as f64 / f.total as f64).min(1.0) } else { 0.0 };
            let label = format!(
                "{} {} {:.0}% ({:.1}/{:.1} MB)",
                f.stage,
                f.model.name,
                ratio * 100.0,
                f.done as f64 / 1e6,
                f.total as f64 / 1e6
            );
            frame.render_widget(Gauge::default().gauge_style(theme.accent).ratio(ratio).label(label), gauge);
            return;
        }
        let target = self.goal().max(1);
        let ratio = (c.kept as f64 / target as f64).min(1.0);
        let eta = match eta {
            Some(left) if self.following.is_some() => format!(" ETA {}", crate::runs::duration(left)),
            _ => String::new(),
        };
        let gauge_widget =
            Gauge::default().gauge_style(theme.ok).ratio(ratio).label(format!("{:.0}%{eta}", ratio * 100.0));
        frame.render_widget(gauge_widget, gauge);
    }

    fn render_stream(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let (title, text) = match (&self.view.response, &self.view.current) {
            (Some((id, t)), _) => (format!(" Response {id} "), t.clone()),
            (None, Some((p, t))) => (format!(" Instruction prompt {} ", p + 1), t.clone()),
            _ => (" Decoding ".into(), String::new()),
        };
        let inner = crate::tui::shared::panel(frame, area, &title, theme.border, theme);
        // The newest text: as many trailing lines as fit.
        let width = inner.width.max(1) as usize;
        let mut rows: Vec<String> = Vec::new();
        for line in text.lines() {
            // wrap_line gives char ranges, not byte ranges: model text is any Unicode.
            let chars: Vec<char> = line.chars().collect();
            for (s, e) in crate::tui::editor::wrap_line(line, width) {
                rows.push(chars[s..e].iter().collect());
            }
        }
        let skip = rows.len().saturating_sub(inner.height as usize);
        let lines: Vec<Line> = rows.into_iter().skip(skip).map(Line::from).collect();
        frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
    }

    fn render_recent(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = crate::tui::shared::panel(frame, area, " Kept (newest first) ", theme.border, theme);
        let w = inner.width as usize;
        let lines: Vec<Line> =
            self.view.recent.iter().take(inner.height as usize).map(|s| Line::from(truncate(s, w))).collect();
        frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
    }
}
