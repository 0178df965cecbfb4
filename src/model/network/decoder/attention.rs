//! Attention: the masks, the q/k/v projections cut apart, rotary positions, the key/value
//! cache, and the kernels by pass and device.

use candle_core::{DType, Result, Tensor, D};

use super::{alibi_slopes, Decoder, Fused, Layer, Mask, Pass, Qkv, Rotary};
use crate::model::config::{Alibi, QkvLayout};
use crate::model::kernels::{cpu_attention, flash, fused};
use crate::model::network::kv_cache::{Cache, Kv};

impl Decoder {
    /// The additive attention mask `[rows, 1, new, total]` (f32): padding, the future and, with
    /// a window, keys `window` or more positions back are `-inf`. `None` when nothing is hidden.
    /// A padding slot attends to itself only: a row of all `-inf` would make NaN, and NaN in a
    /// padding slot's values poisons the real rows through `0 · NaN`.
    pub(super) fn mask(&self, cache: &Cache, new: usize, window: Option<usize>) -> Result<Option<Tensor>> {
        let (start, total, rows) = (cache.len, cache.len + new, cache.rows());
        let mut data = Vec::with_capacity(rows * new * total);
        let mut any = false;
        for &pad in &cache.pad {
            for q in start..total {
                for k in 0..total {
                    let hidden = hides(q, k, pad, window);
                    any |= hidden;
                    data.push(if hidden { f32::NEG_INFINITY } else { 0.0 });
                }
            }
        }
        any.then(|| Tensor::from_vec(data, (rows, 1, new, total), &self.device)).transpose()
    }

    /// The causal mask with each head's ALiBi bias, `[rows, heads, new, total]` (f32): as
    /// [`Decoder::mask`], with the bias of key position `k` seen from query position `q` where
    /// the key is visible (MPT: `slope · (k − q)`; Falcon: `bf16(slope · k) / √head_dim`, as
    /// transformers rounds it; each differs from the other form by a constant per query, which
    /// softmax ignores).
    pub(super) fn alibi_mask(&self, cache: &Cache, new: usize, alibi: Alibi) -> Result<Tensor> {
        let (start, total, rows, heads) = (cache.len, cache.len + new, cache.rows(), self.spec.num_heads);
        let slopes = alibi_slopes(alibi, heads);
        let scale = 1.0 / (self.spec.head_dim as f32).sqrt();
        let mut data = Vec::with_capacity(rows * heads * new * total);
        for &pad in &cache.pad {
            for &slope in &slopes {
                for q in start..total {
                    for k in 0..total {
                        data.push(match (!hides(q, k, pad, None), alibi) {
                            (false, _) => f32::NEG_INFINITY,
                            (true, _) if q < pad => 0.0,
                            (true, Alibi::Mpt { .. }) => slope * (k as f32 - q as f32),
                            (true, Alibi::Falcon) => bf16_round(bf16_round(slope) * (k - pad) as f32) * scale,
                        });
                    }
                }
            }
        }
        Tensor::from_vec(data, (rows, heads, new, total), &self.device)
    }

    // One layer's attention as the forward reaches it: the layer, its input, the pass's rope
    // and mask, the layer's cache slot, the first position. The caller keeps each in a
    // different place, so a struct would be built per layer only to be taken apart again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        rope: Rotary,
        mask: Mask,
        (cache, store): (&mut Option<Kv>, Option<DType>),
        start: usize,
        pass: Pass,
    ) -> Result<Tensor> {
        let s = &self.spec;
        let (rows, new, _) = x.dims3()?;
        let (nh, nkv, hd) = (s.num_heads, s.num_kv_heads, s.head_dim);
        let (mut q, mut k, v) = self.split_qkv(layer, x)?;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            q = qn.forward(&q, pass)?;
            k = kn.forward(&k, pass)?;
        }
        if let Some(f) = rope.fused {
            let Mask::Ranges(visible) = mask else {
                candle_core::bail!("training's tiled attention without its ranges")
            };
            return self.flash_attention(layer, f, visible, (q, k, v), cache, start);
        }
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (q, k) = self.rotate(q, k, rope, pass)?;
        let total = start + new;
        let (k, v) = match store {
            Some(store) if pass == Pass::Inference && store != k.dtype() => (k.to_dtype(store)?, v.to_dtype(store)?),
            _ => (k, v),
        };
        let (k, v) = cached(cache, k, v, start, pass)?;
        let mask = match mask {
            Mask::Ranges(visible) => {
                // A prefill is bound by its products, not by reading the cache: a half cache is
                // widened whole.
                let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
                return layer.o.forward(&flash::attend_cached(&q, &k, &v, self.attention_scale, visible)?);
            }
            Mask::Dense(mask) => mask,
        };
        let per_head_mask = mask.is_some_and(|m| m.dim(1).is_ok_and(|h| h > 1));
        if pass == Pass::Inference && cpu_attention::usable(&q) && !per_head_mask {
            return layer.o.forward(&cpu_attention::attend(&q, &k, &v, self.attention_scale, mask)?);
        }
        let (k, v) = (k.to_dtype(q.dtype())?, v.to_dtype(q.dtype())?);
        // Grouped-query attention without copying keys and values: the query heads that share a
        // key/value head are stacked along the sequence axis.
        let rep = nh / nkv;
        let q = q.reshape((rows, nkv, rep * new, hd))?;
        // One statement, so the unscaled product is freed before the mask's copy is made.
        let mut scores = (q.matmul(&k.t()?)? * f64::from(self.attention_scale))?
            .to_dtype(DType::F32)?
            .reshape((rows, nkv, rep, new, total))?;
        if let Some(mask) = mask {
            let mask = match per_head_mask {
                true => mask.reshape((rows, nkv, rep, new, total))?,
                false => mask.unsqueeze(2)?,
            };
            scores = scores.broadcast_add(&mask)?;
        }
        let scores = scores.reshape((rows, nkv, rep * new, total))?;
        let probs = match pass {
            Pass::Inference => candle_nn::ops::softmax_last_dim(&scores)?,
            Pass::Training => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let out = probs.to_dtype(self.dtype)?.matmul(&v)?;
        let out = out.reshape((rows, nh, new, hd))?.transpose(1, 2)?.reshape((rows, new, nh * hd))?;
        layer.o.forward(&out)
    }

    /// q and k `[rows, heads, new, hd]` at their positions: rotary embedding as the pass and
    /// the family take it (none with ALiBi).
    fn rotate(&self, q: Tensor, k: Tensor, rope: Rotary, pass: Pass) -> Result<(Tensor, Tensor)> {
        let s = &self.spec;
        let (cos, sin) = (rope.cos, rope.sin);
        let alibi = s.gpt.as_ref().is_some_and(|g| g.alibi.is_some());
        let (q, k) = match (pass, s.rope_interleaved) {
            _ if alibi => (q, k),
            (Pass::Inference, false) => {
                (candle_nn::rotary_emb::rope(&q, cos, sin)?, candle_nn::rotary_emb::rope(&k, cos, sin)?)
            }
            (Pass::Inference, true) => {
                (candle_nn::rotary_emb::rope_i(&q, cos, sin)?, candle_nn::rotary_emb::rope_i(&k, cos, sin)?)
            }
            (Pass::Training, false) => (rope_differentiable(&q, cos, sin)?, rope_differentiable(&k, cos, sin)?),
            (Pass::Training, true) => {
                (rope_interleaved_differentiable(&q, cos, sin)?, rope_interleaved_differentiable(&k, cos, sin)?)
            }
        };
        Ok((q, k))
    }

    /// q `[rows, new, heads, hd]`, k and v `[rows, new, kv_heads, hd]` from `x`: three
    /// projections, or one fused output cut by the family's layout (clamped first where the
    /// config says so).
    pub(super) fn split_qkv(&self, layer: &Layer, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let s = &self.spec;
        let (rows, new, _) = x.dims3()?;
        let (nh, nkv, hd) = (s.num_heads, s.num_kv_heads, s.head_dim);
        let (fused, gpt) = match (&layer.qkv, &s.gpt) {
            (Qkv::Split { q, k, v }, _) => {
                return Ok((
                    q.forward(x)?.reshape((rows, new, nh, hd))?,
                    k.forward(x)?.reshape((rows, new, nkv, hd))?,
                    v.forward(x)?.reshape((rows, new, nkv, hd))?,
                ))
            }
            (Qkv::Fused(fused), Some(gpt)) => (fused, gpt),
            (Qkv::Fused(_), None) => candle_core::bail!("a fused q/k/v projection without its layout"),
        };
        let mut y = fused.forward(x)?;
        if let Some(c) = gpt.clip_qkv {
            y = y.clamp(-c, c)?;
        }
        match gpt.qkv {
            QkvLayout::Contiguous => Ok((
                y.narrow(2, 0, nh * hd)?.reshape((rows, new, nh, hd))?,
                y.narrow(2, nh * hd, nkv * hd)?.reshape((rows, new, nkv, hd))?,
                y.narrow(2, (nh + nkv) * hd, nkv * hd)?.reshape((rows, new, nkv, hd))?,
            )),
            QkvLayout::Grouped => {
                let rep = nh / nkv;
                let y = y.reshape((rows, new, nkv, rep + 2, hd))?;
                Ok((
                    y.narrow(3, 0, rep)?.reshape((rows, new, nh, hd))?,
                    y.narrow(3, rep, 1)?.reshape((rows, new, nkv, hd))?,
                    y.narrow(3, rep + 1, 1)?.reshape((rows, new, nkv, hd))?,
                ))
            }
        }
    }

    /// Training's attention on the CPU in f32 ([`flash::attend`]), token-major from the
    /// projections to the output projection: q, k, v `[rows, new, heads, hd]` (normed), rotated
    /// in place of a transpose. Earlier keys in `cache` (head-major views) come first; the cache
    /// keeps this pass's keys and values as head-major views of token-major tensors.
    pub(super) fn flash_attention(
        &self,
        layer: &Layer,
        f: &Fused,
        visible: &flash::Visible,
        (q, k, v): (Tensor, Tensor, Tensor),
        cache: &mut Option<Kv>,
        start: usize,
    ) -> Result<Tensor> {
        let s = &self.spec;
        let (rows, new, nh, hd) = q.dims4()?;
        let angles = match (&f.local_angles, layer.sliding) {
            (Some(local), true) => local,
            _ => &f.angles,
        };
        let q = fused::rope(&q, angles, s.rope_interleaved)?;
        let k = fused::rope(&k, angles, s.rope_interleaved)?;
        let (k, v) = match cache.take() {
            Some(kv) => (
                Tensor::cat(&[&kv.k.narrow(2, 0, start)?.transpose(1, 2)?, &k], 1)?,
                Tensor::cat(&[&kv.v.narrow(2, 0, start)?.transpose(1, 2)?, &v], 1)?,
            ),
            None => (k, v),
        };
        *cache = Some(Kv { k: k.transpose(1, 2)?, v: v.transpose(1, 2)? });
        let out = flash::attend(&q, &k, &v, self.attention_scale, visible)?;
        layer.o.forward(&out.reshape((rows, new, nh * hd))?)
    }
}

/// Whether query slot `q` of a row with `pad` padding slots does not see key slot `k`: padding,
/// the future and, with a window, keys `window` or more positions back. A padding slot sees
/// itself only (see [`Decoder::mask`]).
fn hides(q: usize, k: usize, pad: usize, window: Option<usize>) -> bool {
    if q < pad {
        k != q
    } else {
        k < pad || k > q || window.is_some_and(|w| q - k >= w)
    }
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32.
fn bf16_round(x: f32) -> f32 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    f32::from_bits(rounded & 0xffff_0000)
}

/// `rotate_half` rotary embedding from differentiable ops; `cos`/`sin` are `[rows, new, hd/2]`.
fn rope_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// Rotary embedding over adjacent pairs `(x₀, x₁), (x₂, x₃), …`, from differentiable ops.
fn rope_interleaved_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (rows, heads, new, dim) = x.dims4()?;
    let pairs = x.reshape((rows, heads, new, dim / 2, 2))?;
    let x0 = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let x1 = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let cos = cos.unsqueeze(1)?;
    let sin = sin.unsqueeze(1)?;
    let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
    Tensor::stack(&[&r0, &r1], D::Minus1)?.reshape((rows, heads, new, dim))
}

/// This step's keys and values appended to the layer's `cache` (from slot `start`), and the
/// keys and values attention reads: every slot so far.
fn cached(cache: &mut Option<Kv>, k: Tensor, v: Tensor, start: usize, pass: Pass) -> Result<(Tensor, Tensor)> {
    let new = k.dim(2)?;
    let out = match (pass, cache.as_mut()) {
        // Training: plain tensors so gradients flow (one forward, no reuse of the cache).
        (Pass::Training, _) => {
            let (k, v) = match cache.take() {
                Some(kv) => (
                    Tensor::cat(&[&kv.k.narrow(2, 0, start)?, &k], 2)?,
                    Tensor::cat(&[&kv.v.narrow(2, 0, start)?, &v], 2)?,
                ),
                None => (k, v),
            };
            *cache = Some(Kv { k: k.clone(), v: v.clone() });
            (k, v)
        }
        (Pass::Inference, Some(kv)) => {
            kv.append(&k, &v, start)?;
            (kv.k.narrow(2, 0, start + new)?, kv.v.narrow(2, 0, start + new)?)
        }
        (Pass::Inference, None) => {
            let kv = Kv::first(&k, &v)?;
            let view = (kv.k.narrow(2, 0, start + new)?, kv.v.narrow(2, 0, start + new)?);
            *cache = Some(kv);
            view
        }
    };
    Ok(out)
}
