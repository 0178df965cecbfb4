//! Text in and out of token ids: tokenizers (Hugging Face's tokenizer.json, or a GGUF file's
//! vocabulary) and chat templates.

pub mod chat;
pub mod gguf_tokenizer;
pub mod tokenizer;
