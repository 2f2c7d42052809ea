//! The stages after ingest, each with its own workers and bounded queues of batches:
//! ring readers → queue → enrich workers → one queue per aggregate worker → aggregate
//! workers.
//!
//! Enrich workers resolve every record's cgroup id to its pod label set (through a
//! per-worker cache: no lock, no syscall on a hit) and broadcast the batch with a
//! per-record pod index, shared (no copy), to the aggregate workers. Aggregation is
//! sharded by pod: worker `i` takes the records whose pod id modulo the worker count is
//! `i`, so a pod's series are always updated by the same worker. Enrich workers wait
//! for a full aggregate queue to drain to half ([`crate::handoff`]; work already done
//! is never thrown away); the wait backs up into the ingest queue, where readers drop
//! and count what does not fit.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::Instant,
};

pub use aggregate::Stream;
use aggregate::StreamAggregator;
use crossbeam_channel::Receiver;
use enrich::{Attributed, Cache, Enricher, PodLabels, HELD};
use ingest::{Batch, BatchBuilder};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::handoff;

/// The streams by id (a batch's `stream`), which a reload changes while workers run:
/// ids are never reused, a removed stream leaves an empty slot. Workers keep their own
/// copy and compare a generation number per batch, so the lock is taken only after a
/// change.
#[derive(Default)]
pub struct StreamTable {
    generation: AtomicU64,
    slots: RwLock<Arc<Vec<Option<Stream>>>>,
}

impl StreamTable {
    /// A table of `streams`, with ids 0, 1, ...
    pub fn new(streams: Vec<Stream>) -> Self {
        Self {
            generation: AtomicU64::new(0),
            slots: RwLock::new(Arc::new(streams.into_iter().map(Some).collect())),
        }
    }

    /// The streams now, by id.
    pub fn snapshot(&self) -> Arc<Vec<Option<Stream>>> {
        self.slots.read().clone()
    }

    /// Changes at each [`StreamTable::update`].
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Empties the slots of `remove` and appends `add`; returns the ids `add` got.
    pub fn update(&self, remove: &[u32], add: Vec<Stream>) -> Vec<u32> {
        let mut slots = self.slots.write();
        let mut next: Vec<Option<Stream>> = slots.as_ref().clone();
        for &id in remove {
            if let Some(slot) = next.get_mut(id as usize) {
                *slot = None;
            }
        }
        let ids = (next.len() as u32..).take(add.len()).collect();
        next.extend(add.into_iter().map(Some));
        *slots = Arc::new(next);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        ids
    }
}

/// A worker's copy of the stream table.
struct LocalStreams<'a> {
    table: &'a StreamTable,
    generation: u64,
    streams: Arc<Vec<Option<Stream>>>,
}

impl<'a> LocalStreams<'a> {
    fn new(table: &'a StreamTable) -> Self {
        Self {
            table,
            generation: table.generation(),
            streams: table.snapshot(),
        }
    }

    /// Takes the table again if it changed; true when it did.
    #[inline]
    fn refresh(&mut self) -> bool {
        let generation = self.table.generation();
        if generation == self.generation {
            return false;
        }
        self.generation = generation;
        self.streams = self.table.snapshot();
        true
    }

    fn get(&self, id: u32) -> Option<&Stream> {
        self.streams.get(id as usize).and_then(Option::as_ref)
    }
}

/// Counters of one stage.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Records taken from the stage's input queue(s).
    pub received: AtomicU64,
    /// Records the stage finished with.
    pub processed: AtomicU64,
    /// Batches taken (records per batch = received / batches).
    pub batches: AtomicU64,
    /// Enrich only: cgroup lookups answered by a worker's cache.
    pub cache_hits: AtomicU64,
    /// Enrich only: cgroup lookups resolved through cgroupfs and pod metadata.
    pub cache_misses: AtomicU64,
    /// Records held for their pod's metadata.
    pub held: AtomicU64,
    /// Held records released unattributed (wait over, buffer full, shutdown).
    pub held_unresolved: AtomicU64,
}

/// Worker counts and queue depths.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Enrich workers.
    pub enrich_workers: usize,
    /// Aggregate workers (shards).
    pub aggregate_workers: usize,
    /// Batches each queue holds.
    pub queue_batches: usize,
    /// How long records of a pod not in the metadata yet are held for it.
    pub metadata_wait: std::time::Duration,
}

/// The cgroup creation/removal stream and the programs' cgroup id maps that follow it.
pub struct CgroupFeed {
    pub events: ingest::CgroupEvents,
    /// Each with the config it belongs to.
    pub maps: Vec<(String, ingest::cgroup_id_map::CgroupIdMap)>,
}

/// Shared by enrich workers. Each worker drains it before a batch: a container's
/// cgroup is created before any of its processes run, so its path is known before its
/// first record is enriched, and kept after removal.
pub type CgroupEventsHandle = Arc<parking_lot::Mutex<CgroupFeed>>;

fn learn_cgroups(events: Option<&CgroupEventsHandle>, enricher: &Enricher) {
    if let Some(feed) = events {
        let mut feed = feed.lock();
        let CgroupFeed { events, maps } = &mut *feed;
        events.drain(|id, path, removed| {
            enricher.learn(id, path, removed);
            for (_, m) in maps.iter_mut() {
                m.update(id, path, removed);
            }
        });
    }
}

/// Running stages.
pub struct Pipeline {
    /// Enrich counters.
    pub enrich: Arc<StageStats>,
    /// Aggregate counters.
    pub aggregate: Arc<StageStats>,
    enrich_queue: Receiver<Batch>,
    aggregate_queues: Vec<handoff::Sender<Arc<Attributed>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the workers reading batches from `input` (which ingest fills).
    pub fn start(
        input: Receiver<Batch>,
        streams: Arc<StreamTable>,
        enricher: Arc<Enricher>,
        cgroup_events: Option<CgroupEventsHandle>,
        tap: Option<Arc<tap::Tap>>,
        spans: Option<Arc<spans::Spans>>,
        settings: Settings,
    ) -> std::io::Result<Self> {
        let enrich = Arc::new(StageStats::default());
        let aggregate = Arc::new(StageStats::default());
        let shards = settings.aggregate_workers.max(1);
        let mut threads = Vec::new();
        let mut aggregate_queues = Vec::new();
        for shard in 0..shards {
            let (tx, rx) = handoff::bounded(settings.queue_batches.max(1), WAIT_NET);
            aggregate_queues.push(tx);
            let (streams, stats) = (streams.clone(), aggregate.clone());
            let worker = move || aggregate_worker(rx, &streams, &stats, shard, shards);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aggregate-{shard}"))
                    .spawn(worker)?,
            );
        }
        for i in 0..settings.enrich_workers.max(1) {
            let (input, streams, stats, out) = (
                input.clone(),
                streams.clone(),
                enrich.clone(),
                aggregate_queues.clone(),
            );
            let (enricher, events) = (enricher.clone(), cgroup_events.clone());
            let (tap, spans) = (tap.clone(), spans.clone());
            let worker = move || {
                enrich_worker(
                    input,
                    &streams,
                    Cache::new(enricher).await_metadata(settings.metadata_wait),
                    events.as_ref(),
                    &out,
                    Offers {
                        tap: tap.as_deref(),
                        spans: spans.as_deref(),
                    },
                    &stats,
                )
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("enrich-{i}"))
                    .spawn(worker)?,
            );
        }
        Ok(Self {
            enrich,
            aggregate,
            enrich_queue: input,
            aggregate_queues,
            threads,
        })
    }

    /// Batches waiting: before enrich, and before each aggregate worker.
    pub fn queue_depths(&self) -> (usize, Vec<usize>) {
        (
            self.enrich_queue.len(),
            self.aggregate_queues
                .iter()
                .map(handoff::Sender::len)
                .collect(),
        )
    }

    /// Waits for the workers, which end once every ingest sender is gone.
    pub fn join(self) {
        let Self {
            threads,
            aggregate_queues,
            enrich_queue,
            ..
        } = self;
        drop((aggregate_queues, enrich_queue));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The longest an enrich worker sleeps on a full aggregate queue without a wake (none
/// should be missed: a safety net).
const WAIT_NET: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes of held records per stream and worker; beyond it they go on unattributed.
const HELD_BYTES: usize = 1 << 20;

/// Where attributed batches go beside the aggregate workers.
#[derive(Clone, Copy)]
struct Offers<'a> {
    /// Every batch once attributed (held records when they are).
    tap: Option<&'a tap::Tap>,
    /// Batches of span streams: the span stage takes them instead of aggregate workers.
    spans: Option<&'a spans::Spans>,
}

/// Entries of an enrich worker's per-batch memo (one bit each in a `u64`).
const MEMO: usize = 64;

/// Per batch: record key → (index into the batch's pods, shard), direct-mapped; a
/// bit per entry says which are filled.
struct Memo {
    entries: [(u64, u32, u32); MEMO],
    filled: u64,
}

impl Memo {
    fn new() -> Self {
        Self {
            entries: [(0, 0, 0); MEMO],
            filled: 0,
        }
    }

    #[inline]
    fn at(key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - MEMO.trailing_zeros())) as usize
    }

    #[inline]
    fn get(&self, key: u64) -> Option<(u32, usize)> {
        let at = Self::at(key);
        let (k, i, shard) = self.entries[at];
        (self.filled & (1 << at) != 0 && k == key).then_some((i, shard as usize))
    }

    #[inline]
    fn put(&mut self, key: u64, i: u32, shard: usize) {
        let at = Self::at(key);
        self.entries[at] = (key, i, shard as u32);
        self.filled |= 1 << at;
    }
}

/// One enrich worker: attaches pods to records, batch by batch.
struct EnrichWorker<'a> {
    streams: LocalStreams<'a>,
    cache: Cache,
    out: &'a [handoff::Sender<Arc<Attributed>>],
    offers: Offers<'a>,
    stats: &'a StageStats,
    slot: FxHashMap<u32, u32>,
    per_shard: Vec<u64>,
    /// Per stream: records waiting for their pod's metadata, and when the first came.
    held: FxHashMap<u32, (BatchBuilder, Instant)>,
}

fn enrich_worker(
    input: Receiver<Batch>,
    streams: &StreamTable,
    cache: Cache,
    cgroup_events: Option<&CgroupEventsHandle>,
    out: &[handoff::Sender<Arc<Attributed>>],
    offers: Offers,
    stats: &StageStats,
) {
    let mut w = EnrichWorker {
        streams: LocalStreams::new(streams),
        cache,
        out,
        offers,
        stats,
        slot: FxHashMap::default(),
        per_shard: vec![0; out.len()],
        held: FxHashMap::default(),
    };
    loop {
        // Idle rings still get their cgroup events learned (the ring is bounded) and
        // held records released.
        let batch = match input.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(b) => b,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                learn_cgroups(cgroup_events, w.cache.enricher());
                w.release(false);
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                w.release(true);
                break;
            }
        };
        learn_cgroups(cgroup_events, w.cache.enricher());
        stats.received.fetch_add(u64::from(batch.len), Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        w.enrich(batch, true, false);
        if !w.held.is_empty() {
            w.release(false);
        }
        stats
            .cache_hits
            .fetch_add(std::mem::take(&mut w.cache.hits), Relaxed);
        stats
            .cache_misses
            .fetch_add(std::mem::take(&mut w.cache.misses), Relaxed);
    }
}

impl EnrichWorker<'_> {
    /// Attaches each record's pod and hands the batch to the aggregate workers; with
    /// `may_hold`, records of pods whose metadata is still awaited are held instead.
    /// `again`: the batch is of records held before.
    fn enrich(&mut self, batch: Batch, may_hold: bool, again: bool) {
        self.streams.refresh();
        // Records of a stream a reload removed are left out.
        let Some(plan) = self.streams.get(batch.stream).map(|s| s.plan.clone()) else {
            return;
        };
        let now = Instant::now();
        let shards = self.out.len() as u32;
        let mut pods: Vec<Arc<PodLabels>> = Vec::new();
        let mut index = Vec::with_capacity(batch.len as usize);
        self.slot.clear();
        self.per_shard.fill(0);
        let mut processed = 0u64;
        let mut unresolved = 0u64;
        // What the batch's cgroups resolved to, so records of a few dozen interleaved
        // cgroups (a busy node) skip the cache's lookups.
        let mut memo = Memo::new();
        let mut last_pod = 0u32;
        let enricher = self.cache.enricher().clone();
        for record in batch.records() {
            let cgroup = plan.cgroup_id(record);
            let (key, pid) = enricher.attribute_by(cgroup, || plan.pid(record));
            let (i, shard) = match memo.get(key) {
                Some(hit) => hit,
                None => {
                    let (labels, awaited) = match pid {
                        Some(p) => (self.cache.lookup_pid(p, now), false),
                        None => self.cache.lookup(cgroup, now),
                    };
                    let i = if labels.id == 0 && may_hold && awaited {
                        HELD
                    } else {
                        // Many cgroups share one label set (every non-pod cgroup has id 0).
                        match pods.get(last_pod as usize) {
                            Some(p) if p.id == labels.id => last_pod,
                            _ => *self.slot.entry(labels.id).or_insert_with(|| {
                                pods.push(labels.clone());
                                pods.len() as u32 - 1
                            }),
                        }
                    };
                    if i != HELD {
                        last_pod = i;
                    }
                    let shard = (labels.id % shards) as usize;
                    memo.put(key, i, shard);
                    (i, shard)
                }
            };
            if i == HELD {
                hold(&mut self.held, batch.stream, record, now);
            } else {
                self.per_shard[shard] += 1;
                processed += 1;
                if again && pods[i as usize].id == 0 {
                    unresolved += 1;
                }
            }
            index.push(i);
        }
        let enriched = Arc::new(Attributed { batch, pods, index });
        if let Some(tap) = self.offers.tap {
            tap.offer(&enriched);
        }
        if plan.traced.is_some() {
            if let Some(spans) = self.offers.spans {
                spans.offer(&enriched);
            }
            self.per_shard.fill(0);
        }
        for (tx, &count) in self.out.iter().zip(&self.per_shard) {
            if count == 0 {
                continue;
            }
            // Only fails once the aggregate worker is gone (shutdown).
            let _ = tx.send(enriched.clone());
        }
        self.stats.processed.fetch_add(processed, Relaxed);
        if !again {
            self.stats
                .held
                .fetch_add(u64::from(enriched.batch.len) - processed, Relaxed);
        }
        self.stats.held_unresolved.fetch_add(unresolved, Relaxed);
    }

    /// Enriches held records again: each goes on under its pod once the metadata is
    /// there, or unattributed once the wait is over, the buffer full, or (`all`) at
    /// shutdown; the rest stay held.
    fn release(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, (b, since))| {
                !b.is_empty() && (all || b.is_full() || now.duration_since(*since) >= RECHECK)
            })
            .map(|(&s, _)| s)
            .collect();
        for stream in due {
            let (builder, _) = self.held.get_mut(&stream).unwrap();
            let full = builder.is_full();
            let batch = builder.take();
            self.enrich(batch, !all && !full, true);
        }
    }
}

/// Keeps a copy of `record` until its pod's metadata comes (the rare path).
#[cold]
#[inline(never)]
fn hold(
    held: &mut FxHashMap<u32, (BatchBuilder, Instant)>,
    stream: u32,
    record: &[u8],
    now: Instant,
) {
    let (builder, since) = held
        .entry(stream)
        .or_insert_with(|| (BatchBuilder::new(stream, HELD_BYTES), now));
    if builder.is_empty() {
        *since = now;
    }
    builder.push(record);
}

/// How often held records are tried again.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// The aggregators of `streams`, keeping those of `old` whose stream is still there
/// (with their series caches).
fn aggregators(
    streams: &[Option<Stream>],
    mut old: Vec<Option<StreamAggregator>>,
) -> Vec<Option<StreamAggregator>> {
    old.resize_with(streams.len(), || None);
    streams
        .iter()
        .zip(old)
        .map(|(s, agg)| {
            let s = s.as_ref()?;
            agg.filter(|a| Arc::ptr_eq(a.plan(), &s.plan))
                .or_else(|| Some(StreamAggregator::new(s.plan.clone(), s.stats.clone())))
        })
        .collect()
}

fn aggregate_worker(
    input: handoff::Receiver<Arc<Attributed>>,
    streams: &StreamTable,
    stats: &StageStats,
    shard: usize,
    shards: usize,
) {
    let mut local = LocalStreams::new(streams);
    let mut aggs = aggregators(&local.streams, Vec::new());
    let shards = shards as u32;
    while let Some(e) = input.recv() {
        if local.refresh() {
            aggs = aggregators(&local.streams, aggs);
        }
        let Some(Some(agg)) = aggs.get_mut(e.batch.stream as usize) else {
            continue;
        };
        // Held records come again later.
        let mine = |pod: &PodLabels| pod.id % shards == shard as u32;
        let n = agg.observe_all(e.records_where(mine));
        agg.flush_stats();
        stats.received.fetch_add(n, Relaxed);
        stats.processed.fetch_add(n, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `records` (cgroup id, count) through a pipeline of `workers` (enrich,
    /// aggregate) and returns the rendered page.
    fn run(workers: (usize, usize), records: &[(u64, usize)], enricher: Arc<Enricher>) -> String {
        const CONFIG: &str = "
rings:
  - name: events
    cgroup_field: cgroup_id
    fields: [{ name: cgroup_id, size: 8 }, { name: value, size: 8 }]
metrics:
  counters:
    - { name: pipeline_test_events_total, help: Events, ring: events }
";
        let p = crate::config::Program::parse(CONFIG, "pipeline test").unwrap();
        let registry = aggregate::Registry::new(Default::default(), "node".into());
        let plan = aggregate::ProgramPlan::compile(
            &p.rings,
            &p.metrics,
            &registry,
            &Default::default(),
            "",
        )
        .unwrap();
        let stream = Stream {
            program: "test".into(),
            plan: Arc::new(plan.streams.into_iter().next().unwrap()),
            stats: Default::default(),
        };
        let (tx, rx) = crossbeam_channel::bounded(4);
        let settings = Settings {
            enrich_workers: workers.0,
            aggregate_workers: workers.1,
            queue_batches: 2,
            metadata_wait: std::time::Duration::ZERO,
        };
        let streams = Arc::new(StreamTable::new(vec![stream]));
        let pipeline = Pipeline::start(rx, streams, enricher, None, None, None, settings).unwrap();
        // Interleaved, in small batches: every batch holds records of several pods.
        let mut left: Vec<(u64, usize)> = records.to_vec();
        let mut batch = BatchBuilder::new(0, 4096);
        while left.iter().any(|(_, n)| *n > 0) {
            for (cgroup, n) in left.iter_mut().filter(|(_, n)| *n > 0) {
                *n -= 1;
                let mut r = [0u8; 16];
                r[..8].copy_from_slice(&cgroup.to_ne_bytes());
                batch.push(&r);
                if batch.is_full() {
                    tx.send(batch.take()).unwrap();
                }
            }
        }
        tx.send(batch.take()).unwrap();
        drop(tx);
        pipeline.join();
        let mut page = aggregate::PageWriter::buffer(aggregate::Format::Text);
        registry.render(&mut page);
        String::from_utf8(page.finish()).unwrap()
    }

    #[test]
    fn every_record_counts_once_under_its_pod_at_any_worker_count() {
        let missing = enrich::CgroupFs::discover().err().map(|e| e.to_string());
        if !test_support::runnable(
            "pipeline every_record_counts_once",
            "a cgroup2 mount",
            missing,
        ) {
            return;
        }
        let root = std::env::temp_dir().join(format!("pipeline-test-{}", std::process::id()));
        let uid = |p: u64| format!("0f8fd5a6-1c3e-4a5b-9b7d-00000000000{p}");
        let mut records = vec![(999, 700)];
        for p in 1..=4u64 {
            std::fs::create_dir_all(root.join(format!("pods/shop_web{p}_{}/app", uid(p)))).unwrap();
            records.push((100 + p, p as usize * 1000));
        }
        // Aggregate workers shard by pod; enrich workers take batches as they come.
        for workers in [(1, 1), (1, 3), (2, 2), (3, 1)] {
            let enricher = Enricher::new(
                enrich::CgroupFs::discover().unwrap(),
                enrich::PodLogs::new(root.join("pods"), root.join("containers")),
            );
            for p in 1..=4u64 {
                enricher.learn(
                    100 + p,
                    &format!("/kubepods/pod{}/{}", uid(p), "a".repeat(64)),
                    false,
                );
            }
            let page = run(workers, &records, Arc::new(enricher));
            for p in 1..=4 {
                let line = page
                    .lines()
                    .find(|l| l.contains(&format!("app_pod=\"web{p}\"")))
                    .unwrap_or_else(|| panic!("no series of pod web{p} with {workers:?}:\n{page}"));
                assert!(
                    line.ends_with(&format!(" {}", p * 1000)),
                    "{workers:?}: {line}"
                );
            }
            let outside = page
                .lines()
                .find(|l| {
                    l.starts_with("ebpf_exporter_pipeline_test_events_total{")
                        && l.contains("app_pod=\"\"")
                })
                .unwrap_or_else(|| panic!("no series outside pods with {workers:?}:\n{page}"));
            assert!(outside.ends_with(" 700"), "{workers:?}: {outside}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_memo_returns_only_what_was_put_under_the_key() {
        let mut memo = Memo::new();
        assert_eq!(memo.get(0), None, "a free entry is no key 0");
        for key in 0..1000u64 {
            memo.put(key, key as u32, (key % 3) as usize);
            assert_eq!(memo.get(key), Some((key as u32, (key % 3) as usize)));
        }
        // Older keys were either replaced (a miss) or are still right: never another's.
        for key in 0..1000u64 {
            if let Some(hit) = memo.get(key) {
                assert_eq!(hit, (key as u32, (key % 3) as usize));
            }
        }
        memo.put(7, HELD, 1);
        assert_eq!(
            memo.get(7),
            Some((HELD, 1)),
            "held records are remembered too"
        );
    }
}
