//! Probe overhead, as the reference exporter's benchmark measures it: a `getpid()` loop
//! on one core with no probe, then with an empty probe, a map-increment probe and a
//! ring-record probe (a consumer drains on the other core), for each attach type this
//! kernel has. Prints ns per call and the overhead over no probe.
//!
//! `sudo cargo run --release -p benchmark --bin probe_overhead [calls per run]`

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use benchmark::{compile_bpf, getpid_ns, pin_to_cpu};
use ingest::LoadOptions;

/// (attach type, section, program head, getpid filter).
const ATTACH: &[(&str, &str, &str, &str)] = &[
    (
        "tracepoint",
        "tracepoint/syscalls/sys_enter_getpid",
        "int probe(void *ctx)",
        "",
    ),
    (
        "raw_tp",
        "raw_tp/sys_enter",
        "int probe(struct bpf_raw_tracepoint_args *ctx)",
        "if (ctx->args[1] != 39) return 0;",
    ),
    (
        "tp_btf",
        "tp_btf/sys_enter",
        "int BPF_PROG(probe, struct pt_regs *regs, long id)",
        "if (id != 39) return 0;",
    ),
];

/// (probe, body).
const BODIES: &[(&str, &str)] = &[
    ("empty", ""),
    ("map increment", "__u64 k = bpf_get_current_cgroup_id(); map_increment(&counts, &k, 1);"),
    (
        "ring record",
        "struct { __u64 cgroup, ts; } *r = output_reserve(&events, 16); if (r) { r->cgroup = bpf_get_current_cgroup_id(); r->ts = bpf_ktime_get_ns(); OUTPUT_SUBMIT(ctx, events, r); }",
    ),
];

fn source(section: &str, head: &str, filter: &str, body: &str) -> String {
    format!(
        r#"#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "output.bpf.h"
#include "maps.bpf.h"
struct {{ __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024); __type(key, __u64); __type(value, __u64); }} counts SEC(".maps");
OUTPUT_RINGBUF(events);
SEC("{section}")
{head} {{ {filter} {body} return 0; }}
char LICENSE[] SEC("license") = "GPL";
"#
    )
}

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .map_or(2_000_000, |s| s.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("probe-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    pin_to_cpu(0);
    let runs = 7;
    getpid_ns(calls / 4, 1); // warm up
    let base = getpid_ns(calls, runs);
    println!("getpid() loop on CPU 0, {calls} calls per run, median of {runs} runs; ring consumer on CPU 1");
    println!(
        "{:<12} {:<14} {:>10} {:>12}",
        "attach", "probe", "ns/call", "overhead ns"
    );
    println!("{:<12} {:<14} {:>10.1} {:>12}", "-", "no probe", base, "-");
    let btf = ingest::kernel_btf(None).expect("kernel BTF");
    let mut loader = ingest::Loader::new(&btf);
    for (attach, section, head, filter) in ATTACH {
        for (probe, body) in BODIES {
            let name = format!("{attach}-{}", probe.replace(' ', "-"));
            let object = compile_bpf(&dir, &name, &source(section, head, filter, body));
            let bytes = std::fs::read(&object).unwrap();
            let opts = LoadOptions {
                rings: vec!["events".into()],
                ring_bytes: Some(8 << 20),
                wakeup_bytes: 8 << 20,
                kaddrs: Vec::new(),
                optional: Vec::new(),
                map_entries: Vec::new(),
            };
            let mut loaded = match loader.load(&name, &bytes, &opts) {
                Ok(l) => l,
                Err(e) => {
                    println!("{attach:<12} {probe:<14} {:>10}   ({e})", "n/a");
                    continue;
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            let ingest::StreamMap::Ring(mut ring) = loaded.take_stream("events").unwrap() else {
                panic!("events is a ring")
            };
            let consumer = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    pin_to_cpu(1);
                    while !stop.load(Ordering::Relaxed) {
                        while ring.drain(1 << 20, |_, _| {}) > 0 {}
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            };
            let ns = getpid_ns(calls, runs);
            stop.store(true, Ordering::Relaxed);
            consumer.join().unwrap();
            let drops = loaded.ring_drops();
            drop(loaded);
            let note = if drops > 0 {
                format!("  ({drops} ring reserve failures)")
            } else {
                String::new()
            };
            println!(
                "{attach:<12} {probe:<14} {ns:>10.1} {:>12.1}{note}",
                ns - base
            );
        }
    }
    println!("not measured here: kprobe and fentry (this kernel has neither)");
    let _ = std::fs::remove_dir_all(&dir);
}
