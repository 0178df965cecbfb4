//! Evaluation runs: datasets with their errors, k-shot prompts, and `selfspec eval` on the
//! bundled sample sets with the base and an adapter in one run.

mod common;

use std::path::Path;
use std::process::Command;

use selfspec::eval::data::load_dir;
use selfspec::eval::run::{prompt, Report};
use selfspec::metrics::Scorer;

use common::root;

#[test]
fn the_sample_sets_load_and_cover_the_tasks() {
    for (domain, tasks) in
        [("biomedical", ["qa", "ner", "re", "sa", "cls"]), ("finance", ["qa", "ner", "re", "sa", "cls"])]
    {
        let sets = load_dir(&root().join("sample-seeds/eval").join(domain), &[]).unwrap();
        assert!(sets.len() >= 5, "{domain}");
        for t in tasks {
            assert!(sets.iter().any(|d| d.task == t), "{domain} lacks {t}");
        }
        for d in &sets {
            assert!(
                d.test.len() >= 30 && d.train.len() >= 5,
                "{}: {} test, {} train",
                d.name,
                d.test.len(),
                d.train.len()
            );
        }
    }
}

#[test]
fn malformed_datasets_are_named_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |text: &str| std::fs::write(dir.path().join("x.jsonl"), text).unwrap();
    let err = |only: &[String]| load_dir(dir.path(), only).unwrap_err().to_string();
    write("{\"task\": \"qa\", \"instruction\": \"Q\", \"input\": \"\", \"output\": \"a\"}\n{\"task\": \"qa\", \"instruction\": \"Q\"}\n");
    assert!(err(&[]).contains("x.jsonl:2: no output"), "{}", err(&[]));
    write("{\"task\": \"qna\", \"instruction\": \"Q\", \"output\": \"a\"}\n");
    assert!(err(&[]).contains("x.jsonl:1: unknown task \"qna\""), "{}", err(&[]));
    write("{\"task\": \"qa\", \"instruction\": \"Q\", \"output\": \"a\", \"outputs\": [\"b\"]}\n");
    assert!(err(&[]).contains("both output and outputs"));
    write("not json\n");
    assert!(err(&[]).contains("x.jsonl:1:"));
    write("{\"task\": \"qa\", \"instruction\": \"Q\", \"output\": \"a\"}\n");
    assert!(err(&["y".to_string()]).contains("no dataset y.jsonl"));
}

#[test]
fn k_shot_prompts_put_k_answered_demonstrations_first() {
    let sets = load_dir(&root().join("sample-seeds/eval/finance"), &["fin-sentiment".into()]).unwrap();
    let d = &sets[0];
    let p0 = prompt(&d.train, 0, &d.test[0]);
    let p2 = prompt(&d.train, 2, &d.test[0]);
    assert!(p0.starts_with("Below is an instruction") && p0.ends_with("### Response:\n"));
    assert_eq!(p2.matches("### Response:").count(), 3);
    assert!(p2.contains(&format!("### Response:\n{}\n\n", d.train[0].references[0])));
    assert!(p2.ends_with(&p0));
}

#[test]
fn an_eval_run_writes_predictions_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let writer = root().join("tests/fixtures/models/writer");
    // An adapter for the writer model, trained for a few steps.
    let data = dir.path().join("alpaca.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| serde_json::json!({"instruction": format!("Classify headline {i}."), "input": "Shares jump", "output": "positive"}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let cfg = dir.path().join("t.yaml");
    std::fs::write(&cfg, "r: 4\nmax_steps: 3\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 1\nwarmup_steps: 0\nlearning_rate: 0.01\n").unwrap();
    let lora = dir.path().join("lora");
    let out = common::selfspec()
        .args(["train", "--model"])
        .arg(&writer)
        .arg("--data")
        .arg(&data)
        .arg("--run")
        .arg(&lora)
        .arg("--train-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = dir.path().join("eval");
    // The first 30 lines of two sample sets (they grow; this test counts answers).
    let sets = dir.path().join("sets");
    std::fs::create_dir(&sets).unwrap();
    for name in ["fin-sentiment", "fin-qa"] {
        let from = root().join("sample-seeds/eval/finance");
        let test = std::fs::read_to_string(from.join(format!("{name}.jsonl"))).unwrap();
        let head: String = test.lines().take(30).map(|l| format!("{l}\n")).collect();
        std::fs::write(sets.join(format!("{name}.jsonl")), head).unwrap();
        std::fs::copy(from.join(format!("{name}.train.jsonl")), sets.join(format!("{name}.train.jsonl"))).unwrap();
    }
    // The evaluation of the base and the adapters named, into `run`.
    let eval_with = |adapters: &[String]| {
        let mut cmd = common::selfspec();
        cmd.args(["eval", "--model"]).arg(&writer);
        for a in adapters {
            cmd.arg("--adapter").arg(a);
        }
        cmd.arg("--data").arg(&sets);
        cmd.args(["--datasets", "fin-sentiment,fin-qa", "--shots", "0,1", "--resamples", "2000", "--run"]);
        cmd.arg(&run).output().unwrap()
    };
    let adapter = lora.join("adapter").display().to_string();
    let out = eval_with(std::slice::from_ref(&adapter));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(
        md.contains("| fin-qa | 30 |") && md.contains("## F1, 1-shot") && md.contains("worst / average / best"),
        "{md}"
    );
    assert!(md.contains("| Δ lora | p | Holm p | detectable Δ |") && md.contains("2000 resamples"), "{md}");
    let report: Report = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report.models, ["base", "lora"]);
    assert_eq!(report.cells.len(), 2 * 2 * 2);
    assert!(report.cells.iter().all(|c| c.n == 30));
    // Every cell carries its interval, every adapter cell its paired comparison with the base,
    // Holm-adjusted over the two datasets; the label set (fin-sentiment) also McNemar.
    assert_eq!(report.labels, ["fin-sentiment"]);
    assert_eq!(report.stats.map(|s| s.resamples), Some(2000));
    for c in &report.cells {
        let [lo, hi] = c.f1_ci.unwrap();
        assert!(lo <= c.f1 && c.f1 <= hi, "{c:?}");
        match &c.vs_base {
            None => assert_eq!(c.model, "base"),
            Some(v) => {
                let base = report.cell("base", &c.dataset, c.k).unwrap();
                assert!((v.f1.delta - (c.f1 - base.f1)).abs() < 1e-9);
                assert!(v.f1.ci[0] <= v.f1.delta && v.f1.delta <= v.f1.ci[1]);
                assert!(v.f1.holm_p.unwrap() >= v.f1.p && (0.0..=1.0).contains(&v.f1.p));
                assert!(v.f1.detectable >= 0.0);
                assert_eq!(v.mcnemar_p.is_some(), c.dataset == "fin-sentiment");
            }
        }
    }
    assert_eq!(report.averages.len(), 2 * 2);
    assert!(report.averages.iter().all(|a| (a.model == "base") == a.vs_base.is_none()));
    // Every prediction's scores are the metrics' own.
    let mut scorer = Scorer::default();
    let text = std::fs::read_to_string(run.join("predictions.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 2 * 2 * 2 * 30);
    for line in text.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let refs: Vec<&str> = p["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        let (f1, rouge) = scorer.score(p["prediction"].as_str().unwrap(), &refs);
        assert!((f1 * 100.0 - p["f1"].as_f64().unwrap()).abs() < 1e-9);
        assert!((rouge * 100.0 - p["rougeL"].as_f64().unwrap()).abs() < 1e-9);
    }
    // Demonstrations from the seeds, as the paper did.
    let run2 = dir.path().join("eval-seeds");
    let out = common::selfspec()
        .args(["eval", "--model"])
        .arg(&writer)
        .arg("--data")
        .arg(root().join("sample-seeds/eval/finance"))
        .args(["--datasets", "fin-sentiment", "--shots", "1", "--demos-from"])
        .arg(root().join("sample-seeds/finance.yaml"))
        .arg("--run")
        .arg(&run2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(run2.join("config.yaml")).unwrap().contains("finance.yaml"));
    let csv = std::fs::read_to_string(run.join("report.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 8 + 4);
    assert!(csv.starts_with("model,dataset,task,k,n,f1,f1_lo,f1_hi,"), "{csv}");
    assert!(csv.lines().next().unwrap().contains("delta_f1,delta_f1_lo,delta_f1_hi,p_f1,holm_p_f1,detectable_f1"));
    assert!(run.join("report.md").exists());

    // The report computed again from the predictions with other statistics: the same means,
    // the new settings recorded, other intervals; no model is loaded.
    let before: Report = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let out = common::selfspec()
        .args(["eval", "report"])
        .arg(&run)
        .args(["--resamples", "500", "--stats-seed", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("500 resamples"));
    let after: Report = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(after.stats.map(|s| (s.resamples, s.trials, s.seed)), Some((500, 500, 3)));
    for (a, b) in before.cells.iter().zip(&after.cells) {
        assert_eq!((a.f1, a.rouge_l), (b.f1, b.rouge_l));
    }
    // The TensorBoard event file is rewritten with the report, not added to: one file, and
    // TensorBoard's own reader (where installed) finds every cell's scores in it.
    let boards: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tfevents"))
        .collect();
    assert_eq!(boards, ["events.out.tfevents.selfspec-eval"]);
    if Command::new("python3").args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success()) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_tensorboard.py");
        let out = Command::new("python3").arg(script).arg(&run).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    } else {
        eprintln!("skipped TensorBoard's own reader: python3 cannot import tensorboard (pip install tensorboard)");
    }
    assert!(std::fs::read_to_string(run.join("config.yaml")).unwrap().contains("resamples: 500"));
    let out = common::selfspec().args(["eval", "report"]).arg(dir.path()).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no evaluation run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same command again: nothing is generated again, nothing changes.
    let eval_again = || eval_with(std::slice::from_ref(&adapter));
    let all = std::fs::read(run.join("predictions.jsonl")).unwrap();
    let out = eval_again();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("240 answers; 240 scored before are kept, 0 to generate"));
    assert_eq!(std::fs::read(run.join("predictions.jsonl")).unwrap(), all);
    // A run killed part-way (half its answers written, the next line torn, no report) continues:
    // only the missing answers are generated, and the kept ones stay as they were.
    let text = String::from_utf8(all).unwrap();
    let half: String = text.lines().take(100).map(|l| format!("{l}\n")).collect();
    std::fs::write(run.join("predictions.jsonl"), format!("{half}{{\"model\": \"ba")).unwrap();
    std::fs::remove_file(run.join("report.json")).unwrap();
    let out = eval_again();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("240 answers; 100 scored before are kept, 140 to generate"), "{stderr}");
    assert!(stderr.contains("line 101 was torn"), "{stderr}");
    let text = std::fs::read_to_string(run.join("predictions.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 240);
    assert!(text.starts_with(&half));
    let again: Report = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert!(again.cells.iter().all(|c| c.n == 30));

    // The same evaluation with one more adapter after the first (as a sweep grows its evaluation
    // point by point): what was scored is kept, only the new adapter's answers are generated.
    let out = eval_with(&[adapter.clone(), format!("twin={adapter}")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("360 answers; 240 scored before are kept, 120 to generate"), "{stderr}");
    let text = std::fs::read_to_string(run.join("predictions.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 360);

    // The same folder with other settings: refused, the predictions kept as they were.
    let before = std::fs::read(run.join("predictions.jsonl")).unwrap();
    let out = common::selfspec()
        .args(["eval", "--model"])
        .arg(&writer)
        .arg("--data")
        .arg(&sets)
        .args(["--datasets", "fin-qa", "--shots", "0", "--run"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already holds an evaluation run"), "{stderr}");
    // And says what differs.
    assert!(stderr.contains("What differs:") && stderr.contains("datasets:"), "{stderr}");
    assert_eq!(std::fs::read(run.join("predictions.jsonl")).unwrap(), before);
}

#[test]
fn more_shots_than_demonstrations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::selfspec()
        .args(["eval", "--model"])
        .arg(root().join("tests/fixtures/models/writer"))
        .arg("--data")
        .arg(root().join("sample-seeds/eval/finance"))
        .args(["--datasets", "fin-qa", "--shots", "0,99", "--run"])
        .arg(dir.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shots 99: fin-qa has only 5 demonstrations"), "{err}");
}

#[test]
fn score_refuses_empty_input_and_warns_of_empty_references() {
    let dir = tempfile::tempdir().unwrap();
    let score = |text: &str| {
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, text).unwrap();
        let out = common::selfspec().arg("score").arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = score("");
    assert!(!ok && err.contains("holds no records"), "{err}");
    let (ok, err) =
        score("{\"prediction\": \"a\", \"references\": [\"a\"]}\n{\"prediction\": \"b\", \"references\": []}\n");
    assert!(ok && err.contains("1 record(s) have an empty \"references\" list and score 0 (first at line 2)"), "{err}");
    let (ok, err) = score("{\"prediction\": \"a b\", \"references\": [\"a\"]}\n");
    assert!(ok, "{err}");
}
