//! How the tab draws itself.

use super::*;

impl CorpusScreen {
    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let longest = self.entries.iter().map(|e| e.name.width()).max().unwrap_or(0) as u16;
        let list_width = (longest + 4).clamp(16, 32).min(area.width / 3);
        let [list, detail] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        self.render_list(frame, list, theme);
        self.render_detail(frame, detail, theme);
    }

    fn render_list(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = crate::tui::shared::panel(frame, area, " Corpora ", theme.border, theme);
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
        let inner = crate::tui::shared::panel(frame, area, &title, theme.border, theme);
        let w = inner.width as usize;
        let mut head: Vec<Line> = Vec::new();
        let Some(e) = self.entry() else {
            frame.render_widget(
                Paragraph::new(self.note.clone()).style(theme.muted).wrap(ratatui::widgets::Wrap { trim: false }),
                inner,
            );
            return;
        };
        self.corpus_lines(&mut head, theme, w);
        head.push(self.index_line(e, theme));
        head.push(self.query_line(theme, w));
        let [top, body] = Layout::vertical([Constraint::Length(head.len() as u16), Constraint::Min(0)]).areas(inner);
        frame.render_widget(Paragraph::new(head).style(theme.base), top);
        frame.render_widget(Paragraph::new(self.result_lines(theme, w)).style(theme.base), body);
    }

    /// The corpus file's size, document lengths and first problem (or where reading it stands).
    fn corpus_lines(&self, head: &mut Vec<Line<'static>>, theme: &Theme, w: usize) {
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
    }

    /// The index's state, or the build under way with its progress.
    fn index_line(&self, e: &Entry, theme: &Theme) -> Line<'static> {
        match &self.building {
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
        }
    }

    /// The query's ranked documents with their passages, the documents a run used that the
    /// index no longer ranks, or the note.
    fn result_lines(&self, theme: &Theme, w: usize) -> Vec<Line<'static>> {
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
            for (a, b) in crate::tui::editor::wrap_line(&self.note, w) {
                lines.push(Line::styled(self.note.chars().skip(a).take(b - a).collect::<String>(), theme.muted));
            }
        }
        lines
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
    let ranges = crate::tui::editor::wrap_line(&flat, room);
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
