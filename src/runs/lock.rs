//! Who is writing a run folder: the OS lock on `run.lock`, held by the writing process for its
//! whole life and released by the kernel when it dies (even by kill -9). The holder writes its
//! pid into the file for people to read; the process signalled is the one the kernel's lock
//! record names (/proc/locks), so neither a stale pid in the file nor a process that merely has
//! the file open is ever signalled.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

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
    /// Held by this process, proven by the kernel's lock record.
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
    match kernel_holder(&path) {
        Some(pid) => Holder::Process(pid),
        None => Holder::Unproven,
    }
}

/// The process holding the exclusive flock(2) on `path`, from the kernel's own lock record
/// (/proc/locks: `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF`). Not the pid written in the
/// file, nor a process that merely has the file open: only the kernel knows who took the lock.
fn kernel_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let (major, minor, inode) = (libc::major(meta.dev()) as u64, libc::minor(meta.dev()) as u64, meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let mut holders = locks.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A waiter's line has "->" after the number; only granted locks count.
        let [_, kind, _, mode, pid, at, ..] = fields.as_slice() else { return None };
        if *kind != "FLOCK" || *mode != "WRITE" {
            return None;
        }
        let mut parts = at.split(':');
        let (maj, min, ino) = (parts.next()?, parts.next()?, parts.next()?);
        let same = u64::from_str_radix(maj, 16).ok()? == major
            && u64::from_str_radix(min, 16).ok()? == minor
            && ino.parse::<u64>().ok()? == inode;
        same.then(|| pid.parse::<u32>().ok()).flatten()
    });
    let pid = holders.next()?;
    // Two records for one file would be a lock this module did not take: prove nothing.
    holders.next().is_none().then_some(pid)
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
    fn a_process_with_the_lock_file_open_and_its_pid_written_is_not_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _lock = Lock::acquire(dir.path()).unwrap();
        // A process that opens run.lock and writes its own pid there: it holds no lock.
        let mut impostor = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<>run.lock; echo $$ > run.lock; sleep 5")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let written = || std::fs::read_to_string(dir.path().join(LOCK)).unwrap().trim().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while written() != impostor.id().to_string() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(written(), impostor.id().to_string());
        assert_eq!(holder(dir.path()), Holder::Process(std::process::id()), "the kernel's record names the holder");
        assert!(impostor.try_wait().unwrap().is_none());
        impostor.kill().unwrap();
        impostor.wait().unwrap();
    }
}
