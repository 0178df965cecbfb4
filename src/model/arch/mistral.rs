//! Mistral: Llama's layout with grouped-query attention over a sliding window.

use super::super::config::{ConfigJson, DecoderSpec};
use super::super::error::ModelError;

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    let mut spec = super::llama_like::llama_like(cfg, "mistral", 10_000.0)?;
    spec.sliding_window = cfg.opt_usize("sliding_window")?;
    if spec.sliding_window.is_some() {
        spec.sliding_layers = cfg.sliding_layers(spec.num_layers, 0)?;
    }
    // Mistral has no attention bias, whatever the config says.
    spec.qkv_bias = false;
    spec.o_bias = false;
    Ok(spec)
}
