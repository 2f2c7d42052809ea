//! Shared by the integration tests: run the real exporter binary and scrape it.
#![allow(dead_code, unused_macros, unused_imports)]

/// Returns from the test (printing why) unless root and BPF are available.
macro_rules! privileged {
    ($name:literal) => {
        if !test_support::privileged($name) {
            return;
        }
    };
}

pub mod cri;
pub mod tls;

pub use test_support::{cgroup2_mount, memory_limit};

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The exporter binary built by cargo for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_kube-ebpf-exporter");

/// A running exporter, killed on drop.
pub struct Exporter {
    pub child: Child,
    pub addr: String,
    /// Its event stream's listener (`tap.listen`, on loopback for the tests).
    pub tap_addr: String,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Exporter {
    /// Starts the exporter with `args` on a free port and waits for /healthz.
    pub fn start(args: &[&str], log: &Path) -> Self {
        Self::start_with_env(args, &[], log)
    }

    /// As [`Exporter::start`], with extra environment (config overrides).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)], log: &Path) -> Self {
        Self::start_under(&[], args, env, log)
    }

    /// As [`Exporter::start_with_env`], run by the command `wrapper` (e.g. `setpriv ...`).
    pub fn start_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)], log: &Path) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let tap_addr = format!("127.0.0.1:{}", free_port());
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(["--web.listen-address", &addr])
            .args(args)
            .env("KUBE_EBPF_EXPORTER__TAP__LISTEN", &tap_addr)
            .envs(env.iter().copied())
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut e = Self {
            child,
            addr,
            tap_addr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = e.child.try_wait().unwrap() {
                panic!(
                    "exporter exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap()
                );
            }
            if get(&e.addr, "/healthz").is_some_and(|b| b.starts_with("ok")) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "exporter not healthy: {}",
                std::fs::read_to_string(log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The metrics page.
    pub fn metrics(&self) -> String {
        get(&self.addr, "/metrics").expect("scrape failed")
    }
}

/// GET `path` over HTTP/1.0; the body, or `None` when nothing answers.
pub fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// The value of the sample whose name and full label set ("" for none) match exactly.
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

/// All samples of `name` as (labels, value).
pub fn samples<'a>(metrics: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    let prefix = format!("{name}{{");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| rest.rsplit_once("} "))
        .map(|(labels, v)| (labels, v.parse().unwrap()))
        .collect()
}

/// A directory removed (with everything in it) on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh directory named after the test and this process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kebpf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test cgroups below one test-owned parent, removed deepest first on drop (after
/// the processes in them have exited).
pub struct Cgroups {
    dirs: Vec<std::path::PathBuf>,
}

impl Cgroups {
    /// A parent cgroup for this test: `<mount>/kebpf-<name>-<pid>`.
    pub fn new(name: &str) -> Self {
        let root = cgroup2_mount().join(format!("kebpf-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        Self { dirs: vec![root] }
    }

    /// Creates `parts` below the parent, one level each; returns the deepest.
    pub fn create(&mut self, parts: &[&str]) -> std::path::PathBuf {
        let mut dir = self.dirs[0].clone();
        for p in parts {
            dir = dir.join(p);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
                self.dirs.push(dir.clone());
            }
        }
        dir
    }

    /// The path of a cgroup as the `cgroup` decoder prints it.
    pub fn display(dir: &std::path::Path) -> String {
        dir.display().to_string()
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A pod as the kubelet lays it out: a systemd-driver container cgroup and the log
/// directories that name it.
pub struct Pod {
    pub namespace: &'static str,
    pub name: &'static str,
    pub container: &'static str,
    pub uid: String,
    pub container_id: String,
}

impl Pod {
    /// A pod whose uid and container id derive from its name and the test process:
    /// tests running at the same time (all exporters see every event) must use
    /// different names, and two test runs on one machine never share a pod.
    pub fn new(namespace: &'static str, name: &'static str, container: &'static str) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (namespace, name, container, std::process::id()).hash(&mut h);
        let x = h.finish();
        let hex = format!("{x:016x}{:016x}", x.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15);
        Self {
            namespace,
            name,
            container,
            uid: format!(
                "{}-{}-4{}-8{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[13..16],
                &hex[17..20],
                &hex[20..32]
            ),
            container_id: format!("{hex}{hex}"),
        }
    }

    /// The container's cgroup (burstable QoS) below `cgroups`' parent.
    pub fn cgroup(&self, cgroups: &mut Cgroups) -> std::path::PathBuf {
        let uid = self.uid.replace('-', "_");
        cgroups.create(&[
            "kubepods.slice",
            "kubepods-burstable.slice",
            &format!("kubepods-burstable-pod{uid}.slice"),
            &format!("cri-containerd-{}.scope", self.container_id),
        ])
    }

    /// Writes `pods/<ns>_<pod>_<uid>/<container>/0.log` and its link in `containers/`
    /// under `root`; returns the exporter flags that point at them.
    pub fn logs(&self, root: &std::path::Path) -> Vec<String> {
        let (pods, containers) = (root.join("pods"), root.join("containers"));
        let dir = pods.join(format!(
            "{}_{}_{}/{}",
            self.namespace, self.name, self.uid, self.container
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.log"), "").unwrap();
        std::fs::create_dir_all(&containers).unwrap();
        let link = containers.join(format!(
            "{}_{}_{}-{}.log",
            self.name, self.namespace, self.container, self.container_id
        ));
        let _ = std::os::unix::fs::symlink(dir.join("0.log"), link);
        vec![
            "--kubelet.pod-logs-dir".into(),
            pods.display().to_string(),
            "--kubelet.container-logs-dir".into(),
            containers.display().to_string(),
        ]
    }

    /// The pod's labels, the node's and `extra`, sorted by name as exported.
    pub fn series(&self, extra: &[(&str, &str)]) -> String {
        let node = node();
        let mut labels = vec![
            ("app_container", self.container),
            ("app_namespace", self.namespace),
            ("app_pod", self.name),
            ("node_id", node.as_str()),
        ];
        labels.extend_from_slice(extra);
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        labels.join(",")
    }

    /// `app_container="..",app_namespace="..",app_pod=".."` (sorted, as exported).
    pub fn labels(&self) -> String {
        format!(
            "app_container=\"{}\",app_namespace=\"{}\",app_pod=\"{}\"",
            self.container, self.namespace, self.name
        )
    }
}

/// Compiles `examples/<name>.bpf.c` with the README's commands into `dir` (the ring
/// buffer build and the `-DOUTPUT_PERF` build), beside a copy of `examples/<name>.yaml`.
pub fn compile_example(name: &str, dir: &std::path::Path) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = root.join(format!("examples/{name}.bpf.c"));
    test_support::compile_bpf(&source, &dir.join(format!("{name}.bpf.o")), &[]);
    test_support::compile_bpf(
        &source,
        &dir.join(format!("{name}.perf.bpf.o")),
        &["-DOUTPUT_PERF"],
    );
    std::fs::copy(
        root.join(format!("examples/{name}.yaml")),
        dir.join(format!("{name}.yaml")),
    )
    .unwrap();
}

/// The workload program (tests/workload.c), compiled once per test binary.
pub fn workload() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bin = std::env::temp_dir().join(format!("kebpf-workload-{}", std::process::id()));
        let status = Command::new("cc")
            .args(["-O1", "-o"])
            .arg(&bin)
            .arg(root.join("tests/workload.c"))
            .status()
            .expect("cc");
        assert!(status.success(), "cc failed on tests/workload.c");
        bin
    })
}

/// Runs the workload inside `cgroup` (or where the test runs, for `None`).
pub fn run_workload(cgroup: Option<&std::path::Path>, args: &[&str]) {
    let cg = cgroup.map_or("-".to_string(), |c| c.display().to_string());
    let status = Command::new(workload())
        .arg(cg)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "workload {args:?} failed");
}

/// Scrapes until `name{labels}` reads `want` (or 15 s pass), then a little longer to
/// catch overcounting; returns the final page.
pub fn wait_for(exporter: &Exporter, name: &str, labels: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while sample(&exporter.metrics(), name, labels) != Some(want) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    exporter.metrics()
}

/// The node label the exporter uses without flags.
pub fn node() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
                .to_string()
        })
}

/// Opens a streaming GET and returns (status line, reader positioned at the body).
pub fn open_stream(addr: &str, path: &str) -> (String, std::io::BufReader<TcpStream>) {
    use std::io::BufRead;
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut header = String::new();
    while reader.read_line(&mut header).unwrap() > 2 {
        header.clear();
    }
    (status, reader)
}

/// `n` TCP connects from a new bash moved into `cgroup`, to a loopback listener of the
/// test's own (it accepts exactly `n`).
pub fn connects(n: usize, cgroup: &std::path::Path) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accept = std::thread::spawn(move || {
        for _ in 0..n {
            drop(listener.accept().unwrap());
        }
    });
    let script = format!(
        "echo $$ > {}/cgroup.procs && for i in $(seq {n}); do exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1; exec 3>&-; done",
        cgroup.display()
    );
    let status = Command::new("bash").args(["-c", &script]).status().unwrap();
    assert!(status.success(), "client failed: {script}");
    accept.join().unwrap();
}

/// Run-queue waits a program counted (`count`, `sum` seconds) agree with the kernel's
/// own accounting (sched_info: `runs`, `delay` seconds) of the same processes: one
/// wait per run, the same total, the program's up to `over` (a fraction) more time and
/// twice that in waits (at least 6). On this host they agree within 0.1%; under TCG
/// the program saw 7-9% more waits and 5.3-5.5% more time (5.10 and 6.12, 2026-12-07),
/// also once the workload read each child's accounting after its exit, so the exit
/// path is not where they come from (not found). Two fewer waits than runs (531 of
/// 533, the time within 0.01%) were seen once on this host: a wakeup the program
/// missed (unexplained; a wakeup from an interrupt that lands while the same CPU is
/// inside the program, which the kernel's recursion guard skips, is the suspect), so
/// up to 2 missing waits are let through.
pub fn run_queue_agrees(count: f64, sum: f64, delay: f64, runs: f64, over: f64) -> bool {
    let extra = (runs * 2.0 * over).max(6.0);
    (runs - 2.0..=runs + extra).contains(&count)
        && (delay * 0.98 - 0.001..=delay * (1.0 + over) + 0.001).contains(&sum)
}

/// `kubectl kustomize dir`: the rendered text and its YAML documents.
pub fn kustomize(dir: &Path) -> (String, Vec<serde_yaml_ng::Value>) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    (text, docs)
}
