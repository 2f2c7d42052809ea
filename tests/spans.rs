//! `tracing:` configs on the real kernel: exec-trace (the reference exporter's format)
//! delivers exactly the spans a known workload implies to an OTLP receiver over gRPC
//! and HTTP/protobuf; pod-exec-trace's spans carry the pod's attributes; with the
//! collector gone, metrics go on and dropped spans are counted. Needs root and BPF.

#[macro_use]
mod common;

use std::{os::unix::process::CommandExt, path::Path, process::Command, time::Duration};

use common::{
    compile_example, node, run_workload, sample, wait_for, Cgroups, Exporter, Pod, TempDir,
};
use test_support::otlp::{Receiver, Span};

/// Starts the exporter on `examples` (comma-separated) exporting to `endpoint` over
/// `protocol`.
fn start(
    examples: &str,
    dir: &TempDir,
    endpoint: &str,
    protocol: &str,
    extra: &[String],
) -> Exporter {
    start_env(examples, dir, endpoint, protocol, extra, &[])
}

/// As [`start`], with more environment.
fn start_env(
    examples: &str,
    dir: &TempDir,
    endpoint: &str,
    protocol: &str,
    extra: &[String],
    more: &[(&str, &str)],
) -> Exporter {
    for example in examples.split(',') {
        compile_example(example, &dir.0);
    }
    let mut args = vec![
        "--config.dir".to_string(),
        dir.0.display().to_string(),
        "--config.names".into(),
        examples.into(),
        "--config.strict".into(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
    ];
    env.extend_from_slice(more);
    Exporter::start_with_env(&args, &env, &dir.0.join("exporter.log"))
}

/// A copy of /bin/true at a path of its own (span names are exec paths).
fn program(dir: &TempDir, name: &str) -> String {
    let path = dir.0.join(name);
    std::fs::copy("/bin/true", &path).unwrap();
    path.display().to_string()
}

/// `/bin/bash` running `path` `n` times (a fork and exec each), in `cgroup` if given.
fn bash_runs(path: &str, n: usize, cgroup: Option<&Path>) {
    let mut c = Command::new("/bin/bash");
    c.arg("-c")
        .arg(format!("for ((i = 0; i < {n}; i++)); do {path}; done"));
    if let Some(cg) = cgroup {
        let procs = cg.join("cgroup.procs");
        // SAFETY: only a write(2) to a file between fork and exec.
        unsafe {
            c.pre_exec(move || std::fs::write(&procs, "0"));
        }
    }
    assert!(c.status().unwrap().success());
}

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of the trace `path`'s spans are in: its root first.
fn trace_of<'a>(spans: &'a [Span], path: &str) -> Vec<&'a Span> {
    let Some(one) = spans.iter().find(|s| s.name == path) else {
        return Vec::new();
    };
    let mut trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == one.trace_id)
        .collect();
    trace.sort_by_key(|s| !s.parent_span_id.is_empty());
    trace
}

/// Checks the trace of `n` runs of `path` under one bash: exactly n + 1 spans, the
/// root /bin/bash and n children of it, each within the root's time.
fn check_trace(spans: &[Span], path: &str, n: usize) -> Vec<Span> {
    let trace = trace_of(spans, path);
    let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(trace.len(), n + 1, "spans of the trace: {names:?}");
    let root = trace[0];
    assert_eq!(root.name, "/bin/bash");
    assert!(root.parent_span_id.is_empty(), "the root has no parent");
    assert_eq!(root.trace_id.len(), 16);
    for child in &trace[1..] {
        assert_eq!(child.name, path);
        assert_eq!(
            hex(&child.parent_span_id),
            hex(&root.span_id),
            "a child of the bash span"
        );
        assert!(child.end_ns > child.start_ns, "a process lives a while");
        assert!(
            child.start_ns >= root.start_ns && child.end_ns <= root.end_ns,
            "children within their parent"
        );
    }
    let mut ids: Vec<String> = trace.iter().map(|s| hex(&s.span_id)).collect();
    ids.dedup();
    assert_eq!(ids.len(), n + 1, "distinct span ids");
    trace.into_iter().cloned().collect()
}

fn exec_trace_exact(receiver: Receiver, tag: &str) {
    let dir = TempDir::new(&format!("spans-{tag}"));
    let exporter = start(
        "exec-trace",
        &dir,
        &receiver.endpoint,
        receiver.protocol,
        &[],
    );
    let path = program(&dir, &format!("t-{tag}"));
    bash_runs(&path, 25, None);
    receiver.wait(Duration::from_secs(20), |s| trace_of(s, &path).len() >= 26);
    // Longer than an export interval: anything sent twice or extra would be here.
    std::thread::sleep(Duration::from_millis(600));
    let trace = check_trace(&receiver.spans(), &path, 25);
    for s in &trace {
        assert_eq!(s.resource["service.name"], "exec-trace");
        assert_eq!(s.resource["k8s.node.name"], node());
        assert_eq!(s.attributes["ebpf_exporter.config"], "exec-trace");
        assert!(
            !s.attributes.contains_key("k8s.pod.name"),
            "no cgroup in these records"
        );
    }
    // The start-up trace: set-up, and the config's step under it.
    let spans = receiver.spans();
    let root = spans
        .iter()
        .find(|s| s.name == "start")
        .expect("a start-up trace");
    let config = spans
        .iter()
        .find(|s| s.name == "config exec-trace")
        .expect("its config's step");
    assert_eq!(config.parent_span_id, root.span_id);
    assert_eq!(config.attributes["outcome"], "3 program(s) attached");
    assert_eq!(root.resource["service.name"], "ebpf_exporter");
    assert!(root.start_ns <= config.start_ns && config.end_ns <= root.end_ns);
    let page = exporter.metrics();
    let exported = sample(&page, "ebpf_exporter_spans_exported_total", "").unwrap_or(0.0);
    assert!(exported >= 26.0, "{page}");
    for reason in ["queue_full", "export_failed", "decode"] {
        let dropped = sample(
            &page,
            "ebpf_exporter_spans_dropped_total",
            &format!("reason=\"{reason}\""),
        );
        assert_eq!(dropped, Some(0.0), "{reason}: {page}");
    }
}

#[test]
fn exec_trace_delivers_exactly_its_spans_over_grpc() {
    privileged!("exec_trace_delivers_exactly_its_spans_over_grpc");
    exec_trace_exact(Receiver::grpc(), "grpc");
}

#[test]
fn exec_trace_delivers_exactly_its_spans_over_http() {
    privileged!("exec_trace_delivers_exactly_its_spans_over_http");
    exec_trace_exact(Receiver::http(), "http");
}

#[test]
fn pod_exec_trace_spans_carry_their_pod() {
    privileged!("pod_exec_trace_spans_carry_their_pod");
    let receiver = Receiver::grpc();
    let pod = Pod::new("shop", "spans-6d5f4-q8w7e", "app");
    let dir = TempDir::new("spans-pod");
    let mut cgroups = Cgroups::new("spans-pod");
    let cg = pod.cgroup(&mut cgroups);
    let _exporter = start(
        "pod-exec-trace",
        &dir,
        &receiver.endpoint,
        receiver.protocol,
        &pod.logs(&dir.0),
    );
    let path = program(&dir, "t-pod");
    bash_runs(&path, 10, Some(&cg));
    let spans = receiver.wait(Duration::from_secs(20), |s| trace_of(s, &path).len() >= 11);
    let trace = check_trace(&spans, &path, 10);
    for s in &trace {
        let a = &s.attributes;
        assert_eq!(a["k8s.namespace.name"], pod.namespace, "{a:?}");
        assert_eq!(a["k8s.pod.name"], pod.name);
        assert_eq!(a["k8s.pod.uid"], pod.uid);
        assert_eq!(a["k8s.container.name"], pod.container);
        assert_eq!(s.resource["k8s.node.name"], node());
        assert_eq!(s.resource["service.name"], "pod-exec-trace");
    }
}

/// A loop device over a file on disk, with a scheduler that inserts every request;
/// detached on drop.
struct Loop {
    dev: String,
    file: std::path::PathBuf,
}

impl Loop {
    fn new(name: &str) -> Self {
        let file = Path::new("/var/tmp").join(format!("kebpf-{name}-{}", std::process::id()));
        std::fs::write(&file, vec![0u8; 4 << 20]).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let name = dev.trim_start_matches("/dev/").to_string();
        std::fs::write(format!("/sys/block/{name}/queue/scheduler"), "mq-deadline").unwrap();
        Self { dev, file }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn bio_trace_makes_two_spans_per_direct_write() {
    privileged!("bio_trace_makes_two_spans_per_direct_write");
    bio_trace_exact(Receiver::http(), "http");
    bio_trace_exact(Receiver::grpc(), "grpc");
}

fn bio_trace_exact(receiver: Receiver, tag: &str) {
    let dir = TempDir::new(&format!("spans-bio-{tag}"));
    let disk = Loop::new(&format!("spans-bio-{tag}"));
    let _exporter = start(
        "bio-trace",
        &dir,
        &receiver.endpoint,
        receiver.protocol,
        &[],
    );
    let name = disk.dev.trim_start_matches("/dev/");
    let ours = |s: &&Span| s.attributes.get("device").map(String::as_str) == Some(name);
    run_workload(None, &["direct-write", &disk.dev, "16", "65536"]);
    receiver.wait(Duration::from_secs(20), |s| {
        s.iter().filter(ours).count() >= 32
    });
    std::thread::sleep(Duration::from_millis(600));
    let spans = receiver.spans();
    let spans: Vec<&Span> = spans.iter().filter(ours).collect();
    let count = |n: &str| spans.iter().filter(|s| s.name == n).count();
    assert_eq!(
        (count("block_rq_insert"), count("block_rq_service")),
        (16, 16),
        "{spans:#?}"
    );
    for s in &spans {
        assert_eq!(s.attributes["operation"], "write");
        assert_eq!(s.resource["service.name"], "bio-trace");
        assert!(
            s.parent_span_id.is_empty(),
            "both are roots of the request's trace"
        );
        let pair: Vec<&&Span> = spans.iter().filter(|o| o.trace_id == s.trace_id).collect();
        assert_eq!(pair.len(), 2, "an insert and a service span per request");
        if s.name == "block_rq_service" {
            assert!(s.end_ns > s.start_ns, "service takes time");
        } else {
            assert_eq!(s.end_ns, s.start_ns, "insert is zero-width");
        }
    }
}

/// Spans of `exporter` dropped for `reason`.
/// `ebpf_exporter_spans_dropped_total{reason}` once it reaches `n`, or after 20 s.
fn wait_dropped(exporter: &Exporter, reason: &str, n: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = exporter.metrics();
        let label = format!("reason=\"{reason}\"");
        let got = sample(&page, "ebpf_exporter_spans_dropped_total", &label).unwrap_or(0.0);
        if got >= n || std::time::Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dead_collector_costs_only_its_spans() {
    privileged!("a_dead_collector_costs_only_its_spans");
    // A port nothing listens on: every export is refused.
    let endpoint = format!("http://127.0.0.1:{}", common::free_port());
    let pod = Pod::new("shop", "spans-dead-2b3c4-k5l6m", "app");
    let dir = TempDir::new("spans-dead");
    let mut cgroups = Cgroups::new("spans-dead");
    let cg = pod.cgroup(&mut cgroups);
    let exporter = start(
        "exec-trace,syscall-latency",
        &dir,
        &endpoint,
        "grpc",
        &pod.logs(&dir.0),
    );
    let path = program(&dir, "t-dead");
    bash_runs(&path, 20, None);
    run_workload(Some(&cg), &["getpid", "500"]);
    let name = "ebpf_exporter_syscall_latency_seconds_count";
    let labels = format!("{},node_id=\"{}\",syscall=\"getpid\"", pod.labels(), node());
    let page = wait_for(&exporter, name, &labels, 500.0);
    assert_eq!(
        sample(&page, name, &labels),
        Some(500.0),
        "metrics count on: {page}"
    );
    assert!(
        wait_dropped(&exporter, "export_failed", 21.0) >= 21.0,
        "the trace's 21 spans counted as dropped: {}",
        exporter.metrics()
    );
    assert_eq!(
        sample(
            &exporter.metrics(),
            "ebpf_exporter_spans_exported_total",
            ""
        ),
        Some(0.0)
    );
}

#[test]
fn sched_trace_joins_the_application_s_trace_through_usdt() {
    privileged!("sched_trace_joins_the_application_s_trace_through_usdt");
    let receiver = Receiver::grpc();
    let dir = TempDir::new("spans-sched");
    // The config attaches to `kebpf-workload`, found on the exporter's PATH.
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let workload = bin.join("kebpf-workload");
    std::fs::copy(common::workload(), &workload).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _exporter = start_env(
        "sched-trace",
        &dir,
        &receiver.endpoint,
        receiver.protocol,
        &[],
        &[("PATH", &path)],
    );
    // The application passes ids as the integers whose bytes (in memory, as the
    // kernel copies them into records) are the ids.
    let trace: [u8; 16] = *b"kebpf-sched-test";
    let span_id: [u8; 8] = std::process::id()
        .to_be_bytes()
        .repeat(2)
        .try_into()
        .unwrap();
    let word = |b: &[u8]| format!("{:x}", u64::from_ne_bytes(b.try_into().unwrap()));
    let status = Command::new(&workload)
        .args([
            "-",
            "traced-sleep",
            "10",
            &word(&trace[..8]),
            &word(&trace[8..]),
            &word(&span_id),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let ours = |s: &&Span| s.trace_id == trace;
    let switched =
        |s: &Span| s.name == "sched_switch" && s.attributes["state"] == "interruptible_sleep";
    receiver.wait(Duration::from_secs(20), |s| {
        s.iter().filter(ours).filter(|s| switched(s)).count() >= 10
    });
    std::thread::sleep(Duration::from_millis(600));
    let spans = receiver.spans();
    let spans: Vec<&Span> = spans.iter().filter(ours).collect();
    for s in &spans {
        assert_eq!(
            s.parent_span_id, span_id,
            "a child of the application's span"
        );
        assert_eq!(s.end_ns, s.start_ns, "zero-width");
        assert_eq!(s.resource["service.name"], "sched");
    }
    let names: Vec<(&str, &str)> = spans
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.attributes.get("state").map_or("", String::as_str),
            )
        })
        .collect();
    assert_eq!(
        spans.iter().filter(|s| switched(s)).count(),
        10,
        "one switch out per sleep, only while traced: {names:?}"
    );
    assert_eq!(
        spans.iter().filter(|s| s.name == "sched_wakeup").count(),
        10,
        "one wakeup per sleep: {names:?}"
    );
}

#[test]
fn the_tap_shows_spans_without_a_collector() {
    privileged!("the_tap_shows_spans_without_a_collector");
    use std::io::BufRead;
    let dir = TempDir::new("spans-tap");
    compile_example("exec-trace", &dir.0);
    let args = [
        "--config.dir",
        dir.0.to_str().unwrap(),
        "--config.names",
        "exec-trace",
    ];
    let log = dir.0.join("exporter.log");
    let exporter = Exporter::start(&args, &log);
    let path = program(&dir, "t-tap");
    let (status, reader) = common::open_stream(
        &exporter.tap_addr,
        &format!("/events?config=exec-trace&span_name={path}&limit=3"),
    );
    assert!(status.contains(" 200 "), "{status}");
    bash_runs(&path, 3, None);
    let lines: Vec<String> = reader.lines().map(Result::unwrap).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let span = &e["span"];
        assert_eq!(span["name"], path.as_str(), "{line}");
        assert_eq!(span["trace_id"].as_str().unwrap().len(), 32, "{line}");
        assert_ne!(
            span["parent_span_id"], "0000000000000000",
            "a child of bash: {line}"
        );
        assert!(span["duration_ns"].as_u64().unwrap() > 0, "{line}");
        assert!(span["start"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches(
            "spans of tracing: configs are not exported: neither OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        .count(),
        1,
        "said once at start-up: {text}"
    );
    assert!(!exporter
        .metrics()
        .contains("ebpf_exporter_spans_exported_total"));
}

#[test]
fn a_reload_replaces_a_changed_span_config() {
    privileged!("a_reload_replaces_a_changed_span_config");
    use std::io::{Read, Write};
    let receiver = Receiver::http();
    let dir = TempDir::new("spans-reload");
    let exporter = start(
        "exec-trace",
        &dir,
        &receiver.endpoint,
        receiver.protocol,
        &["--web.enable-lifecycle".into()],
    );
    let before = program(&dir, "t-before");
    bash_runs(&before, 3, None);
    receiver.wait(Duration::from_secs(20), |s| trace_of(s, &before).len() >= 4);
    let yaml = dir.0.join("exec-trace.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        text.replace("service: exec-trace", "service: exec-trace-v2"),
    )
    .unwrap();
    let mut s = std::net::TcpStream::connect(&exporter.addr).unwrap();
    write!(
        s,
        "POST /-/reload HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") && answer.contains("replaced [\"exec-trace\"]"),
        "{answer}"
    );
    let after = program(&dir, "t-after");
    bash_runs(&after, 3, None);
    receiver.wait(Duration::from_secs(20), |s| trace_of(s, &after).len() >= 4);
    std::thread::sleep(Duration::from_millis(600));
    let spans = receiver.spans();
    for (path, service) in [(&before, "exec-trace"), (&after, "exec-trace-v2")] {
        for s in check_trace(&spans, path, 3) {
            assert_eq!(s.resource["service.name"], service, "{path}");
        }
    }
}

#[test]
fn shutdown_exports_the_spans_still_held() {
    privileged!("shutdown_exports_the_spans_still_held");
    let receiver = Receiver::grpc();
    let dir = TempDir::new("spans-shutdown");
    // Nothing is exported on a timer within the test: only the batch at shutdown.
    let mut exporter = start_env(
        "exec-trace",
        &dir,
        &receiver.endpoint,
        receiver.protocol,
        &[],
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000")],
    );
    let path = program(&dir, "t-shutdown");
    bash_runs(&path, 3, None);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        trace_of(&receiver.spans(), &path).is_empty(),
        "held until shutdown"
    );
    // SAFETY: kill on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(exporter.child.id() as i32, libc::SIGTERM) },
        0
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while exporter.child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the exporter did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check_trace(&receiver.spans(), &path, 3);
}

#[test]
fn tls_with_the_collector_s_ca_and_headers() {
    privileged!("tls_with_the_collector_s_ca_and_headers");
    let dir = TempDir::new("spans-tls");
    common::tls::ca(&dir.0, "ca");
    common::tls::cert(&dir.0, "collector", "ca", true);
    let (cert, key) = (dir.0.join("collector.pem"), dir.0.join("collector.key"));
    tls_exact(&dir, Receiver::https(&cert, &key), "https");
    tls_exact(&dir, Receiver::grpc_tls(&cert, &key), "grpcs");
}

/// Spans reach `receiver` over TLS with the CA and headers from the environment, and
/// fail (counted) without the CA.
fn tls_exact(dir: &TempDir, receiver: Receiver, tag: &str) {
    let ca = dir.0.join("ca.pem").display().to_string();
    let trusted = start_env(
        "exec-trace",
        dir,
        &receiver.endpoint,
        receiver.protocol,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=shop"),
        ],
    );
    let path = program(dir, &format!("t-{tag}"));
    bash_runs(&path, 3, None);
    receiver.wait(Duration::from_secs(20), |s| trace_of(s, &path).len() >= 4);
    check_trace(&receiver.spans(), &path, 3);
    assert!(
        receiver
            .headers()
            .contains(&("x-tenant".into(), "shop".into())),
        "{tag}: {:?}",
        receiver.headers()
    );
    drop(trusted);
    // Without the CA the collector's certificate is refused: exports fail, counted.
    let untrusted = start(
        "exec-trace",
        dir,
        &receiver.endpoint,
        receiver.protocol,
        &[],
    );
    let refused = program(dir, &format!("t-{tag}-untrusted"));
    bash_runs(&refused, 1, None);
    assert!(
        wait_dropped(&untrusted, "export_failed", 2.0) >= 2.0,
        "{tag}: {}",
        untrusted.metrics()
    );
    assert!(trace_of(&receiver.spans(), &refused).is_empty(), "{tag}");
}
