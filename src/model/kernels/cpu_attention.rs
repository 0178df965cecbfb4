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

use candle_core::{DType, Result, Storage, Tensor};
use rayon::prelude::*;

use super::packed::Kernel;
use super::panels::Out;

/// New positions up to which [`attend`] is used; larger (prefill) goes through GEMMs.
pub const MAX_NEW: usize = 16;

/// Whether [`attend`] takes these: f32 on the CPU, at most [`MAX_NEW`] new positions.
pub fn usable(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32 && q.dims().len() == 4 && q.dims()[2] <= MAX_NEW
}

/// The f32 values of a CPU storage, whole (a view's layout says where its values lie); `op`
/// names the caller in the error.
pub(super) fn values<'a>(op: &str, s: &'a Storage) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => Ok(v),
        _ => candle_core::bail!("{op}: f32 on the CPU only"),
    }
}

/// A key or value cache's storage: f32, or f16 widened as it is read.
#[derive(Clone, Copy)]
pub(super) enum Src<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

impl<'a> Src<'a> {
    /// A CPU storage in f32 or f16, whole; `op` names the caller in the error.
    pub fn of(op: &str, s: &'a Storage) -> Result<Src<'a>> {
        match s {
            Storage::Cpu(candle_core::CpuStorage::F32(v)) => Ok(Src::F32(v)),
            Storage::Cpu(candle_core::CpuStorage::F16(v)) => Ok(Src::F16(v)),
            _ => candle_core::bail!("{op}: a key/value cache in f32 or f16 on the CPU only"),
        }
    }

    fn values(&self) -> usize {
        match self {
            Src::F32(v) => v.len(),
            Src::F16(v) => v.len(),
        }
    }

    /// Slots `lo..total` of the vectors from `base` (`step` apart, `hd` long) as f32: in place
    /// when f32, else widened into `buf` (`total · hd`, slot j at `j · hd`). Returns the values
    /// with the base and step to read them by.
    fn slots<'b>(
        self,
        base: usize,
        step: usize,
        (lo, total, hd): (usize, usize, usize),
        buf: &'b mut Vec<f32>,
    ) -> (&'b [f32], usize, usize)
    where
        'a: 'b,
    {
        use half::slice::HalfFloatSliceExt;
        match self {
            Src::F32(v) => (v, base, step),
            Src::F16(v) => {
                buf.resize(total * hd, 0.0);
                if step == hd {
                    v[base + lo * hd..base + total * hd].convert_to_f32_slice(&mut buf[lo * hd..total * hd]);
                } else {
                    for j in lo..total {
                        v[base + j * step..][..hd].convert_to_f32_slice(&mut buf[j * hd..][..hd]);
                    }
                }
                (buf, 0, hd)
            }
        }
    }
}

/// Where one (row, head)'s vectors start in a 4-d view's storage, and the step between its
/// tokens (the view's strides); head vectors are contiguous.
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    pub start: usize,
    pub row: usize,
    pub head: usize,
    pub step: usize,
}

impl Place {
    /// The place of a `[rows, heads, tokens, hd]` view; refused unless its head vectors are
    /// contiguous.
    pub fn of(op: &str, l: &candle_core::Layout) -> Result<Place> {
        let st = l.stride();
        if st.len() != 4 || st[3] != 1 {
            candle_core::bail!("{op}: head vectors must be contiguous")
        }
        Ok(Place { start: l.start_offset(), row: st[0], head: st[1], step: st[2] })
    }

    pub fn at(&self, row: usize, head: usize) -> usize {
        self.start + row * self.row + head * self.head
    }

    /// One past the last value a call over `rows × heads × tokens` vectors of `hd` reads.
    pub fn end(&self, rows: usize, heads: usize, tokens: usize, hd: usize) -> usize {
        if rows == 0 || heads == 0 || tokens == 0 {
            return self.start;
        }
        self.at(rows - 1, heads - 1) + (tokens - 1) * self.step + hd
    }
}

/// `Σ a·b` in 16 lanes (vectorised under the callers' target features).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        let (x, y): (&[f32; 16], &[f32; 16]) = (x.try_into().expect("16"), y.try_into().expect("16"));
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    // A tree, not a chain of 15 dependent adds.
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
        width /= 2;
    }
    lanes[0] + tail
}

/// Everything a task reads, and where it writes.
struct Ctx<'a> {
    q: &'a [f32],
    k: Src<'a>,
    v: Src<'a>,
    mask: Option<&'a [f32]>,
    /// Where the cache views' vectors lie.
    k_at: Place,
    v_at: Place,
    nh: usize,
    rep: usize,
    new: usize,
    total: usize,
    hd: usize,
    scale: f32,
    out: Out,
}

/// The query heads of key/value head `task % kv_heads` in row `task / kv_heads`, every new
/// position: each cached key and value is read once for all the heads that share it.
#[inline(always)]
fn group(c: &Ctx, task: usize, dot: impl Fn(&[f32], &[f32]) -> f32) {
    let nkv = c.nh / c.rep;
    let (row, kv) = (task / nkv, task % nkv);
    let (hd, rep, total) = (c.hd, c.rep, c.total);
    // Slots before `lo` are hidden from every new position (left padding): never read.
    let lo = c.mask.map_or(0, |m| {
        (0..c.new)
            .map(|t| {
                m[(row * c.new + t) * total..][..total].iter().position(|&b| b != f32::NEG_INFINITY).unwrap_or(total)
            })
            .min()
            .unwrap_or(0)
    });
    let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
    let (keys, kb, kstep) = c.k.slots(c.k_at.at(row, kv), c.k_at.step, (lo, total, hd), &mut kbuf);
    let (values, vb, vstep) = c.v.slots(c.v_at.at(row, kv), c.v_at.step, (lo, total, hd), &mut vbuf);
    // Scores then weights, `rep × total`; output sums `rep × hd`.
    let mut p = vec![0f32; rep * total];
    let mut acc = vec![0f32; rep * hd];
    let mut sums = vec![0f32; rep];
    for t in 0..c.new {
        let q = |r: usize| &c.q[((row * c.nh + kv * rep + r) * c.new + t) * hd..][..hd];
        let m = c.mask.map(|m| &m[(row * c.new + t) * total..][..total]);
        for j in 0..total {
            let bias = m.map_or(0.0, |m| m[j]);
            // A hidden slot (a row's left padding, most of a short row's cache when it decodes
            // beside long ones) is not read at all: its weight is 0 whatever its key.
            if bias == f32::NEG_INFINITY {
                for r in 0..rep {
                    p[r * total + j] = f32::NEG_INFINITY;
                }
                continue;
            }
            let key = &keys[kb + j * kstep..][..hd];
            for r in 0..rep {
                p[r * total + j] = dot(q(r), key) * c.scale + bias;
            }
        }
        for (r, s) in sums.iter_mut().enumerate() {
            let p = &mut p[r * total..][..total];
            let max = p.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            *s = 0.0;
            for v in p.iter_mut() {
                *v = (*v - max).exp();
                *s += *v;
            }
        }
        acc.iter_mut().for_each(|a| *a = 0.0);
        for j in 0..total {
            let value = &values[vb + j * vstep..][..hd];
            for r in 0..rep {
                let w = p[r * total + j];
                if w != 0.0 {
                    for (a, x) in acc[r * hd..][..hd].iter_mut().zip(value) {
                        *a += w * x;
                    }
                }
            }
        }
        for r in 0..rep {
            let inv = 1.0 / sums[r];
            let h = kv * rep + r;
            // SAFETY: (row, t, h) belongs to this task alone; the slice lies inside the output.
            let o = unsafe { std::slice::from_raw_parts_mut(c.out.at(((row * c.new + t) * c.nh + h) * hd), hd) };
            for (o, a) in o.iter_mut().zip(&acc[r * hd..][..hd]) {
                *o = a * inv;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn group_avx512(c: &Ctx, task: usize) {
    use std::arch::x86_64::*;
    group(c, task, |a, b| {
        let n = a.len().min(b.len());
        let whole = n / 16 * 16;
        // SAFETY: every load reads 16 floats below `whole` ≤ both lengths.
        let mut acc = _mm512_setzero_ps();
        for i in (0..whole).step_by(16) {
            acc =
                unsafe { _mm512_fmadd_ps(_mm512_loadu_ps(a.as_ptr().add(i)), _mm512_loadu_ps(b.as_ptr().add(i)), acc) };
        }
        let tail: f32 = a[whole..n].iter().zip(&b[whole..n]).map(|(x, y)| x * y).sum();
        _mm512_reduce_add_ps(acc) + tail
    })
}

/// [`group`] for head sizes of 64, 128 or 256 with AVX-512: scores for 16 keys at a time summed
/// in one transposing reduction instead of one horizontal sum each, the softmax's exponentials
/// in vectors, an f16 cache widened as it is loaded (no copy).
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    use super::{Ctx, Src};

    /// Whether [`group`] takes heads of `hd`.
    pub fn takes(hd: usize) -> bool {
        matches!(hd, 64 | 128 | 256)
    }

    /// 16 values from element `i` of an f32 or f16 (`HALF`) buffer.
    #[inline(always)]
    unsafe fn load<const HALF: bool>(base: *const u8, i: usize) -> __m512 {
        // SAFETY: the caller keeps `i + 16` within the buffer.
        unsafe {
            if HALF {
                _mm512_cvtph_ps(_mm256_loadu_si256((base as *const u16).add(i) as *const __m256i))
            } else {
                _mm512_loadu_ps((base as *const f32).add(i))
            }
        }
    }

    /// Where key `i` of a block goes so that [`sum16`] puts its sum in lane `i`.
    const SLOT: [usize; 16] = {
        let mut s = [0; 16];
        let mut i = 0;
        while i < 16 {
            s[i] = 4 * (i % 4) + i / 4;
            i += 1;
        }
        s
    };

    /// The 16 lane sums of `v` as one vector, `v[SLOT[i]]`'s in lane i: halves, then quarters
    /// of pairs added across 128-bit lanes, then a 4×4 transpose-add inside them.
    #[inline(always)]
    unsafe fn sum16(v: &[__m512; 16]) -> __m512 {
        let mut w = [_mm512_setzero_ps(); 8];
        for (i, w) in w.iter_mut().enumerate() {
            let (a, b) = (v[2 * i], v[2 * i + 1]);
            *w = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b));
        }
        let mut x = [_mm512_setzero_ps(); 4];
        for (m, x) in x.iter_mut().enumerate() {
            let (a, b) = (w[2 * m], w[2 * m + 1]);
            *x = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b));
        }
        let y01 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
        let y23 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
        _mm512_add_ps(_mm512_shuffle_ps::<0x44>(y01, y23), _mm512_shuffle_ps::<0xEE>(y01, y23))
    }

    /// The task's (row, key/value head) for a cache of `HALF` (f16) or f32 values, heads of
    /// `16 · CH`.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const HALF: bool, const CH: usize>(c: &Ctx, task: usize, k: *const u8, v: *const u8) {
        let nkv = c.nh / c.rep;
        let (row, kv) = (task / nkv, task % nkv);
        let (kb, vb) = (c.k_at.at(row, kv), c.v_at.at(row, kv));
        let (ks, vs) = (c.k_at.step, c.v_at.step);
        let (hd, rep, total, new) = (c.hd, c.rep, c.total, c.new);
        let mut p = vec![0f32; rep * total];
        let mut acc = vec![[_mm512_setzero_ps(); CH]; rep];
        let mut qv = vec![[_mm512_setzero_ps(); CH]; rep];
        let scale = _mm512_set1_ps(c.scale);
        let mut block = [0f32; 16];
        for t in 0..new {
            let m = c.mask.map(|m| &m[(row * new + t) * total..][..total]);
            // Slots before `lo` (left padding) are never read.
            let lo = m.map_or(0, |m| m.iter().position(|&b| b != f32::NEG_INFINITY).unwrap_or(total));
            for (r, qv) in qv.iter_mut().enumerate() {
                let q = c.q[((row * c.nh + kv * rep + r) * new + t) * hd..][..hd].as_ptr();
                for (ch, qv) in qv.iter_mut().enumerate() {
                    // SAFETY: `q` holds `hd = 16 · CH` values.
                    *qv = _mm512_mul_ps(unsafe { _mm512_loadu_ps(q.add(16 * ch)) }, scale);
                }
            }
            // Scores, 16 keys at a time.
            let mut j0 = lo / 16 * 16;
            while j0 < total {
                let n = (total - j0).min(16);
                for (r, qv) in qv.iter().enumerate() {
                    let mut lanes = [_mm512_setzero_ps(); 16];
                    for jj in 0..n {
                        let key = kb + (j0 + jj) * ks;
                        let mut a = _mm512_setzero_ps();
                        for (ch, qv) in qv.iter().enumerate() {
                            // SAFETY: attend_with checked that every key's `hd` values lie in
                            // the storage.
                            a = _mm512_fmadd_ps(*qv, unsafe { load::<HALF>(k, key + 16 * ch) }, a);
                        }
                        lanes[SLOT[jj]] = a;
                    }
                    // SAFETY: `block` holds 16 floats.
                    unsafe { _mm512_storeu_ps(block.as_mut_ptr(), sum16(&lanes)) };
                    let out = &mut p[r * total + j0..][..n];
                    match m {
                        Some(m) => {
                            for ((o, &s), &b) in out.iter_mut().zip(&block).zip(&m[j0..j0 + n]) {
                                *o = s + b;
                            }
                        }
                        None => out.copy_from_slice(&block[..n]),
                    }
                }
                j0 += 16;
            }
            // Weights: e^(s − max), and their sums.
            let mut sums = [0f32; 64];
            for (r, sum) in sums.iter_mut().enumerate().take(rep) {
                let p = &mut p[r * total + lo..(r + 1) * total];
                let max = p.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                *sum = super::super::vexp::exp_shift(p, max);
            }
            // Values: 16 slots at a time for every query head, each head's sums in registers.
            for a in acc.iter_mut() {
                *a = [_mm512_setzero_ps(); CH];
            }
            let mut j0 = lo;
            while j0 < total {
                let end = (j0 + 16).min(total);
                for (r, a) in acc.iter_mut().enumerate() {
                    let mut regs = *a;
                    for j in j0..end {
                        let w = p[r * total + j];
                        if w == 0.0 {
                            continue;
                        }
                        let w = _mm512_set1_ps(w);
                        let value = vb + j * vs;
                        for (ch, reg) in regs.iter_mut().enumerate() {
                            // SAFETY: as for the keys.
                            *reg = _mm512_fmadd_ps(w, unsafe { load::<HALF>(v, value + 16 * ch) }, *reg);
                        }
                    }
                    *a = regs;
                }
                j0 = end;
            }
            for (r, a) in acc.iter().enumerate() {
                let inv = _mm512_set1_ps(1.0 / sums[r]);
                let h = kv * rep + r;
                // SAFETY: (row, t, h) belongs to this task alone; the `hd` values lie inside the
                // output.
                let o = c.out.at(((row * new + t) * c.nh + h) * hd);
                for (ch, reg) in a.iter().enumerate() {
                    unsafe { _mm512_storeu_ps(o.add(16 * ch), _mm512_mul_ps(*reg, inv)) };
                }
            }
        }
    }

    /// The task through the instance for this cache and head size; false when there is none
    /// (the caller runs the general kernel).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    pub unsafe fn group(c: &Ctx, task: usize) -> bool {
        if c.rep > 64 {
            return false;
        }
        let (k, v) = (c.k, c.v);
        macro_rules! go {
            ($half:expr, $k:expr, $v:expr) => {
                // SAFETY: the caller's promise.
                unsafe {
                    match c.hd {
                        64 => run::<$half, 4>(c, task, $k, $v),
                        128 => run::<$half, 8>(c, task, $k, $v),
                        256 => run::<$half, 16>(c, task, $k, $v),
                        _ => return false,
                    }
                }
            };
        }
        match (k, v) {
            (Src::F32(k), Src::F32(v)) => go!(false, k.as_ptr() as *const u8, v.as_ptr() as *const u8),
            (Src::F16(k), Src::F16(v)) => go!(true, k.as_ptr() as *const u8, v.as_ptr() as *const u8),
            _ => return false,
        }
        true
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_avx2(c: &Ctx, task: usize) {
    group(c, task, dot)
}

/// `q` `[rows, heads, new, hd]`; `k`, `v` `[rows, kv_heads, total, hd]` (strided, head vectors
/// contiguous); `mask` `[rows, 1, new, total]` additive (0 or −∞) or none. Returns
/// `[rows, new, heads · hd]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32, mask: Option<&Tensor>) -> Result<Tensor> {
    attend_with(Kernel::detect(), q, k, v, scale, mask)
}

/// [`attend`] through a given kernel (the tests run each one this CPU has).
fn attend_with(
    kernel: Kernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (rows, nh, new, hd) = q.dims4()?;
    let (k_rows, nkv, total, k_hd) = k.dims4()?;
    if k_rows != rows || k_hd != hd || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!("cpu attention: q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims())
    }
    let q = q.contiguous()?;
    let mask = mask.map(Tensor::contiguous).transpose()?;
    if let Some(m) = &mask {
        if m.dims() != [rows, 1, new, total] {
            candle_core::bail!("cpu attention: mask {:?} for [{rows}, 1, {new}, {total}]", m.dims())
        }
    }
    let mut out = vec![0f32; rows * new * nh * hd];
    {
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let ms = mask.as_ref().map(|m| m.storage_and_layout());
        const OP: &str = "cpu attention";
        let (kd, vd) = (Src::of(OP, &ks)?, Src::of(OP, &vs)?);
        let (k_at, v_at) = (Place::of(OP, kl)?, Place::of(OP, vl)?);
        // The last element a task reads must lie inside the storage.
        if k_at.end(rows, nkv, total, hd) > kd.values() || v_at.end(rows, nkv, total, hd) > vd.values() {
            candle_core::bail!("cpu attention: cache views reach past their storage")
        }
        let c = Ctx {
            q: &values(OP, &qs)?[ql.start_offset()..],
            k: kd,
            v: vd,
            mask: match &ms {
                Some((s, l)) => Some(&values(OP, s)?[l.start_offset()..]),
                None => None,
            },
            k_at,
            v_at,
            nh,
            rep: nh / nkv,
            new,
            total,
            hd,
            scale,
            out: Out(out.as_mut_ptr()),
        };
        (0..rows * nkv).into_par_iter().for_each(|task| match kernel {
            // SAFETY: callers pass detect()'s kernel or one of runnable()'s: this CPU runs it.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe {
                if !(wide::takes(hd) && wide::group(&c, task)) {
                    group_avx512(&c, task)
                }
            },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { group_avx2(&c, task) },
            Kernel::Portable => group(&c, task, dot),
        });
    }
    Tensor::from_vec(out, (rows, new, nh * hd), q.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    #[test]
    fn every_kernel_matches_gemm_softmax_gemm_on_a_strided_cache() {
        let (rows, nh, nkv) = (3, 6, 2);
        // Head sizes the general kernel takes (40) and AVX-512's 16-key blocks (64), with
        // partial blocks and left padding.
        for (hd, new, total) in [(40, 1usize, 7usize), (40, 3, 9), (64, 1, 7), (64, 2, 37), (64, 1, 48)] {
            let cap = total + 3;
            let q = Tensor::from_vec(values(rows * nh * new * hd, 1), (rows, nh, new, hd), &Device::Cpu).unwrap();
            // A cache of `cap` slots of which `total` are used, as `Kv` narrows it.
            let cache = |seed| {
                Tensor::from_vec(values(rows * nkv * cap * hd, seed), (rows, nkv, cap, hd), &Device::Cpu)
                    .unwrap()
                    .narrow(2, 0, total)
                    .unwrap()
            };
            for half in [false, true] {
                // An f16 cache is compared with the f32 products of its own values.
                let (k, v) = match half {
                    false => (cache(2), cache(3)),
                    true => (cache(2).to_dtype(DType::F16).unwrap(), cache(3).to_dtype(DType::F16).unwrap()),
                };
                let (kf, vf) = (k.to_dtype(DType::F32).unwrap(), v.to_dtype(DType::F32).unwrap());
                let mask: Vec<f32> = (0..rows * new * total)
                    .map(|i| {
                        let (row, j) = (i / (new * total), i % total);
                        // Row 0 is left-padded by two slots, row 2 by 18.
                        let pad = [2, 0, 18.min(total - 1)][row];
                        let hidden = (j % 4 == 3 && j != total - 1) || j < pad;
                        if hidden {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (rows, 1, new, total), &Device::Cpu).unwrap();

                let rep = nh / nkv;
                let qg = q.reshape((rows, nkv, rep * new, hd)).unwrap();
                let s = (qg.matmul(&kf.t().unwrap()).unwrap() * 0.3)
                    .unwrap()
                    .reshape((rows, nkv, rep, new, total))
                    .unwrap();
                let s = s
                    .broadcast_add(&mask.unsqueeze(2).unwrap())
                    .unwrap()
                    .reshape((rows, nkv, rep * new, total))
                    .unwrap();
                let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
                let want = p.matmul(&vf.contiguous().unwrap()).unwrap();
                let want = want
                    .reshape((rows, nh, new, hd))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((rows, new, nh * hd))
                    .unwrap();
                let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for kernel in Kernel::runnable() {
                    let got = attend_with(kernel, &q, &k, &v, 0.3, Some(&mask)).unwrap();
                    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                        assert!((a - b).abs() < 1e-5, "{kernel:?}, hd {hd}, new {new}, f16 {half} at {i}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
