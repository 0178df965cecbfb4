//! The bodies of `selfspec seeds …`: validate, stats, import, export, fmt.

use std::path::{Path, PathBuf};

use super::file::Task;
use super::load::{load, Loaded};
use super::problem::Problems;
use super::save::{save, to_yaml};
use super::validate::Limits;
use super::{interchange, stats};

/// `seeds validate`: every problem with file:line:column; 0 only if every file is valid
/// (warnings are printed and allowed).
pub fn validate(files: &[PathBuf], limits: &Limits) -> u8 {
    let mut all_valid = true;
    for path in files {
        let loaded = match load(path, limits) {
            Ok(l) => l,
            Err(e) => {
                println!("{}: cannot read: {e}", path.display());
                all_valid = false;
                continue;
            }
        };
        for p in &loaded.problems {
            println!("{p}");
        }
        let n = loaded.file.seeds.len();
        let warnings = loaded.problems.len() - loaded.errors();
        let warned = match warnings {
            0 => String::new(),
            1 => " (1 warning)".into(),
            w => format!(" ({w} warnings)"),
        };
        if loaded.is_valid() {
            println!("{}: {n} seeds, valid{warned}", path.display());
        } else {
            all_valid = false;
            println!("{}: {} problem(s){warned}", path.display(), loaded.errors());
        }
    }
    u8::from(!all_valid)
}

/// `seeds stats`: seeds per task and length statistics.
pub fn stats(file: &Path, json: bool, limits: &Limits) -> anyhow::Result<()> {
    let loaded = load_usable(file, limits)?;
    let s = stats::stats(&loaded.file);
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", s.to_text());
    }
    if !loaded.is_valid() {
        eprintln!(
            "note: {} has {} problem(s); run `selfspec seeds validate` to see them",
            file.display(),
            loaded.errors()
        );
    }
    Ok(())
}

/// What `seeds import` was asked.
pub struct Import {
    pub format: interchange::Format,
    pub input: PathBuf,
    pub output: PathBuf,
    pub domain: Option<String>,
    pub task: Option<String>,
    pub skip_invalid: bool,
    pub force: bool,
}

/// `seeds import`: a seed file from another tool's format.
pub fn import(args: Import, limits: &Limits) -> anyhow::Result<()> {
    crate::fsutil::refuse_overwrite(&args.output, args.force, &[args.input.as_path()])?;
    let task = match &args.task {
        None => None,
        Some(t) => Some(t.parse::<Task>().map_err(|_| {
            anyhow::anyhow!("--task {t}: not a task; use one of qa, ner, re, sa, cls, sum, gen, other")
        })?),
    };
    let default_domain = args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let opts =
        interchange::ImportOptions { domain: args.domain, default_domain, task, skip_invalid: args.skip_invalid };
    let imported = interchange::import(args.format, &args.input, &opts)?;
    for p in &imported.skipped {
        eprintln!("skipped: {p}");
    }
    save(&args.output, &imported.file)?;
    println!("{}: {} seeds imported from {}", args.output.display(), imported.file.seeds.len(), args.input.display());
    let problems = super::validate::validate(&imported.file, limits, None);
    let errors = problems.iter().filter(|p| !p.warning).count();
    if errors > 0 {
        println!("{errors} problem(s) to fix before use (`selfspec seeds validate {}`):", args.output.display());
    }
    for p in problems.iter().take(20) {
        println!("  {p}");
    }
    Ok(())
}

/// `seeds export`: the seeds as JSONL.
pub fn export(file: &Path, output: &Path, force: bool, limits: &Limits) -> anyhow::Result<()> {
    use anyhow::Context;
    crate::fsutil::refuse_overwrite(output, force, &[file])?;
    let loaded = load_usable(file, limits)?;
    crate::fsutil::atomic_write(output, interchange::export_jsonl(&loaded.file).as_bytes())
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!("{}: {} seeds exported", output.display(), loaded.file.seeds.len());
    Ok(())
}

/// `seeds fmt`: rewrite in the canonical layout (or, with `check`, report what is not); the exit
/// code is 1 when checking finds a file to rewrite.
pub fn fmt(files: &[PathBuf], check: bool, limits: &Limits) -> anyhow::Result<u8> {
    let mut differing = 0;
    for path in files {
        let loaded = load_usable(path, limits)?;
        let canonical = to_yaml(&loaded.file)?;
        let current = std::fs::read(path)?;
        if current == canonical.as_bytes() {
            continue;
        }
        differing += 1;
        if check {
            println!("{}: not in canonical form", path.display());
        } else {
            save(path, &loaded.file)?;
            println!("{}: rewritten", path.display());
        }
    }
    Ok(u8::from(check && differing > 0))
}

/// Loads a seed file that must be complete enough to act on: problems that saving would lose
/// (syntax errors, unknown keys, wrong types) are an error; content problems are not.
pub fn load_usable(path: &Path, limits: &Limits) -> anyhow::Result<Loaded> {
    use anyhow::Context;
    let loaded = load(path, limits).with_context(|| format!("cannot read {}", path.display()))?;
    if !loaded.is_lossless() {
        let lossy: Vec<_> = loaded.problems.iter().filter(|p| p.lossy).cloned().collect();
        return Err(Problems(lossy).into());
    }
    Ok(loaded)
}
