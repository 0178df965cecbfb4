//! What the server's connections and its decoding thread share: the work a request sends, the
//! replies it gets back, the server's state, and the bookkeeping of connections still sending
//! their request.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::decode::{Completion, Request};
use crate::model::Model;

/// Connections of one client address still sending their request: a newer one closes the
/// oldest, so half-open connections cannot shut other clients out.
const READING_PER_CLIENT: usize = 16;

/// What the decoding thread sends back to a request's connection.
pub(super) enum Reply {
    Token(String),
    Done(Completion),
    Failed(String),
}

pub(super) struct Work {
    pub(super) request: Request,
    pub(super) reply: mpsc::Sender<Reply>,
    /// Set when the client has gone: its rows stop decoding.
    pub(super) gone: Arc<AtomicBool>,
}

/// Marks a request's client gone when its connection's handler ends, however it ends.
pub(super) struct Leaving(pub(super) Arc<AtomicBool>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether the peer has closed `stream` (a read would see its end), without waiting.
pub(super) fn peer_closed(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted,
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// Connections still sending their request, by client address, oldest first.
#[derive(Default)]
pub(super) struct Reading {
    pub(super) next: u64,
    pub(super) by_client: std::collections::HashMap<std::net::IpAddr, std::collections::VecDeque<(u64, TcpStream)>>,
}

pub(super) struct Shared {
    pub(super) model: Arc<Model>,
    pub(super) base: String,
    pub(super) adapters: Vec<String>,
    pub(super) key: Option<String>,
    pub(super) work: mpsc::Sender<Work>,
    pub(super) next_id: AtomicU64,
    pub(super) connections: AtomicUsize,
    pub(super) reading: std::sync::Mutex<Reading>,
}

impl Shared {
    /// Registers a connection about to send its request; closes the client's oldest one still
    /// sending when it has too many. Returns the registration to end with [`Shared::read`].
    pub(super) fn reading(&self, stream: &TcpStream) -> Option<(std::net::IpAddr, u64)> {
        let ip = stream.peer_addr().ok()?.ip();
        let clone = stream.try_clone().ok()?;
        let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        r.next += 1;
        let id = r.next;
        let queue = r.by_client.entry(ip).or_default();
        while queue.len() >= READING_PER_CLIENT {
            if let Some((_, oldest)) = queue.pop_front() {
                let _ = oldest.shutdown(std::net::Shutdown::Both);
            }
        }
        queue.push_back((id, clone));
        Some((ip, id))
    }

    pub(super) fn read(&self, (ip, id): (std::net::IpAddr, u64)) {
        let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = r.by_client.get_mut(&ip) {
            queue.retain(|(i, _)| *i != id);
            if queue.is_empty() {
                r.by_client.remove(&ip);
            }
        }
    }
}

pub(super) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
