//! Batched rings (`OUTPUT_RINGBUF_BATCHED` in output.bpf.h): every record staged on
//! every CPU reaches the metric exactly (whole batches, and the remainders only the
//! exporter's timed flush writes out), and a ring sample carries many records. Needs
//! root and BPF.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{sample, samples, Exporter, TempDir};

const CONFIG: &str = r#"
rings:
  - name: events
    cgroup_field: cgroup_id
    fields: [{ name: cgroup_id, size: 8 }, { name: value, size: 8 }]
metrics:
  counters:
    - name: staged_calls_total
      help: getsid calls, a record each
      ring: events
"#;

/// Calls each CPU makes: not a multiple of a batch (85 records of 24 bytes in
/// 2,048), so every CPU is left with records that only a flush writes out.
const CALLS: u64 = 10_007;

#[test]
fn staged_records_all_arrive_from_every_cpu() {
    if !test_support::privileged("staged_records_all_arrive_from_every_cpu") {
        return;
    }
    let dir = TempDir::new("batched");
    let source = dir.0.join("batched.bpf.c");
    std::fs::write(&source, test_support::GETPID_RING).unwrap();
    std::fs::write(dir.0.join("batched.yaml"), CONFIG).unwrap();
    test_support::compile_bpf(
        &source,
        &dir.0.join("batched.bpf.o"),
        &["-DSYSCALL=getsid", "-DBATCHED_OUTPUT"],
    );
    let exporter = Exporter::start(
        &[
            "--config.dir",
            dir.0.to_str().unwrap(),
            "--config.names",
            "batched",
        ],
        &dir.0.join("log"),
    );
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    for cpu in 0..cpus {
        let status = Command::new("taskset")
            .args(["-c", &cpu.to_string()])
            .arg(common::workload())
            .args(["-", "getsid", &CALLS.to_string()])
            .status()
            .expect("taskset");
        assert!(status.success(), "workload on CPU {cpu}");
    }
    let want = (CALLS * cpus as u64) as f64;
    let counted = |page: &str| -> f64 {
        samples(page, "ebpf_exporter_staged_calls_total")
            .iter()
            .map(|(_, v)| v)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut page = exporter.metrics();
    while counted(&page) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        page = exporter.metrics();
    }
    // A little longer: nothing more may come.
    std::thread::sleep(Duration::from_millis(300));
    page = exporter.metrics();
    let get = |name: &str, labels: &str| {
        sample(&page, name, labels).unwrap_or_else(|| panic!("{name}{{{labels}}} missing:\n{page}"))
    };
    let ring = "program=\"batched\",ring=\"events\"";
    assert_eq!(counted(&page), want, "{page}");
    assert_eq!(get("ebpf_exporter_ring_records_total", ring), want);
    assert_eq!(
        get(
            "ebpf_exporter_ring_reserve_failures_total",
            "program=\"batched\""
        ),
        0.0
    );
    assert_eq!(get("ebpf_exporter_ring_flush_errors_total", ring), 0.0);
    // Full batches, plus a flushed remainder per CPU (and a few more where a flush
    // came while a CPU was busy).
    let read = get("ebpf_exporter_ring_samples_total", ring);
    assert!(
        read <= (want / 85.0).ceil() + cpus as f64 * 4.0,
        "{read} samples for {want} records: not batched"
    );
}
