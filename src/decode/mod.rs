//! Decoding: many prompts of different lengths decoded together, each with its own sampling,
//! stop conditions and length, leaving the batch when done; text streamed as it is made; k
//! prompts mixed into one distribution (eq. 2) and contrastive pairs (eq. 3). Generation,
//! training and evaluation all decode through here.

mod ends;
pub mod mixing;
pub mod prefix;
mod request;
mod row;
pub mod sampling;
mod scheduler;
pub mod stream;

pub use crate::rng::Rng;
pub use ends::{find_stop, looping, looping_lines, LOOP_STRETCH, LOOP_STRETCH_MAX};
pub use mixing::{contrast_scores, log_softmax, mix, normalised};
pub use prefix::PrefixCache;
pub use request::*;
pub use sampling::{Sampling, SamplingParams};
pub use scheduler::{continuous, generate, Feed, Room};
pub use stream::TextStream;
