//! Authorised scrapes under attack, side by side with node_exporter: a real Prometheus
//! (Debian's) scrapes our exporter and Debian's prometheus-node-exporter
//! (exporter-toolkit) every second over TLS with basic auth, both with the same web
//! config, first idle and then under each load alone and all at once, on loopback:
//! 2,000 junk TLS connections (a partial ClientHello each), 200 half-open plain
//! connections, 100 wrong-password requests per second, a slowloris (200 TLS
//! connections sending their header a byte a second) and a flood of connections beyond
//! `web.max_connections`. Prints, per server and phase, Prometheus's own view (scrapes
//! that succeeded, p50 and p99 of `scrape_duration_seconds`) and the server's CPU and
//! peak RSS, and the machine's steal time (what the hypervisor took: on a shared VM the
//! slowest of 59 scrapes often falls there); then each server's p99 under load
//! against its idle p99.
//!
//! `cargo run --release -p benchmark --bin http_attack [seconds per phase] [phases]`
//! [servers] (default 60 s, every phase, both servers; phases by number: 0 idle, 1-5
//! each load, 6 all five; servers by name: ours, node_exporter)
//! after `cargo build --release`. Needs root (our exporter loads its default programs),
//! openssl, prometheus and prometheus-node-exporter.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use benchmark::process::{cpu_seconds, free_port, prometheus_query, wait_ready, Server};
use rustls::{pki_types::ServerName, ClientConnection, StreamOwned};

const USER: &str = "prometheus";
const PASSWORD: &str = "scrape-me";
/// Our exporter's default `web.max_connections`.
const MAX_CONNECTIONS: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One kind of load.
#[derive(Clone, Copy, PartialEq)]
enum Load {
    JunkTls,
    HalfOpen,
    WrongPasswords,
    Slowloris,
    Flood,
}

const LOADS: [Load; 5] = [
    Load::JunkTls,
    Load::HalfOpen,
    Load::WrongPasswords,
    Load::Slowloris,
    Load::Flood,
];

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::JunkTls => "2000 junk TLS",
            Load::HalfOpen => "200 half-open",
            Load::WrongPasswords => "100 wrong pw/s",
            Load::Slowloris => "slowloris x200",
            Load::Flood => "flood 1012 conns",
        }
    }
}

/// Where the loads go, and until when.
#[derive(Clone)]
struct Attack {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    stop: Arc<AtomicBool>,
    /// Wrong-password requests answered 401, 503, or not answered (error or timeout).
    answers: Arc<[AtomicU64; 3]>,
}

impl Attack {
    fn connect(&self) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)
    }

    fn tls(&self) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let tcp = self.connect()?;
        tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(2)))?;
        let name = ServerName::IpAddress(self.addr.ip().into());
        let conn = ClientConnection::new(self.tls.clone(), name).map_err(std::io::Error::other)?;
        Ok(StreamOwned::new(conn, tcp))
    }

    /// Keeps `n` connections from `open` alive (checked every `period` with `alive`),
    /// opening a new one for each that the server closed.
    fn hold<S>(
        &self,
        n: usize,
        period: Duration,
        open: impl Fn(&Self) -> std::io::Result<S>,
        alive: impl Fn(&mut S) -> bool,
    ) {
        let mut conns: Vec<Option<S>> = (0..n).map(|_| None).collect();
        while !self.stop.load(Relaxed) {
            let next = Instant::now() + period;
            for c in &mut conns {
                if !c.as_mut().is_some_and(&alive) {
                    *c = open(self).ok();
                }
                if self.stop.load(Relaxed) {
                    return;
                }
            }
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }

    /// Plain connections sending `bytes`, then nothing.
    fn hold_plain(&self, n: usize, bytes: &'static [u8]) {
        self.hold(
            n,
            Duration::from_millis(100),
            |a| {
                let mut s = a.connect()?;
                s.write_all(bytes)?;
                s.set_nonblocking(true)?;
                Ok(s)
            },
            // Open while nothing is readable: servers here only write to refuse.
            |s| matches!(s.peek(&mut [0]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        );
    }

    /// TLS connections sending a request header a byte a second.
    fn slowloris(&self, n: usize) {
        self.hold(
            n,
            Duration::from_secs(1),
            |a| {
                let mut s = a.tls()?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-")?;
                s.flush()?;
                Ok(s)
            },
            |s| s.write_all(b"a").and_then(|()| s.flush()).is_ok(),
        );
    }

    /// One request a `period` with a wrong password (a new one each time, as a brute
    /// force tries them), each on a new connection, the first after `offset` (clients
    /// spread over the period rather than all at once).
    fn wrong_passwords(&self, period: Duration, offset: Duration) {
        std::thread::sleep(offset);
        let mut next = Instant::now();
        for i in 0.. {
            if self.stop.load(Relaxed) {
                break;
            }
            let header = format!(
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {}\r\n\r\n",
                base64(format!("{USER}:guess-{:?}-{i}", std::thread::current().id()).as_bytes())
            );
            next += period;
            let mut response = Vec::new();
            if let Ok(mut s) = self.tls() {
                let _ = s.write_all(header.as_bytes());
                let _ = s.read_to_end(&mut response);
            }
            let answer = match response.get(9..12) {
                Some(b"401") => 0,
                Some(b"503") => 1,
                _ => 2,
            };
            self.answers[answer].fetch_add(1, Relaxed);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }

    /// Starts `load` on threads of its own.
    fn start(&self, load: Load) -> Vec<JoinHandle<()>> {
        // A TLS record header announcing a 512-byte ClientHello, and its first bytes.
        const PARTIAL_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        let spawn = |f: Box<dyn FnOnce(Attack) + Send>| {
            let a = self.clone();
            std::thread::spawn(move || f(a))
        };
        match load {
            Load::JunkTls => (0..4)
                .map(|_| spawn(Box::new(|a| a.hold_plain(500, PARTIAL_HELLO))))
                .collect(),
            Load::HalfOpen => vec![spawn(Box::new(|a| a.hold_plain(200, b"")))],
            Load::Flood => (0..2)
                .map(|_| spawn(Box::new(|a| a.hold_plain((MAX_CONNECTIONS + 500) / 2, b""))))
                .collect(),
            Load::Slowloris => (0..4)
                .map(|_| spawn(Box::new(|a| a.slowloris(50))))
                .collect(),
            // 100 clients at one a second each: 100/s offered while answers take under a
            // second (a client waits for its answer, so a server that is slower gets fewer).
            Load::WrongPasswords => (0..100u64)
                .map(|i| {
                    let offset = Duration::from_millis(10 * i);
                    spawn(Box::new(move |a| {
                        a.wrong_passwords(Duration::from_secs(1), offset)
                    }))
                })
                .collect(),
        }
    }
}

fn base64(input: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it: ca.pem, server.pem, server.key.
fn certificates(dir: &Path) {
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let run = |line: String| openssl(dir, &line.split(' ').collect::<Vec<_>>());
    run(format!(
        "req -x509 {key} -days 2 -subj /CN=bench-ca -keyout ca.key -out ca.pem"
    ));
    run(format!(
        "req {key} -subj /CN=127.0.0.1 -keyout server.key -out server.csr"
    ));
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run("x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem".into());
}

/// The web config both servers get: TLS, and one user with a bcrypt hash at cost 10
/// (exporter-toolkit's documented example cost).
fn web_config(dir: &Path) -> std::path::PathBuf {
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    let path = dir.join("web.yml");
    std::fs::write(
        &path,
        format!(
            "tls_server_config:\n  cert_file: {0}/server.pem\n  key_file: {0}/server.key\nbasic_auth_users:\n  {USER}: {hash}\n",
            dir.display()
        ),
    )
    .unwrap();
    path
}

fn client_tls(dir: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Prometheus scraping both jobs every second over TLS with basic auth; its address.
fn prometheus(dir: &Path, targets: &[(&str, u16)]) -> (Server, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    // Itself too: its dialer's connection attempts per job.
    let mut config = format!(
        "global: {{ scrape_interval: 1s, scrape_timeout: 1s }}\nscrape_configs:\n  - job_name: self\n    static_configs: [{{ targets: ['{addr}'] }}]\n",
    );
    for (job, port) in targets {
        config += &format!(
            "  - job_name: {job}\n    scheme: https\n    tls_config: {{ ca_file: {}/ca.pem }}\n    basic_auth: {{ username: {USER}, password: {PASSWORD} }}\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n",
            dir.display()
        );
    }
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let server = Server(
        Command::new("prometheus")
            .arg(format!("--config.file={}/prometheus.yml", dir.display()))
            .arg(format!("--storage.tsdb.path={}/tsdb", dir.display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus"),
    );
    wait_ready(&addr);
    (server, addr)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// What one phase measured.
struct Figures {
    scrapes: f64,
    /// New connections Prometheus opened to the server.
    connects: f64,
    success: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: f64,
    /// The attackers' own CPU (this process), which the servers' threads share the
    /// machine with.
    attack_cpu: f64,
    rss_mib: f64,
    /// Wrong-password requests answered 401, 503, not at all.
    wrong: [u64; 3],
    /// Seconds the server took to quiet down after the load stopped.
    settled: u64,
    /// Share of the machine's CPU time the hypervisor gave elsewhere (steal): a VM's
    /// noise, which no server's code decides.
    steal: f64,
}

/// The machine's CPU time so far, in ticks: (steal, all).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    (ticks.get(7).copied().unwrap_or(0), ticks.iter().sum())
}

/// Waits (up to 2 minutes) until `server` uses under 5% of a CPU over a second;
/// returns the seconds that took.
fn settle(server: &Server) -> u64 {
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    loop {
        let cpu0 = server.cpu();
        std::thread::sleep(Duration::from_secs(1));
        if server.cpu() - cpu0 < 0.05 || start.elapsed() > Duration::from_secs(120) {
            return start.elapsed().as_secs();
        }
    }
}

/// Runs `loads` against `server` for `seconds`, then asks Prometheus about them.
fn phase(
    server: &Server,
    attack: &Attack,
    loads: &[Load],
    seconds: u64,
    (prom, job): (&str, &str),
) -> Figures {
    attack.stop.store(false, Relaxed);
    let wrong0 = attack.answers.each_ref().map(|a| a.load(Relaxed));
    let threads: Vec<_> = loads.iter().flat_map(|&l| attack.start(l)).collect();
    let own = || cpu_seconds(std::process::id());
    let (t0, cpu0, own0, ticks0) = (unix_now(), server.cpu(), own(), cpu_ticks());
    let mut rss = 0;
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        rss = rss.max(server.rss());
        std::thread::sleep(Duration::from_millis(500));
    }
    let (t1, cpu1, own1, ticks1) = (unix_now(), server.cpu(), own(), cpu_ticks());
    attack.stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // Samples scraped while the load ran, leaving its first second out.
    let window = format!("{}s", (t1 - t0 - 1.0).floor() as u64);
    let q = |f: &str| prometheus_query(prom, &format!("{f}{{job=\"{job}\"}}[{window}])"), Some(t1));
    // The next phase starts on a quiet server: the load's last connections closed and
    // work it queued (bcrypt backlogs) done, or it would be charged to the next load.
    let settled = settle(server);
    let scrapes = q("count_over_time(up");
    let dials =
        format!("net_conntrack_dialer_conn_attempted_total{{dialer_name=\"{job}\"}}[{window}]");
    Figures {
        scrapes,
        connects: prometheus_query(
            prom,
            &format!("max_over_time({dials}) - min_over_time({dials})"),
            Some(t1),
        ),
        success: q("sum_over_time(up") / scrapes,
        p50_ms: q("quantile_over_time(0.5, scrape_duration_seconds") * 1e3,
        p99_ms: q("quantile_over_time(0.99, scrape_duration_seconds") * 1e3,
        cpu: (cpu1 - cpu0) / (t1 - t0),
        attack_cpu: (own1 - own0) / (t1 - t0),
        rss_mib: rss as f64 / f64::from(1 << 20),
        wrong: std::array::from_fn(|i| attack.answers[i].load(Relaxed) - wrong0[i]),
        settled,
        steal: (ticks1.0 - ticks0.0) as f64 / (ticks1.1 - ticks0.1).max(1) as f64,
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .map_or(60, |s| s.parse().expect("seconds per phase"));
    // SAFETY: raises this process's descriptor limit to its hard limit.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
    }
    let dir = std::env::temp_dir().join(format!("kebpf-http-attack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let web = web_config(&dir);
    let ours_port = free_port();
    let node_port = free_port();
    let (_prom, prom) = prometheus(&dir, &[("ours", ours_port), ("node_exporter", node_port)]);
    let exporter = std::env::current_exe()
        .unwrap()
        .with_file_name("kube-ebpf-exporter");
    let servers = [
        ("ours", exporter.to_str().unwrap(), ours_port),
        ("node_exporter", "prometheus-node-exporter", node_port),
    ];
    // A second argument picks phases by number (0 idle, 1-5 each load, 6 all at once).
    let picked: Option<Vec<usize>> = std::env::args().nth(2).map(|s| {
        s.split(',')
            .map(|n| n.parse().expect("phase number"))
            .collect()
    });
    let mut phases: Vec<(String, Vec<Load>)> = vec![("idle".into(), vec![])];
    phases.extend(LOADS.iter().map(|&l| (l.name().to_string(), vec![l])));
    phases.push(("all five at once".into(), LOADS.to_vec()));
    let phases: Vec<_> = phases
        .into_iter()
        .enumerate()
        .filter(|(i, _)| picked.as_ref().is_none_or(|p| p.contains(i)))
        .map(|(_, p)| p)
        .collect();

    println!("Prometheus scraping every 1 s (timeout 1 s) over TLS + basic auth (bcrypt cost 10); {seconds} s per phase; {} CPUs",
        std::thread::available_parallelism().map_or(1, usize::from));
    println!(
        "{:<14} {:<18} {:>8} {:>9} {:>8} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7}  wrong pw: 401/503/none",
        "server",
        "load",
        "scrapes",
        "success",
        "connects",
        "p50 ms",
        "p99 ms",
        "p99 x",
        "CPU %",
        "RSS MiB",
        "atk CPU%",
        "settle s",
        "steal%"
    );
    // A third picks servers by job name (ours, node_exporter).
    let only = std::env::args().nth(3);
    for (job, bin, port) in servers {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|j| j == job))
        {
            continue;
        }
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join(format!("{job}.log"))).unwrap();
        let server = Server(
            Command::new(bin)
                .arg(format!("--web.listen-address={addr}"))
                .arg(format!("--web.config.file={}", web.display()))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{bin}: {e}")),
        );
        wait_ready(&addr);
        // Prometheus's first scrapes (its connection, the credentials' first bcrypt) and
        // the server's start-up (ours attaches and reads its first maps) settle first:
        // they are not what idle means.
        std::thread::sleep(Duration::from_secs(15));
        let attack = Attack {
            addr: addr.parse().unwrap(),
            tls: client_tls(&dir),
            stop: Arc::new(AtomicBool::new(false)),
            answers: Arc::default(),
        };
        let mut idle_p99 = f64::NAN;
        for (name, loads) in &phases {
            let f = phase(&server, &attack, loads, seconds, (&prom, job));
            if loads.is_empty() {
                idle_p99 = f.p99_ms;
            }
            let wrong = if f.wrong.iter().sum::<u64>() > 0 {
                format!("  {}/{}/{}", f.wrong[0], f.wrong[1], f.wrong[2])
            } else {
                String::new()
            };
            println!(
                "{job:<14} {name:<18} {:>8.0} {:>8.1}% {:>8.0} {:>9.2} {:>9.2} {:>7.2} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>7.1}{wrong}",
                f.scrapes,
                f.success * 100.0,
                f.connects,
                f.p50_ms,
                f.p99_ms,
                f.p99_ms / idle_p99,
                f.cpu * 100.0,
                f.rss_mib,
                f.attack_cpu * 100.0,
                f.settled,
                f.steal * 100.0,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
