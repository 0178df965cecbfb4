//! The optimiser's side of training: the adapter's matrices as `Var`s attached to the model's
//! linear layers, AdamW's moments, and one optimiser step over micro-batches ([`Trainer`]).

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::config::{Init, TrainConfig};
use super::plan::Cost;
use crate::model::adapters::adapter::{self, AdapterConfig, Targets};
use crate::model::network::linear::{Dropout, LoraAdapter};
use crate::model::{Model, Pass};

/// One micro-batch: left-padded token rows and their labels (−100: no loss at that position).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub ids: Vec<Vec<u32>>,
    pub labels: Vec<Vec<i64>>,
    pub pad: Vec<usize>,
}

/// Labels of one row that count in the loss (each predicts from the position before it, so the
/// first cannot; −100 is none).
pub fn targets(labels: &[i64]) -> usize {
    labels.iter().skip(1).filter(|&&x| x >= 0).count()
}

impl Batch {
    /// Tokens that count in the loss (each label predicts from the position before it).
    pub fn targets(&self) -> usize {
        self.labels.iter().map(|l| targets(l)).sum()
    }

    pub fn tokens(&self) -> usize {
        self.ids.iter().zip(&self.pad).map(|(r, p)| r.len() - p).sum()
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    pub loss: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    pub tokens: usize,
}

/// A trainable adapter on one projection.
pub struct Param {
    pub linear: String,
    pub a: Var,
    pub b: Var,
}

/// AdamW's state for one tensor.
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
}

pub struct Trainer {
    pub name: String,
    pub params: Vec<Param>,
    pub moments: Vec<(Moments, Moments)>,
    /// Optimiser steps taken.
    pub step: usize,
    pub config: TrainConfig,
    pub adapter: AdapterConfig,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl Trainer {
    /// Attaches a fresh adapter named `name` to `model` with PEFT's initialisation: A
    /// uniform in ±1/√in (kaiming-uniform with a = √5), B zero — from `config.seed` (or, with
    /// `init: random:σ`, A and B both normal with σ).
    pub fn new(model: &mut Model, name: &str, config: TrainConfig, base: &str) -> anyhow::Result<Trainer> {
        config.check().map_err(anyhow::Error::msg)?;
        let device = model.decoder.device().clone();
        let mut rng = crate::rng::Rng::new(config.seed ^ 0x10_4a);
        let modules = adapter::model_targets(&config.target_modules, &model.decoder.spec);
        let targets = Targets::List(modules.clone());
        let mut params = Vec::new();
        let scale = config.lora_alpha / config.r as f64;
        let gate = crate::model::network::linear::new_gate();
        for (linear_name, linear) in model.decoder.linears_mut() {
            if !targets.matches(&linear_name) {
                continue;
            }
            let (inf, outf) = linear.features()?;
            anyhow::ensure!(
                config.r <= inf.min(outf),
                "r: {} is out of range for this model: {linear_name} is {inf}→{outf}, so r takes 1 to {}",
                config.r,
                inf.min(outf)
            );
            let (a, b) = match config.init {
                Init::Random(sigma) => {
                    let mut normal = |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.normal() * sigma) as f32).collect() };
                    (normal(config.r * inf), normal(outf * config.r))
                }
                _ => {
                    let bound = 1.0 / (inf as f64).sqrt();
                    let a = (0..config.r * inf).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
                    (a, vec![0.0; outf * config.r])
                }
            };
            let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, inf), &device)?)?;
            let b = Var::from_tensor(&Tensor::from_vec(b, (outf, config.r), &device)?)?;
            attach(linear, name, &a, &b, scale, &gate);
            params.push(Param { linear: linear_name, a, b });
        }
        anyhow::ensure!(!params.is_empty(), "target_modules matches no projection of this model");
        let adapter = AdapterConfig::new(config.r, config.lora_alpha, config.lora_dropout, modules, base);
        Ok(Trainer::with_params(name, params, config, adapter)?)
    }

    /// A trainer over the adapter `name` already loaded on `model` (a PEFT adapter to go on
    /// training): its tensors become trainable.
    pub fn from_loaded(
        model: &mut Model,
        name: &str,
        config: TrainConfig,
        adapter: AdapterConfig,
    ) -> anyhow::Result<Trainer> {
        let mut params = Vec::new();
        let gate = crate::model::network::linear::new_gate();
        for (linear_name, linear) in model.decoder.linears_mut() {
            let Some(found) = linear.adapters.iter().find(|x| x.name == name) else { continue };
            let a = Var::from_tensor(&found.a.to_dtype(DType::F32)?)?;
            let b = Var::from_tensor(&found.b.to_dtype(DType::F32)?)?;
            let scale = found.scale;
            attach(linear, name, &a, &b, scale, &gate);
            params.push(Param { linear: linear_name, a, b });
        }
        anyhow::ensure!(!params.is_empty(), "no adapter named {name} is loaded");
        Ok(Trainer::with_params(name, params, config, adapter)?)
    }

    fn with_params(
        name: &str,
        params: Vec<Param>,
        config: TrainConfig,
        adapter: AdapterConfig,
    ) -> candle_core::Result<Trainer> {
        let mut t = Trainer { name: name.to_string(), params, moments: Vec::new(), step: 0, config, adapter };
        t.reset_optimizer()?;
        Ok(t)
    }

    /// A fresh AdamW: zero moments, step 0 (the adapter's tensors are kept).
    pub(super) fn reset_optimizer(&mut self) -> candle_core::Result<()> {
        let zeros =
            |t: &Tensor| -> candle_core::Result<Moments> { Ok(Moments { m: t.zeros_like()?, v: t.zeros_like()? }) };
        self.moments = self
            .params
            .iter()
            .map(|p| Ok((zeros(p.a.as_tensor())?, zeros(p.b.as_tensor())?)))
            .collect::<candle_core::Result<_>>()?;
        self.step = 0;
        Ok(())
    }

    fn set_dropout(&self, model: &mut Model, seed: Option<u64>) {
        let p = self.config.lora_dropout;
        for (i, (_, linear)) in model.decoder.linears_mut().into_iter().enumerate() {
            for a in linear.adapters.iter_mut().filter(|a| a.name == self.name) {
                a.dropout = match seed {
                    Some(s) if p > 0.0 => Some(Dropout { p, seed: s ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) }),
                    _ => None,
                };
            }
        }
    }

    /// `batch` as the decoder takes it: the token rows, the positions with labels (indices into
    /// the `rows × width` tokens, each predicting the label after it) and those labels; None
    /// when no position has one.
    fn positions(model: &Model, batch: &Batch) -> candle_core::Result<Option<(Tensor, Tensor, Vec<u32>)>> {
        let device = model.decoder.device();
        let rows = batch.ids.len();
        let width = batch.ids.iter().map(Vec::len).max().unwrap_or(0);
        let flat: Vec<u32> = batch.ids.iter().flat_map(|r| r.iter().copied()).collect();
        let input = Tensor::from_vec(flat, (rows, width), device)?;
        // Position t predicts label t + 1.
        let mut index = Vec::new();
        let mut targets = Vec::new();
        for (r, labels) in batch.labels.iter().enumerate() {
            for t in 0..width.saturating_sub(1) {
                let l = labels[t + 1];
                if l >= 0 {
                    index.push((r * width + t) as u32);
                    targets.push(l as u32);
                }
            }
        }
        if index.is_empty() {
            return Ok(None);
        }
        let n = index.len();
        Ok(Some((input, Tensor::from_vec(index, n, device)?, targets)))
    }

    /// The summed negative log-likelihood of `batch`'s labelled tokens under `model`.
    pub fn nll(model: &Model, batch: &Batch) -> candle_core::Result<Tensor> {
        let Some((input, at, targets)) = Self::positions(model, batch)? else {
            return Tensor::zeros((), DType::F32, model.decoder.device());
        };
        let mut cache = model.decoder.new_cache(batch.pad.clone());
        model.decoder.nll_at(&input, &mut cache, Pass::Training, &at, targets)?.sum_all()
    }

    /// One optimiser step over `micro` (gradient accumulation): the loss is the mean over every
    /// target token of the step. `total_steps` sets the schedule.
    pub fn step(&mut self, model: &mut Model, micro: &[Batch], total_steps: usize) -> anyhow::Result<StepStats> {
        let targets: usize = micro.iter().map(Batch::targets).sum();
        anyhow::ensure!(targets > 0, "a step with no response tokens to learn from");
        let lr = self.config.lr_at(self.step, total_steps);
        let mut grads: Vec<(Option<Tensor>, Option<Tensor>)> = self.params.iter().map(|_| (None, None)).collect();
        let mut loss_sum = 0.0;
        let mut tokens = 0;
        let params = &self.params;
        let mut absorb = |store: &candle_core::backprop::GradStore| -> candle_core::Result<()> {
            for (p, g) in params.iter().zip(grads.iter_mut()) {
                for (var, acc) in [(&p.a, &mut g.0), (&p.b, &mut g.1)] {
                    if let Some(grad) = store.get(var.as_tensor()) {
                        *acc = Some(match acc.take() {
                            Some(sum) => (sum + grad)?,
                            None => grad.clone(),
                        });
                    }
                }
            }
            Ok(())
        };
        for (j, batch) in micro.iter().enumerate() {
            let seed = self.config.seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ ((self.step * 1024 + j) as u64);
            self.set_dropout(model, Some(seed));
            tokens += batch.tokens();
            loss_sum += self.backward(model, batch, targets, &mut absorb)?;
        }
        self.set_dropout(model, None);
        // Missing gradients are zeros (an adapter the loss does not reach).
        let mut all = Vec::with_capacity(grads.len() * 2);
        for (p, (ga, gb)) in self.params.iter().zip(grads) {
            all.push(match ga {
                Some(g) => g,
                None => p.a.as_tensor().zeros_like()?,
            });
            all.push(match gb {
                Some(g) => g,
                None => p.b.as_tensor().zeros_like()?,
            });
        }
        let mut sq = 0.0f64;
        for g in &all {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let grad_norm = sq.sqrt();
        // torch.nn.utils.clip_grad_norm_: scale by max / (norm + 1e-6) when that is below 1.
        let clip = (self.config.max_grad_norm / (grad_norm + 1e-6)).min(1.0);
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        let wd = self.config.weight_decay;
        for (i, p) in self.params.iter().enumerate() {
            for (k, var) in [&p.a, &p.b].into_iter().enumerate() {
                let g = all[2 * i + k].detach();
                let g = if clip < 1.0 && self.config.max_grad_norm > 0.0 { (g * clip)? } else { g };
                let mom = if k == 0 { &mut self.moments[i].0 } else { &mut self.moments[i].1 };
                mom.m = ((&mom.m * BETA1)? + (&g * (1.0 - BETA1))?)?;
                mom.v = ((&mom.v * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                let mut theta = var.as_tensor().clone();
                if wd != 0.0 {
                    theta = (theta * (1.0 - lr * wd))?;
                }
                let denom = ((mom.v.sqrt()? / bc2.sqrt())? + EPS)?;
                let update = ((&mom.m / denom)? * (lr / bc1))?;
                var.set(&(theta - update)?)?;
            }
        }
        Ok(StepStats { loss: loss_sum, grad_norm, lr, tokens })
    }

    /// One micro-batch's forward and backward, its gradients (scaled by 1 / `targets`, the
    /// step's target tokens) handed to `absorb`; returns its share of the step's mean loss.
    fn backward(
        &self,
        model: &Model,
        batch: &Batch,
        targets: usize,
        absorb: &mut dyn FnMut(&candle_core::backprop::GradStore) -> candle_core::Result<()>,
    ) -> anyhow::Result<f64> {
        if self.config.gradient_checkpointing {
            let Some((input, at, labels)) = Self::positions(model, batch)? else { return Ok(0.0) };
            let (pad, scale) = (batch.pad.clone(), 1.0 / targets as f64);
            let sum = model.decoder.nll_checkpointed(&input, pad, &at, labels, scale, absorb)?;
            return Ok(sum as f64 / targets as f64);
        }
        let loss = (Self::nll(model, batch)? / targets as f64)?;
        let value = loss.to_scalar::<f32>()? as f64;
        absorb(&loss.backward()?)?;
        Ok(value)
    }

    /// Seconds per unit of [`Cost::micro`] on this machine: one forward and backward of `ids`
    /// (every token a target, after a short warm-up run) through the step's own path, gradients
    /// dropped and nothing changed. What the plan's time estimate scales.
    pub fn probe(&self, model: &mut Model, ids: &[u32]) -> anyhow::Result<f64> {
        let batch = |n: usize| Batch {
            ids: vec![ids[..n].to_vec()],
            labels: vec![ids[..n].iter().map(|&t| t as i64).collect()],
            pad: vec![0],
        };
        let (warm, probe) = (batch(ids.len().min(16)), batch(ids.len()));
        let timed = |model: &Model, b: &Batch| -> anyhow::Result<f64> {
            let started = std::time::Instant::now();
            self.backward(model, b, b.targets().max(1), &mut |_| Ok(()))?;
            Ok(started.elapsed().as_secs_f64())
        };
        self.set_dropout(model, Some(self.config.seed));
        let secs = timed(model, &warm).and_then(|_| timed(model, &probe));
        self.set_dropout(model, None);
        let cost = Cost::new(model, self.config.gradient_checkpointing);
        Ok(secs? / cost.micro(ids.len(), &[ids.len()], probe.targets()).max(1.0))
    }

    /// The adapter's tensors as PEFT names them, with AdamW's moments (for checkpoints).
    pub fn state(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (p, (ma, mb)) in self.params.iter().zip(&self.moments) {
            let a = adapter::tensor_name(&p.linear, 'A');
            let b = adapter::tensor_name(&p.linear, 'B');
            out.push((format!("{a}.exp_avg"), ma.m.clone()));
            out.push((format!("{a}.exp_avg_sq"), ma.v.clone()));
            out.push((format!("{b}.exp_avg"), mb.m.clone()));
            out.push((format!("{b}.exp_avg_sq"), mb.v.clone()));
        }
        Ok(out)
    }

    /// Puts back AdamW's moments saved by [`Trainer::state`].
    pub fn restore_moments(
        &mut self,
        saved: &std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> anyhow::Result<()> {
        for (p, (ma, mb)) in self.params.iter().zip(self.moments.iter_mut()) {
            for (which, mom) in [('A', ma), ('B', mb)] {
                let base = adapter::tensor_name(&p.linear, which);
                for (suffix, slot) in [("exp_avg", &mut mom.m), ("exp_avg_sq", &mut mom.v)] {
                    let key = format!("{base}.{suffix}");
                    let t = saved.get(&key).ok_or_else(|| anyhow::anyhow!("optimizer.safetensors has no {key}"))?;
                    *slot = t.to_device(device)?;
                }
            }
        }
        Ok(())
    }
}

/// Replaces (or adds) adapter `name` on `linear` with the trainable `a`, `b`.
fn attach(
    linear: &mut crate::model::network::linear::Linear,
    name: &str,
    a: &Var,
    b: &Var,
    scale: f64,
    gate: &crate::model::network::linear::Gate,
) {
    linear.adapters.retain(|x| x.name != name);
    linear.adapters.push(LoraAdapter {
        name: name.to_string(),
        a: a.as_tensor().clone(),
        b: b.as_tensor().clone(),
        scale,
        enabled: true,
        dropout: None,
        gate: gate.clone(),
    });
}
