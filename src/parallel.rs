//! Running the engine's hot loops on a worker of rayon's pool.
//!
//! Every matmul of a decoding or training step splits its work over rayon's pool. Called from a
//! thread outside the pool (the main thread), each such call queues the work, sleeps on a latch
//! and wakes the pool's sleeping workers: ~200 wake-ups per token of a 30-layer model, and on 2
//! cores a third of batch-1 decode time went to the scheduler. Run from a pool worker instead,
//! the calling worker does its share and the others steal theirs, with no sleeping caller
//! (batch-1 decode of SmolLM2-135M Q4_1: 55 → 106 tokens/s; docs/PERFORMANCE.md). Training steps
//! multiply hundreds of rows at a time and gained nothing measurable from it, so they stay put.

/// Runs `f` on a worker of the global pool and returns its result (directly when already on one,
/// or when the pool has a single thread).
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() <= 1 {
        return f();
    }
    let mut result = None;
    rayon::scope(|s| s.spawn(|_| result = Some(f())));
    // The scope returns only after the spawned job ran; a panic in it re-raises here.
    result.expect("rayon::scope returns after its spawned job has run")
}
