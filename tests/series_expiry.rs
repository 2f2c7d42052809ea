//! Series of deleted pods go after the grace period, so memory follows the pods on the
//! node; pods still running keep theirs. Needs root and BPF.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{connects, sample, Cgroups, Exporter, Pod, TempDir};

#[test]
fn a_deleted_pods_series_expire_after_the_grace_period() {
    privileged!("a_deleted_pods_series_expire_after_the_grace_period");
    let dir = TempDir::new("expiry");
    let mut cgroups = Cgroups::new("expiry");
    let (deleted, running) = (
        Pod::new("shop", "expiring-1a2b3", "app"),
        Pod::new("shop", "running-4c5d6", "app"),
    );
    let (cg_deleted, cg_running) = (deleted.cgroup(&mut cgroups), running.cgroup(&mut cgroups));
    let flags = deleted.logs(&dir.0);
    running.logs(&dir.0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start_with_env(
        &flags,
        &[("KUBE_EBPF_EXPORTER__KUBERNETES__SERIES_GRACE_SECONDS", "1")],
        &dir.0.join("log"),
    );

    connects(3, &cg_deleted);
    connects(2, &cg_running);
    let name = "ebpf_exporter_tcp_connect_latency_seconds_count";
    let labels = |p: &Pod| {
        format!(
            "{},node_id=\"{}\",subnet=\"127\"",
            p.labels(),
            common::node()
        )
    };
    common::wait_for(&exporter, name, &labels(&running), 2.0);
    let page = common::wait_for(&exporter, name, &labels(&deleted), 3.0);
    assert_eq!(sample(&page, name, &labels(&deleted)), Some(3.0), "{page}");

    // The runtime removes the deleted pod's cgroup; a scrape after the grace expires it.
    std::fs::remove_dir(&cg_deleted).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut page = exporter.metrics();
    while sample(&page, name, &labels(&deleted)).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        page = exporter.metrics();
    }
    assert_eq!(sample(&page, name, &labels(&deleted)), None, "{page}");
    assert_eq!(sample(&page, name, &labels(&running)), Some(2.0), "{page}");
}

#[test]
fn a_deleted_pods_in_kernel_counts_expire_after_the_grace_period() {
    privileged!("a_deleted_pods_in_kernel_counts_expire_after_the_grace_period");
    let dir = TempDir::new("expiry-tables");
    let mut cgroups = Cgroups::new("expiry-tables");
    let (deleted, running) = (
        Pod::new("shop", "expiring-tables-7e8f9", "app"),
        Pod::new("shop", "running-tables-0a1b2", "app"),
    );
    let (cg_deleted, cg_running) = (deleted.cgroup(&mut cgroups), running.cgroup(&mut cgroups));
    let mut flags = deleted.logs(&dir.0);
    running.logs(&dir.0);
    flags.extend(["--programs".into(), "process_lifecycle".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exporter = Exporter::start_with_env(
        &flags,
        &[("KUBE_EBPF_EXPORTER__KUBERNETES__SERIES_GRACE_SECONDS", "1")],
        &dir.0.join("log"),
    );
    common::run_workload(Some(&cg_deleted), &["lifecycle", "1"]);
    common::run_workload(Some(&cg_running), &["lifecycle", "2"]);
    let name = "ebpf_exporter_process_exits_total";
    let labels = |p: &Pod| p.series(&[("reason", "code_3")]);
    common::wait_for(&exporter, name, &labels(&running), 2.0);
    let page = common::wait_for(&exporter, name, &labels(&deleted), 1.0);
    assert_eq!(sample(&page, name, &labels(&deleted)), Some(1.0), "{page}");

    // Counted in the kernel by cgroup id: the entries themselves must go (else every
    // scrape would decode them again, and an LRU map keeps them until it fills).
    std::fs::remove_dir(&cg_deleted).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut page = exporter.metrics();
    while page.contains(deleted.name) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        page = exporter.metrics();
    }
    assert!(!page.contains(deleted.name), "{page}");
    std::thread::sleep(Duration::from_secs(2));
    let page = exporter.metrics();
    assert!(!page.contains(deleted.name), "came back: {page}");
    assert_eq!(sample(&page, name, &labels(&running)), Some(2.0), "{page}");
}
