//! The built-in program library beyond process lifecycle and OOM kills: each program
//! runs a workload of known size in a kubelet-shaped pod cgroup, and its count or sum
//! must be exact where the kernel makes it so. Needs root and BPF.

#[macro_use]
mod common;

use std::process::Command;

use common::{sample, samples, wait_for, workload, Cgroups, Exporter, Pod, TempDir};

/// An exporter running `programs` (by name) that knows `pod`, with the pod's cgroup.
struct Setup {
    pod: Pod,
    exporter: Exporter,
    cg: std::path::PathBuf,
    _cgroups: Cgroups,
    dir: TempDir,
}

fn setup(name: &'static str, pod: &'static str, programs: &str) -> Setup {
    let pod = Pod::new("shop", pod, "app");
    let dir = TempDir::new(name);
    let mut cgroups = Cgroups::new(name);
    let cg = pod.cgroup(&mut cgroups);
    let mut args = pod.logs(&dir.0);
    args.extend(["--programs".to_string(), programs.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    Setup {
        pod,
        exporter,
        cg,
        _cgroups: cgroups,
        dir,
    }
}

/// Runs the workload in `cg` (through `wrapper`, e.g. `unshare -n ...`); its stdout.
fn workload_output(wrapper: &[&str], cg: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(workload());
            c
        }
        None => Command::new(workload()),
    };
    let out = cmd.arg(cg).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "workload {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Samples counted outside any pod, with `extra` (a label that sorts before node_id).
fn unattributed(extra: &str) -> String {
    format!(
        "app_container=\"\",app_namespace=\"\",app_pod=\"\",{extra},node_id=\"{}\"",
        common::node()
    )
}

#[test]
fn refused_connects_count_errors_and_resets_under_their_pod() {
    privileged!("refused_connects_count_errors_and_resets_under_their_pod");
    let s = setup(
        "refused",
        "refused-5d6e7-f8a9b",
        "tcp_connect_latency,tcp_resets",
    );
    // A port nothing listens on: each blocking connect is answered by a reset.
    let port = common::free_port().to_string();
    let mut cmd = Command::new(workload());
    let status = cmd
        .arg(&s.cg)
        .args(["connect", &port, "7"])
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "connects to a closed port must fail"
    );
    // `connect` stops at its first failure: one ECONNREFUSED per run.
    for _ in 1..7 {
        let _ = Command::new(workload())
            .arg(&s.cg)
            .args(["connect", &port, "1"])
            .status();
    }
    let errors = "ebpf_exporter_tcp_connect_errors_total";
    let page = wait_for(
        &s.exporter,
        errors,
        &s.pod.series(&[("errno", "ECONNREFUSED")]),
        7.0,
    );
    assert_eq!(
        sample(&page, errors, &s.pod.series(&[("errno", "ECONNREFUSED")])),
        Some(7.0),
        "{page}"
    );
    let resets = "ebpf_exporter_tcp_resets_total";
    assert_eq!(
        sample(&page, resets, &s.pod.series(&[("direction", "received")])),
        Some(7.0),
        "{page}"
    );
    // The resets answering them had no socket: no pod.
    let sent = sample(&page, resets, &unattributed("direction=\"sent\"")).unwrap_or(0.0);
    assert!(sent >= 7.0, "{page}");
    assert_eq!(
        sample(&page, resets, &s.pod.series(&[("direction", "sent")])),
        None,
        "{page}"
    );
}

#[test]
fn unanswered_connects_retransmit_and_time_out_under_their_pod() {
    privileged!("unanswered_connects_retransmit_and_time_out_under_their_pod");
    let s = setup(
        "unanswered",
        "unanswered-0a1b2-c3d4e",
        "tcp_connect_latency,tcp_retransmits",
    );
    // A network namespace of the test's own where 10.9.9.9 swallows every packet: it
    // is routed out of lo, comes back in, and is dropped (not local, no forwarding).
    // Few SYN retries: each connect retransmits from the timer, then times out; the
    // kernel's own count (TCP_INFO) is what the program must see.
    let netns = [
        "unshare",
        "-n",
        "sh",
        "-ec",
        "ip link set lo up; ip addr add 10.9.9.1/32 dev lo; ip route add 10.9.9.9/32 dev lo src 10.9.9.1; echo 1 >/proc/sys/net/ipv4/tcp_syn_retries; exec \"$@\"",
        "netns",
    ];
    let sent: f64 = workload_output(&netns, &s.cg, &["connect-timeout", "10.9.9.9", "80", "5"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        sent >= 5.0,
        "each connect retransmits its SYN at least once: {sent}"
    );
    let retransmits = "ebpf_exporter_tcp_retransmits_total";
    let page = wait_for(
        &s.exporter,
        retransmits,
        &s.pod.series(&[("state", "SYN_SENT")]),
        sent,
    );
    assert_eq!(
        sample(&page, retransmits, &s.pod.series(&[("state", "SYN_SENT")])),
        Some(sent),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "ebpf_exporter_tcp_connect_errors_total",
            &s.pod.series(&[("errno", "ETIMEDOUT")])
        ),
        Some(5.0),
        "{page}"
    );
}

#[test]
fn udp_receive_queue_overflow_counts_under_the_receivers_pod() {
    privileged!("udp_receive_queue_overflow_counts_under_the_receivers_pod");
    let s = setup(
        "udp-overflow",
        "udp-overflow-7c8d9-e0f1a",
        "udp_drops,packet_drops",
    );
    let dropped: f64 = workload_output(&[], &s.cg, &["udp-overflow", "200"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        dropped > 100.0,
        "the tiny queue should drop most of 200: {dropped}"
    );
    let drops = "ebpf_exporter_udp_receive_drops_total";
    let page = wait_for(&s.exporter, drops, &s.pod.series(&[]), dropped);
    assert_eq!(
        sample(&page, drops, &s.pod.series(&[])),
        Some(dropped),
        "{page}"
    );
    // The same drops by reason; the receiving socket names the pod from 6.11 (rx_sk).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    if (v.next().unwrap(), v.next().unwrap()) >= (6, 11) {
        assert_eq!(
            sample(
                &page,
                "ebpf_exporter_packet_drops_total",
                &s.pod.series(&[("reason", "SOCKET_RCVBUFF")])
            ),
            Some(dropped),
            "{page}"
        );
    }
}

#[test]
fn failed_syscalls_count_by_syscall_and_errno_under_their_pod() {
    privileged!("failed_syscalls_count_by_syscall_and_errno_under_their_pod");
    let s = setup(
        "syscall-errors",
        "syscall-errors-2b3c4-d5e6f",
        "syscall_errors",
    );
    workload_output(&[], &s.cg, &["open-missing", "321"]);
    let name = "ebpf_exporter_syscall_errors_total";
    let enoent = s.pod.series(&[("errno", "ENOENT"), ("syscall", "openat")]);
    let page = wait_for(&s.exporter, name, &enoent, 321.0);
    assert_eq!(sample(&page, name, &enoent), Some(321.0), "{page}");
}

#[test]
fn busy_loops_sharing_a_cpu_wait_in_the_run_queue_under_their_pod() {
    privileged!("busy_loops_sharing_a_cpu_wait_in_the_run_queue_under_their_pod");
    let s = setup("runqueue", "runqueue-4e5f6-a7b8c", "runqueue_latency");
    // Two loops pinned to one CPU for 2 s: each waits while the other runs. The
    // kernel's own accounting (sched_info, /proc/<pid>/schedstat) of the same waits is
    // what the histogram must show, within clock differences.
    let out = workload_output(&[], &s.cg, &["spin", "2000", "2"]);
    let (delay, runs) = kernel_run_queue(&out);
    assert!(
        delay > 1.0,
        "two loops on one CPU for 2 s wait about 2 s: {out}"
    );
    let name = "ebpf_exporter_runqueue_latency_seconds";
    std::thread::sleep(std::time::Duration::from_millis(500));
    let page = s.exporter.metrics();
    let count = sample(&page, &format!("{name}_count"), &s.pod.series(&[])).unwrap_or(0.0);
    let sum = sample(&page, &format!("{name}_sum"), &s.pod.series(&[])).unwrap_or(0.0);
    assert!(common::run_queue_agrees(count, sum, delay, runs, 0.05), "{count} waits of {sum} s; the kernel accounted {runs} runs after {delay} s waiting: {page}");
    // Cumulative buckets end at the count.
    let buckets = samples(&page, &format!("{name}_bucket"));
    let pod = s.pod.series(&[]);
    let mine: Vec<f64> = buckets
        .iter()
        .filter(|(l, _)| l.contains(&pod))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(mine.last(), Some(&count), "{page}");
}

/// `spin`'s report: the kernel's run-queue wait (s) and runs of the workload.
fn kernel_run_queue(out: &str) -> (f64, f64) {
    let mut f = out.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    (f.next().unwrap() / 1e9, f.next().unwrap())
}

/// The whole disk holding `path`, as /proc/partitions names it.
fn disk_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let (major, minor) = (libc_major(dev), libc_minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).unwrap();
    let disk = if sys.join("partition").exists() {
        sys.parent().unwrap().to_path_buf()
    } else {
        sys
    };
    disk.file_name().unwrap().to_string_lossy().into_owned()
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

#[test]
fn direct_io_writes_count_exactly_under_their_pod_and_disk() {
    privileged!("direct_io_writes_count_exactly_under_their_pod_and_disk");
    let s = setup("block-io", "block-io-6a7b8-c9d0e", "block_io");
    // On a disk-backed filesystem (not tmpfs), written and synced by the test itself
    // (outside the pod), so the pod's direct writes overwrite allocated blocks: one
    // request each, no metadata I/O of its own.
    let file =
        std::path::Path::new("/var/tmp").join(format!("kebpf-block-io-{}", std::process::id()));
    std::fs::write(&file, vec![0u8; 16 * 65536]).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();
    let disk = disk_of(&file);
    workload_output(
        &[],
        &s.cg,
        &["direct-write", file.to_str().unwrap(), "16", "65536"],
    );
    let labels = s.pod.series(&[("device", &disk), ("op", "write")]);
    let count = "ebpf_exporter_block_io_size_bytes_count";
    let page = wait_for(&s.exporter, count, &labels, 16.0);
    let _ = std::fs::remove_file(&file);
    assert_eq!(sample(&page, count, &labels), Some(16.0), "{page}");
    assert_eq!(
        sample(&page, "ebpf_exporter_block_io_size_bytes_sum", &labels),
        Some(16.0 * 65536.0),
        "{page}"
    );
    let latency = "ebpf_exporter_block_io_latency_seconds";
    assert_eq!(
        sample(&page, &format!("{latency}_count"), &labels),
        Some(16.0),
        "{page}"
    );
    assert!(
        sample(&page, &format!("{latency}_sum"), &labels).unwrap() > 0.0,
        "{page}"
    );
    // 64 KiB lands in the (32 KiB, 64 KiB] bucket.
    assert_eq!(
        sample(
            &page,
            "ebpf_exporter_block_io_size_bytes_bucket",
            &format!("{labels},le=\"32768\"")
        ),
        Some(0.0),
        "{page}"
    );
    assert_eq!(
        sample(
            &page,
            "ebpf_exporter_block_io_size_bytes_bucket",
            &format!("{labels},le=\"65536\"")
        ),
        Some(16.0),
        "{page}"
    );
    let _ = &s.dir;
}

#[test]
fn page_cache_over_the_memory_limit_stalls_in_reclaim_under_its_pod() {
    privileged!("page_cache_over_the_memory_limit_stalls_in_reclaim_under_its_pod");
    let s = setup("reclaim", "reclaim-8c9d0-e1f2a", "direct_reclaim");
    let v1 = common::memory_limit(&s.cg, 16 << 20);
    // 64 MiB through the page cache of a 16 MiB cgroup: it reclaims its own pages.
    let file =
        std::path::Path::new("/var/tmp").join(format!("kebpf-reclaim-{}", std::process::id()));
    let mut cmd = Command::new(workload());
    cmd.arg(&s.cg)
        .args(["pagecache", file.to_str().unwrap(), "64"]);
    if let Some(v1) = &v1 {
        cmd.env("WORKLOAD_MEMORY_CGROUP", v1);
    }
    let status = cmd.status().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(status.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let page = s.exporter.metrics();
    let name = "ebpf_exporter_direct_reclaim_latency_seconds";
    let count = sample(&page, &format!("{name}_count"), &s.pod.series(&[])).unwrap_or(0.0);
    let sum = sample(&page, &format!("{name}_sum"), &s.pod.series(&[])).unwrap_or(0.0);
    assert!(
        count >= 1.0 && sum > 0.0,
        "count {count}, sum {sum}: {page}"
    );
    if let Some(v1) = v1 {
        let _ = std::fs::remove_dir(v1);
    }
}
