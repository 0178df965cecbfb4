//! `selfspec serve`: an OpenAI-compatible server on selfspec's engine. `/v1/completions` and
//! `/v1/chat/completions` (streamed or whole, with log-probabilities), `/v1/models` (the base and
//! each adapter by name, all over one loaded base). Requests that arrive together are decoded in
//! one batch; a request arriving while a batch decodes waits for the next one.

mod answer;
mod asked;
pub mod http;
mod server;
mod shared;

pub use server::{serve, Options};
