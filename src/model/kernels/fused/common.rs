//! What the fused ops share: the f32 views of a storage, the parallel split, the BLAS call.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Storage, StorageRef, Tensor};
use gemm::Parallelism;

/// Whether `t` can go through these ops: f32 on the CPU.
pub fn usable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The f32 values of a storage under a contiguous layout.
pub fn slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("{op}: f32 only") };
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("{op}: input not contiguous") };
    Ok(&v[a..b])
}

/// The f32 values behind a tensor's read-locked storage (see [`read!`]).
pub fn f32s<'a>(op: &str, (s, l): &'a (StorageRef<'_>, &Layout)) -> Result<&'a [f32]> {
    let Storage::Cpu(c) = &**s else { candle_core::bail!("{op}: CPU only") };
    slice(op, c, l)
}

/// Shadows each named tensor with its f32 values: made contiguous, its storage read-locked until
/// the end of the enclosing block.
macro_rules! read {
    ($op:expr; $($t:ident),+) => {
        $(
            let $t = $t.contiguous()?;
            let $t = $t.storage_and_layout();
            let $t = f32s($op, &$t)?;
        )+
    };
}
pub(crate) use read;

pub fn tensor(v: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(v, shape.clone(), &candle_core::Device::Cpu)
}

/// Rows per parallel task: at least `min_elems` values each.
pub(super) fn rows_per_task(width: usize, min_elems: usize) -> usize {
    (min_elems / width.max(1)).max(1)
}

pub(super) fn gemm_threads(work: usize) -> Parallelism {
    if work < 1 << 18 {
        Parallelism::None
    } else {
        Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// `dst (m×n) = [dst +] beta · lhs (m×k) · rhs (k×n)`, each matrix given by (row, column) strides.
// BLAS's arguments (sizes, the destination, accumulate or not, two operands with their
// strides, a scale, the threads): each call reads as the product it is.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= m * n);
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts bound every index the strides reach in the three slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}
