//! The kernel for any head size: per task, the cache widened into buffers, scores, softmax and
//! the weighted values, vectorised by the compiler under each target's features.

use super::cache::Ctx;

/// `Σ a·b` in 16 lanes (vectorised under the callers' target features).
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        let (x, y): (&[f32; 16], &[f32; 16]) = (x.try_into().expect("16"), y.try_into().expect("16"));
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    // A tree, not a chain of 15 dependent adds.
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0] + tail
}

/// The query heads of key/value head `task % kv_heads` in row `task / kv_heads`, every new
/// position: each cached key and value is read once for all the heads that share it.
#[inline(always)]
pub(super) fn group(c: &Ctx, task: usize, dot: impl Fn(&[f32], &[f32]) -> f32) {
    let nkv = c.nh / c.rep;
    let (row, kv) = (task / nkv, task % nkv);
    let (hd, rep, total) = (c.hd, c.rep, c.total);
    // Slots before `lo` are hidden from every new position (left padding): never read.
    let lo = c.mask.map_or(0, |m| {
        (0..c.new)
            .map(|t| {
                m[(row * c.new + t) * total..][..total].iter().position(|&b| b != f32::NEG_INFINITY).unwrap_or(total)
            })
            .min()
            .unwrap_or(0)
    });
    let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
    let (keys, kb, kstep) = c.k.slots(c.k_at.at(row, kv), c.k_at.step, (lo, total, hd), &mut kbuf);
    let (values, vb, vstep) = c.v.slots(c.v_at.at(row, kv), c.v_at.step, (lo, total, hd), &mut vbuf);
    // Scores then weights, `rep × total`; output sums `rep × hd`.
    let mut p = vec![0f32; rep * total];
    let mut acc = vec![0f32; rep * hd];
    let mut sums = vec![0f32; rep];
    for t in 0..c.new {
        let q = |r: usize| &c.q[((row * c.nh + kv * rep + r) * c.new + t) * hd..][..hd];
        let m = c.mask.map(|m| &m[(row * c.new + t) * total..][..total]);
        for j in 0..total {
            let bias = m.map_or(0.0, |m| m[j]);
            // A hidden slot (a row's left padding, most of a short row's cache when it decodes
            // beside long ones) is not read at all: its weight is 0 whatever its key.
            if bias == f32::NEG_INFINITY {
                for r in 0..rep {
                    p[r * total + j] = f32::NEG_INFINITY;
                }
                continue;
            }
            let key = &keys[kb + j * kstep..][..hd];
            for r in 0..rep {
                p[r * total + j] = dot(q(r), key) * c.scale + bias;
            }
        }
        for (r, s) in sums.iter_mut().enumerate() {
            let p = &mut p[r * total..][..total];
            let max = p.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            *s = 0.0;
            for v in p.iter_mut() {
                *v = (*v - max).exp();
                *s += *v;
            }
        }
        acc.iter_mut().for_each(|a| *a = 0.0);
        for j in 0..total {
            let value = &values[vb + j * vstep..][..hd];
            for r in 0..rep {
                let w = p[r * total + j];
                if w != 0.0 {
                    for (a, x) in acc[r * hd..][..hd].iter_mut().zip(value) {
                        *a += w * x;
                    }
                }
            }
        }
        for r in 0..rep {
            let inv = 1.0 / sums[r];
            let h = kv * rep + r;
            // SAFETY: (row, t, h) belongs to this task alone; the slice lies inside the output.
            let o = unsafe { std::slice::from_raw_parts_mut(c.out.at(((row * c.new + t) * c.nh + h) * hd), hd) };
            for (o, a) in o.iter_mut().zip(&acc[r * hd..][..hd]) {
                *o = a * inv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn group_avx512(c: &Ctx, task: usize) {
    use std::arch::x86_64::*;
    group(c, task, |a, b| {
        let n = a.len().min(b.len());
        let whole = n / 16 * 16;
        // SAFETY: every load reads 16 floats below `whole` ≤ both lengths.
        let mut acc = _mm512_setzero_ps();
        for i in (0..whole).step_by(16) {
            acc =
                unsafe { _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr().add(i)), _mm512_loadu_ps(b.as_ptr().add(i)), acc) };
        }
        let tail: f32 = a[whole..n].iter().zip(&b[whole..n]).map(|(x, y)| x * y).sum();
        _mm512_reduce_add_ps(acc) + tail
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn group_avx2(c: &Ctx, task: usize) {
    group(c, task, dot)
}
