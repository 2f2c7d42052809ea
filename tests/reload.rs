//! Reloading program configs while the exporter runs (`--config.reload`): by SIGHUP,
//! by `POST /-/reload` (`--web.enable-lifecycle`) and by a ConfigMap-style `..data`
//! link swap seen on disk. An unchanged config keeps its exact counters, a changed
//! one takes effect, a removed one's series go, a broken one keeps the old version
//! running and sets the status metric to 0; 100 reloads leave fds, threads, programs
//! and maps where they were; a change to `maps:` entries alone is written into the
//! running map. Needs root and BPF.

#[macro_use]
mod common;

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use common::{compile_example, run_workload, sample, wait_for, Cgroups, Exporter, Pod, TempDir};

const GETPID: &str = "ebpf_exporter_getpid_calls_total";
const OPEN: &str = "ebpf_exporter_open_errors_total";
const FORKS: &str = "ebpf_exporter_process_forks_total";

/// Sends `signal` to the exporter.
fn signal(e: &Exporter, signal: i32) {
    // SAFETY: kill on our own child's pid.
    assert_eq!(unsafe { libc::kill(e.child.id() as i32, signal) }, 0);
}

/// `POST /-/reload`: status code and body.
fn post_reload(addr: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /-/reload HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split(' ').nth(1).unwrap().parse().unwrap();
    (code, resp.split_once("\r\n\r\n").unwrap().1.to_string())
}

/// Waits until the page satisfies `ok`; returns it.
fn wait_page(e: &Exporter, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = e.metrics();
        if ok(&page) {
            return page;
        }
        assert!(Instant::now() < deadline, "{what}: {page}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rewrites the help text of every metric in `yaml`, so the config changes.
fn change_help(yaml: &Path, help: &str) {
    let text = std::fs::read_to_string(yaml).unwrap();
    let changed: String = text
        .lines()
        .map(|l| match l.split_once("help:") {
            Some((indent, _)) => format!("{indent}help: {help}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    std::fs::write(yaml, changed).unwrap();
}

fn reload_ok(page: &str) -> Option<f64> {
    sample(page, "ebpf_exporter_config_last_reload_successful", "")
}

#[test]
fn sighup_keeps_unchanged_counters_replaces_changed_and_survives_broken() {
    privileged!("sighup_keeps_unchanged_counters_replaces_changed_and_survives_broken");
    let pod = Pod::new("shop", "reload-7c9d8-kq2xz", "app");
    let dir = TempDir::new("reload-hup");
    let mut cgroups = Cgroups::new("reload-hup");
    let cg = pod.cgroup(&mut cgroups);
    for example in ["getpid-calls", "open-errors", "process-forks"] {
        compile_example(example, &dir.0);
    }
    // process-forks waits outside until the reload adds it.
    let spare = dir.0.join("spare");
    std::fs::create_dir(&spare).unwrap();
    std::fs::rename(
        dir.0.join("process-forks.yaml"),
        spare.join("process-forks.yaml"),
    )
    .unwrap();
    let mut args = vec![
        "--config.dir".to_string(),
        dir.0.display().to_string(),
        "--config.reload".into(),
        "--config.reload-interval".into(),
        "600".into(),
    ];
    args.extend(pod.logs(&dir.0));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    let getpid = pod.series(&[]);
    let enoent = pod.series(&[("errno", "ENOENT")]);

    run_workload(Some(&cg), &["getpid", "100"]);
    run_workload(Some(&cg), &["open-missing", "10"]);
    wait_for(&exporter, GETPID, &getpid, 100.0);
    wait_for(&exporter, OPEN, &enoent, 10.0);

    // open-errors changes, process-forks comes, getpid-calls stays as it is.
    change_help(&dir.0.join("open-errors.yaml"), "Failed opens, version 2");
    std::fs::rename(
        spare.join("process-forks.yaml"),
        dir.0.join("process-forks.yaml"),
    )
    .unwrap();
    signal(&exporter, libc::SIGHUP);
    // The new version's family shows once it has a series: failed opens outside pods.
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let _ = std::fs::File::open("/nonexistent/kebpf-reload-test");
        let page = exporter.metrics();
        if page.contains("# HELP ebpf_exporter_open_errors_total Failed opens, version 2") {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "reloaded with the new help: {page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sample(&page, GETPID, &getpid), Some(100.0), "{page}");
    // The replaced counter starts again; the unchanged one goes on from 100.
    assert_eq!(sample(&page, OPEN, &enoent), None, "{page}");
    assert_eq!(reload_ok(&page), Some(1.0));
    run_workload(Some(&cg), &["getpid", "50"]);
    run_workload(Some(&cg), &["open-missing", "5"]);
    run_workload(Some(&cg), &["fork", "3"]);
    wait_for(&exporter, GETPID, &getpid, 150.0);
    wait_for(&exporter, OPEN, &enoent, 5.0);
    let page = wait_page(&exporter, "forks counted by the added config", |p| {
        common::samples(p, FORKS)
            .iter()
            .any(|(l, v)| l.contains(&Cgroups::display(&cg)) && *v >= 3.0)
    });
    assert!(page.contains("ebpf_exporter_enabled_configs{name=\"process-forks\"} 1"));

    // A broken file: the running version goes on counting, the status says so.
    std::fs::write(dir.0.join("open-errors.yaml"), "metrics: [not, a, map\n").unwrap();
    signal(&exporter, libc::SIGHUP);
    wait_page(&exporter, "reload reported failed", |p| {
        reload_ok(p) == Some(0.0)
    });
    run_workload(Some(&cg), &["open-missing", "4"]);
    let page = wait_for(&exporter, OPEN, &enoent, 9.0);
    assert_eq!(sample(&page, GETPID, &getpid), Some(150.0), "{page}");
    let log = std::fs::read_to_string(dir.0.join("exporter.log")).unwrap();
    assert!(log.contains("open-errors.yaml"), "{log}");

    // Removed: its series go.
    std::fs::remove_file(dir.0.join("open-errors.yaml")).unwrap();
    signal(&exporter, libc::SIGHUP);
    let page = wait_page(&exporter, "open-errors removed", |p| {
        !p.contains(&format!("# TYPE {OPEN}")) && reload_ok(p) == Some(1.0)
    });
    assert!(
        page.contains("ebpf_exporter_enabled_configs{name=\"open-errors\"} 0"),
        "{page}"
    );
    assert_eq!(sample(&page, GETPID, &getpid), Some(150.0), "{page}");
}

/// What process `pid` holds: open fds, threads, and BPF programs, maps and links (by
/// the ids in its fds' fdinfo; other tests load programs meanwhile, so the kernel's
/// totals would not do).
fn holdings(pid: u32) -> (usize, usize, [BTreeSet<u64>; 3]) {
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .unwrap()
            .count()
    };
    let mut ids: [BTreeSet<u64>; 3] = Default::default();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        for line in info.lines() {
            for (i, key) in ["prog_id:", "map_id:", "link_id:"].iter().enumerate() {
                if let Some(id) = line.strip_prefix(key) {
                    ids[i].insert(id.trim().parse().unwrap());
                }
            }
        }
    }
    (count("fd"), count("task"), ids)
}

#[test]
fn reload_endpoint_and_a_hundred_reloads_leak_nothing() {
    privileged!("reload_endpoint_and_a_hundred_reloads_leak_nothing");
    let dir = TempDir::new("reload-endpoint");
    for example in ["getpid-calls", "open-errors"] {
        compile_example(example, &dir.0);
    }
    let args = [
        "--config.dir",
        &dir.0.display().to_string(),
        "--web.enable-lifecycle",
        "--config.reload-interval",
        "600",
    ];
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    // Without changes a reload changes nothing.
    let (code, body) = post_reload(&exporter.addr);
    assert_eq!((code, body.contains("2 unchanged")), (200, true), "{body}");
    let yaml = dir.0.join("open-errors.yaml");
    let cycle = |i: usize| {
        change_help(&yaml, &format!("Failed opens, version {i}"));
        let (code, body) = post_reload(&exporter.addr);
        assert_eq!(code, 200, "reload {i}: {body}");
        assert!(
            body.contains("replaced [\"open-errors\"]"),
            "reload {i}: {body}"
        );
    };
    cycle(0);
    let pid = exporter.child.id();
    let before = holdings(pid);
    for i in 1..=100 {
        cycle(i);
    }
    // Threads of tokio's blocking pool (reloads and scrapes run there) end after 10 s
    // idle, and a scrape's connection may have been open before: the counts may fall
    // below where they were, a leak (one per reload) would stay above.
    let settled = |h: &(usize, usize, _)| h.0 <= before.0 && h.1 <= before.1;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = holdings(pid);
    while !settled(&after) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        after = holdings(pid);
    }
    run_workload(None, &["open-missing", "1"]);
    wait_page(&exporter, "the last version counting", |p| {
        p.contains("# HELP ebpf_exporter_open_errors_total Failed opens, version 100")
    });
    assert!(
        settled(&after),
        "fds and threads after 100 reloads: {:?}, before {:?}",
        (after.0, after.1),
        (before.0, before.1)
    );
    // The replaced versions' programs, maps and links are gone; the new version's have
    // new ids, the unchanged config's the same.
    for (what, (a, b)) in ["programs", "maps", "links"]
        .iter()
        .zip(after.2.iter().zip(&before.2))
    {
        assert_eq!(a.len(), b.len(), "{what} after 100 reloads: {a:?} vs {b:?}");
    }
    assert!(!before.2[0].is_empty() && before.2[0] != after.2[0]);

    // A broken config answers 500, keeps the old version.
    std::fs::write(&yaml, "rings: 3\n").unwrap();
    let (code, body) = post_reload(&exporter.addr);
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("open-errors") && body.contains("open-errors.yaml"),
        "{body}"
    );
    let page = exporter.metrics();
    assert!(page.contains("Failed opens, version 100"), "{page}");
    assert_eq!(reload_ok(&page), Some(0.0));
}

#[test]
fn lifecycle_endpoint_is_off_by_default() {
    privileged!("lifecycle_endpoint_is_off_by_default");
    let dir = TempDir::new("reload-off");
    compile_example("getpid-calls", &dir.0);
    let args = ["--config.dir", &dir.0.display().to_string()];
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    let (code, _) = post_reload(&exporter.addr);
    assert!(code == 404 || code == 405, "{code}");
    // SIGHUP without --config.reload is logged, not fatal.
    signal(&exporter, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(common::get(&exporter.addr, "/healthz").is_some());
}

#[test]
fn a_configmap_update_is_seen_on_disk() {
    privileged!("a_configmap_update_is_seen_on_disk");
    let dir = TempDir::new("reload-configmap");
    // What the kubelet makes of a ConfigMap: a timestamped directory, `..data` linking
    // to it, and each key a link through `..data`.
    let v1 = dir.0.join("..2026_12_01_v1");
    std::fs::create_dir(&v1).unwrap();
    compile_example("getpid-calls", &v1);
    std::os::unix::fs::symlink("..2026_12_01_v1", dir.0.join("..data")).unwrap();
    for f in [
        "getpid-calls.yaml",
        "getpid-calls.bpf.o",
        "getpid-calls.perf.bpf.o",
    ] {
        std::os::unix::fs::symlink(format!("..data/{f}"), dir.0.join(f)).unwrap();
    }
    let args = [
        "--config.dir",
        &dir.0.display().to_string(),
        "--config.reload",
        "--config.reload-interval",
        "600",
    ];
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    // The update: a new directory, then an atomic rename of a new link over `..data`.
    let v2 = dir.0.join("..2026_12_01_v2");
    std::fs::create_dir(&v2).unwrap();
    for f in [
        "getpid-calls.yaml",
        "getpid-calls.bpf.o",
        "getpid-calls.perf.bpf.o",
    ] {
        std::fs::copy(v1.join(f), v2.join(f)).unwrap();
    }
    change_help(
        &v2.join("getpid-calls.yaml"),
        "getpid calls, from the new ConfigMap",
    );
    std::os::unix::fs::symlink("..2026_12_01_v2", dir.0.join("..data_tmp")).unwrap();
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    wait_page(
        &exporter,
        "the new ConfigMap in effect without a signal",
        |p| {
            p.contains(
                "# HELP ebpf_exporter_getpid_calls_total getpid calls, from the new ConfigMap",
            ) && reload_ok(p) == Some(1.0)
        },
    );
}

/// Runs the workload under process name `comm` (its comm): `n` getppid() calls.
fn getppid_as(dir: &Path, comm: &str, n: u32) {
    let named = dir.join(comm);
    if !named.exists() {
        std::os::unix::fs::symlink(common::workload(), &named).unwrap();
    }
    let status = std::process::Command::new(&named)
        .args(["-", "getppid", &n.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn maps_entries_count_exactly_and_a_reload_rewrites_them_in_place() {
    privileged!("maps_entries_count_exactly_and_a_reload_rewrites_them_in_place");
    let dir = TempDir::new("reload-maps");
    compile_example("comm-matches", &dir.0);
    let args = [
        "--config.dir",
        &dir.0.display().to_string(),
        "--config.strict",
        "--web.enable-lifecycle",
        "--config.reload-interval",
        "600",
    ];
    let exporter = Exporter::start(&args, &dir.0.join("exporter.log"));
    let name = "ebpf_exporter_comm_matches_total";
    let series = |comm: &str, group: u32| format!("comm=\"{comm}\",group=\"{group}\"");
    getppid_as(&dir.0, "kebpf-match-a", 5);
    getppid_as(&dir.0, "kebpf-match-b", 7);
    getppid_as(&dir.0, "kebpf-match-c", 11);
    let page = wait_for(&exporter, name, &series("kebpf-match-b", 2), 7.0);
    assert_eq!(
        sample(&page, name, &series("kebpf-match-a", 1)),
        Some(5.0),
        "{page}"
    );
    assert_eq!(
        common::samples(&page, name).len(),
        2,
        "only table names count: {page}"
    );

    // b out, c in (group 3); a untouched, and the program never reloaded: a's count
    // goes on from 5.
    let yaml = dir.0.join("comm-matches.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let text = text.replace("    kebpf-match-b: 2\n", "    kebpf-match-c: 3\n");
    std::fs::write(&yaml, text).unwrap();
    let (code, body) = post_reload(&exporter.addr);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("entries rewritten [\"comm-matches\"]"),
        "{body}"
    );
    getppid_as(&dir.0, "kebpf-match-a", 2);
    getppid_as(&dir.0, "kebpf-match-b", 3);
    getppid_as(&dir.0, "kebpf-match-c", 4);
    let page = wait_for(&exporter, name, &series("kebpf-match-c", 3), 4.0);
    assert_eq!(
        sample(&page, name, &series("kebpf-match-a", 1)),
        Some(7.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, name, &series("kebpf-match-b", 2)),
        Some(7.0),
        "{page}"
    );

    // A name too long for the key is refused with the map, the key and the reason,
    // and the table stays as it was.
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        text.replace("kebpf-match-a:", "kebpf-match-a-far-too-long:"),
    )
    .unwrap();
    let (_, body) = post_reload(&exporter.addr);
    assert!(
        body.contains("maps.matched_comms[\"kebpf-match-a-far-too-long\"]: 26 bytes, too long for the map's char[16] key"),
        "{body}"
    );
    getppid_as(&dir.0, "kebpf-match-a", 1);
    let page = wait_for(&exporter, name, &series("kebpf-match-a", 1), 8.0);
    assert_eq!(
        sample(&page, name, &series("kebpf-match-a", 1)),
        Some(8.0),
        "{page}"
    );

    // Without a `maps:` section the table empties: nothing matches any more (a table
    // metric is counted in the kernel, so a scrape right after the calls sees them).
    let text = std::fs::read_to_string(&yaml).unwrap();
    let (head, rest) = text.split_once("maps:\n").unwrap();
    let metrics = &rest[rest.find("metrics:").unwrap()..];
    std::fs::write(&yaml, format!("{head}{metrics}")).unwrap();
    let (code, body) = post_reload(&exporter.addr);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("entries rewritten [\"comm-matches\"]"),
        "{body}"
    );
    getppid_as(&dir.0, "kebpf-match-a", 3);
    getppid_as(&dir.0, "kebpf-match-c", 3);
    let page = exporter.metrics();
    assert_eq!(
        sample(&page, name, &series("kebpf-match-a", 1)),
        Some(8.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, name, &series("kebpf-match-c", 3)),
        Some(4.0),
        "{page}"
    );
}
