//! The seeded sweep's stages: the tasks' data, the seed expert, the experts, the LMC of their
//! pairs, the evaluation; and its plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::report::{plot, report_rows, summaries, write_report, Pair};
use crate::sweep::layout;
use crate::sweep::spec::{Seeded, Spec};
use crate::sweep::stages::{Stages, SweepEvent};
use crate::train::Init;

/// A task's examples, in pool order (JSON lines tagged with the dataset's name), by task.
pub type Tasks = BTreeMap<String, Vec<serde_json::Value>>;

/// The tasks and their examples: dataset name → examples (tagged with the name), in pool order,
/// from the sweep's datasets and its seed file `seeds` (already read).
pub fn tasks(spec: &Spec, seeds: &crate::seeds::SeedFile) -> anyhow::Result<Tasks> {
    let datasets = crate::eval::data::load_dir(&spec.eval, &spec.datasets)?;
    let mut out = BTreeMap::new();
    for d in datasets {
        let mut examples: Vec<serde_json::Value> = d
            .train
            .iter()
            .map(|e| serde_json::json!({"task": d.name, "instruction": e.instruction, "input": e.input, "output": e.references[0]}))
            .collect();
        examples.extend(seeds.seeds.iter().filter(|s| s.task == d.task).map(
            |s| serde_json::json!({"task": d.name, "instruction": s.instruction, "input": s.input, "output": s.output}),
        ));
        anyhow::ensure!(
            !examples.is_empty(),
            "{}: task {} has no training examples: add {}.train.jsonl or seeds of task {}",
            spec.eval.display(),
            d.name,
            d.name,
            d.task
        );
        let mut order: Vec<usize> = (0..examples.len()).collect();
        crate::rng::Rng::new(spec.seed ^ 0x5eed_ed10).shuffle(&mut order);
        out.insert(d.name.clone(), order.into_iter().map(|i| examples[i].clone()).collect());
    }
    Ok(out)
}

/// [`tasks`], reading the seed file first (a stage process, the plan).
fn read_tasks(spec: &Spec, limits: &crate::seeds::Limits) -> anyhow::Result<Tasks> {
    let seeds = crate::seeds::load(&spec.seeds, limits)
        .with_context(|| format!("cannot read the seed file {}", spec.seeds.display()))?;
    tasks(spec, &seeds.file)
}

/// Examples a share takes of a task's `n`: ⌈share·n⌉, at least one.
fn share_count(share: f64, n: usize) -> usize {
    ((share * n as f64).ceil() as usize).clamp(1, n)
}

fn write_jsonl(path: &Path, lines: &[&serde_json::Value]) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    crate::fsutil::atomic_write(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn adapter(dir: &Path) -> PathBuf {
    crate::train::run::adapter_dir(dir)
}

fn trained(dir: &Path) -> bool {
    crate::train::run::trained(dir)
}

/// Eval names of a point's adapters with their folders: seed, each expert, merged, merged+seed.
fn members(point_dir: &Path, name: &str, tasks: &[String]) -> Vec<(String, PathBuf)> {
    let mut out = vec![(format!("{name}.seed"), adapter(&layout::seed_run(point_dir)))];
    out.extend(tasks.iter().map(|t| (format!("{name}.{t}"), adapter(&layout::expert(point_dir, t)))));
    out.push((format!("{name}.merged"), layout::merged(point_dir, false)));
    out.push((format!("{name}.merged+seed"), layout::merged(point_dir, true)));
    out
}

/// Runs (or continues) the seeded sweep on `by_task` (read and checked by the sweep's
/// preparation); the lock is held and the log open (`stages`).
pub fn run(spec: &Spec, seeded: &Seeded, stages: &mut Stages, by_task: &Tasks) -> anyhow::Result<u8> {
    let dir = stages.dir.to_path_buf();
    let names: Vec<String> = by_task.keys().cloned().collect();
    std::fs::create_dir_all(layout::tasks(&dir))?;
    for (t, ex) in by_task {
        write_jsonl(&layout::task_file(&dir, t), &ex.iter().collect::<Vec<_>>())?;
    }
    let points = seeded.points();
    for p in &points {
        let name = p.name();
        let pd = layout::point(&dir, &name);
        std::fs::create_dir_all(&pd).with_context(|| format!("cannot create {}", pd.display()))?;
        let share: Vec<&serde_json::Value> =
            by_task.values().flat_map(|ex| ex.iter().take(share_count(p.share, ex.len()))).collect();
        write_jsonl(&layout::seed_data(&pd), &share)?;
        let steps: Vec<(String, String, PathBuf, String)> = std::iter::once((
            "seed".to_string(),
            format!("seed:{name}"),
            layout::seed_run(&pd),
            format!("{name}: the seed expert on {} examples from {}", share.len(), String::from(p.init.clone())),
        ))
        .chain(names.iter().map(|t| {
            (
                "expert".to_string(),
                format!("expert:{name}:{t}"),
                layout::expert(&pd, t),
                format!("{name}: the {t} expert on {} examples", by_task[t].len()),
            )
        }))
        .collect();
        for (stage, child, train_dir, what) in steps {
            if !trained(&train_dir) {
                if let Some(code) = stages.run(&stage, &child, &child, &train_dir, &what)? {
                    return Ok(code);
                }
            }
        }
        let experts: Vec<PathBuf> = names.iter().map(|t| adapter(&layout::expert(&pd, t))).collect();
        let n = experts.len() as f64;
        if !crate::model::adapters::adapter::saved(&layout::merged(&pd, false)) {
            crate::model::adapters::combine::merge(
                &experts,
                &vec![1.0 / n; experts.len()],
                seeded.merge,
                None,
                &layout::merged(&pd, false),
            )?;
        }
        if !crate::model::adapters::adapter::saved(&layout::merged(&pd, true)) {
            let mut all = experts.clone();
            all.push(adapter(&layout::seed_run(&pd)));
            let w = vec![1.0 / (n + 1.0); all.len()];
            crate::model::adapters::combine::merge(&all, &w, seeded.merge, None, &layout::merged(&pd, true))?;
        }
        if !layout::lmc_file(&pd).exists() {
            let child = format!("lmc:{name}");
            if let Some(code) =
                stages.run("lmc", &name, &child, &layout::lmc_run(&pd), &format!("{name}: experts' LMC"))?
            {
                return Ok(code);
            }
        }
        if let Some(code) = stages.eval_point(&name, &format!("{name}.merged+seed"), p == &points[0])? {
            return Ok(code);
        }
    }
    let report = crate::eval::run::Report::read(&layout::eval(&dir))?;
    let (rows, lmc) = report_rows(&dir, seeded, &names, &report)?;
    let sums = summaries(&dir, &names, &rows)?;
    write_report(&dir, spec, seeded, &names, &rows, &sums, &lmc)?;
    match plot(&dir, &sums, &lmc) {
        Ok(files) => eprintln!("{} plots in {}", files.len(), dir.join("plots").display()),
        Err(e) => eprintln!("warning: no plots: {e:#}"),
    }
    stages.log.append(&SweepEvent::Finished { report: dir.join("report.json") })?;
    eprintln!("report: {}", dir.join("report.md").display());
    Ok(0)
}

/// One stage in this process: `seed:POINT`, `expert:POINT:TASK`, `lmc:POINT` or `eval:POINT`.
pub fn stage(
    spec: &Spec,
    seeded: &Seeded,
    dir: &Path,
    name: &str,
    limits: &crate::seeds::Limits,
    detached: bool,
) -> anyhow::Result<u8> {
    let names: Vec<String> = read_tasks(spec, limits)?.into_keys().collect();
    let points = seeded.points();
    let find =
        |n: &str| points.iter().position(|p| p.name() == n).with_context(|| format!("the sweep has no point {n:?}"));
    let choice = crate::model::Choice {
        name: spec.model.clone(),
        device: crate::model::DeviceChoice::Auto,
        dtype: crate::model::DTypeChoice::Auto,
        int8: false,
    };
    let (kind, rest) = name.split_once(':').with_context(|| {
        format!("the sweep has no stage {name:?}: seed:POINT, expert:POINT:TASK, lmc:POINT or eval:POINT")
    })?;
    let train = |data: PathBuf, run: PathBuf, init: Init| {
        let opts = crate::train::command::Options {
            model: choice.clone(),
            data,
            resume: run.join(crate::runs::CONFIG).exists(),
            run: Some(run),
            settings_file: None,
            qlora: None,
            dequantize: false,
            plan_only: false,
            prompt_format: crate::prompts::PromptFormat::Auto,
            init: Some(init),
            detached,
        };
        crate::train::command::train(opts, &spec.train)
    };
    match kind {
        "seed" => {
            let p = &points[find(rest)?];
            let pd = layout::point(dir, rest);
            train(layout::seed_data(&pd), layout::seed_run(&pd), p.init.clone())
        }
        "expert" => {
            let (point, task) = rest.split_once(':').context("expert:POINT:TASK")?;
            find(point)?;
            anyhow::ensure!(names.iter().any(|t| t == task), "the sweep has no task {task:?}");
            let pd = layout::point(dir, point);
            let start = adapter(&layout::seed_run(&pd));
            train(layout::task_file(dir, task), layout::expert(&pd, task), Init::From(start))
        }
        "lmc" => {
            find(rest)?;
            let pd = layout::point(dir, rest);
            lmc(&choice, &pd, dir, &names, seeded.lmc_points, spec.train.max_seq_length, detached)
        }
        "eval" => {
            let upto = find(rest)?;
            let adapters = points[..=upto]
                .iter()
                .flat_map(|q| members(&layout::point(dir, &q.name()), &q.name(), &names))
                .map(|(name, dir)| crate::model::adapters::adapter::Spec { name, dir })
                .collect();
            let (data, datasets, shots) = (spec.eval.clone(), spec.datasets.clone(), spec.shots.clone());
            let mut opts = crate::eval::command::Options::new(
                choice,
                adapters,
                data,
                datasets,
                shots,
                layout::eval(dir),
                detached,
            );
            // The report's statistics cost draws for every adapter so far: the last point's only.
            opts.intervals = upto + 1 == points.len();
            crate::eval::command::eval(opts)
        }
        _ => anyhow::bail!("the sweep has no stage {name:?}: seed:POINT, expert:POINT:TASK, lmc:POINT or eval:POINT"),
    }
}

/// The LMC of every pair of a point's experts, on the union of the two tasks' examples, written
/// to the point's `lmc.json` (a pair at a time is kept in `lmc-run/` so a stop loses one pair).
fn lmc(
    choice: &crate::model::Choice,
    pd: &Path,
    dir: &Path,
    names: &[String],
    points: usize,
    max_len: usize,
    detached: bool,
) -> anyhow::Result<u8> {
    let work = layout::lmc_run(pd);
    let lock = crate::runs::Lock::acquire(&work)?;
    let mut model = choice.load()?;
    let template = model.tokenizer.has_chat_template();
    let format = crate::prompts::PromptFormat::Auto.resolve(template);
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::signals::watch(cancel.clone(), detached);
    let mut pairs = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let done = work.join(format!("{a}--{b}.json"));
            if let Ok(text) = std::fs::read_to_string(&done) {
                if let Ok(p) = serde_json::from_str::<Pair>(&text) {
                    pairs.push(p);
                    continue;
                }
            }
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                drop(lock);
                return Ok(130);
            }
            let mut examples = crate::train::data::load(&layout::task_file(dir, a))?;
            examples.extend(crate::train::data::load(&layout::task_file(dir, b))?);
            let (ea, eb) = (adapter(&layout::expert(pd, a)), adapter(&layout::expert(pd, b)));
            let scratch = work.join("scratch");
            let r = crate::train::lmc::measure(
                &mut model,
                &ea,
                &eb,
                &examples,
                points,
                max_len,
                format,
                &scratch,
                &mut |_| {},
            )?;
            let _ = std::fs::remove_dir_all(&scratch);
            eprintln!("lmc {a} – {b}: barrier {:.4} (ΔW line)", r.barrier_merged);
            let p = Pair {
                a: a.clone(),
                b: b.clone(),
                barrier_merged: r.barrier_merged,
                barrier_factors: r.barrier_factors,
                alpha: r.points.iter().map(|x| x.alpha).collect(),
                merged: r.points.iter().map(|x| x.merged).collect(),
                factors: r.points.iter().map(|x| x.factors).collect(),
            };
            crate::fsutil::atomic_write(&done, serde_json::to_string(&p)?.as_bytes())?;
            pairs.push(p);
        }
    }
    crate::fsutil::atomic_write(&layout::lmc_file(pd), serde_json::to_string_pretty(&pairs)?.as_bytes())?;
    Ok(0)
}

/// What a seeded sweep will do (`sweep --plan`): per stage its steps or answers and a rough time
/// from this machine's speed on the model.
pub fn plan(
    spec: &Spec,
    seeded: &Seeded,
    dir: &Path,
    limits: &crate::seeds::Limits,
    decode_rate: f64,
    prefill_rate: f64,
) -> anyhow::Result<String> {
    use std::fmt::Write;
    let by_task = read_tasks(spec, limits)?;
    let names: Vec<String> = by_task.keys().cloned().collect();
    seeded.check(&names)?;
    let points = seeded.points();
    let c = &spec.train;
    let per_step = (c.per_device_train_batch_size * c.gradient_accumulation_steps).max(1);
    let steps = |n: usize| c.max_steps.unwrap_or_else(|| n.div_ceil(per_step) * c.num_train_epochs);
    // A step reads its examples forward and backward: about three forward passes.
    let train_secs = |steps: usize| 3.0 * (steps * per_step * c.max_seq_length.min(512)) as f64 / prefill_rate;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "seeded sweep of {} ({} points, tasks {}), {}",
        spec.model,
        points.len(),
        names.join(", "),
        dir.display()
    );
    let _ = writeln!(
        out,
        "speed on this machine: decode {decode_rate:.0} tokens/s (batch 8), prefill {prefill_rate:.0} tokens/s"
    );
    let mut total = 0.0;
    for p in &points {
        let share: usize = by_task.values().map(|ex| share_count(p.share, ex.len())).sum();
        let mut s = steps(share);
        s += match &p.init {
            Init::Task(t) => steps(by_task[t].len()),
            Init::Reptile { outer, inner } => outer * inner / c.gradient_accumulation_steps.max(1),
            _ => 0,
        };
        let expert_steps: usize = by_task.values().map(|ex| steps(ex.len())).sum();
        let pairs = names.len() * (names.len() - 1) / 2;
        let lmc_tokens: usize =
            pairs * seeded.lmc_points * 2 * 2 * (by_task.values().map(Vec::len).sum::<usize>() * 2 / names.len()) * 128;
        let secs = train_secs(s) + train_secs(expert_steps) + lmc_tokens as f64 / prefill_rate;
        total += secs;
        let _ = writeln!(
            out,
            "{}: seed expert on {share} examples ({s} steps), {} experts ({expert_steps} steps), LMC of {pairs} pairs: about {}",
            p.name(),
            names.len(),
            crate::runs::duration(secs)
        );
    }
    let datasets = crate::eval::data::load_dir(&spec.eval, &spec.datasets)?;
    let tests: usize = datasets.iter().map(|d| d.test.len()).sum();
    let models = 1 + points.len() * (names.len() + 3);
    let answers = models * tests * spec.shots.len();
    let secs = answers as f64 * 32.0 / decode_rate;
    total += secs;
    let _ = writeln!(
        out,
        "eval: {answers} answers ({models} models × {tests} examples × {} k): about {}",
        spec.shots.len(),
        crate::runs::duration(secs)
    );
    let _ = writeln!(out, "in all: about {} (rough)", crate::runs::duration(total));
    Ok(out)
}
