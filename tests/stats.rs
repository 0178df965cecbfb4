//! Paired statistics against a NumPy reference: tests/fixtures/paired holds pairs of prediction
//! files and, in expected.json, their scores, bootstrap intervals (100,000 resamples), the
//! approximate-randomisation p (100,000 trials) and scipy's exact binomial test on the discordant
//! pairs, made by scripts/make_paired_fixture.py. Ours run 10,000 of each (the default), so
//! interval endpoints may differ by Monte Carlo error (0.5 points allowed) and p by 0.01.

mod common;

use std::path::{Path, PathBuf};

use selfspec::eval::stats::{self, Group, Settings};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paired").join(name)
}

fn score(args: &[&std::ffi::OsStr]) -> std::process::Output {
    common::selfspec().arg("score").args(args).output().unwrap()
}

fn paired_json(a: &Path, b: &Path) -> serde_json::Value {
    let out = score(&["--paired".as_ref(), a.as_os_str(), b.as_os_str(), "--json".as_ref()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn paired_scores_match_the_numpy_reference() {
    let expected: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
    assert_eq!(expected.len(), 5);
    for (name, want) in &expected {
        let got = paired_json(&fixture(&format!("{name}.a.jsonl")), &fixture(&format!("{name}.b.jsonl")));
        assert_eq!(got["n"], want["n"], "{name}");
        for metric in ["f1", "rougeL"] {
            let (g, w) = (&got[metric], &want[metric]);
            for key in ["a", "b", "delta"] {
                let (x, y) = (g[key].as_f64().unwrap(), w[key].as_f64().unwrap());
                assert!((x - y).abs() < 1e-9, "{name} {metric} {key}: {x} vs {y}");
            }
            for key in ["a_ci", "b_ci", "ci"] {
                for i in 0..2 {
                    let (x, y) = (g[key][i].as_f64().unwrap(), w[key][i].as_f64().unwrap());
                    assert!((x - y).abs() <= 0.5, "{name} {metric} {key}[{i}]: {x} vs NumPy's {y}");
                }
            }
            let (x, y) = (g["p"].as_f64().unwrap(), w["p"].as_f64().unwrap());
            assert!((x - y).abs() <= 0.01, "{name} {metric} p: {x} vs the reference's {y}");
        }
        for key in ["a", "b", "only_a", "only_b"] {
            let (x, y) = (got["exact"][key].as_f64().unwrap(), want["exact"][key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-9, "{name} exact {key}: {x} vs {y}");
        }
        let (x, y) = (got["exact"]["mcnemar_p"].as_f64().unwrap(), want["exact"]["mcnemar_p"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-9 * y.max(1e-300) + 1e-15, "{name} McNemar: {x} vs binomtest {y}");
    }
}

#[test]
fn identical_files_show_no_difference() {
    let a = fixture("identical.a.jsonl");
    let got = paired_json(&a, &a);
    for metric in ["f1", "rougeL"] {
        assert_eq!(got[metric]["delta"], 0.0);
        assert_eq!(got[metric]["ci"], serde_json::json!([0.0, 0.0]));
        assert_eq!(got[metric]["p"], 1.0);
    }
    assert_eq!(got["exact"]["mcnemar_p"], 1.0);
}

#[test]
fn the_same_seed_gives_the_same_numbers_and_another_seed_close_ones() {
    let (a, b) = (fixture("qa_small.a.jsonl"), fixture("qa_small.b.jsonl"));
    let run = |seed: &str| {
        let out = score(&[
            "--paired".as_ref(),
            a.as_os_str(),
            b.as_os_str(),
            "--json".as_ref(),
            "--seed".as_ref(),
            seed.as_ref(),
        ]);
        assert!(out.status.success());
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(run("7"), run("7"));
    let (x, y) = (run("7"), run("8"));
    assert_ne!(x["f1"]["ci"], y["f1"]["ci"]);
    assert!((x["f1"]["p"].as_f64().unwrap() - y["f1"]["p"].as_f64().unwrap()).abs() < 0.03);
}

#[test]
fn mismatched_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let a = write("a.jsonl", "{\"id\": 1, \"prediction\": \"x\", \"references\": [\"x\"]}\n{\"id\": 2, \"prediction\": \"y\", \"references\": [\"y\"]}\n");
    let b = write("b.jsonl", "{\"id\": 2, \"prediction\": \"y\", \"references\": [\"y\"]}\n{\"id\": 3, \"prediction\": \"x\", \"references\": [\"x\"]}\n");
    let dup = write("dup.jsonl", "{\"id\": \"q\", \"prediction\": \"y\", \"references\": [\"y\"]}\n{\"id\": \"q\", \"prediction\": \"y\", \"references\": [\"y\"]}\n");
    let no_id = write("noid.jsonl", "{\"prediction\": \"y\", \"references\": [\"y\"]}\n");
    let cases = [
        (&a, &b, "a.jsonl:1: id \"1\" is not in"),
        (&dup, &dup, "dup.jsonl:2: id \"q\" again (first at line 1)"),
        (&no_id, &a, "noid.jsonl:1: missing field `id`"),
    ];
    for (x, y, want) in cases {
        let out = score(&["--paired".as_ref(), x.as_os_str(), y.as_os_str()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err} lacks {want:?}");
    }
    let out = score(&["--paired".as_ref(), a.as_os_str()]);
    assert!(!out.status.success());
    let out = score(&["--paired".as_ref(), a.as_os_str(), a.as_os_str(), "--resamples".as_ref(), "5".as_ref()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resamples 5 is out of range"));
}

#[test]
fn the_table_names_every_number() {
    let (a, b) = (fixture("labels_gain.a.jsonl"), fixture("labels_gain.b.jsonl"));
    let out = score(&["--paired".as_ref(), a.as_os_str(), b.as_os_str()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["150 examples", "Δ = B − A", "detectable Δ", "McNemar's exact p 0.165", "F1 ", "ROUGE-L"] {
        assert!(text.contains(want), "{text} lacks {want:?}");
    }
}

/// Several datasets: the average of the datasets' means; its interval resamples within each,
/// so a dataset of 10 examples weighs as much as one of 1,000 and its noise shows.
#[test]
fn averages_resample_within_each_dataset() {
    let big = Group::one((0..1000).map(|i| if i % 2 == 0 { 100.0 } else { 0.0 }).collect());
    let small = Group::one((0..10).map(|i| if i % 2 == 0 { 100.0 } else { 0.0 }).collect());
    let s = Settings::default();
    let both = stats::estimate(&[big.clone(), small.clone()], &s);
    assert!((both.mean - 50.0).abs() < 1e-12);
    let alone = stats::estimate(&[big], &s);
    assert!(both.ci[1] - both.ci[0] > 5.0 * (alone.ci[1] - alone.ci[0]) / 2.0, "{both:?} vs {alone:?}");
}

/// Replicates widen the interval: three replicates that disagree give a wider interval than one.
#[test]
fn replicates_count_in_the_interval() {
    let base: Vec<f64> = (0..100).map(|i| ((i * 37) % 100) as f64).collect();
    let rep = |shift: f64| base.iter().map(|x| x + shift).collect::<Vec<_>>();
    let one = Group { rows: vec![rep(5.0)] };
    let three = Group { rows: vec![rep(-5.0), rep(5.0), rep(15.0)] };
    let a = [Group::one(base.clone())];
    let s = Settings::default();
    let d1 = stats::paired(&a, &[one], &s);
    let d3 = stats::paired(&a, &[three], &s);
    assert!((d1.delta - 5.0).abs() < 1e-9 && (d3.delta - 5.0).abs() < 1e-9);
    assert_eq!(d1.ci, [5.0, 5.0], "a constant shift has no example noise");
    assert!(d3.ci[0] < 0.0 && d3.ci[1] > 10.0, "{d3:?}");
}
