//! The GPU check's dry run: `scripts/gpu_check.sh --cpu` runs every step of the GPU run (model made
//! with transformers, logits and greedy tokens, speed, eq. 2, QLoRA against PEFT) on a small model
//! with this build, so no line of it meets a GPU untried. It needs Python with torch, transformers
//! and peft (`PYTHON`, else `python3`); without them it is skipped, saying why.

use std::path::Path;
use std::process::Command;

#[test]
fn the_gpu_check_runs_every_step_on_the_cpu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import torch, transformers, peft, tokenizers"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            eprintln!(
                "skipped: {python} lacks torch, transformers or peft ({})",
                why.trim().lines().last().unwrap_or("")
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: no {python} ({e})");
            return;
        }
    }
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(root.join("scripts/gpu_check.sh"))
        .args(["--cpu", "--bin", env!("CARGO_BIN_EXE_selfspec")])
        .env("OUT", out.path().join("out"))
        .env("PYTHON", &python)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "gpu_check.sh --cpu failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let table = std::fs::read_to_string(out.path().join("out/table.md")).unwrap();
    // Every part has its row, and the numerical ones passed against the references.
    for part in [
        "| model |",
        "| logits (f32",
        "| greedy tokens |",
        "| prefill tokens/s",
        "| decode tokens/s, batch 1",
        "| decode tokens/s, batch 4",
        "| eq. 2 step",
        ": losses |",
        ": step time",
        ": peak resident memory",
    ] {
        assert!(table.contains(part), "no row {part:?} in\n{table}");
    }
    for line in table.lines().skip(2) {
        let status = line.trim_end_matches('|').rsplit('|').next().unwrap().trim();
        assert!(status.starts_with("ok"), "a part did not pass: {line}");
    }
    // The logs of each part are kept.
    for log in ["make.log", "reference.log", "ours-train.log", "train-ref.log", "gpu_check.log"] {
        assert!(out.path().join("out").join(log).exists(), "{log} missing");
    }
}
