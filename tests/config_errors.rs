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
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A config file in a temp dir, removed on drop.
struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> Self {
        let file = std::env::temp_dir().join(format!("kebpf-config-{}-{name}.yaml", std::process::id()));
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
    let file = TempConfig::new("unknown", &DEFAULT.replace("bucket_type: exp2", "bucket_kind: exp2"));
    let (ok, err) = run(&["--config.file", file.0.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(err.contains(file.0.to_str().unwrap()), "{err}");
    assert!(err.contains("programs.tcp_connect_latency.metrics.histograms"), "{err}");
    assert!(err.contains("unknown field") && err.contains("bucket_kind"), "{err}");
}

#[test]
fn semantic_errors_name_the_key() {
    let file = TempConfig::new("semantic", &DEFAULT.replace("field: latency_ns", "field: latency_us"));
    let (ok, err) = run(&["--config.file", file.0.to_str().unwrap()], &[]);
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
    let (ok, err) = run(&[], &[("KUBE_EBPF_EXPORTER__PIPELINE__QUEUE_BATCHES", "lots")]);
    assert!(!ok);
    assert!(err.contains("pipeline.queue_batches") && err.contains("invalid type"), "{err}");
    assert!(err.contains("KUBE_EBPF_EXPORTER__"), "{err}");
}

#[test]
fn missing_file_is_named() {
    let (ok, err) = run(&["--config.file", "/nonexistent/kebpf.yaml"], &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/kebpf.yaml") && err.contains("No such file"), "{err}");
}
