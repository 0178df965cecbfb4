//! Training's dropout mask, regenerated from a seed instead of stored: element `i` is dropped
//! by draw `i` of the generator, so a backward computes the same mask again.

/// A dropout probability and the seed of its mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f64,
    pub seed: u64,
}

impl Dropout {
    /// The mask's value at element `i`: 0 with probability `p`, else `1/(1−p)`, from draw `i` of
    /// the generator seeded with `seed` — computed alone, so a backward can regenerate it.
    pub fn mask(self, i: usize) -> f32 {
        if crate::rng::Rng::nth_f64(self.seed, i as u64) < self.p {
            0.0
        } else {
            (1.0 / (1.0 - self.p)) as f32
        }
    }

    /// `y[j] = x[j] · mask(start + j)`: the values of [`Dropout::mask`], many lanes at a time.
    pub fn apply(self, x: &[f32], start: usize, y: &mut [f32]) {
        self.masked::<false>(x, start, y)
    }

    /// `y[j] += x[j] · mask(start + j)` (a backward's `dx += mask ⊙ g`).
    pub fn apply_add(self, x: &[f32], start: usize, y: &mut [f32]) {
        self.masked::<true>(x, start, y)
    }

    fn masked<const ADD: bool>(self, x: &[f32], start: usize, y: &mut [f32]) {
        assert_eq!(x.len(), y.len());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the features were just detected.
            return unsafe { apply_avx512::<ADD>(self, x, start, y) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { apply_avx2::<ADD>(self, x, start, y) };
        }
        apply_lanes::<ADD>(self, x, start, y)
    }
}

/// [`Dropout::apply`] compiled with AVX-512 (its 64-bit multiplies in 8 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn apply_avx512<const ADD: bool>(d: Dropout, x: &[f32], start: usize, y: &mut [f32]) {
    apply_lanes::<ADD>(d, x, start, y)
}

/// [`Dropout::apply`] compiled with AVX2 (the 64-bit multiplies in 4 lanes, from 32-bit ones).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_avx2<const ADD: bool>(d: Dropout, x: &[f32], start: usize, y: &mut [f32]) {
    apply_lanes::<ADD>(d, x, start, y)
}

/// [`crate::rng::Rng::nth_f64`]`(seed, i) < p` as integers: for an integer `u`,
/// `u / 2⁵³ < p` exactly when `u < ⌈p · 2⁵³⌉` (the scaling by a power of two is exact).
#[inline(always)]
fn apply_lanes<const ADD: bool>(d: Dropout, x: &[f32], start: usize, y: &mut [f32]) {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let threshold = (d.p * (1u64 << 53) as f64).ceil() as u64;
    let keep = (1.0 / (1.0 - d.p)) as f32;
    let first = d.seed.wrapping_add((start as u64).wrapping_mul(GAMMA)).wrapping_add(GAMMA);
    for j in 0..x.len().min(y.len()) {
        let mut z = first.wrapping_add((j as u64).wrapping_mul(GAMMA));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let v = x[j] * if (z >> 11) < threshold { 0.0 } else { keep };
        y[j] = if ADD { y[j] + v } else { v };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_in_lanes_draws_the_masks_one_at_a_time_draws() {
        for (p, seed, start) in [(0.05, 7u64, 0usize), (0.5, u64::MAX, 12_345), (0.999, 3, 1 << 40), (1e-9, 0, 5)] {
            let d = Dropout { p, seed };
            let x: Vec<f32> = (0..1000).map(|i| i as f32 - 300.5).collect();
            let mut y = vec![f32::NAN; x.len()];
            d.apply(&x, start, &mut y);
            let mut portable = vec![f32::NAN; x.len()];
            apply_lanes::<false>(d, &x, start, &mut portable);
            let mut added: Vec<f32> = (0..x.len()).map(|j| j as f32 * 0.25).collect();
            d.apply_add(&x, start, &mut added);
            for (j, (&a, &b)) in y.iter().zip(&portable).enumerate() {
                let want = x[j] * d.mask(start + j);
                assert_eq!((a.to_bits(), b.to_bits()), (want.to_bits(), want.to_bits()), "p {p}, element {j}");
                assert_eq!(added[j].to_bits(), (j as f32 * 0.25 + want).to_bits(), "p {p}, element {j} added");
            }
        }
    }
}
