//! Wires the stages: ring readers (ingest) → queue → workers that enrich and aggregate.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Instant,
};

use aggregate::{Registry, StreamAggregator, StreamPlan, StreamStats};
use crossbeam_channel::Receiver;
use enrich::{Cache, Enricher};
use ingest::Batch;

/// One stream (ring) as the workers see it.
pub struct Stream {
    /// Program the ring belongs to.
    pub program: String,
    /// Compiled layout and metrics.
    pub plan: Arc<StreamPlan>,
    /// Aggregation counters, shared by workers.
    pub stats: Arc<StreamStats>,
}

/// Enrich cache counters, summed over workers.
#[derive(Debug, Default)]
pub struct EnrichStats {
    /// Lookups answered by a worker's cache.
    pub hits: AtomicU64,
    /// Lookups resolved through the cgroup filesystem and pod metadata.
    pub misses: AtomicU64,
}

/// Runs one worker until every sender is gone: each batch is enriched and aggregated
/// record by record, and counters are published once per batch.
pub fn run_worker(
    rx: Receiver<Batch>,
    streams: Arc<Vec<Stream>>,
    registry: Arc<Registry>,
    enricher: Arc<Enricher>,
    enrich_stats: Arc<EnrichStats>,
    tap: Option<Arc<tap::Tap>>,
) {
    let mut cache = Cache::new(enricher);
    let mut aggs: Vec<StreamAggregator> = streams
        .iter()
        .map(|s| StreamAggregator::new(s.plan.clone(), &registry, s.stats.clone()))
        .collect();
    for batch in rx {
        let Some(agg) = aggs.get_mut(batch.stream as usize) else {
            continue;
        };
        let now = Instant::now();
        for record in batch.records() {
            let labels = cache.get(agg.plan().cgroup_id(record), now);
            agg.observe(record, labels);
        }
        agg.flush_stats();
        if let Some(tap) = &tap {
            tap.offer(&batch);
        }
        enrich_stats
            .hits
            .fetch_add(std::mem::take(&mut cache.hits), Relaxed);
        enrich_stats
            .misses
            .fetch_add(std::mem::take(&mut cache.misses), Relaxed);
    }
}
