//! GGUF files of the supported families, for quantized inference, and writing them.
//!
//! Layout and names follow llama.cpp (what its `convert_hf_to_gguf.py` writes): `token_embd`,
//! `blk.N.attn_q`, …, `output`; metadata under the architecture's prefix (`llama.block_count`,
//! …). Llama-family files (Mistral included, which llama.cpp files as `llama`) store q/k rows
//! permuted for rotary embedding over adjacent pairs, so they run with interleaved rope; Qwen2
//! and Qwen3 files keep Hugging Face's halves layout. On the CPU, projections in the block types
//! real files carry run through selfspec's own kernels ([`super::kernels::qpacked`]); other types, and
//! every type on a GPU, through candle's `QMatMul`. Norms and embeddings are dequantized to f32.
//!
//! The tokenizer is the one the file's metadata describes ([`super::text::gguf_tokenizer`]); a file
//! without one (`selfspec quantize` writes none) takes the tokenizer.json beside it.

mod read;
mod write;

pub use read::{falcon_grouped_rows, load, load_text_side, load_tokenizer, Mode, ARCHITECTURES};
pub use write::{quantize, FileType, QuantType};
