//! [`super::wide512`]'s kernel for AVX2 (with FMA and, for an f16 cache, F16C): scores for 8
//! keys at a time summed in one transposing reduction, the softmax's exponentials in vectors,
//! an f16 cache widened as it is loaded (no copy, no buffer per task).

use std::arch::x86_64::*;

use super::cache::{first_visible, weights, Ctx, Src};

/// Whether [`group`] takes heads of `hd` on this CPU.
pub fn takes(hd: usize) -> bool {
    matches!(hd, 64 | 128 | 256) && std::arch::is_x86_feature_detected!("f16c")
}

/// 8 values from element `i` of an f32 or f16 (`HALF`) buffer.
#[inline(always)]
unsafe fn load<const HALF: bool>(base: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller keeps `i + 8` within the buffer.
    unsafe {
        if HALF {
            _mm256_cvtph_ps(_mm_loadu_si128((base as *const u16).add(i) as *const __m128i))
        } else {
            _mm256_loadu_ps((base as *const f32).add(i))
        }
    }
}

/// The 8 lane sums of `v` as one vector, `v[i]`'s in lane i: pairs added twice within each
/// 128-bit half, then the halves of the two groups of four added.
#[inline(always)]
unsafe fn sum8(v: &[__m256; 8]) -> __m256 {
    let a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    let b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
}

/// The task's (row, key/value head) for a cache of `HALF` (f16) or f32 values, heads of `8 · CH`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<const HALF: bool, const CH: usize>(c: &Ctx, task: usize, k: *const u8, v: *const u8) {
    let nkv = c.nh / c.rep;
    let (row, kv) = (task / nkv, task % nkv);
    let (kb, vb) = (c.k_at.at(row, kv), c.v_at.at(row, kv));
    let (ks, vs) = (c.k_at.step, c.v_at.step);
    let (hd, rep, total, new) = (c.hd, c.rep, c.total, c.new);
    let mut p = vec![0f32; rep * total];
    let mut acc = vec![[_mm256_setzero_ps(); CH]; rep];
    let mut qv = vec![[_mm256_setzero_ps(); CH]; rep];
    let scale = _mm256_set1_ps(c.scale);
    let mut block = [0f32; 8];
    for t in 0..new {
        let m = c.mask.map(|m| &m[(row * new + t) * total..][..total]);
        // Slots before `lo` (left padding) are never read.
        let lo = first_visible(m, total);
        for (r, qv) in qv.iter_mut().enumerate() {
            let q = c.q[((row * c.nh + kv * rep + r) * new + t) * hd..][..hd].as_ptr();
            for (ch, qv) in qv.iter_mut().enumerate() {
                // SAFETY: `q` holds `hd = 8 · CH` values.
                *qv = _mm256_mul_ps(unsafe { _mm256_loadu_ps(q.add(8 * ch)) }, scale);
            }
        }
        // Scores, 8 keys at a time.
        let mut j0 = lo / 8 * 8;
        while j0 < total {
            let n = (total - j0).min(8);
            for (r, qv) in qv.iter().enumerate() {
                let mut lanes = [_mm256_setzero_ps(); 8];
                for (jj, lane) in lanes.iter_mut().enumerate().take(n) {
                    let key = kb + (j0 + jj) * ks;
                    let mut a = _mm256_setzero_ps();
                    for (ch, qv) in qv.iter().enumerate() {
                        // SAFETY: attend_with checked that every key's `hd` values lie in the
                        // storage.
                        a = _mm256_fmadd_ps(*qv, unsafe { load::<HALF>(k, key + 8 * ch) }, a);
                    }
                    *lane = a;
                }
                // SAFETY: `block` holds 8 floats.
                unsafe { _mm256_storeu_ps(block.as_mut_ptr(), sum8(&lanes)) };
                let out = &mut p[r * total + j0..][..n];
                match m {
                    Some(m) => {
                        for ((o, &s), &b) in out.iter_mut().zip(&block).zip(&m[j0..j0 + n]) {
                            *o = s + b;
                        }
                    }
                    None => out.copy_from_slice(&block[..n]),
                }
            }
            j0 += 8;
        }
        // Weights: e^(s − max), and their sums.
        let sums = weights(&mut p, rep, total, lo);
        // Values: 16 slots at a time for every query head (the block stays in L1 across the
        // heads), each head's sums in registers (heads of 64; larger
        // ones spill some).
        for a in acc.iter_mut() {
            *a = [_mm256_setzero_ps(); CH];
        }
        let mut j0 = lo;
        while j0 < total {
            let end = (j0 + 16).min(total);
            for (r, a) in acc.iter_mut().enumerate() {
                let mut regs = *a;
                for j in j0..end {
                    let w = p[r * total + j];
                    if w == 0.0 {
                        continue;
                    }
                    let w = _mm256_set1_ps(w);
                    let value = vb + j * vs;
                    for (ch, reg) in regs.iter_mut().enumerate() {
                        // SAFETY: as for the keys.
                        *reg = _mm256_fmadd_ps(w, unsafe { load::<HALF>(v, value + 8 * ch) }, *reg);
                    }
                }
                *a = regs;
            }
            j0 = end;
        }
        for (r, a) in acc.iter().enumerate() {
            let inv = _mm256_set1_ps(1.0 / sums[r]);
            let h = kv * rep + r;
            // SAFETY: (row, t, h) belongs to this task alone; the `hd` values lie inside the
            // output.
            let o = c.out.at(((row * new + t) * c.nh + h) * hd);
            for (ch, reg) in a.iter().enumerate() {
                unsafe { _mm256_storeu_ps(o.add(8 * ch), _mm256_mul_ps(*reg, inv)) };
            }
        }
    }
}

/// The task through the instance for this cache and head size; false when there is none (the
/// caller runs the general kernel).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C ([`takes`]).
pub unsafe fn group(c: &Ctx, task: usize) -> bool {
    if c.rep > 64 {
        return false;
    }
    macro_rules! go {
        ($half:expr, $k:expr, $v:expr) => {
            // SAFETY: the caller's promise.
            unsafe {
                match c.hd {
                    64 => run::<$half, 8>(c, task, $k, $v),
                    128 => run::<$half, 16>(c, task, $k, $v),
                    256 => run::<$half, 32>(c, task, $k, $v),
                    _ => return false,
                }
            }
        };
    }
    match (c.k, c.v) {
        (Src::F32(k), Src::F32(v)) => go!(false, k.as_ptr() as *const u8, v.as_ptr() as *const u8),
        (Src::F16(k), Src::F16(v)) => go!(true, k.as_ptr() as *const u8, v.as_ptr() as *const u8),
        _ => return false,
    }
    true
}
