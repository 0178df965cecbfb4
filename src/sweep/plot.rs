//! The sweep's curves: each metric against each axis, per dataset and averaged over datasets,
//! one line per (model, k), written as SVG and PNG with plotters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Row;
use crate::plot::{chart, Line};

/// Writes every plot under `dir/plots/`; returns the files written.
pub fn write(dir: &Path, rows: &[Row]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut datasets: Vec<String> = rows.iter().map(|r| r.dataset.clone()).collect();
    datasets.sort();
    datasets.dedup();
    for axis in ["seeds", "samples"] {
        let on_axis: Vec<&Row> = rows.iter().filter(|r| r.axis == axis).collect();
        if on_axis.iter().map(|r| r.value).collect::<std::collections::BTreeSet<_>>().len() < 2 {
            continue;
        }
        for (metric, get) in [("f1", (|r: &Row| r.f1) as fn(&Row) -> f64), ("rougeL", |r: &Row| r.rouge_l)] {
            for which in datasets.iter().map(String::as_str).chain(["average"]) {
                // (model, k) → value → scores (one per dataset for the average).
                let mut series: BTreeMap<(String, usize), BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
                for r in on_axis.iter().filter(|r| which == "average" || r.dataset == which) {
                    series.entry((r.model.clone(), r.k)).or_default().entry(r.value).or_default().push(get(r));
                }
                let lines: Vec<Line> = series
                    .into_iter()
                    .map(|((model, k), points)| {
                        let pts = points.into_iter().map(|(v, s)| (v as f64, s.iter().sum::<f64>() / s.len() as f64));
                        (format!("{model} {k}-shot"), pts.collect())
                    })
                    .collect();
                let title = format!("{metric} against {axis} · {which}");
                let y = format!("{metric} (0-100)");
                written.extend(chart(dir, &format!("{metric}-{axis}-{which}"), &title, axis, &y, &lines)?);
            }
        }
    }
    Ok(written)
}
