//! Per-worker cache in front of the [`Enricher`]: no lock or syscall on a hit.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;

use crate::{Enricher, PodLabels};

/// Unsettled entries (pod cgroup, names not yet on disk) are asked again this often.
const RETRY: Duration = Duration::from_secs(1);
/// Entries kept before the cache starts over; bounds memory under cgroup churn.
const MAX_ENTRIES: usize = 1 << 16;

struct Entry {
    labels: Arc<PodLabels>,
    retry_at: Option<Instant>,
}

/// A worker's cgroup id → labels cache.
pub struct Cache {
    enricher: Arc<Enricher>,
    entries: FxHashMap<u64, Entry>,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the enricher.
    pub misses: u64,
}

impl Cache {
    /// An empty cache over `enricher`.
    pub fn new(enricher: Arc<Enricher>) -> Self {
        Self {
            enricher,
            entries: FxHashMap::default(),
            hits: 0,
            misses: 0,
        }
    }

    /// The enricher behind the cache.
    pub fn enricher(&self) -> &Arc<Enricher> {
        &self.enricher
    }

    /// Labels for `cgroup_id`; `now` is taken once per batch by the caller.
    pub fn get(&mut self, cgroup_id: u64, now: Instant) -> &Arc<PodLabels> {
        let fresh = self
            .entries
            .get(&cgroup_id)
            .is_some_and(|e| e.retry_at.is_none_or(|t| now < t));
        if fresh {
            self.hits += 1;
        } else {
            self.misses += 1;
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
            let r = self.enricher.resolve(cgroup_id);
            let entry = Entry {
                labels: r.labels,
                retry_at: (!r.settled).then(|| now + RETRY),
            };
            self.entries.insert(cgroup_id, entry);
        }
        &self.entries[&cgroup_id].labels
    }
}
