//! Soak with churn: the exporter (release build, beside this binary) for a given time
//! (default 30 minutes) at a sustained event rate while pods come and go: kubelet-shaped
//! pod cgroups and log directories, each pod living 20-40 s and making an exact number
//! of `getpid()` events, a new one every 4 s (hundreds over the run). Scrapes every 5 s
//! and prints every minute the exporter's RSS, open fds, threads, live pod series and
//! drops; at the end checks that RSS and fds stayed flat, that no deleted pod's series
//! outlived the grace period, and that events produced = aggregated + dropped.
//!
//! `cargo run --release -p benchmark --bin soak [seconds]` (root, BPF)

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const CONFIG: &str = r#"
rings:
  - name: events
    cgroup_field: cgroup_id
    fields: [{ name: cgroup_id, size: 8 }, { name: ns, size: 8 }]
metrics:
  histograms:
    - name: soak_values
      help: Values of getpid() probes of churning pods
      ring: events
      value: { field: ns }
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 20
"#;

const METRIC: &str = "ebpf_exporter_soak_values_count";
/// Seconds a deleted pod's series may stay (kubernetes.series_grace_seconds).
const GRACE: u64 = 30;
/// Events each pod makes per second of its life, and pods alive at once (about).
const RATE: u64 = 5_000;

/// A pod as the kubelet lays it out.
struct Pod {
    name: String,
    cgroup: PathBuf,
    logs: PathBuf,
}

impl Pod {
    fn create(i: u64, cgroup_root: &Path, logs: &Path) -> Self {
        let uid = format!("{i:08x}-50a6-4d1e-8c3b-{i:012x}");
        let id = format!("{i:016x}{:048x}", i * 7919);
        let name = format!("soak-{i:04}-x7k2p");
        let cgroup = cgroup_root
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            ))
            .join(format!("cri-containerd-{id}.scope"));
        std::fs::create_dir_all(&cgroup).unwrap();
        let dir = logs.join("pods").join(format!("soak_{name}_{uid}"));
        std::fs::create_dir_all(dir.join("app")).unwrap();
        std::fs::write(dir.join("app/0.log"), "").unwrap();
        let containers = logs.join("containers");
        std::fs::create_dir_all(&containers).unwrap();
        let _ = std::os::unix::fs::symlink(
            dir.join("app/0.log"),
            containers.join(format!("{name}_soak_app-{id}.log")),
        );
        Self {
            name,
            cgroup,
            logs: dir,
        }
    }

    /// What the runtime and kubelet do once the pod is gone.
    fn delete(self) {
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir(self.cgroup.parent().unwrap());
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

/// Runs the workload in `pod`'s cgroup: `calls` getpid() calls spread over `secs`.
fn live(workload: &Path, pod: &Pod, calls: u64, secs: u64) {
    let per_second = calls / secs;
    for _ in 0..secs {
        let t = Instant::now();
        let ok = Command::new(workload)
            .arg(&pod.cgroup)
            .args(["getpid", &per_second.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "workload failed");
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
}

fn scrape(addr: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string())
}

/// Per pod label value, its series count.
fn pod_counts(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| l.starts_with(METRIC) && l.contains("app_namespace=\"soak\""))
        .filter_map(|l| {
            let pod = l.split("app_pod=\"").nth(1)?.split('"').next()?.to_string();
            Some((pod, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

fn sum_of(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn process(pid: u32) -> (f64, usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0;
    let count = |d: &str| std::fs::read_dir(format!("/proc/{pid}/{d}")).map_or(0, |r| r.count());
    (rss, count("fd"), count("task"))
}

/// A pod's name, the events it makes, and when it was deleted.
type Made = (String, u64, Option<Instant>);

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let secs: u64 = std::env::args().nth(1).map_or(1800, |s| s.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("kebpf-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    benchmark::compile_bpf(&dir, "soak", test_support::GETPID_RING);
    std::fs::write(dir.join("soak.yaml"), CONFIG).unwrap();
    let workload = dir.join("kebpf-workload");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ok = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&workload)
        .arg(root.join("tests/workload.c"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "cc tests/workload.c");
    let cgroup_root = test_support::cgroup2_mount()
        .join(format!("kebpf-soak-{}", std::process::id()))
        .join("kubepods.slice/kubepods-burstable.slice");
    let exporter_bin = std::env::current_exe()
        .unwrap()
        .with_file_name("kube-ebpf-exporter");
    let addr = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let exporter = Exporter(
        Command::new(&exporter_bin)
            .args([
                "--config.dir",
                dir.to_str().unwrap(),
                "--config.names",
                "soak",
            ])
            .args(["--web.listen-address", &addr])
            .args(["--kubelet.pod-logs-dir", dir.join("pods").to_str().unwrap()])
            .args([
                "--kubelet.container-logs-dir",
                dir.join("containers").to_str().unwrap(),
            ])
            .env(
                "KUBE_EBPF_EXPORTER__KUBERNETES__SERIES_GRACE_SECONDS",
                GRACE.to_string(),
            )
            .env("KUBE_EBPF_EXPORTER__TAP__ENABLED", "false")
            .stderr(Stdio::null())
            .spawn()
            .expect("the release exporter (cargo build --release)"),
    );
    let pid = exporter.0.id();
    while scrape(&addr).is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }

    // Pods: (name, events it will make, deleted at).
    let produced: Arc<Mutex<Vec<Made>>> = Arc::default();
    let start = Instant::now();
    let churn = {
        let (produced, workload, cgroup_root, logs) = (
            produced.clone(),
            workload.clone(),
            cgroup_root.clone(),
            dir.clone(),
        );
        std::thread::spawn(move || {
            let mut lives = Vec::new();
            let mut i = 0;
            while start.elapsed() < Duration::from_secs(secs.saturating_sub(45)) {
                let life = 20 + (i * 7) % 21;
                let calls = RATE * life;
                let pod = Pod::create(i, &cgroup_root, &logs);
                produced
                    .lock()
                    .unwrap()
                    .push((pod.name.clone(), calls, None));
                let (produced, workload) = (produced.clone(), workload.clone());
                lives.push(std::thread::spawn(move || {
                    live(&workload, &pod, calls, life);
                    let name = pod.name.clone();
                    pod.delete();
                    let mut p = produced.lock().unwrap();
                    if let Some(e) = p.iter_mut().find(|e| e.0 == name) {
                        e.2 = Some(Instant::now());
                    }
                }));
                i += 1;
                std::thread::sleep(Duration::from_secs(4));
            }
            for l in lives {
                l.join().unwrap();
            }
        })
    };

    println!("soak: {secs} s, a pod every 4 s living 20-40 s at {RATE} events/s each, scrape every 5 s, grace {GRACE} s");
    println!(
        "{:>6} {:>9} {:>5} {:>8} {:>10} {:>12} {:>12} {:>8}",
        "time", "RSS MiB", "fds", "threads", "pod series", "produced", "aggregated", "drops"
    );
    // Last count seen of every pod's series: deleted pods' series expire, their totals stay.
    let mut seen: BTreeMap<String, f64> = BTreeMap::new();
    let mut late: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    let mut drops: f64;
    let mut next_print = 0;
    loop {
        let page = scrape(&addr);
        let counts = pod_counts(&page);
        drops = sum_of(&page, "ebpf_exporter_ring_reserve_failures_total")
            + sum_of(&page, "ebpf_exporter_ingest_queue_dropped_records_total");
        {
            let p = produced.lock().unwrap();
            for (pod, deleted) in p.iter().filter_map(|e| Some((&e.0, e.2?))) {
                // A scrape also expires; give it one scrape interval beyond the grace.
                if deleted.elapsed() > Duration::from_secs(GRACE + 10) && counts.contains_key(pod) {
                    late.push(pod.clone());
                }
            }
        }
        for (pod, n) in &counts {
            seen.insert(pod.clone(), *n);
        }
        let t = start.elapsed().as_secs();
        if t >= next_print {
            let (rss, fds, threads) = process(pid);
            let made: u64 = produced
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.2.is_some())
                .map(|e| e.1)
                .sum();
            println!(
                "{t:>6} {rss:>9.1} {fds:>5} {threads:>8} {:>10} {made:>12} {:>12.0} {drops:>8.0}",
                counts.len(),
                // An empty f64 sum is -0.
                seen.values().sum::<f64>() + 0.0
            );
            samples.push((rss, fds, threads));
            next_print += 60;
        }
        if churn.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    churn.join().unwrap();
    // The last pods' events, then past the grace period: no series left.
    std::thread::sleep(Duration::from_secs(GRACE + 10));
    let page = scrape(&addr);
    let _ = scrape(&addr);
    for (pod, n) in pod_counts(&page) {
        seen.insert(pod, n);
    }
    let left = pod_counts(&scrape(&addr)).len();
    let p = produced.lock().unwrap();
    let made: u64 = p.iter().map(|e| e.1).sum();
    let aggregated: f64 = seen.values().sum();
    let (first, last) = (samples[1.min(samples.len() - 1)], *samples.last().unwrap());
    println!(
        "pods: {}; events produced {made}, aggregated {aggregated:.0}, dropped {drops:.0}",
        p.len()
    );
    println!(
        "RSS {:.1} -> {:.1} MiB, fds {} -> {}, threads {} -> {} (from minute 1 to the end)",
        first.0, last.0, first.1, last.1, first.2, last.2
    );
    println!("series of deleted pods seen after the grace period: {}; pod series left at the end: {left}", late.len());
    let balanced = (made as f64 - aggregated - drops).abs() < 0.5;
    println!(
        "produced = aggregated + dropped: {}",
        if balanced { "yes" } else { "NO" }
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(cgroup_root.parent().unwrap().parent().unwrap());
}
