//! How the tab draws itself.

use super::*;

impl App {
    pub fn render(&self, frame: &mut Frame) {
        let size = frame.area();
        self.size.set(size);
        let theme = &self.theme;
        frame.render_widget(Paragraph::new("").style(theme.base), size);
        let a = areas(size);
        self.render_tabs(frame, a.tabs);
        let body = Rect { y: a.list.y, height: a.list.height, x: size.x, width: size.width };
        match self.tab {
            Tab::Seeds => {
                if let Some(s) = &self.seeds {
                    seeds_view::render_list(frame, s, a.list, theme);
                    seeds_view::render_detail(frame, s, a.detail, theme);
                }
            }
            Tab::Generate => self.generate.render(frame, body, theme),
            Tab::Review => self.review.render(frame, body, theme),
            Tab::Train => self.train.render(frame, body, theme),
            Tab::Eval => self.eval.render(frame, body, theme),
            Tab::Compare => self.compare.render(frame, body, theme),
            Tab::Sweeps => self.sweeps.render(frame, body, theme),
            Tab::Corpus => self.corpus.render(frame, body, theme),
        }
        self.render_status(frame, a.status);
        match &self.overlay {
            Some(Overlay::Help { scroll }) => self.help_max.set(help::render(frame, size, *scroll, theme)),
            Some(Overlay::Files(p)) => p.render(frame, size, theme),
            None => {}
        }
    }

    fn render_tabs(&self, frame: &mut Frame, area: Rect) {
        let theme = &self.theme;
        let mut spans = Vec::new();
        if show_brand(area.width) {
            spans.extend([Span::styled(" selfspec ", theme.accent), Span::styled("│", theme.border)]);
        }
        let active = TAB_ORDER.iter().position(|&t| t == self.tab).unwrap_or(0);
        for (i, tab) in TABS.iter().enumerate() {
            let style = if i == active { theme.tab_active } else { theme.tab };
            spans.push(Span::styled(format!(" {} {tab} ", i + 1), style));
        }
        let domain = self.seeds.as_ref().map(|s| s.doc.domain.clone()).unwrap_or_default();
        let used: usize = spans.iter().map(|s| s.content.width()).sum();
        // The domain where it fits whole (the status bar names the file either way).
        let right = match format!(" domain: {domain} ") {
            _ if domain.is_empty() => String::new(),
            r if used + r.width() <= area.width as usize => r,
            _ => String::new(),
        };
        let fill = (area.width as usize).saturating_sub(used + right.width());
        spans.push(Span::raw(" ".repeat(fill)));
        spans.push(Span::styled(right, theme.muted));
        frame.render_widget(Paragraph::new(Line::from(spans)).style(theme.base), area);
    }

    fn render_status(&self, frame: &mut Frame, area: Rect) {
        let theme = &self.theme;
        let width = area.width as usize;
        let mut left: Vec<Span> = Vec::new();
        let mode = match (&self.seeds, self.tab) {
            (_, Tab::Generate) if self.generate.is_running() => " GENERATING ",
            (_, Tab::Generate) => " GENERATE ",
            (_, Tab::Review) if self.review.is_typing() => " EDIT ",
            (_, Tab::Review) => " REVIEW ",
            (_, Tab::Train) => " TRAIN ",
            (_, Tab::Eval) => " EVAL ",
            (_, Tab::Compare) if self.compare.is_running() => " ANSWERING ",
            (_, Tab::Compare) => " COMPARE ",
            (_, Tab::Sweeps) => " SWEEPS ",
            (_, Tab::Corpus) if self.corpus.is_typing() => " SEARCH ",
            (_, Tab::Corpus) => " CORPUS ",
            (Some(s), _) if s.read_only() => " READ-ONLY ",
            (Some(s), _) if s.editing.is_some() => " EDIT ",
            (Some(s), _) if s.searching => " SEARCH ",
            _ => " SEEDS ",
        };
        left.push(Span::styled(mode, theme.mode));
        let mut right: Vec<Span> = Vec::new();
        if let (Tab::Seeds, Some(s)) = (self.tab, &self.seeds) {
            let (text, style) = match &s.save {
                _ if s.read_only() => ("read-only".to_string(), theme.warning),
                SaveState::Saved => ("✓ saved".to_string(), theme.ok),
                SaveState::Unsaved { .. } => ("● unsaved".to_string(), theme.warning),
                SaveState::Failed(_) => ("✗ save failed".to_string(), theme.error),
                SaveState::Conflict => ("⚠ changed on disk".to_string(), theme.error),
            };
            let n = s.problems.len();
            let (ptext, pstyle) =
                if n == 0 { ("valid".to_string(), theme.ok) } else { (format!("{n} problem(s)"), theme.warning) };
            right.push(Span::styled(format!(" {ptext} "), pstyle));
            right.push(Span::styled("│", theme.muted));
            right.push(Span::styled(format!(" {text} "), style));
        }
        right.push(Span::styled("│", theme.muted));
        right.push(Span::styled(" ? help ", theme.key));
        let right_width: usize = right.iter().map(|s| s.content.width()).sum();
        let mode_width = mode.width();
        let room = width.saturating_sub(right_width + mode_width + 1);
        let middle = match &self.notice {
            Some(n) => Span::styled(
                format!(" {}", truncate(&n.text, room.saturating_sub(1))),
                if n.error { theme.error } else { theme.accent },
            ),
            None if matches!(self.tab, Tab::Review | Tab::Corpus) => {
                let line = if self.tab == Tab::Review { self.review.status_line() } else { self.corpus.status_line() };
                Span::styled(format!(" {}", truncate(&line, room.saturating_sub(1))), theme.status)
            }
            None => {
                let file = self.seeds.as_ref().map(|s| s.file_name()).unwrap_or_default();
                let ws = display_path(&self.workspace.root);
                let text = if file.is_empty() { ws } else { format!("{ws} › {file}") };
                Span::styled(format!(" {}", truncate_start(&text, room.saturating_sub(1))), theme.status)
            }
        };
        let middle_width = middle.content.width();
        left.push(middle);
        left.push(Span::styled(
            " ".repeat(width.saturating_sub(mode_width + middle_width + right_width)),
            theme.status,
        ));
        left.extend(right);
        frame.render_widget(Paragraph::new(Line::from(left)).style(theme.status), area);
    }
}

/// `path` with the home folder written as `~`.
fn display_path(path: &Path) -> String {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match home.and_then(|h| path.strip_prefix(&h).ok().map(Path::to_path_buf)) {
        Some(rest) => format!("~/{}", rest.display()),
        None => path.display().to_string(),
    }
}

/// Keeps the end of `s` (the file name matters more than the folders above it).
fn truncate_start(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let chars: Vec<char> = s.chars().collect();
    let mut out: Vec<char> = Vec::new();
    let mut w = 1;
    for &c in chars.iter().rev() {
        let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw > width {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out.reverse();
    out.into_iter().collect()
}
