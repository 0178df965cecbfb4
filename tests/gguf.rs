//! GGUF: files written by `selfspec quantize` (Q4_0, Q4_K, Q8_0) and three written by the gguf
//! package alone (no selfspec code), against transformers on the same files, which dequantizes
//! them with the gguf package: scripts/make_gguf_fixtures.py recorded its logits and greedy
//! tokens. Two of the package's files carry what llama.cpp keeps outside the weights — Llama 3
//! rope scaling as `rope_freqs`, Mistral's sliding window — and are checked against transformers
//! on the original model. Every parity model (tests/fixtures/models) also goes through
//! `selfspec quantize --type f32` and must still match transformers exactly.
//!
//! Dequantized, selfspec must match exactly (logits to 1e-4, every greedy token): that checks the
//! reader, llama.cpp's q/k permutation, the rope layout, tied heads and biases. Quantized,
//! candle's matmul also rounds the activations to 8 bits, so logits move by a few percent (the
//! bound below is measured, with room) and near-ties may flip.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use selfspec::decode::{self, Request};
use selfspec::model::gguf::{self, Mode};
use selfspec::model::Pass;

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

struct Case {
    prompt: String,
    ids: Vec<u32>,
    logits: Vec<f32>,
    greedy: Vec<u32>,
}

/// The cases of one expected.json list (the fixture scripts write the same fields).
fn cases(list: &serde_json::Value) -> Vec<Case> {
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().into(),
            ids: ids(&c["prompt_ids"]),
            logits: c["last_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect(),
            greedy: ids(&c["greedy_ids"]),
        })
        .collect()
}

fn files() -> Vec<(PathBuf, Vec<Case>)> {
    let mut out = Vec::new();
    for name in ["llama", "qwen2", "llama3-rope", "mistral-window", "gemma3"] {
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir(name).join("expected.json")).unwrap()).unwrap();
        for (file, list) in expected.as_object().unwrap() {
            out.push((dir(name).join(file), cases(list)));
        }
    }
    assert_eq!(out.len(), 8);
    out
}

fn run(path: &Path, mode: Mode, case: &Case) -> (Vec<f32>, Vec<u32>) {
    let model = gguf::load(path, &Device::Cpu, mode).unwrap();
    assert_eq!(model.tokenizer.encode(&case.prompt).unwrap(), case.ids);
    let logits = last_logits(&model, case);
    let req = Request::new(case.ids.clone(), 16);
    let (out, _) = decode::generate(&model, &[req], &Default::default(), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    (logits, out[0].ids.clone())
}

/// The logits after the case's prompt.
fn last_logits(model: &selfspec::model::Model, case: &Case) -> Vec<f32> {
    let mut cache = model.decoder.new_cache(vec![0]);
    let input = Tensor::new(case.ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.decoder.forward(&input, &mut cache, Pass::Inference, true).unwrap();
    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The parity models and transformers' record for them (see tests/parity.rs).
fn parity_models() -> Vec<(PathBuf, Vec<Case>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("expected.json")) else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        out.push((dir, cases(&v["cases"])));
    }
    assert_eq!(out.len(), 12);
    out
}

#[test]
fn every_parity_model_survives_an_f32_round_trip_through_gguf() {
    // Llama 3 rope (rope_freqs), a sliding window, GQA, biases, q/k norms, tied heads, shards;
    // MPT's ALiBi and clamp keys, Falcon's q/k/v rows in llama.cpp's order and back.
    for (dir, cases) in parity_models() {
        let tmp = tempfile::tempdir().unwrap();
        if dir.ends_with("falcon-rw-alibi") {
            // llama.cpp's Falcon has neither ALiBi nor sequential blocks: refused, by name.
            let err = gguf::quantize(&dir, &tmp.path().join("rw.gguf"), gguf::FileType::F32).unwrap_err();
            assert!(err.to_string().contains("Falcon with ALiBi"), "{err}");
            assert!(!tmp.path().join("rw.gguf").exists());
            continue;
        }
        for (qtype, bound) in [(gguf::FileType::F32, None), (gguf::FileType::F16, Some(0.02))] {
            let out = tmp.path().join(format!("{qtype:?}.gguf"));
            gguf::quantize(&dir, &out, qtype).unwrap();
            for case in &cases {
                let (logits, greedy) = run(&out, Mode::Dequantized, case);
                let d = max_diff(&logits, &case.logits);
                match bound {
                    None => {
                        assert!(d <= 1e-4, "{} as {qtype:?}: {:?}: max |Δlogit| {d}", dir.display(), case.prompt);
                        assert_eq!(greedy, case.greedy[..greedy.len()], "{} {:?}", dir.display(), case.prompt);
                    }
                    Some(rel) => {
                        let scale = case.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
                        assert!(d <= rel * scale, "{} as {qtype:?}: max |Δlogit| {d} of {scale}", dir.display());
                    }
                }
            }
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

#[test]
fn dequantized_gguf_matches_transformers_exactly() {
    for (path, cases) in files() {
        for case in &cases {
            let (logits, greedy) = run(&path, Mode::Dequantized, case);
            let d = max_diff(&logits, &case.logits);
            assert!(d <= 1e-4, "{}: {:?}: max |Δlogit| {d}", path.display(), case.prompt);
            assert_eq!(greedy, case.greedy, "{}: {:?}", path.display(), case.prompt);
        }
    }
}

#[test]
fn quantized_gguf_on_the_cpu_matches_transformers() {
    // selfspec's own kernels (src/model/kernels/qpacked/) keep the activations f32 and decode the blocks
    // exactly, so the quantized path gives what transformers gives on the dequantized weights,
    // up to the order of the sums.
    for (path, cases) in files() {
        for case in &cases {
            let (logits, greedy) = run(&path, Mode::Quantized, case);
            let d = max_diff(&logits, &case.logits);
            assert!(d <= 1e-3, "{}: {:?}: max |Δlogit| {d}", path.display(), case.prompt);
            assert_eq!(greedy, case.greedy, "{}: {:?}", path.display(), case.prompt);
        }
    }
}

#[test]
fn quantized_gguf_stays_close() {
    for (path, cases) in files() {
        for case in &cases {
            let (logits, _) = run(&path, Mode::Quantized, case);
            let scale = case.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_diff(&logits, &case.logits);
            assert!(d <= 0.08 * scale, "{}: {:?}: max |Δlogit| {d} of {scale}", path.display(), case.prompt);
            // The top token agrees unless the reference's own top two are closer than the error.
            let top = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            let mut sorted = case.logits.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 2.0 * d {
                assert_eq!(top(&logits), top(&case.logits), "{}: {:?}", path.display(), case.prompt);
            }
        }
    }
}

#[test]
fn broken_gguf_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(dir("llama").join("q8_0.gguf")).unwrap();
    let truncated = tmp.path().join("cut.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::copy(dir("llama").join("tokenizer.json"), tmp.path().join("tokenizer.json")).unwrap();
    let err = gguf::load(&truncated, &Device::Cpu, Mode::Quantized).err().expect("truncated file loads").to_string();
    assert!(err.contains("cut.gguf") && err.contains("truncated"), "{err}");

    let not_gguf = tmp.path().join("text.gguf");
    std::fs::write(&not_gguf, "not a gguf file at all").unwrap();
    let err = gguf::load(&not_gguf, &Device::Cpu, Mode::Quantized).err().expect("text loads").to_string();
    assert!(err.contains("text.gguf: is not a readable GGUF file"), "{err}");

    let alone = tempfile::tempdir().unwrap();
    let lonely = alone.path().join("model.gguf");
    std::fs::write(&lonely, &bytes).unwrap();
    let err = gguf::load(&lonely, &Device::Cpu, Mode::Quantized).err().expect("no tokenizer loads").to_string();
    assert!(
        err.contains("tokenizer.json is missing: this GGUF file carries no tokenizer (no tokenizer.ggml.model)"),
        "{err}"
    );
}

/// Int8 activations (`--int8-activations`, opt-in): the quantized files' logits stay within the
/// rounding of their activations of transformers' (measured: top-5 logits up to 1.7 % of the
/// largest logit off; the bound allows 5 %), the integer kernels really ran (the logits differ
/// from the exact path's), switching back is exact again, and the commands that train refuse
/// them.
#[test]
fn int8_activations_stay_close_and_training_refuses_them() {
    let mut switched = 0;
    for (path, cases) in files() {
        let mut model = gguf::load(&path, &Device::Cpu, Mode::Quantized).unwrap();
        let exact: Vec<Vec<f32>> = cases.iter().map(|c| last_logits(&model, c)).collect();
        let n = model.decoder.set_int8_activations(true);
        if n == 0 {
            continue;
        }
        switched += 1;
        for (case, exact) in cases.iter().zip(&exact) {
            let int8 = last_logits(&model, case);
            let scale = case.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
            let d = max_diff(&int8, &case.logits);
            assert!(d <= 0.05 * scale, "{}: {:?}: max |Δlogit| {d} of {scale}", path.display(), case.prompt);
            assert!(max_diff(&int8, exact) > 0.0, "{}: the int8 kernels did not run", path.display());
        }
        model.decoder.set_int8_activations(false);
        for (case, exact) in cases.iter().zip(&exact) {
            assert_eq!(&last_logits(&model, case), exact, "{}: exact again after switching back", path.display());
        }
    }
    // q4_0.gguf and q4k.gguf on every CPU; the Q8_0 files too except on AVX2 without VNNI,
    // which leaves quants beyond ±64 to the exact products.
    assert!(switched >= 2, "only {switched} files have GGML-block weights the int8 path takes");
    let run = tempfile::tempdir().unwrap();
    for args in
        [vec!["train", "--data", "missing.jsonl", "--run"], vec!["lmc", "x", "y", "--data", "missing.jsonl", "--out"]]
    {
        let out = common::selfspec()
            .args(&args)
            .arg(run.path().join("r"))
            .args(["--model", dir("llama").join("q4_0.gguf").to_str().unwrap(), "--int8-activations"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("--int8-activations is for decoding"), "{args:?}: {err}");
    }
}
