//! The user's configuration: `<config dir>/config.yaml`, every key optional and documented in
//! assets/config.yaml (written there on first start).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::seeds::Limits;
use crate::yaml;

/// The commented default configuration, written on first start.
pub const DEFAULT_FILE: &str = include_str!("../assets/config.yaml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub workspace: Option<PathBuf>,
    /// The model every command and tab uses when none is named: a folder, org/name or .gguf.
    /// None: the default model if it has been fetched (`selfspec model fetch`).
    pub model: Option<String>,
    pub theme: String,
    pub seeds: SeedsConfig,
    pub generation: crate::generate::pipeline::Settings,
    pub train: crate::train::TrainConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedsConfig {
    pub autosave_ms: u64,
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workspace: None,
            model: None,
            theme: "dark".into(),
            seeds: SeedsConfig::default(),
            generation: Default::default(),
            train: Default::default(),
        }
    }
}

impl Default for SeedsConfig {
    fn default() -> Self {
        SeedsConfig { autosave_ms: 400, limits: Limits::default() }
    }
}

impl Config {
    /// Reads `path`; a missing file is the default configuration.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match crate::fsutil::read_regular_text(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let bad = |e: yaml::SyntaxError| {
            anyhow::anyhow!(
                "{}:{}: {}; see the documented keys in {} or delete the file to get them back",
                path.display(),
                e.pos,
                e.message,
                path.display()
            )
        };
        // Empty or all comments: the defaults. A syntax error is the user's to fix, never
        // silently the defaults.
        if yaml::parse(&text).map_err(bad)?.is_none() {
            return Ok(Config::default());
        }
        yaml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: {}; see the documented keys in {} or delete the file to get them back",
                path.display(),
                e.pos,
                e.message,
                path.display()
            )
        })
    }

    /// Writes the documented default file at `path` unless a file is already there.
    pub fn write_default(path: &Path) -> anyhow::Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        crate::fsutil::atomic_write(path, DEFAULT_FILE.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(true)
    }
}

/// Whether `path` holds training settings (top-level Hugging Face/PEFT keys) rather than a
/// selfspec configuration.
pub fn is_settings_file(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    if crate::yaml::from_str::<crate::config::Config>(&text).is_ok() {
        return false;
    }
    // Every top-level key a training setting (even with a bad value, so that its error is the
    // one told).
    let Ok(serde_json::Value::Object(keys)) = crate::yaml::from_str::<serde_json::Value>(&text) else { return false };
    let Ok(serde_json::Value::Object(known)) = serde_json::to_value(crate::train::TrainConfig::default()) else {
        return false;
    };
    !keys.is_empty() && keys.keys().all(|k| known.contains_key(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_is_the_default() {
        let parsed: Config = yaml::from_str(DEFAULT_FILE).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "theme: light\nseeds:\n  autosave: 3\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("config.yaml:3:3: seeds: unknown field `autosave`"), "{err}");
    }

    #[test]
    fn a_broken_or_exploding_file_is_an_error_not_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "theme: light\n  seeds: [\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("config.yaml:"), "{err}");
        std::fs::write(&path, crate::yaml::tests::laughs()).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("billion laughs"), "{err}");
    }

    #[test]
    fn partial_files_keep_the_other_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "seeds:\n  limits:\n    input: 10\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.seeds.limits.input, 10);
        assert_eq!(c.seeds.limits.output, 8000);
        assert_eq!(c.theme, "dark");
    }
}
