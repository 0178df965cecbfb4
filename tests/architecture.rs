//! The invariants ARCHITECTURE.md states that a grep can check.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|p| (p.strip_prefix(&src).unwrap().display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

#[test]
fn only_the_tui_and_main_touch_the_terminal() {
    for (name, text) in sources() {
        if name.starts_with("tui/") || name == "main.rs" {
            continue;
        }
        for needle in ["ratatui", "crossterm"] {
            assert!(!text.contains(needle), "src/{name} uses {needle}");
        }
    }
}

#[test]
fn only_yaml_rs_touches_a_yaml_crate() {
    for (name, text) in sources() {
        if name == "yaml.rs" {
            continue;
        }
        for needle in ["serde_yaml", "yaml_rust2"] {
            assert!(!text.contains(needle), "src/{name} uses {needle}");
        }
    }
}

#[test]
fn only_download_rs_reaches_the_network() {
    for (name, text) in sources() {
        if name == "model/download.rs" {
            continue;
        }
        for needle in ["ureq", "TcpStream", "std::net"] {
            assert!(!text.contains(needle), "src/{name} uses {needle}");
        }
    }
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/mod.rs")).unwrap();
    assert!(lib.contains("#[cfg(feature = \"hub-download\")]\npub mod download;"), "download.rs is behind its feature");
}

#[test]
fn readme_lists_every_key_of_the_help_overlay() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let help = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tui/help.rs")).unwrap();
    // Each description in help.rs is the second string of a ("keys", "description") pair.
    let descriptions: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim().strip_prefix("(\""))
        .filter_map(|l| l.split("\", \"").nth(1))
        .filter_map(|d| d.strip_suffix("\"),").or_else(|| d.strip_suffix("\")],")).or_else(|| d.strip_suffix("\")]")))
        .collect();
    assert!(descriptions.len() > 30, "parsed {descriptions:?}");
    for d in descriptions {
        assert!(readme.contains(&format!("| {d} |")), "README's key table lacks \"{d}\"");
    }
}

#[test]
fn only_main_and_cli_know_clap_and_main_stays_small() {
    for (name, text) in sources() {
        if name == "main.rs" || name == "cli.rs" {
            continue;
        }
        assert!(!text.contains("clap"), "src/{name} uses clap: the engine takes plain values");
    }
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs")).unwrap();
    assert!(main.lines().count() < 300, "src/main.rs has {} lines: it parses and dispatches", main.lines().count());
}

#[test]
fn runs_are_signalled_only_through_the_run_lock() {
    for (name, text) in sources() {
        if name == "runs/lock.rs" {
            continue;
        }
        for needle in ["libc::kill", "Command::new(\"kill\")", "mem::forget"] {
            assert!(!text.contains(needle), "src/{name} uses {needle}: stop runs with runs::stop");
        }
    }
}
