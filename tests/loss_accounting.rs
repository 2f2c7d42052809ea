//! Loss that adds up: a ring too small for the load on purpose, and every record is
//! either aggregated or counted as dropped, at every stage. Needs root and BPF.

mod common;

use common::{sample, Exporter, TempDir};

const PROGRAM: &str = r#"
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "output.bpf.h"
#include "maps.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} produced_total SEC(".maps");

OUTPUT_RINGBUF(flood);

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&produced_total, &zero);

	if (n)
		*n += 1;
	__u64 *rec = output_reserve(&flood, sizeof(__u64));
	if (rec) {
		*rec = bpf_get_current_cgroup_id();
		OUTPUT_SUBMIT(ctx, flood, rec);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
"#;

const CONFIG: &str = r#"
rings:
  - name: flood
    cgroup_field: cgroup_id
    fields: [{ name: cgroup_id, size: 8 }]
metrics:
  counters:
    - name: produced_total
      help: Records the program tried to write
      labels: [{ name: cpu, size: 4 }]
    - name: flood_total
      help: Records aggregated
      ring: flood
"#;

#[test]
fn an_overloaded_ring_loses_records_only_into_counters() {
    if !test_support::privileged("an_overloaded_ring_loses_records_only_into_counters") {
        return;
    }
    let dir = TempDir::new("loss");
    std::fs::write(dir.0.join("loss.bpf.c"), PROGRAM).unwrap();
    std::fs::write(dir.0.join("loss.yaml"), CONFIG).unwrap();
    test_support::compile_bpf(&dir.0.join("loss.bpf.c"), &dir.0.join("loss.bpf.o"), &[]);
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
        "program=\"loss\",ring=\"flood\"",
    );
    let full = get(
        "ebpf_exporter_ring_reserve_failures_total",
        "program=\"loss\"",
    );
    let queue = get(
        "ebpf_exporter_ingest_queue_dropped_records_total",
        "program=\"loss\",ring=\"flood\"",
    );
    let aggregated = get(
        "ebpf_exporter_aggregate_records_total",
        "program=\"loss\",ring=\"flood\"",
    );
    let malformed = get(
        "ebpf_exporter_aggregate_malformed_records_total",
        "program=\"loss\",ring=\"flood\"",
    );
    let counted: f64 = common::samples(&page, "ebpf_exporter_flood_total")
        .iter()
        .map(|(_, v)| v)
        .sum();

    assert!(produced >= 300_000.0, "{page}");
    assert!(full > 0.0, "the ring never overflowed: {page}");
    // Kernel side: every attempt was read or counted as a failed reserve.
    assert_eq!(produced, read + full, "{page}");
    // User side: every record read was aggregated or counted as dropped.
    assert_eq!(read, aggregated + malformed + queue, "{page}");
    assert_eq!(
        counted, aggregated,
        "the metric counts exactly what was aggregated"
    );
}
