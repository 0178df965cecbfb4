//! Each op's backward against candle's autograd through the same maths.

use std::sync::Arc;

use super::ops::{glu_backward, glu_forward};
use super::projection::HEAD_ROWS;
use super::*;
use crate::model::config::Activation;
use crate::model::kernels::cpu_weight::CpuWeight;
use crate::model::kernels::dropout::Dropout;
use crate::model::kernels::packed::Packed;
use candle_core::Tensor;
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
            candle_nn::ops::log_softmax(z, D::Minus1).unwrap().gather(&t, 1).unwrap().squeeze(1).unwrap().neg().unwrap()
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
            close(gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap(), 1e-5, &format!("lora grad p={p}"));
        }
    }
}
