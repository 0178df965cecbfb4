//! What the Llama-shaped families share: the config keys they read alike, and Qwen's sliding
//! window.

use super::super::config::{Activation, ConfigJson, DecoderSpec};
use super::super::error::ModelError;

/// Qwen's rule: a sliding window only with `use_sliding_window`, in the layers from
/// `max_window_layers` on (or as `layer_types` says).
pub(super) fn qwen_sliding(cfg: &ConfigJson, spec: &mut DecoderSpec) -> Result<(), ModelError> {
    if cfg.bool_or("use_sliding_window", false)? {
        spec.sliding_window = cfg.opt_usize("sliding_window")?;
        if spec.sliding_window.is_some() {
            let first = cfg.usize_or("max_window_layers", spec.num_layers)?;
            spec.sliding_layers = cfg.sliding_layers(spec.num_layers, first)?;
        }
    }
    Ok(())
}

/// The fields every Llama-like config shares, with Llama's defaults.
pub(super) fn llama_like(
    cfg: &ConfigJson,
    architecture: &'static str,
    default_theta: f64,
) -> Result<DecoderSpec, ModelError> {
    cfg.require_silu()?;
    let hidden_size = cfg.usize("hidden_size")?;
    let num_heads = cfg.usize("num_attention_heads")?;
    if num_heads == 0 || hidden_size % num_heads != 0 && cfg.get("head_dim").is_none() {
        return Err(ModelError::Config {
            file: cfg.file.to_path_buf(),
            key: "num_attention_heads".into(),
            message: format!("{num_heads} does not divide hidden_size {hidden_size}, and no head_dim is given"),
        });
    }
    let num_kv_heads = cfg.usize_or("num_key_value_heads", num_heads)?;
    if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
        return Err(ModelError::Config {
            file: cfg.file.to_path_buf(),
            key: "num_key_value_heads".into(),
            message: format!("{num_kv_heads} must divide num_attention_heads {num_heads}"),
        });
    }
    let attention_bias = cfg.bool_or("attention_bias", false)?;
    Ok(DecoderSpec {
        architecture,
        vocab_size: cfg.usize("vocab_size")?,
        hidden_size,
        intermediate_size: cfg.usize("intermediate_size")?,
        num_layers: cfg.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim: cfg.usize_or("head_dim", hidden_size / num_heads)?,
        rms_norm_eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
        rope: cfg.rope(default_theta)?,
        max_position_embeddings: cfg.usize_or("max_position_embeddings", 4096)?,
        tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
        qkv_bias: attention_bias,
        o_bias: attention_bias,
        mlp_bias: cfg.bool_or("mlp_bias", false)?,
        activation: Activation::Silu,
        qk_norm: false,
        sliding_window: None,
        sliding_layers: vec![false; cfg.usize("num_hidden_layers")?],
        rope_interleaved: false,
        rope_freq_factors: None,
        eos_token_ids: cfg.token_ids("eos_token_id")?,
        bos_token_id: cfg.token_ids("bos_token_id")?.first().copied(),
        gemma: None,
        gpt: None,
    })
}
