//! The report built from scored predictions: cells, averages and pairs with their statistics.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::eval::data::Dataset;
use crate::eval::stats::{self, Delta, Estimate, Group, Settings};
use crate::metrics::squad_tokens;

/// The name the base model goes by in reports.
pub const BASE: &str = "base";

/// One scored answer, as predictions.jsonl holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub model: String,
    pub dataset: String,
    pub k: usize,
    pub index: usize,
    pub prediction: String,
    pub references: Vec<String>,
    pub f1: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub model: String,
    pub dataset: String,
    pub task: String,
    pub k: usize,
    pub n: usize,
    /// Means on 0–100.
    pub f1: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// 95 % bootstrap intervals of the means (absent in reports written before intervals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f1_ci: Option<[f64; 2]>,
    #[serde(default, rename = "rougeL_ci", skip_serializing_if = "Option::is_none")]
    pub rouge_l_ci: Option<[f64; 2]>,
    /// Exact match on the normalised answer (SQuAD's), 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<f64>,
    /// This model against the base on the same examples (absent for the base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_base: Option<Versus>,
}

/// B against A on the same examples, for both metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versus {
    pub f1: Delta,
    #[serde(rename = "rougeL")]
    pub rouge_l: Delta,
    /// The exact McNemar test on correct/incorrect (label sets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcnemar_p: Option<f64>,
}

/// A model's mean over the report's datasets at one k (intervals resample within each dataset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Average {
    pub model: String,
    pub k: usize,
    pub f1: Estimate,
    #[serde(rename = "rougeL")]
    pub rouge_l: Estimate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_base: Option<Versus>,
}

/// Adapter `b` against adapter `a` on one dataset (or, with `dataset` None, the average).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    pub a: String,
    pub b: String,
    pub dataset: Option<String>,
    pub k: usize,
    pub versus: Versus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub models: Vec<String>,
    pub datasets: Vec<String>,
    pub shots: Vec<usize>,
    pub cells: Vec<Cell>,
    /// Datasets whose answers are labels (exact match and McNemar reported).
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub averages: Vec<Average>,
    /// Every adapter against every later one (reports with two adapters or more).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<Pair>,
    /// Resamples, trials and seed of every interval and p (absent: a report from before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Settings>,
}

/// The most adapters a report compares with each other, pair by pair.
pub const MAX_PAIRED_ADAPTERS: usize = 6;

/// A dataset counts as a label set when every example has one reference and the normalised
/// references take at most 20 values, each value standing for two examples or more on average.
pub fn is_label_set(d: &Dataset) -> bool {
    if d.test.is_empty() || d.test.iter().any(|e| e.references.len() != 1) {
        return false;
    }
    let values: std::collections::BTreeSet<Vec<String>> =
        d.test.iter().map(|e| squad_tokens(&e.references[0])).collect();
    values.len() <= 20 && 2 * values.len() <= d.test.len()
}

/// SQuAD's exact match: the normalised prediction equals a normalised reference.
pub fn exact_match<R: AsRef<str>>(prediction: &str, references: &[R]) -> bool {
    let p = squad_tokens(prediction);
    references.iter().any(|r| squad_tokens(r.as_ref()) == p)
}

/// Per-example scores of one model on one dataset at one k, by example index (0–100).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PerExample {
    pub f1: Vec<f64>,
    pub rouge_l: Vec<f64>,
    pub exact: Vec<bool>,
}

/// (model, dataset, k).
pub type Key = (String, String, usize);

/// Each (model, dataset, k)'s scores in example order; a key whose indices are not exactly
/// 0..n (a partial run) is left out.
pub fn per_example(predictions: &[Prediction]) -> BTreeMap<Key, PerExample> {
    let mut rows: BTreeMap<Key, Vec<&Prediction>> = BTreeMap::new();
    for p in predictions {
        rows.entry((p.model.clone(), p.dataset.clone(), p.k)).or_default().push(p);
    }
    rows.into_iter()
        .filter_map(|(key, mut ps)| {
            // A line written twice (a run continued after a torn write) counts once: the first.
            ps.sort_by_key(|p| p.index);
            ps.dedup_by_key(|p| p.index);
            ps.iter().enumerate().all(|(i, p)| p.index == i).then(|| {
                let s = PerExample {
                    f1: ps.iter().map(|p| p.f1).collect(),
                    rouge_l: ps.iter().map(|p| p.rouge_l).collect(),
                    exact: ps.iter().map(|p| exact_match(&p.prediction, &p.references)).collect(),
                };
                (key, s)
            })
        })
        .collect()
}

/// B against A over groups of paired scores (one group a dataset).
pub fn versus(a: &[&Sample], b: &[&Sample], labels: bool, s: &Settings) -> Versus {
    let groups = |x: &[&Sample], f: fn(&Sample) -> &Group| x.iter().map(|v| f(v).clone()).collect::<Vec<_>>();
    let f1 = stats::paired(&groups(a, |v| &v.f1), &groups(b, |v| &v.f1), s);
    let rouge_l = stats::paired(&groups(a, |v| &v.rouge_l), &groups(b, |v| &v.rouge_l), s);
    let mcnemar_p = labels.then(|| {
        let (mut only_a, mut only_b) = (0, 0);
        for (a, b) in a.iter().zip(b) {
            for (x, y) in a.exact.iter().zip(&b.exact) {
                match (x, y) {
                    (true, false) => only_a += 1,
                    (false, true) => only_b += 1,
                    _ => {}
                }
            }
        }
        stats::mcnemar_exact(only_a, only_b)
    });
    Versus { f1, rouge_l, mcnemar_p }
}

/// One model's scores on one dataset as the statistics take them (replicates as rows).
#[derive(Debug, Clone)]
pub struct Sample {
    pub f1: Group,
    pub rouge_l: Group,
    /// Exact match of the first replicate, for McNemar.
    pub exact: Vec<bool>,
}

impl Sample {
    pub fn from(s: &PerExample) -> Sample {
        Sample { f1: Group::one(s.f1.clone()), rouge_l: Group::one(s.rouge_l.clone()), exact: s.exact.clone() }
    }

    /// Replicates of one model (the same examples, each scored by a model trained with other
    /// seeds): one row each.
    pub fn replicates(reps: &[&PerExample]) -> Sample {
        Sample {
            f1: Group { rows: reps.iter().map(|r| r.f1.clone()).collect() },
            rouge_l: Group { rows: reps.iter().map(|r| r.rouge_l.clone()).collect() },
            exact: reps.first().map(|r| r.exact.clone()).unwrap_or_default(),
        }
    }

    /// Several models' scores of each example averaged into one (the experts on the tasks not
    /// their own, say): one row.
    pub fn pooled(models: &[&PerExample]) -> Option<Sample> {
        let n = models.first().map_or(0, |m| m.f1.len());
        if models.is_empty() || models.iter().any(|m| m.f1.len() != n || m.rouge_l.len() != n) {
            return None;
        }
        let avg = |f: fn(&PerExample) -> &Vec<f64>| -> Vec<f64> {
            (0..n).map(|i| models.iter().map(|m| f(m)[i]).sum::<f64>() / models.len() as f64).collect()
        };
        Some(Sample { f1: Group::one(avg(|m| &m.f1)), rouge_l: Group::one(avg(|m| &m.rouge_l)), exact: Vec::new() })
    }

    /// The standard deviation across replicates of each replicate's mean (F1, ROUGE-L); None
    /// with one replicate.
    pub fn replicate_sd(&self) -> Option<[f64; 2]> {
        let sd = |g: &Group| {
            let means: Vec<f64> = g.rows.iter().map(|r| r.iter().sum::<f64>() / r.len().max(1) as f64).collect();
            let m = means.iter().sum::<f64>() / means.len() as f64;
            (means.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (means.len() - 1) as f64).sqrt()
        };
        (self.f1.rows.len() > 1).then(|| [sd(&self.f1), sd(&self.rouge_l)])
    }
}

/// A model's score over `samples` (one a dataset; the mean of their means) with intervals, and
/// against `reference` (the same datasets) when given: the numbers every report shows.
pub fn summarize(samples: &[&Sample], reference: Option<&[&Sample]>, labels: bool, s: &Settings) -> Summary {
    let groups = |f: fn(&Sample) -> &Group| samples.iter().map(|v| f(v).clone()).collect::<Vec<_>>();
    Summary {
        f1: stats::estimate(&groups(|v| &v.f1), s),
        rouge_l: stats::estimate(&groups(|v| &v.rouge_l), s),
        // McNemar compares two answer sheets; replicates have several, so none for them.
        vs: reference.map(|r| versus(r, samples, labels && samples.iter().all(|v| v.f1.rows.len() == 1), s)),
        replicates: samples.first().map_or(1, |v| v.f1.rows.len()),
        replicate_sd: match samples {
            [one] => one.replicate_sd(),
            _ => None,
        },
    }
}

/// What [`summarize`] gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub f1: Estimate,
    #[serde(rename = "rougeL")]
    pub rouge_l: Estimate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs: Option<Versus>,
    pub replicates: usize,
    /// The standard deviation of the replicates' means (F1, ROUGE-L).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_sd: Option<[f64; 2]>,
}

fn delta_mut(c: &mut Cell, f1: bool) -> &mut Delta {
    let v = c.vs_base.as_mut().expect("only cells with a comparison are adjusted");
    if f1 {
        &mut v.f1
    } else {
        &mut v.rouge_l
    }
}

/// Holm's adjustment over the datasets of each (model, k) comparison with the base.
fn adjust(cells: &mut [Cell]) {
    let mut groups: BTreeMap<(String, usize), Vec<usize>> = BTreeMap::new();
    for (i, c) in cells.iter().enumerate() {
        if c.vs_base.is_some() {
            groups.entry((c.model.clone(), c.k)).or_default().push(i);
        }
    }
    for idx in groups.values() {
        for metric in [true, false] {
            let ps: Vec<f64> = idx.iter().map(|&i| delta_mut(&mut cells[i], metric).p).collect();
            for (&i, h) in idx.iter().zip(stats::holm(&ps)) {
                delta_mut(&mut cells[i], metric).holm_p = Some(h);
            }
        }
    }
}

/// The report of scored predictions, with every interval and test (`settings`; None: the
/// means alone, as a sweep's evaluation writes it between its points).
pub fn build(
    models: &[String],
    datasets: &[Dataset],
    shots: &[usize],
    predictions: &[Prediction],
    settings: Option<&Settings>,
) -> Report {
    let scores = per_example(predictions);
    let labels: Vec<String> = datasets.iter().filter(|d| is_label_set(d)).map(|d| d.name.clone()).collect();
    let get = |m: &str, d: &str, k: usize| scores.get(&(m.to_string(), d.to_string(), k)).map(Sample::from);
    let mean = |g: &Group| stats::statistic(std::slice::from_ref(g));
    let mut cells = Vec::new();
    for m in models {
        for d in datasets {
            for &k in shots {
                let Some(s) = get(m, &d.name, k) else { continue };
                let n = s.f1.n();
                // One example has no spread to measure: its cell gets no interval or test.
                let settings = settings.filter(|_| n >= 2);
                let one = |g: &Group| settings.map(|st| stats::estimate(std::slice::from_ref(g), st));
                let (f1, rouge_l) = (one(&s.f1), one(&s.rouge_l));
                let vs_base = settings.and_then(|st| {
                    let b = (m != BASE).then(|| get(BASE, &d.name, k)).flatten().filter(|b| b.f1.n() == n)?;
                    Some(versus(&[&b], &[&s], labels.contains(&d.name), st))
                });
                cells.push(Cell {
                    model: m.clone(),
                    dataset: d.name.clone(),
                    task: d.task.clone(),
                    k,
                    n,
                    f1: mean(&s.f1),
                    rouge_l: mean(&s.rouge_l),
                    f1_ci: f1.map(|e| e.ci),
                    rouge_l_ci: rouge_l.map(|e| e.ci),
                    exact: Some(100.0 * s.exact.iter().filter(|&&x| x).count() as f64 / n.max(1) as f64),
                    vs_base,
                });
            }
        }
    }
    adjust(&mut cells);
    // Averages and pairs only with statistics (a report of means alone has its cells).
    let (averages, pairs) = match settings {
        Some(settings) => compare(models, datasets, shots, &scores, &labels, settings),
        None => (Vec::new(), Vec::new()),
    };
    Report {
        models: models.to_vec(),
        datasets: datasets.iter().map(|d| d.name.clone()).collect(),
        shots: shots.to_vec(),
        cells,
        labels,
        averages,
        pairs,
        stats: settings.copied(),
    }
}

/// Per k, over the datasets every model answered in full on the same examples: each model's
/// average with its interval and test against the base, and adapters against each other.
fn compare(
    models: &[String],
    datasets: &[Dataset],
    shots: &[usize],
    scores: &BTreeMap<Key, PerExample>,
    labels: &[String],
    settings: &Settings,
) -> (Vec<Average>, Vec<Pair>) {
    let get = |m: &str, d: &str, k: usize| scores.get(&(m.to_string(), d.to_string(), k)).map(Sample::from);
    let mut averages = Vec::new();
    let mut pairs = Vec::new();
    for &k in shots {
        // The datasets every model answered in full, on the same examples.
        let common: Vec<&Dataset> = datasets
            .iter()
            .filter(|d| {
                let ns: Vec<Option<usize>> = models.iter().map(|m| get(m, &d.name, k).map(|s| s.f1.n())).collect();
                ns.iter().all(|n| n.is_some_and(|n| n >= 2 && Some(n) == ns[0]))
            })
            .collect();
        if common.is_empty() {
            continue;
        }
        let of = |m: &str| common.iter().filter_map(|d| get(m, &d.name, k)).collect::<Vec<_>>();
        let base = of(BASE);
        for m in models {
            let own = of(m);
            let groups = |f: fn(&Sample) -> &Group| own.iter().map(|v| f(v).clone()).collect::<Vec<_>>();
            let vs_base = (m != BASE && !base.is_empty()).then(|| {
                let a: Vec<&Sample> = base.iter().collect();
                let b: Vec<&Sample> = own.iter().collect();
                Versus { mcnemar_p: None, ..versus(&a, &b, false, settings) }
            });
            averages.push(Average {
                model: m.clone(),
                k,
                f1: stats::estimate(&groups(|v| &v.f1), settings),
                rouge_l: stats::estimate(&groups(|v| &v.rouge_l), settings),
                vs_base,
            });
        }
        // Adapters against each other (a report of many adapters, a sweep's, compares each
        // with the base only: its pairs would be quadratic in number and size).
        let adapters: Vec<&String> = models.iter().filter(|m| *m != BASE).collect();
        let adapters = if adapters.len() <= MAX_PAIRED_ADAPTERS { adapters } else { Vec::new() };
        for (i, a) in adapters.iter().enumerate() {
            for b in &adapters[i + 1..] {
                let (sa, sb) = (of(a), of(b));
                for (j, d) in common.iter().enumerate() {
                    let v = versus(&[&sa[j]], &[&sb[j]], labels.contains(&d.name), settings);
                    pairs.push(Pair {
                        a: a.to_string(),
                        b: b.to_string(),
                        dataset: Some(d.name.clone()),
                        k,
                        versus: v,
                    });
                }
                let v = versus(&sa.iter().collect::<Vec<_>>(), &sb.iter().collect::<Vec<_>>(), false, settings);
                pairs.push(Pair { a: a.to_string(), b: b.to_string(), dataset: None, k, versus: v });
            }
        }
    }
    (averages, pairs)
}

impl Report {
    /// The report an evaluation run in `dir` wrote when it finished.
    pub fn read(dir: &Path) -> anyhow::Result<Report> {
        let path = dir.join("report.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}: the evaluation wrote no report", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not an evaluation report", path.display()))
    }

    pub fn cell(&self, model: &str, dataset: &str, k: usize) -> Option<&Cell> {
        self.cells.iter().find(|c| c.model == model && c.dataset == dataset && c.k == k)
    }

    pub fn average_of(&self, model: &str, k: usize) -> Option<&Average> {
        self.averages.iter().find(|a| a.model == model && a.k == k)
    }

    /// The mean over datasets of a model at k.
    pub fn average(&self, model: &str, k: usize, f1: bool) -> f64 {
        if let Some(a) = self.average_of(model, k) {
            return if f1 { a.f1.mean } else { a.rouge_l.mean };
        }
        let v: Vec<f64> = self
            .cells
            .iter()
            .filter(|c| c.model == model && c.k == k)
            .map(|c| if f1 { c.f1 } else { c.rouge_l })
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
}
