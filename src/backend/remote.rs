//! An OpenAI-compatible server as a run records it: where it is, what it serves, and how the
//! client talks to it.

use serde::{Deserialize, Serialize};

/// An OpenAI-compatible server as a run records it (never the API key itself: the name of the
/// variable that holds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    /// The API's base URL, `…/v1` (a bare `http://host:port` gets `/v1`).
    pub endpoint: String,
    /// The base model's name on the server.
    pub served_model: String,
    /// (name in selfspec, name on the server) of each adapter the run uses: the tuned model of a
    /// second round, or the adapters an evaluation compares (vLLM serves LoRA adapters by name).
    #[serde(default)]
    pub adapters: Vec<(String, String)>,
    /// The environment variable holding the API key, sent as a bearer token.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Alternatives asked for at each step of a mixture (eq. 2) or contrastive (eq. 3) decoding
    /// through the server: the mixture is exact over the union of every prompt's top N, and
    /// treats every other token as probability 0.
    #[serde(default = "default_top_logprobs")]
    pub top_logprobs: usize,
    /// Seconds one HTTP request may take before it is retried.
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Tries after the first on a dropped connection, a timeout, 429 or 5xx, with backoff.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// The served model's tokenizer (a model folder, org/name or .gguf file): eq. 2 and eq. 3
    /// then step in token ids (prompts as ids, log-probabilities by id through vLLM's
    /// `return_tokens_as_token_ids`), so a chosen token is never tokenized again as text.
    #[serde(default)]
    pub tokenizer: Option<String>,
}

fn default_concurrency() -> usize {
    8
}
fn default_top_logprobs() -> usize {
    20
}
fn default_timeout() -> f64 {
    600.0
}
fn default_retries() -> usize {
    6
}

impl Remote {
    pub fn new(endpoint: &str, served_model: &str) -> Remote {
        Remote {
            endpoint: normalise_endpoint(endpoint),
            served_model: served_model.to_string(),
            adapters: Vec::new(),
            api_key_env: None,
            concurrency: default_concurrency(),
            top_logprobs: default_top_logprobs(),
            timeout_secs: default_timeout(),
            retries: default_retries(),
            tokenizer: None,
        }
    }

    /// The settings that decide what a run produces (what a resumed run must keep): the served
    /// names and N. The endpoint, key, concurrency, timeout and retries may change.
    pub fn identity(&self) -> Remote {
        Remote {
            endpoint: String::new(),
            api_key_env: None,
            concurrency: 0,
            timeout_secs: 0.0,
            retries: 0,
            ..self.clone()
        }
    }

    /// Checks the settings alone (before any connection).
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://"),
            "--endpoint {}: not an http:// or https:// URL",
            self.endpoint
        );
        anyhow::ensure!(!self.served_model.trim().is_empty(), "--served-model names no model");
        use crate::bounds::out_of_range;
        anyhow::ensure!(
            (1..=1024).contains(&self.concurrency),
            "{}",
            out_of_range("--concurrency", self.concurrency, "1 to 1024 requests at once")
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.top_logprobs),
            "{}",
            out_of_range("--top-logprobs", self.top_logprobs, "1 to 1000000")
        );
        anyhow::ensure!(
            self.timeout_secs > 0.0 && self.timeout_secs <= 86_400.0,
            "{}",
            out_of_range("--timeout", self.timeout_secs, "a number of seconds above 0 and at most 86400")
        );
        anyhow::ensure!(self.retries <= 100, "{}", out_of_range("--retries", self.retries, "0 to 100"));
        Ok(())
    }
}

/// `http://host:port` (or with a trailing slash) gets `/v1`; a URL with a path is kept as given.
pub fn normalise_endpoint(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    if after_scheme.contains('/') {
        url.to_string()
    } else {
        format!("{url}/v1")
    }
}

#[cfg(test)]
mod tests {
    use super::normalise_endpoint;

    #[test]
    fn endpoints_get_v1_only_without_a_path() {
        assert_eq!(normalise_endpoint("http://127.0.0.1:8000"), "http://127.0.0.1:8000/v1");
        assert_eq!(normalise_endpoint("http://127.0.0.1:8000/"), "http://127.0.0.1:8000/v1");
        assert_eq!(normalise_endpoint("https://h/v1/"), "https://h/v1");
        assert_eq!(normalise_endpoint("https://h/openai/v1"), "https://h/openai/v1");
    }
}
