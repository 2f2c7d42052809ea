//! The built-in `process_lifecycle` and `oom_kills` programs (in the embedded default
//! config): execs, process exits by reason and OOM kills count exactly under the pod
//! that ran them (the victim's, for OOM kills). Needs root and BPF.

#[macro_use]
mod common;

use common::{run_workload, sample, wait_for, Cgroups, Exporter, Pod, TempDir};

#[test]
fn execs_and_exits_by_reason_count_under_their_pod() {
    privileged!("execs_and_exits_by_reason_count_under_their_pod");
    let pod = Pod::new("shop", "lifecycle-6f7a8-b9c0d", "app");
    let dir = TempDir::new("lifecycle");
    let mut cgroups = Cgroups::new("lifecycle");
    let cg = pod.cgroup(&mut cgroups);
    let logs = pod.logs(&dir.0);
    let args: Vec<&str> = logs.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    // 4 children exec /bin/true (exit 0), 4 exit with 3, 4 are killed; the workload
    // itself exits 0 in the pod (it joins the cgroup after its own exec).
    run_workload(Some(&cg), &["lifecycle", "4"]);
    let exits = "ebpf_exporter_process_exits_total";
    let reason = |r: &str| pod.series(&[("reason", r)]);
    let page = wait_for(&exporter, exits, &reason("signal_SIGKILL"), 4.0);
    assert_eq!(
        sample(&page, "ebpf_exporter_process_execs_total", &pod.series(&[])),
        Some(4.0),
        "{page}"
    );
    assert_eq!(sample(&page, exits, &reason("code_0")), Some(5.0), "{page}");
    assert_eq!(sample(&page, exits, &reason("code_3")), Some(4.0), "{page}");
    assert_eq!(
        sample(&page, exits, &reason("signal_SIGKILL")),
        Some(4.0),
        "{page}"
    );
}

#[test]
fn an_oom_kill_counts_under_the_victims_pod() {
    privileged!("an_oom_kill_counts_under_the_victims_pod");
    let pod = Pod::new("shop", "oom-victim-1e2f3", "app");
    let dir = TempDir::new("oom");
    let mut cgroups = Cgroups::new("oom");
    let cg = pod.cgroup(&mut cgroups);
    let logs = pod.logs(&dir.0);
    let args: Vec<&str> = logs.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    let v1 = common::memory_limit(&cg, 32 << 20);
    let mut cmd = std::process::Command::new(common::workload());
    cmd.arg(&cg).arg("oom");
    if let Some(v1) = &v1 {
        cmd.env("WORKLOAD_MEMORY_CGROUP", v1);
    }
    let status = cmd.status().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    let name = "ebpf_exporter_oom_kills_total";
    let page = wait_for(&exporter, name, &pod.series(&[]), 1.0);
    assert_eq!(sample(&page, name, &pod.series(&[])), Some(1.0), "{page}");
    let killed = pod.series(&[("reason", "signal_SIGKILL")]);
    assert_eq!(
        sample(&page, "ebpf_exporter_process_exits_total", &killed),
        Some(1.0),
        "{page}"
    );
    if let Some(v1) = v1 {
        let _ = std::fs::remove_dir(v1);
    }
}
