//! The server's loop: it listens, hands each connection to a thread (at most a bound at once),
//! routes its request, and runs one decoding thread over every request.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use super::shared::{now, Reply, Shared, Work};
use super::{answer, http};
use crate::decode::{Event, PrefixCache, Request};
use crate::model::adapters::adapter::Spec;
use crate::model::{Choice, Model};

/// Connections handled at once; more are answered 503.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its whole request after connecting.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

pub struct Options {
    pub model: Choice,
    pub adapters: Vec<Spec>,
    /// The base model's name in `/v1/models` and requests (default: what --model says).
    pub name: Option<String>,
    pub host: String,
    /// 0: any free port (the one taken is printed).
    pub port: u16,
    /// Most rows decoded at once.
    pub max_batch: usize,
    /// Requests must carry this key as a bearer token (read from the named variable).
    pub api_key_env: Option<String>,
    /// Bytes of prompts' keys and values kept for later requests that begin the same way
    /// (0: none kept).
    pub prefix_cache: usize,
}

/// Runs the server until the process is stopped.
pub fn serve(opts: Options) -> anyhow::Result<()> {
    let key = match &opts.api_key_env {
        Some(var) => {
            let key = std::env::var(var).map_err(|_| anyhow::anyhow!("--api-key-env {var}: {var} is not set"))?;
            anyhow::ensure!(
                !key.trim().is_empty(),
                "--api-key-env {var}: {var} is empty, so no request could match it; put the key in it"
            );
            Some(key.trim().to_string())
        }
        None => None,
    };
    let mut model = opts.model.load()?;
    crate::model::adapters::adapter::load_all(&mut model, &opts.adapters)?;
    let base = opts.name.clone().unwrap_or_else(|| opts.model.name.clone());
    let adapters: Vec<String> = opts.adapters.iter().map(|s| s.name.clone()).collect();
    anyhow::ensure!(
        !adapters.contains(&base),
        "the adapter name {base:?} is the base model's; name it apart with NAME=DIR"
    );
    let listener = TcpListener::bind((opts.host.as_str(), opts.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", opts.host, opts.port))?;
    let address = listener.local_addr()?;
    if key.is_none() && !address.ip().is_loopback() {
        eprintln!(
            "warning: listening on {} without an API key: anyone who can reach this machine can use the model; \
             set --api-key-env VAR (the key in VAR) or listen on 127.0.0.1",
            address.ip()
        );
    }
    let model = Arc::new(model);
    let (tx, rx) = mpsc::channel::<Work>();
    let decoder = model.clone();
    let max_batch = opts.max_batch.max(1);
    let prefix = (opts.prefix_cache > 0).then(|| Arc::new(PrefixCache::new(opts.prefix_cache)));
    std::thread::spawn(move || decode_loop(&decoder, rx, max_batch, prefix));
    let shared = Arc::new(Shared {
        model,
        base: base.clone(),
        adapters: adapters.clone(),
        key,
        work: tx,
        next_id: AtomicU64::new(1),
        connections: AtomicUsize::new(0),
        reading: Default::default(),
    });
    let names = std::iter::once(base.as_str()).chain(adapters.iter().map(String::as_str)).collect::<Vec<_>>();
    eprintln!("serving {} on http://{address}/v1", names.join(", "));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            let _ = http::error(&mut stream, 503, "too many connections; try again");
            continue;
        }
        let shared = shared.clone();
        std::thread::spawn(move || {
            handle(&shared, stream);
            shared.connections.fetch_sub(1, Ordering::SeqCst);
            crate::parallel::release_free_memory();
        });
    }
    Ok(())
}

/// Decodes the requests as they come on one continuous batch ([`crate::decode::continuous`]):
/// a request arriving while others decode joins them as soon as rows are free, instead of
/// waiting for the batch to end. A failure (a request the decoder refuses) is every live
/// request's answer, and the loop goes on.
fn decode_loop(model: &Model, rx: mpsc::Receiver<Work>, max_batch: usize, prefix: Option<Arc<PrefixCache>>) {
    let opts = crate::decode::Options { max_batch, gated: true, prefix, ..Default::default() };
    let cancel = AtomicBool::new(false);
    let mut feed = Incoming { rx, waiting: Default::default(), replies: Default::default(), next: 0, closed: false };
    while !feed.closed {
        if let Err(e) = crate::decode::continuous(model, &opts, &mut feed, &cancel) {
            for (_, (reply, _)) in feed.replies.drain() {
                let _ = reply.send(Reply::Failed(format!("{e:#}")));
            }
        }
    }
}

/// The server's requests as a [`crate::decode::Feed`]: waits for one when nothing decodes, and
/// takes what has arrived when rows come free.
struct Incoming {
    rx: mpsc::Receiver<Work>,
    /// Arrived but wider than the rows free.
    waiting: std::collections::VecDeque<Work>,
    replies: std::collections::HashMap<usize, (mpsc::Sender<Reply>, Arc<AtomicBool>)>,
    next: usize,
    /// Every sender is gone: the server is stopping.
    closed: bool,
}

impl crate::decode::Feed for Incoming {
    fn take(&mut self, room: crate::decode::Room) -> Vec<(usize, Request)> {
        if room.idle && self.waiting.is_empty() {
            match self.rx.recv() {
                Ok(w) => self.waiting.push_back(w),
                Err(_) => {
                    self.closed = true;
                    return Vec::new();
                }
            }
            // Requests sent together arrive a few milliseconds apart: wait that long for company.
            while let Ok(w) = self.rx.recv_timeout(Duration::from_millis(5)) {
                self.waiting.push_back(w);
                if self.waiting.len() >= room.rows {
                    break;
                }
            }
        }
        while let Ok(w) = self.rx.try_recv() {
            self.waiting.push_back(w);
        }
        // Requests whose client left while they waited are not started.
        self.waiting.retain(|w| !w.gone.load(Ordering::Relaxed));
        let mut out = Vec::new();
        let mut rows = 0;
        while let Some(w) = self.waiting.front() {
            let width = w.request.width();
            if !(out.is_empty() && room.idle) && rows + width > room.rows {
                break;
            }
            rows += width;
            let w = self.waiting.pop_front().expect("front exists");
            self.replies.insert(self.next, (w.reply, w.gone));
            out.push((self.next, w.request));
            self.next += 1;
        }
        out
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Token { request, text, .. } if !text.is_empty() => {
                if let Some((reply, _)) = self.replies.get(&request) {
                    let _ = reply.send(Reply::Token(text.to_string()));
                }
            }
            Event::Finished { request, completion } => {
                if let Some((reply, _)) = self.replies.remove(&request) {
                    let _ = reply.send(Reply::Done(completion.clone()));
                }
            }
            _ => {}
        }
    }

    fn gone(&mut self, request: usize) -> bool {
        self.replies.get(&request).is_some_and(|(_, gone)| gone.load(Ordering::Relaxed))
    }
}

fn handle(shared: &Shared, mut stream: TcpStream) {
    let registered = shared.reading(&stream);
    let read = http::read_request(&stream, std::time::Instant::now() + REQUEST_DEADLINE);
    if let Some(r) = registered {
        shared.read(r);
    }
    let req = match read {
        Ok(r) => r,
        Err(http::Refusal(status, message)) => {
            let _ = http::error(&mut stream, status, &message);
            return;
        }
    };
    if let Some(key) = &shared.key {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let given = req
            .header("authorization")
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if given != Some(key.as_str()) {
            let _ = http::error(&mut stream, 401, "a missing or wrong API key (send Authorization: Bearer KEY)");
            return;
        }
    }
    let path = req.path.trim_end_matches('/');
    let result = match (req.method.as_str(), path) {
        ("GET", "/v1/models") => {
            let created = now();
            let data = std::iter::once(&shared.base)
                .chain(&shared.adapters)
                .map(|n| crate::openai::ModelCard {
                    id: n.clone(),
                    object: "model".into(),
                    created,
                    owned_by: "selfspec".into(),
                })
                .collect();
            let list = crate::openai::ModelList { object: "list".into(), data };
            http::json(&mut stream, 200, &list)
        }
        ("GET", "/health") => http::json(&mut stream, 200, &serde_json::json!({"status": "ok"})),
        ("POST", "/v1/completions") => answer::complete(shared, &req, &mut stream, false),
        ("POST", "/v1/chat/completions") => answer::complete(shared, &req, &mut stream, true),
        (_, "/v1/models" | "/health" | "/v1/completions" | "/v1/chat/completions") => {
            http::error(&mut stream, 405, &format!("{} is not allowed on {path}", req.method))
        }
        _ => http::error(
            &mut stream,
            404,
            &format!("no route {path}: /v1/models, /v1/completions, /v1/chat/completions"),
        ),
    };
    // A client that went away is not an error of the server's.
    let _ = result;
}
