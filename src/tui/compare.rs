//! The Compare screen: one prompt — typed, or taken from the workspace's evaluation sets — answered
//! by the base model and each trained adapter side by side, streamed, greedy or sampled: what
//! specialization changed. The answers are decoded in one batch (each row gated to its own
//! adapter) on a thread of the workbench; `x` stops them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::shared::Outcome;
use super::theme::Theme;
use crate::workspace::Workspace;

/// New tokens per answer.
const MAX_NEW_TOKENS: usize = 160;

enum Message {
    Loaded,
    Token { column: usize, text: String },
    Done { column: usize, finish: String },
    Failed(String),
}

/// One answering model: `base` or an adapter's name, and its text so far.
pub struct Column {
    pub name: String,
    pub text: String,
    pub finish: Option<String>,
    /// What the newest evaluation says of this model on the prompt's dataset: its F1 with the
    /// interval and, for an adapter, Δ against the base.
    pub evidence: Option<String>,
}

pub struct CompareScreen {
    pub prompt: String,
    /// The prompt being typed.
    pub typing: Option<String>,
    /// Examples of the workspace's evaluation sets, for `p`: (dataset, instruction, input);
    /// read at the first `p`, not when the workbench opens.
    examples: Option<Vec<(String, String, String)>>,
    next_example: usize,
    /// The dataset the prompt was taken from (none: typed).
    dataset: Option<String>,
    pub columns: Vec<Column>,
    /// Sampled at temperature 0.7 (seeded) instead of greedy.
    pub sampled: bool,
    pub state: String,
    running: Option<(Receiver<Message>, Arc<AtomicBool>)>,
    workspace: Workspace,
}

impl CompareScreen {
    pub fn new(workspace: &Workspace) -> CompareScreen {
        CompareScreen {
            prompt: String::new(),
            typing: None,
            examples: None,
            next_example: 0,
            dataset: None,
            columns: Vec::new(),
            sampled: false,
            state: "e types a prompt, p takes one from the evaluation sets; s answers with the base and every adapter"
                .into(),
            running: None,
            workspace: workspace.clone(),
        }
    }

    pub fn is_typing(&self) -> bool {
        self.typing.is_some()
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    pub fn handle_key(&mut self, key: KeyEvent, model: &str) -> Outcome {
        if let Some(text) = self.typing.as_mut() {
            match key.code {
                KeyCode::Enter => {
                    self.prompt = self.typing.take().unwrap_or_default();
                    self.dataset = None;
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => {}
            }
            return Outcome::Done;
        }
        match key.code {
            KeyCode::Char('e') | KeyCode::Enter => self.typing = Some(self.prompt.clone()),
            KeyCode::Char('p') => {
                let examples = self.examples.get_or_insert_with(|| eval_examples(&self.workspace));
                let Some((dataset, instruction, input)) = examples.get(self.next_example).cloned() else {
                    return Outcome::Error(format!("no evaluation sets in {}", self.workspace.eval_dir().display()));
                };
                self.next_example = (self.next_example + 1) % examples.len();
                self.prompt = crate::prompts::chat_user(&instruction, &input);
                self.state = format!("from {dataset}");
                self.dataset = Some(dataset);
            }
            KeyCode::Char('g') => self.sampled = !self.sampled,
            KeyCode::Char('s') => return self.start(model),
            KeyCode::Char('x') => match &self.running {
                Some((_, cancel)) => {
                    cancel.store(true, Ordering::Relaxed);
                    self.state = "stopping…".into();
                }
                None => return Outcome::Error("nothing is answering".into()),
            },
            _ => return Outcome::Ignored,
        }
        Outcome::Done
    }

    fn start(&mut self, model: &str) -> Outcome {
        if self.running.is_some() {
            return Outcome::Error("the models are answering; x stops them".into());
        }
        if model.trim().is_empty() {
            return Outcome::Error("no model: set it on the Generate tab (2)".into());
        }
        if self.prompt.trim().is_empty() {
            return Outcome::Error("no prompt: e types one, p takes one from the evaluation sets".into());
        }
        let adapters = super::shared::trained_adapters(&self.workspace);
        let report = self.dataset.as_deref().and_then(|d| newest_report(&self.workspace, d));
        self.columns = std::iter::once("base".to_string())
            .chain(adapters.iter().map(|(n, _)| n.clone()))
            .map(|name| {
                let evidence = match (&report, &self.dataset) {
                    (Some((run, r)), Some(d)) => evidence(r, &name, d).map(|e| format!("{e} ({run})")),
                    _ => None,
                };
                Column { name, text: String::new(), finish: None, evidence }
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let name = model.trim().to_string();
        let (stop, prompt, sampled) = (cancel.clone(), self.prompt.clone(), self.sampled);
        let loading = name.clone();
        std::thread::spawn(move || {
            if let Err(e) = answer(&name, &adapters, &prompt, sampled, &stop, &tx) {
                let _ = tx.send(Message::Failed(format!("{e:#}")));
            }
        });
        self.running = Some((rx, cancel));
        self.state = format!("loading {loading}…");
        Outcome::Done
    }

    /// Takes what the answering thread sent.
    pub fn tick(&mut self) -> Option<Outcome> {
        loop {
            let (rx, _) = self.running.as_ref()?;
            match rx.try_recv() {
                Ok(Message::Loaded) => {
                    self.state = format!("answering ({})", if self.sampled { "sampled, T 0.7" } else { "greedy" })
                }
                Ok(Message::Token { column, text }) => {
                    if let Some(c) = self.columns.get_mut(column) {
                        c.text.push_str(&text);
                    }
                }
                Ok(Message::Done { column, finish }) => {
                    if let Some(c) = self.columns.get_mut(column) {
                        c.finish = Some(finish);
                    }
                }
                Ok(Message::Failed(e)) => {
                    self.running = None;
                    self.state = format!("failed: {e}");
                    return Some(Outcome::Error(self.state.clone()));
                }
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    self.running = None;
                    self.state = "done; s answers again".into();
                    return None;
                }
            }
        }
    }

    pub fn render(&self, frame: &mut Frame, area: Rect, theme: &Theme) {
        let [top, answers] = Layout::vertical([Constraint::Length(7), Constraint::Min(4)]).areas(area);
        let inner = super::shared::panel(frame, top, " Prompt ", theme.border, theme);
        let [text, keys] = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(inner);
        let shown = match &self.typing {
            Some(t) => format!("{t}▏"),
            None if self.prompt.is_empty() => "(none yet)".into(),
            None => self.prompt.clone(),
        };
        frame.render_widget(Paragraph::new(shown).style(theme.base).wrap(Wrap { trim: false }), text);
        let mode = if self.sampled { "sampled" } else { "greedy" };
        let line = Line::from(vec![
            Span::styled(" e", theme.key),
            Span::styled(" type  ", theme.muted),
            Span::styled("p", theme.key),
            Span::styled(" from eval  ", theme.muted),
            Span::styled("g", theme.key),
            Span::styled(format!(" {mode}  "), theme.muted),
            Span::styled(if self.running.is_some() { "x" } else { "s" }, theme.key),
            Span::styled(if self.running.is_some() { " stop  " } else { " answer  " }, theme.muted),
            Span::styled(self.state.clone(), theme.accent),
        ]);
        frame.render_widget(Paragraph::new(line), keys);
        if self.columns.is_empty() {
            let inner = super::shared::panel(frame, answers, " Answers ", theme.border, theme);
            let text = "The base model and every trained adapter answer here, side by side.";
            frame.render_widget(Paragraph::new(text).style(theme.muted), inner);
            return;
        }
        let n = self.columns.len() as u32;
        let areas = Layout::horizontal((0..n).map(|_| Constraint::Ratio(1, n))).split(answers);
        for (c, area) in self.columns.iter().zip(areas.iter()) {
            let title = match &c.finish {
                Some(f) => format!(" {} ({f}) ", c.name),
                None => format!(" {} ", c.name),
            };
            let inner = super::shared::panel(frame, *area, &title, theme.border, theme);
            let mut lines = Vec::new();
            if let Some(e) = &c.evidence {
                lines.push(Line::from(Span::styled(e.clone(), theme.muted)));
            }
            lines.extend(c.text.split('\n').map(|l| Line::from(l.to_string())));
            frame.render_widget(Paragraph::new(lines).style(theme.base).wrap(Wrap { trim: false }), inner);
        }
    }
}

/// The newest finished evaluation of the workspace that scored `dataset`: its folder's name and
/// its report.
fn newest_report(workspace: &Workspace, dataset: &str) -> Option<(String, crate::eval::run::Report)> {
    let runs = workspace.runs_newest_first(|p| crate::runs::kind(p) == Some(crate::runs::Kind::Eval));
    runs.into_iter().find_map(|dir| {
        let r = crate::eval::run::Report::read(&dir).ok()?;
        let name = dir.file_name()?.to_string_lossy().to_string();
        r.datasets.iter().any(|d| d == dataset).then_some((name, r))
    })
}

/// One line of evidence for `model` on `dataset` at the report's smallest k: `F1 22.2 [18.1, 26.0]`,
/// and for an adapter `Δ +2.1 [−1.4, +5.6]*` against the base.
pub fn evidence(r: &crate::eval::run::Report, model: &str, dataset: &str) -> Option<String> {
    use crate::eval::report::{delta_text, with_interval};
    let k = r.shots.iter().min().copied()?;
    let c = r.cell(model, dataset, k)?;
    let delta = c.vs_base.as_ref().map_or(String::new(), |v| format!(", Δ {}", delta_text(&v.f1)));
    Some(format!("{dataset} {k}-shot: F1 {}{delta}", with_interval(c.f1, c.f1_ci)))
}

/// The first five examples of each dataset of the workspace's evaluation sets.
fn eval_examples(workspace: &Workspace) -> Vec<(String, String, String)> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(workspace.eval_dir())
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    sets.sort();
    let mut examples = Vec::new();
    for set in sets {
        for d in crate::eval::data::load_dir(&set, &[]).unwrap_or_default() {
            examples.extend(d.test.into_iter().take(5).map(|e| (d.name.clone(), e.instruction, e.input)));
        }
    }
    examples
}

/// Loads the model and adapters, then decodes the prompt once per column in one batch.
fn answer(
    model: &str,
    adapters: &[(String, PathBuf)],
    prompt: &str,
    sampled: bool,
    cancel: &AtomicBool,
    tx: &std::sync::mpsc::Sender<Message>,
) -> anyhow::Result<()> {
    use crate::decode::{Event, Request, Sampling, SamplingParams};
    let choice = crate::model::Choice {
        name: model.to_string(),
        device: crate::model::DeviceChoice::Auto,
        dtype: crate::model::DTypeChoice::Auto,
        int8: false,
    };
    let (device, _) = choice.device.open();
    let mut m = crate::model::Model::load(&choice.name, choice.dtype, &device)?;
    let specs: Vec<crate::model::adapters::adapter::Spec> = adapters
        .iter()
        .map(|(name, dir)| crate::model::adapters::adapter::Spec { name: name.clone(), dir: dir.clone() })
        .collect();
    crate::model::adapters::adapter::load_all(&mut m, &specs)?;
    let _ = tx.send(Message::Loaded);
    // Asked as the model is asked elsewhere: in its chat template when it has one.
    let ids = if m.tokenizer.has_chat_template() {
        m.tokenizer.encode_chat(&[crate::model::text::chat::Message::new("user", prompt)])?
    } else {
        let (instruction, input) = prompt.split_once("\n\n").unwrap_or((prompt, ""));
        m.tokenizer.encode(&crate::prompts::alpaca(instruction, input))?
    };
    let sampling = if sampled {
        SamplingParams {
            sampling: Sampling::Sample { temperature: 0.7, top_k: None, top_p: Some(0.9) },
            seed: 1,
            repetition_penalty: None,
        }
    } else {
        SamplingParams::greedy()
    };
    let requests: Vec<Request> = std::iter::once(None)
        .chain(specs.iter().map(|s| Some(s.name.clone())))
        .map(|adapter| Request { adapter, sampling, stop_on_loop: true, ..Request::new(ids.clone(), MAX_NEW_TOKENS) })
        .collect();
    let opts = crate::decode::Options { max_batch: requests.len(), ..Default::default() };
    crate::decode::generate(
        &m,
        &requests,
        &opts,
        &mut |e| match e {
            Event::Token { request, text, .. } => {
                let _ = tx.send(Message::Token { column: request, text: text.to_string() });
            }
            Event::Finished { request, completion } => {
                let finish = format!("{:?}", completion.finish).to_lowercase();
                let _ = tx.send(Message::Done { column: request, finish });
            }
            Event::Note { .. } => {}
        },
        cancel,
    )?;
    Ok(())
}
