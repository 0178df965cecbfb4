//! Loading Hugging Face checkpoints into the shared decoder, on CPU or CUDA.
//!
//! A model folder holds config.json, model.safetensors (or shards with
//! model.safetensors.index.json), tokenizer.json and optionally generation_config.json.
//! `--model org/name` is looked up in the local Hugging Face cache ([`hub`]).

pub mod adapter;
pub mod arch;
pub mod chat;
pub mod combine;
pub mod command;
pub mod config;
pub mod cpu_attention;
pub mod cpu_weight;
pub mod decoder;
#[cfg(feature = "hub-download")]
pub mod download;
pub mod dropout;
mod error;
pub mod fetch;
pub mod flash;
pub mod fused;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hub;
pub mod int8;
pub mod kv_cache;
pub mod linear;
mod loaded;
mod open;
pub mod packed;
pub mod panels;
pub mod qpacked;
pub mod source;
pub mod tokenizer;
pub mod vexp;
pub mod weights;

pub use arch::read_spec;
pub use config::{DecoderSpec, GenerationConfig};
pub use decoder::{Decoder, Pass};
pub use error::ModelError;
pub use kv_cache::{Cache, RowKv};
pub use loaded::Model;
pub use open::{default_model, load_text_side, load_tokenizer, resolve_name, Choice, DTypeChoice, DeviceChoice};
pub use tokenizer::Tokenizer;
