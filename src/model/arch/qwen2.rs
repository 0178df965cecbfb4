//! Qwen2 and Qwen2.5: bias on the q, k and v projections (not on o), often tied embeddings.

use super::super::config::{ConfigJson, DecoderSpec};
use super::super::error::ModelError;

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    let mut spec = super::llama_like::llama_like(cfg, "qwen2", 10_000.0)?;
    spec.qkv_bias = true;
    spec.o_bias = false;
    super::llama_like::qwen_sliding(cfg, &mut spec)?;
    Ok(spec)
}
