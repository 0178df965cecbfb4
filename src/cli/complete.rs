//! `selfspec complete`: one prompt decoded, and the KV cache's storage.

use clap::Args;

use super::model::{Defaults, ModelArgs};

#[derive(Args)]
pub struct CompleteArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A LoRA adapter (PEFT format) to load over the base, as DIR or NAME=DIR; repeatable: all
    /// are loaded once and --use picks the one applied (default: the last).
    #[arg(long, value_name = "[NAME=]DIR")]
    pub adapter: Vec<String>,
    /// The adapter to apply (its NAME, or its folder's name); `none` for the base alone.
    #[arg(long = "use", value_name = "NAME")]
    pub use_adapter: Option<String>,
    /// The text to continue, tokenized as transformers' `tokenizer(prompt)` does.
    #[arg(long)]
    pub prompt: String,
    /// Send the prompt as a user message through the model's chat template (with the
    /// assistant's turn opened), as `apply_chat_template(..., add_generation_prompt=True)` does.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[arg(long, default_value_t = 64, value_parser = selfspec::bounds::flag::new_tokens)]
    pub max_new_tokens: usize,
    /// Always take the most likely token (the default unless --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub greedy: bool,
    /// Sample with this temperature (0 to 100; 0 is greedy).
    #[arg(long, value_parser = selfspec::bounds::flag::temperature)]
    pub temperature: Option<f64>,
    /// Sample from the smallest set of tokens whose probability reaches P (above 0, at most 1).
    #[arg(long, requires = "temperature", value_parser = selfspec::bounds::flag::top_p)]
    pub top_p: Option<f64>,
    /// Sample from the K most likely tokens (at least 1).
    #[arg(long, requires = "temperature", value_parser = selfspec::bounds::flag::top_k)]
    pub top_k: Option<usize>,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Penalise tokens already in the text (transformers' repetition_penalty; above 0, at most
    /// 100).
    #[arg(long, value_parser = selfspec::bounds::flag::repetition_penalty)]
    pub repetition_penalty: Option<f32>,
    /// Stop when the text contains this (repeatable); the text ends before it.
    #[arg(long)]
    pub stop: Vec<String>,
    /// The key/value cache's type: f32 (exact), or f16 as generate keeps it by default (and as
    /// llama.cpp does).
    #[arg(long, value_enum, default_value_t = KvCache::F32)]
    pub kv_cache: KvCache,
    /// Print one JSON object: prompt_ids, ids, text, top5 (logits at the last prompt position).
    #[arg(long)]
    pub json: bool,
}

impl CompleteArgs {
    /// The engine's options for these flags.
    pub fn options(self, defaults: &Defaults) -> anyhow::Result<selfspec::generate::command::CompleteOptions> {
        use selfspec::decode;
        let sampling = match self.temperature {
            Some(_) if self.greedy => decode::Sampling::Greedy,
            t => selfspec::generate::command::sampling(t, self.top_k, self.top_p),
        };
        Ok(selfspec::generate::command::CompleteOptions {
            model: self.model.choice(defaults)?,
            adapters: self.adapter.iter().map(|s| selfspec::model::adapters::adapter::Spec::parse(s)).collect(),
            use_adapter: self.use_adapter,
            prompt: self.prompt,
            chat: self.chat,
            system: self.system,
            max_new_tokens: self.max_new_tokens,
            sampling: decode::SamplingParams { sampling, seed: self.seed, repetition_penalty: self.repetition_penalty },
            stop: self.stop,
            half_kv: self.kv_cache.half(),
            json: self.json,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCache {
    F16,
    F32,
}

impl KvCache {
    /// Whether keys and values are kept in f16.
    pub fn half(self) -> bool {
        self == KvCache::F16
    }
}
