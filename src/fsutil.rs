//! File-system helpers: writes with the durability guarantees the rest of selfspec relies on, and
//! the records of a user's JSON-lines file with their line numbers.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `bytes` so that a crash at any moment leaves either the old file or the
/// new one, never a mix: write a temporary file beside it, fsync it, rename it over `path`, then
/// fsync the folder so the rename itself is durable.
///
/// An existing file keeps its permissions and, where this process may set them, its owner and
/// group; a symbolic link is written through (its target is
/// replaced, the link stays); a read-only file is refused (`PermissionDenied`, saying so) rather
/// than replaced behind its owner's back.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let resolved;
    let mut mode = None;
    let mut owner = None;
    let path = match fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().readonly() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{} is read-only; make it writable (chmod u+w) or save elsewhere", path.display()),
                ));
            }
            mode = Some(meta.permissions());
            owner = Some((meta.uid(), meta.gid()));
            resolved = fs::canonicalize(path)?;
            resolved.as_path()
        }
        Err(_) => path,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        if let Some(mode) = &mode {
            f.set_permissions(mode.clone())?;
        }
        // The owner too, where this process may set it (root, or the owner keeping its group):
        // saving someone else's file must not hand it to whoever saved it.
        if let Some((uid, gid)) = owner {
            let meta = f.metadata()?;
            if (meta.uid(), meta.gid()) != (uid, gid) {
                let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
        let bytes = match read_regular(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let complete = bytes.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut cut = None;
        if bytes.len() != complete {
            file.set_len(complete as u64).with_context(|| format!("cannot repair {}", path.display()))?;
            let line = bytes[..complete].iter().filter(|&&b| b == b'\n').count() + 1;
            cut = Some((line, bytes.len() - complete));
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

/// Refuses to replace an existing `path` unless `force` — and even with it, when `path` is one
/// of `inputs` or lies inside one (an input folder): writing it would destroy what is read.
pub fn refuse_overwrite(path: &Path, force: bool, inputs: &[&Path]) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if !force {
        anyhow::bail!("{} already exists; pass --force to overwrite it", path.display());
    }
    let Ok(out) = fs::canonicalize(path) else { return Ok(()) };
    for input in inputs {
        if let Ok(input) = fs::canonicalize(input) {
            if out == input || out.starts_with(&input) {
                anyhow::bail!(
                    "{} is {} or inside it: writing it would destroy the input it is made from; choose another output",
                    path.display(),
                    input.display()
                );
            }
        }
    }
    Ok(())
}

/// Reads the JSON lines of `path` that parse (a torn last line is skipped; a bad line elsewhere
/// is an error naming it).
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    use anyhow::Context;
    let text = match read_regular(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Vec::new();
    for (line, bytes) in JsonLines::new(&text, 0) {
        out.push(
            serde_json::from_slice(bytes).with_context(|| format!("{}:{line}: not a valid record", path.display()))?,
        );
    }
    Ok(out)
}

/// The lines of a JSON-lines file's bytes, as every reader of the files this tool appends to
/// splits them (a whole file, a log followed from an offset, the sample store): the complete,
/// non-blank lines with their 1-based numbers, and apart from them the rest after the last
/// newline — a line still being written, or cut off by a kill.
#[derive(Debug, Clone)]
pub struct JsonLines<'a> {
    bytes: &'a [u8],
    lines_before: usize,
    /// Bytes up to and including the last newline.
    complete: usize,
    at: usize,
    line: usize,
}

impl<'a> JsonLines<'a> {
    /// The lines of `bytes`, which start after `lines_before` lines of the file.
    pub fn new(bytes: &'a [u8], lines_before: usize) -> JsonLines<'a> {
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        JsonLines { bytes, lines_before, complete, at: 0, line: lines_before }
    }

    /// Bytes up to and including the last newline: where reading from an offset goes on.
    pub fn complete(&self) -> usize {
        self.complete
    }

    /// What follows the last newline.
    pub fn tail(&self) -> &'a [u8] {
        &self.bytes[self.complete..]
    }

    /// Whether the tail holds more than whitespace: a line not (yet) ended.
    pub fn unterminated(&self) -> bool {
        !self.tail().iter().all(u8::is_ascii_whitespace)
    }

    /// Every non-blank line, an unterminated last one included: a user's file need not end in a
    /// newline (a file this tool appends to does; there the tail is a line being written).
    pub fn all(self) -> impl Iterator<Item = (usize, &'a [u8])> {
        let last = self.unterminated().then(|| (self.lines() + 1, self.tail()));
        self.chain(last)
    }

    /// The lines the complete part ends after (blank ones counted): the tail is line this + 1.
    pub fn lines(&self) -> usize {
        self.lines_before + self.bytes[..self.complete].iter().filter(|&&b| b == b'\n').count()
    }
}

impl<'a> Iterator for JsonLines<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<(usize, &'a [u8])> {
        while self.at < self.complete {
            let rest = &self.bytes[self.at..self.complete];
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            self.at += end + 1;
            self.line += 1;
            if !rest[..end].iter().all(u8::is_ascii_whitespace) {
                return Some((self.line, &rest[..end]));
            }
        }
        None
    }
}

/// The bytes of `path`, which must be a regular file (a symbolic link to one is followed): a
/// device such as /dev/zero, or a pipe, is refused instead of read without end.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    read_regular_from(path, 0)
}

/// [`read_regular`] from byte `offset` on (nothing when the file is shorter): what a reader that
/// follows a file as it grows reads on each call.
pub fn read_regular_from(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a folder" } else { "not a regular file (a device, pipe or socket)" };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is {what}; name a file", path.display())));
    }
    let mut file = fs::File::open(path)?;
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset))?;
    }
    let mut bytes = Vec::with_capacity(meta.len().saturating_sub(offset) as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_regular`] as UTF-8 text (`InvalidData` otherwise, as `fs::read_to_string`).
pub fn read_regular_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{} is not UTF-8 text", path.display())))
}

/// The text of a user's file; bytes that are not UTF-8 are an error naming their line and byte.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = read_regular(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at - bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        anyhow::anyhow!("{}:{line}: byte {column} of the line is not UTF-8; save the file as UTF-8", path.display())
    })
}

/// `text` without a leading UTF-8 byte-order mark, which some editors write and JSON forbids.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
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
    JsonLines::new(strip_bom(text).as_bytes(), 0).all().map(move |(n, line)| {
        if line.len() > MAX_RECORD_BYTES {
            anyhow::bail!(
                "{}:{n}: the line is {} bytes, over the {MAX_RECORD_BYTES} a record may hold (about 250,000 \
                 tokens, past any model's context); cut or split it",
                path.display(),
                line.len()
            );
        }
        serde_json::from_slice(line)
            .map(|record| (n, record))
            .map_err(|e| anyhow::anyhow!("{}:{n}: {e}; {shape}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_number_whole_lines_and_keep_the_tail_apart() {
        let bytes = b"{\"a\":1}\n\n  \n{\"a\":2}\n{\"a\":";
        let lines = JsonLines::new(bytes, 10);
        assert_eq!(lines.complete(), bytes.len() - 5);
        assert_eq!(lines.tail(), b"{\"a\":");
        assert!(lines.unterminated());
        assert_eq!(lines.lines(), 14);
        let got: Vec<(usize, &[u8])> = lines.collect();
        assert_eq!(got, vec![(11, &b"{\"a\":1}"[..]), (14, &b"{\"a\":2}"[..])]);
        let clean = JsonLines::new(b"x\n \n", 0);
        assert!(!clean.unterminated());
        assert_eq!(clean.lines(), 2);
        assert_eq!(JsonLines::new(b"", 0).count(), 0);
        assert_eq!(JsonLines::new(b"no newline", 3).lines(), 3);
        let all: Vec<(usize, &[u8])> = JsonLines::new(b"a\n\nb", 0).all().collect();
        assert_eq!(all, vec![(1, &b"a"[..]), (3, &b"b"[..])]);
    }

    #[test]
    fn saving_keeps_the_mode_writes_through_links_and_refuses_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private.yaml");
        fs::write(&private, "a").unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
        atomic_write(&private, b"b").unwrap();
        assert_eq!(fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(&private).unwrap(), b"b");

        let link = dir.path().join("link.yaml");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        atomic_write(&link, b"c").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
        assert_eq!(fs::read(&private).unwrap(), b"c");

        let locked = dir.path().join("locked.yaml");
        fs::write(&locked, "keep").unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o444)).unwrap();
        let err = atomic_write(&locked, b"lost").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("read-only"), "{err}");
        assert_eq!(fs::read(&locked).unwrap(), b"keep");
    }

    #[test]
    fn saving_keeps_the_owner_where_it_may() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seeds.yaml");
        fs::write(&path, "a").unwrap();
        if std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_err() {
            eprintln!("skipped: this process may not give a file away (not root)");
            return;
        }
        atomic_write(&path, b"b").unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(fs::read(&path).unwrap(), b"b");
    }

    #[test]
    fn devices_are_not_read_and_inputs_not_overwritten() {
        let err = read_regular(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(read_text(Path::new("/dev/zero")).unwrap_err().to_string().contains("not a regular file"));
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.yaml");
        fs::write(&input, "a").unwrap();
        let err = refuse_overwrite(&input, true, &[&input]).unwrap_err().to_string();
        assert!(err.contains("would destroy the input"), "{err}");
        assert!(refuse_overwrite(&dir.path().join("in.yaml"), true, &[dir.path()]).is_err(), "inside an input folder");
        assert!(refuse_overwrite(&input, false, &[]).unwrap_err().to_string().contains("--force"));
        assert!(refuse_overwrite(&input, true, &[]).is_ok());
        assert!(refuse_overwrite(&dir.path().join("new.yaml"), false, &[&input]).is_ok());
    }

    #[test]
    fn bad_utf8_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        fs::write(&path, b"{\"a\": 1}\n{\"a\": \"caf\xe9\"}\n").unwrap();
        let err = read_text(&path).unwrap_err().to_string();
        assert!(err.ends_with("data.jsonl:2: byte 11 of the line is not UTF-8; save the file as UTF-8"), "{err}");
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
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
