//! `selfspec bench`: the speed measurements behind docs/PERFORMANCE.md — BM25 queries, decoding,
//! the retrieval mixture's step cost, memory bandwidth, and QLoRA's block types.

use std::path::Path;

use anyhow::Context;

use crate::decode::Request;
use crate::model::{Choice, Model};

pub fn search(index: &Path, queries_file: &Path, k: usize, json: bool) -> anyhow::Result<()> {
    let searcher = crate::corpus::Searcher::open(index)?;
    let text =
        std::fs::read_to_string(queries_file).with_context(|| format!("cannot read {}", queries_file.display()))?;
    let queries: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    anyhow::ensure!(!queries.is_empty(), "{}: no queries (one query a line)", queries_file.display());
    let started = std::time::Instant::now();
    let mut hits = 0;
    for q in &queries {
        hits += searcher.search(q, k)?.len();
    }
    let rate = queries.len() as f64 / started.elapsed().as_secs_f64();
    // The Corpus tab's query: the same hits with their passages and marked words.
    let started = std::time::Instant::now();
    for q in &queries {
        searcher.search_highlighted(q, k, 240)?;
    }
    let marked = queries.len() as f64 / started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({"impl": "selfspec (tantivy)", "documents": searcher.num_docs(), "queries": queries.len(), "k": k, "queries_per_s": rate, "highlighted_queries_per_s": marked, "hits": hits})
        );
    } else {
        println!(
            "{} queries over {} documents: {rate:.0} queries/s, {marked:.0}/s with passages marked (k {k}, one thread)",
            queries.len(),
            searcher.num_docs()
        );
    }
    Ok(())
}

/// The shape of a decode benchmark.
pub struct Shape {
    pub batch: usize,
    pub prompt_len: usize,
    pub new_tokens: usize,
    pub warmup: usize,
    pub repeat: usize,
    /// Keys and values kept in f16 (generate's default), else f32.
    pub half_kv: bool,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn qlora(choice: &Choice, prompt_len: usize) -> anyhow::Result<()> {
    use crate::model::gguf::QuantType;
    let dense = choice.load()?;
    let vocab = dense.decoder.spec.vocab_size as u64;
    let mut rng = crate::rng::Rng::new(5);
    let ids: Vec<u32> = (0..prompt_len).map(|_| (rng.next_u64() % vocab) as u32).collect();
    let logits = |m: &Model| -> anyhow::Result<Vec<f32>> {
        let input = candle_core::Tensor::new(ids.as_slice(), m.decoder.device())?.unsqueeze(0)?;
        let mut cache = m.decoder.new_cache(vec![0]);
        let out = m.decoder.forward(&input, &mut cache, crate::model::Pass::Inference, false)?;
        Ok(out.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?)
    };
    let reference = logits(&dense)?;
    let range = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    drop(dense);
    println!("{prompt_len} random tokens, logits at every position against the full-precision model");
    println!("{:<6} {:>14} {:>10} {:>14} {:>14}", "type", "projections", "bits/w", "mean |Δlogit|", "max |Δ|/max|l|");
    for t in [QuantType::Q4_0, QuantType::Q4k, QuantType::Q8_0] {
        let mut m = choice.load()?;
        let count: usize = m.decoder.linears_mut().iter().map(|(_, l)| l.features().map_or(0, |(i, o)| i * o)).sum();
        let (_, after) = match crate::model::network::linear::quantize_projections(m.decoder.linears_mut(), t.ggml()) {
            Ok(x) => x,
            Err(e) => {
                println!("{:<6} {e}", format!("{t:?}").to_lowercase());
                continue;
            }
        };
        let got = logits(&m)?;
        let diffs: Vec<f32> = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).collect();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        let max = diffs.iter().fold(0f32, |m, &d| m.max(d));
        println!(
            "{:<6} {:>11.1} MB {:>10.2} {:>14.5} {:>13.2}%",
            format!("{t:?}").to_lowercase(),
            after as f64 / 1e6,
            after as f64 * 8.0 / count as f64,
            mean,
            max / range * 100.0
        );
    }
    Ok(())
}

pub fn marginal(
    choice: &Choice,
    k: usize,
    prompt_len: usize,
    new_tokens: usize,
    repeat: usize,
    json: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(k >= 1 && prompt_len >= 1 && new_tokens >= 2, "--k, --prompt-len ≥ 1 and --new-tokens ≥ 2");
    let model = choice.load()?;
    let vocab = model.decoder.spec.vocab_size as u64;
    let mut rng = crate::rng::Rng::new(99);
    let prompts: Vec<Vec<u32>> =
        (0..k).map(|_| (0..prompt_len).map(|_| (rng.next_u64() % vocab) as u32).collect()).collect();
    let plain = Request { ignore_eos: true, ..Request::new(prompts[0].clone(), new_tokens) };
    let weights = crate::generate::pipeline::Weighting::Softmax { temperature: 1.0 }
        .weights(&(0..k).map(|i| 20.0 - i as f32).collect::<Vec<_>>());
    let mixed = Request { prompts: prompts.clone(), weights, ..plain.clone() };
    let opts = crate::decode::Options { max_batch: k, ..Default::default() };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let step_ms = |req: &Request| -> anyhow::Result<(f64, f64)> {
        let mut steps = Vec::new();
        let mut prefills = Vec::new();
        crate::decode::generate(&model, &[Request { max_new_tokens: 4, ..req.clone() }], &opts, &mut |_| {}, &cancel)?;
        for _ in 0..repeat.max(1) {
            let (_, t) = crate::decode::generate(&model, std::slice::from_ref(req), &opts, &mut |_| {}, &cancel)?;
            // decode_tokens counts tokens generated: one a step for the one request.
            steps.push(t.decode_secs * 1e3 / t.decode_tokens as f64);
            prefills.push(t.prefill_secs * 1e3);
        }
        Ok((median(steps), median(prefills)))
    };
    let (plain_step, plain_prefill) = step_ms(&plain)?;
    let (mixed_step, mixed_prefill) = step_ms(&mixed)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "k": k, "prompt_len": prompt_len, "new_tokens": new_tokens,
                "plain_step_ms": plain_step, "marginal_step_ms": mixed_step, "step_ratio": mixed_step / plain_step,
                "plain_prefill_ms": plain_prefill, "marginal_prefill_ms": mixed_prefill,
            })
        );
    } else {
        println!("prompt {prompt_len} tokens, {new_tokens} new tokens, median of {} runs", repeat.max(1));
        println!("plain step:       {plain_step:8.2} ms   (prefill {plain_prefill:.1} ms)");
        println!(
            "marginal step:    {mixed_step:8.2} ms   (prefill {mixed_prefill:.1} ms; k = {k} prompts, mixed)  {:.2}× plain",
            mixed_step / plain_step
        );
    }
    Ok(())
}

pub fn memory(json: bool) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let n = 512 << 20 >> 2;
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![0f32; n];
    let chunk = n.div_ceil(rayon::current_num_threads().max(1) * 4);
    let (mut copies, mut reads) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = std::time::Instant::now();
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        copies.push((n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = std::time::Instant::now();
        // Integer sums of the bits: vectorised, so the loop waits on memory, not on adds.
        let sum: u32 = dst
            .par_chunks(chunk)
            .map(|c| c.iter().map(|x| x.to_bits()).fold(0u32, u32::wrapping_add))
            .reduce(|| 0, u32::wrapping_add);
        reads.push((n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        std::hint::black_box(sum);
    }
    let (copy, read) = (median(copies), median(reads));
    let threads = rayon::current_num_threads();
    if json {
        println!(
            "{}",
            serde_json::json!({"copy_gb_per_s": copy, "read_gb_per_s": read, "threads": threads, "bytes": n * 4})
        );
    } else {
        println!("copy: {copy:.1} GB/s (bytes copied)  read: {read:.1} GB/s  ({threads} threads, 512 MiB)");
    }
    Ok(())
}

pub fn decode(choice: &Choice, shape: Shape, json: bool) -> anyhow::Result<()> {
    let Shape { batch, prompt_len, new_tokens, warmup, repeat, half_kv } = shape;
    anyhow::ensure!(
        batch > 0 && prompt_len > 0 && new_tokens > 1,
        "--batch and --prompt-len must be ≥ 1, --new-tokens ≥ 2"
    );
    let model = choice.load()?;
    let vocab = model.decoder.spec.vocab_size as u64;
    let mut rng = crate::rng::Rng::new(1234);
    let requests: Vec<Request> = (0..batch)
        .map(|_| Request {
            ignore_eos: true,
            ..Request::new((0..prompt_len).map(|_| (rng.next_u64() % vocab) as u32).collect(), new_tokens)
        })
        .collect();
    let opts = crate::decode::Options { max_batch: batch, half_kv, ..Default::default() };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    for _ in 0..warmup {
        let short: Vec<Request> = requests.iter().map(|r| Request { max_new_tokens: 4, ..r.clone() }).collect();
        crate::decode::generate(&model, &short, &opts, &mut |_| {}, &cancel)?;
    }
    let mut prefills = Vec::new();
    let mut decodes = Vec::new();
    let mut t = crate::decode::Timing::default();
    for _ in 0..repeat.max(1) {
        t = crate::decode::generate(&model, &requests, &opts, &mut |_| {}, &cancel)?.1;
        prefills.push(t.prefill_tokens as f64 / t.prefill_secs);
        decodes.push(t.decode_tokens as f64 / t.decode_secs);
    }
    let runs = prefills.len();
    let (prefill, decode) = (median(prefills), median(decodes));
    let device = if model.decoder.device().is_cuda() { "cuda" } else { "cpu" };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "model": choice.name.clone(), "device": device, "dtype": format!("{:?}", model.decoder.dtype()).to_lowercase(),
                "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens, "repeat": repeat,
                "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode,
                "prefill_tokens": t.prefill_tokens, "decode_tokens": t.decode_tokens,
                "step_weight_bytes": model.decoder.step_weight_bytes(),
            })
        );
    } else {
        println!(
            "model {} on {device} ({:?}), batch {batch}, prompt {prompt_len}, new {new_tokens}, median of {runs} runs",
            choice.name.clone(),
            model.decoder.dtype()
        );
        println!("prefill: {prefill:>10.1} tokens/s  ({} tokens a run)", t.prefill_tokens);
        println!("decode:  {decode:>10.1} tokens/s  ({} tokens a run)", t.decode_tokens);
    }
    Ok(())
}
