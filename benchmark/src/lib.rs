//! Shared pieces of the benchmarks: process memory and a compiled one-metric stream.

use std::sync::Arc;

use aggregate::{
    config::{MetricsConfig, RingConfig},
    decoder::Context,
    KubeLabelNames, ProgramPlan, Registry, StreamPlan,
};

/// Resident set size of this process in bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The default config's TCP connect histogram, compiled: records are
/// `[cgroup u64][latency_ns u64][family u16, 2 address bytes][pad 4]`.
pub fn tcp_connect_stream() -> (Arc<Registry>, Arc<StreamPlan>) {
    #[derive(serde::Deserialize)]
    struct Program {
        rings: Vec<RingConfig>,
        metrics: MetricsConfig,
    }
    let text = include_str!("../../src/default.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let program: Program =
        serde_yaml_ng::from_value(doc["programs"]["tcp_connect_latency"].clone()).unwrap();
    let registry = Arc::new(Registry::new(KubeLabelNames::default(), "bench".into()));
    let plan = ProgramPlan::compile(
        &program.rings,
        &program.metrics,
        &registry,
        &Context::default(),
        "",
    )
    .unwrap();
    (registry, Arc::new(plan.streams.into_iter().next().unwrap()))
}

/// One TCP connect record.
pub fn tcp_record(cgroup: u64, latency_ns: u64, first_octet: u8) -> [u8; 24] {
    let mut r = [0u8; 24];
    r[..8].copy_from_slice(&cgroup.to_ne_bytes());
    r[8..16].copy_from_slice(&latency_ns.to_ne_bytes());
    r[16..18].copy_from_slice(&2u16.to_ne_bytes());
    r[18] = first_octet;
    r
}
