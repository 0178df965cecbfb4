//! The fused ops over a frozen CPU weight: the vocabulary projection with the loss
//! ([`head_nll`]) and LoRA ([`lora`]), and the input gradient both take through the weight.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use super::ops::exp_sum;
use crate::model::kernels::cpu_weight::CpuWeight;
use crate::model::kernels::dropout::Dropout;
use gemm::Parallelism;

// ---------------------------------------------------------------------------------------------
// The vocabulary projection and the loss together, a chunk of rows at a time

/// Rows of logits held at once by [`head_nll`] (`rows × vocab` f32: 25 MB for 49,152 words).
pub(super) const HEAD_ROWS: usize = 128;

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
    use crate::model::kernels::packed::NR;
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
