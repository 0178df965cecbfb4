//! MPT (`model_type` `mpt`) as transformers implements it: LayerNorms without bias, one fused
//! `Wqkv` projection (optionally clamped), ALiBi instead of rotary positions, an ungated GELU MLP
//! four times the width, and the head tied to the embeddings. transformers reads only some of
//! `attn_config`; the settings it would silently ignore are refused here rather than computed
//! differently from it.

use super::super::config::{Activation, Alibi, ConfigJson, DecoderSpec, GptFamily, GptParts, Parallel, QkvLayout};
use super::super::config::{Rope, RopeScaling};
use super::super::error::ModelError;

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    let hidden = cfg.usize("d_model")?;
    let heads = cfg.usize("n_heads")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(cfg.err("n_heads", format!("{heads} does not divide d_model {hidden}")));
    }
    let num_layers = cfg.usize("n_layers")?;
    let expansion = cfg.usize_or("expansion_ratio", 4)?;
    if expansion != 4 {
        return Err(
            cfg.err("expansion_ratio", format!("is {expansion}; transformers' MPT builds its MLP 4 × d_model wide"))
        );
    }
    let empty = serde_json::Value::Object(Default::default());
    let attn = ConfigJson { value: cfg.get("attn_config").unwrap_or(&empty), file: cfg.file };
    let refuse = |key: &str, why: &str| Err(attn.err(&format!("attn_config.{key}"), why.to_string()));
    if !attn.bool_or("alibi", true)? {
        return refuse("alibi", "is false; transformers' MPT always uses ALiBi (and has no learned positions)");
    }
    if attn.f64_or("alibi_bias_max", 8.0)? != 8.0 {
        return refuse("alibi_bias_max", "is not 8; transformers builds MPT's ALiBi slopes with 8 whatever it says");
    }
    if attn.bool_or("qk_ln", false)? {
        return refuse("qk_ln", "is true; transformers' MPT has no q/k LayerNorm");
    }
    if attn.bool_or("prefix_lm", false)? || attn.bool_or("attn_uses_sequence_id", false)? {
        return refuse("prefix_lm", "prefix-LM and sequence-id attention are not supported; selfspec decodes causally");
    }
    let attn_type = attn.str_or("attn_type", "multihead_attention")?;
    if attn_type != "multihead_attention" {
        return refuse("attn_type", "is not multihead_attention, the only kind transformers' MPT implements");
    }
    let clip = attn.f64_or("clip_qkv", 0.0)?;
    let head_dim = hidden / heads;
    let scale = attn.f64_or("softmax_scale", 1.0 / (head_dim as f64).sqrt())?;
    Ok(DecoderSpec {
        architecture: "mpt",
        vocab_size: cfg.usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: 4 * hidden,
        num_layers,
        num_heads: heads,
        num_kv_heads: heads,
        head_dim,
        rms_norm_eps: cfg.f64_or("layer_norm_epsilon", 1e-5)?,
        rope: Rope { theta: 10_000.0, scaling: RopeScaling::None },
        max_position_embeddings: cfg.usize_or("max_seq_len", 2048)?,
        tie_word_embeddings: cfg.bool_or("tie_word_embeddings", true)?,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        activation: Activation::Gelu,
        qk_norm: false,
        sliding_window: None,
        sliding_layers: vec![false; num_layers],
        rope_interleaved: false,
        rope_freq_factors: None,
        eos_token_ids: cfg.token_ids("eos_token_id")?,
        bos_token_id: cfg.token_ids("bos_token_id")?.first().copied(),
        gemma: None,
        gpt: Some(GptParts {
            family: GptFamily::Mpt,
            norm_bias: false,
            bias: false,
            qkv: QkvLayout::Contiguous,
            clip_qkv: Some(clip).filter(|c| *c > 0.0),
            parallel: Parallel::No,
            alibi: Some(Alibi::Mpt { max_bias: 8.0 }),
            attention_scale: scale,
        }),
    })
}
