//! `y = x Wᵀ` for f32 weights on the CPU, with W packed once at load into column panels.
//!
//! Decoding a batch of a few rows is a product of a thin `x` (`[rows, in]`) with every weight of
//! the model, which no cache holds: its speed is how fast the weights stream through the cores.
//! A general GEMM (candle's, through the `gemm` crate) packs and re-reads W for such shapes and
//! moves a cold weight at about a third of the memory's bandwidth at eight rows. Here W is stored
//! the way the micro-kernel reads it — panels of [`NR`] output columns, each panel's `in` rows of
//! [`NR`] floats back to back — so one pass walks the whole weight once, front to back, with
//! every row of `x` consuming each loaded vector.
//!
//! The same layout serves large row counts (prefill, training's forward) in blocks of [`KC`]
//! depth, and gives the rows of a tied embedding ([`Packed::row`]).
//!
//! Invariants: panels are zero beyond `out` (the last panel's padding), so no masked arithmetic
//! is needed on the inner loop; only the final stores are masked.

use rayon::prelude::*;

/// Output columns per panel: three 16-float vectors.
pub const NR: usize = 48;
/// Rows of `x` per micro-tile: 8 × 3 accumulators plus 3 weight vectors fit AVX-512's 32 registers.
const MR: usize = 8;
/// Rows per micro-tile of the AVX2 kernels (16 registers: 6 rows × 2 vectors of accumulators).
pub(crate) const AVX2_ROWS: usize = 6;
/// Depth per pass: a panel block of `KC × NR` floats (96 KiB) stays in L2 while every row tile
/// of a large `x` runs over it.
const KC: usize = 512;

/// One cache line of a panel row (16 floats, 64-byte aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A `[out, in]` weight in panel layout.
pub struct Packed {
    /// `panels × in × NR` floats.
    lines: Vec<Line>,
    out: usize,
    inp: usize,
    /// Wᵀ packed the same way, built at the first backward ([`Packed::input_grad`]): training
    /// holds it, inference never does.
    transposed: std::sync::OnceLock<Box<Packed>>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed[{}, {}]", self.out, self.inp)
    }
}

/// A raw pointer the workers write disjoint column ranges through.
#[derive(Clone, Copy)]
struct Out(*mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Packed {
    /// Packs a row-major `[out, inp]` weight.
    pub fn new(w: &[f32], out: usize, inp: usize) -> Packed {
        assert_eq!(w.len(), out * inp, "weight of {} floats is not [{out}, {inp}]", w.len());
        let panels = out.div_ceil(NR);
        let lines_per_panel = inp * NR / 16;
        if lines_per_panel == 0 {
            return Packed { lines: Vec::new(), out, inp, transposed: Default::default() };
        }
        let mut lines = vec![Line([0.0; 16]); panels * lines_per_panel];
        lines.par_chunks_mut(lines_per_panel).enumerate().for_each(|(p, panel)| {
            let cols = (out - p * NR).min(NR);
            let flat: &mut [f32] =
                unsafe { std::slice::from_raw_parts_mut(panel.as_mut_ptr().cast::<f32>(), lines_per_panel * 16) };
            for j in 0..cols {
                let row = &w[(p * NR + j) * inp..][..inp];
                for (k, v) in row.iter().enumerate() {
                    flat[k * NR + j] = *v;
                }
            }
        });
        Packed { lines, out, inp, transposed: Default::default() }
    }

    /// `dx = dy W` (`dy` is `rows × out`, `dx` `rows × in`, overwritten): the forward kernel
    /// over Wᵀ, which is packed at the first call and kept.
    pub fn input_grad(&self, dy: &[f32], rows: usize, dx: &mut [f32]) {
        let t = self.transposed.get_or_init(|| {
            // Panel p's row i is W[p·NR .. p·NR + NR][i]: row i of Wᵀ, columns p·NR on.
            let mut wt = vec![0f32; self.inp * self.out];
            for p in 0..self.out.div_ceil(NR) {
                let cols = (self.out - p * NR).min(NR);
                let panel = self.panel_values(p);
                for i in 0..self.inp {
                    wt[i * self.out + p * NR..][..cols].copy_from_slice(&panel[i * NR..][..cols]);
                }
            }
            Box::new(Packed::new(&wt, self.inp, self.out))
        });
        t.matmul(dy, rows, dx);
    }

    pub fn out_features(&self) -> usize {
        self.out
    }

    pub fn in_features(&self) -> usize {
        self.inp
    }

    fn floats(&self) -> &[f32] {
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.lines.len() * 16) }
    }

    /// Panel `p` as stored: `[in][NR]`, output `p·NR + j` of input `i` at `i·NR + j`.
    pub fn panel_values(&self, p: usize) -> &[f32] {
        &self.floats()[p * self.inp * NR..(p + 1) * self.inp * NR]
    }

    /// Row `id` (< `out`) of the `[out, in]` weight into `dst` (`in` long): an embedding when the
    /// weight is a tied embedding matrix.
    pub fn row(&self, id: usize, dst: &mut [f32]) {
        let panel = &self.floats()[(id / NR) * self.inp * NR..];
        for (k, d) in dst.iter_mut().enumerate() {
            *d = panel[k * NR + id % NR];
        }
    }

    /// `y = x Wᵀ` for a row-major `x` of `rows × in`, into `y` (`rows × out`, overwritten).
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        assert_eq!(x.len(), rows * self.inp, "x is not [{rows}, {}]", self.inp);
        assert_eq!(y.len(), rows * self.out, "y is not [{rows}, {}]", self.out);
        if rows == 0 || self.out == 0 {
            return;
        }
        if self.inp == 0 {
            y.fill(0.0);
            return;
        }
        let kernel = Kernel::detect();
        let panels = self.out.div_ceil(NR);
        // Contiguous panel ranges, a few per thread so a slow core does not hold the rest up;
        // when there are too few panels to go round (a small projection over many rows), the
        // rows are split too.
        let workers = rayon::current_num_threads().max(1);
        let per = panels.div_ceil(workers * if panels >= 8 * workers { 4 } else { 1 }).max(1);
        let row_block = if panels < 2 * workers && rows >= 16 * workers {
            rows.div_ceil(workers).next_multiple_of(kernel.rows())
        } else {
            rows
        };
        let y_out = Out(y.as_mut_ptr());
        let run = |(first, r0): (usize, usize)| {
            let r1 = (r0 + row_block).min(rows);
            for p in first..(first + per).min(panels) {
                self.panel(kernel, p, x, r0..r1, y_out);
            }
        };
        let items: Vec<(usize, usize)> =
            (0..panels).step_by(per).flat_map(|p| (0..rows).step_by(row_block).map(move |r| (p, r))).collect();
        if items.len() == 1 {
            run(items[0]);
        } else {
            items.into_par_iter().for_each(run);
        }
    }

    /// Columns `p·NR ..` of the rows `rows` of `y`.
    fn panel(&self, kernel: Kernel, p: usize, x: &[f32], rows: std::ops::Range<usize>, y: Out) {
        let cols = (self.out - p * NR).min(NR);
        let panel = &self.floats()[p * self.inp * NR..][..self.inp * NR];
        let mut k0 = 0;
        while k0 < self.inp {
            let kc = (self.inp - k0).min(KC);
            let mut r0 = rows.start;
            while r0 < rows.end {
                let mr = (rows.end - r0).min(kernel.rows());
                let tile = Tile {
                    depth: kc,
                    a: unsafe { x.as_ptr().add(r0 * self.inp + k0) },
                    lda: self.inp,
                    b: unsafe { panel.as_ptr().add(k0 * NR) },
                    c: unsafe { y.0.add(r0 * self.out + p * NR) },
                    ldc: self.out,
                    cols,
                    accumulate: k0 > 0,
                };
                unsafe { kernel.run(mr, &tile) };
                r0 += mr;
            }
            k0 += kc;
        }
    }
}

/// One micro-tile: `c[r][0..cols] (+)= Σ_k a[r][k] · b[k][0..cols]` for `r < rows`.
#[derive(Clone, Copy)]
struct Tile {
    depth: usize,
    a: *const f32,
    lda: usize,
    /// `depth × NR`, 64-byte aligned.
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs, or the one `SELFSPEC_MATMUL_KERNEL` (avx512, avx2,
    /// portable) names, for benchmarks; one this CPU cannot run (or an unknown name) is
    /// replaced by the fastest, with a warning.
    pub(crate) fn detect() -> Kernel {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = Kernel::runnable()[0];
            let asked = match std::env::var("SELFSPEC_MATMUL_KERNEL").as_deref() {
                #[cfg(target_arch = "x86_64")]
                Ok("avx512") => Kernel::Avx512,
                #[cfg(target_arch = "x86_64")]
                Ok("avx2") => Kernel::Avx2,
                Ok("portable") => Kernel::Portable,
                Err(_) => return best,
                Ok(other) => {
                    eprintln!(
                        "warning: SELFSPEC_MATMUL_KERNEL={other} is not avx512, avx2 or portable; using {best:?}"
                    );
                    return best;
                }
            };
            if Kernel::runnable().contains(&asked) {
                asked
            } else {
                eprintln!("warning: this CPU cannot run the {asked:?} matmul kernel; using {best:?}");
                best
            }
        })
    }

    /// Every kernel this CPU can run, fastest first.
    pub(crate) fn runnable() -> Vec<Kernel> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                all.push(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                all.push(Kernel::Avx2);
            }
        }
        all.push(Kernel::Portable);
        all
    }

    /// Rows of `x` per micro-tile: what the kernel's registers hold (for this module's kernels
    /// and [`super::qpacked`]'s).
    pub(crate) fn rows(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => AVX2_ROWS,
            _ => MR,
        }
    }

    /// # Safety
    /// The tile's pointers cover `rows × depth` (a), `depth × NR` (b) and `rows × cols` (c).
    unsafe fn run(self, rows: usize, t: &Tile) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::tile(rows, t) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::tile(rows, t) },
            Kernel::Portable => unsafe { portable_tile(rows, t) },
        }
    }
}

/// The reference micro-kernel: plain loops, for CPUs without AVX-512 (and to test it against).
unsafe fn portable_tile(rows: usize, t: &Tile) {
    for r in 0..rows {
        let mut acc = [0f32; NR];
        for k in 0..t.depth {
            let a = unsafe { *t.a.add(r * t.lda + k) };
            let b = unsafe { std::slice::from_raw_parts(t.b.add(k * NR), NR) };
            for (s, w) in acc.iter_mut().zip(b) {
                *s += a * w;
            }
        }
        let c = unsafe { std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), t.cols) };
        for (dst, s) in c.iter_mut().zip(acc) {
            *dst = if t.accumulate { *dst + s } else { s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512F present; the tile's pointers as [`super::Kernel::run`] requires.
    pub(super) unsafe fn tile(rows: usize, t: &Tile) {
        unsafe {
            match rows {
                8 => rows_n::<8>(t),
                7 => rows_n::<7>(t),
                6 => rows_n::<6>(t),
                5 => rows_n::<5>(t),
                4 => rows_n::<4>(t),
                3 => rows_n::<3>(t),
                2 => rows_n::<2>(t),
                1 => rows_n::<1>(t),
                _ => unreachable!("a tile has 1 to 8 rows"),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows_n<const R: usize>(t: &Tile) {
        let mut acc = [[_mm512_setzero_ps(); 3]; R];
        let mut b = t.b;
        let mut a = t.a;
        for _ in 0..t.depth {
            unsafe {
                let b0 = _mm512_load_ps(b);
                let b1 = _mm512_load_ps(b.add(16));
                let b2 = _mm512_load_ps(b.add(32));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * t.lda));
                    acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
                    acc[2] = _mm512_fmadd_ps(x, b2, acc[2]);
                }
                b = b.add(NR);
                a = a.add(1);
            }
        }
        let masks: [__mmask16; 3] = std::array::from_fn(|v| {
            let n = t.cols.saturating_sub(v * 16).min(16);
            ((1u32 << n) - 1) as __mmask16
        });
        for (r, acc) in acc.iter().enumerate() {
            for (v, &m) in masks.iter().enumerate() {
                unsafe {
                    let dst = t.c.add(r * t.ldc + v * 16);
                    let mut s = acc[v];
                    if t.accumulate {
                        s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, dst));
                    }
                    _mm512_mask_storeu_ps(dst, m, s);
                }
            }
        }
    }
}

/// AVX2 + FMA (16 registers): tiles of 6 rows × 16 columns (a third of a panel), 12
/// accumulators, two weight vectors and one broadcast, so nothing spills (4 × 24 needed 17
/// registers, and the spilled accumulator went through memory at every step); over depth blocks
/// of [`avx2::KB`] so the panel block (24 KiB) is read from L1 by every row group.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, NR};
    use std::arch::x86_64::*;

    const KB: usize = 128;

    /// # Safety
    /// AVX2 and FMA present; the tile's pointers as [`super::Kernel::run`] requires.
    pub(super) unsafe fn tile(rows: usize, t: &Tile) {
        let mut k0 = 0;
        while k0 < t.depth {
            let sub = Tile {
                depth: (t.depth - k0).min(KB),
                a: unsafe { t.a.add(k0) },
                b: unsafe { t.b.add(k0 * NR) },
                accumulate: t.accumulate || k0 > 0,
                ..*t
            };
            let mut r0 = 0;
            while r0 < rows {
                let n = (rows - r0).min(super::AVX2_ROWS);
                for c0 in [0, 16, 32] {
                    if c0 >= t.cols {
                        break;
                    }
                    unsafe {
                        match n {
                            6 => third::<6>(&sub, r0, c0),
                            5 => third::<5>(&sub, r0, c0),
                            4 => third::<4>(&sub, r0, c0),
                            3 => third::<3>(&sub, r0, c0),
                            2 => third::<2>(&sub, r0, c0),
                            _ => third::<1>(&sub, r0, c0),
                        }
                    }
                }
                r0 += n;
            }
            k0 += KB;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn third<const R: usize>(t: &Tile, r0: usize, c0: usize) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        unsafe {
            let mut b = t.b.add(c0);
            let mut a = t.a.add(r0 * t.lda);
            for _ in 0..t.depth {
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r * t.lda));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
                b = b.add(NR);
                a = a.add(1);
            }
            let cols = (t.cols - c0).min(16);
            for (r, acc) in acc.iter().enumerate() {
                let dst = t.c.add((r0 + r) * t.ldc + c0);
                if cols == 16 {
                    for (v, s) in acc.iter().enumerate() {
                        let mut s = *s;
                        if t.accumulate {
                            s = _mm256_add_ps(s, _mm256_loadu_ps(dst.add(v * 8)));
                        }
                        _mm256_storeu_ps(dst.add(v * 8), s);
                    }
                    continue;
                }
                let mut sums = [0f32; 16];
                for (v, s) in acc.iter().enumerate() {
                    _mm256_storeu_ps(sums.as_mut_ptr().add(v * 8), *s);
                }
                let dst = std::slice::from_raw_parts_mut(dst, cols);
                for (d, s) in dst.iter_mut().zip(sums) {
                    *d = if t.accumulate { *d + s } else { s };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], out: usize, inp: usize, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] =
                    (0..inp).map(|k| (x[r * inp + k] as f64) * (w[o * inp + k] as f64)).sum::<f64>() as f32;
            }
        }
        y
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect()
    }

    #[test]
    fn matches_the_naive_product_on_ragged_shapes() {
        // Outputs that leave a partial last panel (and a panel with under 16 columns), depths
        // over one KC block, and row counts on both sides of a tile.
        for &(out, inp) in &[(1usize, 1usize), (5, 3), (47, 17), (48, 64), (50, 600), (100, 1100), (200, 40)] {
            // 300 rows over few panels also splits the rows between threads.
            let w = values(out * inp, out as u64 * 31 + inp as u64);
            let packed = Packed::new(&w, out, inp);
            assert_eq!(crate::model::network::linear::CpuWeight::values(&packed), w, "[{out}, {inp}] round trip");
            for rows in [1usize, 3, 8, 9, 21, 300] {
                let x = values(rows * inp, rows as u64);
                let want = naive(&w, out, inp, &x, rows);
                let mut got = vec![f32::NAN; rows * out];
                packed.matmul(&x, rows, &mut got);
                let tol = 1e-5 * (inp as f32).sqrt();
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!((g - e).abs() <= tol, "[{out}, {inp}] rows {rows} at {i}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn every_kernel_this_cpu_runs_matches_the_naive_product() {
        let kernels = Kernel::runnable();
        assert!(kernels.contains(&Kernel::Portable), "{kernels:?}");
        for &(out, inp, rows) in &[(70usize, 530usize, 11usize), (5, 3, 1), (24, 9, 4), (25, 600, 6), (96, 40, 17)] {
            let w = values(out * inp, 7);
            let x = values(rows * inp, 8);
            let want = naive(&w, out, inp, &x, rows);
            let packed = Packed::new(&w, out, inp);
            for &kernel in &kernels {
                let mut got = vec![f32::NAN; rows * out];
                let out_ptr = Out(got.as_mut_ptr());
                for p in 0..out.div_ceil(NR) {
                    packed.panel(kernel, p, &x, 0..rows, out_ptr);
                }
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!((g - e).abs() < 1e-4, "{kernel:?} [{out}, {inp}] rows {rows} at {i}: {g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn the_input_gradient_is_dy_times_w() {
        for &(out, inp, rows) in &[(50usize, 20usize, 7usize), (96, 130, 1), (5, 48, 9)] {
            let w = values(out * inp, 31);
            let p = Packed::new(&w, out, inp);
            let dy = values(rows * out, 32);
            let mut dx = vec![0f32; rows * inp];
            p.input_grad(&dy, rows, &mut dx);
            for r in 0..rows {
                for i in 0..inp {
                    let want: f64 = (0..out).map(|o| dy[r * out + o] as f64 * w[o * inp + i] as f64).sum();
                    let got = dx[r * inp + i] as f64;
                    assert!((got - want).abs() < 1e-4, "[{out}, {inp}] at ({r}, {i}): {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn gathers_embedding_rows() {
        let (out, inp) = (130, 9);
        let w = values(out * inp, 3);
        let packed = Packed::new(&w, out, inp);
        let rows = crate::model::network::linear::CpuWeight::gather_rows(&packed, &[129, 0, 48, 47]);
        for (i, id) in [129usize, 0, 48, 47].iter().enumerate() {
            assert_eq!(&rows[i * inp..][..inp], &w[id * inp..][..inp]);
        }
    }
}
