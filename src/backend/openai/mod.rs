//! A client of an OpenAI-compatible server: `/v1/models` checked at connect, plain requests
//! streamed from `/v1/completions` or `/v1/chat/completions`, and the paper's two step-wise
//! decodings done here over the server's top log-probabilities: the eq. 2 mixture (each step
//! asks the k prompts for one token) and the eq. 3 contrast (the tuned and the base model's
//! names). Many requests are in flight at once; a dropped connection, a timeout, 429 or 5xx is
//! retried with backoff; anything else fails with the server's own message.
//!
//! Truncation: a server reports only its top N log-probabilities per step. The mixture here is
//! Σ_j w_j·p_j(t) over the union of the prompts' top-N tokens, each p_j(t) outside prompt j's
//! top N taken as 0; the contrast bounds log p_base(t) of a token outside the base's top N by
//! the smallest log-probability reported. Tokens are keyed by their text, so the chosen token
//! is appended as text and the server tokenizes the grown prompt again. llama.cpp's server
//! reports no log-probabilities when its own greedy token ends the text; such a step counts as
//! the end with certainty for that prompt. Tied scores are ranked by token text (the local
//! engine ranks them by id), so a sampled step may draw another of the tied tokens.

mod client;
mod stepwise;
mod stream;

pub use client::Client;
