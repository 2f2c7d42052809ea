//! The enrich stage at node scale: 10,000 pods with 30,000 containers in the kubelet's
//! log directories, their cgroups learned as the cgroup_events program reports them.
//! Prints the resolver's memory, the cost of a first resolution, of a cached one, and
//! of the start-up walk over as many real cgroups.
//!
//! `cargo run --release -p benchmark --bin resolver [pods] [containers per pod]`

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};

use benchmark::rss_bytes;
use enrich::{Cache, CgroupFs, Enricher, PodLogs};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pods: usize = args.get(1).map_or(10_000, |s| s.parse().unwrap());
    let per_pod: usize = args.get(2).map_or(3, |s| s.parse().unwrap());
    let dir = std::env::temp_dir().join(format!("resolver-bench-{}", std::process::id()));
    let (pod_dir, container_dir) = (dir.join("pods"), dir.join("containers"));
    std::fs::create_dir_all(&container_dir).unwrap();
    let mut cgroups = Vec::new();
    for p in 0..pods {
        let uid = format!("{p:08x}-0000-4000-8000-{p:012x}");
        let name = format!("app-{p}-7c9d8");
        let pod_path = pod_dir.join(format!("ns-{}_{name}_{uid}", p % 50));
        for c in 0..per_pod {
            let container = format!("c{c}");
            let id = format!("{:064x}", p * per_pod + c + 1);
            std::fs::create_dir_all(pod_path.join(&container)).unwrap();
            std::fs::write(
                container_dir.join(format!("{name}_ns-{}_{container}-{id}.log", p % 50)),
                "",
            )
            .unwrap();
            let qos = ["burstable", "besteffort"][p % 2];
            cgroups.push(format!(
                "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            ));
        }
    }
    let containers = cgroups.len();
    let before = rss_bytes();
    let enricher = Arc::new(Enricher::new(
        CgroupFs::discover().expect("a cgroup2 mount"),
        PodLogs::new(&pod_dir, &container_dir),
    ));
    for (i, path) in cgroups.iter().enumerate() {
        enricher.learn(1_000_000_000 + i as u64, path, false);
    }
    let t = Instant::now();
    let mut resolved = 0;
    for i in 0..containers {
        resolved += usize::from(
            !enricher
                .resolve(1_000_000_000 + i as u64)
                .labels
                .container
                .is_empty(),
        );
    }
    let first = t.elapsed();
    let after = rss_bytes();
    let mut cache = Cache::new(enricher.clone());
    let now = Instant::now();
    for i in 0..containers {
        black_box(cache.get(1_000_000_000 + i as u64, now));
    }
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        for i in 0..containers {
            black_box(cache.get(1_000_000_000 + i as u64, now).id);
        }
    }
    let hit: Duration = t.elapsed() / (rounds * containers) as u32;
    println!(
        "resolver: {pods} pods, {containers} containers ({resolved} resolved to a container name)"
    );
    println!(
        "  memory: {:.1} MiB for the learned paths, pod index and label sets ({:.0} bytes per container)",
        (after - before) as f64 / (1 << 20) as f64,
        (after - before) as f64 / containers as f64
    );
    println!("  first resolution: {:.1} µs per container (path parse, pod index lookup, interning; includes the initial directory scan)", first.as_secs_f64() * 1e6 / containers as f64);
    println!(
        "  cached lookup (a worker's cache, as per event): {:.1} ns",
        hit.as_secs_f64() * 1e9
    );
    let _ = std::fs::remove_dir_all(&dir);
    walk(pods, per_pod);
}

/// The start-up walk of the cgroup2 hierarchy over as many real container cgroups
/// (root only; made under a scratch cgroup and removed after).
fn walk(pods: usize, per_pod: usize) {
    let fs = CgroupFs::discover().expect("a cgroup2 mount");
    let top = fs
        .mount()
        .join(format!("resolver-bench-{}", std::process::id()));
    let mut made = Vec::new();
    let t = Instant::now();
    for p in 0..pods {
        let pod = top.join(format!(
            "kubepods/besteffort/pod{p:08x}-0000-4000-8000-{p:012x}"
        ));
        for c in 0..per_pod {
            let dir = pod.join(format!("{:064x}", p * per_pod + c + 1));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                println!("walk: skipped, cannot make cgroups ({e}; needs root)");
                return;
            }
            made.push(dir);
        }
    }
    let make = t.elapsed();
    let enricher = Enricher::new(fs, PodLogs::new("/nonexistent", "/nonexistent"));
    let t = Instant::now();
    let found = enricher.walk();
    let took = t.elapsed();
    println!(
        "  start-up walk: {found} container cgroups learned in {:.1} ms ({:.2} µs each; making them took {:.1} s)",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / found.max(1) as f64,
        make.as_secs_f64()
    );
    // Children before parents: cgroups are removed with rmdir, one level at a time.
    for dir in made {
        let _ = std::fs::remove_dir(&dir);
    }
    let mut parents: Vec<_> = walkdirs(&top);
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for dir in parents {
        let _ = std::fs::remove_dir(&dir);
    }
}

/// Every directory under `dir`, itself included.
fn walkdirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        i += 1;
    }
    out
}
