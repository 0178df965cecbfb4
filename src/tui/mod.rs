//! The terminal workbench. The only module (with main.rs) that knows about ratatui and
//! crossterm; it drives the engine modules and draws their state.
//!
//! The loop selects over terminal events, a 100 ms clock (autosave, notices) and signals. The
//! terminal is restored on normal exit, on panic (ratatui's hook, extended to turn mouse capture
//! and bracketed paste off), on Ctrl-C, and on SIGTERM/SIGHUP/SIGINT; every path saves first.

mod app;
pub mod compare;
pub mod corpus;
mod editor;
pub mod eval;
pub mod generate;
mod help;
mod picker;
pub mod review;
mod seeds;
mod seeds_view;
mod sweeps;
pub mod theme;
pub mod train;

use std::io::stdout;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture, EventStream,
};
use crossterm::execute;
use futures::StreamExt;

pub use app::{areas, App, Tab};
pub use editor::{wrap_line, TextEditor};
pub use generate::GenerateScreen;
pub use review::ReviewScreen;
pub use seeds::{Field, Focus, SaveState, SeedsScreen};

use crate::config::Config;
use crate::workspace::Workspace;
use unicode_width::UnicodeWidthStr;

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
    train::train_runs(workspace)
        .into_iter()
        .filter(|r| crate::train::run::trained(r))
        .map(|r| {
            let name = r.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            (name, crate::train::run::adapter_dir(&r))
        })
        .collect()
}

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

const FRAME: Duration = Duration::from_millis(100);

/// Clears a box of at most `width`×`height` centred in `area`, draws its border and title, and
/// returns the inside.
fn overlay_box(
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

pub fn run(opts: Options) -> anyhow::Result<()> {
    // Everything that can fail on bad input happens before the terminal is taken over, so its
    // message prints normally.
    let mut app = App::new(opts)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut terminal = ratatui::try_init()?;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = execute!(stdout(), DisableMouseCapture, DisableBracketedPaste);
        previous(info);
    }));
    let _ = execute!(stdout(), EnableMouseCapture, EnableBracketedPaste);
    let result = runtime.block_on(event_loop(&mut terminal, &mut app));
    let rescued = app.shutdown();
    let _ = execute!(stdout(), DisableMouseCapture, DisableBracketedPaste);
    ratatui::restore();
    if let Some(message) = rescued {
        eprintln!("{message}");
    }
    result
}

async fn event_loop(terminal: &mut ratatui::DefaultTerminal, app: &mut App) -> anyhow::Result<()> {
    let mut events = EventStream::new();
    let mut clock = tokio::time::interval(FRAME);
    let mut signals = crate::signals::Signals::new()?;
    loop {
        terminal.draw(|f| app.render(f))?;
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => app.handle(event, Instant::now()),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            _ = clock.tick() => app.tick(Instant::now()),
            _ = signals.recv() => return Ok(()),
        }
        if app.quit {
            return Ok(());
        }
    }
}
