//! The Seeds screen's state and its update rules (rendering is in `seeds_view.rs`).
//!
//! Every change goes through [`SeedsScreen::change`], which records an undo snapshot, revalidates
//! and starts the autosave clock; [`SeedsScreen::tick`] saves once the file has been quiet for
//! `autosave` and never overwrites a file that changed on disk behind the editor's back.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::editor::TextEditor;
use super::shared::Outcome;
use crate::seeds::{self, Limits, Problem, Seed, SeedFile, Task};

const UNDO_DEPTH: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Id,
    Task,
    Tags,
    Instruction,
    Input,
    Output,
}

impl Field {
    /// Top to bottom, as the detail panel shows them.
    pub const ALL: [Field; 6] = [Field::Id, Field::Task, Field::Tags, Field::Instruction, Field::Input, Field::Output];

    pub fn label(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Task => "task",
            Field::Tags => "tags",
            Field::Instruction => "instruction",
            Field::Input => "input",
            Field::Output => "output",
        }
    }

    fn index(self) -> usize {
        Field::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }

    pub fn next(self) -> Field {
        Field::ALL[(self.index() + 1) % Field::ALL.len()]
    }

    pub fn prev(self) -> Field {
        Field::ALL[(self.index() + Field::ALL.len() - 1) % Field::ALL.len()]
    }

    /// The next field that is edited as text (all but the task, which cycles).
    fn next_text(self, forward: bool) -> Field {
        let mut f = if forward { self.next() } else { self.prev() };
        while f == Field::Task {
            f = if forward { f.next() } else { f.prev() };
        }
        f
    }

    pub fn multiline(self) -> bool {
        matches!(self, Field::Instruction | Field::Input | Field::Output)
    }

    pub fn text(self, seed: &Seed) -> String {
        match self {
            Field::Id => seed.id.clone(),
            Field::Task => seed.task.clone(),
            Field::Tags => seed.tags.join(", "),
            Field::Instruction => seed.instruction.clone(),
            Field::Input => seed.input.clone(),
            Field::Output => seed.output.clone(),
        }
    }

    fn set(self, seed: &mut Seed, text: String) {
        match self {
            Field::Id => seed.id = text,
            Field::Task => seed.task = text,
            Field::Tags => {
                seed.tags = text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
            }
            Field::Instruction => seed.instruction = text,
            Field::Input => seed.input = text,
            Field::Output => seed.output = text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    List,
    Detail(Field),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveState {
    Saved,
    Unsaved {
        since: Instant,
    },
    Failed(String),
    /// The file changed on disk since it was read or saved; autosave is paused.
    Conflict,
}

#[derive(Debug, Clone)]
struct Snapshot {
    doc: SeedFile,
    selected: usize,
}

pub struct Editing {
    pub field: Field,
    pub editor: TextEditor,
    /// The state before this edit began, pushed on the undo stack at the first change.
    before: Option<Snapshot>,
    /// First visual line shown, kept so the cursor stays in view.
    pub scroll: Cell<usize>,
}

/// Size and modification time: enough to see that another program wrote the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: m.modified().ok(), len: m.len() })
}

pub struct SeedsScreen {
    pub path: PathBuf,
    pub doc: SeedFile,
    /// The problems that make the file read-only (see [`Problem::lossy`]); empty when editable.
    pub load_problems: Vec<Problem>,
    pub problems: Vec<Problem>,
    /// Index into `doc.seeds`.
    pub selected: usize,
    pub filter: String,
    pub searching: bool,
    pub focus: Focus,
    pub editing: Option<Editing>,
    pub save: SaveState,
    undo: Vec<Snapshot>,
    redo: Vec<Snapshot>,
    stamp: Option<Stamp>,
    limits: Limits,
    autosave: Duration,
    /// First list row shown (kept by the view so the selection stays visible).
    pub list_offset: Cell<usize>,
    /// Text width of the detail panel at the last draw, for ↑/↓ over wrapped lines.
    pub text_width: Cell<usize>,
}

impl SeedsScreen {
    pub fn open(path: &Path, limits: Limits, autosave: Duration) -> anyhow::Result<SeedsScreen> {
        let loaded = seeds::load(path, &limits).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let load_problems: Vec<Problem> = loaded.problems.iter().filter(|p| p.lossy).cloned().collect();
        let mut screen = SeedsScreen {
            path: path.to_path_buf(),
            doc: loaded.file,
            load_problems,
            problems: Vec::new(),
            selected: 0,
            filter: String::new(),
            searching: false,
            focus: Focus::List,
            editing: None,
            save: SaveState::Saved,
            undo: Vec::new(),
            redo: Vec::new(),
            stamp: stamp(path),
            limits,
            autosave,
            list_offset: Cell::new(0),
            text_width: Cell::new(40),
        };
        screen.revalidate();
        Ok(screen)
    }

    pub fn read_only(&self) -> bool {
        !self.load_problems.is_empty()
    }

    pub fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    pub fn is_dirty(&self) -> bool {
        matches!(self.save, SaveState::Unsaved { .. } | SaveState::Failed(_) | SaveState::Conflict)
    }

    fn revalidate(&mut self) {
        self.problems = seeds::validate(&self.doc, &self.limits, None);
    }

    /// The problems of seed `i` (by seed index).
    pub fn seed_problems(&self, i: usize) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| p.seed == Some(i))
    }

    pub fn file_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(|p| p.seed.is_none())
    }

    /// Seed indices that match the filter, in file order.
    pub fn visible(&self) -> Vec<usize> {
        let words: Vec<String> = self.filter.split_whitespace().map(str::to_lowercase).collect();
        (0..self.doc.seeds.len())
            .filter(|&i| {
                let s = &self.doc.seeds[i];
                let hay =
                    format!("{}\n{}\n{}\n{}\n{}\n{}", s.id, s.task, s.tags.join(" "), s.instruction, s.input, s.output)
                        .to_lowercase();
                words.iter().all(|w| hay.contains(w.as_str()))
            })
            .collect()
    }

    pub fn current(&self) -> Option<&Seed> {
        self.doc.seeds.get(self.selected)
    }

    /// Moves the selection `delta` rows within the visible seeds (clamped).
    pub fn move_selection(&mut self, delta: isize) {
        let visible = self.visible();
        if visible.is_empty() {
            return;
        }
        let pos = visible.iter().position(|&i| i == self.selected).unwrap_or(0) as isize;
        let to = (pos + delta).clamp(0, visible.len() as isize - 1) as usize;
        self.selected = visible[to];
    }

    pub fn select_visible_row(&mut self, row: usize) {
        if let Some(&i) = self.visible().get(row) {
            self.selected = i;
        }
    }

    /// Keeps the selection on a visible seed after the filter changed.
    fn settle_selection(&mut self) {
        let visible = self.visible();
        if !visible.contains(&self.selected) {
            if let Some(&first) = visible.first() {
                self.selected = first;
            }
        }
        self.list_offset.set(0);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot { doc: self.doc.clone(), selected: self.selected }
    }

    fn push_undo(&mut self, snap: Snapshot) {
        self.undo.push(snap);
        if self.undo.len() > UNDO_DEPTH {
            self.undo.remove(0);
        }
        self.redo.clear();
    }

    fn touched(&mut self, now: Instant) {
        self.revalidate();
        if self.save != SaveState::Conflict {
            self.save = SaveState::Unsaved { since: now };
        }
    }

    /// Applies one undoable change to the document.
    fn change(&mut self, now: Instant, f: impl FnOnce(&mut SeedsScreen)) {
        let snap = self.snapshot();
        self.push_undo(snap);
        f(self);
        self.touched(now);
    }

    fn refuse_read_only(&self) -> Option<Outcome> {
        self.read_only().then(|| {
            Outcome::Error(format!(
                "read-only: {} has {} problem(s) that saving would lose; fix them in a text editor, then press R",
                self.file_name(),
                self.load_problems.len()
            ))
        })
    }

    pub fn add(&mut self, now: Instant) -> Outcome {
        if let Some(o) = self.refuse_read_only() {
            return o;
        }
        let prefix = self.doc.id_prefix();
        let id = self.doc.fresh_id(&prefix);
        let task = self.current().and_then(Seed::task).unwrap_or(Task::Qa).to_string();
        let at = if self.doc.seeds.is_empty() { 0 } else { self.selected + 1 };
        self.change(now, |s| {
            s.doc.seeds.insert(
                at,
                Seed {
                    id,
                    task,
                    tags: vec![],
                    instruction: String::new(),
                    input: String::new(),
                    output: String::new(),
                },
            );
            s.selected = at;
        });
        let cleared = !self.filter.is_empty();
        self.filter.clear();
        self.settle_selection();
        self.start_edit(Field::Instruction);
        if cleared {
            Outcome::Notice("filter cleared to show the new seed".into())
        } else {
            Outcome::Done
        }
    }

    pub fn duplicate(&mut self, now: Instant) -> Outcome {
        if let Some(o) = self.refuse_read_only() {
            return o;
        }
        let Some(seed) = self.current().cloned() else { return Outcome::Ignored };
        let prefix = self.doc.id_prefix();
        let id = self.doc.fresh_id(&prefix);
        let at = self.selected + 1;
        let message = format!("duplicated {} as {id}; edit the copy's instruction", seed.id);
        self.change(now, |s| {
            s.doc.seeds.insert(at, Seed { id, ..seed });
            s.selected = at;
        });
        Outcome::Notice(message)
    }

    pub fn delete(&mut self, now: Instant) -> Outcome {
        if let Some(o) = self.refuse_read_only() {
            return o;
        }
        let Some(id) = self.current().map(|s| s.id.clone()) else { return Outcome::Ignored };
        let visible = self.visible();
        let pos = visible.iter().position(|&i| i == self.selected).unwrap_or(0);
        self.change(now, |s| {
            s.doc.seeds.remove(s.selected);
        });
        // Select the seed that took its place in the list, else the one above.
        let visible = self.visible();
        self.selected = visible.get(pos).or(visible.last()).copied().unwrap_or(0);
        self.focus = Focus::List;
        Outcome::Notice(format!("deleted {id} — u undoes"))
    }

    pub fn undo(&mut self, now: Instant) -> Outcome {
        self.step_history(true, now)
    }

    pub fn redo(&mut self, now: Instant) -> Outcome {
        self.step_history(false, now)
    }

    /// Moves one snapshot from the undo stack to the redo stack (`back`), or the other way.
    fn step_history(&mut self, back: bool, now: Instant) -> Outcome {
        let (from, to) = if back { (&mut self.undo, &mut self.redo) } else { (&mut self.redo, &mut self.undo) };
        let Some(snap) = from.pop() else {
            return Outcome::Notice(if back { "nothing to undo" } else { "nothing to redo" }.into());
        };
        to.push(Snapshot { doc: self.doc.clone(), selected: self.selected });
        self.doc = snap.doc;
        self.selected = snap.selected.min(self.doc.seeds.len().saturating_sub(1));
        self.touched(now);
        self.settle_selection();
        Outcome::Notice(if back { "undone" } else { "redone" }.into())
    }

    pub fn cycle_task(&mut self, forward: bool, now: Instant) -> Outcome {
        if let Some(o) = self.refuse_read_only() {
            return o;
        }
        let Some(seed) = self.current() else { return Outcome::Ignored };
        let task = seed.task().map_or(Task::Qa, |t| if forward { t.next() } else { t.prev() });
        self.change(now, |s| s.doc.seeds[s.selected].task = task.to_string());
        Outcome::Notice(format!("task: {} ({})", task, task.describe()))
    }

    pub fn start_edit(&mut self, field: Field) -> Outcome {
        if let Some(o) = self.refuse_read_only() {
            return o;
        }
        let Some(seed) = self.current() else { return Outcome::Ignored };
        let editor = TextEditor::new(&field.text(seed), field.multiline());
        self.focus = Focus::Detail(field);
        self.editing = Some(Editing { field, editor, before: Some(self.snapshot()), scroll: Cell::new(0) });
        Outcome::Done
    }

    pub fn finish_edit(&mut self) {
        self.editing = None;
    }

    /// Writes the editor's text into the seed after a keystroke changed it.
    fn apply_edit(&mut self, now: Instant) {
        let Some(editing) = self.editing.as_mut() else { return };
        let text = editing.editor.text();
        let field = editing.field;
        if let Some(before) = editing.before.take() {
            self.push_undo(before);
        }
        if let Some(seed) = self.doc.seeds.get_mut(self.selected) {
            field.set(seed, text);
        }
        self.touched(now);
    }

    /// Autosaves when the file has been quiet long enough.
    pub fn tick(&mut self, now: Instant) -> Option<Outcome> {
        match self.save {
            SaveState::Unsaved { since } if now.duration_since(since) >= self.autosave => Some(self.save_now()),
            _ => None,
        }
    }

    /// Saves unless the file changed on disk since the editor last read or wrote it.
    pub fn save_now(&mut self) -> Outcome {
        if self.read_only() {
            return Outcome::Ignored;
        }
        if stamp(&self.path) != self.stamp {
            self.save = SaveState::Conflict;
            return Outcome::Error(format!(
                "{} changed on disk; R reloads it (dropping these edits), W overwrites it",
                self.file_name()
            ));
        }
        self.write()
    }

    /// Saves even over a file changed on disk.
    pub fn overwrite(&mut self) -> Outcome {
        if self.read_only() {
            return Outcome::Ignored;
        }
        self.write()
    }

    fn write(&mut self) -> Outcome {
        match seeds::save(&self.path, &self.doc) {
            Ok(()) => {
                self.stamp = stamp(&self.path);
                self.save = SaveState::Saved;
                Outcome::Done
            }
            Err(e) => {
                let message = format!("{e:#}");
                self.save = SaveState::Failed(message.clone());
                Outcome::Error(message)
            }
        }
    }

    /// Re-reads the file from disk, keeping the current document on the undo stack.
    pub fn reload(&mut self) -> Outcome {
        match SeedsScreen::open(&self.path, self.limits, self.autosave) {
            Ok(mut fresh) => {
                let before = self.snapshot();
                let selected_id = self.current().map(|s| s.id.clone());
                fresh.undo = std::mem::take(&mut self.undo);
                fresh.push_undo(before);
                if let Some(i) = selected_id.and_then(|id| fresh.doc.seeds.iter().position(|s| s.id == id)) {
                    fresh.selected = i;
                }
                fresh.filter = std::mem::take(&mut self.filter);
                fresh.settle_selection();
                *self = fresh;
                Outcome::Notice(format!("reloaded {}", self.file_name()))
            }
            Err(e) => Outcome::Error(format!("{e:#}")),
        }
    }

    /// Where the unsaved document goes when the file cannot be written at exit: beside it,
    /// under a name the workspace does not read as seeds.
    pub fn rescue(&self) -> anyhow::Result<PathBuf> {
        let rescue = self.path.with_extension("yaml.unsaved");
        let text = seeds::to_yaml(&self.doc)?;
        crate::fsutil::atomic_write(&rescue, text.as_bytes())?;
        Ok(rescue)
    }

    pub fn handle_key(&mut self, key: KeyEvent, now: Instant) -> Outcome {
        if self.editing.is_some() {
            return self.edit_key(key, now);
        }
        if self.searching {
            return self.search_key(key);
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match (key.code, ctrl) {
            (KeyCode::Char('r'), true) => self.redo(now),
            (KeyCode::Char('d'), true) | (KeyCode::PageDown, _) => {
                self.move_selection(10);
                Outcome::Done
            }
            (KeyCode::Char('u'), true) | (KeyCode::PageUp, _) => {
                self.move_selection(-10);
                Outcome::Done
            }
            (_, true) => Outcome::Ignored,
            (KeyCode::Char('/'), _) => {
                self.searching = true;
                self.focus = Focus::List;
                Outcome::Done
            }
            (KeyCode::Char('a'), _) => self.add(now),
            (KeyCode::Char('y'), _) => self.duplicate(now),
            (KeyCode::Char('d') | KeyCode::Delete, _) => self.delete(now),
            (KeyCode::Char('u'), _) => self.undo(now),
            (KeyCode::Char('t'), _) => self.cycle_task(true, now),
            (KeyCode::Char(']'), _) => {
                self.move_selection(1);
                Outcome::Done
            }
            (KeyCode::Char('['), _) => {
                self.move_selection(-1);
                Outcome::Done
            }
            (KeyCode::Char('R'), _) => self.reload(),
            (KeyCode::Char('W'), _) => self.overwrite(),
            _ => match self.focus {
                Focus::List => self.list_key(key),
                Focus::Detail(field) => self.detail_key(key, field, now),
            },
        }
    }

    fn list_key(&mut self, key: KeyEvent) -> Outcome {
        match key.code {
            KeyCode::Char('j') | KeyCode::Down => self.move_selection(1),
            KeyCode::Char('k') | KeyCode::Up => self.move_selection(-1),
            KeyCode::Char('g') | KeyCode::Home => self.move_selection(isize::MIN / 2),
            KeyCode::Char('G') | KeyCode::End => self.move_selection(isize::MAX / 2),
            KeyCode::Enter | KeyCode::Char('l') | KeyCode::Right | KeyCode::Tab => {
                if self.current().is_some() {
                    self.focus = Focus::Detail(Field::Instruction);
                }
            }
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                self.settle_selection();
            }
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    fn detail_key(&mut self, key: KeyEvent, field: Field, now: Instant) -> Outcome {
        match key.code {
            KeyCode::Char('j') | KeyCode::Down | KeyCode::Tab => self.focus = Focus::Detail(field.next()),
            KeyCode::Char('k') | KeyCode::Up | KeyCode::BackTab => self.focus = Focus::Detail(field.prev()),
            KeyCode::Char('h') | KeyCode::Left if field == Field::Task => return self.cycle_task(false, now),
            KeyCode::Char('l') | KeyCode::Right | KeyCode::Char(' ') if field == Field::Task => {
                return self.cycle_task(true, now)
            }
            KeyCode::Enter if field == Field::Task => return self.cycle_task(true, now),
            KeyCode::Enter | KeyCode::Char('i') | KeyCode::Char('e') => return self.start_edit(field),
            KeyCode::Esc | KeyCode::Char('h') | KeyCode::Left => self.focus = Focus::List,
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    fn search_key(&mut self, key: KeyEvent) -> Outcome {
        match key.code {
            KeyCode::Esc => {
                self.searching = false;
                self.filter.clear();
            }
            KeyCode::Enter => self.searching = false,
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char('u') if key.modifiers.contains(KeyModifiers::CONTROL) => self.filter.clear(),
            KeyCode::Down => {
                self.move_selection(1);
                return Outcome::Done;
            }
            KeyCode::Up => {
                self.move_selection(-1);
                return Outcome::Done;
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => self.filter.push(c),
            _ => return Outcome::Ignored,
        }
        self.settle_selection();
        Outcome::Done
    }

    fn edit_key(&mut self, key: KeyEvent, now: Instant) -> Outcome {
        let Some(editing) = self.editing.as_mut() else { return Outcome::Ignored };
        let field = editing.field;
        let width = self.text_width.get();
        let ed = &mut editing.editor;
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let before = ed.text();
        match key.code {
            KeyCode::Esc => {
                self.finish_edit();
                return Outcome::Done;
            }
            KeyCode::Tab | KeyCode::BackTab => {
                let forward = key.code == KeyCode::Tab && !key.modifiers.contains(KeyModifiers::SHIFT);
                self.finish_edit();
                return self.start_edit(field.next_text(forward));
            }
            KeyCode::Enter if !field.multiline() => {
                self.finish_edit();
                return Outcome::Done;
            }
            KeyCode::Enter => ed.newline(),
            KeyCode::Backspace => ed.backspace(),
            KeyCode::Delete => ed.delete(),
            KeyCode::Left if ctrl => ed.word_left(),
            KeyCode::Right if ctrl => ed.word_right(),
            KeyCode::Left => ed.left(),
            KeyCode::Right => ed.right(),
            KeyCode::Up => ed.vertical(-1, width),
            KeyCode::Down => ed.vertical(1, width),
            KeyCode::Home => ed.home(),
            KeyCode::End => ed.end(),
            KeyCode::Char('a') if ctrl => ed.home(),
            KeyCode::Char('e') if ctrl => ed.end(),
            KeyCode::Char('w') if ctrl => ed.delete_word_back(),
            KeyCode::Char('u') if ctrl => ed.delete_to_line_start(),
            KeyCode::Char(_) if ctrl => return Outcome::Ignored,
            KeyCode::Char(c) => ed.insert_char(c),
            _ => return Outcome::Ignored,
        }
        if ed.text() != before {
            self.apply_edit(now);
        }
        Outcome::Done
    }

    /// Bracketed paste: into the field being edited, else into the search.
    pub fn paste(&mut self, text: &str, now: Instant) -> Outcome {
        if let Some(editing) = self.editing.as_mut() {
            editing.editor.insert_str(text);
            self.apply_edit(now);
            return Outcome::Done;
        }
        if self.searching {
            self.filter.push_str(&text.replace(['\n', '\r'], " "));
            self.settle_selection();
            return Outcome::Done;
        }
        Outcome::Ignored
    }

    /// A click on a detail field: focus it, or start editing it if it was already focused.
    pub fn click_field(&mut self, field: Field, now: Instant) -> Outcome {
        if self.editing.as_ref().is_some_and(|e| e.field == field) {
            return Outcome::Done;
        }
        self.finish_edit();
        if self.focus == Focus::Detail(field) {
            return if field == Field::Task { self.cycle_task(true, now) } else { self.start_edit(field) };
        }
        self.focus = Focus::Detail(field);
        Outcome::Done
    }

    pub fn click_list(&mut self, row: usize) {
        self.finish_edit();
        self.focus = Focus::List;
        self.select_visible_row(self.list_offset.get() + row);
    }
}
