//! Getting models onto this machine: the local Hugging Face cache, the hub download (behind
//! the `hub-download` feature) and `selfspec model fetch`.

#[cfg(feature = "hub-download")]
pub mod download;
pub mod fetch;
pub mod hub;
