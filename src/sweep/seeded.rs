//! The Seeded LoRA sweep (`seeded:` in a sweep file): a seed expert trained on a share of the
//! pooled data of several tasks, one expert per task grown from it, and the experts merged —
//! with the seed expert's data share and its starting point as the two axes.
//!
//! The tasks are the evaluation datasets. A task's examples are its dataset's demonstrations
//! (`NAME.train.jsonl`) and the seed file's seeds of the dataset's task (ner, qa, …), each
//! tagged with the dataset's name; the test examples are never trained on. The pool's examples
//! are shuffled once per task with the sweep's seed; a share p takes the first ⌈p·n⌉ (at least
//! one) of each task's, so smaller shares are subsets of larger ones and every task is present.
//!
//! Per point (share, init): `seed/` trains on the share from `init`; `experts/TASK/` trains on
//! all of TASK's examples from the seed expert's A and B; `merged/` is the experts' equal-weight
//! merge and `merged-seed/` the same with the seed expert as one more member; `lmc.json` holds the
//! loss along the line between every pair of experts on the union of their two tasks' data. The
//! one `eval/` run scores the base and every point's adapters on every task's dataset.
//!
//! Folder: `tasks/TASK.jsonl`, `points/POINT/{seed.jsonl, seed/, experts/TASK/, merged/,
//! merged-seed/, lmc.json}`, `eval/`, `report.json`, `report.md`, `plots/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::layout;
use super::spec::Spec;
pub use super::spec::{SeedPoint, Seeded};
use super::stages::{Stages, SweepEvent};
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
pub(super) fn run(spec: &Spec, seeded: &Seeded, stages: &mut Stages, by_task: &Tasks) -> anyhow::Result<u8> {
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
pub(super) fn stage(
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

/// The barrier between two experts, with the loss along both lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub barrier_merged: f64,
    pub barrier_factors: Option<f64>,
    pub alpha: Vec<f64>,
    pub merged: Vec<f64>,
    pub factors: Option<Vec<f64>>,
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

/// One row of a seeded sweep's report.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `share` or `init` (the base point appears on both).
    pub axis: String,
    pub value: String,
    pub point: String,
    /// `base`, `seed`, `expert`, `merged` or `merged+seed`.
    pub model: String,
    /// The expert's task (experts only).
    pub expert: Option<String>,
    pub dataset: String,
    pub k: usize,
    pub f1: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// 95 % intervals, and the model against the base (as the evaluation's report has them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_ci: Option<[f64; 2]>,
    #[serde(default, rename = "rougeL_ci", skip_serializing_if = "Option::is_none")]
    pub rouge_l_ci: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_base: Option<crate::eval::report::Versus>,
}

/// The summary columns of a seeded report, in order: experts on their own task, experts on the
/// others, the seed expert, the two merges, the base.
pub const COLUMNS: [&str; 6] = ["experts, own", "experts, others", "seed", "merged", "merged+seed", "base"];

/// One summary of a point: a column's mean over the datasets (each dataset's mean first) with
/// its interval and, but for the base, against the base on the same examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub axis: String,
    pub value: String,
    pub point: String,
    pub k: usize,
    pub column: String,
    pub summary: crate::eval::report::Summary,
}

/// A point's LMC barriers, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointLmc {
    pub point: String,
    pub pairs: Vec<Pair>,
}

fn report_rows(
    dir: &Path,
    seeded: &Seeded,
    names: &[String],
    report: &crate::eval::run::Report,
) -> anyhow::Result<(Vec<Row>, Vec<PointLmc>)> {
    let mut rows = Vec::new();
    let mut lmc = Vec::new();
    let mut axes: Vec<(&str, String, SeedPoint)> = Vec::new();
    // The base point sits on both axes.
    let mut shares = seeded.share.clone();
    if !shares.contains(&seeded.base.share) {
        shares.push(seeded.base.share);
    }
    shares.sort_by(f64::total_cmp);
    for s in shares {
        axes.push(("share", format!("{s}"), SeedPoint { share: s, init: seeded.base.init.clone() }));
    }
    let mut inits = vec![seeded.base.init.clone()];
    inits.extend(seeded.init.iter().filter(|i| **i != seeded.base.init).cloned());
    for i in inits {
        axes.push(("init", String::from(i.clone()), SeedPoint { share: seeded.base.share, init: i }));
    }
    for (axis, value, p) in &axes {
        let name = p.name();
        for c in &report.cells {
            let (model, expert) = if c.model == crate::eval::run::BASE {
                ("base".to_string(), None)
            } else if let Some(what) = c.model.strip_prefix(&format!("{name}.")) {
                match what {
                    "seed" | "merged" | "merged+seed" => (what.to_string(), None),
                    t if names.iter().any(|n| n == t) => ("expert".to_string(), Some(t.to_string())),
                    _ => continue,
                }
            } else {
                continue;
            };
            rows.push(Row {
                axis: axis.to_string(),
                value: value.clone(),
                point: name.clone(),
                model,
                expert,
                dataset: c.dataset.clone(),
                k: c.k,
                f1: c.f1,
                rouge_l: c.rouge_l,
                f1_ci: c.f1_ci,
                rouge_l_ci: c.rouge_l_ci,
                vs_base: c.vs_base.clone(),
            });
        }
    }
    for p in seeded.points() {
        let path = layout::lmc_file(&layout::point(dir, &p.name()));
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        lmc.push(PointLmc { point: p.name(), pairs: serde_json::from_str(&text)? });
    }
    Ok((rows, lmc))
}

/// Each point's summary columns with intervals, from the evaluation's per-example scores:
/// per dataset, the column's model on it (for "experts, others" the other experts' scores of
/// each example averaged), then the mean over datasets, resampled within each.
fn summaries(dir: &Path, names: &[String], rows: &[Row]) -> anyhow::Result<Vec<SummaryRow>> {
    use crate::eval::report::{per_example, summarize, Sample};
    let eval_dir = layout::eval(dir);
    let settings = crate::runs::read_job::<crate::eval::run::EvalJob>(&eval_dir, crate::runs::Kind::Eval)?
        .and_then(|j| j.stats)
        .unwrap_or_default();
    let predictions: Vec<crate::eval::run::Prediction> =
        crate::lines::read_jsonl(&eval_dir.join(crate::eval::run::PREDICTIONS))?;
    let scores = per_example(&predictions);
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for r in rows {
        if seen.contains(&(&r.axis, &r.value, &r.point, r.k)) {
            continue;
        }
        seen.push((&r.axis, &r.value, &r.point, r.k));
        let get = |m: &str, d: &str| scores.get(&(m.to_string(), d.to_string(), r.k));
        let model = |what: &str| format!("{}.{what}", r.point);
        let Some(base) =
            names.iter().map(|d| get(crate::eval::run::BASE, d).map(Sample::from)).collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let base_refs: Vec<&Sample> = base.iter().collect();
        for column in COLUMNS {
            let samples: Option<Vec<Sample>> = names
                .iter()
                .map(|d| match column {
                    "experts, own" => get(&model(d), d).map(Sample::from),
                    "experts, others" => {
                        let others: Option<Vec<_>> =
                            names.iter().filter(|t| *t != d).map(|t| get(&model(t), d)).collect();
                        others.and_then(|o| Sample::pooled(&o))
                    }
                    "base" => get(crate::eval::run::BASE, d).map(Sample::from),
                    m => get(&model(m), d).map(Sample::from),
                })
                .collect();
            let Some(samples) = samples else { continue };
            let refs: Vec<&Sample> = samples.iter().collect();
            let against = (column != "base").then_some(base_refs.as_slice());
            out.push(SummaryRow {
                axis: r.axis.clone(),
                value: r.value.clone(),
                point: r.point.clone(),
                k: r.k,
                column: column.to_string(),
                summary: summarize(&refs, against, false, &settings),
            });
        }
    }
    Ok(out)
}

/// A score of a row: F1 or ROUGE-L.
pub type Metric = fn(&Row) -> f64;

/// The metrics the report gives, by name.
pub const METRICS: [(&str, Metric); 2] = [("F1", |r| r.f1), ("ROUGE-L", |r| r.rouge_l)];

/// The mean `metric` of `rows` matching `keep`, None when none does.
fn mean(rows: &[Row], metric: Metric, keep: impl Fn(&Row) -> bool) -> Option<f64> {
    let v: Vec<f64> = rows.iter().filter(|r| keep(r)).map(metric).collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Per point and k: (experts on their own task, experts on the others, seed, merged,
/// merged+seed, base) mean `metric`.
pub fn summary(rows: &[Row], point: &str, k: usize, metric: Metric) -> [Option<f64>; 6] {
    let at = |r: &Row| r.point == point && r.k == k;
    [
        mean(rows, metric, |r| at(r) && r.model == "expert" && r.expert.as_deref() == Some(&r.dataset)),
        mean(rows, metric, |r| at(r) && r.model == "expert" && r.expert.as_deref() != Some(&r.dataset)),
        mean(rows, metric, |r| at(r) && r.model == "seed"),
        mean(rows, metric, |r| at(r) && r.model == "merged"),
        mean(rows, metric, |r| at(r) && r.model == "merged+seed"),
        mean(rows, metric, |r| at(r) && r.model == "base"),
    ]
}

fn write_report(
    dir: &Path,
    spec: &Spec,
    seeded: &Seeded,
    names: &[String],
    rows: &[Row],
    sums: &[SummaryRow],
    lmc: &[PointLmc],
) -> anyhow::Result<()> {
    use crate::eval::report::{delta_text, with_interval};
    #[derive(Serialize)]
    struct Out<'a> {
        rows: &'a [Row],
        summaries: &'a [SummaryRow],
        lmc: &'a [PointLmc],
    }
    crate::fsutil::atomic_write(
        &dir.join("report.json"),
        serde_json::to_string_pretty(&Out { rows, summaries: sums, lmc })?.as_bytes(),
    )?;
    let find = |point: &str, k: usize, column: &str| {
        sums.iter().find(|s| s.point == point && s.k == k && s.column == column).map(|s| &s.summary)
    };
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.1}"));
    let mut md = format!(
        "# Seeded LoRA sweep of {}\n\nTasks: {}. F1 and ROUGE-L (0–100), the means over datasets with 95 % bootstrap \
         intervals (resampled within each dataset); experts on their own task and on the others (the other experts' \
         scores of each example averaged); merges by {} with equal weights. Barrier: the mean LMC barrier (ΔW line) \
         between pairs of experts, in loss per token. Below each table, every column against the base on the same \
         examples: Δ with its paired-bootstrap interval, `*` where the randomisation p < 0.05 (not adjusted for the \
         many comparisons) and the interval excludes 0, and the smallest Δ the examples detect.\n",
        spec.model,
        names.join(", "),
        format!("{:?}", seeded.merge).to_lowercase()
    );
    let barrier = |point: &str| {
        lmc.iter().find(|l| l.point == point).and_then(|l| {
            (!l.pairs.is_empty()).then(|| l.pairs.iter().map(|p| p.barrier_merged).sum::<f64>() / l.pairs.len() as f64)
        })
    };
    for ((axis, k), (metric, score)) in ["share", "init"]
        .into_iter()
        .flat_map(|a| spec.shots.iter().map(move |&k| (a, k)))
        .flat_map(|ak| METRICS.into_iter().map(move |m| (ak, m)))
    {
        {
            md.push_str(&format!(
                "\n## {axis}, {k}-shot, {metric}\n\n| {axis} | experts, own | experts, others | seed | merged | merged+seed | base | barrier |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
            ));
            let mut seen = Vec::new();
            let f1 = metric == "F1";
            let mut deltas = String::new();
            for r in rows.iter().filter(|r| r.axis == axis) {
                if seen.contains(&(&r.value, &r.point)) {
                    continue;
                }
                seen.push((&r.value, &r.point));
                let s = summary(rows, &r.point, k, score);
                md.push_str(&format!("| {} |", r.value));
                deltas.push_str(&format!("| {} |", r.value));
                for (i, column) in COLUMNS.iter().enumerate() {
                    match find(&r.point, k, column) {
                        Some(x) => {
                            let e = if f1 { x.f1 } else { x.rouge_l };
                            md.push_str(&format!(" {} |", with_interval(e.mean, Some(e.ci))));
                            if let Some(v) = &x.vs {
                                let d = if f1 { v.f1 } else { v.rouge_l };
                                let d = crate::eval::stats::Delta { holm_p: None, ..d };
                                deltas.push_str(&format!(" {} ({:.1}) |", delta_text(&d), d.detectable));
                            }
                        }
                        None => {
                            md.push_str(&format!(" {} |", f(s[i])));
                            if *column != "base" {
                                deltas.push_str(" – |");
                            }
                        }
                    }
                }
                md.push_str(&format!(" {} |\n", barrier(&r.point).map_or("–".into(), |b| format!("{b:.4}"))));
                deltas.push('\n');
            }
            md.push_str(&format!(
                "\nΔ against the base (smallest detectable Δ in brackets):\n\n| {axis} | experts, own | experts, others | seed | merged | merged+seed |\n|---|---:|---:|---:|---:|---:|\n{deltas}"
            ));
        }
    }
    md.push_str(
        "\n## Per point and dataset (F1 with 95 % intervals; `*`: against the base, p < 0.05 after Holm across the \
         datasets and the interval clear of 0)\n",
    );
    let mut points: Vec<&str> = rows.iter().map(|r| r.point.as_str()).collect();
    points.dedup();
    let mut unique = Vec::new();
    for p in points {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    for point in unique {
        for &k in &spec.shots {
            md.push_str(&format!("\n### {point}, {k}-shot\n\n| model |"));
            for d in names {
                md.push_str(&format!(" {d} |"));
            }
            md.push_str("\n|---|");
            md.push_str(&"---:|".repeat(names.len()));
            md.push('\n');
            let mut models: Vec<(String, Option<String>)> = vec![("base".into(), None), ("seed".into(), None)];
            models.extend(names.iter().map(|t| ("expert".to_string(), Some(t.clone()))));
            models.push(("merged".into(), None));
            models.push(("merged+seed".into(), None));
            for (m, e) in models {
                let label = e.as_ref().map_or(m.clone(), |t| format!("expert {t}"));
                md.push_str(&format!("| {label} |"));
                for d in names {
                    let v = rows
                        .iter()
                        .find(|r| r.point == point && r.k == k && r.model == m && r.expert == e && r.dataset == *d);
                    let text = v.map_or("–".to_string(), |r| {
                        let mark = r.vs_base.as_ref().is_some_and(|x| x.f1.significant());
                        format!("{}{}", with_interval(r.f1, r.f1_ci), if mark { "*" } else { "" })
                    });
                    md.push_str(&format!(" {text} |"));
                }
                md.push('\n');
            }
        }
        if let Some(l) = lmc.iter().find(|l| l.point == point) {
            md.push_str("\n| experts | barrier (ΔW) | barrier (A, B) |\n|---|---:|---:|\n");
            for p in &l.pairs {
                let fb = p.barrier_factors.map_or("–".into(), |b| format!("{b:.4}"));
                md.push_str(&format!("| {} – {} | {:.4} | {fb} |\n", p.a, p.b, p.barrier_merged));
            }
        }
    }
    crate::fsutil::atomic_write(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

/// The plots: F1 against the share (experts on their own tasks, seed, merged, merged+seed, one
/// line each per k) when the share axis has two values or more, and each point's LMC curves.
fn plot(dir: &Path, sums: &[SummaryRow], lmc: &[PointLmc]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut shares: Vec<(f64, String)> = sums
        .iter()
        .filter(|r| r.axis == "share")
        .filter_map(|r| r.value.parse::<f64>().ok().map(|v| (v, r.point.clone())))
        .collect();
    shares.sort_by(|a, b| a.0.total_cmp(&b.0));
    shares.dedup();
    if shares.len() >= 2 {
        let mut ks: Vec<usize> = sums.iter().map(|r| r.k).collect();
        ks.sort();
        ks.dedup();
        let mut lines = Vec::new();
        let mut bands = Vec::new();
        for k in ks {
            for label in ["experts, own", "seed", "merged", "merged+seed"] {
                let at: Vec<(f64, &crate::eval::report::Summary)> = shares
                    .iter()
                    .filter_map(|(v, p)| {
                        sums.iter()
                            .find(|s| s.point == *p && s.k == k && s.column == label)
                            .map(|s| (v * 100.0, &s.summary))
                    })
                    .collect();
                lines.push((format!("{label} {k}-shot"), at.iter().map(|(x, s)| (*x, s.f1.mean)).collect()));
                bands.push(at.iter().map(|(x, s)| (*x, s.f1.ci[0], s.f1.ci[1])).collect());
            }
        }
        written.extend(crate::plot::chart_with_bands(
            dir,
            "f1-share",
            "F1 against the seed expert's share (bands: 95 % intervals)",
            "share (%)",
            "F1 (0-100)",
            &lines,
            &bands,
        )?);
    }
    for l in lmc {
        let mut lines = Vec::new();
        for p in &l.pairs {
            lines.push((
                format!("{} – {} ΔW", p.a, p.b),
                p.alpha.iter().copied().zip(p.merged.iter().copied()).collect(),
            ));
            if let Some(f) = &p.factors {
                lines.push((
                    format!("{} – {} (A, B)", p.a, p.b),
                    p.alpha.iter().copied().zip(f.iter().copied()).collect(),
                ));
            }
        }
        if !lines.is_empty() {
            let title = format!("loss between experts · {}", l.point);
            written.extend(crate::plot::chart(
                dir,
                &format!("lmc-{}", l.point),
                &title,
                "α",
                "loss per token",
                &lines,
            )?);
        }
    }
    Ok(written)
}

/// What a seeded sweep will do (`sweep --plan`): per stage its steps or answers and a rough time
/// from this machine's speed on the model.
pub(super) fn plan(
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
