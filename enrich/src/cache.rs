//! Per-worker cache in front of the [`Enricher`]: no lock or syscall on a hit.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;

use crate::{Enricher, PodLabels};

/// Unsettled entries (pod cgroup, names not yet on disk) are asked again this often,
const RETRY: Duration = Duration::from_secs(1);
/// for this long: a container the kubelet never logs (the pod sandbox's pause
/// container) keeps its pod's labels without a container name from then on.
const GIVE_UP: Duration = Duration::from_secs(30);
/// While events of a pod cgroup whose pod is not in the metadata yet wait for it (see
/// [`Cache::await_metadata`]), the pod is looked up this often.
const AWAIT_RETRY: Duration = Duration::from_millis(50);
/// Entries kept before the cache starts over; bounds memory under cgroup churn.
const MAX_ENTRIES: usize = 1 << 16;
/// How long a process's attribution (from /proc/<pid>/cgroup) is reused: short, as
/// pids are reused.
const PID_TTL: Duration = Duration::from_secs(1);

struct Entry {
    labels: Arc<PodLabels>,
    retry_at: Option<Instant>,
    first: Instant,
}

/// A worker's cgroup id → labels cache.
pub struct Cache {
    enricher: Arc<Enricher>,
    entries: FxHashMap<u64, Entry>,
    pids: FxHashMap<u32, (Arc<PodLabels>, Instant)>,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the enricher.
    pub misses: u64,
    /// How long events of a pod not in the metadata yet wait for it.
    wait: Duration,
}

impl Cache {
    /// An empty cache over `enricher`.
    pub fn new(enricher: Arc<Enricher>) -> Self {
        Self {
            enricher,
            entries: FxHashMap::default(),
            pids: FxHashMap::default(),
            hits: 0,
            misses: 0,
            wait: Duration::ZERO,
        }
    }

    /// Reports pod cgroups whose pod is not in the metadata yet as awaited (see
    /// [`Cache::lookup`]) for `wait` after their first lookup, looking them up often.
    pub fn await_metadata(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The enricher behind the cache.
    pub fn enricher(&self) -> &Arc<Enricher> {
        &self.enricher
    }

    /// Labels for `cgroup_id`; `now` is taken once per batch by the caller.
    pub fn get(&mut self, cgroup_id: u64, now: Instant) -> &Arc<PodLabels> {
        self.lookup(cgroup_id, now).0
    }

    /// Labels for process `pid`, from its /proc/<pid>/cgroup: for records whose cgroup
    /// id is the v2 root's, as on hosts whose containers live in cgroup v1 only.
    pub fn lookup_pid(&mut self, pid: u32, now: Instant) -> &Arc<PodLabels> {
        let fresh = self.pids.get(&pid).is_some_and(|(_, until)| now < *until);
        if fresh {
            self.hits += 1;
        } else {
            self.misses += 1;
            if self.pids.len() >= MAX_ENTRIES {
                self.pids.clear();
            }
            let labels = self.enricher.resolve_pid(pid).labels;
            self.pids.insert(pid, (labels, now + PID_TTL));
        }
        &self.pids[&pid].0
    }

    /// As [`Cache::get`], and whether the cgroup is a pod cgroup whose pod is not known
    /// yet, within the wait of its first lookup: its events should wait for the pod.
    pub fn lookup(&mut self, cgroup_id: u64, now: Instant) -> (&Arc<PodLabels>, bool) {
        let fresh = self
            .entries
            .get(&cgroup_id)
            .is_some_and(|e| e.retry_at.is_none_or(|t| now < t));
        if fresh {
            self.hits += 1;
        } else {
            self.misses += 1;
            if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&cgroup_id) {
                self.entries.clear();
            }
            let first = self.entries.get(&cgroup_id).map_or(now, |e| e.first);
            let r = self.enricher.resolve(cgroup_id);
            let age = now.duration_since(first);
            let retry = !r.settled && age < GIVE_UP;
            let every = if r.labels.id == 0 && age < self.wait {
                AWAIT_RETRY
            } else {
                RETRY
            };
            let entry = Entry {
                labels: r.labels,
                retry_at: retry.then(|| now + every),
                first,
            };
            self.entries.insert(cgroup_id, entry);
        }
        let e = &self.entries[&cgroup_id];
        let awaited =
            e.labels.id == 0 && e.retry_at.is_some() && now.duration_since(e.first) < self.wait;
        (&e.labels, awaited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CgroupFs, PodLogs};

    #[test]
    fn unknown_containers_are_retried_then_settled() {
        let Ok(fs) = CgroupFs::discover() else { return };
        let root = std::env::temp_dir().join(format!("cache-test-{}", std::process::id()));
        let uid = "0f8fd5a6-1c3e-4a5b-9b7d-2e4f6a8c0b1d";
        std::fs::create_dir_all(root.join(format!("pods/shop_web_{uid}/nginx"))).unwrap();
        std::fs::create_dir_all(root.join(format!("pods/shop_web_{uid}/sidecar"))).unwrap();
        let enricher = Arc::new(Enricher::new(
            fs,
            PodLogs::new(root.join("pods"), root.join("containers")),
        ));
        // The pause container: its id is in no log name.
        let pause = format!("/kubepods/pod{uid}/{}", "a".repeat(64));
        enricher.learn(77, &pause, false);
        let mut cache = Cache::new(enricher);
        let t0 = Instant::now();
        for s in [0, 2, 4, 40, 42, 44] {
            let labels = cache.get(77, t0 + Duration::from_secs(s));
            assert_eq!(
                (labels.pod.as_str(), labels.container.as_str()),
                ("web", "")
            );
        }
        // Asked at 0, 2, 4 and 40 s (retries, then settled), answered from the cache after.
        assert_eq!((cache.misses, cache.hits), (4, 2));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
