//! The one linear layer every projection uses: a frozen base weight, dense or quantized, an
//! optional bias, and zero or more LoRA adapters added on top.
//!
//! `y = x Wᵀ + b + Σ scale · (x Aᵀ) Bᵀ` over the enabled adapters, with `scale = lora_alpha / r`
//! as in PEFT. The training issue trains A and B; the base never changes.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};

pub use crate::model::kernels::cpu_weight::CpuWeight;
pub use crate::model::kernels::dropout::Dropout;
use crate::model::kernels::packed::Packed;
use crate::model::kernels::qpacked::QPacked;

#[derive(Debug, Clone)]
pub enum Base {
    /// `[out_features, in_features]`, as Hugging Face stores it.
    Dense(Tensor),
    /// The same weight stored `[in_features, out_features]`: on the CPU, candle's matmul is
    /// about twice as fast this way for a decoder's projections at small batch, but slower for
    /// a vocabulary-sized head (examples/mm.rs measures both); see [`Linear::dense`]. Used for
    /// 16-bit weights on the CPU.
    DenseT(Tensor),
    /// An f32 weight on the CPU in the panel layout of [`crate::model::kernels::packed`], multiplied by
    /// its own kernel (3× candle's matmul at decode's 8 rows: `cargo run --release --example
    /// packed`). Differentiable with respect to the input, so training runs through it too.
    Packed(Arc<Packed>),
    Quantized(Arc<QMatMul>),
    /// A GGML block-type weight on the CPU, decoded at load into selfspec's own quantized
    /// layout ([`crate::model::kernels::qpacked`]) and multiplied by its kernels. Differentiable with
    /// respect to the input (the backward dequantizes the weight just for it), so QLoRA trains
    /// directly over a GGUF file's blocks.
    QPacked(Arc<QPacked>),
    /// QLoRA's frozen base: the weight stored in a GGML block type (`[out, in]`), dequantized
    /// to the activations' type for each forward and again for each backward, and dropped right
    /// after, so no dequantized weight stays alive between the two.
    Dequant(Arc<QTensor>),
}

/// The gradient path through a [`Base::Dequant`] layer: its value is zero (the product itself is
/// computed on a detached input), and its backward is `grad · W` with W dequantized just for it.
struct InputGrad {
    weight: Arc<QTensor>,
    out_features: usize,
}

impl CustomOp1 for InputGrad {
    fn name(&self) -> &'static str {
        "qlora-input-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = layout.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out_features;
        }
        let n = dims.iter().product();
        match storage {
            CpuStorage::F32(_) => Ok((CpuStorage::F32(vec![0.0; n]), Shape::from(dims))),
            _ => candle_core::bail!("4-bit (QLoRA) training on the CPU runs in f32; pass --dtype f32"),
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = self.weight.dequantize(arg.device())?.to_dtype(grad.dtype())?;
        Ok(Some(matmul(grad, &w)?))
    }
}

impl CpuWeight for Packed {
    fn name(&self) -> &'static str {
        "packed-matmul"
    }
    fn in_features(&self) -> usize {
        Packed::in_features(self)
    }
    fn out_features(&self) -> usize {
        Packed::out_features(self)
    }
    fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        Packed::matmul(self, x, rows, y)
    }
    fn row(&self, id: usize, dst: &mut [f32]) {
        Packed::row(self, id, dst)
    }
    fn panel<'a>(&'a self, p: usize, _scratch: &'a mut Vec<f32>) -> &'a [f32] {
        Packed::panel_values(self, p)
    }
    fn input_grad(&self, dy: &[f32], rows: usize, dx: &mut [f32]) {
        Packed::input_grad(self, dy, rows, dx)
    }
}

impl CpuWeight for QPacked {
    fn name(&self) -> &'static str {
        "qpacked-matmul"
    }
    fn in_features(&self) -> usize {
        QPacked::in_features(self)
    }
    fn out_features(&self) -> usize {
        QPacked::out_features(self)
    }
    fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        QPacked::matmul(self, x, rows, y)
    }
    fn row(&self, id: usize, dst: &mut [f32]) {
        QPacked::row(self, id, dst)
    }
    fn panel<'a>(&'a self, p: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        QPacked::panel(self, p, scratch);
        scratch
    }
    fn input_grad(&self, dy: &[f32], rows: usize, dx: &mut [f32]) {
        crate::model::kernels::fused::input_grad(self, dy, rows, dx)
    }
}

/// `x Wᵀ` through a [`CpuWeight`]; the backward is `grad · W`, read panel by panel from the
/// packed weight ([`crate::model::kernels::fused::input_grad`])
/// (the base is frozen: no gradient for W). Training runs through packed and GGUF weights alike.
struct CpuMatmul<W: CpuWeight>(Arc<W>);

impl<W: CpuWeight> CustomOp1 for CpuMatmul<W> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!(
                "{}: the weight takes f32 activations, not {:?}",
                self.0.name(),
                candle_core::backend::BackendStorage::dtype(storage)
            )
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: the input is not contiguous", self.0.name())
        };
        let w = &self.0;
        let mut dims = layout.shape().dims().to_vec();
        if dims.last() != Some(&w.in_features()) {
            candle_core::bail!("{}: input {dims:?} against a weight of {} inputs", w.name(), w.in_features())
        }
        let rows = (end - start) / w.in_features().max(1);
        let mut y = vec![0f32; rows * w.out_features()];
        w.matmul(&data[start..end], rows, &mut y);
        if let Some(last) = dims.last_mut() {
            *last = w.out_features();
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(crate::model::kernels::fused::input_grad_tensor(self.0.as_ref(), grad, arg.shape())?))
    }
}

/// A CPU weight back as a `[out, in]` f32 tensor.
fn dense<W: CpuWeight + ?Sized>(w: &W) -> Result<Tensor> {
    Tensor::from_vec(w.values(), (w.out_features(), w.in_features()), &candle_core::Device::Cpu)
}

/// Output sizes up to this get the `[in, out]` layout for 16-bit weights on the CPU.
const PRETRANSPOSE_MAX_OUT: usize = 16_384;

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub name: String,
    /// `[r, in_features]`.
    pub a: Tensor,
    /// `[out_features, r]`.
    pub b: Tensor,
    pub scale: f64,
    pub enabled: bool,
    /// Which rows of the batch the adapter applies to (shared by every layer's copy of one
    /// adapter, so generation can switch it per row: contrastive decoding, per-request adapters).
    pub gate: Gate,
    /// Training only: dropout on the adapter's input, with the seed of this step's mask (set by
    /// the trainer each micro-batch, so a resumed run draws the same masks).
    pub dropout: Option<Dropout>,
}

/// Where an adapter applies: every row, no row, or the rows whose mask (`[rows, 1, 1]`, 1 or 0)
/// is 1.
#[derive(Debug, Clone, Default)]
pub enum GateState {
    #[default]
    All,
    Off,
    Rows(Tensor),
}

pub type Gate = Arc<std::sync::RwLock<GateState>>;

pub fn new_gate() -> Gate {
    Arc::new(std::sync::RwLock::new(GateState::All))
}

/// `x` with each element zeroed with probability `p` and the others scaled by 1/(1-p); the mask
/// comes from `seed` alone ([`Dropout::mask`]).
fn dropout(x: &Tensor, d: Dropout) -> Result<Tensor> {
    if d.p <= 0.0 {
        return Ok(x.clone());
    }
    let mask: Vec<f32> = (0..x.elem_count()).map(|i| d.mask(i)).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x * mask
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub base: Base,
    pub bias: Option<Tensor>,
    pub adapters: Vec<LoraAdapter>,
}

/// `x` (any leading dims) times `wt`, an `[in, out]` matrix (a `[out, in]` weight's `.t()` view
/// works as well).
fn matmul(x: &Tensor, wt: &Tensor) -> Result<Tensor> {
    let (in_features, out_features) = wt.dims2()?;
    let lead: Vec<usize> = x.dims()[..x.rank() - 1].to_vec();
    let rows = lead.iter().product::<usize>();
    let y = x.reshape((rows, in_features))?.matmul(wt)?;
    let mut shape = lead;
    shape.push(out_features);
    y.reshape(shape)
}

impl Linear {
    /// A dense layer from a `[out, in]` weight, stored in the faster layout for its device.
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        let (out, inp) = weight.dims2()?;
        let base = if weight.device().is_cpu() && weight.dtype() == DType::F32 {
            let values = weight.flatten_all()?.to_vec1::<f32>()?;
            drop(weight);
            Base::Packed(Arc::new(Packed::new(&values, out, inp)))
        } else if weight.device().is_cpu() && out <= PRETRANSPOSE_MAX_OUT {
            Base::DenseT(weight.t()?.contiguous()?)
        } else {
            Base::Dense(weight)
        };
        Ok(Linear { base, bias, adapters: Vec::new() })
    }

    /// The weight as `[out, in]`, whatever the layout (not for quantized layers).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.base {
            Base::Dense(w) => Ok(w.clone()),
            Base::DenseT(wt) => wt.t(),
            Base::Packed(p) => dense(p.as_ref()),
            Base::Quantized(_) => candle_core::bail!("a quantized layer has no dense weight"),
            Base::QPacked(q) => dense(q.as_ref()),
            Base::Dequant(q) => q.dequantize(&q.device()),
        }
    }

    /// (in_features, out_features), whatever the base.
    pub fn features(&self) -> Result<(usize, usize)> {
        Ok(match &self.base {
            Base::Dense(w) => (w.dim(1)?, w.dim(0)?),
            Base::DenseT(wt) => (wt.dim(0)?, wt.dim(1)?),
            Base::Packed(p) => (p.in_features(), p.out_features()),
            Base::Quantized(q) => match q.as_ref() {
                QMatMul::QTensor(t) => {
                    let d = t.shape().dims();
                    (d[1], d[0])
                }
                QMatMul::Tensor(w) | QMatMul::TensorF16(w) => (w.dim(1)?, w.dim(0)?),
            },
            Base::Dequant(q) => {
                let d = q.shape().dims();
                (d[1], d[0])
            }
            Base::QPacked(q) => (q.in_features(), q.out_features()),
        })
    }

    /// Bytes of the base weight as held (what a forward pass streams).
    pub fn weight_bytes(&self) -> usize {
        match &self.base {
            Base::Dense(w) | Base::DenseT(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Base::Packed(p) => p.out_features() * p.in_features() * 4,
            Base::QPacked(q) => q.size_in_bytes(),
            Base::Quantized(q) => match q.as_ref() {
                QMatMul::QTensor(t) => t.storage_size_in_bytes(),
                QMatMul::Tensor(w) | QMatMul::TensorF16(w) => w.elem_count() * w.dtype().size_in_bytes(),
            },
            Base::Dequant(q) => q.storage_size_in_bytes(),
        }
    }

    pub fn quantized(weight: QMatMul, bias: Option<Tensor>) -> Linear {
        Linear { base: Base::Quantized(Arc::new(weight)), bias, adapters: Vec::new() }
    }

    pub fn qpacked(weight: QPacked, bias: Option<Tensor>) -> Linear {
        Linear { base: Base::QPacked(Arc::new(weight)), bias, adapters: Vec::new() }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.fused_training(x)? {
            return Ok(y);
        }
        let mut y = match &self.base {
            Base::Dense(w) => matmul(x, &w.t()?)?,
            Base::DenseT(wt) => matmul(x, wt)?,
            Base::Packed(p) => x.contiguous()?.apply_op1(CpuMatmul(p.clone()))?,
            Base::Quantized(q) => q.forward(x)?,
            Base::QPacked(q) => x.contiguous()?.apply_op1(CpuMatmul(q.clone()))?,
            Base::Dequant(q) => {
                let out_features = q.shape().dims()[0];
                let w = q.dequantize(x.device())?.to_dtype(x.dtype())?;
                let y = matmul(&x.detach(), &w.t()?)?;
                drop(w);
                if x.track_op() {
                    (y + x.apply_op1(InputGrad { weight: q.clone(), out_features })?)?
                } else {
                    y
                }
            }
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        for adapter in self.adapters.iter().filter(|a| a.enabled) {
            let mask = match &*adapter.gate.read().unwrap_or_else(|e| e.into_inner()) {
                GateState::Off => continue,
                GateState::All => None,
                GateState::Rows(m) => Some(m.clone()),
            };
            let input = match adapter.dropout {
                Some(d) => dropout(x, d)?,
                None => x.clone(),
            };
            let down = matmul(&input, &adapter.a.to_dtype(x.dtype())?.t()?)?;
            let mut up = (matmul(&down, &adapter.b.to_dtype(x.dtype())?.t()?)? * adapter.scale)?;
            if let Some(m) = mask {
                up = up.broadcast_mul(&m.to_dtype(up.dtype())?)?;
            }
            y = (y + up)?;
        }
        Ok(y)
    }
}

impl Linear {
    /// The base weight when it is a CPU weight in panels (what the fused training ops take).
    fn cpu_base(&self) -> Option<Arc<dyn CpuWeight>> {
        match &self.base {
            Base::Packed(p) => Some(p.clone()),
            Base::QPacked(q) => Some(q.clone()),
            _ => None,
        }
    }

    /// The frozen CPU weight behind a projection with no bias and no enabled adapter (what
    /// [`crate::model::kernels::fused::head_nll`] takes), or None.
    pub fn plain_cpu_weight(&self) -> Option<Arc<dyn CpuWeight>> {
        if self.bias.is_some() || self.adapters.iter().any(|a| a.enabled) {
            return None;
        }
        self.cpu_base()
    }

    /// Training's one-node LoRA ([`crate::model::kernels::fused::lora`]): a CPU weight in panels, no bias, one
    /// adapter on every row whose A and B are being trained, f32 activations.
    fn fused_training(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(base) = self.cpu_base() else { return Ok(None) };
        let mut enabled = self.adapters.iter().filter(|a| a.enabled);
        let (Some(adapter), None) = (enabled.next(), enabled.next()) else { return Ok(None) };
        let everywhere = matches!(&*adapter.gate.read().unwrap_or_else(|e| e.into_inner()), GateState::All);
        let trained = adapter.a.track_op() || adapter.b.track_op();
        if !everywhere
            || !trained
            || self.bias.is_some()
            || !crate::model::kernels::fused::usable(x)
            || !crate::model::kernels::fused::usable(&adapter.a)
            || !crate::model::kernels::fused::usable(&adapter.b)
        {
            return Ok(None);
        }
        crate::model::kernels::fused::lora(x, base, &adapter.a, &adapter.b, adapter.scale, adapter.dropout).map(Some)
    }
}

impl Linear {
    /// The GGML block type the frozen weight is stored in (a GGUF file's blocks, or QLoRA's),
    /// None for a dense weight.
    pub fn block_type(&self) -> Option<GgmlDType> {
        match &self.base {
            Base::QPacked(q) => Some(q.dtype()),
            Base::Dequant(q) => Some(q.dtype()),
            Base::Quantized(q) => match q.as_ref() {
                QMatMul::QTensor(t) => Some(t.dtype()),
                _ => None,
            },
            Base::Dense(_) | Base::DenseT(_) | Base::Packed(_) => None,
        }
    }
}

/// The opposite of [`quantize_projections`]: every projection stored in GGML blocks (a GGUF
/// file's) becomes a dense weight in the activations' layout, so LoRA trains over the
/// dequantized values instead of decoding the blocks at each use. Returns (bytes before, bytes
/// after). `dtype`: the activations' type.
pub fn dequantize_projections(linears: Vec<(String, &mut Linear)>, dtype: DType) -> anyhow::Result<(usize, usize)> {
    let (mut before, mut after) = (0, 0);
    for (name, linear) in linears {
        if linear.block_type().is_none() {
            continue;
        }
        let w = match &linear.base {
            Base::Quantized(q) => match q.as_ref() {
                QMatMul::QTensor(t) => t.dequantize(&t.device()),
                _ => continue,
            },
            _ => linear.weight(),
        }
        .map_err(|e| anyhow::anyhow!("{name}: cannot dequantize the weight: {e}"))?;
        before += linear.weight_bytes();
        linear.base = Linear::dense(w.to_dtype(dtype)?, None)?.base;
        after += linear.weight_bytes();
    }
    Ok((before, after))
}

/// QLoRA: stores every dense projection's weight as `dtype` blocks ([`Base::Dequant`]), so
/// training keeps a 4-bit base. Returns (bytes before, bytes after) of the projections. A
/// projection whose input size is not a multiple of the block is named.
pub fn quantize_projections(linears: Vec<(String, &mut Linear)>, dtype: GgmlDType) -> anyhow::Result<(usize, usize)> {
    let (mut before, mut after) = (0, 0);
    for (name, linear) in linears {
        let w = match &linear.base {
            Base::Dense(_) | Base::DenseT(_) | Base::Packed(_) => linear.weight()?.contiguous()?,
            _ => continue,
        };
        let (out, inp) = w.dims2()?;
        if inp % dtype.block_size() != 0 {
            anyhow::bail!(
                "{name}: {inp} input features are not a multiple of {dtype:?}'s block of {}; choose another --qlora type (q4_0 and q8_0 use blocks of 32)",
                dtype.block_size()
            );
        }
        before += out * inp * w.dtype().size_in_bytes();
        let q = QTensor::quantize(&w.to_dtype(candle_core::DType::F32)?, dtype)?;
        after += q.storage_size_in_bytes();
        linear.base = Base::Dequant(Arc::new(q));
    }
    Ok((before, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn adapters_add_the_scaled_low_rank_product() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12., &dev)?.reshape((3, 4))?;
        let b = Tensor::new(&[1f32, -1., 0.5], &dev)?;
        let x = Tensor::arange(0f32, 8., &dev)?.reshape((1, 2, 4))?;
        let mut layer = Linear::dense(w.clone(), Some(b.clone()))?;
        assert!(matches!(layer.base, Base::Packed(_)));
        assert_eq!(layer.weight()?.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        let plain = layer.forward(&x)?;
        // x Wᵀ + b by hand for the first row: [0,1,2,3]·rows of W + b.
        assert_eq!(plain.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[..3], [15., 37., 62.5]);
        let a = Tensor::ones((2, 4), DType::F32, &dev)?;
        let bb = Tensor::ones((3, 2), DType::F32, &dev)?;
        layer.adapters.push(LoraAdapter {
            name: "x".into(),
            a,
            b: bb,
            scale: 0.5,
            enabled: true,
            dropout: None,
            gate: new_gate(),
        });
        let with = layer.forward(&x)?;
        // Each output gains 0.5 · 2 · Σx = Σx.
        let diff = (with - &plain)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(diff, [6., 6., 6., 22., 22., 22.]);
        layer.adapters[0].enabled = false;
        assert_eq!(layer.forward(&x)?.flatten_all()?.to_vec1::<f32>()?, plain.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    #[test]
    fn a_gguf_block_weight_trains_like_its_dequantized_copy() -> Result<()> {
        // The input's gradient through the quantized kernel's op equals the one through the
        // packed f32 weight holding the same (dequantized) values: QLoRA on a GGUF file.
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (40, 64), &dev)?;
        let q = QTensor::quantize(&w, GgmlDType::Q4_1)?;
        let quant = Linear::qpacked(QPacked::new(&q)?.expect("Q4_1 is supported"), None);
        let plain = Linear::dense(q.dequantize(&dev)?, None)?;
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (3, 64), &dev)?)?;
        let grad = |layer: &Linear| -> Result<Vec<f32>> {
            let y = layer.forward(x.as_tensor())?;
            let g = (y.sqr()?.sum_all()?).backward()?;
            g.get(x.as_tensor()).expect("x has a gradient").flatten_all()?.to_vec1::<f32>()
        };
        for (a, b) in grad(&quant)?.iter().zip(grad(&plain)?) {
            assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
        Ok(())
    }
}
