//! What every screen shares: the answer to a key ([`Outcome`]), text cut to a width, the
//! bordered panel and the centred overlay, and the workspace's trained adapters.

use std::path::PathBuf;

use unicode_width::UnicodeWidthStr;

use super::theme;
use crate::workspace::Workspace;

/// What handling an input did, for the app to show (every screen's answer to a key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ignored,
    Done,
    Notice(String),
    Error(String),
}

/// Cuts `s` to at most `width` columns, ending in '…' when cut.
pub(crate) fn truncate(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if w + cw + 1 > width {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// The finished adapters of the workspace's training runs, newest first: (run name, folder).
pub fn trained_adapters(workspace: &Workspace) -> Vec<(String, PathBuf)> {
    train_runs(workspace)
        .into_iter()
        .filter(|r| crate::train::run::trained(r))
        .map(|r| {
            let name = r.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            (name, crate::train::run::adapter_dir(&r))
        })
        .collect()
}

/// Training run folders under the workspace's runs/, newest first.
pub fn train_runs(workspace: &Workspace) -> Vec<PathBuf> {
    workspace.runs_newest_first(|p| crate::runs::kind(p) == Some(crate::runs::Kind::Train))
}

/// Clears a box of at most `width`×`height` centred in `area`, draws its border and title, and
/// returns the inside.
pub(super) fn overlay_box(
    frame: &mut ratatui::Frame,
    area: ratatui::layout::Rect,
    width: u16,
    height: u16,
    title: &str,
    theme: &theme::Theme,
) -> ratatui::layout::Rect {
    use ratatui::layout::Rect;
    use ratatui::widgets::{Block, Borders, Clear};
    let width = width.min(area.width);
    let height = height.min(area.height);
    let rect = Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height };
    frame.render_widget(Clear, rect);
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(theme.border_focus)
        .title(ratatui::text::Span::styled(title.to_string(), theme.title));
    let inner = block.inner(rect);
    frame.render_widget(block.style(theme.base), rect);
    inner
}

/// Draws a bordered panel over `area` with `title` in the theme's title style and the border in
/// `border`; returns the area inside the borders.
pub fn panel(
    frame: &mut ratatui::Frame,
    area: ratatui::layout::Rect,
    title: &str,
    border: ratatui::style::Style,
    theme: &theme::Theme,
) -> ratatui::layout::Rect {
    use ratatui::widgets::{Block, Borders};
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(border)
        .title(ratatui::text::Span::styled(title.to_string(), theme.title));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    inner
}
