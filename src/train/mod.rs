//! Stage 4: LoRA tuning of the frozen base model on the generated samples.
//!
//! [`Trainer`] owns the adapter's A and B matrices (as `Var`s attached to the model's linear
//! layers) and AdamW's moments; [`Trainer::step`] runs the micro-batches of one optimiser step
//! through the training pass (differentiable ops only), accumulates gradients, clips them and
//! applies AdamW — the same arithmetic as a PyTorch loop over a PEFT model (tests/lora.rs checks
//! the losses against PEFT's).

pub mod command;
mod config;
pub mod data;
pub mod follow;
pub mod lmc;
mod plan;
pub mod run;
mod trainer;
pub mod warm;

pub use crate::model::adapters::adapter::{AdapterConfig, Targets};
pub use config::{row_length, Init, Schedule, TrainConfig, MAX_STEPS, REPTILE_DEFAULT};
pub use plan::{available_memory_mb, base_record, Cost, Plan};
pub use trainer::{targets, Batch, Moments, Param, StepStats, Trainer};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        for (yaml, name) in [
            ("max_steps: 0", "max_steps"),
            ("max_grad_norm: -1", "max_grad_norm"),
            ("lora_alpha: 0", "lora_alpha"),
            ("weight_decay: -0.1", "weight_decay"),
            ("lora_dropout: 1.0", "lora_dropout"),
            ("max_steps: 100000000", "max_steps"),
            ("max_steps: 18446744073709551615", "max_steps"),
            ("r: 100000", "r"),
            ("num_train_epochs: 1000000000", "num_train_epochs"),
            ("warmup_steps: 1000000000", "warmup_steps"),
        ] {
            let c: TrainConfig = crate::yaml::from_str(yaml).unwrap();
            let e = c.check().unwrap_err();
            assert!(e.starts_with(name), "{yaml}: {e}");
        }
        let off: TrainConfig = crate::yaml::from_str("max_grad_norm: 0").unwrap();
        assert!(off.check().is_ok(), "0 turns clipping off");
    }

    #[test]
    fn the_schedule_warms_up_then_decays() {
        let c = TrainConfig { learning_rate: 1.0, warmup_steps: 2, ..Default::default() };
        let lrs: Vec<f64> = (0..6).map(|s| c.lr_at(s, 6)).collect();
        assert_eq!(lrs[..3], [0.0, 0.5, 1.0]);
        assert!((lrs[4] - 0.5).abs() < 1e-12 && lrs[5] < lrs[4]);
        let flat = TrainConfig { lr_scheduler_type: Schedule::Constant, ..c };
        assert_eq!(flat.lr_at(5, 6), 1.0);
    }
}
