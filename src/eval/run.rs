//! An evaluation run: every dataset at every k, for the base model and each adapter, decoded
//! greedily in batches (one batch can hold base and adapter requests together), scored with F1
//! and ROUGE-L, written as predictions.jsonl and a report in JSON, CSV and Markdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::data::{Dataset, Example};
pub use super::report::{Cell, Prediction, Report, BASE};
use crate::backend::{Engine, Job, Prompt};
use crate::decode::{self, Request};
use crate::metrics::{split_references, Scorer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalJob {
    pub model: String,
    /// (name, folder) of each adapter compared with the base.
    pub adapters: Vec<(String, PathBuf)>,
    pub data: PathBuf,
    /// Only these datasets (empty: all).
    #[serde(default)]
    pub datasets: Vec<String>,
    pub shots: Vec<usize>,
    /// Overrides the per-task limits.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// `first-line` keeps a prediction's first line; none by default.
    #[serde(default)]
    pub postprocess: Option<String>,
    /// Split references on ", " (the BoX habit).
    #[serde(default)]
    pub split_references: bool,
    /// The seed file the demonstrations came from (none: each dataset's train split).
    #[serde(default)]
    pub demos_from: Option<PathBuf>,
    /// Plain (Alpaca k-shot text) or chat (demonstrations as earlier turns of a conversation);
    /// `auto` in a run recorded before formats existed means plain.
    #[serde(default)]
    pub prompt_format: crate::prompts::PromptFormat,
    /// The server the answers come from (none: this process); its adapters are compared with
    /// the base under their names here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<crate::backend::Remote>,
    /// Resamples, trials and seed of the report's intervals and tests (none: the defaults).
    /// They change the report only, so a run continued with others is the same run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<super::stats::Settings>,
    /// Activations rounded to int8 for the products with GGML-block weights
    /// (`--int8-activations`): answers that are not the exact model's, so part of the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub int8_activations: bool,
}

impl EvalJob {
    /// The base, then every adapter, by the names the report uses.
    pub fn models(&self) -> Vec<String> {
        let served = self.backend.iter().flat_map(|b| b.adapters.iter().map(|(n, _)| n.clone()));
        std::iter::once(BASE.to_string()).chain(self.adapters.iter().map(|(n, _)| n.clone())).chain(served).collect()
    }
}

/// New tokens allowed per task.
pub fn max_new_tokens(task: &str) -> usize {
    match task {
        "sa" => 8,
        "cls" => 12,
        "qa" | "re" => 32,
        "ner" => 64,
        _ => 128,
    }
}

/// The k-shot prompt in `format`: plain ([`prompt`]), or a conversation whose first k exchanges
/// are the demonstrations (user: instruction and input; assistant: the answer), then the
/// example, with the assistant's turn opened.
pub fn k_shot(format: crate::prompts::PromptFormat, demos: &[Example], k: usize, e: &Example) -> Prompt {
    use crate::model::text::chat::Message;
    if format != crate::prompts::PromptFormat::Chat {
        return Prompt::Text(prompt(demos, k, e));
    }
    let mut messages = Vec::new();
    for d in demos.iter().take(k) {
        messages.push(Message::new("user", &crate::prompts::chat_user(&d.instruction, &d.input)));
        messages.push(Message::new("assistant", d.references[0].trim()));
    }
    messages.push(Message::new("user", &crate::prompts::chat_user(&e.instruction, &e.input)));
    Prompt::Chat { messages, primer: String::new() }
}

/// The k-shot prompt: k demonstrations (the train split's first k) each as an Alpaca prompt with
/// its answer, then the example's Alpaca prompt.
pub fn prompt(demos: &[Example], k: usize, e: &Example) -> String {
    let mut out = String::new();
    for d in demos.iter().take(k) {
        out.push_str(&crate::prompts::alpaca(&d.instruction, &d.input));
        out.push_str(d.references[0].trim());
        out.push_str("\n\n");
    }
    out.push_str(&crate::prompts::alpaca(&e.instruction, &e.input));
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EvalEvent {
    /// `requests` answers in all, `scored` of them kept from before (a continued run).
    Started {
        requests: usize,
        #[serde(default)]
        scored: usize,
    },
    Progress {
        done: usize,
        requests: usize,
    },
    /// Stopped on request with `done` answers scored; running the same command continues.
    Stopped {
        done: usize,
        requests: usize,
    },
    Finished {
        report: PathBuf,
    },
    /// Something the user should know (a torn line cut on continuing).
    Note {
        text: String,
    },
}

impl crate::runs::RunEvent for EvalEvent {
    fn end(&self) -> Option<crate::runs::End> {
        match self {
            EvalEvent::Finished { .. } => Some(crate::runs::End::Finished),
            EvalEvent::Stopped { .. } => Some(crate::runs::End::Stopped),
            _ => None,
        }
    }
}

/// The predictions file of an evaluation run (one line per scored answer, appended as they come).
pub const PREDICTIONS: &str = "predictions.jsonl";

/// Opens the evaluation run in `dir` for `job`: a new folder, or a run of the same job to
/// continue. A run of another job, or a folder holding something else, is refused: results are
/// never overwritten.
pub fn check_folder(dir: &Path, job: &EvalJob) -> anyhow::Result<()> {
    // What decides the results: not the statistics' settings, nor how the server is reached (its
    // endpoint, key, concurrency, timeout and retries may change between sessions).
    let identity =
        |j: EvalJob| EvalJob { stats: None, backend: j.backend.as_ref().map(crate::backend::Remote::identity), ..j };
    let job = &identity(job.clone());
    let old = crate::runs::read_job::<EvalJob>(dir, crate::runs::Kind::Eval)?.map(identity);
    match old {
        Some(old) if old == *job => Ok(()),
        // The same evaluation with more adapters after the old ones (a sweep adds each point's
        // adapter as it is trained): what was scored is kept, only the new answers are generated.
        Some(old)
            if job.adapters.len() > old.adapters.len()
                && EvalJob { adapters: job.adapters[..old.adapters.len()].to_vec(), ..job.clone() } == old =>
        {
            Ok(())
        }
        Some(old) => anyhow::bail!(
            "{} already holds an evaluation run with other settings; its results are kept: run its own command to \
             continue it, or choose a new --run folder. What differs:\n  {}",
            dir.display(),
            crate::runs::differences(&old, job).join("\n  ")
        ),
        None => {
            for file in [crate::runs::EVENTS, PREDICTIONS, "report.json"] {
                anyhow::ensure!(
                    !dir.join(file).exists(),
                    "{} already holds {file} but no evaluation config; choose a new --run folder",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// Runs `job` on `engine` (a local model with its adapters loaded under their names, or a
/// server that serves them), writing the run
/// folder `dir`, whose lock the caller holds; `intervals`: the report's statistics too (a
/// sweep's evaluation leaves them to its last point's). Each answer is scored and appended to
/// predictions.jsonl as it finishes, so a run stopped (`cancel`) or killed continues where it
/// was: answers already scored are not generated again. Returns None when stopped.
// The run protocol's parts (the lock held, the job, the folder, cancel, the event callback)
// and the kind's inputs (engine, datasets, intervals), as train and generate take theirs.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    _lock: &crate::runs::Lock,
    engine: Engine,
    job: &EvalJob,
    datasets: &[Dataset],
    dir: &Path,
    cancel: &AtomicBool,
    intervals: bool,
    on_event: &mut (dyn FnMut(&EvalEvent) + Send),
) -> anyhow::Result<Option<Report>> {
    check_folder(dir, job)?;
    if let Some(s) = &job.stats {
        s.check().with_context(|| format!("{}: stats", dir.join(crate::runs::CONFIG).display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::runs::write_config(dir, crate::runs::Kind::Eval, job)?;
    let (mut events, torn) = crate::runs::Log::<EvalEvent>::open(dir)?;
    let mut emit = |e: &EvalEvent, on_event: &mut (dyn FnMut(&EvalEvent) + Send)| -> anyhow::Result<()> {
        events.append(e)?;
        on_event(e);
        Ok(())
    };
    if let Some(text) = torn {
        emit(&EvalEvent::Note { text }, on_event)?;
    }
    let models = job.models();
    let path = dir.join(PREDICTIONS);
    let mut log = crate::lines::JsonLog::open(&path)?;
    if let Some((line, bytes)) = log.cut {
        let text = format!(
            "{}: line {line} was torn ({bytes} bytes) and is cut; that answer is generated again",
            path.display()
        );
        emit(&EvalEvent::Note { text }, on_event)?;
    }
    let mut predictions: Vec<Prediction> = crate::lines::read_jsonl(&path)?;
    let mut seen = std::collections::HashSet::new();
    predictions.retain(|p| seen.insert((p.model.clone(), p.dataset.clone(), p.k, p.index)));
    let (keys, requests, total) = pending(job, &models, datasets, &seen);
    let scored = total - requests.len();
    emit(&EvalEvent::Started { requests: total, scored }, on_event)?;
    let mut done = scored;
    let opts = decode::Options { max_batch: 16, ..Default::default() };
    let mut scorer = Scorer::default();
    let mut failure: Option<anyhow::Error> = None;
    engine.generate(
        &requests,
        &opts,
        &mut |e| {
            if let decode::Event::Note { text } = e {
                // What the user should know (a server's concurrency lowered); a failed write
                // does not stop the run.
                let _ = emit(&EvalEvent::Note { text: text.to_string() }, on_event);
                return;
            }
            let decode::Event::Finished { request, completion } = e else { return };
            if completion.finish == decode::Finish::Cancelled || failure.is_some() {
                return;
            }
            let (m, di, k, i) = &keys[request];
            let p = prediction(job, &mut scorer, m, &datasets[*di], *k, *i, &completion.text);
            if let Err(err) = log.append(&p) {
                failure = Some(err);
                return;
            }
            predictions.push(p);
            done += 1;
            if done % 8 == 0 || done == total {
                let ev = EvalEvent::Progress { done, requests: total };
                // Progress lines are a convenience: a failed write does not stop the run.
                let _ = emit(&ev, on_event);
            }
        },
        cancel,
    )?;
    if let Some(err) = failure {
        return Err(err);
    }
    if done < total {
        emit(&EvalEvent::Stopped { done, requests: total }, on_event)?;
        return Ok(None);
    }
    let settings = job.stats.unwrap_or_default();
    let report = super::report::build(&models, datasets, &job.shots, &predictions, intervals.then_some(&settings));
    write_report(dir, &report)?;
    emit(&EvalEvent::Finished { report: dir.join("report.json") }, on_event)?;
    Ok(Some(report))
}

/// A request still to answer: (model, dataset index, k, example index).
type Key = (String, usize, usize, usize);

/// The requests of `job` not yet answered (`seen`: the (model, dataset, k, example) answered),
/// each with its key, and the number of requests in all.
fn pending(
    job: &EvalJob,
    models: &[String],
    datasets: &[Dataset],
    seen: &std::collections::HashSet<(String, String, usize, usize)>,
) -> (Vec<Key>, Vec<Job>, usize) {
    let mut keys = Vec::new();
    let mut requests = Vec::new();
    let mut total = 0;
    for m in models {
        for (di, d) in datasets.iter().enumerate() {
            for &k in &job.shots {
                for (i, e) in d.test.iter().enumerate() {
                    total += 1;
                    if seen.contains(&(m.clone(), d.name.clone(), k, i)) {
                        continue;
                    }
                    let limit = job.max_new_tokens.unwrap_or_else(|| max_new_tokens(&d.task));
                    let request = Request {
                        stop: vec!["\n\n".into()],
                        adapter: (m != BASE).then(|| m.clone()),
                        ..Request::new(Vec::new(), limit)
                    };
                    requests.push(Job::new(vec![k_shot(job.prompt_format, &d.train, k, e)], request));
                    keys.push((m.clone(), di, k, i));
                }
            }
        }
    }
    (keys, requests, total)
}

/// Model `m`'s answer `text` to example `i` of `d` at `k` shots, post-processed as the job says
/// and scored against the example's references (F1 and ROUGE-L, 0–100).
fn prediction(job: &EvalJob, scorer: &mut Scorer, m: &str, d: &Dataset, k: usize, i: usize, text: &str) -> Prediction {
    let mut text = text.trim().to_string();
    if job.postprocess.as_deref() == Some("first-line") {
        text = text.lines().next().unwrap_or("").trim().to_string();
    }
    let refs: Vec<&str> = d.test[i].references.iter().map(String::as_str).collect();
    let refs = if job.split_references { split_references(&refs) } else { refs };
    let (f1, rouge_l) = scorer.score(&text, &refs);
    Prediction {
        model: m.to_string(),
        dataset: d.name.clone(),
        k,
        index: i,
        prediction: text,
        references: d.test[i].references.clone(),
        f1: f1 * 100.0,
        rouge_l: rouge_l * 100.0,
    }
}

/// Writes `report` into the run folder `dir` as report.json, report.csv and report.md, and its
/// numbers as a TensorBoard event file ([`write_board`]).
pub fn write_report(dir: &Path, report: &Report) -> anyhow::Result<()> {
    crate::fsutil::atomic_write(&dir.join("report.json"), serde_json::to_string_pretty(report)?.as_bytes())?;
    crate::fsutil::atomic_write(&dir.join("report.csv"), report.to_csv().as_bytes())?;
    crate::fsutil::atomic_write(&dir.join("report.md"), report.to_markdown().as_bytes())?;
    write_board(dir, report)
}

/// `selfspec eval report RUN`: a finished evaluation's report computed again from its
/// predictions, with `stats` (none: the run's own settings, or the defaults), recorded in its
/// config; nothing is generated and no model is loaded.
pub fn rereport(dir: &Path, stats: Option<super::stats::Settings>) -> anyhow::Result<Report> {
    let mut job = crate::runs::read_job::<EvalJob>(dir, crate::runs::Kind::Eval)?
        .with_context(|| format!("{} holds no evaluation run", dir.display()))?;
    let lock = crate::runs::Lock::acquire(dir)?;
    anyhow::ensure!(
        dir.join("report.json").exists(),
        "{} has not finished (no report.json); run its own `selfspec eval` command to continue it",
        dir.display()
    );
    if let Some(s) = stats {
        job.stats = Some(s);
    }
    let settings = job.stats.unwrap_or_default();
    settings.check()?;
    let datasets = super::data::load_dir(&job.data, &job.datasets)
        .with_context(|| format!("the run's datasets ({}) are needed for their names and tasks", job.data.display()))?;
    // A line written twice counts once: the report's per_example keeps the first.
    let predictions: Vec<Prediction> = crate::lines::read_jsonl(&dir.join(PREDICTIONS))?;
    let report = super::report::build(&job.models(), &datasets, &job.shots, &predictions, Some(&settings));
    crate::runs::write_config(dir, crate::runs::Kind::Eval, &job)?;
    write_report(dir, &report)?;
    drop(lock);
    Ok(report)
}

/// The evaluation's event file: one name per run folder, rewritten whole with the report (a
/// report computed again replaces it rather than adding a second set of points).
pub const EVAL_EVENTS: &str = "events.out.tfevents.selfspec-eval";

/// Every cell's F1 and ROUGE-L (and each model's average over the datasets) as
/// `eval/<dataset>/<metric>/<model>` with the step the number of shots, so each chart draws a
/// model's score against k.
pub fn write_board(dir: &Path, report: &Report) -> anyhow::Result<()> {
    let tmp = dir.join(".eval-events.partial");
    {
        let mut board = crate::runs::board::Board::at(&tmp)?;
        for c in &report.cells {
            let k = c.k as i64;
            board.scalar(&format!("eval/{}/f1/{}", c.dataset, c.model), k, c.f1)?;
            board.scalar(&format!("eval/{}/rougeL/{}", c.dataset, c.model), k, c.rouge_l)?;
        }
        for a in &report.averages {
            let k = a.k as i64;
            board.scalar(&format!("eval/average/f1/{}", a.model), k, a.f1.mean)?;
            board.scalar(&format!("eval/average/rougeL/{}", a.model), k, a.rouge_l.mean)?;
        }
    }
    std::fs::rename(&tmp, dir.join(EVAL_EVENTS)).with_context(|| format!("cannot write {}", dir.display()))
}
