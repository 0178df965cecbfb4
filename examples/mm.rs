//! candle f32 matmul at decode shapes, weight stored [out, in] (viewed transposed) or [in, out].
//! `cargo run --release --example mm`
use candle_core::{DType, Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    for (m, k, n) in [
        (8usize, 512usize, 32000usize),
        (1, 512, 32000),
        (8, 512, 1376),
        (8, 1376, 512),
        (64, 512, 1376),
        (512, 512, 1376),
    ] {
        let x = Tensor::randn(0f32, 1., (m, k), &d)?;
        let w = Tensor::randn(0f32, 1., (n, k), &d)?; // [out, in]
        let wt = w.t()?.contiguous()?; // [in, out]
        let reps = 50;
        let _ = x.matmul(&w.t()?)?;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = x.matmul(&w.t()?)?;
        }
        let a = t.elapsed().as_secs_f64() / reps as f64;
        let _ = x.matmul(&wt)?;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = x.matmul(&wt)?;
        }
        let b = t.elapsed().as_secs_f64() / reps as f64;
        let fl = 2.0 * (m * k * n) as f64;
        println!(
            "m{m} k{k} n{n}: w.t() {:.3} ms ({:.1} GF/s)  pre-transposed {:.3} ms ({:.1} GF/s)",
            a * 1e3,
            fl / a / 1e9,
            b * 1e3,
            fl / b / 1e9
        );
        let _ = DType::F32;
    }
    Ok(())
}
