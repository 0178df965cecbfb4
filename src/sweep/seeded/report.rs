//! A seeded sweep's report: rows from the evaluation, summaries with intervals, report.json,
//! report.md and the plots.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::sweep::layout;
use crate::sweep::spec::{SeedPoint, Seeded, Spec};

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

pub(super) fn report_rows(
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
pub(super) fn summaries(dir: &Path, names: &[String], rows: &[Row]) -> anyhow::Result<Vec<SummaryRow>> {
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

/// Writes report.json (rows, summaries, barriers) and report.md.
pub(super) fn write_report(
    dir: &Path,
    spec: &Spec,
    seeded: &Seeded,
    names: &[String],
    rows: &[Row],
    sums: &[SummaryRow],
    lmc: &[PointLmc],
) -> anyhow::Result<()> {
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
    for axis in ["share", "init"] {
        for &k in &spec.shots {
            for (metric, score) in METRICS {
                md.push_str(&axis_table(axis, k, metric, score, rows, sums, lmc));
            }
        }
    }
    md.push_str(
        "\n## Per point and dataset (F1 with 95 % intervals; `*`: against the base, p < 0.05 after Holm across the \
         datasets and the interval clear of 0)\n",
    );
    let mut points: Vec<&str> = Vec::new();
    for r in rows {
        if !points.contains(&r.point.as_str()) {
            points.push(&r.point);
        }
    }
    for point in points {
        for &k in &spec.shots {
            md.push_str(&point_table(point, k, names, rows));
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

/// One axis's table at `k` shots in `metric` (the summary columns with intervals and the mean
/// barrier, one row per point), then every column against the base.
fn axis_table(
    axis: &str,
    k: usize,
    metric: &str,
    score: Metric,
    rows: &[Row],
    sums: &[SummaryRow],
    lmc: &[PointLmc],
) -> String {
    use crate::eval::report::{delta_text, with_interval};
    let find = |point: &str, column: &str| {
        sums.iter().find(|s| s.point == point && s.k == k && s.column == column).map(|s| &s.summary)
    };
    let f = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.1}"));
    let barrier = |point: &str| {
        lmc.iter().find(|l| l.point == point).and_then(|l| {
            (!l.pairs.is_empty()).then(|| l.pairs.iter().map(|p| p.barrier_merged).sum::<f64>() / l.pairs.len() as f64)
        })
    };
    let mut md = format!(
        "\n## {axis}, {k}-shot, {metric}\n\n| {axis} | experts, own | experts, others | seed | merged | merged+seed | base | barrier |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
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
            match find(&r.point, column) {
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
    md
}

/// A point's F1 per model and dataset at `k` shots, with intervals and the mark against the base.
fn point_table(point: &str, k: usize, names: &[String], rows: &[Row]) -> String {
    use crate::eval::report::with_interval;
    let mut md = format!("\n### {point}, {k}-shot\n\n| model |");
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
            let v =
                rows.iter().find(|r| r.point == point && r.k == k && r.model == m && r.expert == e && r.dataset == *d);
            let text = v.map_or("–".to_string(), |r| {
                let mark = r.vs_base.as_ref().is_some_and(|x| x.f1.significant());
                format!("{}{}", with_interval(r.f1, r.f1_ci), if mark { "*" } else { "" })
            });
            md.push_str(&format!(" {text} |"));
        }
        md.push('\n');
    }
    md
}

/// The plots: F1 against the share (experts on their own tasks, seed, merged, merged+seed, one
/// line each per k) when the share axis has two values or more, and each point's LMC curves.
pub(super) fn plot(dir: &Path, sums: &[SummaryRow], lmc: &[PointLmc]) -> anyhow::Result<Vec<PathBuf>> {
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
