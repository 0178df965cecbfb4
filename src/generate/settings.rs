//! The generation settings: `generation:` in config.yaml, recorded in each run's config.yaml,
//! resolved for a model, checked, and turned into sampling parameters.

use serde::{Deserialize, Serialize};

use super::filters::Filters;
use crate::decode::{Sampling, SamplingParams};
pub use crate::prompts::PromptFormat;

/// How BM25 scores become mixture weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Weighting {
    /// w_j ∝ exp(score_j / temperature): the retriever as a distribution over documents (RAG).
    Softmax { temperature: f64 },
    /// w_j = score_j / Σ scores.
    L1,
}

impl Weighting {
    pub fn weights(&self, scores: &[f32]) -> Vec<f64> {
        match *self {
            Weighting::Softmax { temperature } => {
                let t = temperature.max(1e-6);
                let max = scores.iter().map(|&s| s as f64).fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|&s| ((s as f64 - max) / t).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|x| x / sum).collect()
            }
            Weighting::L1 => {
                let sum: f64 = scores.iter().map(|&s| (s as f64).max(0.0)).sum();
                if sum <= 0.0 {
                    return vec![1.0 / scores.len() as f64; scores.len()];
                }
                scores.iter().map(|&s| (s as f64).max(0.0) / sum).collect()
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Weighting::Softmax { temperature } => format!("softmax of BM25 scores, temperature {temperature}"),
            Weighting::L1 => "BM25 scores over their sum".into(),
        }
    }
}

/// The generation settings (`generation:` in config.yaml; recorded in each run's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Seeds shown as demonstrations in each instruction prompt.
    pub demos: usize,
    /// Tasks each instruction prompt asks for.
    pub tasks_per_prompt: usize,
    /// How prompts reach the model: the paper's plain text, or each prompt as a user message in
    /// the model's chat template. `auto` picks chat when the model has a chat template; a run
    /// records what was picked.
    pub prompt_format: PromptFormat,
    /// Sampling of the task lists; null: chosen by the model's size ([`Settings::resolve`]) and
    /// recorded in the run.
    pub instruction_temperature: Option<f64>,
    pub instruction_top_p: Option<f64>,
    pub instruction_max_new_tokens: usize,
    /// Instruction prompts decoded together.
    pub prompts_per_batch: usize,
    /// Task lists sampled from one prompt (one draw of demonstrations), each with its own seed:
    /// the prompt's tokens are run once for all of them. 1 draws demonstrations for every list,
    /// as the paper did.
    pub lists_per_prompt: usize,
    /// The most task lists a run asks for, even if fewer than N samples were kept (null: 4 for
    /// every sample asked for, and at least 50). Lists are asked for only while the tasks
    /// waiting and the lists decoding, at the yield measured so far, fall short of N.
    pub prompt_budget: Option<usize>,
    /// Responses: greedy when null, else sampled at this temperature.
    pub response_temperature: Option<f64>,
    pub response_top_p: Option<f64>,
    pub response_max_new_tokens: usize,
    /// Samples whose responses are decoded together (each is k rows in marginal mode).
    pub responses_per_batch: usize,
    /// Documents retrieved per response in marginal mode.
    pub k: usize,
    pub weighting: Weighting,
    /// A retrieved document is cut to this many characters in the prompt.
    pub document_max_chars: usize,
    /// And to this many tokens of the model's tokenizer (null: no cap, the paper's setting;
    /// through a server without its tokenizer, 4 characters a token).
    pub document_max_tokens: Option<usize>,
    pub filters: Filters,
    /// MiB the decoding's key/value cache may hold (rows wait, or are set aside and decoded
    /// again, to stay within it), an eighth of it for the prefix cache of recent prompts.
    pub kv_cache_mib: usize,
    /// Activations rounded to int8 for the products with GGML-block weights (integer dot
    /// products, as llama.cpp's Q8 activations): faster prefill, not exact. Off by default.
    pub int8_activations: bool,
    /// The decoding's keys and values in f16 on the CPU (as llama.cpp keeps them): a step reads
    /// half the bytes and the budget holds twice the rows; not exact. f32 keeps them as the
    /// model computes them. Null: f16, resolved when a run starts and recorded; a run recorded
    /// before the setting existed has none and kept f32.
    pub kv_cache_dtype: Option<KvDtype>,
}

/// The type the decoding's key/value cache is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    F16,
    F32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            demos: 3,
            tasks_per_prompt: 20,
            prompt_format: PromptFormat::Auto,
            instruction_temperature: None,
            instruction_top_p: None,
            instruction_max_new_tokens: 2048,
            prompts_per_batch: 8,
            lists_per_prompt: 4,
            prompt_budget: None,
            response_temperature: None,
            response_top_p: None,
            response_max_new_tokens: 512,
            responses_per_batch: 8,
            k: 5,
            weighting: Weighting::Softmax { temperature: 1.0 },
            document_max_chars: 2000,
            document_max_tokens: None,
            filters: Filters::default(),
            kv_cache_mib: 768,
            int8_activations: false,
            kv_cache_dtype: None,
        }
    }
}

impl Settings {
    pub fn budget(&self, n: usize) -> usize {
        self.prompt_budget.unwrap_or_else(|| (4 * n).max(50))
    }

    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::{self, out_of_range};
        for (name, v, max) in [
            ("k", self.k, bounds::MAX_K),
            ("demos", self.demos, bounds::MAX_DEMOS),
            ("tasks_per_prompt", self.tasks_per_prompt, 1000),
            ("instruction_max_new_tokens", self.instruction_max_new_tokens, bounds::MAX_NEW_TOKENS),
            ("response_max_new_tokens", self.response_max_new_tokens, bounds::MAX_NEW_TOKENS),
            ("prompts_per_batch", self.prompts_per_batch, 1024),
            ("lists_per_prompt", self.lists_per_prompt, 64),
            ("responses_per_batch", self.responses_per_batch, 1024),
            ("kv_cache_mib", self.kv_cache_mib, 1 << 20),
        ] {
            bounds::count(v, 1, max).map_err(|r| out_of_range(&format!("generation.{name}"), v, &r))?;
        }
        for (name, t) in [
            ("instruction_temperature", self.instruction_temperature),
            ("response_temperature", self.response_temperature),
        ] {
            if let Some(t) = t {
                bounds::temperature(t).map_err(|r| out_of_range(&format!("generation.{name}"), t, r))?;
            }
        }
        for (name, p) in [("instruction_top_p", self.instruction_top_p), ("response_top_p", self.response_top_p)] {
            if let Some(p) = p {
                bounds::top_p(p).map_err(|r| out_of_range(&format!("generation.{name}"), p, r))?;
            }
        }
        if let Weighting::Softmax { temperature } = self.weighting {
            if temperature <= 0.0 || !temperature.is_finite() {
                return Err("generation.weighting.temperature must be > 0".into());
            }
        }
        Ok(())
    }

    /// The settings a new run records for a model of `parameters` weights with (or without) a
    /// chat template: `auto` and null resolved. The paper sampled its 30B base model's task lists
    /// at temperature 1.0 and top-p 0.98; a model under 1B parameters writes noise at those
    /// (docs/RESULTS.md), so smaller models sample cooler: under 1B 0.7 and 0.9, under 7B 0.9 and
    /// 0.95, the paper's values from 7B up.
    pub fn resolve(&self, parameters: u64, chat_template: bool) -> Settings {
        let mut s = self.clone();
        if s.prompt_format == PromptFormat::Auto {
            s.prompt_format = if chat_template { PromptFormat::Chat } else { PromptFormat::Plain };
        }
        let (t, p) = match parameters {
            n if n < 1_000_000_000 => (0.7, 0.9),
            n if n < 7_000_000_000 => (0.9, 0.95),
            _ => (1.0, 0.98),
        };
        s.instruction_temperature.get_or_insert(t);
        s.instruction_top_p.get_or_insert(p);
        s.kv_cache_dtype.get_or_insert(KvDtype::F16);
        s
    }

    /// Whether decoding keeps its keys and values in f16 (`kv_cache_dtype`; a run recorded
    /// without it kept f32).
    pub fn half_kv(&self) -> bool {
        self.kv_cache_dtype == Some(KvDtype::F16)
    }

    /// The task lists' sampling; a run recorded before these were chosen by size used the
    /// paper's values.
    pub(super) fn instruction_sampling(&self, seed: u64) -> SamplingParams {
        let temperature = self.instruction_temperature.unwrap_or(1.0);
        let sampling = if temperature == 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample { temperature, top_k: None, top_p: Some(self.instruction_top_p.unwrap_or(0.98)) }
        };
        SamplingParams { sampling, seed, repetition_penalty: None }
    }

    pub(crate) fn response_sampling(&self, seed: u64) -> SamplingParams {
        let sampling = match self.response_temperature {
            Some(t) if t > 0.0 => Sampling::Sample { temperature: t, top_k: None, top_p: self.response_top_p },
            _ => Sampling::Greedy,
        };
        SamplingParams { sampling, seed, repetition_penalty: None }
    }
}
