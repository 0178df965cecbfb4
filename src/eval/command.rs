//! The bodies of `selfspec eval` (datasets and demonstrations read, adapters loaded, the run
//! locked, continued or refused, its progress printed) and `selfspec score`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use super::follow::Evaluation;
use super::run::{evaluate, EvalJob, BASE};
use crate::backend::Backend;
use crate::model::adapters::adapter::Spec;
use crate::model::Choice;

/// What `selfspec eval` was asked.
pub struct Options {
    /// The model here, or a server (whose adapters are compared by their served names).
    pub backend: Backend,
    pub adapters: Vec<Spec>,
    pub data: PathBuf,
    pub datasets: Vec<String>,
    pub shots: Vec<usize>,
    pub run: PathBuf,
    pub max_new_tokens: Option<usize>,
    pub postprocess: Option<String>,
    pub demos_from: Option<PathBuf>,
    pub split_references: bool,
    /// Plain k-shot text or the model's chat template; `auto`: chat when the model has one (a
    /// continued run keeps what it used).
    pub prompt_format: crate::prompts::PromptFormat,
    pub detached: bool,
    /// Resamples, trials and seed of the report's statistics (none: the defaults).
    pub stats: Option<super::stats::Settings>,
    /// Compute the report's statistics (a sweep computes them at its last point only).
    pub intervals: bool,
}

impl Options {
    /// An evaluation of `model` with `adapters` on the datasets in `data` (only `datasets`, if
    /// named) at `shots`, into the run folder `run`, everything else as `eval` defaults it
    /// (used by the sweeps and `lmc --eval`).
    pub fn new(
        model: Choice,
        adapters: Vec<Spec>,
        data: PathBuf,
        datasets: Vec<String>,
        shots: Vec<usize>,
        run: PathBuf,
        detached: bool,
    ) -> Options {
        Options {
            backend: Backend::Local(model),
            adapters,
            data,
            datasets,
            shots,
            run,
            max_new_tokens: None,
            postprocess: None,
            demos_from: None,
            split_references: false,
            prompt_format: crate::prompts::PromptFormat::Auto,
            detached,
            stats: None,
            intervals: true,
        }
    }
}

/// Runs `selfspec eval`; the exit code (0 finished, 130 stopped: the same command continues).
pub fn eval(opts: Options) -> anyhow::Result<u8> {
    anyhow::ensure!(!opts.shots.is_empty(), "--shots names no k");
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    for s in &opts.adapters {
        anyhow::ensure!(s.name != BASE, "the name {:?} is taken by the base model; name the adapter NAME=DIR", s.name);
    }
    let prompt_format = match opts.prompt_format {
        crate::prompts::PromptFormat::Auto => {
            match crate::runs::read_job::<EvalJob>(&opts.run, crate::runs::Kind::Eval).ok().flatten() {
                Some(old) => old.prompt_format,
                None => match &opts.backend {
                    Backend::Local(choice) => {
                        let template = crate::model::load_tokenizer(&choice.name)?.has_chat_template();
                        crate::prompts::PromptFormat::Auto.resolve(template)
                    }
                    // A served model's template is not known here: the paper's plain prompts.
                    Backend::Remote(_) => crate::prompts::PromptFormat::Plain,
                },
            }
        }
        f => f,
    };
    let job = EvalJob {
        prompt_format,
        model: match &opts.backend {
            Backend::Local(choice) => choice.name.clone(),
            Backend::Remote(remote) => remote.served_model.clone(),
        },
        backend: match &opts.backend {
            Backend::Local(_) => None,
            Backend::Remote(remote) => Some(remote.clone()),
        },
        adapters: opts.adapters.iter().map(|s| (s.name.clone(), absolute(&s.dir))).collect(),
        data: absolute(&opts.data),
        datasets: opts.datasets.clone(),
        shots: opts.shots.clone(),
        max_new_tokens: opts.max_new_tokens,
        postprocess: opts.postprocess.clone(),
        split_references: opts.split_references,
        demos_from: opts.demos_from.as_deref().map(absolute),
        stats: opts.stats,
        int8_activations: matches!(&opts.backend, Backend::Local(c) if c.int8),
    };
    if let Some(s) = &opts.stats {
        s.check()?;
    }
    // Refused before anything is loaded or locked: an existing run of other settings is kept.
    super::run::check_folder(&opts.run, &job)?;
    let mut datasets = super::data::load_dir(&opts.data, &opts.datasets)?;
    if let Some(path) = &opts.demos_from {
        let loaded = crate::seeds::load(path, &crate::seeds::Limits::default())
            .with_context(|| format!("cannot read the seed file {}", path.display()))?;
        anyhow::ensure!(
            loaded.is_lossless() && !loaded.file.seeds.is_empty(),
            "{}: not a usable seed file (`selfspec seeds validate` says why)",
            path.display()
        );
        for d in &mut datasets {
            d.train = super::data::demos_from_seeds(&loaded.file, &d.task);
        }
    }
    let most = opts.shots.iter().max().copied().unwrap_or(0);
    for d in &datasets {
        // A k-shot row must hold k demonstrations, or its label is false.
        anyhow::ensure!(
            d.train.len() >= most,
            "--shots {most}: {} has only {} demonstrations ({}.train.jsonl{}); ask for at most {} shots or add \
             demonstrations",
            d.name,
            d.train.len(),
            d.name,
            if opts.demos_from.is_some() { " or the --demos-from seeds of its task" } else { "" },
            d.train.len()
        );
    }
    let lock = crate::runs::Lock::acquire(&opts.run)?;
    let result = (|| {
        let loaded = opts
            .backend
            .load(&opts.adapters, "compare the adapters it serves with --served-adapter NAME[=SERVED_NAME]")?;
        let cancel = Arc::new(AtomicBool::new(false));
        crate::signals::watch(cancel.clone(), opts.detached);
        let report = evaluate(&lock, loaded.engine(), &job, &datasets, &opts.run, &cancel, opts.intervals, &mut |e| {
            eprintln!("{}", Evaluation::line(e));
        })?;
        Ok(match report {
            Some(report) => {
                println!("{}", report.to_markdown());
                0
            }
            None => 130,
        })
    })();
    if let Err(e) = &result {
        crate::runs::record_failure(&opts.run, &format!("{e:#}"));
    }
    result
}

/// `selfspec eval report`: the report of a finished run computed again, printed as Markdown.
pub fn rereport(run: &Path, resamples: Option<usize>, seed: Option<u64>) -> anyhow::Result<()> {
    let old = crate::runs::read_job::<EvalJob>(run, crate::runs::Kind::Eval)?.and_then(|j| j.stats).unwrap_or_default();
    let stats = (resamples.is_some() || seed.is_some()).then(|| super::stats::Settings {
        resamples: resamples.unwrap_or(old.resamples),
        trials: resamples.unwrap_or(old.trials),
        seed: seed.unwrap_or(old.seed),
    });
    let report = super::run::rereport(run, stats)?;
    println!("{}", report.to_markdown());
    Ok(())
}

/// `selfspec score`: SQuAD F1 and ROUGE-L of a predictions file, as one JSON object on stdout;
/// with `paired`, two files compared example by example ([`score_paired`]).
pub fn score(
    files: &[PathBuf],
    paired: bool,
    rows: bool,
    split: bool,
    json: bool,
    stats: &super::stats::Settings,
) -> anyhow::Result<()> {
    match (paired, files) {
        (true, [a, b]) => score_paired(a, b, split, json, stats),
        (true, _) => anyhow::bail!("--paired compares two files: selfspec score --paired A.jsonl B.jsonl"),
        (false, [file]) => score_one(file, rows, split),
        (false, _) => anyhow::bail!("two files are compared with --paired: selfspec score --paired A.jsonl B.jsonl"),
    }
}

fn score_one(file: &Path, rows: bool, split: bool) -> anyhow::Result<()> {
    use crate::metrics;
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        prediction: String,
        references: Vec<String>,
        /// Accepted (a file made for --paired scores alone too), not used.
        #[serde(default, rename = "id")]
        _id: Option<serde_json::Value>,
    }
    let text = crate::lines::read_text(file)?;
    let mut scorer = metrics::Scorer::default();
    let (mut f1_sum, mut rouge_sum, mut n) = (0.0, 0.0, 0usize);
    let mut unreferenced = Vec::new();
    let mut per_row = Vec::new();
    let shape = r#"each line must be {"prediction": "…", "references": ["…", …]}"#;
    for record in crate::lines::jsonl_records::<Line>(file, &text, shape) {
        let (line, rec) = record?;
        // No reference at all scores 0 (as the fixtures from the reference scripts pin), but the
        // user is told: it is usually a data mistake.
        if rec.references.is_empty() {
            unreferenced.push(line);
        }
        let refs: Vec<&str> = rec.references.iter().map(String::as_str).collect();
        let refs = if split { metrics::split_references(&refs) } else { refs };
        let (f1, rouge) = scorer.score(&rec.prediction, &refs);
        f1_sum += f1;
        rouge_sum += rouge;
        n += 1;
        if rows {
            per_row.push(serde_json::json!({"line": line, "f1": f1 * 100.0, "rougeL": rouge * 100.0}));
        }
    }
    anyhow::ensure!(n > 0, "{} holds no records to score; {shape}", file.display());
    if let Some(first) = unreferenced.first() {
        eprintln!(
            "warning: {}: {} record(s) have an empty \"references\" list and score 0 (first at line {first})",
            file.display(),
            unreferenced.len()
        );
    }
    let mean = |s: f64| s / n as f64 * 100.0;
    let mut out = serde_json::json!({"n": n, "f1": mean(f1_sum), "rougeL": mean(rouge_sum)});
    if rows {
        out["rows"] = serde_json::Value::Array(per_row);
    }
    println!("{out}");
    Ok(())
}

/// One line of a prediction file compared with --paired: its id, prediction and references
/// (other fields, as other tools write them, are ignored).
#[derive(serde::Deserialize)]
struct PairedLine {
    id: serde_json::Value,
    prediction: String,
    #[serde(deserialize_with = "one_or_many")]
    references: Vec<String>,
}

/// A list of references, or one as a plain string.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Refs {
        One(String),
        Many(Vec<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        Refs::One(s) => vec![s],
        Refs::Many(v) => v,
    })
}

/// A paired file's lines by id, in file order; a repeated or missing id is an error naming it.
fn paired_lines(file: &Path) -> anyhow::Result<Vec<(String, usize, PairedLine)>> {
    let text = crate::lines::read_text(file)?;
    let shape = r#"each line must be {"id": "…" or a number, "prediction": "…", "references": ["…", …]}"#;
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::new();
    for record in crate::lines::jsonl_records::<PairedLine>(file, &text, shape) {
        let (line, rec) = record?;
        let id = match &rec.id {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => anyhow::bail!("{}:{line}: id is {other}; {shape}", file.display()),
        };
        if let Some(first) = seen.insert(id.clone(), line) {
            anyhow::bail!(
                "{}:{line}: id {id:?} again (first at line {first}); every id must be unique",
                file.display()
            );
        }
        out.push((id, line, rec));
    }
    anyhow::ensure!(!out.is_empty(), "{} holds no records; {shape}", file.display());
    Ok(out)
}

/// The paired comparison of two prediction files (B against A), as `score --paired` prints it.
pub fn paired_report(
    a: &Path,
    b: &Path,
    split: bool,
    stats: &super::stats::Settings,
) -> anyhow::Result<serde_json::Value> {
    use super::report::exact_match;
    use super::stats::{self, Group};
    use crate::metrics::{split_references, Scorer};
    stats.check()?;
    let la = paired_lines(a)?;
    let lb = paired_lines(b)?;
    let index: std::collections::HashMap<&str, usize> =
        lb.iter().enumerate().map(|(i, (id, _, _))| (id.as_str(), i)).collect();
    for (id, line, _) in &la {
        anyhow::ensure!(
            index.contains_key(id.as_str()),
            "{}:{line}: id {id:?} is not in {}; both files must hold the same examples",
            a.display(),
            b.display()
        );
    }
    let in_a: std::collections::HashSet<&str> = la.iter().map(|(id, _, _)| id.as_str()).collect();
    if let Some((id, line, _)) = lb.iter().find(|(id, _, _)| !in_a.contains(id.as_str())) {
        anyhow::bail!(
            "{}:{line}: id {id:?} is not in {}; both files must hold the same examples",
            b.display(),
            a.display()
        );
    }
    anyhow::ensure!(
        la.len() >= 2,
        "{} and {} hold one example; intervals and tests need two or more",
        a.display(),
        b.display()
    );
    let mut scorer = Scorer::default();
    let mut score = |rec: &PairedLine| {
        let refs: Vec<&str> = rec.references.iter().map(String::as_str).collect();
        let refs = if split { split_references(&refs) } else { refs };
        let (f1, rouge) = scorer.score(&rec.prediction, &refs);
        (f1 * 100.0, rouge * 100.0, exact_match(&rec.prediction, &refs))
    };
    // The same id with other references is likely two different examples.
    let differ: Vec<&str> = la
        .iter()
        .filter(|(id, _, x)| lb[index[id.as_str()]].2.references != x.references)
        .map(|(id, _, _)| id.as_str())
        .collect();
    if let Some(first) = differ.first() {
        eprintln!(
            "warning: {} id(s) have other references in {} than in {} (first: {first:?}); are the ids the same examples?",
            differ.len(),
            b.display(),
            a.display()
        );
    }
    let (mut fa, mut fb, mut ra, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut ea, mut eb, mut only_a, mut only_b) = (0usize, 0usize, 0usize, 0usize);
    for (id, _, x) in &la {
        let (_, _, y) = &lb[index[id.as_str()]];
        let (f1a, rla, xa) = score(x);
        let (f1b, rlb, xb) = score(y);
        fa.push(f1a);
        fb.push(f1b);
        ra.push(rla);
        rb.push(rlb);
        ea += xa as usize;
        eb += xb as usize;
        only_a += (xa && !xb) as usize;
        only_b += (xb && !xa) as usize;
    }
    let n = fa.len();
    let metric = |a: Vec<f64>, b: Vec<f64>| {
        let (a, b) = ([Group::one(a)], [Group::one(b)]);
        let d = stats::paired(&a, &b, stats);
        let (ea, eb) = (stats::estimate(&a, stats), stats::estimate(&b, stats));
        serde_json::json!({
            "a": ea.mean, "b": eb.mean, "a_ci": ea.ci, "b_ci": eb.ci,
            "delta": d.delta, "ci": d.ci, "p": d.p, "detectable": d.detectable,
        })
    };
    let pct = |c: usize| 100.0 * c as f64 / n as f64;
    Ok(serde_json::json!({
        "n": n,
        "f1": metric(fa, fb),
        "rougeL": metric(ra, rb),
        "exact": {
            "a": pct(ea), "b": pct(eb), "mcnemar_p": stats::mcnemar_exact(only_a, only_b),
            "only_a": only_a, "only_b": only_b,
        },
        "resamples": stats.resamples,
        "trials": stats.trials,
        "seed": stats.seed,
    }))
}

fn score_paired(a: &Path, b: &Path, split: bool, json: bool, stats: &super::stats::Settings) -> anyhow::Result<()> {
    use super::report::{p_text, with_interval};
    let r = paired_report(a, b, split, stats)?;
    if json {
        println!("{r}");
        return Ok(());
    }
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let ci = |v: &serde_json::Value| Some([f(&v[0]), f(&v[1])]);
    println!("{} examples; A = {}, B = {}; 95 % intervals", r["n"], a.display(), b.display());
    println!("{:<8} {:>20} {:>20} {:>22} {:>8} {:>13}", "metric", "A", "B", "Δ = B − A", "p", "detectable Δ");
    for (name, key) in [("F1", "f1"), ("ROUGE-L", "rougeL")] {
        let m = &r[key];
        let d = super::stats::Delta {
            delta: f(&m["delta"]),
            ci: [f(&m["ci"][0]), f(&m["ci"][1])],
            p: f(&m["p"]),
            holm_p: None,
            detectable: f(&m["detectable"]),
        };
        println!(
            "{name:<8} {:>20} {:>20} {:>22} {:>8} {:>13.1}",
            with_interval(f(&m["a"]), ci(&m["a_ci"])),
            with_interval(f(&m["b"]), ci(&m["b_ci"])),
            super::report::delta_text(&d),
            p_text(d.p),
            d.detectable
        );
    }
    let e = &r["exact"];
    println!(
        "{:<8} {:>20.1} {:>20.1}   McNemar's exact p {} ({} right only in A, {} only in B)",
        "exact",
        f(&e["a"]),
        f(&e["b"]),
        p_text(f(&e["mcnemar_p"])),
        e["only_a"],
        e["only_b"]
    );
    println!(
        "`*`: p < 0.05 and the interval clear of 0. Resamples and trials: {}, seed {}.",
        stats.resamples, stats.seed
    );
    Ok(())
}
