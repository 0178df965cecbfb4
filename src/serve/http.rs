//! Just enough HTTP/1.1 for an OpenAI-compatible API: one request per connection (`Connection:
//! close`), bodies by Content-Length, bounded header and body sizes, JSON answers and
//! server-sent events.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// The most a request's headers may hold.
const HEADER_LIMIT: usize = 64 << 10;
/// The most a request's body may hold: 1 MiB is far past any prompt a model's context takes
/// (32,000 tokens of text are about 150 KB), and tokenizing it stays within a few hundred MB.
pub const BODY_LIMIT: usize = 1 << 20;

pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read: the status to answer with, and why.
pub struct Refusal(pub u16, pub String);

/// Reads one request, which must arrive whole before `deadline` (a client that opens a
/// connection and sends nothing, or a byte at a time, holds it no longer than that).
pub fn read_request(stream: &TcpStream, deadline: std::time::Instant) -> Result<Request, Refusal> {
    let bad = |m: &str| Refusal(400, m.to_string());
    let late = || Refusal(408, "the request did not arrive in time".to_string());
    // Each read may wait only until the deadline.
    let wait = |stream: &TcpStream| -> Result<(), Refusal> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        stream.set_read_timeout(Some(left)).map_err(|e| Refusal(500, e.to_string()))
    };
    let timed_out =
        |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| Refusal(500, e.to_string()))?);
    let mut line = String::new();
    let mut header_bytes = 0;
    let mut read_line = |line: &mut String, reader: &mut BufReader<TcpStream>| -> Result<(), Refusal> {
        line.clear();
        wait(stream)?;
        let n = reader.by_ref().take((HEADER_LIMIT + 1 - header_bytes.min(HEADER_LIMIT)) as u64).read_line(line);
        let n = n.map_err(|e| if timed_out(&e) { late() } else { bad(&format!("cannot read the request: {e}")) })?;
        if n == 0 {
            return Err(bad("the connection closed before the request ended"));
        }
        header_bytes += n;
        if header_bytes > HEADER_LIMIT {
            return Err(Refusal(431, format!("the request's headers exceed {HEADER_LIMIT} bytes")));
        }
        Ok(())
    };
    read_line(&mut line, &mut reader)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad("not an HTTP request line"));
    };
    let (method, path) = (method.to_string(), target.split('?').next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        read_line(&mut line, &mut reader)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else { return Err(bad(&format!("a malformed header: {l}"))) };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut req = Request { method, path, headers, body: Vec::new() };
    if req.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Err(Refusal(411, "chunked request bodies are not read: send a Content-Length".into()));
    }
    let length = match req.header("content-length") {
        Some(v) => v.parse::<usize>().map_err(|_| bad(&format!("Content-Length {v:?} is not a number")))?,
        None => 0,
    };
    if length > BODY_LIMIT {
        return Err(Refusal(413, format!("the body ({length} bytes) exceeds {BODY_LIMIT} bytes")));
    }
    req.body = vec![0; length];
    let mut filled = 0;
    while filled < length {
        wait(stream)?;
        match reader.read(&mut req.body[filled..]) {
            Ok(0) => return Err(bad(&format!("the body ended early: {filled} of {length} bytes"))),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(late()),
            Err(e) => return Err(bad(&format!("the body ended early: {e}"))),
        }
    }
    let _ = stream.set_read_timeout(None);
    Ok(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

pub fn respond(stream: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

pub fn json(stream: &mut TcpStream, status: u16, value: &impl serde::Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    respond(stream, status, "application/json", &body)
}

/// An error in OpenAI's shape.
pub fn error(stream: &mut TcpStream, status: u16, message: &str) -> std::io::Result<()> {
    let kind = if status < 500 { "invalid_request_error" } else { "server_error" };
    let answer = crate::openai::ErrorAnswer {
        error: crate::openai::ErrorDetail { message: message.to_string(), kind: kind.to_string(), code: status },
    };
    json(stream, status, &answer)
}

/// Starts a server-sent event stream (its end is the connection's close).
pub fn start_events(stream: &mut TcpStream) -> std::io::Result<()> {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

pub fn event(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    stream.write_all(format!("data: {data}\n\n").as_bytes())?;
    stream.flush()
}
