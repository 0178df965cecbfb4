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
//!
//! A cache held in f16 (half the bytes to read per step, which is what bounds decoding at long
//! rows) is widened to f32 one task at a time, the visible slots only, into a buffer that stays
//! in the core's cache; the arithmetic is f32 either way.

mod cache;
mod dispatch;
mod general;
#[cfg(target_arch = "x86_64")]
mod wide256;
#[cfg(target_arch = "x86_64")]
mod wide512;

pub(super) use cache::{values, Place};
pub use dispatch::{attend, usable, MAX_NEW};
