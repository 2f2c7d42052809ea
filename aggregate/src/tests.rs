//! End-to-end tests of the stage: config → plan → records → exposition text.

use std::sync::Arc;

use enrich::PodLabels;

use crate::{
    config::{MetricsConfig, RingConfig},
    decoder::Context,
    KubeLabelNames, ProgramPlan, Registry, StreamAggregator, StreamPlan, StreamStats,
};

const CONFIG: &str = r#"
rings:
  - name: events
    cgroup_field: cgroup_id
    fields:
      - { name: cgroup_id, size: 8 }
      - { name: latency_ns, size: 8 }
      - { name: subnet, size: 4 }
      - { name: pad, size: 4 }
metrics:
  counters:
    - name: tcp_connects_total
      help: Connects
      ring: events
  histograms:
    - name: tcp_connect_latency_seconds
      help: Tcp connect latency histogram
      ring: events
      value: { field: latency_ns, scale: 1e-9 }
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 3
      bucket_multiplier: 1e-06
      labels:
        - { name: subnet, field: subnet, decoders: [{ name: inet_subnet }] }
"#;

#[derive(serde::Deserialize)]
struct Program {
    #[serde(default)]
    rings: Vec<RingConfig>,
    metrics: MetricsConfig,
}

fn record(cgroup: u64, latency_ns: u64, family: u16, a: u8) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend(cgroup.to_ne_bytes());
    r.extend(latency_ns.to_ne_bytes());
    r.extend(family.to_ne_bytes());
    r.extend([a, 0, 0, 0, 0, 0]);
    r
}

fn pod(id: u32, ns: &str, name: &str, c: &str) -> Arc<PodLabels> {
    Arc::new(PodLabels {
        id,
        namespace: ns.into(),
        pod: name.into(),
        container: c.into(),
        extra: Box::default(),
    })
}

fn program(yaml: &str) -> Result<(Registry, ProgramPlan), String> {
    let p: Program = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    let registry = Registry::new(KubeLabelNames::default(), "node-a".into());
    let plan = ProgramPlan::compile(&p.rings, &p.metrics, &registry, &Context::default(), "")
        .map_err(|e| e.to_string())?;
    Ok((registry, plan))
}

fn compile(yaml: &str) -> Result<(Registry, Vec<StreamPlan>), String> {
    program(yaml).map(|(r, p)| (r, p.streams))
}

#[test]
fn records_become_seed_style_exposition() {
    let (registry, plans) = compile(CONFIG).unwrap();
    let plan = Arc::new(plans.into_iter().next().unwrap());
    let stats = Arc::new(StreamStats::default());
    let mut agg = StreamAggregator::new(plan.clone(), stats.clone());
    let coredns = pod(1, "kube-system", "coredns-1", "coredns");
    let none = pod(0, "", "", "");
    let r = record(42, 3_000, 2, 127);
    assert_eq!(plan.cgroup_id(&r), 42);
    agg.observe(&r, &coredns); // 3 µs: le 4e-06
    agg.observe(&record(42, 500, 2, 127), &coredns); // le 1e-06
    agg.observe(&record(42, 9_000_000, 2, 127), &coredns); // +Inf
    agg.observe(&record(7, 1_000, 10, 0xfe), &none); // le 1e-06, ipv6
    let mut other_host = record(42, 500, 2, 127);
    other_host[19] = 9; // 127.9.x.x: another key, the same subnet label
    agg.observe(&other_host, &coredns);
    agg.observe(&r[..10], &coredns); // short: malformed
    agg.flush_stats();
    assert_eq!(stats.records.load(std::sync::atomic::Ordering::Relaxed), 5);
    assert_eq!(
        stats.malformed.load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    let mut out = crate::PageWriter::buffer(crate::Format::Text);
    registry.render(&mut out);
    let out = String::from_utf8(out.finish()).unwrap();
    let l = r#"app_container="coredns",app_namespace="kube-system",app_pod="coredns-1",node_id="node-a",subnet="127""#;
    let n = r#"app_container="",app_namespace="",app_pod="",node_id="node-a",subnet="fe00::/16""#;
    let want = format!(
        "# HELP ebpf_exporter_tcp_connect_latency_seconds Tcp connect latency histogram
# TYPE ebpf_exporter_tcp_connect_latency_seconds histogram
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{n},le=\"1e-06\"}} 1
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{n},le=\"2e-06\"}} 1
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{n},le=\"4e-06\"}} 1
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{n},le=\"8e-06\"}} 1
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{n},le=\"+Inf\"}} 1
ebpf_exporter_tcp_connect_latency_seconds_sum{{{n}}} 1e-06
ebpf_exporter_tcp_connect_latency_seconds_count{{{n}}} 1
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"1e-06\"}} 2
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"2e-06\"}} 2
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"4e-06\"}} 3
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"8e-06\"}} 3
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"+Inf\"}} 4
ebpf_exporter_tcp_connect_latency_seconds_sum{{{l}}} 0.009004
ebpf_exporter_tcp_connect_latency_seconds_count{{{l}}} 4
# HELP ebpf_exporter_tcp_connects_total Connects
# TYPE ebpf_exporter_tcp_connects_total counter
ebpf_exporter_tcp_connects_total{{app_container=\"\",app_namespace=\"\",app_pod=\"\",node_id=\"node-a\"}} 1
ebpf_exporter_tcp_connects_total{{app_container=\"coredns\",app_namespace=\"kube-system\",app_pod=\"coredns-1\",node_id=\"node-a\"}} 4
"
    );
    assert_eq!(out, want);
}

#[test]
fn decoder_failures_are_counted_not_exported() {
    let (registry, plans) = compile(CONFIG).unwrap();
    let mut agg =
        StreamAggregator::new(Arc::new(plans.into_iter().next().unwrap()), Arc::default());
    let p = pod(0, "", "", "");
    for _ in 0..3 {
        agg.observe(&record(1, 10, 99, 1), &p); // family 99: inet_subnet rejects
    }
    let failures = registry.decode_failures();
    let want = crate::DecodeFailures {
        metric: "ebpf_exporter_tcp_connect_latency_seconds".into(),
        invalid: vec![("subnet".into(), 3)],
        filtered: 0,
        overflowed: 0,
    };
    assert!(failures.contains(&want), "{failures:?}");
    let mut out = crate::PageWriter::buffer(crate::Format::Text);
    registry.render(&mut out);
    let out = String::from_utf8(out.finish()).unwrap();
    assert!(!out.contains("tcp_connect_latency_seconds_bucket"), "{out}");
    assert!(out.contains("ebpf_exporter_tcp_connects_total{"), "{out}");
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        (
            "ring: events\n      value",
            "ring: nope\n      value",
            "metrics.histograms[0].ring: no ring named \"nope\"",
        ),
        (
            "field: latency_ns",
            "field: latency",
            "metrics.histograms[0].value.field: no field \"latency\"",
        ),
        (
            "{ name: inet_subnet }",
            "{ name: bogus }",
            "metrics.histograms[0].labels[0].decoders[0].name: unknown decoder \"bogus\"",
        ),
        (
            "{ name: subnet, size: 4 }",
            "{ name: subnet, size: 3 }",
            "inet_subnet takes 4 bytes",
        ),
        (
            "cgroup_field: cgroup_id",
            "cgroup_field: latency",
            "rings[0].cgroup_field: no field",
        ),
        (
            "cgroup_field: cgroup_id",
            "cgroup_field: subnet",
            "rings[0].cgroup_field: \"subnet\" is 4 bytes; a cgroup id has 8",
        ),
        (
            "cgroup_field: cgroup_id",
            "cgroup_field: cgroup_id\n    pid_field: latency_ns",
            "rings[0].pid_field: \"latency_ns\" is 8 bytes; a pid has 4",
        ),
        (
            "name: tcp_connects_total",
            "name: tcp_connect_latency_seconds",
            "defined twice",
        ),
        (
            "name: tcp_connects_total",
            "name: 9bad",
            "metrics.counters[0].name: \"9bad\" is not a valid",
        ),
        (
            "{ name: subnet, field: subnet,",
            "{ name: app_pod, field: subnet,",
            "appears twice",
        ),
        (
            "{ name: subnet, field: subnet,",
            "{ name: subnet, size: 4,",
            "labels[0].size: labels of ring metrics name a field",
        ),
        (
            "ring: events\n      value",
            "value",
            "metrics.histograms[0].value: map-based metrics take their value from the map",
        ),
    ];
    for (from, to, want) in cases {
        assert!(CONFIG.contains(from), "{from}");
        let err = compile(&CONFIG.replacen(from, to, 1))
            .err()
            .unwrap_or_default();
        assert!(err.contains(want), "{to}: got {err:?}, want {want:?}");
    }
}

#[test]
fn unknown_keys_are_rejected_by_serde() {
    let err = compile(&CONFIG.replace("bucket_min: 0", "bucket_minimum: 0")).unwrap_err();
    assert!(err.contains("unknown field `bucket_minimum`"), "{err}");
}

const TABLES: &str = r#"
metrics:
  counters:
    - name: syscalls_total
      help: Syscalls by cgroup and syscall
      labels:
        - { name: cgroup, size: 8 }
        - { name: syscall, size: 4, padding: 4, decoders: [{ name: uint }, { name: static_map, static_map: { "39": getpid } }] }
        - { name: parity, size: 4, reuse: true, decoders: [{ name: uint }, { name: regexp, regexps: ["^39$", "^1$"] }] }
  histograms:
    - name: read_bytes
      help: Read sizes
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 2
      bucket_multiplier: 1024
      labels:
        - { name: op, size: 1, padding: 7, decoders: [{ name: uint }] }
        - { name: bucket, size: 8, decoders: [{ name: uint }] }
"#;

fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn tables_render_like_the_reference_exporter() {
    let (registry, plan) = program(TABLES).unwrap();
    assert!(plan.streams.is_empty());
    let [counters, hist] = &plan.tables[..] else {
        panic!()
    };
    assert_eq!(
        (counters.map.as_str(), counters.key_size.unwrap()),
        ("syscalls_total", 16)
    );
    assert_eq!(hist.key_size, Some(16));

    let k = |cg: u64, sc: u32| key(&[&cg.to_ne_bytes(), &sc.to_ne_bytes(), &[0; 4]]);
    let entries = vec![
        (k(5, 39), 10),
        (k(6, 39), 1),
        (k(5, 1), 3),       // static_map: unknown:1
        (k(5, 2), 100),     // regexp drops it
        (vec![1, 2, 3], 7), // short key
    ];
    let mut out = crate::PageWriter::buffer(crate::Format::Text);
    counters.render(&counters.rows(&entries), &mut out);
    let out = String::from_utf8(out.finish()).unwrap();
    assert_eq!(
        out,
        "# HELP ebpf_exporter_syscalls_total Syscalls by cgroup and syscall
# TYPE ebpf_exporter_syscalls_total counter
ebpf_exporter_syscalls_total{cgroup=\"5\",parity=\"1\",syscall=\"unknown:1\"} 3
ebpf_exporter_syscalls_total{cgroup=\"5\",parity=\"39\",syscall=\"getpid\"} 10
ebpf_exporter_syscalls_total{cgroup=\"6\",parity=\"39\",syscall=\"getpid\"} 1
"
    );
    assert_eq!(counters.malformed(), 1);

    let b = |op: u8, bucket: u64| key(&[&[op, 0, 0, 0, 0, 0, 0, 0], &bucket.to_ne_bytes()]);
    let entries = vec![
        (b(1, 0), 2),
        (b(1, 2), 5),
        (b(1, 3), 4096),
        (b(1, 9), 1),
        (b(2, 1), 1),
    ];
    let mut out = crate::PageWriter::buffer(crate::Format::Text);
    hist.render(&hist.rows(&entries), &mut out);
    let out = String::from_utf8(out.finish()).unwrap();
    assert_eq!(
        out,
        "# HELP ebpf_exporter_read_bytes Read sizes
# TYPE ebpf_exporter_read_bytes histogram
ebpf_exporter_read_bytes_bucket{op=\"1\",le=\"1024\"} 2
ebpf_exporter_read_bytes_bucket{op=\"1\",le=\"2048\"} 2
ebpf_exporter_read_bytes_bucket{op=\"1\",le=\"4096\"} 7
ebpf_exporter_read_bytes_bucket{op=\"1\",le=\"+Inf\"} 8
ebpf_exporter_read_bytes_sum{op=\"1\"} 4.194304e+06
ebpf_exporter_read_bytes_count{op=\"1\"} 8
ebpf_exporter_read_bytes_bucket{op=\"2\",le=\"1024\"} 0
ebpf_exporter_read_bytes_bucket{op=\"2\",le=\"2048\"} 1
ebpf_exporter_read_bytes_bucket{op=\"2\",le=\"4096\"} 1
ebpf_exporter_read_bytes_bucket{op=\"2\",le=\"+Inf\"} 1
ebpf_exporter_read_bytes_sum{op=\"2\"} 0
ebpf_exporter_read_bytes_count{op=\"2\"} 1
"
    );
    drop(registry);
}

#[test]
fn table_errors_name_the_key() {
    let cases = [
        (
            "{ name: cgroup, size: 8 }",
            "{ name: cgroup }",
            "metrics.counters[0].labels[0].size: required",
        ),
        (
            "{ name: cgroup, size: 8 }",
            "{ name: cgroup, size: 8, reuse: true }",
            "labels[0].reuse: the first label",
        ),
        (
            "{ name: bucket, size: 8,",
            "{ name: bucket, size: 3,",
            "metrics.histograms[0].labels[1].size: the bucket key is an unsigned integer",
        ),
        (
            "{ name: cgroup, size: 8 }",
            "{ name: cgroup, field: x }",
            "labels[0].field: labels of map-based metrics take size",
        ),
        ("name: read_bytes", "name: syscalls_total", "defined twice"),
    ];
    for (from, to, want) in cases {
        assert!(TABLES.contains(from), "{from}");
        let err = program(&TABLES.replacen(from, to, 1))
            .err()
            .unwrap_or_default();
        assert!(err.contains(want), "{to}: got {err:?}, want {want:?}");
    }
}

#[test]
fn perf_event_array_counters_are_streams_without_pod_labels() {
    let yaml = r#"
metrics:
  counters:
    - name: oom_kills
      help: OOM kills
      perf_event_array: true
      flush_interval: 1m
      labels:
        - { name: cgroup_path, size: 8, decoders: [{ name: uint }] }
"#;
    let (registry, plan) = program(yaml).unwrap();
    let stream = plan.streams.into_iter().next().unwrap();
    assert_eq!((stream.ring.as_str(), stream.record_size), ("oom_kills", 8));
    let mut agg = StreamAggregator::new(Arc::new(stream), Arc::default());
    let p = pod(3, "ns", "p", "c");
    agg.observe(&9u64.to_ne_bytes(), &p);
    agg.observe(&9u64.to_ne_bytes(), &p);
    let mut out = crate::PageWriter::buffer(crate::Format::Text);
    registry.render(&mut out);
    let out = String::from_utf8(out.finish()).unwrap();
    assert_eq!(out, "# HELP ebpf_exporter_oom_kills OOM kills\n# TYPE ebpf_exporter_oom_kills counter\nebpf_exporter_oom_kills{cgroup_path=\"9\"} 2\n");
}

#[test]
fn a_full_metric_counts_new_label_sets_in_one_overflow_series() {
    let yaml = CONFIG.replace(
        "      ring: events\n      value",
        "      ring: events\n      max_series: 2\n      value",
    );
    let (registry, plans) = compile(&yaml).unwrap();
    let mut agg =
        StreamAggregator::new(Arc::new(plans.into_iter().next().unwrap()), Arc::default());
    let p = pod(5, "ns", "p", "c");
    for octet in [10u8, 11, 12, 13, 10] {
        agg.observe(&record(1, 500, 2, octet), &p);
    }
    let mut out = crate::PageWriter::buffer(crate::Format::Text);
    registry.render(&mut out);
    let out = String::from_utf8(out.finish()).unwrap();
    let count = |labels: &str| {
        out.lines()
            .find(|l| {
                l.starts_with("ebpf_exporter_tcp_connect_latency_seconds_count{")
                    && l.contains(labels)
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(count("subnet=\"10\"").as_deref(), Some("2"), "{out}");
    assert_eq!(count("subnet=\"11\"").as_deref(), Some("1"));
    assert_eq!(count("subnet=\"12\""), None);
    assert_eq!(
        count("app_pod=\"__overflow__\"").as_deref(),
        Some("2"),
        "{out}"
    );
    assert!(out.contains("subnet=\"__overflow__\""));
    let f = registry
        .decode_failures()
        .into_iter()
        .find(|f| f.metric.ends_with("tcp_connect_latency_seconds"))
        .unwrap();
    assert_eq!(f.overflowed, 2);
}

#[test]
fn expired_pods_lose_their_series_and_come_back_fresh() {
    let (registry, plans) = compile(CONFIG).unwrap();
    let mut agg =
        StreamAggregator::new(Arc::new(plans.into_iter().next().unwrap()), Arc::default());
    let (gone, stays) = (pod(5, "ns", "gone", "c"), pod(6, "ns", "stays", "c"));
    agg.observe(&record(1, 500, 2, 10), &gone);
    agg.observe(&record(1, 500, 2, 10), &gone);
    agg.observe(&record(2, 500, 2, 10), &stays);
    registry.expire(&[5]);
    let render = || {
        let mut out = crate::PageWriter::buffer(crate::Format::Text);
        registry.render(&mut out);
        String::from_utf8(out.finish()).unwrap()
    };
    let page = render();
    assert!(
        !page.contains("app_pod=\"gone\"") && page.contains("app_pod=\"stays\""),
        "{page}"
    );
    for _ in 0..1024 {
        agg.flush_stats(); // the worker drops what only it still held
    }
    agg.observe(&record(1, 500, 2, 10), &gone);
    // The series that stayed moved in the worker's rebuilt index: it still counts in
    // its own.
    agg.observe(&record(2, 500, 2, 10), &stays);
    let page = render();
    let line = |pod: &str| {
        let pod = format!("app_pod=\"{pod}\"");
        page.lines()
            .find(|l| l.starts_with("ebpf_exporter_tcp_connects_total{") && l.contains(&pod))
            .unwrap()
            .to_string()
    };
    assert!(
        line("gone").ends_with(" 1"),
        "a fresh series: {}",
        line("gone")
    );
    assert!(line("stays").ends_with(" 2"), "{}", line("stays"));
}

#[test]
fn a_trailing_two_byte_cpu_label_marks_a_per_cpu_split() {
    let with = |label: &str| {
        let cfg = format!(
            "metrics:\n  counters:\n    - name: calls_total\n      help: Calls\n      labels:\n        - {{ name: pid, size: 4 }}\n        - {label}\n"
        );
        program(&cfg).unwrap().1.tables[0].cpu_label
    };
    assert!(with("{ name: cpu, size: 2, decoders: [{ name: uint }] }"));
    assert!(!with("{ name: cpu, size: 4, decoders: [{ name: uint }] }"));
    assert!(!with("{ name: core, size: 2, decoders: [{ name: uint }] }"));
    assert!(!with("{ name: cpu, size: 2, decoders: [{ name: uint }, { name: static_map, static_map: { \"0\": a } }] }"));
}

#[test]
fn protobuf_carries_native_buckets_of_exact_values() {
    let (registry, plans) = compile(CONFIG).unwrap();
    let plan = Arc::new(plans.into_iter().next().unwrap());
    let mut agg = StreamAggregator::new(plan, Arc::new(StreamStats::default()));
    let coredns = pod(1, "kube-system", "coredns-1", "coredns");
    for ns in [0, 500, 3_000, 3_000, 9_000_000] {
        agg.observe(&record(42, ns, 2, 127), &coredns);
    }
    let mut out = crate::PageWriter::buffer(crate::Format::Protobuf);
    registry.render(&mut out);
    let families = crate::exposition::tests::decode_protobuf(&out.finish());
    let h = families
        .iter()
        .find(|f| f.name() == "ebpf_exporter_tcp_connect_latency_seconds")
        .unwrap()
        .metric[0]
        .histogram
        .clone()
        .unwrap();
    // Schema 3: bucket ceil(8 log2 v); 0 is in the zero bucket.
    let bucket = |ns: f64| (8.0 * (ns * 1e-9).log2()).ceil() as i32;
    assert_eq!((h.schema(), h.zero_count(), h.sample_count()), (3, 1, 5));
    assert_eq!(h.positive_span.len(), 3);
    assert_eq!(h.positive_span[0].offset(), bucket(500.0));
    assert_eq!(
        h.positive_span[1].offset(),
        bucket(3000.0) - bucket(500.0) - 1
    );
    assert_eq!(
        h.positive_span[2].offset(),
        bucket(9e6) - bucket(3000.0) - 1
    );
    assert_eq!(h.positive_delta, vec![1, 1, -1]);
    // Classic buckets as in text: 1e-06, 2e-06, 4e-06, 8e-06 (+Inf implied).
    let classic: Vec<u64> = h.bucket.iter().map(|b| b.cumulative_count()).collect();
    assert_eq!(classic, vec![2, 2, 4, 4]);

    // Tables: power-of-two bounds are schema 0 buckets; a series with events above the
    // last bound stays classic.
    let (_, plan) = program(TABLES).unwrap();
    let hist = &plan.tables[1];
    let b = |op: u8, bucket: u64| key(&[&[op, 0, 0, 0, 0, 0, 0, 0], &bucket.to_ne_bytes()]);
    let entries = vec![(b(1, 0), 2), (b(1, 9), 1), (b(2, 1), 3)];
    let mut out = crate::PageWriter::buffer(crate::Format::Protobuf);
    hist.render(&hist.rows(&entries), &mut out);
    let families = crate::exposition::tests::decode_protobuf(&out.finish());
    let [op1, op2] = &families[0].metric[..] else {
        panic!()
    };
    assert_eq!(op1.histogram.as_ref().unwrap().schema, None);
    let h = op2.histogram.as_ref().unwrap();
    // Key 1 is le 2048 = 2^11.
    assert_eq!(
        (
            h.schema(),
            h.positive_span[0].offset(),
            h.positive_delta.clone()
        ),
        (0, 11, vec![3])
    );
}

#[test]
fn endless_label_values_keep_the_key_caches_bounded() {
    // A label read from a field whose every value is new (a timestamp, say): past the
    // series limit events go to the overflow series, and the raw keys remembered stop
    // growing at the key limit instead of taking memory per event.
    let yaml = CONFIG.replace(
        "    - name: tcp_connects_total\n      help: Connects\n      ring: events\n",
        "    - name: tcp_connects_total\n      help: Connects\n      ring: events\n      max_series: 10\n      labels:\n        - { name: latency, field: latency_ns }\n",
    );
    let (registry, plans) = compile(&yaml).unwrap();
    let mut agg = StreamAggregator::new(
        Arc::new(plans.into_iter().next().unwrap()),
        Arc::new(StreamStats::default()),
    );
    let coredns = pod(1, "kube-system", "coredns-1", "coredns");
    const N: u64 = 200_000;
    for i in 0..N {
        agg.observe(&record(42, i, 2, 127), &coredns);
    }
    agg.flush_stats();
    // The histogram's keys are one subnet; the counter's are every latency.
    assert!(agg.cached_keys() <= (1 << 16) + 1, "{}", agg.cached_keys());
    assert!(
        registry.remembered_keys() <= (1 << 16) + 1,
        "{}",
        registry.remembered_keys()
    );
    let failures = registry.decode_failures();
    let counter = failures
        .iter()
        .find(|f| f.metric == "ebpf_exporter_tcp_connects_total")
        .unwrap();
    assert_eq!(counter.overflowed, N - 10);
}

#[test]
fn batches_over_thousands_of_series_count_every_record_in_its_own() {
    // Past a few thousand series a worker prefetches each record's series ahead of
    // it: counts must come out the same as one record at a time.
    let yaml = r#"
rings:
  - name: events
    fields: [{ name: key, size: 4 }, { name: pad, size: 4 }, { name: value, size: 8 }]
metrics:
  histograms:
    - name: many_seconds
      help: Many series
      ring: events
      value: { field: value }
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 8
      labels: [{ name: key, field: key, decoders: [{ name: uint }] }]
"#;
    let (registry, plans) = compile(yaml).unwrap();
    let mut agg = StreamAggregator::new(
        Arc::new(plans.into_iter().next().unwrap()),
        Arc::new(StreamStats::default()),
    );
    let none = pod(0, "", "", "");
    const SERIES: u32 = 10_000;
    // Key k gets k % 5 + 1 records, in scattered order, value k % 300.
    let mut records: Vec<[u8; 16]> = (0..SERIES)
        .flat_map(|k| (0..=k % 5).map(move |_| k))
        .map(|k| {
            let mut r = [0u8; 16];
            r[..4].copy_from_slice(&k.to_ne_bytes());
            r[8..].copy_from_slice(&u64::from(k % 300).to_ne_bytes());
            r
        })
        .collect();
    let n = records.len();
    for i in 0..n {
        records.swap(i, (i * 7919) % n);
    }
    for batch in records.chunks(3000) {
        agg.observe_all(batch.iter().map(|r| (&r[..], &none)));
    }
    let mut out = crate::PageWriter::buffer(crate::Format::Text);
    registry.render(&mut out);
    let page = String::from_utf8(out.finish()).unwrap();
    let mut seen = 0;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("ebpf_exporter_many_seconds_sum{") else {
            continue;
        };
        let k: u32 = rest
            .split("key=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let sum: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(sum, f64::from((k % 5 + 1) * (k % 300)), "{line}");
        seen += 1;
    }
    assert_eq!(seen, SERIES);
    let count = |k: u32| {
        page.lines()
            .find(|l| {
                l.starts_with("ebpf_exporter_many_seconds_count{")
                    && l.contains(&format!("key=\"{k}\""))
            })
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    for k in [0, 1, 4, 4999, 9999] {
        assert_eq!(count(k), (k % 5 + 1).to_string());
    }
}
