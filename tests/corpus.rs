//! Corpora and BM25 retrieval: indexes built with tantivy from the sample corpora, a folder of
//! .txt files, and malformed corpora of every kind.

use std::path::{Path, PathBuf};
use std::process::Command;

use selfspec::corpus::{self, Searcher};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-seeds").join(format!("{name}.corpus.jsonl"))
}

fn selfspec(args: &[&str]) -> (String, String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_selfspec")).args(args).output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn the_right_passage_comes_first() {
    let tmp = tempfile::tempdir().unwrap();
    for (domain, documents, query, want_title) in [
        (
            "biomedical",
            124,
            "Which enzyme do statins inhibit to lower cholesterol?",
            "Statins and cholesterol synthesis",
        ),
        ("finance", 123, "How is the combined ratio of an insurer computed?", "Insurance underwriting"),
        ("sports", 123, "How many points is a try worth in rugby union?", "Rugby union scoring"),
    ] {
        let out = tmp.path().join(domain);
        let stats = corpus::build(&sample(domain), &out, &mut |_, _| {}).unwrap();
        assert_eq!(stats.documents, documents);
        let searcher = Searcher::open(&out).unwrap();
        assert_eq!(searcher.num_docs(), documents as u64);
        let hits = searcher.search(query, 5).unwrap();
        assert_eq!(hits.len(), 5);
        assert_eq!(hits[0].title, want_title, "{query}: {hits:?}");
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
        // Query syntax characters are plain text.
        assert!(searcher.search("\"(unbalanced: [quotes AND OR -", 3).is_ok());
        assert!(searcher.search("?!.,", 3).unwrap().is_empty());
        // A k past the documents returns them all, without sizing anything by k.
        for k in [usize::MAX, 1_000_000_000] {
            let all = searcher.search("the", k).unwrap();
            assert!(all.len() <= documents && !all.is_empty(), "{k}: {}", all.len());
        }
    }
}

#[test]
fn the_cli_builds_and_searches_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("idx");
    let out_s = out.to_str().unwrap();
    let (stdout, _, code) = selfspec(&["index", "build", sample("sports").to_str().unwrap(), "--out", out_s]);
    assert_eq!(code, 0);
    assert!(stdout.contains("123 documents indexed"), "{stdout}");
    let (stdout, _, code) =
        selfspec(&["index", "search", out_s, "anterior cruciate ligament injuries of players", "-k", "3", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let hits = v.as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["title"], "Sports injuries");
    for key in ["id", "score", "title", "text"] {
        assert!(hits[0].get(key).is_some(), "{key}");
    }
    // An existing index is replaced only with --force; a folder that is not an index never.
    let (_, stderr, code) = selfspec(&["index", "build", sample("sports").to_str().unwrap(), "--out", out_s]);
    assert_eq!(code, 2);
    assert!(stderr.contains("already exists; remove it or pass --force"), "{stderr}");
    let (_, _, code) = selfspec(&["index", "build", sample("finance").to_str().unwrap(), "--out", out_s, "--force"]);
    assert_eq!(code, 0);
    let (_, stderr, code) = selfspec(&[
        "index",
        "build",
        sample("finance").to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not an index; not removing it"), "{stderr}");
}

#[test]
fn a_folder_of_text_files_is_a_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(docs.join("cardio")).unwrap();
    std::fs::write(docs.join("cardio/statins.txt"), "Statins inhibit HMG-CoA reductase.").unwrap();
    std::fs::write(docs.join("insulin.txt"), "Beta cells secrete insulin.").unwrap();
    let out = tmp.path().join("idx");
    corpus::build(&docs, &out, &mut |_, _| {}).unwrap();
    let hits = Searcher::open(&out).unwrap().search("reductase", 5).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!((hits[0].id.as_str(), hits[0].title.as_str()), ("cardio/statins", "statins"));
}

#[test]
fn malformed_corpora_name_every_bad_line_and_leave_no_index() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            "{\"id\": \"a\", \"text\": \"fine\"}\n",
            "{\"id\": \"b\"}\n",
            "not json\n",
            "[1, 2]\n",
            "{\"id\": \"a\", \"text\": \"again\"}\n",
            "{\"id\": \"c\", \"text\": 7}\n",
        ),
    )
    .unwrap();
    let out = tmp.path().join("idx");
    let err = corpus::build(&bad, &out, &mut |_, _| {}).unwrap_err().to_string();
    let bad_s = bad.display().to_string();
    for expected in [
        format!("{bad_s}:2: text is missing or empty"),
        format!("{bad_s}:3: not valid JSON: expected ident"),
        format!("{bad_s}:4: each line must be one JSON object {{id, title?, text}}"),
        format!("{bad_s}:5: id \"a\" is used by an earlier document; ids must be unique"),
        format!("{bad_s}:6: text must be a string, found 7"),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!out.exists() && !out.with_extension("partial").exists());

    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    let err = corpus::build(&empty, &out, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.ends_with("empty.jsonl: holds no documents"), "{err}");

    let (_, stderr, code) = selfspec(&["index", "search", tmp.path().to_str().unwrap(), "x"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("is not a selfspec index (no meta.json)"), "{stderr}");
}
