//! Gemma 3's text model (`model_type` `gemma3_text`, and the text part of a `gemma3` config):
//! Llama's block with norms that scale by `1 + weight`, a norm after attention and around the
//! MLP, q/k norms, GELU-tanh, embeddings scaled by `√hidden_size`, queries scaled by
//! `query_pre_attn_scalar`, sliding-window layers with their own rotary base, and an optional
//! final soft-cap.

use serde_json::Value;

use super::super::config::{Activation, ConfigJson, DecoderSpec, GemmaParts, Rope, RopeScaling};
use super::super::error::ModelError;

/// transformers' defaults for the two rotary bases.
const GLOBAL_THETA: f64 = 1_000_000.0;
const LOCAL_THETA: f64 = 10_000.0;

pub fn spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    // A multimodal `gemma3` config nests the text model under `text_config`.
    if cfg.str_or("model_type", "")? == "gemma3" {
        let Some(text) = cfg.get("text_config") else {
            return Err(cfg.err("text_config", "is missing; a gemma3 config keeps its text model there"));
        };
        let mut text = text.clone();
        if let Some(map) = text.as_object_mut() {
            map.entry("model_type").or_insert_with(|| Value::from("gemma3_text"));
        }
        return text_spec(&ConfigJson { value: &text, file: cfg.file });
    }
    text_spec(cfg)
}

fn text_spec(cfg: &ConfigJson) -> Result<DecoderSpec, ModelError> {
    let act = cfg.str_or("hidden_activation", cfg.str_or("hidden_act", "gelu_pytorch_tanh")?)?;
    if act != "gelu_pytorch_tanh" && act != "gelu_tanh" {
        return Err(cfg.err("hidden_activation", format!("\"{act}\" is not supported; Gemma 3 uses gelu_pytorch_tanh")));
    }
    if cfg.get("attn_logit_softcapping").is_some() {
        return Err(cfg.err(
            "attn_logit_softcapping",
            "is set; selfspec's attention has no soft-capping (Gemma 2 uses it, Gemma 3 does not)",
        ));
    }
    if cfg.bool_or("use_bidirectional_attention", false)? {
        return Err(cfg.err("use_bidirectional_attention", "is true (an embedding model); selfspec decodes causally"));
    }
    // Gemma's rotary settings come per layer type; `llama_like` reads neither form, so it is
    // handed a config without them and the two are set below.
    let mut plain = cfg.value.clone();
    if let Some(map) = plain.as_object_mut() {
        for key in ["rope_parameters", "rope_scaling", "hidden_act", "hidden_activation"] {
            map.remove(key);
        }
        map.entry("vocab_size").or_insert_with(|| Value::from(262_208));
        map.entry("head_dim").or_insert_with(|| Value::from(256));
        map.entry("eos_token_id").or_insert_with(|| Value::from(1));
        map.entry("bos_token_id").or_insert_with(|| Value::from(2));
        map.entry("tie_word_embeddings").or_insert_with(|| Value::from(true));
    }
    let mut spec =
        super::llama_like::llama_like(&ConfigJson { value: &plain, file: cfg.file }, "gemma3", GLOBAL_THETA)?;
    spec.activation = Activation::GeluTanh;
    spec.qk_norm = true;
    let (global, local) = ropes(cfg)?;
    spec.rope = global;
    let window = cfg.usize_or("sliding_window", 4096)?;
    spec.sliding_window = Some(window);
    let pattern = cfg.usize_or("sliding_window_pattern", cfg.usize_or("_sliding_window_pattern", 6)?)?.max(1);
    spec.sliding_layers = match cfg.get("layer_types") {
        Some(_) => cfg.sliding_layers(spec.num_layers, 0)?,
        None => (0..spec.num_layers).map(|i| (i + 1) % pattern != 0).collect(),
    };
    let scalar = cfg.f64_or("query_pre_attn_scalar", 256.0)?;
    if scalar <= 0.0 {
        return Err(cfg.err("query_pre_attn_scalar", format!("must be positive, found {scalar}")));
    }
    let cap = Some(cfg.f64_or("final_logit_softcapping", 0.0)?).filter(|c| *c > 0.0);
    spec.gemma = Some(GemmaParts {
        norm_plus_one: true,
        embed_scale: (spec.hidden_size as f64).sqrt(),
        attention_scale: scalar.powf(-0.5),
        local_rope: local,
        final_logit_softcapping: cap,
    });
    Ok(spec)
}

/// The full-attention and the sliding layers' rotary settings: `rope_parameters` keyed by
/// layer type (transformers 5), or `rope_theta`, `rope_scaling` (global only) and
/// `rope_local_base_freq` (older configs, as the Hub's files are).
fn ropes(cfg: &ConfigJson) -> Result<(Rope, Rope), ModelError> {
    let mut local = Rope { theta: cfg.f64_or("rope_local_base_freq", LOCAL_THETA)?, scaling: RopeScaling::None };
    // Without `rope_parameters`, the global layers' are the usual keys, which `rope` reads.
    let Some(params) = cfg.get("rope_parameters") else { return Ok((cfg.rope(GLOBAL_THETA)?, local)) };
    let mut global = Rope { theta: cfg.f64_or("rope_theta", GLOBAL_THETA)?, scaling: RopeScaling::None };
    for (kind, rope) in [("full_attention", &mut global), ("sliding_attention", &mut local)] {
        let Some(p) = params.get(kind).filter(|v| !v.is_null()) else { continue };
        let one = serde_json::json!({ "rope_parameters": p });
        *rope = ConfigJson { value: &one, file: cfg.file }.rope(rope.theta).map_err(|e| match e {
            ModelError::Config { file, key, message } => ModelError::Config {
                file,
                key: key.replace("rope_parameters", &format!("rope_parameters.{kind}")),
                message,
            },
            other => other,
        })?;
    }
    Ok((global, local))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec_of(v: serde_json::Value) -> Result<DecoderSpec, ModelError> {
        super::super::spec(&ConfigJson { value: &v, file: Path::new("config.json") })
    }

    fn text() -> serde_json::Value {
        serde_json::json!({"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
            "vocab_size": 100, "sliding_window": 16})
    }

    #[test]
    fn defaults_follow_transformers() {
        let s = spec_of(text()).unwrap();
        assert_eq!(s.sliding_layers, vec![true, true, true, true, true, false]);
        let g = s.gemma.unwrap();
        assert_eq!((s.rope.theta, g.local_rope.theta), (1_000_000.0, 10_000.0));
        assert!((g.attention_scale - 256f64.powf(-0.5)).abs() < 1e-12);
        assert!((g.embed_scale - 8.0).abs() < 1e-12);
        assert!(g.norm_plus_one && s.tie_word_embeddings && s.qk_norm);
        assert_eq!(s.activation, Activation::GeluTanh);
    }

    #[test]
    fn a_multimodal_config_gives_its_text_model() {
        let v = serde_json::json!({"model_type": "gemma3", "text_config": text()});
        assert_eq!(spec_of(v).unwrap().hidden_size, 64);
        let err = spec_of(serde_json::json!({"model_type": "gemma3"})).unwrap_err().to_string();
        assert!(err.contains("text_config is missing"), "{err}");
    }

    #[test]
    fn what_the_decoder_cannot_do_is_refused_by_name() {
        for (key, value, says) in [
            ("attn_logit_softcapping", serde_json::json!(50.0), "attn_logit_softcapping is set"),
            ("use_bidirectional_attention", serde_json::json!(true), "use_bidirectional_attention is true"),
            ("hidden_activation", serde_json::json!("relu"), "\"relu\" is not supported"),
        ] {
            let mut v = text();
            v[key] = value;
            let err = spec_of(v).unwrap_err().to_string();
            assert!(err.starts_with("config.json: ") && err.contains(says), "{err}");
        }
        let mut v = text();
        v["rope_parameters"] = serde_json::json!({"full_attention": {"rope_type": "yarn", "factor": 2.0}});
        let err = spec_of(v).unwrap_err().to_string();
        assert!(err.contains("rope_parameters.full_attention.rope_type"), "{err}");
    }
}
