//! The bodies of `selfspec index build` and `index search`.

use std::path::Path;

use anyhow::Context;

/// `index build`: a BM25 index of a corpus, with progress on stderr.
pub fn build(source: &Path, out: &Path, force: bool) -> anyhow::Result<()> {
    if out.exists() && force {
        anyhow::ensure!(super::is_index(out), "{} exists and is not an index; not removing it", out.display());
        std::fs::remove_dir_all(out).with_context(|| format!("cannot remove {}", out.display()))?;
    }
    let stats = super::build(source, out, &mut |n, secs| {
        eprint!("\rindexed {n} documents ({:.0} docs/s)", n as f64 / secs.max(1e-9));
    })?;
    eprintln!();
    println!(
        "{}: {} documents indexed in {:.2} s ({:.0} docs/s)",
        out.display(),
        stats.documents,
        stats.seconds,
        stats.documents as f64 / stats.seconds.max(1e-9)
    );
    Ok(())
}

/// `index search`: the best `k` documents for `query`, as text or JSON.
pub fn search(index: &Path, query: &str, k: usize, json: bool) -> anyhow::Result<()> {
    let searcher = super::Searcher::open(index)?;
    let hits = searcher.search(query, k)?;
    if json {
        println!("{}", serde_json::to_string(&hits)?);
        return Ok(());
    }
    for (i, h) in hits.iter().enumerate() {
        let snippet: String = h.text.chars().take(100).collect();
        println!("{:>2}. {:>7.3}  {}  {}\n     {snippet}", i + 1, h.score, h.id, h.title);
    }
    if hits.is_empty() {
        println!("no document matches");
    }
    Ok(())
}
