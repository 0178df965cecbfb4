//! The frozen CPU weights' common face: packed f32 ([`super::packed::Packed`]) and decoded GGML
//! blocks ([`super::qpacked::QPacked`]) each with their own `y = x Wᵀ` kernel, which the
//! decoder's head and training's fused ops call through it.

/// A frozen CPU weight with its own `y = x Wᵀ` kernel: packed f32 ([`super::packed::Packed`]) or decoded GGML
/// blocks ([`super::qpacked::QPacked`]).
pub trait CpuWeight: Send + Sync {
    fn name(&self) -> &'static str;
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]);
    /// Row `id` (< `out`) of the `[out, in]` weight as f32, into `dst` (`in` long).
    fn row(&self, id: usize, dst: &mut [f32]);
    /// Rows `ids` of the `[out, in]` weight as f32, back to back: an embedding lookup when the
    /// weight is a tied head. Panics on an id ≥ `out` (callers check ids).
    fn gather_rows(&self, ids: &[u32]) -> Vec<f32> {
        let (out, inp) = (self.out_features(), self.in_features());
        let mut rows = vec![0f32; ids.len() * inp];
        for (dst, &id) in rows.chunks_mut(inp.max(1)).zip(ids) {
            assert!((id as usize) < out, "row {id} of a [{out}, {inp}] weight");
            self.row(id as usize, dst);
        }
        rows
    }
    /// Panel `p` (outputs `p·NR ..`) as f32 `[in][NR]`: W[p·NR + j][i] at `i·NR + j`, zero past
    /// `out`. Borrowed when stored so, else decoded into `scratch`.
    fn panel<'a>(&'a self, p: usize, scratch: &'a mut Vec<f32>) -> &'a [f32];
    /// `dx = dy W` for `rows` rows (`dy` `rows × out`, `dx` `rows × in`, overwritten): the
    /// input gradient of `y = x Wᵀ`.
    fn input_grad(&self, dy: &[f32], rows: usize, dx: &mut [f32]);
    /// The weight as row-major `[out, in]` f32.
    fn values(&self) -> Vec<f32> {
        self.gather_rows(&(0..self.out_features() as u32).collect::<Vec<_>>())
    }
}
