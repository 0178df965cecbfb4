//! `selfspec serve`: an OpenAI-compatible server on selfspec's engine. `/v1/completions` and
//! `/v1/chat/completions` (streamed or whole, with log-probabilities), `/v1/models` (the base and
//! each adapter by name, all over one loaded base). Requests that arrive together are decoded in
//! one batch; a request arriving while a batch decodes waits for the next one.

pub mod http;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::decode::{Completion, Event, Finish, PrefixCache, Request, Sampling, SamplingParams};
use crate::model::adapters::adapter::Spec;
use crate::model::text::chat::Message;
use crate::model::{Choice, Model};

/// Connections handled at once; more are answered 503.
const MAX_CONNECTIONS: usize = 256;
/// Connections of one client address still sending their request: a newer one closes the
/// oldest, so half-open connections cannot shut other clients out.
const READING_PER_CLIENT: usize = 16;
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

/// What the decoding thread sends back to a request's connection.
enum Reply {
    Token(String),
    Done(Completion),
    Failed(String),
}

struct Work {
    request: Request,
    reply: mpsc::Sender<Reply>,
    /// Set when the client has gone: its rows stop decoding.
    gone: Arc<AtomicBool>,
}

/// Marks a request's client gone when its connection's handler ends, however it ends.
struct Leaving(Arc<AtomicBool>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether the peer has closed `stream` (a read would see its end), without waiting.
fn peer_closed(stream: &TcpStream) -> bool {
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
struct Reading {
    next: u64,
    by_client: std::collections::HashMap<std::net::IpAddr, std::collections::VecDeque<(u64, TcpStream)>>,
}

struct Shared {
    model: Arc<Model>,
    base: String,
    adapters: Vec<String>,
    key: Option<String>,
    work: mpsc::Sender<Work>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    reading: std::sync::Mutex<Reading>,
}

impl Shared {
    /// Registers a connection about to send its request; closes the client's oldest one still
    /// sending when it has too many. Returns the registration to end with [`Shared::read`].
    fn reading(&self, stream: &TcpStream) -> Option<(std::net::IpAddr, u64)> {
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

    fn read(&self, (ip, id): (std::net::IpAddr, u64)) {
        let mut r = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = r.by_client.get_mut(&ip) {
            queue.retain(|(i, _)| *i != id);
            if queue.is_empty() {
                r.by_client.remove(&ip);
            }
        }
    }
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
            let data: Vec<Value> = std::iter::once(&shared.base)
                .chain(&shared.adapters)
                .map(|n| json!({"id": n, "object": "model", "created": created, "owned_by": "selfspec"}))
                .collect();
            http::json(&mut stream, 200, &json!({"object": "list", "data": data}))
        }
        ("GET", "/health") => http::json(&mut stream, 200, &json!({"status": "ok"})),
        ("POST", "/v1/completions") => complete(shared, &req, &mut stream, false),
        ("POST", "/v1/chat/completions") => complete(shared, &req, &mut stream, true),
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

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A request's fields, read and checked.
struct Asked {
    model: String,
    ids: Vec<u32>,
    request: Request,
    stream: bool,
    logprobs: Option<usize>,
    /// vLLM's `return_tokens_as_token_ids`: log-probabilities name tokens `token_id:N`, so a
    /// client stepping in ids never reads a token's text back.
    as_ids: bool,
}

fn parse(shared: &Shared, body: &Value, chat: bool) -> Result<Asked, (u16, String)> {
    let bad = |m: String| (400, m);
    let model = body["model"].as_str().ok_or_else(|| bad("`model` is required (see /v1/models)".into()))?;
    let adapter = if model == shared.base {
        None
    } else if shared.adapters.iter().any(|a| a == model) {
        Some(model.to_string())
    } else {
        let mut known = vec![shared.base.clone()];
        known.extend(shared.adapters.iter().cloned());
        return Err((404, format!("the model `{model}` does not exist; this server serves: {}", known.join(", "))));
    };
    if body["n"].as_u64().is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is served".into()));
    }
    if body["echo"].as_bool() == Some(true) {
        return Err(bad("echo is not served".into()));
    }
    for field in ["presence_penalty", "frequency_penalty"] {
        if body[field].as_f64().is_some_and(|v| v != 0.0) {
            return Err(bad(format!("{field} is not served (repetition_penalty is)")));
        }
    }
    let number = |field: &str| -> Result<Option<f64>, (u16, String)> {
        match &body[field] {
            Value::Null => Ok(None),
            v => v.as_f64().map(Some).ok_or_else(|| bad(format!("`{field}` must be a number, not {v}"))),
        }
    };
    // A whole number from `min` to `max` (a string, a fraction or a negative is refused).
    let whole = |field: &str, min: u64, max: u64| -> Result<Option<u64>, (u16, String)> {
        match &body[field] {
            Value::Null => Ok(None),
            v => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(bad(crate::bounds::out_of_range(
                    &format!("`{field}`"),
                    v,
                    &format!("a whole number from {min} to {max}"),
                ))),
            },
        }
    };
    let tokenizer = &shared.model.tokenizer;
    let ids = if chat {
        let messages = messages(&body["messages"]).map_err(bad)?;
        let add_generation_prompt = body["add_generation_prompt"].as_bool().unwrap_or(true);
        let continue_final = body["continue_final_message"].as_bool().unwrap_or(false);
        if continue_final && add_generation_prompt && body["add_generation_prompt"].as_bool() == Some(true) {
            return Err(bad("continue_final_message and add_generation_prompt cannot both be true".into()));
        }
        if !tokenizer.has_chat_template() {
            return Err(bad("this model has no chat template: use /v1/completions".into()));
        }
        let text = if continue_final {
            let last = messages
                .last()
                .filter(|m| m.role == "assistant")
                .ok_or_else(|| bad("continue_final_message needs the last message to be the assistant's".into()))?;
            let rendered = tokenizer.apply_chat_template(&messages, false).map_err(|e| bad(format!("{e:#}")))?;
            // The template closes the final turn; the text is cut right after its content.
            let at = rendered
                .rfind(last.content.as_str())
                .ok_or_else(|| bad("the chat template changes the final message, so it cannot be continued".into()))?;
            rendered[..at + last.content.len()].to_string()
        } else {
            tokenizer.apply_chat_template(&messages, add_generation_prompt).map_err(|e| bad(format!("{e:#}")))?
        };
        tokenizer.encode_plain(&text).map_err(|e| bad(format!("{e:#}")))?
    } else {
        match &body["prompt"] {
            Value::String(s) => tokenizer.encode(s).map_err(|e| bad(format!("{e:#}")))?,
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                tokenizer.encode(a[0].as_str().unwrap_or("")).map_err(|e| bad(format!("{e:#}")))?
            }
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_u64) => {
                let mut ids = Vec::with_capacity(a.len());
                for v in a {
                    let id = v.as_u64().unwrap_or(0);
                    ids.push(u32::try_from(id).map_err(|_| bad(format!("token id {id} is outside the vocabulary")))?);
                }
                ids
            }
            Value::Array(_) => return Err(bad("one prompt per request: a string, or an array of token ids".into())),
            _ => return Err(bad("`prompt` is required: a string or an array of token ids".into())),
        }
    };
    let vocab = shared.model.decoder.spec.vocab_size;
    if ids.is_empty() {
        return Err(bad("the prompt has no tokens".into()));
    }
    if let Some(id) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(bad(format!("token id {id} is outside the vocabulary ({vocab})")));
    }
    let most = crate::bounds::MAX_NEW_TOKENS as u64;
    let asked_tokens = match whole("max_completion_tokens", 1, most)? {
        Some(n) => Some(n),
        None => whole("max_tokens", 1, most)?,
    };
    let max_tokens = match asked_tokens {
        Some(n) => n as usize,
        None if chat => 1024,
        None => 16,
    };
    let context = shared.model.decoder.spec.max_position_embeddings;
    if context > 0 && ids.len().saturating_add(max_tokens) > context {
        return Err(bad(format!(
            "the prompt ({} tokens) and max_tokens ({max_tokens}) exceed the model's context of {context} tokens",
            ids.len()
        )));
    }
    use crate::bounds::{self, out_of_range};
    let temperature = number("temperature")?.unwrap_or(1.0);
    bounds::temperature(temperature).map_err(|r| bad(out_of_range("`temperature`", temperature, r)))?;
    let top_p = number("top_p")?;
    if let Some(p) = top_p {
        bounds::top_p(p).map_err(|r| bad(out_of_range("`top_p`", p, r)))?;
    }
    // vLLM's convention: -1 (or 0) turns top-k off.
    let top_k = match &body["top_k"] {
        Value::Null => None,
        v if v.as_i64() == Some(-1) || v.as_i64() == Some(0) => None,
        v => match v.as_u64() {
            Some(k) if k <= vocab as u64 => Some(k as usize),
            _ => {
                return Err(bad(out_of_range(
                    "`top_k`",
                    v,
                    &format!("a whole number from 1 to {vocab}, or -1 or 0 for none"),
                )))
            }
        },
    };
    let sampling = if temperature == 0.0 { Sampling::Greedy } else { Sampling::Sample { temperature, top_k, top_p } };
    let seed = whole("seed", 0, u64::MAX)?.unwrap_or(0);
    let repetition_penalty = match number("repetition_penalty")? {
        Some(p) => {
            bounds::repetition_penalty(p).map_err(|r| bad(out_of_range("`repetition_penalty`", p, r)))?;
            Some(p as f32).filter(|p| *p != 1.0)
        }
        None => None,
    };
    let stop = match &body["stop"] {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|s| s.as_str().map(String::from)).collect(),
        _ => return Err(bad("`stop` must be a string or an array of strings".into())),
    };
    let logprobs = if chat {
        let top = whole("top_logprobs", 0, vocab as u64)?;
        match &body["logprobs"] {
            Value::Bool(true) => Some(top.unwrap_or(0) as usize),
            Value::Bool(false) | Value::Null => None,
            v => return Err(bad(format!("`logprobs` must be true or false in a chat request, not {v}"))),
        }
    } else {
        whole("logprobs", 0, vocab as u64)?.map(|n| n as usize)
    };
    let stream = body["stream"].as_bool().unwrap_or(false);
    if stream && logprobs.is_some() {
        return Err(bad("log-probabilities are served without streaming only".into()));
    }
    let request = Request {
        stop,
        sampling: SamplingParams { sampling, seed, repetition_penalty },
        ignore_eos: body["ignore_eos"].as_bool().unwrap_or(false),
        adapter,
        top_logprobs: logprobs,
        ..Request::new(ids.clone(), max_tokens)
    };
    let as_ids = body["return_tokens_as_token_ids"].as_bool().unwrap_or(false);
    Ok(Asked { model: model.to_string(), ids, request, stream, logprobs, as_ids })
}

/// Chat messages: `content` a string or a list of text parts.
fn messages(v: &Value) -> Result<Vec<Message>, String> {
    let list = v.as_array().filter(|a| !a.is_empty()).ok_or("`messages` must be a non-empty list")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let role = m["role"].as_str().ok_or(format!("messages[{i}] has no role"))?;
        let content = match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
            Value::Null => String::new(),
            _ => return Err(format!("messages[{i}].content must be text")),
        };
        out.push(Message::new(role, &content));
    }
    Ok(out)
}

fn finish_reason(f: &Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop(_) => "stop",
        Finish::Length | Finish::Loop => "length",
        Finish::Cancelled => "abort",
    }
}

fn complete(shared: &Shared, req: &http::Request, stream: &mut TcpStream, chat: bool) -> std::io::Result<()> {
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return http::error(stream, 400, &format!("the body is not JSON: {e}")),
    };
    let asked = match parse(shared, &body, chat) {
        Ok(a) => a,
        Err((status, message)) => return http::error(stream, status, &message),
    };
    let (tx, rx) = mpsc::channel();
    let gone = Arc::new(AtomicBool::new(false));
    // However this handler ends (the client closing the stream included), decoding stops.
    let _leaving = Leaving(gone.clone());
    if shared.work.send(Work { request: asked.request.clone(), reply: tx, gone: gone.clone() }).is_err() {
        return http::error(stream, 503, "the decoder has stopped");
    }
    // The next reply; `None` when the client has closed its connection meanwhile (looked at
    // every quarter second).
    let every = Duration::from_millis(250);
    let mut looked = std::time::Instant::now();
    let mut next = |stream: &TcpStream| loop {
        if looked.elapsed() >= every {
            looked = std::time::Instant::now();
            if peer_closed(stream) {
                gone.store(true, Ordering::Relaxed);
                return None;
            }
        }
        match rx.recv_timeout(every) {
            Ok(reply) => return Some(Ok(reply)),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Some(Err(())),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    };
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let id = if chat { format!("chatcmpl-{n}") } else { format!("cmpl-{n}") };
    let object = if chat { "chat.completion" } else { "text_completion" };
    let created = now();
    let model = asked.model.as_str();
    if asked.stream {
        http::start_events(stream)?;
        let chunk = |choice: Value| {
            let object = if chat { "chat.completion.chunk" } else { "text_completion" };
            json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]}).to_string()
        };
        if chat {
            http::event(stream, &chunk(json!({"index": 0, "delta": {"role": "assistant"}, "finish_reason": null})))?;
        }
        while let Some(Ok(reply)) = next(stream) {
            match reply {
                Reply::Token(text) => {
                    let choice = if chat {
                        json!({"index": 0, "delta": {"content": text}, "finish_reason": null})
                    } else {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null})
                    };
                    http::event(stream, &chunk(choice))?;
                }
                Reply::Done(c) => {
                    let reason = finish_reason(&c.finish);
                    let choice = if chat {
                        json!({"index": 0, "delta": {}, "finish_reason": reason})
                    } else {
                        json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason})
                    };
                    http::event(stream, &chunk(choice))?;
                    return http::event(stream, "[DONE]");
                }
                Reply::Failed(message) => {
                    let e = json!({"error": {"message": message, "type": "server_error", "code": 500}});
                    return http::event(stream, &e.to_string());
                }
            }
        }
        return Ok(());
    }
    let completion = loop {
        match next(stream) {
            Some(Ok(Reply::Token(_))) => continue,
            Some(Ok(Reply::Done(c))) => break c,
            Some(Ok(Reply::Failed(message))) => return http::error(stream, 500, &message),
            Some(Err(())) => return http::error(stream, 500, "the decoder stopped"),
            None => return Ok(()),
        }
    };
    let usage = json!({
        "prompt_tokens": asked.ids.len(),
        "completion_tokens": completion.ids.len(),
        "total_tokens": asked.ids.len() + completion.ids.len(),
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
    });
    let logprobs = asked.logprobs.map(|_| logprobs_json(&shared.model, &completion, chat, asked.as_ids));
    let reason = finish_reason(&completion.finish);
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": completion.text}, "logprobs": logprobs, "finish_reason": reason})
    } else {
        json!({"index": 0, "text": completion.text, "logprobs": logprobs, "finish_reason": reason})
    };
    let answer =
        json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage});
    http::json(stream, 200, &answer)
}

/// Log-probabilities as each endpoint reports them: completions a map from token text to
/// log-probability per step (a text two tokens share keeps the higher), chat a list per step.
fn logprobs_json(model: &Model, c: &Completion, chat: bool, as_ids: bool) -> Value {
    let text = |id: u32| match as_ids {
        true => format!("token_id:{id}"),
        false => model.tokenizer.decode(&[id]).unwrap_or_default(),
    };
    if chat {
        let content: Vec<Value> = c
            .logprobs
            .iter()
            .map(|t| {
                let top: Vec<Value> =
                    t.top.iter().map(|(id, lp)| json!({"token": text(*id), "logprob": lp, "bytes": null})).collect();
                json!({"token": text(t.id), "logprob": t.logprob, "bytes": null, "top_logprobs": top})
            })
            .collect();
        return json!({"content": content});
    }
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    let mut offset = 0;
    for t in &c.logprobs {
        let s = text(t.id);
        offsets.push(offset);
        offset += s.len();
        tokens.push(s);
        token_logprobs.push(t.logprob);
        let mut top = serde_json::Map::new();
        for (id, lp) in &t.top {
            top.entry(text(*id)).or_insert(json!(lp));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets})
}
