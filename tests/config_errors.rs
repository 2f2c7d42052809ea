//! Bad config fails startup with a message naming the file, the key and the reason.

mod common;

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(common::BIN)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file in a temp dir, removed on drop.
struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> Self {
        let file =
            std::env::temp_dir().join(format!("kebpf-config-{}-{name}.yaml", std::process::id()));
        std::fs::write(&file, text).unwrap();
        Self(file)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const DEFAULT: &str = include_str!("../src/default.yaml");

#[test]
fn unknown_key_names_file_key_and_reason() {
    let file = TempConfig::new(
        "unknown",
        &DEFAULT.replace(
            "bucket_type: exp2\n          bucket_min: 0\n          bucket_max: 26",
            "bucket_kind: exp2\n          bucket_min: 0\n          bucket_max: 26",
        ),
    );
    let (ok, err) = run(&["--config.file", file.0.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains(file.0.to_str().unwrap()), "{err}");
    assert!(
        err.contains("programs.tcp_connect_latency.metrics.histograms"),
        "{err}"
    );
    assert!(
        err.contains("unknown field") && err.contains("bucket_kind"),
        "{err}"
    );
}

#[test]
fn semantic_errors_name_the_key() {
    let file = TempConfig::new(
        "semantic",
        &DEFAULT.replace("field: latency_ns", "field: latency_us"),
    );
    // Strict: the default's other programs would otherwise start and serve.
    let (ok, err) = run(
        &["--config.file", file.0.to_str().unwrap(), "--config.strict"],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}: programs.tcp_connect_latency.metrics.histograms[0].value.field: no field \"latency_us\"",
            file.0.display()
        )),
        "{err}"
    );
}

#[test]
fn environment_overrides_are_checked_too() {
    let (ok, err) = run(
        &[],
        &[("KUBE_EBPF_EXPORTER__PIPELINE__QUEUE_BATCHES", "lots")],
    );
    assert!(!ok);
    assert!(
        err.contains("pipeline.queue_batches") && err.contains("invalid type"),
        "{err}"
    );
    assert!(err.contains("KUBE_EBPF_EXPORTER__"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let (ok, err) = run(&["--config.file", "/nonexistent/kebpf.yaml"], &[]);
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/kebpf.yaml") && err.contains("No such file"),
        "{err}"
    );
}

/// Writes a BPF C source into `dir` and compiles it as `<name>.bpf.o` with our headers.
fn compile_c(dir: &std::path::Path, name: &str, source: &str) {
    let src = dir.join(format!("{name}.bpf.c"));
    std::fs::write(&src, source).unwrap();
    test_support::compile_bpf(&src, &dir.join(format!("{name}.bpf.o")), &[]);
}

const COUNTER_C: &str = r#"
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16); __type(key, __u64); __type(value, __u64); } calls_total SEC(".maps");
SEC("ATTACH") int prog(void *ctx) { __u64 k = 1, v = 1; bpf_map_update_elem(&calls_total, &k, &v, BPF_ANY); return 0; }
char LICENSE[] SEC("license") = "GPL";
"#;

const COUNTER_YAML: &str = "metrics:\n  counters:\n    - name: calls_total\n      help: Calls\n      labels:\n        - { name: key, size: SIZE, decoders: [{ name: uint }] }\n";

/// A config dir holding `name.yaml` (+ `name.bpf.o` when `c` is given).
fn config_dir(test: &str, name: &str, yaml: &str, c: Option<&str>) -> common::TempDir {
    let dir = common::TempDir::new(test);
    std::fs::write(dir.0.join(format!("{name}.yaml")), yaml).unwrap();
    if let Some(c) = c {
        compile_c(&dir.0, name, c);
    }
    dir
}

fn check(dir: &common::TempDir, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::BIN)
        .args(["--config.dir", dir.0.to_str().unwrap(), "--config.check"])
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn label_sizes_are_checked_against_the_map_key() {
    if !test_support::privileged("label_sizes_are_checked_against_the_map_key") {
        return;
    }
    let c = COUNTER_C.replace("ATTACH", "tracepoint/syscalls/sys_enter_getppid");
    let dir = config_dir(
        "keysize",
        "calls",
        &COUNTER_YAML.replace("SIZE", "4"),
        Some(&c),
    );
    let (ok, out, _) = check(&dir, &[]);
    assert!(!ok, "{out}");
    let yaml = dir.0.join("calls.yaml");
    assert!(
        out.contains(&format!("FAILED  calls (config): {}: metrics.counters[0].labels: sizes and padding add up to 4 bytes, but map \"calls_total\" has 8-byte keys", yaml.display())),
        "{out}"
    );
    let dir = config_dir(
        "keysize-ok",
        "calls",
        &COUNTER_YAML.replace("SIZE", "8"),
        Some(&c),
    );
    let (ok, out, _) = check(&dir, &[]);
    assert!(
        ok && out.contains("ok      calls: 1 program(s) attached"),
        "{out}"
    );
}

#[test]
fn missing_object_is_named() {
    if !test_support::privileged("missing_object_is_named") {
        return;
    }
    let dir = config_dir("noobj", "calls", &COUNTER_YAML.replace("SIZE", "8"), None);
    let (ok, out, _) = check(&dir, &[]);
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "object: cannot read {}",
            dir.0.join("calls.bpf.o").display()
        )),
        "{out}"
    );
    assert!(out.contains("No such file"), "{out}");
}

#[test]
fn attach_points_the_kernel_lacks_are_explained() {
    if !test_support::privileged("attach_points_the_kernel_lacks_are_explained") {
        return;
    }
    let c = COUNTER_C.replace("ATTACH", "tracepoint/syscalls/sys_enter_no_such_call");
    let dir = config_dir(
        "noattach",
        "calls",
        &COUNTER_YAML.replace("SIZE", "8"),
        Some(&c),
    );
    let (ok, out, _) = check(&dir, &[]);
    assert!(!ok);
    assert!(
        out.contains("FAILED  calls (attach, missing_hook)"),
        "{out}"
    );
    assert!(out.contains("(tracepoint/syscalls/sys_enter_no_such_call): attach failed (no such tracepoint on this kernel"), "{out}");
}

#[test]
fn verifier_rejections_show_the_log() {
    if !test_support::privileged("verifier_rejections_show_the_log") {
        return;
    }
    // Reads a map value without the NULL check the verifier insists on.
    let c = COUNTER_C
        .replace(
            "__u64 k = 1, v = 1; bpf_map_update_elem(&calls_total, &k, &v, BPF_ANY); return 0;",
            "__u64 k = 1; __u64 *v = bpf_map_lookup_elem(&calls_total, &k); return *v;",
        )
        .replace("ATTACH", "tracepoint/syscalls/sys_enter_getppid");
    let dir = config_dir(
        "verifier",
        "calls",
        &COUNTER_YAML.replace("SIZE", "8"),
        Some(&c),
    );
    let (ok, out, _) = check(&dir, &[]);
    assert!(!ok);
    assert!(out.contains("FAILED  calls (load, verifier)"), "{out}");
    assert!(
        out.contains("load failed") && out.contains("verifier log (last lines)"),
        "{out}"
    );
    assert!(
        out.contains("invalid mem access 'map_value_or_null'"),
        "{out}"
    );
}

#[test]
fn a_bad_config_is_skipped_and_reported_unless_strict() {
    if !test_support::privileged("a_bad_config_is_skipped_and_reported_unless_strict") {
        return;
    }
    let c = COUNTER_C.replace("ATTACH", "tracepoint/syscalls/sys_enter_getppid");
    let dir = config_dir("skip", "good", &COUNTER_YAML.replace("SIZE", "8"), Some(&c));
    std::fs::write(dir.0.join("bad.yaml"), "metrics:\n  counters:\n    - name: x\n      help: y\n      labels: [{ name: k, size: 8, decoders: [{ name: bogus }] }]\n").unwrap();
    let exporter = common::Exporter::start(
        &["--config.dir", dir.0.to_str().unwrap()],
        &dir.0.join("exporter.log"),
    );
    let page = exporter.metrics();
    assert!(
        page.contains("ebpf_exporter_enabled_configs{name=\"good\"} 1"),
        "{page}"
    );
    assert!(
        page.lines()
            .any(|l| l.starts_with("ebpf_exporter_config_failed{")
                && ["name=\"bad\"", "stage=\"config\"", "reason=\"config\""]
                    .iter()
                    .all(|w| l.contains(w))
                && l.ends_with(" 1")),
        "{page}"
    );
    drop(exporter);
    let log = std::fs::read_to_string(dir.0.join("exporter.log")).unwrap();
    assert!(
        log.contains(
            "bad.yaml: metrics.counters[0].labels[0].decoders[0].name: unknown decoder \"bogus\""
        ),
        "{log}"
    );

    let out = Command::new(common::BIN)
        .args([
            "--config.dir",
            dir.0.to_str().unwrap(),
            "--config.strict",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config bad failed (config)"));
}

#[test]
fn every_attach_kind_this_kernel_has_attaches_and_the_others_say_why() {
    if !test_support::privileged(
        "every_attach_kind_this_kernel_has_attaches_and_the_others_say_why",
    ) {
        return;
    }
    let dir = common::TempDir::new("attach-kinds");
    let kinds = [
        ("perf", "perf_event/type=1,config=0,frequency=99", "0"),
        ("hwperf", "perf_event/type=0,config=0,frequency=99", "0"),
        ("uretprobe", "uretprobe/libc.so.6:usleep", "0"),
        ("xdp", "xdp/lo", "2"),
        ("kprobe", "kprobe/do_nanosleep", "0"),
        ("usdt", "usdt//usr/bin/true:provider:probe", "0"),
    ];
    for (name, section, ret) in kinds {
        let c = format!("#include \"vmlinux.h\"\n#include <bpf/bpf_helpers.h>\nSEC(\"{section}\") int prog(void *ctx) {{ return {ret}; }}\nchar LICENSE[] SEC(\"license\") = \"GPL\";\n");
        compile_c(&dir.0, name, &c);
        std::fs::write(dir.0.join(format!("{name}.yaml")), "metrics: {}\n").unwrap();
    }
    let (ok, out, _) = check(&dir, &[]);
    assert!(!ok);
    for name in ["perf", "uretprobe", "xdp"] {
        assert!(
            out.contains(&format!("ok      {name}: 1 program(s) attached")),
            "{out}"
        );
    }
    // This kernel has no kprobes (CONFIG_KPROBES unset); real nodes do.
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    if !kprobes {
        assert!(
            out.contains("FAILED  kprobe (attach, missing_hook)")
                && out.contains("this kernel lacks kprobes"),
            "{out}"
        );
    }
    // A hardware event needs a PMU: where there is none, the reason is given.
    if !std::path::Path::new("/sys/bus/event_source/devices/cpu").exists() {
        assert!(
            out.contains("FAILED  hwperf (attach, missing_hook)")
                && out.contains("this machine has no hardware PMU"),
            "{out}"
        );
    }
    // USDT probes attach (tests/examples.rs); a binary without probes says so.
    assert!(
        out.contains("FAILED  usdt (attach, missing_hook)")
            && out.contains("/usr/bin/true: no .note.stapsdt section"),
        "{out}"
    );
}

#[test]
fn metadata_sources_that_cannot_answer_are_named() {
    let (ok, err) = run(
        &[],
        &[(
            "KUBE_EBPF_EXPORTER__KUBERNETES__CRI_SOCKET",
            "/nonexistent/cri.sock",
        )],
    );
    assert!(!ok);
    assert!(
        err.contains("kubernetes.cri_socket")
            && err.contains("/nonexistent/cri.sock")
            && err.contains("No such file"),
        "{err}"
    );
    let (ok, err) = run(
        &[],
        &[
            ("KUBE_EBPF_EXPORTER__KUBERNETES__SOURCES", "[api, logs]"),
            ("NODE_NAME", ""),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("kubernetes.sources lists api") && err.contains("NODE_NAME"),
        "{err}"
    );
    let (ok, err) = run(
        &[],
        &[
            ("KUBE_EBPF_EXPORTER__KUBERNETES__SOURCES", "[api]"),
            ("NODE_NAME", "node-a"),
            ("KUBECONFIG", "/nonexistent/kubeconfig"),
            ("KUBERNETES_SERVICE_HOST", ""),
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("kubernetes.sources: api")
            && err.contains("pods of node node-a")
            && err.contains("/nonexistent/kubeconfig"),
        "{err}"
    );
    // An HTTPS API server that is not there: the exporter starts anyway (a DaemonSet
    // must not depend on the control plane to serve), saying why pods are not known;
    // the TLS client was built (no panic over crypto providers).
    let dir = common::TempDir::new("kubeconfig-tls");
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    if test_support::privileged("metadata_sources_that_cannot_answer_are_named") {
        let log = dir.0.join("exporter.log");
        let exporter = common::Exporter::start_with_env(
            &[],
            &[
                ("KUBE_EBPF_EXPORTER__KUBERNETES__SOURCES", "[api, logs]"),
                ("NODE_NAME", "node-a"),
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ],
            &log,
        );
        let page = exporter.metrics();
        assert!(
            page.contains("ebpf_exporter_metadata_source_up{source=\"api\"} 0"),
            "{page}"
        );
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(
            log.contains("listing this node's pods failed")
                && log.contains("https://127.0.0.1:1")
                && !log.contains("panicked"),
            "{log}"
        );
    }
}

#[test]
fn out_of_range_settings_are_named_with_value_and_range() {
    for (key, value, range) in [
        ("PIPELINE__ENRICH_WORKERS", "100000", "must be 1..=256"),
        ("PIPELINE__INGEST_WORKERS", "0", "must be 1..=256"),
        ("PIPELINE__AGGREGATE_WORKERS", "1000", "must be 1..=256"),
        ("PIPELINE__QUEUE_BATCHES", "0", "must be 1..=1048576"),
        ("PIPELINE__BATCH_BYTES", "100", "must be 4096..=16777216"),
        ("PIPELINE__DRAIN_INTERVAL_MS", "0", "must be 1..=10000"),
        ("PIPELINE__MAX_SERIES", "0", "must be 1..=10000000"),
        ("PIPELINE__PERF_PAGES", "3", "must be a power of two"),
        (
            "PIPELINE__RING_BYTES",
            "3",
            "must be a power of two from the page size",
        ),
        (
            "PIPELINE__RING_BYTES",
            "12288",
            "must be a power of two from the page size",
        ),
        (
            "PIPELINE__WAKEUP_BYTES",
            "4194304",
            "must be 1..4194304 (below pipeline.ring_bytes)",
        ),
        ("TAP__INPUT_BATCHES", "0", "must be 1..=1048576"),
        ("TAP__MAX_SUBSCRIBERS", "0", "must be 1..=1024"),
        ("WEB__MAX_CONNECTIONS", "0", "must be 1..=65536"),
        ("WEB__HEADER_TIMEOUT_SECONDS", "0", "must be 1..=300"),
        ("WEB__MAX_REQUESTS", "5000", "must be 1..=1024"),
        ("TAP__QUEUE_EVENTS", "0", "must be 1..=16777216"),
        (
            "KUBERNETES__SERIES_GRACE_SECONDS",
            "99999999",
            "must be 0..=604800",
        ),
        (
            "KUBERNETES__METADATA_WAIT_MS",
            "600000",
            "must be 0..=60000",
        ),
    ] {
        let var = format!("KUBE_EBPF_EXPORTER__{key}");
        let (ok, err) = run(&["--config.check"], &[(&var, value)]);
        let name = key.to_lowercase().replace("__", ".");
        assert!(!ok, "{var}={value} accepted");
        assert!(
            err.contains("embedded default config: settings out of range")
                && err.contains(&format!("{name} = {value}: {range}"))
                && err.contains(&var),
            "{var}={value}: {err}"
        );
    }
}

#[test]
fn a_config_without_programs_says_how_to_add_them() {
    let file = TempConfig::new("no-programs", "web:\n  listen_address: \":9999\"\n");
    let (ok, err) = run(
        &["--config.check", "--config.file", file.0.to_str().unwrap()],
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}: no programs to run: add a `programs:` section",
            file.0.display()
        )) && err.contains("--config.dir"),
        "{err}"
    );
}
