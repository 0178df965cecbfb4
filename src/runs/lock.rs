//! Who is writing a run folder: the OS lock on `run.lock`, held by the writing process for its
//! whole life and released by the kernel when it dies (even by kill -9). The holder writes its
//! pid into the file once it has the lock; the pid is trusted only while the lock is held *and*
//! that process has the lock file open (checked in /proc), so a stale pid is never signalled.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The lock file of a run folder.
pub const LOCK: &str = "run.lock";

/// The lock of a run folder, held until dropped (or until the process ends).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock of `dir` (created if missing), or says which process holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<Lock> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the run folder {}", dir.display()))?;
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let who = match holder(dir) {
                    Holder::Process(pid) => format!("process {pid}"),
                    _ => "another selfspec process".into(),
                };
                anyhow::bail!(
                    "{} is in use by {who}; wait for it, or stop it with `selfspec stop {}`",
                    dir.display(),
                    dir.display()
                )
            }
            Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Lock { _file: file })
    }
}

/// Who holds a run folder's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nobody: no process is writing the folder.
    Nobody,
    /// Held, but the holder is not known yet (it has not written its pid) or cannot be proven.
    Unproven,
    /// Held by this process, proven: it has the lock file open.
    Process(u32),
}

/// Who holds `dir`'s lock now.
pub fn holder(dir: &Path) -> Holder {
    let path = dir.join(LOCK);
    {
        // Closed again before the /proc check, so this process's own look is never the proof.
        let Ok(file) = File::open(&path) else { return Holder::Nobody };
        match file.try_lock_shared() {
            Ok(()) => return Holder::Nobody,
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(_)) => return Holder::Unproven,
        }
    }
    let pid = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if has_open(pid, &path) => Holder::Process(pid),
        _ => Holder::Unproven,
    }
}

/// Whether process `pid` has `path` open (one of /proc/PID/fd links to it).
fn has_open(pid: u32, path: &Path) -> bool {
    let Ok(want) = std::fs::canonicalize(path) else { return false };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok).any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p: PathBuf| p == want))
}

/// Asks the process writing `dir` to stop (SIGTERM: its engine stops cooperatively, saving what
/// it must). Returns the pid signalled; refuses when no holder is proven.
pub fn stop(dir: &Path) -> Result<u32, String> {
    match holder(dir) {
        Holder::Nobody => Err(format!("{} is not running", dir.display())),
        Holder::Unproven => Err(format!(
            "{} is locked but its process cannot be identified yet; nothing was signalled (try again)",
            dir.display()
        )),
        Holder::Process(pid) => {
            let Ok(raw) = i32::try_from(pid) else { return Err(format!("bad pid {pid}")) };
            // SAFETY: kill(2) with a proven pid and a constant signal; no memory is shared.
            if unsafe { libc::kill(raw, libc::SIGTERM) } == 0 {
                Ok(pid)
            } else {
                Err(format!("cannot signal process {pid}: {}", std::io::Error::last_os_error()))
            }
        }
    }
}

/// Runs `cmd` as a child that belongs to this process: it is told SIGTERM if this process dies
/// (even by kill -9: PR_SET_PDEATHSIG), and SIGTERM once `cancel` is set; waits for its end.
pub fn run_child(
    cmd: &mut std::process::Command,
    cancel: &std::sync::atomic::AtomicBool,
) -> std::io::Result<std::process::ExitStatus> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and changes only the child being started.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let mut told = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if cancel.load(std::sync::atomic::Ordering::SeqCst) && !told {
            // SAFETY: kill with the pid of a child this process started and has not reaped yet,
            // so it cannot have been recycled.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            told = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_names_its_holder_and_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(dir.path()), Holder::Nobody);
        let lock = Lock::acquire(dir.path()).unwrap();
        assert_eq!(holder(dir.path()), Holder::Process(std::process::id()));
        let err = Lock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        drop(lock);
        assert_eq!(holder(dir.path()), Holder::Nobody);
        assert!(stop(dir.path()).unwrap_err().contains("not running"));
    }

    #[test]
    fn a_stale_pid_in_a_held_lock_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = Lock::acquire(dir.path()).unwrap();
        // Another process's pid written into the file (as a recycled pid would read): it does not
        // have the lock file open, so it is never signalled.
        let mut stranger = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        std::fs::write(dir.path().join(LOCK), stranger.id().to_string()).unwrap();
        assert_eq!(holder(dir.path()), Holder::Unproven);
        assert!(stop(dir.path()).unwrap_err().contains("nothing was signalled"));
        assert!(stranger.try_wait().unwrap().is_none(), "the stranger was not signalled");
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }
}
