//! Attention for decoding steps on the CPU: `softmax(q kᵀ · scale + mask) v` for a few new
//! positions against the KV cache, in one pass per key/value head.
//!
//! At decode sizes (one new token per row) candle's route — a batched GEMM for the scores, a
//! softmax, a second GEMM — spends most of its time packing operands for products of one row,
//! and wakes the threads three times per layer. Here each (row, key/value head) is one task: the
//! dot products with the cached keys, the softmax and the weighted sum of the values for every
//! query head sharing that key/value head, reading the cache in place (any strides with
//! contiguous head vectors, as `Kv`'s narrowed buffers are).
//! The output comes out as `[rows, new, heads · hd]`, the layout the output projection takes.

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::packed::Kernel;
use super::qpacked::Out;

/// New positions up to which [`attend`] is used; larger (prefill) goes through GEMMs.
pub const MAX_NEW: usize = 16;

/// Whether [`attend`] takes these: f32 on the CPU, at most [`MAX_NEW`] new positions.
pub fn usable(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32 && q.dims().len() == 4 && q.dims()[2] <= MAX_NEW
}

/// The f32 values of a CPU storage, whole (a view's layout says where its values lie); `op`
/// names the caller in the error.
pub(super) fn values<'a>(op: &str, s: &'a Storage) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => Ok(v),
        _ => candle_core::bail!("{op}: f32 on the CPU only"),
    }
}

/// Where one (row, head)'s vectors start in a 4-d view's storage, and the step between its
/// tokens (the view's strides); head vectors are contiguous.
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    pub start: usize,
    pub row: usize,
    pub head: usize,
    pub step: usize,
}

impl Place {
    /// The place of a `[rows, heads, tokens, hd]` view; refused unless its head vectors are
    /// contiguous.
    pub fn of(op: &str, l: &candle_core::Layout) -> Result<Place> {
        let st = l.stride();
        if st.len() != 4 || st[3] != 1 {
            candle_core::bail!("{op}: head vectors must be contiguous")
        }
        Ok(Place { start: l.start_offset(), row: st[0], head: st[1], step: st[2] })
    }

    pub fn at(&self, row: usize, head: usize) -> usize {
        self.start + row * self.row + head * self.head
    }

    /// One past the last value a call over `rows × heads × tokens` vectors of `hd` reads.
    pub fn end(&self, rows: usize, heads: usize, tokens: usize, hd: usize) -> usize {
        if rows == 0 || heads == 0 || tokens == 0 {
            return self.start;
        }
        self.at(rows - 1, heads - 1) + (tokens - 1) * self.step + hd
    }
}

/// `Σ a·b` in 16 lanes (vectorised under the callers' target features).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Everything a task reads, and where it writes.
struct Ctx<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: Option<&'a [f32]>,
    /// Where the cache views' vectors lie.
    k_at: Place,
    v_at: Place,
    nh: usize,
    rep: usize,
    new: usize,
    total: usize,
    hd: usize,
    scale: f32,
    out: Out,
}

/// The query heads of key/value head `task % kv_heads` in row `task / kv_heads`, every new
/// position: each cached key and value is read once for all the heads that share it.
#[inline(always)]
fn group(c: &Ctx, task: usize, dot: impl Fn(&[f32], &[f32]) -> f32) {
    let nkv = c.nh / c.rep;
    let (row, kv) = (task / nkv, task % nkv);
    let (kb, vb) = (c.k_at.at(row, kv), c.v_at.at(row, kv));
    let (hd, rep, total) = (c.hd, c.rep, c.total);
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
            let key = &c.k[kb + j * c.k_at.step..][..hd];
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
            let value = &c.v[vb + j * c.v_at.step..][..hd];
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
unsafe fn group_avx512(c: &Ctx, task: usize) {
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
unsafe fn group_avx2(c: &Ctx, task: usize) {
    group(c, task, dot)
}

/// `q` `[rows, heads, new, hd]`; `k`, `v` `[rows, kv_heads, total, hd]` (strided, head vectors
/// contiguous); `mask` `[rows, 1, new, total]` additive (0 or −∞) or none. Returns
/// `[rows, new, heads · hd]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, mask: Option<&Tensor>) -> Result<Tensor> {
    attend_with(Kernel::detect(), q, k, v, scale, mask)
}

/// [`attend`] through a given kernel (the tests run each one this CPU has).
fn attend_with(
    kernel: Kernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (rows, nh, new, hd) = q.dims4()?;
    let (k_rows, nkv, total, k_hd) = k.dims4()?;
    if k_rows != rows || k_hd != hd || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!("cpu attention: q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims())
    }
    let q = q.contiguous()?;
    let mask = mask.map(Tensor::contiguous).transpose()?;
    if let Some(m) = &mask {
        if m.dims() != [rows, 1, new, total] {
            candle_core::bail!("cpu attention: mask {:?} for [{rows}, 1, {new}, {total}]", m.dims())
        }
    }
    let mut out = vec![0f32; rows * new * nh * hd];
    {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let ms = mask.as_ref().map(|m| m.storage_and_layout());
        const OP: &str = "cpu attention";
        let (kd, vd) = (values(OP, &ks)?, values(OP, &vs)?);
        let (k_at, v_at) = (Place::of(OP, kl)?, Place::of(OP, vl)?);
        // The last element a task reads must lie inside the storage.
        if k_at.end(rows, nkv, total, hd) > kd.len() || v_at.end(rows, nkv, total, hd) > vd.len() {
            candle_core::bail!("cpu attention: cache views reach past their storage")
        }
        let c = Ctx {
            q: &values(OP, &qs)?[ql.start_offset()..],
            k: kd,
            v: vd,
            mask: match &ms {
                Some((s, l)) => Some(&values(OP, s)?[l.start_offset()..]),
                None => None,
            },
            k_at,
            v_at,
            nh,
            rep: nh / nkv,
            new,
            total,
            hd,
            scale,
            out: Out(out.as_mut_ptr()),
        };
        (0..rows * nkv).into_par_iter().for_each(|task| match kernel {
            // SAFETY: callers pass detect()'s kernel or one of runnable()'s: this CPU runs it.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { group_avx512(&c, task) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { group_avx2(&c, task) },
            Kernel::Portable => group(&c, task, dot),
        });
    }
    Tensor::from_vec(out, (rows, new, nh * hd), q.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    #[test]
    fn every_kernel_matches_gemm_softmax_gemm_on_a_strided_cache() {
        let (rows, nh, nkv, hd, cap) = (3, 6, 2, 40, 9);
        for (new, total) in [(1usize, 7usize), (3, 9)] {
            let q = Tensor::from_vec(values(rows * nh * new * hd, 1), (rows, nh, new, hd), &Device::Cpu).unwrap();
            // A cache of `cap` slots of which `total` are used, as `Kv` narrows it.
            let cache = |seed| {
                Tensor::from_vec(values(rows * nkv * cap * hd, seed), (rows, nkv, cap, hd), &Device::Cpu)
                    .unwrap()
                    .narrow(2, 0, total)
                    .unwrap()
            };
            let (k, v) = (cache(2), cache(3));
            let mask: Vec<f32> = (0..rows * new * total)
                .map(|i| if (i % total) % 4 == 3 && i % total != total - 1 { f32::NEG_INFINITY } else { 0.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (rows, 1, new, total), &Device::Cpu).unwrap();

            let rep = nh / nkv;
            let qg = q.reshape((rows, nkv, rep * new, hd)).unwrap();
            let s = (qg.matmul(&k.t().unwrap()).unwrap() * 0.3).unwrap().reshape((rows, nkv, rep, new, total)).unwrap();
            let s =
                s.broadcast_add(&mask.unsqueeze(2).unwrap()).unwrap().reshape((rows, nkv, rep * new, total)).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
            let want = p.matmul(&v.contiguous().unwrap()).unwrap();
            let want = want
                .reshape((rows, nh, new, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((rows, new, nh * hd))
                .unwrap();
            let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for kernel in Kernel::runnable() {
                let got = attend_with(kernel, &q, &k, &v, 0.3, Some(&mask)).unwrap();
                let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                    assert!((a - b).abs() < 1e-5, "{kernel:?}, new {new} at {i}: {a} vs {b}");
                }
            }
        }
    }
}
