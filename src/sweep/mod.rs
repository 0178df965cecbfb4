//! `selfspec sweep`: the ablations the paper never ran — the number of seed instructions and the
//! quantity of synthetic samples — as points around a base point, each generated, trained and
//! evaluated by the run protocol inside the sweep folder.
//!
//! Seed subsets are nested: the seed file's seeds are shuffled once with the sweep's seed and a
//! point with s seeds takes the first s. A sample-count axis trains on prefixes of one generation
//! run per seed count, generated to the largest count any point asks for. Every stage is a run
//! folder that continues where it stopped, so a sweep killed at any moment (even `kill -9`) and
//! run again redoes no finished stage.
//!
//! Folder: `config.yaml` (kind sweep, the spec), `run.lock`, `events.jsonl`, `index/` (a corpus
//! given as JSONL), `gen-s{S}/` (a generation run per seed count, with its `seeds.yaml`),
//! `points/s{S}-n{N}/` (`train.jsonl`, the first N samples, and `train/`), `eval/` (the base and
//! every point's adapter), `report.json`, `report.csv`, `report.md`.

pub mod layout;
pub mod plot;
pub mod seeded;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::generate::pipeline::{Mode, Settings};
use crate::model::{Choice, DTypeChoice, DeviceChoice};
use crate::runs::{End, Kind, RunEvent};
use crate::train::TrainConfig;

/// A sweep as its YAML file states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Anything `--model` takes.
    pub model: String,
    /// The seed file the subsets are drawn from.
    pub seeds: PathBuf,
    /// An unlabeled corpus (JSONL or a folder of .txt files, indexed into the sweep folder) or an
    /// index folder; none: responses without documents.
    #[serde(default)]
    pub corpus: Option<PathBuf>,
    /// Responses: none, top1 or marginal (default: marginal with a corpus, else none).
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The evaluation datasets' folder.
    pub eval: PathBuf,
    /// Only these datasets (empty: all).
    #[serde(default)]
    pub datasets: Vec<String>,
    #[serde(default = "default_shots")]
    pub shots: Vec<usize>,
    /// The point every axis varies around.
    #[serde(default)]
    pub base: Point,
    #[serde(default)]
    pub axes: Axes,
    /// Every combination of the axes' values instead of one axis at a time.
    #[serde(default)]
    pub grid: bool,
    /// The seed of the subsets and of every generation run.
    #[serde(default)]
    pub seed: u64,
    /// Runs of each point: replicate r (0 first) generates with seed `seed + r` and trains with
    /// `train.seed + r`; the report gives their mean, the sd of their means, and intervals that
    /// resample both the examples and the replicates.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeats: usize,
    /// Generation settings (over the built-in defaults).
    #[serde(default)]
    pub generation: Settings,
    /// Training settings (over the built-in defaults).
    #[serde(default)]
    pub train: TrainConfig,
    /// A Seeded LoRA sweep (see [`seeded`]) instead of the seeds and samples axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded: Option<seeded::Seeded>,
    /// An OpenAI-compatible server serving `model` that the generation stages decode on (`endpoint`,
    /// `served_model`, …, as `generate --backend openai` takes them). Training, and so the
    /// evaluation of the adapters it makes, stays on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<crate::backend::Remote>,
}

fn default_shots() -> Vec<usize> {
    vec![0, 1, 5]
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// The most replicates a sweep runs of each point.
pub const MAX_REPEATS: usize = 20;

/// The folder name of replicate `r` of a stage named `name` (the first keeps the plain name, so
/// a sweep without repeats names its folders as before).
pub fn replicate(name: &str, r: usize) -> String {
    if r == 0 {
        name.to_string()
    } else {
        format!("{name}-r{r}")
    }
}

/// Seeds and samples of one point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub seeds: usize,
    pub samples: usize,
}

impl Point {
    pub fn name(&self) -> String {
        format!("s{}-n{}", self.seeds, self.samples)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axes {
    #[serde(default)]
    pub seeds: Vec<usize>,
    #[serde(default)]
    pub samples: Vec<usize>,
}

impl Spec {
    /// Reads a sweep file; errors name the file and line.
    pub fn load(path: &Path) -> anyhow::Result<Spec> {
        let text = crate::fsutil::read_text(path)?;
        let mut spec: Spec =
            crate::yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.pos, e.message))?;
        // An axes: that lists no value would run the base point alone, which is not what it says.
        if let Ok(Some(root)) = crate::yaml::parse(&text) {
            if let Some(axes) = root.get("axes") {
                if spec.axes.seeds.is_empty() && spec.axes.samples.is_empty() {
                    anyhow::bail!(
                        "{}:{}: axes: lists no seed count and no sample count; give seeds: [..] or samples: [..], \
                         or remove axes: to run the base point alone",
                        path.display(),
                        axes.pos
                    );
                }
                for (name, list) in [("seeds", &spec.axes.seeds), ("samples", &spec.axes.samples)] {
                    if let (Some(node), true) = (axes.get(name), list.is_empty()) {
                        anyhow::bail!(
                            "{}:{}: axes.{name}: [] lists nothing; give at least one value or remove the key",
                            path.display(),
                            node.pos
                        );
                    }
                }
            }
        }
        // Paths in the file are relative to it.
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| std::path::absolute(base.join(p)).unwrap_or_else(|_| base.join(p));
        spec.seeds = resolve(&spec.seeds);
        spec.eval = resolve(&spec.eval);
        spec.corpus = spec.corpus.as_deref().map(resolve);
        // A model path relative to the file; org/name (the Hugging Face cache) stays as written.
        if base.join(&spec.model).exists() {
            spec.model = resolve(Path::new(&spec.model)).display().to_string();
        }
        Ok(spec)
    }

    /// The points: each axis's values with the other quantity at the base's (or, with `grid`,
    /// every combination), the base included, without repeats, in order.
    pub fn points(&self) -> Vec<Point> {
        let seeds = if self.axes.seeds.is_empty() { vec![self.base.seeds] } else { self.axes.seeds.clone() };
        let samples = if self.axes.samples.is_empty() { vec![self.base.samples] } else { self.axes.samples.clone() };
        let mut out = vec![self.base];
        if self.grid {
            for &s in &seeds {
                for &n in &samples {
                    out.push(Point { seeds: s, samples: n });
                }
            }
        } else {
            out.extend(self.axes.seeds.iter().map(|&s| Point { seeds: s, samples: self.base.samples }));
            out.extend(self.axes.samples.iter().map(|&n| Point { seeds: self.base.seeds, samples: n }));
        }
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|p| seen.insert(*p));
        out
    }

    /// One generation run per seed count and replicate, to the most samples any point at that
    /// count asks for: (seed count, replicate) → samples.
    pub fn generation_runs(&self) -> BTreeMap<(usize, usize), usize> {
        let mut most: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        for (p, r) in self.runs() {
            let m = most.entry((p.seeds, r)).or_default();
            *m = (*m).max(p.samples);
        }
        most
    }

    /// Every point's replicates, point by point: (point, replicate).
    pub fn runs(&self) -> Vec<(Point, usize)> {
        let repeats = self.repeats.max(1);
        self.points().into_iter().flat_map(|p| (0..repeats).map(move |r| (p, r))).collect()
    }

    /// The generation folder of `seeds` seeds, replicate `r`.
    pub fn gen_name(seeds: usize, r: usize) -> String {
        replicate(&format!("gen-s{seeds}"), r)
    }

    /// What is wrong with the spec before anything starts: empty values, more seeds than the file
    /// holds (with the count), shots the datasets cannot serve.
    pub fn check(&self, available: usize) -> anyhow::Result<()> {
        if let Some(remote) = &self.backend {
            remote.check().map_err(|e| anyhow::anyhow!("backend: {e:#}"))?;
        }
        let points = if self.seeded.is_some() {
            anyhow::ensure!(
                self.axes == Axes::default() && self.base == Point::default() && !self.grid,
                "a sweep file with seeded: takes its points from there; remove base:, axes: and grid:"
            );
            anyhow::ensure!(
                self.corpus.is_none(),
                "a seeded sweep trains on the datasets' demonstrations and seeds, not on generated samples; remove corpus:"
            );
            anyhow::ensure!(
                self.backend.is_none(),
                "a seeded sweep generates nothing, so a server has nothing to do; remove backend:"
            );
            Vec::new()
        } else {
            self.points()
        };
        for p in points {
            anyhow::ensure!(p.seeds > 0 && p.samples > 0, "point {}: seeds and samples must be at least 1", p.name());
            anyhow::ensure!(
                p.samples <= crate::bounds::MAX_SAMPLES,
                "point {}: samples {} is out of range; it takes 1 to {}",
                p.name(),
                p.samples,
                crate::bounds::MAX_SAMPLES
            );
            anyhow::ensure!(
                p.seeds <= available,
                "point {} asks for {} seeds but {} holds {available}; lower it or add seeds",
                p.name(),
                p.seeds,
                self.seeds.display()
            );
        }
        anyhow::ensure!(!self.shots.is_empty(), "shots: name at least one k");
        anyhow::ensure!(
            (1..=MAX_REPEATS).contains(&self.repeats),
            "repeats: {} is out of range; use 1 to {MAX_REPEATS}",
            self.repeats
        );
        anyhow::ensure!(
            self.repeats == 1 || self.seeded.is_none(),
            "repeats: is for the seeds and samples sweep; a seeded sweep runs each point once (remove repeats:)"
        );
        self.generation.check().map_err(anyhow::Error::msg)?;
        self.train.check().map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

/// What a sweep reports as it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SweepEvent {
    Started {
        points: Vec<Point>,
    },
    /// A stage starts (or continues): `generate` (per seed count), `train` (per point), `eval`.
    Stage {
        stage: String,
        name: String,
    },
    /// A generation run stopped at its prompt budget with fewer samples than asked.
    Short {
        seeds: usize,
        asked: usize,
        kept: usize,
    },
    Stopped {
        stage: String,
        name: String,
    },
    Finished {
        report: PathBuf,
    },
}

impl RunEvent for SweepEvent {
    fn end(&self) -> Option<End> {
        match self {
            SweepEvent::Finished { .. } => Some(End::Finished),
            SweepEvent::Stopped { .. } => Some(End::Stopped),
            _ => None,
        }
    }
}

/// One row of report.json: a model's score on a dataset (or `average`, the mean of the
/// datasets' means) at one axis value and k, with its interval, and the tuned model against
/// the base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub axis: String,
    pub value: usize,
    /// `base` or `tuned`.
    pub model: String,
    pub dataset: String,
    pub k: usize,
    /// The mean over examples (and replicates).
    pub f1: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// Samples the point trained on (fewer than asked when generation spent its budget; the
    /// fewest of its replicates).
    pub samples_used: Option<usize>,
    /// 95 % intervals (over examples, and replicates where there are several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_ci: Option<[f64; 2]>,
    #[serde(default, rename = "rougeL_ci", skip_serializing_if = "Option::is_none")]
    pub rouge_l_ci: Option<[f64; 2]>,
    /// The tuned model against the base on the same examples (Holm across the datasets; the
    /// average's p unadjusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_base: Option<crate::eval::report::Versus>,
    #[serde(default = "one")]
    pub replicates: usize,
    /// The sd of the replicates' means (F1, ROUGE-L).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_sd: Option<[f64; 2]>,
}

/// Runs (or continues) the sweep of `spec` in `dir`; the exit code (0 finished, 130 stopped).
/// With `max_hours`, no stage starts once that much time has passed: the sweep stops cleanly
/// between stages (exit 130) and the same command continues it.
pub fn run(
    spec: &Spec,
    dir: &Path,
    limits: &crate::seeds::Limits,
    detached: bool,
    max_hours: Option<f64>,
) -> anyhow::Result<u8> {
    let lock = crate::runs::Lock::acquire(dir)?;
    let budget = Budget { start: std::time::Instant::now(), hours: max_hours };
    let result = run_locked(&lock, spec, dir, limits, detached, &budget);
    if let Err(e) = &result {
        crate::runs::record_failure(dir, &format!("{e:#}"));
    }
    result
}

fn run_locked(
    _lock: &crate::runs::Lock,
    spec: &Spec,
    dir: &Path,
    limits: &crate::seeds::Limits,
    detached: bool,
    budget: &Budget,
) -> anyhow::Result<u8> {
    let prepared = prepare(spec, dir, limits)?;
    match crate::runs::read_job::<Spec>(dir, Kind::Sweep)? {
        Some(old) => anyhow::ensure!(
            old == *spec,
            "{} holds a sweep of another spec; run the same spec to continue it, or choose a new --run folder",
            dir.display()
        ),
        None => crate::runs::write_config(dir, Kind::Sweep, spec)?,
    }
    let (log, torn) = crate::runs::Log::<SweepEvent>::open(dir)?;
    if let Some(note) = torn {
        eprintln!("note: {note}");
    }
    let points = spec.points();
    if let Some(c) = &spec.corpus {
        let index = dir.join("index");
        if prepared.corpus.as_deref() == Some(index.as_path()) && !crate::corpus::is_index(&index) {
            eprintln!("indexing {}", c.display());
            crate::corpus::build(c, &index, &mut |_, _| {})?;
        }
    }
    let cancel = Arc::new(AtomicBool::new(false));
    crate::signals::watch(cancel.clone(), detached);
    let mut stages = Stages { dir, log, budget, detached, cancel };
    if let Some(seeded) = &spec.seeded {
        stages.log.append(&SweepEvent::Started { points: Vec::new() })?;
        return seeded::run(spec, seeded, &mut stages, &prepared.tasks);
    }
    stages.log.append(&SweepEvent::Started { points: points.clone() })?;
    let mut kept: BTreeMap<(usize, usize), Vec<crate::generate::samples::Sample>> = BTreeMap::new();
    for (&(s, r), &n) in &spec.generation_runs() {
        let name = Spec::gen_name(s, r);
        let gen = dir.join(&name);
        let what = format!("{name}: {n} samples from {s} seeds");
        if let Some(code) = stages.run("generate", &name, &name, &gen, &what)? {
            return Ok(code);
        }
        let samples = crate::generate::samples::SampleStore::open(&gen.join(crate::generate::pipeline::SAMPLES))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .0
            .samples()
            .to_vec();
        if samples.len() < n {
            stages.log.append(&SweepEvent::Short { seeds: s, asked: n, kept: samples.len() })?;
        }
        anyhow::ensure!(!samples.is_empty(), "{name}: the model kept no sample; nothing to train on");
        kept.insert((s, r), samples);
    }
    let mut used = BTreeMap::new();
    let runs = spec.runs();
    for (i, (p, r)) in runs.iter().enumerate() {
        let name = replicate(&p.name(), *r);
        let point_dir = layout::point(dir, &name);
        std::fs::create_dir_all(&point_dir).with_context(|| format!("cannot create {}", point_dir.display()))?;
        let samples = &kept[&(p.seeds, *r)];
        let count = p.samples.min(samples.len());
        used.insert((*p, *r), count);
        let data = layout::point_data(dir, &name);
        if !data.exists() {
            let mut text = String::new();
            for s in &samples[..count] {
                let line = serde_json::json!({"instruction": s.instruction, "input": s.input, "output": s.output});
                text.push_str(&line.to_string());
                text.push('\n');
            }
            crate::fsutil::atomic_write(&data, text.as_bytes())
                .with_context(|| format!("cannot write {}", data.display()))?;
        }
        let train_dir = layout::point_train(dir, &name);
        if !crate::train::run::trained(&train_dir) {
            if let Some(code) = stages.run("train", &name, &name, &train_dir, &format!("{name} on {count} samples"))? {
                return Ok(code);
            }
        }
        if let Some(code) = stages.eval_point(&name, &name, i == 0)? {
            return Ok(code);
        }
    }
    let rows = rows(spec, &layout::eval(dir), &used)?;
    write_report(dir, spec, &rows)?;
    match plot::write(dir, &rows) {
        Ok(files) if !files.is_empty() => eprintln!("{} plots in {}", files.len(), dir.join("plots").display()),
        Ok(_) => eprintln!("no plots: each axis needs two values or more"),
        Err(e) => eprintln!("warning: no plots: {e:#}"),
    }
    stages.log.append(&SweepEvent::Finished { report: dir.join("report.json") })?;
    eprintln!("report: {}", dir.join("report.md").display());
    Ok(0)
}

/// How a sweep runs its stages. Each stage runs in a process of its own (`sweep --stage`): a
/// stage's memory is returned to the system when it ends, so the sweep's peak is its largest
/// stage's, not their sum.
struct Stages<'a> {
    dir: &'a Path,
    log: crate::runs::Log<SweepEvent>,
    budget: &'a Budget,
    detached: bool,
    cancel: Arc<AtomicBool>,
}

impl Stages<'_> {
    /// Runs the stage `stage` `name` (the child's stage `child_name`, its run folder `stage_dir`)
    /// unless the budget is spent; Some(exit code) when the sweep stops there.
    fn run(
        &mut self,
        stage: &str,
        name: &str,
        child_name: &str,
        stage_dir: &Path,
        what: &str,
    ) -> anyhow::Result<Option<u8>> {
        if self.budget.spent() {
            return self.budget.stop(&mut self.log, stage, name).map(Some);
        }
        self.log.append(&SweepEvent::Stage { stage: stage.into(), name: name.into() })?;
        eprintln!("── {stage} {what}");
        if child(self.dir, child_name, stage_dir, self.detached, &self.cancel)? == 130 {
            self.log.append(&SweepEvent::Stopped { stage: stage.into(), name: name.into() })?;
            return Ok(Some(130));
        }
        Ok(None)
    }
}

impl Stages<'_> {
    /// Evaluates point `name` as soon as it is trained (the base with the first point) in the
    /// one evaluation run, which grows by each point's adapters, so the curves fill in as points
    /// finish; nothing to do when that run already finished with `last`, the point's last
    /// adapter. Some(exit code) when the sweep stops there.
    fn eval_point(&mut self, name: &str, last: &str, first: bool) -> anyhow::Result<Option<u8>> {
        let eval_dir = layout::eval(self.dir);
        let evaluated = crate::runs::state(&eval_dir) == crate::runs::State::Finished
            && crate::runs::read_job::<crate::eval::run::EvalJob>(&eval_dir, Kind::Eval)
                .ok()
                .flatten()
                .is_some_and(|job| job.adapters.iter().any(|(n, _)| n == last));
        if evaluated {
            return Ok(None);
        }
        let what = format!("{name}{}", if first { " and the base" } else { "" });
        self.run("eval", name, &format!("eval:{name}"), &eval_dir, &what)
    }
}

/// What every stage of a sweep shares: the seeds, their one shuffle, the corpus index and the mode.
struct Prepared {
    seeds: crate::seeds::SeedFile,
    order: Vec<usize>,
    corpus: Option<PathBuf>,
    mode: Mode,
    choice: Choice,
    /// A seeded sweep's tasks (empty otherwise).
    tasks: seeded::Tasks,
}

fn prepare(spec: &Spec, dir: &Path, limits: &crate::seeds::Limits) -> anyhow::Result<Prepared> {
    let loaded = crate::seeds::load(&spec.seeds, limits)
        .with_context(|| format!("cannot read the seed file {}", spec.seeds.display()))?;
    anyhow::ensure!(
        loaded.is_valid(),
        "{}: {} problems; fix them (`selfspec seeds validate`) before sweeping",
        spec.seeds.display(),
        loaded.errors()
    );
    spec.check(loaded.file.seeds.len())?;
    let mut tasks = seeded::Tasks::new();
    if let Some(seeded) = &spec.seeded {
        // Checked before the folder records the spec: a wrong file is fixed and run again.
        tasks = seeded::tasks(spec, &loaded.file)?;
        seeded.check(&tasks.keys().cloned().collect::<Vec<_>>())?;
    }
    let corpus = match &spec.corpus {
        Some(c) if c.is_file() || (c.is_dir() && !crate::corpus::is_index(c)) => Some(dir.join("index")),
        other => other.clone(),
    };
    let mode = spec.mode.unwrap_or(if corpus.is_some() { Mode::Marginal } else { Mode::None });
    // Nested subsets: one shuffle, each point takes a prefix.
    let mut order: Vec<usize> = (0..loaded.file.seeds.len()).collect();
    crate::rng::Rng::new(spec.seed ^ 0x5eed_5b5e).shuffle(&mut order);
    let choice = Choice { name: spec.model.clone(), device: DeviceChoice::Auto, dtype: DTypeChoice::Auto, int8: false };
    Ok(Prepared { seeds: loaded.file, order, corpus, mode, choice, tasks })
}

/// The spec a sweep folder records (`selfspec sweep --run DIR` continues it without its file).
pub fn recorded(dir: &Path) -> anyhow::Result<Spec> {
    crate::runs::read_job::<Spec>(dir, Kind::Sweep)?.with_context(|| {
        format!("{} holds no sweep; name its file: `selfspec sweep SPEC.yaml --run {}`", dir.display(), dir.display())
    })
}

/// Runs one stage of the sweep in `dir` in this process (`sweep --run DIR --stage NAME`, started
/// by the sweep itself): `gen-s{S}`, a point's name (its training) or `eval:POINT` (the base and
/// every point up to that one). The spec is the one the sweep folder records. The exit code (0
/// finished, 130 stopped).
pub fn stage(dir: &Path, name: &str, limits: &crate::seeds::Limits, detached: bool) -> anyhow::Result<u8> {
    let spec = recorded(dir)?;
    if let Some(seeded) = &spec.seeded {
        return seeded::stage(&spec, seeded, dir, name, limits, detached);
    }
    let p = prepare(&spec, dir, limits)?;
    let runs = spec.runs();
    let gen = name.strip_prefix("gen-s").and_then(|rest| match rest.split_once("-r") {
        Some((s, r)) => Some((s.parse::<usize>().ok()?, r.parse::<usize>().ok()?)),
        None => Some((rest.parse::<usize>().ok()?, 0)),
    });
    if let Some((s, r)) = gen {
        let n = *spec
            .generation_runs()
            .get(&(s, r))
            .with_context(|| format!("the sweep has no point with {s} seeds (replicate {r})"))?;
        let gen = dir.join(name);
        std::fs::create_dir_all(&gen).with_context(|| format!("cannot create {}", gen.display()))?;
        let seed_file = gen.join("seeds.yaml");
        if !seed_file.exists() {
            let mut subset = p.seeds.clone();
            subset.seeds = p.order[..s].iter().map(|&i| p.seeds.seeds[i].clone()).collect();
            crate::seeds::save(&seed_file, &subset)?;
        }
        let backend = match &spec.backend {
            Some(remote) => crate::backend::Backend::Remote(remote.clone()),
            None => crate::backend::Backend::Local(p.choice),
        };
        let opts = crate::generate::command::Options {
            seeds: seed_file,
            backend,
            n,
            run: gen,
            corpus: p.corpus,
            k: None,
            mode: Some(p.mode),
            seed: spec.seed.wrapping_add(r as u64),
            jsonl: false,
            adapter: None,
            contrastive: false,
            alpha: 0.1,
            detached,
        };
        return crate::generate::command::generate(opts, &spec.generation, limits, dir);
    }
    let run_name = |(q, r): &(Point, usize)| replicate(&q.name(), *r);
    if let Some(last) = name.strip_prefix("eval:") {
        let upto = runs
            .iter()
            .position(|q| run_name(q) == last)
            .with_context(|| format!("the sweep has no point {last:?} to evaluate"))?;
        let adapters = runs[..=upto]
            .iter()
            .map(|q| crate::model::adapter::Spec {
                name: run_name(q),
                dir: crate::train::run::adapter_dir(&layout::point_train(dir, &run_name(q))),
            })
            .collect();
        let (data, datasets, shots) = (spec.eval.clone(), spec.datasets.clone(), spec.shots.clone());
        let mut opts =
            crate::eval::command::Options::new(p.choice, adapters, data, datasets, shots, layout::eval(dir), detached);
        // The report's statistics cost draws for every adapter so far: the last point's only.
        opts.intervals = upto + 1 == runs.len();
        return crate::eval::command::eval(opts);
    }
    let (_, r) = runs.iter().find(|q| run_name(q) == name).with_context(|| {
        format!("the sweep has no stage {name:?}: gen-s<seeds>[-r<replicate>], a point's name or eval:<point>")
    })?;
    let train_dir = layout::point_train(dir, name);
    let opts = crate::train::command::Options {
        model: p.choice,
        data: layout::point_data(dir, name),
        resume: train_dir.join(crate::runs::CONFIG).exists(),
        run: Some(train_dir),
        settings_file: None,
        qlora: None,
        dequantize: false,
        plan_only: false,
        prompt_format: crate::prompts::PromptFormat::Auto,
        init: None,
        detached,
    };
    let config = crate::train::TrainConfig { seed: spec.train.seed.wrapping_add(*r as u64), ..spec.train.clone() };
    crate::train::command::train(opts, &config)
}

/// Runs stage `name` as a child process (this program, `sweep --stage`) and waits for it; a
/// cancelled sweep passes SIGTERM on, and the child is told SIGTERM if the sweep dies (even by
/// kill -9). Before starting it waits for a stopping stage process of an earlier sweep process.
fn child(dir: &Path, name: &str, stage_dir: &Path, detached: bool, cancel: &AtomicBool) -> anyhow::Result<u8> {
    let waited = std::time::Instant::now();
    while let crate::runs::State::Running(_) = crate::runs::state(stage_dir) {
        if waited.elapsed() > std::time::Duration::from_secs(60) {
            anyhow::bail!(
                "{} is still in use by another process; stop it (`selfspec stop {}`) and run the sweep again",
                stage_dir.display(),
                stage_dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let exe = std::env::current_exe().context("cannot find this program to run the stage")?;
    let mut cmd = std::process::Command::new(exe);
    // The options before the command (--config, --workspace) hold for the stage too.
    cmd.args(std::env::args_os().skip(1).take_while(|a| a != "sweep"));
    cmd.arg("sweep").arg("--run").arg(dir).arg("--stage").arg(name);
    if detached {
        cmd.arg("--detached");
    }
    let status = crate::runs::run_child(&mut cmd, cancel).with_context(|| format!("cannot run the stage {name}"))?;
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(0),
        (Some(130), _) => Ok(130),
        (Some(code), _) => anyhow::bail!("the stage {name} failed (exit code {code}); its error is above"),
        (None, Some(sig)) => anyhow::bail!(
            "the stage {name} was killed by signal {sig}{}; run the sweep again to continue it",
            if sig == libc::SIGKILL { " (out of memory?)" } else { "" }
        ),
        (None, None) => anyhow::bail!("the stage {name} ended without an exit code"),
    }
}

/// The time a sweep may take (`--max-hours`), checked before each stage.
pub struct Budget {
    start: std::time::Instant,
    hours: Option<f64>,
}

impl Budget {
    fn spent(&self) -> bool {
        self.hours.is_some_and(|h| self.start.elapsed().as_secs_f64() >= h * 3600.0)
    }

    fn stop(&self, log: &mut crate::runs::Log<SweepEvent>, stage: &str, name: &str) -> anyhow::Result<u8> {
        eprintln!(
            "stopped before {stage} {name}: --max-hours {} is spent; run the same command to continue",
            self.hours.unwrap_or(0.0)
        );
        log.append(&SweepEvent::Stopped { stage: stage.into(), name: name.into() })?;
        Ok(130)
    }
}

/// What a sweep will do, before it starts: per stage the work (prompts, tokens, steps, answers)
/// and a rough time from this machine's speed on the model (a short decoding probe), or from the
/// sweep's own finished stages where there are some.
pub fn plan(spec: &Spec, dir: &Path, limits: &crate::seeds::Limits) -> anyhow::Result<String> {
    use std::fmt::Write;
    let loaded = crate::seeds::load(&spec.seeds, limits)
        .with_context(|| format!("cannot read the seed file {}", spec.seeds.display()))?;
    spec.check(loaded.file.seeds.len())?;
    let (decode_rate, prefill_rate) = speed(spec)?;
    if let Some(seeded) = &spec.seeded {
        return seeded::plan(spec, seeded, dir, limits, decode_rate, prefill_rate);
    }
    let points = spec.points();
    let runs = spec.runs();
    let g = &spec.generation;
    let mode = spec.mode.unwrap_or(if spec.corpus.is_some() { Mode::Marginal } else { Mode::None });
    let rows = if mode == Mode::Marginal { g.k.max(1) } else { 1 };
    let most = spec.generation_runs();
    let mut out = String::new();
    let repeats =
        if spec.repeats > 1 { format!(" × {} replicates = {} runs", spec.repeats, runs.len()) } else { String::new() };
    let _ = writeln!(out, "sweep of {} ({} points{repeats}), {}", spec.model, points.len(), dir.display());
    let _ = writeln!(
        out,
        "speed on this machine: decode {decode_rate:.0} tokens/s (batch 8), prefill {prefill_rate:.0} tokens/s"
    );
    let mut total = 0.0;
    for (&(s, r), &n) in &most {
        let gen = dir.join(Spec::gen_name(s, r));
        let done = crate::generate::samples::SampleStore::open(&gen.join(crate::generate::pipeline::SAMPLES))
            .map(|(st, _)| st.len())
            .unwrap_or(0);
        let budget = g.budget(n);
        // Every prompt's list at its token limit, every response at its limit: the upper bound.
        let tokens = budget * g.instruction_max_new_tokens + n * g.response_max_new_tokens * rows;
        let secs = tokens as f64 / decode_rate;
        total += secs;
        let _ = writeln!(
            out,
            "generate {}: {n} samples ({done} kept already) from {s} seeds; at most {budget} prompts, {tokens} tokens: at most {}",
            Spec::gen_name(s, r),
            crate::runs::duration(secs)
        );
    }
    let c = &spec.train;
    for (p, r) in &runs {
        let per_step = c.per_device_train_batch_size * c.gradient_accumulation_steps;
        let (steps, _) = crate::train::Plan::steps(c, p.samples);
        // A step reads its examples forward and backward: about three forward passes.
        let tokens = steps * per_step * c.max_seq_length.min(512);
        let secs = 3.0 * tokens as f64 / prefill_rate;
        total += secs;
        let warm = c.warmup(steps);
        let _ = writeln!(
            out,
            "train {}: {} samples, {steps} steps (warm-up {warm}, peak lr {:.1e}): about {}",
            replicate(&p.name(), *r),
            p.samples,
            c.learning_rate,
            crate::runs::duration(secs)
        );
        if let Some(w) = crate::train::Plan::warmup_warning(c, steps) {
            let _ = writeln!(out, "  warning: {w}");
        }
    }
    let datasets = crate::eval::data::load_dir(&spec.eval, &spec.datasets)?;
    let tests: usize = datasets.iter().map(|d| d.test.len()).sum();
    let answers = (runs.len() + 1) * tests * spec.shots.len();
    let secs = answers as f64 * 32.0 / decode_rate;
    total += secs;
    let _ = writeln!(
        out,
        "eval: {answers} answers ({} models × {tests} examples × {} k): about {}",
        runs.len() + 1,
        spec.shots.len(),
        crate::runs::duration(secs)
    );
    let _ =
        writeln!(out, "in all: about {} (rough: generation counted at its token limits)", crate::runs::duration(total));
    Ok(out)
}

/// This machine's speed on the sweep's model (a short decoding probe): decode and prefill tokens
/// per second. Decode: 8 prompts of 128 random tokens, 32 new tokens each, batched.
pub fn speed(spec: &Spec) -> anyhow::Result<(f64, f64)> {
    let model = Choice { name: spec.model.clone(), device: DeviceChoice::Auto, dtype: DTypeChoice::Auto, int8: false }
        .load()?;
    let vocab = model.decoder.spec.vocab_size as u64;
    let mut rng = crate::rng::Rng::new(7);
    let probe: Vec<crate::decode::Request> = (0..8)
        .map(|_| crate::decode::Request {
            ignore_eos: true,
            ..crate::decode::Request::new((0..128).map(|_| (rng.next_u64() % vocab) as u32).collect(), 32)
        })
        .collect();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let opts = crate::decode::Options { max_batch: 8, ..Default::default() };
    let (_, t) = crate::decode::generate(&model, &probe, &opts, &mut |_| {}, &cancel)?;
    let decode_rate = t.decode_tokens as f64 / t.decode_secs.max(1e-9);
    let prefill_rate = t.prefill_tokens as f64 / t.prefill_secs.max(1e-9);
    Ok((decode_rate, prefill_rate))
}

/// Each axis's values with the point each stands for.
fn axis_points(spec: &Spec) -> Vec<(&'static str, Vec<(usize, Point)>)> {
    let mut axes: Vec<(&str, Vec<(usize, Point)>)> = Vec::new();
    if spec.grid {
        for p in spec.points() {
            axes.push(("seeds", vec![(p.seeds, p)]));
            axes.push(("samples", vec![(p.samples, p)]));
        }
    } else {
        let base = spec.base;
        let mut seeds: Vec<(usize, Point)> =
            spec.axes.seeds.iter().map(|&s| (s, Point { seeds: s, samples: base.samples })).collect();
        let mut samples: Vec<(usize, Point)> =
            spec.axes.samples.iter().map(|&n| (n, Point { seeds: base.seeds, samples: n })).collect();
        // A sweep without axes is one point: one table, under the seeds axis.
        if seeds.is_empty() {
            seeds.push((base.seeds, base));
        }
        if samples.is_empty() && !spec.axes.seeds.is_empty() {
            samples.push((base.samples, base));
        }
        axes.push(("seeds", seeds));
        axes.push(("samples", samples));
    }
    axes
}

/// The report rows from the sweep's evaluation (`eval_dir`): for each axis value, dataset and
/// k the base's score and the tuned point's (its replicates together) with intervals, the
/// paired comparison of the two, and the same averaged over the datasets.
pub fn rows(spec: &Spec, eval_dir: &Path, used: &BTreeMap<(Point, usize), usize>) -> anyhow::Result<Vec<Row>> {
    use crate::eval::report::{per_example, summarize, Sample, Summary};
    let job = crate::runs::read_job::<crate::eval::run::EvalJob>(eval_dir, Kind::Eval)?
        .with_context(|| format!("{} holds no evaluation", eval_dir.display()))?;
    let settings = job.stats.unwrap_or_default();
    let report = crate::eval::run::Report::read(eval_dir)?;
    let predictions: Vec<crate::eval::run::Prediction> =
        crate::fsutil::read_jsonl(&eval_dir.join(crate::eval::run::PREDICTIONS))?;
    let scores = per_example(&predictions);
    let get = |m: &str, d: &str, k: usize| scores.get(&(m.to_string(), d.to_string(), k));
    let repeats = spec.repeats.max(1);
    let mut out = Vec::new();
    let row = |axis: &str, value: usize, model: &str, dataset: &str, k: usize, s: &Summary, used: Option<usize>| Row {
        axis: axis.to_string(),
        value,
        model: model.into(),
        dataset: dataset.to_string(),
        k,
        f1: s.f1.mean,
        rouge_l: s.rouge_l.mean,
        samples_used: used,
        f1_ci: Some(s.f1.ci),
        rouge_l_ci: Some(s.rouge_l.ci),
        vs_base: s.vs.clone(),
        replicates: s.replicates,
        replicate_sd: s.replicate_sd,
    };
    for (axis, values) in axis_points(spec) {
        for (value, point) in values {
            let names: Vec<String> = (0..repeats).map(|r| replicate(&point.name(), r)).collect();
            let samples_used = (0..repeats).filter_map(|r| used.get(&(point, r)).copied()).min();
            for &k in &spec.shots {
                let mut base_all = Vec::new();
                let mut tuned_all = Vec::new();
                let first = out.len();
                for d in &report.datasets {
                    let Some(base) = get(crate::eval::run::BASE, d, k) else { continue };
                    let reps: Vec<_> = names.iter().filter_map(|n| get(n, d, k)).collect();
                    let base = Sample::from(base);
                    let base_row = summarize(&[&base], None, false, &settings);
                    out.push(row(axis, value, "base", d, k, &base_row, None));
                    if reps.len() != repeats || reps.iter().any(|r| r.f1.len() != base.f1.n()) {
                        base_all.push(base);
                        continue;
                    }
                    let tuned = Sample::replicates(&reps);
                    let s = summarize(&[&tuned], Some(&[&base]), report.labels.contains(d), &settings);
                    out.push(row(axis, value, "tuned", d, k, &s, samples_used));
                    base_all.push(base);
                    tuned_all.push(tuned);
                }
                // Holm across this value's datasets, per metric.
                let idx: Vec<usize> = (first..out.len()).filter(|&i| out[i].vs_base.is_some()).collect();
                for f1 in [true, false] {
                    let pick = |r: &mut Row| -> f64 {
                        let v = r.vs_base.as_ref().expect("filtered");
                        if f1 {
                            v.f1.p
                        } else {
                            v.rouge_l.p
                        }
                    };
                    let ps: Vec<f64> = idx.iter().map(|&i| pick(&mut out[i])).collect();
                    for (&i, h) in idx.iter().zip(crate::eval::stats::holm(&ps)) {
                        let v = out[i].vs_base.as_mut().expect("filtered");
                        if f1 {
                            v.f1.holm_p = Some(h);
                        } else {
                            v.rouge_l.holm_p = Some(h);
                        }
                    }
                }
                if !base_all.is_empty() {
                    let b: Vec<&Sample> = base_all.iter().collect();
                    out.push(row(axis, value, "base", AVERAGE, k, &summarize(&b, None, false, &settings), None));
                    if tuned_all.len() == base_all.len() {
                        let t: Vec<&Sample> = tuned_all.iter().collect();
                        let s = summarize(&t, Some(&b), false, &settings);
                        out.push(row(axis, value, "tuned", AVERAGE, k, &s, samples_used));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The dataset name of the rows that average over the datasets.
pub const AVERAGE: &str = "average";

fn write_report(dir: &Path, spec: &Spec, rows: &[Row]) -> anyhow::Result<()> {
    use crate::eval::report::{delta_text, p_text, with_interval};
    crate::fsutil::atomic_write(&dir.join("report.json"), serde_json::to_string_pretty(rows)?.as_bytes())?;
    let mut csv = String::from(
        "axis,value,model,dataset,k,f1,f1_lo,f1_hi,rougeL,rougeL_lo,rougeL_hi,samples_used,replicates,f1_sd_replicates,\
         delta_f1,delta_f1_lo,delta_f1_hi,p_f1,holm_p_f1,detectable_f1,delta_rougeL,delta_rougeL_lo,delta_rougeL_hi,\
         p_rougeL,holm_p_rougeL,detectable_rougeL\n",
    );
    let num = crate::eval::report::csv_number;
    for r in rows {
        let used = r.samples_used.map(|n| n.to_string()).unwrap_or_default();
        let d =
            |f1: bool| crate::eval::report::csv_delta(r.vs_base.as_ref().map(|v| if f1 { &v.f1 } else { &v.rouge_l }));
        csv.push_str(&format!(
            "{},{},{},{},{},{:.4},{},{},{:.4},{},{},{used},{},{},{},{}\n",
            r.axis,
            r.value,
            r.model,
            r.dataset,
            r.k,
            r.f1,
            num(r.f1_ci.map(|c| c[0])),
            num(r.f1_ci.map(|c| c[1])),
            r.rouge_l,
            num(r.rouge_l_ci.map(|c| c[0])),
            num(r.rouge_l_ci.map(|c| c[1])),
            r.replicates,
            num(r.replicate_sd.map(|s| s[0])),
            d(true),
            d(false),
        ));
    }
    crate::fsutil::atomic_write(&dir.join("report.csv"), csv.as_bytes())?;
    // Markdown: per axis and k, dataset × value: the tuned F1 with its interval, and its Δ
    // against the base with the paired interval (`*`: significant after Holm).
    let repeats = spec.repeats.max(1);
    let mut md = format!(
        "# Sweep of {}\n\nF1 (0–100) of the tuned model with its 95 % bootstrap interval; below it Δ = tuned − base on \
         the same examples with its paired-bootstrap interval and p (approximate randomisation), Holm-adjusted across the \
         datasets (the average's p is not adjusted); `*`: that p < 0.05 and the interval clear of 0.{}\n",
        spec.model,
        if repeats > 1 {
            format!(
                " Each point ran {repeats} times (generation and training seeds + 0…{}); its score is the mean of the \
                 replicates, its interval resamples the examples (each example's mean over the replicates) and is widened by the \
                 replicates' spread (t with {} degrees of freedom × their sd / √{repeats}), and ± gives the sd of the \
                 replicates' means.",
                repeats - 1,
                repeats - 1
            )
        } else {
            String::new()
        }
    );
    let mut datasets: Vec<&str> = rows.iter().map(|r| r.dataset.as_str()).filter(|d| *d != AVERAGE).collect();
    datasets.sort();
    datasets.dedup();
    datasets.push(AVERAGE);
    for axis in ["seeds", "samples"] {
        let mut values: Vec<usize> = rows.iter().filter(|r| r.axis == axis).map(|r| r.value).collect();
        values.sort();
        values.dedup();
        if values.is_empty() {
            continue;
        }
        for &k in &spec.shots {
            md.push_str(&format!("\n## {axis}, {k}-shot\n\n| dataset | base |"));
            for v in &values {
                md.push_str(&format!(" {axis} {v} |"));
            }
            md.push_str("\n|---|---:|");
            md.push_str(&"---:|".repeat(values.len()));
            md.push('\n');
            for d in &datasets {
                let find = |v: usize, m: &str| {
                    rows.iter().find(|r| r.axis == axis && r.value == v && r.k == k && r.dataset == *d && r.model == m)
                };
                let base = values.first().and_then(|&v| find(v, "base"));
                let label = if *d == AVERAGE { "**average**".to_string() } else { d.to_string() };
                md.push_str(&format!("| {label} | {} |", base.map_or("–".into(), |b| with_interval(b.f1, b.f1_ci))));
                for &v in &values {
                    match find(v, "tuned") {
                        Some(t) => {
                            let sd = t.replicate_sd.map_or(String::new(), |s| format!(" ±{:.1}", s[0]));
                            let delta = t.vs_base.as_ref().map_or(String::new(), |x| {
                                format!("<br>{} p {}", delta_text(&x.f1), p_text(x.f1.holm_p.unwrap_or(x.f1.p)))
                            });
                            md.push_str(&format!(" {}{sd}{delta} |", with_interval(t.f1, t.f1_ci)));
                        }
                        None => md.push_str(" – |"),
                    }
                }
                md.push('\n');
            }
            let detect: Vec<String> = values
                .iter()
                .filter_map(|&v| {
                    rows.iter()
                        .find(|r| {
                            r.axis == axis && r.value == v && r.k == k && r.dataset == AVERAGE && r.model == "tuned"
                        })
                        .and_then(|r| r.vs_base.as_ref())
                        .map(|x| format!("{axis} {v}: {:.1}", x.f1.detectable))
                })
                .collect();
            if !detect.is_empty() {
                md.push_str(&format!(
                    "\nThe smallest average Δ F1 these examples detect (80 % power, 5 %): {}.\n",
                    detect.join(", ")
                ));
            }
        }
    }
    crate::fsutil::atomic_write(&dir.join("report.md"), md.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_vary_one_axis_around_the_base_without_repeats() {
        let spec = Spec {
            model: "m".into(),
            seeds: "s.yaml".into(),
            corpus: None,
            mode: None,
            eval: "e".into(),
            datasets: Vec::new(),
            shots: vec![0],
            base: Point { seeds: 80, samples: 1000 },
            axes: Axes { seeds: vec![20, 40, 80], samples: vec![250, 1000] },
            grid: false,
            seed: 0,
            generation: Settings::default(),
            train: TrainConfig::default(),
            seeded: None,
            backend: None,
            repeats: 1,
        };
        let names: Vec<String> = spec.points().iter().map(Point::name).collect();
        assert_eq!(names, ["s80-n1000", "s20-n1000", "s40-n1000", "s80-n250"]);
        let err = spec.check(30).unwrap_err().to_string();
        assert!(err.contains("asks for 80 seeds but s.yaml holds 30"), "{err}");
        let grid = Spec { grid: true, ..spec };
        assert_eq!(grid.points().len(), 1 + 6 - 1);
    }

    #[test]
    fn axes_that_list_nothing_are_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.yaml");
        let head = "model: m\nseeds: s.yaml\neval: e\nshots: [0]\nbase: {seeds: 10, samples: 10}\n";
        for (axes, want) in [
            ("axes: {}\n", "sweep.yaml:6:7: axes: lists no seed count"),
            ("axes:\n  seeds: []\n", "axes: lists no seed count"),
            ("axes:\n  seeds: []\n  samples: [5]\n", "sweep.yaml:7:10: axes.seeds: [] lists nothing"),
        ] {
            std::fs::write(&path, format!("{head}{axes}")).unwrap();
            let err = Spec::load(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{axes}: {err}");
        }
        std::fs::write(&path, head).unwrap();
        assert!(Spec::load(&path).is_ok(), "no axes: the base point alone");
    }
}
