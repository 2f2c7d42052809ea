//! deploy/rules: promtool accepts the alerting and recording rules and their unit tests
//! pass (each alert fires on the series that should fire it and on no other), and the
//! prometheus-operator overlay's PrometheusRule carries exactly the same groups.

mod common;

use std::{path::Path, process::Command};

use serde_yaml_ng::Value;

fn rules_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rules")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    if !test_support::tool("rules_pass_promtool_check_and_unit_tests", "promtool") {
        return;
    }
    promtool(&["check", "rules", "kube-ebpf-exporter.rules.yml"]);
    promtool(&["test", "rules", "kube-ebpf-exporter.rules.test.yml"]);
}

#[test]
fn prometheus_rule_matches_the_rules_file() {
    let name = "prometheus_rule_matches_the_rules_file";
    if !test_support::tool(name, "kubectl") {
        return;
    }
    let overlay = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/overlays/prometheus-operator");
    let (_, docs) = common::kustomize(&overlay);
    let rule = docs
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("the overlay renders a PrometheusRule");
    let file: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(rules_dir().join("kube-ebpf-exporter.rules.yml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    assert!(!file["groups"].as_sequence().unwrap().is_empty());
}
