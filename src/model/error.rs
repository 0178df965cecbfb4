//! What can go wrong opening a model, each naming the file and the key or tensor.

use std::path::PathBuf;

/// Everything that can go wrong opening a model, each naming the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", file.display())]
    Io { file: PathBuf, source: std::io::Error },
    #[error("{}: not valid JSON: {source}", file.display())]
    Json { file: PathBuf, source: serde_json::Error },
    #[error("{}: {key} {message}", file.display())]
    Config { file: PathBuf, key: String, message: String },
    #[error("{} is missing: {hint}", path.display())]
    MissingFile { path: PathBuf, hint: String },
    #[error("{}: {message}", file.display())]
    Weights { file: PathBuf, message: String },
    #[error("{files}: tensor {tensor} is missing; the checkpoint does not match its config.json (another architecture or size?)")]
    MissingTensor { files: String, tensor: String },
    #[error("{}: tensor {tensor} has shape {found:?}, but config.json ({why}) needs {expected:?}", file.display())]
    Shape { file: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize>, why: String },
    #[error("{}: {message}", file.display())]
    Tokenizer { file: PathBuf, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
