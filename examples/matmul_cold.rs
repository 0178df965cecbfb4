//! How fast candle's f32 matmul streams a weight too large for any cache, at decode-sized row
//! counts: the bound on CPU decode speed. `cargo run --release --example matmul_cold`
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let (n, k) = (140_000usize, 512usize);
    let w = Tensor::randn(0f32, 1., (n, k), &Device::Cpu)?;
    let gb = (n * k * 4) as f64 / 1e9;
    for m in [1usize, 2, 4, 8, 16, 64] {
        let x = Tensor::randn(0f32, 1., (m, k), &Device::Cpu)?;
        let _ = x.matmul(&w.t()?)?;
        let t = Instant::now();
        for _ in 0..5 {
            let _ = x.matmul(&w.t()?)?;
        }
        let s = t.elapsed().as_secs_f64() / 5.0;
        println!("rows {m:<3} {:.1} ms per pass over {:.0} MB = {:.1} GB/s", s * 1e3, gb * 1e3, gb / s);
    }
    Ok(())
}
