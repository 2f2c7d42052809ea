//! The stages after ingest, each with its own workers and bounded queues of batches:
//! ring readers → queue → enrich workers → one queue per aggregate worker → aggregate
//! workers.
//!
//! Enrich workers resolve every record's cgroup id to its pod label set (through a
//! per-worker cache: no lock, no syscall on a hit) and broadcast the batch with a
//! per-record pod index, shared (no copy), to the aggregate workers. Aggregation is
//! sharded by pod: worker `i` takes the records whose pod id modulo the worker count is
//! `i`, so a pod's series are always updated by the same worker. Enrich workers wait
//! for a full aggregate queue (work already done is never thrown away); the wait backs
//! up into the ingest queue, where readers drop and count what does not fit.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::Instant,
};

use aggregate::{StreamAggregator, StreamPlan, StreamStats};
use crossbeam_channel::{Receiver, Sender};
use enrich::{Cache, Enricher, PodLabels};
use ingest::Batch;
use rustc_hash::FxHashMap;

/// One stream (ring) as the workers see it.
pub struct Stream {
    /// Program the ring belongs to.
    pub program: String,
    /// Compiled layout and metrics.
    pub plan: Arc<StreamPlan>,
    /// Aggregation counters, shared by workers.
    pub stats: Arc<StreamStats>,
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
}

/// The cgroup creation/removal stream, shared by enrich workers. Each worker drains it
/// before a batch: a container's cgroup is created before any of its processes run, so
/// its path is known before its first record is enriched, and kept after removal.
pub type CgroupEventsHandle = Arc<std::sync::Mutex<ingest::CgroupEvents>>;

fn learn_cgroups(events: Option<&CgroupEventsHandle>, enricher: &Enricher) {
    if let Some(events) = events {
        let mut events = events.lock().unwrap_or_else(|e| e.into_inner());
        events.drain(|id, path, removed| enricher.learn(id, path, removed));
    }
}

/// A batch with each record's pod.
pub struct Enriched {
    batch: Batch,
    /// Distinct label sets of the batch.
    pods: Vec<Arc<PodLabels>>,
    /// Per record, its index into `pods`.
    index: Vec<u32>,
}

/// Running stages.
pub struct Pipeline {
    /// Enrich counters.
    pub enrich: Arc<StageStats>,
    /// Aggregate counters.
    pub aggregate: Arc<StageStats>,
    enrich_queue: Receiver<Batch>,
    aggregate_queues: Vec<Sender<Arc<Enriched>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the workers reading batches from `input` (which ingest fills).
    pub fn start(
        input: Receiver<Batch>,
        streams: Arc<Vec<Stream>>,
        enricher: Arc<Enricher>,
        cgroup_events: Option<CgroupEventsHandle>,
        tap: Option<Arc<tap::Tap>>,
        settings: Settings,
    ) -> std::io::Result<Self> {
        let enrich = Arc::new(StageStats::default());
        let aggregate = Arc::new(StageStats::default());
        let shards = settings.aggregate_workers.max(1);
        let mut threads = Vec::new();
        let mut aggregate_queues = Vec::new();
        for shard in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(settings.queue_batches.max(1));
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
            let (enricher, tap, events) = (enricher.clone(), tap.clone(), cgroup_events.clone());
            let worker = move || {
                enrich_worker(
                    input,
                    &streams,
                    Cache::new(enricher),
                    events.as_ref(),
                    &out,
                    tap.as_deref(),
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
            self.aggregate_queues.iter().map(Sender::len).collect(),
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

fn enrich_worker(
    input: Receiver<Batch>,
    streams: &[Stream],
    mut cache: Cache,
    cgroup_events: Option<&CgroupEventsHandle>,
    out: &[Sender<Arc<Enriched>>],
    tap: Option<&tap::Tap>,
    stats: &StageStats,
) {
    let shards = out.len() as u32;
    let mut slot: FxHashMap<u32, u32> = FxHashMap::default();
    let mut per_shard = vec![0u64; out.len()];
    loop {
        // Idle rings still get their cgroup events learned (the ring is bounded).
        let batch = match input.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(b) => b,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                learn_cgroups(cgroup_events, cache.enricher());
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        learn_cgroups(cgroup_events, cache.enricher());
        let n = u64::from(batch.len);
        stats.received.fetch_add(n, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        let Some(stream) = streams.get(batch.stream as usize) else {
            continue;
        };
        let now = Instant::now();
        let mut pods: Vec<Arc<PodLabels>> = Vec::new();
        let mut index = Vec::with_capacity(batch.len as usize);
        slot.clear();
        per_shard.fill(0);
        // Runs of records from one cgroup are the common case: skip the lookups.
        let mut last: Option<(u64, u32, usize)> = None;
        let mut last_pod = 0u32;
        for record in batch.records() {
            let cgroup = stream.plan.cgroup_id(record);
            let (i, shard) = match last {
                Some((c, i, shard)) if c == cgroup => (i, shard),
                _ => {
                    let labels = cache.get(cgroup, now);
                    // Many cgroups share one label set (every non-pod cgroup has id 0).
                    let i = match pods.get(last_pod as usize) {
                        Some(p) if p.id == labels.id => last_pod,
                        _ => *slot.entry(labels.id).or_insert_with(|| {
                            pods.push(labels.clone());
                            pods.len() as u32 - 1
                        }),
                    };
                    last_pod = i;
                    let shard = (labels.id % shards) as usize;
                    last = Some((cgroup, i, shard));
                    (i, shard)
                }
            };
            per_shard[shard] += 1;
            index.push(i);
        }
        if let Some(tap) = tap {
            tap.offer(&batch);
        }
        let enriched = Arc::new(Enriched { batch, pods, index });
        for (tx, &count) in out.iter().zip(&per_shard) {
            if count == 0 {
                continue;
            }
            // Only fails once the aggregate worker is gone (shutdown).
            let _ = tx.send(enriched.clone());
        }
        stats.processed.fetch_add(n, Relaxed);
        stats
            .cache_hits
            .fetch_add(std::mem::take(&mut cache.hits), Relaxed);
        stats
            .cache_misses
            .fetch_add(std::mem::take(&mut cache.misses), Relaxed);
    }
}

fn aggregate_worker(
    input: Receiver<Arc<Enriched>>,
    streams: &[Stream],
    stats: &StageStats,
    shard: usize,
    shards: usize,
) {
    let mut aggs: Vec<StreamAggregator> = streams
        .iter()
        .map(|s| StreamAggregator::new(s.plan.clone(), s.stats.clone()))
        .collect();
    let shards = shards as u32;
    for e in input {
        let Some(agg) = aggs.get_mut(e.batch.stream as usize) else {
            continue;
        };
        let mut n = 0;
        for (record, &i) in e.batch.records().zip(&e.index) {
            let pod = &e.pods[i as usize];
            if shards > 1 && pod.id % shards != shard as u32 {
                continue;
            }
            agg.observe(record, pod);
            n += 1;
        }
        agg.flush_stats();
        stats.received.fetch_add(n, Relaxed);
        stats.processed.fetch_add(n, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
    }
}
