//! `selfspec adapters merge` against PEFT's `add_weighted_adapter` (fixtures by
//! scripts/make_combine_fixtures.py): for linear, cat and svd merges of adapters that differ in
//! rank, alpha and targets, our merged adapter gives PEFT's logits and PEFT's update B·A·scaling
//! for every projection, and linear and cat give PEFT's very factors.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use selfspec::model::adapters::adapter::{self, AdapterConfig};
use selfspec::model::adapters::combine::{merge, Method};
use selfspec::model::{DTypeChoice, Model, Pass};

use common::root;

fn fixture() -> PathBuf {
    root().join("tests/fixtures/combine")
}

fn last_logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mut cache = model.decoder.new_cache(vec![0]);
    model.decoder.forward(&input, &mut cache, Pass::Inference, true).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn with_adapter(dir: &Path) -> Model {
    let mut model =
        Model::load(root().join("tests/fixtures/models/llama3-gqa").to_str().unwrap(), DTypeChoice::F32, &Device::Cpu)
            .unwrap();
    adapter::load(&mut model, dir, "merged").unwrap();
    model
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn merges_give_pefts_logits_updates_and_factors() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    for (name, case) in expected.as_object().unwrap() {
        let dirs: Vec<PathBuf> =
            case["adapters"].as_array().unwrap().iter().map(|a| fixture().join(a.as_str().unwrap())).collect();
        let weights: Vec<f64> = serde_json::from_value(case["weights"].clone()).unwrap();
        let method = match case["method"].as_str().unwrap() {
            "linear" => Method::Linear,
            "cat" => Method::Cat,
            _ => Method::Svd,
        };
        let rank = case["rank"].as_u64().map(|r| r as usize);
        let ours = out.path().join(name);
        merge(&dirs, &weights, method, rank, &ours).unwrap();
        let peft = fixture().join("merged").join(name);
        // The config PEFT writes: r the new rank, alpha = r, the union of the targets.
        let (a, b) = (AdapterConfig::read(&ours).unwrap(), AdapterConfig::read(&peft).unwrap());
        assert_eq!((a.r, a.lora_alpha), (b.r, b.lora_alpha), "{name}");
        let targets = |c: &AdapterConfig| match &c.target_modules {
            adapter::Targets::List(l) => l.iter().cloned().collect::<std::collections::BTreeSet<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(targets(&a), targets(&b), "{name}");
        // Every projection's update B·A·scaling.
        let theirs = tensors(&fixture().join(format!("deltas-{name}.safetensors")));
        let mine = tensors(&ours.join("adapter_model.safetensors"));
        assert_eq!(mine.len(), 2 * theirs.len(), "{name}");
        for (module, delta) in &theirs {
            let fa = &mine[&adapter::tensor_name(module, 'A')];
            let fb = &mine[&adapter::tensor_name(module, 'B')];
            let update = (fb.matmul(fa).unwrap() * a.scale()).unwrap();
            let d = max_diff(&values(&update), &values(delta));
            let size = values(delta).iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(d <= 1e-5 * size.max(1.0), "{name} {module}: max |Δ| {d} (largest entry {size})");
        }
        // Linear and cat are sums and stacks: the factors themselves are PEFT's.
        if method != Method::Svd {
            let pefts = tensors(&peft.join("adapter_model.safetensors"));
            for (key, t) in &pefts {
                let d = max_diff(&values(&mine[key]), &values(t));
                assert!(d < 1e-6, "{name} {key}: {d}");
            }
        }
        // The logits of the base with the merged adapter, as transformers + PEFT computed them.
        let model = with_adapter(&ours);
        for c in case["cases"].as_array().unwrap() {
            let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
            let want: Vec<f32> = serde_json::from_value(c["logits"].clone()).unwrap();
            let d = max_diff(&last_logits(&model, &ids), &want);
            assert!(d < 1e-4, "{name}: max |Δlogit| {d}");
        }
    }
}

fn selfspec(args: &[&str]) -> std::process::Output {
    common::selfspec().args(args).output().unwrap()
}

#[test]
fn the_command_merges_and_refuses_what_peft_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (fixture().join("a"), fixture().join("b"), fixture().join("c"));
    let s = |p: &Path| p.display().to_string();
    let out = dir.path().join("avg");
    // Weights left out: the average.
    let run = selfspec(&["adapters", "merge", &s(&a), &s(&c), "--method", "linear", "--out", &s(&out)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("weights [0.5, 0.5]: rank 4"));
    let twice = selfspec(&["adapters", "merge", &s(&a), &s(&c), "--method", "linear", "--out", &s(&out)]);
    assert!(String::from_utf8_lossy(&twice.stderr).contains("already holds an adapter"));
    let unequal =
        selfspec(&["adapters", "merge", &s(&a), &s(&b), "--method", "linear", "--out", &s(&dir.path().join("x"))]);
    let err = String::from_utf8_lossy(&unequal.stderr);
    assert!(!unequal.status.success() && err.contains("needs equal ranks") && err.contains("r 2"), "{err}");
    let count = selfspec(&[
        "adapters",
        "merge",
        &s(&a),
        &s(&b),
        "--method",
        "cat",
        "--weights",
        "1",
        "--out",
        &s(&dir.path().join("y")),
    ]);
    assert!(String::from_utf8_lossy(&count.stderr).contains("1 weights for 2 adapters"));
    let missing =
        selfspec(&["adapters", "merge", &s(&a), "/nonexistent", "--method", "cat", "--out", &s(&dir.path().join("z"))]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/adapter_config.json"));
}

/// `selfspec lmc`: the loss along the line between two adapters. At α = 0 and 1 both lines are
/// the adapters themselves (each adapter's own loss, loaded alone); adapters of unequal rank get
/// the merged-weight line only.
#[test]
fn lmc_endpoints_are_each_adapters_own_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.jsonl");
    let mut text = String::new();
    for i in 0..6 {
        let rec = serde_json::json!({"instruction": format!("Name the drug class of compound {i}."),
            "input": "", "output": format!("Compound {i} is a statin.")});
        text.push_str(&(rec.to_string() + "\n"));
    }
    std::fs::write(&data, text).unwrap();
    let model_dir = root().join("tests/fixtures/models/llama3-gqa");
    let s = |p: &Path| p.display().to_string();
    let run = |b: &str, out: &Path| {
        let o = selfspec(&[
            "lmc",
            &s(&fixture().join("a")),
            &s(&fixture().join(b)),
            "--model",
            &s(&model_dir),
            "--data",
            &s(&data),
            "--points",
            "3",
            "--out",
            &s(out),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("lmc.json")).unwrap()).unwrap();
        (v, String::from_utf8_lossy(&o.stdout).to_string())
    };
    // Each adapter's own loss, loaded alone.
    let own = |name: &str| {
        let model = with_adapter(&fixture().join(name));
        let examples = selfspec::train::data::load(&data).unwrap();
        let eos = model.eos_token_ids.first().copied();
        let encoded: Vec<_> = examples
            .iter()
            .map(|e| {
                selfspec::train::data::encode(&model.tokenizer, eos, e, 1024, selfspec::prompts::PromptFormat::Plain)
            })
            .collect::<Result<_, _>>()
            .unwrap();
        selfspec::train::lmc::mean_loss(&model, &encoded).unwrap().0
    };
    let (la, lc) = (own("a"), own("c"));
    let (v, stdout) = run("c", &dir.path().join("ac"));
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    for (p, want) in [(&points[0], la), (&points[2], lc)] {
        for line in ["merged", "factors"] {
            let got = p[line].as_f64().unwrap();
            assert!((got - want).abs() < 1e-4, "{line} at α {}: {got} vs {want}", p["alpha"]);
        }
    }
    let chord = (la + lc) / 2.0;
    let merged_mid = points[1]["merged"].as_f64().unwrap();
    let barrier = v["barrier_merged"].as_f64().unwrap();
    assert!((barrier - (merged_mid - chord).max(0.0)).abs() < 1e-9, "{barrier} {merged_mid} {chord}");
    assert!(stdout.contains("barrier (ΔW line)") && stdout.contains("barrier ((A, B) line)"), "{stdout}");
    // Unequal ranks (4 and 2): the merged-weight line only.
    let (v, stdout) = run("b", &dir.path().join("ab"));
    assert!(v["barrier_factors"].is_null() && v["points"][1]["factors"].is_null());
    assert!(stdout.contains("not measured"), "{stdout}");
}
