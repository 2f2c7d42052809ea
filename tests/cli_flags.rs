//! Flags that change where things come from: --btf.path, --node-id / NODE_ID,
//! --web.telemetry-path.

mod common;

use std::process::Command;

use common::{compile_example, get, Exporter, TempDir};

#[test]
fn btf_path_is_used_and_a_bad_one_is_named() {
    if !test_support::privileged("btf_path_is_used_and_a_bad_one_is_named") {
        return;
    }
    let dir = TempDir::new("btf");
    compile_example("process-forks", &dir.0);
    let run = |btf: &str| {
        Command::new(common::BIN)
            .args([
                "--config.dir",
                dir.0.to_str().unwrap(),
                "--config.check",
                "--btf.path",
                btf,
            ])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let ok = run("/sys/kernel/btf/vmlinux");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let bad = run("/nonexistent/vmlinux");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--btf.path /nonexistent/vmlinux"));
}

#[test]
fn node_id_and_telemetry_path() {
    if !test_support::privileged("node_id_and_telemetry_path") {
        return;
    }
    let dir = TempDir::new("flags");
    let exporter = Exporter::start(
        &[
            "--node-id",
            "node-from-flag",
            "--web.telemetry-path",
            "/custom",
        ],
        &dir.0.join("log"),
    );
    let page = || get(&exporter.addr, "/custom").unwrap();
    // Our own scrapes are TCP connects the default program sees.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !page().contains("node_id=\"node-from-flag\"") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(page().contains("node_id=\"node-from-flag\""), "{}", page());
    assert!(
        !get(&exporter.addr, "/metrics")
            .unwrap()
            .contains("ebpf_exporter_"),
        "only /custom serves metrics"
    );
    drop(exporter);

    let out = Command::new(common::BIN).args(["--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[env: NODE_ID=]"));
}

/// Effective capabilities of every thread of `pid`.
fn thread_capabilities(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let mask = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:\t"))
                .unwrap();
            u64::from_str_radix(mask, 16).unwrap()
        })
        .collect()
}

#[test]
fn capabilities_keep_and_keep_all() {
    if !test_support::privileged("capabilities_keep_and_keep_all") {
        return;
    }
    let dir = TempDir::new("caps");
    const DAC_READ_SEARCH: u64 = 1 << 2;
    const PERFMON: u64 = 1 << 38;
    let e = Exporter::start(&["--capabilities.keep", "perfmon"], &dir.0.join("keep.log"));
    let caps = thread_capabilities(e.child.id());
    assert!(caps.len() > 1);
    assert!(
        caps.iter().all(|&c| c == DAC_READ_SEARCH | PERFMON),
        "{caps:x?}"
    );
    drop(e);
    let e = Exporter::start(&["--capabilities.keep-all"], &dir.0.join("all.log"));
    assert!(thread_capabilities(e.child.id())
        .iter()
        .all(|&c| c & PERFMON != 0));
    drop(e);
    let bad = Command::new(common::BIN)
        .args(["--capabilities.keep", "superpowers"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("--capabilities.keep") && err.contains("not a capability"),
        "{err}"
    );
}

#[test]
fn programs_lists_the_built_ins() {
    let out = std::process::Command::new(common::BIN)
        .arg("programs")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "tcp_connect_latency (on by default): How long TCP connects take",
        "  hooks: raw_tp/inet_sock_set_state",
        "  needs: raw tracepoints (4.17), ring buffers (5.8; perf buffers before)",
        "process_lifecycle (on by default):",
        "runqueue_latency (off by default): How long runnable tasks waited for a CPU, by pod",
        "  hooks: tp_btf/sched_switch, tp_btf/sched_wakeup, tp_btf/sched_wakeup_new",
        "  needs: BTF tracepoints (5.5, BTF)",
        "  cost: 480 ns per wakeup or context switch",
    ] {
        assert!(text.contains(line), "{text}");
    }
}

#[test]
fn programs_flag_chooses_which_run() {
    if !test_support::privileged("programs_flag_chooses_which_run") {
        return;
    }
    let check = |programs: Option<&str>, config: Option<&str>| {
        let dir = common::TempDir::new("programs-flag");
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.arg("--config.check").env("RUST_BACKTRACE", "0");
        if let Some(p) = programs {
            cmd.env("KUBE_EBPF_EXPORTER_PROGRAMS", p);
        }
        if let Some(c) = config {
            let file = dir.0.join("config.yaml");
            std::fs::write(&file, c).unwrap();
            cmd.arg("--config.file").arg(&file);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, _) = check(Some("process_lifecycle"), None);
    assert!(
        ok && out.contains("ok      process_lifecycle") && !out.contains("tcp_connect_latency"),
        "{out}"
    );
    let (ok, _, err) = check(Some("nope"), None);
    assert!(!ok && err.contains("no program \"nope\"; the config has: block_io, direct_reclaim, oom_kills, packet_drops, process_lifecycle, runqueue_latency, syscall_errors, tcp_connect_latency, tcp_resets, tcp_retransmits, udp_drops (or `all`)"), "{err}");
    // The default set leaves the hot hooks off; `all` attaches every built-in here.
    let (ok, out, _) = check(None, None);
    assert!(
        ok && !out.contains("runqueue_latency") && !out.contains("syscall_errors"),
        "{out}"
    );
    let (ok, out, _) = check(Some("all"), None);
    assert!(ok && out.lines().count() == 11, "{out}");
    for line in out.lines() {
        assert!(
            line.starts_with("ok") && line.contains(" program(s) attached"),
            "{out}"
        );
    }
    // tcp_resets' kprobe variants are optional: without kprobes the rest still runs.
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists();
    assert_eq!(
        out.contains("ok      tcp_resets: 2 program(s) attached (optional, not attached: tcp_v4_send_reset_fentry, tcp_v6_send_reset_fentry)"),
        !kprobes,
        "{out}"
    );
    // `enabled: false` keeps a program off unless --programs names it (or all).
    let default = include_str!("../src/default.yaml").replace(
        "  process_lifecycle:\n",
        "  process_lifecycle:\n    enabled: false\n",
    );
    let (ok, out, _) = check(None, Some(&default));
    assert!(
        ok && !out.contains("process_lifecycle") && out.contains("ok      tcp_connect_latency"),
        "{out}"
    );
    let (ok, out, _) = check(Some("all"), Some(&default));
    assert!(
        ok && out.contains("ok      process_lifecycle")
            && out.contains("ok      tcp_connect_latency"),
        "{out}"
    );
}
