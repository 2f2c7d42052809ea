//! End to end: a `getpid()` load on CPU 0, each call one ring record; the consumer on
//! CPU 1. Runs, side by side: no probe; the exporter (events aggregated into a
//! histogram with pod labels); the floor (a minimal libbpf consumer that only counts
//! records, benchmark/floor/floor.c, same object); the floor again with the program
//! staging records per CPU and writing 32 to a ring sample; the exporter on the product's
//! batched ring (`OUTPUT_RINGBUF_BATCHED`); bpftrace aggregating the same probe
//! in the kernel with hist(); the exporter again with perf event arrays (the fallback
//! for kernels without ring buffers); the exporter reading an in-kernel histogram the
//! same hook fills (cloudflare/ebpf_exporter's way: a hash map per cgroup and bucket,
//! read at scrape). Prints events/s, consumer CPU, drops, ns per event, the exporter's
//! ratios to the floor, and streaming's whole cost per event (kernel and user space)
//! against the in-kernel histogram's.
//!
//! `sudo cargo run --release -p benchmark --bin end_to_end [seconds] [rounds]` (needs
//! libbpf-dev; bpftrace optional): with rounds, every consumer runs once a round and the
//! ratios are taken within each round, then their medians printed. Build the exporter
//! first: `cargo build --release`.
//! `... --bin end_to_end soak <seconds>`: the exporter under full load for that long,
//! printing its RSS every 30 s (it should stay flat).
//! `... --bin end_to_end contention [seconds] [rounds]`: every consumer with one
//! producing CPU, then two at once; what a call adds in each, and their ratio.
//! A call's cost is the CPU time the loading threads got, over their calls.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use benchmark::{compile_bpf, pin_to_cpu};

const CONFIG: &str = r#"
rings:
  - name: events
    cgroup_field: cgroup_id
    fields: [{ name: cgroup_id, size: 8 }, { name: value, size: 8 }]
metrics:
  histograms:
    - name: e2e_values
      help: Values from getpid probes
      ring: events
      value: { field: value }
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 20
"#;

/// The same hook's values counted in the kernel (`-DIN_KERNEL_HISTOGRAM`), by pod.
const HIST_CONFIG: &str = r#"
metrics:
  histograms:
    - name: getpid_values
      help: Values from getpid probes, counted in the kernel
      bucket_type: exp2
      bucket_min: 0
      bucket_max: 20
      labels:
        - { name: app_namespace, size: 8, decoders: [{ name: kube_namespace }] }
        - { name: app_pod, size: 8, reuse: true, decoders: [{ name: kube_pod }] }
        - { name: app_container, size: 8, reuse: true, decoders: [{ name: kube_container }] }
        - { name: bucket, size: 8, decoders: [{ name: uint }] }
"#;

/// What a load did: `getpid()` calls, wall seconds, and the CPU seconds its threads got
/// (what a call costs is taken from these, so time the load was not running is left out).
#[derive(Clone, Copy)]
struct Load {
    calls: u64,
    secs: f64,
    busy: f64,
}

impl Load {
    /// CPU ns per call.
    fn ns(self) -> f64 {
        self.busy * 1e9 / self.calls as f64
    }
}

/// CPU seconds the calling thread has used.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the calling thread's CPU clock into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// getpid() calls on this thread for `secs`.
fn load(secs: f64) -> Load {
    let t = Instant::now();
    let c = thread_cpu();
    let mut calls = 0u64;
    loop {
        for _ in 0..4096 {
            // SAFETY: getpid has no preconditions.
            unsafe { libc::syscall(libc::SYS_getpid) };
        }
        calls += 4096;
        let e = t.elapsed().as_secs_f64();
        if e >= secs {
            return Load {
                calls,
                secs: e,
                busy: thread_cpu() - c,
            };
        }
    }
}

/// Where the load runs: this thread alone (on CPU 0), or also a thread on CPU 1, both
/// producing into the same ring (or map) at once.
#[derive(Clone, Copy, PartialEq)]
enum Producers {
    One,
    Both,
}

impl Producers {
    fn load(self, secs: f64) -> Load {
        if self == Producers::One {
            return load(secs);
        }
        let other = std::thread::spawn(move || {
            pin_to_cpu(1);
            load(secs)
        });
        let a = load(secs);
        let b = other.join().unwrap();
        Load {
            calls: a.calls + b.calls,
            secs: a.secs.max(b.secs),
            busy: a.busy + b.busy,
        }
    }
}

/// CPU seconds used so far by process `pid` (all threads).
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) as f64 / hz)
}

fn on_cpu1(program: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "1"]).arg(program).args(args);
    c
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn metric(page: &str, prefix: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One measured run: events delivered, consumer CPU s, drops, and the load.
struct Run {
    delivered: f64,
    cpu: f64,
    drops: f64,
    load: Load,
}

impl Run {
    /// The consumer's CPU ns per delivered event.
    fn user_ns(&self) -> f64 {
        self.cpu * 1e9 / self.delivered.max(1.0)
    }
}

fn wait_line(child: &mut Child, want: &str) {
    let out = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        if line.contains(want) {
            return;
        }
        line.clear();
    }
    panic!("consumer exited before {want:?}");
}

/// Starts the exporter on CPU 1 with config `config` and waits until it serves.
fn start_exporter(exporter: &Path, dir: &Path, config: &str, addr: &str, output: &str) -> Child {
    let args = [
        "--config.dir",
        dir.to_str().unwrap(),
        "--config.names",
        config,
        "--web.listen-address",
        addr,
    ];
    let child = on_cpu1(exporter, &args)
        .env("KUBE_EBPF_EXPORTER__PIPELINE__OUTPUT", output)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "exporter did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The exporter on config `config`: `e2e` streams records (`e2eb` through a batched
/// ring), `e2ehist` reads the histogram the kernel counts (delivered: its count).
fn exporter_run(
    exporter: &Path,
    dir: &Path,
    config: &str,
    output: &str,
    p: Producers,
    secs: f64,
) -> Run {
    let addr = "127.0.0.1:19599";
    let mut child = start_exporter(exporter, dir, config, addr, output);
    let before = scrape(addr);
    let c0 = cpu(child.id());
    let load = p.load(secs);
    std::thread::sleep(Duration::from_millis(200));
    let c1 = cpu(child.id());
    let after = scrape(addr);
    let _ = child.kill();
    let _ = child.wait();
    let delta = |p: &str| metric(&after, p) - metric(&before, p);
    let counted = if config == "e2ehist" {
        "ebpf_exporter_getpid_values_count"
    } else {
        "ebpf_exporter_aggregate_records_total"
    };
    Run {
        delivered: delta(counted),
        cpu: c1 - c0,
        drops: delta("ebpf_exporter_ring_reserve_failures_total")
            + delta("ebpf_exporter_ingest_queue_dropped_records_total"),
        load,
    }
}

/// The floor consuming `object`'s rings (named with commas), whose samples hold
/// `records` 16-byte records.
fn floor_run(
    floor: &Path,
    object: &Path,
    rings: &str,
    records: usize,
    p: Producers,
    secs: f64,
) -> Run {
    let size = if records > 1 { "16" } else { "0" };
    let mut child = on_cpu1(floor, &[object.to_str().unwrap(), rings, size])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_line(&mut child, "ready");
    let c0 = cpu(child.id());
    let load = p.load(secs);
    std::thread::sleep(Duration::from_millis(200));
    let c1 = cpu(child.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let count: f64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0.0);
    Run {
        delivered: count,
        cpu: c1 - c0,
        drops: load.calls as f64 - count,
        load,
    }
}

fn bpftrace_run(p: Producers, secs: f64) -> Option<Run> {
    // It runs under taskset, which starts whether bpftrace is there or not.
    Command::new("bpftrace").arg("--version").output().ok()?;
    let script = "tracepoint:syscalls:sys_enter_getpid { @h = hist(nsecs & 0xfffff); }";
    let mut child = on_cpu1(Path::new("bpftrace"), &["-e", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_line(&mut child, "Attaching");
    std::thread::sleep(Duration::from_millis(500));
    let c0 = cpu(child.id());
    let load = p.load(secs);
    let c1 = cpu(child.id());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    Some(Run {
        delivered: load.calls as f64,
        cpu: c1 - c0,
        drops: 0.0,
        load,
    })
}

/// Resident memory of process `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The exporter under load for `secs`, its RSS sampled every 30 s.
fn soak(exporter: &Path, dir: &Path, secs: f64) {
    let addr = "127.0.0.1:19598";
    let mut child = start_exporter(exporter, dir, "e2e", addr, "ringbuf");
    println!("soak: exporter RSS under a full getpid() load, every 30 s for {secs} s");
    let t = Instant::now();
    let mut events = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        let l = load(30.0_f64.min(secs - t.elapsed().as_secs_f64()).max(0.1));
        events += l.calls;
        let page = scrape(addr);
        println!(
            "{:>6.0} s  RSS {:>6.1} MiB  events {:>12}  aggregated {:>12.0}  drops {:>6.0}",
            t.elapsed().as_secs_f64(),
            rss_mib(child.id()),
            events,
            metric(&page, "ebpf_exporter_aggregate_records_total"),
            metric(&page, "ebpf_exporter_ring_reserve_failures_total")
                + metric(&page, "ebpf_exporter_ingest_queue_dropped_records_total")
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What every round runs: the exporter binary, the config dir, the floor and its object.
struct Setup {
    exporter: PathBuf,
    dir: PathBuf,
    object: PathBuf,
    /// The same program staging records per CPU, [`BATCH`] to a ring sample.
    batched: PathBuf,
    /// The same program writing to a ring per CPU.
    sharded: PathBuf,
    floor: PathBuf,
}

/// Records to a ring sample in the batching program.
const BATCH: usize = 32;

/// One consumer in one round: (name, kernel-side added ns per call, user ns per event).
type Row = (&'static str, f64, f64);

/// One round: the load alone, then under each consumer in turn; prints its table.
fn round(s: &Setup, p: Producers, secs: f64) -> Vec<Row> {
    let base = p.load(secs);
    println!(
        "no probe: {:.2} M calls/s, {:.1} ns/call",
        base.calls as f64 / base.secs / 1e6,
        base.ns()
    );
    println!(
        "{:<11} {:>10} {:>11} {:>11} {:>10} {:>13} {:>14}",
        "consumer", "M calls/s", "added ns", "M events/s", "drops", "consumer CPU", "user ns/event"
    );
    let (exporter, dir) = (&s.exporter, &s.dir);
    let runs = [
        (
            "exporter",
            Some(exporter_run(exporter, dir, "e2e", "ringbuf", p, secs)),
        ),
        (
            "floor",
            Some(floor_run(&s.floor, &s.object, "events", 1, p, secs)),
        ),
        (
            "floor x32",
            Some(floor_run(&s.floor, &s.batched, "events", BATCH, p, secs)),
        ),
        (
            "floor shard",
            Some(floor_run(
                &s.floor,
                &s.sharded,
                "events0,events1",
                1,
                p,
                secs,
            )),
        ),
        ("bpftrace", bpftrace_run(p, secs)),
        (
            "exp. batched",
            Some(exporter_run(exporter, dir, "e2eb", "ringbuf", p, secs)),
        ),
        (
            "exp. perf",
            Some(exporter_run(exporter, dir, "e2e", "perf", p, secs)),
        ),
        (
            "kernel hist",
            Some(exporter_run(exporter, dir, "e2ehist", "ringbuf", p, secs)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, run) in runs {
        let Some(r) = run else {
            println!("{name:<11} (not installed)");
            continue;
        };
        let added = r.load.ns() - base.ns();
        let user_ns = r.user_ns();
        println!(
            "{name:<11} {:>10.2} {added:>11.1} {:>11.2} {:>10.0} {:>12.1}% {user_ns:>14.1}",
            r.load.calls as f64 / r.load.secs / 1e6,
            r.delivered / r.load.secs / 1e6,
            r.drops.max(0.0),
            r.cpu / r.load.secs * 100.0
        );
        rows.push((name, added, user_ns));
    }
    rows
}

/// One round's ratios, side by side: the exporter's kernel-side added ns and user ns per
/// event against the floor's; its kernel-side added ns and whole cost per event (kernel
/// plus user space) against the in-kernel histogram's, whose user-space cost is a
/// scrape's, not an event's; batched records' kernel-side added ns against one record
/// a sample's and against the in-kernel histogram's; the exporter on a batched ring:
/// kernel side and whole cost against the in-kernel histogram's, user space against
/// the batched floor's.
fn ratios(rows: &[Row]) -> [f64; 9] {
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .map_or((f64::NAN, f64::NAN), |r| (r.1, r.2))
    };
    let (e, f, h, b, eb) = (
        row("exporter"),
        row("floor"),
        row("kernel hist"),
        row("floor x32"),
        row("exp. batched"),
    );
    [
        e.0 / f.0,
        e.1 / f.1,
        e.0 / h.0,
        (e.0 + e.1) / h.0,
        b.0 / f.0,
        b.0 / h.0,
        eb.0 / h.0,
        (eb.0 + eb.1) / h.0,
        eb.1 / b.1,
    ]
}

fn print_ratios(r: [f64; 9], what: &str) {
    println!(
        "{what}: exporter / floor: kernel-side added ns {:.2}x, user-space ns per event {:.2}x",
        r[0], r[1]
    );
    println!(
        "{what}: streamed / in-kernel histogram: kernel-side added ns {:.2}x, kernel plus user space per event {:.2}x",
        r[2], r[3]
    );
    println!(
        "{what}: {BATCH} records a sample, kernel-side added ns: {:.2}x one a sample, {:.2}x the in-kernel histogram",
        r[4], r[5]
    );
    println!(
        "{what}: exporter on a batched ring / in-kernel histogram: kernel-side added ns {:.2}x, kernel plus user space per event {:.2}x; user-space ns per event {:.2}x the batched floor's",
        r[6], r[7], r[8]
    );
}

/// Each round runs every consumer with the load on CPU 0 alone, then on both CPUs at
/// once (one ring or map, two producers); prints, per consumer, the median kernel-side
/// added ns per call of each and their ratio: what contention costs.
fn contend(s: &Setup, secs: f64, rounds: usize) {
    println!("getpid() load for {secs} s on CPU 0, then on CPUs 0 and 1 at once; consumers on CPU 1; {rounds} round(s)");
    let mut added: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
    for k in 1..=rounds {
        for (p, what) in [
            (Producers::One, "one producer"),
            (Producers::Both, "two producers"),
        ] {
            println!("round {k}, {what}");
            for (name, ns, _) in round(s, p, secs) {
                let i = added.iter().position(|a| a.0 == name).unwrap_or_else(|| {
                    added.push((name, Vec::new(), Vec::new()));
                    added.len() - 1
                });
                let a = &mut added[i];
                if p == Producers::One {
                    a.1.push(ns)
                } else {
                    a.2.push(ns)
                }
            }
        }
    }
    println!(
        "{:<11} {:>15} {:>15} {:>8}",
        "consumer", "one: added ns", "two: added ns", "two/one"
    );
    for (name, one, two) in added {
        let (one, two) = (benchmark::median(one), benchmark::median(two));
        println!("{name:<11} {one:>15.1} {two:>15.1} {:>7.2}x", two / one);
    }
}

/// A change's before and after, side by side: exporter builds `builds` (the first is
/// the baseline) on the plain ring, taken in turn each round, with the floor beside
/// them; prints per round each build's kernel-side added ns and user-space ns per event,
/// then the medians of each build's user-space ns against the baseline's.
fn compare(s: &Setup, builds: &[PathBuf], secs: f64, rounds: usize) {
    println!("getpid() load on CPU 0 for {secs} s; consumers on CPU 1; {rounds} round(s)");
    let mut user: Vec<Vec<f64>> = vec![Vec::new(); builds.len()];
    for k in 1..=rounds {
        let base = load(secs).ns();
        let floor = floor_run(&s.floor, &s.object, "events", 1, Producers::One, secs);
        let floor_user = floor.user_ns();
        println!(
            "round {k}: floor: added {:.1} ns, user {floor_user:.1} ns/event",
            floor.load.ns() - base
        );
        for (i, build) in builds.iter().enumerate() {
            let r = exporter_run(build, &s.dir, "e2e", "ringbuf", Producers::One, secs);
            let ns = r.user_ns();
            println!(
                "round {k}: {}: added {:.1} ns, user {ns:.1} ns/event ({:.2}x the floor)",
                build.display(),
                r.load.ns() - base,
                ns / floor_user
            );
            user[i].push(ns);
        }
    }
    let baseline = benchmark::median(user[0].clone());
    for (build, ns) in builds.iter().zip(user) {
        let ns = benchmark::median(ns);
        println!(
            "median user ns/event {ns:.1}: {:.2}x the baseline  {}",
            ns / baseline,
            build.display()
        );
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    // `compare` takes the exporter builds first (comma-separated).
    let builds: Vec<PathBuf> = if args.get(1).is_some_and(|a| a == "compare") {
        args.remove(2).split(',').map(PathBuf::from).collect()
    } else {
        Vec::new()
    };
    // An optional mode, then seconds and rounds.
    let mode = args
        .get(1)
        .filter(|a| ["soak", "contention", "compare"].contains(&a.as_str()));
    let at = |i: usize| args.get(i + usize::from(mode.is_some()));
    let secs: f64 = at(1).map_or(5.0, |s| s.parse().unwrap());
    let rounds: usize = at(2).map_or(1, |s| s.parse().unwrap());
    let exporter = std::env::current_exe()
        .unwrap()
        .with_file_name("kube-ebpf-exporter");
    assert!(
        exporter.exists(),
        "build the exporter first: cargo build --release"
    );
    let dir = std::env::temp_dir().join(format!("end-to-end-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let object = compile_bpf(&dir, "e2e", test_support::GETPID_RING);
    benchmark::compile_bpf_with(
        &dir,
        "e2e",
        test_support::GETPID_RING,
        &["-DOUTPUT_PERF"],
        "perf.bpf.o",
    );
    std::fs::write(dir.join("e2e.yaml"), CONFIG).unwrap();
    benchmark::compile_bpf_with(
        &dir,
        "e2eb",
        test_support::GETPID_RING,
        &["-DBATCHED_OUTPUT"],
        "bpf.o",
    );
    std::fs::write(dir.join("e2eb.yaml"), CONFIG).unwrap();
    benchmark::compile_bpf_with(
        &dir,
        "e2ehist",
        test_support::GETPID_RING,
        &["-DIN_KERNEL_HISTOGRAM"],
        "bpf.o",
    );
    std::fs::write(dir.join("e2ehist.yaml"), HIST_CONFIG).unwrap();
    let batched = benchmark::compile_bpf_with(
        &dir,
        "batched",
        test_support::GETPID_RING,
        &[&format!("-DBATCH={BATCH}")],
        "bpf.o",
    );
    let sharded = benchmark::compile_bpf_with(
        &dir,
        "sharded",
        test_support::GETPID_RING,
        &["-DSHARDS=2"],
        "bpf.o",
    );
    let floor: PathBuf = dir.join("floor");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&floor)
        .arg(root.join("floor/floor.c"))
        .arg("-lbpf")
        .status()
        .unwrap();
    assert!(built.success(), "building the floor needs libbpf-dev");
    pin_to_cpu(0);
    if mode.is_some_and(|m| m == "soak") {
        soak(&exporter, &dir, at(1).map_or(600.0, |_| secs));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let setup = Setup {
        exporter,
        dir,
        object,
        batched,
        sharded,
        floor,
    };
    load(0.5);
    if mode.is_some_and(|m| m == "compare") {
        compare(&setup, &builds, secs, rounds);
    } else if mode.is_some() {
        contend(&setup, secs, rounds);
    } else {
        println!("getpid() load on CPU 0 for {secs} s, one ring record per call; consumers on CPU 1; {rounds} round(s)");
        let mut each = Vec::new();
        for k in 1..=rounds {
            println!("round {k}");
            let r = ratios(&round(&setup, Producers::One, secs));
            print_ratios(r, &format!("round {k}"));
            each.push(r);
        }
        if rounds > 1 {
            let median = |i: usize| benchmark::median(each.iter().map(|r| r[i]).collect());
            print_ratios(
                std::array::from_fn(median),
                &format!("median of {rounds} rounds"),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&setup.dir);
}
