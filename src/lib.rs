//! selfspec: carve a domain expert out of a general LLM by self-specialization.
//!
//! The engine modules are plain synchronous Rust; only [`tui`] (and `main.rs`) know about the
//! terminal. See ARCHITECTURE.md for the code map and the invariants.

pub mod backend;
pub mod bench;
pub mod bounds;
pub mod config;
pub mod corpus;
pub mod decode;
pub mod eval;
pub mod fsutil;
pub mod generate;
pub mod launch;
pub mod lines;
pub mod metrics;
pub mod model;
pub mod openai;
pub mod parallel;
pub mod plot;
pub mod prompts;
pub mod rng;
pub mod runs;
pub mod seeds;
pub mod serve;
pub mod signals;
pub mod sweep;
pub mod train;
pub mod tui;
pub mod workspace;
pub mod yaml;
