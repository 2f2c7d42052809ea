//! Can metrics-exporter-prometheus histograms hold the event rate? Records the same
//! latencies into its histogram (through the `metrics` facade API) and into the
//! aggregate stage's bucket counters, side by side, and prints ns per record, memory
//! held between scrapes, and render time.
//!
//! `cargo run --release -p benchmark --bin histogram_backends [events]`

use std::{hint::black_box, sync::Arc, time::Instant};

use aggregate::{StreamAggregator, StreamStats};
use benchmark::{rss_bytes, tcp_connect_stream, tcp_record};
use enrich::PodLabels;
use metrics::{Key, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusBuilder;

fn latency(i: u64) -> u64 {
    // Spread over the exp2 buckets: 500 ns .. ~8 ms.
    500 + (i.wrapping_mul(2654435761) % (1 << 23))
}

fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .map_or(10_000_000, |s| s.parse().unwrap());
    println!("events per backend: {events} (one series, seed exp2 buckets 1e-06..67.108864 s)");

    // metrics-exporter-prometheus: every sample is kept until a render/upkeep drains it.
    let buckets: Vec<f64> = (0..=26).map(|i| 1e-6 * 2f64.powi(i)).collect();
    let recorder = PrometheusBuilder::new()
        .set_buckets(&buckets)
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let meta = Metadata::new("bench", metrics::Level::INFO, None);
    let hist = recorder.register_histogram(&Key::from_name("tcp_connect_latency_seconds"), &meta);
    let rss0 = rss_bytes();
    let t = Instant::now();
    for i in 0..events {
        hist.record(latency(i) as f64 * 1e-9);
    }
    let record_ns = t.elapsed().as_nanos() as f64 / events as f64;
    let held = rss_bytes().saturating_sub(rss0);
    let per_record = held as f64 / events as f64;
    let t = Instant::now();
    let text = handle.render();
    let render_ms = t.elapsed().as_secs_f64() * 1e3;
    black_box(text);
    println!(
        "metrics-exporter-prometheus histogram: {record_ns:.1} ns/record, {:.1} MiB held until scrape ({:.1} bytes/record), render {render_ms:.1} ms",
        held as f64 / (1 << 20) as f64,
        per_record
    );

    // The aggregate stage: fixed atomic bucket counters per series, without and with
    // native buckets (schema 3) counted beside the classic ones.
    for native in [false, true] {
        let (registry, plan) = tcp_connect_stream(native);
        let mut agg = StreamAggregator::new(plan, Arc::new(StreamStats::default()));
        let pod = std::sync::Arc::new(PodLabels {
            id: 1,
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            extra: Box::default(),
        });
        let rss0 = rss_bytes();
        let t = Instant::now();
        for i in 0..events {
            agg.observe(black_box(&tcp_record(7, latency(i), 127)), &pod);
        }
        let record_ns = t.elapsed().as_nanos() as f64 / events as f64;
        let held = rss_bytes().saturating_sub(rss0);
        let t = Instant::now();
        let mut page = aggregate::PageWriter::buffer(aggregate::Format::Protobuf);
        registry.render(&mut page);
        black_box(page.finish());
        let render_ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "aggregate bucket counters{}: {record_ns:.1} ns/record (decode + key + bucket), {:.1} MiB held, protobuf render {render_ms:.3} ms",
            if native { " + native" } else { "          " },
            held as f64 / (1 << 20) as f64
        );
    }
    println!(
        "at 2M events/s and a 15 s scrape interval the facade histogram would hold {:.0} MiB between scrapes",
        2e6 * 15.0 * per_record / (1 << 20) as f64
    );
}
