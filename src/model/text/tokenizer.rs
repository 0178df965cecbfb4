//! The model's tokenizer through the `tokenizers` crate (the library transformers' fast
//! tokenizers wrap), so ids match `tokenizer(prompt)` exactly: from a folder's tokenizer.json, or
//! built from a GGUF file's metadata ([`super::gguf_tokenizer`]). Its chat template, if the model
//! has one, renders conversations ([`super::chat`]).

use std::path::Path;

use super::chat::{ChatTemplate, Message};
use super::gguf_tokenizer::GgufTokenizer;
use crate::model::error::ModelError;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
}

impl Tokenizer {
    /// A folder's tokenizer.json, and its chat template (chat_template.jinja or
    /// tokenizer_config.json) if it has one.
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
        let chat = super::chat::template_in_folder(dir)
            .map_err(|e| ModelError::Tokenizer { file: dir.to_path_buf(), message: e.to_string() })?
            .map(|(source, origin)| ChatTemplate {
                source,
                special: super::chat::special_tokens_in_folder(dir),
                origin,
            });
        Ok(Tokenizer { inner, chat })
    }

    /// The tokenizer a GGUF file's metadata describes.
    pub fn from_gguf(t: GgufTokenizer, file: &Path) -> Result<Tokenizer, ModelError> {
        let text = t.json.to_string();
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| ModelError::Tokenizer {
            file: file.to_path_buf(),
            message: format!("the tokenizer in its metadata cannot be built: {e}"),
        })?;
        let chat = t.chat_template.map(|source| ChatTemplate {
            source,
            special: t.special,
            origin: format!("{}: tokenizer.chat_template", file.display()),
        });
        Ok(Tokenizer { inner, chat })
    }

    /// Ids as transformers' `tokenizer(text)` gives them: special tokens only where the
    /// tokenizer's post-processor adds them.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of `text` with nothing added (`tokenizer(text, add_special_tokens=False)`): how
    /// transformers tokenizes a rendered chat template.
    pub fn encode_plain(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))
    }

    /// Whether the model has a chat template (an instruct model).
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// `messages` rendered with the chat template (`apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=...)`).
    pub fn apply_chat_template(&self, messages: &[Message], add_generation_prompt: bool) -> anyhow::Result<String> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "this model has no chat template (no tokenizer.chat_template in the GGUF file, no chat_template.jinja or tokenizer_config.json chat_template in the folder)"
            )
        })?;
        chat.render(messages, add_generation_prompt)
    }

    /// Ids of `messages` with the assistant's turn opened, as `apply_chat_template(messages,
    /// add_generation_prompt=True, tokenize=True)` gives them: the rendered text, nothing added.
    pub fn encode_chat(&self, messages: &[Message]) -> anyhow::Result<Vec<u32>> {
        self.encode_plain(&self.apply_chat_template(messages, true)?)
    }
}
