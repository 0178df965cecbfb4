//! Stages 2 and 3 of self-specialization as one resumable run: the base model writes task lists
//! from random seed demos, the filters keep new and well-formed instructions, and each kept
//! instruction gets a response — without documents, with the top BM25 document, or marginalised
//! over the top-k documents (the paper's eq. 2).
//!
//! A run folder holds `config.yaml` (the job), `samples.jsonl` (kept samples, fsynced one at a
//! time), `filtered.jsonl` (instructions the filters dropped, and why) and `events.jsonl` (one
//! line per finished batch of prompts, with the counters).
//!
//! Resuming is a replay. Prompt `p` draws its demos and sampling seed from `(seed, p)` alone, and
//! a task's sample id is its place, `p{prompt}-{task}`; the counters and the next prompt come
//! from the last batch event. A batch cut by a kill is decoded again from its start: tasks whose
//! ids are already stored are skipped, the store refuses a second copy of an id, and so nothing
//! is duplicated or lost.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;

use super::filters::Pool;
use crate::seeds::Seed;

use super::feeder::Feeder;
pub use super::folder::{FilteredRecord, ListRecord, Run, Task, EVENTS, FILTERED, SAMPLES, TASKS};
pub use super::job::{Job, ADAPTER};
use super::progress::{Coalesced, Sink};
pub use super::progress::{Counters, Outcome, Progress, TimeSpent};
pub use super::respond::{draw, Inputs};
pub(crate) use super::respond::{response_texts, retrieve, tuned};
pub use super::samples::Mode;
pub use super::settings::{KvDtype, PromptFormat, Settings, Weighting};

/// Runs `run` until it holds `job.n` samples, the budget is spent, or `cancel` is set.
pub fn run(
    run: &mut Run,
    inputs: &Inputs,
    cancel: &AtomicBool,
    on_progress: &mut (dyn FnMut(&Progress) + Send),
) -> anyhow::Result<Outcome> {
    let job = run.job.clone();
    let s = &job.settings;
    s.check().map_err(anyhow::Error::msg)?;
    let seeds: Vec<&Seed> = inputs.seeds.seeds.iter().collect();
    anyhow::ensure!(!seeds.is_empty(), "{}: the seed file has no seeds", job.seeds.display());
    anyhow::ensure!(
        s.demos <= seeds.len(),
        "generation.demos: {} is out of range; it takes 1 to the seed file's {} seeds ({}): lower it or add seeds",
        s.demos,
        seeds.len(),
        job.seeds.display()
    );
    anyhow::ensure!(
        (1..=crate::bounds::MAX_SAMPLES).contains(&job.n),
        "{}",
        crate::bounds::out_of_range("--n", job.n, &format!("a whole number from 1 to {}", crate::bounds::MAX_SAMPLES))
    );
    anyhow::ensure!(
        job.mode == Mode::None || inputs.searcher.is_some(),
        "mode {} needs a corpus: pass --corpus (a JSONL corpus, a folder of .txt files, or an index folder)",
        job.mode
    );
    let budget = s.budget(job.n);
    let mut pool = Pool::default();
    let mut pool_text: Vec<String> = Vec::new();
    for seed in &seeds {
        pool.add(&seed.instruction);
        pool_text.push(format!("seed {}: {}", seed.id, seed.instruction.trim()));
    }
    for sample in run.samples() {
        pool.add(&sample.instruction);
        pool_text.push(format!("sample {}: {}", sample.id, sample.instruction.trim()));
    }
    for task in &run.waiting {
        pool.add(&task.instruction);
        pool_text.push(format!("sample {}: {}", task.id, task.instruction.trim()));
    }
    let started = Instant::now();
    let base_seconds = run.counters.seconds;
    let log = run.events.take().context("the run's event log is in use")?;
    let mut sink = Sink { log, text: Coalesced::default(), on_progress, error: None };
    let outcome = go(run, inputs, cancel, &mut sink, &mut pool, &mut pool_text, budget, started, base_seconds);
    run.events = Some(sink.log);
    let outcome = outcome?;
    sink.error.map_or(Ok(outcome), Err)
}

// The run and its inputs, the cancel flag, where events go, the near-duplicate pool and the
// labels of its entries, the prompt budget and the clock of a continued run: the loop's state,
// built by `run` and used only here.
#[allow(clippy::too_many_arguments)]
pub(super) fn go(
    run: &mut Run,
    inputs: &Inputs,
    cancel: &AtomicBool,
    sink: &mut Sink,
    pool: &mut Pool,
    pool_text: &mut Vec<String>,
    budget: usize,
    started: Instant,
    base_seconds: f64,
) -> anyhow::Result<Outcome> {
    let job = run.job.clone();
    let s = &job.settings;
    for note in std::mem::take(&mut run.notes) {
        sink.emit(&Progress::Note { text: note });
    }
    sink.emit(&Progress::Started {
        n: job.n,
        budget,
        resumed: run.store.len(),
        counters: run.counters.clone(),
        mode: job.mode,
        weighting: s.weighting.describe(),
    });
    let rows = s.prompts_per_batch + s.responses_per_batch * s.k.max(1);
    // Every prompt begins like the others of its kind (the chat template's head, the fixed text
    // of the instruction and response templates): a prefix cache of an eighth of the KV budget
    // keeps recent prompts, and a new one runs only what it does not share. Rows are gated (a
    // request naming no adapter runs on the base) so that stored rows are keyed by adapter.
    let kv_budget = s.kv_cache_mib << 20;
    let opts = crate::decode::Options {
        prompt_top: 0,
        max_batch: rows,
        kv_budget: Some(kv_budget - kv_budget / 8),
        gated: true,
        prefix: Some(std::sync::Arc::new(crate::decode::PrefixCache::new(kv_budget / 8))),
        half_kv: s.half_kv(),
    };
    let halt = AtomicBool::new(false);
    let mut base = run.counters.clone();
    base.seconds = base_seconds;
    let mut feeder = Feeder {
        run,
        inputs,
        job: &job,
        sink,
        pool,
        pool_text,
        seeds: inputs.seeds.seeds.iter().collect(),
        budget,
        cursor: 0,
        work: Default::default(),
        next_id: 0,
        lists_in_flight: 0,
        responses_in_flight: 0,
        judging: Default::default(),
        judges_in_flight: 0,
        lists: 0,
        passed: 0,
        answered: 0,
        kept: 0,
        halt: &halt,
        cancel,
        error: None,
        started,
        base,
        timing: Default::default(),
        filter_secs: 0.0,
        rows,
        last_batch: None,
    };
    let result = inputs.engine.run(&mut feeder, &opts, &halt);
    let counters = feeder.counters();
    let error = feeder.error.take();
    run.counters = counters;
    result?;
    if let Some(e) = error {
        return Err(e);
    }
    let outcome = if run.store.len() >= job.n {
        Outcome::Done
    } else if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        Outcome::Cancelled
    } else {
        Outcome::Budget { budget }
    };
    sink.emit(&Progress::Finished { outcome: outcome.clone(), counters: run.counters.clone() });
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::respond::{prompt_rng, serde_name};
    use crate::rng::Rng;
    use std::collections::HashSet;

    use crate::backend::Remote;

    #[test]
    fn a_new_run_resolves_the_format_and_sampling_for_its_model() {
        let auto = Settings::default();
        let small = auto.resolve(135_000_000, true);
        assert_eq!(small.prompt_format, PromptFormat::Chat);
        assert_eq!((small.instruction_temperature, small.instruction_top_p), (Some(0.7), Some(0.9)));
        let large = auto.resolve(30_000_000_000, false);
        assert_eq!(large.prompt_format, PromptFormat::Plain);
        assert_eq!((large.instruction_temperature, large.instruction_top_p), (Some(1.0), Some(0.98)));
        // What the configuration sets is kept.
        let set = Settings { prompt_format: PromptFormat::Plain, instruction_temperature: Some(0.3), ..auto };
        let kept = set.resolve(135_000_000, true);
        assert_eq!((kept.prompt_format, kept.instruction_temperature), (PromptFormat::Plain, Some(0.3)));
        // The key/value cache: f16 unless set; a run recorded before the setting kept f32.
        assert!(small.half_kv() && !Settings::default().half_kv());
        let f32_set = Settings { kv_cache_dtype: Some(KvDtype::F32), ..Settings::default() };
        assert!(!f32_set.resolve(135_000_000, true).half_kv());
        let recorded: Settings = crate::yaml::from_str("k: 5").unwrap();
        assert!(!recorded.half_kv(), "an older run's settings, without the key, decode with f32");
    }

    #[test]
    fn interleaved_streams_are_logged_one_line_each() {
        let mut c = Coalesced::default();
        for (prompt, text) in [(5, "a"), (7, "x"), (5, "b"), (7, "y")] {
            assert!(c.push(&Progress::InstructionText { prompt, text: text.into() }).is_empty());
        }
        let out = c.flush();
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Progress::InstructionText { prompt: 5, text } if text == "ab"));
        assert!(matches!(&out[1], Progress::InstructionText { prompt: 7, text } if text == "xy"));
    }

    #[test]
    fn weights_are_distributions() {
        let soft = Weighting::Softmax { temperature: 1.0 }.weights(&[3.0, 2.0, 1.0]);
        let e: Vec<f64> = [0.0f64, -1.0, -2.0].iter().map(|x| x.exp()).collect();
        let z: f64 = e.iter().sum();
        for (w, x) in soft.iter().zip(&e) {
            assert!((w - x / z).abs() < 1e-12);
        }
        assert_eq!(Weighting::L1.weights(&[3.0, 1.0]), vec![0.75, 0.25]);
        let flat = Weighting::Softmax { temperature: 1e9 }.weights(&[10.0, 1.0]);
        assert!((flat[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn counters_name_failures_as_serde_does() {
        use super::super::filters::Rejection;
        use crate::prompts::Unparsed;
        assert_eq!(serde_name(&Rejection::TooSimilar { to: 1, rouge_l: 0.8 }, Some("filter")), "too_similar");
        assert_eq!(serde_name(&Rejection::StartsNonAscii, Some("filter")), "starts_non_ascii");
        assert_eq!(serde_name(&Unparsed::NoInput, None), "no_input");
    }

    #[test]
    fn draws_are_distinct_and_repeatable() {
        let a = draw(&mut prompt_rng(7, 3), 80, 3);
        assert_eq!(a, draw(&mut prompt_rng(7, 3), 80, 3));
        assert_ne!(a, draw(&mut prompt_rng(7, 4), 80, 3));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 3);
        assert_eq!(draw(&mut Rng::new(1), 2, 3).len(), 2);
    }

    #[test]
    fn a_changed_job_names_what_changed() {
        let job = Job {
            seeds: "a.yaml".into(),
            model: "m".into(),
            n: 10,
            mode: Mode::Marginal,
            corpus: None,
            seed: 1,
            prompts: None,
            adapter: None,
            contrastive: None,
            backend: None,
            settings: Settings::default(),
        };
        // A server's endpoint, key variable and concurrency may change; its served name not.
        let served = Job { backend: Some(Remote::new("http://a:1", "m")), ..job.clone() };
        let mut moved = Remote::new("https://b/v1", "m");
        moved.concurrency = 64;
        moved.api_key_env = Some("KEY".into());
        assert!(served.differences(&Job { backend: Some(moved), ..job.clone() }).is_empty());
        let renamed = Job { backend: Some(Remote::new("http://a:1", "other")), ..job.clone() };
        assert_eq!(served.differences(&renamed).len(), 1, "{:?}", served.differences(&renamed));
        let mut other = Job { n: 50, ..job.clone() };
        other.settings.prompts_per_batch = 2;
        assert!(job.differences(&other).is_empty(), "N and batch sizes may change");
        other.seed = 2;
        other.settings.k = 3;
        assert_eq!(job.differences(&other), vec!["seed: 1 (run) vs 2 (now)", "settings.k: 5 (run) vs 3 (now)"]);
    }
}
