//! Falcon (`model_type` `falcon`) as transformers implements it, in its three shapes: the 7B's
//! (multi-query: one key/value head, attention and MLP in parallel on one LayerNorm), the 40B's
//! `new_decoder_architecture` (key/value groups, two LayerNorms in parallel) and Falcon-RW's
//! (ALiBi, every head its own key and value, attention then MLP). LayerNorms carry biases;
//! projections do where `bias` says; the MLP is an ungated GELU.

use super::super::config::{Activation, Alibi, ConfigJson, DecoderSpec, GptFamily, GptParts, Parallel, QkvLayout};
use super::super::error::ModelError;

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    let first = |keys: [&str; 2]| -> Result<usize, ModelError> {
        match cfg.get(keys[0]) {
            Some(_) => cfg.usize(keys[0]),
            None => cfg.usize(keys[1]).map_err(|_| cfg.err(keys[0], "is missing")),
        }
    };
    let hidden = first(["hidden_size", "n_embed"])?;
    let heads = first(["num_attention_heads", "n_head"])?;
    if heads == 0 || hidden % heads != 0 {
        return Err(cfg.err("num_attention_heads", format!("{heads} does not divide hidden_size {hidden}")));
    }
    let num_layers = first(["num_hidden_layers", "n_layer"])?;
    let act = cfg.str_or("activation", "gelu")?;
    if act != "gelu" {
        return Err(cfg.err("activation", format!("\"{act}\" is not supported; Falcon uses gelu")));
    }
    let new_arch = cfg.bool_or("new_decoder_architecture", false)?;
    let multi_query = cfg.bool_or("multi_query", true)?;
    let parallel_attn = cfg.bool_or("parallel_attn", true)?;
    let kv_heads = match (new_arch, multi_query) {
        (true, _) => cfg.usize_or("num_kv_heads", heads)?,
        (false, true) => 1,
        (false, false) => heads,
    };
    if kv_heads == 0 || heads % kv_heads != 0 {
        return Err(cfg.err("num_kv_heads", format!("{kv_heads} must divide num_attention_heads {heads}")));
    }
    let lns = cfg.opt_usize("num_ln_in_parallel_attn")?;
    let parallel = match (new_arch, parallel_attn, lns) {
        (true, false, _) => {
            return Err(cfg.err(
                "parallel_attn",
                "is false with new_decoder_architecture; transformers' Falcon runs that block only in parallel",
            ))
        }
        (true, true, Some(1)) => Parallel::SharedNorm,
        (true, true, None | Some(2)) => Parallel::TwoNorms,
        (false, true, None | Some(1)) => Parallel::SharedNorm,
        (false, false, _) => Parallel::No,
        (_, _, Some(n)) => {
            return Err(cfg.err(
                "num_ln_in_parallel_attn",
                format!("{n} is not supported for this layout; transformers' Falcon takes 1 or 2 (2 only with new_decoder_architecture)"),
            ))
        }
    };
    let alibi = cfg.bool_or("alibi", false)?;
    let bias = cfg.bool_or("bias", false)?;
    let head_dim = hidden / heads;
    Ok(DecoderSpec {
        architecture: "falcon",
        vocab_size: cfg.usize("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: cfg.usize_or("ffn_hidden_size", 4 * hidden)?,
        num_layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: cfg.f64_or("layer_norm_epsilon", 1e-5)?,
        rope: cfg.rope(10_000.0)?,
        max_position_embeddings: cfg.usize_or("max_position_embeddings", 2048)?,
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
        eos_token_ids: match cfg.get("eos_token_id") {
            Some(_) => cfg.token_ids("eos_token_id")?,
            None => vec![11],
        },
        bos_token_id: match cfg.get("bos_token_id") {
            Some(_) => cfg.token_ids("bos_token_id")?.first().copied(),
            None => Some(11),
        },
        gemma: None,
        gpt: Some(GptParts {
            family: GptFamily::Falcon,
            norm_bias: true,
            bias,
            qkv: QkvLayout::Grouped,
            clip_qkv: None,
            parallel,
            alibi: alibi.then_some(Alibi::Falcon),
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
        }),
    })
}
