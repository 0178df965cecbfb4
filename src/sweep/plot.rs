//! The sweep's curves: each metric against each axis, per dataset and averaged over datasets,
//! one line per (model, k) with its 95 % interval as a band, written as SVG and PNG with
//! plotters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::report::{Row, AVERAGE};
use crate::plot::{chart_with_bands, Band, Line};

/// A score with its interval, as a row gives it.
type Score = (f64, Option<[f64; 2]>);

/// Writes every plot under `dir/plots/`; returns the files written.
pub fn write(dir: &Path, rows: &[Row]) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut datasets: Vec<String> = rows.iter().map(|r| r.dataset.clone()).filter(|d| d != AVERAGE).collect();
    datasets.sort();
    datasets.dedup();
    let has_average = rows.iter().any(|r| r.dataset == AVERAGE);
    type Pick = fn(&Row) -> Score;
    let metrics: [(&str, Pick); 2] = [("f1", |r| (r.f1, r.f1_ci)), ("rougeL", |r| (r.rouge_l, r.rouge_l_ci))];
    for axis in ["seeds", "samples"] {
        let on_axis: Vec<&Row> = rows.iter().filter(|r| r.axis == axis).collect();
        if on_axis.iter().map(|r| r.value).collect::<std::collections::BTreeSet<_>>().len() < 2 {
            continue;
        }
        for (metric, get) in metrics {
            for which in datasets.iter().map(String::as_str).chain([AVERAGE]) {
                // (model, k) → value → (scores, intervals): one row, or (a report without
                // average rows) one per dataset, averaged without an interval.
                let mut series: BTreeMap<(String, usize), BTreeMap<usize, Vec<Score>>> = BTreeMap::new();
                let keep = |r: &&&Row| match which {
                    AVERAGE if has_average => r.dataset == AVERAGE,
                    AVERAGE => r.dataset != AVERAGE,
                    d => r.dataset == d,
                };
                for r in on_axis.iter().filter(keep) {
                    series.entry((r.model.clone(), r.k)).or_default().entry(r.value).or_default().push(get(r));
                }
                let mut lines: Vec<Line> = Vec::new();
                let mut bands: Vec<Band> = Vec::new();
                for ((model, k), points) in series {
                    let mut line = Vec::new();
                    let mut band = Vec::new();
                    for (v, s) in points {
                        let mean = s.iter().map(|x| x.0).sum::<f64>() / s.len() as f64;
                        line.push((v as f64, mean));
                        if let [(_, Some([lo, hi]))] = s.as_slice() {
                            band.push((v as f64, *lo, *hi));
                        }
                    }
                    if band.len() != line.len() {
                        band.clear();
                    }
                    lines.push((format!("{model} {k}-shot"), line));
                    bands.push(band);
                }
                let title = format!("{metric} against {axis} · {which} (bands: 95 % intervals)");
                let y = format!("{metric} (0-100)");
                let stem = format!("{metric}-{axis}-{which}");
                written.extend(chart_with_bands(dir, &stem, &title, axis, &y, &lines, &bands)?);
            }
        }
    }
    Ok(written)
}
