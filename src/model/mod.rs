//! Loading Hugging Face checkpoints into the shared decoder, on CPU or CUDA.
//!
//! A model folder holds config.json, model.safetensors (or shards with
//! model.safetensors.index.json), tokenizer.json and optionally generation_config.json.
//! `--model org/name` is looked up in the local Hugging Face cache ([`fetching::hub`]).

pub mod adapters;
pub mod arch;
pub mod command;
pub mod config;
mod error;
pub mod fetching;
pub mod gguf;
pub mod kernels;
mod loaded;
pub mod network;
mod open;
pub mod text;

pub use arch::read_spec;
pub use config::{DecoderSpec, GenerationConfig};
pub use error::ModelError;
pub use loaded::Model;
pub use network::decoder::{Decoder, Pass};
pub use network::kv_cache::{Cache, RowKv};
pub use open::{default_model, load_text_side, load_tokenizer, resolve_name, Choice, DTypeChoice, DeviceChoice};
pub use text::tokenizer::Tokenizer;
