//! The HTTP server is bounded: half-open connections are closed after the header
//! timeout, and the oldest of them is reset to make room for a new client when the cap
//! is full; only when every open connection has had a request let in is a new one
//! refused. A scrape on an open connection still answers, and event subscribers beyond
//! their cap get 429; each refusal counted.
//! Needs root and BPF (the exporter loads its programs).

#[macro_use]
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{sample, Exporter, TempDir};

/// Sends a keep-alive scrape on `s` and reads the whole (chunked) response.
fn scrape_on(s: &mut TcpStream) -> String {
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    // The chunked body ends with an empty chunk.
    while !got.ends_with(b"\r\n0\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed mid-response");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether the server closed `s` (EOF or reset) within `wait`.
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

#[test]
fn slow_clients_cannot_hold_the_server() {
    privileged!("slow_clients_cannot_hold_the_server");
    let dir = TempDir::new("http-limits");
    let exporter = Exporter::start_with_env(
        &["--programs", "process_lifecycle"],
        &[
            ("KUBE_EBPF_EXPORTER__WEB__MAX_CONNECTIONS", "20"),
            ("KUBE_EBPF_EXPORTER__WEB__HEADER_TIMEOUT_SECONDS", "2"),
        ],
        &dir.0.join("log"),
    );
    // Prometheus keeps its connection open between scrapes.
    let mut prometheus = TcpStream::connect(&exporter.addr).unwrap();
    assert!(scrape_on(&mut prometheus).starts_with("HTTP/1.1 200"));
    // 19 clients send half a header and stop: with Prometheus's, the cap is full.
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..19)
        .map(|_| {
            let mut s = TcpStream::connect(&exporter.addr).unwrap();
            write!(s, "GET /metrics HTTP/1.1\r\nHost:").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // A 21st client is served: the oldest half-open connection makes room for it.
    let mut newcomer = TcpStream::connect(&exporter.addr).unwrap();
    assert!(scrape_on(&mut newcomer).starts_with("HTTP/1.1 200"));
    // Evicted with a reset, which leaves no TIME_WAIT behind for a flood's churn.
    slow[0]
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let evicted = slow[0].read(&mut [0; 16]);
    assert!(
        matches!(&evicted, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the oldest half-open connection was not reset: {evicted:?}"
    );
    // The scrape on the open connection still answers.
    assert!(scrape_on(&mut prometheus).starts_with("HTTP/1.1 200"));
    // The header timeout closes the other slow ones.
    for s in &mut slow[1..] {
        assert!(
            closed_within(s, Duration::from_secs(4)),
            "a half-open connection stayed open"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed before the timeout"
    );
    // When every open connection has had a request let in, a new one is refused.
    let mut served: Vec<TcpStream> = (0..18)
        .map(|_| {
            let mut s = TcpStream::connect(&exporter.addr).unwrap();
            assert!(scrape_on(&mut s).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let mut refused = TcpStream::connect(&exporter.addr).unwrap();
    let _ = write!(refused, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed_within(&mut refused, Duration::from_secs(1)),
        "a 21st connection was served while all 20 were proven"
    );
    // Their places are given back once the server sees them close.
    served.clear();
    std::thread::sleep(Duration::from_millis(200));
    let page = exporter.metrics();
    let refused = "ebpf_exporter_http_refused_total";
    for (reason, want) in [("evicted", 1.0), ("header_timeout", 18.0)] {
        assert_eq!(
            sample(&page, refused, &format!("reason=\"{reason}\"")),
            Some(want),
            "{page}"
        );
    }
    assert!(
        sample(&page, refused, "reason=\"connections\"").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
}

#[test]
fn event_subscribers_beyond_the_cap_get_429() {
    privileged!("event_subscribers_beyond_the_cap_get_429");
    let dir = TempDir::new("http-subscribers");
    let exporter = Exporter::start_with_env(
        &[],
        &[("KUBE_EBPF_EXPORTER__TAP__MAX_SUBSCRIBERS", "2")],
        &dir.0.join("log"),
    );
    let (first, _a) = common::open_stream(&exporter.tap_addr, "/events");
    let (second, _b) = common::open_stream(&exporter.tap_addr, "/events");
    assert!(
        first.contains(" 200 ") && second.contains(" 200 "),
        "{first}{second}"
    );
    let (third, mut body) = common::open_stream(&exporter.tap_addr, "/events");
    assert!(third.contains(" 429 "), "{third}");
    let mut text = String::new();
    body.read_to_string(&mut text).unwrap();
    assert!(text.contains("tap.max_subscribers"), "{text}");
    let page = exporter.metrics();
    assert_eq!(
        sample(
            &page,
            "ebpf_exporter_http_refused_total",
            "reason=\"max_subscribers\""
        ),
        Some(1.0),
        "{page}"
    );
}

#[test]
fn scrapes_asking_for_gzip_get_the_page_compressed() {
    privileged!("scrapes_asking_for_gzip_get_the_page_compressed");
    if !test_support::tool("scrapes_asking_for_gzip_get_the_page_compressed", "curl") {
        return;
    }
    let dir = TempDir::new("http-gzip");
    let exporter = Exporter::start(&["--programs", "process_lifecycle"], &dir.0.join("log"));
    let url = format!("http://{}/metrics", exporter.addr);
    let fetch = |accept: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-D",
                "-",
                "-H",
                &format!("Accept-Encoding: {accept}"),
                &url,
            ])
            .output()
            .unwrap();
        let split = out
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap();
        (
            String::from_utf8_lossy(&out.stdout[..split]).to_lowercase(),
            out.stdout[split + 4..].to_vec(),
        )
    };
    let (headers, body) = fetch("gzip, deflate");
    assert!(headers.contains("content-encoding: gzip"), "{headers}");
    let mut page = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut page)
        .unwrap();
    assert!(
        page.contains("# TYPE ebpf_exporter_process_execs_total counter"),
        "{page}"
    );
    assert!(
        body.len() * 3 < page.len(),
        "{} compressed bytes for {}",
        body.len(),
        page.len()
    );
    // Not asked (or refused with q=0): plain text.
    for accept in ["identity", "gzip;q=0"] {
        let (headers, body) = fetch(accept);
        assert!(!headers.contains("content-encoding"), "{accept}: {headers}");
        assert!(String::from_utf8_lossy(&body).contains("ebpf_exporter_process_execs_total"));
    }
}
