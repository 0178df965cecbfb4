//! The seeded random numbers behind every draw selfspec makes (sampling, demos, data order,
//! dropout): the same seed gives the same numbers on every platform.

/// SplitMix64: small, fast, and the same sequence on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller from two uniform draws).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.next_f64(); // (0, 1]: the logarithm stays finite
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Shuffles `items` in place (Fisher–Yates from the end): the same seed, the same order.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }

    /// Draw `i` (0-based) of `Rng::new(seed).next_f64()`, computed alone: SplitMix64 hashes a
    /// counter, so no earlier draw is needed (dropout masks are regenerated element by element).
    pub fn nth_f64(seed: u64, i: u64) -> f64 {
        Rng(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).next_f64()
    }
}
