//! The workbench: tabs, status bar, overlays, and routing of keys, mouse and paste to the
//! screen in front. `handle`/`tick` change state; `render` only draws.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use unicode_width::UnicodeWidthStr;

use super::eval::EvalScreen;
use super::generate::GenerateScreen;
use super::help;
use super::picker::{Picker, PickerAction};
use super::review::ReviewScreen;
use super::seeds::{Focus, SaveState, SeedsScreen};
use super::seeds_view;
use super::shared::{truncate, Outcome};
use super::theme::Theme;
use super::train::TrainScreen;
use crate::config::Config;
use crate::workspace::Workspace;

mod view;

/// How the workbench opens: the workspace, the configuration, and what to show first.
pub struct Options {
    pub workspace: Workspace,
    pub config: Config,
    /// Where user themes live (`<config dir>/themes`).
    pub config_dir: PathBuf,
    /// A seed file to open instead of the workspace's first.
    pub file: Option<PathBuf>,
    /// The configuration file (generation runs started from the workbench read it too).
    pub config_file: PathBuf,
    /// The model the Generate screen starts with.
    pub model: Option<String>,
    /// selfspec's cache folder, where the default model is fetched to.
    pub cache_dir: PathBuf,
    /// Open on the Train tab following this run (`selfspec attach RUN`).
    pub attach: Option<PathBuf>,
}

const NOTICE_FOR: Duration = Duration::from_secs(5);

/// The stages of the method that have a working screen. Only these get a tab.
const TABS: [&str; 8] = ["Seeds", "Generate", "Review", "Train", "Eval", "Compare", "Sweeps", "Corpus"];
/// The tabs in the bar's order.
const TAB_ORDER: [Tab; 8] =
    [Tab::Seeds, Tab::Generate, Tab::Review, Tab::Train, Tab::Eval, Tab::Compare, Tab::Sweeps, Tab::Corpus];
/// The name at the bar's left, drawn only where all the tabs still fit beside it.
const BRAND: &str = " selfspec │";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Seeds,
    Generate,
    Review,
    Train,
    Eval,
    Compare,
    Sweeps,
    Corpus,
}

enum Overlay {
    Help { scroll: usize },
    Files(Picker),
}

struct Notice {
    text: String,
    error: bool,
    at: Instant,
}

pub struct App {
    pub workspace: Workspace,
    config: Config,
    themes: Vec<Theme>,
    pub theme: Theme,
    pub seeds: Option<SeedsScreen>,
    pub tab: Tab,
    pub generate: GenerateScreen,
    pub review: ReviewScreen,
    pub train: TrainScreen,
    pub eval: EvalScreen,
    pub compare: super::compare::CompareScreen,
    pub sweeps: super::sweeps::SweepsScreen,
    pub corpus: super::corpus::CorpusScreen,
    overlay: Option<Overlay>,
    notice: Option<Notice>,
    pub quit: bool,
    /// The frame size at the last draw, for mouse hit-testing.
    size: Cell<Rect>,
    /// How far the help overlay could scroll at the last draw.
    help_max: Cell<usize>,
}

/// The screen's parts: tab bar, list, detail, status bar.
pub struct Areas {
    pub tabs: Rect,
    pub list: Rect,
    pub detail: Rect,
    pub status: Rect,
}

pub fn areas(size: Rect) -> Areas {
    let [tabs, body, status] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(0), Constraint::Length(1)]).areas(size);
    let list_width = (body.width * 2 / 5).clamp(24.min(body.width), 48);
    let [list, detail] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(0)]).areas(body);
    Areas { tabs, list, detail, status }
}

impl App {
    /// Makes a reviewed sample a seed in its run's seed file. When the Seeds tab has that file
    /// open, its unsaved edits come first (the promotion waits for them to be saved) and it
    /// reloads the file afterwards, so neither write loses the other.
    fn promote(&mut self, p: super::review::Promotion) -> Outcome {
        let path = match crate::generate::promote::run_seed_file(&p.run) {
            Ok(path) => path,
            Err(e) => return Outcome::Error(format!("{e:#}")),
        };
        let target = std::fs::canonicalize(&path).ok();
        // The Seeds tab's screen when it has this file open.
        let open = self.seeds.as_mut().filter(|s| target.is_some() && std::fs::canonicalize(&s.path).ok() == target);
        if let Some(s) = open.as_ref().filter(|s| s.is_dirty()) {
            return Outcome::Error(format!(
                "the Seeds tab has unsaved changes to {}; save them (Ctrl-s) first, then promote",
                s.file_name()
            ));
        }
        let limits = self.config.seeds.limits;
        match crate::generate::promote::promote(&p.run, &p.id, p.task.as_str(), Some(&path), &limits) {
            Ok(done) => {
                if let Some(Outcome::Error(e)) = open.map(|s| s.reload()) {
                    return Outcome::Error(format!(
                        "{} → seed {}, but the Seeds tab could not reload: {e}",
                        p.id, done.id
                    ));
                }
                let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                Outcome::Notice(format!("{} → seed {} ({}) in {name}", p.id, done.id, p.task.as_str()))
            }
            Err(e) => Outcome::Error(format!("{e:#}")),
        }
    }

    pub fn new(opts: Options) -> anyhow::Result<App> {
        let (themes, theme_errors) = Theme::available(&opts.config_dir);
        let theme = Theme::resolve(&opts.config.theme, &themes)?;
        let mut generate = GenerateScreen::new(&opts.workspace, &opts.config_file, opts.model.clone(), None);
        generate.cache_dir = opts.cache_dir.clone();
        let review = ReviewScreen::new(&opts.workspace);
        let mut train = TrainScreen::new(&opts.workspace, &opts.config_file);
        let mut eval = EvalScreen::new(&opts.workspace, &opts.config_file);
        let mut sweeps =
            super::sweeps::SweepsScreen::new(&opts.workspace, &opts.config_file, &opts.config.seeds.limits);
        let tab = match &opts.attach {
            Some(run) => match crate::runs::kind(run) {
                Some(crate::runs::Kind::Train) => {
                    train.rescan(Some(run));
                    Tab::Train
                }
                Some(crate::runs::Kind::Generate) => {
                    generate.follow(run, None);
                    Tab::Generate
                }
                Some(crate::runs::Kind::Eval) => {
                    eval.show(run);
                    Tab::Eval
                }
                Some(crate::runs::Kind::Sweep) => {
                    sweeps.rescan(Some(run));
                    Tab::Sweeps
                }
                None => anyhow::bail!(
                    "{} is not a run folder (no config.yaml naming its kind); `selfspec runs` lists the workspace's runs",
                    run.display()
                ),
            },
            None => Tab::Seeds,
        };
        let mut app = App {
            compare: super::compare::CompareScreen::new(&opts.workspace),
            corpus: super::corpus::CorpusScreen::new(&opts.workspace, &opts.config.generation),
            sweeps,
            eval,
            tab,
            generate,
            review,
            train,
            workspace: opts.workspace,
            config: opts.config,
            themes,
            theme,
            seeds: None,
            overlay: None,
            notice: None,
            quit: false,
            size: Cell::new(Rect::default()),
            help_max: Cell::new(0),
        };
        let file = match opts.file {
            Some(f) => Some(f),
            None => app.workspace.seed_files()?.into_iter().next(),
        };
        match file {
            Some(path) => app.seeds = Some(app.open_screen(&path)?),
            None => app.open_picker(),
        }
        if let Some(e) = theme_errors.first() {
            app.notify(format!("theme skipped: {e}"), true, Instant::now());
        }
        Ok(app)
    }

    fn open_screen(&self, path: &Path) -> anyhow::Result<SeedsScreen> {
        SeedsScreen::open(path, self.config.seeds.limits, Duration::from_millis(self.config.seeds.autosave_ms))
    }

    fn open_picker(&mut self) {
        let current = self.seeds.as_ref().map(|s| s.path.clone());
        self.overlay = Some(Overlay::Files(Picker::new(&self.workspace, &self.config.seeds.limits, current.as_ref())));
    }

    fn notify(&mut self, text: String, error: bool, now: Instant) {
        self.notice = Some(Notice { text, error, at: now });
    }

    fn outcome(&mut self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Notice(text) => self.notify(text, false, now),
            Outcome::Error(text) => self.notify(text, true, now),
            Outcome::Ignored | Outcome::Done => {}
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Key(key) if key.kind != KeyEventKind::Release => self.key(key, now),
            Event::Mouse(mouse) => self.mouse(mouse, now),
            Event::Paste(text) => {
                if let (Tab::Seeds, Some(s)) = (self.tab, self.seeds.as_mut()) {
                    let o = s.paste(&text, now);
                    self.outcome(o, now);
                }
            }
            _ => {}
        }
    }

    fn key(&mut self, key: KeyEvent, now: Instant) {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('c') {
            self.quit = true;
            return;
        }
        if ctrl && key.code == KeyCode::Char('s') {
            if let Some(s) = self.seeds.as_mut() {
                let o = match s.save_now() {
                    Outcome::Done => Outcome::Notice(format!("saved {}", s.file_name())),
                    other => other,
                };
                self.outcome(o, now);
            }
            return;
        }
        if self.overlay_key(key, now) || (!self.typing() && self.global_key(key.code, now)) {
            return;
        }
        let o = self.tab_key(key, now);
        self.outcome(o, now);
    }

    /// A key for the overlay shown, if one is: whether it took the key.
    fn overlay_key(&mut self, key: KeyEvent, now: Instant) -> bool {
        match self.overlay.as_mut() {
            Some(Overlay::Help { scroll }) => {
                let max = self.help_max.get();
                match key.code {
                    KeyCode::Char('j') | KeyCode::Down => *scroll = (*scroll + 1).min(max),
                    KeyCode::Char('k') | KeyCode::Up => *scroll = scroll.saturating_sub(1),
                    KeyCode::PageDown => *scroll = (*scroll + 10).min(max),
                    KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
                    KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q') | KeyCode::Enter => self.overlay = None,
                    _ => {}
                }
                true
            }
            Some(Overlay::Files(picker)) => {
                let action = picker.key(key, &self.workspace);
                self.picker_action(action, now);
                true
            }
            None => false,
        }
    }

    /// Whether the tab shown is taking text (then keys are letters, not commands).
    fn typing(&self) -> bool {
        match self.tab {
            Tab::Seeds => self.seeds.as_ref().is_some_and(|s| s.editing.is_some() || s.searching),
            Tab::Generate => self.generate.is_typing(),
            Tab::Review => self.review.is_typing(),
            Tab::Train => false,
            Tab::Eval => self.eval.is_typing(),
            Tab::Compare => self.compare.is_typing(),
            Tab::Sweeps => false,
            Tab::Corpus => self.corpus.is_typing(),
        }
    }

    /// The keys every tab shares (help, quit, files, theme, the tab numbers): whether `code`
    /// was one.
    fn global_key(&mut self, code: KeyCode, now: Instant) -> bool {
        match code {
            KeyCode::Char('?') => self.overlay = Some(Overlay::Help { scroll: 0 }),
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('o') => self.open_picker(),
            KeyCode::Char('T') => self.next_theme(now),
            KeyCode::Char('1') => self.tab = Tab::Seeds,
            KeyCode::Char('2') => self.tab = Tab::Generate,
            KeyCode::Char('3') => self.show_review(None),
            KeyCode::Char('4') => {
                self.train.rescan(None);
                self.tab = Tab::Train;
            }
            KeyCode::Char('5') => {
                self.eval.rescan();
                self.tab = Tab::Eval;
            }
            KeyCode::Char('6') => self.tab = Tab::Compare,
            KeyCode::Char('7') => {
                self.sweeps.rescan(None);
                self.tab = Tab::Sweeps;
            }
            KeyCode::Char('8') => self.show_corpus(),
            _ => return false,
        }
        true
    }

    /// A key for the tab shown.
    fn tab_key(&mut self, key: KeyEvent, now: Instant) -> Outcome {
        let model = self.generate.model.clone();
        match self.tab {
            Tab::Seeds => match self.seeds.as_mut() {
                Some(s) => s.handle_key(key, now),
                None => Outcome::Ignored,
            },
            Tab::Generate => self.generate.handle_key(key),
            Tab::Review => match self.review.handle_key(key) {
                Outcome::Done => self.after_review(),
                o => o,
            },
            Tab::Train => {
                let data = self.review.runs.get(self.review.run_ix).cloned();
                self.train.handle_key(key, data.as_deref(), &model)
            }
            Tab::Eval => self.eval.handle_key(key, &model),
            Tab::Compare => self.compare.handle_key(key, &model),
            Tab::Sweeps => self.sweeps.handle_key(key, &model),
            Tab::Corpus => self.corpus.handle_key(key),
        }
    }

    /// What a Review key that was done asked for besides: a promotion, or a sample's retrieval
    /// shown in the Corpus tab.
    fn after_review(&mut self) -> Outcome {
        match (self.review.take_promotion(), self.review.take_retrieval()) {
            (Some(p), _) => self.promote(p),
            (None, Some((run, id))) => {
                if !self.corpus.is_building() {
                    self.corpus.rescan();
                }
                // The tab changes only when the sample's retrieval can be shown.
                let o = self.corpus.show_sample(&run, &id);
                if o == Outcome::Done {
                    self.tab = Tab::Corpus;
                }
                o
            }
            (None, None) => Outcome::Done,
        }
    }

    /// The Corpus tab, its list read again.
    fn show_corpus(&mut self) {
        if !self.corpus.is_building() {
            self.corpus.rescan();
        }
        self.tab = Tab::Corpus;
    }

    /// The Review tab, on `run` (else the run being generated, else the newest).
    fn show_review(&mut self, run: Option<&Path>) {
        let run = run.map(Path::to_path_buf).or_else(|| self.generate.run_dir().map(Path::to_path_buf));
        self.review.rescan(&self.workspace, run.as_deref());
        self.tab = Tab::Review;
    }

    fn picker_action(&mut self, action: PickerAction, now: Instant) {
        match action {
            PickerAction::None => {}
            PickerAction::Close => {
                if self.seeds.is_some() {
                    self.overlay = None;
                } else {
                    self.notify("no seed file is open: choose one, or n creates one".into(), true, now);
                }
            }
            PickerAction::Error(e) => self.notify(e, true, now),
            PickerAction::Open(path) => self.switch_to(&path, now),
        }
    }

    /// Opens another seed file, saving the current one first; stays put if that save fails.
    fn switch_to(&mut self, path: &Path, now: Instant) {
        if let Some(s) = self.seeds.as_mut() {
            if s.is_dirty() {
                if let Outcome::Error(e) = s.save_now() {
                    self.notify(format!("not switching: {e}"), true, now);
                    return;
                }
            }
        }
        match self.open_screen(path) {
            Ok(screen) => {
                let name = screen.file_name();
                self.seeds = Some(screen);
                self.overlay = None;
                self.notify(format!("opened {name}"), false, now);
            }
            Err(e) => self.notify(format!("{e:#}"), true, now),
        }
    }

    fn next_theme(&mut self, now: Instant) {
        let i = self.themes.iter().position(|t| t.name == self.theme.name).map_or(0, |i| (i + 1) % self.themes.len());
        if let Some(t) = self.themes.get(i) {
            self.theme = t.clone();
            self.notify(format!("theme: {} (set `theme:` in config.yaml to keep it)", t.name), false, now);
        }
    }

    fn mouse(&mut self, mouse: MouseEvent, now: Instant) {
        let pos = Position { x: mouse.column, y: mouse.row };
        if self.overlay.is_some() {
            if matches!(mouse.kind, MouseEventKind::Down(MouseButton::Left))
                && matches!(self.overlay, Some(Overlay::Help { .. }))
            {
                self.overlay = None;
            }
            return;
        }
        let a = areas(self.size.get());
        if let (Some(tab), MouseEventKind::Down(MouseButton::Left)) = (self.tab_at(pos), mouse.kind) {
            match tab {
                Tab::Review => self.show_review(None),
                Tab::Train => {
                    self.train.rescan(None);
                    self.tab = Tab::Train;
                }
                Tab::Eval => {
                    self.eval.rescan();
                    self.tab = Tab::Eval;
                }
                Tab::Corpus => self.show_corpus(),
                t => self.tab = t,
            }
            return;
        }
        if self.tab != Tab::Seeds {
            return;
        }
        let theme = &self.theme;
        let Some(s) = self.seeds.as_mut() else { return };
        match mouse.kind {
            MouseEventKind::Down(MouseButton::Left) => {
                if a.list.contains(pos) {
                    let rows = seeds_view::list_layout(s, a.list, theme).rows;
                    if rows.contains(pos) {
                        s.click_list((pos.y - rows.y) as usize);
                    } else {
                        s.finish_edit();
                        s.focus = Focus::List;
                    }
                } else if a.detail.contains(pos) {
                    if let Some(field) = seeds_view::field_at(s, a.detail, pos) {
                        let o = s.click_field(field, now);
                        self.outcome(o, now);
                    }
                }
            }
            MouseEventKind::ScrollDown if a.list.contains(pos) => s.move_selection(3),
            MouseEventKind::ScrollUp if a.list.contains(pos) => s.move_selection(-3),
            _ => {}
        }
    }

    /// The tab under `pos` in the tab bar.
    fn tab_at(&self, pos: Position) -> Option<Tab> {
        if pos.y != 0 {
            return None;
        }
        let mut x = if show_brand(self.size.get().width) { BRAND.width() as u16 } else { 0 };
        for (i, tab) in TABS.iter().enumerate() {
            let w = format!(" {} {tab} ", i + 1).width() as u16;
            if pos.x >= x && pos.x < x + w {
                return Some(TAB_ORDER[i]);
            }
            x += w;
        }
        None
    }

    /// Autosave, generation progress, new samples and notice expiry; called on a fixed clock.
    pub fn tick(&mut self, now: Instant) {
        if let Some(o) = self.generate.tick() {
            self.outcome(o, now);
        }
        if self.tab == Tab::Review {
            if let Some(o) = self.review.tick() {
                self.outcome(o, now);
            }
        }
        if self.tab == Tab::Train {
            self.train.tick();
        }
        if self.tab == Tab::Eval {
            self.eval.tick();
        }
        if self.tab == Tab::Sweeps {
            self.sweeps.tick();
        }
        if let Some(o) = self.corpus.tick() {
            self.outcome(o, now);
        }
        if let Some(o) = self.compare.tick() {
            self.outcome(o, now);
        }
        if let Some(o) = self.seeds.as_mut().and_then(|s| s.tick(now)) {
            self.outcome(o, now);
        }
        if self.notice.as_ref().is_some_and(|n| now.duration_since(n.at) >= NOTICE_FOR) {
            self.notice = None;
        }
    }

    /// Saves before exit. When the file cannot be written (or changed on disk), the edits go to a
    /// `.yaml.unsaved` file beside it; the message says where.
    pub fn shutdown(&mut self) -> Option<String> {
        let going = self.generate.shutdown();
        let saved = self.save_on_exit();
        match (going, saved) {
            (Some(a), Some(b)) => Some(format!("{a}\n{b}")),
            (a, b) => a.or(b),
        }
    }

    fn save_on_exit(&mut self) -> Option<String> {
        let s = self.seeds.as_mut()?;
        if !s.is_dirty() {
            return None;
        }
        if let Outcome::Done = s.save_now() {
            return None;
        }
        match s.rescue() {
            Ok(p) => Some(format!(
                "{} could not be saved (it changed on disk, or cannot be written); your edits are in {}",
                s.path.display(),
                p.display()
            )),
            Err(e) => {
                Some(format!("{} could not be saved and the edits could not be rescued: {e:#}", s.path.display()))
            }
        }
    }
}

/// Whether the bar has room for the name as well as every tab.
fn show_brand(width: u16) -> bool {
    let tabs: usize = TABS.iter().enumerate().map(|(i, t)| format!(" {} {t} ", i + 1).width()).sum();
    BRAND.width() + tabs <= width as usize
}
