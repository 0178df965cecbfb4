//! The Seeded LoRA sweep (`seeded:` in a sweep file): a seed expert trained on a share of the
//! pooled data of several tasks, one expert per task grown from it, and the experts merged —
//! with the seed expert's data share and its starting point as the two axes.
//!
//! The tasks are the evaluation datasets. A task's examples are its dataset's demonstrations
//! (`NAME.train.jsonl`) and the seed file's seeds of the dataset's task (ner, qa, …), each
//! tagged with the dataset's name; the test examples are never trained on. The pool's examples
//! are shuffled once per task with the sweep's seed; a share p takes the first ⌈p·n⌉ (at least
//! one) of each task's, so smaller shares are subsets of larger ones and every task is present.
//!
//! Per point (share, init): `seed/` trains on the share from `init`; `experts/TASK/` trains on
//! all of TASK's examples from the seed expert's A and B; `merged/` is the experts' equal-weight
//! merge and `merged-seed/` the same with the seed expert as one more member; `lmc.json` holds the
//! loss along the line between every pair of experts on the union of their two tasks' data. The
//! one `eval/` run scores the base and every point's adapters on every task's dataset.
//!
//! Folder: `tasks/TASK.jsonl`, `points/POINT/{seed.jsonl, seed/, experts/TASK/, merged/,
//! merged-seed/, lmc.json}`, `eval/`, `report.json`, `report.md`, `plots/`.

mod report;
mod run;

pub use crate::sweep::spec::{SeedPoint, Seeded};
pub use report::Pair;
pub(super) use run::{plan, run, stage, tasks, Tasks};
