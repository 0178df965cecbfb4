//! The bodies of `selfspec index build` and `index search`.

use std::path::Path;

/// `index build`: a BM25 index of a corpus, with progress on stderr.
pub fn build(source: &Path, out: &Path, force: bool) -> anyhow::Result<()> {
    let report = &mut |n: usize, secs: f64| {
        if n.is_multiple_of(10_000) {
            eprint!("\rindexed {n} documents ({:.0} docs/s)", n as f64 / secs.max(1e-9));
        }
    };
    // --force replaces an index only once the new one is complete.
    let stats = if force { super::rebuild(source, out, report)? } else { super::build(source, out, report)? };
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

/// `index info`: the corpus's size and length distribution, and its index's state.
pub fn info(source: &Path, index: Option<&Path>, json: bool) -> anyhow::Result<()> {
    use super::profile::{index_beside, IndexState, Profile};
    let index = index.map_or_else(|| index_beside(source), Path::to_path_buf);
    let profile = Profile::read(source, &mut |n| {
        if n.is_multiple_of(50_000) {
            eprint!("\rread {n} documents");
        }
    })?;
    let state = IndexState::of(Some(source), &index);
    if json {
        let out = serde_json::json!({"corpus": source, "profile": profile, "index": index, "index_state": state});
        println!("{out}");
        return Ok(());
    }
    eprint!("\r");
    println!("{}: {} documents, {:.1} MB", source.display(), profile.documents, profile.bytes as f64 / 1e6);
    println!(
        "words per document: min {}, median {}, mean {:.0}, p90 {}, max {}",
        profile.min, profile.median, profile.mean, profile.p90, profile.max
    );
    let most = profile.histogram.iter().copied().max().unwrap_or(0).max(1);
    for (label, n) in Profile::bucket_labels().iter().zip(&profile.histogram) {
        println!("  {label:>9} {n:>8}  {}", "█".repeat((n * 40).div_ceil(most)));
    }
    println!("index {}: {}", index.display(), state.describe());
    for p in &profile.problems {
        println!("problem: {p}");
    }
    Ok(())
}
