//! The `api` metadata source against an API server replayed from fixtures (no API
//! server binary can be had here): the exporter's real client lists this node's pods,
//! watches from the list's resource version, resumes from a BOOKMARK, gets 410 Gone and
//! lists again. Connects made in each pod's cgroup then carry the names, the pod label
//! and the owning workload the API gave, with the kubelet's log directories empty.
//!
//! tests/fixtures/kube-api holds the responses, shaped as a kube-apiserver sends them:
//! `list-1.json` (rv 1000: web, a Deployment's pod), `watch-1.ndjson` (db-0 ADDED,
//! web DELETED, BOOKMARK rv 1200), `watch-2.ndjson` (ERROR 410 Expired), `list-2.json`
//! (rv 2000: db-0 and node-agent, a DaemonSet's pod).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{connects, wait_for, Cgroups, Exporter, TempDir};

const METRIC: &str = "ebpf_exporter_tcp_connect_latency_seconds_count";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kube-api")
            .join(name),
    )
    .unwrap()
}

/// Replays the fixtures: lists answer `list-1` until the 410 was sent, `list-2` after;
/// watches answer by the resource version they start from.
struct FixtureApi {
    addr: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FixtureApi {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let gone = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, s, g) = (r.clone(), s.clone(), gone.clone());
                std::thread::spawn(move || serve(conn, &r, &s, &g));
            }
        });
        Self {
            addr,
            requests,
            stop,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FixtureApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn serve(mut conn: TcpStream, requests: &Mutex<Vec<String>>, stop: &AtomicBool, gone: &AtomicBool) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let target = line.split(' ').nth(1).unwrap_or_default().to_string();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) <= 2 {
            break;
        }
    }
    requests.lock().unwrap().push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let respond = |conn: &mut TcpStream, status: &str, body: &str| {
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if path != "/api/v1/pods" || param(query, "fieldSelector") != Some("spec.nodeName%3Dnode-a") {
        return respond(&mut conn, "404 Not Found", "{}");
    }
    if !matches!(param(query, "watch"), Some("true" | "1")) {
        let list = if gone.load(Ordering::Relaxed) {
            "list-2.json"
        } else {
            "list-1.json"
        };
        return respond(&mut conn, "200 OK", &fixture(list));
    }
    let body = match param(query, "resourceVersion") {
        Some("1000") => fixture("watch-1.ndjson"),
        Some("1200") => {
            gone.store(true, Ordering::Relaxed);
            fixture("watch-2.ndjson")
        }
        Some("2000") => String::new(),
        other => {
            return respond(
                &mut conn,
                "500 Internal Server Error",
                &format!("{{\"unexpected resourceVersion\":\"{other:?}\"}}"),
            )
        }
    };
    // A watch: events as JSON lines, the body ending when the connection closes.
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}"
    );
    if body.is_empty() {
        // The current watch: stays open, quiet, until the test ends.
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The kubelet's cgroup for a container of pod `uid` (systemd driver, containerd).
fn container_cgroup(cgroups: &mut Cgroups, uid: &str, id: &str) -> std::path::PathBuf {
    cgroups.create(&[
        "kubepods.slice",
        "kubepods-burstable.slice",
        &format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        &format!("cri-containerd-{id}.scope"),
    ])
}

#[test]
fn api_watch_names_pods_through_bookmarks_deletes_and_a_410_relist() {
    let test = "api_watch_names_pods_through_bookmarks_deletes_and_a_410_relist";
    if !test_support::privileged(test) {
        return;
    }
    let api = FixtureApi::start();
    let dir = TempDir::new("kube-api");
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fixture\n  user: {{token: fixture-token}}\ncontexts:\n- name: fixture\n  context: {{cluster: fixture, user: fixture}}\ncurrent-context: fixture\n",
            api.addr
        ),
    )
    .unwrap();
    let empty = dir.0.join("no-logs");
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.to_string_lossy().to_string();
    let kubeconfig = kubeconfig.to_string_lossy().to_string();
    let exporter = Exporter::start_with_env(
        &[
            "--kubelet.pod-logs-dir",
            &empty,
            "--kubelet.container-logs-dir",
            &empty,
        ],
        &[
            ("KUBECONFIG", &kubeconfig),
            ("NODE_NAME", "node-a"),
            ("KUBE_EBPF_EXPORTER__KUBERNETES__SOURCES", "[api]"),
            (
                "KUBE_EBPF_EXPORTER__KUBERNETES__LABELS__WORKLOAD",
                "app_workload",
            ),
            (
                "KUBE_EBPF_EXPORTER__KUBERNETES__LABELS__WORKLOAD_KIND",
                "app_workload_kind",
            ),
            (
                "KUBE_EBPF_EXPORTER__KUBERNETES__LABELS__POD_LABELS__APP",
                "app_name",
            ),
        ],
        &dir.0.join("exporter.log"),
    );

    // The whole sequence, up to the watch after the re-list, before any event.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !api
        .requests()
        .iter()
        .any(|r| r.contains("resourceVersion=2000"))
    {
        assert!(
            Instant::now() < deadline,
            "the watch never resumed after the 410 re-list; requests: {:#?}\nexporter log:\n{}",
            api.requests(),
            std::fs::read_to_string(dir.0.join("exporter.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let page = exporter.metrics();
    assert!(
        page.contains("ebpf_exporter_metadata_source_up{source=\"api\"} 1"),
        "{page}"
    );
    let requests = api.requests();
    let watches: Vec<&str> = requests
        .iter()
        .filter(|r| r.contains("watch=true") || r.contains("watch=1"))
        .filter_map(|r| param(r.split_once('?').unwrap().1, "resourceVersion"))
        .collect();
    assert_eq!(watches, ["1000", "1200", "2000"], "{requests:#?}");
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("watch="))
            .all(|r| r.contains("allowWatchBookmarks=true")),
        "{requests:#?}"
    );

    // The event tap shows the opt-in labels too.
    let (status, mut events) =
        common::open_stream(&exporter.tap_addr, "/events?namespace=monitoring&limit=1");
    assert!(status.contains("200"), "{status}");
    let mut cgroups = Cgroups::new("kube-api");
    let pods = [
        // Deleted in the watch and absent from the re-list: kept for in-flight events.
        (
            "0b9f7c2e-4d1a-4e8b-9c3f-5a6b7c8d9e01",
            "1e",
            3,
            "app_container=\"nginx\",app_name=\"web\",app_namespace=\"shop\",app_pod=\"web-7d4b9c8f6-x2v4q\",app_workload=\"web\",app_workload_kind=\"Deployment\"",
        ),
        // ADDED in the watch.
        (
            "1c0a8d3f-5e2b-4f9c-8d40-6b7c8d9e0f12",
            "2f",
            4,
            "app_container=\"postgres\",app_name=\"db\",app_namespace=\"shop\",app_pod=\"db-0\",app_workload=\"db\",app_workload_kind=\"StatefulSet\"",
        ),
        // Only in the re-list after 410 Gone.
        (
            "2d1b9e4a-6f3c-4a0d-9e51-7c8d9e0f1a23",
            "3a",
            5,
            "app_container=\"agent\",app_name=\"node-agent\",app_namespace=\"monitoring\",app_pod=\"node-agent-h7k2p\",app_workload=\"node-agent\",app_workload_kind=\"DaemonSet\"",
        ),
    ];
    for (uid, id, n, _) in &pods {
        connects(*n, &container_cgroup(&mut cgroups, uid, &id.repeat(32)));
    }
    let mut line = String::new();
    std::io::BufRead::read_line(&mut events, &mut line).unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["pod"], "node-agent-h7k2p", "{line}");
    assert_eq!(
        event["labels"],
        serde_json::json!({"app_name": "node-agent", "app_workload": "node-agent", "app_workload_kind": "DaemonSet"}),
        "{line}"
    );
    for (_, _, n, labels) in &pods {
        let labels = format!("{labels},node_id=\"node-a\",subnet=\"127\"");
        let page = wait_for(&exporter, METRIC, &labels, *n as f64);
        assert_eq!(
            common::sample(&page, METRIC, &labels),
            Some(*n as f64),
            "{labels}\n{}\nexporter log:\n{}",
            page.lines()
                .filter(|l| l.starts_with(METRIC))
                .collect::<Vec<_>>()
                .join("\n"),
            std::fs::read_to_string(dir.0.join("exporter.log")).unwrap_or_default()
        );
    }
}
