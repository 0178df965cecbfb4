//! `--model` as a folder, or as `org/name` found in the local Hugging Face cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). A model not in the
//! cache is an error that says how to fetch it — or, built with the `hub-download` feature and
//! unless `HF_HUB_OFFLINE` is set, downloaded into the cache ([`super::download`]).

use std::path::{Path, PathBuf};

use crate::model::error::ModelError;

/// `$HF_HOME`, else `~/.cache/huggingface`.
pub(crate) fn hf_home() -> Option<PathBuf> {
    std::env::var_os("HF_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
}

fn cache_root() -> Option<PathBuf> {
    std::env::var_os("HF_HUB_CACHE").map(PathBuf::from).or_else(|| hf_home().map(|h| h.join("hub")))
}

fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty() && !p.starts_with('.') && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The folder for `model`: itself when it is a folder, else its snapshot in the cache.
pub fn resolve(model: &str) -> Result<PathBuf, ModelError> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(ModelError::NotFound(format!("{model} is a file; --model takes a model folder or org/name")));
    }
    if !looks_like_repo_id(model) {
        return Err(ModelError::NotFound(format!("{model}: no such folder")));
    }
    let Some(root) = cache_root() else {
        return Err(ModelError::NotFound(format!(
            "{model}: no such folder, and no Hugging Face cache (HOME is not set)"
        )));
    };
    let found = snapshot(&root, model);
    #[cfg(feature = "hub-download")]
    if !offline() && !found.as_deref().is_some_and(super::download::is_complete) {
        return super::download::fetch(&root, hf_home().as_deref(), model).map_err(|e| {
            ModelError::NotFound(format!(
                "{model} is {} the Hugging Face cache at {}, and downloading it failed: {e}",
                if found.is_some() { "only partly in" } else { "not in" },
                root.display()
            ))
        });
    }
    if let Some(dir) = found {
        return Ok(dir);
    }
    Err(ModelError::NotFound(format!(
        "{model} is neither a folder nor in the Hugging Face cache at {}; fetch it with \
         `huggingface-cli download {model}`{}, or pass the model's folder",
        root.display(),
        if cfg!(feature = "hub-download") { " (HF_HUB_OFFLINE is set)" } else { "" }
    )))
}

/// `HF_HUB_OFFLINE` set to anything but empty, 0, false or no.
#[cfg(feature = "hub-download")]
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false" | "no"))
}

/// `<root>/models--org--name/snapshots/<revision>`: the one `refs/main` names, else the most
/// recently written snapshot that has a config.json.
fn snapshot(root: &Path, repo: &str) -> Option<PathBuf> {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let snapshots = repo_dir.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo_dir.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if dir.join("config.json").exists() {
            return Some(dir);
        }
    }
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.json").exists())
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_snapshot_refs_main_names() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("models--acme--tiny-llm");
        for rev in ["aaa", "bbb"] {
            std::fs::create_dir_all(repo.join("snapshots").join(rev)).unwrap();
            std::fs::write(repo.join("snapshots").join(rev).join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "aaa\n").unwrap();
        assert_eq!(snapshot(root.path(), "acme/tiny-llm"), Some(repo.join("snapshots/aaa")));
        std::fs::remove_file(repo.join("refs/main")).unwrap();
        assert!(snapshot(root.path(), "acme/tiny-llm").is_some());
        assert_eq!(snapshot(root.path(), "acme/other"), None);
        assert!(looks_like_repo_id("Qwen/Qwen2.5-0.5B"));
        assert!(!looks_like_repo_id("./models/x") && !looks_like_repo_id("a/b/c"));
    }
}
