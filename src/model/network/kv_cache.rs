//! The key/value cache of a batch's rows: each layer's keys and values in buffers that grow by
//! [`KV_STEP`] slots, each row's left padding, and the rows taken apart and joined again as a
//! continuous batch changes.

use candle_core::{DType, Result, Tensor};

/// Slots a key/value buffer grows by: capacity is the slots needed rounded up to this, not to a
/// power of two (which left 40 rows of 2,100 slots holding 4,096, 7.5 GB of cache, on the
/// default model).
pub const KV_STEP: usize = 256;

/// One layer's keys and values, `[rows, kv_heads, capacity, head_dim]`; slots from `Cache::len`
/// on are free. Appending writes in place; the buffer grows by [`KV_STEP`] slots (or more) when full.
#[derive(Debug, Clone)]
pub(super) struct Kv {
    pub(super) k: Tensor,
    pub(super) v: Tensor,
}

impl Kv {
    pub(super) fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    /// Writes `k`/`v` at slot `at`, growing the buffers first if needed.
    pub(super) fn append(&mut self, k: &Tensor, v: &Tensor, at: usize) -> Result<()> {
        let needed = at + k.dim(2)?;
        if needed > self.capacity() {
            let capacity = needed.next_multiple_of(KV_STEP);
            self.k = grow(&self.k, at, capacity)?;
            self.v = grow(&self.v, at, capacity)?;
        }
        self.k.slice_set(k, 2, at)?;
        self.v.slice_set(v, 2, at)
    }

    pub(super) fn first(k: &Tensor, v: &Tensor) -> Result<Kv> {
        let used = k.dim(2)?;
        let capacity = used.next_multiple_of(KV_STEP).max(KV_STEP);
        Ok(Kv { k: grow(k, used, capacity)?, v: grow(v, used, capacity)? })
    }
}

/// A buffer of `capacity` slots holding the first `used` slots of `old`.
fn grow(old: &Tensor, used: usize, capacity: usize) -> Result<Tensor> {
    let (rows, heads, _, dim) = old.dims4()?;
    let new = Tensor::zeros((rows, heads, capacity, dim), old.dtype(), old.device())?;
    if used > 0 {
        new.slice_set(&old.narrow(2, 0, used)?.contiguous()?, 2, 0)?;
    }
    Ok(new)
}

/// Keys and values of every layer for the rows of a batch, and each row's left padding.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    pub(super) layers: Vec<Option<Kv>>,
    /// Padding slots at the start of each row.
    pub pad: Vec<usize>,
    /// Slots filled so far (padding included), the same for every row.
    pub len: usize,
    /// The type keys and values are kept in for inference (none: the model's). f16 halves what
    /// a decoding step reads; attention widens it back to f32.
    pub store: Option<DType>,
}

impl Cache {
    pub fn new(num_layers: usize, pad: Vec<usize>) -> Cache {
        Cache { layers: vec![None; num_layers], pad, len: 0, store: None }
    }

    /// The same cache keeping its keys and values in `store` (none: the model's type); what it
    /// holds already is converted.
    pub fn stored_as(mut self, store: Option<DType>) -> Result<Cache> {
        if let Some(d) = store {
            for kv in self.layers.iter_mut().flatten() {
                if kv.k.dtype() != d {
                    *kv = Kv { k: kv.k.to_dtype(d)?, v: kv.v.to_dtype(d)? };
                }
            }
        }
        self.store = store;
        Ok(self)
    }

    pub fn rows(&self) -> usize {
        self.pad.len()
    }

    /// Keeps only the rows `keep` (in that order), then drops padding columns no row needs.
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        if keep.len() == self.pad.len() && keep.iter().enumerate().all(|(i, &k)| i == k) {
            return Ok(());
        }
        let device = self.layers.iter().flatten().next().map(|kv| kv.k.device().clone());
        self.pad = keep.iter().map(|&i| self.pad[i]).collect();
        let Some(device) = device else { return Ok(()) };
        let index = Tensor::new(keep.iter().map(|&i| i as u32).collect::<Vec<_>>(), &device)?;
        let trim = self.pad.iter().copied().min().unwrap_or(0);
        for kv in self.layers.iter_mut().flatten() {
            let capacity = kv.capacity();
            let (mut k, mut v) = (kv.k.index_select(&index, 0)?, kv.v.index_select(&index, 0)?);
            if trim > 0 {
                // Shift the slots left by the padding no row needs any more.
                k = grow(&k.narrow(2, trim, capacity - trim)?.contiguous()?, self.len - trim, capacity)?;
                v = grow(&v.narrow(2, trim, capacity - trim)?.contiguous()?, self.len - trim, capacity)?;
            }
            *kv = Kv { k, v };
        }
        for p in &mut self.pad {
            *p -= trim;
        }
        self.len -= trim;
        Ok(())
    }
}

impl Cache {
    /// Appends `other`'s rows after this cache's (continuous batching: rows prefilled apart
    /// join the rows decoding). The shorter side is padded on the left so that every row ends
    /// at the same slot; a row's positions follow its padding, so nothing is recomputed. One
    /// layer is copied at a time: the extra memory is one layer's worth.
    pub fn join(&mut self, other: Cache) -> Result<()> {
        if other.rows() == 0 {
            return Ok(());
        }
        if self.rows() == 0 {
            *self = other;
            return Ok(());
        }
        let len = self.len.max(other.len);
        let (shift_a, shift_b) = (len - self.len, len - other.len);
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            let (Some(a), Some(b)) = (mine.as_ref(), theirs) else {
                candle_core::bail!("a cache to join has a layer nothing was run through")
            };
            let side = |t: &Tensor, used: usize, shift: usize| -> Result<Tensor> {
                let body = t.narrow(2, 0, used)?;
                if shift == 0 {
                    return Ok(body);
                }
                let (rows, heads, _, dim) = t.dims4()?;
                let pad = Tensor::zeros((rows, heads, shift, dim), t.dtype(), t.device())?;
                Tensor::cat(&[&pad, &body], 2)
            };
            // Rows stored in another type (a prefix kept by another call) take this cache's.
            let b = Kv { k: b.k.to_dtype(a.k.dtype())?, v: b.v.to_dtype(a.v.dtype())? };
            let k = Tensor::cat(&[side(&a.k, self.len, shift_a)?, side(&b.k, other.len, shift_b)?], 0)?;
            let v = Tensor::cat(&[side(&a.v, self.len, shift_a)?, side(&b.v, other.len, shift_b)?], 0)?;
            *mine = Some(Kv::first(&k, &v)?);
        }
        self.pad = self.pad.iter().map(|p| p + shift_a).chain(other.pad.iter().map(|p| p + shift_b)).collect();
        self.len = len;
        Ok(())
    }

    /// Slots each row's buffers hold (the length they grow to in steps of [`KV_STEP`]).
    pub fn capacity(&self) -> usize {
        self.layers.iter().flatten().next().map_or(0, Kv::capacity)
    }
}

/// One cache row's keys and values for its first `len` tokens (padding left out): per layer
/// `[1, kv_heads, len, head_dim]`. What a prefix cache keeps between calls.
#[derive(Debug, Clone)]
pub struct RowKv {
    layers: Vec<(Tensor, Tensor)>,
    pub len: usize,
}

impl RowKv {
    /// The memory its tensors hold.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()).sum()
    }
}

impl Cache {
    /// Row `row`'s keys and values over its tokens (the slots after its padding).
    pub fn row_kv(&self, row: usize) -> Result<RowKv> {
        let pad = self.pad[row];
        let len = self.len - pad;
        let mut layers = Vec::with_capacity(self.layers.len());
        for kv in &self.layers {
            let Some(kv) = kv else { candle_core::bail!("the cache has a layer nothing was run through") };
            let take = |t: &Tensor| t.narrow(0, row, 1)?.narrow(2, pad, len)?.contiguous();
            layers.push((take(&kv.k)?, take(&kv.v)?));
        }
        Ok(RowKv { layers, len })
    }

    /// A cache whose row i holds the first `take_i` tokens of its `RowKv` (none where it has
    /// none), left-padded so that every row ends at the same slot. At least one row must take
    /// some tokens (it gives the layers' shapes).
    pub fn from_rows(rows: &[(Option<&RowKv>, usize)]) -> Result<Cache> {
        let len = rows.iter().map(|r| r.1).max().unwrap_or(0);
        let Some(shape) = rows.iter().find_map(|r| r.0.filter(|_| r.1 > 0)) else {
            candle_core::bail!("no row takes anything from a stored prefix")
        };
        let mut layers = Vec::with_capacity(shape.layers.len());
        for l in 0..shape.layers.len() {
            let (mut ks, mut vs) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
            for &(kv, take) in rows {
                let part = |which: fn(&(Tensor, Tensor)) -> &Tensor| -> Result<Tensor> {
                    let like = which(&shape.layers[l]);
                    let (_, heads, _, dim) = like.dims4()?;
                    let pad = Tensor::zeros((1, heads, len - take, dim), like.dtype(), like.device())?;
                    // Every row in the type of the first (the one giving the shapes).
                    let part = |kv: &RowKv| which(&kv.layers[l]).narrow(2, 0, take)?.to_dtype(like.dtype());
                    match kv.filter(|_| take > 0) {
                        Some(kv) if kv.len < take => {
                            candle_core::bail!("a stored prefix of {} tokens asked for {take}", kv.len)
                        }
                        Some(kv) if take == len => part(kv),
                        Some(kv) => Tensor::cat(&[&pad, &part(kv)?], 2),
                        None => Ok(pad),
                    }
                };
                ks.push(part(|p| &p.0)?);
                vs.push(part(|p| &p.1)?);
            }
            layers.push(Some(Kv::first(&Tensor::cat(&ks, 0)?, &Tensor::cat(&vs, 0)?)?));
        }
        let store = shape.layers.first().map(|(k, _)| k.dtype());
        Ok(Cache { layers, pad: rows.iter().map(|r| len - r.1).collect(), len, store })
    }
}
