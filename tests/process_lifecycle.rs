//! The built-in `process_lifecycle` program (in the embedded default config): execs and
//! process exits by reason count exactly under the pod that ran them. Needs root and BPF.

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
    let reason = |r: &str| format!("{},reason=\"{r}\"", pod.labels());
    let page = wait_for(&exporter, exits, &reason("signal_SIGKILL"), 4.0);
    assert_eq!(
        sample(&page, "ebpf_exporter_process_execs_total", &pod.labels()),
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
