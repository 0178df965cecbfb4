//! What the quantized kernels share (the exact [`super::qpacked`] and the int8
//! [`super::int8`] ones): the panel width, a pointer the workers write through, the panels spread
//! over the workers, a micro-kernel's row count as a constant, and storing a tile's rows.

use rayon::prelude::*;

/// Output columns per panel: three 16-float vectors.
pub const NR: usize = 48;

/// A raw pointer the workers write disjoint ranges through (column ranges here, head slices in
/// [`super::cpu_attention`]).
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer `off` floats in (a method, so closures capture the whole `Out`).
    pub(crate) fn at(self, off: usize) -> *mut f32 {
        unsafe { self.0.add(off) }
    }
}

/// `f(p)` for every panel `p` of `panels`, on the workers in runs of neighbouring panels (four
/// runs a worker when there are many panels, to even out their finishing times).
pub(crate) fn for_panels(panels: usize, f: impl Fn(usize) + Sync) {
    let workers = rayon::current_num_threads().max(1);
    let per = panels.div_ceil(workers * if panels >= 8 * workers { 4 } else { 1 }).max(1);
    let run = |first: usize| (first..(first + per).min(panels)).for_each(&f);
    if panels <= per {
        run(0);
    } else {
        (0..panels).into_par_iter().step_by(per).for_each(run);
    }
}

/// `$f::<R>(args)` for `R` = `$rows` (1 to 8): a micro-kernel's row count as a constant.
macro_rules! by_rows {
    ($rows:expr, $f:ident ($($a:expr),*)) => {
        match $rows {
            8 => $f::<8>($($a),*),
            7 => $f::<7>($($a),*),
            6 => $f::<6>($($a),*),
            5 => $f::<5>($($a),*),
            4 => $f::<4>($($a),*),
            3 => $f::<3>($($a),*),
            2 => $f::<2>($($a),*),
            1 => $f::<1>($($a),*),
            _ => unreachable!("a tile has 1 to 8 rows"),
        }
    };
}
pub(crate) use by_rows;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Stores `R` rows of one panel's [`super::NR`] outputs (three vectors a row), the lanes past
    /// `cols` left alone; row `i` at `y + i·ldc`.
    ///
    /// # Safety
    /// AVX-512F present; `y` writable for `R` rows of `cols` floats `ldc` apart.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn store_rows<const R: usize>(out: &[[__m512; 3]; R], cols: usize, y: *mut f32, ldc: usize) {
        let masks: [__mmask16; 3] = std::array::from_fn(|v| {
            let n = cols.saturating_sub(v * 16).min(16);
            ((1u32 << n) - 1) as __mmask16
        });
        for (row, o) in out.iter().enumerate() {
            for (v, &m) in masks.iter().enumerate() {
                // SAFETY: the caller's rows; masked lanes stay within `cols`.
                unsafe { _mm512_mask_storeu_ps(y.add(row * ldc + v * 16), m, o[v]) };
            }
        }
    }
}
