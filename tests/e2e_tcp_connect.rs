//! End to end, as root: connects made inside a kubelet-shaped pod cgroup show up under
//! that pod's labels on /metrics, exactly; connects outside it never do.

mod common;

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{sample, samples, Exporter};

const NS: &str = "shop";
const POD: &str = "web-6b7f9c-x2v4q";
const CONTAINER: &str = "nginx";
const UID: &str = "0f8fd5a6-1c3e-4a5b-9b7d-2e4f6a8c0b1d";
const CID: &str = "5f2a7f1c8e6b4b9aa2f3c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1";
const METRIC: &str = "ebpf_exporter_tcp_connect_latency_seconds";

fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2").then(|| left.split_whitespace().nth(4).unwrap().into())
        })
        .expect("no cgroup2 mount")
}

/// Removes the cgroup directories (deepest first) and the temp dir.
struct Cleanup {
    cgroups: Vec<PathBuf>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for cg in self.cgroups.iter().rev() {
            let _ = fs::remove_dir(cg);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `n` TCP connects to `host:port` from a new bash, first moved into `cgroup` if given.
fn connect_n(n: usize, host: &str, port: u16, cgroup: Option<&Path>) {
    let connects = format!("for i in $(seq {n}); do exec 3<>/dev/tcp/{host}/{port} || exit 1; exec 3>&-; done");
    let script = match cgroup {
        Some(cg) => format!("echo $$ > {}/cgroup.procs && {connects}", cg.display()),
        None => connects,
    };
    let status = Command::new("bash").args(["-c", &script]).status().unwrap();
    assert!(status.success(), "client failed: {script}");
}

#[test]
fn pod_connects_are_counted_exactly_under_the_pod() {
    if !test_support::privileged("pod_connects_are_counted_exactly_under_the_pod") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kebpf-e2e-{}", std::process::id()));
    let (pods, containers) = (dir.join("pods"), dir.join("containers"));
    fs::create_dir_all(pods.join(format!("{NS}_{POD}_{UID}/{CONTAINER}"))).unwrap();
    fs::write(pods.join(format!("{NS}_{POD}_{UID}/{CONTAINER}/0.log")), "").unwrap();
    fs::create_dir_all(&containers).unwrap();
    std::os::unix::fs::symlink(
        pods.join(format!("{NS}_{POD}_{UID}/{CONTAINER}/0.log")),
        containers.join(format!("{POD}_{NS}_{CONTAINER}-{CID}.log")),
    )
    .unwrap();

    // A kubelet (systemd driver) container cgroup, under a test-owned parent.
    let root = cgroup2_mount().join(format!("kebpf-e2e-{}", std::process::id()));
    let uid = UID.replace('-', "_");
    let mut cgroups = vec![root.clone()];
    for part in [
        "kubepods.slice".to_string(),
        "kubepods-burstable.slice".into(),
        format!("kubepods-burstable-pod{uid}.slice"),
        format!("cri-containerd-{CID}.scope"),
    ] {
        cgroups.push(cgroups.last().unwrap().join(part));
    }
    let container_cg = cgroups.last().unwrap().clone();
    let _cleanup = Cleanup { cgroups: cgroups.clone(), dir: dir.clone() };
    fs::create_dir_all(&container_cg).unwrap();

    let exporter = Exporter::start(
        &[
            "--kubelet.pod-logs-dir",
            pods.to_str().unwrap(),
            "--kubelet.container-logs-dir",
            containers.to_str().unwrap(),
        ],
        &dir.join("exporter.log"),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (port, accepter) = listen("127.0.0.1", &stop);
    let (port6, accepter6) = listen("::1", &stop);

    const N: usize = 37;
    const M: usize = 23;
    const N6: usize = 11;
    connect_n(N, "127.0.0.1", port, Some(&container_cg));
    connect_n(M, "127.0.0.1", port, None);
    connect_n(N6, "::1", port6, Some(&container_cg));

    let node = fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()).unwrap_or(node);
    let pod = format!("app_container=\"{CONTAINER}\",app_namespace=\"{NS}\",app_pod=\"{POD}\",node_id=\"{node}\"");
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
    assert_eq!(sample(&metrics, &format!("{METRIC}_count"), &labels), Some(N as f64), "{metrics}");
    assert_eq!(sample(&metrics, &format!("{METRIC}_count"), &labels6), Some(N6 as f64), "{metrics}");
    assert_eq!(
        sample(&metrics, &format!("{METRIC}_bucket"), &format!("{labels},le=\"+Inf\"")),
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
    assert!(outside >= M as f64, "outside connects: {outside} < {M}\n{metrics}");
    assert!(
        sample(&metrics, "ebpf_exporter_ring_reserve_failures_total", "program=\"tcp_connect_latency\"") == Some(0.0),
        "{metrics}"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = std::net::TcpStream::connect(("::1", port6));
    accepter.join().unwrap();
    accepter6.join().unwrap();
}

/// A listener on `host` that accepts and closes until `stop`.
fn listen(host: &str, stop: &Arc<AtomicBool>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind((host, 0)).unwrap();
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
