//! Why each token of a sample was chosen (`selfspec samples trace`): the sample's response is
//! decoded again with the run's recorded settings (its prompts rebuilt from the seed file's
//! domain, the templates and the documents retrieval gives the query, its weights and its
//! sampling seed), then teacher-forced on its tokens under each document's prompt. Per token:
//! its probability under the mixture Σ w_j·p_j (eq. 2) it was drawn from, every document's own
//! probability of it, weight and top tokens, the document that contributed most, and the
//! mixture's entropy. `reproduced` says whether decoding again gave the sample's text; when it
//! does not (the index, the templates or the model changed since), the recorded text is traced
//! as tokenized, and `why` says what differs. A second-round sample runs with the run's tuned
//! adapter: a mixture of documents with it, or, decoded contrastively (eq. 3), its tokens with
//! log p_tuned, log p_base, the contrast score and whether the plausibility cut (p_tuned ≥
//! α·max p_tuned) kept the token.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::pipeline::{self, Inputs, Job};
use super::samples::SampleStore;
use crate::backend::{self, Engine};
use crate::decode::{self, sampling, Request, SamplingParams};
use crate::model::{DTypeChoice, Model, Pass};

#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub id: String,
    pub mode: String,
    pub reproduced: bool,
    /// What kept decoding again from giving the sample's text (absent when it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub tokens: Vec<TokenTrace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenTrace {
    pub id: u32,
    pub text: String,
    /// Its probability under the mixture it was drawn from (eq. 2's Σ w_j·p_j; for an eq. 3
    /// sample, the softmax of the contrast scores over the tokens that pass the cut).
    pub p: f64,
    /// Its probability once the run's response temperature and top-p reshaped that
    /// distribution: what the draw used. Null when the run decoded greedily (the argmax).
    pub p_drawn: Option<f64>,
    /// The mixture's entropy (nats).
    pub entropy: f64,
    /// The document whose weighted probability of it is the largest (index into `docs`).
    pub driver: usize,
    pub docs: Vec<DocTrace>,
    /// Tuned-versus-base contrast (eq. 3), for samples decoded contrastively.
    pub contrast: Option<ContrastTrace>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContrastTrace {
    pub log_p_tuned: f64,
    pub log_p_base: f64,
    /// log p_tuned − log p_base: what the token was chosen by.
    pub score: f64,
    /// Whether the token passed the plausibility cut (log p_tuned ≥ max log p_tuned + ln α).
    pub plausible: bool,
    pub alpha: f64,
    /// How many tokens passed the cut at this step.
    pub candidates: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DocTrace {
    /// The document's id (`none` for the document-free prompt).
    pub doc: String,
    pub weight: f64,
    /// This document's own probability of the chosen token.
    pub p: f64,
    /// Its most likely tokens and their probabilities.
    pub top: Vec<(u32, f64)>,
    /// Those tokens' text (for the Review tab's view; not in the JSON).
    #[serde(skip)]
    pub top_text: Vec<String>,
}

/// Traces sample `sample_id` of the generation run in `run`, keeping `top` tokens per document.
pub fn trace(run: &Path, sample_id: &str, top: usize) -> anyhow::Result<Trace> {
    let job = crate::runs::read_job::<Job>(run, crate::runs::Kind::Generate)?
        .with_context(|| format!("{} has no config.yaml: not a generation run folder", run.display()))?;
    anyhow::ensure!(
        job.backend.is_none(),
        "{} decoded on a server ({}); a trace runs the model here, and the server's numbers may differ",
        run.display(),
        job.model
    );
    let (store, _) = SampleStore::open(&run.join(pipeline::SAMPLES))?;
    let sample = store.samples().iter().find(|s| s.id == sample_id).with_context(|| {
        format!("{} has no sample {sample_id:?} (samples.jsonl and the Review tab list the ids)", run.display())
    })?;
    let s = &job.settings;
    let mut model = Model::load(&job.model, DTypeChoice::F32, &Device::Cpu)
        .with_context(|| format!("cannot load the run's model {}", job.model))?;
    if s.int8_activations {
        let _ = model.set_int8_activations(true);
    }
    if let Some(dir) = &job.adapter {
        crate::model::adapters::adapter::load(&mut model, dir, pipeline::ADAPTER)
            .with_context(|| format!("cannot load the run's tuned adapter {}", dir.display()))?;
    }
    let seeds = crate::seeds::command::load_usable(&job.seeds, &crate::seeds::Limits::default())?;
    let templates = crate::prompts::Templates::load(job.prompts.as_deref(), &seeds.file.prompts)?;
    let searcher = job.corpus.as_deref().map(crate::corpus::Searcher::open).transpose()?;
    let inputs = Inputs { engine: Engine::Local(&model), seeds: &seeds.file, templates: &templates, searcher: None };
    let query = format!("{}\n{}", sample.instruction, sample.input);
    let docs = match &searcher {
        Some(searcher) => pipeline::retrieve(searcher, job.mode, s, &query)?,
        None => Vec::new(),
    };
    let mut why = Vec::new();
    let recorded: Vec<(&str, f64)> = sample.provenance.documents.iter().map(|d| (d.id.as_str(), d.weight)).collect();
    let now: Vec<(&str, f64)> = docs.iter().map(|(h, w)| (h.id.as_str(), *w)).collect();
    let same_docs =
        recorded.len() == now.len() && recorded.iter().zip(&now).all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() < 1e-9);
    if !same_docs {
        why.push(format!("retrieval now gives {now:?}, the sample recorded {recorded:?}"));
    }
    let prompts = pipeline::response_texts(&inputs, s, &sample.instruction, &sample.input, &docs)?;
    let weights: Vec<f64> = match docs.is_empty() {
        true => vec![1.0],
        false => docs.iter().map(|(_, w)| *w).collect(),
    };
    let sampling = sample
        .provenance
        .response_sampling
        .or_else(|| sample.provenance.sampling.as_ref().map(|p| s.response_sampling(p.seed ^ 0xa5a5_a5a5)))
        .with_context(|| format!("sample {sample_id} recorded no sampling seed; it cannot be decoded again"))?;
    let request = Request {
        weights: if docs.is_empty() { Vec::new() } else { weights.clone() },
        sampling,
        stop_on_loop: true,
        ..Request::new(Vec::new(), s.response_max_new_tokens)
    };
    let request = pipeline::tuned(&job, prompts.len(), request);
    let contrast = request.contrast.as_ref().map(|c| c.alpha);
    // The key/value cache in the type the run kept it in.
    let opts = decode::Options { half_kv: s.half_kv(), ..Default::default() };
    let cancel = AtomicBool::new(false);
    let (done, _) =
        Engine::Local(&model).generate(&[backend::Job::new(prompts.clone(), request)], &opts, &mut |_| {}, &cancel)?;
    let again = done.into_iter().next().context("decoding again gave nothing")?;
    let reproduced_text = again.text.trim() == sample.output;
    if !reproduced_text {
        let text: String = again.text.trim().chars().take(200).collect();
        why.push(format!("decoding again gave {text:?}"));
    }
    let ids = match reproduced_text {
        true => again.ids.clone(),
        false => model.tokenizer.encode_plain(&sample.output)?,
    };
    let names: Vec<String> = match docs.is_empty() {
        true => vec!["none".to_string()],
        false => docs.iter().map(|(h, _)| h.id.clone()).collect(),
    };
    let gate = model.decoder.gate(pipeline::ADAPTER);
    let tokens = match (contrast, &gate) {
        (Some(alpha), Some(gate)) => contrastive(&model, &prompts[0], &names[0], (gate, alpha), &ids, top, &sampling)?,
        _ => teacher_forced(&model, &prompts, &weights, &names, &ids, top, &sampling)?,
    };
    Ok(Trace {
        id: sample.id.clone(),
        mode: job.mode.as_str().to_string(),
        reproduced: why.is_empty(),
        why: (!why.is_empty()).then(|| why.join("; ")),
        tokens,
    })
}

/// The logits that predict each of `ids` after `prompt`, `[n, vocab]` f32 (the prompt's last
/// position for the first token, the response's own positions for the rest: no vocabulary rows
/// are made for the prompt's other positions).
fn forced_logits(model: &Model, prompt: &backend::Prompt, ids: &[u32]) -> anyhow::Result<Tensor> {
    let seq = prompt.encode(&model.tokenizer)?;
    anyhow::ensure!(!seq.is_empty(), "an empty prompt");
    let device = model.decoder.device();
    let mut cache = model.decoder.new_cache(vec![0]);
    let input = Tensor::new(seq.as_slice(), device)?.unsqueeze(0)?;
    let first = model.decoder.forward(&input, &mut cache, Pass::Inference, true)?.squeeze(0)?;
    let rows = match ids.len() {
        0 | 1 => first,
        n => {
            let rest = Tensor::new(&ids[..n - 1], device)?.unsqueeze(0)?;
            let rest = model.decoder.forward(&rest, &mut cache, Pass::Inference, false)?.squeeze(0)?;
            Tensor::cat(&[&first, &rest], 0)?
        }
    };
    Ok(rows.narrow(0, 0, ids.len())?.to_dtype(DType::F32)?)
}

/// The entropy (nats) of a distribution.
fn entropy(p: &[f32]) -> f64 {
    -p.iter().filter(|&&v| v > 0.0).map(|&v| f64::from(v) * f64::from(v).ln()).sum::<f64>()
}

/// One document's entry for a token: its weight, its probability `p[token]` and its top tokens.
fn doc_trace(model: &Model, doc: &str, weight: f64, p: &[f32], token: u32, top: usize) -> anyhow::Result<DocTrace> {
    let top = top_of(p, top);
    let top_text = top.iter().map(|(id, _)| model.tokenizer.decode(&[*id])).collect::<anyhow::Result<_>>()?;
    Ok(DocTrace { doc: doc.to_string(), weight, p: f64::from(p[token as usize]), top, top_text })
}

/// Eq. 3: `ids` after `prompt` with the adapter on (tuned) and off (base); each token's
/// contrast, and its probability under the softmax of the contrast scores over the tokens that
/// pass the cut (what it was drawn from; `p_drawn` after the run's temperature and top-p). Its
/// one document entry (`doc`) carries the tuned model's probability and top tokens.
fn contrastive(
    model: &Model,
    prompt: &backend::Prompt,
    doc: &str,
    (gate, alpha): (&crate::model::network::linear::Gate, f64),
    ids: &[u32],
    top: usize,
    sampling: &SamplingParams,
) -> anyhow::Result<Vec<TokenTrace>> {
    use crate::model::network::linear::GateState;
    let set = |state: GateState| *gate.write().unwrap_or_else(|e| e.into_inner()) = state;
    set(GateState::All);
    let tuned = forced_logits(model, prompt, ids);
    set(GateState::Off);
    let base = forced_logits(model, prompt, ids);
    set(GateState::All);
    let (tuned, base) = (tuned?.to_vec2::<f32>()?, base?.to_vec2::<f32>()?);
    let texts = token_texts(model, ids)?;
    let mut out = Vec::with_capacity(ids.len());
    for (t, (lt, lb)) in tuned.iter().zip(&base).enumerate() {
        let tok = ids[t] as usize;
        let scores = decode::contrast_scores(lt, lb, alpha);
        let candidates = scores.iter().filter(|v| v.is_finite()).count();
        // The cut tokens' −∞ scores become probability 0.
        let probs: Vec<f32> = decode::log_softmax(&scores).iter().map(|v| v.exp()).collect();
        let (log_t, log_b) = (decode::log_softmax(lt), decode::log_softmax(lb));
        let p_tuned: Vec<f32> = log_t.iter().map(|v| v.exp()).collect();
        out.push(TokenTrace {
            id: ids[t],
            text: texts[t].clone(),
            p: f64::from(probs[tok]),
            p_drawn: sampling::probability(&mut scores.clone(), sampling, &[], ids[t]),
            entropy: entropy(&probs),
            driver: 0,
            docs: vec![doc_trace(model, doc, 1.0, &p_tuned, ids[t], top)?],
            contrast: Some(ContrastTrace {
                log_p_tuned: f64::from(log_t[tok]),
                log_p_base: f64::from(log_b[tok]),
                score: f64::from(log_t[tok] - log_b[tok]),
                plausible: scores[tok].is_finite(),
                alpha,
                candidates,
            }),
        });
    }
    Ok(out)
}

/// Each document prompt followed by `ids`, run once: per position, every document's
/// distribution of the next token, mixed with `weights`.
fn teacher_forced(
    model: &Model,
    prompts: &[backend::Prompt],
    weights: &[f64],
    names: &[String],
    ids: &[u32],
    top: usize,
    sampling: &SamplingParams,
) -> anyhow::Result<Vec<TokenTrace>> {
    let n = ids.len();
    let mut per_doc: Vec<Vec<DocTrace>> = vec![Vec::with_capacity(prompts.len()); n];
    // The mixture in f32 (one vocabulary row per token: 0.5 GB for 512 tokens of Gemma 3's
    // 262,144), each document's probabilities made and dropped in turn.
    let mut mixture: Vec<Vec<f32>> = Vec::new();
    for (j, prompt) in prompts.iter().enumerate() {
        let logits = forced_logits(model, prompt, ids).with_context(|| format!("document {}'s prompt", names[j]))?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        if mixture.is_empty() {
            mixture = vec![vec![0.0; probs.first().map_or(0, Vec::len)]; n];
        }
        let w = weights[j] as f32;
        for (t, p) in probs.iter().enumerate() {
            for (m, &v) in mixture[t].iter_mut().zip(p) {
                *m += w * v;
            }
            per_doc[t].push(doc_trace(model, &names[j], weights[j], p, ids[t], top)?);
        }
    }
    let texts = token_texts(model, ids)?;
    let mut out = Vec::with_capacity(n);
    for (t, docs) in per_doc.into_iter().enumerate() {
        let driver = docs
            .iter()
            .enumerate()
            .max_by(|a, b| (a.1.weight * a.1.p).total_cmp(&(b.1.weight * b.1.p)))
            .map_or(0, |(i, _)| i);
        // The draw saw the log of the mixture, as the decoder mixes it.
        let mut scores: Vec<f32> = mixture[t].iter().map(|v| v.ln()).collect();
        out.push(TokenTrace {
            id: ids[t],
            text: texts[t].clone(),
            // The weighted sum in f64 (the f32 row above is for the entropy).
            p: docs.iter().map(|d| d.weight * d.p).sum(),
            p_drawn: sampling::probability(&mut scores, sampling, &[], ids[t]),
            entropy: entropy(&mixture[t]),
            driver,
            docs,
            contrast: None,
        });
    }
    Ok(out)
}

/// Each token's share of the decoded text, as streaming gives it: the text the prefix up to it
/// adds to the prefix before it, a character split across tokens held back until it is whole
/// (so the shares concatenate to the decoded response).
fn token_texts(model: &Model, ids: &[u32]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(ids.len());
    let mut emitted = String::new();
    for t in 0..ids.len() {
        let text = model.tokenizer.decode(&ids[..=t])?;
        if text.ends_with('\u{FFFD}') && t + 1 < ids.len() {
            out.push(String::new());
            continue;
        }
        let common = emitted
            .char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .take_while(|&end| text.get(..end) == emitted.get(..end))
            .last()
            .unwrap_or(0);
        out.push(text[common..].to_string());
        emitted = text;
    }
    Ok(out)
}

/// The `k` most likely tokens of `p`, most likely first.
fn top_of(p: &[f32], k: usize) -> Vec<(u32, f64)> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    let k = k.min(p.len());
    if k == 0 {
        return Vec::new();
    }
    order.select_nth_unstable_by(k - 1, |&a, &b| p[b].total_cmp(&p[a]));
    order.truncate(k);
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order.into_iter().map(|i| (i as u32, f64::from(p[i]))).collect()
}

/// The trace as text: one line per token with its probability, the driving document and the
/// entropy, then each document's probability of it.
pub fn to_text(t: &Trace) -> String {
    let mut out = format!(
        "{} · mode {} · {}\n",
        t.id,
        t.mode,
        match (&t.reproduced, &t.why) {
            (true, _) => "decoded again: the same text".to_string(),
            (false, Some(why)) => format!("NOT reproduced: {why}"),
            (false, None) => "NOT reproduced".to_string(),
        }
    );
    out.push_str("token                 p      H   driver   per document p (weight)\n");
    for tok in &t.tokens {
        let docs: Vec<String> = tok.docs.iter().map(|d| format!("{:.3} ({:.2})", d.p, d.weight)).collect();
        let driver = tok.docs.get(tok.driver).map_or("", |d| d.doc.as_str());
        let drawn = tok.p_drawn.map_or(String::new(), |q| format!("  (drawn at {q:.3} after temperature and top-p)"));
        out.push_str(&format!(
            "{:<20} {:>6.3} {:>5.2}   {:<8} {}{drawn}\n",
            format!("{:?}", tok.text),
            tok.p,
            tok.entropy,
            driver,
            docs.join("  ")
        ));
    }
    out
}
