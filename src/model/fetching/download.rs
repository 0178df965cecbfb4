//! Fetching a model from the Hugging Face Hub into the local cache (cargo feature
//! `hub-download`), in huggingface_hub's layout, so Python tools and selfspec share the files:
//! `models--org--name/blobs/<etag>`, `snapshots/<commit>/<file>` (a relative link to the blob),
//! `refs/main`.
//!
//! Only what selfspec reads is fetched: config.json, tokenizer.json, generation_config.json
//! when the repository has one, and the safetensors weights (the index and every shard it
//! names, or model.safetensors). Every file comes from the commit the first one resolved to,
//! so a push during the download cannot mix revisions. A blob is written to `.incomplete` and
//! renamed when whole; a blob already there is not fetched again.
//!
//! Environment, as huggingface_hub reads it: `HF_ENDPOINT` (default https://huggingface.co),
//! `HF_TOKEN` (else the token file in `$HF_HOME`), `HF_HUB_OFFLINE` (checked by the caller).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Downloads `repo` (`org/name`) into the cache at `root` (a token saved under `hf_home`, the
/// Hugging Face home, is sent when `HF_TOKEN` is unset); returns its snapshot folder. The
/// snapshot's links and `refs/main` are written only once every file is whole, so a cut
/// download leaves no snapshot for the next run to take as complete.
pub fn fetch(root: &Path, hf_home: Option<&Path>, repo: &str) -> Result<PathBuf, String> {
    let hub = Hub::from_env(hf_home);
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let (commit, config) = hub.file(&repo_dir, repo, "main", "config.json")?.ok_or_else(|| {
        format!("{}/{repo} has no config.json (is the name right, and is it a model repository?)", hub.endpoint)
    })?;
    let mut files = vec![("config.json".to_string(), config)];
    let mut get = |file: &str, required: bool| -> Result<Option<PathBuf>, String> {
        match hub.file(&repo_dir, repo, &commit, file)? {
            Some((_, blob)) => {
                files.push((file.to_string(), blob.clone()));
                Ok(Some(blob))
            }
            None if required => Err(format!("{repo} has no {file} at commit {commit}")),
            None => Ok(None),
        }
    };
    get("tokenizer.json", true)?;
    get("generation_config.json", false)?;
    match get("model.safetensors.index.json", false)? {
        Some(index) => {
            for shard in shards(&index)? {
                get(&shard, true)?;
            }
        }
        None => {
            get("model.safetensors", true)
                .map_err(|e| format!("{e}; selfspec reads safetensors weights only (no .bin or .pth checkpoints)"))?;
        }
    }
    let snapshot = repo_dir.join("snapshots").join(&commit);
    for (file, blob) in &files {
        let path = snapshot.join(file);
        link(blob, &path).map_err(|e| io(&path, e))?;
    }
    std::fs::create_dir_all(repo_dir.join("refs")).map_err(|e| io(&repo_dir, e))?;
    let refs = repo_dir.join("refs/main");
    std::fs::write(&refs, &commit).map_err(|e| io(&refs, e))?;
    Ok(snapshot)
}

/// Whether the snapshot `dir` holds everything [`fetch`] would fetch (a snapshot that another
/// tool filled only partly is fetched again; blobs already there are kept).
pub fn is_complete(dir: &Path) -> bool {
    let has = |f: &str| dir.join(f).exists();
    has("config.json")
        && has("tokenizer.json")
        && (has("model.safetensors")
            || (has("model.safetensors.index.json")
                && shards(&dir.join("model.safetensors.index.json")).is_ok_and(|s| s.iter().all(|f| has(f)))))
}

/// The shard file names a model.safetensors.index.json lists, each checked to stay inside the
/// snapshot folder.
fn shards(index: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| io(index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", index.display()))?;
    let map = v["weight_map"].as_object().ok_or_else(|| format!("{}: no \"weight_map\" object", index.display()))?;
    let mut files: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file =
            file.as_str().ok_or_else(|| format!("{}: weight_map[{tensor:?}] is not a string", index.display()))?;
        if !safe_name(file) {
            return Err(format!("{}: weight_map[{tensor:?}] names {file:?}, outside the repository", index.display()));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    Ok(files)
}

/// A relative path of plain components (no `..`, no root, no empty parts).
fn safe_name(file: &str) -> bool {
    !file.is_empty() && file.split('/').all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\\'))
}

fn io(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

struct Hub {
    endpoint: String,
    token: Option<String>,
    /// Redirects are taken by hand: the commit and etag are on the hub's own answer.
    agent: ureq::Agent,
    /// For the redirected download itself (no token: it goes to another host).
    cdn: ureq::Agent,
}

impl Hub {
    /// The hub `HF_ENDPOINT` names, with `HF_TOKEN` or the token saved under `hf_home`.
    fn from_env(hf_home: Option<&Path>) -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| std::fs::read_to_string(hf_home?.join("token")).ok().filter(|t| !t.trim().is_empty()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(format!("selfspec/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let cdn: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .build()
            .into();
        Hub {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: token.map(|t| t.trim().to_string()),
            agent,
            cdn,
        }
    }

    /// `file` of `repo` at `revision`, stored as a blob in the cache: (commit, blob), or None
    /// when the hub has no such file.
    fn file(
        &self,
        repo_dir: &Path,
        repo: &str,
        revision: &str,
        file: &str,
    ) -> Result<Option<(String, PathBuf)>, String> {
        let url = format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint);
        let mut request = self.agent.get(&url);
        if let Some(t) = &self.token {
            request = request.header("Authorization", &format!("Bearer {t}"));
        }
        let response = request.call().map_err(|e| format!("{url}: {e}"))?;
        let status = response.status().as_u16();
        match status {
            404 => return Ok(None),
            401 | 403 => {
                return Err(format!(
                    "{url}: HTTP {status}: the repository is private or gated; accept its terms on the hub and set HF_TOKEN"
                ))
            }
            200 | 301 | 302 | 303 | 307 | 308 => {}
            _ => return Err(format!("{url}: HTTP {status}")),
        }
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let commit = header("x-repo-commit").ok_or_else(|| {
            format!(
                "{url}: the answer has no x-repo-commit header; is HF_ENDPOINT ({}) a Hugging Face hub?",
                self.endpoint
            )
        })?;
        if !commit.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("{url}: unexpected commit {commit:?}"));
        }
        let etag =
            header("x-linked-etag").or_else(|| header("etag")).ok_or_else(|| format!("{url}: no etag header"))?;
        let etag = etag.trim_start_matches("W/").trim_matches('"').to_string();
        if etag.is_empty() || !etag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(format!("{url}: unexpected etag {etag:?}"));
        }
        let blob = repo_dir.join("blobs").join(&etag);
        if !blob.exists() {
            let body = if status == 200 {
                response
            } else {
                let location = header("location").ok_or_else(|| format!("{url}: HTTP {status} without a location"))?;
                let target = if location.starts_with('/') { format!("{}{location}", self.endpoint) } else { location };
                let redirected = self.cdn.get(&target).call().map_err(|e| format!("{target}: {e}"))?;
                if redirected.status().as_u16() != 200 {
                    return Err(format!("{target} (for {file}): HTTP {}", redirected.status().as_u16()));
                }
                redirected
            };
            let size = body.headers().get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            eprintln!(
                "downloading {repo}/{file}{}",
                size.map_or(String::new(), |s| format!(" ({:.1} MB)", s as f64 / 1e6))
            );
            store(body.into_body().into_reader(), &blob, size).map_err(|e| format!("{file}: {e}"))?;
        }
        Ok(Some((commit, blob)))
    }
}

/// Streams `body` to `blob` through `blob.incomplete`, checking the size when it is known.
fn store(mut body: impl Read, blob: &Path, size: Option<u64>) -> Result<(), String> {
    let dir = blob.parent().expect("a blob lives in blobs/");
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let part = blob.with_extension("incomplete");
    let mut out = std::fs::File::create(&part).map_err(|e| io(&part, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = body.read(&mut buf).map_err(|e| format!("reading the download: {e}"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| io(&part, e))?;
        written += n as u64;
    }
    out.sync_all().map_err(|e| io(&part, e))?;
    if let Some(size) = size {
        if written != size {
            return Err(format!("the download stopped after {written} of {size} bytes; run again to retry"));
        }
    }
    std::fs::rename(&part, blob).map_err(|e| io(blob, e))
}

/// `path` pointing at `blob`: a relative symbolic link where the OS has them, else a copy.
fn link(blob: &Path, path: &Path) -> std::io::Result<()> {
    let dir = path.parent().expect("a snapshot file lives in a folder");
    std::fs::create_dir_all(dir)?;
    if path.exists() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<a/b/file> up to the repository folder, then into blobs/.
        let repo_dir = blob.parent().and_then(Path::parent).expect("blobs/ sits in the repository folder");
        let depth = path.strip_prefix(repo_dir).map_or(0, |p| p.components().count() - 1);
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().expect("a blob has a name"));
        std::os::unix::fs::symlink(target, path)
    }
    #[cfg(not(unix))]
    {
        std::fs::copy(blob, path).map(|_| ())
    }
}
