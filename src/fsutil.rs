//! File-system helpers: writes with the durability guarantees the rest of selfspec relies on, and
//! reads of regular files only (a device or a pipe is refused). Lines are read by [`crate::lines`].

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

/// The bytes of `path`, which must be a regular file (a symbolic link to one is followed): a
/// device such as /dev/zero, or a pipe, is refused instead of read without end.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    read_regular_from(path, 0)
}

/// [`read_regular`] from byte `offset` on (nothing when the file is shorter): what a reader that
/// follows a file as it grows reads on each call.
pub fn read_regular_from(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = open_regular(path)?;
    if offset > 0 {
        file.seek(io::SeekFrom::Start(offset))?;
    }
    let len = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(len.saturating_sub(offset) as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// `path` opened for reading if it is a regular file (a symbolic link to one is followed); a
/// folder, a device such as /dev/zero, or a pipe is refused, naming it, instead of read without
/// end.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a folder" } else { "not a regular file (a device, pipe or socket)" };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is {what}; name a file", path.display())));
    }
    File::open(path)
}

/// [`read_regular`] as UTF-8 text (`InvalidData` otherwise, as `fs::read_to_string`).
pub fn read_regular_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_regular(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{} is not UTF-8 text", path.display())))
}

/// `text` without a leading UTF-8 byte-order mark, which some editors write and JSON forbids.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(read_regular_text(Path::new("/dev/zero")).unwrap_err().to_string().contains("not a regular file"));
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
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
