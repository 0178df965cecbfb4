//! Training's CPU ops, each one autograd node with its own backward.
//!
//! candle's autograd keeps every node's output alive until the backward has run: an op built
//! from five element-wise steps holds five tensors of its size per layer, where PyTorch keeps
//! only what the backward reads. On a 30-layer model that is most of the memory of a training
//! step, and allocating it afresh each micro-batch is most of its page faults. These ops keep
//! one output each and recompute the rest in the backward:
//!
//! - [`rms_norm`]: `x / √(mean(x²) + ε) · w` (w frozen);
//! - [`rope`]: rotary embedding, half-split or interleaved;
//! - [`glu_mul`]: `act(g) · u`, the gated MLP's product (SiLU, or Gemma's GELU-tanh);
//! - [`nll`]: `logsumexp(z) − z[target]` per row, the loss without a `[n, vocab]` log-softmax;
//! - [`head_nll`]: the vocabulary projection and [`nll`] together, a chunk of rows at a time;
//! - attention, which keeps neither scores nor probabilities, is [`super::flash`];
//! - [`lora`]: `x Wᵀ + scale · drop(x) Aᵀ Bᵀ` over a frozen [`CpuWeight`], the dropout mask
//!   regenerated from its seed in the backward instead of stored.
//!
//! Each takes f32 on the CPU ([`usable`]); other devices and dtypes build the same maths from
//! candle's differentiable ops. Invariant: every op's backward is checked against candle's
//! autograd through those ops (the tests below), and training against PEFT (tests/lora.rs).

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, StorageRef, Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

use super::cpu_weight::CpuWeight;
use super::dropout::Dropout;
use crate::model::config::Activation;

/// Whether `t` can go through these ops: f32 on the CPU.
pub fn usable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The f32 values of a storage under a contiguous layout.
pub(super) fn slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: f32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{op}: input not contiguous") };
    Ok(&v[a..b])
}

/// The f32 values behind a tensor's read-locked storage (see [`read!`]).
pub(super) fn f32s<'a>(op: &str, (s, l): &'a (StorageRef<'_>, &Layout)) -> Result<&'a [f32]> {
    let Storage::Cpu(c) = &**s else { candle_core::bail!("{op}: CPU only") };
    slice(op, c, l)
}

/// Shadows each named tensor with its f32 values: made contiguous, its storage read-locked until
/// the end of the enclosing block.
macro_rules! read {
    ($op:expr; $($t:ident),+) => {
        $(
            let $t = $t.contiguous()?;
            let $t = $t.storage_and_layout();
            let $t = f32s($op, &$t)?;
        )+
    };
}
pub(super) use read;

pub(super) fn tensor(v: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(v, shape.clone(), &candle_core::Device::Cpu)
}

/// Rows per parallel task: at least `min_elems` values each.
fn rows_per_task(width: usize, min_elems: usize) -> usize {
    (min_elems / width.max(1)).max(1)
}

fn gemm_threads(work: usize) -> Parallelism {
    if work < 1 << 18 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `dst (m×n) = [dst +] beta · lhs (m×k) · rhs (k×n)`, each matrix given by (row, column) strides.
// BLAS's arguments (sizes, the destination, accumulate or not, two operands with their
// strides, a scale, the threads): each call reads as the product it is.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n);
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts bound every index the strides reach in the three slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}

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
    1.0 / (1.0 + super::vexp::exp(-x))
}

/// √(2/π), GELU-tanh's inner factor.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

impl Activation {
    /// `act(g)`.
    #[inline(always)]
    fn apply(self, g: f32) -> f32 {
        match self {
            Activation::Silu => g * sigmoid(g),
            Activation::GeluTanh => 0.5 * g * (1.0 + (GELU_C * (g + GELU_A * g * g * g)).tanh()),
            Activation::Gelu => 0.5 * g * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2)),
        }
    }

    /// `act(g)` and `act'(g)`.
    #[inline(always)]
    fn with_slope(self, g: f32) -> (f32, f32) {
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
fn glu_forward(act: Activation, g: &[f32], u: &[f32], y: &mut [f32]) {
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
fn glu_backward(act: Activation, (g, u, dy): (&[f32], &[f32], &[f32]), dg: &mut [f32], du: &mut [f32]) {
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
fn exp_sum(z: &[f32]) -> (f32, f32) {
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

// ---------------------------------------------------------------------------------------------
// The vocabulary projection and the loss together, a chunk of rows at a time

/// Rows of logits held at once by [`head_nll`] (`rows × vocab` f32: 25 MB for 49,152 words).
const HEAD_ROWS: usize = 128;

struct HeadNllOp {
    weight: Arc<dyn CpuWeight>,
    targets: Arc<Vec<u32>>,
    /// `[n, hidden]`: `(softmax(z) − onehot(target)) W` of each row, the input gradient of its
    /// loss, made by the forward while that chunk's logits are at hand (None: no backward asked).
    grad: Option<std::sync::Mutex<Vec<f32>>>,
}

impl CustomOp1 for HeadNllOp {
    fn name(&self) -> &'static str {
        "fused-head-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(self.name(), s, l)?;
        let (n, hidden) = l.shape().dims2()?;
        let vocab = self.weight.out_features();
        if hidden != self.weight.in_features()
            || self.targets.len() != n
            || self.targets.iter().any(|&t| t as usize >= vocab)
        {
            candle_core::bail!(
                "fused-head-nll: {n} rows of {hidden} and {} targets against a [{vocab}, {}] head",
                self.targets.len(),
                self.weight.in_features()
            )
        }
        let mut loss = vec![0f32; n];
        let mut grad = if self.grad.is_some() { vec![0f32; n * hidden] } else { Vec::new() };
        let mut z = vec![0f32; HEAD_ROWS.min(n) * vocab];
        for c0 in (0..n).step_by(HEAD_ROWS) {
            let m = HEAD_ROWS.min(n - c0);
            let z = &mut z[..m * vocab];
            self.weight.matmul(&x[c0 * hidden..][..m * hidden], m, z);
            let targets = &self.targets[c0..c0 + m];
            let want = self.grad.is_some();
            loss[c0..c0 + m].par_iter_mut().zip(z.par_chunks_mut(vocab)).zip(targets.par_iter()).for_each(
                |((loss, z), &t)| {
                    let (max, sum) = exp_sum(z);
                    *loss = max + sum.ln() - z[t as usize];
                    if want {
                        let inv = 1.0 / sum;
                        z.iter_mut().for_each(|v| *v = (*v - max).exp() * inv);
                        z[t as usize] -= 1.0;
                    }
                },
            );
            if want {
                self.weight.input_grad(z, m, &mut grad[c0 * hidden..][..m * hidden]);
            }
        }
        if let Some(slot) = &self.grad {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = grad;
        }
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    /// `dx = dy · (softmax(z) − onehot(target)) W`, row by row, from the forward's products.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(slot) = &self.grad else { candle_core::bail!("fused-head-nll: made without a backward") };
        let (n, hidden) = arg.dims2()?;
        let dy = grad.to_vec1::<f32>()?;
        let mut dx = std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()));
        if dx.len() != n * hidden || dy.len() != n {
            candle_core::bail!("fused-head-nll: backward run twice, or before the forward")
        }
        dx.par_chunks_mut(hidden.max(1)).zip(dy.par_iter()).for_each(|(row, &d)| row.iter_mut().for_each(|v| *v *= d));
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

/// `−log softmax(x Wᵀ)[target]` for each row of `x` `[n, hidden]` with a frozen head `W`
/// `[vocab, hidden]`: `[n]`, without ever holding more than [`HEAD_ROWS`] rows of logits. When
/// `x` is tracked, the input gradient is formed in the forward, while each chunk's logits are
/// at hand, so the logits are computed once.
pub fn head_nll(x: &Tensor, weight: Arc<dyn CpuWeight>, targets: Vec<u32>) -> Result<Tensor> {
    let grad = x.track_op().then(|| std::sync::Mutex::new(Vec::new()));
    x.contiguous()?.apply_op1(HeadNllOp { weight, targets: Arc::new(targets), grad })
}

// ---------------------------------------------------------------------------------------------
// LoRA over a frozen CPU weight

/// `x ⊙ mask` ([`Dropout::mask`], never stored), or `None` without dropout.
fn dropped(x: &[f32], d: Option<Dropout>) -> Option<Vec<f32>> {
    let d = d.filter(|d| d.p > 0.0)?;
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).enumerate().for_each(|(c, (y, x))| {
        d.apply(x, c * (1 << 14), y);
    });
    Some(y)
}

struct LoraOp {
    base: Arc<dyn CpuWeight>,
    scale: f32,
    dropout: Option<Dropout>,
}

impl CustomOp3 for LoraOp {
    fn name(&self) -> &'static str {
        "fused-lora"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, b) = (slice(self.name(), sx, lx)?, slice(self.name(), sa, la)?, slice(self.name(), sb, lb)?);
        let (inp, out) = (self.base.in_features(), self.base.out_features());
        let (r, r_in) = la.shape().dims2()?;
        let mut dims = lx.shape().dims().to_vec();
        if dims.last() != Some(&inp) || r_in != inp || lb.shape().dims2()? != (out, r) {
            candle_core::bail!(
                "fused-lora: x {dims:?}, A {:?}, B {:?} over a [{out}, {inp}] weight",
                la.shape(),
                lb.shape()
            )
        }
        let n = x.len() / inp.max(1);
        let mut y = vec![0f32; n * out];
        self.base.matmul(x, n, &mut y);
        let d = dropped(x, self.dropout);
        let d = d.as_deref().unwrap_or(x);
        let mut down = vec![0f32; n * r];
        gemm(n, r, inp, &mut down, false, d, (inp, 1), a, (1, inp), 1.0, gemm_threads(n * inp * r));
        gemm(n, out, r, &mut y, true, &down, (r, 1), b, (1, r), self.scale, gemm_threads(n * out * r));
        *dims.last_mut().expect("checked above") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    /// With `d = drop(x)`, `down = d Aᵀ` and `g = scale · dy B`: `dB = scale · dyᵀ down`,
    /// `dA = gᵀ d`, `dx = dy W + mask ⊙ (g A)`.
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (inp, out) = (self.base.in_features(), self.base.out_features());
        let r = a.dim(0)?;
        let name = self.name();
        let shapes = (x.shape().clone(), a.shape().clone(), b.shape().clone());
        let dy = grad;
        read!(name; x, a, b, dy);
        let n = x.len() / inp.max(1);
        let d = dropped(x, self.dropout);
        let d = d.as_deref().unwrap_or(x);
        let mut down = vec![0f32; n * r];
        gemm(n, r, inp, &mut down, false, d, (inp, 1), a, (1, inp), 1.0, gemm_threads(n * inp * r));
        let mut g = vec![0f32; n * r];
        gemm(n, r, out, &mut g, false, dy, (out, 1), b, (r, 1), self.scale, gemm_threads(n * out * r));
        let mut db = vec![0f32; out * r];
        gemm(out, r, n, &mut db, false, dy, (1, out), &down, (r, 1), self.scale, gemm_threads(n * out * r));
        let mut da = vec![0f32; r * inp];
        gemm(r, inp, n, &mut da, false, &g, (1, r), d, (inp, 1), 1.0, gemm_threads(n * inp * r));
        let mut dx = vec![0f32; n * inp];
        self.base.input_grad(dy, n, &mut dx);
        match self.dropout.filter(|d| d.p > 0.0) {
            None => gemm(n, inp, r, &mut dx, true, &g, (r, 1), a, (inp, 1), 1.0, gemm_threads(n * inp * r)),
            Some(drop) => {
                let mut ga = vec![0f32; n * inp];
                gemm(n, inp, r, &mut ga, false, &g, (r, 1), a, (inp, 1), 1.0, gemm_threads(n * inp * r));
                dx.par_chunks_mut(1 << 14).zip(ga.par_chunks(1 << 14)).enumerate().for_each(|(c, (dx, ga))| {
                    drop.apply_add(ga, c * (1 << 14), dx);
                });
            }
        }
        Ok((Some(tensor(dx, &shapes.0)?), Some(tensor(da, &shapes.1)?), Some(tensor(db, &shapes.2)?)))
    }
}

/// `x Wᵀ + scale · drop(x) Aᵀ Bᵀ` with `A` `[r, in]` and `B` `[out, r]` trainable and W frozen.
pub fn lora(
    x: &Tensor,
    base: Arc<dyn CpuWeight>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(a, b, LoraOp { base, scale: scale as f32, dropout })
}

/// `dx = dy W` for a frozen weight in panel layout: one rank-[`NR`] update of `dx` per panel,
/// straight from the panel's memory (decoded for GGML blocks), rows split across the threads in
/// blocks that stay in cache. [`CpuWeight::input_grad`]'s default; packed f32 weights have a
/// faster one.
pub fn input_grad<W: CpuWeight + ?Sized>(w: &W, dy: &[f32], rows: usize, dx: &mut [f32]) {
    use super::packed::NR;
    let (out, inp) = (w.out_features(), w.in_features());
    assert_eq!(dy.len(), rows * out);
    assert_eq!(dx.len(), rows * inp);
    if rows == 0 || inp == 0 {
        return;
    }
    let block = rows_per_task(inp, 1 << 15).min(rows.div_ceil(rayon::current_num_threads())).max(1);
    dx.par_chunks_mut(block * inp).zip(dy.par_chunks(block * out)).for_each(|(dx, dy)| {
        let n = dx.len() / inp;
        let mut scratch = Vec::new();
        for p in 0..out.div_ceil(NR) {
            let cols = NR.min(out - p * NR);
            let panel = w.panel(p, &mut scratch);
            // The panel is `[in][NR]`: W[p·NR + j][i] at i·NR + j.
            gemm(n, inp, cols, dx, p > 0, &dy[p * NR..], (out, 1), panel, (1, NR), 1.0, Parallelism::None);
        }
    });
}

/// [`input_grad`] for a gradient tensor, giving `dx` in `shape` (the op's input shape).
pub fn input_grad_tensor(w: &dyn CpuWeight, grad: &Tensor, shape: &Shape) -> Result<Tensor> {
    let rows = grad.elem_count() / w.out_features().max(1);
    let dy = grad;
    read!("input-grad"; dy);
    let mut dx = vec![0f32; rows * w.in_features()];
    w.input_grad(dy, rows, &mut dx);
    tensor(dx, shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::packed::Packed;
    use candle_core::{Device, Var, D};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    fn var(shape: &[usize], seed: u64) -> Var {
        Var::from_tensor(&Tensor::from_vec(values(shape.iter().product(), seed), shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Asserts two tensors agree to `tol` relative to the larger's scale.
    fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let scale = a.iter().chain(&b).fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * scale, "{what}[{i}]: {x} against {y}");
        }
    }

    /// Forward and input gradient of `fused` and `reference` agree, under a random upstream grad.
    fn same_op(x: &Var, fused: impl Fn(&Tensor) -> Tensor, reference: impl Fn(&Tensor) -> Tensor, what: &str) {
        let (yf, yr) = (fused(x.as_tensor()), reference(x.as_tensor()));
        close(&yf, &yr, 1e-5, what);
        let w = Tensor::from_vec(values(yf.elem_count(), 99), yf.shape(), &Device::Cpu).unwrap();
        let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (yr * &w).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(x.as_tensor()).unwrap(), gr.get(x.as_tensor()).unwrap(), 1e-4, &format!("{what} grad"));
    }

    #[test]
    fn rms_norm_matches_candles_ops() {
        let x = var(&[3, 5, 24], 1);
        let w = Tensor::from_vec(values(24, 2), 24, &Device::Cpu).unwrap();
        same_op(&x, |x| rms_norm(x, &w, 1e-5).unwrap(), |x| candle_nn::ops::rms_norm_slow(x, &w, 1e-5).unwrap(), "rms");
    }

    #[test]
    fn rope_matches_candles_kernels_and_inverts() {
        let (rows, heads, new, hd) = (2, 3, 5, 8);
        // Token-major, as the projections make it; candle's kernels take it head-major.
        let x = var(&[rows, new, heads, hd], 4);
        let heads_major = |t: &Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap();
        let cos = Tensor::from_vec(values(rows * new * hd / 2, 5), (rows, new, hd / 2), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(values(rows * new * hd / 2, 6), (rows, new, hd / 2), &Device::Cpu).unwrap();
        let angles = Angles::new(&cos, &sin).unwrap();
        for interleaved in [false, true] {
            let y = rope(x.as_tensor(), &angles, interleaved).unwrap();
            let xh = heads_major(x.as_tensor());
            let expected = if interleaved {
                candle_nn::rotary_emb::rope_i(&xh, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope(&xh, &cos, &sin).unwrap()
            };
            close(&heads_major(&y), &expected, 1e-6, "rope");
            // The backward of a linear map y = R x is Rᵀ dy: check ⟨R x, w⟩ = ⟨x, Rᵀ w⟩.
            let w = Tensor::from_vec(values(y.elem_count(), 7), y.shape(), &Device::Cpu).unwrap();
            let g = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let lhs = (rope(x.as_tensor(), &angles, interleaved).unwrap() * &w).unwrap().sum_all().unwrap();
            let rhs = (x.as_tensor() * g.get(x.as_tensor()).unwrap()).unwrap().sum_all().unwrap();
            close(&lhs, &rhs, 1e-5, "rope adjoint");
        }
    }

    /// The ungated activation (MPT's and Falcon's exact GELU) against candle's op, forward and
    /// backward.
    #[test]
    fn act_matches_candles_gelu_erf() {
        let x = var(&[3, 40], 11);
        let y = act(x.as_tensor(), Activation::Gelu).unwrap();
        let r = x.as_tensor().gelu_erf().unwrap();
        close(&y, &r, 1e-6, "act");
        let w = Tensor::from_vec(values(y.elem_count(), 12), y.shape(), &Device::Cpu).unwrap();
        let gf = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (r * &w).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(x.as_tensor()).unwrap(), gr.get(x.as_tensor()).unwrap(), 1e-5, "act grad");
    }

    #[test]
    fn glu_chunks_give_the_scalar_loops_bits_on_every_cpu() {
        let g: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.07).chain([-100.0, 100.0, 0.0]).collect();
        let u: Vec<f32> = (0..g.len()).map(|i| (i % 13) as f32 * 0.3 - 1.7).collect();
        let dy: Vec<f32> = (0..g.len()).map(|i| (i % 7) as f32 * 0.11 - 0.3).collect();
        for act in [Activation::Silu, Activation::GeluTanh, Activation::Gelu] {
            let mut y = vec![f32::NAN; g.len()];
            glu_forward(act, &g, &u, &mut y);
            let (mut dg, mut du) = (vec![f32::NAN; g.len()], vec![f32::NAN; g.len()]);
            glu_backward(act, (&g, &u, &dy), &mut dg, &mut du);
            for i in 0..g.len() {
                let (a, slope) = act.with_slope(g[i]);
                assert_eq!(y[i].to_bits(), (act.apply(g[i]) * u[i]).to_bits(), "{act:?} forward at {}", g[i]);
                assert_eq!(dg[i].to_bits(), (dy[i] * u[i] * slope).to_bits(), "{act:?} dg at {}", g[i]);
                assert_eq!(du[i].to_bits(), (dy[i] * a).to_bits(), "{act:?} du at {}", g[i]);
            }
            assert!(y.iter().chain(&dg).chain(&du).all(|v| v.is_finite()), "{act:?}");
        }
    }

    #[test]
    fn glu_mul_matches_candles_ops() {
        for act in [Activation::Silu, Activation::GeluTanh, Activation::Gelu] {
            let g = var(&[4, 33], 8);
            let u = var(&[4, 33], 9);
            let y = glu_mul(g.as_tensor(), u.as_tensor(), act).unwrap();
            let a = match act {
                Activation::Silu => g.as_tensor().silu().unwrap(),
                Activation::GeluTanh => g.as_tensor().gelu().unwrap(),
                Activation::Gelu => g.as_tensor().gelu_erf().unwrap(),
            };
            let r = (a * u.as_tensor()).unwrap();
            close(&y, &r, 1e-6, "glu-mul");
            let w = Tensor::from_vec(values(y.elem_count(), 10), y.shape(), &Device::Cpu).unwrap();
            let gf = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (r * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&g, &u] {
                // candle's GELU backward rounds its constants to six digits.
                close(gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap(), 1e-5, "glu-mul grad");
            }
        }
    }

    #[test]
    fn nll_matches_log_softmax_and_gather() {
        let z = var(&[5, 70], 11);
        let targets = vec![0u32, 69, 3, 3, 40];
        let t = Tensor::from_vec(targets.clone(), (5, 1), &Device::Cpu).unwrap();
        same_op(
            &z,
            |z| nll(z, targets.clone()).unwrap(),
            |z| {
                candle_nn::ops::log_softmax(z, D::Minus1)
                    .unwrap()
                    .gather(&t, 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap()
                    .neg()
                    .unwrap()
            },
            "nll",
        );
    }

    #[test]
    fn head_nll_matches_the_projection_then_nll_in_chunks() {
        // More rows than one chunk, a ragged last chunk and a ragged last panel.
        let (n, hidden, vocab) = (HEAD_ROWS + 37, 24, 70);
        let w = values(vocab * hidden, 21);
        let head: Arc<dyn CpuWeight> = Arc::new(Packed::new(&w, vocab, hidden));
        let wt = Tensor::from_vec(w, (vocab, hidden), &Device::Cpu).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % vocab as u32).collect();
        let x = var(&[n, hidden], 22);
        same_op(
            &x,
            |x| head_nll(x, head.clone(), targets.clone()).unwrap(),
            |x| nll(&x.matmul(&wt.t().unwrap()).unwrap(), targets.clone()).unwrap(),
            "head-nll",
        );
        // Untracked input: no gradient is made, and the loss is the same.
        let plain = x.as_tensor().detach();
        let y = head_nll(&plain, head.clone(), targets.clone()).unwrap();
        close(&y, &nll(&plain.matmul(&wt.t().unwrap()).unwrap(), targets.clone()).unwrap(), 1e-5, "untracked");
        let bad = head_nll(&plain, head, vec![vocab as u32; n]).unwrap_err();
        assert!(bad.to_string().contains("fused-head-nll"), "{bad}");
    }

    #[test]
    fn lora_matches_candles_ops_with_and_without_dropout() {
        // 50 outputs: a full panel and a ragged one.
        let (n, inp, out, r) = (7, 20, 50, 3);
        let w = values(out * inp, 12);
        let base: Arc<dyn CpuWeight> = Arc::new(Packed::new(&w, out, inp));
        let wt = Tensor::from_vec(w, (out, inp), &Device::Cpu).unwrap();
        let x = var(&[n, inp], 13);
        let a = var(&[r, inp], 14);
        let b = var(&[out, r], 15);
        for p in [0.0, 0.3] {
            let d = Dropout { p, seed: 5 };
            let y = lora(x.as_tensor(), base.clone(), a.as_tensor(), b.as_tensor(), 1.5, Some(d)).unwrap();
            // The reference draws the mask from the generator in sequence.
            let mut rng = crate::rng::Rng::new(5);
            let mask: Vec<f32> =
                (0..n * inp).map(|_| if rng.next_f64() < p { 0.0 } else { 1.0 / (1.0 - p) as f32 }).collect();
            let mask = Tensor::from_vec(mask, (n, inp), &Device::Cpu).unwrap();
            let xd = (x.as_tensor() * mask).unwrap();
            let lora = xd.matmul(&a.as_tensor().t().unwrap()).unwrap().matmul(&b.as_tensor().t().unwrap()).unwrap();
            let r = (x.as_tensor().matmul(&wt.t().unwrap()).unwrap() + (lora * 1.5).unwrap()).unwrap();
            close(&y, &r, 1e-5, "lora");
            let up = Tensor::from_vec(values(n * out, 16), (n, out), &Device::Cpu).unwrap();
            let gf = (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (r * &up).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &a, &b] {
                close(
                    gf.get(v.as_tensor()).unwrap(),
                    gr.get(v.as_tensor()).unwrap(),
                    1e-5,
                    &format!("lora grad p={p}"),
                );
            }
        }
    }
}
