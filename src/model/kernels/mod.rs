//! The CPU's compute kernels: packed and quantized matrix products (AVX-512, AVX2, portable),
//! int8 activations, attention for decoding and flash-style attention for training, fused ops
//! with their backward, the vectorised exp, and the weight trait they serve.

pub mod cpu_attention;
pub mod cpu_weight;
pub mod dropout;
pub mod flash;
pub mod fused;
pub mod int8;
pub mod packed;
pub mod panels;
pub mod qpacked;
pub mod vexp;
