//! tokenizer.json through the `tokenizers` crate (the library transformers' fast tokenizers
//! wrap), so ids match `tokenizer(prompt)` exactly.

use std::path::Path;

use super::ModelError;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn load(dir: &Path) -> Result<Tokenizer, ModelError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            let hint = if dir.join("tokenizer.model").exists() {
                "the folder has a sentencepiece tokenizer.model only; save a fast tokenizer with \
                 `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`"
            } else {
                "a model folder needs the tokenizer.json its model was trained with"
            };
            return Err(ModelError::MissingFile { path, hint: hint.into() });
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer { file: path.clone(), message: format!("cannot be read: {e}") })?;
        Ok(Tokenizer { inner })
    }

    /// Ids as transformers' `tokenizer(text)` gives them: special tokens only where the
    /// tokenizer's post-processor adds them.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
    }
}
