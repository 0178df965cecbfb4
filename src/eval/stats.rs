//! Uncertainty for scores and for comparisons of two models on the same examples, as pure
//! functions of per-example scores (0–100).
//!
//! - A score's interval: percentile bootstrap (examples drawn with replacement, `resamples`
//!   times; the 2.5th and 97.5th percentiles of the resampled means, interpolated as NumPy's
//!   `percentile` does).
//! - A comparison: Δ is the mean of the per-example differences (B − A); its interval is the
//!   same bootstrap over the differences (a paired bootstrap: an example's two scores are drawn
//!   together); its p-value is approximate randomisation (each example's two scores swapped with
//!   probability ½, i.e. its difference's sign flipped; `trials` times; two-sided on |mean|;
//!   p = (c + 1)/(trials + 1), c counting trials at least as extreme as the observed one).
//! - Label sets: the exact McNemar test on the discordant pairs (two-sided binomial, ½).
//! - Several datasets: the statistic is the mean of the datasets' means; the bootstrap draws
//!   within each dataset (stratified), the randomisation flips within each, so every dataset
//!   keeps its size.
//! - Replicates (the same examples scored by R models trained with different seeds): the
//!   bootstrap resamples the examples of the replicates' per-example mean, and the interval is
//!   widened, in quadrature on each side, by the replicates' own spread: t₀.₉₇₅,R−1 · s_R/√R,
//!   s_R the sd of the R replicates' statistics (so two replicates that disagree give a wide
//!   interval, as they should). Randomisation flips an example's sign in all replicates at
//!   once, so its p is conditional on the trained replicates; a replicated comparison's p is
//!   the larger of that and the one-sample t-test of the R replicates' Δs against 0 (df R − 1),
//!   so a small p needs both the examples and the runs to agree. Intervals are clipped to the
//!   scale (scores 0–100, Δ ±100).
//! - Exactly, where the draws need not be made: one dataset whose every score is 0 or 100
//!   (right/wrong answers; their differences −100, 0, 100) has its bootstrap distribution
//!   computed by dynamic programming and its randomisation p as the sign test it then is (the
//!   exact binomial test of the discordant examples) — what infinitely many draws would give.
//! - Holm's step-down adjustment across a report's datasets.
//! - The smallest detectable Δ: (z₀.₉₇₅ + z₀.₈₀) · SE, SE from the observed standard deviation
//!   of the paired differences (√(Σ sd_d²/n_d)/D over D datasets; with replicates, of their
//!   per-example means, and s_R²/R added).

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// How many draws each method makes, and from which seed; recorded in every report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Bootstrap resamples for every interval.
    pub resamples: usize,
    /// Approximate-randomisation trials for every p-value.
    pub trials: usize,
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { resamples: 10_000, trials: 10_000, seed: 1 }
    }
}

/// The most draws a command accepts (each is one pass over the examples).
pub const MAX_DRAWS: usize = 10_000_000;

impl Settings {
    pub fn check(&self) -> anyhow::Result<()> {
        for (name, v) in [("resamples", self.resamples), ("trials", self.trials)] {
            anyhow::ensure!(
                (100..=MAX_DRAWS).contains(&v),
                "{name} {v} is out of range: use 100 to {MAX_DRAWS} (10,000 is the default)"
            );
        }
        Ok(())
    }
}

/// z quantiles for a two-sided 5 % test at 80 % power.
const Z_975: f64 = 1.959_963_984_540_054;
const Z_80: f64 = 0.841_621_233_572_914_3;

/// The confidence level of every interval, and the significance level of every mark.
pub const LEVEL: f64 = 0.95;
pub const ALPHA: f64 = 0.05;

/// One dataset's scores: `rows[r][i]` is replicate r's score of example i (one row without
/// replicates). Every row has the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub rows: Vec<Vec<f64>>,
}

impl Group {
    pub fn one(scores: Vec<f64>) -> Group {
        Group { rows: vec![scores] }
    }

    pub fn n(&self) -> usize {
        self.rows.first().map_or(0, Vec::len)
    }

    fn mean(&self) -> f64 {
        let n = self.n();
        if n == 0 || self.rows.is_empty() {
            return 0.0;
        }
        self.rows.iter().map(|r| r.iter().sum::<f64>()).sum::<f64>() / (n * self.rows.len()) as f64
    }

    /// B − A example by example (replicate by replicate; a single-row A is every replicate's
    /// reference, as the base is for a sweep point's replicates).
    pub fn minus(&self, a: &Group) -> Group {
        debug_assert!(a.rows.len() == 1 || a.rows.len() == self.rows.len(), "one reference row, or one a replicate");
        debug_assert_eq!(a.n(), self.n(), "the same examples");
        let rows = self
            .rows
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let a = &a.rows[r.min(a.rows.len().saturating_sub(1))];
                row.iter().zip(a).map(|(b, a)| b - a).collect()
            })
            .collect();
        Group { rows }
    }
}

/// The statistic every function here estimates: the mean over groups of each group's mean.
pub fn statistic(groups: &[Group]) -> f64 {
    let live: Vec<&Group> = groups.iter().filter(|g| g.n() > 0).collect();
    if live.is_empty() {
        return 0.0;
    }
    live.iter().map(|g| g.mean()).sum::<f64>() / live.len() as f64
}

/// A uniform index below `n` (Lemire's multiply-shift; no modulo bias worth naming).
fn below(rng: &mut Rng, n: usize) -> usize {
    ((rng.next_u64() as u128 * n as u128) >> 64) as usize
}

/// NumPy's `percentile` (linear interpolation) of sorted values, q in [0, 1].
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = q * (sorted.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Each group's replicates averaged example by example: one row.
fn collapsed(groups: &[Group]) -> Vec<Group> {
    groups
        .iter()
        .map(|g| {
            let n = g.n();
            let r = g.rows.len().max(1) as f64;
            Group::one(
                (0..n).map(|i| g.rows.iter().map(|row| row.get(i).copied().unwrap_or(0.0)).sum::<f64>() / r).collect(),
            )
        })
        .collect()
}

/// The number of replicates (rows) of the groups: the most any group has.
fn replicates(groups: &[Group]) -> usize {
    groups.iter().map(|g| g.rows.len()).max().unwrap_or(1)
}

/// The statistic of each replicate alone (the r-th row of every group).
fn per_replicate(groups: &[Group]) -> Vec<f64> {
    (0..replicates(groups))
        .map(|r| {
            let one: Vec<Group> =
                groups.iter().map(|g| Group::one(g.rows[r.min(g.rows.len().saturating_sub(1))].clone())).collect();
            statistic(&one)
        })
        .collect()
}

/// t₀.₉₇₅ with `df` degrees of freedom (df 1 to 30; beyond, the normal's).
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(Z_975)
}

/// The replicates' share of the uncertainty: (t₀.₉₇₅,R−1 · s_R/√R, s_R²/R); zero with one.
fn replicate_spread(groups: &[Group]) -> (f64, f64) {
    let r = replicates(groups);
    if r < 2 {
        return (0.0, 0.0);
    }
    let var = sd(&per_replicate(groups)).powi(2) / r as f64;
    (t975(r - 1) * var.sqrt(), var)
}

/// Two-sided p of the one-sample t-test that the replicates' statistics average 0 (df R − 1);
/// None with one replicate.
fn replicate_t_p(groups: &[Group]) -> Option<f64> {
    let r = replicates(groups);
    if r < 2 {
        return None;
    }
    let v = per_replicate(groups);
    let mean = v.iter().sum::<f64>() / r as f64;
    let s = sd(&v);
    if s == 0.0 {
        return Some(if mean == 0.0 { 1.0 } else { 0.0 });
    }
    Some(student_t_two_sided(mean / (s / (r as f64).sqrt()), (r - 1) as f64))
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: I_x(df/2, 1/2), x = df/(df + t²).
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return 0.0;
    }
    incomplete_beta(df / 2.0, 0.5, df / (df + t * t)).clamp(0.0, 1.0)
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (evaluated
/// with the modified Lentz method on whichever side converges fast).
fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(a, b, x) / a
    } else {
        1.0 - front * beta_fraction(b, a, 1.0 - x) / b
    }
}

fn beta_fraction(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        // The even step, then the odd step, of the fraction's terms.
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / guard(1.0 + even * d);
        c = guard(1.0 + even / c);
        h *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / guard(1.0 + odd * d);
        c = guard(1.0 + odd / c);
        let step = d * c;
        h *= step;
        if (step - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine terms; about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = G[0];
    for (i, g) in G.iter().enumerate().skip(1) {
        sum += g / (x + i as f64);
    }
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The statistic's bootstrap distribution (sorted): `resamples` draws of the examples, with
/// replacement, within each group (replicates averaged example by example first).
pub fn bootstrap(groups: &[Group], resamples: usize, seed: u64) -> Vec<f64> {
    let groups = collapsed(groups);
    let live: Vec<&Group> = groups.iter().filter(|g| g.n() > 0).collect();
    if live.is_empty() {
        return vec![0.0; resamples.max(1)];
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let mut total = 0.0;
        for g in &live {
            let (row, n) = (&g.rows[0], g.n());
            let sum: f64 = (0..n).map(|_| row[below(&mut rng, n)]).sum();
            total += sum / n as f64;
        }
        out.push(total / live.len() as f64);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// The interval of `groups`' statistic: the examples' bootstrap percentile interval, widened by
/// the replicates' spread where there are several.
fn widened(groups: &[Group], sorted: &[f64]) -> [f64; 2] {
    let [lo, hi] = interval(sorted);
    let (spread, _) = replicate_spread(groups);
    if spread == 0.0 {
        return [lo, hi];
    }
    let mid = statistic(groups);
    let below = (mid - lo).max(0.0);
    let above = (hi - mid).max(0.0);
    [mid - below.hypot(spread), mid + above.hypot(spread)]
}

/// The percentile interval at [`LEVEL`] of a sorted bootstrap distribution.
pub fn interval(sorted: &[f64]) -> [f64; 2] {
    let tail = (1.0 - LEVEL) / 2.0;
    [percentile(sorted, tail), percentile(sorted, 1.0 - tail)]
}

/// A score with its interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub mean: f64,
    pub ci: [f64; 2],
}

/// A score and its bootstrap interval (widened by the replicates' spread).
pub fn estimate(groups: &[Group], s: &Settings) -> Estimate {
    if let Some(ci) = lattice(groups).map(|u| exact_interval(&u)) {
        return Estimate { mean: statistic(groups), ci };
    }
    let [lo, hi] = widened(groups, &bootstrap(groups, s.resamples, s.seed));
    Estimate { mean: statistic(groups), ci: [lo.max(0.0), hi.min(100.0)] }
}

/// The most examples whose distributions are computed exactly (the work grows as n²).
const EXACT_MAX: usize = 5000;

/// One dataset of one replicate whose every value is 0 or ±100 (right/wrong answers and their
/// differences), as −1, 0 and 1: then the bootstrap and randomisation distributions are
/// computed exactly instead of drawn.
fn lattice(groups: &[Group]) -> Option<Vec<i8>> {
    let [g] = groups else { return None };
    let [row] = g.rows.as_slice() else { return None };
    if row.is_empty() || row.len() > EXACT_MAX {
        return None;
    }
    row.iter()
        .map(|&v| match v {
            v if v.abs() < 1e-9 => Some(0),
            v if (v - 100.0).abs() < 1e-9 => Some(1),
            v if (v + 100.0).abs() < 1e-9 => Some(-1),
            _ => None,
        })
        .collect()
}

/// The exact bootstrap percentile interval of the mean of `units` (each −1, 0 or 1, in
/// hundreds): the distribution of the sum of n draws with replacement, by dynamic
/// programming; each end the smallest mean whose cumulative probability reaches the level (what
/// NumPy's percentile of infinitely many resamples gives).
fn exact_interval(units: &[i8]) -> [f64; 2] {
    let n = units.len();
    let count = |u: i8| units.iter().filter(|&&x| x == u).count() as f64 / n as f64;
    let (down, stay, up) = (count(-1), count(0), count(1));
    // dist[s + n] = P(sum = s) after the draws so far.
    let mut dist = vec![0.0f64; 2 * n + 1];
    dist[n] = 1.0;
    let mut next = vec![0.0f64; 2 * n + 1];
    for step in 1..=n {
        next.iter_mut().for_each(|x| *x = 0.0);
        for s in (n - (step - 1))..=(n + (step - 1)) {
            let p = dist[s];
            if p == 0.0 {
                continue;
            }
            next[s - 1] += p * down;
            next[s] += p * stay;
            next[s + 1] += p * up;
        }
        std::mem::swap(&mut dist, &mut next);
    }
    let tail = (1.0 - LEVEL) / 2.0;
    let quantile = |q: f64| {
        let mut cdf = 0.0;
        for (i, p) in dist.iter().enumerate() {
            cdf += p;
            // A relative slack: the running sum's rounding must not step over an exact tie.
            if cdf >= q * (1.0 - 1e-12) {
                return (i as f64 - n as f64) * 100.0 / n as f64;
            }
        }
        100.0
    };
    [quantile(tail), quantile(1.0 - tail)]
}

/// The exact two-sided randomisation p of differences that are −1, 0 or 1 (in hundreds): the
/// sign flips make the sum of the m non-zero ones 2B − m with B ~ Binomial(m, ½), so
/// p = P(|2B − m| ≥ |observed|) — McNemar's exact test, which is what infinitely many trials
/// would find.
fn exact_randomisation_p(units: &[i8]) -> f64 {
    let up = units.iter().filter(|&&u| u == 1).count();
    let down = units.iter().filter(|&&u| u == -1).count();
    mcnemar_exact(up, down)
}

/// Two-sided approximate randomisation of paired differences: each example's sign flipped
/// with probability ½ (in every replicate at once), `trials` times; p = (c + 1)/(trials + 1).
pub fn randomisation_p(diffs: &[Group], trials: usize, seed: u64) -> f64 {
    let live: Vec<&Group> = diffs.iter().filter(|g| g.n() > 0).collect();
    if live.is_empty() {
        return 1.0;
    }
    // Per example, the mean over replicates of its difference, pre-divided by n·groups: a
    // trial's statistic is then the plain sum of the signed values.
    let values: Vec<f64> = live
        .iter()
        .flat_map(|g| {
            let n = g.n();
            let scale = 1.0 / (n as f64 * g.rows.len() as f64 * live.len() as f64);
            (0..n).map(move |i| g.rows.iter().map(|r| r[i]).sum::<f64>() * scale)
        })
        .collect();
    let observed: f64 = values.iter().sum::<f64>().abs();
    // Sums are formed in another order under flips; a relative slack keeps an exact tie a tie.
    let slack = 1e-9 * values.iter().map(|v| v.abs()).sum::<f64>().max(f64::MIN_POSITIVE);
    let mut rng = Rng::new(seed);
    let mut at_least = 0usize;
    for _ in 0..trials {
        let mut sum = 0.0;
        let mut bits = 0u64;
        for (j, v) in values.iter().enumerate() {
            if j % 64 == 0 {
                bits = rng.next_u64();
            }
            sum += if bits & 1 == 1 { -v } else { *v };
            bits >>= 1;
        }
        if sum.abs() >= observed - slack {
            at_least += 1;
        }
    }
    (at_least + 1) as f64 / (trials + 1) as f64
}

/// The exact McNemar test: two-sided binomial test of the discordant pairs against ½
/// (`only_a`: examples A got right and B wrong; `only_b`: the reverse). 1 when none differ.
pub fn mcnemar_exact(only_a: usize, only_b: usize) -> f64 {
    let n = only_a + only_b;
    if n == 0 {
        return 1.0;
    }
    let k = only_a.min(only_b);
    // ln C(n, i) − n ln 2, summed for i ≤ k; the distribution is symmetric, so the two-sided p
    // (every outcome no likelier than the observed one) is twice the lower tail, at most 1.
    let ln_fact = |m: usize| (1..=m).map(|i| (i as f64).ln()).sum::<f64>();
    let ln_n = ln_fact(n);
    let ln2n = n as f64 * std::f64::consts::LN_2;
    let mut tail = 0.0;
    let mut ln_i = 0.0; // ln i!
    let mut ln_rest = ln_n; // ln (n − i)!
    for i in 0..=k {
        if i > 0 {
            ln_i += (i as f64).ln();
            ln_rest -= ((n - i + 1) as f64).ln();
        }
        tail += (ln_n - ln_i - ln_rest - ln2n).exp();
    }
    if only_a == only_b {
        return 1.0;
    }
    (2.0 * tail).min(1.0)
}

/// Holm's step-down adjustment: the i-th smallest p becomes max over j ≤ i of (m − j + 1)·p₍ⱼ₎,
/// at most 1; returned in the input's order.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

fn sd(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 2 {
        return 0.0;
    }
    let m = x.iter().sum::<f64>() / n as f64;
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64).sqrt()
}

/// The smallest Δ a two-sided 5 % test detects with 80 % power, given the statistic's
/// standard error.
pub fn detectable_from_se(se: f64) -> f64 {
    (Z_975 + Z_80) * se
}

/// The standard error of the statistic over paired differences: √(Σ sd_d²/n_d)/D from each
/// dataset's observed sd (of the replicates' per-example means), with the replicates' own
/// variance s_R²/R added.
fn standard_error(diffs: &[Group]) -> f64 {
    let collapsed = collapsed(diffs);
    let live: Vec<&Group> = collapsed.iter().filter(|g| g.n() > 0).collect();
    if live.is_empty() {
        return 0.0;
    }
    let var: f64 = live.iter().map(|g| sd(&g.rows[0]).powi(2) / g.n() as f64).sum();
    let d = live.len() as f64;
    (var / (d * d) + replicate_spread(diffs).1).sqrt()
}

/// B against A on the same examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// Mean of the per-example differences B − A.
    pub delta: f64,
    pub ci: [f64; 2],
    pub p: f64,
    /// Holm-adjusted across the report's datasets (set by the report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holm_p: Option<f64>,
    /// The smallest |Δ| this many examples detect (80 % power, two-sided 5 %).
    pub detectable: f64,
}

impl Delta {
    /// Significant at 5 %: p (after Holm where it was adjusted) below 0.05 and the interval
    /// clear of 0.
    pub fn significant(&self) -> bool {
        self.holm_p.unwrap_or(self.p) < ALPHA && (self.ci[0] > 0.0 || self.ci[1] < 0.0)
    }
}

/// The paired comparison of B with A (each a list of groups over the same examples).
pub fn paired(a: &[Group], b: &[Group], s: &Settings) -> Delta {
    debug_assert_eq!(a.len(), b.len(), "the same datasets on both sides");
    let diffs: Vec<Group> = b.iter().zip(a).map(|(b, a)| b.minus(a)).collect();
    let (ci, p) = match lattice(&diffs) {
        Some(units) => (exact_interval(&units), exact_randomisation_p(&units)),
        None => {
            let [lo, hi] = widened(&diffs, &bootstrap(&diffs, s.resamples, s.seed));
            let p = randomisation_p(&diffs, s.trials, s.seed ^ 0x0005_eed0_fa11);
            ([lo.max(-100.0), hi.min(100.0)], replicate_t_p(&diffs).map_or(p, |t| t.max(p)))
        }
    };
    Delta { delta: statistic(&diffs), ci, p, holm_p: None, detectable: detectable_from_se(standard_error(&diffs)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_numpys() {
        // np.percentile([1, 2, 3, 4], [2.5, 50, 97.5]) == [1.075, 2.5, 3.925]
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!((percentile(&v, 0.5) - 2.5).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 3.925).abs() < 1e-12);
    }

    #[test]
    fn student_t_matches_scipy() {
        // 2 * scipy.stats.t.sf(t, df)
        for (t, df, p) in [
            (2.0, 2.0, 0.183_503_419_072_273_9),
            (4.302_652_729_911_275, 2.0, 0.049_999_999_996_516_63),
            (1.0, 1.0, 0.5),
            (-3.0, 5.0, 0.030_099_247_897_462_586),
            (0.0, 4.0, 1.0),
            (10.0, 30.0, 4.575_251_408_229_618e-11),
        ] {
            let got = student_t_two_sided(t, df);
            assert!((got - p).abs() <= 1e-9 * p.max(1e-3), "t {t}, df {df}: {got} against {p}");
        }
        assert_eq!(student_t_two_sided(f64::INFINITY, 3.0), 0.0);
    }

    #[test]
    fn replicates_that_disagree_keep_p_large() {
        // Three replicates over the same 200 examples: every example moves the same way within a
        // replicate, so the randomisation p alone is tiny; the replicates' Δs (+9, −1, +1) are not
        // consistent, so the replicated p is the t-test's, and the interval spans 0.
        let n = 200;
        let base = Group::one((0..n).map(|i| (i % 7) as f64 * 10.0).collect());
        let shifted = |d: f64| base.rows[0].iter().map(|v| v + d).collect::<Vec<f64>>();
        let tuned = Group { rows: vec![shifted(9.0), shifted(-1.0), shifted(1.0)] };
        let d = paired(std::slice::from_ref(&base), std::slice::from_ref(&tuned), &Settings::default());
        // scipy.stats.ttest_1samp([9, -1, 1], 0).pvalue
        assert!((d.p - 0.429_648_174_527_969_9).abs() < 1e-9, "{d:?}");
        assert!(d.ci[0] < 0.0 && d.ci[1] > 0.0 && !d.significant(), "{d:?}");
        // Clipped to the scale: a score's interval stays within 0–100.
        let low = Group { rows: vec![vec![0.0; 50], vec![1.0; 50], vec![30.0; 50]] };
        let e = estimate(&[low], &Settings::default());
        assert!(e.ci[0] >= 0.0 && e.ci[1] <= 100.0, "{e:?}");
    }

    #[test]
    fn identical_scores_give_nothing() {
        let a = vec![Group::one(vec![10.0, 50.0, 100.0, 0.0])];
        let d = paired(&a, &a, &Settings::default());
        assert_eq!((d.delta, d.ci, d.p, d.detectable), (0.0, [0.0, 0.0], 1.0, 0.0));
    }

    #[test]
    fn mcnemar_matches_the_binomial_test() {
        // scipy.stats.binomtest(k, n, 0.5).pvalue
        assert!((mcnemar_exact(2, 10) - 0.038_574_218_75).abs() < 1e-12);
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // binomtest(30, 100, 0.5).pvalue = 7.85013964e-05
        assert!((mcnemar_exact(30, 70) / 7.850_139_64e-5 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn right_or_wrong_answers_are_computed_exactly() {
        // Two of four right: the bootstrap mean is Binomial(4, ½)·25, P(0) = 1/16 > 2.5 %.
        assert_eq!(exact_interval(&[1, 1, 0, 0]), [0.0, 100.0]);
        assert_eq!(exact_interval(&[1, 1, 1]), [100.0, 100.0]);
        let e = estimate(&[Group::one(vec![100.0, 0.0, 100.0, 0.0])], &Settings::default());
        assert_eq!(e.ci, [0.0, 100.0]);
        // The randomisation p of 0/±100 differences is the sign test.
        let a = Group::one(vec![0.0; 12]);
        let b = Group::one([100.0; 10].into_iter().chain([0.0; 2]).collect());
        let d = paired(&[a], &[b], &Settings::default());
        assert!((d.p - 2.0 / 1024.0).abs() < 1e-12, "{d:?}");
    }

    #[test]
    fn holm_steps_down() {
        let h = holm(&[0.01, 0.04, 0.03, 0.005]);
        // sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → max so far 0.06
        assert_eq!(h, vec![0.03, 0.06, 0.06, 0.02]);
    }

    #[test]
    fn a_clear_gain_is_significant_and_inside_its_interval() {
        let a: Vec<f64> = (0..100).map(|i| (i % 7) as f64 * 10.0).collect();
        let b: Vec<f64> = a.iter().enumerate().map(|(i, x)| x + 5.0 + (i % 3) as f64).collect();
        let d = paired(&[Group::one(a)], &[Group::one(b)], &Settings::default());
        assert!((d.delta - 6.0).abs() < 0.02, "{d:?}");
        assert!(d.ci[0] > 5.0 && d.ci[1] < 7.0 && d.ci[0] < d.delta && d.delta < d.ci[1], "{d:?}");
        assert!(d.p < 0.001, "{d:?}");
    }
}
