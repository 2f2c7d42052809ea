//! The exporter's own metrics (`ebpf_exporter_*` about configs, programs, rings,
//! queues, decoders and enrichment), published through the `metrics` facade from the
//! stages' counters at scrape time.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use parking_lot::Mutex;

use aggregate::Registry;
use anyhow::{Context, Result};
use ingest::RingStats;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use kube_ebpf_exporter::pipeline::{Pipeline, Stream};

use crate::programs::{Attached, Failure};

/// Self-metrics: the recorder handle and the counters it reads.
pub struct Telemetry {
    handle: PrometheusHandle,
    rings: Mutex<Vec<(String, String, Arc<RingStats>)>>,
}

impl Telemetry {
    /// Installs the global recorder and describes every self-metric.
    // Long: one description per self-metric.
    pub fn install() -> Result<Self> {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .context("installing the metrics recorder")?;
        describe_gauge!("ebpf_exporter_build_info", "Build of the exporter, value 1");
        describe_counter!(
            crate::web::REFUSED,
            "HTTP connections and requests refused, by reason (evicted: closed to make room at web.max_connections, the oldest connection with no request let in; connections: beyond web.max_connections with every connection let in; header_timeout: no full header within web.header_timeout_seconds on a connection with no request let in; max_requests: 503 beyond web.max_requests scrapes; max_subscribers: 429 beyond tap.max_subscribers; tls: failed TLS handshakes; unauthorized: 401 without valid basic auth; auth_busy: 503 with more password checks queued than web_auth allows)"
        );
        describe_counter!(
            kube_ebpf_exporter::web_config_watch::RELOADS,
            "Times --web.config.file (or a file it names) changed and was parsed again, by result (a failure keeps the last good config)"
        );
        describe_counter!(
            "ebpf_exporter_spans_exported_total",
            "Spans of tracing: configs the OTLP collector accepted"
        );
        describe_counter!(
            "ebpf_exporter_spans_dropped_total",
            "Span records not exported, by reason (queue_full: the span stage's queue was full, records dropped without waiting; export_failed: spans of an export the collector did not accept, or that timed out; decode: records too short or whose labels did not decode)"
        );
        describe_gauge!(
            "ebpf_exporter_config_last_reload_successful",
            "Whether the last config reload (or the start) brought up every config"
        );
        describe_gauge!(
            "ebpf_exporter_config_last_reload_success_timestamp_seconds",
            "When the last fully successful config reload (or the start) finished"
        );
        describe_gauge!(
            "ebpf_exporter_enabled_configs",
            "The set of enabled configs"
        );
        describe_gauge!(
            "ebpf_exporter_config_failed",
            "Configs that could not start, by the stage that failed (config, load, attach) and the reason (config, object, verifier, perf_event_paranoid, capability, lockdown, memlock, missing_hook, kernel)"
        );
        describe_gauge!(
            "ebpf_exporter_ebpf_program_info",
            "Info about ebpf programs"
        );
        describe_gauge!(
            "ebpf_exporter_metadata_source_up",
            "Whether a pod metadata source's last attempt to learn pods worked (api: list or watch; cri: listing; logs: the pod log directory exists)"
        );
        describe_gauge!(
            "ebpf_exporter_ebpf_program_attached",
            "Whether a program is attached"
        );
        describe_gauge!(
            "ebpf_exporter_ebpf_program_run_time_seconds",
            "How long the program has been executing (kernel.bpf_stats_enabled=1)"
        );
        describe_counter!(
            "ebpf_exporter_ebpf_program_run_count_total",
            "How many times the program has run (kernel.bpf_stats_enabled=1)"
        );
        describe_counter!(
            "ebpf_exporter_ebpf_program_recursion_misses_total",
            "Runs the kernel skipped because the program was already running on that CPU: events the program never saw (5.12+)"
        );
        describe_counter!(
            "ebpf_exporter_ring_records_total",
            "Records read from a ring buffer or perf event array"
        );
        describe_counter!(
            "ebpf_exporter_ring_reserve_failures_total",
            "Records a program could not write because its ring was full (or, in a batched ring, its CPU's staging was held by a record it interrupted), summed over CPUs"
        );
        describe_gauge!(
            "ebpf_exporter_ring_fill_ratio",
            "The fullest a ring buffer (or a CPU's perf buffer) was at a drain since the previous scrape: near 1, a burst will be lost"
        );
        describe_counter!(
            "ebpf_exporter_ring_lost_records_total",
            "Records the kernel reports lost because a perf buffer was full"
        );
        describe_counter!(
            "ebpf_exporter_ring_flush_errors_total",
            "Times a batched ring's per-CPU staged records could not be written out on the timer (they wait for a full batch)"
        );
        describe_counter!(
            "ebpf_exporter_ingest_queue_dropped_records_total",
            "Records dropped because the queue to the enrich stage was full"
        );
        describe_counter!(
            "ebpf_exporter_aggregate_records_total",
            "Records aggregated into metrics"
        );
        describe_counter!(
            "ebpf_exporter_aggregate_malformed_records_total",
            "Records shorter than their configured layout, not aggregated"
        );
        describe_counter!(
            "ebpf_exporter_decoder_errors_total",
            "Events or map entries left out because a label's decoder rejected its bytes"
        );
        describe_counter!(
            "ebpf_exporter_decoder_filtered_total",
            "Events left out of a metric by a filter decoder (regexp)"
        );
        describe_counter!(
            "ebpf_exporter_table_malformed_keys_total",
            "Map entries whose key size does not match the metric's labels"
        );
        describe_gauge!(
            "ebpf_exporter_table_fill_ratio",
            "Keys in a table's hash map against its max_entries, at the last scrape: at 1 new keys are not counted (an LRU map evicts old ones)"
        );
        describe_counter!(
            "ebpf_exporter_table_read_errors_total",
            "Failed reads of a map at scrape time"
        );
        describe_counter!(
            "ebpf_exporter_enrich_cache_hits_total",
            "cgroup lookups answered by a worker's cache"
        );
        describe_counter!(
            "ebpf_exporter_enrich_cache_misses_total",
            "cgroup lookups resolved through cgroupfs and pod metadata"
        );
        describe_counter!(
            "ebpf_exporter_enrich_held_records_total",
            "Records held back for their pod's metadata (pod cgroup seen before the pod)"
        );
        describe_counter!(
            "ebpf_exporter_enrich_held_unresolved_records_total",
            "Held records that went on unattributed: the wait ended without the pod's metadata"
        );
        describe_gauge!(
            "ebpf_exporter_tap_subscribers",
            "Event tap subscribers (HTTP streams and the file sink's configs)"
        );
        describe_counter!(
            "ebpf_exporter_tap_events_total",
            "Events sent to tap subscribers"
        );
        describe_counter!(
            "ebpf_exporter_tap_dropped_events_total",
            "Tap events not delivered: a slow subscriber's full queue, a subscriber's rate, or the tap's own full queue; metrics never wait for the tap"
        );
        describe_counter!(
            "ebpf_exporter_stage_received_records_total",
            "Records a stage (enrich, aggregate) took from its input queue"
        );
        describe_counter!(
            "ebpf_exporter_stage_processed_records_total",
            "Records a stage finished with"
        );
        describe_counter!(
            "ebpf_exporter_stage_batches_total",
            "Batches a stage took (records per batch = received / batches)"
        );
        describe_gauge!(
            "ebpf_exporter_queue_depth_batches",
            "Batches waiting in a queue between stages"
        );
        describe_counter!(
            "ebpf_exporter_ring_samples_total",
            "Ring samples read: one a record, or one a batch of staged records in a batched ring (records per sample = records / samples)"
        );
        describe_counter!(
            "ebpf_exporter_ring_batches_total",
            "Batches a ring reader handed on (records per batch = records / batches)"
        );
        describe_counter!(
            "ebpf_exporter_series_overflow_events_total",
            "Events counted in a metric's __overflow__ series: it reached its series limit"
        );
        gauge!("ebpf_exporter_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(Self {
            handle,
            rings: Mutex::default(),
        })
    }

    /// Registers a ring reader's counters.
    pub fn add_ring(&self, program: &str, ring: &str, stats: Arc<RingStats>) {
        self.rings.lock().push((program.into(), ring.into(), stats));
    }

    /// Forgets the ring readers of a config that a reload removed or replaced, and
    /// marks it not enabled.
    pub fn stopped(&self, program: &str) {
        self.rings.lock().retain(|(p, _, _)| p != program);
        gauge!("ebpf_exporter_enabled_configs", "name" => program.to_string()).set(0.0);
    }

    /// The outcome of the last config reload (start-up counts as one), as Prometheus
    /// exports its own.
    pub fn reloaded(&self, ok: bool) {
        gauge!("ebpf_exporter_config_last_reload_successful").set(if ok { 1.0 } else { 0.0 });
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            gauge!("ebpf_exporter_config_last_reload_success_timestamp_seconds").set(now);
        }
    }

    /// How full a table's hash map was at this scrape's read.
    pub fn table_fill(&self, config: &str, map: &str, fill: f64) {
        gauge!("ebpf_exporter_table_fill_ratio", "config" => config.to_string(), "map" => map.to_string()).set(fill);
    }

    /// Counts a failed map read.
    pub fn table_read_error(&self, config: &str, map: &str) {
        counter!("ebpf_exporter_table_read_errors_total", "config" => config.to_string(), "map" => map.to_string()).increment(1);
    }

    /// Records each pod metadata source's health.
    pub fn sources(&self, health: &[(&'static str, bool)]) {
        for &(source, up) in health {
            gauge!("ebpf_exporter_metadata_source_up", "source" => source).set(if up {
                1.0
            } else {
                0.0
            });
        }
    }

    /// Copies the stages' counters into the recorder.
    pub fn update(
        &self,
        running: &[Attached],
        failures: &[Failure],
        streams: &[Stream],
        pipeline: &Pipeline,
        registry: &Registry,
        tap: Option<&tap::Tap>,
    ) {
        update_tap(tap);
        self.update_rings();
        update_configs(running, failures);
        update_streams(streams, registry);
        update_pipeline(pipeline);
    }

    fn update_rings(&self) {
        for (program, ring, s) in self.rings.lock().iter() {
            let labels = [("program", program.clone()), ("ring", ring.clone())];
            counter!("ebpf_exporter_ring_records_total", &labels).absolute(s.records.load(Relaxed));
            counter!("ebpf_exporter_ring_samples_total", &labels).absolute(s.samples.load(Relaxed));
            counter!("ebpf_exporter_ring_batches_total", &labels).absolute(s.batches.load(Relaxed));
            counter!("ebpf_exporter_ring_lost_records_total", &labels)
                .absolute(s.kernel_lost.load(Relaxed));
            counter!("ebpf_exporter_ingest_queue_dropped_records_total", &labels)
                .absolute(s.queue_dropped.load(Relaxed));
            counter!("ebpf_exporter_ring_flush_errors_total", &labels)
                .absolute(s.flush_errors.load(Relaxed));
            gauge!("ebpf_exporter_ring_fill_ratio", &labels).set(s.take_fill_peak());
        }
    }

    /// Text exposition of the self-metrics.
    pub fn render(&self) -> String {
        // Cumulative run time is a counter (as the reference exporter exports it), but
        // the facade's counters hold integers: it is set as a gauge and typed here.
        self.handle.render().replacen(
            "# TYPE ebpf_exporter_ebpf_program_run_time_seconds gauge",
            "# TYPE ebpf_exporter_ebpf_program_run_time_seconds counter",
            1,
        )
    }
}

/// The span stage's counters.
pub fn update_spans(st: &spans::SpanStats) {
    counter!("ebpf_exporter_spans_exported_total").absolute(st.exported.load(Relaxed));
    for (reason, n) in [
        ("queue_full", &st.dropped_queue),
        ("export_failed", &st.dropped_export),
        ("decode", &st.failed_decode),
    ] {
        counter!("ebpf_exporter_spans_dropped_total", "reason" => reason).absolute(n.load(Relaxed));
    }
}

fn update_tap(tap: Option<&tap::Tap>) {
    let Some(tap) = tap else {
        return;
    };
    let st = tap.stats();
    gauge!("ebpf_exporter_tap_subscribers").set(tap.subscribers() as f64);
    counter!("ebpf_exporter_tap_events_total").absolute(st.events.load(Relaxed));
    for (reason, n) in [
        ("slow_subscriber", &st.dropped_slow),
        ("rate", &st.dropped_rate),
        ("tap_queue_full", &st.dropped_input),
    ] {
        counter!("ebpf_exporter_tap_dropped_events_total", "reason" => reason)
            .absolute(n.load(Relaxed));
    }
}

fn update_configs(running: &[Attached], failures: &[Failure]) {
    let stats_enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|v| v.trim() == "1");
    for r in running {
        gauge!("ebpf_exporter_enabled_configs", "name" => r.name.clone()).set(1.0);
        counter!("ebpf_exporter_ring_reserve_failures_total", "program" => r.name.clone())
            .absolute(r.object.ring_drops());
        for p in r.object.program_stats() {
            let id = p.id.to_string();
            gauge!("ebpf_exporter_ebpf_program_info", "config" => r.name.clone(), "program" => p.name, "tag" => p.tag, "id" => id.clone()).set(1.0);
            gauge!("ebpf_exporter_ebpf_program_attached", "id" => id.clone()).set(1.0);
            counter!("ebpf_exporter_ebpf_program_recursion_misses_total", "id" => id.clone())
                .absolute(p.recursion_misses);
            if stats_enabled {
                gauge!("ebpf_exporter_ebpf_program_run_time_seconds", "id" => id.clone())
                    .set(p.run_time.as_secs_f64());
                counter!("ebpf_exporter_ebpf_program_run_count_total", "id" => id)
                    .absolute(p.run_count);
            }
        }
        for t in &r.plan.tables {
            for (label, n) in t.decode_errors() {
                counter!("ebpf_exporter_decoder_errors_total", "metric" => t.name().to_string(), "label" => label.to_string()).absolute(n);
            }
            counter!("ebpf_exporter_table_malformed_keys_total", "metric" => t.name().to_string())
                .absolute(t.malformed());
        }
    }
    for f in failures {
        gauge!("ebpf_exporter_config_failed", "name" => f.name.clone(), "stage" => f.stage.as_str(), "reason" => f.reason).set(1.0);
    }
}

fn update_streams(streams: &[Stream], registry: &Registry) {
    for s in streams {
        let labels = [
            ("program", s.program.clone()),
            ("ring", s.plan.ring.clone()),
        ];
        counter!("ebpf_exporter_aggregate_records_total", &labels)
            .absolute(s.stats.records.load(Relaxed));
        counter!("ebpf_exporter_aggregate_malformed_records_total", &labels)
            .absolute(s.stats.malformed.load(Relaxed));
    }
    for f in registry.decode_failures() {
        for (label, n) in f.invalid {
            counter!("ebpf_exporter_decoder_errors_total", "metric" => f.metric.clone(), "label" => label).absolute(n);
        }
        counter!("ebpf_exporter_series_overflow_events_total", "metric" => f.metric.clone())
            .absolute(f.overflowed);
        counter!("ebpf_exporter_decoder_filtered_total", "metric" => f.metric).absolute(f.filtered);
    }
}

fn update_pipeline(pipeline: &Pipeline) {
    counter!("ebpf_exporter_enrich_cache_hits_total")
        .absolute(pipeline.enrich.cache_hits.load(Relaxed));
    counter!("ebpf_exporter_enrich_cache_misses_total")
        .absolute(pipeline.enrich.cache_misses.load(Relaxed));
    counter!("ebpf_exporter_enrich_held_records_total")
        .absolute(pipeline.enrich.held.load(Relaxed));
    counter!("ebpf_exporter_enrich_held_unresolved_records_total")
        .absolute(pipeline.enrich.held_unresolved.load(Relaxed));
    for (stage, st) in [
        ("enrich", &pipeline.enrich),
        ("aggregate", &pipeline.aggregate),
    ] {
        counter!("ebpf_exporter_stage_received_records_total", "stage" => stage)
            .absolute(st.received.load(Relaxed));
        counter!("ebpf_exporter_stage_processed_records_total", "stage" => stage)
            .absolute(st.processed.load(Relaxed));
        counter!("ebpf_exporter_stage_batches_total", "stage" => stage)
            .absolute(st.batches.load(Relaxed));
    }
    let (enrich_depth, aggregate_depths) = pipeline.queue_depths();
    gauge!("ebpf_exporter_queue_depth_batches", "queue" => "enrich").set(enrich_depth as f64);
    for (i, d) in aggregate_depths.into_iter().enumerate() {
        gauge!("ebpf_exporter_queue_depth_batches", "queue" => format!("aggregate-{i}"))
            .set(d as f64);
    }
}
