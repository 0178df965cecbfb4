//! The `o` overlay: the workspace's seed files, to open one or create a new one.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Position, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::editor::TextEditor;
use super::theme::Theme;
use crate::seeds::{self, Limits, SeedFile};
use crate::workspace::Workspace;

pub struct Entry {
    pub path: PathBuf,
    pub summary: String,
    pub ok: bool,
}

pub struct Picker {
    pub entries: Vec<Entry>,
    pub selected: usize,
    /// The name being typed for a new file.
    pub naming: Option<TextEditor>,
}

pub enum PickerAction {
    None,
    Close,
    Open(PathBuf),
    Error(String),
}

impl Picker {
    pub fn new(workspace: &Workspace, limits: &Limits, current: Option<&PathBuf>) -> Picker {
        let files = workspace.seed_files().unwrap_or_default();
        let entries: Vec<Entry> = files
            .into_iter()
            .map(|path| {
                let (summary, ok) = match seeds::load(&path, limits) {
                    Ok(l) if l.is_valid() => (format!("{} seeds · valid", l.file.seeds.len()), true),
                    Ok(l) if !l.is_lossless() => (format!("{} problem(s) · read-only", l.problems.len()), false),
                    Ok(l) => (format!("{} seeds · {} problem(s)", l.file.seeds.len(), l.problems.len()), false),
                    Err(e) => (format!("unreadable: {e}"), false),
                };
                Entry { path, summary, ok }
            })
            .collect();
        let selected = current.and_then(|c| entries.iter().position(|e| &e.path == c)).unwrap_or(0);
        let naming = entries.is_empty().then(|| TextEditor::new("", false));
        Picker { entries, selected, naming }
    }

    pub fn key(&mut self, key: KeyEvent, workspace: &Workspace) -> PickerAction {
        if let Some(name) = self.naming.as_mut() {
            match key.code {
                KeyCode::Esc => self.naming = None,
                KeyCode::Enter => return self.create(workspace),
                KeyCode::Backspace => name.backspace(),
                KeyCode::Left => name.left(),
                KeyCode::Right => name.right(),
                KeyCode::Char(c) => name.insert_char(c),
                _ => {}
            }
            return PickerAction::None;
        }
        match key.code {
            KeyCode::Esc | KeyCode::Char('q') | KeyCode::Char('o') => return PickerAction::Close,
            KeyCode::Char('j') | KeyCode::Down => {
                self.selected = (self.selected + 1).min(self.entries.len().saturating_sub(1))
            }
            KeyCode::Char('k') | KeyCode::Up => self.selected = self.selected.saturating_sub(1),
            KeyCode::Char('n') => self.naming = Some(TextEditor::new("", false)),
            KeyCode::Enter => {
                if let Some(e) = self.entries.get(self.selected) {
                    return PickerAction::Open(e.path.clone());
                }
            }
            _ => {}
        }
        PickerAction::None
    }

    fn create(&mut self, workspace: &Workspace) -> PickerAction {
        let Some(editor) = &self.naming else { return PickerAction::None };
        let name = editor.text().trim().to_string();
        let stem = name.strip_suffix(".yaml").unwrap_or(&name);
        if stem.is_empty() || !stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return PickerAction::Error(
                "a seed file name uses letters, digits, '-' and '_' (the domain name, e.g. legal)".into(),
            );
        }
        let path = workspace.seeds_dir().join(format!("{stem}.yaml"));
        if path.exists() {
            return PickerAction::Error(format!("{} already exists", path.display()));
        }
        let file = SeedFile { domain: stem.to_string(), ..Default::default() };
        match seeds::save(&path, &file) {
            Ok(()) => PickerAction::Open(path),
            Err(e) => PickerAction::Error(format!("{e:#}")),
        }
    }

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let height = (self.entries.len() as u16 + 5).min(area.height.saturating_sub(2)).max(6);
        let title = " seed files · Enter opens · n new · Esc closes ";
        let inner = super::shared::overlay_box(frame, area, area.width.saturating_sub(4).min(70), height, title, theme);
        let mut lines: Vec<Line> = Vec::new();
        if self.entries.is_empty() {
            lines.push(Line::styled("The workspace has no seed files yet.", theme.muted));
        }
        for (i, e) in self.entries.iter().enumerate() {
            let name = e.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let style = if i == self.selected && self.naming.is_none() { theme.selection } else { theme.base };
            lines.push(Line::from(vec![
                Span::styled(format!(" {name:<24}"), style),
                Span::styled(format!(" {}", e.summary), if e.ok { theme.ok } else { theme.warning }),
            ]));
        }
        if let Some(editor) = &self.naming {
            lines.push(Line::raw(""));
            lines.push(Line::from(vec![
                Span::styled("new file name: ", theme.accent),
                Span::styled(editor.text(), theme.base),
                Span::styled(".yaml  (Enter creates, Esc cancels)", theme.muted),
            ]));
            let y = inner.y + lines.len() as u16 - 1;
            let x = inner.x + 15 + editor.visual_cursor(usize::MAX / 4).1 as u16;
            if y < inner.bottom() && x < inner.right() {
                frame.set_cursor_position(Position { x, y });
            }
        }
        frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
    }
}
