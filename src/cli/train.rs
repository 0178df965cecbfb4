//! `selfspec train`.

use std::path::PathBuf;

use clap::Args;

use super::choices::{PromptFormat, QuantType};
use super::model::ModelArgs;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Alpaca JSONL ({instruction, input?, output} a line) or a generation run folder (its
    /// accepted and edited samples).
    #[arg(long)]
    pub data: PathBuf,
    /// The run folder: config.yaml, events.jsonl, checkpoints/, adapter/.
    #[arg(long, required_unless_present = "plan")]
    pub run: Option<PathBuf>,
    /// Print the run's plan and write nothing: examples, steps, warm-up, peak learning rate,
    /// how the base is stored, the estimated memory and time (a probe step is timed), and the
    /// warnings; one JSON object on stdout, the same as lines on stderr.
    #[arg(long, conflicts_with = "resume")]
    pub plan: bool,
    /// Training settings (YAML, Hugging Face/PEFT names; `--config FILE` works too); default:
    /// the `train:` section of config.yaml.
    #[arg(long = "train-config", value_name = "FILE")]
    pub train_config: Option<PathBuf>,
    /// Continue the run in --run from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// QLoRA: store the frozen base's projections in this 4-bit (or 8-bit) block type and
    /// dequantize them on the fly (q4k needs input sizes that are multiples of 256). A quantized
    /// GGUF file is QLoRA already: its own blocks are the frozen base unless this or
    /// --dequantize says otherwise (the run's config.yaml records the block type as `qlora`).
    #[arg(long, value_enum)]
    pub qlora: Option<QuantType>,
    /// Train over f32 copies of a quantized file's projections (plain LoRA over the dequantized
    /// weights: more memory, no decoding of blocks at each use) instead of over its blocks.
    #[arg(long, conflicts_with = "qlora")]
    pub dequantize: bool,
    /// Examples in the Alpaca template or the model's chat template (auto: chat when the model
    /// has one; --resume keeps the run's own).
    #[arg(long, value_enum, default_value = "auto")]
    pub prompt_format: PromptFormat,
    /// Start from this adapter's A and B (a seed expert, say) instead of PEFT's initialisation,
    /// with a fresh optimiser; its r, lora_alpha and targets are the run's (`init: from:DIR`).
    #[arg(long, value_name = "ADAPTER_DIR", conflicts_with = "init")]
    pub init_from: Option<PathBuf>,
    /// How the adapter starts (over the settings' `init:`): standard, random[:SIGMA],
    /// from:ADAPTER_DIR, task:NAME (the expert of that task, trained first on the examples whose
    /// "task" is NAME) or reptile[:OUTER[:INNER]] (first-order Reptile over the data's tasks).
    #[arg(long, value_name = "STRATEGY", value_parser = parse_init)]
    pub init: Option<crate::train::Init>,
    /// Keep going when the terminal closes (SIGHUP); the workbench starts runs this way.
    #[arg(long, hide = true)]
    pub detached: bool,
}

fn parse_init(s: &str) -> Result<crate::train::Init, String> {
    crate::train::Init::try_from(s.to_string())
}

impl TrainArgs {
    /// What `selfspec train` runs.
    pub fn options(self, defaults: &super::model::Defaults) -> anyhow::Result<selfspec::train::command::Options> {
        use selfspec::train;
        Ok(train::command::Options {
            model: self.model.exact_choice(defaults, "train")?,
            data: self.data,
            run: self.run,
            settings_file: self.train_config,
            resume: self.resume,
            qlora: self.qlora.map(Into::into),
            dequantize: self.dequantize,
            plan_only: self.plan,
            prompt_format: self.prompt_format.into(),
            init: self.init.or(self.init_from.map(train::Init::From)),
            detached: self.detached,
        })
    }
}
