//! Generation and evaluation through an OpenAI-compatible server (`--backend openai`), checked
//! against `selfspec serve` on the writer fixture: the same samples and reports as the local
//! engine, clear errors (unreachable endpoint, unknown model, refused key, the server's own 4xx
//! message), a server killed mid-run and the run resumed; and the server's API itself.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::root;

fn writer() -> PathBuf {
    root().join("tests/fixtures/models/writer")
}

/// `selfspec serve` on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = common::selfspec()
            .args(["serve", "--model"])
            .arg(model)
            .args(["--served-name", "writer", "--port", "0"])
            .args(extra)
            .env("SELFSPEC_TEST_KEY", "sesame")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("serve printed its address").unwrap();
            if let Some(at) = line.find("http://") {
                break line[at..].trim().to_string();
            }
        };
        // Keep reading stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(url: &str, path: &str, body: &Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let resp =
        agent.post(format!("{url}/{path}")).header("Content-Type", "application/json").send(body.to_string()).unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().read_to_string().unwrap())
}

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    index: PathBuf,
}

/// Settings a local and a served run resolve alike (a served model's size is not known, so the
/// task lists' sampling and the format are set; `selfspec serve` keeps its cache in f32, so the
/// local run does too). One list per prompt: lists sharing a prompt part ways here, since the
/// server runs a repeated prompt's last token again through its prefix cache (another summation
/// order) where the local engine copies the first row's logits, and sampling then splits at a
/// near-tie.
fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "generation:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  response_max_new_tokens: 40\n  \
         prompts_per_batch: 4\n  responses_per_batch: 4\n  k: 3\n  prompt_format: plain\n  \
         instruction_temperature: 0.7\n  instruction_top_p: 0.9\n  kv_cache_dtype: f32\n  lists_per_prompt: 1\n",
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
    Env { dir, config, index }
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn selfspec(&self) -> Command {
        let mut cmd = common::selfspec();
        cmd.arg("--config").arg(&self.config).arg("--workspace").arg(self.path("ws"));
        cmd
    }

    fn generate(&self, run: &Path, n: usize, mode: &str) -> Command {
        let mut cmd = self.selfspec();
        cmd.args(["generate", "--seeds"]).arg(root().join("sample-seeds/finance.yaml"));
        cmd.args(["--n", &n.to_string(), "--seed", "11", "--mode", mode, "--run"]).arg(run);
        if mode != "none" {
            cmd.arg("--corpus").arg(&self.index);
        }
        cmd
    }
}

fn remote<'a>(cmd: &'a mut Command, url: &str) -> &'a mut Command {
    cmd.args(["--backend", "openai", "--endpoint", url, "--served-model", "writer", "--top-logprobs", "2048"])
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn failed(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "succeeded: {stderr}");
    stderr
}

fn samples(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("samples.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A run's samples by id: samples.jsonl holds them in the order their responses finished, which
/// a server answering many requests at once does not fix.
fn by_id(run: &Path) -> Vec<Value> {
    let mut all = samples(run);
    all.sort_by_key(|s| s["id"].as_str().unwrap().to_string());
    all
}

/// What a sample says, without what may differ by backend (the model's name, the time).
fn content(s: &Value) -> Value {
    json!([s["id"], s["instruction"], s["input"], s["output"], s["provenance"]["documents"], s["provenance"]["finish"]])
}

#[test]
fn generation_through_selfspec_serve_is_the_local_engines() {
    let env = env();
    let server = Server::start(&writer(), &[]);
    for mode in ["none", "marginal"] {
        let local = env.path(&format!("local-{mode}"));
        ok(env.generate(&local, 6, mode).arg("--model").arg(writer()).output().unwrap());
        let served = env.path(&format!("served-{mode}"));
        ok(remote(&mut env.generate(&served, 6, mode), &server.url).output().unwrap());
        let (a, b) = (by_id(&local), by_id(&served));
        assert_eq!(a.len(), 6);
        // Task lists sampled by the server with the request's seed, and eq. 2 mixed here over
        // every token's log-probability: the same samples.
        assert_eq!(a.iter().map(content).collect::<Vec<_>>(), b.iter().map(content).collect::<Vec<_>>(), "{mode}");
        assert_eq!(b[0]["provenance"]["model"], "writer");
        let config = std::fs::read_to_string(served.join("config.yaml")).unwrap();
        assert!(config.contains("endpoint") && config.contains(&server.url), "{config}");
    }
}

#[test]
fn evaluation_through_selfspec_serve_is_the_local_engines() {
    let env = env();
    let server = Server::start(&writer(), &[]);
    let eval = |run: &Path| {
        let mut cmd = env.selfspec();
        cmd.args(["eval", "--data"]).arg(root().join("sample-seeds/eval/finance"));
        cmd.args(["--datasets", "fin-sentiment", "--shots", "0,1", "--run"]).arg(run);
        cmd
    };
    let local = env.path("eval-local");
    ok(eval(&local).arg("--model").arg(writer()).output().unwrap());
    let served = env.path("eval-served");
    ok(remote(&mut eval(&served), &server.url).output().unwrap());
    let cells = |run: &Path| {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
        v["cells"].clone()
    };
    assert_eq!(cells(&local), cells(&served));
    assert_eq!(cells(&served).as_array().unwrap().len(), 2);
}

#[test]
fn a_bad_endpoint_an_unknown_model_a_refused_key_and_a_4xx_are_named() {
    let env = env();
    let run = env.path("run");
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = failed(remote(&mut env.generate(&run, 2, "none"), &format!("http://127.0.0.1:{port}")).output().unwrap());
    assert!(err.contains("cannot reach the server at http://127.0.0.1") && err.contains("--endpoint"), "{err}");

    let server = Server::start(&writer(), &[]);
    let mut cmd = env.generate(&run, 2, "none");
    cmd.args(["--backend", "openai", "--endpoint", &server.url, "--served-model", "llama-70b"]);
    let err = failed(cmd.output().unwrap());
    assert!(err.contains("does not serve a model named \"llama-70b\"") && err.contains("serves: writer"), "{err}");

    // The server refuses 5000 alternatives (its vocabulary is 2048): its message is shown.
    let mut cmd = env.generate(&run, 2, "marginal");
    cmd.args(["--backend", "openai", "--endpoint", &server.url, "--served-model", "writer", "--top-logprobs", "5000"]);
    let err = failed(cmd.output().unwrap());
    assert!(
        err.contains("HTTP 400")
            && err.contains("`logprobs`: 5000 is out of range; it takes a whole number from 0 to 2048"),
        "{err}"
    );
    drop(server);

    let keyed = Server::start(&writer(), &["--api-key-env", "SELFSPEC_TEST_KEY"]);
    let mut cmd = env.generate(&env.path("keyed"), 2, "none");
    remote(&mut cmd, &keyed.url).args(["--api-key-env", "KEY"]);
    let err = failed(cmd.env("KEY", "open").output().unwrap());
    assert!(err.contains("refused the API key (HTTP 401)"), "{err}");
    let mut cmd = env.generate(&env.path("keyed"), 2, "none");
    remote(&mut cmd, &keyed.url).args(["--api-key-env", "KEY"]);
    ok(cmd.env("KEY", "sesame").output().unwrap());
    let config = std::fs::read_to_string(env.path("keyed/config.yaml")).unwrap();
    assert!(config.contains("api_key_env: KEY") && !config.contains("sesame"), "{config}");
}

#[test]
fn a_server_killed_mid_run_fails_clearly_and_the_run_resumes_when_it_is_back() {
    let env = env();
    let run = env.path("run");
    let server = Server::start(&writer(), &[]);
    let mut cmd = env.generate(&run, 12, "marginal");
    remote(&mut cmd, &server.url).args(["--retries", "2", "--concurrency", "2"]);
    let child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while samples(&run).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(120), "no sample came");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(server);
    let err = failed(child.wait_with_output().unwrap());
    assert!(err.contains("no answer after 3 tries") && err.contains("run the same command again"), "{err}");
    let before = samples(&run);
    assert!(!before.is_empty() && before.len() < 12, "{} samples", before.len());

    // Back, on another port: the same run continues.
    let server = Server::start(&writer(), &[]);
    let mut cmd = env.generate(&run, 12, "marginal");
    ok(remote(&mut cmd, &server.url).output().unwrap());
    let after = samples(&run);
    assert_eq!(after.len(), 12);
    assert_eq!(&after[..before.len()], &before[..], "kept samples changed");
    let ids: HashSet<&str> = after.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 12, "duplicates");
}

#[test]
fn contrastive_decoding_through_two_served_names_is_the_local_engines() {
    let env = env();
    // A tuned model: a few steps on the seeds' Alpaca export.
    let data = env.path("data.jsonl");
    let seeds = std::fs::read_to_string(root().join("sample-seeds/finance.yaml")).unwrap();
    assert!(seeds.contains("instruction"));
    ok(common::selfspec()
        .args(["seeds", "export"])
        .arg(root().join("sample-seeds/finance.yaml"))
        .arg(&data)
        .output()
        .unwrap());
    let cfg = env.path("train.yaml");
    std::fs::write(&cfg, "r: 4\nmax_steps: 3\nper_device_train_batch_size: 2\ngradient_accumulation_steps: 1\nwarmup_steps: 0\nlearning_rate: 0.01\n").unwrap();
    let lora = env.path("lora");
    ok(common::selfspec()
        .args(["train", "--model"])
        .arg(writer())
        .arg("--data")
        .arg(&data)
        .arg("--run")
        .arg(&lora)
        .arg("--train-config")
        .arg(&cfg)
        .output()
        .unwrap());
    let adapter = lora.join("adapter");
    // Greedy task lists: a sampled step ranks tied scores by token id here and by token text
    // through a server (its log-probabilities carry no ids), so a draw may land apart.
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("instruction_temperature: 0.7", "instruction_temperature: 0");
    std::fs::write(&env.config, config).unwrap();
    let local = env.path("local");
    let mut cmd = env.generate(&local, 4, "none");
    cmd.arg("--model").arg(writer()).arg("--adapter").arg(&adapter).args(["--contrastive", "--alpha", "0.2"]);
    ok(cmd.output().unwrap());
    let spec = format!("tuned={}", adapter.display());
    let server = Server::start(&writer(), &["--adapter", &spec]);
    let served = env.path("served");
    let mut cmd = env.generate(&served, 4, "none");
    remote(&mut cmd, &server.url).args(["--served-adapter", "tuned", "--contrastive", "--alpha", "0.2"]);
    ok(cmd.output().unwrap());
    let (a, b) = (by_id(&local), by_id(&served));
    assert_eq!(a.len(), 4);
    assert_eq!(b[0]["provenance"]["contrastive_alpha"], 0.2);
    // The same task lists, contrastive over every token of the vocabulary.
    let list = |s: &Value| json!([s["id"], s["instruction"], s["input"]]);
    assert_eq!(a.iter().map(list).collect::<Vec<_>>(), b.iter().map(list).collect::<Vec<_>>());
    // The responses too, but for one: a server is sent text, and where the tokens chosen do not
    // spell their text's own tokenization (here a run of single spaces, which the tokenizer
    // reads as one token) the server continues a different sequence from there.
    let same = a.iter().zip(&b).filter(|(x, y)| content(x) == content(y)).count();
    assert!(same >= 3, "{same} of 4 responses agree");
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (x["output"].as_str().unwrap(), y["output"].as_str().unwrap());
        let common = x.chars().zip(y.chars()).take_while(|(p, q)| p == q).count();
        assert!(common >= 8 || x == y, "{x:?} and {y:?} part at once");
    }
    // Stepping in token ids (--tokenizer): nothing is tokenized again, and every response is the
    // local engine's.
    let ids = env.path("served-ids");
    let mut cmd = env.generate(&ids, 4, "none");
    remote(&mut cmd, &server.url).args(["--served-adapter", "tuned", "--contrastive", "--alpha", "0.2"]);
    ok(cmd.arg("--tokenizer").arg(writer()).output().unwrap());
    let c = by_id(&ids);
    assert_eq!(a.iter().map(content).collect::<Vec<_>>(), c.iter().map(content).collect::<Vec<_>>());
    let config = std::fs::read_to_string(ids.join("config.yaml")).unwrap();
    assert!(config.contains("tokenizer:"), "the run records its tokenizer: {config}");
}

/// eq. 2 through a server sends each prompt again one token longer at every step: the server's
/// prefix cache runs only the new tokens, says so in `usage`, and answers as a server without one.
#[test]
fn the_server_runs_only_what_a_prompt_adds_to_one_it_has_seen() {
    let with = Server::start(&writer(), &[]);
    let without = Server::start(&writer(), &["--prefix-cache", "0"]);
    let ask = |url: &str, prompt: &str| -> Value {
        let body = json!({"model": "writer", "prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 5});
        let (status, text) = post(url, "completions", &body);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    let prompt = "Task 1\nInstruction: Give the sentiment of the sentence.\nTask 2\nInstruction:";
    let first = ask(&with.url, prompt);
    assert_eq!(cached(&first), 0);
    let longer = format!("{prompt}{}", first["choices"][0]["text"].as_str().unwrap());
    let second = ask(&with.url, &longer);
    let (before, now) =
        (first["usage"]["prompt_tokens"].as_u64().unwrap(), second["usage"]["prompt_tokens"].as_u64().unwrap());
    assert!(
        cached(&second) + 1 >= before && cached(&second) < now,
        "{} of {now} cached after {before}",
        cached(&second)
    );
    let reference = ask(&without.url, &longer);
    assert_eq!(cached(&reference), 0);
    assert_eq!(second["choices"][0]["text"], reference["choices"][0]["text"]);
    let lp = |v: &Value| -> Vec<f64> {
        v["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    for (a, b) in lp(&second).iter().zip(lp(&reference)) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn the_server_streams_batches_and_reports_log_probabilities() {
    // The writer with a chat template, for the chat endpoint.
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(writer()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let cfg = dir.path().join("tokenizer_config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["chat_template"] = json!(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    );
    std::fs::write(&cfg, v.to_string()).unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = &server.url;
    let prompt = "Task 1\nInstruction: Give the sentiment.\nTask 2\nInstruction:";
    let body = json!({"model": "writer", "prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 5});
    let (status, text) = post(url, "completions", &body);
    assert_eq!(status, 200, "{text}");
    let whole: Value = serde_json::from_str(&text).unwrap();
    let choice = &whole["choices"][0];
    let lp = &choice["logprobs"];
    // Greedy: every chosen token is its step's most likely one, and the tokens spell the text.
    let tokens: Vec<&str> = lp["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tokens.len(), 24);
    assert!(choice["text"].as_str().unwrap().starts_with(&tokens[..4].concat()));
    for (step, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let best = top.as_object().unwrap().values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][step].as_f64().unwrap();
        assert!((best - chosen).abs() < 1e-6 && chosen <= 0.0, "step {step}");
    }

    // Streamed: the same text, in pieces.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed.as_object_mut().unwrap().remove("logprobs");
    let (_, events) = post(url, "completions", &streamed);
    let pieces: Vec<Value> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(pieces.len() > 2 && events.trim_end().ends_with("data: [DONE]"));
    let joined: String = pieces.iter().map(|p| p["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(joined, choice["text"].as_str().unwrap());

    // Eight requests at once (decoded together) answer as each does alone.
    let bodies: Vec<Value> = (0..8)
        .map(|i| json!({"model": "writer", "prompt": format!("Task {i}\nInstruction:"), "max_tokens": 16, "temperature": 0.8, "seed": i}))
        .collect();
    let alone: Vec<String> = bodies.iter().map(|b| post(url, "completions", b).1).collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = bodies.iter().map(|b| s.spawn(move || post(url, "completions", b).1)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let text = |t: &String| serde_json::from_str::<Value>(t).unwrap()["choices"][0]["text"].clone();
    assert_eq!(alone.iter().map(text).collect::<Vec<_>>(), together.iter().map(text).collect::<Vec<_>>());

    // Chat: the rendered conversation, and a begun assistant turn continued.
    let messages = json!([{"role": "user", "content": "Give the sentiment."}]);
    let chat = json!({"model": "writer", "messages": messages, "max_tokens": 12, "temperature": 0});
    let (status, answer) = post(url, "chat/completions", &chat);
    assert_eq!(status, 200, "{answer}");
    let rendered = json!({"model": "writer", "prompt": "<user>Give the sentiment.\n<assistant>", "max_tokens": 12, "temperature": 0});
    let plain: Value = serde_json::from_str(&post(url, "completions", &rendered).1).unwrap();
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], plain["choices"][0]["text"]);
    let begun = json!({
        "model": "writer", "max_tokens": 12, "temperature": 0, "continue_final_message": true, "add_generation_prompt": false,
        "messages": [{"role": "user", "content": "Give the sentiment."}, {"role": "assistant", "content": "Task 2"}],
    });
    let continued: Value = serde_json::from_str(&post(url, "chat/completions", &begun).1).unwrap();
    let rendered = json!({"model": "writer", "prompt": "<user>Give the sentiment.\n<assistant>Task 2", "max_tokens": 12, "temperature": 0});
    let plain: Value = serde_json::from_str(&post(url, "completions", &rendered).1).unwrap();
    assert_eq!(continued["choices"][0]["message"]["content"], plain["choices"][0]["text"]);

    // Errors in OpenAI's shape.
    let (status, text) = post(url, "completions", &json!({"model": "nope", "prompt": "x"}));
    assert_eq!(status, 404);
    assert!(text.contains("does not exist") && text.contains("writer"), "{text}");
    let (status, text) = post(url, "completions", &json!({"model": "writer"}));
    assert_eq!(status, 400);
    assert!(text.contains("`prompt` is required"), "{text}");
    let (status, _) = post(url, "nowhere", &json!({}));
    assert_eq!(status, 404);
}

#[test]
fn a_sweeps_generation_stages_decode_on_the_server_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&writer(), &[]);
    let body = format!(
        "model: {}\nseeds: {}\ncorpus: {}\neval: {}\ndatasets: [bio-topic]\nshots: [0]\n\
         base: {{seeds: 10, samples: 4}}\nseed: 3\n\
         backend: {{endpoint: {}, served_model: writer, concurrency: 4, top_logprobs: 2048}}\n\
         generation:\n  tasks_per_prompt: 4\n  instruction_max_new_tokens: 400\n  response_max_new_tokens: 40\n  \
         prompts_per_batch: 4\n  responses_per_batch: 4\n  k: 3\n  prompt_format: plain\n\
         train:\n  r: 4\n  max_steps: 2\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 1\n  \
         warmup_steps: 0\n  learning_rate: 0.01\n",
        writer().display(),
        root().join("sample-seeds/biomedical.yaml").display(),
        root().join("sample-seeds/biomedical.corpus.jsonl").display(),
        root().join("sample-seeds/eval/biomedical").display(),
        server.url,
    );
    let spec = dir.path().join("sweep.yaml");
    std::fs::write(&spec, &body).unwrap();
    let run = dir.path().join("run");
    let home = dir.path().join("home");
    let sweep = |spec: &Path, run: &Path| {
        let mut cmd = common::selfspec_at(&home);
        cmd.arg("sweep").arg(spec).arg("--run").arg(run);
        cmd
    };
    ok(sweep(&spec, &run).output().unwrap());
    let gen = std::fs::read_to_string(run.join("gen-s10/config.yaml")).unwrap();
    assert!(gen.contains(&server.url) && gen.contains("served_model: writer"), "{gen}");
    let served = samples(&run.join("gen-s10"));
    assert_eq!(served.len(), 4);
    assert!(served.iter().all(|s| s["provenance"]["model"] == "writer"));
    assert!(run.join("report.json").exists());

    // A seeded sweep generates nothing: a server there is refused.
    let seeded = dir.path().join("seeded.yaml");
    let text = body.replace(
        "base: {seeds: 10, samples: 4}\n",
        "seeded: {base: {share: 0.5, init: standard}, share: [0.5], init: [standard]}\n",
    );
    let text = text.lines().filter(|l| !l.starts_with("corpus:")).collect::<Vec<_>>().join("\n");
    std::fs::write(&seeded, text).unwrap();
    let err = failed(sweep(&seeded, &dir.path().join("seeded-run")).arg("--plan").output().unwrap());
    assert!(err.contains("remove backend:"), "{err}");
}

/// CPU time (user + system, in clock ticks) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1.split_whitespace().collect::<Vec<_>>();
    after[11].parse::<u64>().unwrap() + after[12].parse::<u64>().unwrap()
}

fn raw_request(url: &str, body: &Value, auth: &str) -> std::net::TcpStream {
    use std::io::Write;
    let address = url.trim_start_matches("http://").trim_end_matches("/v1");
    let mut s = std::net::TcpStream::connect(address).unwrap();
    let body = body.to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    s
}

#[test]
fn the_server_refuses_meaningless_numbers_and_stops_for_clients_that_leave() {
    // A key variable that is set but empty could match no request: refused at the start.
    let out = common::selfspec()
        .args(["serve", "--model"])
        .arg(writer())
        .args(["--port", "0", "--api-key-env", "SELFSPEC_EMPTY_KEY"])
        .env("SELFSPEC_EMPTY_KEY", "")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SELFSPEC_EMPTY_KEY is empty"), "{out:?}");

    let server = Server::start(&writer(), &["--api-key-env", "SELFSPEC_TEST_KEY"]);
    let url = &server.url;
    let send = |body: &Value, auth: &str| -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let resp = agent
            .post(format!("{url}/completions"))
            .header("Authorization", auth)
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().read_to_string().unwrap())
    };
    let base = json!({"model": "writer", "prompt": "Task 1", "max_tokens": 4});
    // The scheme of a bearer token is case-insensitive.
    assert_eq!(send(&base, "bearer sesame").0, 200);
    for (field, value) in [
        ("max_tokens", json!(-1)),
        ("max_tokens", json!("50")),
        ("max_tokens", json!(3.5)),
        ("max_tokens", json!(u64::MAX)),
        ("top_k", json!(-3)),
        ("repetition_penalty", json!(0)),
        ("logprobs", json!(-1)),
        ("seed", json!(-1)),
        ("temperature", json!(-1)),
        ("top_p", json!(2)),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let (status, text) = send(&body, "Bearer sesame");
        assert_eq!(status, 400, "{field}: {value}: {text}");
        let message = serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.starts_with(&format!("`{field}`: {value} is out of range")), "{message}");
    }
    // A prompt and max_tokens past the context, however large max_tokens is.
    let mut long = base.clone();
    long["prompt"] = json!(vec![5; 4090]);
    long["max_tokens"] = json!(1000);
    let (status, text) = send(&long, "Bearer sesame");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("exceed the model's context"), "{text}");

    // Half-open connections from one client do not shut out the next request.
    let idle: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches("/v1")).ok())
        .collect();
    let started = Instant::now();
    assert_eq!(send(&base, "Bearer sesame").0, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    drop(idle);

    // A client that leaves, streamed or not: the server stops decoding for it.
    let pid = server.child.id();
    for stream in [true, false] {
        let body =
            json!({"model": "writer", "prompt": "Task 1", "max_tokens": 4000, "ignore_eos": true, "stream": stream});
        let s = raw_request(url, &body, "Bearer sesame");
        std::thread::sleep(Duration::from_millis(150));
        drop(s);
        std::thread::sleep(Duration::from_millis(400));
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_millis(600));
        let used = cpu_ticks(pid) - before;
        assert!(used <= 5, "stream {stream}: the server used {used} ticks in 0.6 s after its client left");
    }
    // And it still answers.
    assert_eq!(send(&base, "Bearer sesame").0, 200);
}
