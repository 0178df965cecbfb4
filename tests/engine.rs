//! The engine beyond parity: gradients through the training pass, streaming text, seeded
//! sampling, stop strings, and a clear error for every kind of broken model folder.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor, Var};
use selfspec::decode::{self, Request, Sampling, SamplingParams, TextStream};
use selfspec::model::network::linear::LoraAdapter;
use selfspec::model::{DTypeChoice, Model, Pass};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

fn load(name: &str) -> Model {
    Model::load(fixture(name).to_str().unwrap(), DTypeChoice::F32, &Device::Cpu).unwrap()
}

/// Next-token cross-entropy of `ids` with adapter `a`/`b` on layer 0's q_proj.
fn loss(model: &mut Model, a: &Tensor, b: &Tensor, ids: &[u32], pass: Pass) -> Tensor {
    for (name, linear) in model.decoder.linears_mut() {
        if name == "model.layers.0.self_attn.q_proj" {
            linear.adapters = vec![LoraAdapter {
                name: "t".into(),
                a: a.clone(),
                b: b.clone(),
                scale: 2.0,
                enabled: true,
                dropout: None,
                gate: selfspec::model::network::linear::new_gate(),
            }];
        }
    }
    let n = ids.len();
    let input = Tensor::new(&ids[..n - 1], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let target = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    let logits = model.decoder.forward(&input, &mut cache, pass, false).unwrap().squeeze(0).unwrap();
    candle_nn::loss::cross_entropy(&logits, &target).unwrap()
}

/// The training pass must carry gradients to a LoRA adapter in the first layer (through rope,
/// both norms and softmax of every layer after it), and they must be the true derivatives; the
/// inference pass, built on candle's fused ops without backward, silently loses them — which is
/// what this test exists to catch.
#[test]
fn training_pass_gradients_are_real_derivatives() {
    for name in ["llama3-gqa", "qwen3-headdim"] {
        let mut model = load(name);
        let ids = model.tokenizer.encode("Gross margin fell because memory chip costs rose").unwrap();
        let a = Var::from_tensor(&(Tensor::randn(0f32, 0.3, (4, 64), &Device::Cpu).unwrap())).unwrap();
        let b_init =
            Tensor::randn(0f32, 0.3, (model.decoder.spec.num_heads * model.decoder.spec.head_dim, 4), &Device::Cpu)
                .unwrap();
        let b = Var::from_tensor(&b_init).unwrap();
        let l = loss(&mut model, a.as_tensor(), b.as_tensor(), &ids, Pass::Training);
        let grads = l.backward().unwrap();
        let ga = grads.get(a.as_tensor()).expect("gradient for A").to_vec2::<f32>().unwrap();
        let gb = grads.get(b.as_tensor()).expect("gradient for B").to_vec2::<f32>().unwrap();
        // Central differences on a few entries of A and B.
        let eps = 1e-2f32;
        for (which, (i, j)) in [(0, (0, 3)), (0, (2, 17)), (1, (5, 1)), (1, (20, 3))] {
            let base = if which == 0 { a.as_tensor() } else { b.as_tensor() };
            let mut data = base.to_vec2::<f32>().unwrap();
            let rows = data.len();
            let cols = data[0].len();
            data[i][j] += eps;
            let plus = Tensor::from_vec(data.concat(), (rows, cols), &Device::Cpu).unwrap();
            data[i][j] -= 2.0 * eps;
            let minus = Tensor::from_vec(data.concat(), (rows, cols), &Device::Cpu).unwrap();
            let (lp, lm) = if which == 0 {
                (
                    loss(&mut model, &plus, b.as_tensor(), &ids, Pass::Training),
                    loss(&mut model, &minus, b.as_tensor(), &ids, Pass::Training),
                )
            } else {
                (
                    loss(&mut model, a.as_tensor(), &plus, &ids, Pass::Training),
                    loss(&mut model, a.as_tensor(), &minus, &ids, Pass::Training),
                )
            };
            let numeric = (lp.to_scalar::<f32>().unwrap() - lm.to_scalar::<f32>().unwrap()) / (2.0 * eps);
            let analytic = if which == 0 { ga[i][j] } else { gb[i][j] };
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 0.02 * numeric.abs(),
                "{name}: d loss / d {}[{i}][{j}]: backward {analytic}, finite differences {numeric}",
                if which == 0 { "A" } else { "B" }
            );
        }
        // The same loss through the inference pass: the fused ops drop the gradient.
        let l = loss(&mut model, a.as_tensor(), b.as_tensor(), &ids, Pass::Inference);
        let grads = l.backward().unwrap();
        let lost = grads
            .get(a.as_tensor())
            .is_none_or(|g| g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() == 0.0);
        assert!(lost, "{name}: the inference pass unexpectedly carried a gradient; the fused ops gained a backward?");
    }
}

#[test]
fn streamed_text_never_splits_a_character() {
    let model = load("llama2");
    let text = "Café prices — 😀 日本語 ✓ naïve 🧬 fans";
    let ids = model.tokenizer.encode(text).unwrap();
    let mut stream = TextStream::new();
    let mut shown = String::new();
    for &id in &ids {
        let delta = stream.push(id, &model.tokenizer).unwrap();
        assert!(!delta.contains('\u{FFFD}'), "delta {delta:?}");
        shown.push_str(&delta);
    }
    shown.push_str(&stream.finish(&model.tokenizer).unwrap());
    assert_eq!(shown, model.tokenizer.decode(&ids).unwrap());
    assert_eq!(shown, text);
}

fn request(prompt: &[u32], sampling: Sampling, seed: u64) -> Request {
    Request {
        sampling: SamplingParams { sampling, seed, repetition_penalty: None },
        ignore_eos: true,
        ..Request::new(prompt.to_vec(), 40)
    }
}

#[test]
fn events_stream_the_final_text_and_seeds_repeat() {
    let model = load("qwen2-bias-tied");
    let prompt = model.tokenizer.encode("The patient").unwrap();
    let cancel = AtomicBool::new(false);
    let opts = decode::Options::default();
    let sample = Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(0.98) };
    let requests = [
        request(&prompt, sample, 7),
        request(&prompt, sample, 7),
        request(&prompt, sample, 8),
        request(&prompt, Sampling::Greedy, 0),
    ];
    let mut streamed = vec![String::new(); requests.len()];
    let mut finished = 0;
    let (out, timing) = decode::generate(
        &model,
        &requests,
        &opts,
        &mut |e| match e {
            decode::Event::Token { request, text, .. } => streamed[request].push_str(text),
            decode::Event::Finished { .. } => finished += 1,
            decode::Event::Note { .. } => {}
        },
        &cancel,
    )
    .unwrap();
    assert_eq!(finished, 4);
    for (s, c) in streamed.iter().zip(&out) {
        assert_eq!(s, &c.text);
        assert_eq!(c.ids.len(), 40);
    }
    assert_eq!(out[0].ids, out[1].ids, "same seed, same tokens");
    assert_ne!(out[0].ids, out[2].ids, "another seed, other tokens");
    // The four rows share one prompt: it ran once, and each row decodes as it would alone.
    assert_eq!(timing.prefill_tokens, prompt.len());
    assert_eq!(timing.cached_tokens, 3 * prompt.len());
    for (i, (r, c)) in requests.iter().zip(&out).enumerate() {
        let alone = decode::generate(&model, std::slice::from_ref(r), &opts, &mut |_| {}, &cancel).unwrap().0;
        assert_eq!(alone[0].ids, c.ids, "request {i}");
    }
}

#[test]
fn stop_strings_end_the_text_before_them() {
    let model = load("llama2");
    let prompt = model.tokenizer.encode("The patient").unwrap();
    let cancel = AtomicBool::new(false);
    let (full, _) =
        decode::generate(&model, &[request(&prompt, Sampling::Greedy, 0)], &Default::default(), &mut |_| {}, &cancel)
            .unwrap();
    // A stop string taken from the middle of the greedy text.
    let text = &full[0].text;
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let mut req = request(&prompt, Sampling::Greedy, 0);
    req.stop = vec![stop.clone()];
    let (out, _) = decode::generate(&model, &[req], &Default::default(), &mut |_| {}, &cancel).unwrap();
    assert_eq!(out[0].finish, decode::Finish::Stop(stop.clone()));
    assert_eq!(out[0].text, text[..text.find(&stop).unwrap()]);
    assert!(out[0].ids.len() < full[0].ids.len());
}

#[test]
fn cli_sampling_is_reproducible() {
    let run = |seed: &str| {
        let out = common::selfspec()
            .args(["complete", "--model", fixture("mistral-window").to_str().unwrap(), "--prompt", "Which receptor"])
            .args(["--temperature", "1.0", "--top-p", "0.98", "--seed", seed, "--json", "--device", "cpu"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["ids"].clone()
    };
    assert_eq!(run("11"), run("11"));
    assert_ne!(run("11"), run("12"));
}

/// A copy of a fixture model to break.
fn broken(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn complete_error(dir: &Path) -> String {
    let out = common::selfspec()
        .args(["complete", "--model", dir.to_str().unwrap(), "--prompt", "x", "--device", "cpu"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.replace(&format!("{}/", dir.display()), "")
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn every_broken_model_folder_gets_a_clear_error() {
    let check = |dir: &tempfile::TempDir, expected: &str| {
        let err = complete_error(dir.path());
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    };

    let d = broken("llama2");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    check(&d, "config.json is missing: every Hugging Face model folder has a config.json");

    let d = broken("llama2");
    std::fs::write(d.path().join("config.json"), "{\"model_type\": \"llama\",").unwrap();
    check(&d, "config.json: not valid JSON: EOF while parsing");

    let d = broken("llama2");
    edit_config(d.path(), |v| v["model_type"] = "gpt2".into());
    check(&d, "config.json: model_type \"gpt2\" is not supported; selfspec supports llama, mistral, qwen2, qwen3");

    let d = broken("llama2");
    edit_config(d.path(), |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    check(&d, "config.json: hidden_size is missing");

    let d = broken("llama2");
    edit_config(d.path(), |v| v["rope_parameters"]["rope_type"] = "yarn".into());
    check(&d, "config.json: rope_parameters.rope_type \"yarn\" is not supported");

    let d = broken("llama2");
    edit_config(d.path(), |v| v["hidden_act"] = "gelu".into());
    check(&d, "config.json: hidden_act \"gelu\" is not supported; only silu is");

    let d = broken("llama2");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    check(&d, "tokenizer.json is missing: a model folder needs the tokenizer.json its model was trained with");

    let d = broken("llama2");
    std::fs::write(d.path().join("tokenizer.json"), "{\"version\": 1}").unwrap();
    check(&d, "tokenizer.json: cannot be read");

    let d = broken("llama2");
    let weights = d.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    check(&d, "model.safetensors: is not a valid safetensors file");
    check(&d, "it may be truncated: download it again");

    let d = broken("llama2");
    edit_config(d.path(), |v| v["num_hidden_layers"] = 3.into());
    check(&d, "model.safetensors: tensor model.layers.2.input_layernorm.weight is missing");

    let d = broken("llama2");
    edit_config(d.path(), |v| v["intermediate_size"] = 128.into());
    check(&d, "model.safetensors: tensor model.layers.0.mlp.gate_proj.weight has shape [160, 64], but config.json (hidden_size 64, intermediate_size 128) needs [128, 64]");

    let d = broken("qwen2-bias-tied");
    edit_config(d.path(), |v| v["tie_word_embeddings"] = false.into());
    check(&d, "tensor lm_head.weight is missing");

    let d = broken("llama3-old-keys-sharded");
    std::fs::remove_file(d.path().join("model-00003-of-00006.safetensors")).unwrap();
    check(&d, "model-00003-of-00006.safetensors is missing: model.safetensors.index.json lists it for");

    let d = broken("llama2");
    std::fs::rename(d.path().join("model.safetensors"), d.path().join("pytorch_model.bin")).unwrap();
    check(&d, "the folder has pytorch_model.bin only; selfspec reads safetensors");

    let d = broken("llama2");
    edit_config(d.path(), |v| v["num_key_value_heads"] = 3.into());
    check(&d, "config.json: num_key_value_heads 3 must divide num_attention_heads 4");

    let out = common::selfspec()
        .args(["complete", "--model", "no-such-org/no-such-model", "--prompt", "x"])
        .env("HF_HUB_CACHE", std::env::temp_dir().join("selfspec-empty-hub"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no-such-org/no-such-model is neither a folder nor in the Hugging Face cache"), "{stderr}");
}

#[test]
fn weights_load_in_bf16_and_f16_too() {
    for dtype in [DTypeChoice::Bf16, DTypeChoice::F16] {
        let model = Model::load(fixture("qwen3-headdim").to_str().unwrap(), dtype, &Device::Cpu).unwrap();
        let ids = model.tokenizer.encode("The patient").unwrap();
        let mut cache = model.decoder.new_cache(vec![0]);
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.decoder.forward(&input, &mut cache, Pass::Inference, true).unwrap();
        assert_ne!(logits.dtype(), DType::F32);
        let v = logits.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn asking_for_cuda_without_it_falls_back_to_the_cpu_with_a_note() {
    let out = common::selfspec()
        .args(["complete", "--model", fixture("llama2").to_str().unwrap(), "--prompt", "The patient", "--greedy"])
        .args(["--max-new-tokens", "4", "--device", "cuda", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = if cfg!(feature = "cuda") { "no usable CUDA GPU" } else { "built without CUDA" };
    assert!(stderr.contains(expected) && stderr.contains("running on the CPU"), "{stderr}");
}

/// A prefill cut into chunks of positions (what bounds the attention scores of a wide batch of
/// long prompts) gives the one-pass logits, left padding and a sliding window included, and
/// the cache it leaves decodes the next token the same way.
#[test]
fn a_prefill_in_chunks_equals_one_pass() {
    for name in ["llama3-gqa", "mistral-window", "qwen3-headdim"] {
        let model = load(name);
        let long = model
            .tokenizer
            .encode(
                "Rifampicin lowers the concentration of oral contraceptives by inducing their metabolism in the liver",
            )
            .unwrap();
        let short = model.tokenizer.encode("Warfarin and aspirin together").unwrap();
        let width = long.len();
        let pad = vec![0, width - short.len()];
        let mut ids = long.clone();
        ids.extend(std::iter::repeat_n(0u32, pad[1]));
        ids.extend(&short);
        let tokens = Tensor::from_vec(ids, (2, width), &Device::Cpu).unwrap();
        let next = Tensor::new(&[[5u32], [7u32]], &Device::Cpu).unwrap();
        let run = |chunk: usize| {
            let mut cache = model.decoder.new_cache(pad.clone());
            let all = model.decoder.forward_in_chunks(&tokens, &mut cache, Pass::Inference, false, chunk).unwrap();
            let step = model.decoder.forward(&next, &mut cache, Pass::Inference, true).unwrap();
            (all, step, cache.len)
        };
        let (one, one_step, one_len) = run(usize::MAX);
        for chunk in [1, 3, 7] {
            let (all, step, len) = run(chunk);
            assert_eq!(len, one_len, "{name}: chunk {chunk}");
            assert_eq!(all.dims(), one.dims(), "{name}: chunk {chunk}");
            // The padded row's padding slots attend to themselves only; compare real slots.
            for (row, from) in [(0usize, 0usize), (1, pad[1])] {
                let a = all.get(row).unwrap().narrow(0, from, width - from).unwrap();
                let b = one.get(row).unwrap().narrow(0, from, width - from).unwrap();
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-4, "{name}: chunk {chunk}, row {row}: logits differ by {d}");
            }
            let d = (step - &one_step).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "{name}: chunk {chunk}: the next step differs by {d}");
        }
        // The chunk the budget allows: wide and long rows get short chunks, never below the floor.
        assert!(model.decoder.prefill_chunk(1, 10) > model.decoder.prefill_chunk(40, 2000));
        assert_eq!(model.decoder.prefill_chunk(40, 1 << 40), selfspec::model::network::decoder::MIN_PREFILL_CHUNK);
    }
}

/// Requests that join a batch as rows finish (continuous batching), and rows set aside to keep
/// the cache within a small budget and decoded again, give each request the tokens it gets
/// decoded alone, and stream exactly its final text.
#[test]
fn rows_joining_and_set_aside_decode_as_each_request_alone() {
    // The writer: its context (4096) leaves room to outgrow the cache's first growth steps.
    let model = load("writer");
    let cancel = AtomicBool::new(false);
    let sample = Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(0.9) };
    let texts = ["The patient", "A", "Statins lower LDL cholesterol in the blood of", "Why", "Kinase inhibitors"];
    let mut requests = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let ids = model.tokenizer.encode(text).unwrap();
        let sampling = if i % 2 == 0 { sample } else { Sampling::Greedy };
        let mut r = request(&ids, sampling, 11 + i as u64);
        // Lengths differ, so rows finish at different steps and others join; three outgrow
        // two steps of the cache's growth (512 slots), where the budget sets rows aside.
        r.max_new_tokens = if i >= 2 { 540 + i } else { 6 + 9 * i };
        requests.push(r);
    }
    // A mixture of two prompts is one request of two rows.
    let mut mixed = request(&model.tokenizer.encode("The dose").unwrap(), Sampling::Greedy, 3);
    mixed.prompts.push(model.tokenizer.encode("A dose of").unwrap());
    mixed.weights = vec![0.7, 0.3];
    requests.push(mixed);
    // With the cache in f16 too (generate's default): its rows join, are set aside and come
    // back as in f32.
    for half_kv in [false, true] {
        let alone: Vec<Vec<u32>> = requests
            .iter()
            .map(|r| {
                let opts = decode::Options { max_batch: 1, half_kv, ..Default::default() };
                decode::generate(&model, std::slice::from_ref(r), &opts, &mut |_| {}, &cancel).unwrap().0[0].ids.clone()
            })
            .collect();
        let slot = match half_kv {
            true => model.decoder.kv_slot_bytes_in(DType::F16),
            false => model.decoder.kv_slot_bytes(),
        };
        for (max_batch, kv_budget) in [(3, None), (4, Some(3 * 512 * slot))] {
            let opts = decode::Options { max_batch, kv_budget, half_kv, ..Default::default() };
            let mut streamed = vec![String::new(); requests.len()];
            let (out, timing) = decode::generate(
                &model,
                &requests,
                &opts,
                &mut |e| {
                    if let decode::Event::Token { request, text, .. } = e {
                        streamed[request].push_str(text)
                    }
                },
                &cancel,
            )
            .unwrap();
            for (i, (c, ids)) in out.iter().zip(&alone).enumerate() {
                assert_eq!(&c.ids, ids, "request {i}, max_batch {max_batch}, budget {kv_budget:?}, f16 {half_kv}");
                assert_eq!(streamed[i], c.text, "request {i} streamed its text once");
            }
            if kv_budget.is_some() {
                assert!(timing.set_aside > 0, "the budget of two rows set rows aside");
            }
            assert!(timing.idle_row_steps < timing.steps * max_batch);
        }
    }
}

#[test]
fn the_context_bounds_prompts_and_answers_and_sampling_is_ranged() {
    let model = load("writer");
    let context = model.decoder.spec.max_position_embeddings;
    assert!(context > 0);
    let cancel = AtomicBool::new(false);
    let run = |req: Request| decode::generate(&model, &[req], &Default::default(), &mut |_| {}, &cancel);
    // A prompt that fills the context is refused before anything runs.
    let err = run(request(&vec![5; context], Sampling::Greedy, 0)).unwrap_err().to_string();
    assert!(err.contains(&format!("the prompt has {context} tokens")), "{err}");
    // An answer stops at the context, whatever max_new_tokens says.
    let mut req = request(&vec![5; context - 3], Sampling::Greedy, 0);
    req.max_new_tokens = 100;
    let (out, _) = run(req).unwrap();
    assert_eq!((out[0].ids.len(), out[0].finish.clone()), (3, decode::Finish::Length));
    // Numbers out of range are refused by name, for any caller.
    for (sampling, name) in [
        (Sampling::Sample { temperature: f64::NAN, top_k: None, top_p: None }, "temperature"),
        (Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(2.0) }, "top_p"),
        (Sampling::Sample { temperature: 1.0, top_k: Some(0), top_p: None }, "top_k"),
    ] {
        let err = run(request(&[5, 6], sampling, 0)).unwrap_err().to_string();
        assert!(err.contains(&format!("{name}: ")) && err.contains("out of range"), "{err}");
    }
    let mut zero = request(&[5, 6], Sampling::Greedy, 0);
    zero.max_new_tokens = 0;
    assert!(run(zero).unwrap_err().to_string().contains("max_new_tokens: 0 is out of range"));
}
