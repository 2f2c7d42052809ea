//! The exporter's own metrics (`ebpf_exporter_*` about rings, queues, enrichment),
//! published through the `metrics` facade from the stages' counters at scrape time.

use std::sync::{atomic::Ordering::Relaxed, Arc, Mutex};

use aggregate::Registry;
use anyhow::{Context, Result};
use ingest::{LoadedObject, RingStats};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::pipeline::{EnrichStats, Stream};

/// Self-metrics: the recorder handle and the counters it reads.
pub struct Telemetry {
    handle: PrometheusHandle,
    rings: Mutex<Vec<(String, String, Arc<RingStats>)>>,
}

impl Telemetry {
    /// Installs the global recorder and describes every self-metric.
    pub fn install() -> Result<Self> {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .context("installing the metrics recorder")?;
        describe_gauge!("ebpf_exporter_build_info", "Build of the exporter, value 1");
        describe_counter!("ebpf_exporter_ring_records_total", "Records read from a ring buffer");
        describe_counter!("ebpf_exporter_ring_reserve_failures_total", "Records a program could not write because its ring was full, summed over CPUs");
        describe_counter!("ebpf_exporter_ingest_queue_dropped_records_total", "Records dropped because the queue to the aggregate stage was full");
        describe_counter!("ebpf_exporter_aggregate_records_total", "Records aggregated into metrics");
        describe_counter!("ebpf_exporter_aggregate_malformed_records_total", "Records shorter than their configured layout, not aggregated");
        describe_counter!("ebpf_exporter_decoder_failures_total", "Events left out of a metric because a label decoder rejected or dropped their value");
        describe_counter!("ebpf_exporter_enrich_cache_hits_total", "cgroup lookups answered by a worker's cache");
        describe_counter!("ebpf_exporter_enrich_cache_misses_total", "cgroup lookups resolved through cgroupfs and pod metadata");
        gauge!("ebpf_exporter_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(Self {
            handle,
            rings: Mutex::default(),
        })
    }

    /// Registers a ring reader's counters.
    pub fn add_ring(&self, program: &str, ring: &str, stats: Arc<RingStats>) {
        self.rings.lock().unwrap().push((program.into(), ring.into(), stats));
    }

    /// Copies the stages' counters into the recorder.
    pub fn update(&self, objects: &[LoadedObject], streams: &[Stream], enrich: &EnrichStats, registry: &Registry) {
        for (program, ring, s) in self.rings.lock().unwrap().iter() {
            let labels = [("program", program.clone()), ("ring", ring.clone())];
            counter!("ebpf_exporter_ring_records_total", &labels).absolute(s.records.load(Relaxed));
            counter!("ebpf_exporter_ingest_queue_dropped_records_total", &labels).absolute(s.queue_dropped.load(Relaxed));
        }
        for o in objects {
            counter!("ebpf_exporter_ring_reserve_failures_total", "program" => o.name().to_string()).absolute(o.ring_drops());
        }
        for s in streams {
            let labels = [("program", s.program.clone()), ("ring", s.plan.ring.clone())];
            counter!("ebpf_exporter_aggregate_records_total", &labels).absolute(s.stats.records.load(Relaxed));
            counter!("ebpf_exporter_aggregate_malformed_records_total", &labels).absolute(s.stats.malformed.load(Relaxed));
        }
        for (metric, n) in registry.decode_failures() {
            counter!("ebpf_exporter_decoder_failures_total", "metric" => metric).absolute(n);
        }
        counter!("ebpf_exporter_enrich_cache_hits_total").absolute(enrich.hits.load(Relaxed));
        counter!("ebpf_exporter_enrich_cache_misses_total").absolute(enrich.misses.load(Relaxed));
    }

    /// Text exposition of the self-metrics.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}
