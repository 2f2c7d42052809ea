//! Shared pieces of the benchmarks: process memory and a compiled one-metric stream.

pub mod process;

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

/// The default config's TCP connect histogram, compiled, with or without native
/// buckets: records are `[cgroup u64][latency_ns u64][family u16, 2 address bytes][pad 4]`.
pub fn tcp_connect_stream(native: bool) -> (Arc<Registry>, Arc<StreamPlan>) {
    #[derive(serde::Deserialize)]
    struct Program {
        rings: Vec<RingConfig>,
        metrics: MetricsConfig,
    }
    let text = include_str!("../../src/default.yaml");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    let mut program: Program =
        serde_yaml_ng::from_value(doc["programs"]["tcp_connect_latency"].clone()).unwrap();
    // The errors counter is a table (read from a map), not part of the stream.
    program.metrics.counters.clear();
    for h in &mut program.metrics.histograms {
        h.native_histogram.enabled = native;
    }
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

/// Compiles BPF C `source` with the project's headers into `<dir>/<name>.bpf.o`.
///
/// # Panics
/// clang is missing or the source does not compile.
pub fn compile_bpf(dir: &std::path::Path, name: &str, source: &str) -> std::path::PathBuf {
    compile_bpf_with(dir, name, source, &[], "bpf.o")
}

/// As [`compile_bpf`], with extra clang arguments, into `<dir>/<name>.<suffix>`.
pub fn compile_bpf_with(
    dir: &std::path::Path,
    name: &str,
    source: &str,
    extra: &[&str],
    suffix: &str,
) -> std::path::PathBuf {
    let src = dir.join(format!("{name}.bpf.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(format!("{name}.{suffix}"));
    test_support::compile_bpf(&src, &out, extra);
    out
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Median ns per `getpid()` over `runs` runs of `calls` calls on this thread.
pub fn getpid_ns(calls: u64, runs: usize) -> f64 {
    let samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = std::time::Instant::now();
            for _ in 0..calls {
                // SAFETY: getpid has no preconditions.
                unsafe { libc::syscall(libc::SYS_getpid) };
            }
            t.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    median(samples)
}

/// The median of `samples` (the upper one of an even count); NaN when there are none.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}
