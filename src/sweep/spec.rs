//! A sweep's file: the points around a base point ([`Spec`], its [`Axes`]) and a seeded sweep's
//! section ([`Seeded`]), read and checked before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::generate::pipeline::{Mode, Settings};
use crate::model::adapters::combine::Method;
use crate::train::{Init, TrainConfig};

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
    /// A Seeded LoRA sweep (see [`super::seeded`]) instead of the seeds and samples axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeded: Option<Seeded>,
    /// An OpenAI-compatible server serving `model` that the generation stages decode on (`endpoint`,
    /// `served_model`, …, as `generate --backend openai` takes them). Training, and so the
    /// evaluation of the adapters it makes, stays on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<crate::backend::Remote>,
}

fn default_shots() -> Vec<usize> {
    vec![0, 1, 5]
}

pub(super) fn one() -> usize {
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
        let text = crate::lines::read_text(path)?;
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

/// The `seeded:` section of a sweep file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seeded {
    /// The point the axes vary around.
    pub base: SeedPoint,
    /// Shares of the pooled data the seed expert trains on (0 < share ≤ 1).
    #[serde(default)]
    pub share: Vec<f64>,
    /// The seed expert's starting points: standard, random[:σ], task:DATASET, reptile[:T[:K]].
    #[serde(default)]
    pub init: Vec<Init>,
    /// How experts are merged (PEFT's combination types); cat is the exact mean of their updates.
    #[serde(default = "default_merge")]
    pub merge: Method,
    /// Points along each line between two experts (lmc).
    #[serde(default = "default_lmc_points")]
    pub lmc_points: usize,
}

fn default_merge() -> Method {
    Method::Cat
}

fn default_lmc_points() -> usize {
    5
}

/// One point: the seed expert's share of the pool and its start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPoint {
    pub share: f64,
    pub init: Init,
}

impl SeedPoint {
    /// `p10-standard`, `p5-task-bio-ner`, `p0.5-reptile-20-4`.
    pub fn name(&self) -> String {
        let pct = format!("{:.3}", self.share * 100.0);
        let pct = pct.trim_end_matches('0').trim_end_matches('.');
        let init: String = String::from(self.init.clone())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
            .collect();
        format!("p{pct}-{init}")
    }
}

impl Seeded {
    /// The base, then each share at the base's init, then each init at the base's share.
    pub fn points(&self) -> Vec<SeedPoint> {
        let mut out = vec![self.base.clone()];
        out.extend(self.share.iter().map(|&share| SeedPoint { share, init: self.base.init.clone() }));
        out.extend(self.init.iter().map(|init| SeedPoint { share: self.base.share, init: init.clone() }));
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|p| seen.insert(p.name()));
        out
    }

    /// What is wrong before anything starts.
    pub fn check(&self, tasks: &[String]) -> anyhow::Result<()> {
        anyhow::ensure!(tasks.len() >= 2, "seeded: needs two tasks (datasets) or more to merge experts of");
        anyhow::ensure!(self.lmc_points >= 2, "seeded: lmc_points must be at least 2");
        for p in self.points() {
            anyhow::ensure!(
                p.share > 0.0 && p.share <= 1.0,
                "seeded: share {} is not in (0, 1]; write 0.05 for 5 %",
                p.share
            );
            match &p.init {
                Init::From(d) => anyhow::bail!(
                    "seeded: init from:{} is not a sweep choice; use standard, random, task:DATASET or reptile",
                    d.display()
                ),
                Init::Task(t) => anyhow::ensure!(
                    tasks.contains(t),
                    "seeded: init task:{t} names no task of the sweep; its tasks: {}",
                    tasks.join(", ")
                ),
                _ => {}
            }
        }
        Ok(())
    }
}
