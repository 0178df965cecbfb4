//! Incremental detokenisation: text deltas as tokens arrive, never ending in half a UTF-8
//! character.
//!
//! A token can carry part of a character (byte-level BPE splits an emoji over several tokens)
//! and a token's text can depend on its neighbours (SentencePiece spaces). So each step decodes
//! a short window that starts a little before the new tokens, and emits only what the window
//! adds beyond its old text, holding back while the window ends in U+FFFD.

use crate::model::Tokenizer;

#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// Tokens before this index have been emitted.
    read: usize,
}

impl TextStream {
    pub fn new() -> TextStream {
        TextStream::default()
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Adds a token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32, tokenizer: &Tokenizer) -> anyhow::Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        if after.ends_with('\u{FFFD}') || after.len() <= before.len() {
            return Ok(String::new());
        }
        let delta = match after.strip_prefix(&before) {
            Some(d) => d.to_string(),
            // The window's start changed meaning; fall back to the characters beyond the old text.
            None => after.chars().skip(before.chars().count()).collect(),
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(delta)
    }

    /// Whatever is held back at the end (an incomplete character shows as U+FFFD).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> anyhow::Result<String> {
        if self.read == self.ids.len() {
            return Ok(String::new());
        }
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(after
            .strip_prefix(&before)
            .map(str::to_string)
            .unwrap_or_else(|| after.chars().skip(before.chars().count()).collect()))
    }
}
