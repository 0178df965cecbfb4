//! The run's main loop as a [`backend::JobFeed`]: responses to waiting tasks first, then new
//! task lists while the tasks waiting and in flight fall short of N; each finished request
//! parsed, filtered, retrieved for, answered, judged and stored.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::filters::Pool;
use super::folder::{FilteredRecord, ListRecord, Run, Task};
use super::job::Job;
use super::progress::{Counters, Progress, Sink};
use super::respond::*;
use super::samples::{DocumentRef, Provenance, Sample, Status};
use crate::backend;
use crate::decode::{Completion, Event, Finish, Request, SamplingParams};
use crate::prompts;
use crate::seeds::Seed;

/// What a request handed to the engine is for.
pub(super) enum Work {
    List { prompt: usize, primer: String, demos: Vec<String>, sampling: SamplingParams },
    Response { task: Task, documents: Vec<DocumentRef>, sampling: SamplingParams },
    Judge { sample: Box<Sample> },
}

/// The run as a [`backend::JobFeed`]: responses to waiting tasks first, then new task lists while
/// the tasks waiting and in flight, with the yield measured so far, fall short of N.
pub(super) struct Feeder<'r, 'a, 's> {
    pub(super) run: &'r mut Run,
    pub(super) inputs: &'r Inputs<'a>,
    pub(super) job: &'r Job,
    pub(super) sink: &'r mut Sink<'s>,
    pub(super) pool: &'r mut Pool,
    pub(super) pool_text: &'r mut Vec<String>,
    pub(super) seeds: Vec<&'a Seed>,
    pub(super) budget: usize,
    /// The next prompt index to look at.
    pub(super) cursor: usize,
    pub(super) work: std::collections::HashMap<usize, Work>,
    pub(super) next_id: usize,
    pub(super) lists_in_flight: usize,
    pub(super) responses_in_flight: usize,
    /// Samples that passed the filters and wait for the judge, and the judge requests decoding.
    pub(super) judging: std::collections::VecDeque<Sample>,
    pub(super) judges_in_flight: usize,
    /// This session: lists decoded, tasks they gave, responses answered and kept.
    pub(super) lists: usize,
    pub(super) passed: usize,
    pub(super) answered: usize,
    pub(super) kept: usize,
    pub(super) halt: &'r AtomicBool,
    pub(super) cancel: &'r AtomicBool,
    pub(super) error: Option<anyhow::Error>,
    pub(super) started: Instant,
    pub(super) base: Counters,
    pub(super) timing: crate::decode::Timing,
    pub(super) filter_secs: f64,
    pub(super) rows: usize,
    pub(super) last_batch: Option<Instant>,
}

impl Feeder<'_, '_, '_> {
    /// Samples kept, and samples the responses and judge passes under way may still keep.
    pub(super) fn promised(&self) -> usize {
        self.run.store.len() + self.responses_in_flight + self.judging.len() + self.judges_in_flight
    }

    pub(super) fn issued(&self) -> usize {
        self.run.lists_done.len() + self.lists_in_flight
    }

    /// Samples a new task list is expected to give: tasks passing the filters per list times
    /// the share of responses kept, this session (one of each added, so the first list counts).
    pub(super) fn yield_per_list(&self) -> f64 {
        (self.passed as f64 + 1.0) / (self.lists as f64 + 1.0) * (self.kept as f64 + 1.0) / (self.answered as f64 + 1.0)
    }

    pub(super) fn fail(&mut self, e: anyhow::Error) {
        self.error.get_or_insert(e);
        self.halt.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn list_job(&mut self, p: usize) -> anyhow::Result<backend::Job> {
        let s = &self.job.settings;
        // The list's own draw, which its sampling seed follows; a list after the first of its
        // prompt takes the first one's demonstrations.
        let mut rng = prompt_rng(self.job.seed, p);
        let mut picks = draw(&mut rng, self.seeds.len(), s.demos);
        let first = p - p % s.lists_per_prompt.max(1);
        if first != p {
            picks = draw(&mut prompt_rng(self.job.seed, first), self.seeds.len(), s.demos);
        }
        let demos: Vec<&Seed> = picks.into_iter().map(|i| self.seeds[i]).collect();
        let (prompt, primer) = prompts::instruction_prompt(
            &self.inputs.templates.instruction,
            &self.inputs.seeds.domain,
            &self.inputs.seeds.description,
            &demos,
            s.tasks_per_prompt,
        )?;
        let stop = format!("Task {}", demos.len() + s.tasks_per_prompt + 1);
        let request = Request {
            stop: vec![stop],
            sampling: s.instruction_sampling(rng.next_u64()),
            stop_on_loop: true,
            stop_when: Some(prompts::list_gone_bad),
            ..tuned(self.job, 1, Request::new(Vec::new(), s.instruction_max_new_tokens))
        };
        let job = backend::Job::new(vec![prompt_of(s.prompt_format, &prompt, &primer)], request);
        let sampling = job.request.sampling;
        let demos = demos.iter().map(|d| d.id.clone()).collect();
        self.work.insert(self.next_id, Work::List { prompt: p, primer, demos, sampling });
        Ok(job)
    }

    pub(super) fn response_job(&mut self, task: &Task) -> anyhow::Result<(backend::Job, Vec<DocumentRef>)> {
        let s = &self.job.settings;
        let started = Instant::now();
        let query = format!("{}\n{}", task.instruction, task.input);
        let docs = match self.inputs.searcher {
            Some(searcher) => retrieve(searcher, self.job.mode, s, &query)?,
            None => Vec::new(),
        };
        let texts = response_texts(self.inputs, s, &task.instruction, &task.input, &docs)?;
        let documents = docs.iter().map(|(h, w)| DocumentRef { id: h.id.clone(), weight: *w }).collect();
        let request = Request {
            weights: docs.iter().map(|(_, w)| *w).collect(),
            sampling: s.response_sampling(task.instruction_sampling.seed ^ 0xa5a5_a5a5),
            stop_on_loop: true,
            ..Request::new(Vec::new(), s.response_max_new_tokens)
        };
        let request = tuned(self.job, texts.len(), request);
        self.filter_secs += started.elapsed().as_secs_f64();
        Ok((backend::Job::new(texts, request), documents))
    }

    /// The counters now, with the time so far.
    pub(super) fn counters(&self) -> Counters {
        let mut c = self.run.counters.clone();
        c.kept = self.run.store.len();
        c.prompts = self.run.lists_done.len();
        c.waiting = self.run.waiting.len();
        c.seconds = self.base.seconds + self.started.elapsed().as_secs_f64();
        c.time = self.base.time.add(&self.timing, self.filter_secs, self.rows);
        c
    }

    /// The counters as an event: at most one a second unless `now`.
    pub(super) fn batch(&mut self, now: bool) {
        if !now && self.last_batch.is_some_and(|t| t.elapsed().as_secs_f64() < 1.0) {
            return;
        }
        self.last_batch = Some(Instant::now());
        let counters = self.counters();
        self.run.counters = counters.clone();
        self.sink.emit(&Progress::Batch { counters });
    }

    pub(super) fn on_list(
        &mut self,
        prompt: usize,
        primer: String,
        demos: Vec<String>,
        sampling: SamplingParams,
        list: &Completion,
    ) -> anyhow::Result<()> {
        self.lists_in_flight -= 1;
        if list.finish == Finish::Cancelled {
            // Not recorded: a continued run decodes it again.
            return Ok(());
        }
        let started = Instant::now();
        let s = &self.job.settings;
        let c = &mut self.run.counters;
        c.instruction_tokens += list.ids.len();
        let text = format!("{primer} {}", list.text);
        let (parsed, mut failures) = prompts::parse_tasks(&text, matches!(list.finish, Finish::Length | Finish::Loop));
        if list.finish == Finish::Loop {
            // The item the loop is in is dropped, and counted as the loop it is.
            if let Some(last) = failures.iter_mut().rfind(|f| **f == prompts::Unparsed::Truncated) {
                *last = prompts::Unparsed::Loop;
            }
        }
        c.parsed += parsed.len();
        for f in failures {
            *c.unparsed.entry(serde_name(&f, None)).or_default() += 1;
        }
        let mut tasks = Vec::new();
        for (t, task) in parsed.into_iter().enumerate() {
            let id = format!("p{prompt:06}-{t:02}");
            if self.run.store.contains(&id) {
                continue;
            }
            let verdict = s.filters.check(&task.instruction, &task.input, self.pool);
            let most_similar = verdict.most_similar.map(|(i, score)| (self.pool_text[i].clone(), score));
            if let Some(rejection) = verdict.rejected {
                self.reject(&id, &task.instruction, &task.input, &rejection, most_similar.map(|m| m.0), None)?;
                continue;
            }
            self.pool.add(&task.instruction);
            self.pool_text.push(format!("sample {id}: {}", task.instruction.trim()));
            tasks.push(Task {
                id,
                instruction: task.instruction,
                input: task.input,
                demos: demos.clone(),
                instruction_sampling: sampling,
                most_similar,
            });
        }
        self.run.tasks.append(&ListRecord {
            prompt,
            tasks: tasks.clone(),
            text: Some(text),
            finish: Some(list.finish.clone()),
        })?;
        self.run.lists_done.insert(prompt);
        self.lists += 1;
        self.passed += tasks.len();
        self.run.waiting.extend(tasks);
        self.filter_secs += started.elapsed().as_secs_f64();
        self.batch(true);
        Ok(())
    }

    /// Records a task or sample the filters dropped (filtered.jsonl and the counters).
    pub(super) fn reject(
        &mut self,
        id: &str,
        instruction: &str,
        input: &str,
        rejection: &super::filters::Rejection,
        most_similar: Option<String>,
        output: Option<String>,
    ) -> anyhow::Result<()> {
        use super::filters::Rejection;
        let name = serde_name(rejection, Some("filter"));
        let c = &mut self.run.counters;
        match rejection {
            Rejection::EmptyResponse => c.empty_responses += 1,
            Rejection::LoopingResponse => c.looping_responses += 1,
            _ => *c.filtered.entry(name.clone()).or_default() += 1,
        }
        self.sink.emit(&Progress::Filtered {
            id: id.to_string(),
            instruction: instruction.to_string(),
            rejection: name,
        });
        if self.run.filtered_ids.insert(id.to_string()) {
            let record = FilteredRecord {
                id: id.to_string(),
                instruction: instruction.to_string(),
                input: input.to_string(),
                rejection: serde_json::to_value(rejection)?,
                most_similar,
                output,
            };
            self.run.filtered.append(&record)?;
        }
        Ok(())
    }

    pub(super) fn on_response(
        &mut self,
        task: Task,
        documents: Vec<DocumentRef>,
        sampling: SamplingParams,
        completion: &Completion,
    ) -> anyhow::Result<()> {
        use super::filters::Rejection;
        self.responses_in_flight -= 1;
        if completion.finish == Finish::Cancelled {
            // Still waiting (in tasks.jsonl, neither kept nor dropped).
            self.run.waiting.push_front(task);
            return Ok(());
        }
        let started = Instant::now();
        self.run.counters.response_tokens += completion.ids.len();
        self.answered += 1;
        let output = completion.text.trim().to_string();
        let filters = &self.job.settings.filters;
        let rejection = if completion.finish == Finish::Loop {
            Some(Rejection::LoopingResponse)
        } else {
            filters.check_response(&task.instruction, &task.input, &output)
        };
        if let Some(rejection) = rejection {
            self.reject(&task.id, &task.instruction, &task.input, &rejection, None, Some(output))?;
            self.filter_secs += started.elapsed().as_secs_f64();
            return Ok(());
        }
        let job = self.job;
        let sample = Sample {
            id: task.id,
            instruction: task.instruction,
            input: task.input,
            output,
            status: Status::Pending,
            provenance: Provenance {
                demos: task.demos,
                model: job.model.clone(),
                sampling: Some(task.instruction_sampling),
                response_sampling: Some(sampling),
                mode: Some(job.mode),
                documents,
                most_similar: task.most_similar.as_ref().map(|m| m.0.clone()),
                rouge_l: task.most_similar.as_ref().map(|m| m.1),
                finish: Some(completion.finish.clone()),
                adapter: job.tuned_model(),
                contrastive_alpha: job.contrastive.filter(|_| job.tuned_model().is_some()),
                created: now_secs(),
                judge_score: None,
            },
        };
        if filters.judge.is_some() {
            self.judging.push_back(sample);
        } else {
            self.keep(sample)?;
        }
        self.filter_secs += started.elapsed().as_secs_f64();
        self.batch(false);
        Ok(())
    }

    pub(super) fn keep(&mut self, sample: Sample) -> anyhow::Result<()> {
        if self.run.store.append(sample.clone())? {
            self.kept += 1;
            self.sink.emit(&Progress::Kept { sample: Box::new(sample) });
        }
        if self.run.store.len() >= self.job.n {
            self.halt.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// The judge's request for `sample`: the rubric, greedy, a few tokens.
    pub(super) fn judge_job(&self, sample: &Sample) -> anyhow::Result<backend::Job> {
        let judge = self.job.settings.filters.judge.clone().unwrap_or_default();
        let text = prompts::render(
            "generation.filters.judge.rubric",
            &judge.rubric,
            &[
                ("domain", &self.inputs.seeds.domain),
                ("instruction", &sample.instruction),
                ("input", &sample.input),
                ("output", &sample.output),
            ],
        )?;
        let request = Request { stop: vec!["\n".into()], ..Request::new(Vec::new(), 4) };
        Ok(backend::Job::new(vec![prompt_of(self.job.settings.prompt_format, &text, "")], request))
    }

    pub(super) fn on_judge(&mut self, mut sample: Sample, completion: &Completion) -> anyhow::Result<()> {
        use super::filters::{Judge, Rejection};
        self.judges_in_flight -= 1;
        if completion.finish == Finish::Cancelled {
            // Its task is still waiting in tasks.jsonl for a continued run.
            return Ok(());
        }
        let min = self.job.settings.filters.judge.as_ref().map_or(0, |j| j.min_score);
        let score = Judge::score(&completion.text);
        if score.is_none_or(|s| s < min) {
            let rejection = Rejection::JudgedLow { score };
            let output = Some(sample.output.clone());
            return self.reject(&sample.id, &sample.instruction, &sample.input, &rejection, None, output);
        }
        sample.provenance.judge_score = score;
        self.keep(sample)?;
        self.batch(false);
        Ok(())
    }
}

impl backend::JobFeed for Feeder<'_, '_, '_> {
    fn take(&mut self, room: crate::decode::Room) -> Vec<(usize, backend::Job)> {
        use std::sync::atomic::Ordering;
        if self.cancel.load(Ordering::Relaxed) {
            self.halt.store(true, Ordering::Relaxed);
        }
        let n = self.job.n;
        if self.error.is_some() || self.halt.load(Ordering::Relaxed) || self.run.store.len() >= n {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut rows = room.rows;
        let mut first = room.idle;
        // Samples waiting for the judge first: they are done but for it.
        while first || rows > 0 {
            let Some(sample) = self.judging.pop_front() else { break };
            let job = match self.judge_job(&sample) {
                Ok(j) => j,
                Err(e) => {
                    self.fail(e);
                    return out;
                }
            };
            first = false;
            rows = rows.saturating_sub(1);
            self.work.insert(self.next_id, Work::Judge { sample: Box::new(sample) });
            out.push((self.next_id, job));
            self.next_id += 1;
            self.judges_in_flight += 1;
        }
        // Responses to waiting tasks: as many as could still be needed.
        while self.promised() < n {
            let Some(task) = self.run.waiting.pop_front() else { break };
            let (job, documents) = match self.response_job(&task) {
                Ok(j) => j,
                Err(e) => {
                    self.run.waiting.push_front(task);
                    self.fail(e);
                    return out;
                }
            };
            let width = job.width(room);
            if !first && width > rows {
                self.run.waiting.push_front(task);
                break;
            }
            first = false;
            rows = rows.saturating_sub(width);
            self.sink.emit(&Progress::Responding { ids: vec![task.id.clone()] });
            let sampling = job.request.sampling;
            self.work.insert(self.next_id, Work::Response { task, documents, sampling });
            out.push((self.next_id, job));
            self.next_id += 1;
            self.responses_in_flight += 1;
        }
        // A task waits for rows to answer it: no list takes them first (a response needs k rows
        // at once, and lists taking rows one by one as they free would starve it).
        if self.promised() < n && !self.run.waiting.is_empty() {
            return out;
        }
        // New task lists while rows are free and what waits and decodes is not expected to
        // reach N. The lists of one prompt go out together (they share its prefill) unless rows
        // run out.
        let per_prompt = self.job.settings.lists_per_prompt.max(1);
        let mut issued_now = false;
        while self.issued() < self.budget && (first || rows > 0) {
            let expected =
                (self.promised() + self.run.waiting.len()) as f64 + self.lists_in_flight as f64 * self.yield_per_list();
            let mid_prompt = issued_now && !self.cursor.is_multiple_of(per_prompt);
            if expected >= n as f64 && !mid_prompt {
                break;
            }
            while self.run.lists_done.contains(&self.cursor) {
                self.cursor += 1;
            }
            let p = self.cursor;
            self.cursor += 1;
            let job = match self.list_job(p) {
                Ok(j) => j,
                Err(e) => {
                    self.fail(e);
                    return out;
                }
            };
            self.sink.emit(&Progress::Prompts { first: p, count: 1 });
            first = false;
            issued_now = true;
            rows = rows.saturating_sub(1);
            out.push((self.next_id, job));
            self.next_id += 1;
            self.lists_in_flight += 1;
        }
        out
    }

    fn event(&mut self, e: Event) {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            self.halt.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match e {
            Event::Token { request, text, .. } => {
                if text.is_empty() {
                    return;
                }
                let p = match self.work.get(&request) {
                    Some(Work::List { prompt, .. }) => {
                        Progress::InstructionText { prompt: *prompt, text: text.to_string() }
                    }
                    Some(Work::Response { task, .. }) => {
                        Progress::ResponseText { id: task.id.clone(), text: text.to_string() }
                    }
                    Some(Work::Judge { .. }) | None => return,
                };
                self.sink.emit(&p);
            }
            Event::Note { text } => self.sink.emit(&Progress::Note { text: text.to_string() }),
            Event::Finished { request, completion } => {
                let result = match self.work.remove(&request) {
                    Some(Work::List { prompt, primer, demos, sampling }) => {
                        self.on_list(prompt, primer, demos, sampling, completion)
                    }
                    Some(Work::Response { task, documents, sampling }) => {
                        self.on_response(task, documents, sampling, completion)
                    }
                    Some(Work::Judge { sample }) => self.on_judge(*sample, completion),
                    None => Ok(()),
                };
                if let Err(e) = result.and_then(|()| self.sink.check()) {
                    self.fail(e);
                }
            }
        }
    }

    fn timing(&mut self, t: &crate::decode::Timing) {
        self.timing = *t;
    }
}
