//! Evaluation datasets: a folder of JSONL files, one per dataset (`NAME.jsonl`), each line
//! `{dataset, task, instruction, input, output}` or with `outputs: [...]` for several
//! references; an optional `NAME.train.jsonl` beside it supplies the demonstrations.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub instruction: String,
    pub input: String,
    pub references: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub task: String,
    pub path: PathBuf,
    pub test: Vec<Example>,
    pub train: Vec<Example>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    dataset: Option<String>,
    task: String,
    instruction: String,
    #[serde(default)]
    input: String,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    outputs: Option<Vec<String>>,
}

const TASKS: [&str; 8] = ["qa", "ner", "re", "sa", "cls", "sum", "gen", "other"];

fn read(path: &Path) -> anyhow::Result<(String, Vec<Example>)> {
    let text = crate::lines::read_text(path)?;
    let mut task = None;
    let mut out = Vec::new();
    let shape = "each line is {dataset, task, instruction, input, output} (or outputs: [...])";
    for record in crate::lines::jsonl_records::<Line>(path, &text, shape) {
        let (line, l) = record?;
        let at = || format!("{}:{line}", path.display());
        anyhow::ensure!(
            TASKS.contains(&l.task.as_str()),
            "{}: unknown task {:?}; use one of {}",
            at(),
            l.task,
            TASKS.join(", ")
        );
        anyhow::ensure!(!l.instruction.trim().is_empty(), "{}: empty instruction", at());
        let references = match (l.output, l.outputs) {
            (Some(o), None) => vec![o],
            (None, Some(v)) if !v.is_empty() => v,
            (None, Some(_)) => anyhow::bail!("{}: outputs is empty; give at least one reference", at()),
            (None, None) => anyhow::bail!("{}: no output; give output (one reference) or outputs (several)", at()),
            (Some(_), Some(_)) => anyhow::bail!("{}: both output and outputs; keep one", at()),
        };
        match &task {
            None => task = Some(l.task.clone()),
            Some(t) if *t != l.task => anyhow::bail!("{}: task {} where the file's first line says {t}", at(), l.task),
            _ => {}
        }
        let _ = l.dataset;
        out.push(Example { instruction: l.instruction, input: l.input, references });
    }
    let task = task.ok_or_else(|| anyhow::anyhow!("{}: no examples", path.display()))?;
    Ok((task, out))
}

/// The dataset files of an evaluation folder, sorted, with their names: each `NAME.jsonl` that
/// is not a `NAME.train.jsonl` (the demonstrations beside it).
pub fn dataset_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            n.ends_with(".jsonl") && !n.ends_with(".train.jsonl")
        })
        .collect();
    // By file name, so `fin-kpi.jsonl` comes before `fin.jsonl` as it always has.
    files.sort();
    Ok(files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy().trim_end_matches(".jsonl").to_string();
            (name, p)
        })
        .collect())
}

/// The datasets in `dir`, by name. `only` keeps the named ones (each must exist).
pub fn load_dir(dir: &Path, only: &[String]) -> anyhow::Result<Vec<Dataset>> {
    let files = dataset_files(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for (name, path) in files {
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        let (task, test) = read(&path)?;
        let train_path = dir.join(format!("{name}.train.jsonl"));
        let train = if train_path.exists() { read(&train_path)?.1 } else { Vec::new() };
        out.push(Dataset { name, task, path, test, train });
    }
    for want in only {
        anyhow::ensure!(out.iter().any(|d| d.name == *want), "{}: no dataset {want}.jsonl", dir.display());
    }
    anyhow::ensure!(!out.is_empty(), "{}: no datasets (NAME.jsonl files)", dir.display());
    Ok(out)
}

/// Demonstrations from a seed file: the seeds of `task` first, then the others, in file order.
pub fn demos_from_seeds(file: &crate::seeds::SeedFile, task: &str) -> Vec<Example> {
    let as_example = |s: &crate::seeds::Seed| Example {
        instruction: s.instruction.clone(),
        input: s.input.clone(),
        references: vec![s.output.clone()],
    };
    let same = file.seeds.iter().filter(|s| s.task == task).map(as_example);
    let other = file.seeds.iter().filter(|s| s.task != task).map(as_example);
    same.chain(other).collect()
}
