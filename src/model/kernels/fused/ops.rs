//! The fused element-wise and row-wise ops: RMSNorm, rotary embedding, the gated MLP's
//! product, the activation alone and the negative log-likelihood.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use crate::model::config::Activation;

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNormOp {
    weight: Tensor,
    eps: f32,
}

impl RmsNormOp {
    fn weight(&self) -> Result<Vec<f32>> {
        self.weight.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
    }
}

/// `1 / √(mean(x²) + ε)` of one row.
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    (1.0 / (ms + eps as f64).sqrt()) as f32
}

impl CustomOp1 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), s, l)?;
        let w = self.weight()?;
        let h = w.len();
        let mut y = vec![0f32; x.len()];
        let rows = rows_per_task(h, 1 << 14);
        y.par_chunks_mut(rows * h).zip(x.par_chunks(rows * h)).for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(h).zip(x.chunks(h)) {
                let r = inv_rms(x, self.eps);
                for ((y, x), w) in y.iter_mut().zip(x).zip(&w) {
                    *y = x * r * w;
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// With `r = 1/√(mean(x²)+ε)` and `g = dy·w`: `dx = r·g − x · r³ · (g·x) / h`.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = self.weight()?;
        let h = w.len();
        let (x, dy) = (arg, grad);
        read!(self.name(); x, dy);
        let mut dx = vec![0f32; x.len()];
        let rows = rows_per_task(h, 1 << 14);
        dx.par_chunks_mut(rows * h).zip(x.par_chunks(rows * h).zip(dy.par_chunks(rows * h))).for_each(
            |(dx, (x, dy))| {
                for ((dx, x), dy) in dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)) {
                    let r = inv_rms(x, self.eps);
                    let dot: f32 = x.iter().zip(dy).zip(&w).map(|((x, dy), w)| x * dy * w).sum();
                    let c = r * r * r * dot / h as f32;
                    for (((dx, x), dy), w) in dx.iter_mut().zip(x).zip(dy).zip(&w) {
                        *dx = r * dy * w - x * c;
                    }
                }
            },
        );
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

/// RMSNorm over the last axis with a frozen `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNormOp { weight: weight.clone(), eps })
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding

struct RopeOp {
    /// `[rows, new, hd/2]` each.
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    interleaved: bool,
}

impl RopeOp {
    /// Rotates `x` `[rows, new, heads, hd]` (token-major) by the angles; `sign` −1 applies the
    /// inverse rotation (the backward: a rotation's transpose).
    fn rotate(&self, x: &[f32], dims: &[usize], sign: f32) -> Result<Vec<f32>> {
        let [rows, new, heads, hd] = dims else { candle_core::bail!("fused-rope: {dims:?} is not 4-d") };
        let (rows, new, heads, hd) = (*rows, *new, *heads, *hd);
        let half = hd / 2;
        if hd % 2 != 0 || self.cos.len() != rows * new * half {
            candle_core::bail!("fused-rope: angles for {} values against x {dims:?}", self.cos.len())
        }
        let mut y = vec![0f32; x.len()];
        let token = (heads * hd).max(1);
        y.par_chunks_mut(token).zip(x.par_chunks(token)).enumerate().for_each(|(at, (y, x))| {
            let (cos, sin) = (&self.cos[at * half..][..half], &self.sin[at * half..][..half]);
            for (x, y) in x.chunks_exact(hd).zip(y.chunks_exact_mut(hd)) {
                for i in 0..half {
                    let (a, b) = if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (c, s) = (cos[i], sign * sin[i]);
                    y[a] = x[a] * c - x[b] * s;
                    y[b] = x[b] * c + x[a] * s;
                }
            }
        });
        Ok(y)
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.rotate(slice(self.name(), s, l)?, l.shape().dims(), 1.0)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dy = grad;
        read!(self.name(); dy);
        let dx = self.rotate(dy, grad.dims(), -1.0)?;
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

/// The rotary angles of one forward, shared by every layer's [`rope`].
#[derive(Clone)]
pub struct Angles {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
}

impl Angles {
    /// From `cos` and `sin` `[rows, new, hd/2]`.
    pub fn new(cos: &Tensor, sin: &Tensor) -> Result<Angles> {
        let v =
            |t: &Tensor| -> Result<Arc<Vec<f32>>> { Ok(Arc::new(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)) };
        Ok(Angles { cos: v(cos)?, sin: v(sin)? })
    }
}

/// Rotary embedding of `x` `[rows, new, heads, hd]` (token-major, as the projections make it):
/// halves (`rotate_half`) or adjacent pairs.
pub fn rope(x: &Tensor, angles: &Angles, interleaved: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op1(RopeOp { cos: angles.cos.clone(), sin: angles.sin.clone(), interleaved })
}

// ---------------------------------------------------------------------------------------------
// Gated MLP product

struct GluMulOp(Activation);

/// `1 / (1 + e^−x)` through [`super::vexp::exp`] (within 2 ulp of libm's), so that loops of
/// it vectorise.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::model::kernels::vexp::exp(-x))
}

/// √(2/π), GELU-tanh's inner factor.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

impl Activation {
    /// `act(g)`.
    #[inline(always)]
    pub(super) fn apply(self, g: f32) -> f32 {
        match self {
            Activation::Silu => g * sigmoid(g),
            Activation::GeluTanh => 0.5 * g * (1.0 + (GELU_C * (g + GELU_A * g * g * g)).tanh()),
            Activation::Gelu => 0.5 * g * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }

    /// `act(g)` and `act'(g)`.
    #[inline(always)]
    pub(super) fn with_slope(self, g: f32) -> (f32, f32) {
        match self {
            Activation::Silu => {
                let s = sigmoid(g);
                (g * s, s * (1.0 + g * (1.0 - s)))
            }
            Activation::GeluTanh => {
                let t = (GELU_C * (g + GELU_A * g * g * g)).tanh();
                let slope = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * g * g);
                (0.5 * g * (1.0 + t), slope)
            }
            Activation::Gelu => {
                let cdf = 0.5 * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * g * g).exp() * 0.398_942_3;
                (g * cdf, cdf + g * pdf)
            }
        }
    }
}

/// The error function (libm's, as candle's `gelu_erf` and PyTorch use).
fn erf(x: f32) -> f32 {
    candle_core::cpu::erf::erf_f32(x)
}

impl CustomOp2 for GluMulOp {
    fn name(&self) -> &'static str {
        "fused-glu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(self.name(), s1, l1)?, slice(self.name(), s2, l2)?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("fused-glu-mul: {:?} against {:?}", l1.shape(), l2.shape())
        }
        let act = self.0;
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(1 << 14).zip(g.par_chunks(1 << 14).zip(u.par_chunks(1 << 14))).for_each(|(y, (g, u))| {
            glu_forward(act, g, u, y);
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// `dg = dy · u · act'(g)`, `du = dy · act(g)`.
    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g_shape, u_shape) = (g.shape().clone(), u.shape().clone());
        let dy = grad;
        let act = self.0;
        read!(self.name(); g, u, dy);
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        let c = 1 << 14;
        dg.par_chunks_mut(c)
            .zip(du.par_chunks_mut(c))
            .zip(g.par_chunks(c).zip(u.par_chunks(c)).zip(dy.par_chunks(c)))
            .for_each(|((dg, du), ((g, u), dy))| glu_backward(act, (g, u, dy), dg, du));
        Ok((Some(tensor(dg, &g_shape)?), Some(tensor(du, &u_shape)?)))
    }
}

/// `y = act(g) · u` over one chunk; SiLU's loop vectorises, with AVX2 where the CPU has it
/// (the same values either way: nothing is fused into one rounding).
pub(super) fn glu_forward(act: Activation, g: &[f32], u: &[f32], y: &mut [f32]) {
    #[inline(always)]
    fn lanes(act: Activation, g: &[f32], u: &[f32], y: &mut [f32]) {
        match act {
            Activation::Silu => y.iter_mut().zip(g).zip(u).for_each(|((y, g), u)| *y = g * sigmoid(*g) * u),
            _ => y.iter_mut().zip(g).zip(u).for_each(|((y, g), u)| *y = act.apply(*g) * u),
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(act: Activation, g: &[f32], u: &[f32], y: &mut [f32]) {
        lanes(act, g, u, y)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { avx2(act, g, u, y) };
    }
    lanes(act, g, u, y)
}

/// `dg = dy · u · act'(g)`, `du = dy · act(g)` over one chunk, as [`glu_forward`].
pub(super) fn glu_backward(act: Activation, (g, u, dy): (&[f32], &[f32], &[f32]), dg: &mut [f32], du: &mut [f32]) {
    #[inline(always)]
    fn lanes(act: Activation, (g, u, dy): (&[f32], &[f32], &[f32]), dg: &mut [f32], du: &mut [f32]) {
        let n = g.len().min(u.len()).min(dy.len()).min(dg.len()).min(du.len());
        let (g, u, dy, dg, du) = (&g[..n], &u[..n], &dy[..n], &mut dg[..n], &mut du[..n]);
        for i in 0..n {
            let (a, slope) = act.with_slope(g[i]);
            dg[i] = dy[i] * u[i] * slope;
            du[i] = dy[i] * a;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(act: Activation, args: (&[f32], &[f32], &[f32]), dg: &mut [f32], du: &mut [f32]) {
        lanes(act, args, dg, du)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features were just detected.
        return unsafe { avx2(act, (g, u, dy), dg, du) };
    }
    lanes(act, (g, u, dy), dg, du)
}

/// `act(x)` elementwise, with the exact derivative in its backward (candle's `gelu_erf`
/// backward rounds 1/√(2π) to six digits, which four AdamW steps on near-zero gradients turn
/// into differences of 1e-3 from PyTorch).
struct ActOp(Activation);

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "fused-act"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), s, l)?;
        let act = self.0;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(y, x)| {
            for (y, x) in y.iter_mut().zip(x) {
                *y = act.apply(*x);
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// `dx = dy · act'(x)`.
    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let shape = x.shape().clone();
        let dy = grad;
        let act = self.0;
        read!(self.name(); x, dy);
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14))).for_each(|(dx, (x, dy))| {
            for i in 0..x.len() {
                dx[i] = dy[i] * act.with_slope(x[i]).1;
            }
        });
        Ok(Some(tensor(dx, &shape)?))
    }
}

/// `act(x)`, for an ungated MLP.
pub fn act(x: &Tensor, act: Activation) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ActOp(act))
}

/// `act(gate) · up`.
pub fn glu_mul(gate: &Tensor, up: &Tensor, act: Activation) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, GluMulOp(act))
}

// ---------------------------------------------------------------------------------------------
// Negative log-likelihood

struct NllOp {
    targets: Arc<Vec<u32>>,
}

/// `(max, Σ exp(z − max))` of one row, the sum in f64: a vocabulary's worth of f32 terms
/// added in order loses the fifth digit of the loss.
pub(super) fn exp_sum(z: &[f32]) -> (f32, f32) {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    (max, z.iter().map(|v| (v - max).exp() as f64).sum::<f64>() as f32)
}

impl CustomOp1 for NllOp {
    fn name(&self) -> &'static str {
        "fused-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = slice(self.name(), s, l)?;
        let (n, vocab) = l.shape().dims2()?;
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= vocab) {
            candle_core::bail!("fused-nll: {} targets (below {vocab}) for {n} rows", self.targets.len())
        }
        let loss: Vec<f32> = z
            .par_chunks(vocab)
            .zip(self.targets.par_iter())
            .map(|(z, &t)| {
                let (max, sum) = exp_sum(z);
                max + sum.ln() - z[t as usize]
            })
            .collect();
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    /// `dz = dy · (softmax(z) − onehot(target))`.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let vocab = arg.dim(1)?;
        let dy = grad.to_vec1::<f32>()?;
        let z = arg;
        read!(self.name(); z);
        let mut dz = vec![0f32; z.len()];
        dz.par_chunks_mut(vocab).zip(z.par_chunks(vocab)).enumerate().for_each(|(i, (dz, z))| {
            let (max, sum) = exp_sum(z);
            let c = dy[i] / sum;
            for (d, v) in dz.iter_mut().zip(z) {
                *d = c * (v - max).exp();
            }
            dz[self.targets[i] as usize] -= dy[i];
        });
        Ok(Some(tensor(dz, arg.shape())?))
    }
}

/// `−log softmax(logits)[target]` for each row of `logits` `[n, vocab]`: `[n]`.
pub fn nll(logits: &Tensor, targets: Vec<u32>) -> Result<Tensor> {
    logits.contiguous()?.apply_op1(NllOp { targets: Arc::new(targets) })
}
