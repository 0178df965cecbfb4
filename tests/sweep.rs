//! `selfspec sweep` on the writer fixture: nested seed subsets, sample counts as prefixes of one
//! generation run, a kill -9 in the middle and a rerun that redoes no finished stage, and the
//! report's rows.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::root;

fn spec(dir: &Path) -> PathBuf {
    let path = dir.join("sweep.yaml");
    let text = format!(
        "model: {}\nseeds: {}\ncorpus: {}\neval: {}\ndatasets: [bio-topic]\nshots: [0]\n\
         base: {{seeds: 20, samples: 8}}\naxes:\n  seeds: [10, 20]\n  samples: [4, 8]\nseed: 3\n\
         generation:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  response_max_new_tokens: 40\n  \
         prompts_per_batch: 4\n  responses_per_batch: 4\n  k: 3\n\
         train:\n  r: 4\n  max_steps: 3\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 1\n  \
         warmup_steps: 0\n  learning_rate: 0.01\n",
        root().join("tests/fixtures/models/writer").display(),
        root().join("sample-seeds/biomedical.yaml").display(),
        root().join("sample-seeds/biomedical.corpus.jsonl").display(),
        root().join("sample-seeds/eval/biomedical").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn sweep(spec: &Path, run: &Path) -> Command {
    let mut cmd = common::selfspec_at(&spec.parent().unwrap().join("home"));
    cmd.arg("sweep").arg(spec).arg("--run").arg(run);
    cmd
}

fn ids(path: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key).map(|s| s.trim().to_string()))
        .collect()
}

#[test]
fn a_sweep_killed_in_the_middle_continues_without_redoing_finished_stages() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let run = dir.path().join("run");
    // Killed once the first point's training has started: both generation runs are finished.
    let mut child = sweep(&spec, &run).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !run.join("points/s20-n8/train").exists() {
        assert!(start.elapsed() < Duration::from_secs(300), "the sweep never reached training");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!run.join("report.json").exists(), "the sweep was killed before its end");
    assert_eq!(selfspec::runs::state(&run), selfspec::runs::State::Interrupted, "no end line and no lock: killed");
    // Each stage runs in a process of its own, told to stop when the sweep dies: the training
    // stage ends by itself, stopped (or finished, if it was that close).
    let start = Instant::now();
    while let selfspec::runs::State::Running(_) = selfspec::runs::state(&run.join("points/s20-n8/train")) {
        assert!(start.elapsed() < Duration::from_secs(60), "the training stage outlived the sweep");
        std::thread::sleep(Duration::from_millis(50));
    }
    let samples = |s: usize| std::fs::read_to_string(run.join(format!("gen-s{s}/samples.jsonl"))).unwrap();
    let (before10, before20) = (samples(10), samples(20));
    let out = sweep(&spec, &run).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The finished generation runs only continue (nothing is generated again).
    assert!(stderr.contains("continuing with 8 kept"), "{stderr}");
    assert_eq!((samples(10), samples(20)), (before10, before20));
    // Nested seed subsets: the 10 seeds are the first 10 of the 20.
    let (ten, twenty) = (ids(&run.join("gen-s10/seeds.yaml"), "- id:"), ids(&run.join("gen-s20/seeds.yaml"), "- id:"));
    assert_eq!((ten.len(), twenty.len()), (10, 20));
    assert_eq!(ten[..], twenty[..10]);
    // A smaller sample count trains on a prefix of the same generation run.
    let four = std::fs::read_to_string(run.join("points/s20-n4/train.jsonl")).unwrap();
    let eight = std::fs::read_to_string(run.join("points/s20-n8/train.jsonl")).unwrap();
    assert_eq!(four.lines().count(), 4);
    assert!(eight.starts_with(&four));
    // Each point is evaluated as soon as it is trained, in the one evaluation run.
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    for p in ["s20-n8", "s10-n8", "s20-n4"] {
        let stage = format!("\"stage\":\"eval\",\"name\":\"{p}\"");
        assert!(events.contains(&stage), "{p}: {events}");
    }
    // Every point has its adapter, and the report one row per axis value, model and dataset.
    for p in ["s20-n8", "s10-n8", "s20-n4"] {
        assert!(run.join(format!("points/{p}/train/adapter/adapter_model.safetensors")).exists(), "{p}");
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    // Per axis value: the base and the tuned point on the one dataset, and both averaged.
    assert_eq!(rows.len(), 2 * 2 * 4, "{rows:?}");
    assert!(rows.iter().any(|r| r["axis"] == "seeds" && r["value"] == 10 && r["model"] == "tuned"));
    for r in rows.iter().filter(|r| r["model"] == "tuned") {
        let (lo, hi, f1) =
            (r["f1_ci"][0].as_f64().unwrap(), r["f1_ci"][1].as_f64().unwrap(), r["f1"].as_f64().unwrap());
        assert!(lo <= f1 && f1 <= hi, "{r}");
        let v = &r["vs_base"]["f1"];
        assert!(v["ci"][0].as_f64().unwrap() <= v["delta"].as_f64().unwrap(), "{r}");
        assert!(v["p"].as_f64().unwrap() > 0.0 && v["detectable"].as_f64().is_some(), "{r}");
        assert_eq!(r["vs_base"]["f1"]["holm_p"].is_null(), r["dataset"] == "average", "{r}");
    }
    assert!(rows.iter().any(|r| r["axis"] == "samples" && r["value"] == 4 && r["samples_used"] == 4));
    assert!(run.join("report.csv").exists() && run.join("report.md").exists());
    // Plots of each metric against each axis, per dataset and averaged, as SVG and PNG (when a
    // TrueType font is there to write their text).
    if stderr.contains("no TrueType font found") {
        println!("skipped the plot check: no TrueType font on this machine");
    } else {
        for stem in ["f1-seeds-bio-topic", "f1-samples-average", "rougeL-seeds-average"] {
            let svg = std::fs::read_to_string(run.join(format!("plots/{stem}.svg"))).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("tuned 0-shot"), "{stem}");
            let png = std::fs::read(run.join(format!("plots/{stem}.png"))).unwrap();
            assert_eq!(&png[1..4], b"PNG", "{stem}");
        }
        assert_eq!(std::fs::read_dir(run.join("plots")).unwrap().count(), 16);
    }
    // Once more: everything is finished, nothing is trained again.
    let adapter = run.join("points/s10-n8/train/adapter/adapter_model.safetensors");
    let modified = std::fs::metadata(&adapter).unwrap().modified().unwrap();
    let out = sweep(&spec, &run).output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("── train") && !stderr.contains("── eval"), "{stderr}");
    assert_eq!(std::fs::metadata(&adapter).unwrap().modified().unwrap(), modified);
}

#[test]
fn more_seeds_than_the_file_holds_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let text = std::fs::read_to_string(&spec).unwrap().replace("seeds: [10, 20]", "seeds: [10, 320]");
    std::fs::write(&spec, text).unwrap();
    let run = dir.path().join("run");
    let out = sweep(&spec, &run).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("point s320-n8 asks for 320 seeds but"), "{stderr}");
    assert!(stderr.contains("holds 80"), "{stderr}");
    assert!(!run.join("gen-s10").exists(), "nothing started");
}

#[test]
fn the_plan_says_the_work_and_a_spent_budget_stops_between_stages() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let run = dir.path().join("run");
    let out = sweep(&spec, &run).arg("--plan").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for line in
        ["generate gen-s10: 8 samples", "train s20-n4: 4 samples, 3 steps", "eval: 660 answers", "in all: about"]
    {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    assert!(!run.exists(), "a plan starts nothing");
    let out = sweep(&spec, &run).args(["--max-hours", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped before generate gen-s10: --max-hours 0 is spent"));
    assert_eq!(selfspec::runs::state(&run), selfspec::runs::State::Stopped);
    assert!(!run.join("gen-s10/samples.jsonl").exists());
}

/// `repeats: 2`: each point generated and trained twice with other seeds, the report's tuned
/// rows the replicates' mean with their sd, and an interval over examples and replicates.
#[test]
fn replicates_run_each_point_again_with_other_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("axes:\n  seeds: [10, 20]\n  samples: [4, 8]\n", "repeats: 2\n")
        .replace("base: {seeds: 20, samples: 8}", "base: {seeds: 10, samples: 4}");
    assert!(text.contains("repeats: 2"), "{text}");
    std::fs::write(&spec, text).unwrap();
    let run = dir.path().join("run");
    let plan = sweep(&spec, &run).arg("--plan").output().unwrap();
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(
        stdout.contains("(1 points × 2 replicates = 2 runs)") && stdout.contains("generate gen-s10-r1"),
        "{stdout}"
    );
    let out = sweep(&spec, &run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Two generation runs from other seeds (different samples), two adapters.
    let a = std::fs::read_to_string(run.join("gen-s10/samples.jsonl")).unwrap();
    let b = std::fs::read_to_string(run.join("gen-s10-r1/samples.jsonl")).unwrap();
    assert_ne!(a, b);
    assert!(std::fs::read_to_string(run.join("gen-s10-r1/config.yaml")).unwrap().contains("seed: 4"));
    for p in ["s10-n4", "s10-n4-r1"] {
        assert!(run.join(format!("points/{p}/train/adapter/adapter_model.safetensors")).exists(), "{p}");
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    let tuned: Vec<&serde_json::Value> =
        rows.iter().filter(|r| r["model"] == "tuned" && r["dataset"] == "bio-topic").collect();
    assert!(!tuned.is_empty());
    // The tuned score is the mean of the two adapters' own scores in the evaluation's report.
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval/report.json")).unwrap()).unwrap();
    let own =
        |m: &str| eval["cells"].as_array().unwrap().iter().find(|c| c["model"] == m).unwrap()["f1"].as_f64().unwrap();
    for r in tuned {
        assert_eq!(r["replicates"], 2, "{r}");
        let sd = r["replicate_sd"][0].as_f64().unwrap();
        let (x, y) = (own("s10-n4"), own("s10-n4-r1"));
        assert!((r["f1"].as_f64().unwrap() - (x + y) / 2.0).abs() < 1e-9, "{r}");
        assert!((sd - (x - y).abs() / 2f64.sqrt()).abs() < 1e-9, "{r}");
    }
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("Each point ran 2 times"), "{md}");
    // One point: one table per k, not the same point again under a second axis.
    assert!(md.contains("## seeds, 0-shot") && !md.contains("## samples"), "{md}");
}
