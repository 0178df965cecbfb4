//! The paper's two ways of choosing a token from several next-token distributions, written once:
//! eq. 2, the retrieval mixture (one distribution per retrieved document's prompt, weighted by the
//! retriever), and eq. 3, the contrast of the tuned model with the base.
//!
//! Both take log-probabilities keyed by token. The keys are token ids over the whole vocabulary
//! when this process holds the logits, and token texts over the top N when a server does (it
//! reports only its top N, so a token outside one list counts as probability 0 in eq. 2, and gets
//! the list's smallest log-probability, an upper bound of its own, in eq. 3). Results keep the
//! order in which tokens first appear, so a seeded draw over them is the same on every run.
//!
//! The decoder's batched eq. 2 ([`super::mix`]) computes the same sum where the logits are (one
//! product for the whole batch); a test holds it to [`mixture`].

use std::collections::HashMap;
use std::hash::Hash;

use candle_core::{DType, Tensor};

/// log softmax(l), summed in f64.
pub fn log_softmax(l: &[f32]) -> Vec<f32> {
    let m = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z = l.iter().map(|x| ((x - m) as f64).exp()).sum::<f64>().ln() as f32 + m;
    l.iter().map(|x| x - z).collect()
}

/// Eq. 2: log Σ_j w_j·p_j(t) for every token some distribution gives a probability above 0.
/// `dists[j]` lists distribution j's (token, log p); a token listed twice in one (two special
/// tokens with one text, as a server may report) counts once, at its larger log-probability.
pub fn mixture<K: Eq + Hash + Clone>(dists: &[Vec<(K, f64)>], weights: &[f64]) -> Vec<(K, f64)> {
    let mut order: Vec<K> = Vec::new();
    let mut sum: HashMap<K, f64> = HashMap::new();
    for (dist, w) in dists.iter().zip(weights) {
        let mut best: HashMap<&K, f64> = HashMap::new();
        for (t, l) in dist {
            let e = best.entry(t).or_insert(f64::NEG_INFINITY);
            *e = e.max(*l);
        }
        for (t, _) in dist {
            // Each token once per distribution, at its best.
            let Some(l) = best.remove(t) else { continue };
            let total = sum.entry(t.clone()).or_insert_with(|| {
                order.push(t.clone());
                0.0
            });
            *total += w * l.exp();
        }
    }
    order
        .into_iter()
        .filter_map(|t| {
            let p = sum[&t];
            (p > 0.0).then(|| (t, p.ln()))
        })
        .collect()
}

/// Eq. 3: log p_tuned(t) − log p_base(t) for the tokens whose tuned probability is at least α
/// times the tuned maximum (the plausibility cut); the others are left out. `tuned` lists the
/// tuned (token, log p) and is walked twice (the maximum, then the cut); `base(t)` is the
/// base's log-probability of `t`.
pub fn contrast<K, I>(tuned: I, base: impl Fn(&K) -> f64, alpha: f64) -> Vec<(K, f64)>
where
    I: IntoIterator<Item = (K, f64)> + Clone,
{
    let best = tuned.clone().into_iter().map(|t| t.1).fold(f64::NEG_INFINITY, f64::max);
    let floor = best + alpha.ln();
    tuned
        .into_iter()
        .filter(|(_, l)| *l >= floor)
        .map(|(t, l)| {
            let s = l - base(&t);
            (t, s)
        })
        .collect()
}

/// [`contrast`] over the whole vocabulary, from one step's tuned and base logits: a score per
/// token id, −∞ for the tokens the plausibility cut leaves out.
pub fn contrast_scores(tuned: &[f32], base: &[f32], alpha: f64) -> Vec<f32> {
    let (lt, lb) = (log_softmax(tuned), log_softmax(base));
    let tuned = lt.iter().enumerate().map(|(i, &l)| (i, f64::from(l)));
    let mut scores = vec![f32::NEG_INFINITY; lt.len()];
    for (i, s) in contrast(tuned, |&i| f64::from(lb[i]), alpha) {
        scores[i] = s as f32;
    }
    scores
}

/// [`mixture`] over servers' top-N lists keyed by token text.
pub fn mixture_of_tops(tops: &[Vec<(String, f64)>], weights: &[f64]) -> Vec<(String, f32)> {
    mixture(tops, weights).into_iter().map(|(t, l)| (t, l as f32)).collect()
}

/// [`contrast`] over two servers' top-N lists keyed by token text: a tuned token outside the
/// base's list gets the smallest base log-probability listed.
pub fn contrast_of_tops(tuned: &[(String, f64)], base: &[(String, f64)], alpha: f64) -> Vec<(String, f32)> {
    let base_of: HashMap<&str, f64> = base.iter().map(|(t, l)| (t.as_str(), *l)).collect();
    let bound = base.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    let tuned = tuned.iter().map(|(t, l)| (t.as_str(), *l));
    contrast(tuned, |t| base_of.get(t).copied().unwrap_or(bound), alpha)
        .into_iter()
        .map(|(t, s)| (t.to_string(), s as f32))
        .collect()
}

/// The weights of `n` prompts made to sum to 1 (equal when none are given).
pub fn normalised(weights: &[f64], n: usize) -> Result<Vec<f64>, String> {
    if weights.is_empty() {
        return Ok(vec![1.0 / n as f64; n]);
    }
    if weights.len() != n {
        return Err(format!("{} weights for {n} prompts", weights.len()));
    }
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(format!("weights must be finite and ≥ 0, got {weights:?}"));
    }
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return Err("the weights sum to 0".into());
    }
    Ok(weights.iter().map(|w| w / sum).collect())
}

/// Eq. 2 ([`mixing::mixture`]) for a whole batch where the logits are, in one product:
/// log Σ_j w_j·softmax(l_j) for each request (its rows' logits `l_j`, weights `w_j`),
/// `[rows, vocab]` → `[requests, vocab]`. Tokens no prompt can produce get −∞.
pub fn mix(logits: &Tensor, widths: &[usize], weights: &[&[f64]]) -> candle_core::Result<Tensor> {
    let total: usize = widths.iter().sum();
    let mut w = vec![0f32; widths.len() * total];
    let mut at = 0;
    for (g, (&width, ws)) in widths.iter().zip(weights).enumerate() {
        for j in 0..width {
            w[g * total + at + j] = ws[j] as f32;
        }
        at += width;
    }
    let w = Tensor::from_vec(w, (widths.len(), total), logits.device())?;
    let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
    w.matmul(&probs)?.log()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(t, l)| (t.to_string(), *l)).collect()
    }

    #[test]
    fn the_mixture_sums_weighted_probabilities_over_the_union_in_first_seen_order() {
        let a = top(&[("x", 0.5f64.ln()), ("y", 0.25f64.ln()), ("y", 0.1f64.ln())]);
        let b = top(&[("z", 0.5f64.ln()), ("y", 0.5f64.ln())]);
        let m = mixture_of_tops(&[a, b], &[0.75, 0.25]);
        assert_eq!(m.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["x", "y", "z"]);
        // y counts once in a, at its larger probability.
        for ((_, got), want) in m.iter().zip([0.375, 0.75 * 0.25 + 0.25 * 0.5, 0.125]) {
            assert!(((*got as f64).exp() - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn the_contrast_keeps_plausible_tokens_and_bounds_missing_base_ones() {
        let tuned = top(&[("a", -0.1), ("b", -1.0), ("c", -5.0)]);
        let base = top(&[("a", -0.2), ("z", -3.0)]);
        let s = contrast_of_tops(&tuned, &base, 0.1);
        // c is below 0.1·max; b is not in the base's top and gets the bound −3.
        assert_eq!(s.len(), 2);
        assert!((s[0].1 - 0.1).abs() < 1e-6 && (s[1].1 - 2.0).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn over_the_whole_vocabulary_the_cut_tokens_score_minus_infinity() {
        let tuned = [2.0f32, 1.9, -3.0];
        let base = [0.0f32, 1.0, 0.0];
        let s = contrast_scores(&tuned, &base, 0.5);
        let (lt, lb) = (log_softmax(&tuned), log_softmax(&base));
        assert!((s[0] - (lt[0] - lb[0])).abs() < 1e-6 && (s[1] - (lt[1] - lb[1])).abs() < 1e-6, "{s:?}");
        assert_eq!(s[2], f32::NEG_INFINITY);
    }
}
