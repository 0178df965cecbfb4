//! Corpora and BM25 retrieval: indexes built with tantivy from the sample corpora, a folder of
//! .txt files, and malformed corpora of every kind.

mod common;

use std::path::{Path, PathBuf};

use selfspec::corpus::{self, Searcher};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-seeds").join(format!("{name}.corpus.jsonl"))
}

fn selfspec(args: &[&str]) -> (String, String, i32) {
    common::printed(common::selfspec().args(args))
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
    assert!(stderr.contains("is not an index; not replacing it"), "{stderr}");
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

#[test]
fn info_reports_lengths_problems_and_the_index_state() {
    use selfspec::corpus::profile::{IndexState, Profile};
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("news.corpus.jsonl");
    // Three good documents of 2, 4 and 30 words; line 3 is broken.
    let long = vec!["word"; 30].join(" ");
    let text = format!(
        "{{\"id\": \"a\", \"text\": \"two words\"}}\n{{\"id\": \"b\", \"text\": \"four words right here\"}}\nnot json\n{{\"id\": \"c\", \"text\": \"{long}\"}}\n"
    );
    std::fs::write(&source, text).unwrap();
    let p = Profile::read(&source, &mut |_| {}).unwrap();
    assert_eq!((p.documents, p.min, p.median, p.max), (3, 2, 4, 30));
    assert_eq!(p.histogram[..2], [2, 1]);
    assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    assert!(p.problems[0].contains("news.corpus.jsonl:3: not valid JSON"), "{:?}", p.problems);

    // The index beside it: missing, then current, then stale once the corpus changes.
    let index = tmp.path().join("news.index");
    assert_eq!(IndexState::of(Some(&source), &index), IndexState::Missing);
    let (stdout, stderr, code) = selfspec(&["index", "info", source.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["profile"]["documents"], 3);
    assert_eq!(v["profile"]["median"], 4);
    assert_eq!(v["index_state"]["state"], "missing");
    assert_eq!(v["index"], index.to_str().unwrap());

    let good = tmp.path().join("good.jsonl");
    std::fs::write(&good, "{\"id\": \"a\", \"text\": \"two words\"}\n{\"id\": \"b\", \"text\": \"more words\"}\n")
        .unwrap();
    let index = tmp.path().join("good.index");
    corpus::build(&good, &index, &mut |_, _| {}).unwrap();
    assert_eq!(IndexState::of(Some(&good), &index), IndexState::Current { documents: 2 });
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(&good).unwrap().set_modified(later).unwrap();
    assert_eq!(IndexState::of(Some(&good), &index), IndexState::Stale { documents: 2 });
    let (stdout, _, code) = selfspec(&["index", "info", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("2 documents") && stdout.contains("stale: the corpus changed"), "{stdout}");

    // A rebuild replaces the index only when the new one is complete; a broken corpus leaves
    // the old index in place.
    std::fs::write(&good, "{\"id\": \"a\", \"text\": \"two words\"}\n").unwrap();
    corpus::rebuild(&good, &index, &mut |_, _| {}).unwrap();
    assert_eq!(IndexState::of(Some(&good), &index), IndexState::Current { documents: 1 });
    std::fs::write(&good, "broken\n").unwrap();
    assert!(corpus::rebuild(&good, &index, &mut |_, _| {}).is_err());
    assert_eq!(Searcher::open(&index).unwrap().num_docs(), 1);
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".next") || n.ends_with(".old") || n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A rebuild killed between its two renames left the old index aside as .old: the next
    // rebuild puts it back before anything else, so a failing one still leaves it in place.
    std::fs::rename(&index, tmp.path().join("good.index.old")).unwrap();
    assert!(corpus::rebuild(&good, &index, &mut |_, _| {}).is_err());
    assert_eq!(Searcher::open(&index).unwrap().num_docs(), 1);

    // Two builders of one index at once (a Corpus tab's b and a run's --corpus) take turns:
    // both succeed and the index is whole.
    let shared = tmp.path().join("shared.jsonl");
    let lines: String =
        (0..3000).map(|i| format!("{{\"id\": \"d{i}\", \"text\": \"word{i} common text\"}}\n")).collect();
    std::fs::write(&shared, lines).unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let a = s.spawn(|| corpus::profile::ensure_index(&shared, &mut |_, _| {}).map(|r| r.0));
        let b = s.spawn(|| corpus::rebuild(&shared, &tmp.path().join("shared.index"), &mut |_, _| {}).map(|_| ()));
        vec![a.join().unwrap().map(|_| ()), b.join().unwrap()]
    });
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(Searcher::open(&tmp.path().join("shared.index")).unwrap().num_docs(), 3000);

    // A source that cannot be read at all is an error that names it.
    let (_, stderr, code) = selfspec(&["index", "info", tmp.path().join("none.jsonl").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("none.jsonl"), "{stderr}");
}

#[test]
fn highlighted_hits_mark_the_query_words_in_their_passage() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bio");
    corpus::build(&sample("biomedical"), &out, &mut |_, _| {}).unwrap();
    let searcher = Searcher::open(&out).unwrap();
    let plain = searcher.search("warfarin monitoring", 5).unwrap();
    let marked = searcher.search_highlighted("warfarin monitoring", 5, 120).unwrap();
    assert_eq!(plain, marked.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>());
    let (hit, h) = &marked[0];
    assert!(hit.text.contains(&h.text) && h.text.len() <= 120, "{h:?}");
    assert!(!h.marked.is_empty());
    for r in &h.marked {
        let word = h.text[r.clone()].to_lowercase();
        assert!(word == "warfarin" || word == "monitoring" || word == "monitored", "{word}");
    }
    assert!(searcher.search_highlighted("?!", 5, 120).unwrap().is_empty());
}
