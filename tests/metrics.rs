//! ROUGE-L against google's rouge-score: tests/fixtures/rouge_l.json holds its precision, recall
//! and F-measure (no stemming) for awkward and random pairs, made by scripts/make_rouge_fixture.py.

mod common;

use std::path::Path;

use selfspec::metrics::rouge_l;

#[test]
fn rouge_l_matches_rouge_score() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rouge_l.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() > 300);
    for c in &cases {
        let (t, p) = (c["target"].as_str().unwrap(), c["prediction"].as_str().unwrap());
        let s = rouge_l(t, p);
        for (name, ours) in [("precision", s.precision), ("recall", s.recall), ("fmeasure", s.fmeasure)] {
            let want = c[name].as_f64().unwrap();
            assert!((ours - want).abs() <= 1e-12, "{name} of {t:?} / {p:?}: {ours} vs rouge-score {want}");
        }
    }
}

/// NLTK's PorterStemmer() on about 12,000 words: the sample texts' vocabulary, every stem of the
/// paper's examples with every suffix the rules name, and random strings of vowels, y and digits.
#[test]
fn porter_stems_as_nltk() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/porter.json");
    let stems: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(stems.len() > 10_000);
    let wrong: Vec<String> = stems
        .iter()
        .filter(|(w, s)| selfspec::metrics::porter::stem(w) != **s)
        .map(|(w, s)| format!("{w}: {} vs nltk {s}", selfspec::metrics::porter::stem(w)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} differ:\n{}",
        wrong.len(),
        stems.len(),
        wrong[..wrong.len().min(30)].join("\n")
    );
}

/// F1 (SQuAD v1.1) and stemmed ROUGE-L (rouge-score) on awkward and random pairs, best over the
/// references.
#[test]
fn f1_and_rouge_l_match_the_references() {
    use selfspec::metrics::{f1_best, rouge_l_best};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scores.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() >= 600);
    for c in &cases {
        let p = c["prediction"].as_str().unwrap();
        let refs: Vec<&str> = c["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        let (f1, rouge) = (f1_best(p, &refs), rouge_l_best(p, &refs));
        assert!((f1 - c["f1"].as_f64().unwrap()).abs() <= 1e-12, "F1 of {p:?} / {refs:?}: {f1} vs {}", c["f1"]);
        assert!(
            (rouge - c["rougeL"].as_f64().unwrap()).abs() <= 1e-12,
            "ROUGE-L of {p:?} / {refs:?}: {rouge} vs {}",
            c["rougeL"]
        );
    }
}

/// `selfspec score` on the same pairs: means on 0–100, per-row values, and errors with the line.
#[test]
fn the_score_command_prints_means_and_rows() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scores.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pairs.jsonl");
    let lines: Vec<String> = cases
        .iter()
        .map(|c| serde_json::json!({"prediction": c["prediction"], "references": c["references"]}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let run = |args: &[&str]| {
        let out = common::selfspec().arg("score").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&[file.to_str().unwrap(), "--rows"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["n"], cases.len());
    let mean = |k: &str| cases.iter().map(|c| c[k].as_f64().unwrap()).sum::<f64>() / cases.len() as f64 * 100.0;
    assert!((v["f1"].as_f64().unwrap() - mean("f1")).abs() < 1e-9);
    assert!((v["rougeL"].as_f64().unwrap() - mean("rougeL")).abs() < 1e-9);
    let rows = v["rows"].as_array().unwrap();
    for (row, c) in rows.iter().zip(&cases) {
        assert!((row["f1"].as_f64().unwrap() - c["f1"].as_f64().unwrap() * 100.0).abs() < 1e-9);
        assert!((row["rougeL"].as_f64().unwrap() - c["rougeL"].as_f64().unwrap() * 100.0).abs() < 1e-9);
    }
    std::fs::write(
        &file,
        "{\"prediction\": \"x\", \"references\": [\"x\"]}\n{\"prediction\": \"y\", \"reference\": \"y\"}\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&[file.to_str().unwrap()]);
    assert!(!ok && stderr.contains("pairs.jsonl:2: unknown field `reference`"), "{stderr}");
    // The BoX option splits a gold list.
    std::fs::write(&file, "{\"prediction\": \"naproxen\", \"references\": [\"aspirin, naproxen\"]}\n").unwrap();
    let (_, stdout, _) = run(&[file.to_str().unwrap(), "--split-references"]);
    assert!(stdout.contains("\"f1\":100.0"), "{stdout}");
}
