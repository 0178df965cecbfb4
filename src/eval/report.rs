//! The report of an evaluation run: each (model, dataset, k)'s mean F1 and ROUGE-L with its
//! bootstrap interval, each adapter against the base (and against every other adapter) as a
//! paired comparison — Δ, its interval, the randomisation p, Holm's p across the datasets, the
//! smallest detectable Δ, McNemar on label sets — and the same over the datasets' average;
//! written as JSON, CSV and Markdown. The methods are in `stats`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::data::Dataset;
use super::stats::{self, Delta, Estimate, Group, Settings};
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
    let mut averages = Vec::new();
    let mut pairs = Vec::new();
    // Averages and pairs only with statistics (a report of means alone has its cells).
    if let Some(settings) = settings {
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
    }
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

/// A number as report.csv writes it (empty when absent).
pub fn csv_number(x: Option<f64>) -> String {
    x.map_or(String::new(), |x| format!("{x:.4}"))
}

/// A comparison's six CSV fields: delta, its interval's ends, p, Holm's p, the detectable Δ.
pub fn csv_delta(d: Option<&Delta>) -> String {
    [
        csv_number(d.map(|d| d.delta)),
        csv_number(d.map(|d| d.ci[0])),
        csv_number(d.map(|d| d.ci[1])),
        csv_number(d.map(|d| d.p)),
        csv_number(d.and_then(|d| d.holm_p)),
        csv_number(d.map(|d| d.detectable)),
    ]
    .join(",")
}

/// `22.2 [18.1, 26.0]`
pub fn with_interval(mean: f64, ci: Option<[f64; 2]>) -> String {
    match ci {
        Some([lo, hi]) => format!("{mean:.1} [{lo:.1}, {hi:.1}]"),
        None => format!("{mean:.1}"),
    }
}

/// `+2.1 [−1.4, +5.6]`, with `*` when it stays significant after Holm.
pub fn delta_text(d: &Delta) -> String {
    let sign = |x: f64| {
        let s = format!("{x:+.1}");
        // −0.0 reads as 0.0; a minus sign, not a hyphen.
        if s == "-0.0" || s == "+0.0" {
            "0.0".to_string()
        } else {
            s.replacen('-', "−", 1)
        }
    };
    let mark = if d.significant() { "*" } else { "" };
    format!("{} [{}, {}]{mark}", sign(d.delta), sign(d.ci[0]), sign(d.ci[1]))
}

/// A p-value as reports print it.
pub fn p_text(p: f64) -> String {
    if p < 0.001 {
        "<0.001".to_string()
    } else {
        format!("{p:.3}")
    }
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

    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "model,dataset,task,k,n,f1,f1_lo,f1_hi,rougeL,rougeL_lo,rougeL_hi,exact,\
             delta_f1,delta_f1_lo,delta_f1_hi,p_f1,holm_p_f1,detectable_f1,\
             delta_rougeL,delta_rougeL_lo,delta_rougeL_hi,p_rougeL,holm_p_rougeL,detectable_rougeL,mcnemar_p\n",
        );
        let (num, delta) = (csv_number, csv_delta);
        let mut row = |model: &str,
                       dataset: &str,
                       task: &str,
                       k: usize,
                       n: String,
                       f1: Estimate,
                       r: Estimate,
                       exact: Option<f64>,
                       v: Option<&Versus>| {
            out.push_str(&format!(
                "{model},{dataset},{task},{k},{n},{:.4},{},{},{:.4},{},{},{},{},{},{}\n",
                f1.mean,
                num(Some(f1.ci[0]).filter(|x| x.is_finite())),
                num(Some(f1.ci[1]).filter(|x| x.is_finite())),
                r.mean,
                num(Some(r.ci[0]).filter(|x| x.is_finite())),
                num(Some(r.ci[1]).filter(|x| x.is_finite())),
                num(exact),
                delta(v.map(|v| &v.f1)),
                delta(v.map(|v| &v.rouge_l)),
                num(v.and_then(|v| v.mcnemar_p)),
            ));
        };
        let est = |m: f64, ci: Option<[f64; 2]>| Estimate { mean: m, ci: ci.unwrap_or([f64::NAN; 2]) };
        for c in &self.cells {
            row(
                &c.model,
                &c.dataset,
                &c.task,
                c.k,
                c.n.to_string(),
                est(c.f1, c.f1_ci),
                est(c.rouge_l, c.rouge_l_ci),
                c.exact,
                c.vs_base.as_ref(),
            );
        }
        for a in &self.averages {
            row(&a.model, "average", "", a.k, String::new(), a.f1, a.rouge_l, None, a.vs_base.as_ref());
        }
        out
    }

    /// What a table's numbers are: with intervals, or means only (a report built without
    /// statistics, such as a sweep's evaluation before its last point).
    fn scale(&self) -> &'static str {
        if self.stats.is_some() {
            "0–100, 95 % bootstrap intervals"
        } else {
            "0–100, means only: no statistics in this report"
        }
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let adapters: Vec<&String> = self.models.iter().filter(|m| *m != BASE).collect();
        for (metric, f1) in [("F1", true), ("ROUGE-L", false)] {
            for &k in &self.shots {
                if adapters.len() > 2 {
                    self.long_table(&mut out, metric, f1, k);
                    continue;
                }
                out.push_str(&format!("## {metric}, {k}-shot ({})\n\n| dataset | n |", self.scale()));
                for m in &self.models {
                    out.push_str(&format!(" {m} |"));
                    if *m != BASE {
                        out.push_str(&format!(" Δ {m} | p | Holm p | detectable Δ |"));
                    }
                }
                out.push_str("\n|---|---:|");
                out.push_str(&"---:|".repeat(self.models.len() + 4 * adapters.len()));
                out.push('\n');
                let pick = |v: &Versus| if f1 { v.f1 } else { v.rouge_l };
                for d in &self.datasets {
                    let n = self.cell(BASE, d, k).or_else(|| self.models.iter().find_map(|m| self.cell(m, d, k)));
                    out.push_str(&format!("| {d} | {} |", n.map_or("–".to_string(), |c| c.n.to_string())));
                    for m in &self.models {
                        match self.cell(m, d, k) {
                            Some(c) => {
                                let (v, ci) = if f1 { (c.f1, c.f1_ci) } else { (c.rouge_l, c.rouge_l_ci) };
                                out.push_str(&format!(" {} |", with_interval(v, ci)));
                                if *m != BASE {
                                    match c.vs_base.as_ref().map(pick) {
                                        Some(dl) => out.push_str(&format!(
                                            " {} | {} | {} | {:.1} |",
                                            delta_text(&dl),
                                            p_text(dl.p),
                                            dl.holm_p.map_or("–".to_string(), p_text),
                                            dl.detectable
                                        )),
                                        None => {
                                            let b = self.cell(BASE, d, k).map(|b| if f1 { b.f1 } else { b.rouge_l });
                                            out.push_str(&format!(
                                                " {} | – | – | – |",
                                                b.map_or("–".to_string(), |b| format!("{:+.1}", v - b))
                                            ))
                                        }
                                    }
                                }
                            }
                            None => {
                                out.push_str(" – |");
                                if *m != BASE {
                                    out.push_str(" – | – | – | – |");
                                }
                            }
                        }
                    }
                    out.push('\n');
                }
                out.push_str("| **average** | |");
                for m in &self.models {
                    match self.average_of(m, k) {
                        Some(a) => {
                            let e = if f1 { a.f1 } else { a.rouge_l };
                            out.push_str(&format!(" **{}** |", with_interval(e.mean, Some(e.ci))));
                            if *m != BASE {
                                match a.vs_base.as_ref().map(pick) {
                                    Some(dl) => out.push_str(&format!(
                                        " **{}** | {} | | {:.1} |",
                                        delta_text(&dl),
                                        p_text(dl.p),
                                        dl.detectable
                                    )),
                                    None => out.push_str(" – | – | | – |"),
                                }
                            }
                        }
                        None => {
                            out.push_str(&format!(" **{:.1}** |", self.average(m, k, f1)));
                            if *m != BASE {
                                out.push_str(" – | – | | – |");
                            }
                        }
                    }
                }
                out.push_str("\n\n");
            }
        }
        if self.stats.is_some() && !adapters.is_empty() {
            out.push_str(
                "Δ: the adapter's score minus the base's, averaged over the same examples; `*`: p < 0.05 after \
                 Holm's adjustment across the datasets (the average's p is not adjusted) and the interval clear of 0. detectable Δ: the \
                 smallest |Δ| these examples would show with 80 % power at 5 %; a Δ inside it is no evidence \
                 either way.\n\n",
            );
        }
        self.labels_markdown(&mut out, &adapters);
        self.pairs_markdown(&mut out);
        out.push_str("## F1 across k: worst / average / best\n\n| dataset |");
        for m in &self.models {
            out.push_str(&format!(" {m} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(self.models.len()));
        out.push('\n');
        for d in &self.datasets {
            out.push_str(&format!("| {d} |"));
            for m in &self.models {
                let v: Vec<f64> = self.shots.iter().filter_map(|&k| self.cell(m, d, k).map(|c| c.f1)).collect();
                if v.is_empty() {
                    out.push_str(" – |");
                } else {
                    let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                    out.push_str(&format!(" {lo:.1} / {:.1} / {hi:.1} |", v.iter().sum::<f64>() / v.len() as f64));
                }
            }
            out.push('\n');
        }
        if let Some(s) = &self.stats {
            out.push_str(&format!(
                "\nIntervals: percentile bootstrap, {} resamples; p: paired approximate randomisation, {} trials; \
                 seed {}.\n",
                s.resamples, s.trials, s.seed
            ));
        }
        out
    }

    /// One metric at one k as a long table (a row per dataset and model), for reports of more
    /// adapters than fit side by side.
    fn long_table(&self, out: &mut String, metric: &str, f1: bool, k: usize) {
        out.push_str(&format!(
            "## {metric}, {k}-shot ({})\n\n| dataset | model | n | score | Δ against the base | p | Holm p | detectable Δ |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
            self.scale()
        ));
        let pick = |v: &Versus| if f1 { v.f1 } else { v.rouge_l };
        for d in &self.datasets {
            for m in &self.models {
                let Some(c) = self.cell(m, d, k) else { continue };
                let (v, ci) = if f1 { (c.f1, c.f1_ci) } else { (c.rouge_l, c.rouge_l_ci) };
                let tests = c.vs_base.as_ref().map(pick).map_or(" | | | |".to_string(), |dl| {
                    format!(
                        "{} | {} | {} | {:.1} |",
                        delta_text(&dl),
                        p_text(dl.p),
                        dl.holm_p.map_or("–".to_string(), p_text),
                        dl.detectable
                    )
                });
                out.push_str(&format!("| {d} | {m} | {} | {} | {tests}\n", c.n, with_interval(v, ci)));
            }
        }
        for m in &self.models {
            let Some(a) = self.average_of(m, k) else { continue };
            let e = if f1 { a.f1 } else { a.rouge_l };
            let tests = a.vs_base.as_ref().map(pick).map_or(" | | | |".to_string(), |dl| {
                format!("**{}** | {} | | {:.1} |", delta_text(&dl), p_text(dl.p), dl.detectable)
            });
            out.push_str(&format!("| **average** | {m} | | **{}** | {tests}\n", with_interval(e.mean, Some(e.ci))));
        }
        out.push('\n');
    }

    fn labels_markdown(&self, out: &mut String, adapters: &[&String]) {
        if self.labels.is_empty() || self.stats.is_none() {
            return;
        }
        if adapters.len() > 2 {
            out.push_str(
                "## Label sets: exact match (0–100) and McNemar's exact test against the base\n\n| dataset | k | model | exact match | McNemar p |\n|---|---:|---|---:|---:|\n",
            );
            for d in &self.labels {
                for &k in &self.shots {
                    for m in &self.models {
                        let Some(c) = self.cell(m, d, k) else { continue };
                        let p = c.vs_base.as_ref().and_then(|v| v.mcnemar_p).map_or(String::new(), p_text);
                        let e = c.exact.map_or("–".to_string(), |e| format!("{e:.1}"));
                        out.push_str(&format!("| {d} | {k} | {m} | {e} | {p} |\n"));
                    }
                }
            }
            out.push('\n');
            return;
        }
        out.push_str("## Label sets: exact match (0–100) and McNemar's exact test against the base\n\n| dataset | k |");
        for m in &self.models {
            out.push_str(&format!(" {m} |"));
            if *m != BASE {
                out.push_str(" McNemar p |");
            }
        }
        out.push_str("\n|---|---:|");
        out.push_str(&"---:|".repeat(self.models.len() + adapters.len()));
        out.push('\n');
        for d in &self.labels {
            for &k in &self.shots {
                out.push_str(&format!("| {d} | {k} |"));
                for m in &self.models {
                    let c = self.cell(m, d, k);
                    out.push_str(&format!(
                        " {} |",
                        c.and_then(|c| c.exact).map_or("–".to_string(), |e| format!("{e:.1}"))
                    ));
                    if *m != BASE {
                        let p = c.and_then(|c| c.vs_base.as_ref()).and_then(|v| v.mcnemar_p);
                        out.push_str(&format!(" {} |", p.map_or("–".to_string(), p_text)));
                    }
                }
                out.push('\n');
            }
        }
        out.push('\n');
    }

    fn pairs_markdown(&self, out: &mut String) {
        let adapters = self.models.iter().filter(|m| *m != BASE).count();
        if adapters > MAX_PAIRED_ADAPTERS {
            out.push_str(&format!(
                "{adapters} adapters: each is compared with the base; pairs of adapters are compared in reports of at most \
                 {MAX_PAIRED_ADAPTERS} (an evaluation of just those two, or `selfspec score --paired`).\n\n"
            ));
        }
        if self.pairs.is_empty() {
            return;
        }
        out.push_str(
            "## Adapters against each other (Δ = second − first, F1; p unadjusted)\n\n| first | second | dataset | k | Δ F1 | p | detectable Δ |\n|---|---|---|---:|---:|---:|---:|\n",
        );
        for p in &self.pairs {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.1} |\n",
                p.a,
                p.b,
                p.dataset.as_deref().unwrap_or("**average**"),
                p.k,
                delta_text(&Delta { holm_p: None, ..p.versus.f1 }),
                p_text(p.versus.f1.p),
                p.versus.f1.detectable
            ));
        }
        out.push('\n');
    }
}
