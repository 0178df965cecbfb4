//! The network itself: the decoder (every architecture's layers as one parameterised stack),
//! its KV cache, linear layers (dense, packed, quantized, LoRA), and where weights come from
//! (safetensors and GGUF tensors by name).

pub mod decoder;
pub mod kv_cache;
pub mod linear;
pub mod source;
pub mod weights;
