//! deploy/: every kustomize overlay renders and validates against the Kubernetes schemas
//! offline; the exporter runs with only the DaemonSet's capabilities as a non-root user,
//! and the custom-config overlay's config loads.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{connects, kustomize, samples, Cgroups, Exporter, Pod, TempDir};
use serde_yaml_ng::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// deploy/base and every overlay.
fn kustomizations() -> Vec<PathBuf> {
    let mut dirs = vec![deploy().join("base")];
    for e in std::fs::read_dir(deploy().join("overlays")).unwrap() {
        dirs.push(e.unwrap().path());
    }
    dirs.sort();
    dirs
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The capabilities the base DaemonSet adds, as `setpriv` names them.
fn daemonset_capabilities() -> Vec<String> {
    let (_, docs) = kustomize(&deploy().join("base"));
    let ds = of_kind(&docs, "DaemonSet")[0];
    let security = &ds["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert!(security
        .get("privileged")
        .is_none_or(|p| p.as_bool() == Some(false)));
    security["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_lowercase())
        .collect()
}

#[test]
fn every_overlay_renders_and_validates_offline() {
    let name = "every_overlay_renders_and_validates_offline";
    if !test_support::tool(name, "kubectl") || !test_support::tool(name, "kubernetes-validate") {
        return;
    }
    let dir = TempDir::new("deploy-validate");
    for k in kustomizations() {
        let (text, docs) = kustomize(&k);
        let file = dir.0.join("rendered.yaml");
        std::fs::write(&file, &text).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {report}", k.display());
        // Custom resources have no schema there: only the operator's may be unchecked.
        for line in report.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                line.contains("kind ServiceMonitor") || line.contains("kind PrometheusRule"),
                "{}: {line}",
                k.display()
            );
        }
        let daemonsets = of_kind(&docs, "DaemonSet");
        assert_eq!(daemonsets.len(), 1, "{}", k.display());
        // A rule the API server enforces beyond the schema.
        let security =
            &daemonsets[0]["spec"]["template"]["spec"]["containers"][0]["securityContext"];
        let adds_sys_admin = security["capabilities"]["add"]
            .as_sequence()
            .is_some_and(|caps| caps.iter().any(|c| c == "SYS_ADMIN"));
        assert!(
            !(adds_sys_admin && security["allowPrivilegeEscalation"] == false),
            "{}: CAP_SYS_ADMIN needs allowPrivilegeEscalation",
            k.display()
        );

        // Only the monitoring namespace reaches the metrics port, unless opted out.
        let policies = of_kind(&docs, "NetworkPolicy");
        if k.ends_with("no-network-policy") {
            assert!(policies.is_empty(), "{}", k.display());
        } else {
            let ds = &daemonsets[0];
            assert_eq!(policies.len(), 1, "{}", k.display());
            let spec = &policies[0]["spec"];
            assert_eq!(spec["policyTypes"][0], "Ingress");
            // It selects the DaemonSet's pods (kustomize adds the common labels).
            let selects = spec["podSelector"]["matchLabels"].as_mapping().unwrap();
            for (key, value) in selects {
                assert_eq!(&ds["spec"]["template"]["metadata"]["labels"][key], value);
            }
            let rule = &spec["ingress"][0];
            assert_eq!(
                rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "monitoring"
            );
            assert_eq!(rule["ports"][0]["port"], "metrics");
            assert_eq!(rule["from"].as_sequence().unwrap().len(), 1);
        }

        // The TLS overlay: the web config from its Secret, HTTPS probes and scrapes.
        if k.ends_with("tls-basic-auth") {
            let pod = &daemonsets[0]["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            assert!(c["args"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|a| a == "--web.config.file=/etc/kube-ebpf-exporter/web/web.yml"));
            assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
            assert_eq!(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
            assert!(pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "kube-ebpf-exporter-web"));
            let sm = of_kind(&docs, "ServiceMonitor")[0];
            let e = &sm["spec"]["endpoints"][0];
            assert_eq!(e["scheme"], "https");
            assert!(
                e["basicAuth"]["password"]["name"].is_string()
                    && e["tlsConfig"]["ca"]["secret"]["key"] == "ca.crt"
            );
        }

        // The image-volume overlay: the program directory is an OCI image, mounted
        // read-only where --config.dir points.
        if k.ends_with("programs-image") {
            let pod = &daemonsets[0]["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            let volume = pod["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "programs")
                .unwrap();
            assert!(
                volume["image"]["reference"].is_string() && volume.get("configMap").is_none(),
                "{volume:?}"
            );
            let mount = c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "programs")
                .unwrap();
            assert_eq!(mount["readOnly"], true);
            let dir = format!("--config.dir={}", mount["mountPath"].as_str().unwrap());
            assert!(
                c["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|a| a == dir.as_str()),
                "{:?}",
                c["args"]
            );
        }

        // A ServiceMonitor must find the Service and its port.
        let service = of_kind(&docs, "Service")[0];
        for sm in of_kind(&docs, "ServiceMonitor") {
            assert_eq!(
                sm["metadata"]["namespace"],
                service["metadata"]["namespace"]
            );
            let wanted = sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
            for (key, value) in wanted {
                assert_eq!(&service["metadata"]["labels"][key], value, "{key:?}");
            }
            let ports: Vec<&Value> = service["spec"]["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| &p["name"])
                .collect();
            for e in sm["spec"]["endpoints"].as_sequence().unwrap() {
                assert!(
                    ports.contains(&&e["port"]),
                    "{:?} not in {ports:?}",
                    e["port"]
                );
            }
        }
    }
}

#[test]
fn custom_config_overlay_loads() {
    if !test_support::privileged("custom_config_overlay_loads") {
        return;
    }
    let overlay = deploy().join("overlays/custom-config");
    let out = Command::new(common::BIN)
        .arg("--config.check")
        .arg("--config.file")
        .arg(overlay.join("config.yaml"))
        .arg("--config.dir")
        .arg(overlay.join("programs"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok      tcp_connect_latency"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn runs_as_nobody_with_only_the_daemonsets_capabilities() {
    let name = "runs_as_nobody_with_only_the_daemonsets_capabilities";
    if !test_support::privileged(name)
        || !test_support::tool(name, "setpriv")
        || !test_support::tool(name, "kubectl")
    {
        return;
    }
    let wrapper = as_nobody();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();

    let pod = Pod::new("shop", "web-nobody-4k2p1", "nginx");
    let dir = TempDir::new(pod.name);
    let mut cgroups = Cgroups::new(pod.name);
    let cg = pod.cgroup(&mut cgroups);
    let flags = pod.logs(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let log = dir.0.join("exporter.log");
    let exporter = Exporter::start_under(&wrapper, &flags, &[], &log);
    const N: usize = 17;
    connects(N, &cg);

    let metric = "ebpf_exporter_tcp_connect_latency_seconds_count";
    let pod_label = format!("app_pod=\"{}\"", pod.name);
    let deadline = Instant::now() + Duration::from_secs(15);
    let count = loop {
        let page = exporter.metrics();
        let count: f64 = samples(&page, metric)
            .iter()
            .filter(|(l, _)| l.contains(&pod_label))
            .map(|(_, v)| v)
            .sum();
        if count >= N as f64 || Instant::now() > deadline {
            break count;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        count,
        N as f64,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.child.id())).unwrap();
    assert!(status.contains("Uid:\t65534"), "{status}");
    // After attaching, every thread holds only CAP_DAC_READ_SEARCH (bit 2), which
    // resolving cgroup ids still uses; the log says what went.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", exporter.child.id())).unwrap();
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            let mask = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{set}:\t")))
                .unwrap();
            let want = if set == "CapAmb" { 0 } else { 1 << 2 };
            assert_eq!(
                u64::from_str_radix(mask, 16).unwrap(),
                want,
                "{set}\n{status}"
            );
        }
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("dropped capabilities no longer needed: [CAP_PERFMON, CAP_BPF]"),
        "{log}"
    );
}

/// The setpriv wrapper that runs the exporter as uid 65534 with exactly the base
/// DaemonSet's capabilities.
fn as_nobody() -> Vec<String> {
    let caps = daemonset_capabilities()
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    [
        "setpriv".to_string(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
    ]
    .to_vec()
}

/// With reloads on, every thread keeps CAP_BPF and CAP_PERFMON (and the base's
/// CAP_DAC_READ_SEARCH), and a config added later loads and counts.
#[test]
fn reloads_as_nobody_with_the_daemonsets_capabilities() {
    let name = "reloads_as_nobody_with_the_daemonsets_capabilities";
    if !test_support::privileged(name)
        || !test_support::tool(name, "setpriv")
        || !test_support::tool(name, "kubectl")
    {
        return;
    }
    let wrapper = as_nobody();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let dir = TempDir::new("deploy-reload");
    common::compile_example("getpid-calls", &dir.0);
    let spare = dir.0.join("spare");
    std::fs::create_dir(&spare).unwrap();
    common::compile_example("open-errors", &spare);
    let d = dir.0.display().to_string();
    let args = [
        "--config.dir",
        &d,
        "--web.enable-lifecycle",
        "--config.reload-interval",
        "600",
    ];
    let log = dir.0.join("exporter.log");
    let exporter = Exporter::start_under(&wrapper, &args, &[], &log);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", exporter.child.id())).unwrap();
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:\t"))
            .unwrap();
        let want = (1u64 << 2) | (1 << 38) | (1 << 39);
        assert_eq!(u64::from_str_radix(eff, 16).unwrap(), want, "{status}");
    }
    for f in [
        "open-errors.yaml",
        "open-errors.bpf.o",
        "open-errors.perf.bpf.o",
    ] {
        std::fs::rename(spare.join(f), dir.0.join(f)).unwrap();
    }
    let mut s = std::net::TcpStream::connect(&exporter.addr).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"POST /-/reload HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 200") && resp.contains("started [\"open-errors\"]"),
        "{resp}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    common::run_workload(None, &["open-missing", "3"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !exporter
        .metrics()
        .contains("ebpf_exporter_open_errors_total{")
    {
        assert!(Instant::now() < deadline, "{}", exporter.metrics());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The overlay's config.yaml starts as the embedded default; they must not drift apart.
#[test]
fn custom_config_overlay_matches_the_embedded_default() {
    let body = |text: &str| -> String {
        text.lines()
            .skip_while(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let overlay =
        std::fs::read_to_string(deploy().join("overlays/custom-config/config.yaml")).unwrap();
    assert_eq!(
        body(&overlay),
        body(include_str!("../src/default.yaml")),
        "copy src/default.yaml (below its header) into deploy/overlays/custom-config/config.yaml"
    );
}
