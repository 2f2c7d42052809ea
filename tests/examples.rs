//! Each config pair in examples/ compiled with the README's command, run by the real
//! exporter from --config.dir, driven by a workload with known counts, and checked for
//! exact values on /metrics. Needs root and BPF.

#[macro_use]
mod common;

use common::{
    compile_example, node, run_workload, sample, wait_for, Cgroups, Exporter, Pod, TempDir,
};

/// Compiles `example` into a temp config dir and starts the exporter on it.
fn start(example: &str, dir: &TempDir, extra: &[String]) -> Exporter {
    start_env(example, dir, extra, &[])
}

fn start_env(example: &str, dir: &TempDir, extra: &[String], env: &[(&str, &str)]) -> Exporter {
    compile_example(example, &dir.0);
    let mut args = vec![
        "--config.dir".to_string(),
        dir.0.display().to_string(),
        "--config.names".into(),
        example.into(),
        "--config.strict".into(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Exporter::start_with_env(&args, env, &dir.0.join("exporter.log"))
}

#[test]
fn getpid_calls_table_counter_with_kube_decoders() {
    privileged!("getpid_calls_table_counter_with_kube_decoders");
    let pod = Pod::new("shop", "getpid-7c9d8-kq2xz", "app");
    let dir = TempDir::new("ex-getpid");
    let mut cgroups = Cgroups::new("ex-getpid");
    let cg = pod.cgroup(&mut cgroups);
    let exporter = start("getpid-calls", &dir, &pod.logs(&dir.0));
    run_workload(Some(&cg), &["getpid", "1234"]);
    let name = "ebpf_exporter_getpid_calls_total";
    let page = wait_for(&exporter, name, &pod.series(&[]), 1234.0);
    assert_eq!(
        sample(&page, name, &pod.series(&[])),
        Some(1234.0),
        "{page}"
    );
    assert!(
        page.contains("ebpf_exporter_enabled_configs{name=\"getpid-calls\"} 1"),
        "{page}"
    );
    assert!(
        page.contains(
            "ebpf_exporter_ebpf_program_info{config=\"getpid-calls\",program=\"count_getpid\""
        ),
        "{page}"
    );
}

#[test]
fn syscall_latency_ring_histogram_with_syscall_decoder() {
    privileged!("syscall_latency_ring_histogram_with_syscall_decoder");
    let pod = Pod::new("shop", "syscalls-5f6b7-x9z2q", "app");
    let dir = TempDir::new("ex-syscall");
    let mut cgroups = Cgroups::new("ex-syscall");
    let cg = pod.cgroup(&mut cgroups);
    let exporter = start("syscall-latency", &dir, &pod.logs(&dir.0));
    run_workload(Some(&cg), &["getpid", "777"]);
    let name = "ebpf_exporter_syscall_latency_seconds_count";
    let labels = format!("{},node_id=\"{}\",syscall=\"getpid\"", pod.labels(), node());
    let page = wait_for(&exporter, name, &labels, 777.0);
    assert_eq!(sample(&page, name, &labels), Some(777.0), "{page}");
    let inf = sample(
        &page,
        "ebpf_exporter_syscall_latency_seconds_bucket",
        &format!("{labels},le=\"+Inf\""),
    );
    assert_eq!(inf, Some(777.0));
}

#[test]
fn process_forks_tp_btf_table_with_cgroup_decoder() {
    privileged!("process_forks_tp_btf_table_with_cgroup_decoder");
    let dir = TempDir::new("ex-forks");
    let mut cgroups = Cgroups::new("ex-forks");
    let cg = cgroups.create(&["forker"]);
    let exporter = start("process-forks", &dir, &[]);
    run_workload(Some(&cg), &["fork", "25"]);
    let name = "ebpf_exporter_process_forks_total";
    let labels = format!("cgroup=\"{}\"", Cgroups::display(&cg));
    let page = wait_for(&exporter, name, &labels, 25.0);
    assert_eq!(sample(&page, name, &labels), Some(25.0), "{page}");
}

#[test]
fn usleep_uprobe_table_histogram_with_sum_key() {
    privileged!("usleep_uprobe_table_histogram_with_sum_key");
    let dir = TempDir::new("ex-usleep");
    let mut cgroups = Cgroups::new("ex-usleep");
    let cg = cgroups.create(&["sleeper"]);
    let exporter = start("usleep-durations", &dir, &[]);
    run_workload(Some(&cg), &["usleep", "1", "3", "3", "100", "5000"]);
    let name = "ebpf_exporter_usleep_requested_seconds";
    let labels = format!("cgroup=\"{}\"", Cgroups::display(&cg));
    let page = wait_for(&exporter, &format!("{name}_count"), &labels, 5.0);
    let bucket = |le: &str| {
        sample(
            &page,
            &format!("{name}_bucket"),
            &format!("{labels},le=\"{le}\""),
        )
    };
    // log2 buckets: 1 µs → le 1e-06; 3 → 4e-06; 100 → 0.000128; 5000 → 0.008192.
    assert_eq!(bucket("1e-06"), Some(1.0), "{page}");
    assert_eq!(bucket("2e-06"), Some(1.0));
    assert_eq!(bucket("4e-06"), Some(3.0));
    assert_eq!(bucket("6.4e-05"), Some(3.0));
    assert_eq!(bucket("0.000128"), Some(4.0));
    assert_eq!(bucket("0.004096"), Some(4.0));
    assert_eq!(bucket("0.008192"), Some(5.0));
    assert_eq!(bucket("+Inf"), Some(5.0));
    assert_eq!(
        sample(&page, &format!("{name}_sum"), &labels),
        Some(0.005107)
    );
    assert_eq!(sample(&page, &format!("{name}_count"), &labels), Some(5.0));
}

#[test]
fn open_errors_ring_counter_with_errno_decoder() {
    privileged!("open_errors_ring_counter_with_errno_decoder");
    let pod = Pod::new("shop", "opener-8d7c6-p3l4m", "app");
    let dir = TempDir::new("ex-open");
    let mut cgroups = Cgroups::new("ex-open");
    let cg = pod.cgroup(&mut cgroups);
    let exporter = start("open-errors", &dir, &pod.logs(&dir.0));
    run_workload(Some(&cg), &["open-missing", "42"]);
    let name = "ebpf_exporter_open_errors_total";
    let labels = format!("{},errno=\"ENOENT\",node_id=\"{}\"", pod.labels(), node());
    let labels = sorted_labels(&labels);
    let page = wait_for(&exporter, name, &labels, 42.0);
    assert_eq!(sample(&page, name, &labels), Some(42.0), "{page}");
}

#[test]
fn signals_perf_event_array_counter() {
    privileged!("signals_perf_event_array_counter");
    let dir = TempDir::new("ex-signals");
    let mut cgroups = Cgroups::new("ex-signals");
    let cg = cgroups.create(&["signaller"]);
    let exporter = start("signals", &dir, &[]);
    run_workload(Some(&cg), &["kill", "300", "0"]);
    let name = "ebpf_exporter_signals_sent_total";
    let labels = format!("cgroup=\"{}\",signal=\"0\"", Cgroups::display(&cg));
    let page = wait_for(&exporter, name, &labels, 300.0);
    assert_eq!(sample(&page, name, &labels), Some(300.0), "{page}");
    assert!(page.contains("ebpf_exporter_ring_lost_records_total{program=\"signals\",ring=\"signals_sent_total\"} 0"), "{page}");
}

/// Sorts `a="x",b="y"` pairs by name, as the exposition writes them.
fn sorted_labels(labels: &str) -> String {
    let mut pairs: Vec<&str> = labels.split(',').collect();
    pairs.sort();
    pairs.join(",")
}

#[test]
fn getpid_by_pid_table_with_pid_keyed_kube_decoders() {
    privileged!("getpid_by_pid_table_with_pid_keyed_kube_decoders");
    let pod = Pod::new("shop", "bypid-4e5f6-r7s8t", "app");
    let dir = TempDir::new("ex-bypid");
    let mut cgroups = Cgroups::new("ex-bypid");
    let cg = pod.cgroup(&mut cgroups);
    let exporter = start("getpid-by-pid", &dir, &pod.logs(&dir.0));
    // The process must still exist at scrape time: pid → /proc/<pid>/cgroup → pod.
    let mut held = std::process::Command::new(common::workload())
        .args([cg.to_str().unwrap(), "getpid", "321"])
        .env("WORKLOAD_HOLD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(held.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "done\n");
    let name = "ebpf_exporter_getpid_calls_by_pid_total";
    let page = wait_for(&exporter, name, &pod.series(&[]), 321.0);
    held.kill().unwrap();
    held.wait().unwrap();
    assert_eq!(sample(&page, name, &pod.series(&[])), Some(321.0), "{page}");
}

#[test]
fn open_errors_through_perf_event_arrays() {
    privileged!("open_errors_through_perf_event_arrays");
    let pod = Pod::new("shop", "perf-opener-2b3c4", "app");
    let dir = TempDir::new("ex-open-perf");
    let mut cgroups = Cgroups::new("ex-open-perf");
    let cg = pod.cgroup(&mut cgroups);
    // Loads open-errors.perf.bpf.o, the -DOUTPUT_PERF build, as on kernels before 5.8.
    let exporter = start_env(
        "open-errors",
        &dir,
        &pod.logs(&dir.0),
        &[("KUBE_EBPF_EXPORTER__PIPELINE__OUTPUT", "perf")],
    );
    run_workload(Some(&cg), &["open-missing", "64"]);
    let name = "ebpf_exporter_open_errors_total";
    let labels = sorted_labels(&format!(
        "{},errno=\"ENOENT\",node_id=\"{}\"",
        pod.labels(),
        node()
    ));
    let page = wait_for(&exporter, name, &labels, 64.0);
    assert_eq!(sample(&page, name, &labels), Some(64.0), "{page}");
    std::fs::remove_file(dir.0.join("open-errors.perf.bpf.o")).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["--config.dir", dir.0.to_str().unwrap(), "--config.check"])
        .env("KUBE_EBPF_EXPORTER__PIPELINE__OUTPUT", "perf")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("open-errors.perf.bpf.o") && text.contains("needs the -DOUTPUT_PERF build"),
        "{text}"
    );
}

#[test]
fn getppid_per_cpu_table_splits_by_cpu() {
    privileged!("getppid_per_cpu_table_splits_by_cpu");
    let dir = TempDir::new("ex-percpu");
    let mut cgroups = Cgroups::new("ex-percpu");
    let cg = cgroups.create(&["pinned"]);
    let exporter = start("getppid-per-cpu", &dir, &[]);
    // Pinned to CPU 1, so every call counts there.
    let status = std::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(common::workload())
        .args([cg.to_str().unwrap(), "getppid", "555"])
        .status()
        .unwrap();
    assert!(status.success());
    let name = "ebpf_exporter_getppid_calls_total";
    let on = |cpu: u32| format!("cgroup=\"{}\",cpu=\"{cpu}\"", Cgroups::display(&cg));
    let page = wait_for(&exporter, name, &on(1), 555.0);
    assert_eq!(sample(&page, name, &on(1)), Some(555.0), "{page}");
    assert_eq!(sample(&page, name, &on(0)), Some(0.0), "{page}");
}

/// The USDT example against the workload, plain and built with a semaphore guarding
/// the probe (which then fires only if the exporter's attach raised it).
#[test]
fn workload_jobs_usdt_arguments_in_tables() {
    privileged!("workload_jobs_usdt_arguments_in_tables");
    for semaphore in [false, true] {
        let dir = TempDir::new(if semaphore { "ex-usdt-sem" } else { "ex-usdt" });
        // The config names the binary `kebpf-workload`, found on the exporter's PATH.
        let bin = dir.0.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let workload = bin.join("kebpf-workload");
        if semaphore {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            let ok = std::process::Command::new("cc")
                .args(["-O1", "-DWORKLOAD_SEMAPHORE", "-o"])
                .arg(&workload)
                .arg(root.join("tests/workload.c"))
                .status()
                .unwrap();
            assert!(ok.success());
        } else {
            std::fs::copy(common::workload(), &workload).unwrap();
        }
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let exporter = start_env("workload-jobs", &dir, &[], &[("PATH", &path)]);
        let status = std::process::Command::new(&workload)
            .args(["-", "jobs", "10"])
            .status()
            .unwrap();
        assert!(status.success());
        // i = 0..9: kind i % 3, cost i * 1000.
        let jobs = "ebpf_exporter_workload_jobs_total";
        let cost = "ebpf_exporter_workload_job_cost_total";
        let page = wait_for(&exporter, cost, "kind=\"2\"", 15000.0);
        for (kind, n, total) in [
            ("0", 4.0, 18000.0),
            ("1", 3.0, 12000.0),
            ("2", 3.0, 15000.0),
        ] {
            let labels = format!("kind=\"{kind}\"");
            assert_eq!(
                sample(&page, jobs, &labels),
                Some(n),
                "semaphore {semaphore}: {page}"
            );
            assert_eq!(
                sample(&page, cost, &labels),
                Some(total),
                "semaphore {semaphore}: {page}"
            );
        }
    }
}
