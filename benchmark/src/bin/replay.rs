//! Replay: synthetic records through the enrich and aggregate stages (the same
//! pipeline the exporter runs, without the kernel), for 1, 2 and 4 workers per stage
//! and 1, 1,000 and 100,000 active series. Prints events/s, and events/s per core
//! (events over the process's CPU time).
//!
//! `cargo run --release -p benchmark --bin replay [events per run] [workers,...]
//! [series,...]`, or
//! `... --bin replay memory <series>` for the memory that many active series take, or
//! `... --bin replay scaling [rounds] [events]` for 1 to 4 workers in turn, as medians
//! against the best (run it under `taskset -c 0` too: workers beyond the CPUs).

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use aggregate::{
    config::{MetricsConfig, RingConfig},
    decoder::Context,
    KubeLabelNames, ProgramPlan, Registry, StreamStats,
};
use enrich::{CgroupFs, Enricher, PodLogs};
use ingest::{Batch, BatchBuilder};
use kube_ebpf_exporter::pipeline::{Pipeline, Settings, Stream, StreamTable};

const CONFIG: &str = r#"
rings:
  - name: events
    cgroup_field: cgroup_id
    fields:
      - { name: cgroup_id, size: 8 }
      - { name: latency_ns, size: 8 }
      - { name: key, size: 4 }
      - { name: pad, size: 4 }
metrics:
  histograms:
    - name: replay_latency_seconds
      help: Replayed latencies
      ring: events
      value: { field: latency_ns, scale: 1e-9 }
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 26
      bucket_multiplier: 1e-06
      labels:
        - { name: key, field: key }
"#;

#[derive(serde::Deserialize)]
struct Program {
    rings: Vec<RingConfig>,
    metrics: MetricsConfig,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Batches of 24-byte records spread over `series` keys and 16 cgroups.
fn batches(series: u32, records: u64) -> Vec<Batch> {
    let mut b = BatchBuilder::new(0, 64 * 1024);
    let mut out = Vec::new();
    for i in 0..records {
        let mut r = [0u8; 24];
        r[..8].copy_from_slice(&(1000 + i % 16).to_ne_bytes());
        r[8..16].copy_from_slice(&(500 + (i.wrapping_mul(2654435761) % (1 << 23))).to_ne_bytes());
        r[16..20].copy_from_slice(&((i as u32).wrapping_mul(2654435761) % series).to_ne_bytes());
        b.push(&r);
        if b.is_full() {
            out.push(b.take());
        }
    }
    if !b.is_empty() {
        out.push(b.take());
    }
    out
}

fn run(workers: usize, series: u32, events: u64, enricher: &Arc<Enricher>) -> (f64, f64) {
    let p: Program = serde_yaml_ng::from_str(CONFIG).unwrap();
    let registry = Arc::new(Registry::new(KubeLabelNames::default(), "bench".into()));
    let plan =
        ProgramPlan::compile(&p.rings, &p.metrics, &registry, &Context::default(), "").unwrap();
    let streams = Arc::new(vec![Stream {
        program: "replay".into(),
        plan: Arc::new(plan.streams.into_iter().next().unwrap()),
        stats: Arc::new(StreamStats::default()),
    }]);
    // One pass creates every series; the timed passes replay the same batches.
    let warm = batches(series, u64::from(series).max(1_000) * 2);
    let timed = batches(series, 2_000_000);
    let per_pass: u64 = timed.iter().map(|b| u64::from(b.len)).sum();
    let passes = events.div_ceil(per_pass);
    let (tx, rx) = crossbeam_channel::bounded(64);
    let settings = Settings {
        enrich_workers: workers,
        aggregate_workers: workers,
        queue_batches: 64,
        metadata_wait: std::time::Duration::from_secs(2),
    };
    let pipeline = Pipeline::start(
        rx,
        Arc::new(StreamTable::new(streams.to_vec())),
        enricher.clone(),
        None,
        None,
        None,
        settings,
    )
    .unwrap();
    let warm_records: u64 = warm.iter().map(|b| u64::from(b.len)).sum();
    for b in warm {
        tx.send(b).unwrap();
    }
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while streams[0].stats.records.load(Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "stalled at {} of {n} records",
                streams[0].stats.records.load(Relaxed)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    wait_for(warm_records);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    for _ in 0..passes {
        for b in &timed {
            tx.send(b.clone()).unwrap();
        }
    }
    wait_for(warm_records + passes * per_pass);
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    drop(tx);
    pipeline.join();
    let n = (passes * per_pass) as f64;
    assert_eq!(streams[0].stats.malformed.load(Relaxed), 0);
    (n / wall, n / cpu)
}

/// RSS taken by `series` active series: the shared registry plus one worker's caches.
fn memory(series: u32) {
    let p: Program = serde_yaml_ng::from_str(CONFIG).unwrap();
    let registry = Arc::new(Registry::new(KubeLabelNames::default(), "bench".into()));
    let plan =
        ProgramPlan::compile(&p.rings, &p.metrics, &registry, &Context::default(), "").unwrap();
    let plan = Arc::new(plan.streams.into_iter().next().unwrap());
    let pod = Arc::new(enrich::PodLabels {
        id: 7,
        namespace: "shop".into(),
        pod: "web-6b7f9c-x2v4q".into(),
        container: "nginx".into(),
        extra: Box::default(),
    });
    let before = benchmark::rss_bytes();
    let mut agg = aggregate::StreamAggregator::new(plan, Arc::new(StreamStats::default()));
    for key in 0..series {
        let mut r = [0u8; 24];
        r[8..16].copy_from_slice(&1000u64.to_ne_bytes());
        r[16..20].copy_from_slice(&key.to_ne_bytes());
        agg.observe(&r, &pod);
    }
    let after = benchmark::rss_bytes();
    let mut page_bytes = 0;
    let mut count = |chunk: Vec<u8>| page_bytes += chunk.len();
    let mut sink = aggregate::PageWriter::chunked(aggregate::Format::Text, 256 * 1024, &mut count);
    registry.render(&mut sink);
    let rest = sink.finish().len();
    let page_len = page_bytes + rest;
    println!(
        "memory: {series} active histogram series (27 buckets, 5 labels): +{:.1} MiB RSS ({:.0} bytes per series); exposition {:.1} MiB",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / f64::from(series),
        page_len as f64 / (1 << 20) as f64
    );
}

/// Wall-clock rate at 1,000 series for 1 to 4 workers per stage, the counts taken in
/// turn each round. Each count's rate is taken against one worker's in the same round
/// (back to back, so the VM's slow and fast spells cancel), the median of those ratios
/// over the rounds, and that against the best count's.
fn scaling(rounds: usize, events: u64, enricher: &Arc<Enricher>) {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!("replay scaling: 1,000 series, {events} events per run, {rounds} rounds, {cpus} CPUs");
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); 4];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for round in 0..rounds {
        let mut line = format!("round {round}:");
        let mut first = 0.0;
        for (i, workers) in (1..=4).enumerate() {
            let (rate, _) = run(workers, 1_000, events, enricher);
            if i == 0 {
                first = rate;
            }
            rates[i].push(rate);
            ratios[i].push(rate / first);
            line += &format!(" {workers}w {:.1} M/s", rate / 1e6);
        }
        println!("{line}");
    }
    let medians: Vec<f64> = ratios.into_iter().map(benchmark::median).collect();
    let best = medians.iter().copied().fold(0.0, f64::max);
    println!(
        "{:>8} {:>14} {:>14} {:>8}",
        "workers", "median M/s", "x 1 worker", "x best"
    );
    for (i, (m, r)) in medians.iter().zip(rates).enumerate() {
        println!(
            "{:>8} {:>14.1} {:>14.2} {:>8.2}",
            i + 1,
            benchmark::median(r) / 1e6,
            m,
            m / best
        );
    }
}

fn main() {
    let cgroups = CgroupFs::discover().expect("a cgroup2 mount");
    let enricher = Arc::new(Enricher::new(
        cgroups,
        PodLogs::new("/nonexistent", "/nonexistent"),
    ));
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("memory") {
        let series: u32 = args.get(2).map_or(100_000, |s| s.parse().unwrap());
        memory(series);
        return;
    }
    if args.get(1).map(String::as_str) == Some("scaling") {
        let rounds: usize = args.get(2).map_or(5, |s| s.parse().unwrap());
        let events: u64 = args.get(3).map_or(10_000_000, |s| s.parse().unwrap());
        scaling(rounds, events, &enricher);
        return;
    }
    let events: u64 = args.get(1).map_or(20_000_000, |s| s.parse().unwrap());
    // Optional lists narrow the runs (for a profiler): worker counts, then series.
    let list = |i: usize, all: &[u64]| -> Vec<u64> {
        args.get(i).map_or(all.to_vec(), |s| {
            s.split(',').map(|n| n.parse().unwrap()).collect()
        })
    };
    let (workers_list, series_list) = (list(2, &[1, 2, 4]), list(3, &[1, 1_000, 100_000]));
    println!("replay: {events} events per run, 24-byte records, one exp2 histogram with a uint label, 16 cgroups");
    println!(
        "{:>8} {:>9} {:>14} {:>20} {:>14}",
        "workers", "series", "events/s", "events/s per core", "ns/event/core"
    );
    for &series in &series_list {
        for &workers in &workers_list {
            let (workers, series) = (workers as usize, series as u32);
            let (rate, per_core) = run(workers, series, events, &enricher);
            println!(
                "{workers:>8} {series:>9} {:>14.0} {:>20.0} {:>14.1}",
                rate,
                per_core,
                1e9 / per_core
            );
        }
    }
}
