//! The paper's eq. 2 (the retrieval mixture) and eq. 3 (the contrast with the base) over a
//! server's top-N log-probabilities, a token a step: what the client chooses from when the
//! server, not this process, holds the logits.

use std::collections::HashMap;

/// log Σ_j w_j·p_j(t) over the union of the tops (a token outside prompt j's top N counts 0).
pub fn mixture(tops: &[Vec<(String, f64)>], weights: &[f64]) -> Vec<(String, f32)> {
    let mut sum: HashMap<&str, f64> = HashMap::new();
    for (top, w) in tops.iter().zip(weights) {
        // A text reported twice (two special tokens with one text) counts once, at its best.
        let mut best: HashMap<&str, f64> = HashMap::new();
        for (t, l) in top {
            let e = best.entry(t.as_str()).or_insert(f64::NEG_INFINITY);
            *e = e.max(*l);
        }
        for (t, l) in best {
            *sum.entry(t).or_default() += w * l.exp();
        }
    }
    sum.into_iter().filter(|(_, p)| *p > 0.0).map(|(t, p)| (t.to_string(), p.ln() as f32)).collect()
}

/// Eq. 3 over two tops: log p_tuned − log p_base on the tuned tokens with p_tuned ≥ α·max; a
/// token outside the base's top N gets the smallest base log-probability reported (an upper
/// bound of its own).
pub fn contrast(tuned: &[(String, f64)], base: &[(String, f64)], alpha: f64) -> Vec<(String, f32)> {
    let best = tuned.iter().map(|t| t.1).fold(f64::NEG_INFINITY, f64::max);
    let floor = best + alpha.ln();
    let base_map: HashMap<&str, f64> = base.iter().map(|(t, l)| (t.as_str(), *l)).collect();
    let bound = base.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    tuned
        .iter()
        .filter(|(_, l)| *l >= floor)
        .map(|(t, l)| (t.clone(), (l - base_map.get(t.as_str()).copied().unwrap_or(bound)) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(t, l)| (t.to_string(), *l)).collect()
    }

    #[test]
    fn the_mixture_sums_weighted_probabilities_over_the_union() {
        let a = top(&[("x", 0.5f64.ln()), ("y", 0.25f64.ln())]);
        let b = top(&[("y", 0.5f64.ln()), ("z", 0.5f64.ln())]);
        let mut m = mixture(&[a, b], &[0.75, 0.25]);
        m.sort_by(|p, q| p.0.cmp(&q.0));
        let p: Vec<f64> = m.iter().map(|(_, l)| (*l as f64).exp()).collect();
        assert_eq!(m.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["x", "y", "z"]);
        for (got, want) in p.iter().zip([0.375, 0.75 * 0.25 + 0.25 * 0.5, 0.125]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn the_contrast_keeps_plausible_tokens_and_bounds_missing_base_ones() {
        let tuned = top(&[("a", -0.1), ("b", -1.0), ("c", -5.0)]);
        let base = top(&[("a", -0.2), ("z", -3.0)]);
        let mut s = contrast(&tuned, &base, 0.1);
        s.sort_by(|p, q| p.0.cmp(&q.0));
        // c is below 0.1·max; b is not in the base's top and gets the bound −3.
        assert_eq!(s.len(), 2);
        assert!((s[0].1 - 0.1).abs() < 1e-6 && (s[1].1 - 2.0).abs() < 1e-6, "{s:?}");
    }
}
