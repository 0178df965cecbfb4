//! Stages 2 and 3: instructions written from seed demos, filtered, answered (with retrieval), kept
//! as samples in a resumable run; the review of those samples; the commands that drive them.

pub mod command;
pub mod filters;
pub mod follow;
pub mod pipeline;
pub mod promote;
pub mod review;
pub mod samples;
pub mod trace;
