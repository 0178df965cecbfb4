//! selfspec's quantized kernels (src/model/kernels/qpacked/) against candle's `QMatMul` and against the
//! packed f32 kernel, on the projections of one decode step of SmolLM2-135M's shape (30 layers,
//! hidden 576, intermediate 1536, 3 of 9 heads for k/v; cold: more than any cache), at the row
//! counts of decoding and prefill. Prints GB/s of weights streamed, the time per step, and the
//! time of as many products over one weight that stays in cache.
//! `cargo run --release --example qpacked [q4_1|q4_0|q8_0|q4k|q5k|q6k|q5_0|q5_1]`
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use selfspec::model::kernels::packed::Packed;
use selfspec::model::kernels::qpacked::QPacked;

fn main() -> candle_core::Result<()> {
    let dtype = match std::env::args().nth(1).as_deref() {
        None | Some("q4_1") => GgmlDType::Q4_1,
        Some("q4_0") => GgmlDType::Q4_0,
        Some("q5_0") => GgmlDType::Q5_0,
        Some("q5_1") => GgmlDType::Q5_1,
        Some("q8_0") => GgmlDType::Q8_0,
        Some("q4k") => GgmlDType::Q4K,
        Some("q5k") => GgmlDType::Q5K,
        Some("q6k") => GgmlDType::Q6K,
        Some(other) => panic!("unknown type {other}"),
    };
    let d = Device::Cpu;
    let (h, f, kv) = (576usize, 1536usize, 192usize);
    let mut shapes = Vec::new();
    for _ in 0..30 {
        shapes.extend([(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)]);
    }
    // K types need rows of 256: the down projection's 1536 inputs fit, 576 do not; use 768 then.
    if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K) {
        for s in &mut shapes {
            if s.1 == 576 {
                s.1 = 768;
            }
        }
    }
    let weights: Vec<QTensor> = shapes
        .iter()
        .map(|&(o, i)| QTensor::quantize(&Tensor::randn(0f32, 1., (o, i), &d)?, dtype))
        .collect::<candle_core::Result<_>>()?;
    let ours: Vec<QPacked> = weights.iter().map(|q| QPacked::new(q).unwrap().unwrap()).collect();
    let f32s: Vec<Packed> = weights
        .iter()
        .map(|q| {
            let (o, i) = q.shape().dims2().unwrap();
            Packed::new(&q.dequantize(&d).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), o, i)
        })
        .collect();
    let candle: Vec<QMatMul> = weights.into_iter().map(QMatMul::from_qtensor).collect::<candle_core::Result<_>>()?;
    let file_mb: f64 = shapes.iter().map(|(o, i)| o * i).sum::<usize>() as f64 * dtype.type_size() as f64
        / dtype.block_size() as f64
        / 1e6;
    let ours_mb: f64 = ours.iter().map(|q| q.size_in_bytes()).sum::<usize>() as f64 / 1e6;
    let f32_mb: f64 = shapes.iter().map(|(o, i)| o * i * 4).sum::<usize>() as f64 / 1e6;
    println!(
        "{dtype:?}: {} weights, {file_mb:.0} MB in the file, {ours_mb:.0} MB decoded, {f32_mb:.0} MB as f32",
        shapes.len()
    );
    println!("{:>5} {:>14} {:>14} {:>14} {:>10}", "rows", "selfspec ms", "candle ms", "f32 packed ms", "ours GB/s");
    for rows in [1usize, 4, 8, 64] {
        let reps = if rows >= 64 { 3 } else { 10 };
        let xs: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(_, i)| Tensor::randn(0f32, 1., (rows, i), &d).unwrap().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        let time = |run: &dyn Fn()| {
            run();
            let t = Instant::now();
            for _ in 0..reps {
                run();
            }
            t.elapsed().as_secs_f64() / reps as f64 * 1e3
        };
        let t_ours = time(&|| {
            for ((w, x), &(o, _)) in ours.iter().zip(&xs).zip(&shapes) {
                let mut y = vec![0f32; rows * o];
                w.matmul(x, rows, &mut y);
            }
        });
        let t_f32 = time(&|| {
            for ((w, x), &(o, _)) in f32s.iter().zip(&xs).zip(&shapes) {
                let mut y = vec![0f32; rows * o];
                w.matmul(x, rows, &mut y);
            }
        });
        let txs: Vec<Tensor> =
            xs.iter().zip(&shapes).map(|(x, &(_, i))| Tensor::from_vec(x.clone(), (rows, i), &d).unwrap()).collect();
        let t_candle = time(&|| {
            for (w, x) in candle.iter().zip(&txs) {
                w.forward(x).unwrap();
            }
        });
        // One weight (a gate projection, under 1 MB) 180 times over: it stays in cache, so this
        // is the kernel's arithmetic without the memory.
        let hot = &ours[4];
        let hot_x = &xs[4];
        let t_hot = time(&|| {
            for _ in 0..180 {
                let mut y = vec![0f32; rows * hot.out_features()];
                hot.matmul(hot_x, rows, &mut y);
            }
        });
        println!(
            "{rows:>5} {t_ours:>14.2} {t_candle:>14.2} {t_f32:>14.2} {:>10.1}   (in cache: {t_hot:.2} ms)",
            ours_mb / t_ours
        );
    }
    Ok(())
}
