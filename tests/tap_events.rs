//! The JSON event tap: /events with filters, the `tap` subcommand, slow subscribers
//! that lose tap events but never metrics, and the file sink. Needs root and BPF.

#[macro_use]
mod common;

use std::{
    io::{BufRead, Read},
    process::Command,
};

use common::{connects, open_stream, sample, wait_for, Cgroups, Exporter, Pod, TempDir};

#[test]
fn events_are_filtered_enriched_json_lines() {
    privileged!("events_are_filtered_enriched_json_lines");
    let pod = Pod::new("shop", "web-5d8f7-abcde", "nginx");
    let dir = TempDir::new("tap-events");
    let mut cgroups = Cgroups::new("tap-events");
    let cg = pod.cgroup(&mut cgroups);
    let flags = pod.logs(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&flags, &dir.0.join("log"));

    let (status, reader) = open_stream(
        &exporter.tap_addr,
        "/events?namespace=shop&pod=web-*&subnet=127&limit=3",
    );
    assert!(status.contains(" 200 "), "{status}");
    // Outside connects (our scrapes) do not match the namespace filter.
    assert!(exporter
        .metrics()
        .contains("ebpf_exporter_tap_subscribers 1"));
    connects(5, &cg);
    let lines: Vec<String> = reader.lines().map(Result::unwrap).collect();
    assert_eq!(
        lines.len(),
        3,
        "limit=3 ends the stream after 3 events: {lines:?}"
    );
    for line in &lines {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(e["config"], "tcp_connect_latency");
        assert_eq!(
            (
                e["namespace"].as_str(),
                e["pod"].as_str(),
                e["container"].as_str()
            ),
            (Some("shop"), Some(pod.name), Some("nginx"))
        );
        assert_eq!(e["node"].as_str().unwrap(), common::node());
        assert!(
            e["cgroup_path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("cri-containerd-{}.scope", pod.container_id)),
            "{line}"
        );
        assert!(e.get("unknown").is_none(), "{line}");
        let latency = &e["fields"]["latency_ns"];
        let raw = latency["raw"].as_u64().unwrap();
        assert!(raw > 0);
        assert_eq!(latency["scaled"].as_f64().unwrap(), raw as f64 / 1e9);
        assert_eq!(e["fields"]["subnet"]["value"], "127");
        let time = e["time"].as_str().unwrap();
        assert!(
            time.len() == 30 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
            "{time}"
        );
    }

    // The tap subcommand prints the same, readable.
    let out = Command::new(common::BIN)
        .args([
            "tap",
            "--address",
            &exporter.tap_addr,
            "--pod",
            "web-*",
            "--limit",
            "2",
            "--output",
            "pretty",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    connects(2, &cg);
    let out = out.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(
            |l| l.contains(&format!("tcp_connect_latency shop/{}/nginx ", pod.name))
                && l.contains(" latency_ns=")
                && l.contains("(127)")
        ),
        "{text}"
    );
}

#[test]
fn bad_filters_get_400_with_the_reason() {
    privileged!("bad_filters_get_400_with_the_reason");
    let dir = TempDir::new("tap-400");
    let exporter = Exporter::start(&[], &dir.0.join("log"));
    for (query, want) in [
        ("bogus=1", "bogus: not a filter (config, namespace, pod, container, limit, rate) nor a field of any config"),
        ("limit=x", "limit: \"x\" is not a positive integer"),
        ("config=nope", "config: no config named \"nope\" streams events (known: tcp_connect_latency)"),
        ("pod=", "pod: empty value"),
        ("pod=a&pod=b", "pod is given twice"),
    ] {
        let (status, mut reader) = open_stream(&exporter.tap_addr, &format!("/events?{query}"));
        let mut body = String::new();
        reader.read_to_string(&mut body).unwrap();
        assert!(status.contains(" 400 "), "{query}: {status}");
        assert!(body.contains(want), "{query}: {body}");
    }
    let out = Command::new(common::BIN)
        .args(["tap", "--address", &exporter.tap_addr, "--field", "nope=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("400"));
}

#[test]
fn a_slow_subscriber_loses_tap_events_never_metrics() {
    privileged!("a_slow_subscriber_loses_tap_events_never_metrics");
    let pod = Pod::new("shop", "slow-1a2b3-cdefg", "nginx");
    let dir = TempDir::new("tap-slow");
    let mut cgroups = Cgroups::new("tap-slow");
    let cg = pod.cgroup(&mut cgroups);
    let mut flags = pod.logs(&dir.0);
    flags.push("--config.file".into());
    let config = dir.0.join("config.yaml");
    std::fs::write(
        &config,
        include_str!("../src/default.yaml").to_string() + "tap:\n  queue_events: 2\n",
    )
    .unwrap();
    flags.push(config.display().to_string());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&flags, &dir.0.join("log"));
    // Subscribe and never read: two events fit in its queue and some KiB in the socket
    // buffers (made small), so most of N events are dropped for this subscriber.
    let (_status, unread) = open_stream(&exporter.tap_addr, "/events?pod=slow-*");
    let small: libc::c_int = 4096;
    // SAFETY: a valid socket and option value for setsockopt(2).
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(unread.get_ref()),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    const N: f64 = 200.0;
    connects(N as usize, &cg);
    let labels = format!(
        "{},node_id=\"{}\",subnet=\"127\"",
        pod.labels(),
        common::node()
    );
    let page = wait_for(
        &exporter,
        "ebpf_exporter_tcp_connect_latency_seconds_count",
        &labels,
        N,
    );
    assert_eq!(
        sample(
            &page,
            "ebpf_exporter_tcp_connect_latency_seconds_count",
            &labels
        ),
        Some(N),
        "{page}"
    );
    // Every event for this subscriber is either delivered (queued) or counted as lost,
    // once the tap thread (which runs behind the metrics) has caught up.
    let tap_counts = |page: &str| {
        let dropped = sample(
            page,
            "ebpf_exporter_tap_dropped_events_total",
            "reason=\"slow_subscriber\"",
        )
        .unwrap_or(0.0);
        (
            sample(page, "ebpf_exporter_tap_events_total", "").unwrap_or(0.0),
            dropped,
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut page = exporter.metrics();
    while tap_counts(&page).0 + tap_counts(&page).1 < N && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        page = exporter.metrics();
    }
    let (delivered, dropped) = tap_counts(&page);
    assert!(dropped > 0.0, "{page}");
    assert_eq!(delivered + dropped, N, "{page}");
}

#[test]
fn the_file_sink_writes_events_and_tables() {
    privileged!("the_file_sink_writes_events_and_tables");
    let pod = Pod::new("shop", "sink-9h8g7-fedcb", "nginx");
    let dir = TempDir::new("tap-sink");
    let mut cgroups = Cgroups::new("tap-sink");
    let cg = pod.cgroup(&mut cgroups);
    let mut flags = pod.logs(&dir.0);
    let sink = dir.0.join("sink");
    let config = dir.0.join("config.yaml");
    let text = include_str!("../src/default.yaml").to_string()
        + &format!("tap:\n  cluster: test-cluster\n  sink:\n    dir: {}\n    configs: [tcp_connect_latency, getpid-calls]\n", sink.display());
    std::fs::write(&config, text).unwrap();
    common::compile_example("getpid-calls", &dir.0);
    flags.extend(
        [
            "--config.file",
            config.to_str().unwrap(),
            "--config.dir",
            dir.0.to_str().unwrap(),
            "--config.names",
            "getpid-calls",
        ]
        .map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&flags, &dir.0.join("log"));
    // Tables go to the sink as each scrape reads them (before bash's own getpid calls).
    common::run_workload(Some(&cg), &["getpid", "5"]);
    wait_for(
        &exporter,
        "ebpf_exporter_getpid_calls_total",
        &pod.labels(),
        5.0,
    );
    connects(4, &cg);
    let labels = format!(
        "{},node_id=\"{}\",subnet=\"127\"",
        pod.labels(),
        common::node()
    );
    wait_for(
        &exporter,
        "ebpf_exporter_tcp_connect_latency_seconds_count",
        &labels,
        4.0,
    );
    std::thread::sleep(std::time::Duration::from_millis(1500)); // the sink flushes every second
    let file = std::fs::read_dir(&sink)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        file.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("events-")
            && file.extension().unwrap() == "gz"
    );
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(&file).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    let ours: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["pod"] == pod.name)
        .collect();
    assert_eq!(ours.len(), 4, "{text}");
    assert!(ours
        .iter()
        .all(|e| e["cluster"] == "test-cluster" && e["node"] == common::node().as_str()));
    let table = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| {
            e["metric"] == "ebpf_exporter_getpid_calls_total" && e["labels"]["app_pod"] == pod.name
        })
        .unwrap_or_else(|| panic!("no table line in {text}"));
    assert_eq!(
        (
            table["value"].as_u64(),
            table["config"].as_str(),
            table["cluster"].as_str()
        ),
        (Some(5), Some("getpid-calls"), Some("test-cluster"))
    );
}

#[test]
fn the_event_stream_is_private_by_default() {
    privileged!("the_event_stream_is_private_by_default");
    let pod = Pod::new("shop", "private-tap-3c4d5", "app");
    let dir = TempDir::new("private-tap");
    let mut cgroups = Cgroups::new("private-tap");
    let cg = pod.cgroup(&mut cgroups);
    let socket = dir.0.join("run/tap.sock");
    let flags = pod.logs(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let listen = format!("unix:{}", socket.display());
    let exporter = Exporter::start_with_env(
        &flags,
        &[("KUBE_EBPF_EXPORTER__TAP__LISTEN", &listen)],
        &dir.0.join("log"),
    );
    // Not on the metrics listener.
    let (status, _) = open_stream(&exporter.addr, "/events");
    assert!(status.contains(" 404 "), "{status}");
    // A socket only its owner may open, which `tap` reads.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let tap = Command::new(common::BIN)
        .args([
            "tap",
            "--address",
            &listen,
            "--pod",
            pod.name,
            "--limit",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    connects(2, &cg);
    let out = tap.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(pod.name), "{text}");
    // A network address is refused, saying why.
    let out = Command::new(common::BIN)
        .arg("--config.check")
        .env("KUBE_EBPF_EXPORTER__TAP__LISTEN", "0.0.0.0:9436")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("tap.listen: \"0.0.0.0:9436\" is not a loopback address"),
        "{err}"
    );
}
