//! A sweep folder's layout. Every path inside a sweep folder is made here, for the sweep that
//! writes them and for the workbench that reads them:
//!
//! ```text
//! SWEEP/config.yaml, events.jsonl        the run protocol's files
//! SWEEP/gen-sS[-rR]/                     a grid sweep's generation run per seed count (replicate)
//! SWEEP/points/P/train.jsonl, train/     a grid point's training data and training run
//! SWEEP/tasks/T.jsonl                    a seeded sweep's examples per task
//! SWEEP/points/P/seed.jsonl, seed/       a seeded point's seed data and seed training run
//! SWEEP/points/P/experts/T/              the expert of task T grown from the seed
//! SWEEP/points/P/merged/, merged-seed/   the experts merged, without and with the seed
//! SWEEP/points/P/lmc-run/, lmc.json      the experts' linear-mode-connectivity stage and result
//! SWEEP/eval/                            the one evaluation run of every adapter
//! SWEEP/index/                           only in sweeps started before corpora were indexed
//!                                        beside themselves: the corpus's index, still used
//! ```

use std::path::{Path, PathBuf};

/// The corpus index of a sweep folder from before corpora were indexed beside themselves.
pub const OLD_INDEX: &str = "index";

/// The folder of point (or replicate) `name`.
pub fn point(sweep: &Path, name: &str) -> PathBuf {
    sweep.join("points").join(name)
}

/// A grid point's training run.
pub fn point_train(sweep: &Path, name: &str) -> PathBuf {
    point(sweep, name).join("train")
}

/// A grid point's training data.
pub fn point_data(sweep: &Path, name: &str) -> PathBuf {
    point(sweep, name).join("train.jsonl")
}

/// The sweep's evaluation run.
pub fn eval(sweep: &Path) -> PathBuf {
    sweep.join("eval")
}

/// The folder of a seeded sweep's per-task examples.
pub fn tasks(sweep: &Path) -> PathBuf {
    sweep.join("tasks")
}

/// The examples of task `task`.
pub fn task_file(sweep: &Path, task: &str) -> PathBuf {
    tasks(sweep).join(format!("{task}.jsonl"))
}

/// The tasks a seeded sweep wrote examples for, sorted (none before it wrote them).
pub fn task_names(sweep: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(tasks(sweep))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".jsonl").map(String::from)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// A seeded point's seed training run.
pub fn seed_run(point: &Path) -> PathBuf {
    point.join("seed")
}

/// A seeded point's seed data.
pub fn seed_data(point: &Path) -> PathBuf {
    point.join("seed.jsonl")
}

/// The training run of task `task`'s expert at a seeded point.
pub fn expert(point: &Path, task: &str) -> PathBuf {
    point.join("experts").join(task)
}

/// The experts merged (without the seed, or with it): adapter folders.
pub fn merged(point: &Path, with_seed: bool) -> PathBuf {
    point.join(if with_seed { "merged-seed" } else { "merged" })
}

/// The folder of the LMC stage (its lock and log).
pub fn lmc_run(point: &Path) -> PathBuf {
    point.join("lmc-run")
}

/// The LMC stage's result.
pub fn lmc_file(point: &Path) -> PathBuf {
    point.join("lmc.json")
}
