//! The report of an evaluation run: each (model, dataset, k)'s mean F1 and ROUGE-L with its
//! bootstrap interval, each adapter against the base (and against every other adapter) as a
//! paired comparison — Δ, its interval, the randomisation p, Holm's p across the datasets, the
//! smallest detectable Δ, McNemar on label sets — and the same over the datasets' average;
//! written as JSON, CSV and Markdown. The methods are in `stats`.

mod build;
mod text;

pub use build::*;
pub use text::{csv_delta, csv_number, delta_text, p_text, with_interval};
