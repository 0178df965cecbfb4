//! Choosing the next token: sampling is plain data, and every random draw comes from a seeded
//! generator owned by the request, so the same seed gives the same text.
//!
//! The logit processing follows transformers' order and definitions: repetition penalty,
//! temperature, top-k (ties with the k-th value kept), top-p (the smallest set whose probability
//! reaches p, at least one token).

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampling {
    Greedy,
    Sample { temperature: f64, top_k: Option<usize>, top_p: Option<f64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub sampling: Sampling,
    pub seed: u64,
    /// transformers' `repetition_penalty`: a seen token's logit is divided by it when positive,
    /// multiplied when negative. 1.0 (or none) leaves logits alone.
    pub repetition_penalty: Option<f32>,
}

impl SamplingParams {
    pub fn greedy() -> SamplingParams {
        SamplingParams { sampling: Sampling::Greedy, seed: 0, repetition_penalty: None }
    }

    /// Every number within its range ([`crate::bounds`]); the error names the parameter.
    pub fn check(&self) -> Result<(), String> {
        use crate::bounds::{self, out_of_range};
        if let Sampling::Sample { temperature, top_k, top_p } = self.sampling {
            bounds::temperature(temperature).map_err(|r| out_of_range("temperature", temperature, r))?;
            if let Some(p) = top_p {
                bounds::top_p(p).map_err(|r| out_of_range("top_p", p, r))?;
            }
            if let Some(k) = top_k {
                bounds::top_k(k).map_err(|r| out_of_range("top_k", k, r))?;
            }
        }
        if let Some(p) = self.repetition_penalty {
            bounds::repetition_penalty(p as f64).map_err(|r| out_of_range("repetition_penalty", p, r))?;
        }
        Ok(())
    }

    /// Greedy with no penalty: the argmax can be taken where the logits are (on the GPU).
    pub fn is_plain_greedy(&self) -> bool {
        self.sampling == Sampling::Greedy && self.repetition_penalty.is_none_or(|p| p == 1.0)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        // The first of equal maxima, as torch.argmax.
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Picks the next token from one row of logits. `seen` is the prompt and the tokens generated so
/// far (for the repetition penalty).
pub fn choose(logits: &mut [f32], params: &SamplingParams, seen: &[u32], rng: &mut Rng) -> u32 {
    match distribution(logits, params, seen) {
        Some((order, probs)) => draw(&order, &probs, rng),
        None => argmax(logits),
    }
}

/// The probability `choose` gives `token` after these logits: under the temperature and top-k/p
/// it samples with; none when it takes the argmax (greedy, or temperature 0).
pub fn probability(logits: &mut [f32], params: &SamplingParams, seen: &[u32], token: u32) -> Option<f64> {
    let (order, probs) = distribution(logits, params, seen)?;
    Some(order.iter().zip(&probs).find(|(&i, _)| i == token as usize).map_or(0.0, |(_, &q)| q))
}

/// What `choose` draws from: tokens most likely first and the probabilities of the first
/// `probs.len()` of them (the rest are cut). None: the argmax is taken. The repetition penalty is
/// applied to `logits` in place either way.
fn distribution(logits: &mut [f32], params: &SamplingParams, seen: &[u32]) -> Option<(Vec<usize>, Vec<f64>)> {
    if let Some(p) = params.repetition_penalty.filter(|p| *p != 1.0) {
        let mut done = std::collections::HashSet::new();
        for &t in seen {
            if let Some(l) = logits.get_mut(t as usize) {
                if done.insert(t) {
                    *l = if *l < 0.0 { *l * p } else { *l / p };
                }
            }
        }
    }
    let Sampling::Sample { temperature, top_k, top_p } = params.sampling else {
        return None;
    };
    if temperature <= 0.0 {
        return None;
    }
    let t = temperature as f32;
    if let (None, Some(p)) = (top_k, top_p.filter(|p| *p < 1.0)) {
        return Some(nucleus(logits, t, p));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut keep = logits.len();
    if let Some(k) = top_k.filter(|k| *k > 0 && *k < logits.len()) {
        let kth = logits[order[k - 1]];
        keep = order.iter().take_while(|&&i| logits[i] >= kth).count();
    }
    let max = logits[order[0]] / t;
    let mut probs: Vec<f64> = order[..keep].iter().map(|&i| ((logits[i] / t - max) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if let Some(p) = top_p.filter(|p| *p < 1.0) {
        // Smallest prefix (most likely first) whose mass reaches p; transformers removes the
        // tokens whose ascending cumulative mass is ≤ 1 - p, which is the same set.
        let mut mass = 0.0;
        let mut n = 0;
        for q in &probs {
            n += 1;
            mass += q;
            if mass >= p {
                break;
            }
        }
        probs.truncate(n.max(1));
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= sum);
    }
    Some((order, probs))
}

/// The token `order[j]` drawn with probability `probs[j]` (one uniform draw).
fn draw(order: &[usize], probs: &[f64], rng: &mut Rng) -> u32 {
    let mut draw = rng.next_f64();
    for (j, q) in probs.iter().enumerate() {
        if draw < *q {
            return order[j] as u32;
        }
        draw -= q;
    }
    order[probs.len() - 1] as u32
}

/// Top-p sampling without sorting the whole vocabulary: the smallest most-likely-first prefix
/// whose mass reaches `p` lies among the tokens within e^-16 of the best (the bound is widened
/// until those hold mass `p`), so only they are sorted; probabilities are still normalised over
/// every token. The same draw as sorting all (49,152 tokens of SmolLM2: 2.5 ms a step → 0.2).
fn nucleus(logits: &[f32], t: f32, p: f64) -> (Vec<usize>, Vec<f64>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) / t;
    let weight = |l: f32| ((l / t - max) as f64).exp();
    let total: f64 = logits.iter().map(|&l| weight(l)).sum();
    let mut bound = 16.0f32;
    let order = loop {
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] / t - max > -bound).collect();
        let mass: f64 = order.iter().map(|&i| weight(logits[i])).sum::<f64>() / total;
        if mass >= p || order.len() == logits.len() || !bound.is_finite() {
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            break order;
        }
        bound *= 2.0;
    };
    let mut probs: Vec<f64> = Vec::with_capacity(order.len());
    let mut mass = 0.0;
    for &i in &order {
        let q = weight(logits[i]) / total;
        probs.push(q);
        mass += q;
        if mass >= p {
            break;
        }
    }
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|q| *q /= sum);
    (order, probs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_draw_is_computed_alone() {
        let mut rng = Rng::new(77);
        for i in 0..100 {
            assert_eq!(Rng::nth_f64(77, i), rng.next_f64());
        }
    }

    fn sample(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> SamplingParams {
        SamplingParams { sampling: Sampling::Sample { temperature, top_k, top_p }, seed: 0, repetition_penalty: None }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut l = [1.0, 3.0, 3.0, -1.0];
        assert_eq!(choose(&mut l, &SamplingParams::greedy(), &[], &mut Rng::new(1)), 1);
    }

    #[test]
    fn probability_is_what_choose_draws_from() {
        let logits = [2.0f32, 1.0, 0.5, -1.0, 0.0];
        assert_eq!(probability(&mut logits.clone(), &SamplingParams::greedy(), &[], 0), None);
        for params in [sample(0.7, None, None), sample(1.0, None, Some(0.8)), sample(1.3, Some(3), Some(0.9))] {
            let p: Vec<f64> = (0..5).map(|t| probability(&mut logits.clone(), &params, &[], t).unwrap()).collect();
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
            // Drawn often, each token turns up about as often as its probability says.
            let mut rng = Rng::new(7);
            let mut counts = [0usize; 5];
            for _ in 0..20_000 {
                counts[choose(&mut logits.clone(), &params, &[], &mut rng) as usize] += 1;
            }
            for (c, q) in counts.iter().zip(&p) {
                assert!((*c as f64 / 20_000.0 - q).abs() < 0.015, "{counts:?} {p:?}");
            }
        }
        // Temperature 0.7 without a cut: softmax(logits / 0.7).
        let z: f64 = logits.iter().map(|&l| (l as f64 / 0.7).exp()).sum();
        let q = probability(&mut logits.clone(), &sample(0.7, None, None), &[], 1).unwrap();
        assert!((q - (1.0f64 / 0.7).exp() / z).abs() < 1e-6);
    }

    #[test]
    fn top_k_and_top_p_bound_the_choices() {
        let logits = [0.0f32, 5.0, 4.9, 1.0, 4.8];
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let t = choose(&mut logits.clone(), &sample(1.0, Some(2), None), &[], &mut rng);
            assert!(t == 1 || t == 2, "{t}");
            // The three near-equal tokens hold ~0.99 of the mass; p 0.5 keeps the top two.
            let t = choose(&mut logits.clone(), &sample(1.0, None, Some(0.5)), &[], &mut rng);
            assert!(t == 1 || t == 2, "{t}");
        }
    }

    #[test]
    fn the_nucleus_of_the_likeliest_tokens_draws_as_sorting_all() {
        // top_k = the vocabulary takes the path that sorts every token.
        let mut gen = Rng::new(9);
        for case in 0..40 {
            let v = 3000;
            let spread = 1.0 + (case % 5) as f32 * 4.0;
            let logits: Vec<f32> = (0..v).map(|_| (gen.next_f64() as f32 - 0.5) * spread).collect();
            for (t, p) in [(0.7, 0.9), (1.0, 0.98), (1.3, 0.5)] {
                let (mut a, mut b) = (Rng::new(case), Rng::new(case));
                for _ in 0..20 {
                    let fast = choose(&mut logits.clone(), &sample(t, None, Some(p)), &[], &mut a);
                    let all = choose(&mut logits.clone(), &sample(t, Some(v), Some(p)), &[], &mut b);
                    assert_eq!(fast, all, "case {case}, t {t}, p {p}");
                }
            }
        }
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        // softmax([0, ln 3]) = [0.25, 0.75]
        let logits = [0.0f32, 3f32.ln()];
        let mut rng = Rng::new(42);
        let n = 20_000;
        let ones = (0..n).filter(|_| choose(&mut logits.clone(), &sample(1.0, None, None), &[], &mut rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "{share}");
    }

    #[test]
    fn the_same_seed_gives_the_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..30)
                .map(|_| choose(&mut logits.clone(), &sample(0.8, Some(20), Some(0.9)), &[], &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn repetition_penalty_is_transformers_rule() {
        let mut l = [2.0f32, -2.0, 1.0];
        let p = SamplingParams { repetition_penalty: Some(2.0), ..SamplingParams::greedy() };
        choose(&mut l, &p, &[0, 1, 0], &mut Rng::new(0));
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }
}
