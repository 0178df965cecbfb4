//! Integer products for [`super::qpacked::QPacked`] weights on int8-quantized activations, as
//! llama.cpp multiplies its quantized weights by Q8 activations: opt-in (`int8_activations`),
//! because rounding the activations changes the numbers.
//!
//! Each row of `x` is cut into the weight's groups (32 inputs, 16 for Q6_K); a group is scaled
//! by `s = max|x| / 127` and rounded to integers `a` in −127..127, stored as `a + 128` (0..255):
//! the unsigned operand of VNNI's `vpdpbusd`, the weights' `i8` quants the signed one. Then
//! `Σ_k w_k x_k ≈ d·s·(Σ (a_k + 128) q_k − 128 Σ q_k) + m·s·Σ a_k`, with `Σ q_k` of each group
//! and column counted once at packing (`m`: the minimums of the "_1" and K types).
//!
//! The quants are repacked for the instruction: within a panel of [`NR`] columns, each group of
//! four consecutive inputs holds the column's four quants side by side (`[in/4][NR][4]`), so one
//! 64-byte load feeds sixteen columns four products each. Integer sums are exact, so every
//! kernel here gives the same result bit for bit as the portable one (the float steps after the
//! sums run in the same order).

use rayon::prelude::*;

use super::panels::{Out, NR};

/// Rows of `x` per micro-tile (three accumulators each, 24 of the 32 vector registers).
const MR: usize = 8;

/// The quants of a [`super::qpacked::QPacked`] weight in the integer kernels' layout.
pub struct Quads {
    /// `panels × (inp/4) × NR × 4`.
    q: Vec<i8>,
    /// `panels × groups × NR`: each group's `Σ q` per column.
    qsum: Vec<i32>,
    /// Whether every quant lies in −64..64: AVX2's `vpmaddubsw` adds two 255 · q products in 16
    /// bits, exactly only then (Q8_0's quants reach ±127; every 4-, 5- and 6-bit type fits).
    small: bool,
}

/// Which integer kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntKernel {
    #[cfg(target_arch = "x86_64")]
    Vnni512,
    /// AVX2's `vpmaddubsw` + `vpmaddwd`, for quants in −64..64 ([`Quads`]' `small`).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl IntKernel {
    pub(crate) fn detect() -> IntKernel {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512f") {
            return IntKernel::Vnni512;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return IntKernel::Avx2;
        }
        IntKernel::Portable
    }
}

impl Quads {
    /// Repacks `q` (`panels × inp × NR`, [`super::qpacked`]'s layout). `inp` and `group` are
    /// multiples of 4.
    pub fn new(q: &[i8], inp: usize, group: usize) -> Quads {
        assert!(
            inp.is_multiple_of(4) && group.is_multiple_of(4) && inp.is_multiple_of(group),
            "in {inp}, group {group}"
        );
        let panels = q.len() / (inp * NR);
        let groups = inp / group;
        let mut out = vec![0i8; q.len()];
        let mut qsum = vec![0i32; panels * groups * NR];
        out.par_chunks_mut(inp * NR).zip(qsum.par_chunks_mut(groups * NR)).enumerate().for_each(|(p, (dst, sums))| {
            let src = &q[p * inp * NR..][..inp * NR];
            for k in 0..inp {
                for c in 0..NR {
                    let v = src[k * NR + c];
                    dst[(k / 4) * NR * 4 + c * 4 + k % 4] = v;
                    sums[(k / group) * NR + c] += v as i32;
                }
            }
        });
        let small = out.iter().all(|&v| (-64..64).contains(&v));
        Quads { q: out, qsum, small }
    }

    pub fn size_in_bytes(&self) -> usize {
        self.q.len() + 4 * self.qsum.len()
    }
}

/// A weight's shape and its per-group scales and minimums (the panels' own arrays).
pub struct Weight<'a> {
    pub quads: &'a Quads,
    pub scale: &'a [f32],
    /// Empty for the types without a minimum.
    pub min: &'a [f32],
    pub out: usize,
    pub inp: usize,
    pub group: usize,
}

/// `x` (`rows × inp`) rounded per group: `a + 128` as bytes, the scales, and the sums of the
/// rounded groups (`s·Σa`) when the weight has minimums.
struct Activations {
    a: Vec<u8>,
    s: Vec<f32>,
    sums: Vec<f32>,
}

fn quantize(kernel: IntKernel, x: &[f32], group: usize, with_sums: bool) -> Activations {
    let mut a = vec![0u8; x.len()];
    let mut s = vec![0f32; x.len() / group];
    let mut sums = vec![0f32; if with_sums { x.len() / group } else { 0 }];
    // Whole groups per task, many of them: the rounding is cheap next to the products.
    let per = 64 * group;
    a.par_chunks_mut(per).zip(x.par_chunks(per)).zip(s.par_chunks_mut(64)).for_each(|((a, x), s)| match kernel {
        // SAFETY: the caller's kernel runs on this CPU: it has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        IntKernel::Vnni512 if group.is_multiple_of(16) => unsafe { vnni512::round_groups(a, x, s, group) },
        _ => round_groups(a, x, s, group),
    });
    // The minimums' term takes Σx of the rounded values, as llama.cpp's Q8_1 blocks carry it:
    // with `w = d·q + m` and q ≥ 0, the rounding errors then meet the centred weight only. (Σx
    // of the exact values leaves `d·mean(q)·Σ(rounded − exact)` behind: twice the error of the
    // types without a minimum, measured on random data.)
    if with_sums {
        sums.par_chunks_mut(64).zip(a.par_chunks(per)).zip(s.par_chunks(64)).for_each(|((sums, a), s)| {
            for ((sum, g), scale) in sums.iter_mut().zip(a.chunks(group)).zip(s) {
                *sum = scale * g.iter().map(|&v| v as i32 - 128).sum::<i32>() as f32;
            }
        });
    }
    Activations { a, s, sums }
}

/// Rounds each group of `x` to `a + 128` with its scale `max|x| / 127` (ties to even, as the
/// vector conversion rounds).
fn round_groups(a: &mut [u8], x: &[f32], s: &mut [f32], group: usize) {
    for ((a, x), s) in a.chunks_mut(group).zip(x.chunks(group)).zip(s.iter_mut()) {
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        *s = max / 127.0;
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        for (a, v) in a.iter_mut().zip(x) {
            // |v·inv| ≤ 127: no clamp needed beyond the cast's.
            *a = ((v * inv).round_ties_even() as i32 + 128) as u8;
        }
    }
}

/// One panel's slices and the rows' activations, for a kernel.
struct Tile<'a> {
    q: &'a [i8],
    qsum: &'a [i32],
    scale: &'a [f32],
    min: &'a [f32],
    groups: usize,
    group: usize,
    inp: usize,
    cols: usize,
}

struct Rows<'a> {
    a: &'a [u8],
    s: &'a [f32],
    sums: &'a [f32],
    y: Out,
    ldc: usize,
}

/// Whether `kernel` gives `quads`' exact integer sums: all but AVX2 with quants beyond
/// −64..64 (Q8_0), whose pairs of products leave 16 bits.
fn fits(kernel: IntKernel, quads: &Quads) -> bool {
    #[cfg(target_arch = "x86_64")]
    if kernel == IntKernel::Avx2 {
        return quads.small;
    }
    let _ = (kernel, quads);
    true
}

/// Whether this CPU's integer kernel takes `w`. One that does not ([`fits`]: Q8_0 on AVX2)
/// keeps the exact products, which are faster than the plain loops.
pub fn takes(w: &Weight) -> bool {
    fits(IntKernel::detect(), w.quads)
}

/// `y = x Wᵀ` with `x` rounded to int8 per group (`y`: `rows × out`, overwritten).
pub fn matmul(w: &Weight, x: &[f32], rows: usize, y: &mut [f32]) {
    matmul_with(IntKernel::detect(), w, x, rows, y)
}

pub(crate) fn matmul_with(kernel: IntKernel, w: &Weight, x: &[f32], rows: usize, y: &mut [f32]) {
    assert_eq!(x.len(), rows * w.inp);
    assert_eq!(y.len(), rows * w.out);
    if rows == 0 || w.out == 0 {
        return;
    }
    // A kernel whose sums would not be exact for these quants leaves them to the plain loops.
    let kernel = if fits(kernel, w.quads) { kernel } else { IntKernel::Portable };
    let acts = quantize(kernel, x, w.group, !w.min.is_empty());
    let groups = w.inp / w.group;
    let y_out = Out(y.as_mut_ptr());
    super::panels::for_panels(w.out.div_ceil(NR), |p| {
        let tile = Tile {
            q: &w.quads.q[p * w.inp * NR..][..w.inp * NR],
            qsum: &w.quads.qsum[p * groups * NR..][..groups * NR],
            scale: &w.scale[p * groups * NR..][..groups * NR],
            min: if w.min.is_empty() { &[] } else { &w.min[p * groups * NR..][..groups * NR] },
            groups,
            group: w.group,
            inp: w.inp,
            cols: (w.out - p * NR).min(NR),
        };
        let mut r0 = 0;
        while r0 < rows {
            let mr = (rows - r0).min(MR);
            let rt = Rows {
                a: &acts.a[r0 * w.inp..][..mr * w.inp],
                s: &acts.s[r0 * groups..][..mr * groups],
                sums: if acts.sums.is_empty() { &[] } else { &acts.sums[r0 * groups..][..mr * groups] },
                y: Out(y_out.at(r0 * w.out + p * NR)),
                ldc: w.out,
            };
            match kernel {
                // SAFETY: detect() chose it, so this CPU has AVX-512F and VNNI.
                #[cfg(target_arch = "x86_64")]
                IntKernel::Vnni512 => unsafe { vnni512::tile(mr, &tile, &rt) },
                // SAFETY: detect() chose it, so this CPU has AVX2 and FMA; the quants are small.
                #[cfg(target_arch = "x86_64")]
                IntKernel::Avx2 => unsafe { avx2::tile(mr, &tile, &rt) },
                IntKernel::Portable => portable(mr, &tile, &rt),
            }
            r0 += mr;
        }
    });
}

/// The reference: the same integer sums and float steps in plain loops.
fn portable(rows: usize, t: &Tile, r: &Rows) {
    for row in 0..rows {
        let mut out = [0f32; NR];
        for g in 0..t.groups {
            let mut acc = [0i32; NR];
            for k in g * t.group..(g + 1) * t.group {
                let a = r.a[row * t.inp + k] as i32;
                for (c, acc) in acc.iter_mut().enumerate() {
                    *acc += a * t.q[(k / 4) * NR * 4 + c * 4 + k % 4] as i32;
                }
            }
            let s = r.s[row * t.groups + g];
            let (qsum, scale) = (&t.qsum[g * NR..][..NR], &t.scale[g * NR..][..NR]);
            for (((o, acc), qsum), d) in out.iter_mut().zip(&acc).zip(qsum).zip(scale) {
                let exact = acc - 128 * qsum;
                *o = (exact as f32).mul_add(d * s, *o);
            }
            if !t.min.is_empty() {
                let sx = r.sums[row * t.groups + g];
                for (o, m) in out.iter_mut().zip(&t.min[g * NR..][..NR]) {
                    *o = sx.mul_add(*m, *o);
                }
            }
        }
        // SAFETY: this row's `cols` outputs of this panel belong to this call alone.
        let dst = unsafe { std::slice::from_raw_parts_mut(r.y.at(row * r.ldc), t.cols) };
        dst.copy_from_slice(&out[..t.cols]);
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni512 {
    use super::{Rows, Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F and AVX-512 VNNI present.
    pub(super) unsafe fn tile(rows: usize, t: &Tile, r: &Rows) {
        unsafe { crate::model::kernels::panels::by_rows!(rows, rows_n(t, r)) }
    }

    /// [`super::round_groups`] sixteen values at a time (`group` a multiple of 16); the
    /// conversion rounds to nearest even, as the scalar code does.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn round_groups(a: &mut [u8], x: &[f32], s: &mut [f32], group: usize) {
        let abs = _mm512_set1_epi32(0x7fff_ffff);
        let bias = _mm512_set1_epi32(128);
        for ((a, x), s) in a.chunks_mut(group).zip(x.chunks(group)).zip(s.iter_mut()) {
            // SAFETY: x and a hold `group` values, a multiple of 16.
            unsafe {
                let mut m = _mm512_setzero_ps();
                for i in (0..group).step_by(16) {
                    let v = _mm512_castsi512_ps(_mm512_and_si512(
                        _mm512_castps_si512(_mm512_loadu_ps(x.as_ptr().add(i))),
                        abs,
                    ));
                    m = _mm512_max_ps(m, v);
                }
                let max = _mm512_reduce_max_ps(m);
                *s = max / 127.0;
                let inv = _mm512_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
                for i in (0..group).step_by(16) {
                    let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), inv));
                    _mm_storeu_si128(a.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(_mm512_add_epi32(q, bias)));
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn rows_n<const R: usize>(t: &Tile, r: &Rows) {
        let mut out = [[_mm512_setzero_ps(); 3]; R];
        let quads = t.group / 4;
        for g in 0..t.groups {
            let mut acc = [[_mm512_setzero_si512(); 3]; R];
            for qd in 0..quads {
                let k0 = (g * quads + qd) * 4;
                // SAFETY: k0 + 3 < inp; the panel holds inp/4 × NR × 4 quants.
                unsafe {
                    let w = t.q.as_ptr().add(k0 * NR);
                    let w0 = _mm512_loadu_si512(w.cast());
                    let w1 = _mm512_loadu_si512(w.add(64).cast());
                    let w2 = _mm512_loadu_si512(w.add(128).cast());
                    for (row, acc) in acc.iter_mut().enumerate() {
                        let a = _mm512_set1_epi32(std::ptr::read_unaligned(
                            r.a.as_ptr().add(row * t.inp + k0).cast::<i32>(),
                        ));
                        acc[0] = _mm512_dpbusd_epi32(acc[0], a, w0);
                        acc[1] = _mm512_dpbusd_epi32(acc[1], a, w1);
                        acc[2] = _mm512_dpbusd_epi32(acc[2], a, w2);
                    }
                }
            }
            // SAFETY: group g's NR sums, scales and minimums lie inside the panel's slices.
            unsafe {
                let base = g * NR;
                let corr: [__m512i; 3] = std::array::from_fn(|v| {
                    _mm512_slli_epi32::<7>(_mm512_loadu_si512(t.qsum.as_ptr().add(base + v * 16).cast()))
                });
                let d: [__m512; 3] = std::array::from_fn(|v| _mm512_loadu_ps(t.scale.as_ptr().add(base + v * 16)));
                for (row, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
                    let s = _mm512_set1_ps(r.s[row * t.groups + g]);
                    for v in 0..3 {
                        let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[v], corr[v]));
                        o[v] = _mm512_fmadd_ps(exact, _mm512_mul_ps(d[v], s), o[v]);
                    }
                }
                if !t.min.is_empty() {
                    let m: [__m512; 3] = std::array::from_fn(|v| _mm512_loadu_ps(t.min.as_ptr().add(base + v * 16)));
                    for (row, o) in out.iter_mut().enumerate() {
                        let sx = _mm512_set1_ps(r.sums[row * t.groups + g]);
                        for v in 0..3 {
                            o[v] = _mm512_fmadd_ps(sx, m[v], o[v]);
                        }
                    }
                }
            }
        }
        // SAFETY: this tile's rows of this panel belong to this call alone.
        unsafe { crate::model::kernels::panels::avx512::store_rows(&out, t.cols, r.y.at(0), r.ldc) };
    }
}

/// [`vnni512`]'s products with AVX2: `vpmaddubsw` multiplies the activations' bytes (unsigned)
/// by the quants (signed) and adds neighbouring pairs in 16 bits, `vpmaddwd` by ones adds those
/// pairs into each column's 32-bit sum: the same integers as `vpdpbusd` while every pair stays
/// within 16 bits (quants in −64..64). The float steps run in the portable kernel's order.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Rows, Tile, MR, NR};
    use std::arch::x86_64::*;

    /// Vectors of 8 columns in a panel.
    const V: usize = NR / 8;

    /// # Safety
    /// AVX2 and FMA present; every quant of the tile in −64..64.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(rows: usize, t: &Tile, r: &Rows) {
        let ones = _mm256_set1_epi16(1);
        let mut out = [[_mm256_setzero_ps(); V]; MR];
        let quads = t.group / 4;
        for g in 0..t.groups {
            let base = g * NR;
            // SAFETY: group g's NR sums, scales and minimums lie inside the panel's slices.
            let (corr, d, m) = unsafe {
                let corr: [__m256i; V] = std::array::from_fn(|v| {
                    _mm256_slli_epi32::<7>(_mm256_loadu_si256(t.qsum.as_ptr().add(base + v * 8).cast()))
                });
                let d: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(t.scale.as_ptr().add(base + v * 8)));
                let m: Option<[__m256; V]> = (!t.min.is_empty())
                    .then(|| std::array::from_fn(|v| _mm256_loadu_ps(t.min.as_ptr().add(base + v * 8))));
                (corr, d, m)
            };
            for (row, o) in out.iter_mut().enumerate().take(rows) {
                let mut acc = [_mm256_setzero_si256(); V];
                for qd in 0..quads {
                    let k0 = (g * quads + qd) * 4;
                    // SAFETY: k0 + 3 < inp; the panel holds inp/4 × NR × 4 quants.
                    unsafe {
                        let w = t.q.as_ptr().add(k0 * NR);
                        let a = _mm256_set1_epi32(std::ptr::read_unaligned(
                            r.a.as_ptr().add(row * t.inp + k0).cast::<i32>(),
                        ));
                        for (v, acc) in acc.iter_mut().enumerate() {
                            let pairs = _mm256_maddubs_epi16(a, _mm256_loadu_si256(w.add(32 * v).cast()));
                            *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(pairs, ones));
                        }
                    }
                }
                let s = _mm256_set1_ps(r.s[row * t.groups + g]);
                for v in 0..V {
                    let exact = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[v], corr[v]));
                    o[v] = _mm256_fmadd_ps(exact, _mm256_mul_ps(d[v], s), o[v]);
                }
                if let Some(m) = &m {
                    let sx = _mm256_set1_ps(r.sums[row * t.groups + g]);
                    for v in 0..V {
                        o[v] = _mm256_fmadd_ps(sx, m[v], o[v]);
                    }
                }
            }
        }
        for (row, o) in out.iter().enumerate().take(rows) {
            let mut vals = [0f32; NR];
            for (v, o) in o.iter().enumerate() {
                // SAFETY: `vals` holds NR = 8 · V floats.
                unsafe { _mm256_storeu_ps(vals.as_mut_ptr().add(8 * v), *o) };
            }
            // SAFETY: this row's `cols` outputs of this panel belong to this call alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(r.y.at(row * r.ldc), t.cols) };
            dst.copy_from_slice(&vals[..t.cols]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kernels::qpacked::QPacked;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn vector_rounding_equals_the_scalar_rounding() {
        let mut x = values(64 * 32, 9);
        x[5] = 0.5; // ties, once scaled, land on both sides
        x[40..72].iter_mut().for_each(|v| *v = 0.0); // an all-zero group
        let (mut a, mut s) = (vec![0u8; x.len()], vec![0f32; x.len() / 32]);
        round_groups(&mut a, &x, &mut s, 32);
        #[cfg(target_arch = "x86_64")]
        if IntKernel::detect() == IntKernel::Vnni512 {
            let (mut b, mut t) = (vec![0u8; x.len()], vec![0f32; x.len() / 32]);
            unsafe { vnni512::round_groups(&mut b, &x, &mut t, 32) };
            assert_eq!(a, b);
            assert_eq!(s, t);
        }
        assert!(a[40..72].iter().all(|&v| v == 128));
    }

    /// Every integer kernel this CPU runs gives the portable kernel's result bit for bit, and
    /// all stay within int8 rounding of the exact product, for every block type.
    #[test]
    fn integer_kernels_agree_and_stay_near_the_exact_product() {
        let (out, inp) = (100, 512);
        let w = Tensor::from_vec(values(out * inp, 3), (out, inp), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let packed = QPacked::new(&QTensor::quantize(&w, dtype).unwrap()).unwrap().unwrap();
            packed.set_int8(true);
            for rows in [1, 3, 8, 11] {
                let x = values(rows * inp, rows as u64);
                let mut exact = vec![0f32; rows * out];
                packed.matmul_exact(&x, rows, &mut exact);
                let mut portable = vec![0f32; rows * out];
                packed.matmul_int8_with(IntKernel::Portable, &x, rows, &mut portable);
                let mut fast = vec![0f32; rows * out];
                packed.matmul(&x, rows, &mut fast);
                // AVX2 leaves Q8_0's quants (beyond −64..64) to the exact products.
                #[cfg(target_arch = "x86_64")]
                if IntKernel::detect() == IntKernel::Avx2 && dtype == GgmlDType::Q8_0 {
                    assert_eq!(exact, fast, "{rows} rows: Q8_0 on AVX2 stays exact");
                    continue;
                }
                assert_eq!(portable, fast, "{dtype:?}, {rows} rows: the kernels differ");
                let norm = exact.iter().map(|v| v * v).sum::<f32>().sqrt();
                let err = exact.iter().zip(&fast).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
                // Rounding 32 values to ±127 steps costs ~0.4 % here, for every type alike (the
                // minimums' term on exact sums instead of the rounded ones made it 0.84 %).
                assert!(err / norm < 0.006, "{dtype:?}, {rows} rows: relative error {}", err / norm);
                assert!(err > 0.0, "{dtype:?}: the int8 path was not taken");
            }
        }
    }
}
