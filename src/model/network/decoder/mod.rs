//! The decoder every supported architecture shares: embeddings, pre-norm attention and gated
//! MLP blocks, a final norm and the LM head. Architectures differ only in their [`DecoderSpec`]
//! (Gemma 3's extra norms, scales and local rotary base are its `gemma` part).
//!
//! Batches are left-padded: row `b` holds `pad[b]` padding slots, then its tokens. Each row's
//! positions start at 0 after its padding, and the attention mask hides the padding, so a row
//! computes what it would alone. Rows leave the batch when they finish ([`Cache::retain`]).
//!
//! Two passes: [`Pass::Inference`] uses candle's fused `rms_norm`, `softmax_last_dim` and `rope`,
//! which have no backward; [`Pass::Training`] builds the same maths from differentiable ops.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor, D};

use super::kv_cache::Cache;
pub use super::kv_cache::KV_STEP;
use super::linear::{Base, CpuWeight, Linear};
pub use super::source::{Names, Source};
use crate::model::config::{Activation, Alibi, DecoderSpec, Parallel, Rope, RopeScaling};
use crate::model::kernels::{cpu_attention, flash, fused};

mod attention;
mod load;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Inference,
    Training,
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        match pass {
            Pass::Inference => candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32),
            Pass::Training if fused::usable(x) => fused::rms_norm(x, &self.weight, self.eps as f32),
            Pass::Training => candle_nn::ops::rms_norm_slow(x, &self.weight, self.eps as f32),
        }
    }
}

/// A block's norm: RMSNorm (the Llama-style families) or LayerNorm (MPT, Falcon; a zero bias
/// where the checkpoint has none).
#[derive(Debug, Clone)]
pub enum Norm {
    Rms(RmsNorm),
    Layer { weight: Tensor, bias: Tensor, eps: f64 },
}

impl Norm {
    pub fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        match (self, pass) {
            (Norm::Rms(n), _) => n.forward(x, pass),
            (Norm::Layer { weight, bias, eps }, Pass::Inference) => {
                candle_nn::ops::layer_norm(&x.contiguous()?, weight, bias, *eps as f32)
            }
            (Norm::Layer { weight, bias, eps }, Pass::Training) => {
                candle_nn::ops::layer_norm_slow(x, weight, bias, *eps as f32)
            }
        }
    }
}

/// The attention's input projections: separate (Llama-style) or one fused matrix (MPT's
/// `Wqkv`, Falcon's `query_key_value`) whose output [`Decoder::split_qkv`] cuts apart.
enum Qkv {
    Split { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

struct Layer {
    input_norm: Norm,
    qkv: Qkv,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Gemma: a norm on the attention's output before the residual add.
    attn_out_norm: Option<RmsNorm>,
    /// The norm before the MLP (Llama's `post_attention_layernorm`, Gemma's
    /// `pre_feedforward_layernorm`); none where the MLP shares the attention's (Falcon-7B).
    mlp_norm: Option<Norm>,
    /// Gemma: a norm on the MLP's output before the residual add.
    mlp_out_norm: Option<RmsNorm>,
    /// The gated MLP's gate (none in MPT's and Falcon's `down(gelu(up(x)))`).
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
    sliding: bool,
}

/// Bytes one layer's attention scores may take during an inference prefill (see
/// [`Decoder::prefill_chunk`]).
pub const ATTENTION_BYTES: usize = 64 << 20;

/// The fewest positions a prefill chunk holds, however long the rows.
pub const MIN_PREFILL_CHUNK: usize = 32;

/// Where token embeddings are looked up.
enum Embeddings {
    Table(Tensor),
    /// The tied LM head's CPU weight (packed f32, or a GGUF file's decoded blocks), whose rows
    /// are the embeddings: one copy of the vocabulary matrix instead of two.
    Head(Arc<dyn CpuWeight>),
}

impl Embeddings {
    /// The embeddings of `ids` (`[n]`, u32), `[n, hidden]`.
    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embeddings::Table(t) => t.index_select(ids, 0),
            Embeddings::Head(p) => {
                let ids = ids.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= p.out_features()) {
                    candle_core::bail!("token id {bad} is outside the vocabulary of {}", p.out_features())
                }
                Tensor::from_vec(p.gather_rows(&ids), (ids.len(), p.in_features()), &Device::Cpu)
            }
        }
    }
}

pub struct Decoder {
    pub spec: DecoderSpec,
    embed: Embeddings,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    /// Rotary inverse frequencies, `[head_dim / 2]`, f32.
    inv_freq: Tensor,
    /// The sliding layers' own inverse frequencies (Gemma 3's local base), if they differ.
    inv_freq_local: Option<Tensor>,
    /// The factor on q·k (`head_dim^-1/2` unless the architecture says otherwise).
    attention_scale: f32,
    dtype: DType,
    device: Device,
}

impl Decoder {
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn new_cache(&self, pad: Vec<usize>) -> Cache {
        Cache::new(self.layers.len(), pad)
    }

    /// Bytes one cache row holds per slot: keys and values of every layer.
    pub fn kv_slot_bytes(&self) -> usize {
        self.kv_slot_bytes_in(self.dtype)
    }

    /// [`Decoder::kv_slot_bytes`] for a cache kept in `store`.
    pub fn kv_slot_bytes_in(&self, store: DType) -> usize {
        let s = &self.spec;
        s.num_layers * 2 * s.num_kv_heads * s.head_dim * store.size_in_bytes()
    }

    /// The type an inference cache may keep its keys and values in to read half the bytes: f16
    /// where attention widens it (the CPU, an f32 model); none where it may not.
    pub fn half_store(&self) -> Option<DType> {
        (self.device.is_cpu() && self.dtype == DType::F32).then_some(DType::F16)
    }

    /// Runs `tokens` (`[rows, new]`, the rows of `cache`) through the model, appending to the
    /// cache. Returns logits `[rows, new, vocab]`, or `[rows, 1, vocab]` with `last_only`.
    /// An inference prefill runs in chunks of positions small enough that one layer's attention
    /// scores stay within [`ATTENTION_BYTES`] (see [`Decoder::prefill_chunk`]).
    pub fn forward(&self, tokens: &Tensor, cache: &mut Cache, pass: Pass, last_only: bool) -> Result<Tensor> {
        let (rows, new) = tokens.dims2()?;
        let chunk = match pass {
            Pass::Inference => self.prefill_chunk(rows, cache.len + new),
            Pass::Training => new,
        };
        self.forward_in_chunks(tokens, cache, pass, last_only, chunk)
    }

    /// Positions per prefill chunk for `rows` rows reaching `total` slots: the most whose
    /// attention scores (`rows × heads × chunk × total` f32) fit [`ATTENTION_BYTES`], at least
    /// [`MIN_PREFILL_CHUNK`]. Without it, 40 rows of 1,650-token prompts (marginal generation,
    /// k 5 × 8 requests) held three 3.9 GB score buffers per layer at once.
    pub fn prefill_chunk(&self, rows: usize, total: usize) -> usize {
        let per_position = rows.max(1) * self.spec.num_heads.max(1) * total.max(1) * 4;
        (ATTENTION_BYTES / per_position).max(MIN_PREFILL_CHUNK)
    }

    /// [`Decoder::forward`] with the prefill cut into chunks of `chunk` positions (each appends
    /// to the cache, so the result is the same as one pass up to rounding).
    pub fn forward_in_chunks(
        &self,
        tokens: &Tensor,
        cache: &mut Cache,
        pass: Pass,
        last_only: bool,
        chunk: usize,
    ) -> Result<Tensor> {
        let (new, chunk) = (tokens.dim(1)?, chunk.max(1));
        let mut x = if new > chunk {
            let mut parts = Vec::new();
            let mut done = 0;
            while done < new {
                let n = chunk.min(new - done);
                let h = self.hidden(&tokens.narrow(1, done, n)?.contiguous()?, cache, pass)?;
                done += n;
                if !last_only || done == new {
                    parts.push(h);
                }
            }
            Tensor::cat(&parts, 1)?
        } else {
            self.hidden(tokens, cache, pass)?
        };
        if last_only {
            let new = x.dim(1)?;
            x = x.narrow(1, new - 1, 1)?.contiguous()?;
        }
        let x = self.norm.forward(&x, pass)?;
        self.softcap(self.lm_head.forward(&x)?)
    }

    /// Gemma's final soft-cap `tanh(z / cap) · cap`, where the config sets one.
    fn softcap(&self, logits: Tensor) -> Result<Tensor> {
        match self.spec.gemma.as_ref().and_then(|g| g.final_logit_softcapping) {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }

    /// `−log p(target)` at the positions `at` only (indices into the `rows × new` tokens,
    /// row-major), `[n]`: training needs the logits where there are labels, and the vocabulary
    /// projection is the costliest step to spend on prompt tokens. On the CPU in f32 with a
    /// plain head the logits are made and dropped a chunk of rows at a time
    /// ([`fused::head_nll`]); otherwise they are made whole.
    pub fn nll_at(
        &self,
        tokens: &Tensor,
        cache: &mut Cache,
        pass: Pass,
        at: &Tensor,
        targets: Vec<u32>,
    ) -> Result<Tensor> {
        let x = self.hidden(tokens, cache, pass)?;
        let (rows, new, hidden) = x.dims3()?;
        let x = x.reshape((rows * new, hidden))?.index_select(at, 0)?;
        self.head_nll(&x, pass, targets)
    }

    /// `−log p(target)` of each row of `x` `[n, hidden]` (the last block's output at the
    /// labelled positions): the final norm, the head and the loss.
    fn head_nll(&self, x: &Tensor, pass: Pass, targets: Vec<u32>) -> Result<Tensor> {
        let x = self.norm.forward(x, pass)?;
        let capped = self.spec.gemma.as_ref().is_some_and(|g| g.final_logit_softcapping.is_some());
        if let (true, false, Some(head)) = (fused::usable(&x), capped, self.lm_head.plain_cpu_weight()) {
            return fused::head_nll(&x, head, targets);
        }
        let logits = self.softcap(self.lm_head.forward(&x)?)?.to_dtype(DType::F32)?;
        if fused::usable(&logits) {
            return fused::nll(&logits, targets);
        }
        let n = targets.len();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let chosen = logp.gather(&Tensor::from_vec(targets, (n, 1), logits.device())?, 1)?;
        chosen.squeeze(1)?.neg()
    }

    /// The blocks' output before the final norm, `[rows, new, hidden]`.
    fn hidden(&self, tokens: &Tensor, cache: &mut Cache, pass: Pass) -> Result<Tensor> {
        let step = self.prepare(tokens, cache, pass)?;
        let mut x = self.embed_tokens(tokens)?;
        for i in 0..self.layers.len() {
            x = self.block(i, &x, &step, cache, pass)?;
        }
        cache.len = step.total;
        Ok(x)
    }

    /// The embeddings of `tokens` `[rows, new]`: `[rows, new, hidden]`.
    fn embed_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let (rows, new) = tokens.dims2()?;
        let x = self.embed.lookup(&tokens.flatten_all()?)?.reshape((rows, new, self.spec.hidden_size))?;
        match &self.spec.gemma {
            // transformers rounds the scale to the weights' dtype before multiplying.
            Some(g) => {
                let scale = Tensor::new(g.embed_scale as f32, &self.device)?.to_dtype(x.dtype())?;
                x.broadcast_mul(&scale)
            }
            None => Ok(x),
        }
    }

    /// What every block of one forward shares: the rotary angles and the masks.
    fn prepare(&self, tokens: &Tensor, cache: &Cache, pass: Pass) -> Result<Step> {
        let (rows, new) = tokens.dims2()?;
        if rows != cache.rows() {
            candle_core::bail!("{rows} rows of tokens for a cache of {} rows", cache.rows());
        }
        let start = cache.len;
        let total = start + new;
        // Row b's token in slot j sits at position j - pad[b].
        let mut positions = Vec::with_capacity(rows * new);
        for &pad in &cache.pad {
            for j in start..total {
                positions.push(j.saturating_sub(pad) as f32);
            }
        }
        let positions = Tensor::from_vec(positions, (rows, new, 1), &self.device)?;
        let angles = |inv_freq: &Tensor| -> Result<(Tensor, Tensor)> {
            let freqs = positions.broadcast_mul(&inv_freq.reshape((1, 1, ()))?)?;
            Ok((freqs.cos()?.to_dtype(self.dtype)?.contiguous()?, freqs.sin()?.to_dtype(self.dtype)?.contiguous()?))
        };
        let (cos, sin) = angles(&self.inv_freq)?;
        let local = self.inv_freq_local.as_ref().map(angles).transpose()?;
        let window = self.spec.sliding_window.filter(|_| self.layers.iter().any(|l| l.sliding));
        // On the CPU in f32 without ALiBi, attention takes each query's visible keys as a range
        // (flash.rs: no score matrix, no dense mask) when training and for an inference prefill;
        // training also goes through the fused ops, which share one copy of the angles.
        let alibi = self.spec.gpt.as_ref().and_then(|g| g.alibi);
        let tiled = self.device.is_cpu() && self.dtype == DType::F32 && alibi.is_none();
        let fused = if pass == Pass::Training && tiled {
            Some(Fused {
                angles: fused::Angles::new(&cos, &sin)?,
                local_angles: local.as_ref().map(|(c, s)| fused::Angles::new(c, s)).transpose()?,
            })
        } else {
            None
        };
        let ranges = (tiled && (pass == Pass::Training || new > cpu_attention::MAX_NEW)).then(|| {
            (
                flash::Visible::new(&cache.pad, start, new, None),
                window.map(|w| flash::Visible::new(&cache.pad, start, new, Some(w))),
            )
        });
        let (full_mask, window_mask) = match window {
            _ if ranges.is_some() => (None, None),
            _ if alibi.is_some() => (Some(self.alibi_mask(cache, new, alibi.unwrap_or(Alibi::Falcon))?), None),
            None => (self.mask(cache, new, None)?, None),
            Some(w) => (self.mask(cache, new, None)?, self.mask(cache, new, Some(w))?),
        };
        Ok(Step { cos, sin, local, fused, ranges, full_mask, window_mask, start, total })
    }

    /// Block `i` (attention then the MLP, each added to the residual) on `x`.
    fn block(&self, i: usize, x: &Tensor, step: &Step, cache: &mut Cache, pass: Pass) -> Result<Tensor> {
        let layer = &self.layers[i];
        let mask = match (&step.ranges, layer.sliding) {
            (Some((_, Some(window))), true) => Mask::Ranges(window),
            (Some((full, _)), _) => Mask::Ranges(full),
            (None, true) => Mask::Dense(step.window_mask.as_ref()),
            (None, false) => Mask::Dense(step.full_mask.as_ref()),
        };
        let h = layer.input_norm.forward(x, pass)?;
        let (cos, sin) = match (&step.local, layer.sliding) {
            (Some((cos, sin)), true) => (cos, sin),
            _ => (&step.cos, &step.sin),
        };
        let rope = Rotary { cos, sin, fused: step.fused.as_ref() };
        let store = cache.store;
        let mut a = self.attention(layer, &h, rope, mask, (&mut cache.layers[i], store), step.start, pass)?;
        if let Some(n) = &layer.attn_out_norm {
            a = n.forward(&a, pass)?;
        }
        // Falcon's parallel blocks add the MLP's output to the attention's, then the residual.
        match (self.spec.gpt.as_ref().map_or(Parallel::No, |g| g.parallel), &layer.mlp_norm) {
            (Parallel::No, Some(norm)) => {
                let x = (x + a)?;
                let m = self.mlp(layer, &norm.forward(&x, pass)?, step, pass)?;
                x + m
            }
            (Parallel::TwoNorms, Some(norm)) => (self.mlp(layer, &norm.forward(x, pass)?, step, pass)? + a)? + x,
            _ => (self.mlp(layer, &h, step, pass)? + a)? + x,
        }
    }

    /// The MLP on `h` (its input norm applied): `down(act(gate(h)) · up(h))`, or
    /// `down(act(up(h)))` without a gate; Gemma's output norm after.
    fn mlp(&self, layer: &Layer, h: &Tensor, step: &Step, pass: Pass) -> Result<Tensor> {
        let act = self.spec.activation;
        // candle's ops (inference, and training off the CPU's f32 path).
        let plain = |x: &Tensor| match act {
            Activation::Silu => x.silu(),
            Activation::GeluTanh => x.gelu(),
            Activation::Gelu => x.gelu_erf(),
        };
        let product = match &layer.gate {
            Some(gate) => {
                let (g, u) = (gate.forward(h)?, layer.up.forward(h)?);
                match &step.fused {
                    Some(_) => fused::glu_mul(&g, &u, act)?,
                    None => (plain(&g)? * u)?,
                }
            }
            None => {
                let u = layer.up.forward(h)?;
                match pass == Pass::Training && fused::usable(&u) {
                    true => fused::act(&u, act)?,
                    false => plain(&u)?,
                }
            }
        };
        let mut m = layer.down.forward(&product)?;
        if let Some(n) = &layer.mlp_out_norm {
            m = n.forward(&m, pass)?;
        }
        Ok(m)
    }

    /// The summed `−log p(target)` at the positions `at` (as [`Decoder::nll_at`]) and its
    /// backward, one block at a time (gradient checkpointing): the forward keeps only each
    /// block's input; the backward runs each block's forward again, from the last block to the
    /// first, and backpropagates through it alone. `seed` scales the loss's gradient (1 / the
    /// step's target tokens); `each` receives every block's gradients (and the head's) as they
    /// are made. Returns the summed loss, the same number [`Decoder::nll_at`] gives.
    pub fn nll_checkpointed(
        &self,
        tokens: &Tensor,
        pad: Vec<usize>,
        at: &Tensor,
        targets: Vec<u32>,
        seed: f64,
        each: &mut dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>,
    ) -> Result<f32> {
        let mut cache = self.new_cache(pad);
        let step = self.prepare(tokens, &cache, Pass::Training)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = self.embed_tokens(tokens)?.detach();
        for i in 0..self.layers.len() {
            let y = self.block(i, &x, &step, &mut cache, Pass::Training)?.detach();
            cache.layers[i] = None;
            inputs.push(std::mem::replace(&mut x, y));
        }
        let (rows, new, hidden) = x.dims3()?;
        let top = candle_core::Var::from_tensor(&x)?;
        drop(x);
        let h = top.as_tensor().reshape((rows * new, hidden))?.index_select(at, 0)?;
        let loss = self.head_nll(&h, Pass::Training, targets)?.sum_all()?;
        let total = loss.to_scalar::<f32>()?;
        let grads = (loss * seed)?.backward()?;
        each(&grads)?;
        let mut grad = grads.get(top.as_tensor()).cloned();
        drop(grads);
        for (i, input) in inputs.into_iter().enumerate().rev() {
            let Some(g) = grad.take() else { break };
            let input = candle_core::Var::from_tensor(&input)?;
            let y = self.block(i, input.as_tensor(), &step, &mut cache, Pass::Training)?;
            cache.layers[i] = None;
            let grads = (y * g)?.sum_all()?.backward()?;
            each(&grads)?;
            grad = grads.get(input.as_tensor()).cloned();
        }
        Ok(total)
    }

    /// The blocks' projections, layer by layer (seven, or four with a fused q/k/v and no gate).
    fn projections(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| {
            let qkv: Vec<&Linear> = match &l.qkv {
                Qkv::Split { q, k, v } => vec![q, k, v],
                Qkv::Fused(f) => vec![f],
            };
            qkv.into_iter().chain([&l.o]).chain(&l.gate).chain([&l.up, &l.down])
        })
    }

    /// Bytes of weights one decoding step reads: every projection and the vocabulary head.
    pub fn step_weight_bytes(&self) -> usize {
        self.projections().chain([&self.lm_head]).map(Linear::weight_bytes).sum()
    }

    /// The row gate of the adapter `name` (shared by all its layers), if it is loaded.
    pub fn gate(&self, name: &str) -> Option<crate::model::network::linear::Gate> {
        self.projections().find_map(|lin| lin.adapters.iter().find(|a| a.name == name).map(|a| a.gate.clone()))
    }

    /// The names of the adapters loaded (in the first layer's order).
    pub fn adapter_names(&self) -> Vec<String> {
        self.projections().next().map(|l| l.adapters.iter().map(|a| a.name.clone()).collect()).unwrap_or_default()
    }

    /// Int8 activations (on) or exact ones (off) for every GGML-block weight: the blocks'
    /// projections and the head. Returns how many weights follow the setting.
    pub fn set_int8_activations(&mut self, on: bool) -> usize {
        let mut n = 0;
        for linear in self.projections().chain([&self.lm_head]) {
            if let Base::QPacked(q) = &linear.base {
                // Off, every such weight follows; on, those the CPU's integer kernel takes.
                if q.set_int8(on) || !on {
                    n += 1;
                }
            }
        }
        n
    }

    /// The GGML block types the projections are stored in, each once, in layer order (empty:
    /// all dense).
    pub fn projection_block_types(&self) -> Vec<candle_core::quantized::GgmlDType> {
        let mut types = Vec::new();
        for t in self.projections().filter_map(Linear::block_type) {
            if !types.contains(&t) {
                types.push(t);
            }
        }
        types
    }

    /// Every projection of the blocks, named as in the checkpoint and in PEFT's
    /// `target_modules` (`model.layers.0.self_attn.q_proj`, `transformer.h.0.mlp.dense_h_to_4h`,
    /// …), for attaching adapters.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let n = Names::of(&self.spec);
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("{}.{i}", n.layers);
            match &mut l.qkv {
                Qkv::Split { q, k, v } => {
                    out.push((format!("{p}.{}", n.q), q));
                    out.push((format!("{p}.{}", n.k), k));
                    out.push((format!("{p}.{}", n.v), v));
                }
                Qkv::Fused(f) => out.push((format!("{p}.{}", n.q), f)),
            }
            out.push((format!("{p}.{}", n.o), &mut l.o));
            if let Some(gate) = &mut l.gate {
                out.push((format!("{p}.{}", n.gate), gate));
            }
            out.push((format!("{p}.{}", n.up), &mut l.up));
            out.push((format!("{p}.{}", n.down), &mut l.down));
        }
        out
    }
}

/// Training's fused-op inputs for one forward: the rotary angles as flat values (the masks are
/// [`Step::ranges`]).
struct Fused {
    angles: fused::Angles,
    /// The sliding layers' angles where their rotary base differs (Gemma 3).
    local_angles: Option<fused::Angles>,
}

/// What the blocks of one forward share ([`Decoder::prepare`]).
struct Step {
    cos: Tensor,
    sin: Tensor,
    /// The sliding layers' `(cos, sin)` where their rotary base differs.
    local: Option<(Tensor, Tensor)>,
    fused: Option<Fused>,
    /// The masks as ranges (full, sliding) in place of the dense ones: training, and an
    /// inference prefill, on the CPU in f32 without ALiBi.
    ranges: Option<(flash::Visible, Option<flash::Visible>)>,
    full_mask: Option<Tensor>,
    window_mask: Option<Tensor>,
    start: usize,
    total: usize,
}

/// A layer's mask: dense and additive (or none), or each query's visible keys.
#[derive(Clone, Copy)]
enum Mask<'a> {
    Dense(Option<&'a Tensor>),
    Ranges(&'a flash::Visible),
}

/// The rotary angles `[rows, new, hd/2]` for one forward, and their fused form when training
/// on the CPU.
#[derive(Clone, Copy)]
struct Rotary<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    fused: Option<&'a Fused>,
}

/// Inverse frequencies as transformers computes them for each rope type (in f32).
pub fn inv_freq(rope: &Rope, head_dim: usize) -> Vec<f32> {
    let base: Vec<f32> =
        (0..head_dim / 2).map(|i| 1.0 / (rope.theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    match rope.scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let (factor, low, high, old) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32, old as f32);
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
        }
    }
}

/// Each head's ALiBi slope, as the family computes it (in f32).
pub fn alibi_slopes(alibi: Alibi, heads: usize) -> Vec<f32> {
    match alibi {
        Alibi::Mpt { max_bias } => {
            // 2^-(i·max/n), i = 1..n, over the next power of two n; fewer heads take the odd
            // ones, then the even ones.
            let n = heads.next_power_of_two();
            let step = (max_bias / n as f64) as f32;
            let all: Vec<f32> = (1..=n).map(|i| 1.0 / 2f32.powf(i as f32 * step)).collect();
            if n == heads {
                return all;
            }
            all.iter().skip(1).step_by(2).chain(all.iter().step_by(2)).take(heads).copied().collect()
        }
        Alibi::Falcon => {
            // Bloom's: base^i over the power of two p at or below the heads, then the odd
            // powers of the next power of two's base for the rest.
            let p = 1usize << (usize::BITS - 1 - heads.max(1).leading_zeros());
            let base_of = |p: usize| 2f32.powf(-(2f32.powf(-((p as f32).log2() - 3.0))));
            let base = base_of(p);
            let mut slopes: Vec<f32> = (1..=p).map(|i| base.powi(i as i32)).collect();
            if p != heads {
                let extra = base_of(2 * p);
                slopes.extend((0..p.min(heads - p)).map(|j| extra.powi(2 * j as i32 + 1)));
            }
            slopes
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        RmsNorm::forward(self, x, Pass::Inference)
    }
}
