//! Where a decoder's tensors come from ([`Source`]: safetensors or a GGUF file) and what each
//! family names them ([`Names`]).

use candle_core::{DType, Device, Tensor};

use super::linear::Linear;
use super::weights::Weights;
use crate::model::config::{DecoderSpec, GptFamily, Parallel};
use crate::model::error::ModelError;

/// Where a decoder's tensors come from, addressed by their Hugging Face names: safetensors
/// ([`Weights`]) or a GGUF file ([`crate::model::gguf`]), which maps the names to llama.cpp's.
pub trait Source {
    fn device(&self) -> &Device;
    /// The type activations (and dense tensors) use.
    fn dtype(&self) -> DType;
    /// A dense tensor of `shape`; `why` says where the expected shape comes from.
    fn tensor(&self, name: &str, shape: &[usize], why: &str) -> std::result::Result<Tensor, ModelError>;
    /// The projection `name` (`name.weight`, `[out, in]`, and `name.bias` with `bias`).
    fn linear(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
        why: &str,
    ) -> std::result::Result<Linear, ModelError> {
        let weight = self.tensor(&format!("{name}.weight"), &[out, inp], why)?;
        let bias = if bias { Some(self.tensor(&format!("{name}.bias"), &[out], why)?) } else { None };
        Ok(Linear::dense(weight, bias)?)
    }
    /// The LM head when it is tied to the embeddings `name` `[vocab, hidden]`.
    fn tied_head(&self, name: &str, vocab: usize, hidden: usize, why: &str) -> std::result::Result<Linear, ModelError> {
        Ok(Linear::dense(self.tensor(name, &[vocab, hidden], why)?, None)?)
    }
}

impl Source for Weights {
    fn device(&self) -> &Device {
        Weights::device(self)
    }

    fn dtype(&self) -> DType {
        Weights::dtype(self)
    }

    fn tensor(&self, name: &str, shape: &[usize], why: &str) -> std::result::Result<Tensor, ModelError> {
        self.get(name, shape, why)
    }
}

/// Where each family keeps its tensors (Hugging Face names; a GGUF source maps them to
/// llama.cpp's). A fused q/k/v projection is named by `q`.
pub struct Names {
    pub embed: &'static str,
    pub final_norm: &'static str,
    pub layers: &'static str,
    pub input_norm: &'static str,
    pub mlp_norm: &'static str,
    pub q: &'static str,
    pub k: &'static str,
    pub v: &'static str,
    pub o: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

impl Names {
    pub fn of(spec: &DecoderSpec) -> Names {
        let llama = Names {
            embed: "model.embed_tokens.weight",
            final_norm: "model.norm",
            layers: "model.layers",
            input_norm: "input_layernorm",
            mlp_norm: if spec.gemma.is_some() { "pre_feedforward_layernorm" } else { "post_attention_layernorm" },
            q: "self_attn.q_proj",
            k: "self_attn.k_proj",
            v: "self_attn.v_proj",
            o: "self_attn.o_proj",
            gate: "mlp.gate_proj",
            up: "mlp.up_proj",
            down: "mlp.down_proj",
        };
        match spec.gpt.as_ref().map(|g| (g.family, g.parallel)) {
            None => llama,
            Some((GptFamily::Mpt, _)) => Names {
                embed: "transformer.wte.weight",
                final_norm: "transformer.norm_f",
                layers: "transformer.blocks",
                input_norm: "norm_1",
                mlp_norm: "norm_2",
                q: "attn.Wqkv",
                k: "",
                v: "",
                o: "attn.out_proj",
                gate: "",
                up: "ffn.up_proj",
                down: "ffn.down_proj",
            },
            Some((GptFamily::Falcon, parallel)) => Names {
                embed: "transformer.word_embeddings.weight",
                final_norm: "transformer.ln_f",
                layers: "transformer.h",
                input_norm: if parallel == Parallel::TwoNorms { "ln_attn" } else { "input_layernorm" },
                mlp_norm: if parallel == Parallel::TwoNorms { "ln_mlp" } else { "post_attention_layernorm" },
                q: "self_attention.query_key_value",
                k: "",
                v: "",
                o: "self_attention.dense",
                gate: "",
                up: "mlp.dense_h_to_4h",
                down: "mlp.dense_4h_to_h",
            },
        }
    }
}
