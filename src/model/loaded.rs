//! A model in memory: the decoder, its tokenizer and the ids that end generation.

use std::path::PathBuf;

use super::kernels::int8;
use super::network::decoder::Decoder;
use super::text::tokenizer::Tokenizer;

/// A loaded model: the decoder, its tokenizer and the ids that end generation.
pub struct Model {
    pub dir: PathBuf,
    pub decoder: Decoder,
    pub tokenizer: Tokenizer,
    pub eos_token_ids: Vec<u32>,
}

impl Model {
    /// Int8 activations for every GGML-block weight (the projections and a quantized head), or
    /// exact ones again. Returns a note when nothing or not all of it can follow: no such
    /// weight (a dense or GPU model), or a CPU with neither AVX-512 VNNI nor AVX2 (plain loops, slower).
    pub fn set_int8_activations(&mut self, on: bool) -> Option<String> {
        let n = self.decoder.set_int8_activations(on);
        if !on {
            return None;
        }
        if n == 0 {
            return Some(
                "--int8-activations applies to GGML-block weights (a .gguf file's Q4_0…Q6_K) on the CPU \
                 (Q8_0 only with AVX-512 VNNI); this model has none, so its products stay exact"
                    .into(),
            );
        }
        (int8::IntKernel::detect() == int8::IntKernel::Portable).then(|| {
            "this CPU has neither AVX-512 VNNI nor AVX2: the int8 products run in plain loops, slower than the exact ones".into()
        })
    }
}
