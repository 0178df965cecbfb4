//! Seeded LoRA on the writer fixture: the learned starting points (`task:NAME`, `reptile`)
//! against plain training runs that must give the same adapter, a seed-share sweep killed with
//! -9 and continued, and `lmc --eval` whose endpoints score as the adapters themselves.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root;

fn writer() -> PathBuf {
    root().join("tests/fixtures/models/writer")
}

use common::{ok as run_ok, selfspec_at as selfspec};

fn lines(tasks: &[(&str, usize)]) -> String {
    let mut out = String::new();
    for (task, n) in tasks {
        for i in 0..*n {
            out.push_str(&format!(
                "{{\"task\": \"{task}\", \"instruction\": \"Say the {task} word number {i}.\", \"input\": \"\", \"output\": \"{task} {i} is the word\"}}\n"
            ));
        }
    }
    out
}

/// Training settings for the writer fixture, micro-batches of `batch`, then `extra`.
fn settings(dir: &Path, batch: usize, extra: &str) -> PathBuf {
    let path = dir.join("train.yaml");
    let text = format!(
        "r: 4\nnum_train_epochs: 1\nper_device_train_batch_size: {batch}\ngradient_accumulation_steps: 1\n\
         warmup_steps: 0\nlearning_rate: 0.01\nlora_dropout: 0.0\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn tensors(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

/// Every tensor of the two adapters within `tol` of each other (relative to the largest value).
fn assert_close(a: &Path, b: &Path, tol: f32) {
    let load = |d: &Path| {
        candle_core::safetensors::load(d.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap()
    };
    let (x, y) = (load(a), load(b));
    assert_eq!(x.len(), y.len());
    for (name, t) in &x {
        let u: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = y[name].flatten_all().unwrap().to_vec1().unwrap();
        let scale = u.iter().fold(0f32, |m, z| m.max(z.abs())).max(1e-12);
        let worst = u.iter().zip(&v).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= tol * scale, "{name}: max |Δ| {worst} against scale {scale}");
    }
}

/// `selfspec train` on the writer fixture in the Alpaca template, with `args` after it.
fn train_cmd(home: &Path, data: &Path, run: &Path, config: &Path, args: &[&str]) -> Command {
    let mut cmd = selfspec(home);
    cmd.arg("train").arg("--model").arg(writer()).arg("--data").arg(data).arg("--run").arg(run);
    cmd.arg("--train-config").arg(config).arg("--prompt-format").arg("plain").args(args);
    cmd
}

fn train(home: &Path, data: &Path, run: &Path, config: &Path, init: Option<&str>) -> String {
    let args: Vec<&str> = init.map(|i| vec!["--init", i]).unwrap_or_default();
    run_ok(&mut train_cmd(home, data, run, config, &args))
}

#[test]
fn a_task_start_is_that_tasks_expert_trained_first() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed, lines(&[("alpha", 3), ("beta", 4), ("gamma", 2)])).unwrap();
    let only_beta = dir.path().join("beta.jsonl");
    std::fs::write(&only_beta, lines(&[("beta", 4)])).unwrap();
    let config = settings(dir.path(), 2, "");
    let text = train(&home, &mixed, &dir.path().join("task"), &config, Some("task:beta"));
    assert!(text.contains("the expert of task beta, 2 steps on its 4 examples"), "{text}");
    // The start is exactly what a standard run on beta's examples alone gives.
    train(&home, &only_beta, &dir.path().join("beta"), &config, None);
    assert_eq!(tensors(&dir.path().join("task/start")), tensors(&dir.path().join("beta/adapter")));
    let recorded = std::fs::read_to_string(dir.path().join("task/config.yaml")).unwrap();
    assert!(recorded.contains("init: task:beta"), "{recorded}");
    // The run then trains that start on all the data: its adapter moved away from it.
    assert_ne!(tensors(&dir.path().join("task/adapter")), tensors(&dir.path().join("task/start")));
    // A task the data lacks, and data without tasks, are refused by name.
    let out = train_cmd(&home, &mixed, &dir.path().join("bad"), &config, &["--init", "task:delta"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no training example has task \"delta\"; the data's tasks: alpha, beta, gamma"), "{err}");
    let plain = dir.path().join("plain.jsonl");
    std::fs::write(&plain, "{\"instruction\": \"Say hi.\", \"output\": \"hi\"}\n").unwrap();
    let out = train_cmd(&home, &plain, &dir.path().join("bad2"), &config, &["--init", "reptile"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 1 training examples have no \"task\""), "{err}");
}

#[test]
fn one_reptile_outer_step_is_its_inner_steps() {
    // With one outer step the step size is 1, so the start is the K inner AdamW steps at a
    // constant learning rate on the one task; with one example, batch 1 picks it every time:
    // exactly a standard run of K steps on that example.
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, lines(&[("solo", 1)])).unwrap();
    let config = settings(dir.path(), 1, "");
    let config_text = std::fs::read_to_string(&config).unwrap();
    let text = train(&home, &one, &dir.path().join("rep"), &config, Some("reptile:1:3"));
    assert!(text.contains("Reptile over 1 tasks, 1 outer steps of 3"), "{text}");
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, format!("{config_text}max_steps: 3\nlr_scheduler_type: constant\n")).unwrap();
    train(&home, &one, &dir.path().join("steps"), &plain, None);
    // φ + 1·(φ' − φ) rounds within a few ulps of φ'.
    assert_close(&dir.path().join("rep/start"), &dir.path().join("steps/adapter"), 1e-6);
    // Two outer steps move only part of the way on the second: a different start.
    train(&home, &one, &dir.path().join("rep2"), &config, Some("reptile:2:3"));
    assert_ne!(tensors(&dir.path().join("rep2/start")), tensors(&dir.path().join("rep/start")));
}

/// The biomedical sets cut to their first 30 test lines (the sweep's machinery is under test,
/// not the sets; the demonstrations, which the tasks train on, are kept whole).
fn small_eval(dir: &Path) -> PathBuf {
    let from = root().join("sample-seeds/eval/biomedical");
    let to = dir.join("eval-small");
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(&from).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let head: String = text.lines().take(30).map(|l| format!("{l}\n")).collect();
        std::fs::write(to.join(&name), head).unwrap();
    }
    to
}

fn spec(dir: &Path) -> PathBuf {
    let path = dir.join("seeded.yaml");
    let text = format!(
        "model: {}\nseeds: {}\neval: {}\ndatasets: [bio-ner, bio-topic]\nshots: [0]\nseed: 5\n\
         seeded:\n  base: {{share: 0.2, init: standard}}\n  share: [0.05, 0.5]\n  init: [task:bio-ner, reptile:2:1]\n  \
         lmc_points: 3\n\
         train:\n  r: 4\n  max_steps: 2\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 1\n  \
         warmup_steps: 0\n  learning_rate: 0.01\n",
        writer().display(),
        root().join("sample-seeds/biomedical.yaml").display(),
        small_eval(dir).display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_seeded_sweep_killed_with_kill_9_continues_and_reports_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let spec = spec(dir.path());
    let run = dir.path().join("run");
    let base = run.join("points/p20-standard");
    let mut child = selfspec(&home)
        .arg("sweep")
        .arg(&spec)
        .arg("--run")
        .arg(&run)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !base.join("experts/bio-topic").exists() {
        assert!(start.elapsed() < Duration::from_secs(300), "the sweep never reached the second expert");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(selfspec::runs::state(&run), selfspec::runs::State::Interrupted);
    let seed_before = tensors(&base.join("seed/adapter"));
    let ner_before = tensors(&base.join("experts/bio-ner/adapter"));
    let text = run_ok(selfspec(&home).arg("sweep").arg(&spec).arg("--run").arg(&run));
    // Finished stages are not trained again.
    assert!(!text.contains("── seed p20-standard"), "{text}");
    assert!(!text.contains("── expert p20-standard: the bio-ner expert"), "{text}");
    assert_eq!(tensors(&base.join("seed/adapter")), seed_before);
    assert_eq!(tensors(&base.join("experts/bio-ner/adapter")), ner_before);
    // Shares are stratified and nested: each task has at least one example, smaller shares
    // are prefixes of larger ones within each task.
    let share = |p: &str| jsonl(&run.join("points").join(p).join("seed.jsonl"));
    let (small, mid, large) = (share("p5-standard"), share("p20-standard"), share("p50-standard"));
    for task in ["bio-ner", "bio-topic"] {
        let of = |v: &[serde_json::Value]| -> Vec<serde_json::Value> {
            v.iter().filter(|x| x["task"] == task).cloned().collect()
        };
        let all = jsonl(&run.join("tasks").join(format!("{task}.jsonl")));
        assert!(!of(&small).is_empty());
        assert!(of(&large).starts_with(&of(&mid)) && of(&mid).starts_with(&of(&small)));
        assert_eq!(of(&large).len(), (all.len() as f64 * 0.5).ceil() as usize);
    }
    // Experts start from their point's seed expert.
    let cfg = std::fs::read_to_string(base.join("experts/bio-topic/config.yaml")).unwrap();
    assert!(cfg.contains(&format!("init: from:{}", base.join("seed/adapter").display())), "{cfg}");
    let cfg = std::fs::read_to_string(run.join("points/p20-task-bio-ner/seed/config.yaml")).unwrap();
    assert!(cfg.contains("init: task:bio-ner"), "{cfg}");
    // The merge without the seed is the mean of the experts' updates (cat: stacked factors).
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("merged/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(merged["r"], 8, "two rank-4 experts stacked");
    // The report: every point's base, seed, experts, merges, on both datasets; LMC per point.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for point in ["p5-standard", "p20-standard", "p50-standard", "p20-task-bio-ner", "p20-reptile-2-1"] {
        for model in ["base", "seed", "expert", "merged", "merged+seed"] {
            let n = rows.iter().filter(|r| r["point"] == point && r["model"] == model).count();
            let want = if model == "expert" { 4 } else { 2 };
            assert!(n >= want, "{point} {model}: {n} rows");
        }
    }
    // Each point's summary columns with intervals over the two datasets, and against the base.
    let sums = report["summaries"].as_array().unwrap();
    for point in ["p5-standard", "p20-reptile-2-1"] {
        for column in ["experts, own", "experts, others", "seed", "merged", "merged+seed", "base"] {
            let s = sums.iter().find(|s| s["point"] == point && s["column"] == column).unwrap();
            let f1 = &s["summary"]["f1"];
            assert!(f1["ci"][0].as_f64().unwrap() <= f1["mean"].as_f64().unwrap(), "{s}");
            assert_eq!(s["summary"]["vs"].is_null(), column == "base", "{s}");
        }
    }
    // "experts, own" is the mean of each expert's own-dataset score.
    let own =
        sums.iter().find(|s| s["point"] == "p5-standard" && s["column"] == "experts, own" && s["k"] == 0).unwrap();
    let cell = |model: &str, d: &str| {
        rows.iter()
            .find(|r| {
                r["point"] == "p5-standard"
                    && r["model"] == "expert"
                    && r["expert"] == model
                    && r["dataset"] == d
                    && r["k"] == 0
            })
            .unwrap()["f1"]
            .as_f64()
            .unwrap()
    };
    let want = (cell("bio-ner", "bio-ner") + cell("bio-topic", "bio-topic")) / 2.0;
    assert!((own["summary"]["f1"]["mean"].as_f64().unwrap() - want).abs() < 1e-9, "{own}");
    let lmc = report["lmc"].as_array().unwrap();
    assert_eq!(lmc.len(), 5);
    for l in lmc {
        let pair = &l["pairs"][0];
        assert_eq!((pair["a"].as_str(), pair["b"].as_str()), (Some("bio-ner"), Some("bio-topic")));
        assert_eq!(pair["merged"].as_array().unwrap().len(), 3);
        assert!(pair["barrier_merged"].as_f64().unwrap() >= 0.0);
    }
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("| share | experts, own | experts, others | seed | merged | merged+seed | base | barrier |"));
    assert!(md.contains("Δ against the base (smallest detectable Δ in brackets)"), "{md}");
    assert!(md.contains("| 0.05 |") && md.contains("| 0.5 |") && md.contains("| reptile:2:1 |"), "{md}");
    assert!(run.join("plots/f1-share.svg").exists() && run.join("plots/lmc-p20-standard.png").exists());
}

#[test]
fn lmc_eval_scores_each_end_as_the_adapter_itself() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, lines(&[("one", 4)])).unwrap();
    let config = settings(dir.path(), 2, "max_steps: 2\nseed: 1\n");
    train(&home, &data, &dir.path().join("a"), &config, None);
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("seed: 1", "seed: 2")).unwrap();
    train(&home, &data, &dir.path().join("b"), &config, None);
    let eval = small_eval(dir.path());
    let out = dir.path().join("lmc");
    let text = run_ok(
        selfspec(&home)
            .arg("lmc")
            .arg(dir.path().join("a/adapter"))
            .arg(dir.path().join("b/adapter"))
            .arg("--model")
            .arg(writer())
            .arg("--data")
            .arg(&data)
            .args(["--points", "3", "--prompt-format", "plain", "--datasets", "bio-sentiment", "--eval"])
            .arg(&eval)
            .arg("--out")
            .arg(&out),
    );
    assert!(text.contains("F1 ΔW"), "{text}");
    assert!(out.join("plots/lmc-loss.svg").exists() && out.join("plots/lmc-f1.png").exists());
    let lmc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("lmc.json")).unwrap()).unwrap();
    let scores = lmc["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 6, "3 points × 2 lines at k 0");
    // The adapters evaluated on their own.
    let own = dir.path().join("own");
    run_ok(
        selfspec(&home)
            .arg("eval")
            .arg("--model")
            .arg(writer())
            .arg("--adapter")
            .arg(format!("a={}", dir.path().join("a/adapter").display()))
            .arg("--adapter")
            .arg(format!("b={}", dir.path().join("b/adapter").display()))
            .args(["--datasets", "bio-sentiment", "--shots", "0", "--data"])
            .arg(&eval)
            .arg("--run")
            .arg(&own),
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(own.join("report.json")).unwrap()).unwrap();
    let cell = |m: &str| report["cells"].as_array().unwrap().iter().find(|c| c["model"] == m).unwrap()["f1"].as_f64();
    let at = |line: &str, alpha: f64| {
        scores.iter().find(|s| s["line"] == line && s["alpha"].as_f64() == Some(alpha)).unwrap()["f1"].as_f64()
    };
    for line in ["merged", "factors"] {
        assert_eq!(at(line, 0.0), cell("a"), "{line} at α 0");
        assert_eq!(at(line, 1.0), cell("b"), "{line} at α 1");
    }
}

#[test]
fn a_run_stopped_while_finding_its_start_finds_the_same_start_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let data = dir.path().join("d.jsonl");
    std::fs::write(&data, lines(&[("alpha", 3), ("beta", 3)])).unwrap();
    let config = settings(dir.path(), 2, "max_steps: 1\n");
    let init = "reptile:300:2";
    let run = dir.path().join("stopped");
    let child = train_cmd(&home, &data, &run, &config, &["--init", init])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // SIGTERM once the run has begun (its config is written), long before 600 inner steps end.
    let start = Instant::now();
    while !run.join("config.yaml").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the run never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped while finding the start (reptile:300:2); --resume finds it again"), "{err}");
    assert!(!run.join("start").exists() && !run.join("adapter").exists());
    run_ok(&mut train_cmd(&home, &data, &run, &config, &["--resume", "--init", init]));
    // The same start as a run never stopped: every draw comes from the seed.
    train(&home, &data, &dir.path().join("whole"), &config, Some(init));
    assert_eq!(tensors(&run.join("start")), tensors(&dir.path().join("whole/start")));
    assert_eq!(tensors(&run.join("adapter")), tensors(&dir.path().join("whole/adapter")));
}
