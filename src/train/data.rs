//! Training data: Alpaca JSONL or a generation run's accepted samples, formatted with the Alpaca
//! template, tokenized with the loss on response tokens only, cut to a maximum length, and
//! batched by length after a seeded shuffle.

use std::path::Path;

use serde::Deserialize;

use super::config::TrainConfig;
use super::trainer::Batch;
use crate::model::Tokenizer;
use crate::prompts;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Example {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub output: String,
    /// The task the example belongs to (needed by the `task:` and `reptile` starts only).
    #[serde(default)]
    pub task: Option<String>,
}

/// The examples in `path`: an Alpaca JSONL file ({instruction, input?, output, task?} a line), or a
/// generation run folder (its accepted and edited samples).
pub fn load(path: &Path) -> anyhow::Result<Vec<Example>> {
    if path.is_dir() {
        anyhow::ensure!(
            path.join(crate::generate::pipeline::SAMPLES).exists(),
            "{} is a folder without samples.jsonl: pass an Alpaca JSONL file or a generation run folder",
            path.display()
        );
        let out: Vec<Example> = crate::generate::review::accepted(path)?
            .into_iter()
            .map(|s| Example { instruction: s.instruction, input: s.input, output: s.output, task: None })
            .collect();
        anyhow::ensure!(!out.is_empty(), "{}: no accepted samples yet; accept some on the Review tab", path.display());
        return Ok(out);
    }
    let text = crate::lines::read_text(path)?;
    let mut out = Vec::new();
    let shape = r#"each line must be {"instruction": …, "input": … (optional), "output": …}"#;
    for record in crate::lines::jsonl_records::<Example>(path, &text, shape) {
        let (line, e) = record?;
        anyhow::ensure!(
            !e.instruction.trim().is_empty() && !e.output.trim().is_empty(),
            "{}:{line}: empty instruction or output",
            path.display(),
        );
        out.push(e);
    }
    anyhow::ensure!(!out.is_empty(), "{}: no examples", path.display());
    Ok(out)
}

/// An example as token ids with labels (−100 on the prompt).
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub truncated: bool,
}

/// The Alpaca prompt of `e` (the template with or without input).
pub fn alpaca_prompt(e: &Example) -> String {
    prompts::alpaca(&e.instruction, &e.input)
}

/// `e` as token ids with labels, in `format`: the Alpaca template (plain) with end-of-sequence
/// appended, or the chat template (the user's message, then the assistant's response and the
/// template's own end of turn). The loss is on the response tokens only.
pub fn encode(
    tokenizer: &Tokenizer,
    eos: Option<u32>,
    e: &Example,
    max_len: usize,
    format: prompts::PromptFormat,
) -> anyhow::Result<Encoded> {
    if format == prompts::PromptFormat::Chat {
        return encode_chat(tokenizer, e, max_len);
    }
    let prompt = alpaca_prompt(e);
    let prompt_ids = tokenizer.encode(&prompt)?;
    let mut ids = tokenizer.encode(&format!("{prompt}{}", e.output.trim()))?;
    // Tokens shared with the prompt's own tokenization carry no loss.
    let masked = prompt_ids.iter().zip(&ids).take_while(|(a, b)| a == b).count();
    if let Some(eos) = eos {
        ids.push(eos);
    }
    let mut labels: Vec<i64> = ids.iter().enumerate().map(|(i, &t)| if i < masked { -100 } else { t as i64 }).collect();
    let truncated = ids.len() > max_len;
    ids.truncate(max_len);
    labels.truncate(max_len);
    Ok(Encoded { ids, labels, truncated })
}

fn encode_chat(tokenizer: &Tokenizer, e: &Example, max_len: usize) -> anyhow::Result<Encoded> {
    use crate::model::text::chat::Message;
    let user = [Message::new("user", &prompts::chat_user(&e.instruction, &e.input))];
    let prompt = tokenizer.apply_chat_template(&user, true)?;
    let whole = [user[0].clone(), Message::new("assistant", e.output.trim())];
    let text = tokenizer.apply_chat_template(&whole, false)?;
    anyhow::ensure!(
        text.starts_with(&prompt),
        "the model's chat template renders a conversation that does not begin with its own prompt; \
         train with --prompt-format plain"
    );
    let prompt_ids = tokenizer.encode_plain(&prompt)?;
    let mut ids = tokenizer.encode_plain(&text)?;
    if !ids.starts_with(&prompt_ids) {
        // The boundary tokenized differently: keep the prompt's own tokens, then the rest.
        let rest = tokenizer.encode_plain(&text[prompt.len()..])?;
        ids = prompt_ids.iter().copied().chain(rest).collect();
    }
    let mut labels: Vec<i64> =
        ids.iter().enumerate().map(|(i, &t)| if i < prompt_ids.len() { -100 } else { t as i64 }).collect();
    let truncated = ids.len() > max_len;
    ids.truncate(max_len);
    labels.truncate(max_len);
    Ok(Encoded { ids, labels, truncated })
}

/// The micro-batches of one epoch: a shuffle seeded by (seed, epoch), then megabatches of 50
/// micro-batches each sorted by length, longest first (transformers' `group_by_length`), so
/// rows of a batch have similar lengths and little padding.
pub fn plan(lengths: &[usize], micro: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0xa076_1d64_78bd_642f)).shuffle(&mut order);
    let mut out = Vec::new();
    for mega in order.chunks(50 * micro.max(1)) {
        let mut mega = mega.to_vec();
        mega.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
        out.extend(mega.chunks(micro.max(1)).map(<[usize]>::to_vec));
    }
    out
}

/// The optimiser steps of the whole run: each a list of micro-batches (indices of examples).
/// Refused, before anything is planned, past [`super::config::MAX_STEPS`] steps.
pub fn schedule(lengths: &[usize], c: &TrainConfig) -> anyhow::Result<(Vec<Vec<Vec<usize>>>, usize)> {
    let (total, per_epoch) = super::plan::Plan::steps(c, lengths.len());
    anyhow::ensure!(
        total <= super::config::MAX_STEPS,
        "{} epochs of {per_epoch} steps ({} examples) are {total} optimiser steps, over the {} a run may plan: \
         lower num_train_epochs or set max_steps",
        c.num_train_epochs,
        lengths.len(),
        super::config::MAX_STEPS
    );
    let mut steps = Vec::new();
    let mut per_epoch = 0;
    for epoch in 0..c.num_train_epochs {
        let micro = plan(lengths, c.per_device_train_batch_size, c.seed, epoch);
        let epoch_steps: Vec<Vec<Vec<usize>>> =
            micro.chunks(c.gradient_accumulation_steps).map(<[Vec<usize>]>::to_vec).collect();
        per_epoch = epoch_steps.len();
        steps.extend(epoch_steps);
        if c.max_steps.is_some_and(|m| steps.len() >= m) {
            break;
        }
    }
    if let Some(m) = c.max_steps {
        // max_steps may run past the epochs: go round again.
        let mut epoch = c.num_train_epochs;
        while steps.len() < m && per_epoch > 0 {
            let micro = plan(lengths, c.per_device_train_batch_size, c.seed, epoch);
            steps.extend(micro.chunks(c.gradient_accumulation_steps).map(<[Vec<usize>]>::to_vec));
            epoch += 1;
        }
        steps.truncate(m);
    }
    Ok((steps, per_epoch))
}

/// Left-pads the chosen examples into one micro-batch.
pub fn batch(examples: &[Encoded], rows: &[usize]) -> Batch {
    let width = rows.iter().map(|&i| examples[i].ids.len()).max().unwrap_or(0);
    let mut b = Batch { ids: Vec::new(), labels: Vec::new(), pad: Vec::new() };
    for &i in rows {
        let e = &examples[i];
        let pad = width - e.ids.len();
        b.ids.push(std::iter::repeat_n(0, pad).chain(e.ids.iter().copied()).collect());
        b.labels.push(std::iter::repeat_n(-100, pad).chain(e.labels.iter().copied()).collect());
        b.pad.push(pad);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_example_once_and_repeat() {
        let lengths: Vec<usize> = (0..230).map(|i| (i * 37) % 101).collect();
        let p = plan(&lengths, 4, 9, 0);
        let mut seen: Vec<usize> = p.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..230).collect::<Vec<_>>());
        assert_eq!(p, plan(&lengths, 4, 9, 0));
        assert_ne!(p, plan(&lengths, 4, 9, 1));
        // Within a batch, longest first.
        assert!(p.iter().all(|b| b.windows(2).all(|w| lengths[w[0]] >= lengths[w[1]])));
    }

    #[test]
    fn a_schedule_past_the_step_limit_is_refused_before_it_is_planned() {
        let lengths = vec![8; 10_000];
        let c = TrainConfig {
            num_train_epochs: 11,
            per_device_train_batch_size: 1,
            gradient_accumulation_steps: 1,
            ..Default::default()
        };
        let e = schedule(&lengths, &c).unwrap_err().to_string();
        assert!(e.contains("110000 optimiser steps"), "{e}");
        let c = TrainConfig { max_steps: Some(5), ..c };
        assert_eq!(schedule(&lengths, &c).unwrap().0.len(), 5);
    }
}
