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
//! Folder: `config.yaml` (kind sweep, the spec), `run.lock`, `events.jsonl`, `index/` (only in
//! sweeps started before a corpus was indexed beside itself), `gen-s{S}/` (a generation run per seed count, with its `seeds.yaml`),
//! `points/s{S}-n{N}/` (`train.jsonl`, the first N samples, and `train/`), `eval/` (the base and
//! every point's adapter), `report.json`, `report.csv`, `report.md`.

pub mod follow;
pub mod layout;
pub mod plot;
pub mod report;
pub mod seeded;
pub mod spec;
mod stages;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use crate::generate::pipeline::Mode;
use crate::model::{Choice, DTypeChoice, DeviceChoice};
use crate::runs::Kind;

use report::write_report;
pub use report::{rows, Row, AVERAGE};
pub use spec::{replicate, Axes, Point, SeedPoint, Seeded, Spec, MAX_REPEATS};
use stages::Stages;
pub use stages::{Budget, SweepEvent};

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
    let budget = Budget::new(max_hours);
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
    // The one corpus rule: indexed once here, beside the corpus, so the generation stages find
    // it current.
    if let Some(c) = prepared.corpus.as_deref().filter(|c| !crate::corpus::is_index(c)) {
        crate::generate::command::index_of(c)?;
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
    // A corpus is given to every generation stage as it is, and indexed beside itself by the
    // rule every command follows; a sweep folder from before that rule keeps the `index/` it built.
    let corpus = match &spec.corpus {
        Some(_) if crate::corpus::is_index(&dir.join(layout::OLD_INDEX)) => Some(dir.join(layout::OLD_INDEX)),
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
            .map(|q| crate::model::adapters::adapter::Spec {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::pipeline::Settings;
    use crate::train::TrainConfig;

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
