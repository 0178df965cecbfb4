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

mod common;
mod ops;
mod projection;
#[cfg(test)]
mod tests;

pub use common::usable;
pub(super) use common::{f32s, gemm, read, slice, tensor};
pub use ops::{act, glu_mul, nll, rms_norm, rope, Angles};
pub use projection::{head_nll, input_grad, input_grad_tensor, lora};
