//! End-to-end tests of the stage: config → plan → records → exposition text.

use std::sync::Arc;

use enrich::PodLabels;

use crate::{
    config::{MetricsConfig, RingConfig},
    KubeLabelNames, Registry, StreamAggregator, StreamPlan, StreamStats,
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

fn pod(id: u32, ns: &str, name: &str, c: &str) -> PodLabels {
    PodLabels {
        id,
        namespace: ns.into(),
        pod: name.into(),
        container: c.into(),
    }
}

fn compile(yaml: &str) -> Result<(Registry, Vec<StreamPlan>), String> {
    let p: Program = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    let registry = Registry::new(KubeLabelNames::default(), "node-a".into());
    let plans = StreamPlan::compile_all(&p.rings, &p.metrics, &registry, "").map_err(|e| e.to_string())?;
    Ok((registry, plans))
}

#[test]
fn records_become_seed_style_exposition() {
    let (registry, plans) = compile(CONFIG).unwrap();
    let plan = Arc::new(plans.into_iter().next().unwrap());
    let stats = Arc::new(StreamStats::default());
    let mut agg = StreamAggregator::new(plan.clone(), &registry, stats.clone());
    let coredns = pod(1, "kube-system", "coredns-1", "coredns");
    let none = pod(0, "", "", "");
    let r = record(42, 3_000, 2, 127);
    assert_eq!(plan.cgroup_id(&r), 42);
    agg.observe(&r, &coredns); // 3 µs: le 4e-06
    agg.observe(&record(42, 500, 2, 127), &coredns); // le 1e-06
    agg.observe(&record(42, 9_000_000, 2, 127), &coredns); // +Inf
    agg.observe(&record(7, 1_000, 10, 0xfe), &none); // le 1e-06, ipv6
    agg.observe(&r[..10], &coredns); // short: malformed
    agg.flush_stats();
    assert_eq!(stats.records.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(stats.malformed.load(std::sync::atomic::Ordering::Relaxed), 1);

    let mut out = String::new();
    registry.render(&mut out);
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
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"1e-06\"}} 1
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"2e-06\"}} 1
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"4e-06\"}} 2
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"8e-06\"}} 2
ebpf_exporter_tcp_connect_latency_seconds_bucket{{{l},le=\"+Inf\"}} 3
ebpf_exporter_tcp_connect_latency_seconds_sum{{{l}}} 0.0090035
ebpf_exporter_tcp_connect_latency_seconds_count{{{l}}} 3
# HELP ebpf_exporter_tcp_connects_total Connects
# TYPE ebpf_exporter_tcp_connects_total counter
ebpf_exporter_tcp_connects_total{{app_container=\"\",app_namespace=\"\",app_pod=\"\",node_id=\"node-a\"}} 1
ebpf_exporter_tcp_connects_total{{app_container=\"coredns\",app_namespace=\"kube-system\",app_pod=\"coredns-1\",node_id=\"node-a\"}} 3
"
    );
    assert_eq!(out, want);
}

#[test]
fn decoder_failures_are_counted_not_exported() {
    let (registry, plans) = compile(CONFIG).unwrap();
    let mut agg = StreamAggregator::new(Arc::new(plans.into_iter().next().unwrap()), &registry, Arc::default());
    let p = pod(0, "", "", "");
    for _ in 0..3 {
        agg.observe(&record(1, 10, 99, 1), &p); // family 99: inet_subnet rejects
    }
    let failures = registry.decode_failures();
    assert!(failures.contains(&("ebpf_exporter_tcp_connect_latency_seconds".into(), 3)), "{failures:?}");
    let mut out = String::new();
    registry.render(&mut out);
    assert!(!out.contains("tcp_connect_latency_seconds_bucket"), "{out}");
    assert!(out.contains("ebpf_exporter_tcp_connects_total{"), "{out}");
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        ("ring: events\n      value", "ring: nope\n      value", "metrics.histograms[0].ring: no ring named \"nope\""),
        ("field: latency_ns", "field: latency", "metrics.histograms[0].value.field: no field \"latency\""),
        ("{ name: inet_subnet }", "{ name: bogus }", "metrics.histograms[0].labels[0].decoders[0].name: unknown decoder \"bogus\""),
        ("{ name: subnet, size: 4 }", "{ name: subnet, size: 3 }", "inet_subnet needs a 4 byte field"),
        ("cgroup_field: cgroup_id", "cgroup_field: latency", "rings[0].cgroup_field: no field"),
        ("name: tcp_connects_total", "name: tcp_connect_latency_seconds", "defined twice"),
        ("name: tcp_connects_total", "name: 9bad", "metrics.counters[0].name: \"9bad\" is not a valid"),
        ("{ name: subnet, field: subnet,", "{ name: app_pod, field: subnet,", "appears twice"),
    ];
    for (from, to, want) in cases {
        assert!(CONFIG.contains(from), "{from}");
        let err = compile(&CONFIG.replacen(from, to, 1)).err().unwrap_or_default();
        assert!(err.contains(want), "{to}: got {err:?}, want {want:?}");
    }
}

#[test]
fn unknown_keys_are_rejected_by_serde() {
    let err = compile(&CONFIG.replace("bucket_min: 0", "bucket_minimum: 0")).unwrap_err();
    assert!(err.contains("unknown field `bucket_minimum`"), "{err}");
}
