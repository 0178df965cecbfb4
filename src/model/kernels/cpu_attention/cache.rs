//! The cache as the kernels read it: f32 or f16 storage, where each (row, head)'s vectors lie,
//! and everything one task reads.

use candle_core::{Result, Storage};

use crate::model::kernels::panels::Out;

/// The f32 values of a CPU storage, whole (a view's layout says where its values lie); `op`
/// names the caller in the error.
pub fn values<'a>(op: &str, s: &'a Storage) -> Result<&'a [f32]> {
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

    pub(super) fn values(&self) -> usize {
        match self {
            Src::F32(v) => v.len(),
            Src::F16(v) => v.len(),
        }
    }

    /// Slots `lo..total` of the vectors from `base` (`step` apart, `hd` long) as f32: in place
    /// when f32, else widened into `buf` (`total · hd`, slot j at `j · hd`). Returns the values
    /// with the base and step to read them by.
    pub(super) fn slots<'b>(
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
pub struct Place {
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

/// Everything a task reads, and where it writes.
pub(super) struct Ctx<'a> {
    pub(super) q: &'a [f32],
    pub(super) k: Src<'a>,
    pub(super) v: Src<'a>,
    pub(super) mask: Option<&'a [f32]>,
    /// Where the cache views' vectors lie.
    pub(super) k_at: Place,
    pub(super) v_at: Place,
    pub(super) nh: usize,
    pub(super) rep: usize,
    pub(super) new: usize,
    pub(super) total: usize,
    pub(super) hd: usize,
    pub(super) scale: f32,
    pub(super) out: Out,
}

/// The first slot a new position's mask row (`total` slots, additive) lets it see; 0 without a
/// mask. The slots before it are left padding: the wide kernels never read them.
#[inline(always)]
pub(super) fn first_visible(mask: Option<&[f32]>, total: usize) -> usize {
    mask.map_or(0, |m| m.iter().position(|&b| b != f32::NEG_INFINITY).unwrap_or(total))
}

/// Each of the first `rep` rows of scores in `p` (`total` slots each) turned into weights
/// e^(s − max) from slot `lo` on; returns their sums (`rep` ≤ 64).
#[inline(always)]
pub(super) fn weights(p: &mut [f32], rep: usize, total: usize, lo: usize) -> [f32; 64] {
    let mut sums = [0f32; 64];
    for (r, sum) in sums.iter_mut().enumerate().take(rep) {
        let p = &mut p[r * total + lo..(r + 1) * total];
        let max = p.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        *sum = crate::model::kernels::vexp::exp_shift(p, max);
    }
    sums
}
