//! Loading a decoder: its blocks, embeddings, head, norms and rotary frequencies from a
//! checkpoint [`Source`].

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::{inv_freq, Decoder, Embeddings, Layer, Names, Norm, Qkv, RmsNorm, Source};
use crate::model::config::{DecoderSpec, Parallel, Rope};
use crate::model::error::ModelError;
use crate::model::network::linear::{Base, CpuWeight};

/// The RMSNorm `name`; with `plus_one` (a Gemma checkpoint) its scale is `1 + weight`.
fn norm(w: &dyn Source, name: &str, size: usize, eps: f64, plus_one: bool) -> std::result::Result<RmsNorm, ModelError> {
    let weight = w.tensor(name, &[size], "the config's hidden size")?;
    let weight = if plus_one { weight.affine(1.0, 1.0)? } else { weight };
    Ok(RmsNorm { weight, eps })
}

/// The block norm `prefix` (`prefix.weight`, and `prefix.bias` for a LayerNorm with bias).
fn block_norm(w: &dyn Source, spec: &DecoderSpec, prefix: &str) -> std::result::Result<Norm, ModelError> {
    let (h, eps) = (spec.hidden_size, spec.rms_norm_eps);
    let Some(gpt) = &spec.gpt else {
        let plus_one = spec.gemma.as_ref().is_some_and(|g| g.norm_plus_one);
        return Ok(Norm::Rms(norm(w, &format!("{prefix}.weight"), h, eps, plus_one)?));
    };
    let weight = w.tensor(&format!("{prefix}.weight"), &[h], "the config's hidden size")?;
    let bias = match gpt.norm_bias {
        true => w.tensor(&format!("{prefix}.bias"), &[h], "the config's hidden size")?,
        false => weight.zeros_like()?,
    };
    Ok(Norm::Layer { weight, bias, eps })
}

impl Decoder {
    pub fn load(spec: DecoderSpec, w: &dyn Source) -> std::result::Result<Decoder, ModelError> {
        let s = &spec;
        let (h, hd) = (s.hidden_size, s.head_dim);
        let n = Names::of(s);
        let layers = (0..s.num_layers).map(|i| layer(w, s, i)).collect::<std::result::Result<Vec<_>, _>>()?;
        let vocab = format!("vocab_size {}, hidden_size {h}", s.vocab_size);
        let table = || w.tensor(n.embed, &[s.vocab_size, h], &vocab);
        // Tied embeddings: one matrix is the head and the table. A packed or GGML-block head on
        // the CPU gives the embedding rows itself, so no f32 table is ever loaded for it.
        // An untied checkpoint must carry lm_head.
        let (embed, lm_head) = if s.tie_word_embeddings {
            let head = w.tied_head(n.embed, s.vocab_size, h, &vocab)?;
            let embed = match &head.base {
                Base::Packed(p) => Embeddings::Head(p.clone() as Arc<dyn CpuWeight>),
                Base::QPacked(q) => Embeddings::Head(q.clone() as Arc<dyn CpuWeight>),
                Base::Dense(t) => Embeddings::Table(t.clone()),
                _ => Embeddings::Table(table()?),
            };
            (embed, head)
        } else {
            (Embeddings::Table(table()?), w.linear("lm_head", s.vocab_size, h, false, &vocab)?)
        };
        let norm = block_norm(w, s, n.final_norm)?;
        let freqs = |rope: &Rope| -> Result<Tensor> {
            let mut freqs = inv_freq(rope, hd);
            if let Some(factors) = &s.rope_freq_factors {
                for (f, d) in freqs.iter_mut().zip(factors) {
                    *f /= d;
                }
            }
            Tensor::new(freqs, w.device())
        };
        let inv_freq = freqs(&s.rope)?;
        let inv_freq_local = match &s.gemma {
            Some(g) if g.local_rope != s.rope => Some(freqs(&g.local_rope)?),
            _ => None,
        };
        let attention_scale = match (&s.gemma, &s.gpt) {
            (Some(g), _) => g.attention_scale as f32,
            (_, Some(g)) => g.attention_scale as f32,
            _ => 1.0 / (hd as f32).sqrt(),
        };
        Ok(Decoder {
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            inv_freq_local,
            attention_scale,
            dtype: w.dtype(),
            device: w.device().clone(),
            spec,
        })
    }
}

/// Block `i`'s norms and projections.
fn layer(w: &dyn Source, s: &DecoderSpec, i: usize) -> std::result::Result<Layer, ModelError> {
    let (h, hd) = (s.hidden_size, s.head_dim);
    let attn = format!("hidden_size {h}, {} heads × head_dim {hd}", s.num_heads);
    let kv = format!("hidden_size {h}, {} key/value heads × head_dim {hd}", s.num_kv_heads);
    let mlp = format!("hidden_size {h}, intermediate_size {}", s.intermediate_size);
    let plus_one = s.gemma.as_ref().is_some_and(|g| g.norm_plus_one);
    let norm = |name: &str, size: usize| norm(w, name, size, s.rms_norm_eps, plus_one);
    let gemma = s.gemma.is_some();
    let n = Names::of(s);
    let gpt_bias = s.gpt.as_ref().is_some_and(|g| g.bias);
    let (o_bias, mlp_bias) = (s.o_bias || gpt_bias, s.mlp_bias || gpt_bias);
    let p = format!("{}.{i}", n.layers);
    let input_norm = block_norm(w, s, &format!("{p}.{}", n.input_norm))?;
    let shared = s.gpt.as_ref().is_some_and(|g| g.parallel == Parallel::SharedNorm);
    let mlp_norm = if shared { None } else { Some(block_norm(w, s, &format!("{p}.{}", n.mlp_norm))?) };
    let (attn_out_norm, mlp_out_norm) = if gemma {
        (
            Some(norm(&format!("{p}.post_attention_layernorm.weight"), h)?),
            Some(norm(&format!("{p}.post_feedforward_layernorm.weight"), h)?),
        )
    } else {
        (None, None)
    };
    let qkv = match s.gpt {
        Some(_) => {
            let out = (s.num_heads + 2 * s.num_kv_heads) * hd;
            let why = format!("{attn}, {} key/value heads", s.num_kv_heads);
            Qkv::Fused(w.linear(&format!("{p}.{}", n.q), out, h, gpt_bias, &why)?)
        }
        None => Qkv::Split {
            q: w.linear(&format!("{p}.{}", n.q), s.num_heads * hd, h, s.qkv_bias, &attn)?,
            k: w.linear(&format!("{p}.{}", n.k), s.num_kv_heads * hd, h, s.qkv_bias, &kv)?,
            v: w.linear(&format!("{p}.{}", n.v), s.num_kv_heads * hd, h, s.qkv_bias, &kv)?,
        },
    };
    let gate = match s.gpt {
        Some(_) => None,
        None => Some(w.linear(&format!("{p}.{}", n.gate), s.intermediate_size, h, mlp_bias, &mlp)?),
    };
    Ok(Layer {
        input_norm,
        qkv,
        o: w.linear(&format!("{p}.{}", n.o), h, s.num_heads * hd, o_bias, &attn)?,
        q_norm: match s.qk_norm {
            true => Some(norm(&format!("{p}.self_attn.q_norm.weight"), hd)?),
            false => None,
        },
        k_norm: match s.qk_norm {
            true => Some(norm(&format!("{p}.self_attn.k_norm.weight"), hd)?),
            false => None,
        },
        attn_out_norm,
        mlp_norm,
        mlp_out_norm,
        gate,
        up: w.linear(&format!("{p}.{}", n.up), s.intermediate_size, h, mlp_bias, &mlp)?,
        down: w.linear(&format!("{p}.{}", n.down), h, s.intermediate_size, mlp_bias, &mlp)?,
        sliding: s.sliding_window.is_some() && s.sliding_layers.get(i).copied().unwrap_or(false),
    })
}
