//! Run folders, one protocol for every kind of run (generation, training, evaluation; sweeps
//! next): `config.yaml` records the kind and the job, `run.lock` is held by the writing process
//! ([`lock`]), `events.jsonl` is the one event log ([`log`]), and the kind's own files sit beside
//! them. A run is started detached ([`spawn`]), stopped by a signal to its proven holder
//! ([`lock::stop`]), followed by tailing its log, and listed with its state ([`list`]).

pub mod board;
pub mod lock;
pub mod log;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use lock::{holder, run_child, stop, Holder, Lock};
pub use log::{last_end, record_failure, End, Entry, Log, RunEvent, Tail, EVENTS};

/// The job file of every run folder.
pub const CONFIG: &str = "config.yaml";
/// Where a detached run's stdout and stderr go.
pub const OUTPUT: &str = "output.log";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Generate,
    Train,
    Eval,
    Sweep,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Generate => "generate",
            Kind::Train => "train",
            Kind::Eval => "eval",
            Kind::Sweep => "sweep",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `dir/config.yaml`: a first line `kind: KIND`, then the job's fields.
pub fn write_config(dir: &Path, kind: Kind, job: &impl Serialize) -> anyhow::Result<()> {
    let path = dir.join(CONFIG);
    let text = format!("kind: {kind}\n{}", crate::yaml::to_string(job)?);
    crate::fsutil::atomic_write(&path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// The job text of `dir/config.yaml` (the kind line blanked, so line numbers stay true) and the
/// kind it records; None when there is no config.
pub fn read_config(dir: &Path) -> anyhow::Result<Option<(Option<Kind>, String)>> {
    let path = dir.join(CONFIG);
    let text = match crate::fsutil::read_regular_text(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let first = text.lines().next().unwrap_or("");
    let kind = first.strip_prefix("kind:").map(str::trim).and_then(|k| match k {
        "generate" => Some(Kind::Generate),
        "train" => Some(Kind::Train),
        "eval" => Some(Kind::Eval),
        "sweep" => Some(Kind::Sweep),
        _ => None,
    });
    let body = if kind.is_some() { text[first.len()..].to_string() } else { text };
    Ok(Some((kind, body)))
}

/// Reads `dir`'s job as a `J`; errors name the file and line. None when there is no config.
pub fn read_job<J: serde::de::DeserializeOwned>(dir: &Path, kind: Kind) -> anyhow::Result<Option<J>> {
    let Some((recorded, body)) = read_config(dir)? else { return Ok(None) };
    let path = dir.join(CONFIG);
    if let Some(k) = recorded.filter(|k| *k != kind) {
        anyhow::bail!("{} is a {k} run, not a {kind} run; choose another folder", dir.display());
    }
    crate::yaml::from_str(&body)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{}:{}: {}; this is not a {kind} run folder", path.display(), e.pos, e.message))
}

/// The kind of the run in `dir`: as its config records it, else (runs written before the kind
/// was recorded) from the files it holds.
pub fn kind(dir: &Path) -> Option<Kind> {
    if let Ok(Some((Some(k), _))) = read_config(dir) {
        return Some(k);
    }
    if !dir.join(CONFIG).exists() {
        return None;
    }
    // The first event's fields tell too (a run killed before writing any file of its own).
    // Only the first line is read: a long run's log is megabytes.
    let first = crate::lines::Lines::open(&dir.join(EVENTS))
        .ok()
        .and_then(|lines| lines.all().next()?.ok())
        .map(|(_, line)| String::from_utf8_lossy(&line).into_owned());
    let said = |key: &str| first.as_deref().is_some_and(|l| l.contains(key));
    if dir.join("samples.jsonl").exists() || said("\"budget\"") {
        Some(Kind::Generate)
    } else if dir.join("predictions.jsonl").exists() || dir.join("report.json").exists() || said("\"requests\"") {
        Some(Kind::Eval)
    } else if dir.join("checkpoints").exists() || dir.join("adapter").exists() || said("\"total_steps\"") {
        Some(Kind::Train)
    } else {
        None
    }
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// A process holds the lock (its pid, once proven).
    Running(Option<u32>),
    Finished,
    Stopped,
    Failed(String),
    /// No process holds it and its log has no end: killed (power, kill -9); rerunning continues.
    Interrupted,
    /// Nothing written yet.
    New,
}

impl State {
    pub fn label(&self) -> String {
        match self {
            State::Running(Some(pid)) => format!("running (pid {pid})"),
            State::Running(None) => "running".into(),
            State::Finished => "finished".into(),
            State::Stopped => "stopped".into(),
            State::Failed(e) => format!("failed: {e}"),
            State::Interrupted => "interrupted".into(),
            State::New => "not started".into(),
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, State::Running(_))
    }
}

/// The state of the run in `dir`: running while its lock is held, else what its last event says.
pub fn state(dir: &Path) -> State {
    match holder(dir) {
        Holder::Process(pid) => return State::Running(Some(pid)),
        Holder::Unproven => return State::Running(None),
        Holder::Nobody => {}
    }
    match last_end(dir) {
        Some(End::Finished) => State::Finished,
        Some(End::Stopped) => State::Stopped,
        Some(End::Failed { error }) => State::Failed(error),
        None if std::fs::metadata(dir.join(EVENTS)).is_ok_and(|m| m.len() > 0) => State::Interrupted,
        None => State::New,
    }
}

/// A run folder as `selfspec runs` lists it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub dir: PathBuf,
    pub kind: Kind,
    pub state: State,
    /// When its log last changed (Unix seconds).
    pub updated: u64,
}

/// The runs under `root` (a workspace's runs/ folder), newest first.
pub fn list(root: &Path) -> Vec<Summary> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut out: Vec<Summary> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter_map(|dir| {
            let kind = kind(&dir)?;
            let modified = std::fs::metadata(dir.join(EVENTS))
                .or_else(|_| std::fs::metadata(dir.join(CONFIG)))
                .and_then(|m| m.modified())
                .ok();
            let updated =
                modified.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            Some(Summary { state: state(&dir), dir, kind, updated })
        })
        .collect();
    out.sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| b.dir.cmp(&a.dir)));
    out
}

/// The selfspec program the workbench runs its commands with: `SELFSPEC_EXE` when set (the
/// tests point it at the built binary), else this process's own program.
pub fn program() -> Result<std::path::PathBuf, String> {
    match std::env::var_os("SELFSPEC_EXE") {
        Some(exe) => Ok(exe.into()),
        None => std::env::current_exe().map_err(|e| format!("cannot find the selfspec program: {e}")),
    }
}

/// Starts `selfspec ARGS…` detached: a new session (no controlling terminal, so neither a
/// Ctrl-C meant for the workbench nor a closed SSH connection reaches it), SIGHUP ignored, stdin
/// closed, stdout and stderr appended to `dir/output.log`. A thread reaps it when it ends; the run
/// belongs to its folder, not to the caller.
pub fn spawn(args: &[OsString], dir: &Path) -> Result<Spawned, String> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let exe = program()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(OUTPUT);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let err = log.try_clone().map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
    // SAFETY: between fork and exec only async-signal-safe calls (setsid, signal) are made.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    let exited = Arc::new(AtomicBool::new(false));
    let flag = exited.clone();
    std::thread::spawn(move || {
        let _ = child.wait();
        flag.store(true, Ordering::SeqCst);
    });
    Ok(Spawned { pid, exited })
}

/// A process [`spawn`] started.
#[derive(Debug, Clone)]
pub struct Spawned {
    pub pid: u32,
    exited: Arc<AtomicBool>,
}

impl Spawned {
    /// Whether the process has ended.
    pub fn exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }
}

/// What a follower builds from one run kind's events: each kind's view (generation, training,
/// evaluation, sweep) applies them in order, the same way on every screen that shows the run.
pub trait Follow {
    type Event: RunEvent;
    fn apply_entry(&mut self, entry: &Entry<Self::Event>);
    /// Lines of the log that could not be read, each naming its file and line (shown, never
    /// dropped silently).
    fn note(&mut self, dropped: Vec<String>);
}

/// A run of one kind followed as it goes: its log tailed into the kind's view ([`Follow`]), its
/// liveness asked of its lock (and, for a run this process started, of the child, which may not
/// have taken the lock yet), its state as last asked ([`Following::refresh_state`]).
#[derive(Debug, Clone)]
pub struct Following<E> {
    pub dir: PathBuf,
    tail: Tail,
    child: Option<Spawned>,
    state: State,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: RunEvent> Following<E> {
    pub fn new(dir: &Path, child: Option<Spawned>) -> Following<E> {
        Following { dir: dir.to_path_buf(), tail: Tail::new(dir), child, state: State::New, _event: Default::default() }
    }

    /// Applies the events appended since the last call to `view` (lines that cannot be read are
    /// noted in it); whether any event came.
    pub fn poll<V: Follow<Event = E>>(&mut self, view: &mut V) -> bool {
        let batch = self.tail.read::<E>();
        for entry in &batch.entries {
            view.apply_entry(entry);
        }
        if !batch.dropped.is_empty() {
            view.note(batch.dropped);
        }
        !batch.entries.is_empty()
    }

    /// The run's state as last asked by [`Following::refresh_state`] (New before).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Asks the run's state again (its lock, then its last event): each tick for a run on show,
    /// once a second for a list of runs, once at the end for the Generate tab.
    pub fn refresh_state(&mut self) -> &State {
        self.state = state(&self.dir);
        &self.state
    }

    /// Whether the run is still going.
    pub fn running(&self) -> bool {
        if self.child.as_ref().is_some_and(|c| !c.exited()) {
            return true;
        }
        holder(&self.dir) != Holder::Nobody
    }

    /// The torn last line, once the writer is gone.
    pub fn torn(&self) -> Option<String> {
        self.tail.torn()
    }
}

/// `selfspec runs`: the runs under `root`, newest first, as a table or JSON lines.
pub fn print_list(root: &Path, json: bool) {
    let runs = list(root);
    if json {
        for r in &runs {
            let (state, error) = match &r.state {
                State::Failed(e) => ("failed", Some(e.as_str())),
                State::Running(_) => ("running", None),
                State::Finished => ("finished", None),
                State::Stopped => ("stopped", None),
                State::Interrupted => ("interrupted", None),
                State::New => ("new", None),
            };
            let pid = if let State::Running(p) = r.state { p } else { None };
            println!(
                "{}",
                serde_json::json!({"dir": r.dir, "kind": r.kind, "state": state, "error": error, "pid": pid, "updated": r.updated})
            );
        }
        return;
    }
    if runs.is_empty() {
        println!("no runs in {}", root.display());
        return;
    }
    for r in &runs {
        let name = r.dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        println!("{:<9} {:<40} {}", r.kind.as_str(), name, r.state.label());
    }
}

/// `selfspec stop RUN`: asks the run's process to stop (it saves what it must first).
pub fn stop_command(dir: &Path) -> anyhow::Result<()> {
    let pid = stop(dir).map_err(anyhow::Error::msg)?;
    println!("asked process {pid} to stop {}; it ends after saving its work", dir.display());
    Ok(())
}

/// Seconds as a person reads them: `42s`, `3m07s`, `2h05m`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The last non-blank line of a run's output.log (what a failed process said last).
pub fn last_output(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(OUTPUT)).ok()?;
    text.lines().rfind(|l| !l.trim().is_empty()).map(str::to_string)
}

/// The settings that differ between a run's recorded job and the one asked now, one line each
/// (`key.path: RECORDED (run) vs ASKED (now)`), to say why a run folder is refused.
pub fn differences(recorded: &impl serde::Serialize, asked: &impl serde::Serialize) -> Vec<String> {
    let a = serde_json::to_value(recorded).unwrap_or_default();
    let b = serde_json::to_value(asked).unwrap_or_default();
    let mut out = Vec::new();
    diff("", &a, &b, &mut out);
    out
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = serde_json::Value::Null;
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff(&p, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} (run) vs {b} (now)")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_records_the_kind_and_keeps_line_numbers() {
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Job {
            n: usize,
        }
        let dir = tempfile::tempdir().unwrap();
        write_config(dir.path(), Kind::Eval, &Job { n: 3 }).unwrap();
        assert_eq!(kind(dir.path()), Some(Kind::Eval));
        assert_eq!(read_job::<Job>(dir.path(), Kind::Eval).unwrap(), Some(Job { n: 3 }));
        let err = read_job::<Job>(dir.path(), Kind::Train).unwrap_err().to_string();
        assert!(err.contains("is a eval run, not a train run"), "{err}");
        std::fs::write(dir.path().join(CONFIG), "kind: eval\nn: 3\nm: 4\n").unwrap();
        let err = read_job::<Job>(dir.path(), Kind::Eval).unwrap_err().to_string();
        assert!(err.contains("config.yaml:3:"), "{err}");
    }

    #[test]
    fn state_follows_the_lock_then_the_last_event() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(state(dir.path()), State::New);
        let lock = Lock::acquire(dir.path()).unwrap();
        assert_eq!(state(dir.path()), State::Running(Some(std::process::id())));
        std::fs::write(dir.path().join(EVENTS), "{\"event\":\"step\"}\n").unwrap();
        drop(lock);
        assert_eq!(state(dir.path()), State::Interrupted);
        record_failure(dir.path(), "disk full");
        assert_eq!(state(dir.path()), State::Failed("disk full".into()));
    }
}
