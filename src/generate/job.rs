//! One generation job: what `selfspec generate` was asked, written once as the run folder's
//! config.yaml, and what may differ when a run is continued.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::samples::Mode;
use super::settings::Settings;
use crate::backend::Remote;

/// The name the second round's adapter is loaded under.
pub const ADAPTER: &str = "tuned";

/// One generation job: what `selfspec generate` was asked, saved as the run's config.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub seeds: PathBuf,
    pub model: String,
    /// Samples to keep.
    pub n: usize,
    pub mode: Mode,
    pub corpus: Option<PathBuf>,
    pub seed: u64,
    /// Where editable templates are read from (a workspace's prompts/), if anywhere.
    #[serde(default)]
    pub prompts: Option<PathBuf>,
    /// The second round: a LoRA adapter (the tuned model) over `model`.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// Contrastive decoding against the base with this α (needs `adapter`, or a served adapter).
    #[serde(default)]
    pub contrastive: Option<f64>,
    /// The server the run decodes on (none: this process). Its tuned model, for a second round,
    /// is its adapter named [`ADAPTER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Remote>,
    #[serde(default)]
    pub settings: Settings,
}

impl Job {
    /// The tuned model of a second round: its adapter folder, or its name on the server.
    pub fn tuned_model(&self) -> Option<String> {
        let served = self.backend.as_ref().and_then(|b| b.adapters.iter().find(|(n, _)| n == ADAPTER));
        self.adapter.as_ref().map(|p| p.display().to_string()).or_else(|| served.map(|(_, s)| s.clone()))
    }

    /// The parts that must not change when a run is resumed (N, the budget and batch sizes may).
    fn identity(&self) -> Job {
        let mut j = self.clone();
        j.n = 0;
        j.settings.prompt_budget = None;
        j.settings.prompts_per_batch = 0;
        j.settings.responses_per_batch = 0;
        j.settings.kv_cache_mib = 0;
        j.backend = j.backend.map(|b| b.identity());
        j
    }

    /// What differs in the parts that must not change, one line per key.
    pub fn differences(&self, other: &Job) -> Vec<String> {
        crate::runs::differences(&self.identity(), &other.identity())
    }
}
