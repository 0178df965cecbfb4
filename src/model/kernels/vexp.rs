//! `e^x` in f32 written so that loops of it vectorise (within 2 ulp), and a row's shifted
//! exponentials with their sum: what attention's softmax and the fused activations share.

/// `e^x` in f32 by range reduction and Cephes' polynomial (within 2 ulp of the true value),
/// written so that a loop of it vectorises; exactly 0 below −87.3 (and for −∞).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOW: f32 = -87.3;
    let xc = x.clamp(LOW, 88.3);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LOW {
        0.0
    } else {
        y * scale
    }
}

/// `row[j] = e^(row[j] − shift)`, returning their sum (in 16 lanes).
#[inline(always)]
fn exp_shift_lanes(row: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c.iter_mut()) {
            *x = exp(*x - shift);
            *l += *x;
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - shift);
        tail += *x;
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shift_avx512(row: &mut [f32], shift: f32) -> f32 {
    exp_shift_lanes(row, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shift_avx2(row: &mut [f32], shift: f32) -> f32 {
    exp_shift_lanes(row, shift)
}

/// [`exp_shift_lanes`], with AVX-512 or AVX2 where the CPU has it (the same values either way:
/// no multiply and add is fused into one rounding).
pub(super) fn exp_shift(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            return unsafe { exp_shift_avx512(row, shift) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { exp_shift_avx2(row, shift) };
        }
    }
    exp_shift_lanes(row, shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polynomial_exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, exact) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((ours - exact) / exact).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!((exp(f32::NEG_INFINITY), exp(-100.0), exp(0.0)), (0.0, 0.0, 1.0));
        let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let mut portable = row.clone();
        assert_eq!(exp_shift(&mut row, 1.0).to_bits(), exp_shift_lanes(&mut portable, 1.0).to_bits());
        assert_eq!(row, portable);
    }
}
