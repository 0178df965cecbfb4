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
    // Besides the hub download: the client of a server the user names (--endpoint), and
    // `selfspec serve`, which listens where the user says.
    for (name, text) in sources() {
        if matches!(
            name.as_str(),
            "model/fetching/download.rs"
                | "backend/openai/client.rs"
                | "serve/server.rs"
                | "serve/shared.rs"
                | "serve/http.rs"
                | "serve/answer.rs"
        ) {
            continue;
        }
        for needle in ["ureq", "TcpStream", "std::net"] {
            assert!(!text.contains(needle), "src/{name} uses {needle}");
        }
    }
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/fetching/mod.rs")).unwrap();
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
        if name == "main.rs" || name.starts_with("cli/") {
            continue;
        }
        assert!(!text.contains("clap"), "src/{name} uses clap: the engine takes plain values");
    }
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs")).unwrap();
    assert!(main.lines().count() < 300, "src/main.rs has {} lines: it parses and dispatches", main.lines().count());
}

#[test]
fn the_workbench_spells_no_flag_and_no_file_of_a_run_folder() {
    // It starts runs through launch::Launch (whose argv src/cli/'s tests parse back) and finds
    // their files through the modules that write them.
    for (name, text) in sources() {
        if !name.starts_with("tui/") {
            continue;
        }
        // Code only: comments may name the files they are about.
        let code: String =
            without_tests(&text).lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        assert!(!code.contains("\"--"), "src/{name} spells a command-line flag: build a launch::Launch");
        for file in [
            "adapter_model.safetensors",
            "adapter_config.json",
            "predictions.jsonl",
            "samples.jsonl",
            "decisions.jsonl",
            "events.jsonl",
            "report.json",
            "lmc.json",
            "lmc-run",
            "\"points\"",
            "\"experts\"",
            "\"tasks\"",
            "\"gen-s",
            "meta.json",
            "settings.yaml",
            "\"adapter\"",
            "checkpoints",
        ] {
            assert!(!code.contains(file), "src/{name} names {file} of a run folder: ask the module that writes it");
        }
    }
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

#[test]
fn every_line_file_is_read_through_lines_rs() {
    // Splitting bytes at newlines by hand is what lines.rs is for. Besides it: an HTTP request's
    // header lines (serve/http.rs), which are not a file.
    let needles = ["read_until(", "== b'\\n')", "JsonLines", "bounded_lines"];
    for (name, text) in sources() {
        if matches!(name.as_str(), "lines.rs" | "serve/http.rs") {
            continue;
        }
        for needle in needles {
            assert!(!text.contains(needle), "src/{name} splits lines itself ({needle}): use lines::Lines");
        }
    }
}

fn cycle(graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if g.contains_key(m) {
                if let Some(c) = visit(m, g, path, done) {
                    return Some(c);
                }
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = Default::default();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_metrics_are_a_leaf_under_generation_and_evaluation() {
    // Loops between top-level modules: `no_folder_has_an_import_loop` (the root is a folder).
    let top = members(&module_graph(), &[]);
    assert!(top.contains_key("decode") && top["model"].contains("rng"), "{top:?}");
    // Generation does not reach into eval for them.
    assert!(top["metrics"].is_empty(), "metrics uses {:?}", top["metrics"]);
    assert!(top["generate"].contains("metrics") && !top["generate"].contains("eval"), "{:?}", top["generate"]);
}

/// `text` up to its test module (`#[cfg(test)]` over a `mod`; one over a single function is
/// kept, and so is what follows it): what a test reads is not a dependency.
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(at) = text[from..].find("#[cfg(test)]") {
        let at = from + at;
        let next = text[at + "#[cfg(test)]".len()..].trim_start();
        if next.starts_with("mod ") || next.starts_with("pub mod ") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

/// The spans (from `{` to its `}`) of the inline modules (`mod name { … }`) in `text`.
fn inline_modules(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let t = ["pub(crate) ", "pub(super) ", "pub "].iter().find_map(|p| t.strip_prefix(p)).unwrap_or(t);
        if t.starts_with("mod ") && t.trim_end().ends_with('{') {
            let open = at + line.rfind('{').unwrap();
            let mut depth = 0;
            for (i, c) in text[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            spans.push((open, open + i));
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        at += line.len();
    }
    spans
}

/// Every module of src/ (its path: `generate/feeder`, a folder's mod.rs as the folder) and the
/// modules its code names: `crate::…`, `super::…`, `self::…` paths (groups in braces included)
/// and, from a folder's mod.rs, its children by name. Tests and comments are left out.
fn module_graph() -> std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut code: BTreeMap<Vec<String>, String> = BTreeMap::new();
    for (name, text) in sources() {
        let mut path: Vec<String> = name.trim_end_matches(".rs").split('/').map(String::from).collect();
        if matches!(path.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            path.pop();
        }
        let body: Vec<&str> = without_tests(&text).lines().filter(|l| !l.trim_start().starts_with("//")).collect();
        let module = code.entry(path).or_default();
        module.push_str(&body.join("\n"));
        module.push('\n');
    }
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    // The module a path names: the longest prefix of it that is a module. `inline` is the depth
    // of inline modules (`mod avx2 { … }`) the path is written in: their `self` and first
    // `super`s stay in the file.
    let resolve = |from: &[String], segments: &[String], inline: usize| -> Vec<String> {
        let mut base: Vec<String> = from.to_vec();
        let mut rest = segments;
        let mut inline = inline;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                base.clear();
                rest = &rest[1..];
                inline = 0;
            }
            Some("self") => rest = &rest[1..],
            _ => {}
        }
        while inline > 0 && rest.first().map(String::as_str) == Some("super") {
            rest = &rest[1..];
            inline -= 1;
        }
        if inline > 0 {
            return base;
        }
        while rest.first().map(String::as_str) == Some("super") {
            base.pop();
            rest = &rest[1..];
        }
        for s in rest {
            let mut next = base.clone();
            next.push(s.clone());
            if !code.contains_key(&next) {
                break;
            }
            base = next;
        }
        base
    };
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &code {
        let targets = graph.entry(module.clone()).or_default();
        let spans = inline_modules(text);
        for root in ["crate::", "super::", "self::"] {
            for (at, _) in text.match_indices(root) {
                if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let inline = spans.iter().filter(|(open, close)| (*open..*close).contains(&at)).count();
                // The path, with one level of braces: `super::{a, b::c}` names a and b::c.
                let mut segments = vec![root.trim_end_matches(':').to_string()];
                let mut rest = &text[at + root.len()..];
                loop {
                    if let Some(group) = rest.strip_prefix('{') {
                        let inner = &group[..group.find('}').unwrap_or(group.len())];
                        for item in inner.split(',') {
                            let mut s = segments.clone();
                            s.extend(item.trim().split("::").map(ident).filter(|p| !p.is_empty()));
                            targets.insert(resolve(module, &s, inline));
                        }
                        segments.clear();
                        break;
                    }
                    let word = ident(rest);
                    if word.is_empty() {
                        break;
                    }
                    rest = &rest[word.len()..];
                    segments.push(word);
                    match rest.strip_prefix("::") {
                        Some(r) => rest = r,
                        None => break,
                    }
                }
                if !segments.is_empty() {
                    targets.insert(resolve(module, &segments, inline));
                }
            }
        }
        // A folder's mod.rs naming a child's items (`child::item`).
        for other in code.keys() {
            if other.len() == module.len() + 1 && other.starts_with(module) {
                let child = other.last().unwrap();
                let named = text
                    .match_indices(&format!("{child}::"))
                    .any(|(at, _)| !text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':'));
                if named {
                    targets.insert(other.clone());
                }
            }
        }
        targets.remove(module);
    }
    graph
}

/// The members of `folder` (its mod.rs as `mod`, and its children, each standing for everything
/// under it) and the other members each one's code names.
fn members(
    graph: &std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>>,
    folder: &[String],
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let member = |m: &Vec<String>| -> Option<String> {
        if !m.starts_with(folder) {
            return None;
        }
        Some(m.get(folder.len()).cloned().unwrap_or_else(|| "mod".into()))
    };
    let mut members: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for (from, targets) in graph {
        let Some(a) = member(from) else { continue };
        let entry = members.entry(a.clone()).or_default();
        for b in targets.iter().filter_map(member).filter(|b| *b != a) {
            entry.insert(b);
        }
    }
    members
}

#[test]
fn no_folder_has_an_import_loop() {
    let graph = module_graph();
    assert!(graph[&vec!["generate".to_string(), "feeder".to_string()]]
        .contains(&vec!["generate".to_string(), "respond".to_string()]));
    let folders: std::collections::BTreeSet<Vec<String>> =
        graph.keys().filter(|m| !m.is_empty()).map(|m| m[..m.len() - 1].to_vec()).collect();
    // What a folder's children share lives in a child, not in its mod.rs, which only names
    // its children and re-exports them.
    for folder in &folders {
        if let Some(l) = cycle(&members(&graph, folder)) {
            panic!("an import loop in src/{}/: {l:?}", folder.join("/"));
        }
    }
    assert!(folders.len() > 12 && folders.contains(&Vec::new()), "{folders:?}");
}
