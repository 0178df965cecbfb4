//! Golden tests of `selfspec seeds validate`: every kind of broken seed file, run through the
//! real binary, must print exactly the committed messages (file:line:column, field, what to do)
//! and exit 1. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the .expected files; review
//! the diff before committing.

mod common;

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken")
}

fn validate(dir: &Path, file: &str) -> (String, String, i32) {
    common::printed(
        common::selfspec()
            .args(["seeds", "validate", file])
            .current_dir(dir)
            .env("XDG_CONFIG_HOME", dir.join("no-config")),
    )
}

#[test]
fn every_broken_file_has_its_golden_messages() {
    let dir = fixtures();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 13, "fixtures missing: {files:?}");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for file in files {
        let (stdout, stderr, code) = validate(&dir, &file);
        assert_eq!(code, 1, "{file}: exit code\n{stdout}{stderr}");
        assert!(!stderr.contains("panicked"), "{file} panicked: {stderr}");
        let expected_path = dir.join(format!("{file}.expected"));
        if update {
            std::fs::write(&expected_path, &stdout).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if stdout != expected {
            failures.push(format!("--- {file}: expected\n{expected}--- got\n{stdout}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_sample_seeds_are_valid_and_canonical() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-seeds");
    let out = common::selfspec()
        .args(["seeds", "validate", "biomedical.yaml", "finance.yaml", "sports.yaml"])
        .current_dir(&samples)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "biomedical.yaml: 80 seeds, valid\nfinance.yaml: 90 seeds, valid\nsports.yaml: 40 seeds, valid\n"
    );
    assert!(out.status.success());
    let fmt = common::selfspec()
        .args(["seeds", "fmt", "--check", "biomedical.yaml", "finance.yaml", "sports.yaml"])
        .current_dir(&samples)
        .output()
        .unwrap();
    assert!(fmt.status.success(), "{}", String::from_utf8_lossy(&fmt.stdout));
}

#[test]
fn one_bad_file_among_good_ones_fails_the_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = common::selfspec()
        .args([
            "seeds",
            "validate",
            "sample-seeds/sports.yaml",
            "tests/fixtures/broken/duplicates.yaml",
            "missing.yaml",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("sample-seeds/sports.yaml: 40 seeds, valid"), "{stdout}");
    assert!(stdout.contains("tests/fixtures/broken/duplicates.yaml: 2 problem(s)"), "{stdout}");
    assert!(stdout.contains("missing.yaml: cannot read: No such file"), "{stdout}");
}
