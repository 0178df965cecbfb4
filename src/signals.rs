//! The signals that end or stop selfspec's work, one place for the workbench and the commands:
//! SIGINT (Ctrl-C), SIGTERM (`x`, `selfspec stop`, kill) and SIGHUP (a closed terminal or SSH
//! session). A command's engine stops cooperatively: the signal sets its cancel flag and the run
//! ends at its next check, saving what it must.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    Interrupt,
    Terminate,
    Hangup,
}

/// The three signals, listened to from inside a tokio runtime.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Received {
        tokio::select! {
            _ = self.interrupt.recv() => Received::Interrupt,
            _ = self.terminate.recv() => Received::Terminate,
            _ = self.hangup.recv() => Received::Hangup,
        }
    }
}

/// Sets `cancel` on SIGINT or SIGTERM, and on SIGHUP unless the run is `detached` (it must
/// outlive the terminal that started it). Listens on a thread of its own.
pub fn watch(cancel: Arc<AtomicBool>, detached: bool) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            let Ok(mut signals) = Signals::new() else { return };
            loop {
                match signals.recv().await {
                    Received::Hangup if detached => continue,
                    _ => break,
                }
            }
            cancel.store(true, Ordering::SeqCst);
        });
    });
}
