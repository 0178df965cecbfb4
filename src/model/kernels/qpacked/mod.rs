//! `y = x Wᵀ` for a weight in one of the GGML block types real GGUF files carry (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), on the CPU, with f32 activations.
//!
//! Every one of these types stores, for each group of 16 or 32 consecutive inputs of an output
//! row, small integers `q` and a scale `d` (and for the "_1" and K types a minimum `m`), with
//! `w = d·q + m`. At load the blocks are decoded once into that common form — `q` as one `i8`
//! per weight, `d` and `m` as f32 per group — and laid out in panels of [`NR`] output columns
//! like [`super::packed`]: within a panel, input `k`'s [`NR`] quants sit back to back, then each
//! group's [`NR`] scales and minimums. The decoding is exact (the `i8`, the f16 scales widened to
//! f32 and the K types' 6-bit sub-scales multiplied out are the file's values); the product is
//! `Σ_g d_g · (Σ_{k∈g} q_k x_k) + m_g · (Σ_{k∈g} x_k)`, so no weight is ever dequantized and the
//! activations stay f32 (llama.cpp rounds them to 8 bits; candle's `QMatMul` too).
//!
//! One pass over each panel serves every row of `x` (up to a kernel's rows at a time: 8, or 6 with AVX2): at decode's few
//! rows the weights stream once per step. The per-group sums of `x` are computed once per call.
//! A weight costs one byte plus 8 bytes per group (1.25–1.5 bytes), against 0.56–1.06 in the
//! file: the price of a kernel with no bit-unpacking in its inner loop.
//!
//! Invariants: panels are zero beyond `out` (quants, scales and minimums), so the inner loop
//! needs no masks; only the final stores are masked.

use candle_core::quantized::{GgmlDType, QTensor};
use rayon::prelude::*;

use super::packed::Kernel;
use super::panels::{by_rows, for_panels, Out, NR};

mod blocks;
use blocks::{decode_block, layout};

/// Bytes of activations a block of rows may take (see [`QPacked::matmul_exact`]): under half
/// of a 1.25 MiB L2, with room for a panel's quants.
const ROW_BLOCK_BYTES: usize = 512 * 1024;

/// A `[out, in]` GGML weight decoded into panels of 8-bit quants with per-group scales.
pub struct QPacked {
    out: usize,
    inp: usize,
    /// Inputs per scale: 32, or 16 for Q6_K.
    group: usize,
    /// `panels × inp × NR`.
    q: Vec<i8>,
    /// `panels × groups × NR`.
    scale: Vec<f32>,
    /// `panels × groups × NR`; empty for the types without a minimum.
    min: Vec<f32>,
    dtype: GgmlDType,
    /// The quants in [`super::int8`]'s layout once int8 activations were asked for, and whether
    /// they are in use now (`matmul` rounds the activations to int8 while it is set).
    int8: std::sync::OnceLock<super::int8::Quads>,
    int8_on: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for QPacked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QPacked[{:?}, {}, {}]", self.dtype, self.out, self.inp)
    }
}

impl QPacked {
    /// Decodes and packs a `[out, in]` weight of a supported block type. `None` for any other
    /// type (or an input size that is not a whole number of blocks).
    pub fn new(t: &QTensor) -> candle_core::Result<Option<QPacked>> {
        let dtype = t.dtype();
        let Some((block, bytes, group)) = layout(dtype) else { return Ok(None) };
        let (out, inp) = t.shape().dims2()?;
        if inp == 0 || inp % block != 0 {
            return Ok(None);
        }
        let data = t.data()?;
        let row_bytes = inp / block * bytes;
        if data.len() != out * row_bytes {
            candle_core::bail!("a {dtype:?} weight [{out}, {inp}] has {} bytes, not {}", data.len(), out * row_bytes)
        }
        let groups = inp / group;
        let panels = out.div_ceil(NR);
        let has_min = matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_1 | GgmlDType::Q4K | GgmlDType::Q5K);
        let mut q = vec![0i8; panels * inp * NR];
        let mut scale = vec![0f32; panels * groups * NR];
        let mut min = vec![0f32; if has_min { panels * groups * NR } else { 0 }];
        let per_block = block / group;
        let mins: Vec<&mut [f32]> =
            if has_min { min.chunks_mut(groups * NR).collect() } else { (0..panels).map(|_| &mut [][..]).collect() };
        q.par_chunks_mut(inp * NR)
            .zip(scale.par_chunks_mut(groups * NR))
            .zip(mins.into_par_iter())
            .enumerate()
            .for_each(|(p, ((qp, sp), mp))| {
                let mut rq = vec![0i8; inp];
                let mut rd = vec![0f32; groups];
                let mut rm = vec![0f32; groups];
                for c in 0..(out - p * NR).min(NR) {
                    let row = &data[(p * NR + c) * row_bytes..][..row_bytes];
                    for (b, raw) in row.chunks_exact(bytes).enumerate() {
                        decode_block(
                            dtype,
                            raw,
                            &mut rq[b * block..][..block],
                            &mut rd[b * per_block..][..per_block],
                            &mut rm[b * per_block..][..per_block],
                        );
                    }
                    for (k, v) in rq.iter().enumerate() {
                        qp[k * NR + c] = *v;
                    }
                    for g in 0..groups {
                        sp[g * NR + c] = rd[g];
                        if !mp.is_empty() {
                            mp[g * NR + c] = rm[g];
                        }
                    }
                }
            });
        Ok(Some(QPacked {
            out,
            inp,
            group,
            q,
            scale,
            min,
            dtype,
            int8: std::sync::OnceLock::new(),
            int8_on: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    /// The GGML block type the weight came in.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    pub fn in_features(&self) -> usize {
        self.inp
    }

    /// Bytes held (quants, scales, minimums, and the int8 layout once made).
    pub fn size_in_bytes(&self) -> usize {
        self.q.len() + 4 * (self.scale.len() + self.min.len()) + self.int8.get().map_or(0, |q| q.size_in_bytes())
    }

    /// Rounds the activations to int8 in [`Self::matmul`] (integer products, as llama.cpp's Q8
    /// activations), or stops. The repacked quants are made the first time (as many bytes as
    /// the quants again) and kept.
    /// Returns whether the products now take int8 activations (off: false; on: unless this
    /// CPU's integer kernel leaves this weight to the exact products, [`super::int8::takes`]).
    pub fn set_int8(&self, on: bool) -> bool {
        if on {
            self.int8.get_or_init(|| super::int8::Quads::new(&self.q, self.inp, self.group));
        }
        self.int8_on.store(on, std::sync::atomic::Ordering::Relaxed);
        self.int8_weight().is_some_and(|w| super::int8::takes(&w))
    }

    fn int8_weight(&self) -> Option<super::int8::Weight<'_>> {
        if !self.int8_on.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        Some(super::int8::Weight {
            quads: self.int8.get()?,
            scale: &self.scale,
            min: &self.min,
            out: self.out,
            inp: self.inp,
            group: self.group,
        })
    }

    #[cfg(test)]
    pub(crate) fn matmul_int8_with(&self, kernel: super::int8::IntKernel, x: &[f32], rows: usize, y: &mut [f32]) {
        super::int8::matmul_with(kernel, &self.int8_weight().expect("set_int8(true) first"), x, rows, y)
    }

    fn groups(&self) -> usize {
        self.inp / self.group
    }

    /// Panel `p` decoded to f32 `[in][NR]` (output `p·NR + j` of input `i` at `i·NR + j`) into
    /// `dst`, resized to fit.
    pub fn panel(&self, p: usize, dst: &mut Vec<f32>) {
        let groups = self.groups();
        dst.resize(self.inp * NR, 0.0);
        let q = &self.q[p * self.inp * NR..(p + 1) * self.inp * NR];
        for (k, (d, q)) in dst.chunks_mut(NR).zip(q.chunks(NR)).enumerate() {
            let g = (p * groups + k / self.group) * NR;
            let scale = &self.scale[g..g + NR];
            if self.min.is_empty() {
                for ((d, &q), s) in d.iter_mut().zip(q).zip(scale) {
                    *d = s * q as f32;
                }
            } else {
                for (((d, &q), s), m) in d.iter_mut().zip(q).zip(scale).zip(&self.min[g..g + NR]) {
                    *d = s * q as f32 + m;
                }
            }
        }
    }

    /// Row `id` (< `out`) of the `[out, in]` weight as f32 into `dst` (`in` long): an embedding
    /// when the weight is a tied embedding.
    pub fn row(&self, id: usize, dst: &mut [f32]) {
        let groups = self.groups();
        let (p, c) = (id / NR, id % NR);
        let q = &self.q[p * self.inp * NR..];
        for (k, v) in dst.iter_mut().enumerate() {
            let g = (p * groups + k / self.group) * NR + c;
            let m = if self.min.is_empty() { 0.0 } else { self.min[g] };
            *v = self.scale[g] * q[k * NR + c] as f32 + m;
        }
    }

    /// `y = x Wᵀ` for a row-major `x` of `rows × in`, into `y` (`rows × out`, overwritten):
    /// exact on f32 activations, or with them rounded to int8 after [`Self::set_int8`].
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        match self.int8_weight() {
            Some(w) if super::int8::takes(&w) => super::int8::matmul(&w, x, rows, y),
            _ => self.matmul_exact(x, rows, y),
        }
    }

    /// [`Self::matmul`] on the f32 activations, whatever the int8 setting.
    pub fn matmul_exact(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        assert_eq!(x.len(), rows * self.inp, "x is not [{rows}, {}]", self.inp);
        assert_eq!(y.len(), rows * self.out, "y is not [{rows}, {}]", self.out);
        if rows == 0 || self.out == 0 {
            return;
        }
        let kernel = Kernel::detect();
        // Σ x over each group, for the minimums.
        let sums: Vec<f32> =
            if self.min.is_empty() { Vec::new() } else { x.chunks_exact(self.group).map(|g| g.iter().sum()).collect() };
        let y_out = Out(y.as_mut_ptr());
        // Rows go in blocks whose activations stay in a core's L2 while every panel passes over
        // them (a prefill's thousands of rows would otherwise stream from L3 once per panel).
        let mr = kernel.rows();
        let block = (ROW_BLOCK_BYTES / (self.inp * 4)).clamp(mr, 256) / mr * mr;
        for first in (0..rows).step_by(block) {
            let last = (first + block).min(rows);
            self.panels_over(kernel, x, &sums, y_out, first, last);
        }
    }

    /// Every panel of the weight over rows `first..last` of `x`, on the workers.
    fn panels_over(&self, kernel: Kernel, x: &[f32], sums: &[f32], y_out: Out, first: usize, last: usize) {
        let groups = self.groups();
        for_panels(self.out.div_ceil(NR), |p| {
            let tile = Tile {
                q: self.q[p * self.inp * NR..].as_ptr(),
                scale: self.scale[p * groups * NR..].as_ptr(),
                min: if self.min.is_empty() { std::ptr::null() } else { self.min[p * groups * NR..].as_ptr() },
                groups,
                group: self.group,
                inp: self.inp,
                cols: (self.out - p * NR).min(NR),
            };
            let mut r0 = first;
            while r0 < last {
                let mr = (last - r0).min(kernel.rows());
                let rt = RowTile {
                    x: x[r0 * self.inp..].as_ptr(),
                    sums: if sums.is_empty() { std::ptr::null() } else { sums[r0 * groups..].as_ptr() },
                    y: y_out.at(r0 * self.out + p * NR),
                    ldc: self.out,
                };
                unsafe { run_tile(kernel, mr, &tile, &rt) };
                r0 += mr;
            }
        });
    }
}

/// One panel: its quants, scales and minimums (null when the type has none).
struct Tile {
    q: *const i8,
    scale: *const f32,
    min: *const f32,
    groups: usize,
    group: usize,
    inp: usize,
    cols: usize,
}

/// Up to a kernel's rows ([`Kernel::rows`]) of `x`, their group sums and where their outputs go.
struct RowTile {
    x: *const f32,
    sums: *const f32,
    y: *mut f32,
    ldc: usize,
}

/// # Safety
/// The pointers cover one panel and `rows` rows as [`QPacked::matmul`] lays them out.
unsafe fn run_tile(kernel: Kernel, rows: usize, t: &Tile, r: &RowTile) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::tile(rows, t, r) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::tile(rows, t, r) },
        Kernel::Portable => unsafe { portable_tile(rows, t, r) },
    }
}

/// The reference kernel: plain loops, for other CPUs and to test the others against.
unsafe fn portable_tile(rows: usize, t: &Tile, r: &RowTile) {
    for row in 0..rows {
        let mut out = [0f32; NR];
        for g in 0..t.groups {
            let mut acc = [0f32; NR];
            for kk in 0..t.group {
                let k = g * t.group + kk;
                let a = unsafe { *r.x.add(row * t.inp + k) };
                let w = unsafe { std::slice::from_raw_parts(t.q.add(k * NR), NR) };
                for (s, q) in acc.iter_mut().zip(w) {
                    *s += a * *q as f32;
                }
            }
            let d = unsafe { std::slice::from_raw_parts(t.scale.add(g * NR), NR) };
            for (c, o) in out.iter_mut().enumerate() {
                *o += acc[c] * d[c];
            }
            if !t.min.is_null() {
                let m = unsafe { std::slice::from_raw_parts(t.min.add(g * NR), NR) };
                let s = unsafe { *r.sums.add(row * t.groups + g) };
                for (c, o) in out.iter_mut().enumerate() {
                    *o += s * m[c];
                }
            }
        }
        let dst = unsafe { std::slice::from_raw_parts_mut(r.y.add(row * r.ldc), t.cols) };
        dst.copy_from_slice(&out[..t.cols]);
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use super::super::panels::avx512::store_rows;
    use super::{RowTile, Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F present; the pointers as [`super::run_tile`] requires.
    pub(super) unsafe fn tile(rows: usize, t: &Tile, r: &RowTile) {
        unsafe { super::by_rows!(rows, rows_n(t, r)) }
    }

    /// Bytes ahead of the quants to prefetch: 10 % faster at one row than none (0.8–12 KiB
    /// measured alike with examples/qpacked.rs).
    const PREFETCH: usize = 2048;

    #[target_feature(enable = "avx512f")]
    unsafe fn rows_n<const R: usize>(t: &Tile, r: &RowTile) {
        let mut out = [[_mm512_setzero_ps(); 3]; R];
        unsafe {
            for g in 0..t.groups {
                let mut acc = [[_mm512_setzero_ps(); 3]; R];
                let k0 = g * t.group;
                let mut w = t.q.add(k0 * NR);
                for kk in 0..t.group {
                    _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH).cast());
                    let w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(w.cast())));
                    let w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(w.add(16).cast())));
                    let w2 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(w.add(32).cast())));
                    for (row, acc) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*r.x.add(row * t.inp + k0 + kk));
                        acc[0] = _mm512_fmadd_ps(x, w0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(x, w1, acc[1]);
                        acc[2] = _mm512_fmadd_ps(x, w2, acc[2]);
                    }
                    w = w.add(NR);
                }
                let s = t.scale.add(g * NR);
                let d = [_mm512_loadu_ps(s), _mm512_loadu_ps(s.add(16)), _mm512_loadu_ps(s.add(32))];
                for (o, a) in out.iter_mut().zip(&acc) {
                    for v in 0..3 {
                        o[v] = _mm512_fmadd_ps(a[v], d[v], o[v]);
                    }
                }
                if !t.min.is_null() {
                    let mp = t.min.add(g * NR);
                    let m = [_mm512_loadu_ps(mp), _mm512_loadu_ps(mp.add(16)), _mm512_loadu_ps(mp.add(32))];
                    for (row, o) in out.iter_mut().enumerate() {
                        let sx = _mm512_set1_ps(*r.sums.add(row * t.groups + g));
                        for v in 0..3 {
                            o[v] = _mm512_fmadd_ps(sx, m[v], o[v]);
                        }
                    }
                }
            }
            store_rows(&out, t.cols, r.y, r.ldc);
        }
    }
}

/// AVX2 + FMA (16 registers): thirds of a panel (16 columns), up to 6 rows at a time, so a
/// group's 12 accumulators, two weight vectors and a broadcast fit without spilling (4 rows of 24
/// columns needed 17 and more); the running outputs live in memory between groups.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{RowTile, Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and FMA present; the pointers as [`super::run_tile`] requires.
    pub(super) unsafe fn tile(rows: usize, t: &Tile, r: &RowTile) {
        let mut r0 = 0;
        while r0 < rows {
            let n = (rows - r0).min(crate::model::kernels::packed::AVX2_ROWS);
            let sub = RowTile {
                x: unsafe { r.x.add(r0 * t.inp) },
                sums: if r.sums.is_null() { r.sums } else { unsafe { r.sums.add(r0 * t.groups) } },
                y: unsafe { r.y.add(r0 * r.ldc) },
                ldc: r.ldc,
            };
            for c0 in [0, 16, 32] {
                if c0 >= t.cols {
                    break;
                }
                unsafe {
                    match n {
                        6 => third::<6>(t, &sub, c0),
                        5 => third::<5>(t, &sub, c0),
                        4 => third::<4>(t, &sub, c0),
                        3 => third::<3>(t, &sub, c0),
                        2 => third::<2>(t, &sub, c0),
                        _ => third::<1>(t, &sub, c0),
                    }
                }
            }
            r0 += n;
        }
    }

    /// The widened quants of 8 columns.
    #[inline(always)]
    unsafe fn widen(w: *const i8) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(w.cast()))) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn third<const R: usize>(t: &Tile, r: &RowTile, c0: usize) {
        // Each group: its sums in registers, then the outputs (in memory) take them times the
        // scales, and the minimums times the rows' sums — the AVX-512 kernel's order.
        let mut out = [[0f32; 16]; R];
        unsafe {
            for g in 0..t.groups {
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                let k0 = g * t.group;
                let mut w = t.q.add(k0 * NR + c0);
                let mut x = r.x.add(k0);
                for _ in 0..t.group {
                    let w0 = widen(w);
                    let w1 = widen(w.add(8));
                    for (row, acc) in acc.iter_mut().enumerate() {
                        let xb = _mm256_broadcast_ss(&*x.add(row * t.inp));
                        acc[0] = _mm256_fmadd_ps(xb, w0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(xb, w1, acc[1]);
                    }
                    w = w.add(NR);
                    x = x.add(1);
                }
                let s = t.scale.add(g * NR + c0);
                let d = [_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(8))];
                let m = (!t.min.is_null()).then(|| {
                    let mp = t.min.add(g * NR + c0);
                    [_mm256_loadu_ps(mp), _mm256_loadu_ps(mp.add(8))]
                });
                for (row, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
                    for v in 0..2 {
                        let p = o.as_mut_ptr().add(v * 8);
                        let mut y = _mm256_fmadd_ps(a[v], d[v], _mm256_loadu_ps(p));
                        if let Some(m) = m {
                            y = _mm256_fmadd_ps(_mm256_set1_ps(*r.sums.add(row * t.groups + g)), m[v], y);
                        }
                        _mm256_storeu_ps(p, y);
                    }
                }
            }
            let cols = (t.cols - c0).min(16);
            for (row, o) in out.iter().enumerate() {
                let dst = std::slice::from_raw_parts_mut(r.y.add(row * r.ldc + c0), cols);
                dst.copy_from_slice(&o[..cols]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::blocks::f16_to_f32;
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    /// The reference: candle's own dequantization of the blocks, then a plain f64 product.
    fn reference(t: &QTensor, x: &[f32], rows: usize) -> Vec<f32> {
        let (out, inp) = t.shape().dims2().unwrap();
        let w = t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..inp).map(|k| x[r * inp + k] as f64 * w[o * inp + k] as f64).sum::<f64>() as f32;
            }
        }
        y
    }

    const TYPES: [GgmlDType; 8] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    /// Training's input gradient `dy · W` straight from the panels equals the product with
    /// candle's dequantized weight, for every type and a ragged last panel.
    #[test]
    fn the_input_gradient_reads_the_panels_right() {
        for dtype in TYPES {
            let (out, inp, rows) = (70, 256, 5);
            let w = Tensor::from_vec(values(out * inp, 21), (out, inp), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let dense = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let packed = QPacked::new(&q).unwrap().expect("a supported type");
            let dy = values(rows * out, 22);
            let mut dx = vec![0f32; rows * inp];
            crate::model::kernels::fused::input_grad(&packed, &dy, rows, &mut dx);
            for r in 0..rows {
                for i in 0..inp {
                    let want: f64 = (0..out).map(|o| dy[r * out + o] as f64 * dense[o * inp + i] as f64).sum();
                    let got = dx[r * inp + i] as f64;
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{dtype:?} [{r}, {i}]: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn decoding_gives_candles_dequantized_values() {
        for dtype in TYPES {
            let (out, inp) = (50, 512);
            let w = Tensor::from_vec(values(out * inp, 5), (out, inp), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let want = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let packed = QPacked::new(&q).unwrap().expect("a supported type");
            let got = crate::model::network::linear::CpuWeight::values(&packed);
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                // d·q + m in one rounding here, two in candle.
                assert!((g - e).abs() <= 1e-6 * (1.0 + e.abs()), "{dtype:?} at {i}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn every_kernel_this_cpu_runs_matches_dequantize_then_multiply() {
        for dtype in TYPES {
            // A partial last panel, and row counts on both sides of a tile.
            for &(out, inp) in &[(70usize, 256usize), (5, 512), (96, 768)] {
                let w = Tensor::from_vec(values(out * inp, out as u64), (out, inp), &Device::Cpu).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let packed = QPacked::new(&q).unwrap().expect("a supported type");
                for rows in [1usize, 3, 8, 11] {
                    let x = values(rows * inp, rows as u64 + 100);
                    let want = reference(&q, &x, rows);
                    let groups = packed.groups();
                    let sums: Vec<f32> = x.chunks_exact(packed.group).map(|g| g.iter().sum()).collect();
                    for kernel in Kernel::runnable() {
                        let mut got = vec![f32::NAN; rows * out];
                        for p in 0..out.div_ceil(NR) {
                            let tile = Tile {
                                q: packed.q[p * inp * NR..].as_ptr(),
                                scale: packed.scale[p * groups * NR..].as_ptr(),
                                min: if packed.min.is_empty() {
                                    std::ptr::null()
                                } else {
                                    packed.min[p * groups * NR..].as_ptr()
                                },
                                groups,
                                group: packed.group,
                                inp,
                                cols: (out - p * NR).min(NR),
                            };
                            let mut r0 = 0;
                            while r0 < rows {
                                let mr = (rows - r0).min(kernel.rows());
                                let rt = RowTile {
                                    x: x[r0 * inp..].as_ptr(),
                                    sums: if packed.min.is_empty() {
                                        std::ptr::null()
                                    } else {
                                        sums[r0 * groups..].as_ptr()
                                    },
                                    y: unsafe { got.as_mut_ptr().add(r0 * out + p * NR) },
                                    ldc: out,
                                };
                                unsafe { run_tile(kernel, mr, &tile, &rt) };
                                r0 += mr;
                            }
                        }
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() <= 2e-4 * (1.0 + e.abs()),
                                "{kernel:?} {dtype:?} [{out}, {inp}] rows {rows} at {i}: {g} vs {e}"
                            );
                        }
                    }
                    let mut whole = vec![f32::NAN; rows * out];
                    packed.matmul(&x, rows, &mut whole);
                    for (i, (g, e)) in whole.iter().zip(&want).enumerate() {
                        assert!((g - e).abs() <= 2e-4 * (1.0 + e.abs()), "matmul {dtype:?} rows {rows} at {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn halves_convert_exactly() {
        for (bits, want) in
            [(0x3c00u16, 1.0f32), (0xc000, -2.0), (0x0001, 5.960_464_5e-8), (0x7bff, 65504.0), (0x0000, 0.0)]
        {
            assert_eq!(f16_to_f32(bits), want, "{bits:#x}");
        }
    }
}
