//! The Review screen: a run's samples as a list and a detail with provenance; single keys accept,
//! reject, edit or skip, with undo; a status filter; accepted samples export as Alpaca JSONL.
//! Decisions are saved at once (generate::review), and samples a running generator appends show
//! up as they arrive. `p` makes the sample (as edited) a seed: a task is chosen here, and the
//! app writes it into the seed file (see [`Promotion`]), through the Seeds tab when that file is
//! open there.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::editor::TextEditor;
use super::shared::{truncate, Outcome};
use super::theme::Theme;
use crate::generate::review::Review;
use crate::generate::samples::{Sample, Status};
use crate::seeds::Task;
use crate::workspace::Workspace;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    Only(Status),
}

const FILTERS: [Filter; 5] = [
    Filter::All,
    Filter::Only(Status::Pending),
    Filter::Only(Status::Accepted),
    Filter::Only(Status::Rejected),
    Filter::Only(Status::Edited),
];

/// A sample to make a seed, asked for with `p` and a task; the app carries it out.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    pub run: PathBuf,
    pub id: String,
    pub task: Task,
}

/// The trace of one sample (`t`): computed on a thread (it loads the model and decodes), then
/// shown in place of the detail with a token cursor.
pub struct TraceView {
    pub id: String,
    pub cursor: usize,
    pub state: TraceState,
}

pub enum TraceState {
    Running(std::sync::mpsc::Receiver<anyhow::Result<crate::generate::trace::Trace>>),
    Ready(crate::generate::trace::Trace),
    Failed(String),
}

/// The documents' colours in a trace, by position in the sample's document list.
const DOC_COLOURS: [ratatui::style::Color; 6] = [
    ratatui::style::Color::Cyan,
    ratatui::style::Color::Magenta,
    ratatui::style::Color::Yellow,
    ratatui::style::Color::Green,
    ratatui::style::Color::LightBlue,
    ratatui::style::Color::LightRed,
];

pub struct ReviewScreen {
    pub runs: Vec<PathBuf>,
    pub run_ix: usize,
    pub review: Option<Review>,
    pub filter: Filter,
    /// Position in the filtered list.
    pub selected: usize,
    /// The response being edited.
    pub editing: Option<TextEditor>,
    pub message: Option<String>,
    /// The task being chosen for a promotion (`p`, then ←/→ and Enter).
    pub promoting: Option<Task>,
    /// A promotion confirmed, for the app to carry out ([`ReviewScreen::take_promotion`]).
    promotion: Option<Promotion>,
    /// A sample whose retrieval the Corpus tab should show (`c`): its run and id.
    retrieval: Option<(PathBuf, String)>,
    /// The trace being computed or shown (`t`).
    pub trace: Option<TraceView>,
    scroll: std::cell::Cell<usize>,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Accepted => "accepted",
        Status::Rejected => "rejected",
        Status::Edited => "edited",
    }
}

/// Run folders that hold samples, newest first.
pub fn sample_runs(workspace: &Workspace) -> Vec<PathBuf> {
    workspace.runs_newest_first(|p| p.join(crate::generate::pipeline::SAMPLES).exists())
}

impl ReviewScreen {
    pub fn new(workspace: &Workspace) -> ReviewScreen {
        let mut screen = ReviewScreen {
            runs: sample_runs(workspace),
            run_ix: 0,
            review: None,
            filter: Filter::All,
            selected: 0,
            editing: None,
            message: None,
            promoting: None,
            promotion: None,
            retrieval: None,
            trace: None,
            scroll: std::cell::Cell::new(0),
        };
        screen.open_current();
        screen
    }

    /// Re-lists the runs, keeping `prefer` (or the current run) selected.
    pub fn rescan(&mut self, workspace: &Workspace, prefer: Option<&Path>) {
        let current = prefer.map(Path::to_path_buf).or_else(|| self.runs.get(self.run_ix).cloned());
        self.runs = sample_runs(workspace);
        if let Some(c) = &current {
            if !self.runs.contains(c) && c.join(crate::generate::pipeline::SAMPLES).exists() {
                self.runs.insert(0, c.clone());
            }
        }
        let ix = current.and_then(|c| self.runs.iter().position(|r| *r == c)).unwrap_or(0);
        let changed = self.review.as_ref().map(|r| r.dir.clone()) != self.runs.get(ix).cloned();
        self.run_ix = ix;
        if changed {
            self.open_current();
        }
    }

    fn open_current(&mut self) {
        self.review = None;
        self.selected = 0;
        if let Some(dir) = self.runs.get(self.run_ix) {
            match Review::open(dir) {
                Ok(r) => self.review = Some(r),
                Err(e) => self.message = Some(format!("{e:#}")),
            }
        }
    }

    /// Indices of the samples the filter shows.
    pub fn visible(&self) -> Vec<usize> {
        let Some(r) = &self.review else { return Vec::new() };
        r.samples
            .iter()
            .enumerate()
            .filter(|(_, s)| match self.filter {
                Filter::All => true,
                Filter::Only(st) => s.status == st,
            })
            .map(|(i, _)| i)
            .collect()
    }

    pub fn current(&self) -> Option<&Sample> {
        let v = self.visible();
        let i = *v.get(self.selected.min(v.len().saturating_sub(1)))?;
        self.review.as_ref().map(|r| &r.samples[i])
    }

    pub fn is_typing(&self) -> bool {
        self.editing.is_some() || self.promoting.is_some() || self.trace.is_some()
    }

    /// Starts tracing the selected sample on a thread.
    fn start_trace(&mut self) -> Outcome {
        let (Some(run), Some(s)) = (self.review.as_ref().map(|r| r.dir.clone()), self.current()) else {
            return Outcome::Error("no sample selected".into());
        };
        let id = s.id.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let sample = id.clone();
        std::thread::spawn(move || {
            let _ = tx.send(crate::generate::trace::trace(&run, &sample, 5));
        });
        self.trace = Some(TraceView { id, cursor: 0, state: TraceState::Running(rx) });
        Outcome::Notice("tracing: loading the run's model and decoding the sample again".into())
    }

    /// Picks up a finished trace.
    fn poll_trace(&mut self) {
        let Some(view) = self.trace.as_mut() else { return };
        if let TraceState::Running(rx) = &view.state {
            match rx.try_recv() {
                Ok(Ok(t)) => view.state = TraceState::Ready(t),
                Ok(Err(e)) => view.state = TraceState::Failed(format!("{e:#}")),
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    view.state = TraceState::Failed("the trace stopped without a result".into())
                }
            }
        }
    }

    /// Waits (at most `limit`) for a running trace: for tests and scripts.
    pub fn wait_for_trace(&mut self, limit: std::time::Duration) {
        let started = std::time::Instant::now();
        while matches!(self.trace.as_ref().map(|t| &t.state), Some(TraceState::Running(_))) && started.elapsed() < limit
        {
            self.poll_trace();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The promotion confirmed by the last key, if any.
    pub fn take_promotion(&mut self) -> Option<Promotion> {
        self.promotion.take()
    }

    /// The sample `c` asked the Corpus tab to show, if any.
    pub fn take_retrieval(&mut self) -> Option<(PathBuf, String)> {
        self.retrieval.take()
    }

    /// Picks up new samples, and a finished trace.
    pub fn tick(&mut self) -> Option<Outcome> {
        self.poll_trace();
        let r = self.review.as_mut()?;
        match r.refresh() {
            Ok(_) => None,
            Err(e) => Some(Outcome::Error(format!("{e:#}"))),
        }
    }

    fn decide(&mut self, status: Status, output: Option<String>) -> Outcome {
        let Some(id) = self.current().map(|s| s.id.clone()) else { return Outcome::Error("no sample selected".into()) };
        let Some(r) = self.review.as_mut() else { return Outcome::Ignored };
        if let Err(e) = r.decide(&id, status, output) {
            return Outcome::Error(format!("{e:#}"));
        }
        // The next sample; under a status filter the decided one may have left the list.
        let still_visible = self.visible().iter().any(|&i| self.review.as_ref().is_some_and(|r| r.samples[i].id == id));
        if still_visible {
            self.move_by(1);
        }
        Outcome::Notice(format!("{id}: {}", status_name(status)))
    }

    fn move_by(&mut self, delta: isize) {
        let n = self.visible().len();
        if n == 0 {
            self.selected = 0;
            return;
        }
        self.selected = (self.selected as isize + delta).clamp(0, n as isize - 1) as usize;
    }

    pub fn handle_key(&mut self, key: KeyEvent) -> Outcome {
        if self.trace.is_some() {
            self.trace_key(key.code);
            return Outcome::Done;
        }
        if self.promoting.is_some() {
            return self.promoting_key(key.code);
        }
        if self.editing.is_some() {
            return self.editing_key(key);
        }
        match key.code {
            KeyCode::Char('j') | KeyCode::Down => self.move_by(1),
            KeyCode::Char('k') | KeyCode::Up => self.move_by(-1),
            KeyCode::PageDown => self.move_by(10),
            KeyCode::PageUp => self.move_by(-10),
            KeyCode::Char('g') | KeyCode::Home => self.selected = 0,
            KeyCode::Char('G') | KeyCode::End => self.move_by(isize::MAX / 2),
            KeyCode::Char('a') => return self.decide(Status::Accepted, None),
            KeyCode::Char('r') => return self.decide(Status::Rejected, None),
            KeyCode::Char('s') => self.move_by(1),
            KeyCode::Char('e') => match self.current() {
                Some(s) => self.editing = Some(TextEditor::new(&s.output, true)),
                None => return Outcome::Error("no sample selected".into()),
            },
            KeyCode::Char('u') => return self.undo(),
            KeyCode::Char('f') => {
                let i = FILTERS.iter().position(|f| *f == self.filter).unwrap_or(0);
                self.filter = FILTERS[(i + 1) % FILTERS.len()];
                self.selected = 0;
            }
            KeyCode::Char(']') | KeyCode::Char('[') => {
                if self.runs.is_empty() {
                    return Outcome::Error("no run has samples yet: generate some first".into());
                }
                let n = self.runs.len();
                self.run_ix =
                    if key.code == KeyCode::Char(']') { (self.run_ix + 1) % n } else { (self.run_ix + n - 1) % n };
                self.open_current();
            }
            KeyCode::Char('t') => return self.start_trace(),
            KeyCode::Char('c') => {
                let (Some(run), Some(s)) = (self.review.as_ref().map(|r| r.dir.clone()), self.current()) else {
                    return Outcome::Error("no sample selected".into());
                };
                self.retrieval = Some((run, s.id.clone()));
            }
            KeyCode::Char('p') => match self.current() {
                Some(_) => self.promoting = Some(Task::Qa),
                None => return Outcome::Error("no sample selected".into()),
            },
            KeyCode::Char('x') => return self.export(),
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    /// A key while a sample's trace is shown: moves its cursor or closes it.
    fn trace_key(&mut self, code: KeyCode) {
        let Some(view) = self.trace.as_mut() else { return };
        let n = match &view.state {
            TraceState::Ready(t) => t.tokens.len(),
            _ => 0,
        };
        match code {
            KeyCode::Esc | KeyCode::Char('t') | KeyCode::Char('q') => self.trace = None,
            KeyCode::Right | KeyCode::Char('l') => view.cursor = (view.cursor + 1).min(n.saturating_sub(1)),
            KeyCode::Left | KeyCode::Char('h') => view.cursor = view.cursor.saturating_sub(1),
            KeyCode::End | KeyCode::Char('G') => view.cursor = n.saturating_sub(1),
            KeyCode::Home | KeyCode::Char('g') => view.cursor = 0,
            _ => {}
        }
    }

    /// A key while a sample's promotion to a seed waits for its task.
    fn promoting_key(&mut self, code: KeyCode) -> Outcome {
        let Some(task) = self.promoting else { return Outcome::Ignored };
        match code {
            KeyCode::Left | KeyCode::Char('h') => self.promoting = Some(task.prev()),
            KeyCode::Right | KeyCode::Char('l') | KeyCode::Tab => self.promoting = Some(task.next()),
            KeyCode::Esc => {
                self.promoting = None;
                return Outcome::Notice("promotion cancelled".into());
            }
            KeyCode::Enter => {
                self.promoting = None;
                let (Some(run), Some(s)) = (self.review.as_ref().map(|r| r.dir.clone()), self.current()) else {
                    return Outcome::Error("no sample selected".into());
                };
                self.promotion = Some(Promotion { run, id: s.id.clone(), task });
            }
            _ => {}
        }
        Outcome::Done
    }

    /// A key while a response is being edited: Esc keeps the edit, Ctrl-C drops it.
    fn editing_key(&mut self, key: KeyEvent) -> Outcome {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let Some(ed) = self.editing.as_mut() else { return Outcome::Ignored };
        match key.code {
            KeyCode::Esc => {
                let text = self.editing.take().map(|e| e.text()).unwrap_or_default();
                return self.decide(Status::Edited, Some(text));
            }
            KeyCode::Char('c') if ctrl => {
                self.editing = None;
                return Outcome::Notice("edit discarded".into());
            }
            KeyCode::Enter => ed.newline(),
            KeyCode::Backspace => ed.backspace(),
            KeyCode::Delete => ed.delete(),
            KeyCode::Left => ed.left(),
            KeyCode::Right => ed.right(),
            KeyCode::Up => ed.vertical(-1, 60),
            KeyCode::Down => ed.vertical(1, 60),
            KeyCode::Home => ed.home(),
            KeyCode::End => ed.end(),
            KeyCode::Char(c) => ed.insert_char(c),
            _ => {}
        }
        Outcome::Done
    }

    /// Takes back the last decision and selects its sample.
    fn undo(&mut self) -> Outcome {
        let Some(r) = self.review.as_mut() else { return Outcome::Ignored };
        match r.undo() {
            Ok(Some(id)) => {
                if let Some(pos) =
                    self.visible().iter().position(|&i| self.review.as_ref().is_some_and(|r| r.samples[i].id == id))
                {
                    self.selected = pos;
                }
                Outcome::Notice(format!("undone: {id}"))
            }
            Ok(None) => Outcome::Notice("nothing to undo".into()),
            Err(e) => Outcome::Error(format!("{e:#}")),
        }
    }

    /// Writes the run's accepted samples as Alpaca JSON.
    fn export(&self) -> Outcome {
        let Some(r) = &self.review else { return Outcome::Error("no run open".into()) };
        let out = r.alpaca_file();
        match r.export_alpaca(&out) {
            Ok(n) => Outcome::Notice(format!("{n} accepted samples written to {}", out.display())),
            Err(e) => Outcome::Error(format!("{e:#}")),
        }
    }

    pub fn status_line(&self) -> String {
        match &self.review {
            Some(r) => format!(
                "{} pending · {} accepted · {} rejected · {} edited",
                r.count(Status::Pending),
                r.count(Status::Accepted),
                r.count(Status::Rejected),
                r.count(Status::Edited)
            ),
            None => "no samples".into(),
        }
    }

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let list_width = (area.width * 2 / 5).clamp(24.min(area.width), 48);
        let [list, right] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(area);
        self.render_list(frame, list, theme);
        let prov_height = 8.min(right.height / 2);
        if let Some(view) = &self.trace {
            self.render_trace(view, frame, right, theme);
            return;
        }
        let [detail, prov] = Layout::vertical([Constraint::Min(0), Constraint::Length(prov_height)]).areas(right);
        self.render_detail(frame, detail, theme);
        self.render_provenance(frame, prov, theme);
    }

    /// The trace: the response's tokens coloured by the document that drove each (the cursor's
    /// reversed), then the cursor token's mixture probability and entropy and each document's
    /// weight, probability of it and top tokens.
    fn render_trace(&self, view: &TraceView, frame: &mut Frame, area: Rect, theme: &Theme) {
        use ratatui::style::{Modifier, Style};
        let title = format!(" Trace {} · ←/→ token · t/Esc close ", view.id);
        let inner = super::shared::panel(
            frame,
            area,
            &truncate(&title, area.width.saturating_sub(2) as usize),
            theme.border_focus,
            theme,
        );
        let t = match &view.state {
            TraceState::Running(_) => {
                let text = "Decoding the sample again with the run's prompts, documents and seed…";
                frame.render_widget(Paragraph::new(text).style(theme.muted).wrap(Wrap { trim: true }), inner);
                return;
            }
            TraceState::Failed(e) => {
                frame.render_widget(Paragraph::new(e.as_str()).style(theme.error).wrap(Wrap { trim: true }), inner);
                return;
            }
            TraceState::Ready(t) => t,
        };
        let colour = |i: usize| Style::default().fg(DOC_COLOURS[i % DOC_COLOURS.len()]);
        let mut lines = vec![Line::from(Span::styled(
            match (t.reproduced, &t.why) {
                (true, _) => format!("mode {} · decoded again: the same text", t.mode),
                (false, why) => format!("mode {} · NOT reproduced: {}", t.mode, why.clone().unwrap_or_default()),
            },
            if t.reproduced { theme.muted } else { theme.error },
        ))];
        let spans: Vec<Span> = t
            .tokens
            .iter()
            .enumerate()
            .map(|(i, tok)| {
                let text = if tok.text.is_empty() { "∅".to_string() } else { tok.text.replace('\n', "↵") };
                let style = colour(tok.driver);
                Span::styled(text, if i == view.cursor { style.add_modifier(Modifier::REVERSED) } else { style })
            })
            .collect();
        lines.push(Line::from(spans));
        if let Some(tok) = t.tokens.get(view.cursor) {
            lines.push(Line::from(""));
            lines.push(Line::from(vec![
                Span::styled(format!("{:?}", tok.text), theme.field_label_focus),
                Span::raw(format!("  p {:.3}  entropy {:.2}", tok.p, tok.entropy)),
                Span::raw(tok.p_drawn.map_or(String::new(), |q| format!("  drawn {q:.3}"))),
            ]));
            for (i, d) in tok.docs.iter().enumerate() {
                let top: Vec<String> =
                    d.top_text.iter().zip(&d.top).map(|(s, (_, p))| format!("{s:?} {p:.2}")).collect();
                let mark = if i == tok.driver { "▶" } else { " " };
                lines.push(Line::from(vec![
                    Span::styled(format!("{mark}{:<12}", truncate(&d.doc, 12)), colour(i)),
                    Span::raw(format!(" w {:.2}  p {:.3}  top {}", d.weight, d.p, top.join(", "))),
                ]));
            }
        }
        frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
    }

    fn render_list(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let run = self.runs.get(self.run_ix).and_then(|r| r.file_name()).map(|n| n.to_string_lossy().to_string());
        let filter = match self.filter {
            Filter::All => "all".to_string(),
            Filter::Only(s) => status_name(s).to_string(),
        };
        let title = format!(" {} · {filter} ", run.unwrap_or_else(|| "no runs".into()));
        let inner = super::shared::panel(
            frame,
            area,
            &truncate(&title, area.width.saturating_sub(2) as usize),
            theme.border_focus,
            theme,
        );
        let Some(r) = &self.review else {
            let text =
                self.message.clone().unwrap_or_else(|| "No samples yet. Generate some on the Generate tab (2).".into());
            frame.render_widget(Paragraph::new(text).style(theme.muted).wrap(Wrap { trim: true }), inner);
            return;
        };
        let visible = self.visible();
        let height = inner.height as usize;
        let selected = self.selected.min(visible.len().saturating_sub(1));
        let mut top = self.scroll.get();
        if selected < top {
            top = selected;
        } else if height > 0 && selected >= top + height {
            top = selected + 1 - height;
        }
        self.scroll.set(top);
        let w = inner.width as usize;
        let lines: Vec<Line> = visible
            .iter()
            .enumerate()
            .skip(top)
            .take(height)
            .map(|(pos, &i)| {
                let s = &r.samples[i];
                let (mark, style) = match s.status {
                    Status::Pending => ("·", theme.muted),
                    Status::Accepted => ("✓", theme.ok),
                    Status::Rejected => ("✗", theme.error),
                    Status::Edited => ("✎", theme.warning),
                };
                let text = truncate(&s.instruction.replace('\n', " "), w.saturating_sub(2));
                let row_style = if pos == selected { theme.selection } else { theme.base };
                Line::from(vec![Span::styled(format!("{mark} "), style), Span::styled(text, row_style)])
            })
            .collect();
        if lines.is_empty() {
            frame.render_widget(
                Paragraph::new("No samples with this status (f changes the filter).")
                    .style(theme.muted)
                    .wrap(Wrap { trim: true }),
                inner,
            );
        } else {
            frame.render_widget(Paragraph::new(lines).style(theme.base), inner);
        }
    }

    fn render_detail(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let title = match self.current() {
            Some(s) => format!(" {} · {} ", s.id, status_name(s.status)),
            None => " Sample ".into(),
        };
        let inner = super::shared::panel(frame, area, &title, theme.border, theme);
        let Some(s) = self.current() else { return };
        let mut lines = vec![Line::from(Span::styled("Instruction", theme.field_label))];
        lines.extend(s.instruction.lines().map(|l| Line::from(l.to_string())));
        if !s.input.is_empty() {
            lines.push(Line::from(Span::styled("Input", theme.field_label)));
            lines.extend(s.input.lines().map(|l| Line::from(l.to_string())));
        }
        let editing = self.editing.is_some();
        lines.push(Line::from(Span::styled(
            if editing { "Response (editing: Esc saves, Ctrl-C discards)" } else { "Response" },
            if editing { theme.field_label_focus } else { theme.field_label },
        )));
        match &self.editing {
            Some(ed) => lines.extend(ed.lines().iter().map(|l| Line::from(Span::styled(l.clone(), theme.selection)))),
            None => lines.extend(s.output.lines().map(|l| Line::from(l.to_string()))),
        }
        if let Some(task) = self.promoting {
            lines.insert(
                0,
                Line::from(vec![
                    Span::styled("Make this a seed · task ", theme.field_label_focus),
                    Span::styled(format!("◀ {} ▶", task.as_str()), theme.selection),
                    Span::styled(format!(" {} · Enter saves, Esc cancels", task.describe()), theme.field_label),
                ]),
            );
        }
        frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
    }

    fn render_provenance(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let inner = super::shared::panel(frame, area, " Provenance ", theme.border, theme);
        let Some(s) = self.current() else { return };
        let p = &s.provenance;
        let docs = if p.documents.is_empty() {
            "none".to_string()
        } else {
            p.documents.iter().map(|d| format!("{} {:.2}", d.id, d.weight)).collect::<Vec<_>>().join(", ")
        };
        let nearest = match (&p.most_similar, p.rouge_l) {
            (Some(m), Some(r)) => format!("{m} (ROUGE-L {r:.2})"),
            _ => "—".into(),
        };
        let mode = p.mode.map(crate::generate::pipeline::Mode::as_str).unwrap_or("?");
        let lines = vec![
            Line::from(vec![Span::styled("demos   ", theme.field_label), Span::raw(p.demos.join(", "))]),
            Line::from(vec![Span::styled("docs    ", theme.field_label), Span::raw(format!("{docs} ({mode})"))]),
            Line::from(vec![Span::styled("nearest ", theme.field_label), Span::raw(nearest)]),
            Line::from(vec![Span::styled("model   ", theme.field_label), Span::raw(p.model.clone())]),
        ];
        frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
    }
}
