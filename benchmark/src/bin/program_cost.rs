//! What each built-in program costs: its BPF run time per event (kernel.bpf_stats_enabled),
//! what it adds to a load that fires its hooks (the load's ns per operation with the
//! exporter running only that program, against the load alone, alternated), and the
//! exporter's CPU meanwhile. Then the default set's cost on a stated busy node.
//!
//! `cargo run --release -p benchmark --bin program_cost [seconds per run]` as root.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use benchmark::pin_to_cpu;

/// A load: runs operations for `secs` on CPU 0, returns how many.
type Load = fn(f64) -> u64;

struct Case {
    program: &'static str,
    load_name: &'static str,
    load: Load,
    /// Operations of this load per second on a busy node (for rare loads: hook runs),
    /// for the default set's total (stated in the output): what one node of a busy
    /// cluster plausibly sees.
    busy_rate: f64,
}

fn until(secs: f64, mut op: impl FnMut()) -> u64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0;
    while Instant::now() < end {
        for _ in 0..16 {
            op();
        }
        n += 16;
    }
    n
}

/// Connect, accept and close both ends, in one thread: on loopback the handshake
/// completes inside connect(), so no scheduling is measured with it.
fn connect_load(secs: f64) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    until(secs, || {
        let client = TcpStream::connect(addr).unwrap();
        drop(listener.accept().unwrap());
        drop(client);
    })
}

fn refused_load(secs: f64) -> u64 {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    until(secs, || assert!(TcpStream::connect(port).is_err()))
}

fn udp_overflow_load(secs: f64) -> u64 {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a valid int.
    unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&one as *const libc::c_int).cast(),
            4,
        )
    };
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    until(secs, || {
        tx.send_to(b"x", to).unwrap();
    })
}

fn fork_exit_load(secs: f64) -> u64 {
    until(secs, || {
        // SAFETY: the child only calls _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    })
}

/// Two threads on CPU 0 pass a byte back and forth: two wakeups and two context
/// switches per round trip.
fn pingpong_load(secs: f64) -> u64 {
    let (mut a_rx, mut b_tx) = std::io::pipe().unwrap();
    let (mut b_rx, mut a_tx) = std::io::pipe().unwrap();
    let echo = std::thread::spawn(move || {
        pin_to_cpu(0);
        let mut byte = [0u8];
        while a_rx.read_exact(&mut byte).is_ok() && byte[0] != 0 {
            a_tx.write_all(&byte).unwrap();
        }
    });
    let mut byte = [1u8];
    let n = until(secs, || {
        b_tx.write_all(&[1]).unwrap();
        b_rx.read_exact(&mut byte).unwrap();
    });
    b_tx.write_all(&[0]).unwrap();
    echo.join().unwrap();
    n
}

fn getpid_load(secs: f64) -> u64 {
    // SAFETY: getpid has no preconditions.
    until(secs, || unsafe {
        libc::syscall(libc::SYS_getpid);
    })
}

fn enoent_load(secs: f64) -> u64 {
    until(secs, || {
        assert!(std::fs::File::open("/nonexistent/kube-ebpf-exporter-bench").is_err());
    })
}

/// 4 KiB O_DIRECT writes over one block of a file on the root disk.
fn direct_write_load(secs: f64) -> u64 {
    use std::os::unix::fs::OpenOptionsExt;
    let path = Path::new("/var/tmp").join(format!("kebpf-bench-{}", std::process::id()));
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: a 4 KiB aligned allocation, freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    let n = until(secs, || {
        // SAFETY: buf holds 4096 bytes.
        assert_eq!(
            unsafe { libc::pwrite(file.as_raw_fd(), buf.cast(), 4096, 0) },
            4096
        );
    });
    unsafe { std::alloc::dealloc(buf, layout) };
    let _ = std::fs::remove_file(path);
    n
}

/// SYNs that vanish in a network namespace of their own (`tests/workload.c`
/// connect-timeout): one retransmit per socket and second. Too rare to slow anything;
/// measured for its cost per event.
fn retransmit_load(_secs: f64) -> u64 {
    let out = Command::new("unshare")
        .args(["-n", "sh", "-ec", "ip link set lo up; ip addr add 10.9.9.1/32 dev lo; ip route add 10.9.9.9/32 dev lo src 10.9.9.1; echo 1 >/proc/sys/net/ipv4/tcp_syn_retries; exec \"$@\"", "netns"])
        .arg(workload())
        .args(["-", "connect-timeout", "10.9.9.9", "80", "64"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// 64 MiB through the page cache of a 16 MiB memory cgroup: it reclaims its own pages.
fn reclaim_load(_secs: f64) -> u64 {
    let file = Path::new("/var/tmp").join(format!("kebpf-bench-reclaim-{}", std::process::id()));
    let cg = test_support::cgroup2_mount().join(format!("kebpf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&cg).unwrap();
    let v1 = test_support::memory_limit(&cg, 16 << 20);
    let mut cmd = Command::new(workload());
    if let Some(v1) = &v1 {
        cmd.env("WORKLOAD_MEMORY_CGROUP", v1);
    }
    let status = cmd
        .arg(&cg)
        .args(["pagecache", file.to_str().unwrap(), "64"])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_file(file);
    for dir in v1.iter().chain([&cg]) {
        let _ = std::fs::remove_dir(dir);
    }
    64
}

fn workload() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::temp_dir().join(format!("kebpf-bench-workload-{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workload.c");
        let ok = Command::new("cc")
            .args(["-O1", "-o"])
            .arg(&bin)
            .arg(src)
            .status()
            .unwrap();
        assert!(ok.success(), "cc tests/workload.c");
        bin
    })
}

const CASES: &[Case] = &[
    Case {
        program: "tcp_connect_latency",
        load_name: "loopback TCP connects",
        load: connect_load,
        busy_rate: 2_000.0,
    },
    Case {
        program: "tcp_resets",
        load_name: "connects to a closed port",
        load: refused_load,
        busy_rate: 200.0,
    },
    Case {
        program: "tcp_retransmits",
        load_name: "unanswered SYNs (64 sockets)",
        load: retransmit_load,
        busy_rate: 200.0,
    },
    Case {
        program: "udp_drops",
        load_name: "UDP sends to a full socket",
        load: udp_overflow_load,
        busy_rate: 100.0,
    },
    Case {
        program: "packet_drops",
        load_name: "UDP sends to a full socket",
        load: udp_overflow_load,
        busy_rate: 1_000.0,
    },
    Case {
        program: "process_lifecycle",
        load_name: "fork + exit",
        load: fork_exit_load,
        busy_rate: 200.0,
    },
    Case {
        program: "oom_kills",
        load_name: "fork + exit",
        load: fork_exit_load,
        busy_rate: 200.0,
    },
    Case {
        program: "direct_reclaim",
        load_name: "64 MiB page cache in 16 MiB",
        load: reclaim_load,
        busy_rate: 10.0,
    },
    Case {
        program: "block_io",
        load_name: "4 KiB O_DIRECT writes",
        load: direct_write_load,
        busy_rate: 5_000.0,
    },
    Case {
        program: "runqueue_latency",
        load_name: "pipe ping-pong on one CPU",
        load: pingpong_load,
        busy_rate: 25_000.0,
    },
    Case {
        program: "syscall_errors",
        load_name: "getpid() (succeeds)",
        load: getpid_load,
        busy_rate: 500_000.0,
    },
    Case {
        program: "syscall_errors",
        load_name: "open() of a missing file",
        load: enoent_load,
        busy_rate: 5_000.0,
    },
];

/// A running exporter with one program, on CPU 1.
struct Exporter {
    child: Child,
    addr: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Exporter {
    fn start(bin: &Path, program: &str) -> Self {
        let addr = format!(
            "127.0.0.1:{}",
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        );
        let child = Command::new("taskset")
            .args(["-c", "1"])
            .arg(bin)
            .args(["--web.listen-address", &addr, "--programs", program])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.get("/healthz").is_none_or(|b| !b.starts_with("ok")) {
            assert!(
                Instant::now() < deadline,
                "exporter with {program} not healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        e
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    }

    /// (BPF run time in ns, runs) summed over the program config's BPF programs.
    fn bpf_stats(&self, program: &str) -> (f64, f64) {
        let page = self.get("/metrics").unwrap();
        let config = format!("config=\"{program}\"");
        let ids: Vec<String> = page
            .lines()
            .filter(|l| l.starts_with("ebpf_exporter_ebpf_program_info{") && l.contains(&config))
            .filter_map(|l| {
                l.split("id=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        let sum = |metric: &str| -> f64 {
            page.lines()
                .filter(|l| l.starts_with(metric))
                .filter(|l| ids.iter().any(|id| l.contains(&format!("id=\"{id}\""))))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        (
            sum("ebpf_exporter_ebpf_program_run_time_seconds{") * 1e9,
            sum("ebpf_exporter_ebpf_program_run_count_total{"),
        )
    }

    /// CPU seconds used so far.
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<f64> = after
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        // utime and stime are fields 14 and 15; `after` starts at field 3.
        (f[11] + f[12]) / 100.0
    }
}

struct Row {
    base_ns: f64,
    with_ns: f64,
    bpf_ns_per_run: f64,
    runs_per_op: f64,
    exporter_cpu: f64,
}

fn measure(bin: &Path, case: &Case, secs: f64, rounds: usize) -> Row {
    let mut base = Vec::new();
    let mut with = Vec::new();
    let (mut bpf_ns, mut runs, mut ops, mut cpu, mut elapsed) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for _ in 0..rounds {
        let t = Instant::now();
        let n = (case.load)(secs);
        base.push(t.elapsed().as_nanos() as f64 / n as f64);
        let exporter = Exporter::start(bin, case.program);
        let (ns0, runs0) = exporter.bpf_stats(case.program);
        let cpu0 = exporter.cpu();
        let t = Instant::now();
        let n = (case.load)(secs);
        let took = t.elapsed();
        with.push(took.as_nanos() as f64 / n as f64);
        let (ns1, runs1) = exporter.bpf_stats(case.program);
        bpf_ns += ns1 - ns0;
        runs += runs1 - runs0;
        ops += n as f64;
        cpu += exporter.cpu() - cpu0;
        elapsed += took.as_secs_f64();
    }
    Row {
        base_ns: benchmark::median(base),
        with_ns: benchmark::median(with),
        bpf_ns_per_run: bpf_ns / runs.max(1.0),
        runs_per_op: runs / ops.max(1.0),
        exporter_cpu: cpu / elapsed,
    }
}

/// Turns kernel.bpf_stats_enabled on for its life (off again after: left on, the
/// exporter exports run-time counters that other tests do not expect).
struct BpfStats;

impl BpfStats {
    fn enable() -> Self {
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .expect("root: kernel.bpf_stats_enabled");
        Self
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

fn default_programs(bin: &Path) -> Vec<String> {
    let out = Command::new(bin).arg("programs").output().unwrap();
    BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("(on by default)"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn main() {
    let secs: f64 = std::env::args().nth(1).map_or(1.5, |s| s.parse().unwrap());
    let bin = std::env::current_exe()
        .unwrap()
        .with_file_name("kube-ebpf-exporter");
    assert!(
        bin.exists(),
        "build the exporter first: cargo build --release"
    );
    pin_to_cpu(0);
    let _stats = BpfStats::enable();
    println!("each load on CPU 0 for {secs} s, alone and with the exporter (on CPU 1) running one program, 3 rounds alternated (median ns/op)");
    println!(
        "{:<20} {:<30} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9}",
        "program", "load", "ns/op", "with", "added", "bpf ns", "runs/op", "exp. CPU"
    );
    let defaults = default_programs(&bin);
    let mut busy_cpu = 0.0;
    let mut busy = Vec::new();
    for case in CASES {
        let rare = matches!(case.program, "tcp_retransmits" | "direct_reclaim");
        let row = measure(&bin, case, secs, if rare { 1 } else { 3 });
        let (base, with, added) = if rare {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.0}", row.base_ns),
                format!("{:.0}", row.with_ns),
                format!("{:.0}", row.with_ns - row.base_ns),
            )
        };
        println!(
            "{:<20} {:<30} {:>9} {:>9} {:>9} {:>9.0} {:>8.2} {:>8.1}%",
            case.program,
            case.load_name,
            base,
            with,
            added,
            row.bpf_ns_per_run,
            row.runs_per_op,
            row.exporter_cpu * 100.0
        );
        // A busy node's cost: its rate times the cost per operation (each program once:
        // the first load listed for it). Per operation, the larger of the BPF time and
        // the time added to the load: hooks cost more than their programs' run time
        // (sys_exit puts every syscall on the tracing slow path), while the added time
        // of slow operations (connects, forks, disk writes) is lost in their noise.
        if !busy.contains(&case.program) {
            busy.push(case.program);
            let per_op = if rare {
                row.bpf_ns_per_run
            } else {
                (row.runs_per_op * row.bpf_ns_per_run).max(row.with_ns - row.base_ns)
            };
            let cpu = case.busy_rate * per_op / 1e9;
            let on = defaults.iter().any(|d| d == case.program);
            if on {
                busy_cpu += cpu;
            }
            let unit = if rare { "hook runs" } else { "ops" };
            println!(
                "    busy node: {:.0} {unit}/s -> {:.3}% of one CPU in the kernel{}",
                case.busy_rate,
                cpu * 100.0,
                if on { " (default set)" } else { "" }
            );
        }
    }
    println!(
        "default set ({}): {:.3}% of one CPU in the kernel on the busy node above",
        defaults.join(", "),
        busy_cpu * 100.0
    );
}
