//! Stages 2 and 3: the task-list parser on messy model output (data-driven), the mixture of
//! eq. 2, and `selfspec generate` end to end — including resuming after real kill -9s — on a tiny
//! model trained to write task lists (scripts/make_writer_model.py).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use selfspec::decode::{self, Request};
use selfspec::model::{DTypeChoice, Model};
use selfspec::prompts::{parse_tasks, Task};

use common::root;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/models").join(name)
}

fn load(name: &str) -> Model {
    Model::load(fixture(name).to_str().unwrap(), DTypeChoice::F32, &Device::Cpu).unwrap()
}

#[test]
fn task_lists_parse_as_the_cases_say() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/task_lists.json")).unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (tasks, failures) = parse_tasks(case["text"].as_str().unwrap(), case["truncated"].as_bool().unwrap());
        let want: Vec<Task> = case["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| Task { instruction: t[0].as_str().unwrap().into(), input: t[1].as_str().unwrap().into() })
            .collect();
        assert_eq!(tasks, want, "case {name}");
        let failures: Vec<String> =
            failures.iter().map(|f| serde_json::to_value(f).unwrap().as_str().unwrap().to_string()).collect();
        let want: Vec<String> =
            case["unparsed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(failures, want, "case {name}");
    }
}

#[test]
fn the_mixture_is_the_weighted_sum_of_the_distributions() {
    let logits = Tensor::new(
        &[[1.0f32, 2.0, 0.5, -1.0], [0.0, -3.0, 2.0, 1.0], [4.0, 0.0, 0.0, 0.0], [0.3, 0.2, 0.1, 0.0]],
        &Device::Cpu,
    )
    .unwrap();
    let rows = logits.to_vec2::<f32>().unwrap();
    let softmax = |r: &[f32]| {
        let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = r.iter().map(|x| ((x - m) as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect::<Vec<f64>>()
    };
    // Two requests: rows 0..3 with weights (0.5, 0.3, 0.2), row 3 alone.
    let w0 = [0.5, 0.3, 0.2];
    let mixed = decode::mix(&logits, &[3, 1], &[&w0, &[1.0]]).unwrap().to_vec2::<f32>().unwrap();
    for (v, got) in mixed[0].iter().enumerate() {
        let want: f64 = (0..3).map(|j| w0[j] * softmax(&rows[j])[v]).sum();
        assert!((*got as f64 - want.ln()).abs() < 1e-6, "token {v}: {got} vs {}", want.ln());
        assert!((mixed[1][v] as f64 - softmax(&rows[3])[v].ln()).abs() < 1e-6);
    }
    // The batched form equals the one written out token by token (decode::mixing).
    let dists: Vec<Vec<(usize, f64)>> =
        rows[..3].iter().map(|r| decode::log_softmax(r).into_iter().map(f64::from).enumerate().collect()).collect();
    for (v, l) in decode::mixing::mixture(&dists, &w0) {
        assert!((mixed[0][v] as f64 - l).abs() < 1e-6, "token {v}: {} vs {l}", mixed[0][v]);
    }
}

fn greedy_text(model: &Model, requests: &[Request]) -> Vec<Vec<u32>> {
    let opts = decode::Options::default();
    let (out, _) = decode::generate(model, requests, &opts, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    out.into_iter().map(|c| c.ids).collect()
}

#[test]
fn one_document_or_identical_documents_decode_as_plain() {
    for name in ["llama3-gqa", "qwen2-bias-tied"] {
        let model = load(name);
        let doc = model.tokenizer.encode("Background: statins lower LDL cholesterol. Question: which").unwrap();
        let other = model.tokenizer.encode("Gross margin fell because memory chip costs rose").unwrap();
        let plain = greedy_text(&model, &[Request::new(doc.clone(), 24)]);
        // k = 1 through the mixture path: batched with a two-document request so the step mixes.
        let one = Request { weights: vec![1.0], ..Request::new(doc.clone(), 24) };
        let two =
            Request { prompts: vec![other.clone(), doc.clone()], weights: vec![0.7, 0.3], ..Request::new(vec![], 24) };
        let got = greedy_text(&model, &[one, two]);
        assert_eq!(got[0], plain[0], "{name}: k = 1");
        // The same document three times with equal weights.
        let same = Request { prompts: vec![doc.clone(); 3], ..Request::new(vec![], 24) };
        assert_eq!(greedy_text(&model, &[same])[0], plain[0], "{name}: identical documents");
        // A document with (almost) all the weight decides the text.
        let heavy =
            Request { prompts: vec![doc.clone(), other.clone()], weights: vec![1.0, 1e-9], ..Request::new(vec![], 24) };
        assert_eq!(greedy_text(&model, &[heavy])[0], plain[0], "{name}: weight 1 vs 1e-9");
    }
}

/// A prompt that begins like one decoded before runs only its new tokens when a prefix cache
/// holds that beginning, and decodes as without the cache: the same tokens, log-probabilities
/// within float noise. Covered: a prompt extending a stored one, the same prompt again, and a
/// mixture whose rows hit, miss, and are shorter than the part run anew (padded inside it), and
/// a mixture whose prompts share a long beginning (run once, before its rows). With
/// an f16 cache (generate's) as well: stored rows keep its values.
#[test]
fn a_prefix_cache_runs_only_new_tokens_and_changes_nothing() {
    use selfspec::decode::{Completion, PrefixCache};
    use std::sync::Arc;
    let models = ["llama3-gqa", "qwen2-bias-tied", "mistral-window"];
    for (name, half_kv) in models.into_iter().flat_map(|n| [(n, false), (n, true)]) {
        let model = load(name);
        let enc = |t: &str| model.tokenizer.encode(t).unwrap();
        let first = enc("Background: statins lower LDL cholesterol in most adults. Question: which");
        let longer = [first.clone(), enc("drug lowers it most, and why?")].concat();
        let other = enc("Gross margin fell because memory chip costs rose");
        let tiny = enc("Net income");
        assert!(longer.len() > other.len() + 2 && other.len() > tiny.len(), "{name}: the prompts' lengths");
        let ask = |prompts: Vec<Vec<u32>>| Request { prompts, top_logprobs: Some(3), ..Request::new(vec![], 12) };
        let mixture =
            Request { weights: vec![0.5, 0.3, 0.2], ..ask(vec![longer.clone(), other.clone(), tiny.clone()]) };
        let run = |requests: &[Request], prefix: Option<Arc<PrefixCache>>| {
            let opts = decode::Options { prompt_top: 0, max_batch: 64, kv_budget: None, gated: true, prefix, half_kv };
            decode::generate(&model, requests, &opts, &mut |_| {}, &AtomicBool::new(false)).unwrap()
        };
        let same = |got: &Completion, want: &Completion, what: &str| {
            assert_eq!(got.ids, want.ids, "{name}, f16 {half_kv}: {what}");
            for (g, w) in got.logprobs.iter().zip(&want.logprobs) {
                assert!((g.logprob - w.logprob).abs() < 1e-4, "{name}: {what}: {} vs {}", g.logprob, w.logprob);
            }
        };
        let alone = |r: &Request| run(std::slice::from_ref(r), None).0.remove(0);
        let (want_first, want_longer, want_mixture) =
            (alone(&ask(vec![first.clone()])), alone(&ask(vec![longer.clone()])), alone(&mixture));

        let cache = Arc::new(PrefixCache::new(1 << 30));
        let (got, timing) = run(&[ask(vec![first.clone()])], Some(cache.clone()));
        same(&got[0], &want_first, "nothing stored yet");
        assert_eq!((got[0].cached_tokens, timing.cached_tokens, timing.prefill_tokens), (0, 0, first.len()));
        assert_eq!(cache.size().0, 1);

        // The longer prompt finds the first one's tokens; the mixture's first row then finds the
        // longer prompt, its other rows nothing.
        let (got, timing) = run(&[ask(vec![longer.clone()])], Some(cache.clone()));
        same(&got[0], &want_longer, "a stored beginning");
        assert_eq!((got[0].cached_tokens, timing.cached_tokens), (first.len(), first.len()), "{name}");
        assert_eq!(timing.prefill_tokens, longer.len() - first.len());
        let (got, timing) = run(std::slice::from_ref(&mixture), Some(cache.clone()));
        same(&got[0], &want_mixture, "a mixture of a hit, a miss and a short row");
        // What the other rows must run: all but what they share with the longer prompt (a BOS).
        let shared = |p: &[u32]| p.iter().zip(&longer).take_while(|(a, b)| a == b).count();
        let fresh = (other.len() - shared(&other)).max(tiny.len() - shared(&tiny));
        assert_eq!(got[0].cached_tokens, longer.len() - fresh, "{name}");
        assert_eq!(timing.prefill_tokens + timing.cached_tokens, longer.len() + other.len() + tiny.len());

        // The same prompt again: all but its last token.
        let (got, _) = run(&[ask(vec![first.clone()])], Some(cache.clone()));
        same(&got[0], &want_first, "the same prompt again");
        assert_eq!(got[0].cached_tokens, first.len() - 1);
        // The first prompt is held by the longer one, so it was dropped; tiny and other are kept.
        assert_eq!(cache.size().0, 3, "{name}");

        // A budget smaller than one prompt keeps nothing.
        let small = Arc::new(PrefixCache::new(16));
        run(&[ask(vec![first.clone()])], Some(small.clone()));
        assert_eq!(small.size(), (0, 0));

        // A mixture whose prompts share a long beginning that nothing stored holds (the task
        // before its documents): that beginning runs once, the rows only what follows it.
        let stem =
            enc("Task: name the class of drug that lowers LDL cholesterol in most adults, with one example of it.");
        let docs = ["Background: statins block HMG-CoA reductase.", "Background: ezetimibe cuts absorption.", "Net"];
        let shared: Vec<Vec<u32>> = docs.iter().map(|d| [stem.clone(), enc(d)].concat()).collect();
        let common =
            shared[1..].iter().map(|p| p.iter().zip(&shared[0]).take_while(|(a, b)| a == b).count()).min().unwrap();
        assert!(common >= 16, "{name}: the prompts share {common} tokens");
        let tasked = Request { weights: vec![0.5, 0.3, 0.2], ..ask(shared.clone()) };
        let want = alone(&tasked);
        let fresh = Arc::new(PrefixCache::new(1 << 30));
        let (got, timing) = run(std::slice::from_ref(&tasked), Some(fresh.clone()));
        same(&got[0], &want, "a mixture's shared beginning run once");
        let longest_rest = shared.iter().map(|p| p.len() - common).max().unwrap();
        assert_eq!((timing.prefill_tokens, timing.padding_tokens), (common + 3 * longest_rest, 0), "{name}");
        assert_eq!(got[0].cached_tokens, shared[0].len() - longest_rest, "{name}");
    }
}

#[test]
fn bad_weights_are_refused_by_name() {
    let model = load("llama2");
    let bad = Request { prompts: vec![vec![1, 2], vec![3]], weights: vec![1.0], ..Request::new(vec![], 4) };
    let err = decode::generate(&model, &[bad], &Default::default(), &mut |_| {}, &AtomicBool::new(false))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("request 0: 1 weights for 2 prompts"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// `selfspec generate` end to end.

struct Env {
    _dir: tempfile::TempDir,
    config: PathBuf,
    workspace: PathBuf,
    index: PathBuf,
    base: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "generation:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  response_max_new_tokens: 40\n  \
         prompts_per_batch: 4\n  responses_per_batch: 4\n  k: 3\n",
    )
    .unwrap();
    let index = dir.path().join("index");
    let out = common::selfspec()
        .args(["index", "build"])
        .arg(root().join("sample-seeds/finance.corpus.jsonl"))
        .arg("--out")
        .arg(&index)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Env { workspace: dir.path().join("ws"), base: dir.path().to_path_buf(), _dir: dir, config, index }
}

fn generate_cmd(env: &Env, run: &Path, n: usize, mode: &str) -> Command {
    let mut cmd = common::selfspec();
    cmd.arg("--config").arg(&env.config).arg("--workspace").arg(&env.workspace);
    cmd.args(["generate", "--seeds"]).arg(root().join("sample-seeds/finance.yaml"));
    cmd.arg("--model").arg(fixture("writer")).args(["--n", &n.to_string(), "--seed", "11", "--mode", mode]);
    cmd.arg("--run").arg(run);
    if mode != "none" {
        cmd.arg("--corpus").arg(&env.index);
    }
    cmd
}

/// Every line of samples.jsonl: whole, valid JSON, with its provenance.
fn check_samples(run: &Path, mode: &str) -> Vec<serde_json::Value> {
    // A run killed while its model loads has not opened its store yet.
    let text = std::fs::read_to_string(run.join("samples.jsonl")).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "a torn last line");
    let mut ids = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}: {line}", i + 1));
        assert!(ids.insert(v["id"].as_str().unwrap().to_string()), "duplicate id on line {}", i + 1);
        let p = &v["provenance"];
        assert_eq!(p["demos"].as_array().unwrap().len(), 3, "{line}");
        assert!(p["model"].as_str().unwrap().ends_with("writer"));
        assert_eq!(p["mode"], mode);
        assert!(p["rouge_l"].as_f64().unwrap() <= 0.7);
        assert!(!v["instruction"].as_str().unwrap().is_empty() && !v["output"].as_str().unwrap().is_empty());
        let docs = p["documents"].as_array().unwrap();
        match mode {
            "none" => assert!(docs.is_empty()),
            "top1" => assert!(docs.len() <= 1),
            _ => {
                assert!(docs.len() <= 3);
                let sum: f64 = docs.iter().map(|d| d["weight"].as_f64().unwrap()).sum();
                assert!(docs.is_empty() || (sum - 1.0).abs() < 1e-9, "weights sum to {sum}");
            }
        }
        out.push(v);
    }
    out
}

#[test]
fn generate_writes_samples_in_each_mode() {
    let env = env();
    for mode in ["none", "top1", "marginal"] {
        let run = env.base.join(format!("run-{mode}"));
        let out = generate_cmd(&env, &run, 6, mode).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{mode}: {stderr}");
        assert!(stderr.contains("done: 6 samples"), "{stderr}");
        assert_eq!(check_samples(&run, mode).len(), 6);
        let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
        assert!(events.lines().last().unwrap().contains(r#""reason":"done""#));
    }
    // Traces: every sample of the marginal run and of the document-free run decodes again to
    // its own text, and each token's mixture probability is the weighted sum of the documents'
    // (to 1e-5), with the weights the sample recorded.
    for mode in ["marginal", "none"] {
        let run = env.base.join(format!("run-{mode}"));
        for sample in check_samples(&run, mode) {
            let id = sample["id"].as_str().unwrap();
            let out = common::selfspec()
                .args(["samples", "trace"])
                .arg(&run)
                .args([id, "--json", "--top", "3"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!((t["id"].as_str(), t["mode"].as_str()), (Some(id), Some(mode)));
            assert_eq!(t["reproduced"], true, "{id}: {}", t["why"]);
            let recorded: Vec<f64> = sample["provenance"]["documents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["weight"].as_f64().unwrap())
                .collect();
            let tokens = t["tokens"].as_array().unwrap();
            assert!(!tokens.is_empty());
            // The tokens are the sample's: their texts make its response.
            let joined: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
            assert_eq!(joined.trim(), sample["output"].as_str().unwrap(), "{id}");
            for tok in tokens {
                let docs = tok["docs"].as_array().unwrap();
                let weights: Vec<f64> = docs.iter().map(|d| d["weight"].as_f64().unwrap()).collect();
                match mode {
                    "none" => assert_eq!(weights, [1.0]),
                    _ => assert_eq!(weights, recorded),
                }
                let mixed: f64 = docs.iter().map(|d| d["weight"].as_f64().unwrap() * d["p"].as_f64().unwrap()).sum();
                assert!((mixed - tok["p"].as_f64().unwrap()).abs() < 1e-5, "{tok}");
                assert!(docs.iter().all(|d| d["top"].as_array().unwrap().len() == 3));
                assert!(tok["contrast"].is_null() && tok["entropy"].as_f64().unwrap() >= 0.0);
                // Greedy responses: the draw was the argmax, not a probability.
                assert!(tok["p_drawn"].is_null(), "{tok}");
            }
        }
    }
    // A sampled response (temperature 0.8, top-p 0.9): still reproduced, and each token's
    // p_drawn is its probability after the temperature and the cut, which the draw needed to be
    // positive.
    let sampled_config = env.base.join("sampled.yaml");
    let text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&sampled_config, format!("{text}  response_temperature: 0.8\n  response_top_p: 0.9\n")).unwrap();
    let run = env.base.join("run-sampled");
    let out = common::selfspec()
        .arg("--config")
        .arg(&sampled_config)
        .arg("--workspace")
        .arg(&env.workspace)
        .args(["generate", "--seeds"])
        .arg(root().join("sample-seeds/finance.yaml"))
        .arg("--model")
        .arg(fixture("writer"))
        .args(["--n", "2", "--seed", "11", "--mode", "marginal", "--corpus"])
        .arg(&env.index)
        .arg("--run")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut reshaped = false;
    for sample in check_samples(&run, "marginal") {
        let id = sample["id"].as_str().unwrap();
        let out = common::selfspec().args(["samples", "trace"]).arg(&run).args([id, "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(t["reproduced"], true, "{id}: {}", t["why"]);
        for tok in t["tokens"].as_array().unwrap() {
            let (p, drawn) = (tok["p"].as_f64().unwrap(), tok["p_drawn"].as_f64().unwrap());
            assert!(drawn > 0.0 && drawn <= 1.0 + 1e-9, "{tok}");
            reshaped |= (drawn - p).abs() > 1e-3;
        }
    }
    assert!(reshaped, "temperature 0.8 and top-p 0.9 changed no token's probability");
    let bad = common::selfspec()
        .args(["samples", "trace"])
        .arg(env.base.join("run-none"))
        .arg("no-such-id")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has no sample \"no-such-id\""), "{bad:?}");

    // Headless review: decide, then export the accepted ones.
    let run = env.base.join("run-top1");
    let samples = check_samples(&run, "top1");
    let selfspec = |args: &[&str]| common::selfspec().args(args).output().unwrap();
    let r = run.to_str().unwrap();
    let id0 = samples[0]["id"].as_str().unwrap();
    let id1 = samples[1]["id"].as_str().unwrap();
    assert!(selfspec(&["samples", "decide", r, id0, "accept"]).status.success());
    assert!(selfspec(&["samples", "decide", r, id1, "accept", "--output", "A better answer."]).status.success());
    let bad = selfspec(&["samples", "decide", r, "no-such-id", "reject"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no sample no-such-id"), "{bad:?}");
    let out = env.base.join("accepted.jsonl");
    let exported = selfspec(&["samples", "export", r, "--out", out.to_str().unwrap()]);
    assert!(exported.status.success(), "{exported:?}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.lines().nth(1).unwrap().ends_with(r#""output":"A better answer."}"#), "{text}");
    // Promote: the edited sample becomes a seed of (a copy of) the seed file, validated, tagged
    // with its run and id; bad tasks and ids, and a second promotion, change nothing.
    let seeds = env.base.join("finance.yaml");
    std::fs::copy(root().join("sample-seeds/finance.yaml"), &seeds).unwrap();
    let before = std::fs::read_to_string(&seeds).unwrap();
    let s = seeds.to_str().unwrap();
    let bad = selfspec(&["samples", "promote", r, id1, "--task", "nope", "--seeds", s]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a task; choose from qa"), "{bad:?}");
    let bad = selfspec(&["samples", "promote", r, "no-such-id", "--task", "qa", "--seeds", s]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("has no sample \"no-such-id\""), "{bad:?}");
    assert_eq!(std::fs::read_to_string(&seeds).unwrap(), before);
    let promoted = selfspec(&["samples", "promote", r, id1, "--task", "qa", "--seeds", s]);
    assert!(promoted.status.success(), "{promoted:?}");
    assert!(String::from_utf8_lossy(&promoted.stdout).contains(" → seed "), "{promoted:?}");
    let loaded = selfspec::seeds::load(&seeds, &Default::default()).unwrap();
    assert!(loaded.is_valid(), "{:?}", loaded.problems);
    let new = loaded.file.seeds.last().unwrap();
    assert_eq!((new.task.as_str(), new.output.as_str()), ("qa", "A better answer."));
    assert_eq!(new.tags, [format!("sample:run-top1/{id1}")]);
    assert_eq!(new.instruction, samples[1]["instruction"].as_str().unwrap());
    assert_eq!(loaded.file.seeds.len(), selfspec::seeds::load_str(&before, &Default::default()).file.seeds.len() + 1);
    let again = selfspec(&["samples", "promote", r, id1, "--task", "qa", "--seeds", s]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already seed"), "{again:?}");
    // A run started with other settings is not continued with these.
    let run = env.base.join("run-none");
    let out = generate_cmd(&env, &run, 6, "top1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("was started with other settings"), "{stderr}");
    assert!(stderr.contains(r#"mode: "none" (run) vs "top1" (now)"#), "{stderr}");
}

#[test]
fn killed_runs_continue_to_n_without_duplicates_or_losses() {
    let env = env();
    let run = env.base.join("run");
    let n = 60;
    let count = || std::fs::read_to_string(run.join("samples.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
    let mut kills = 0;
    // SIGKILL at a different moment each time: just after the model loads, while instructions
    // decode, right after a sample is written; then let it finish.
    for attempt in 0..6u64 {
        let mut child =
            generate_cmd(&env, &run, n, "marginal").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let before = count();
        let started = Instant::now();
        let deadline = Duration::from_millis(150 + 120 * attempt);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let wrote = count() > before;
            if started.elapsed() > deadline || (attempt % 2 == 1 && wrote) {
                child.kill().unwrap();
                kills += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        check_samples(&run, "marginal");
    }
    assert!(kills >= 3, "only {kills} kills: the run was too quick to test resuming");
    assert!(count() < n, "the kills came too late to cut the run");
    let out = generate_cmd(&env, &run, n, "marginal").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let samples = check_samples(&run, "marginal");
    assert_eq!(samples.len(), n);
    // The filtered log has no repeated ids either, and events.jsonl ends with the finish.
    let filtered = std::fs::read_to_string(run.join("filtered.jsonl")).unwrap();
    let ids: Vec<String> = filtered
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len());
    let events = std::fs::read_to_string(run.join("events.jsonl")).unwrap();
    assert!(events.lines().last().unwrap().contains(r#""reason":"done""#));
}

/// A run begun before the workspace had its prompts/ folder (config `prompts: null`) continues
/// on the built-in templates it started with, instead of being refused as changed.
#[test]
fn a_run_keeps_the_templates_it_started_with() {
    let env = env();
    let run = env.base.join("run");
    let out = generate_cmd(&env, &run, 2, "none").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = run.join("config.yaml");
    assert!(std::fs::read_to_string(&config).unwrap().contains("prompts: null"), "no prompts/ folder yet");
    // The workspace gains its prompts/ folder (the workbench writes one on first start).
    std::fs::create_dir_all(env.workspace.join("prompts")).unwrap();
    let out = generate_cmd(&env, &run, 3, "none").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&config).unwrap().contains("prompts: null"));
    assert_eq!(check_samples(&run, "none").len(), 3);
}

/// The second round: tune an adapter on the first round's samples, then generate with it,
/// contrastively against the base.
#[test]
fn a_second_round_generates_with_the_tuned_model() {
    let env = env();
    let first = env.base.join("round-1");
    assert!(generate_cmd(&env, &first, 8, "top1").output().unwrap().status.success());
    let selfspec = |args: &[&str]| common::selfspec().args(args).output().unwrap();
    let r = first.to_str().unwrap();
    for s in check_samples(&first, "top1") {
        assert!(selfspec(&["samples", "decide", r, s["id"].as_str().unwrap(), "accept"]).status.success());
    }
    let cfg = env.base.join("train.yaml");
    std::fs::write(&cfg, "r: 4\nmax_steps: 3\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 1\nwarmup_steps: 0\nlearning_rate: 0.01\n").unwrap();
    let lora = env.base.join("lora");
    let writer = fixture("writer");
    let out = common::selfspec()
        .args(["train", "--model", writer.to_str().unwrap(), "--data", r, "--run", lora.to_str().unwrap()])
        .args(["--train-config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = env.base.join("round-2");
    let out = generate_cmd(&env, &second, 4, "top1")
        .args(["--adapter", lora.join("adapter").to_str().unwrap(), "--contrastive", "--alpha", "0.2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for s in check_samples(&second, "top1") {
        assert!(s["provenance"]["adapter"].as_str().unwrap().ends_with("adapter"));
        assert_eq!(s["provenance"]["contrastive_alpha"], 0.2);
        // Its trace: decoded again contrastively to the same text; every token passed the
        // plausibility cut, its score is log p_tuned − log p_base, and the tuned model's
        // probability is the document entry's.
        let out = selfspec(&["samples", "trace", second.to_str().unwrap(), s["id"].as_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(t["reproduced"], true, "{}", t["why"]);
        for tok in t["tokens"].as_array().unwrap() {
            let c = &tok["contrast"];
            assert_eq!((c["plausible"].as_bool(), c["alpha"].as_f64()), (Some(true), Some(0.2)), "{tok}");
            let (lt, lb) = (c["log_p_tuned"].as_f64().unwrap(), c["log_p_base"].as_f64().unwrap());
            assert!((c["score"].as_f64().unwrap() - (lt - lb)).abs() < 1e-4, "{tok}");
            assert!((tok["docs"][0]["p"].as_f64().unwrap() - lt.exp()).abs() < 1e-4, "{tok}");
            assert!(c["candidates"].as_u64().unwrap() >= 1);
        }
    }
    // The run remembers the adapter: continuing without it is refused.
    let out = generate_cmd(&env, &second, 6, "top1").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("adapter:"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every task that passes the filters waits in tasks.jsonl until it is answered: a run that
/// reaches N leaves the rest waiting, and the next run (a larger N) answers those before it asks
/// for new lists. Counters events carry where the time went.
#[test]
fn no_task_is_wasted_and_events_say_where_the_time_went() {
    let env = env();
    let run = env.base.join("run");
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(run.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let ids =
        |name: &str| -> HashSet<String> { lines(name).iter().map(|v| v["id"].as_str().unwrap().to_string()).collect() };
    let waiting = || -> Vec<String> {
        let done: HashSet<String> = ids("samples.jsonl").union(&ids("filtered.jsonl")).cloned().collect();
        let tasks = lines("tasks.jsonl");
        let all = tasks
            .iter()
            .flat_map(|l| l["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()));
        all.filter(|id| !done.contains(id)).collect()
    };
    let out = generate_cmd(&env, &run, 3, "marginal").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check_samples(&run, "marginal").len(), 3);
    let left = waiting();
    let lists = lines("tasks.jsonl").len();
    let events = lines("events.jsonl");
    let last = events.iter().rev().find(|e| e["event"] == "finished").unwrap();
    let time = &last["counters"]["time"];
    assert!(time["prefill_secs"].as_f64().unwrap() > 0.0 && time["decode_secs"].as_f64().unwrap() > 0.0, "{time}");
    assert!(time["prefill_tokens"].as_u64().unwrap() > 0 && time["decoded_row_tokens"].as_u64().unwrap() > 0);
    assert_eq!(last["counters"]["waiting"].as_u64().unwrap() as usize, left.len());
    // Continued with a larger N: what waited is answered (kept or dropped by a filter).
    let out = generate_cmd(&env, &run, 3 + left.len(), "marginal").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answered: HashSet<String> = ids("samples.jsonl").union(&ids("filtered.jsonl")).cloned().collect();
    for id in &left {
        assert!(answered.contains(id), "task {id} waited and was not answered");
    }
    assert!(lines("tasks.jsonl").len() >= lists);
}

/// With a judge, each sample that passed the other filters is scored by the model on the rubric:
/// kept samples carry a score at or above the threshold, the others are counted and written to
/// filtered.jsonl as judged low, with the response.
#[test]
fn a_judge_scores_samples_and_drops_the_low_ones() {
    let env = env();
    let config = env.base.join("judge.yaml");
    std::fs::write(
        &config,
        "generation:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  response_max_new_tokens: 40\n  \
         prompts_per_batch: 4\n  responses_per_batch: 4\n  k: 3\n  prompt_budget: 8\n  filters:\n    judge:\n      min_score: 2\n",
    )
    .unwrap();
    let run = env.base.join("run");
    let mut cmd = common::selfspec();
    cmd.arg("--config").arg(&config).arg("--workspace").arg(&env.workspace);
    cmd.args(["generate", "--seeds"]).arg(root().join("sample-seeds/finance.yaml"));
    cmd.arg("--model").arg(fixture("writer")).args(["--n", "3", "--seed", "11", "--mode", "none", "--run"]).arg(&run);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(0) || out.status.code() == Some(3), "{stderr}");
    let text = |name: &str| std::fs::read_to_string(run.join(name)).unwrap_or_default();
    let kept: Vec<serde_json::Value> =
        text("samples.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let judged_low: Vec<serde_json::Value> = text("filtered.jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["rejection"]["filter"] == "judged_low")
        .collect();
    assert!(!kept.is_empty() || !judged_low.is_empty(), "nothing was judged: {stderr}");
    for s in &kept {
        assert!(s["provenance"]["judge_score"].as_u64().unwrap() >= 2, "{s}");
    }
    for f in &judged_low {
        assert!(f["output"].is_string(), "{f}");
        assert!(f["rejection"]["score"].is_null() || f["rejection"]["score"].as_u64().unwrap() < 2, "{f}");
    }
}

#[test]
fn a_corpus_file_is_indexed_beside_itself_and_again_when_it_changes() {
    let env = env();
    let corpus = env.base.join("fin.corpus.jsonl");
    std::fs::copy(root().join("sample-seeds/finance.corpus.jsonl"), &corpus).unwrap();
    let run_with = |run: &str| {
        let out = common::selfspec()
            .arg("--config")
            .arg(&env.config)
            .args(["generate", "--seeds"])
            .arg(root().join("sample-seeds/finance.yaml"))
            .arg("--model")
            .arg(fixture("writer"))
            .args(["--n", "1", "--seed", "3", "--mode", "top1", "--corpus"])
            .arg(&corpus)
            .arg("--run")
            .arg(env.base.join(run))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let index = env.base.join("fin.index");
    let first = run_with("r1");
    assert!(first.contains("indexed") && first.contains("fin.index"), "{first}");
    assert!(selfspec::corpus::is_index(&index));
    // The run records the index it retrieved from, so trace and the Corpus tab open it.
    let job = std::fs::read_to_string(env.base.join("r1/config.yaml")).unwrap();
    assert!(job.contains(&format!("corpus: {}", index.display())), "{job}");
    assert!(check_samples(&env.base.join("r1"), "top1")[0]["provenance"]["documents"].as_array().unwrap().len() == 1);
    // A current index is used as it is.
    let second = run_with("r2");
    assert!(!second.contains("indexed"), "{second}");
    // A corpus changed after its index: indexed again, the new document retrievable.
    let mut text = std::fs::read_to_string(&corpus).unwrap();
    text.push_str("{\"id\": \"fin-doc-new\", \"text\": \"Zorblax bonds pay a floating zorblax coupon.\"}\n");
    std::fs::write(&corpus, text).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(&corpus).unwrap().set_modified(later).unwrap();
    let third = run_with("r3");
    assert!(third.contains("changed after its index was built"), "{third}");
    let hits = selfspec::corpus::Searcher::open(&index).unwrap().search("zorblax", 1).unwrap();
    assert_eq!(hits[0].id, "fin-doc-new");
}
