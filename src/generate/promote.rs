//! A generated sample made a seed: the sample as reviewed (an edited response replaces the
//! generated one) joins the domain's seed file under a fresh id, with the task the expert
//! chooses and a tag naming the run and sample it came from, validated like any seed and saved
//! the way the Seeds tab saves (atomically, the file's mode and links kept).

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::seeds::{Limits, Seed, SeedFile, Task};

/// The seed a promotion wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Promoted {
    pub id: String,
    pub seeds: PathBuf,
}

/// The tag a promoted seed carries: `sample:<run folder name>/<sample id>`.
pub fn provenance_tag(run: &Path, sample_id: &str) -> String {
    let name = run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
    format!("sample:{name}/{sample_id}")
}

/// The task named `task`, or an error listing the tasks.
pub fn parse_task(task: &str) -> anyhow::Result<Task> {
    task.parse().map_err(|_| {
        let all: Vec<&str> = Task::ALL.iter().map(|t| t.as_str()).collect();
        anyhow::anyhow!("--task {task:?} is not a task; choose from {}", all.join(", "))
    })
}

/// The seed file a run's samples were generated from (its config.yaml's `seeds`).
pub fn run_seed_file(run: &Path) -> anyhow::Result<PathBuf> {
    let job = crate::runs::read_job::<super::pipeline::Job>(run, crate::runs::Kind::Generate)?
        .with_context(|| format!("{} has no config.yaml naming its seed file; pass --seeds FILE", run.display()))?;
    Ok(job.seeds)
}

/// Appends the sample (`instruction`, `input`, `output` as reviewed) to `file` as a new seed of
/// `task`, tagged with `tag`, and checks it. Errors, leaving `file` as it was, when a seed
/// already carries the tag or the new seed breaks a rule; returns the new id.
pub fn add_seed(
    file: &mut SeedFile,
    (instruction, input, output): (&str, &str, &str),
    task: Task,
    tag: &str,
    limits: &Limits,
) -> anyhow::Result<String> {
    if let Some(s) = file.seeds.iter().find(|s| s.tags.iter().any(|t| t == tag)) {
        anyhow::bail!("this sample is already seed {} ({tag})", s.id);
    }
    let id = file.fresh_id(&file.id_prefix());
    file.seeds.push(Seed {
        id: id.clone(),
        task: task.as_str().to_string(),
        tags: vec![tag.to_string()],
        instruction: instruction.to_string(),
        input: input.to_string(),
        output: output.to_string(),
    });
    let index = file.seeds.len() - 1;
    let problems: Vec<String> = crate::seeds::validate(file, limits, None)
        .into_iter()
        .filter(|p| p.seed == Some(index) && !p.warning)
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    if !problems.is_empty() {
        file.seeds.pop();
        anyhow::bail!(
            "as it stands it cannot be a seed: {}; edit the sample first (the Review tab's e)",
            problems.join("; ")
        );
    }
    Ok(id)
}

/// `selfspec samples promote RUN ID --task T [--seeds FILE]`: the sample `sample_id` of the run
/// in `run` (its decisions applied) becomes a seed in `seeds` (default: the run's own seed file).
pub fn promote(
    run: &Path,
    sample_id: &str,
    task: &str,
    seeds: Option<&Path>,
    limits: &Limits,
) -> anyhow::Result<Promoted> {
    let task = parse_task(task)?;
    let review = super::review::Review::open_run(run)?;
    let sample = review.samples.iter().find(|s| s.id == sample_id).with_context(|| {
        format!("{} has no sample {sample_id:?} (the Review tab and samples.jsonl list the ids)", run.display())
    })?;
    let path = match seeds {
        Some(p) => p.to_path_buf(),
        None => run_seed_file(run)?,
    };
    let mut file = crate::seeds::command::load_usable(&path, limits)?.file;
    let tag = provenance_tag(run, sample_id);
    let id = add_seed(&mut file, (&sample.instruction, &sample.input, &sample.output), task, &tag, limits)
        .with_context(|| format!("sample {sample_id} into {}", path.display()))?;
    crate::seeds::save(&path, &file)?;
    Ok(Promoted { id, seeds: path })
}
