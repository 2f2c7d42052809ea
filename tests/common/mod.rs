//! Shared by the integration tests: run the real exporter binary and scrape it.
#![allow(dead_code)]

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
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Exporter {
    /// Starts the exporter with `args` on a free port and waits for /healthz.
    pub fn start(args: &[&str], log: &Path) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(BIN)
            .args(["--web.listen-address", &addr])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut e = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = e.child.try_wait().unwrap() {
                panic!("exporter exited ({status}): {}", std::fs::read_to_string(log).unwrap());
            }
            if get(&e.addr, "/healthz").is_some_and(|b| b.starts_with("ok")) {
                return e;
            }
            assert!(Instant::now() < deadline, "exporter not healthy: {}", std::fs::read_to_string(log).unwrap());
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
    resp.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// The value of the sample whose name and full label set match exactly.
pub fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
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
