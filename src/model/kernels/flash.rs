//! Training's attention on the CPU without the score matrix: `softmax(q kᵀ · scale + mask) v`
//! computed a tile of queries against a tile of keys at a time, with the running maximum and
//! sum of the softmax (the "online softmax" of FlashAttention), so neither the scores nor the
//! probabilities (`rows × heads × new × total` each) are ever held whole.
//!
//! The forward keeps, besides its output, one number per query: the log of its softmax's
//! denominator. The backward recomputes each tile's probabilities from it and forms the
//! gradients tile by tile (FlashAttention-2's backward: `D = rowsum(dO ⊙ O)`,
//! `dS = P ⊙ (dP − D)`).
//!
//! Which keys a query sees is a contiguous range ([`Visible`]), which covers every mask the
//! decoder makes: left padding, the causal future and a sliding window (a padding slot sees
//! itself only). Tiles wholly outside a query block's ranges are skipped, so a causal forward
//! does about half the products of the dense one.
//!
//! Grouped-query attention reads keys and values in place: query head `h` uses key/value head
//! `h / (heads / kv_heads)`. The backward runs one task per (row, key/value head) so that the
//! key and value gradients of a group are summed by one thread.
//!
//! Everything is token-major, as the projections make it and as the output projection takes it
//! (`[rows, tokens, heads, head_dim]`): the products read a head's rows with the heads' stride,
//! so no head-major copy of q, k, v or the output is made (or kept for the backward).
//!
//! Invariant: the output and all three gradients agree with candle's autograd through the
//! dense maths (matmul, mask, softmax, matmul) — the tests below — and training against PEFT
//! (tests/lora.rs).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_attention::{values, Place};
use super::fused::{f32s, gemm, read, slice, tensor};
use super::panels::Out;
use super::vexp::exp_shift;

/// Queries per tile.
const BQ: usize = 64;
/// Keys per tile.
const BK: usize = 128;

/// The keys each query sees: `ranges[row · new + i]` is `[lo, hi)` over the `total` key slots
/// for query slot `i` (absolute slot `total − new + i`).
#[derive(Clone, Debug)]
pub struct Visible {
    pub ranges: Arc<Vec<(u32, u32)>>,
    pub new: usize,
    pub total: usize,
}

impl Visible {
    /// The decoder's mask as ranges: row `b`'s first `pad[b]` slots are padding (each sees
    /// itself only); a real slot `q` sees the real slots up to itself, and with a window only
    /// the last `window` of them.
    pub fn new(pad: &[usize], start: usize, new: usize, window: Option<usize>) -> Visible {
        let total = start + new;
        let mut ranges = Vec::with_capacity(pad.len() * new);
        for &p in pad {
            for q in start..total {
                let (lo, hi) = if q < p {
                    (q, q + 1)
                } else {
                    let lo = window.map_or(0, |w| (q + 1).saturating_sub(w));
                    (lo.max(p), q + 1)
                };
                ranges.push((lo as u32, hi as u32));
            }
        }
        Visible { ranges: Arc::new(ranges), new, total }
    }

    /// The union of the ranges of queries `q0 .. q0 + m` of row `b`.
    fn span(&self, b: usize, q0: usize, m: usize) -> (usize, usize) {
        let r = &self.ranges[b * self.new + q0..][..m];
        let lo = r.iter().map(|x| x.0).min().unwrap_or(0) as usize;
        let hi = r.iter().map(|x| x.1).max().unwrap_or(0) as usize;
        (lo, hi.max(lo))
    }
}

struct FlashOp {
    scale: f32,
    visible: Visible,
    /// `[rows, heads, new]`: the log of each query's softmax denominator (scores scaled),
    /// written by the forward, read by the backward.
    lse: Mutex<Arc<Vec<f32>>>,
}

/// The shapes of one call: (rows, heads, kv heads, new, total, head dim), from q
/// `[rows, new, heads, hd]` and k, v `[rows, total, kv_heads, hd]`.
fn dims(q: &Layout, k: &Layout, v: &Layout, visible: &Visible) -> Result<(usize, usize, usize, usize, usize, usize)> {
    let (rows, new, nh, hd) = q.shape().dims4()?;
    let (kr, total, nkv, khd) = k.shape().dims4()?;
    if k.shape() != v.shape() || kr != rows || khd != hd || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!("flash-attention: q {:?}, k {:?}, v {:?}", q.shape(), k.shape(), v.shape())
    }
    if visible.new != new || visible.total != total || visible.ranges.len() != rows * new {
        candle_core::bail!(
            "flash-attention: ranges for {} rows of {} queries over {} keys, against q {:?} and k {:?}",
            visible.ranges.len() / visible.new.max(1),
            visible.new,
            visible.total,
            q.shape(),
            k.shape()
        )
    }
    Ok((rows, nh, nkv, new, total, hd))
}

/// Copies the `m × hd` block `src` (contiguous) to rows `stride` apart from `dst`.
///
/// # Safety
/// `dst` must be valid for writes at `i · stride + d` for every `i < m`, `d < hd`, and no other
/// thread may touch those places meanwhile.
unsafe fn scatter(src: &[f32], m: usize, hd: usize, dst: *mut f32, stride: usize) {
    for i in 0..m {
        std::ptr::copy_nonoverlapping(src[i * hd..].as_ptr(), dst.add(i * stride), hd);
    }
}

/// Scales a tile of scores `s` (`m × n`, keys `k0 ..`) in place and sets the keys outside each
/// query's range to −∞.
fn scale_and_mask(s: &mut [f32], n: usize, k0: usize, ranges: &[(u32, u32)], scale: f32) {
    for (row, &(lo, hi)) in s.chunks_mut(n).zip(ranges) {
        let (lo, hi) = ((lo as usize).saturating_sub(k0).min(n), (hi as usize).saturating_sub(k0).min(n));
        row[..lo].fill(f32::NEG_INFINITY);
        for x in &mut row[lo..hi.max(lo)] {
            *x *= scale;
        }
        row[hi.max(lo)..].fill(f32::NEG_INFINITY);
    }
}

/// One forward call: inputs with their places, the output (token-major
/// `[rows, new, heads, hd]`, contiguous) and, for training, each query's log-sum-exp
/// (`[rows, heads, new]`).
struct Tiles<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    q_at: Place,
    k_at: Place,
    v_at: Place,
    nh: usize,
    rep: usize,
    hd: usize,
    scale: f32,
    visible: &'a Visible,
    out: Out,
    lse: Option<Out>,
}

impl Tiles<'_> {
    /// Every (row, head, query tile) as its own task: tiles late in a causal row see more keys,
    /// so finer tasks keep both threads busy even for one row.
    fn run(&self, rows: usize) {
        let new = self.visible.new;
        let tiles = new.div_ceil(BQ);
        (0..rows * self.nh * tiles).into_par_iter().for_each(|task| {
            let (bh, tile) = (task / tiles, task % tiles);
            self.tile(bh / self.nh, bh % self.nh, tile * BQ);
        });
    }

    /// Queries `q0 .. q0 + BQ` of head `h` in row `b` against the keys their ranges reach.
    fn tile(&self, b: usize, h: usize, q0: usize) {
        let (hd, new) = (self.hd, self.visible.new);
        let g = h / self.rep;
        let m = BQ.min(new - q0);
        let ranges = &self.visible.ranges[b * new + q0..][..m];
        let qb = &self.q[self.q_at.at(b, h) + q0 * self.q_at.step..];
        let (k, v) = (&self.k[self.k_at.at(b, g)..], &self.v[self.v_at.at(b, g)..]);
        let mut s = vec![0f32; BQ * BK];
        let mut acc = vec![0f32; m * hd];
        let (mut max, mut sum) = ([f32::NEG_INFINITY; BQ], [0f32; BQ]);
        let (lo, hi) = self.visible.span(b, q0, m);
        for k0 in (lo..hi).step_by(BK) {
            let n = BK.min(hi - k0);
            let s = &mut s[..m * n];
            // s = q kᵀ: the keys' rows read as the columns of kᵀ.
            let (ks, vs) = (self.k_at.step, self.v_at.step);
            gemm(m, n, hd, s, false, qb, (self.q_at.step, 1), &k[k0 * ks..], (1, ks), 1.0, Parallelism::None);
            scale_and_mask(s, n, k0, ranges, self.scale);
            for i in 0..m {
                let row = &mut s[i * n..][..n];
                let top = row.iter().fold(max[i], |a, &x| a.max(x));
                if top == f32::NEG_INFINITY {
                    row.fill(0.0);
                    continue;
                }
                let correction = (max[i] - top).exp();
                sum[i] = sum[i] * correction + exp_shift(row, top);
                max[i] = top;
                if correction != 1.0 {
                    acc[i * hd..][..hd].iter_mut().for_each(|a| *a *= correction);
                }
            }
            gemm(m, hd, n, &mut acc, true, s, (n, 1), &v[k0 * vs..], (vs, 1), 1.0, Parallelism::None);
        }
        for i in 0..m {
            let inv = if sum[i] > 0.0 { 1.0 / sum[i] } else { 0.0 };
            acc[i * hd..][..hd].iter_mut().for_each(|a| *a *= inv);
        }
        let qs = self.nh * hd;
        // SAFETY: task (b, h, q0) alone writes head h of row b's tokens q0 .. q0 + m, and the
        // log-sum-exps of those queries; both lie inside their buffers.
        unsafe {
            scatter(&acc, m, hd, self.out.at((b * new + q0) * qs + h * hd), qs);
            if let Some(lse) = self.lse {
                for i in 0..m {
                    *lse.at((b * self.nh + h) * new + q0 + i) =
                        if sum[i] > 0.0 { max[i] + sum[i].ln() } else { f32::INFINITY };
                }
            }
        }
    }
}

/// Attention for an inference prefill on the CPU in f32, without the score matrix: q
/// `[rows, heads, new, hd]` (head-major, as the inference path rotates it) against the key/value
/// cache's views `[rows, kv_heads, total, hd]` (any strides, head vectors contiguous), the mask
/// as each query's visible keys. Returns `[rows, new, heads · hd]`, the layout the output
/// projection takes. Tiles past the causal diagonal, before a window or in the padding are
/// skipped; the cache is read in place.
pub fn attend_cached(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, visible: &Visible) -> Result<Tensor> {
    let (rows, nh, new, hd) = q.dims4()?;
    let (kr, nkv, total, khd) = k.dims4()?;
    if kr != rows || khd != hd || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!("flash-attention: q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims())
    }
    if visible.new != new || visible.total != total || visible.ranges.len() != rows * new {
        candle_core::bail!(
            "flash-attention: ranges for {} queries over {} keys, against q {:?} and k {:?}",
            visible.new,
            visible.total,
            q.dims(),
            k.dims()
        )
    }
    let q = q.contiguous()?;
    let mut out = vec![0f32; rows * new * nh * hd];
    {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        const OP: &str = "flash-attention";
        let (qd, kd, vd) = (values(OP, &qs)?, values(OP, &ks)?, values(OP, &vs)?);
        let (q_at, k_at, v_at) = (Place::of(OP, ql)?, Place::of(OP, kl)?, Place::of(OP, vl)?);
        if q_at.end(rows, nh, new, hd) > qd.len()
            || k_at.end(rows, nkv, total, hd) > kd.len()
            || v_at.end(rows, nkv, total, hd) > vd.len()
        {
            candle_core::bail!("flash-attention: views reach past their storage")
        }
        let c = Tiles {
            q: qd,
            k: kd,
            v: vd,
            q_at,
            k_at,
            v_at,
            nh,
            rep: nh / nkv,
            hd,
            scale,
            visible,
            out: Out(out.as_mut_ptr()),
            lse: None,
        };
        c.run(rows);
    }
    Tensor::from_vec(out, (rows, new, nh * hd), q.device())
}

impl CustomOp3 for FlashOp {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, nh, nkv, new, total, hd) = dims(ql, kl, vl, &self.visible)?;
        let (q, k, v) = (slice(self.name(), qs, ql)?, slice(self.name(), ks, kl)?, slice(self.name(), vs, vl)?);
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; rows * nh * new];
        // Token-major: a query token's heads are `nh · hd` apart, a key token's `nkv · hd`.
        let kv = Place { start: 0, row: total * nkv * hd, head: hd, step: nkv * hd };
        let c = Tiles {
            q,
            k,
            v,
            q_at: Place { start: 0, row: new * nh * hd, head: hd, step: nh * hd },
            k_at: kv,
            v_at: kv,
            nh,
            rep: nh / nkv,
            hd,
            scale: self.scale,
            visible: &self.visible,
            out: Out(out.as_mut_ptr()),
            lse: Some(Out(lse.as_mut_ptr())),
        };
        c.run(rows);
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(lse);
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, new, nh, hd) = q.dims4()?;
        let (_, total, nkv, _) = k.dims4()?;
        let rep = nh / nkv;
        let lse = self.lse.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if lse.len() != rows * nh * new {
            candle_core::bail!("flash-attention: backward before forward")
        }
        let (q_shape, k_shape) = (q.shape().clone(), k.shape().clone());
        let (o, d_o) = (res, grad);
        read!(self.name(); q, k, v, o, d_o);
        let vis = &self.visible;
        let (qs, ks) = (nh * hd, nkv * hd);
        let mut dq = vec![0f32; q.len()];
        let mut dk = vec![0f32; k.len()];
        let mut dv = vec![0f32; v.len()];
        let (dq_out, dk_out, dv_out) = (Out(dq.as_mut_ptr()), Out(dk.as_mut_ptr()), Out(dv.as_mut_ptr()));
        (0..rows * nkv).into_par_iter().for_each(|task| {
            let (b, g) = (task / nkv, task % nkv);
            let kv = b * total * ks + g * hd;
            let (k, v) = (&k[kv..], &v[kv..]);
            // This group's key and value gradients, contiguous until the end.
            let (mut dk, mut dv) = (vec![0f32; total * hd], vec![0f32; total * hd]);
            let mut p = vec![0f32; BQ * BK];
            let mut dp = vec![0f32; BQ * BK];
            let mut dqb = vec![0f32; BQ * hd];
            let mut d = [0f32; BQ];
            for j in 0..rep {
                let head = g * rep + j;
                let at = b * new * qs + head * hd;
                let (q, o, d_o) = (&q[at..], &o[at..], &d_o[at..]);
                let lse = &lse[(b * nh + head) * new..][..new];
                for q0 in (0..new).step_by(BQ) {
                    let m = BQ.min(new - q0);
                    let ranges = &vis.ranges[b * new + q0..][..m];
                    for (i, d) in d[..m].iter_mut().enumerate() {
                        let r = (q0 + i) * qs..(q0 + i) * qs + hd;
                        *d = o[r.clone()].iter().zip(&d_o[r]).map(|(a, b)| a * b).sum();
                    }
                    let (qb, dob) = (&q[q0 * qs..], &d_o[q0 * qs..]);
                    let dqb = &mut dqb[..m * hd];
                    dqb.fill(0.0);
                    let (lo, hi) = vis.span(b, q0, m);
                    for k0 in (lo..hi).step_by(BK) {
                        let n = BK.min(hi - k0);
                        let (p, dp) = (&mut p[..m * n], &mut dp[..m * n]);
                        gemm(m, n, hd, p, false, qb, (qs, 1), &k[k0 * ks..], (1, ks), 1.0, Parallelism::None);
                        scale_and_mask(p, n, k0, ranges, self.scale);
                        for (row, &l) in p.chunks_mut(n).zip(&lse[q0..q0 + m]) {
                            exp_shift(row, l);
                        }
                        // dV += Pᵀ dO; dP = dO Vᵀ.
                        let dvt = &mut dv[k0 * hd..][..n * hd];
                        gemm(n, hd, m, dvt, true, p, (1, n), dob, (qs, 1), 1.0, Parallelism::None);
                        gemm(m, n, hd, dp, false, dob, (qs, 1), &v[k0 * ks..], (1, ks), 1.0, Parallelism::None);
                        // dS = P ⊙ (dP − D) · scale, into dp.
                        for i in 0..m {
                            let (pr, dr) = (&p[i * n..][..n], &mut dp[i * n..][..n]);
                            for (x, &pv) in dr.iter_mut().zip(pr) {
                                *x = pv * (*x - d[i]) * self.scale;
                            }
                        }
                        // dQ += dS K; dK += dSᵀ Q.
                        gemm(m, hd, n, dqb, true, dp, (n, 1), &k[k0 * ks..], (ks, 1), 1.0, Parallelism::None);
                        let dkt = &mut dk[k0 * hd..][..n * hd];
                        gemm(n, hd, m, dkt, true, dp, (1, n), qb, (qs, 1), 1.0, Parallelism::None);
                    }
                    // SAFETY: task (b, g) alone writes the heads of group g in row b.
                    unsafe { scatter(dqb, m, hd, dq_out.at(at + q0 * qs), qs) };
                }
            }
            // SAFETY: task (b, g) alone writes key/value head g of row b.
            unsafe {
                scatter(&dk, total, hd, dk_out.at(kv), ks);
                scatter(&dv, total, hd, dv_out.at(kv), ks);
            }
        });
        Ok((Some(tensor(dq, &q_shape)?), Some(tensor(dk, &k_shape)?), Some(tensor(dv, &k_shape)?)))
    }
}

/// `softmax(q kᵀ · scale + mask) v` for q `[rows, new, heads, hd]` and k, v
/// `[rows, total, kv_heads, hd]` (token-major, f32 on the CPU), the mask given as each query's
/// visible keys: `[rows, new, heads, hd]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, visible: &Visible) -> Result<Tensor> {
    let op = FlashOp { scale, visible: visible.clone(), lse: Mutex::new(Arc::new(Vec::new())) };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn var(shape: &[usize], seed: u64) -> Var {
        let mut rng = crate::rng::Rng::new(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 2e-5 * scale, "{what}: off by {worst} at scale {scale}");
    }

    /// The dense mask the decoder builds (`Decoder::mask`'s rule), `[rows, 1, new, total]`.
    fn dense_mask(pad: &[usize], start: usize, new: usize, window: Option<usize>) -> Tensor {
        let total = start + new;
        let mut data = Vec::new();
        for &p in pad {
            for q in start..total {
                for k in 0..total {
                    let hidden = if q < p { k != q } else { k < p || k > q || window.is_some_and(|w| q - k >= w) };
                    data.push(if hidden { f32::NEG_INFINITY } else { 0.0 });
                }
            }
        }
        Tensor::from_vec(data, (pad.len(), 1, new, total), &Device::Cpu).unwrap()
    }

    /// Output and gradients against candle's autograd through matmul, mask, softmax, matmul.
    fn check(pad: &[usize], start: usize, new: usize, window: Option<usize>, (nh, nkv, hd): (usize, usize, usize)) {
        let rows = pad.len();
        let total = start + new;
        let (q, k, v) =
            (var(&[rows, new, nh, hd], 1), var(&[rows, total, nkv, hd], 2), var(&[rows, total, nkv, hd], 3));
        let w = var(&[rows, new, nh, hd], 4);
        let scale = 1.0 / (hd as f32).sqrt();
        let visible = Visible::new(pad, start, new, window);
        let ours = attend(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale, &visible).unwrap();

        // The dense maths head-major, as the inference path computes it.
        let heads = |t: &Var| t.as_tensor().transpose(1, 2).unwrap().contiguous().unwrap();
        let (qh, kh, vh) = (heads(&q), heads(&k), heads(&v));
        let rep = nh / nkv;
        let qg = qh.reshape((rows, nkv, rep * new, hd)).unwrap();
        let scores = (qg.matmul(&kh.t().unwrap()).unwrap() * scale as f64)
            .unwrap()
            .reshape((rows, nkv, rep, new, total))
            .unwrap()
            .broadcast_add(&dense_mask(pad, start, new, window).unsqueeze(2).unwrap())
            .unwrap()
            .reshape((rows, nkv, rep * new, total))
            .unwrap();
        let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let dense = probs.matmul(&vh).unwrap().reshape((rows, nh, new, hd)).unwrap().transpose(1, 2).unwrap();
        close(&ours, &dense, "output");

        let g_ours = (ours * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let g_dense = (dense * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (x, name) in [(&q, "dq"), (&k, "dk"), (&v, "dv")] {
            close(g_ours.get(x.as_tensor()).unwrap(), g_dense.get(x.as_tensor()).unwrap(), name);
        }
    }

    #[test]
    fn causal_with_padding_matches_the_dense_maths() {
        // Several query and key tiles, a partial last tile, grouped heads, left padding.
        check(&[0, 37], 0, 150, None, (6, 2, 16));
    }

    #[test]
    fn a_window_and_cached_keys_match_the_dense_maths() {
        check(&[5, 0, 200], 20, 190, Some(50), (4, 4, 8));
        check(&[3], 0, 9, Some(2), (2, 1, 64));
    }

    /// `attend_cached` (head-major queries, a cache view narrowed from a larger buffer) against
    /// the token-major op, which the test above holds to the dense maths.
    fn check_cached(
        pad: &[usize],
        start: usize,
        new: usize,
        window: Option<usize>,
        (nh, nkv, hd): (usize, usize, usize),
    ) {
        let rows = pad.len();
        let (total, capacity) = (start + new, start + new + 7);
        let q = var(&[rows, new, nh, hd], 1);
        let (kbuf, vbuf) = (var(&[rows, nkv, capacity, hd], 2), var(&[rows, nkv, capacity, hd], 3));
        let view = |t: &Var| t.as_tensor().narrow(2, 0, total).unwrap();
        let token_major = |t: &Var| view(t).transpose(1, 2).unwrap().contiguous().unwrap();
        let visible = Visible::new(pad, start, new, window);
        let scale = 1.0 / (hd as f32).sqrt();
        let want = attend(q.as_tensor(), &token_major(&kbuf), &token_major(&vbuf), scale, &visible).unwrap();
        let qh = q.as_tensor().transpose(1, 2).unwrap().contiguous().unwrap();
        let got = attend_cached(&qh, &view(&kbuf), &view(&vbuf), scale, &visible).unwrap();
        assert_eq!(got.dims(), [rows, new, nh * hd]);
        close(&got, &want.reshape((rows, new, nh * hd)).unwrap(), "attend_cached");
    }

    #[test]
    fn a_prefill_reads_the_cache_in_place() {
        check_cached(&[0, 37], 0, 150, None, (6, 2, 16));
        check_cached(&[5, 0, 200], 20, 190, Some(50), (4, 4, 8));
        check_cached(&[0], 300, 17, None, (9, 3, 64));
        let (q, k) = (var(&[1, 2, 10, 8], 1), var(&[1, 1, 10, 8], 2));
        let e = attend_cached(q.as_tensor(), k.as_tensor(), k.as_tensor(), 1.0, &Visible::new(&[0], 0, 9, None))
            .unwrap_err();
        assert!(e.to_string().contains("flash-attention"), "{e}");
    }

    #[test]
    fn shapes_that_disagree_with_the_ranges_are_refused() {
        let (q, k) = (var(&[1, 10, 2, 8], 1), var(&[1, 10, 1, 8], 2));
        let visible = Visible::new(&[0], 0, 9, None);
        let e = attend(q.as_tensor(), k.as_tensor(), k.as_tensor(), 1.0, &visible).unwrap_err();
        assert!(e.to_string().contains("flash-attention"), "{e}");
    }
}
