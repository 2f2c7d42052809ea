//! SIGTERM is a clean exit: within a bounded time though an event subscriber and a
//! half-sent request are connected, with every program detached, every map freed (as
//! bpftool sees them) and the event stream's socket removed. Needs root, BPF and
//! bpftool.

#[macro_use]
mod common;

use std::{
    collections::BTreeSet,
    io::Write,
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use common::{Exporter, TempDir};

/// Ids of the BPF objects of `kind` (`prog`, `map`) the kernel has now.
fn ids(kind: &str) -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args([kind, "show", "-j"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool {kind} show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_u64())
        .collect()
}

#[test]
fn sigterm_detaches_every_program_and_frees_every_map() {
    let name = "sigterm_detaches_every_program_and_frees_every_map";
    if !test_support::privileged(name) || !test_support::tool(name, "bpftool") {
        return;
    }
    let dir = TempDir::new("shutdown");
    let (progs, maps) = (ids("prog"), ids("map"));
    let socket = dir.0.join("tap.sock");
    let listen = format!("unix:{}", socket.display());
    let mut exporter = Exporter::start_with_env(
        &["--programs", "all"],
        &[("KUBE_EBPF_EXPORTER__TAP__LISTEN", &listen)],
        &dir.0.join("log"),
    );
    let (ours_progs, ours_maps): (BTreeSet<u64>, BTreeSet<u64>) = (
        ids("prog").difference(&progs).copied().collect(),
        ids("map").difference(&maps).copied().collect(),
    );
    assert!(
        ours_progs.len() >= 20 && ours_maps.len() >= 20,
        "{ours_progs:?} {ours_maps:?}"
    );
    // A subscriber (on the event stream's socket) that reads nothing, and a client
    // that sends half a header.
    let mut subscriber = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(subscriber, "GET /events HTTP/1.0\r\n\r\n").unwrap();
    let mut status = [0u8; 12];
    std::io::Read::read_exact(&mut subscriber, &mut status).unwrap();
    assert_eq!(
        &status,
        b"HTTP/1.0 200",
        "{}",
        String::from_utf8_lossy(&status)
    );
    let mut slow = TcpStream::connect(&exporter.addr).unwrap();
    write!(slow, "GET /metrics HTTP/1.1\r\nHost:").unwrap();

    let started = Instant::now();
    // SAFETY: kill(2) on the child's pid.
    assert_eq!(
        unsafe { libc::kill(exporter.child.id() as i32, libc::SIGTERM) },
        0
    );
    let status = loop {
        if let Some(s) = exporter.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(dir.0.join("log")).unwrap()
    );
    eprintln!("exited {took:?} after SIGTERM");
    assert!(
        !socket.exists(),
        "the event stream's socket was left behind"
    );
    // The kernel frees them once the last reference goes: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (p, m) = (ids("prog"), ids("map"));
        let left: Vec<&u64> = ours_progs
            .intersection(&p)
            .chain(ours_maps.intersection(&m))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "programs and maps left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
