//! Loss that adds up: a ring too small for the load on purpose, and every record is
//! either aggregated or counted as dropped, at every stage, and the ring's fill gauge
//! saw it full; a table map that fills shows in its fill gauge; runs the kernel skipped
//! are counted per program. Needs root and BPF.

mod common;

use common::{sample, Exporter, TempDir};

const CONFIG: &str = r#"
rings:
  - name: events
    cgroup_field: cgroup_id
    fields: [{ name: cgroup_id, size: 8 }]
metrics:
  counters:
    - name: produced_total
      help: Records the program tried to write
      labels: [{ name: cpu, size: 4 }]
    - name: flood_total
      help: Records aggregated
      ring: events
"#;

/// A temp config dir holding config `name`: its object (`c` compiled with `flags`)
/// and its YAML.
fn config_dir(name: &str, c: &str, yaml: &str, flags: &[&str]) -> TempDir {
    let dir = TempDir::new(name);
    let source = dir.0.join(format!("{name}.bpf.c"));
    std::fs::write(&source, c).unwrap();
    std::fs::write(dir.0.join(format!("{name}.yaml")), yaml).unwrap();
    test_support::compile_bpf(&source, &dir.0.join(format!("{name}.bpf.o")), flags);
    dir
}

#[test]
fn an_overloaded_ring_loses_records_only_into_counters() {
    if !test_support::privileged("an_overloaded_ring_loses_records_only_into_counters") {
        return;
    }
    let dir = config_dir(
        "loss",
        test_support::GETPID_RING,
        CONFIG,
        &["-DSYSCALL=getppid", "-DCOUNT_PRODUCED"],
    );
    // A 16 KiB ring (1,000 records), drained every 300 ms and woken only when full: a
    // tight getppid loop overflows it many times over.
    let config = dir.0.join("exporter.yaml");
    std::fs::write(
        &config,
        "pipeline:\n  ring_bytes: 16384\n  wakeup_bytes: 16383\n  drain_interval_ms: 300\n",
    )
    .unwrap();
    let exporter = Exporter::start(
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--config.dir",
            dir.0.to_str().unwrap(),
            "--config.names",
            "loss",
        ],
        &dir.0.join("log"),
    );
    common::run_workload(None, &["getppid", "300000"]);
    std::thread::sleep(std::time::Duration::from_millis(800)); // two more drains
    let page = exporter.metrics();
    let get = |name: &str, labels: &str| {
        sample(&page, name, labels).unwrap_or_else(|| panic!("{name}{{{labels}}} missing:\n{page}"))
    };
    let produced: f64 = common::samples(&page, "ebpf_exporter_produced_total")
        .iter()
        .map(|(_, v)| v)
        .sum();
    let read = get(
        "ebpf_exporter_ring_records_total",
        "program=\"loss\",ring=\"events\"",
    );
    let full = get(
        "ebpf_exporter_ring_reserve_failures_total",
        "program=\"loss\"",
    );
    let queue = get(
        "ebpf_exporter_ingest_queue_dropped_records_total",
        "program=\"loss\",ring=\"events\"",
    );
    let aggregated = get(
        "ebpf_exporter_aggregate_records_total",
        "program=\"loss\",ring=\"events\"",
    );
    let malformed = get(
        "ebpf_exporter_aggregate_malformed_records_total",
        "program=\"loss\",ring=\"events\"",
    );
    let counted: f64 = common::samples(&page, "ebpf_exporter_flood_total")
        .iter()
        .map(|(_, v)| v)
        .sum();

    assert!(produced >= 300_000.0, "{page}");
    assert!(full > 0.0, "the ring never overflowed: {page}");
    // A ring that overflowed was full when a drain began; the gauge's next period,
    // with the load gone, starts over.
    let fill = get(
        "ebpf_exporter_ring_fill_ratio",
        "program=\"loss\",ring=\"events\"",
    );
    assert!(fill > 0.9, "fill {fill}: {page}");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let quiet = sample(
        &exporter.metrics(),
        "ebpf_exporter_ring_fill_ratio",
        "program=\"loss\",ring=\"events\"",
    );
    assert!(quiet.is_some_and(|f| f < 0.1), "quiet fill {quiet:?}");
    // Kernel side: every attempt was read or counted as a failed reserve.
    assert_eq!(produced, read + full, "{page}");
    // User side: every record read was aggregated or counted as dropped.
    assert_eq!(read, aggregated + malformed + queue, "{page}");
    assert_eq!(
        counted, aggregated,
        "the metric counts exactly what was aggregated"
    );
}

const TABLE_C: &str = r#"
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "maps.bpf.h"
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} callers_total SEC(".maps");
SEC("tracepoint/syscalls/sys_enter_getppid")
int count(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	map_increment(&callers_total, &tgid, 1);
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"#;

const TABLE_YAML: &str = r#"
metrics:
  counters:
    - name: callers_total
      help: getppid calls by process
      labels: [{ name: tgid, size: 4, decoders: [{ name: uint }] }]
"#;

#[test]
fn a_full_table_map_shows_in_its_fill_gauge() {
    if !test_support::privileged("a_full_table_map_shows_in_its_fill_gauge") {
        return;
    }
    let dir = config_dir("fill", TABLE_C, TABLE_YAML, &[]);
    let exporter = Exporter::start(
        &[
            "--config.dir",
            dir.0.to_str().unwrap(),
            "--config.names",
            "fill",
        ],
        &dir.0.join("log"),
    );
    // Twelve processes for a map of eight keys: it fills, and stays full.
    for _ in 0..12 {
        common::run_workload(None, &["getppid", "10"]);
    }
    let page = exporter.metrics();
    let series = common::samples(&page, "ebpf_exporter_callers_total").len();
    assert_eq!(series, 8, "{page}");
    assert_eq!(
        sample(
            &page,
            "ebpf_exporter_table_fill_ratio",
            "config=\"fill\",map=\"callers_total\""
        ),
        Some(1.0),
        "{page}"
    );
}

/// `count` prints at each getsid (the other tests here load getppid, and the calls of
/// one would land in another's program); `nested`, on the raw tracepoint every print
/// fires, prints too: its print fires it again on the same CPU while it runs, and the
/// kernel skips that run and counts a recursion miss, one per call.
const NESTED_C: &str = r#"
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
SEC("tracepoint/syscalls/sys_enter_getsid")
int count(void *ctx)
{
	bpf_printk("getsid");
	return 0;
}
SEC("raw_tp/bpf_trace_printk")
int nested(void *ctx)
{
	bpf_printk("nested");
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"#;

/// Runs the kernel skipped (the program was already running on that CPU) are exported
/// per program: events it never saw are not silent.
#[test]
fn runs_the_kernel_skipped_are_counted_per_program() {
    if !test_support::privileged("runs_the_kernel_skipped_are_counted_per_program") {
        return;
    }
    let dir = config_dir("nested", NESTED_C, "metrics: {}\n", &[]);
    let exporter = Exporter::start(
        &[
            "--config.dir",
            dir.0.to_str().unwrap(),
            "--config.names",
            "nested",
        ],
        &dir.0.join("log"),
    );
    common::run_workload(None, &["getsid", "1000"]);
    let page = exporter.metrics();
    let id = |program: &str| {
        let info = common::samples(&page, "ebpf_exporter_ebpf_program_info");
        let labels = info
            .iter()
            .map(|(l, _)| *l)
            .find(|l| l.contains(&format!("program=\"{program}\"")))
            .unwrap_or_else(|| panic!("no {program}: {page}"));
        let at = labels.find("id=\"").unwrap() + 4;
        labels[at..at + labels[at..].find('"').unwrap()].to_string()
    };
    let misses = |program: &str| {
        sample(
            &page,
            "ebpf_exporter_ebpf_program_recursion_misses_total",
            &format!("id=\"{}\"", id(program)),
        )
    };
    assert_eq!(misses("count"), Some(0.0), "{page}");
    assert!(
        misses("nested").is_some_and(|n| n >= 1000.0),
        "every getsid's print is a skipped run: {page}"
    );
}
