//! `selfspec eval import`: each preset on a small file in its benchmark's published format
//! (tests/fixtures/benchmarks, written by scripts/make_benchmark_fixtures.py with made-up text
//! and parquet files under several codecs), against the evaluation lines the script derives
//! from the preset's documented rules; and malformed records named by their line or row.

mod common;

use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/benchmarks").join(name)
}

fn import(args: &[&std::ffi::OsStr]) -> std::process::Output {
    common::selfspec().args(["eval", "import"]).args(args).output().unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_preset_reads_its_published_format() {
    let cases = [
        ("pubmedqa", "pubmedqa.json"),
        ("pubmedqa-hf", "pubmedqa-hf.parquet"),
        ("bioasq", "bioasq.json"),
        ("chemprot", "chemprot.tsv"),
        ("ddi", "ddi.tsv"),
        ("hoc", "hoc.parquet"),
        ("fiqa-sa", "fiqa-sa.parquet"),
        ("financial-phrasebank", "financial-phrasebank.jsonl"),
        ("headline", "headline.parquet"),
        ("convfinqa", "convfinqa.json"),
        ("convfinqa-flare", "convfinqa-flare.parquet"),
        ("finner", "finner.jsonl"),
    ];
    let out = import(&["--list".as_ref()]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.lines().count(), cases.len(), "{listed}");
    let dir = tempfile::tempdir().unwrap();
    for (preset, file) in cases {
        let file = fixture(file);
        let out = import(&[
            file.as_os_str(),
            "--preset".as_ref(),
            preset.as_ref(),
            "--name".as_ref(),
            preset.as_ref(),
            "--out".as_ref(),
            dir.path().as_os_str(),
        ]);
        assert!(out.status.success(), "{preset}: {}", String::from_utf8_lossy(&out.stderr));
        let got = lines(&dir.path().join(format!("{preset}.jsonl")));
        let want = lines(&fixture(&format!("{preset}.expected.jsonl")));
        assert_eq!(got, want, "{preset}");
    }
    // The folder is an evaluation set: every dataset loads.
    let sets = selfspec::eval::data::load_dir(dir.path(), &[]).unwrap();
    assert_eq!(sets.len(), 12);
}

#[test]
fn demonstrations_come_from_another_split_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let file = fixture("financial-phrasebank.jsonl");
    let run = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            file.as_os_str(),
            "--preset".as_ref(),
            "financial-phrasebank".as_ref(),
            "--name".as_ref(),
            "fpb".as_ref(),
            "--out".as_ref(),
            dir.path().as_os_str(),
            "--train".as_ref(),
            file.as_os_str(),
            "--demos".as_ref(),
            "2".as_ref(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        import(&args)
    };
    let out = run(&["--limit", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines(&dir.path().join("fpb.jsonl")).len(), 1);
    assert_eq!(lines(&dir.path().join("fpb.train.jsonl")).len(), 2);
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fpb.jsonl exists; --force replaces it"));
    assert_eq!(lines(&dir.path().join("fpb.jsonl")).len(), 1, "kept");
    let out = run(&["--force"]);
    assert!(out.status.success());
    assert_eq!(lines(&dir.path().join("fpb.jsonl")).len(), 3);
    // --limit counts over every file given, and --demos over every --train file.
    let out = run(&["--force", "--limit", "4", file.to_str().unwrap(), "--train", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines(&dir.path().join("fpb.jsonl")).len(), 4);
    assert_eq!(lines(&dir.path().join("fpb.train.jsonl")).len(), 2);
}

#[test]
fn malformed_records_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("map.yaml");
    std::fs::write(&map, "task: sa\ninstruction: Rate it.\ninput: \"{sentence} about {target}\"\noutput: score\n")
        .unwrap();
    let cases: [(&str, &[&str], &str); 6] = [
        ("broken-line.jsonl", &["--preset", "financial-phrasebank"], "broken-line.jsonl:2: not a JSON object"),
        (
            "broken-label.jsonl",
            &["--preset", "financial-phrasebank"],
            "broken-label.jsonl:2: label is \"7\", which the map's labels do not name (0, 1, 2)",
        ),
        (
            "broken-field.parquet",
            &["--map", map.to_str().unwrap()],
            "broken-field.parquet: row 1: no field \"score\"; the record has sentence, target",
        ),
        ("chemprot.tsv", &["--preset", "ddi"], "chemprot.tsv:2: label is \"CPR:4\""),
        (
            "finner.jsonl",
            &["--preset", "financial-phrasebank"],
            "finner.jsonl:1: no field \"sentence\"; the record has",
        ),
        (
            "bioasq.json",
            &["--preset", "pubmedqa"],
            "bioasq.json: record \"questions\": no field \"CONTEXTS\"; the record has a list",
        ),
    ];
    for (file, how, want) in cases {
        let path = fixture(file);
        let mut args: Vec<&std::ffi::OsStr> = vec![path.as_os_str()];
        args.extend(how.iter().map(std::ffi::OsStr::new));
        args.extend(["--name".as_ref(), "x".as_ref(), "--out".as_ref(), dir.path().as_os_str()]);
        let out = import(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(want), "{file}: {err}\nlacks {want:?}");
        assert!(!dir.path().join("x.jsonl").exists(), "{file}: nothing written");
    }
    // A map that is wrong is named before any file is read.
    std::fs::write(&map, "task: quiz\ninstruction: x\noutput: y\n").unwrap();
    let path = fixture("finner.jsonl");
    let out = import(&[
        path.as_os_str(),
        "--map".as_ref(),
        map.as_os_str(),
        "--name".as_ref(),
        "x".as_ref(),
        "--out".as_ref(),
        dir.path().as_os_str(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("map.yaml: task \"quiz\": use one of qa"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file saved with a byte-order mark (as Windows tools write them) reads as without one, for
/// the line-by-line formats: TSV with and without a header, JSON lines.
#[test]
fn a_byte_order_mark_is_not_part_of_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    for (preset, file) in
        [("chemprot", "chemprot.tsv"), ("ddi", "ddi.tsv"), ("financial-phrasebank", "financial-phrasebank.jsonl")]
    {
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(std::fs::read(fixture(file)).unwrap());
        let marked = dir.path().join(file);
        std::fs::write(&marked, bytes).unwrap();
        let out_dir = dir.path().join("out");
        let out = import(&[
            marked.as_os_str(),
            "--preset".as_ref(),
            preset.as_ref(),
            "--name".as_ref(),
            preset.as_ref(),
            "--out".as_ref(),
            out_dir.as_os_str(),
        ]);
        assert!(out.status.success(), "{preset}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            lines(&out_dir.join(format!("{preset}.jsonl"))),
            lines(&fixture(&format!("{preset}.expected.jsonl"))),
            "{preset}"
        );
    }
}
