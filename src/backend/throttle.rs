//! How many requests talk to a server at once: a limit that halves (down to 1) when the server
//! cuts streamed answers while others stream, and the stop test the workers poll.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How a streamed answer that ends without a finish reason is reported.
pub(super) const CUT: &str = "the connection closed before the answer ended";

/// How many requests may talk to the server at once. It starts at the concurrency asked for;
/// each answer the server cuts while others stream halves it (down to 1), and the user is told
/// once why.
pub(super) struct Throttle {
    limit: AtomicUsize,
    /// Requests talking to the server now.
    running: AtomicUsize,
    /// Requests taken whose end the caller has not yet heard.
    pub(super) in_flight: AtomicUsize,
    told: AtomicBool,
}

impl Throttle {
    pub(super) fn new(limit: usize) -> Throttle {
        Throttle {
            limit: AtomicUsize::new(limit.max(1)),
            running: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            told: AtomicBool::new(false),
        }
    }

    /// Waits for a slot under the limit; false when `stop` says so first.
    pub(super) fn acquire(&self, stop: &dyn Fn() -> bool) -> bool {
        loop {
            let running = self.running.load(Ordering::SeqCst);
            if running < self.limit.load(Ordering::SeqCst)
                && self.running.compare_exchange(running, running + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                return true;
            }
            if stop() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(super) fn release(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// An answer was cut: true (and the limit lowered, `note` told why) when others were
    /// streaming, so the cut is the server's answer to concurrency rather than a failure.
    pub(super) fn cut(&self, note: &mut dyn FnMut(String)) -> bool {
        let running = self.running.load(Ordering::SeqCst);
        if running <= 1 {
            return false;
        }
        let limit = self.limit.load(Ordering::SeqCst);
        let lower = (running.min(limit) / 2).max(1);
        if lower < limit {
            self.limit.store(lower, Ordering::SeqCst);
            let first = !self.told.swap(true, Ordering::SeqCst);
            let why = if first {
                " The server ends a streamed answer when another request arrives (llama-cpp-python does \
                 so unless started with --interrupt_requests false, which lets it queue requests instead); \
                 answers cut that way are asked again."
            } else {
                ""
            };
            note(format!("the server cut an answer: {lower} request(s) at once from now on.{why}"));
        }
        true
    }
}

/// The stop test a worker polls (the caller's cancel or another worker's failure).
pub(super) struct StopFlag<'a>(pub(super) &'a (dyn Fn() -> bool + Sync));

impl StopFlag<'_> {
    pub(super) fn get(&self) -> bool {
        (self.0)()
    }
}
