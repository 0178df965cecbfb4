//! Reading a Hugging Face `config.json` into the one decoder description every architecture
//! maps to ([`DecoderSpec`]), and `generation_config.json`.

use std::path::Path;

use serde_json::Value;

use super::error::ModelError;

/// How rotary position frequencies are computed.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent rescaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// The MLP's gate activation: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): Llama, Mistral, Qwen.
    Silu,
    /// GELU with the tanh approximation (transformers' `gelu_pytorch_tanh`): Gemma.
    GeluTanh,
    /// Exact GELU (erf), in an ungated MLP `down(act(up(x)))`: MPT, Falcon.
    Gelu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// Everything the shared decoder needs to know; each architecture file fills one in.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub architecture: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: Rope,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2).
    pub qkv_bias: bool,
    /// Bias on the output projection and the MLP (some Llama variants' `attention_bias`/`mlp_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub activation: Activation,
    /// RMSNorm over each head of q and k before rotary embedding (Qwen3).
    pub qk_norm: bool,
    /// Each token attends to at most this many previous positions in the layers marked in
    /// `sliding_layers` (Mistral: all of them; Qwen: those from `max_window_layers` on).
    pub sliding_window: Option<usize>,
    pub sliding_layers: Vec<bool>,
    /// Rotate adjacent pairs instead of halves (llama.cpp's layout for Llama-family GGUF files,
    /// whose q/k weights are permuted to match).
    pub rope_interleaved: bool,
    /// Per-frequency divisors from a GGUF `rope_freqs.weight` (llama.cpp's Llama 3.1 scaling).
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Token ids that end generation, from config.json (generation_config.json may override).
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
    /// What the rest of this struct calls Gemma's differences (all off for the other families).
    pub gemma: Option<GemmaParts>,
    /// MPT's and Falcon's GPT-style block (LayerNorm, one fused q/k/v projection, an ungated
    /// MLP, ALiBi or parallel attention); `None` for the Llama-style families.
    pub gpt: Option<GptParts>,
}

/// The GPT-style families, which also name their tensors their own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GptFamily {
    /// `transformer.blocks.N.{norm_1, attn.Wqkv, attn.out_proj, norm_2, ffn.up_proj, ffn.down_proj}`.
    Mpt,
    /// `transformer.h.N.{input_layernorm | ln_attn, self_attention.query_key_value,
    /// self_attention.dense, post_attention_layernorm | ln_mlp, mlp.dense_h_to_4h, mlp.dense_4h_to_h}`.
    Falcon,
}

/// How the fused q/k/v projection's output is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvLayout {
    /// All queries, then all keys, then all values (MPT; llama.cpp's Falcon files).
    Contiguous,
    /// Per key/value head: its queries, then its key, then its value (transformers' Falcon:
    /// the 40B layout, and the 7B's when the one key/value head is the only group, and the
    /// per-head `(q, k, v)` triples when every head is its own group).
    Grouped,
}

/// How attention and the MLP combine in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parallel {
    /// `x + attn(n₁(x))`, then `+ mlp(n₂(·))` (Llama, MPT, Falcon-RW).
    No,
    /// `x + attn(n(x)) + mlp(n(x))` with one norm (Falcon-7B).
    SharedNorm,
    /// `x + attn(n₁(x)) + mlp(n₂(x))` (Falcon-40B's `ln_attn`, `ln_mlp`).
    TwoNorms,
}

/// Attention with linear biases instead of rotary positions, as each family computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alibi {
    /// MPT: slopes `2^-(i·max/n)` over the next power of two `n`, interleaved when the heads are
    /// fewer; the bias is not scaled with the scores.
    Mpt { max_bias: f64 },
    /// Falcon (Bloom's slopes): the bias rounded to bfloat16 as transformers computes it, then
    /// scaled by `head_dim^-1/2`.
    Falcon,
}

/// MPT's and Falcon's departures from the Llama block.
#[derive(Debug, Clone, PartialEq)]
pub struct GptParts {
    pub family: GptFamily,
    /// LayerNorm with a bias (Falcon) or without (MPT). The eps is `rms_norm_eps`.
    pub norm_bias: bool,
    /// Bias on every projection (Falcon's `bias`).
    pub bias: bool,
    pub qkv: QkvLayout,
    /// The fused q/k/v output clamped to `±clip` (MPT's `clip_qkv`).
    pub clip_qkv: Option<f64>,
    pub parallel: Parallel,
    /// `None`: rotary positions from `rope`.
    pub alibi: Option<Alibi>,
    /// The factor on q·k (MPT's `softmax_scale`; `head_dim^-1/2` otherwise).
    pub attention_scale: f64,
}

/// Gemma 3's departures from the Llama block (transformers' `Gemma3TextModel`).
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaParts {
    /// Every norm scales by `1 + weight`; true for a Hugging Face checkpoint (which stores
    /// `weight`), false for a GGUF file (llama.cpp's converter adds the 1 before writing).
    pub norm_plus_one: bool,
    /// Embeddings are multiplied by `√hidden_size` (rounded to the weights' dtype).
    pub embed_scale: f64,
    /// Queries are scaled by `query_pre_attn_scalar^-1/2`, not `head_dim^-1/2`.
    pub attention_scale: f64,
    /// The sliding layers' own rotary settings (`rope_local_base_freq`).
    pub local_rope: Rope,
    /// `tanh(z / cap) · cap` on the final logits, where the config sets it.
    pub final_logit_softcapping: Option<f64>,
}

impl DecoderSpec {
    /// The number of weights: embeddings (and an untied head), attention and MLP projections.
    pub fn parameters(&self) -> u64 {
        let (h, v, i) = (self.hidden_size as u64, self.vocab_size as u64, self.intermediate_size as u64);
        let (q, kv) = ((self.num_heads * self.head_dim) as u64, (self.num_kv_heads * self.head_dim) as u64);
        let embed = v * h * if self.tie_word_embeddings { 1 } else { 2 };
        let mlp = if self.gpt.is_some() { 2 } else { 3 };
        let layer = h * q + 2 * h * kv + q * h + mlp * h * i;
        embed + self.num_layers as u64 * layer
    }
}

/// A view of config.json that says which key is missing or wrong.
pub struct ConfigJson<'a> {
    pub value: &'a Value,
    pub file: &'a Path,
}

impl ConfigJson<'_> {
    pub(super) fn err(&self, key: &str, message: impl Into<String>) -> ModelError {
        ModelError::Config { file: self.file.to_path_buf(), key: key.to_string(), message: message.into() }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn usize(&self, key: &str) -> Result<usize, ModelError> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.err(key, format!("must be a whole number, found {v}"))),
            None => Err(self.err(key, "is missing")),
        }
    }

    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, ModelError> {
        if self.get(key).is_none() {
            return Ok(default);
        }
        self.usize(key)
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        if self.get(key).is_none() {
            return Ok(None);
        }
        self.usize(key).map(Some)
    }

    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        match self.get(key) {
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, format!("must be a number, found {v}"))),
            None => Ok(default),
        }
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ModelError> {
        match self.get(key) {
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("must be true or false, found {v}"))),
            None => Ok(default),
        }
    }

    pub fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str, ModelError> {
        match self.get(key) {
            Some(v) => v.as_str().ok_or_else(|| self.err(key, format!("must be a string, found {v}"))),
            None => Ok(default),
        }
    }

    /// Which layers use the sliding window: `layer_types` when given, else those from
    /// `first_sliding` on.
    pub fn sliding_layers(&self, num_layers: usize, first_sliding: usize) -> Result<Vec<bool>, ModelError> {
        match self.get("layer_types") {
            Some(serde_json::Value::Array(items)) if items.len() == num_layers => items
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => {
                        Err(self
                            .err("layer_types", format!("{t} is neither \"full_attention\" nor \"sliding_attention\"")))
                    }
                })
                .collect(),
            Some(_) => Err(self.err("layer_types", format!("must list one type for each of the {num_layers} layers"))),
            None => Ok((0..num_layers).map(|i| i >= first_sliding).collect()),
        }
    }

    /// A token id or a list of them.
    pub fn token_ids(&self, key: &str) -> Result<Vec<u32>, ModelError> {
        token_ids(self.get(key)).ok_or_else(|| self.err(key, "must be a token id or a list of token ids"))
    }

    /// The activation must be SiLU, the only one these architectures use.
    pub fn require_silu(&self) -> Result<(), ModelError> {
        let act = self.str_or("hidden_act", "silu")?;
        if act != "silu" && act != "swish" {
            return Err(self.err("hidden_act", format!("\"{act}\" is not supported; only silu is")));
        }
        Ok(())
    }

    /// Rotary settings from either the older keys (`rope_theta`, `rope_scaling`) or the newer
    /// `rope_parameters`.
    pub fn rope(&self, default_theta: f64) -> Result<Rope, ModelError> {
        let (params, key) = match (self.get("rope_parameters"), self.get("rope_scaling")) {
            (Some(p), _) => (Some(p), "rope_parameters"),
            (None, Some(s)) => (Some(s), "rope_scaling"),
            (None, None) => (None, ""),
        };
        let mut theta = self.f64_or("rope_theta", default_theta)?;
        let Some(params) = params else { return Ok(Rope { theta, scaling: RopeScaling::None }) };
        if !params.is_object() {
            return Err(self.err(key, "must be an object"));
        }
        if let Some(t) = params.get("rope_theta").and_then(Value::as_f64) {
            theta = t;
        }
        let num = |name: &str| -> Result<f64, ModelError> {
            params
                .get(name)
                .and_then(Value::as_f64)
                .ok_or_else(|| self.err(&format!("{key}.{name}"), "is missing or not a number"))
        };
        let kind = params.get("rope_type").or_else(|| params.get("type")).and_then(Value::as_str).unwrap_or("default");
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: num("factor")? },
            "llama3" => RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            },
            other => {
                return Err(self.err(
                    &format!("{key}.rope_type"),
                    format!("\"{other}\" is not supported; selfspec supports default, linear and llama3"),
                ))
            }
        };
        Ok(Rope { theta, scaling })
    }
}

pub fn token_ids(v: Option<&Value>) -> Option<Vec<u32>> {
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]),
        Some(Value::Array(items)) => items.iter().map(|i| i.as_u64().map(|n| n as u32)).collect(),
        _ => None,
    }
}

/// The parts of generation_config.json selfspec uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Option<Vec<u32>>,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

impl GenerationConfig {
    pub fn load(path: &Path) -> Result<GenerationConfig, ModelError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GenerationConfig::default()),
            Err(e) => return Err(ModelError::Io { file: path.to_path_buf(), source: e }),
        };
        let value: Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Json { file: path.to_path_buf(), source: e })?;
        let bad = |key: &str| ModelError::Config {
            file: path.to_path_buf(),
            key: key.into(),
            message: "must be a token id or a list of token ids".into(),
        };
        let one = |key: &str| -> Result<Option<u32>, ModelError> {
            Ok(token_ids(value.get(key)).ok_or_else(|| bad(key))?.first().copied())
        };
        Ok(GenerationConfig {
            eos_token_ids: match value.get("eos_token_id") {
                None | Some(Value::Null) => None,
                v => Some(token_ids(v).ok_or_else(|| bad("eos_token_id"))?),
            },
            bos_token_id: one("bos_token_id")?,
            pad_token_id: one("pad_token_id")?,
        })
    }
}
