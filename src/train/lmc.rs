//! `selfspec lmc`: linear mode connectivity between two adapters — the loss on a data set at
//! θ(α) = (1−α)·θ_A + α·θ_B for α from 0 to 1, on two lines:
//! - in merged-weight space, ΔW(α) = (1−α)·s_A·B_A·A_A + α·s_B·B_B·A_B, held exactly as a
//!   stacked adapter of rank r_A + r_B (`adapters merge --method cat` with weights 1−α, α);
//! - in (A, B) space, A(α) and B(α) interpolated with each scaling folded into B (equal ranks
//!   and projections only).
//!
//! The barrier is the largest excess of the loss over the straight line between the endpoints,
//! max_α L(α) − ((1−α)·L(0) + α·L(1)); near zero (or below) says the two are linearly connected
//! and merging them is safe. At α = 0 and 1 both lines are the adapters themselves.

use std::path::Path;

use serde::Serialize;

use super::data::{self, Encoded, Example};
use super::trainer::Trainer;
use crate::model::adapters::adapter;
use crate::model::adapters::combine::{self, Method};
use crate::model::Model;

/// The loss at one α.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub alpha: f64,
    /// In merged-weight space.
    pub merged: f64,
    /// In (A, B) space (None when the adapters' ranks or projections differ).
    pub factors: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lmc {
    pub points: Vec<Point>,
    pub barrier_merged: f64,
    pub barrier_factors: Option<f64>,
    /// Response tokens the loss is the mean over.
    pub tokens: usize,
    /// F1 and ROUGE-L along the lines (`--eval`), the mean over the datasets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<Score>,
}

/// The scores of one point of one line at k shots.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Score {
    /// `merged` (ΔW line) or `factors` ((A, B) line).
    pub line: String,
    pub alpha: f64,
    pub k: usize,
    pub f1: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
}

/// Every measured point of both lines as an adapter to evaluate: (line, α, eval name —
/// `dW-0.50`, `AB-0.50` —, its folder in `dir`, as [`measure`] leaves it there).
pub fn point_adapters(lmc: &Lmc, dir: &Path) -> Vec<(&'static str, f64, String, std::path::PathBuf)> {
    let mut out = Vec::new();
    for (i, p) in lmc.points.iter().enumerate() {
        out.push(("merged", p.alpha, format!("dW-{:.2}", p.alpha), dir.join(format!("merged-{i}"))));
        if p.factors.is_some() {
            out.push(("factors", p.alpha, format!("AB-{:.2}", p.alpha), dir.join(format!("factors-{i}"))));
        }
    }
    out
}

/// The scores along both lines from an evaluation report of [`point_adapters`].
pub fn scores(lmc: &Lmc, dir: &Path, report: &crate::eval::run::Report) -> Vec<Score> {
    let mut out = Vec::new();
    for (line, alpha, name, _) in point_adapters(lmc, dir) {
        for &k in &report.shots {
            let cells: Vec<_> = report.cells.iter().filter(|c| c.model == name && c.k == k).collect();
            if cells.is_empty() {
                continue;
            }
            let n = cells.len() as f64;
            out.push(Score {
                line: line.into(),
                alpha,
                k,
                f1: cells.iter().map(|c| c.f1).sum::<f64>() / n,
                rouge_l: cells.iter().map(|c| c.rouge_l).sum::<f64>() / n,
            });
        }
    }
    out
}

/// The largest excess of `loss` over the line between its endpoints.
pub fn barrier(alphas: &[f64], loss: &[f64]) -> f64 {
    let (first, last) = (loss[0], loss[loss.len() - 1]);
    alphas.iter().zip(loss).map(|(a, l)| l - ((1.0 - a) * first + a * last)).fold(f64::NEG_INFINITY, f64::max)
}

/// Mean loss per response token of `encoded` under `model` as it is (its enabled adapters).
pub fn mean_loss(model: &Model, encoded: &[Encoded]) -> anyhow::Result<(f64, usize)> {
    let (mut sum, mut tokens) = (0.0, 0);
    let rows: Vec<usize> = (0..encoded.len()).collect();
    for chunk in rows.chunks(4) {
        let batch = data::batch(encoded, chunk);
        tokens += batch.targets();
        sum += Trainer::nll(model, &batch)?.to_scalar::<f32>()? as f64;
    }
    anyhow::ensure!(tokens > 0, "the data has no response token to score");
    Ok((sum / tokens as f64, tokens))
}

/// Measures the loss along both lines between the adapters in `a` and `b` at `points` evenly
/// spaced α (at least 2), on `examples` encoded as training encodes them. `scratch` holds each
/// point's adapter while it is scored.
// The two adapters, the data as training encodes it, the points, where a point's adapter is
// kept while it is scored, and the progress callback: each is used once, none with another.
#[allow(clippy::too_many_arguments)]
pub fn measure(
    model: &mut Model,
    a: &Path,
    b: &Path,
    examples: &[Example],
    points: usize,
    max_len: usize,
    format: crate::prompts::PromptFormat,
    scratch: &Path,
    on_point: &mut dyn FnMut(&Point),
) -> anyhow::Result<Lmc> {
    anyhow::ensure!(points >= 2, "--points must be at least 2 (the two adapters)");
    let eos = model.eos_token_ids.first().copied();
    let encoded: Vec<Encoded> = examples
        .iter()
        .map(|e| data::encode(&model.tokenizer, eos, e, max_len, format))
        .collect::<anyhow::Result<_>>()?;
    let ends = [combine::read(a)?, combine::read(b)?];
    let both_ways = combine::factor_line_refused(&ends[0], &ends[1]).is_none();
    let mut out = Vec::with_capacity(points);
    let mut tokens = 0;
    for i in 0..points {
        let alpha = i as f64 / (points - 1) as f64;
        let dir = scratch.join(format!("merged-{i}"));
        combine::merge_loaded(&ends, &[1.0 - alpha, alpha], Method::Cat, None, &dir)?;
        adapter::load(model, &dir, "lmc")?;
        let (merged, n) = mean_loss(model, &encoded)?;
        tokens = n;
        let factors = if both_ways {
            let dir = scratch.join(format!("factors-{i}"));
            combine::interpolate_factors(&ends[0], &ends[1], alpha, &dir)?;
            adapter::load(model, &dir, "lmc")?;
            Some(mean_loss(model, &encoded)?.0)
        } else {
            None
        };
        let p = Point { alpha, merged, factors };
        on_point(&p);
        out.push(p);
    }
    let alphas: Vec<f64> = out.iter().map(|p| p.alpha).collect();
    let merged: Vec<f64> = out.iter().map(|p| p.merged).collect();
    let factors: Option<Vec<f64>> = out.iter().map(|p| p.factors).collect();
    Ok(Lmc {
        barrier_merged: barrier(&alphas, &merged),
        barrier_factors: factors.map(|f| barrier(&alphas, &f)),
        points: out,
        tokens,
        scores: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_barrier_is_the_largest_excess_over_the_chord() {
        let alphas = [0.0, 0.5, 1.0];
        assert!((super::barrier(&alphas, &[1.0, 2.0, 3.0])).abs() < 1e-12);
        assert!((super::barrier(&alphas, &[1.0, 3.0, 1.0]) - 2.0).abs() < 1e-12);
        assert!(super::barrier(&alphas, &[2.0, 1.0, 2.0]).abs() < 1e-12, "the endpoints bound it below by 0");
    }
}
