//! Evaluation. So far the metrics the data-generation filters need.

pub mod metrics;
pub mod porter;
