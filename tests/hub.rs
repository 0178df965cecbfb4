//! `--model org/name` downloading into the Hugging Face cache (cargo feature `hub-download`),
//! against a local server that answers as the hub does: `/{repo}/resolve/{revision}/{file}`
//! with `x-repo-commit` and an etag, weights redirected to a CDN path. The downloaded model
//! must then give transformers' greedy tokens (the parity fixture's record), and a second run
//! must need no server at all.
//!
//! `cargo test --features hub-download --test hub`
#![cfg(feature = "hub-download")]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name)
}

/// What the server saw: each request's path and its Authorization header.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A hub serving `repos` (`org/name` → folder); `cut` names a file whose body stops halfway.
fn serve(repos: HashMap<String, PathBuf>, cut: Option<&'static str>) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            answer(stream, &repos, cut, &seen);
        }
    });
    (addr, log)
}

fn answer(mut stream: TcpStream, repos: &HashMap<String, PathBuf>, cut: Option<&str>, log: &Log) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut auth = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("authorization:").or_else(|| h.strip_prefix("Authorization:")) {
            auth = Some(v.trim().to_string());
        }
    }
    log.lock().unwrap().push((path.clone(), auth));
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let send = |stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8], length: usize| {
        let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {length}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
    };
    // /cdn/{org}/{name}/{file}: the redirected weights.
    if parts.first() == Some(&"cdn") && parts.len() == 4 {
        let file = parts[3];
        if let Some(dir) = repos.get(&format!("{}/{}", parts[1], parts[2])) {
            let body = std::fs::read(dir.join(file)).unwrap();
            let sent = if cut == Some(file) { &body[..body.len() / 2] } else { &body[..] };
            return send(&mut stream, "200 OK", &[], sent, body.len());
        }
    }
    // /{org}/{name}/resolve/{revision}/{file}
    if parts.len() == 5 && parts[2] == "resolve" && (parts[3] == "main" || parts[3] == COMMIT) {
        let (repo, file) = (format!("{}/{}", parts[0], parts[1]), parts[4]);
        if let Some(body) = repos.get(&repo).and_then(|dir| std::fs::read(dir.join(file)).ok()) {
            let etag = format!(
                "{:016x}{:08x}",
                body.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3)),
                body.len()
            );
            let mut headers = vec![("x-repo-commit", COMMIT.to_string())];
            if file.ends_with(".safetensors") {
                headers.push(("x-linked-etag", format!("\"{etag}\"")));
                headers.push(("location", format!("/cdn/{repo}/{file}")));
                return send(&mut stream, "302 Found", &headers, b"", 0);
            }
            headers.push(("etag", format!("\"{etag}\"")));
            return send(&mut stream, "200 OK", &headers, &body, body.len());
        }
    }
    send(&mut stream, "404 Not Found", &[], b"", 0)
}

struct Case {
    prompt: String,
    greedy: Vec<u64>,
}

fn a_case(model: &str) -> Case {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(model).join("expected.json")).unwrap()).unwrap();
    let c = &v["cases"][1];
    Case {
        prompt: c["prompt"].as_str().unwrap().to_string(),
        greedy: c["greedy_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect(),
    }
}

/// `selfspec complete --model repo` with the cache in `cache`, the hub at `endpoint`.
fn complete(
    repo: &str,
    prompt: &str,
    cache: &Path,
    endpoint: &str,
    extra_env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = common::selfspec();
    cmd.args(["complete", "--model", repo, "--prompt", prompt, "--greedy", "--json", "--max-new-tokens", "32"])
        .args(["--device", "cpu"])
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("home"))
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn greedy(out: &std::process::Output) -> Vec<u64> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn downloads_a_sharded_model_once_then_runs_from_the_cache() {
    let repos = HashMap::from([("acme/sharded".to_string(), fixture("llama3-old-keys-sharded"))]);
    let (endpoint, log) = serve(repos, None);
    let cache = tempfile::tempdir().unwrap();
    let case = a_case("llama3-old-keys-sharded");
    let out = complete("acme/sharded", &case.prompt, cache.path(), &endpoint, &[("HF_TOKEN", "hf_secret")]);
    assert_eq!(greedy(&out), case.greedy, "transformers' greedy tokens from the downloaded model");

    let requests = log.lock().unwrap().clone();
    let hub: Vec<&(String, Option<String>)> = requests.iter().filter(|(p, _)| !p.starts_with("/cdn/")).collect();
    assert!(hub.iter().all(|(_, a)| a.as_deref() == Some("Bearer hf_secret")), "{hub:?}");
    assert!(requests.iter().filter(|(p, _)| p.starts_with("/cdn/")).all(|(_, a)| a.is_none()), "{requests:?}");
    assert_eq!(requests[0].0, "/acme/sharded/resolve/main/config.json");
    assert!(hub[1..].iter().all(|(p, _)| p.contains(COMMIT)), "later files pinned to the commit: {hub:?}");
    for shard in 1..=6 {
        let name = format!("model-0000{shard}-of-00006.safetensors");
        assert!(requests.iter().any(|(p, _)| p == &format!("/cdn/acme/sharded/{name}")), "{name}: {requests:?}");
    }

    // huggingface_hub's layout: refs/main, snapshot links into blobs.
    let repo_dir = cache.path().join("models--acme--sharded");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    let config = repo_dir.join("snapshots").join(COMMIT).join("config.json");
    assert!(std::fs::symlink_metadata(&config).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(fixture("llama3-old-keys-sharded/config.json")).unwrap());
    let blobs = std::fs::read_dir(repo_dir.join("blobs")).unwrap().count();
    assert_eq!(blobs, 10, "config, tokenizer, generation config, index and 6 shards");

    // A snapshot missing a file (another tool's partial download) is completed from the hub;
    // the blob is still there, so nothing is transferred again.
    let cdn = |log: &Log| log.lock().unwrap().iter().filter(|(p, _)| p.starts_with("/cdn/")).count();
    let transfers = cdn(&log);
    std::fs::remove_file(repo_dir.join("snapshots").join(COMMIT).join("model-00003-of-00006.safetensors")).unwrap();
    let out = complete("acme/sharded", &case.prompt, cache.path(), &endpoint, &[]);
    assert_eq!(greedy(&out), case.greedy);
    assert_eq!(cdn(&log), transfers);

    // Again, with no hub at all: the cache alone.
    let before = log.lock().unwrap().len();
    let out = complete("acme/sharded", &case.prompt, cache.path(), "http://127.0.0.1:9", &[]);
    assert_eq!(greedy(&out), case.greedy);
    assert_eq!(log.lock().unwrap().len(), before);
}

#[test]
fn a_cut_download_leaves_no_blob_and_the_next_run_completes_it() {
    let repos = HashMap::from([("acme/qwen3".to_string(), fixture("qwen3-headdim"))]);
    let (endpoint, _) = serve(repos.clone(), Some("model.safetensors"));
    let cache = tempfile::tempdir().unwrap();
    let case = a_case("qwen3-headdim");
    let out = complete("acme/qwen3", &case.prompt, cache.path(), &endpoint, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("acme/qwen3 is not in the Hugging Face cache") && err.contains("downloading it failed"),
        "{err}"
    );
    // config.json, tokenizer.json and generation_config.json are whole; the weights are not a
    // blob, only a part that the next run starts over.
    let blobs: Vec<String> = std::fs::read_dir(cache.path().join("models--acme--qwen3/blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.iter().filter(|b| !b.ends_with(".incomplete")).count(), 3, "{blobs:?}");
    assert_eq!(blobs.iter().filter(|b| b.ends_with(".incomplete")).count(), 1, "{blobs:?}");

    let (endpoint, _) = serve(repos, None);
    let out = complete("acme/qwen3", &case.prompt, cache.path(), &endpoint, &[]);
    assert_eq!(greedy(&out), case.greedy);
}

#[test]
fn a_missing_repository_and_offline_mode_get_clear_errors() {
    let repos = HashMap::from([("acme/qwen3".to_string(), fixture("qwen3-headdim"))]);
    let (endpoint, log) = serve(repos, None);
    let cache = tempfile::tempdir().unwrap();
    let out = complete("acme/nothing", "x", cache.path(), &endpoint, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("acme/nothing") && err.contains("has no config.json"), "{err}");

    let before = log.lock().unwrap().len();
    let out = complete("acme/qwen3", "x", cache.path(), &endpoint, &[("HF_HUB_OFFLINE", "1")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("HF_HUB_OFFLINE is set") && err.contains("huggingface-cli download acme/qwen3"), "{err}");
    assert_eq!(log.lock().unwrap().len(), before, "offline: no request");

    let out = complete("acme/qwen3", "x", cache.path(), "http://127.0.0.1:9", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("downloading it failed") && err.contains("127.0.0.1:9"), "{err}");
}

#[test]
fn an_index_naming_a_file_outside_the_repository_is_refused() {
    let evil = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("qwen3-headdim").join(f), evil.path().join(f)).unwrap();
    }
    std::fs::write(
        evil.path().join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"model.norm.weight": "../../../outside.safetensors"}}"#,
    )
    .unwrap();
    let (endpoint, log) = serve(HashMap::from([("acme/evil".to_string(), evil.path().to_path_buf())]), None);
    let cache = tempfile::tempdir().unwrap();
    let out = complete("acme/evil", "x", cache.path(), &endpoint, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("\"../../../outside.safetensors\", outside the repository"), "{err}");
    assert!(log.lock().unwrap().iter().all(|(p, _)| !p.contains("outside")));
    assert!(!cache.path().join("models--acme--evil/snapshots").exists());
}
