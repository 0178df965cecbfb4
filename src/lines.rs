//! Line files: the one reader of them ([`Lines`]) and the append-only log ([`JsonLog`]). The
//! reader serves the JSON lines a user hands in (corpora, seeds, data sets, eval imports), the
//! logs and stores this tool appends to and follows as they grow (events.jsonl, samples.jsonl,
//! predictions.jsonl), and TSV.
//!
//! Every reader of lines goes through [`Lines`], so they all agree on what a line is:
//! - lines are numbered from 1, blank ones counted (and skipped), so a message names the line an
//!   editor shows;
//! - a UTF-8 byte-order mark at the start of a file and a `\r` before a newline are not part of a
//!   line;
//! - what follows the last newline (the tail) is apart: in a file this tool appends to it is a line
//!   still being written, or cut by a kill; a user's file need not end in a newline, and
//!   [`Lines::all`] reads its tail as a last line;
//! - a line longer than the reader's bound is an error naming it, and reading stops there, so a
//!   file without newlines (a binary, /dev/zero) never fills memory;
//! - a line that does not parse is for the caller to name with [`Lines`]' number; no reader here
//!   drops one silently.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

/// The longest line a file read from disk may hold unless the reader is given another bound.
pub const MAX_LINE_BYTES: u64 = 64 << 20;

/// Why reading stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("the line is longer than {max} bytes; is this the right file?")]
    TooLong { line: usize, max: u64 },
    #[error("{source}")]
    Io { line: usize, source: io::Error },
}

impl LineError {
    /// The line reading stopped at (1-based).
    pub fn line(&self) -> usize {
        match self {
            LineError::TooLong { line, .. } | LineError::Io { line, .. } => *line,
        }
    }

    /// `path:line: why`, for messages.
    pub fn at(&self, path: &Path) -> String {
        format!("{}:{}: {self}", path.display(), self.line())
    }
}

/// The non-blank lines of a reader, with their numbers; see the module's rules.
#[derive(Debug)]
pub struct Lines<R> {
    reader: R,
    /// Lines read through their newline, blank ones counted (lines before the reader's start
    /// included).
    line: usize,
    /// Bytes read through the last newline.
    complete: u64,
    max: u64,
    /// What followed the last newline, once the end was reached.
    tail: Vec<u8>,
    /// Whether the next line is the file's first (its byte-order mark is dropped).
    at_start: bool,
    done: bool,
}

impl<'a> Lines<&'a [u8]> {
    /// The lines of bytes in memory: a whole file, or what was appended to one since a reader's
    /// last call (which had read `lines_before` lines). No bound on a line's length: the bytes
    /// are already held.
    pub fn of(bytes: &'a [u8], lines_before: usize) -> Lines<&'a [u8]> {
        Lines::new(bytes, lines_before, u64::MAX)
    }
}

impl Lines<BufReader<File>> {
    /// The lines of `path`, read as they are needed (never the whole file at once), each at most
    /// [`MAX_LINE_BYTES`]. `path` must be a regular file: a device or a pipe is refused instead
    /// of read without end.
    pub fn open(path: &Path) -> io::Result<Lines<BufReader<File>>> {
        Lines::open_from(path, 0, 0)
    }

    /// [`Lines::open`] from byte `offset` on, which `lines_before` lines precede: how a reader
    /// that follows a growing file goes on from where it stopped (`offset` past the end reads
    /// nothing).
    pub fn open_from(path: &Path, offset: u64, lines_before: usize) -> io::Result<Lines<BufReader<File>>> {
        Ok(Lines::new(reader_at(path, offset)?, lines_before, MAX_LINE_BYTES))
    }
}

/// A buffered reader of the regular file `path` from byte `offset` on: what [`Lines`] reads
/// when a caller bounds the reader itself (a follower's step, a log's last bytes).
pub fn reader_at(path: &Path, offset: u64) -> io::Result<BufReader<File>> {
    use std::io::Seek;
    let mut file = crate::fsutil::open_regular(path)?;
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset))?;
    }
    Ok(BufReader::new(file))
}

/// The last complete non-blank line of `path` that lies wholly within its last `window` bytes
/// (None when there is none): what a reader that wants only a log's latest entry reads, without
/// reading the log.
pub fn last_line(path: &Path, window: u64) -> io::Result<Option<Vec<u8>>> {
    let len = std::fs::metadata(path)?.len();
    let from = len.saturating_sub(window);
    let mut reader = reader_at(path, from.saturating_sub(1))?;
    if from > 0 {
        // The byte before the window says whether the window starts a line; if not, the piece
        // up to the first newline is the end of a longer line, not a line.
        let mut before = [0u8];
        reader.read_exact(&mut before)?;
        if before[0] != b'\n' {
            reader.by_ref().take(window).read_until(b'\n', &mut Vec::new())?;
        }
    }
    let mut last = None;
    for item in Lines::new(reader, usize::from(from > 0), window) {
        let (_, line) = item.map_err(|e| match e {
            LineError::Io { source, .. } => source,
            e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })?;
        last = Some(line);
    }
    Ok(last)
}

impl<R: BufRead> Lines<R> {
    /// The lines of `reader`, which `lines_before` lines of its file precede, each at most `max`
    /// bytes.
    pub fn new(reader: R, lines_before: usize, max: u64) -> Lines<R> {
        Lines {
            reader,
            line: lines_before,
            complete: 0,
            max,
            tail: Vec::new(),
            at_start: lines_before == 0,
            done: false,
        }
    }

    /// The same lines, each at most `max` bytes.
    pub fn at_most(mut self, max: u64) -> Lines<R> {
        self.max = max;
        self
    }

    /// Bytes read through the last newline: where a follower goes on next time. Final once the
    /// iterator has ended.
    pub fn complete(&self) -> u64 {
        self.complete
    }

    /// The lines read through their newline, blank ones and those before the start counted: the
    /// tail, if any, is line `lines() + 1`.
    pub fn lines(&self) -> usize {
        self.line
    }

    /// What followed the last newline (known once the iterator has ended).
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// Whether the tail holds more than whitespace: a line not (yet) ended.
    pub fn unterminated(&self) -> bool {
        !self.tail.iter().all(u8::is_ascii_whitespace)
    }

    /// Every non-blank line, an unterminated last one included: a user's file need not end in a
    /// newline (a file this tool appends to does; there the tail is a line being written).
    pub fn all(self) -> All<R> {
        All { lines: self, tail_given: false }
    }

    fn read_one(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        let mut buf = Vec::new();
        let limit = self.max.saturating_add(1);
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|source| LineError::Io { line: self.line + 1, source })?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') {
            if buf.len() as u64 > self.max {
                return Err(LineError::TooLong { line: self.line + 1, max: self.max });
            }
            // The end came before a newline: the tail.
            self.strip_bom(&mut buf);
            self.tail = buf;
            return Ok(None);
        }
        self.complete += buf.len() as u64;
        self.line += 1;
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        self.strip_bom(&mut buf);
        Ok(Some(buf))
    }

    fn strip_bom(&mut self, buf: &mut Vec<u8>) {
        if std::mem::take(&mut self.at_start) && buf.starts_with(b"\xEF\xBB\xBF") {
            buf.drain(..3);
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<(usize, Vec<u8>), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.read_one() {
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(line)) => return Some(Ok((self.line, line))),
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// [`Lines::all`]: the complete lines, then an unterminated tail as the last line.
#[derive(Debug)]
pub struct All<R> {
    lines: Lines<R>,
    tail_given: bool,
}

impl<R: BufRead> Iterator for All<R> {
    type Item = Result<(usize, Vec<u8>), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.lines.next() {
            return Some(item);
        }
        if std::mem::replace(&mut self.tail_given, true) || !self.lines.unterminated() {
            return None;
        }
        let mut tail = std::mem::take(&mut self.lines.tail);
        if tail.last() == Some(&b'\r') {
            tail.pop();
        }
        Some(Ok((self.lines.line + 1, tail)))
    }
}

/// An append-only JSON-lines log (events.jsonl, filtered.jsonl): each line is fsynced as it is
/// written, and opening cuts a torn last line left by a kill (`cut` says which).
pub struct JsonLog {
    file: File,
    path: std::path::PathBuf,
    /// The torn last line cut at opening: its line number and length in bytes.
    pub cut: Option<(usize, usize)>,
}

impl JsonLog {
    pub fn open(path: &Path) -> anyhow::Result<JsonLog> {
        use anyhow::Context;
        // Read line by line to the end: a long run's log is megabytes.
        let mut cut = None;
        let mut complete = None;
        match Lines::open(path) {
            Ok(mut lines) => {
                for item in lines.by_ref() {
                    item.map_err(|e| anyhow::anyhow!("cannot read {}: {}", path.display(), e.at(path)))?;
                }
                if !lines.tail().is_empty() {
                    cut = Some((lines.lines() + 1, lines.tail().len()));
                    complete = Some(lines.complete());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if let Some(complete) = complete {
            file.set_len(complete).with_context(|| format!("cannot repair {}", path.display()))?;
        }
        Ok(JsonLog { file, path: path.to_path_buf(), cut })
    }

    pub fn append(&mut self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        use anyhow::Context;
        self.append_unsynced(value)?;
        self.file.sync_data().with_context(|| format!("cannot sync {}", self.path.display()))?;
        Ok(())
    }

    /// Appends without waiting for the disk: for lines whose loss in a crash costs nothing.
    pub fn append_unsynced(&mut self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        use anyhow::Context;
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        self.file.write_all(&line).with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(())
    }
}

/// The text of a user's file; bytes that are not UTF-8 are an error naming their line and byte.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes =
        crate::fsutil::read_regular(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at - bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        anyhow::anyhow!("{}:{line}: byte {column} of the line is not UTF-8; save the file as UTF-8", path.display())
    })
}

/// The records of the JSON-lines file `path` that are whole (a torn last line, left by a kill, is
/// not read; a missing file has none); a bad line elsewhere is an error naming it.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    use anyhow::Context;
    let lines = match Lines::open(path) {
        Ok(lines) => lines,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Vec::new();
    for item in lines {
        let (line, bytes) = item.map_err(|e| anyhow::anyhow!(e.at(path)))?;
        out.push(
            serde_json::from_slice(&bytes).with_context(|| format!("{}:{line}: not a valid record", path.display()))?,
        );
    }
    Ok(out)
}

/// The longest record (line) of a user's JSON-lines file: 1 MiB, about 250,000 tokens, past the
/// context of every model this tool runs. Tokenizing and scoring a record take a multiple of its
/// size, so the bound keeps a single line from taking gigabytes.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The records of a user's JSON-lines `text` (read from `path`), in order, each with its line
/// number (1-based); blank lines are skipped. A line that is not a `T` is an error
/// `path:line: <serde's message>; <shape>`, where `shape` tells what a line must hold; a line
/// over [`MAX_RECORD_BYTES`] is an error naming it.
pub fn jsonl_records<'a, T: serde::de::DeserializeOwned>(
    path: &'a Path,
    text: &'a str,
    shape: &'a str,
) -> impl Iterator<Item = anyhow::Result<(usize, T)>> + 'a {
    Lines::of(text.as_bytes(), 0).all().map(move |item| {
        let (n, line) = item.map_err(|e| anyhow::anyhow!(e.at(path)))?;
        if line.len() > MAX_RECORD_BYTES {
            anyhow::bail!(
                "{}:{n}: the line is {} bytes, over the {MAX_RECORD_BYTES} a record may hold (about 250,000 \
                 tokens, past any model's context); cut or split it",
                path.display(),
                line.len()
            );
        }
        serde_json::from_slice(&line)
            .map(|record| (n, record))
            .map_err(|e| anyhow::anyhow!("{}:{n}: {e}; {shape}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(lines: impl Iterator<Item = Result<(usize, Vec<u8>), LineError>>) -> Vec<(usize, String)> {
        lines.map(|r| r.unwrap()).map(|(n, b)| (n, String::from_utf8(b).unwrap())).collect()
    }

    #[test]
    fn lines_are_numbered_whole_and_keep_the_tail_apart() {
        let bytes = b"{\"a\":1}\n\n  \n{\"a\":2}\r\n{\"a\":";
        let mut lines = Lines::of(bytes, 10);
        let got: Vec<(usize, Vec<u8>)> = lines.by_ref().map(Result::unwrap).collect();
        assert_eq!(got, vec![(11, b"{\"a\":1}".to_vec()), (14, b"{\"a\":2}".to_vec())]);
        assert_eq!(lines.complete(), (bytes.len() - 5) as u64);
        assert_eq!(lines.tail(), b"{\"a\":");
        assert!(lines.unterminated());
        assert_eq!(lines.lines(), 14);

        let mut clean = Lines::of(b"x\n \n", 0);
        assert_eq!(clean.by_ref().count(), 1);
        assert!(!clean.unterminated());
        assert_eq!(clean.lines(), 2);
        assert_eq!(Lines::of(b"", 0).count(), 0);
        let mut open = Lines::of(b"no newline", 3);
        assert_eq!(open.by_ref().count(), 0);
        assert_eq!((open.lines(), open.complete()), (3, 0));
        let all = collect(Lines::of(b"a\n\nb\r", 0).all());
        assert_eq!(all, vec![(1, "a".to_string()), (3, "b".to_string())]);
        // A blank tail is no line.
        assert_eq!(Lines::of(b"a\n  ", 0).all().count(), 1);
    }

    #[test]
    fn a_files_byte_order_mark_is_dropped_but_not_later_ones() {
        let text = "\u{feff}{\"a\":1}\n\u{feff}x\n";
        let got = collect(Lines::of(text.as_bytes(), 0));
        assert_eq!(got, vec![(1, "{\"a\":1}".to_string()), (2, "\u{feff}x".to_string())]);
        // Lines read from an offset are not the file's start.
        let got = collect(Lines::of("\u{feff}x\n".as_bytes(), 4));
        assert_eq!(got, vec![(5, "\u{feff}x".to_string())]);
        // Nor is a mark kept on a file that is nothing but an unterminated line.
        let got = collect(Lines::of("\u{feff}y".as_bytes(), 0).all());
        assert_eq!(got, vec![(1, "y".to_string())]);
    }

    #[test]
    fn a_line_over_the_bound_stops_reading_with_its_number() {
        let mut lines = Lines::of(b"ok\n0123456789\nnever read\n", 0).at_most(5);
        assert_eq!(lines.next().unwrap().unwrap(), (1, b"ok".to_vec()));
        let err = lines.next().unwrap().unwrap_err();
        assert_eq!(err.line(), 2);
        assert_eq!(err.at(Path::new("f.jsonl")), "f.jsonl:2: the line is longer than 5 bytes; is this the right file?");
        assert!(lines.next().is_none(), "reading stops at a line over the bound");
        // A line of exactly the bound is fine, with or without its newline.
        assert_eq!(Lines::of(b"12345\n", 0).at_most(5).count(), 1);
        assert_eq!(Lines::of(b"12345", 0).at_most(5).all().map(Result::unwrap).count(), 1);
        assert!(Lines::of(b"123456", 0).at_most(5).all().next().unwrap().is_err());
    }

    #[test]
    fn a_file_is_followed_from_an_offset_and_a_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\"").unwrap();
        let mut lines = Lines::open(&path).unwrap();
        assert_eq!(lines.by_ref().count(), 2);
        let (offset, before) = (lines.complete(), lines.lines());
        assert_eq!(offset, 16);
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n").unwrap();
        let got = collect(Lines::open_from(&path, offset, before).unwrap());
        assert_eq!(got, vec![(3, "{\"n\":3}".to_string())]);
        assert_eq!(Lines::open_from(&path, 1000, 3).unwrap().count(), 0);
        let err = Lines::open(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(Lines::open(dir.path()).unwrap_err().to_string().contains("a folder"));
    }

    #[test]
    fn the_last_line_is_found_in_the_files_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":22}\n\n{\"n\":3").unwrap();
        assert_eq!(last_line(&path, 1 << 16).unwrap(), Some(b"{\"n\":22}".to_vec()));
        // A window that starts inside the last whole line holds no whole line; one that starts
        // where it starts holds it.
        assert_eq!(last_line(&path, 15).unwrap(), None);
        assert_eq!(last_line(&path, 16).unwrap(), Some(b"{\"n\":22}".to_vec()));
        assert_eq!(last_line(&path, 24).unwrap(), Some(b"{\"n\":22}".to_vec()));
        std::fs::write(&path, "").unwrap();
        assert_eq!(last_line(&path, 100).unwrap(), None);
    }

    #[test]
    fn whole_records_are_read_and_a_bad_one_is_named() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct R {
            n: u32,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        assert!(read_jsonl::<R>(&path).unwrap().is_empty(), "a missing file has no records");
        std::fs::write(&path, "{\"n\":1}\n\n{\"n\":2}\n{\"n\":").unwrap();
        assert_eq!(read_jsonl::<R>(&path).unwrap(), vec![R { n: 1 }, R { n: 2 }]);
        std::fs::write(&path, "{\"n\":1}\n\n{\"m\":2}\n").unwrap();
        let err = read_jsonl::<R>(&path).unwrap_err().to_string();
        assert!(err.ends_with("p.jsonl:3: not a valid record"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_does_not_spoil_the_first_record() {
        let text = "\u{feff}{\"a\": 1}\n{\"a\": 2}\n";
        let got: Vec<(usize, serde_json::Value)> =
            jsonl_records(Path::new("x.jsonl"), text, "").collect::<anyhow::Result<_>>().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1["a"], 1);
    }

    #[test]
    fn a_line_past_the_record_limit_is_refused_by_line() {
        let text = format!("{{\"a\": 1}}\n{{\"a\": \"{}\"}}\n", "x".repeat(MAX_RECORD_BYTES));
        let got: anyhow::Result<Vec<(usize, serde_json::Value)>> =
            jsonl_records(Path::new("big.jsonl"), &text, "").collect();
        let err = got.unwrap_err().to_string();
        assert!(err.starts_with("big.jsonl:2: the line is 1048585 bytes, over the 1048576"), "{err}");
    }

    #[test]
    fn bad_utf8_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, b"{\"a\": 1}\n{\"a\": \"caf\xe9\"}\n").unwrap();
        let err = read_text(&path).unwrap_err().to_string();
        assert!(err.ends_with("data.jsonl:2: byte 11 of the line is not UTF-8; save the file as UTF-8"), "{err}");
    }
}
