//! LoRA adapters: PEFT's files read and written, attached to the decoder's linear layers, and
//! combined (linear, cat, SVD) as PEFT does.

pub mod adapter;
pub mod combine;
