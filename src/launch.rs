//! The runs the workbench starts, typed. Each variant holds what one `selfspec` subcommand takes
//! from the workbench; [`Launch::argv`] is the one place outside the command line's definition
//! (src/cli/) where those flags are spelled, and src/cli/mod.rs's tests parse every variant's argv
//! back and compare it field by field, so a renamed flag fails a test instead of a user's run.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::generate::pipeline::Mode;
use crate::model::gguf::QuantType;

/// One run to start, detached ([`start`]) or, for a training plan, in the foreground.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    Generate(Generate),
    Eval(Eval),
    Train(Train),
    /// A sweep: from its spec file into `run`, or (no spec) continuing the sweep in `run`.
    Sweep {
        spec: Option<PathBuf>,
        run: PathBuf,
    },
}

/// `selfspec generate`, as the Generate tab starts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generate {
    pub seeds: PathBuf,
    pub model: String,
    pub n: usize,
    pub seed: u64,
    pub mode: Mode,
    pub run: PathBuf,
    /// A JSONL corpus or a folder of texts (the run indexes it) or an index folder.
    pub corpus: Option<PathBuf>,
    /// The tuned model's adapter (the second round), and whether to decode contrastively.
    pub adapter: Option<PathBuf>,
    pub contrastive: bool,
}

/// `selfspec eval`, as the Eval tab starts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    pub model: String,
    pub data: PathBuf,
    pub run: PathBuf,
    pub shots: Vec<usize>,
    /// Only these datasets; empty: all of the folder's.
    pub datasets: Vec<String>,
    /// (name, adapter folder) for each adapter compared with the base.
    pub adapters: Vec<(String, PathBuf)>,
}

/// How training stores the frozen base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// As the file has it (a quantized file's own blocks, a dense model's weights).
    File,
    /// f32 copies of a quantized file's projections.
    Dequantize,
    /// QLoRA in this block type.
    Qlora(QuantType),
}

/// `selfspec train`, as the Train tab starts it; with no run folder, the plan of the same
/// training (`--plan`: the estimate, nothing written).
#[derive(Debug, Clone, PartialEq)]
pub struct Train {
    pub model: String,
    pub data: PathBuf,
    /// The training settings file.
    pub settings: PathBuf,
    pub base: Base,
    pub run: Option<PathBuf>,
}

/// The command line's name of a block type (`--qlora NAME`).
pub fn quant_name(q: QuantType) -> &'static str {
    match q {
        QuantType::Q4_0 => "q4_0",
        QuantType::Q4k => "q4k",
        QuantType::Q8_0 => "q8_0",
    }
}

fn flag(args: &mut Vec<OsString>, name: &str, value: impl Into<OsString>) {
    args.push(format!("--{name}").into());
    args.push(value.into());
}

impl Launch {
    /// The subcommand and its options (no global options, no `--detached`).
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        match self {
            Launch::Generate(g) => {
                a.push("generate".into());
                flag(&mut a, "seeds", &g.seeds);
                flag(&mut a, "model", &g.model);
                flag(&mut a, "n", g.n.to_string());
                flag(&mut a, "seed", g.seed.to_string());
                flag(&mut a, "mode", g.mode.as_str());
                flag(&mut a, "run", &g.run);
                if let Some(c) = &g.corpus {
                    flag(&mut a, "corpus", c);
                }
                if let Some(d) = &g.adapter {
                    flag(&mut a, "adapter", d);
                    if g.contrastive {
                        a.push("--contrastive".into());
                    }
                }
            }
            Launch::Eval(e) => {
                a.push("eval".into());
                flag(&mut a, "model", &e.model);
                flag(&mut a, "data", &e.data);
                flag(&mut a, "run", &e.run);
                let shots: Vec<String> = e.shots.iter().map(usize::to_string).collect();
                flag(&mut a, "shots", shots.join(","));
                if !e.datasets.is_empty() {
                    flag(&mut a, "datasets", e.datasets.join(","));
                }
                for (name, dir) in &e.adapters {
                    let mut v = OsString::from(format!("{name}="));
                    v.push(dir);
                    flag(&mut a, "adapter", v);
                }
            }
            Launch::Train(t) => {
                a.push("train".into());
                flag(&mut a, "model", &t.model);
                flag(&mut a, "data", &t.data);
                flag(&mut a, "train-config", &t.settings);
                match t.base {
                    Base::File => {}
                    Base::Dequantize => a.push("--dequantize".into()),
                    Base::Qlora(q) => flag(&mut a, "qlora", quant_name(q)),
                }
                match &t.run {
                    Some(dir) => flag(&mut a, "run", dir),
                    None => a.push("--plan".into()),
                }
            }
            Launch::Sweep { spec, run } => {
                a.push("sweep".into());
                if let Some(s) = spec {
                    a.push(s.into());
                }
                flag(&mut a, "run", run);
            }
        }
        a
    }

    /// The run folder it writes; None for a plan.
    pub fn run_dir(&self) -> Option<&Path> {
        match self {
            Launch::Generate(g) => Some(&g.run),
            Launch::Eval(e) => Some(&e.run),
            Launch::Train(t) => t.run.as_deref(),
            Launch::Sweep { run, .. } => Some(run),
        }
    }
}

/// The options every command the workbench runs takes first: its configuration and workspace.
pub fn global_argv(config_file: &Path, workspace: &Path) -> Vec<OsString> {
    let mut a = Vec::new();
    flag(&mut a, "config", config_file);
    flag(&mut a, "workspace", workspace);
    a
}

/// The whole argv of `launch` run in the foreground (a plan): global options, then its own.
pub fn foreground_argv(config_file: &Path, workspace: &Path, launch: &Launch) -> Vec<OsString> {
    let mut all = global_argv(config_file, workspace);
    all.extend(launch.argv());
    all
}

/// The whole argv of `launch` started detached: as [`foreground_argv`], with `--detached`
/// after the subcommand (it keeps going when the terminal closes).
pub fn detached_argv(config_file: &Path, workspace: &Path, launch: &Launch) -> Vec<OsString> {
    let mut all = global_argv(config_file, workspace);
    let own = launch.argv();
    if let Some((command, rest)) = own.split_first() {
        all.push(command.clone());
        all.push("--detached".into());
        all.extend(rest.iter().cloned());
    }
    all
}

/// Starts `launch` detached ([`crate::runs::spawn`]) in its run folder: it outlives the workbench and
/// the SSH session.
pub fn start(config_file: &Path, workspace: &Path, launch: &Launch) -> Result<crate::runs::Spawned, String> {
    let Some(dir) = launch.run_dir() else {
        return Err("a plan has no run folder; it runs in the foreground".into());
    };
    crate::runs::spawn(&detached_argv(config_file, workspace, launch), dir)
}
