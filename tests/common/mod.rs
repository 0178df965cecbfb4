//! What the integration tests share: the repository's root, the binary under test, a home of
//! the test's own, and reading what a run printed. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// The repository (fixtures, sample seeds).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `selfspec` binary cargo built for this test run.
pub fn selfspec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_selfspec"))
}

/// [`selfspec`] with HOME and the XDG folders inside `home`, so no configuration, workspace or
/// model cache of the machine's user is read or written.
pub fn selfspec_at(home: &Path) -> Command {
    let mut cmd = selfspec();
    cmd.env("HOME", home)
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local"));
    cmd
}

/// Runs `cmd`: its stdout, its stderr and its exit code (-1 when a signal ended it).
pub fn printed(cmd: &mut Command) -> (String, String, i32) {
    let out = cmd.output().expect("selfspec runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Runs `cmd`, which must succeed: its stdout and stderr together.
pub fn ok(cmd: &mut Command) -> String {
    let (out, err, code) = printed(cmd);
    let text = format!("{out}{err}");
    assert_eq!(code, 0, "{text}");
    text
}
