//! ROUGE-L against google's rouge-score: tests/fixtures/rouge_l.json holds its precision, recall
//! and F-measure (no stemming) for awkward and random pairs, made by scripts/make_rouge_fixture.py.

use std::path::Path;

use selfspec::eval::metrics::rouge_l;

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
