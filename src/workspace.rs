//! Where selfspec keeps things: the user's config, data and cache folders (from `directories`),
//! and workspaces — a folder holding seeds, corpora, samples and runs.
//!
//! ```text
//! <workspace>/
//!   seeds/     one YAML seed file per domain
//!   corpora/   unlabeled domain documents (<domain>.corpus.jsonl)
//!   samples/   generated samples
//!   runs/      one folder per run: config, events.jsonl, outputs
//!   prompts/   the prompt templates, editable (copied from assets/prompts/ when missing)
//!   eval/      evaluation sets, one folder of datasets per domain (the samples when missing)
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use directories::ProjectDirs;

use crate::config::Config;

/// The sample seeds and corpora shipped inside the binary, copied into every new workspace.
pub const SAMPLES: [(&str, &str); 6] = [
    ("seeds/biomedical.yaml", include_str!("../sample-seeds/biomedical.yaml")),
    ("seeds/finance.yaml", include_str!("../sample-seeds/finance.yaml")),
    ("seeds/sports.yaml", include_str!("../sample-seeds/sports.yaml")),
    ("corpora/biomedical.corpus.jsonl", include_str!("../sample-seeds/biomedical.corpus.jsonl")),
    ("corpora/finance.corpus.jsonl", include_str!("../sample-seeds/finance.corpus.jsonl")),
    ("corpora/sports.corpus.jsonl", include_str!("../sample-seeds/sports.corpus.jsonl")),
];

/// The sample evaluation sets, copied into a workspace's eval/ folder when it has none.
pub const EVAL_SAMPLES: [(&str, &str); 20] = [
    ("biomedical/bio-ddi.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-ddi.jsonl")),
    ("biomedical/bio-ddi.train.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-ddi.train.jsonl")),
    ("biomedical/bio-ner.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-ner.jsonl")),
    ("biomedical/bio-ner.train.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-ner.train.jsonl")),
    ("biomedical/bio-qa.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-qa.jsonl")),
    ("biomedical/bio-qa.train.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-qa.train.jsonl")),
    ("biomedical/bio-sentiment.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-sentiment.jsonl")),
    ("biomedical/bio-sentiment.train.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-sentiment.train.jsonl")),
    ("biomedical/bio-topic.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-topic.jsonl")),
    ("biomedical/bio-topic.train.jsonl", include_str!("../sample-seeds/eval/biomedical/bio-topic.train.jsonl")),
    ("finance/fin-kpi.jsonl", include_str!("../sample-seeds/eval/finance/fin-kpi.jsonl")),
    ("finance/fin-kpi.train.jsonl", include_str!("../sample-seeds/eval/finance/fin-kpi.train.jsonl")),
    ("finance/fin-ner.jsonl", include_str!("../sample-seeds/eval/finance/fin-ner.jsonl")),
    ("finance/fin-ner.train.jsonl", include_str!("../sample-seeds/eval/finance/fin-ner.train.jsonl")),
    ("finance/fin-qa.jsonl", include_str!("../sample-seeds/eval/finance/fin-qa.jsonl")),
    ("finance/fin-qa.train.jsonl", include_str!("../sample-seeds/eval/finance/fin-qa.train.jsonl")),
    ("finance/fin-sentiment.jsonl", include_str!("../sample-seeds/eval/finance/fin-sentiment.jsonl")),
    ("finance/fin-sentiment.train.jsonl", include_str!("../sample-seeds/eval/finance/fin-sentiment.train.jsonl")),
    ("finance/fin-topic.jsonl", include_str!("../sample-seeds/eval/finance/fin-topic.jsonl")),
    ("finance/fin-topic.train.jsonl", include_str!("../sample-seeds/eval/finance/fin-topic.train.jsonl")),
];

const FOLDERS: [&str; 4] = ["seeds", "corpora", "samples", "runs"];

/// The per-user folders. On Linux they follow XDG: `$XDG_CONFIG_HOME/selfspec` (else
/// ~/.config/selfspec), `$XDG_DATA_HOME/selfspec`, `$XDG_CACHE_HOME/selfspec`.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub config: PathBuf,
    pub data: PathBuf,
    pub cache: PathBuf,
}

impl Dirs {
    pub fn new() -> anyhow::Result<Dirs> {
        let p = ProjectDirs::from("", "", "selfspec")
            .context("cannot find a home folder for selfspec's files; set HOME, or pass --config and --workspace")?;
        Ok(Dirs { config: p.config_dir().into(), data: p.data_dir().into(), cache: p.cache_dir().into() })
    }

    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.yaml")
    }

    pub fn default_workspace(&self) -> PathBuf {
        self.data.join("workspace")
    }

    /// The workspace to open: `--workspace`, else the config's, else the default.
    pub fn workspace(&self, flag: Option<&Path>, config: &Config) -> PathBuf {
        flag.map(Path::to_path_buf).or_else(|| config.workspace.clone()).unwrap_or_else(|| self.default_workspace())
    }
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
}

/// What opening a workspace did to it.
#[derive(Debug, Default)]
pub struct Opened {
    pub created: bool,
    /// Sample files copied in (relative to the workspace).
    pub copied: Vec<&'static str>,
}

impl Workspace {
    /// Opens `root`, creating it with the sample seeds and corpora when it does not exist yet (or
    /// has no seeds/ folder). A file already there is never overwritten.
    pub fn open(root: &Path) -> anyhow::Result<(Workspace, Opened)> {
        let ws = Workspace { root: root.to_path_buf() };
        let mut opened = Opened::default();
        if root.exists() && !root.is_dir() {
            anyhow::bail!("{} is a file, not a workspace folder; pass --workspace with a folder", root.display());
        }
        let fresh = !ws.seeds_dir().exists();
        let prompts_fresh = !ws.prompts_dir().exists();
        let eval_fresh = !ws.eval_dir().exists();
        for folder in FOLDERS {
            let dir = root.join(folder);
            if !dir.exists() {
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        if fresh {
            opened.created = true;
            for (rel, text) in SAMPLES {
                let path = root.join(rel);
                if path.exists() {
                    continue;
                }
                crate::fsutil::atomic_write(&path, text.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                opened.copied.push(rel);
            }
        }
        if prompts_fresh {
            let dir = ws.prompts_dir();
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, text) in crate::prompts::BUNDLED {
                let path = dir.join(format!("{name}.txt"));
                crate::fsutil::atomic_write(&path, text.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        if eval_fresh {
            for (rel, text) in EVAL_SAMPLES {
                let path = ws.eval_dir().join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                crate::fsutil::atomic_write(&path, text.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Ok((ws, opened))
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.root.join("eval")
    }

    pub fn prompts_dir(&self) -> PathBuf {
        self.root.join("prompts")
    }

    pub fn seeds_dir(&self) -> PathBuf {
        self.root.join("seeds")
    }

    pub fn corpora_dir(&self) -> PathBuf {
        self.root.join("corpora")
    }

    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// The sweep spec files (`NAME.yaml`).
    pub fn sweeps_dir(&self) -> PathBuf {
        self.root.join("sweeps")
    }

    /// The folders in runs/ for which `keep` holds, newest first: by the modification time of
    /// their config.yaml (else of the folder itself), ties by name, last first.
    pub fn runs_newest_first(&self, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
        let modified = |p: &Path| {
            std::fs::metadata(p.join("config.yaml"))
                .or_else(|_| std::fs::metadata(p))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH)
        };
        let mut runs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(self.runs_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir() && keep(p))
                    .map(|p| (modified(&p), p))
                    .collect()
            })
            .unwrap_or_default();
        runs.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        runs.into_iter().map(|(_, p)| p).collect()
    }

    /// The seed files in seeds/, sorted by name.
    pub fn seed_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let dir = self.seeds_dir();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let path = entry?.path();
            let is_yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if is_yaml && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}

/// `selfspec workspace`: the workspace (created if needed), the configuration and cache in use,
/// and each seed file's state.
pub fn describe(root: &Path, config: &crate::config::Config, config_file: &Path, cache: &Path) -> anyhow::Result<()> {
    let (ws, opened) = Workspace::open(root)?;
    if opened.created {
        println!("created workspace {}", ws.root.display());
    }
    println!("workspace: {}", ws.root.display());
    println!("config:    {}", config_file.display());
    println!("cache:     {}", cache.display());
    for file in ws.seed_files()? {
        let loaded = crate::seeds::load(&file, &config.seeds.limits)?;
        let state = if loaded.is_valid() { "ok".to_string() } else { format!("{} problems", loaded.errors()) };
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        println!("  seeds/{name}: {} seeds, {state}", loaded.file.seeds.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_workspace_gets_the_samples_and_keeps_user_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("seeds")).unwrap();
        // A seeds/ folder already there: nothing is copied.
        let (_, opened) = Workspace::open(&root).unwrap();
        assert!(!opened.created && opened.copied.is_empty());

        let root = dir.path().join("fresh");
        std::fs::create_dir_all(root.join("corpora")).unwrap();
        std::fs::write(root.join("corpora/finance.corpus.jsonl"), "mine").unwrap();
        let (ws, opened) = Workspace::open(&root).unwrap();
        assert!(opened.created);
        assert_eq!(opened.copied.len(), 5);
        assert_eq!(std::fs::read_to_string(root.join("corpora/finance.corpus.jsonl")).unwrap(), "mine");
        assert_eq!(ws.seed_files().unwrap().len(), 3);
        assert!(ws.runs_dir().is_dir() && ws.samples_dir().is_dir());
    }
}
