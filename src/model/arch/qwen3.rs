//! Qwen3: RMSNorm on each head of q and k before rotary embedding, and a head_dim that need
//! not equal hidden_size / num_attention_heads.

use super::super::config::{ConfigJson, DecoderSpec};
use super::super::error::ModelError;

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    let mut spec = super::llama_like::llama_like(cfg, "qwen3", 10_000.0)?;
    spec.qk_norm = true;
    // `attention_bias` applies to q, k, v and o alike in Qwen3.
    super::llama_like::qwen_sliding(cfg, &mut spec)?;
    Ok(spec)
}
