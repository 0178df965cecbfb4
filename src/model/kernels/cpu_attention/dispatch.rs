//! Which kernel runs each task, and the checks on what it is given.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::cache::{values, Ctx, Place, Src};
use super::general::{dot, group};
#[cfg(target_arch = "x86_64")]
use super::general::{group_avx2, group_avx512};
#[cfg(target_arch = "x86_64")]
use super::{wide256, wide512};
use crate::model::kernels::packed::Kernel;
use crate::model::kernels::panels::Out;

/// New positions up to which [`attend`] is used; larger (prefill) goes through GEMMs.
pub const MAX_NEW: usize = 16;

/// Whether [`attend`] takes these: f32 on the CPU, at most [`MAX_NEW`] new positions.
pub fn usable(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32 && q.dims().len() == 4 && q.dims()[2] <= MAX_NEW
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
        let (kd, vd) = (Src::of(OP, &ks)?, Src::of(OP, &vs)?);
        let (k_at, v_at) = (Place::of(OP, kl)?, Place::of(OP, vl)?);
        // The last element a task reads must lie inside the storage.
        if k_at.end(rows, nkv, total, hd) > kd.values() || v_at.end(rows, nkv, total, hd) > vd.values() {
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
            Kernel::Avx512 => unsafe {
                if !(wide512::takes(hd) && wide512::group(&c, task)) {
                    group_avx512(&c, task)
                }
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe {
                if !(wide256::takes(hd) && wide256::group(&c, task)) {
                    group_avx2(&c, task)
                }
            },
            Kernel::Portable => group(&c, task, dot),
        });
    }
    Tensor::from_vec(out, (rows, new, nh * hd), q.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn numbers(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    #[test]
    fn every_kernel_matches_gemm_softmax_gemm_on_a_strided_cache() {
        let (rows, nh, nkv) = (3, 6, 2);
        // Head sizes the general kernel takes (40) and the wide kernels' blocks (64: AVX-512's 16
        // keys, AVX2's 8), with partial blocks and left padding.
        // 128 and 256: Qwen's and Gemma 3's heads, the wide kernels' other instances.
        let shapes =
            [(40, 1usize, 7usize), (40, 3, 9), (64, 1, 7), (64, 2, 37), (64, 1, 48), (128, 1, 21), (256, 2, 19)];
        for (hd, new, total) in shapes {
            let cap = total + 3;
            let q = Tensor::from_vec(numbers(rows * nh * new * hd, 1), (rows, nh, new, hd), &Device::Cpu).unwrap();
            // A cache of `cap` slots of which `total` are used, as `Kv` narrows it.
            let cache = |seed| {
                Tensor::from_vec(numbers(rows * nkv * cap * hd, seed), (rows, nkv, cap, hd), &Device::Cpu)
                    .unwrap()
                    .narrow(2, 0, total)
                    .unwrap()
            };
            for half in [false, true] {
                // An f16 cache is compared with the f32 products of its own values.
                let (k, v) = match half {
                    false => (cache(2), cache(3)),
                    true => (cache(2).to_dtype(DType::F16).unwrap(), cache(3).to_dtype(DType::F16).unwrap()),
                };
                let (kf, vf) = (k.to_dtype(DType::F32).unwrap(), v.to_dtype(DType::F32).unwrap());
                let mask: Vec<f32> = (0..rows * new * total)
                    .map(|i| {
                        let (row, j) = (i / (new * total), i % total);
                        // Row 0 is left-padded by two slots, row 2 by 18.
                        let pad = [2, 0, 18.min(total - 1)][row];
                        let hidden = (j % 4 == 3 && j != total - 1) || j < pad;
                        if hidden {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (rows, 1, new, total), &Device::Cpu).unwrap();

                let rep = nh / nkv;
                let qg = q.reshape((rows, nkv, rep * new, hd)).unwrap();
                let s = (qg.matmul(&kf.t().unwrap()).unwrap() * 0.3)
                    .unwrap()
                    .reshape((rows, nkv, rep, new, total))
                    .unwrap();
                let s = s
                    .broadcast_add(&mask.unsqueeze(2).unwrap())
                    .unwrap()
                    .reshape((rows, nkv, rep * new, total))
                    .unwrap();
                let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
                let want = p.matmul(&vf.contiguous().unwrap()).unwrap();
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
                        assert!((a - b).abs() < 1e-5, "{kernel:?}, hd {hd}, new {new}, f16 {half} at {i}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
