//! Evaluation: datasets, k-shot prompting, metrics identical to the references, runs and reports.

pub mod command;
pub mod data;
pub mod follow;
pub mod import;
pub mod report;
pub mod run;
pub mod stats;
