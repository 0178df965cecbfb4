//! A prefix cache: the keys and values of prompts decoded before, kept so that a later prompt
//! sharing their beginning runs only its new tokens. A server needs it for eq. 2 through HTTP,
//! where every step sends the k prompts again, each one token longer.
//!
//! Entries are whole prompts of one cache row, keyed by the adapter that row ran with (the base
//! when none). Any common beginning of a stored prompt is reusable, since the keys and values at
//! a position depend only on the tokens up to it. Memory is bounded: the least recently used
//! entries go first once the stored tensors pass the budget.

use std::sync::Mutex;

use crate::model::RowKv;

pub struct PrefixCache {
    store: Mutex<Store>,
    budget: usize,
}

#[derive(Default)]
struct Store {
    entries: Vec<Entry>,
    bytes: usize,
    clock: u64,
}

struct Entry {
    adapter: Option<String>,
    tokens: Vec<u32>,
    kv: RowKv,
    bytes: usize,
    used: u64,
}

/// What a lookup found: the stored row and how many of the prompt's first tokens it holds.
pub struct Hit {
    pub kv: RowKv,
    pub len: usize,
}

/// How many tokens `a` and `b` begin with alike.
pub(crate) fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    /// A cache holding at most `budget` bytes of keys and values.
    pub fn new(budget: usize) -> PrefixCache {
        PrefixCache { store: Mutex::new(Store::default()), budget }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored row sharing the longest beginning with `tokens` under `adapter`, that
    /// beginning cut to at most `limit` tokens; `None` when nothing is shared.
    pub fn find(&self, adapter: Option<&str>, tokens: &[u32], limit: usize) -> Option<Hit> {
        let mut store = self.lock();
        store.clock += 1;
        let clock = store.clock;
        let best = store
            .entries
            .iter_mut()
            .filter(|e| e.adapter.as_deref() == adapter)
            .map(|e| (common(&e.tokens, tokens).min(limit), e))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, e)| (*n, e.used))?;
        best.1.used = clock;
        Some(Hit { kv: best.1.kv.clone(), len: best.0 })
    }

    /// Keeps `kv`, the row of `tokens` under `adapter`. A stored prompt that `tokens` begins
    /// with is dropped (the new one holds it); nothing is added when a stored prompt already
    /// begins with `tokens`.
    pub fn store(&self, adapter: Option<&str>, tokens: &[u32], kv: RowKv) {
        let bytes = kv.bytes();
        if bytes > self.budget || kv.len != tokens.len() {
            return;
        }
        let mut store = self.lock();
        store.clock += 1;
        let clock = store.clock;
        let same = |e: &Entry| e.adapter.as_deref() == adapter;
        if let Some(e) = store.entries.iter_mut().find(|e| same(e) && e.tokens.starts_with(tokens)) {
            e.used = clock;
            return;
        }
        let mut freed = 0;
        store.entries.retain(|e| {
            let covered = same(e) && tokens.starts_with(&e.tokens);
            if covered {
                freed += e.bytes;
            }
            !covered
        });
        store.bytes -= freed;
        store.bytes += bytes;
        store.entries.push(Entry {
            adapter: adapter.map(str::to_string),
            tokens: tokens.to_vec(),
            kv,
            bytes,
            used: clock,
        });
        while store.bytes > self.budget {
            let Some(oldest) = store.entries.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(i, _)| i) else {
                break;
            };
            let gone = store.entries.swap_remove(oldest);
            store.bytes -= gone.bytes;
        }
    }

    /// Entries and the bytes they hold.
    pub fn size(&self) -> (usize, usize) {
        let store = self.lock();
        (store.entries.len(), store.bytes)
    }
}
