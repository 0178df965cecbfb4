//! The body of `selfspec train`: the settings read and checked, the run folder locked, the model
//! loaded (quantized for QLoRA), and the run's progress printed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;

use super::config::TrainConfig;
use super::follow::Training;
use super::run::{self, TrainEvent};
use crate::model::gguf::QuantType;
use crate::model::Choice;

/// What `selfspec train` was asked.
pub struct Options {
    pub model: Choice,
    pub data: PathBuf,
    /// The run folder; None with `plan_only`.
    pub run: Option<PathBuf>,
    /// A file of training settings; None: the configuration's `train:` section.
    pub settings_file: Option<PathBuf>,
    pub resume: bool,
    pub qlora: Option<QuantType>,
    /// Train over f32 copies of a quantized file's projections instead of its blocks.
    pub dequantize: bool,
    /// Print the plan (`--plan`: the schedule, memory and time estimates, JSON on stdout) and
    /// write nothing.
    pub plan_only: bool,
    /// How examples are written: the Alpaca template, the model's chat template, or `auto`
    /// (chat when the model has one; a continued run keeps what it used).
    pub prompt_format: crate::prompts::PromptFormat,
    /// How the adapter starts, over the settings' `init:` (`--init`, `--init-from DIR`).
    pub init: Option<super::config::Init>,
    pub detached: bool,
}

/// Runs `selfspec train`; the exit code (0 finished, 130 stopped).
pub fn train(opts: Options, configured: &TrainConfig) -> anyhow::Result<u8> {
    let config: TrainConfig = match &opts.settings_file {
        Some(path) => {
            let text = crate::lines::read_text(path)?;
            crate::yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}:{}: {}", path.display(), e.pos, e.message))?
        }
        None => configured.clone(),
    };
    let mut config = config;
    if let Some(init) = &opts.init {
        config.init = init.clone();
    }
    if let super::config::Init::From(dir) = &config.init {
        // The starting adapter decides the shape: its r, lora_alpha and targets are the run's.
        let cfg = crate::model::adapters::adapter::AdapterConfig::read(dir)?;
        let path = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .with_context(|| format!("cannot read {} (the adapter to start from)", path.display()))?;
        let mut targets: Vec<String> = tensors
            .keys()
            .filter_map(|k| k.strip_suffix(".lora_A.weight").and_then(|l| l.rsplit('.').next()).map(String::from))
            .collect();
        targets.sort_by_key(|t| crate::model::adapters::adapter::ALL_TARGETS.iter().position(|x| x == t));
        targets.dedup();
        if (config.r, config.lora_alpha, &config.target_modules) != (cfg.r, cfg.lora_alpha, &targets) {
            eprintln!(
                "starting from {}: r {}, lora_alpha {}, targets {} (the adapter's)",
                dir.display(),
                cfg.r,
                cfg.lora_alpha,
                targets.join(",")
            );
        }
        anyhow::ensure!(
            !cfg.use_rslora,
            "{}: an rsLoRA adapter cannot be a starting point yet (its scaling differs)",
            dir.display()
        );
        config.r = cfg.r;
        config.lora_alpha = cfg.lora_alpha;
        config.target_modules = targets;
        config.init = super::config::Init::From(std::path::absolute(dir).unwrap_or_else(|_| dir.clone()));
    }
    config.check().map_err(|e| match &opts.settings_file {
        Some(path) => anyhow::anyhow!("{}: {e}", path.display()),
        None => anyhow::anyhow!("training settings (`train:` in the configuration): {e}"),
    })?;
    let examples = super::data::load(&opts.data)?;
    let run = match (&opts.run, opts.plan_only) {
        (_, true) => return plan_only(&opts, config, &examples),
        (Some(run), false) => run,
        (None, false) => anyhow::bail!("train: name the run folder with --run (or ask for --plan alone)"),
    };
    let lock = crate::runs::Lock::acquire(run)?;
    crate::parallel::keep_freed_memory();
    let result = train_locked(&lock, &opts, run, config, &examples);
    if let Err(e) = &result {
        crate::runs::record_failure(run, &format!("{e:#}"));
    }
    result
}

/// `selfspec train --plan`: the plan as one JSON object on stdout (and as lines on stderr).
fn plan_only(opts: &Options, config: TrainConfig, examples: &[super::data::Example]) -> anyhow::Result<u8> {
    let (mut model, job) = load(opts, config, None)?;
    let plan = run::plan(&mut model, &job, examples)?;
    eprintln!("{}", plan.line());
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", serde_json::to_string(&plan)?);
    Ok(0)
}

/// The model with its frozen base stored as asked ([`set_base`]) and the run's job: the
/// examples' template (a resumed run keeps `recorded`'s) and the base as loaded. Says both on
/// stderr.
fn load(
    opts: &Options,
    config: TrainConfig,
    recorded: Option<run::TrainJob>,
) -> anyhow::Result<(crate::model::Model, run::TrainJob)> {
    let prompt_format = match opts.prompt_format {
        crate::prompts::PromptFormat::Auto => match &recorded {
            Some(old) if opts.resume => old.prompt_format,
            _ => {
                let template = crate::model::load_tokenizer(&opts.model.name)?.has_chat_template();
                crate::prompts::PromptFormat::Auto.resolve(template)
            }
        },
        f => f,
    };
    eprintln!(
        "examples written in the {} template",
        if prompt_format == crate::prompts::PromptFormat::Chat { "model's chat" } else { "Alpaca" }
    );
    let mut model = opts.model.load()?;
    if let Some(note) = set_base(&mut model, opts.qlora, opts.dequantize)? {
        eprintln!("{note}");
    }
    let mut qlora = super::plan::base_record(&model);
    // Runs made before the file's own blocks were recorded say null for them; resuming one
    // without --qlora or --dequantize trains over the same blocks.
    if let Some(old) = recorded.filter(|_| opts.resume && opts.qlora.is_none() && !opts.dequantize) {
        if old.qlora.is_none() && old.model == opts.model.name {
            qlora = None;
        }
    }
    let data = std::path::absolute(&opts.data).unwrap_or_else(|_| opts.data.clone());
    let job = run::TrainJob { model: opts.model.name.clone(), data, config, qlora, prompt_format };
    Ok((model, job))
}

/// Stores the frozen base's projections the way the run asked: as the file has them (a GGUF
/// file's blocks: QLoRA over them), dequantized (`--dequantize`), or in `--qlora`'s block type
/// (a quantized file's blocks dequantized first). Returns what it did, for stderr.
fn set_base(
    model: &mut crate::model::Model,
    qlora: Option<QuantType>,
    dequantize: bool,
) -> anyhow::Result<Option<String>> {
    let types = model.decoder.projection_block_types();
    let file = super::plan::base_record(model).unwrap_or_default();
    let mb = |b: usize| b as f64 / 1e6;
    if let Some(q) = qlora {
        anyhow::ensure!(
            model.decoder.device().is_cpu(),
            "--qlora runs on the CPU for now (its gradient op has no CUDA kernel yet); pass --device cpu, or train without --qlora"
        );
        if types == [q.ggml()] {
            return Ok(Some(format!("QLoRA over the file's own {file} blocks (what --qlora asks for)")));
        }
    }
    let mut said = Vec::new();
    if !types.is_empty() && (dequantize || qlora.is_some()) {
        let dtype = model.decoder.dtype();
        let (before, after) = crate::model::network::linear::dequantize_projections(model.decoder.linears_mut(), dtype)
            .context("cannot dequantize the projections")?;
        said.push(match qlora {
            None => format!(
                "LoRA over {dtype:?} copies of the file's {file} blocks: the projections take {:.1} MB instead of {:.1} MB",
                mb(after),
                mb(before)
            ),
            Some(_) => format!("the file's {file} blocks are dequantized to be stored again: rounding on top of the file's"),
        });
    } else if dequantize {
        said.push("--dequantize: the model's projections are not quantized; nothing to do".into());
    }
    if let Some(q) = qlora {
        let (before, after) =
            crate::model::network::linear::quantize_projections(model.decoder.linears_mut(), q.ggml())
                .context("cannot quantize the projections for --qlora")?;
        said.push(format!("QLoRA: projections stored as {q:?}: {:.1} MB instead of {:.1} MB", mb(after), mb(before)));
    } else if !types.is_empty() && !dequantize {
        let bytes: usize = model.decoder.linears_mut().iter().map(|(_, l)| l.weight_bytes()).sum();
        said.push(format!(
            "QLoRA over the file's own {file} blocks ({:.1} MB), dequantized for each use; --dequantize trains over \
             f32 copies instead",
            mb(bytes)
        ));
    }
    Ok((!said.is_empty()).then(|| said.join("; ")))
}

fn train_locked(
    lock: &crate::runs::Lock,
    opts: &Options,
    dir: &Path,
    config: TrainConfig,
    examples: &[super::data::Example],
) -> anyhow::Result<u8> {
    let recorded = crate::runs::read_job::<run::TrainJob>(dir, crate::runs::Kind::Train).ok().flatten();
    let (mut model, job) = load(opts, config, recorded)?;
    let cancel = Arc::new(AtomicBool::new(false));
    crate::signals::watch(cancel.clone(), opts.detached);
    let end = run::train(lock, &mut model, &job, examples, dir, opts.resume, &cancel, &mut |e| {
        if !matches!(e, TrainEvent::Finished { .. } | TrainEvent::Stopped { .. }) {
            if let Some(line) = Training::line(e) {
                eprintln!("{line}");
            }
        }
    })?;
    if let Some(line) = Training::line(&end) {
        eprintln!("{line}");
    }
    Ok(if matches!(end, TrainEvent::Stopped { .. }) { 130 } else { 0 })
}

/// `lmc --eval`: scores every point's adapter on the datasets (an evaluation run in `dir`) and
/// prints F1 and ROUGE-L along both lines.
fn lmc_eval(model: &Choice, e: &LmcEval, dir: &Path, result: &mut super::lmc::Lmc) -> anyhow::Result<()> {
    let adapters = super::lmc::point_adapters(result, dir)
        .into_iter()
        .map(|(_, _, name, dir)| crate::model::adapters::adapter::Spec { name, dir })
        .collect();
    let (data, datasets, shots) = (e.data.clone(), e.datasets.clone(), e.shots.clone());
    let opts =
        crate::eval::command::Options::new(model.clone(), adapters, data, datasets, shots, dir.join("eval"), false);
    let code = crate::eval::command::eval(opts)?;
    anyhow::ensure!(code == 0, "the evaluation stopped; run the same command to continue it");
    let report = crate::eval::run::Report::read(&dir.join("eval"))?;
    result.scores = super::lmc::scores(result, dir, &report);
    println!(
        "\n{:>5}  {:>3}  {:>10}  {:>10}  {:>13}  {:>13}",
        "α", "k", "F1 ΔW", "F1 (A, B)", "ROUGE-L ΔW", "ROUGE-L (A, B)"
    );
    for p in &result.points {
        for &k in &e.shots {
            let at = |line: &str| result.scores.iter().find(|s| s.line == line && s.k == k && s.alpha == p.alpha);
            let show = |s: Option<&super::lmc::Score>, f: fn(&super::lmc::Score) -> f64| {
                s.map_or("–".to_string(), |s| format!("{:.1}", f(s)))
            };
            let (m, fa) = (at("merged"), at("factors"));
            println!(
                "{:>5.2}  {k:>3}  {:>10}  {:>10}  {:>13}  {:>13}",
                p.alpha,
                show(m, |s| s.f1),
                show(fa, |s| s.f1),
                show(m, |s| s.rouge_l),
                show(fa, |s| s.rouge_l)
            );
        }
    }
    Ok(())
}

/// The loss along both lines, and F1 where the points were scored, as plots in `dir` (a plot
/// that cannot be drawn is a warning).
fn lmc_plots(dir: &Path, result: &super::lmc::Lmc, eval: Option<&LmcEval>) {
    let mut lines =
        vec![("ΔW line".to_string(), result.points.iter().map(|p| (p.alpha, p.merged)).collect::<Vec<_>>())];
    if result.barrier_factors.is_some() {
        lines.push(("(A, B) line".into(), result.points.iter().filter_map(|p| Some((p.alpha, p.factors?))).collect()));
    }
    let title = "loss between the two adapters";
    match crate::plot::chart(dir, "lmc-loss", title, "α", "loss per token", &lines) {
        Ok(files) => println!("plot: {}", files[0].display()),
        Err(e) => eprintln!("warning: no plot: {e:#}"),
    }
    if result.scores.is_empty() {
        return;
    }
    let mut lines = Vec::new();
    for &k in eval.map(|e| e.shots.as_slice()).unwrap_or_default() {
        for (line, label) in [("merged", "ΔW"), ("factors", "(A, B)")] {
            let pts: Vec<(f64, f64)> =
                result.scores.iter().filter(|s| s.line == line && s.k == k).map(|s| (s.alpha, s.f1)).collect();
            if !pts.is_empty() {
                lines.push((format!("{label} {k}-shot"), pts));
            }
        }
    }
    if let Err(e) = crate::plot::chart(dir, "lmc-f1", "F1 between the two adapters", "α", "F1 (0-100)", &lines) {
        eprintln!("warning: no plot: {e:#}");
    }
}

/// `lmc --eval`: the evaluation datasets scored at every point of both lines.
pub struct LmcEval {
    pub data: PathBuf,
    pub datasets: Vec<String>,
    pub shots: Vec<usize>,
}

/// `selfspec lmc`: the loss along the line between two adapters, printed as a table with the
/// barriers; with `out`, lmc.json and each point's adapter are kept there.
// One argument per flag of `selfspec lmc`, as src/cli/ parses them (its only caller).
#[allow(clippy::too_many_arguments)]
pub fn lmc(
    model: &Choice,
    a: &Path,
    b: &Path,
    data: &Path,
    points: usize,
    max_seq_length: usize,
    format: crate::prompts::PromptFormat,
    out: Option<&Path>,
    eval: Option<&LmcEval>,
) -> anyhow::Result<()> {
    anyhow::ensure!(max_seq_length > 0, "--max-seq-length must be at least 1");
    anyhow::ensure!(
        eval.is_none() || out.is_some(),
        "--eval keeps its evaluation run and the points' adapters: name a folder with --out"
    );
    let examples = super::data::load(data)?;
    let format = match format {
        crate::prompts::PromptFormat::Auto => {
            let template = crate::model::load_tokenizer(&model.name)?.has_chat_template();
            crate::prompts::PromptFormat::Auto.resolve(template)
        }
        f => f,
    };
    let mut loaded = model.load()?;
    let max_seq_length = super::config::row_length(&loaded, max_seq_length);
    let temp = std::env::temp_dir().join(format!("selfspec-lmc-{}", std::process::id()));
    let scratch = out.unwrap_or(&temp);
    println!("{:>5}  {:>12}  {:>12}", "α", "ΔW line", "(A, B) line");
    let mut show = |p: &super::lmc::Point| {
        let factors = p.factors.map_or("–".to_string(), |f| format!("{f:.4}"));
        println!("{:>5.2}  {:>12.4}  {:>12}", p.alpha, p.merged, factors);
    };
    let result = super::lmc::measure(&mut loaded, a, b, &examples, points, max_seq_length, format, scratch, &mut show);
    let _ = std::fs::remove_dir_all(&temp);
    let mut result = result?;
    println!("barrier (ΔW line): {:.4}", result.barrier_merged);
    match result.barrier_factors {
        Some(x) => println!("barrier ((A, B) line): {x:.4}"),
        None => println!("(A, B) line: not measured (the adapters' ranks or projections differ)"),
    }
    println!("loss: mean over {} response tokens of {} examples", result.tokens, examples.len());
    if let (Some(e), Some(dir)) = (eval, out) {
        drop(loaded);
        lmc_eval(model, e, dir, &mut result)?;
    }
    if let Some(dir) = out {
        lmc_plots(dir, &result, eval);
        let path = dir.join("lmc.json");
        crate::fsutil::atomic_write(&path, serde_json::to_string_pretty(&result)?.as_bytes())?;
        println!("written: {}", path.display());
    }
    Ok(())
}
