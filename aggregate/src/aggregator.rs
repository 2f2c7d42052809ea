//! The per-event hot path: a worker's view of one stream. Each worker keeps an index
//! of the series it has seen in front of the registry's shared map, so an event costs a
//! hash of a few bytes, a bucket search and relaxed atomic adds; a new series decodes
//! its labels once.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use enrich::PodLabels;

use crate::{
    decoder::DecodeError,
    prefetch::prefetch,
    registry::{identity_of, Series, SeriesKey, Slot, OVERFLOW},
    series_index::{self, SeriesIndex},
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
    /// Keys of `slots`, in the same order.
    index: SeriesIndex,
    slots: Vec<Slot>,
    /// The series of the record before (runs of one series skip the hash).
    last: Option<u32>,
    /// The key being built: each record writes the same label bytes over it, so it is
    /// zeroed once, not per record.
    key: SeriesKey,
    /// This batch's records: where each one's series is, and its raw value.
    found: Vec<(Found, u64)>,
    /// This batch's key hashes, when they are taken ahead of the search.
    hashes: Vec<u64>,
    /// This batch's series past the key limit (emptied after each batch).
    spilled: Vec<Slot>,
    /// Where records add to counters their family does not keep (never read).
    sink: AtomicU64,
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
    /// Pass one for a record: its series and raw value (its key's hash if taken
    /// ahead).
    #[inline(always)]
    fn observe(&mut self, m: &MetricPlan, record: &[u8], pod: &Arc<PodLabels>, hash: Option<u64>) {
        let raw = m.value.map_or(1, |v| v.uint(record));
        let found = self.find(m, record, pod, hash);
        self.found.push((found, raw));
    }

    /// Pass one over a batch, past what the caches hold: every key is hashed first,
    /// so each record's bucket group and key are asked for records before they are
    /// searched.
    fn observe_prefetching(&mut self, m: &MetricPlan, batch: &[(&[u8], &Arc<PodLabels>)]) {
        self.hashes.clear();
        for &(record, pod) in batch {
            self.build_key(m, record, pod);
            self.hashes.push(series_index::hash(&self.key));
        }
        for (n, &(record, pod)) in batch.iter().enumerate() {
            if let Some(&h) = self.hashes.get(n + 2 * AHEAD) {
                self.index.prefetch_group(h);
            }
            if let Some(&h) = self.hashes.get(n + AHEAD) {
                self.index.prefetch_key(h);
            }
            self.observe(m, record, pod, Some(self.hashes[n]));
        }
    }

    /// Writes the key of `record` for metric `m` over `self.key`.
    #[inline(always)]
    fn build_key(&mut self, m: &MetricPlan, record: &[u8], pod: &Arc<PodLabels>) {
        let key = &mut self.key;
        key.pod = pod.id;
        let mut at = 0;
        for l in &m.labels {
            key.put(at, record, l.span);
            at += l.span.size;
        }
        key.len = at as u8;
    }

    /// The series of `record` for metric `m` (its key's hash if already known),
    /// resolving (and caching) a key seen for the first time.
    #[inline(always)]
    fn find(
        &mut self,
        m: &MetricPlan,
        record: &[u8],
        pod: &Arc<PodLabels>,
        hash: Option<u64>,
    ) -> Found {
        self.build_key(m, record, pod);
        let Local {
            index,
            slots,
            last,
            key,
            spilled,
            ..
        } = self;
        if let Some(i) = *last {
            if index.key(i) == key {
                return Found::Local(i);
            }
        }
        let hash = hash.unwrap_or_else(|| series_index::hash(key));
        if let Some(i) = index.get(hash, key) {
            *last = Some(i);
            return Found::Local(i);
        }
        let slot = shared_series(m, *key, record, pod);
        if slots.len() < m.family.max_keys() {
            slots.push(slot);
            let i = index.insert(hash, *key);
            *last = Some(i);
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
        if self.far() {
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
                self.prefetch_ahead(m, n);
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
            // A counter the family does not keep is the worker's sink, so every
            // record adds to three counters without a branch.
            let bucket = match m.family.histogram {
                true => &series.buckets[m.raw_bounds.bucket(raw)],
                false => &self.sink,
            };
            let native = match (&m.family.native, &series.native) {
                (Some(plan), Some(b)) => b.cell(plan, raw),
                _ => &self.sink,
            };
            cells.push((&series.sum, raw, bucket, native));
        }
        if m.family.pod_labels {
            // One writer per series (the pipeline shards by pod and every series
            // names its pod): plain loads and stores, no locked instructions.
            for (n, &(sum, raw, bucket, native)) in cells.iter().enumerate() {
                if PREFETCH {
                    if let Some(&(sum, _, bucket, native)) = cells.get(n + 4 * AHEAD) {
                        [sum, bucket, native].into_iter().for_each(|c| prefetch(c));
                    }
                }
                bucket.store(bucket.load(Relaxed) + 1, Relaxed);
                native.store(native.load(Relaxed) + 1, Relaxed);
                sum.store(sum.load(Relaxed).wrapping_add(raw), Relaxed);
            }
        } else {
            for &(sum, raw, bucket, native) in &cells {
                for b in [bucket, native] {
                    if !std::ptr::eq(b, &self.sink) {
                        b.fetch_add(1, Relaxed);
                    }
                }
                sum.fetch_add(raw, Relaxed);
            }
        }
    }

    /// The slot of the record three steps past the `n`th, the series of the one two
    /// steps past it (whose slot was asked for a step ago), and the native bucket
    /// group of the one a step past it (whose series was).
    #[inline]
    fn prefetch_ahead(&self, m: &MetricPlan, n: usize) {
        if let Some(&(ahead, _)) = self.found.get(n + 3 * AHEAD) {
            prefetch(self.slot(ahead));
        }
        if let Some(&(ahead, _)) = self.found.get(n + 2 * AHEAD) {
            if let Slot::Series(s) | Slot::Overflow(s) = self.slot(ahead) {
                prefetch(Arc::as_ptr(s));
            }
        }
        if let (Some(&(ahead, raw)), Some(plan)) = (self.found.get(n + AHEAD), &m.family.native) {
            if let Slot::Series(s) | Slot::Overflow(s) = self.slot(ahead) {
                if let Some(native) = &s.native {
                    native.prefetch(plan, raw);
                }
            }
        }
    }

    /// Whether it holds more series than stay in the caches (prefetching pays).
    fn far(&self) -> bool {
        self.slots.len() >= FAR
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
        for (i, slot) in slots.into_iter().enumerate() {
            if !orphan(&slot) {
                let key = *index.key(i as u32);
                self.slots.push(slot);
                self.index.insert(series_index::hash(&key), key);
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

/// A worker's view of one stream: its plan and a lock-free local series cache.
pub struct StreamAggregator {
    plan: Arc<StreamPlan>,
    /// Per metric: the index of keys, their slots, and the last record's series (runs
    /// of records for one series skip the hash lookup).
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
    /// record's series, then per metric the counters each record adds to, then the
    /// additions.
    /// At 1,000 series and more every step is a cache miss (hash entry, series, bucket
    /// array, native group, counter) that depends on the one before; in short passes
    /// the misses of many records are in flight at once instead of one after another.
    /// Returns how many records it was given.
    pub fn observe_all<'r>(
        &mut self,
        records: impl IntoIterator<Item = (&'r [u8], &'r Arc<PodLabels>)>,
    ) -> u64 {
        let malformed = self.malformed;
        let given = if self.local.iter().any(Local::far) {
            self.find_prefetching(records)
        } else {
            self.find(records)
        };
        self.records += given - (self.malformed - malformed);
        for (m, local) in self.plan.metrics.iter().zip(&mut self.local) {
            local.add(m);
            // Spilled series are this batch's alone: a quiet stream holds none.
            local.found.clear();
            local.spilled.clear();
        }
        given
    }

    /// Pass one, while every metric's series stay in the caches: each record's series
    /// in turn (records are read once: no list of them is built). Returns how many
    /// records it was given.
    fn find<'r>(
        &mut self,
        records: impl IntoIterator<Item = (&'r [u8], &'r Arc<PodLabels>)>,
    ) -> u64 {
        let mut given = 0;
        for (record, pod) in records {
            given += 1;
            if self.accept(record) {
                for (m, local) in self.plan.metrics.iter().zip(&mut self.local) {
                    local.observe(m, record, pod, None);
                }
            }
        }
        given
    }

    /// Pass one past what the caches hold: the batch's records are listed, then each
    /// metric looks up their series with its memory asked for ahead.
    fn find_prefetching<'r>(
        &mut self,
        records: impl IntoIterator<Item = (&'r [u8], &'r Arc<PodLabels>)>,
    ) -> u64 {
        let mut given = 0;
        let batch: Vec<_> = records
            .into_iter()
            .inspect(|_| given += 1)
            .filter(|&(record, _)| self.accept(record))
            .collect();
        for (m, local) in self.plan.metrics.iter().zip(&mut self.local) {
            local.observe_prefetching(m, &batch);
        }
        given
    }

    /// Whether `record` holds the layout (counted as malformed when shorter).
    #[inline(always)]
    fn accept(&mut self, record: &[u8]) -> bool {
        if record.len() < self.plan.record_size {
            self.malformed += 1;
            return false;
        }
        true
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
