//! Scrape cost side by side: the same histogram series (the default config's TCP
//! connect latency: 27 buckets, 5 labels, 8 observations each) served by the aggregate
//! stage's exposition and by the Go client (`benchmark/go-client`, client_golang 1.14
//! from Debian, built offline), in text 0.0.4, OpenMetrics and protobuf (with native
//! buckets at schema 3), for 1,000, 10,000 and 100,000 series. Prints each scrape's
//! time, bytes on the wire (gzip, as Prometheus asks) and uncompressed, the server's
//! CPU per scrape, and what two real Prometheus servers (one with native histograms,
//! scraping protobuf, one without, scraping OpenMetrics) report as
//! `scrape_duration_seconds` and `scrape_samples_scraped`; then the ratios.
//!
//! `cargo run --release -p benchmark --bin exposition [series,...]`
//! Needs `go` with Debian's golang-github-prometheus-client-golang-dev, and prometheus.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use aggregate::{Format, Registry, StreamAggregator, StreamStats};
use benchmark::{
    process::{free_port, prometheus_query, wait_ready, Server},
    tcp_connect_stream, tcp_record,
};
use enrich::PodLabels;

/// The Go side's latencies, so both serve the same buckets.
fn latency(i: u64, j: u64) -> u64 {
    500 + ((i * 8 + j).wrapping_mul(2654435761)) % (1 << 23)
}

fn registry(series: u64) -> Arc<Registry> {
    let (registry, plan) = tcp_connect_stream(true);
    let mut agg = StreamAggregator::new(plan, Arc::new(StreamStats::default()));
    for i in 0..series {
        let pod = Arc::new(PodLabels {
            id: i as u32 + 1,
            namespace: format!("ns-{}", i % 50),
            pod: format!("pod-{i}"),
            container: "c".into(),
            extra: Box::default(),
        });
        for j in 0..8 {
            agg.observe(&tcp_record(i, latency(i, j), 127), &pod);
        }
    }
    registry
}

/// Serves `/metrics` as the exporter does: negotiated format, 256 KiB chunks, gzip
/// (fast) when accepted, one thread per connection.
fn serve(series: u64, addr: &str) {
    let registry = registry(series);
    let listener = TcpListener::bind(addr).unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    for conn in listener.incoming().flatten() {
        let registry = registry.clone();
        std::thread::spawn(move || respond(&registry, conn));
    }
}

fn respond(registry: &Registry, mut conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let (mut accept, mut gzip) = (String::new(), false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("accept:") {
            accept = line[7..].trim().to_string();
            let _ = v;
        } else if let Some(v) = lower.strip_prefix("accept-encoding:") {
            gzip = v.contains("gzip");
        }
    }
    let format = Format::negotiate(&accept);
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{}Connection: close\r\n\r\n",
        format.content_type(),
        if gzip {
            "Content-Encoding: gzip\r\n"
        } else {
            ""
        }
    );
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut emit = |chunk: Vec<u8>| {
        if gzip {
            let _ = z.write_all(&chunk).and_then(|()| z.flush());
            let _ = conn.write_all(&std::mem::take(z.get_mut()));
        } else {
            let _ = conn.write_all(&chunk);
        }
    };
    let mut sink = aggregate::PageWriter::chunked(format, 256 * 1024, &mut emit);
    registry.render(&mut sink);
    let rest = sink.finish();
    emit(rest);
    if gzip {
        let _ = conn.write_all(&z.finish().unwrap_or_default());
    }
}

/// Builds the Go baseline with Debian's packages, offline (GOPATH mode).
fn build_go(dir: &Path) -> PathBuf {
    let out = dir.join("go-client");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go-client");
    let ok = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", dir.join("gocache"))
        .status()
        .expect("go (apt-get install golang-go golang-github-prometheus-client-golang-dev)");
    assert!(ok.success(), "go build of benchmark/go-client failed");
    out
}

const ACCEPT: [(&str, &str); 3] = [
    ("text 0.0.4", "text/plain;version=0.0.4"),
    ("OpenMetrics", "application/openmetrics-text;version=1.0.0"),
    (
        "protobuf",
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
    ),
];

/// One scrape: seconds to the last byte, body bytes.
fn scrape(addr: &str, accept: &str, gzip: bool) -> (f64, usize) {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\n{}Connection: close\r\n\r\n",
        if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        }
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let elapsed = t.elapsed().as_secs_f64();
    let head = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let headers = String::from_utf8_lossy(&resp[..head]).to_ascii_lowercase();
    let mut body = resp[head + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (elapsed, body.len())
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// Per format: (median seconds per gzip scrape, gzip bytes, plain bytes, CPU s/scrape).
fn measure(server: &Server, addr: &str, runs: usize) -> Vec<(f64, usize, usize, f64)> {
    ACCEPT
        .iter()
        .map(|(_, accept)| {
            let plain = scrape(addr, accept, false).1;
            let cpu0 = server.cpu();
            let mut times: Vec<f64> = (0..runs).map(|_| scrape(addr, accept, true).0).collect();
            let cpu = (server.cpu() - cpu0) / runs as f64;
            let wire = scrape(addr, accept, true).1;
            times.sort_by(f64::total_cmp);
            (times[runs / 2], wire, plain, cpu)
        })
        .collect()
}

/// A Prometheus server scraping both targets; returns (scrape_duration_seconds,
/// scrape_samples_scraped) per job once each target was scraped a few times.
fn prometheus(dir: &Path, ours: &str, go: &str, native: bool, interval: u64) -> [(f64, f64); 2] {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: {interval}s, scrape_timeout: {interval}s }}\n\
             scrape_configs:\n  - job_name: ours\n    static_configs: [{{ targets: ['{ours}'] }}]\n\
             \x20 - job_name: go\n    static_configs: [{{ targets: ['{go}'] }}]\n"
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap());
    if native {
        cmd.arg("--enable-feature=native-histograms");
    }
    let _p = Server(cmd.spawn().expect("prometheus"));
    wait_ready(&addr);
    std::thread::sleep(Duration::from_secs(interval * 4 + 2));
    let query = |q: &str| prometheus_query(&addr, q, None);
    ["ours", "go"].map(|job| {
        (
            query(&format!(
                "avg_over_time(scrape_duration_seconds{{job=\"{job}\"}}[{}s])",
                interval * 3
            )),
            query(&format!("scrape_samples_scraped{{job=\"{job}\"}}")),
        )
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(args[2].parse().unwrap(), &args[3]);
        return;
    }
    let sizes: Vec<u64> = args
        .get(1)
        .map_or("1000,10000,100000".into(), String::clone)
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("kebpf-exposition-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let go_bin = build_go(&dir);
    println!("histogram series: 27 classic buckets + native (schema 3), 5 labels, 8 observations each; gzip scrapes, median");
    println!(
        "{:>7} {:<12} {:>11} {:>11} {:>12} {:>12} {:>10} {:>10} {:>9} {:>9}",
        "series",
        "format",
        "ours ms",
        "go ms",
        "ours KiB gz",
        "go KiB gz",
        "ours KiB",
        "go KiB",
        "ours CPU",
        "go CPU"
    );
    let mut ratios = Vec::new();
    for &n in &sizes {
        let ours_addr = format!("127.0.0.1:{}", free_port());
        let go_addr = format!("127.0.0.1:{}", free_port());
        let ours = Server(
            Command::new(std::env::current_exe().unwrap())
                .args(["serve", &n.to_string(), &ours_addr])
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let go = Server(
            Command::new(&go_bin)
                .args(["-series", &n.to_string(), "-listen", &go_addr])
                .spawn()
                .unwrap(),
        );
        wait_ready(&ours_addr);
        wait_ready(&go_addr);
        let runs = (200_000 / n as usize).clamp(3, 50);
        let a = measure(&ours, &ours_addr, runs);
        let b = measure(&go, &go_addr, runs);
        for (((name, _), x), y) in ACCEPT.iter().zip(&a).zip(&b) {
            println!(
                "{n:>7} {name:<12} {:>11.2} {:>11.2} {:>12.1} {:>12.1} {:>10.0} {:>10.0} {:>7.1}ms {:>7.1}ms",
                x.0 * 1e3,
                y.0 * 1e3,
                x.1 as f64 / 1024.0,
                y.1 as f64 / 1024.0,
                x.2 as f64 / 1024.0,
                y.2 as f64 / 1024.0,
                x.3 * 1e3,
                y.3 * 1e3,
            );
            ratios.push((n, *name, x.0 / y.0, x.1 as f64 / y.1 as f64, x.3 / y.3));
        }
        let interval = if n >= 100_000 { 30 } else { 5 };
        for (native, label) in [
            (true, "protobuf (native-histograms)"),
            (false, "OpenMetrics (no flag)"),
        ] {
            let [o, g] = prometheus(
                &dir.join(format!("prom-{n}-{native}")),
                &ours_addr,
                &go_addr,
                native,
                interval,
            );
            println!(
                "{n:>7} Prometheus 2.42, {label}: scrape_duration_seconds ours {:.4} go {:.4} ({:.2}x); samples scraped ours {} go {}",
                o.0, g.0, o.0 / g.0, o.1, g.1
            );
        }
    }
    println!("\nratios ours / go (below 1: ours is cheaper)");
    for (n, name, time, bytes, cpu) in ratios {
        println!("{n:>7} {name:<12} time {time:.2}  wire bytes {bytes:.2}  CPU {cpu:.2}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
