//! A grid or axis sweep's report: per axis value, dataset and k the base's and the tuned
//! point's scores with intervals (report.json, report.csv, report.md).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::spec::{replicate, Point, Spec};
use crate::runs::Kind;

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
    #[serde(default = "super::spec::one")]
    pub replicates: usize,
    /// The sd of the replicates' means (F1, ROUGE-L).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_sd: Option<[f64; 2]>,
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
        crate::lines::read_jsonl(&eval_dir.join(crate::eval::run::PREDICTIONS))?;
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

/// Writes report.json, report.csv and report.md.
pub(super) fn write_report(dir: &Path, spec: &Spec, rows: &[Row]) -> anyhow::Result<()> {
    crate::fsutil::atomic_write(&dir.join("report.json"), serde_json::to_string_pretty(rows)?.as_bytes())?;
    crate::fsutil::atomic_write(&dir.join("report.csv"), to_csv(rows).as_bytes())?;
    crate::fsutil::atomic_write(&dir.join("report.md"), to_markdown(spec, rows).as_bytes())?;
    Ok(())
}

/// report.csv: a line per row, intervals and tests against the base in their own columns.
fn to_csv(rows: &[Row]) -> String {
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
    csv
}

/// report.md: per axis and k, dataset × value: the tuned F1 with its interval, and its Δ
/// against the base with the paired interval (`*`: significant after Holm).
fn to_markdown(spec: &Spec, rows: &[Row]) -> String {
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
            md.push_str(&axis_table(rows, axis, &values, k, &datasets));
        }
    }
    md
}

/// One axis at `k` shots: a row per dataset, a column per value, then the smallest average Δ
/// each value's examples detect.
fn axis_table(rows: &[Row], axis: &str, values: &[usize], k: usize, datasets: &[&str]) -> String {
    use crate::eval::report::{delta_text, p_text, with_interval};
    let mut md = format!("\n## {axis}, {k}-shot\n\n| dataset | base |");
    for v in values {
        md.push_str(&format!(" {axis} {v} |"));
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|".repeat(values.len()));
    md.push('\n');
    for d in datasets {
        let find = |v: usize, m: &str| {
            rows.iter().find(|r| r.axis == axis && r.value == v && r.k == k && r.dataset == *d && r.model == m)
        };
        let base = values.first().and_then(|&v| find(v, "base"));
        let label = if *d == AVERAGE { "**average**".to_string() } else { d.to_string() };
        md.push_str(&format!("| {label} | {} |", base.map_or("–".into(), |b| with_interval(b.f1, b.f1_ci))));
        for &v in values {
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
                .find(|r| r.axis == axis && r.value == v && r.k == k && r.dataset == AVERAGE && r.model == "tuned")
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
    md
}
