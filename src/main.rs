//! The `selfspec` command: parse (src/cli/), tune the process, dispatch to the engine's command
//! bodies. Nothing else lives here.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use cli::{AdaptersCommand, Cli, Command, Defaults, ModelCommand, TuiArgs};
use selfspec::config::Config;
use selfspec::workspace::Dirs;
use selfspec::{eval, generate, model, runs, train};

fn main() -> ExitCode {
    tune_process();
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Process-wide settings that make CPU inference fast; runs first, before any thread exists.
fn tune_process() {
    // candle asks the OS for the core count (reading cgroup files) on every matmul unless
    // RAYON_NUM_THREADS is set: set it once.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY (of set_var): no other thread exists yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // A closed pipe (`selfspec runs | head`) ends the process quietly, as for any Unix tool,
    // instead of a panic in println!.
    // SAFETY: restoring a signal's default disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // glibc serves allocations over 128 KiB with fresh mmaps and unmaps them on free, so every
    // activation tensor costs page faults. Keep such blocks in the heap for reuse instead.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning; the values are within its documented range.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 512 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

fn ok(result: anyhow::Result<()>) -> anyhow::Result<u8> {
    result.map(|()| 0)
}

fn run() -> anyhow::Result<u8> {
    let mut cli = Cli::parse();
    let dirs = Dirs::new()?;
    train_settings_as_config(&mut cli);
    let config_path = cli.config.clone().unwrap_or_else(|| dirs.config_file());
    let config = Config::load(&config_path)?;
    let defaults = Defaults { configured: config.model.clone(), cache: dirs.cache.clone() };
    let workspace = || dirs.workspace(cli.workspace.as_deref(), &config);
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let limits = &config.seeds.limits;
    match cli.command {
        None => open_tui(&workspace(), &dirs, &config_path, &defaults, config.clone(), TuiArgs::default(), None),
        Some(Command::Tui(args)) => open_tui(&workspace(), &dirs, &config_path, &defaults, config.clone(), args, None),
        Some(Command::Attach { run }) => {
            let run = Some(absolute(run));
            open_tui(&workspace(), &dirs, &config_path, &defaults, config.clone(), TuiArgs::default(), run)
        }
        Some(Command::Runs { json }) => {
            runs::print_list(&workspace().join("runs"), json);
            Ok(0)
        }
        Some(Command::Stop { run }) => ok(runs::stop_command(&run)),
        Some(Command::Seeds(cmd)) => cmd.run(limits),
        Some(Command::Index(cmd)) => ok(cmd.run()),
        Some(Command::Model(ModelCommand::Fetch { name, force })) => {
            ok(model::command::fetch(&name, &dirs.cache, force, config.model.as_deref()))
        }
        Some(Command::Model(ModelCommand::Show)) => {
            model::command::show(&dirs.cache, config.model.as_deref());
            Ok(0)
        }
        Some(Command::Complete(a)) => ok(generate::command::complete(a.options(&defaults)?)),
        Some(Command::Tokenize { model, text, jsonl, chat, verbose }) => {
            let name = defaults.model(model.as_deref())?;
            ok(model::command::tokenize(&name, text.as_deref(), jsonl.as_deref(), chat, verbose))
        }
        Some(Command::Score { files, paired, rows, split_references, json, resamples, seed }) => {
            let stats = eval::stats::Settings { resamples, trials: resamples, seed };
            ok(eval::command::score(&files, paired, rows, split_references, json, &stats))
        }
        Some(Command::Samples(cmd)) => ok(cmd.run(limits)),
        Some(Command::Merge { model, adapter, out }) => ok(model::command::merge(&model, &adapter, &out)),
        Some(Command::Lmc { a, b, model, data, points, max_seq_length, prompt_format, out, eval, datasets, shots }) => {
            let choice = model.exact_choice(&defaults, "lmc")?;
            let eval = eval.map(|data| train::command::LmcEval { data, datasets, shots });
            ok(train::command::lmc(
                &choice,
                &a,
                &b,
                &data,
                points,
                max_seq_length,
                prompt_format.into(),
                out.as_deref(),
                eval.as_ref(),
            ))
        }
        Some(Command::Adapters(AdaptersCommand::Merge { adapters, weights, method, rank, out })) => {
            ok(model::command::combine(&adapters, &weights, method.into(), rank, &out))
        }
        Some(Command::Serve(args)) => ok(selfspec::serve::serve(args.options(&defaults)?)),
        Some(Command::Quantize { model, qtype, out, force }) => {
            ok(model::command::quantize(&model, &out, qtype.into(), force))
        }
        Some(Command::Train(a)) => train::command::train(a.options(&defaults)?, &config.train),
        Some(Command::Eval(mut a)) => match a.import.take() {
            Some(cli::EvalCommand::Import { list: true, .. }) => ok(eval::import::list()),
            Some(cli::EvalCommand::Report { run, resamples, stats_seed }) => {
                ok(eval::command::rereport(&run, resamples, stats_seed))
            }
            Some(i) => ok(eval::import::run(&i.options()?)),
            None => eval::command::eval(a.options(&defaults)?),
        },
        Some(Command::Generate(a)) => {
            generate::command::generate(a.options(&defaults)?, &config.generation, limits, &workspace())
        }
        Some(Command::Sweep { spec, run, plan, max_hours, detached, stage }) => {
            sweep(spec.as_deref(), &run, plan, max_hours, detached, stage.as_deref(), limits)
        }
        Some(Command::Bench(b)) => ok(b.run(&defaults)),
        Some(Command::Workspace) => ok(selfspec::workspace::describe(&workspace(), &config, &config_path, &dirs.cache)),
        Some(Command::Config) => {
            print_config(&config_path, &config)?;
            Ok(0)
        }
    }
}

/// `selfspec train --config FILE` names the training settings (Hugging Face/PEFT keys), as
/// --train-config does; a whole selfspec config.yaml is read for its `train:` section.
fn train_settings_as_config(cli: &mut Cli) {
    if let (Some(Command::Train(args)), Some(path)) = (&mut cli.command, &cli.config) {
        if args.train_config.is_none() && selfspec::config::is_settings_file(path) {
            args.train_config = Some(path.clone());
            cli.config = None;
        }
    }
}

/// `selfspec sweep`: one stage of a sweep (`--stage`), its plan, or the whole sweep.
fn sweep(
    spec: Option<&Path>,
    run: &Path,
    plan: bool,
    max_hours: Option<f64>,
    detached: bool,
    stage: Option<&str>,
    limits: &selfspec::seeds::Limits,
) -> anyhow::Result<u8> {
    if let Some(stage) = stage {
        return selfspec::sweep::stage(run, stage, limits, detached);
    }
    let spec = match spec {
        Some(file) => selfspec::sweep::Spec::load(file)?,
        None => selfspec::sweep::recorded(run)?,
    };
    if plan {
        print!("{}", selfspec::sweep::plan(&spec, run, limits)?);
        return Ok(0);
    }
    selfspec::sweep::run(&spec, run, limits, detached, max_hours)
}

/// `selfspec config`: the settings in force, and where they come from.
fn print_config(config_path: &Path, config: &Config) -> anyhow::Result<()> {
    let source = if config_path.exists() { config_path.display().to_string() } else { "defaults (no file)".into() };
    println!("# from {source}");
    print!("{}", selfspec::yaml::to_string(config)?);
    Ok(())
}

fn open_tui(
    root: &Path,
    dirs: &Dirs,
    config_path: &Path,
    defaults: &Defaults,
    mut config: Config,
    args: TuiArgs,
    attach: Option<PathBuf>,
) -> anyhow::Result<u8> {
    // The first start writes the documented configuration; a failure to do so is not fatal.
    if let Err(e) = Config::write_default(config_path) {
        eprintln!("warning: {e:#}");
    }
    let (workspace, _) = selfspec::workspace::Workspace::open(root)?;
    if let Some(theme) = args.theme {
        config.theme = theme;
    }
    let file = match args.file {
        Some(f) => Some(std::path::absolute(&f).with_context(|| format!("bad path {}", f.display()))?),
        None => None,
    };
    selfspec::tui::run(selfspec::tui::Options {
        workspace,
        config,
        config_dir: dirs.config.clone(),
        file,
        config_file: config_path.to_path_buf(),
        // The Generate tab starts with --model, else the configured or fetched default (none yet:
        // the tab offers the fetch).
        model: args.model.or_else(|| defaults.model(None).ok()),
        cache_dir: dirs.cache.clone(),
        attach,
    })?;
    Ok(0)
}
