//! Seed triplets: the paper's (instruction, input context, response) examples written by a
//! domain expert, one YAML file per domain.
//!
//! - [`load`] reads a file and reports every problem at once, each with line and column.
//! - [`validate`] checks an in-memory [`SeedFile`] (the TUI runs it on every keystroke).
//! - [`save`] writes the canonical form atomically; loading and saving again is byte-stable.
//! - [`interchange`] imports Alpaca/BoX JSONL, self-instruct and InstructLab files, exports JSONL.

pub mod command;
mod file;
pub mod interchange;
mod load;
mod problem;
mod save;
pub mod stats;
mod validate;

pub use file::{is_valid_id, PromptOverrides, Seed, SeedFile, Task};
pub use load::{load, load_str, Loaded};
pub use problem::{Problem, Problems};
pub use save::{save, to_yaml};
pub use validate::{validate, Limits};
