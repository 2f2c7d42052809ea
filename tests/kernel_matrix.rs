//! The kernel matrix: Debian's 5.10, 6.1 and 6.12 cloud kernels boot under qemu with
//! this build's exporter; in each guest every built-in program and example is checked
//! with `--config.check`, workloads of known size run in a kubelet-shaped pod cgroup,
//! and the exported values must be exact (the guest's side is tests/matrix/init.sh;
//! the host's 6.18 is covered by the other tests). Needs qemu, cpio, busybox-static
//! and the Debian mirror.

#[macro_use]
mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// A guest that has not powered off by then is dead (TCG guests can hang).
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The pod the guest's workloads run in (tests/matrix/init.sh reads these).
const NS: &str = "matrix";
const POD: &str = "matrix-7d4f8-k2x9q";
const CONTAINER: &str = "work";
const POD_UID: &str = "6b1c3a52-0d4e-4f8a-9b7c-2e5d8f1a3c4b";
const CONTAINER_ID: &str = "3f9a1c7e5b2d4a6c8e0f1a3b5c7d9e2f4a6b8c0d1e3f5a7b9c2d4e6f8a0b1c3d";
/// A second pod, whose processes only pod-exec-trace's spans follow (the first one's
/// counts stay exact).
const SPAN_POD: &str = "spans-5c6d7-m3n4p";
const SPAN_POD_UID: &str = "9d2e4f6a-1b3c-4d5e-8f7a-0b1c2d3e4f5a";
const SPAN_CONTAINER_ID: &str = "7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b";

fn missing_tools() -> Option<String> {
    for tool in ["qemu-system-x86_64", "cpio", "apt-get", "strip", "cc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox (busybox-static) is not installed".into());
    }
    if !cfg!(target_arch = "x86_64") {
        return Some("the guests are x86-64 kernels".into());
    }
    None
}

struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    config: PathBuf,
}

/// Downloads (once, cached under the target directory) and lists the guest kernels.
fn kernels(cache: &Path) -> Vec<Kernel> {
    let out = Command::new(Path::new(ROOT).join("tests/matrix/fetch-kernels.sh"))
        .arg(cache)
        .stderr(Stdio::inherit())
        .output()
        .expect("tests/matrix/fetch-kernels.sh");
    assert!(out.status.success(), "fetching the matrix kernels failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Kernel {
                release: f[0].into(),
                vmlinuz: f[1].into(),
                config: f[2].into(),
            }
        })
        .collect()
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

/// Copies `bin` into the tree at `at` with the shared libraries it needs.
fn install_binary(tree: &Path, bin: &Path, at: &str) {
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(tree.join(at))
        .arg(bin));
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let lib = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(lib) = lib {
            let dest = tree.join(lib.strip_prefix("/").unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&lib, &dest).unwrap();
        }
    }
}

/// The test-support crate's OTLP receiver, built for the guests (which have no
/// network to reach one in this process).
fn otlp_receiver() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "test-support",
            "--bin",
            "otlp-receiver",
            "--message-format=json",
        ])
        .current_dir(ROOT)
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo");
    assert!(out.status.success(), "building otlp-receiver failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|m| Some(PathBuf::from(m["executable"].as_str()?)))
        .expect("cargo names the receiver's executable")
}

/// Builds the guests' initramfs: busybox, the exporter, the workload, every example
/// compiled as the README says, the kernels' configs and the init script.
fn initramfs(dir: &Path, kernels: &[Kernel]) -> PathBuf {
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    for d in [
        "bin", "usr/bin", "cfg", "boot", "matrix", "sys", "proc", "dev", "tmp",
    ] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    // The test build by default (CI builds no release binary); any other build with
    // KUBE_EBPF_EXPORTER_MATRIX_BIN, e.g. target/release/kube-ebpf-exporter.
    let exporter =
        std::env::var("KUBE_EBPF_EXPORTER_MATRIX_BIN").unwrap_or_else(|_| common::BIN.into());
    install_binary(&tree, Path::new(&exporter), "bin/kube-ebpf-exporter");
    // util-linux's, by its full path in the guest: busybox's applet takes other options.
    install_binary(&tree, Path::new("/usr/bin/setpriv"), "usr/bin/setpriv");
    // Linked at a fixed address, so its USDT probe attaches on kernels without BPF
    // cookies too (before 5.15, found by address as libbpf does).
    let workload = dir.join("kebpf-workload");
    run(Command::new("cc")
        .args(["-O1", "-no-pie", "-o"])
        .arg(&workload)
        .arg(Path::new(ROOT).join("tests/workload.c")));
    install_binary(&tree, &workload, "bin/kebpf-workload");
    // exec-trace follows what /bin/bash starts; the guests' OTLP receiver prints spans.
    install_binary(&tree, Path::new("/bin/bash"), "bin/bash");
    install_binary(&tree, &otlp_receiver(), "bin/otlp-receiver");
    for entry in std::fs::read_dir(Path::new(ROOT).join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(example) = name.strip_suffix(".yaml") {
            common::compile_example(example, &tree.join("cfg"));
        }
    }
    for k in kernels {
        std::fs::copy(&k.config, tree.join(format!("boot/config-{}", k.release))).unwrap();
        // null_blk (after configfs) gives the guest disks for the block_io workloads.
        let modules = tree.join("matrix/modules").join(&k.release);
        std::fs::create_dir_all(&modules).unwrap();
        for m in ["configfs.ko", "null_blk.ko"] {
            std::fs::copy(k.vmlinuz.parent().unwrap().join(m), modules.join(m)).unwrap();
        }
    }
    std::fs::write(
        tree.join("matrix/pod.env"),
        format!(
            "NS={NS}\nPOD={POD}\nCONTAINER={CONTAINER}\nPOD_UID={POD_UID}\nPOD_UID_={}\nCONTAINER_ID={CONTAINER_ID}\nSPAN_POD={SPAN_POD}\nSPAN_POD_UID={SPAN_POD_UID}\nSPAN_POD_UID_={}\nSPAN_CONTAINER_ID={SPAN_CONTAINER_ID}\n",
            POD_UID.replace('-', "_"),
            SPAN_POD_UID.replace('-', "_")
        ),
    )
    .unwrap();
    let init = tree.join("init");
    std::fs::copy(Path::new(ROOT).join("tests/matrix/init.sh"), &init).unwrap();
    run(Command::new("chmod").arg("755").arg(&init));
    let cpio = dir.join("initramfs.cpio");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet > {}",
        tree.display(),
        cpio.display()
    )));
    cpio
}

/// Boots `kernel` with `initramfs` under TCG and returns its serial output.
fn boot(kernel: &Kernel, initramfs: &Path, log: &Path) -> String {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "1536",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 rdinit=/init panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = String::new();
    std::fs::File::open(log)
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// What one guest reported.
#[derive(Default)]
struct Report {
    kernel: String,
    checks: BTreeMap<String, String>,
    /// `--config.check` of one config holding only the base DaemonSet's capabilities.
    base_checks: BTreeMap<String, String>,
    /// (port, series with labels, value).
    metrics: Vec<(String, String, f64)>,
    logs: Vec<String>,
    workload_failures: Vec<String>,
    /// What workloads printed of the kernel's own counts (`value <name> <n>`).
    values: BTreeMap<String, f64>,
    /// The answer to `POST /-/reload` after one config changed.
    reload: String,
    /// Spans the guest's OTLP receivers got: protocol, then `Span`'s tab-separated fields.
    spans: Vec<Vec<String>>,
    ended: bool,
}

fn parse(output: &str) -> Report {
    let mut r = Report::default();
    // Serial output can glue terminal codes before the first guest line.
    for line in output
        .lines()
        .filter_map(|l| l.split_once("MATRIX ").map(|(_, rest)| rest))
    {
        let line = line.trim_end();
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "kernel" => r.kernel = rest.into(),
            "check" | "base-check" => {
                // "ok      <name>: ..." or "FAILED  <name> (stage, reason): ...";
                // the default config's lines carry "default" first.
                let rest = rest.strip_prefix("default ").unwrap_or(rest);
                let Some(name) = rest.split_whitespace().nth(1) else {
                    continue;
                };
                let name = name.trim_end_matches(':').to_string();
                let checks = if kind == "check" {
                    &mut r.checks
                } else {
                    &mut r.base_checks
                };
                checks.insert(name, rest.to_string());
            }
            "metric" => {
                let Some((port, sample)) = rest.split_once(' ') else {
                    continue;
                };
                if sample.starts_with('#') {
                    continue;
                }
                if let Some((series, value)) = sample.rsplit_once(' ') {
                    if let Ok(v) = value.parse() {
                        r.metrics.push((port.into(), series.into(), v));
                    }
                }
            }
            "log" => r.logs.push(rest.into()),
            "span" => r.spans.push(rest.split('\t').map(str::to_string).collect()),
            "reload" => r.reload = rest.into(),
            "workload-failed" => r.workload_failures.push(rest.into()),
            "value" => {
                if let Some((name, v)) = rest.split_once(' ') {
                    if let Ok(v) = v.trim().parse() {
                        r.values.insert(name.into(), v);
                    }
                }
            }
            "end" => r.ended = true,
            _ => {}
        }
    }
    r
}

impl Report {
    /// Sum of `metric` over the series (on `port`) whose labels contain every `want`.
    fn sum(&self, port: &str, metric: &str, want: &[&str]) -> f64 {
        self.metrics
            .iter()
            .filter(|(p, series, _)| {
                p == port
                    && series.split_once('{').map_or(series.as_str(), |(n, _)| n) == metric
                    && want.iter().all(|w| series.contains(w))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// `CONFIG_<name>` from a kernel config file.
fn config_value(config: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let prefix = format!("CONFIG_{name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_default()
        .to_string()
}

/// Everything wrong with one guest's report.
fn problems(k: &Kernel, r: &Report) -> Vec<String> {
    let mut bad = Vec::new();
    let (major, minor) = {
        let mut v = k
            .release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (v.next().unwrap(), v.next().unwrap())
    };
    let has_cookie = (major, minor) >= (5, 15);
    if r.kernel != k.release {
        bad.push(format!("guest reports kernel {:?}", r.kernel));
    }
    // Every config loads and attaches; cgrp_storage maps exist from 6.2.
    let has_cgrp_storage = (major, minor) >= (6, 2);
    let examples: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("examples"))
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().to_string();
            n.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    let builtins = bpf_programs::OBJECTS
        .iter()
        .map(|o| o.name)
        .filter(|n| *n != "cgroup_events");
    for name in examples.iter().map(String::as_str).chain(builtins) {
        let expect_ok = name != "cgroup-id-map-storage" || has_cgrp_storage;
        match r.checks.get(name) {
            Some(line) if line.starts_with("ok") == expect_ok => {}
            Some(line) => bad.push(format!("check {name}: {line}")),
            None => bad.push(format!("check {name}: no result")),
        }
    }
    if let Some(line) = r
        .checks
        .get("cgroup-id-map-storage")
        .filter(|_| !has_cgrp_storage)
    {
        if !line.contains("cgrp_storage needs 6.2") {
            bad.push(format!(
                "cgroup-id-map-storage should say why it cannot load here: {line}"
            ));
        }
    }
    // The kernel's shipped perf_event_paranoid (Debian's 3; Ubuntu's 4 on 6.1), and the
    // built-ins served holding exactly the base DaemonSet's capabilities.
    let paranoid = if (major, minor) == (6, 1) { 4.0 } else { 3.0 };
    if r.values.get("perf_event_paranoid") != Some(&paranoid) {
        bad.push(format!(
            "perf_event_paranoid {:?}, want {paranoid}",
            r.values.get("perf_event_paranoid")
        ));
    }
    let base_caps = (1u64 << 39 | 1 << 38 | 1 << 2) as f64;
    if r.values.get("capbnd_9435") != Some(&base_caps) {
        bad.push(format!("the built-ins' exporter had bounding set {:?}, want BPF, PERFMON and DAC_READ_SEARCH only", r.values.get("capbnd_9435")));
    }
    // Before 5.11, at the kernel's default RLIMIT_MEMLOCK: the cause and both ways out.
    if (major, minor) < (5, 11) {
        match r.base_checks.get("tcp_connect_latency") {
            Some(line)
                if line.contains("(load, memlock)")
                    && [
                        "CAP_SYS_RESOURCE",
                        "deploy/overlays/pre-5.11-kernels",
                        "LimitMEMLOCK",
                    ]
                    .iter()
                    .all(|w| line.contains(w)) => {}
            other => bad.push(format!(
                "tcp_connect_latency at a 64 KiB RLIMIT_MEMLOCK: {other:?}"
            )),
        }
    }
    // A user's tracepoint config there: one message naming the sysctl, the overlay and
    // the hooks that need no perf event.
    match r.base_checks.get("getpid-calls") {
        Some(line)
            if line.starts_with("FAILED")
                && line.contains("(attach, perf_event_paranoid)")
                && [
                    "kernel.perf_event_paranoid",
                    "deploy/overlays/perf-events",
                    "raw_tp/sys_enter_getpid",
                ]
                .iter()
                .all(|w| line.contains(w)) => {}
        other => bad.push(format!(
            "getpid-calls under the base capabilities: {other:?}"
        )),
    }
    // kprobe configs attach through kprobe-multi links where the kernel has them (fprobe:
    // 6.12 here), and say why not elsewhere.
    let kprobe_multi = config_value(&k.config, "FPROBE") == "y";
    match r.base_checks.get("kprobe-fsync") {
        Some(line) if kprobe_multi && line.starts_with("ok") => {}
        Some(line)
            if !kprobe_multi
                && line.contains("(attach, perf_event_paranoid)")
                && line.contains("kprobe-multi") => {}
        other => bad.push(format!(
            "kprobe-fsync under the base capabilities (kprobe-multi: {kprobe_multi}): {other:?}"
        )),
    }
    // Programs attached through kprobe-multi links (6.12) are listed as aya's are.
    for program in ["fsync_entry", "fsync_return"] {
        let listed = r.metrics.iter().any(|(port, series, _)| {
            port == "9436"
                && series.starts_with("ebpf_exporter_ebpf_program_info{")
                && series.contains("config=\"kprobe-fsync\"")
                && series.contains(&format!("program=\"{program}\""))
        });
        if !listed {
            bad.push(format!("no ebpf_program_info for kprobe-fsync's {program}"));
        }
    }
    // The reload replaced the changed config, which then counted afresh.
    if !r.reload.contains("replaced [\"getpid-calls\"]") {
        bad.push(format!("reload: {:?}", r.reload));
    }
    if r.values.get("reloaded_getpid") != Some(&7.0) {
        bad.push(format!(
            "after the reload getpid-calls counted {:?}, want 7",
            r.values.get("reloaded_getpid")
        ));
    }
    for w in &r.workload_failures {
        bad.push(format!("workload failed: {w}"));
    }
    bad.extend(span_problems(r));
    for l in &r.logs {
        bad.push(format!("exporter logged: {l}"));
    }

    let pod = [
        format!("app_namespace=\"{NS}\""),
        format!("app_pod=\"{POD}\""),
        format!("app_container=\"{CONTAINER}\""),
    ];
    let pod: Vec<&str> = pod.iter().map(String::as_str).collect();
    let with = |extra: &[&'static str]| -> Vec<&str> {
        pod.iter().copied().chain(extra.iter().copied()).collect()
    };
    let cgroup = format!("cri-containerd-{CONTAINER_ID}.scope");
    let cg = [cgroup.as_str()];
    let hz = config_value(&k.config, "HZ");
    let (kmajor, kminor) = (format!("major=\"{major}\""), format!("minor=\"{minor}\""));
    let hz = format!("hz=\"{hz}\"");
    let cookie = if has_cookie {
        "bpf_cookie=\"1\""
    } else {
        "bpf_cookie=\"0\""
    };
    let kconfig = [
        kmajor.as_str(),
        kminor.as_str(),
        hz.as_str(),
        cookie,
        "syscall_wrapper=\"1\"",
        "bpf_syscall=\"1\"",
        "missing=\"0\"",
    ];
    let mut expect: Vec<(&str, &str, Vec<&str>, f64)> = vec![
        (
            "9435",
            "ebpf_exporter_tcp_connect_latency_seconds_count",
            pod.clone(),
            25.0,
        ),
        // `lifecycle 4`: 4 execs, 4 exits with code 3, 4 kills (the workloads exec
        // before they join the pod's cgroup); `oom`: one more kill, by the OOM killer;
        // the 7 refused `connect`s exit with 3 too.
        (
            "9435",
            "ebpf_exporter_process_execs_total",
            pod.clone(),
            4.0,
        ),
        (
            "9435",
            "ebpf_exporter_process_exits_total",
            with(&["reason=\"code_3\""]),
            11.0,
        ),
        (
            "9435",
            "ebpf_exporter_process_exits_total",
            with(&["reason=\"signal_SIGKILL\""]),
            5.0,
        ),
        ("9435", "ebpf_exporter_oom_kills_total", pod.clone(), 1.0),
        // getpid 1234, and one by `kill` for its own pid.
        (
            "9436",
            "ebpf_exporter_getpid_calls_total",
            pod.clone(),
            1235.0,
        ),
        // Pid-keyed: the workload has exited by the scrape, so only the count is exact;
        // every process counts: one more by the network namespace's shell (busybox).
        (
            "9436",
            "ebpf_exporter_getpid_calls_by_pid_total",
            vec![],
            1236.0,
        ),
        (
            "9436",
            "ebpf_exporter_syscall_latency_seconds_count",
            with(&["syscall=\"getpid\""]),
            1235.0,
        ),
        (
            "9436",
            "ebpf_exporter_getppid_calls_total",
            cg.to_vec(),
            321.0,
        ),
        (
            "9436",
            "ebpf_exporter_task_tgid_reads_total",
            vec!["method=\"core\"", "right=\"true\""],
            433.0,
        ),
        (
            "9436",
            "ebpf_exporter_task_tgid_reads_total",
            vec!["method=\"core\"", "right=\"false\""],
            0.0,
        ),
        // vmlinux.h's compile-time offset is wrong on every guest kernel: what the
        // CO-RE read would give without relocation.
        (
            "9436",
            "ebpf_exporter_task_tgid_reads_total",
            vec!["method=\"fixed\"", "right=\"true\""],
            0.0,
        ),
        (
            "9436",
            "ebpf_exporter_kconfig_calls_total",
            kconfig.to_vec(),
            50.0,
        ),
        (
            "9436",
            "ebpf_exporter_open_errors_total",
            with(&["errno=\"ENOENT\""]),
            77.0,
        ),
        // `fork 12`, the 12 children of `lifecycle 4` and the 2 of `spin`.
        (
            "9436",
            "ebpf_exporter_process_forks_total",
            cg.to_vec(),
            26.0,
        ),
        (
            "9436",
            "ebpf_exporter_usleep_requested_seconds_count",
            cg.to_vec(),
            5.0,
        ),
        (
            "9436",
            "ebpf_exporter_usleep_requested_seconds_sum",
            cg.to_vec(),
            0.005107,
        ),
        (
            "9436",
            "ebpf_exporter_signals_sent_total",
            [cgroup.as_str(), "signal=\"0\""].to_vec(),
            9.0,
        ),
        (
            "9436",
            "ebpf_exporter_fsync_kprobe_hooks_total",
            with(&["hook=\"kprobe\""]),
            FSYNCS,
        ),
        (
            "9436",
            "ebpf_exporter_fsync_kprobe_hooks_total",
            with(&["hook=\"kretprobe\""]),
            FSYNCS,
        ),
        (
            "9436",
            "ebpf_exporter_fsync_fentry_hooks_total",
            with(&["hook=\"fentry\""]),
            FSYNCS,
        ),
        (
            "9436",
            "ebpf_exporter_fsync_fentry_hooks_total",
            with(&["hook=\"fexit\""]),
            FSYNCS,
        ),
        // fentry, and a CO-RE read into the flexible array ending struct unix_address.
        (
            "9436",
            "ebpf_exporter_unix_stream_connects_total",
            with(&["path=\"/tmp/kebpf-unix.sock\""]),
            13.0,
        ),
        // The reference format's features.
        (
            "9436",
            "ebpf_exporter_exporter_attach_marks_total",
            vec![],
            1.0,
        ),
        (
            "9436",
            "ebpf_exporter_getppid_calls_by_filter_total",
            [cgroup.as_str(), "matched=\"true\""].to_vec(),
            321.0,
        ),
        (
            "9436",
            "ebpf_exporter_xdp_udp_packets_total",
            vec!["port=\"9999\""],
            23.0,
        ),
    ];
    if has_cgrp_storage {
        expect.push((
            "9436",
            "ebpf_exporter_getppid_calls_by_storage_total",
            [cgroup.as_str(), "matched=\"true\""].to_vec(),
            321.0,
        ));
    }
    // USDT: by BPF cookie from 5.15, by the probe's address before.
    for (kind, n, cost) in [
        ("kind=\"0\"", 4.0, 18000.0),
        ("kind=\"1\"", 3.0, 12000.0),
        ("kind=\"2\"", 3.0, 15000.0),
    ] {
        expect.push(("9436", "ebpf_exporter_workload_jobs_total", vec![kind], n));
        expect.push((
            "9436",
            "ebpf_exporter_workload_job_cost_total",
            vec![kind],
            cost,
        ));
    }
    // The same probe as a ring histogram with pod labels: costs 0..9000 ns.
    for (kind, n, sum) in [
        ("kind=\"small\"", 4.0, 18e-6),
        ("kind=\"medium\"", 3.0, 12e-6),
        ("kind=\"large\"", 3.0, 15e-6),
    ] {
        expect.push((
            "9436",
            "ebpf_exporter_workload_job_cost_seconds_count",
            with(&[kind]),
            n,
        ));
        expect.push((
            "9436",
            "ebpf_exporter_workload_job_cost_seconds_sum",
            with(&[kind]),
            sum,
        ));
    }
    bad.extend(library_problems(r, (major, minor), &pod));
    for (port, metric, want, value) in expect {
        let got = r.sum(port, metric, &want);
        if (got - value).abs() > 1e-9 {
            bad.push(format!(
                "{metric}{{{}}} = {got}, want {value}",
                want.join(",")
            ));
        }
    }
    bad
}

/// The program library's results (9435 runs every built-in), against the counts the
/// guest's workloads and kernel reported.
fn library_problems(r: &Report, version: (u32, u32), pod: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    let value = |name: &str| r.values.get(name).copied().unwrap_or(f64::NAN);
    let with = |extra: &[&'static str]| -> Vec<&str> { [pod, extra].concat() };
    let nobody = ["app_namespace=\"\"", "app_pod=\"\"", "app_container=\"\""];
    let write = |disk: &'static str| with(&[disk, "op=\"write\""]);
    let expect = [
        (
            "tcp_connect_errors_total",
            with(&["errno=\"ECONNREFUSED\""]),
            7.0,
        ),
        ("tcp_resets_total", with(&["direction=\"received\""]), 7.0),
        (
            "tcp_connect_errors_total",
            with(&["errno=\"ETIMEDOUT\""]),
            3.0,
        ),
        (
            "tcp_retransmits_total",
            with(&["state=\"SYN_SENT\""]),
            value("retransmits_sent"),
        ),
        (
            "udp_receive_drops_total",
            pod.to_vec(),
            value("udp_dropped"),
        ),
        (
            "syscall_errors_total",
            with(&["syscall=\"openat\"", "errno=\"ENOENT\""]),
            77.0,
        ),
        (
            "block_io_size_bytes_count",
            write("device=\"nullb0\""),
            16.0,
        ),
        (
            "block_io_size_bytes_sum",
            write("device=\"nullb0\""),
            16.0 * 65536.0,
        ),
        (
            "block_io_latency_seconds_count",
            write("device=\"nullb0\""),
            16.0,
        ),
        // Written back by the kernel's flusher, charged to the container that dirtied it.
        (
            "block_io_size_bytes_sum",
            write("device=\"nullb1\""),
            64.0 * 1024.0 * 1024.0,
        ),
    ];
    for (metric, want, value) in expect {
        let got = r.sum("9435", &format!("ebpf_exporter_{metric}"), &want);
        if (got - value).abs() > 1e-9 {
            bad.push(format!(
                "{metric}{{{}}} = {got}, want {value}",
                want.join(",")
            ));
        }
    }
    // Resets answering segments no socket owns (the 7, and every health poll before an
    // exporter listened), under no pod: traced from 6.10, by the optional kprobes before.
    let sent = r.sum(
        "9435",
        "ebpf_exporter_tcp_resets_total",
        &[&nobody[..], &["direction=\"sent\""]].concat(),
    );
    if sent < 7.0 {
        bad.push(format!(
            "tcp_resets_total{{direction=\"sent\"}} under no pod = {sent}, want at least 7"
        ));
    }
    // Drop reasons from 5.17; the receiving socket's pod from 6.11 (rx_sk).
    let (reason, owner) = match version {
        v if v >= (6, 11) => ("reason=\"SOCKET_RCVBUFF\"", pod),
        v if v >= (5, 17) => ("reason=\"SOCKET_RCVBUFF\"", &nobody[..]),
        _ => ("reason=\"unknown\"", &nobody[..]),
    };
    let drops = r.sum(
        "9435",
        "ebpf_exporter_packet_drops_total",
        &[owner, &[reason]].concat(),
    );
    if drops < value("udp_dropped") {
        bad.push(format!(
            "packet_drops_total{{{reason}}} = {drops}, want at least the {} UDP drops",
            value("udp_dropped")
        ));
    }
    // Two loops sharing the CPU: the pod's waits meanwhile, as the kernel's sched_info
    // has them (emulated, within 10%: see run_queue_agrees).
    let waits = value("runqueue_count_after") - value("runqueue_count_before");
    let waited = value("runqueue_sum_after") - value("runqueue_sum_before");
    let (delay, runs) = (value("run_delay_ns") / 1e9, value("runs"));
    if !common::run_queue_agrees(waits, waited, delay, runs, 0.10) {
        bad.push(format!("runqueue_latency: {waits} waits of {waited} s; the kernel accounted {runs} runs after {delay} s waiting"));
    }
    if r.sum(
        "9435",
        "ebpf_exporter_direct_reclaim_latency_seconds_count",
        pod,
    ) < 1.0
    {
        bad.push("direct_reclaim_latency_seconds: no stall under the pod".into());
    }
    bad
}

/// A span line's fields: protocol, service, name, trace, span, parent, start, end, attributes.
const SERVICE: usize = 1;
const NAME: usize = 2;
const TRACE: usize = 3;
const SPAN: usize = 4;
const PARENT: usize = 5;
const ATTRIBUTES: usize = 8;

/// Whether span line `s` has attribute `key=value`.
fn has(s: &[String], kv: &str) -> bool {
    s.get(ATTRIBUTES)
        .is_some_and(|a| a.split(';').any(|x| x == kv))
}

/// What the guest's spans got wrong: exec-trace over gRPC and HTTP/protobuf (7 runs of
/// /bin/true under one bash), pod-exec-trace's pod attributes, bio-trace's spans of 16
/// direct writes to nullb0 (gRPC) and to nullb1 (HTTP/protobuf), sched-trace's
/// switches and wakeups under the workload's span.
fn span_problems(r: &Report) -> Vec<String> {
    let mut bad = Vec::new();
    let spans = |protocol: &str, service: &str| -> Vec<&Vec<String>> {
        r.spans
            .iter()
            .filter(|s| s.len() > ATTRIBUTES && s[0] == protocol && s[SERVICE] == service)
            .collect()
    };
    for (protocol, service) in [
        ("grpc", "exec-trace"),
        ("http", "exec-trace"),
        ("grpc", "pod-exec-trace"),
    ] {
        let all = spans(protocol, service);
        let Some(child) = all.iter().find(|s| s[NAME] == "/bin/true") else {
            bad.push(format!("{service} over {protocol}: no /bin/true span"));
            continue;
        };
        let trace: Vec<_> = all.iter().filter(|s| s[TRACE] == child[TRACE]).collect();
        let root: Vec<_> = trace.iter().filter(|s| s[PARENT] == "-").collect();
        let children = trace.iter().filter(|s| s[NAME] == "/bin/true").count();
        let under_root = trace
            .iter()
            .filter(|s| root.first().is_some_and(|r| s[PARENT] == r[SPAN]))
            .count();
        if trace.len() != 8
            || root.len() != 1
            || root[0][NAME] != "/bin/bash"
            || children != 7
            || under_root != 7
        {
            bad.push(format!("{service} over {protocol}: want /bin/bash with 7 /bin/true children, got {trace:?}"));
        }
        if service == "pod-exec-trace" {
            for kv in [
                format!("k8s.namespace.name={NS}"),
                format!("k8s.pod.name={SPAN_POD}"),
                format!("k8s.pod.uid={SPAN_POD_UID}"),
                format!("k8s.container.name={CONTAINER}"),
            ] {
                if !trace.iter().all(|s| has(s, &kv)) {
                    bad.push(format!("pod-exec-trace: spans without {kv}: {trace:?}"));
                }
            }
        }
    }
    // nullb0's direct writes came before the HTTP exporter started, nullb1's after
    // (its page cache writeback before that too, which gRPC's spans include).
    for (protocol, disk) in [("grpc", "nullb0"), ("http", "nullb1")] {
        let bio = spans(protocol, "bio-trace");
        let device = format!("device={disk}");
        let writes = |name: &str| {
            bio.iter()
                .filter(|s| s[NAME] == name && has(s, &device) && has(s, "operation=write"))
                .count()
        };
        let deadline = r.values.get("deadline") == Some(&1.0);
        let (inserts, services) = (writes("block_rq_insert"), writes("block_rq_service"));
        if services != 16 || (deadline && inserts != 16) {
            bad.push(format!(
                "bio-trace over {protocol}: {services} service and {inserts} insert spans for 16 direct writes to {disk} (mq-deadline: {deadline})"
            ));
        }
    }
    let sched = spans("grpc", "sched");
    let under = |name: &str, kv: &str| {
        sched
            .iter()
            .filter(|s| {
                s[NAME] == name
                    && s[PARENT] == SCHED_SPAN
                    && s[TRACE] == SCHED_TRACE
                    && (kv.is_empty() || has(s, kv))
            })
            .count()
    };
    // Every sleep's timer wakes the task: 5 wakeups. A sleep need not switch (under
    // TCG its 1 ms timer can fire before the task leaves the CPU), and before 5.18 a
    // switch can read as running (the tracepoint reads the task's state again after a
    // racing wakeup): at least one sleeping switch, and only under the span (the host's
    // tests/spans.rs checks them exactly).
    let (sleeping, wakeups) = (
        under("sched_switch", "state=interruptible_sleep"),
        under("sched_wakeup", ""),
    );
    if !(1..=5).contains(&sleeping) || wakeups != 5 {
        bad.push(format!("sched-trace: {sleeping} sleeping switches and {wakeups} wakeups under the workload's span, want 1 to 5 and 5"));
    }
    bad
}

/// The trace and span ids the guest's traced-sleep announces (as the workload prints
/// them in hex, they are these bytes in memory).
const SCHED_TRACE: &str = "0102030405060708090a0b0c0d0e0f10";
const SCHED_SPAN: &str = "1112131415161718";

/// `fsync 41`, and the one `pagecache` ends with.
const FSYNCS: f64 = 42.0;

#[test]
fn every_program_on_every_kernel() {
    if !test_support::runnable(
        "every_program_on_every_kernel",
        "qemu, cpio, busybox-static and the Debian mirror",
        missing_tools(),
    ) {
        return;
    }
    let target = Path::new(common::BIN)
        .ancestors()
        .nth(2)
        .unwrap()
        .join("kernel-matrix");
    let kernels = kernels(&target.join("kernels"));
    assert_eq!(kernels.len(), 3, "5.10, 6.1 and 6.12");
    let dir = target.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let cpio = initramfs(&dir, &kernels);

    // Guests in parallel, one vCPU each; a guest that died is booted once more.
    let reports: Vec<(usize, Report)> = std::thread::scope(|s| {
        let handles: Vec<_> = kernels
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let (cpio, dir) = (&cpio, &dir);
                s.spawn(move || {
                    let log = dir.join(format!("{}.log", k.release));
                    let mut report = parse(&boot(k, cpio, &log));
                    if !report.ended {
                        eprintln!(
                            "kernel matrix: the {} guest died; booting it once more",
                            k.release
                        );
                        report = parse(&boot(k, cpio, &log));
                    }
                    (i, report)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = Vec::new();
    for (i, report) in &reports {
        let k = &kernels[*i];
        let log = dir.join(format!("{}.log", k.release));
        if !report.ended {
            failures.push(format!(
                "{}: the guest did not finish (serial log: {})",
                k.release,
                log.display()
            ));
            continue;
        }
        for p in problems(k, report) {
            failures.push(format!("{}: {p}", k.release));
        }
        eprintln!(
            "kernel matrix: {}: {} checks, {} series",
            k.release,
            report.checks.len(),
            report.metrics.len()
        );
    }
    assert!(
        failures.is_empty(),
        "kernel matrix:\n  {}\n(serial logs in {})",
        failures.join("\n  "),
        dir.display()
    );
}
