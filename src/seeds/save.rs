use std::path::Path;

use super::file::SeedFile;
use crate::{fsutil, yaml};

/// The canonical text of a seed file: keys in a fixed order (domain, description, prompts,
/// seeds; per seed id, task, tags, instruction, input, output), multi-line text as `|` blocks.
/// Comments in a hand-written file are not kept.
pub fn to_yaml(file: &SeedFile) -> anyhow::Result<String> {
    yaml::to_string(file)
}

/// Writes `file` to `path` atomically (see [`fsutil::atomic_write`]).
pub fn save(path: &Path, file: &SeedFile) -> anyhow::Result<()> {
    let text = to_yaml(file)?;
    fsutil::atomic_write(path, text.as_bytes()).map_err(|e| anyhow::anyhow!("cannot save {}: {e}", path.display()))
}
