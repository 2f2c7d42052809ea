//! Features of cloudflare/ebpf_exporter's config format that its example configs use,
//! each shown with an example of ours on the real kernel: metrics without labels, the
//! `post_attach_mark` hook, `cgroup_id_map` (hash and cgrp_storage), `.kconfig`
//! externs, CO-RE reads and `xdp/<ifname>` sections; and programs this kernel cannot
//! run (kprobes, fentry) failing with the reason. Needs root and BPF.

#[macro_use]
mod common;

use common::{compile_example, run_workload, sample, wait_for, Cgroups, Exporter, Pod, TempDir};

/// Held while an exporter starts: each start calls `post_attach_mark`, which the
/// attach-mark test's uprobe counts in every process running the binary.
static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(examples: &[&str], dir: &TempDir) -> Exporter {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    start_unlocked(examples, dir)
}

fn start_unlocked(examples: &[&str], dir: &TempDir) -> Exporter {
    for e in examples {
        compile_example(e, &dir.0);
    }
    launch(examples, dir)
}

/// Starts an exporter on the examples already in `dir`.
fn launch(examples: &[&str], dir: &TempDir) -> Exporter {
    let names = examples.join(",");
    let args = [
        "--config.dir",
        dir.0.to_str().unwrap(),
        "--config.names",
        &names,
        "--config.strict",
    ];
    Exporter::start(&args, &dir.0.join("exporter.log"))
}

/// `--config.check` on `dir` (which calls `post_attach_mark` too).
fn check(dir: &TempDir) -> std::process::Output {
    let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    std::process::Command::new(common::BIN)
        .args(["--config.dir", dir.0.to_str().unwrap(), "--config.check"])
        .output()
        .unwrap()
}

#[test]
fn a_metric_without_labels_counts_the_post_attach_mark_once() {
    privileged!("a_metric_without_labels_counts_the_post_attach_mark_once");
    let dir = TempDir::new("ref-mark");
    // No other exporter of this test binary starts while ours is counted.
    let _alone = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let exporter = start_unlocked(&["attach-mark"], &dir);
    let page = wait_for(
        &exporter,
        "ebpf_exporter_exporter_attach_marks_total",
        "",
        1.0,
    );
    // One series, no labels, and the hook ran exactly once.
    assert!(
        page.contains("\nebpf_exporter_exporter_attach_marks_total 1\n"),
        "{page}"
    );
}

/// Pods (matching the example's regexp) and a plain cgroup, before and after start.
/// With `strip`, the objects lose their DWARF first (`llvm-strip -g`), as distributors
/// ship them.
fn cgroup_id_map(example: &str, metric: &str, strip: bool) {
    let dir = TempDir::new(example);
    let mut cgroups = Cgroups::new(example);
    let early = Pod::new("shop", "idmap-early-5d6c7", "app").cgroup(&mut cgroups);
    let plain = cgroups.create(&["not-a-pod"]);
    let exporter = {
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        compile_example(example, &dir.0);
        if strip {
            strip_debug(&dir.0.join(format!("{example}.bpf.o")));
        }
        launch(&[example], &dir)
    };
    // Created after the exporter filled the map: the cgroup events stream adds it.
    let late = Pod::new("shop", "idmap-late-8e9f0", "app").cgroup(&mut cgroups);
    std::thread::sleep(std::time::Duration::from_millis(300));
    run_workload(Some(&early), &["getppid", "11"]);
    run_workload(Some(&plain), &["getppid", "7"]);
    run_workload(Some(&late), &["getppid", "5"]);
    let series = |cg: &std::path::Path, matched: bool| {
        format!("cgroup=\"{}\",matched=\"{matched}\"", Cgroups::display(cg))
    };
    let page = wait_for(&exporter, metric, &series(&late, true), 5.0);
    for (cg, matched, n) in [
        (&early, true, 11.0),
        (&plain, false, 7.0),
        (&late, true, 5.0),
    ] {
        assert_eq!(
            sample(&page, metric, &series(cg, matched)),
            Some(n),
            "{page}"
        );
        assert_eq!(sample(&page, metric, &series(cg, !matched)), None, "{page}");
    }
}

#[test]
fn cgroup_id_map_of_type_hash_follows_cgroups() {
    privileged!("cgroup_id_map_of_type_hash_follows_cgroups");
    cgroup_id_map(
        "cgroup-id-map",
        "ebpf_exporter_getppid_calls_by_filter_total",
        false,
    );
}

/// The twin of the test above: the same object without its DWARF counts the same.
#[test]
fn a_stripped_object_counts_as_its_unstripped_twin() {
    privileged!("a_stripped_object_counts_as_its_unstripped_twin");
    if !test_support::tool(
        "a_stripped_object_counts_as_its_unstripped_twin",
        "llvm-strip",
    ) {
        return;
    }
    cgroup_id_map(
        "cgroup-id-map",
        "ebpf_exporter_getppid_calls_by_filter_total",
        true,
    );
}

/// `llvm-strip -g`: drops DWARF; BTF, its line info and the symbols stay.
fn strip_debug(object: &std::path::Path) {
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    let before = size(object);
    let status = std::process::Command::new("llvm-strip")
        .arg("-g")
        .arg(object)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(object).unwrap();
    let has = |name: &[u8]| bytes.windows(name.len()).any(|w| w == name);
    assert!(
        !has(b".debug_info") && has(b".BTF.ext"),
        "llvm-strip -g kept DWARF or lost BTF"
    );
    assert!(size(object) < before, "{before} -> {}", size(object));
}

#[test]
fn cgroup_id_map_of_type_cgrp_storage_follows_cgroups() {
    privileged!("cgroup_id_map_of_type_cgrp_storage_follows_cgroups");
    cgroup_id_map(
        "cgroup-id-map-storage",
        "ebpf_exporter_getppid_calls_by_storage_total",
        false,
    );
}

#[test]
fn a_cgroup_id_map_of_the_wrong_shape_is_named() {
    privileged!("a_cgroup_id_map_of_the_wrong_shape_is_named");
    let dir = TempDir::new("ref-idmap-bad");
    compile_example("cgroup-id-map", &dir.0);
    let yaml = dir.0.join("cgroup-id-map.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, text.replace("type: hash", "type: cgrp_storage")).unwrap();
    let out = check(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("cgroup_id_map.name: object cgroup-id-map: map getppid_cgroup_filter: cgroup_id_map of type cgrp_storage: keys are 4 bytes, this map has 8"),
        "{text}"
    );
}

#[test]
fn kconfig_externs_read_the_running_kernels_values() {
    privileged!("kconfig_externs_read_the_running_kernels_values");
    let dir = TempDir::new("ref-kconfig");
    let mut cgroups = Cgroups::new("ref-kconfig");
    let cg = cgroups.create(&["k"]);
    let exporter = start(&["kconfig"], &dir);
    run_workload(Some(&cg), &["getsid", "50"]);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap(), v.next().unwrap());
    let config = std::process::Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r)",
        ])
        .output()
        .unwrap();
    let config = String::from_utf8_lossy(&config.stdout);
    let hz = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .unwrap();
    let cookie = u8::from((major, minor) >= (5, 15));
    let labels = format!("bpf_cookie=\"{cookie}\",bpf_syscall=\"1\",hz=\"{hz}\",major=\"{major}\",minor=\"{minor}\",missing=\"0\",syscall_wrapper=\"1\"");
    let name = "ebpf_exporter_kconfig_calls_total";
    let page = wait_for(&exporter, name, &labels, 50.0);
    assert_eq!(sample(&page, name, &labels), Some(50.0), "{page}");
}

#[test]
fn core_reads_of_task_struct_are_right() {
    privileged!("core_reads_of_task_struct_are_right");
    let dir = TempDir::new("ref-core");
    let mut cgroups = Cgroups::new("ref-core");
    let cg = cgroups.create(&["c"]);
    let exporter = start(&["core-task"], &dir);
    run_workload(Some(&cg), &["getpgid", "433"]);
    let name = "ebpf_exporter_task_tgid_reads_total";
    let right = "method=\"core\",right=\"true\"";
    let page = wait_for(&exporter, name, right, 433.0);
    // Other processes call getpgid too: every read is right, ours among them.
    assert!(sample(&page, name, right).unwrap() >= 433.0, "{page}");
    assert_eq!(
        sample(&page, name, "method=\"core\",right=\"false\""),
        None,
        "{page}"
    );
}

#[test]
fn xdp_sections_name_their_interface() {
    privileged!("xdp_sections_name_their_interface");
    let dir = TempDir::new("ref-xdp");
    let exporter = start(&["xdp-udp"], &dir);
    let port = 30000 + (std::process::id() % 20000);
    run_workload(None, &["udp", &port.to_string(), "17"]);
    let labels = format!("port=\"{port}\"");
    let page = wait_for(
        &exporter,
        "ebpf_exporter_xdp_udp_packets_total",
        &labels,
        17.0,
    );
    assert_eq!(
        sample(&page, "ebpf_exporter_xdp_udp_packets_total", &labels),
        Some(17.0),
        "{page}"
    );
}

#[test]
fn kprobe_and_fentry_programs_say_what_this_kernel_lacks() {
    privileged!("kprobe_and_fentry_programs_say_what_this_kernel_lacks");
    // The kernel matrix runs them where they exist; this kernel has neither.
    if std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        eprintln!("this kernel has kprobes: nothing to show here");
        return;
    }
    let dir = TempDir::new("ref-kprobe");
    for e in ["kprobe-fsync", "fentry-fsync"] {
        compile_example(e, &dir.0);
    }
    let out = check(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAILED  kprobe-fsync (attach, missing_hook)")
            && text.contains("this kernel lacks kprobes (CONFIG_KPROBES)"),
        "{text}"
    );
    assert!(
        text.contains("FAILED  fentry-fsync (load, missing_hook)")
            && text.contains("no BPF trampoline support"),
        "{text}"
    );
}

#[test]
fn a_map_whose_btf_the_kernel_refuses_is_created_without_it() {
    privileged!("a_map_whose_btf_the_kernel_refuses_is_created_without_it");
    // The kernel allows bpf_spin_lock only in (non-per-CPU) hash, array and storage
    // maps: with BTF this per-CPU array is refused; without it, it is just 16 bytes.
    let dir = TempDir::new("ref-map-btf");
    let source = dir.0.join("locked.bpf.c");
    std::fs::write(
        &source,
        r#"#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
struct locked { struct bpf_spin_lock lock; __u64 n; };
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct locked);
} locked_counts SEC(".maps");
SEC("tracepoint/syscalls/sys_enter_getppid")
int count(void *ctx)
{
	__u32 zero = 0;
	struct locked *l = bpf_map_lookup_elem(&locked_counts, &zero);
	if (l)
		l->n++;
	return 0;
}
char LICENSE[] SEC("license") = "GPL";
"#,
    )
    .unwrap();
    test_support::compile_bpf(&source, &dir.0.join("locked.bpf.o"), &[]);
    std::fs::write(dir.0.join("locked.yaml"), "metrics: {}\n").unwrap();
    let out = check(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("ok      locked: 1 program(s) attached"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("map=\"locked_counts\"") && stderr.contains("creating it without BTF"),
        "{stderr}"
    );
}
