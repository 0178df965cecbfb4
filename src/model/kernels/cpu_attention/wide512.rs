//! [`group`] for head sizes of 64, 128 or 256 with AVX-512: scores for 16 keys at a time summed
//! in one transposing reduction instead of one horizontal sum each, the softmax's exponentials
//! in vectors, an f16 cache widened as it is loaded (no copy).
use std::arch::x86_64::*;

use super::cache::{first_visible, weights, Ctx, Src};

/// Whether [`group`] takes heads of `hd`.
pub fn takes(hd: usize) -> bool {
    matches!(hd, 64 | 128 | 256)
}

/// 16 values from element `i` of an f32 or f16 (`HALF`) buffer.
#[inline(always)]
unsafe fn load<const HALF: bool>(base: *const u8, i: usize) -> __m512 {
    // SAFETY: the caller keeps `i + 16` within the buffer.
    unsafe {
        if HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256((base as *const u16).add(i) as *const __m256i))
        } else {
            _mm512_loadu_ps((base as *const f32).add(i))
        }
    }
}

/// Where key `i` of a block goes so that [`sum16`] puts its sum in lane `i`.
const SLOT: [usize; 16] = {
    let mut s = [0; 16];
    let mut i = 0;
    while i < 16 {
        s[i] = 4 * (i % 4) + i / 4;
        i += 1;
    }
    s
};

/// The 16 lane sums of `v` as one vector, `v[SLOT[i]]`'s in lane i: halves, then quarters
/// of pairs added across 128-bit lanes, then a 4×4 transpose-add inside them.
#[inline(always)]
unsafe fn sum16(v: &[__m512; 16]) -> __m512 {
    let mut w = [_mm512_setzero_ps(); 8];
    for (i, w) in w.iter_mut().enumerate() {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        *w = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
    }
    let mut x = [_mm512_setzero_ps(); 4];
    for (m, x) in x.iter_mut().enumerate() {
        let (a, b) = (w[2 * m], w[2 * m + 1]);
        *x = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b));
    }
    let y01 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
    let y23 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
    _mm512_add_ps(_mm512_shuffle_ps::<0x44>(y01, y23), _mm512_shuffle_ps::<0xEE>(y01, y23))
}

/// The task's (row, key/value head) for a cache of `HALF` (f16) or f32 values, heads of
/// `16 · CH`.
#[target_feature(enable = "avx512f")]
unsafe fn run<const HALF: bool, const CH: usize>(c: &Ctx, task: usize, k: *const u8, v: *const u8) {
    let nkv = c.nh / c.rep;
    let (row, kv) = (task / nkv, task % nkv);
    let (kb, vb) = (c.k_at.at(row, kv), c.v_at.at(row, kv));
    let (ks, vs) = (c.k_at.step, c.v_at.step);
    let (hd, rep, total, new) = (c.hd, c.rep, c.total, c.new);
    let mut p = vec![0f32; rep * total];
    let mut acc = vec![[_mm512_setzero_ps(); CH]; rep];
    let mut qv = vec![[_mm512_setzero_ps(); CH]; rep];
    let scale = _mm512_set1_ps(c.scale);
    let mut block = [0f32; 16];
    for t in 0..new {
        let m = c.mask.map(|m| &m[(row * new + t) * total..][..total]);
        // Slots before `lo` (left padding) are never read.
        let lo = first_visible(m, total);
        for (r, qv) in qv.iter_mut().enumerate() {
            let q = c.q[((row * c.nh + kv * rep + r) * new + t) * hd..][..hd].as_ptr();
            for (ch, qv) in qv.iter_mut().enumerate() {
                // SAFETY: `q` holds `hd = 16 · CH` values.
                *qv = _mm512_mul_ps(unsafe { _mm512_loadu_ps(q.add(16 * ch)) }, scale);
            }
        }
        // Scores, 16 keys at a time.
        let mut j0 = lo / 16 * 16;
        while j0 < total {
            let n = (total - j0).min(16);
            for (r, qv) in qv.iter().enumerate() {
                let mut lanes = [_mm512_setzero_ps(); 16];
                for jj in 0..n {
                    let key = kb + (j0 + jj) * ks;
                    let mut a = _mm512_setzero_ps();
                    for (ch, qv) in qv.iter().enumerate() {
                        // SAFETY: attend_with checked that every key's `hd` values lie in
                        // the storage.
                        a = _mm512_fmadd_ps(*qv, unsafe { load::<HALF>(k, key + 16 * ch) }, a);
                    }
                    lanes[SLOT[jj]] = a;
                }
                // SAFETY: `block` holds 16 floats.
                unsafe { _mm512_storeu_ps(block.as_mut_ptr(), sum16(&lanes)) };
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
            j0 += 16;
        }
        // Weights: e^(s − max), and their sums.
        let sums = weights(&mut p, rep, total, lo);
        // Values: 16 slots at a time for every query head, each head's sums in registers.
        for a in acc.iter_mut() {
            *a = [_mm512_setzero_ps(); CH];
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
                    let w = _mm512_set1_ps(w);
                    let value = vb + j * vs;
                    for (ch, reg) in regs.iter_mut().enumerate() {
                        // SAFETY: as for the keys.
                        *reg = _mm512_fmadd_ps(w, unsafe { load::<HALF>(v, value + 16 * ch) }, *reg);
                    }
                }
                *a = regs;
            }
            j0 = end;
        }
        for (r, a) in acc.iter().enumerate() {
            let inv = _mm512_set1_ps(1.0 / sums[r]);
            let h = kv * rep + r;
            // SAFETY: (row, t, h) belongs to this task alone; the `hd` values lie inside the
            // output.
            let o = c.out.at(((row * new + t) * c.nh + h) * hd);
            for (ch, reg) in a.iter().enumerate() {
                unsafe { _mm512_storeu_ps(o.add(16 * ch), _mm512_mul_ps(*reg, inv)) };
            }
        }
    }
}

/// The task through the instance for this cache and head size; false when there is none
/// (the caller runs the general kernel).
///
/// # Safety
/// The CPU has AVX-512F.
pub unsafe fn group(c: &Ctx, task: usize) -> bool {
    if c.rep > 64 {
        return false;
    }
    let (k, v) = (c.k, c.v);
    macro_rules! go {
        ($half:expr, $k:expr, $v:expr) => {
            // SAFETY: the caller's promise.
            unsafe {
                match c.hd {
                    64 => run::<$half, 4>(c, task, $k, $v),
                    128 => run::<$half, 8>(c, task, $k, $v),
                    256 => run::<$half, 16>(c, task, $k, $v),
                    _ => return false,
                }
            }
        };
    }
    match (k, v) {
        (Src::F32(k), Src::F32(v)) => go!(false, k.as_ptr() as *const u8, v.as_ptr() as *const u8),
        (Src::F16(k), Src::F16(v)) => go!(true, k.as_ptr() as *const u8, v.as_ptr() as *const u8),
        _ => return false,
    }
    true
}
