//! The packed f32 kernel (src/model/kernels/packed.rs) against candle's matmul on the weights of one
//! decode step of a 6-layer, hidden-512 model (cold: 142 MB, more than any cache), at the row
//! counts of decoding and prefill. `cargo run --release --example packed`
use candle_core::{Device, Tensor};
use selfspec::model::kernels::packed::Packed;
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    let mut shapes = Vec::new();
    for _ in 0..6 {
        shapes.extend([
            (512usize, 512usize),
            (512, 512),
            (512, 512),
            (512, 512),
            (1376, 512),
            (1376, 512),
            (512, 1376),
        ]);
    }
    shapes.push((32000, 512));
    let weights: Vec<Tensor> =
        shapes.iter().map(|&(o, i)| Tensor::randn(0f32, 1., (o, i), &d)).collect::<candle_core::Result<_>>()?;
    // candle's fastest layouts: [in, out] for projections, [out, in] for the head.
    let candle_w: Vec<Tensor> = weights
        .iter()
        .map(|w| if w.dim(0).unwrap() <= 16384 { w.t().unwrap().contiguous().unwrap() } else { w.t().unwrap() })
        .collect();
    let packed: Vec<Packed> = weights
        .iter()
        .map(|w| {
            let (o, i) = w.dims2().unwrap();
            Packed::new(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), o, i)
        })
        .collect();
    let mb = shapes.iter().map(|(o, i)| o * i * 4).sum::<usize>() as f64 / 1e6;
    for rows in [1usize, 4, 8, 16, 64, 512] {
        let reps = if rows >= 64 { 3 } else { 10 };
        let xs: Vec<Tensor> =
            shapes.iter().map(|&(_, i)| Tensor::randn(0f32, 1., (rows, i), &d)).collect::<candle_core::Result<_>>()?;
        let xv: Vec<Vec<f32>> = xs.iter().map(|x| x.flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect();
        let flops = shapes.iter().map(|(o, i)| 2 * o * i * rows).sum::<usize>() as f64;
        let t = Instant::now();
        for _ in 0..reps {
            for (x, w) in xs.iter().zip(&candle_w) {
                std::hint::black_box(x.matmul(w)?);
            }
        }
        let a = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            for ((x, p), &(o, _)) in xv.iter().zip(&packed).zip(&shapes) {
                let mut y = vec![0f32; rows * o];
                p.matmul(x, rows, &mut y);
                std::hint::black_box(y);
            }
        }
        let b = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "rows {rows:<4} candle {:7.2} ms ({:5.1} GB/s, {:5.1} GF/s)   packed {:7.2} ms ({:5.1} GB/s, {:5.1} GF/s)   {:.2}x",
            a * 1e3,
            mb / a / 1e3,
            flops / a / 1e9,
            b * 1e3,
            mb / b / 1e3,
            flops / b / 1e9,
            a / b
        );
    }
    Ok(())
}
