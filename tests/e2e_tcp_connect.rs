//! End to end, as root: connects made inside a kubelet-shaped pod cgroup show up under
//! that pod's labels on /metrics, exactly; connects outside it never do.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{connects, sample, samples, Cgroups, Exporter, Pod, TempDir};

const METRIC: &str = "ebpf_exporter_tcp_connect_latency_seconds";

#[test]
fn pod_connects_are_counted_exactly_under_the_pod() {
    if test_support::privileged("pod_connects_are_counted_exactly_under_the_pod") {
        pod_connects(Pod::new("shop", "web-6b7f9c-x2v4q", "nginx"), &[]);
    }
}

/// The same through perf event arrays: the exporter's built-in -DOUTPUT_PERF build,
/// which kernels without ring buffers (before 5.8) get automatically.
#[test]
fn pod_connects_through_perf_event_arrays() {
    if test_support::privileged("pod_connects_through_perf_event_arrays") {
        pod_connects(
            Pod::new("shop", "web-perf-x2v4q", "nginx"),
            &[("KUBE_EBPF_EXPORTER__PIPELINE__OUTPUT", "perf")],
        );
    }
}

fn pod_connects(pod: Pod, env: &[(&str, &str)]) {
    let dir = TempDir::new(pod.name);
    let mut cgroups = Cgroups::new(pod.name);
    let container_cg = pod.cgroup(&mut cgroups);
    let flags = pod.logs(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start_with_env(&flags, env, &dir.0.join("exporter.log"));

    let stop = Arc::new(AtomicBool::new(false));
    let (port, accepter) = listen("127.0.0.1", &stop);
    let (port6, accepter6) = listen("::1", &stop);

    const N: usize = 37;
    const M: usize = 23;
    const N6: usize = 11;
    connect_n(N, "127.0.0.1", port, Some(&container_cg));
    connect_n(M, "127.0.0.1", port, None);
    connect_n(N6, "::1", port6, Some(&container_cg));

    let node = common::node();
    let pod = format!("{},node_id=\"{node}\"", pod.labels());
    let labels = format!("{pod},subnet=\"127\"");
    let labels6 = format!("{pod},subnet=\"0::/16\"");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut metrics = exporter.metrics();
    while (sample(&metrics, &format!("{METRIC}_count"), &labels) != Some(N as f64)
        || sample(&metrics, &format!("{METRIC}_count"), &labels6) != Some(N6 as f64))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        metrics = exporter.metrics();
    }
    // Give stragglers a chance to show up wrongly before checking exactness.
    std::thread::sleep(Duration::from_millis(300));
    let metrics = exporter.metrics();
    assert_eq!(
        sample(&metrics, &format!("{METRIC}_count"), &labels),
        Some(N as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, &format!("{METRIC}_count"), &labels6),
        Some(N6 as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("{METRIC}_bucket"),
            &format!("{labels},le=\"+Inf\"")
        ),
        Some(N as f64)
    );
    let sum = sample(&metrics, &format!("{METRIC}_sum"), &labels).unwrap();
    assert!(sum > 0.0 && sum < N as f64, "sum {sum}");

    // Every pod-labelled series is this pod's; the outside connects are elsewhere.
    let counts = samples(&metrics, &format!("{METRIC}_count"));
    for (l, _) in counts.iter().filter(|(l, _)| !l.contains("app_pod=\"\"")) {
        assert!(*l == labels || *l == labels6, "unexpected pod series {l}");
    }
    let outside: f64 = counts
        .iter()
        .filter(|(l, _)| l.contains("app_pod=\"\"") && l.contains("subnet=\"127\""))
        .map(|(_, v)| v)
        .sum();
    assert!(
        outside >= M as f64,
        "outside connects: {outside} < {M}\n{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "ebpf_exporter_ring_reserve_failures_total",
            "program=\"tcp_connect_latency\""
        ) == Some(0.0),
        "{metrics}"
    );

    let log = std::fs::read_to_string(dir.0.join("exporter.log")).unwrap();
    assert_eq!(
        log.contains("use perf event arrays"),
        !env.is_empty(),
        "{log}"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = std::net::TcpStream::connect(("::1", port6));
    accepter.join().unwrap();
    accepter6.join().unwrap();
}

/// Connects made before the kubelet has written the pod's log directory wait in the
/// enrich stage for it (up to 2 s) and count under the pod, not unattributed.
#[test]
fn events_before_the_pods_metadata_wait_for_it() {
    if test_support::privileged("events_before_the_pods_metadata_wait_for_it") {
        late_metadata(Pod::new("shop", "web-late-meta-9f3k2", "nginx"), true);
    }
}

/// With `kubernetes.metadata_wait_ms: 0` they go on at once, unattributed.
#[test]
fn metadata_wait_zero_does_not_wait() {
    if test_support::privileged("metadata_wait_zero_does_not_wait") {
        late_metadata(Pod::new("shop", "web-no-wait-4h8s1", "nginx"), false);
    }
}

fn late_metadata(pod: Pod, wait: bool) {
    let dir = TempDir::new(pod.name);
    let mut cgroups = Cgroups::new(pod.name);
    let cg = pod.cgroup(&mut cgroups);
    let (pods, containers) = (dir.0.join("pods"), dir.0.join("containers"));
    std::fs::create_dir_all(&pods).unwrap();
    std::fs::create_dir_all(&containers).unwrap();
    let flags = [
        "--kubelet.pod-logs-dir",
        pods.to_str().unwrap(),
        "--kubelet.container-logs-dir",
        containers.to_str().unwrap(),
    ];
    let env: &[(&str, &str)] = if wait {
        &[]
    } else {
        &[("KUBE_EBPF_EXPORTER__KUBERNETES__METADATA_WAIT_MS", "0")]
    };
    let exporter = Exporter::start_with_env(&flags, env, &dir.0.join("exporter.log"));
    const N: usize = 25;
    // The tap shows the pod the metrics count under, whenever the metadata came.
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg).unwrap());
    let (status, events) = common::open_stream(
        &exporter.tap_addr,
        &format!("/events?config=tcp_connect_latency&cgroup_id={cgroup_id}&limit={N}"),
    );
    assert!(status.contains(" 200 "), "{status}");
    connects(N, &cg);
    std::thread::sleep(Duration::from_millis(400));
    pod.logs(&dir.0);

    let labels = format!(
        "{},node_id=\"{}\",subnet=\"127\"",
        pod.labels(),
        common::node()
    );
    let metric = format!("{METRIC}_count");
    let held = "ebpf_exporter_enrich_held_records_total";
    if wait {
        let metrics = common::wait_for(&exporter, &metric, &labels, N as f64);
        assert_eq!(
            sample(&metrics, &metric, &labels),
            Some(N as f64),
            "{metrics}"
        );
        assert!(sample(&metrics, held, "").unwrap() >= N as f64, "{metrics}");
    } else {
        std::thread::sleep(Duration::from_millis(1500));
        let metrics = exporter.metrics();
        assert_eq!(sample(&metrics, &metric, &labels), None, "{metrics}");
        assert_eq!(sample(&metrics, held, ""), Some(0.0), "{metrics}");
    }
    let shown: Vec<(String, String, String)> = std::io::BufRead::lines(events)
        .map(|line| {
            let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let label = |k: &str| e[k].as_str().unwrap().to_string();
            (label("namespace"), label("pod"), label("container"))
        })
        .collect();
    let counted = if wait {
        (pod.namespace, pod.name, pod.container)
    } else {
        ("", "", "")
    };
    let counted = (counted.0.into(), counted.1.into(), counted.2.into());
    assert_eq!(shown, vec![counted; N], "the tap's pods are the metrics'");
}

/// Runs `n` TCP connects to `host:port` from a new bash, first moved into `cgroup` if given.
fn connect_n(n: usize, host: &str, port: u16, cgroup: Option<&std::path::Path>) {
    let connects = format!(
        "for i in $(seq {n}); do exec 3<>/dev/tcp/{host}/{port} || exit 1; exec 3>&-; done"
    );
    let script = match cgroup {
        Some(cg) => format!("echo $$ > {}/cgroup.procs && {connects}", cg.display()),
        None => connects,
    };
    let status = std::process::Command::new("bash")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "client failed: {script}");
}

/// A listener on `host` that accepts and closes until `stop`.
fn listen(
    host: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind((host, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = stop.clone();
    let handle = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            drop(conn);
        }
    });
    (port, handle)
}

/// With `kernel.bpf_stats_enabled=1` each program's cumulative run time (a counter, in
/// seconds) and run count are exported.
#[test]
fn program_run_time_and_count_with_bpf_stats() {
    if !test_support::privileged("program_run_time_and_count_with_bpf_stats") {
        return;
    }
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(SYSCTL).unwrap();
    std::fs::write(SYSCTL, "1").unwrap();
    let dir = TempDir::new("bpf-stats");
    let exporter = Exporter::start(&[], &dir.0.join("exporter.log"));
    let mut cgroups = Cgroups::new("bpf-stats");
    connects(5, &cgroups.create(&["client"]));
    let page = exporter.metrics();
    std::fs::write(SYSCTL, before.trim()).unwrap();
    assert!(
        page.contains("# TYPE ebpf_exporter_ebpf_program_run_time_seconds counter"),
        "{page}"
    );
    let value = |name: &str| {
        samples(&page, name)
            .into_iter()
            .map(|(_, v)| v)
            .fold(0.0, f64::max)
    };
    assert!(
        value("ebpf_exporter_ebpf_program_run_time_seconds") > 0.0,
        "{page}"
    );
    assert!(
        value("ebpf_exporter_ebpf_program_run_count_total") >= 10.0,
        "{page}"
    );
}

/// A process whose container cgroup is only in a cgroup v1 hierarchy (a v1-only host;
/// emulated here on the hybrid one: the process sits in the v2 root and in a kubelet-
/// shaped v1 memory cgroup) reports the v2 root's cgroup id; its records are
/// attributed through the pid they carry and /proc/<pid>/cgroup, while the process
/// lives (it stays a second after its connects).
#[test]
fn connects_of_a_process_in_v1_cgroups_only_are_attributed_by_pid() {
    let test = "connects_of_a_process_in_v1_cgroups_only_are_attributed_by_pid";
    if !test_support::privileged(test) {
        return;
    }
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    if !v1.join("cgroup.procs").exists() {
        assert!(
            std::env::var("KUBE_EBPF_EXPORTER_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{test}: no cgroup v1 memory hierarchy at {}",
            v1.display()
        );
        eprintln!("SKIPPED {test}: no cgroup v1 memory hierarchy to emulate a v1-only host");
        return;
    }
    let pod = Pod::new("legacy", "v1-app-6d5c4-h2j9k", "app");
    let dir = TempDir::new(pod.name);
    let flags = pod.logs(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&flags, &dir.0.join("exporter.log"));

    let top = v1.join(format!("kebpf-v1-{}", std::process::id()));
    let parts = [
        "kubepods".to_string(),
        "besteffort".to_string(),
        format!("pod{}", pod.uid),
        pod.container_id.clone(),
    ];
    let mut dirs = vec![top.clone()];
    for p in &parts {
        dirs.push(dirs.last().unwrap().join(p));
    }
    std::fs::create_dir_all(dirs.last().unwrap()).unwrap();

    // The event tap attributes them the same way.
    let (_, mut events) =
        common::open_stream(&exporter.tap_addr, "/events?namespace=legacy&limit=1");
    const N: usize = 9;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        for _ in 0..N {
            drop(listener.accept().unwrap());
        }
    });
    let script = format!(
        "echo $$ > {}/cgroup.procs && echo $$ > {}/cgroup.procs && grep -q '^0::/$' /proc/self/cgroup && for i in $(seq {N}); do exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1; exec 3>&-; done; sleep 1",
        common::cgroup2_mount().display(),
        dirs.last().unwrap().display()
    );
    let status = std::process::Command::new("bash")
        .args(["-c", &script])
        .status()
        .unwrap();
    accept.join().unwrap();
    let labels = format!(
        "{},node_id=\"{}\",subnet=\"127\"",
        pod.labels(),
        common::node()
    );
    let page = common::wait_for(&exporter, &format!("{METRIC}_count"), &labels, N as f64);
    let mut event = String::new();
    std::io::BufRead::read_line(&mut events, &mut event).unwrap();
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    assert!(status.success(), "client failed: {script}");
    assert!(
        event.contains(&format!("\"pod\":\"{}\"", pod.name)),
        "{event}"
    );
    assert_eq!(
        sample(&page, &format!("{METRIC}_count"), &labels),
        Some(N as f64),
        "{}",
        page.lines()
            .filter(|l| l.starts_with(METRIC))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
