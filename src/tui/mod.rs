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
mod shared;
mod sweeps;
pub mod theme;
pub mod train;

use std::io::stdout;
use std::time::{Duration, Instant};

use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture, EventStream,
};
use crossterm::execute;
use futures::StreamExt;

pub use app::{areas, App, Options, Tab};
pub use editor::{wrap_line, TextEditor};
pub use generate::GenerateScreen;
pub use review::ReviewScreen;
pub use seeds::{Field, Focus, SaveState, SeedsScreen};
pub use shared::{panel, trained_adapters, Outcome};

const FRAME: Duration = Duration::from_millis(100);

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
