//! Llama 2 and 3 (and 3.1's `llama3` rope scaling): the reference layout the others vary.

use super::super::config::{ConfigJson, DecoderSpec};
use super::super::error::ModelError;

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    super::llama_like::llama_like(cfg, "llama", 10_000.0)
}
