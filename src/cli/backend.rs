//! Where decoding happens: this process or an OpenAI-compatible server.

use clap::{Args, ValueEnum};

use super::model::{Defaults, ModelArgs};

/// Where decoding runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// This process (--model).
    #[default]
    Local,
    /// An OpenAI-compatible server (vLLM, llama.cpp, TGI, `selfspec serve`).
    Openai,
}

#[derive(Args)]
pub struct BackendArgs {
    /// Decode here (local) or on an OpenAI-compatible server (openai: --endpoint, --served-model).
    #[arg(long, value_enum, default_value_t)]
    pub backend: BackendKind,
    /// The server's API URL (`http://host:port` gets `/v1`).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The base model's name on the server, as its /v1/models lists it.
    #[arg(long, value_name = "NAME")]
    pub served_model: Option<String>,
    /// A LoRA adapter the server serves: for generate, the tuned model of a second round (NAME);
    /// for eval, an adapter compared with the base (NAME or REPORT_NAME=NAME; repeatable).
    #[arg(long, value_name = "[NAME=]SERVED")]
    pub served_adapter: Vec<String>,
    /// The environment variable holding the server's API key (sent as a bearer token; the run
    /// records the variable's name, never the key).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Requests in flight at once on the server.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Alternatives the server reports per step when documents are mixed (eq. 2) or decoding is
    /// contrastive (eq. 3); tokens outside every prompt's top N count as probability 0.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top_logprobs: usize,
    /// Seconds one request may take before it is tried again.
    #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
    pub timeout: f64,
    /// Tries after the first on a dropped connection, a timeout, 429 or 5xx (backoff 0.5 s
    /// doubling to 8 s).
    #[arg(long, default_value_t = 6)]
    pub retries: usize,
    /// The served model's tokenizer (a model folder, org/name or .gguf file): eq. 2 and eq. 3
    /// step in token ids instead of text (vLLM, selfspec serve; not llama.cpp's server).
    #[arg(long, value_name = "MODEL")]
    pub tokenizer: Option<String>,
}

impl BackendArgs {
    /// The backend of a generation: its one tuned model, if served, under the run's adapter name.
    pub fn for_generation(&self, model: &ModelArgs, defaults: &Defaults) -> anyhow::Result<selfspec::backend::Backend> {
        anyhow::ensure!(
            self.served_adapter.len() <= 1 && self.served_adapter.iter().all(|s| !s.contains('=')),
            "--served-adapter: a generation runs one tuned model; name it once, as the server does"
        );
        self.backend(model, defaults, |_| selfspec::generate::pipeline::ADAPTER.to_string())
    }

    /// The backend these flags name, with `model` for the local one; `adapter_name` names a served
    /// adapter given without `NAME=`.
    pub fn backend(
        &self,
        model: &ModelArgs,
        defaults: &Defaults,
        adapter_name: impl Fn(&str) -> String,
    ) -> anyhow::Result<selfspec::backend::Backend> {
        use selfspec::backend::{Backend, Remote};
        if self.backend == BackendKind::Local {
            for (set, flag) in [
                (self.endpoint.is_some(), "--endpoint"),
                (self.served_model.is_some(), "--served-model"),
                (!self.served_adapter.is_empty(), "--served-adapter"),
                (self.api_key_env.is_some(), "--api-key-env"),
                (self.tokenizer.is_some(), "--tokenizer"),
            ] {
                anyhow::ensure!(!set, "{flag} names a server: add --backend openai");
            }
            return Ok(Backend::Local(model.choice(defaults)?));
        }
        anyhow::ensure!(
            model.model.is_none(),
            "--model loads a model here; with --backend openai name the served one with --served-model"
        );
        let endpoint =
            self.endpoint.as_deref().ok_or_else(|| anyhow::anyhow!("--backend openai needs --endpoint URL"))?;
        let served = self.served_model.as_deref().ok_or_else(|| {
            anyhow::anyhow!("--backend openai needs --served-model NAME (the server's /v1/models lists them)")
        })?;
        let mut remote = Remote::new(endpoint, served);
        remote.api_key_env = self.api_key_env.clone();
        remote.concurrency = self.concurrency;
        remote.top_logprobs = self.top_logprobs;
        remote.timeout_secs = self.timeout;
        remote.retries = self.retries;
        remote.tokenizer = self.tokenizer.clone();
        for a in &self.served_adapter {
            let (name, served) = match a.split_once('=') {
                Some((n, s)) => (n.to_string(), s.to_string()),
                None => (adapter_name(a), a.clone()),
            };
            anyhow::ensure!(
                !name.is_empty() && !served.is_empty(),
                "--served-adapter {a}: give NAME or REPORT_NAME=NAME"
            );
            remote.adapters.push((name, served));
        }
        remote.check()?;
        Ok(Backend::Remote(remote))
    }
}
