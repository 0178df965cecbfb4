//! LoRA against PEFT (fixtures by scripts/make_lora_fixtures.py): a PEFT adapter loads and gives
//! PEFT's logits; ours saves under PEFT's names and loads back; four training steps from PEFT's
//! initial adapter on the same micro-batches give PEFT's losses, gradient norms and final
//! weights; and `selfspec train` killed with SIGKILL resumes to the same losses.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use selfspec::model::adapters::adapter;
use selfspec::model::{DTypeChoice, Model, Pass};
use selfspec::train::{Batch, TrainConfig, Trainer};

use common::root;

fn base() -> Model {
    Model::load(root().join("tests/fixtures/models/llama3-gqa").to_str().unwrap(), DTypeChoice::F32, &Device::Cpu)
        .unwrap()
}

fn last_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    model.decoder.forward(&input, &mut cache, Pass::Inference, true).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max)
}

#[test]
fn a_peft_adapter_gives_pefts_logits() {
    let dir = root().join("tests/fixtures/lora/peft-adapter");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut model = base();
    let cfg = adapter::load(&mut model, &dir, "peft").unwrap();
    assert_eq!((cfg.r, cfg.scale()), (4, 2.0));
    for case in expected["cases"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        let base_want: Vec<f64> = serde_json::from_value(case["base_logits"].clone()).unwrap();
        let d = max_diff(&last_logits(&model, &ids), &want);
        assert!(d < 1e-4, "with the adapter: max |Δlogit| {d}");
        for (_, l) in model.decoder.linears_mut() {
            l.adapters.iter_mut().for_each(|a| a.enabled = false);
        }
        let d = max_diff(&last_logits(&model, &ids), &base_want);
        assert!(d < 1e-4, "adapter disabled: max |Δlogit| {d}");
        for (_, l) in model.decoder.linears_mut() {
            l.adapters.iter_mut().for_each(|a| a.enabled = true);
        }
    }
}

#[test]
fn our_adapters_use_pefts_names_and_load_back() {
    let src = root().join("tests/fixtures/lora/peft-adapter");
    let mut model = base();
    let cfg = adapter::load(&mut model, &src, "x").unwrap();
    let out = tempfile::tempdir().unwrap();
    adapter::save(&mut model, "x", &cfg, out.path()).unwrap();
    let theirs = candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let ours = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = ours.keys().collect();
    names.sort();
    let mut want: Vec<&String> = theirs.keys().collect();
    want.sort();
    assert_eq!(names, want);
    for (k, t) in &theirs {
        let d = (t - &ours[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{k}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap()).unwrap();
    for key in ["peft_type", "r", "lora_alpha", "target_modules", "task_type", "bias"] {
        assert!(saved.get(key).is_some(), "adapter_config.json lacks {key}");
    }
    // Broken adapters are named with the file and the tensor.
    let bad = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("adapter_config.json"), bad.path().join("adapter_config.json")).unwrap();
    let mut partial: HashMap<String, Tensor> = theirs.clone();
    partial.remove("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight");
    candle_core::safetensors::save(&partial, bad.path().join("adapter_model.safetensors")).unwrap();
    let err = adapter::load(&mut base(), bad.path(), "y").unwrap_err().to_string();
    assert!(
        err.contains(
            "adapter_model.safetensors: tensor base_model.model.model.layers.1.mlp.up_proj.lora_B.weight is missing"
        ),
        "{err}"
    );
    std::fs::write(
        bad.path().join("adapter_config.json"),
        r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": true}"#,
    )
    .unwrap();
    let err = adapter::load(&mut base(), bad.path(), "y").unwrap_err().to_string();
    assert!(err.contains("adapter_config.json: use_dora"), "{err}");
    let err = adapter::load(&mut base(), Path::new("/nonexistent-adapter"), "y").unwrap_err().to_string();
    assert!(err.contains("adapter_config.json: missing"), "{err}");
}

#[test]
fn training_steps_match_peft() {
    training_steps_match_peft_with(false, "llama3-gqa", "lora");
}

/// The same steps with each block run again in the backward: the same losses, gradients and
/// adapter as PEFT's.
#[test]
fn training_steps_with_gradient_checkpointing_match_peft() {
    training_steps_match_peft_with(true, "llama3-gqa", "lora");
}

/// Gemma 3's block (GELU-tanh, its extra norms, the embedding scale, the local rotary base, a
/// window of 8) through the training pass and its backward: PEFT's steps.
#[test]
fn gemma3_training_steps_match_peft() {
    training_steps_match_peft_with(false, "gemma3-window", "lora-gemma3");
    training_steps_match_peft_with(true, "gemma3-window", "lora-gemma3");
}

/// MPT (ALiBi, clipped fused q/k/v, bias-free LayerNorms, GELU) and Falcon (the 40B's key/value
/// groups with rotary positions and two parallel LayerNorms; Falcon-RW's ALiBi, per-head
/// triples and biases) through the training pass and its backward, with PEFT's module names for
/// them (Wqkv, out_proj, …; query_key_value, dense, …): PEFT's steps — every loss to 1e-5 and
/// gradient norm to 1e-4. The final adapters are held to 1e-3, not 1e-5: the LoRA A entries
/// whose gradients stay near AdamW's eps (1e-8) after B leaves zero move by a share of the
/// learning rate that float noise decides (measured: MPT's worst entry 5.9e-4, every other
/// entry of the three models within 2e-5).
#[test]
fn mpt_and_falcon_training_steps_match_peft() {
    for name in ["mpt-alibi-clip", "falcon-40b-layout", "falcon-rw-alibi"] {
        training_steps_match_peft_within(false, name, &format!("lora-{name}"), 1e-3);
        training_steps_match_peft_within(true, name, &format!("lora-{name}"), 1e-3);
    }
}

fn training_steps_match_peft_with(gradient_checkpointing: bool, model_name: &str, fixture_dir: &str) {
    training_steps_match_peft_within(gradient_checkpointing, model_name, fixture_dir, 1e-5)
}

/// As above, the adapter after the last step within `final_tolerance` of PEFT's.
fn training_steps_match_peft_within(
    gradient_checkpointing: bool,
    model_name: &str,
    fixture_dir: &str,
    final_tolerance: f32,
) {
    let dir = root().join("tests/fixtures").join(fixture_dir).join("train");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("steps.json")).unwrap()).unwrap();
    let hp = &fixture["hyperparameters"];
    let path = root().join("tests/fixtures/models").join(model_name);
    let mut model = Model::load(path.to_str().unwrap(), DTypeChoice::F32, &Device::Cpu).unwrap();
    let cfg = adapter::load(&mut model, &dir.join("init"), "t").unwrap();
    let config = TrainConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        learning_rate: hp["learning_rate"].as_f64().unwrap(),
        warmup_steps: hp["warmup_steps"].as_u64().unwrap() as usize,
        weight_decay: hp["weight_decay"].as_f64().unwrap(),
        max_grad_norm: hp["max_grad_norm"].as_f64().unwrap(),
        gradient_checkpointing,
        ..Default::default()
    };
    let total = hp["max_steps"].as_u64().unwrap() as usize;
    let mut trainer = Trainer::from_loaded(&mut model, "t", config, cfg).unwrap();
    let steps: Vec<Vec<Batch>> = serde_json::from_value(fixture["steps"].clone()).unwrap();
    for (i, (micro, want)) in steps.iter().zip(fixture["report"].as_array().unwrap()).enumerate() {
        let s = trainer.step(&mut model, micro, total).unwrap();
        let rel = |ours: f64, key: &str| {
            (ours - want[key].as_f64().unwrap()).abs() / want[key].as_f64().unwrap().abs().max(1e-3)
        };
        assert!(rel(s.loss, "loss") < 1e-5, "step {i}: loss {} vs PEFT {}", s.loss, want["loss"]);
        assert!(
            rel(s.grad_norm, "grad_norm") < 1e-4,
            "step {i}: grad norm {} vs PEFT {}",
            s.grad_norm,
            want["grad_norm"]
        );
        assert!((s.lr - want["lr"].as_f64().unwrap()).abs() < 1e-12, "step {i}: lr");
    }
    let fin = candle_core::safetensors::load(dir.join("final.safetensors"), &Device::Cpu).unwrap();
    for p in &trainer.params {
        for (which, var) in [('A', &p.a), ('B', &p.b)] {
            let key = adapter::tensor_name(&p.linear, which);
            let d =
                (var.as_tensor() - &fin[&key]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < final_tolerance, "{model_name}: {key}: max |Δ| {d} after four steps");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `selfspec train`, killed and resumed.

fn alpaca(dir: &Path) -> PathBuf {
    let path = dir.join("data.jsonl");
    let mut text = String::new();
    for i in 0..24 {
        let rec = serde_json::json!({
            "instruction": format!("Name the drug class of compound {i}."),
            "input": if i % 3 == 0 { String::new() } else { format!("Compound {i} lowers LDL by blocking HMG-CoA reductase.") },
            "output": format!("Compound {i} is a statin{}", ".".repeat(i % 4)),
        });
        text.push_str(&rec.to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn train_cmd(data: &Path, run: &Path, config: &Path) -> Command {
    let mut cmd = common::selfspec();
    cmd.args(["train", "--model"]).arg(root().join("tests/fixtures/models/llama3-gqa"));
    // `--config FILE` with training settings, as the issue spells it.
    cmd.arg("--data").arg(data).arg("--run").arg(run).arg("--config").arg(config);
    cmd
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn a_killed_run_resumes_to_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca(dir.path());
    let config = dir.path().join("train.yaml");
    std::fs::write(
        &config,
        "r: 4\nlora_alpha: 8\nlora_dropout: 0.1\nlearning_rate: 0.003\nnum_train_epochs: 3\n\
         per_device_train_batch_size: 2\ngradient_accumulation_steps: 2\nwarmup_steps: 2\nsave_steps: 3\nseed: 7\n",
    )
    .unwrap();
    let whole = dir.path().join("whole");
    let out = train_cmd(&data, &whole, &config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = losses(&whole);
    assert_eq!(reference.len(), 18, "3 epochs of 6 steps");
    assert!(whole.join("adapter/adapter_model.safetensors").exists());

    let cut = dir.path().join("cut");
    let mut child = train_cmd(&data, &cut, &config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    // SIGKILL once a checkpoint exists and a step or two past it.
    while losses(&cut).len() < 8 {
        assert!(started.elapsed() < Duration::from_secs(60));
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be killed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = train_cmd(&data, &cut, &config).arg("--resume").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resumed = losses(&cut);
    // Every step after the resume point equals the uninterrupted run's.
    let after: HashMap<u64, f64> = resumed.iter().copied().collect();
    for (step, want) in &reference {
        let got = after[step];
        assert!((got - want).abs() <= 1e-6, "step {step}: {got} vs uninterrupted {want}");
    }
    let final_a =
        candle_core::safetensors::load(whole.join("adapter/adapter_model.safetensors"), &Device::Cpu).unwrap();
    let final_b = candle_core::safetensors::load(cut.join("adapter/adapter_model.safetensors"), &Device::Cpu).unwrap();
    for (k, t) in &final_a {
        let d = (t - &final_b[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-6, "{k}: {d}");
    }
    // Not resuming into a used folder.
    let out = train_cmd(&data, &cut, &config).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a training run"));
    // Resuming a finished run does nothing: no step is redone, the adapter stays.
    let adapter = std::fs::read(whole.join("adapter/adapter_model.safetensors")).unwrap();
    let out = train_cmd(&data, &whole, &config).arg("--resume").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has finished"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(losses(&whole), reference);
    assert_eq!(std::fs::read(whole.join("adapter/adapter_model.safetensors")).unwrap(), adapter);
}

#[test]
fn merged_models_and_complete_with_adapters_give_pefts_logits() {
    let adapter_dir = root().join("tests/fixtures/lora/peft-adapter");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter_dir.join("expected.json")).unwrap()).unwrap();
    let case = &expected["cases"][1];
    let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
    let base_want: Vec<f64> = serde_json::from_value(case["base_logits"].clone()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join("merged");
    let st = common::selfspec()
        .args(["merge", "--model"])
        .arg(root().join("tests/fixtures/models/llama3-gqa"))
        .arg("--adapter")
        .arg(&adapter_dir)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let model = Model::load(merged.to_str().unwrap(), DTypeChoice::F32, &Device::Cpu).unwrap();
    let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
    let d = max_diff(&last_logits(&model, &ids), &want);
    assert!(d < 1e-4, "merged: max |Δlogit| {d}");
    // complete --adapter: top-5 logits with the adapter, and with --use none the base's.
    let top5 = |extra: &[&str]| -> Vec<(u32, f64)> {
        let out = common::selfspec()
            .args(["complete", "--model"])
            .arg(root().join("tests/fixtures/models/llama3-gqa"))
            .args(["--prompt", case["prompt"].as_str().unwrap(), "--json", "--max-new-tokens", "2"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["top5"].as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap())).collect()
    };
    let spec = format!("peft={}", adapter_dir.display());
    for (got, reference) in
        [(top5(&["--adapter", &spec]), &want), (top5(&["--adapter", &spec, "--use", "none"]), &base_want)]
    {
        for (id, logit) in got {
            assert!((logit - reference[id as usize]).abs() < 1e-4);
        }
    }
}

/// An adapter `selfspec train` wrote (committed in tests/fixtures/lora/ours), loaded by PEFT:
/// PEFT's logits with it (expected.json) equal ours.
#[test]
fn our_trained_adapter_loads_in_peft() {
    let dir = root().join("tests/fixtures/lora/ours");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut model = base();
    adapter::load(&mut model, &dir, "ours").unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        let d = max_diff(&last_logits(&model, &ids), &want);
        assert!(d < 1e-4, "max |Δlogit| {d} against PEFT with our adapter");
    }
}

fn greedy(model: &Model, reqs: &[selfspec::decode::Request]) -> Vec<Vec<u32>> {
    let flag = std::sync::atomic::AtomicBool::new(false);
    let (out, _) = selfspec::decode::generate(model, reqs, &Default::default(), &mut |_| {}, &flag).unwrap();
    out.into_iter().map(|c| c.ids).collect()
}

fn set_enabled(model: &mut Model, on: bool) {
    for (_, l) in model.decoder.linears_mut() {
        l.adapters.iter_mut().for_each(|a| a.enabled = on);
    }
}

/// One batch, two requests: one with the adapter, one on the base — each as it would alone.
#[test]
fn adapters_are_chosen_per_request_in_one_batch() {
    use selfspec::decode::Request;
    let mut model = base();
    adapter::load(&mut model, &root().join("tests/fixtures/lora/peft-adapter"), "peft").unwrap();
    let a = model.tokenizer.encode("The patient").unwrap();
    let b = model.tokenizer.encode("Gross margin fell because memory chip costs rose, while").unwrap();
    let with = greedy(&model, &[Request::new(a.clone(), 16)])[0].clone();
    set_enabled(&mut model, false);
    let without = greedy(&model, &[Request::new(b.clone(), 16)])[0].clone();
    set_enabled(&mut model, true);
    let both = greedy(&model, &[Request { adapter: Some("peft".into()), ..Request::new(a, 16) }, Request::new(b, 16)]);
    assert_eq!(both[0], with, "the request with the adapter");
    assert_eq!(both[1], without, "the request on the base");
}

/// Contrastive decoding in one batch (adapter on and off) equals doing it by hand from two
/// separate full forward passes at every step.
#[test]
fn contrastive_decoding_matches_two_separate_passes() {
    use selfspec::decode::{contrast_scores, Contrast, Request};
    let mut model = base();
    adapter::load(&mut model, &root().join("tests/fixtures/lora/peft-adapter"), "peft").unwrap();
    let prompt = model.tokenizer.encode("The patient").unwrap();
    let alpha = 0.1;
    let req = Request {
        contrast: Some(Contrast { adapter: "peft".into(), alpha }),
        ignore_eos: true,
        ..Request::new(prompt.clone(), 12)
    };
    let got = greedy(&model, &[req])[0].clone();
    let mut seq = prompt.clone();
    let mut want = Vec::new();
    for _ in 0..12 {
        set_enabled(&mut model, true);
        let tuned = last_logits(&model, &seq);
        set_enabled(&mut model, false);
        let base_l = last_logits(&model, &seq);
        let s = contrast_scores(&tuned, &base_l, alpha);
        let next = s.iter().enumerate().fold(0, |best, (i, v)| if *v > s[best] { i } else { best }) as u32;
        want.push(next);
        seq.push(next);
    }
    assert_eq!(got, want);
    // It differs from plain decoding with the adapter (the test would be empty otherwise).
    set_enabled(&mut model, true);
    let plain = greedy(&model, &[Request { ignore_eos: true, ..Request::new(prompt, 12) }])[0].clone();
    assert_ne!(got, plain);
}

/// QLoRA: the same training steps with the base stored in 4-bit blocks (dequantized on the fly)
/// and with the dequantized base stored dense give the same losses — and close to full-precision
/// LoRA's.
#[test]
fn qlora_trains_like_lora_on_the_dequantized_base() {
    use candle_core::quantized::{GgmlDType, QTensor};
    use selfspec::model::network::linear::{quantize_projections, Linear};
    let dir = root().join("tests/fixtures/lora/train");
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("steps.json")).unwrap()).unwrap();
    let steps: Vec<Vec<Batch>> = serde_json::from_value(fixture["steps"].clone()).unwrap();
    let run = |model: &mut Model| -> (Vec<f64>, Vec<Tensor>) {
        let cfg = adapter::load(model, &dir.join("init"), "t").unwrap();
        let config = TrainConfig {
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            learning_rate: 1e-2,
            warmup_steps: 1,
            ..Default::default()
        };
        let mut t = Trainer::from_loaded(model, "t", config, cfg).unwrap();
        let losses = steps.iter().map(|m| t.step(model, m, 4).unwrap().loss).collect();
        (losses, t.params.iter().map(|p| p.b.as_tensor().clone()).collect())
    };
    let mut q = base();
    let (before, after) = quantize_projections(q.decoder.linears_mut(), GgmlDType::Q4_0).unwrap();
    assert!(after * 6 < before, "4-bit storage: {after} bytes against {before}");
    let mut deq = base();
    for (_, linear) in deq.decoder.linears_mut() {
        let w =
            QTensor::quantize(&linear.weight().unwrap(), GgmlDType::Q4_0).unwrap().dequantize(&Device::Cpu).unwrap();
        linear.base = Linear::dense(w, None).unwrap().base;
    }
    let (ql, qb) = run(&mut q);
    let (dl, db) = run(&mut deq);
    let (fl, _) = run(&mut base());
    for ((a, b), f) in ql.iter().zip(&dl).zip(&fl) {
        assert!((a - b).abs() < 1e-5, "QLoRA {a} vs LoRA on the dequantized base {b}");
        assert!((a - f).abs() / f < 0.05, "QLoRA {a} vs full-precision LoRA {f}");
    }
    for (x, y) in qb.iter().zip(&db) {
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "adapter weights differ by {d}");
    }
    // A block that does not fit the layer is named.
    let err = quantize_projections(base().decoder.linears_mut(), GgmlDType::Q4K).unwrap_err().to_string();
    assert!(
        err.contains("model.layers.0.self_attn.q_proj: 64 input features are not a multiple of Q4K's block of 256"),
        "{err}"
    );
}

/// A wave of base-only requests in a call where other requests name an adapter runs on the base.
#[test]
fn base_requests_stay_on_the_base_in_any_wave() {
    use selfspec::decode::{Options, Request};
    let mut model = base();
    adapter::load(&mut model, &root().join("tests/fixtures/lora/peft-adapter"), "peft").unwrap();
    let a = model.tokenizer.encode("The patient").unwrap();
    set_enabled(&mut model, false);
    let base_ids = greedy(&model, &[Request::new(a.clone(), 12)])[0].clone();
    set_enabled(&mut model, true);
    let reqs = [Request::new(a.clone(), 12), Request { adapter: Some("peft".into()), ..Request::new(a.clone(), 12) }];
    let flag = std::sync::atomic::AtomicBool::new(false);
    // One request per wave.
    let opts = Options { prompt_top: 0, max_batch: 1, kv_budget: None, gated: false, prefix: None, half_kv: false };
    let (out, _) = selfspec::decode::generate(&model, &reqs, &opts, &mut |_| {}, &flag).unwrap();
    assert_eq!(out[0].ids, base_ids);
    assert_ne!(out[1].ids, base_ids);
}

#[test]
fn examples_without_room_for_a_response_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca(dir.path());
    let config = dir.path().join("short.yaml");
    std::fs::write(&config, "max_seq_length: 20\nmax_steps: 1\n").unwrap();
    let out = train_cmd(&data, &dir.path().join("run"), &config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("every example's prompt fills the rows' length (20: max_seq_length"),
        "{err}"
    );
}

/// `train --init-from ADAPTER` starts from that adapter's A and B (its r, alpha and targets
/// recorded in the run's config): after one step at a vanishing learning rate the adapter still
/// gives PEFT's logits for it. `init: random:σ` starts with both factors drawn at σ; a bad
/// `init` is refused with its name.
#[test]
fn training_starts_from_an_adapter_or_at_random() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca(dir.path());
    let config = dir.path().join("train.yaml");
    std::fs::write(&config, "r: 8\nlearning_rate: 1.0e-12\nmax_steps: 1\nwarmup_steps: 0\nlora_dropout: 0.0\n")
        .unwrap();
    let peft = root().join("tests/fixtures/lora/peft-adapter");
    let run = dir.path().join("from");
    let out = train_cmd(&data, &run, &config).arg("--init-from").arg(&peft).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("r 4, lora_alpha 8"), "{stderr}");
    let recorded = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(recorded.contains(&format!("init: from:{}", peft.display())) && recorded.contains("r: 4"), "{recorded}");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("expected.json")).unwrap()).unwrap();
    let mut model = base();
    adapter::load(&mut model, &run.join("adapter"), "started").unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let want: Vec<f64> = serde_json::from_value(case["logits"].clone()).unwrap();
        let d = max_diff(&last_logits(&model, &ids), &want);
        assert!(d < 1e-4, "started from PEFT's adapter: max |Δlogit| {d}");
    }
    // random:σ: B is not zero, and both factors have about that spread.
    std::fs::write(&config, "r: 4\nlearning_rate: 1.0e-12\nmax_steps: 1\nwarmup_steps: 0\ninit: random:0.05\n")
        .unwrap();
    let run = dir.path().join("random");
    let out = train_cmd(&data, &run, &config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(run.join("config.yaml")).unwrap().contains("init: random:0.05"));
    let saved: HashMap<String, Tensor> =
        candle_core::safetensors::load(run.join("adapter/adapter_model.safetensors"), &Device::Cpu).unwrap();
    for which in ["lora_A", "lora_B"] {
        let all: Vec<f32> = saved
            .iter()
            .filter(|(k, _)| k.contains(which))
            .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect();
        let sd = (all.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / all.len() as f64).sqrt();
        assert!((sd - 0.05).abs() < 0.005, "{which}: spread {sd}");
    }
    std::fs::write(&config, "init: warm\n").unwrap();
    let out = train_cmd(&data, &dir.path().join("bad"), &config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("train.yaml") && stderr.contains("init \"warm\""), "{stderr}");
}

/// A tiny data set with the defaults (4 × 8 a step, warm-up 10): the run says its plan and
/// warns, before the first step, that every step is inside the warm-up and the data is smaller
/// than one step's batch; with `warmup_ratio` the warm-up fits and that warning is gone.
#[test]
fn a_training_that_cannot_move_is_said_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca(dir.path());
    let config = dir.path().join("train.yaml");
    std::fs::write(&config, "num_train_epochs: 1\n").unwrap();
    let run = dir.path().join("run");
    let out = train_cmd(&data, &run, &config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let plan = stderr.find("plan: 24 examples, 32 a step, 1 steps (1 an epoch), warm-up 10 steps").expect(&stderr);
    let warm = stderr.find("every one of the 1 steps falls inside the warm-up of 10 steps").expect(&stderr);
    let small = stderr.find("smaller than one step's batch (4 × 8 = 32)").expect(&stderr);
    let step = stderr.find("step 1 ·").expect(&stderr);
    assert!(plan < warm && warm < step && small < step, "{stderr}");
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    let started: serde_json::Value =
        serde_json::from_str(events.lines().find(|l| l.contains("\"started\"")).unwrap()).unwrap();
    assert_eq!(started["plan"]["warmup_steps"], 10);
    assert_eq!(started["plan"]["warnings"].as_array().unwrap().len(), 2, "{started}");
    assert!(started["plan"]["memory_mb"].as_f64().unwrap() > 0.0);

    std::fs::write(&config, "num_train_epochs: 1\ngradient_accumulation_steps: 1\nwarmup_ratio: 0.1\n").unwrap();
    let run = dir.path().join("run2");
    let out = train_cmd(&data, &run, &config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("6 steps (6 an epoch), warm-up 1 steps"), "{stderr}");
    assert!(!stderr.contains("warning:"), "{stderr}");
    let recorded = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(recorded.contains("warmup_ratio: 0.1") && recorded.contains("gradient_checkpointing: false"), "{recorded}");
}

/// A quantized GGUF file trains over its own blocks (QLoRA) unless told otherwise, and the run
/// records which; `--plan` says the schedule, the base, the memory and the time and writes nothing.
#[test]
fn a_quantized_file_is_qlora_by_default_recorded_and_changeable() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca(dir.path());
    let config = dir.path().join("train.yaml");
    std::fs::write(&config, "max_steps: 2\nwarmup_steps: 0\nper_device_train_batch_size: 2\n").unwrap();
    let model = root().join("tests/fixtures/gguf/llama/q4_0.gguf");
    let train = |extra: &[&str], run: Option<&Path>| {
        let mut cmd = common::selfspec();
        cmd.args(["train", "--model"]).arg(&model).arg("--data").arg(&data).arg("--train-config").arg(&config);
        match run {
            Some(run) => cmd.arg("--run").arg(run),
            None => cmd.arg("--plan"),
        };
        let out = cmd.args(extra).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).to_string(), stderr)
    };
    let (stdout, stderr) = train(&[], None);
    let plan: serde_json::Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!((plan["qlora"].as_str(), plan["total_steps"].as_u64()), (Some("q4_0"), Some(2)), "{plan}");
    assert!(plan["seconds"].as_f64().unwrap() > 0.0 && plan["memory_mb"].as_f64().unwrap() > 0.0, "{plan}");
    assert!(stderr.contains("QLoRA over the file's own q4_0 blocks"), "{stderr}");
    assert!(stderr.contains("QLoRA over q4_0 blocks, about"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "--plan writes nothing");

    let recorded = |run: &Path| {
        let text = std::fs::read_to_string(run.join("config.yaml")).unwrap();
        text.lines().find(|l| l.starts_with("qlora:")).unwrap_or_default().to_string()
    };
    let run = dir.path().join("file");
    let (_, stderr) = train(&[], Some(&run));
    assert_eq!(recorded(&run), "qlora: q4_0", "{stderr}");
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    let started: serde_json::Value =
        serde_json::from_str(events.lines().find(|l| l.contains("\"started\"")).unwrap()).unwrap();
    assert_eq!(started["plan"]["qlora"], "q4_0");
    assert!(started["plan"]["seconds"].as_f64().unwrap() > 0.0, "{started}");

    let run = dir.path().join("f32");
    let (_, stderr) = train(&["--dequantize"], Some(&run));
    assert_eq!(recorded(&run), "qlora: null", "{stderr}");
    assert!(stderr.contains("LoRA over F32 copies of the file's q4_0 blocks"), "{stderr}");

    let run = dir.path().join("q8");
    let (_, stderr) = train(&["--qlora", "q8_0"], Some(&run));
    assert_eq!(recorded(&run), "qlora: q8_0", "{stderr}");
    assert!(stderr.contains("dequantized to be stored again"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// TensorBoard event files.

/// CRC-32C (Castagnoli), masked as TFRecord stores it.
fn masked_crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    (!crc).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The protobuf fields of `buf`: (number, varint or fixed value, or the bytes of a length-delimited one).
fn proto_fields(buf: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let varint = |pos: &mut usize| {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = buf[*pos];
            *pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return v;
            }
        }
    };
    let (mut pos, mut out) = (0, Vec::new());
    while pos < buf.len() {
        let key = varint(&mut pos);
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((field, varint(&mut pos), &buf[..0])),
            1 => {
                out.push((field, u64::from_le_bytes(buf[pos..pos + 8].try_into().unwrap()), &buf[..0]));
                pos += 8;
            }
            2 => {
                let n = varint(&mut pos) as usize;
                out.push((field, 0, &buf[pos..pos + n]));
                pos += n;
            }
            5 => {
                out.push((field, u64::from(u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap())), &buf[..0]));
                pos += 4;
            }
            other => panic!("wire type {other}"),
        }
    }
    out
}

/// Every scalar in a TFRecord file of TensorBoard `Event`s: (step, tag, value), with each
/// record's framing and checksums checked.
fn read_event_file(path: &Path) -> Vec<(i64, String, f32)> {
    let bytes = std::fs::read(path).unwrap();
    let (mut pos, mut out, mut version) = (0, Vec::new(), false);
    while pos < bytes.len() {
        let len_bytes = &bytes[pos..pos + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(bytes[pos + 8..pos + 12].try_into().unwrap()), masked_crc32c(len_bytes));
        let data = &bytes[pos + 12..pos + 12 + len];
        assert_eq!(u32::from_le_bytes(bytes[pos + 12 + len..pos + 16 + len].try_into().unwrap()), masked_crc32c(data));
        pos += 16 + len;
        let event = proto_fields(data);
        let step = event.iter().find(|f| f.0 == 2).map_or(0, |f| f.1 as i64);
        version |= event.iter().any(|f| f.0 == 3 && f.2 == b"brain.Event:2");
        for (_, _, summary) in event.iter().filter(|f| f.0 == 5) {
            for (_, _, value) in proto_fields(summary).into_iter().filter(|f| f.0 == 1) {
                let fields = proto_fields(value);
                let tag = fields.iter().find(|f| f.0 == 1).map(|f| String::from_utf8(f.2.to_vec()).unwrap()).unwrap();
                let v = fields.iter().find(|f| f.0 == 2).map(|f| f32::from_bits(f.1 as u32)).unwrap();
                out.push((step, tag, v));
            }
        }
    }
    assert!(version, "{}: no file_version record", path.display());
    out
}

/// A training run's folder holds a TensorBoard event file with every step's loss, learning
/// rate, gradient norm and tokens/s — the numbers events.jsonl has — read here record by
/// record (framing, CRC-32C, protobuf) and, where the tensorboard package is installed, by
/// TensorBoard's own reader (scripts/check_tensorboard.py).
#[test]
fn training_writes_tensorboard_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = alpaca(dir.path());
    let config = dir.path().join("train.yaml");
    std::fs::write(&config, "r: 4\nlora_alpha: 8\nmax_steps: 4\nper_device_train_batch_size: 4\nwarmup_steps: 1\n")
        .unwrap();
    let run = dir.path().join("run");
    let out = train_cmd(&data, &run, &config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<PathBuf> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let scalars = read_event_file(&files[0]);
    let steps: Vec<serde_json::Value> = std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "step")
        .collect();
    assert_eq!(steps.len(), 4);
    assert_eq!(scalars.len(), 16);
    for s in &steps {
        for (key, tag) in [("loss", "train/loss"), ("lr", "train/learning_rate"), ("grad_norm", "train/grad_norm")]
            .into_iter()
            .chain([("tokens_per_s", "train/tokens_per_s")])
        {
            let step = s["step"].as_i64().unwrap();
            let got = scalars.iter().find(|(st, t, _)| *st == step && t == tag).map(|x| x.2);
            assert_eq!(got, Some(s[key].as_f64().unwrap() as f32), "{tag} at step {step}");
        }
    }
    let python = Command::new("python3").args(["-c", "import tensorboard"]).output();
    match python {
        Ok(o) if o.status.success() => {
            let out =
                Command::new("python3").arg(root().join("scripts/check_tensorboard.py")).arg(&run).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        _ => eprintln!("skipped TensorBoard's own reader: python3 cannot import tensorboard (pip install tensorboard)"),
    }
}
