//! A real containerd (Debian's containerd and runc, private root, state and socket) runs
//! a pod through CRI, as the kubelet would; the pod's container makes TCP connects, and
//! /metrics shows them under the names and pod label the runtime reports, with the
//! kubelet's log directories empty (so only the `cri` source can name the pod).

mod common;

use std::{
    fs,
    time::{Duration, Instant},
};

use common::{
    cri::{busybox_image, remove_pod, run_pod, Containerd},
    sample, Exporter, TempDir,
};
use enrich::cri::channel;

const METRIC: &str = "ebpf_exporter_tcp_connect_latency_seconds";

#[test]
fn a_containerd_pods_connects_carry_the_names_the_runtime_gives() {
    let test = "a_containerd_pods_connects_carry_the_names_the_runtime_gives";
    if !test_support::privileged(test)
        || !["containerd", "runc", "ctr", "busybox", "tar", "sha256sum"]
            .iter()
            .all(|t| test_support::tool(test, t))
    {
        return;
    }
    let dir = TempDir::new("cri");
    let containerd = Containerd::start(&dir.0.join("containerd"));
    containerd.ctr(&["images", "import", &busybox_image(&dir.0).to_string_lossy()]);

    let empty = dir.0.join("no-logs");
    fs::create_dir_all(&empty).unwrap();
    let socket = containerd.socket.to_string_lossy().to_string();
    let empty = empty.to_string_lossy().to_string();
    let exporter = Exporter::start_with_env(
        &[
            "--kubelet.pod-logs-dir",
            &empty,
            "--kubelet.container-logs-dir",
            &empty,
        ],
        &[
            ("KUBE_EBPF_EXPORTER__KUBERNETES__CRI_SOCKET", &socket),
            (
                "KUBE_EBPF_EXPORTER__KUBERNETES__LABELS__POD_LABELS__APP",
                "app_name",
            ),
        ],
        &dir.0.join("exporter.log"),
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    const N: usize = 7;
    let accept = std::thread::spawn(move || {
        for _ in 0..N {
            drop(listener.accept().unwrap());
        }
    });
    let uid = "5b0c3a57-8f1e-4c2d-9a6b-7e8f9a0b1c2d";
    let script =
        format!("for i in $(seq {N}); do nc 127.0.0.1 {port} </dev/null; done; sleep 1000000");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sandbox = rt.block_on(async {
        let ch = channel(&containerd.socket).await.unwrap();
        run_pod(&ch, "checkout", "cart-7c9d5", uid, "client", &script).await
    });
    accept.join().unwrap();

    let labels = format!(
        "app_container=\"client\",app_name=\"checkout\",app_namespace=\"checkout\",app_pod=\"cart-7c9d5\",node_id=\"{}\",subnet=\"127\"",
        common::node()
    );
    let name = format!("{METRIC}_count");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut page = exporter.metrics();
    while sample(&page, &name, &labels) != Some(N as f64) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        page = exporter.metrics();
    }
    rt.block_on(async {
        let ch = channel(&containerd.socket).await.unwrap();
        remove_pod(&ch, &sandbox).await;
    });
    assert!(
        page.contains("ebpf_exporter_metadata_source_up{source=\"cri\"} 1"),
        "{page}"
    );
    assert_eq!(
        sample(&page, &name, &labels),
        Some(N as f64),
        "want {N} connects under {labels}; exporter log:\n{}\n/metrics:\n{}",
        fs::read_to_string(dir.0.join("exporter.log")).unwrap_or_default(),
        page.lines()
            .filter(|l| l.starts_with(&name))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
