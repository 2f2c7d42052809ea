//! The per-event hot path: a worker's view of one stream. Each worker keeps a plain map
//! of the series it has seen in front of the registry's shared one, so an event costs a
//! hash of a few bytes, a bucket search and relaxed atomic adds; a new series decodes
//! its labels once.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use enrich::PodLabels;
use rustc_hash::FxHashMap;

use crate::{
    decoder::DecodeError,
    registry::{identity_of, Series, SeriesKey, Slot, OVERFLOW},
    stream::{MetricPlan, StreamPlan},
};

/// One stream (ring) of a config, as the stages after ingest and the tap see it.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The config (program) the ring belongs to.
    pub program: String,
    /// Its compiled layout and metrics.
    pub plan: Arc<StreamPlan>,
    /// Aggregation counters, shared by workers.
    pub stats: Arc<StreamStats>,
}

/// Counters of one stream across its workers.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Records aggregated.
    pub records: AtomicU64,
    /// Records shorter than the configured layout (not aggregated).
    pub malformed: AtomicU64,
}

/// A worker's series of one metric.
#[derive(Default)]
struct Local {
    index: FxHashMap<SeriesKey, u32>,
    slots: Vec<Slot>,
    last: Option<(SeriesKey, u32)>,
    /// The key being built: each record writes the same label bytes over it, so it is
    /// zeroed once, not per record.
    key: SeriesKey,
    /// This batch's records: where each one's series is, and its raw value.
    found: Vec<(Found, u64)>,
    /// This batch's series past the key limit (emptied after each batch).
    spilled: Vec<Slot>,
}

/// Where pass one found a record's series.
#[derive(Clone, Copy)]
enum Found {
    /// In the worker's slots.
    Local(u32),
    /// Resolved for this batch only (past the key limit).
    Spilled(u32),
}

impl Local {
    /// The series of `record` for metric `m`, resolving (and caching) a key seen for the
    /// first time.
    #[inline]
    fn find(&mut self, m: &MetricPlan, record: &[u8], pod: &Arc<PodLabels>) -> Found {
        let Local {
            index,
            slots,
            last,
            key,
            spilled,
            ..
        } = self;
        key.pod = pod.id;
        let mut at = 0;
        for l in &m.labels {
            key.bytes[at..at + l.span.size].copy_from_slice(l.span.bytes(record));
            at += l.span.size;
        }
        key.len = at as u8;
        // `last` is rewritten only when it changes: a rewrite per event (72 bytes
        // read back from a key just built byte by byte) was a fifth of the
        // aggregate worker's time in `end_to_end`.
        if let Some((k, i)) = last {
            if k == key {
                return Found::Local(*i);
            }
        }
        if let Some(&i) = index.get(key) {
            *last = Some((*key, i));
            return Found::Local(i);
        }
        let slot = shared_series(m, *key, record, pod);
        if slots.len() < m.family.max_keys() {
            slots.push(slot);
            let i = slots.len() as u32 - 1;
            index.insert(*key, i);
            *last = Some((*key, i));
            Found::Local(i)
        } else {
            // Past the key limit (label fields of endless values, most in the
            // overflow series) a key is resolved again each time, so memory stays
            // bounded.
            spilled.push(slot);
            Found::Spilled(spilled.len() as u32 - 1)
        }
    }
}

impl Local {
    /// Passes two and three over what pass one found: the counters each record adds
    /// to, then the additions.
    fn add(&self, m: &MetricPlan) {
        // Beyond what the caches hold, each record's slot, series and counters are
        // misses: they are asked for records ahead, so many are in flight at once.
        if self.slots.len() >= FAR {
            self.add_prefetching::<true>(m);
        } else {
            self.add_prefetching::<false>(m);
        }
    }

    #[inline(always)]
    fn add_prefetching<const PREFETCH: bool>(&self, m: &MetricPlan) {
        let mut cells = Vec::with_capacity(self.found.len());
        for (n, &(found, raw)) in self.found.iter().enumerate() {
            if PREFETCH {
                self.prefetch_ahead(n);
            }
            let slot = self.slot(found);
            let series = match slot {
                Slot::Series(s) => s,
                Slot::Overflow(s) => {
                    m.family.overflowed.fetch_add(1, Relaxed);
                    s
                }
                Slot::Filtered => {
                    m.family.filtered.fetch_add(1, Relaxed);
                    continue;
                }
                Slot::Invalid(label) => {
                    m.family.invalid[*label].fetch_add(1, Relaxed);
                    continue;
                }
            };
            let bucket = m
                .family
                .histogram
                .then(|| &series.buckets[m.raw_bounds.bucket(raw)]);
            let native = match (&m.family.native, &series.native) {
                (Some(plan), Some(b)) => Some(b.cell(plan, raw)),
                _ => None,
            };
            cells.push((&series.sum, raw, bucket, native));
        }
        if m.family.pod_labels {
            // One writer per series (the pipeline shards by pod and every series
            // names its pod): plain loads and stores, no locked instructions.
            for (n, &(sum, raw, bucket, native)) in cells.iter().enumerate() {
                if PREFETCH {
                    if let Some(&(sum, _, bucket, native)) = cells.get(n + AHEAD) {
                        prefetch(sum);
                        bucket.into_iter().chain(native).for_each(|b| prefetch(b));
                    }
                }
                for b in bucket.into_iter().chain(native) {
                    b.store(b.load(Relaxed) + 1, Relaxed);
                }
                sum.store(sum.load(Relaxed).wrapping_add(raw), Relaxed);
            }
        } else {
            for &(sum, raw, bucket, native) in &cells {
                for b in bucket.into_iter().chain(native) {
                    b.fetch_add(1, Relaxed);
                }
                sum.fetch_add(raw, Relaxed);
            }
        }
    }

    /// The slot of the record two steps past the `n`th, the series of the one a step
    /// past it (whose slot was asked for a step ago).
    #[inline]
    fn prefetch_ahead(&self, n: usize) {
        if let Some(&(ahead, _)) = self.found.get(n + 2 * AHEAD) {
            prefetch(self.slot(ahead));
        }
        if let Some(&(ahead, _)) = self.found.get(n + AHEAD) {
            if let Slot::Series(s) | Slot::Overflow(s) = self.slot(ahead) {
                prefetch(Arc::as_ptr(s));
            }
        }
    }

    #[inline]
    fn slot(&self, found: Found) -> &Slot {
        match found {
            Found::Local(i) => &self.slots[i as usize],
            Found::Spilled(i) => &self.spilled[i as usize],
        }
    }

    /// Forgets series only this worker still holds (the registry expired them).
    fn drop_expired(&mut self) {
        let orphan = |s: &Slot| matches!(s, Slot::Series(series) if Arc::strong_count(series) == 1);
        if !self.slots.iter().any(orphan) {
            return;
        }
        let (index, slots) = (
            std::mem::take(&mut self.index),
            std::mem::take(&mut self.slots),
        );
        for (key, i) in index {
            let slot = &slots[i as usize];
            if !orphan(slot) {
                self.slots.push(slot.clone());
                self.index.insert(key, self.slots.len() as u32 - 1);
            }
        }
        self.last = None;
    }
}

/// How many records ahead `Local::add` asks for the memory a record will need.
const AHEAD: usize = 8;

/// Series a worker holds from which `Local::add` prefetches (fewer stay in its caches,
/// where prefetching only adds instructions).
const FAR: usize = 4096;

/// Asks for the cache line at `p` without waiting for it (a hint: it changes no result
/// and never faults).
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p.cast(), core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A worker's view of one stream: its plan and a lock-free local series cache.
pub struct StreamAggregator {
    plan: Arc<StreamPlan>,
    /// Per metric: key → index into `slots`, the slots, and the last key with its
    /// index (runs of records for one series skip the hash lookup).
    local: Vec<Local>,
    stats: Arc<StreamStats>,
    records: u64,
    malformed: u64,
    flushes: u64,
}

impl StreamAggregator {
    /// A worker-local aggregator for `plan`, counting into `stats`.
    pub fn new(plan: Arc<StreamPlan>, stats: Arc<StreamStats>) -> Self {
        Self {
            local: plan.metrics.iter().map(|_| Local::default()).collect(),
            plan,
            stats,
            records: 0,
            malformed: 0,
            flushes: 0,
        }
    }

    /// The stream's plan.
    pub fn plan(&self) -> &Arc<StreamPlan> {
        &self.plan
    }

    /// Adds one record, attributed to `pod`.
    pub fn observe(&mut self, record: &[u8], pod: &Arc<PodLabels>) {
        self.observe_all([(record, pod)]);
    }

    /// Adds a batch's records, each attributed to its pod, in three passes: every
    /// record's series (records are read once, in this pass: no list of them is
    /// built), then per metric the counters each record adds to, then the additions.
    /// At 1,000 series and more every step is a cache miss (hash entry, series, bucket
    /// array, native group, counter) that depends on the one before; in short passes
    /// the misses of many records are in flight at once instead of one after another.
    /// Returns how many records it was given.
    pub fn observe_all<'r>(
        &mut self,
        records: impl IntoIterator<Item = (&'r [u8], &'r Arc<PodLabels>)>,
    ) -> u64 {
        let size = self.plan.record_size;
        let mut given = 0;
        for (record, pod) in records {
            given += 1;
            if record.len() < size {
                self.malformed += 1;
                continue;
            }
            self.records += 1;
            for (m, local) in self.plan.metrics.iter().zip(&mut self.local) {
                let raw = m.value.map_or(1, |v| v.uint(record));
                let found = local.find(m, record, pod);
                local.found.push((found, raw));
            }
        }
        for (m, local) in self.plan.metrics.iter().zip(&mut self.local) {
            local.add(m);
            // Spilled series are this batch's alone: a quiet stream holds none.
            local.found.clear();
            local.spilled.clear();
        }
        given
    }

    /// Raw keys this worker caches (tests: memory stays bounded).
    #[cfg(test)]
    pub(crate) fn cached_keys(&self) -> usize {
        self.local.iter().map(|l| l.index.len()).sum()
    }

    /// Publishes the counts gathered since the last flush (call once per batch).
    pub fn flush_stats(&mut self) {
        self.stats
            .records
            .fetch_add(std::mem::take(&mut self.records), Relaxed);
        self.stats
            .malformed
            .fetch_add(std::mem::take(&mut self.malformed), Relaxed);
        self.flushes += 1;
        if self.flushes.is_multiple_of(1024) {
            for local in &mut self.local {
                local.drop_expired();
            }
        }
    }
}

/// The family's series for `key`, creating it (decoding its labels) on first sight.
/// Keys whose labels a decoder rejects or filters are remembered as such, so they are
/// not decoded again.
#[cold]
fn shared_series(m: &MetricPlan, key: SeriesKey, record: &[u8], pod: &Arc<PodLabels>) -> Slot {
    if let Some(s) = m.family.series.get(&key) {
        return s.clone();
    }
    let mut labels = Vec::with_capacity(m.labels.len());
    for (i, l) in m.labels.iter().enumerate() {
        match l.chain.decode(l.span.bytes(record)) {
            Ok(v) => labels.push(v),
            Err(e) => {
                tracing::debug!(metric = %m.family.name, error = %e, "label decode failed");
                let slot = if e == DecodeError::Dropped {
                    Slot::Filtered
                } else {
                    Slot::Invalid(i)
                };
                return m.family.remember(key, slot);
            }
        }
    }
    if m.family.by_values.len() >= m.family.max_series
        && !m
            .family
            .by_values
            .contains_key(&identity_of(m, pod, &labels))
    {
        let overflow = m.family.overflow.get_or_init(|| {
            tracing::warn!(metric = %m.family.name, max = m.family.max_series, "series limit reached; further label sets count in the __overflow__ series");
            let n = m.labels.len();
            let pod = m.family.pod_labels.then(|| Arc::new(PodLabels { id: u32::MAX, namespace: OVERFLOW.into(), pod: OVERFLOW.into(), container: OVERFLOW.into(), extra: Box::default() }));
            let series = Arc::new(Series::new(pod, m.raw_bounds.len() + usize::from(m.family.histogram), m.family.native.as_ref()));
            m.family.by_values.insert((u32::MAX, vec![OVERFLOW.to_string(); n].into_boxed_slice()), series.clone());
            series
        });
        return m.family.remember(key, Slot::Overflow(overflow.clone()));
    }
    let buckets = if m.family.histogram {
        m.raw_bounds.len() + 1
    } else {
        0
    };
    let identity = identity_of(m, pod, &labels);
    let pod = m.family.pod_labels.then(|| pod.clone());
    let series = m
        .family
        .by_values
        .entry(identity)
        .or_insert_with(|| Arc::new(Series::new(pod, buckets, m.family.native.as_ref())))
        .clone();
    m.family.remember(key, Slot::Series(series))
}
