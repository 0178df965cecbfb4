//! Stages 2 and 3: instructions written from seed demos, filtered, answered (with retrieval), kept
//! as samples in a resumable run; the review of those samples; the commands that drive them.

pub mod command;
mod feeder;
pub mod filters;
pub mod folder;
pub mod follow;
pub mod job;
pub mod pipeline;
pub mod progress;
pub mod promote;
pub mod respond;
pub mod review;
pub mod samples;
pub mod settings;
pub mod trace;
