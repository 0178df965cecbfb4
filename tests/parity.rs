//! Parity with Hugging Face transformers. `scripts/make_tiny_models.py` made each model in
//! tests/fixtures/models with transformers (float32, eager attention) and recorded, per prompt,
//! `tokenizer(prompt)` ids, the last-position logits and the 32-token greedy continuation.
//! Here selfspec must reproduce them: ids exactly, logits within 1e-4, greedy tokens exactly, one
//! prompt at a time and all prompts in one batch of mixed lengths.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use selfspec::decode::{self, Request};
use selfspec::model::{DTypeChoice, Model, Pass};

struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    last_logits: Vec<f32>,
    greedy_ids: Vec<u32>,
}

fn models() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    // Every model made by scripts/make_tiny_models.py has its transformers reference beside it
    // (the writer fixture, trained for the generation tests, has none).
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().is_some_and(|n| n != "writer"))
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 12, "{dirs:?}");
    assert!(dirs.iter().all(|d| d.join("expected.json").exists()), "{dirs:?}");
    dirs
}

fn cases(dir: &Path) -> Vec<Case> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids =
        |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_string(),
            prompt_ids: ids(&c["prompt_ids"]),
            last_logits: c["last_logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
            greedy_ids: ids(&c["greedy_ids"]),
        })
        .collect()
}

fn load(dir: &Path) -> Model {
    Model::load(dir.to_str().unwrap(), DTypeChoice::F32, &Device::Cpu).unwrap()
}

fn greedy(prompt: &[u32]) -> Request {
    Request::new(prompt.to_vec(), 32)
}

#[test]
fn tokens_and_last_logits_match_transformers() {
    for dir in models() {
        let model = load(&dir);
        for case in cases(&dir) {
            assert_eq!(model.tokenizer.encode(&case.prompt).unwrap(), case.prompt_ids, "{dir:?} {:?}", case.prompt);
            let mut cache = model.decoder.new_cache(vec![0]);
            let input = Tensor::new(case.prompt_ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let logits = model.decoder.forward(&input, &mut cache, Pass::Inference, true).unwrap();
            let ours = logits.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
            let worst = ours.iter().zip(&case.last_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-4, "{}: {:?}: max |Δlogit| {worst}", dir.display(), case.prompt);
        }
    }
}

#[test]
fn greedy_continuations_match_one_at_a_time_and_batched() {
    let cancel = AtomicBool::new(false);
    for dir in models() {
        let model = load(&dir);
        let cases = cases(&dir);
        let opts = decode::Options::default();
        for case in &cases {
            let (out, _) = decode::generate(&model, &[greedy(&case.prompt_ids)], &opts, &mut |_| {}, &cancel).unwrap();
            assert_eq!(out[0].ids, case.greedy_ids, "{}: {:?} alone", dir.display(), case.prompt);
        }
        let requests: Vec<Request> = cases.iter().map(|c| greedy(&c.prompt_ids)).collect();
        let (out, _) = decode::generate(&model, &requests, &opts, &mut |_| {}, &cancel).unwrap();
        for (c, o) in cases.iter().zip(&out) {
            assert_eq!(o.ids, c.greedy_ids, "{}: {:?} in a batch of {}", dir.display(), c.prompt, cases.len());
            assert_eq!(o.text, model.tokenizer.decode(&c.greedy_ids).unwrap());
        }
    }
}

/// Rows that finish early leave the batch (their cache rows dropped, padding trimmed); the rows
/// that stay must still match transformers.
#[test]
fn rows_leaving_the_batch_do_not_disturb_the_others() {
    let cancel = AtomicBool::new(false);
    for dir in models() {
        let model = load(&dir);
        let cases = cases(&dir);
        let lengths = [5, 32, 12, 21];
        let requests: Vec<Request> =
            cases.iter().zip(lengths).map(|(c, n)| Request { max_new_tokens: n, ..greedy(&c.prompt_ids) }).collect();
        let opts = decode::Options::default();
        let (out, _) = decode::generate(&model, &requests, &opts, &mut |_| {}, &cancel).unwrap();
        for ((c, o), n) in cases.iter().zip(&out).zip(lengths) {
            let want = &c.greedy_ids[..n.min(c.greedy_ids.len())];
            assert_eq!(o.ids, want, "{}: {:?} with {n} new tokens", dir.display(), c.prompt);
        }
    }
}

#[test]
fn the_training_pass_computes_the_same_logits() {
    for dir in models() {
        let model = load(&dir);
        let case = &cases(&dir)[3];
        let input = Tensor::new(case.prompt_ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let mut cache = model.decoder.new_cache(vec![0]);
        let logits = model.decoder.forward(&input, &mut cache, Pass::Training, true).unwrap();
        let ours = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&case.last_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{}: training pass max |Δlogit| {worst}", dir.display());
    }
}

#[test]
fn complete_json_prints_transformers_ids_and_top5() {
    for dir in models() {
        let case = &cases(&dir)[2];
        let out = common::selfspec()
            .args(["complete", "--model", dir.to_str().unwrap(), "--prompt", &case.prompt, "--greedy", "--json"])
            .args(["--max-new-tokens", "32", "--device", "cpu"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
        assert_eq!(ids("prompt_ids"), case.prompt_ids);
        assert_eq!(ids("ids"), case.greedy_ids);
        let mut order: Vec<usize> = (0..case.last_logits.len()).collect();
        order.sort_by(|&a, &b| case.last_logits[b].total_cmp(&case.last_logits[a]));
        let top5 = v["top5"].as_array().unwrap();
        assert_eq!(top5.len(), 5);
        for (k, pair) in top5.iter().enumerate() {
            let (id, logit) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            assert_eq!(id, order[k], "{}: top5[{k}]", dir.display());
            assert!((logit - case.last_logits[id]).abs() <= 1e-4);
        }
    }
}
