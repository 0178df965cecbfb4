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

/// Keeps every freed block for reuse until the process ends (glibc's `M_TRIM_THRESHOLD` of −1:
/// the heap's free top is never returned), for a process whose memory use repeats — training,
/// where each step rises to the same peak and falls. With main.rs's 1 GiB threshold the heap
/// shrank as each backward freed the activations and grew again in the next forward, and the
/// kernel zeroed the pages afresh each time: 2 million page faults and a fifth of the step's time
/// on SmolLM2 at 4 × 1,024 tokens. The resident memory stays at the step's peak between steps
/// (what PyTorch's caching allocator does too); the peak itself does not change.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        // SAFETY: mallopt only changes allocator tuning; −1 is documented to disable trimming.
        unsafe {
            mallopt(M_TRIM_THRESHOLD, -1);
        }
    }
}

/// Gives memory the allocator holds free back to the system (glibc's `malloc_trim`, which also
/// releases free pages inside the heap). The process keeps freed blocks for reuse (main.rs raises
/// glibc's trim threshold to 1 GiB so activations do not page-fault), so without this a
/// decoding's resident memory stays at its highest point: a KV cache rebuilt as rows join and
/// leave left up to a gigabyte of free blocks resident. At most once a second.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LAST_MS: AtomicU64 = AtomicU64::new(0);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let last = LAST_MS.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || LAST_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free memory to the system; it takes the arenas' locks.
        unsafe {
            malloc_trim(0);
        }
    }
}
