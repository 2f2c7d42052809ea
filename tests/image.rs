//! The image as users get it: `deploy/build-image.sh` builds it offline (the release
//! binary on a base of Debian's packages), a private containerd runs it through CRI with
//! what the rendered base DaemonSet says of its container (args, env, securityContext
//! with the runtime's default seccomp profile, read-only root, capabilities, volumes,
//! readiness probe), filled in as the kubelet would (node name, service account, the
//! API server's address), and a second pod's TCP connects appear on /metrics under its
//! namespace, pod and container names, learned from the kubelet's log directories.
//! The one departure: both pods use the node's network, as no CNI plugin exists here.

mod common;

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    cri::{busybox_image, proto, remove_pod, run, sandbox, Containerd, IMAGE as BUSYBOX},
    TempDir,
};
use enrich::cri::channel;
use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const IMAGE: &str = "localhost/kube-ebpf-exporter:test";
const NODE: &str = "image-test-node";

/// The rendered base DaemonSet's pod spec.
fn daemonset_pod() -> Value {
    let (_, docs) = common::kustomize(Path::new(&format!("{ROOT}/deploy/base")));
    let daemonset = docs
        .into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    daemonset["spec"]["template"]["spec"].clone()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// What the kubelet mounts as the service account (automountServiceAccountToken).
fn service_account(dir: &Path) -> PathBuf {
    let sa = dir.join("serviceaccount");
    fs::create_dir_all(&sa).unwrap();
    common::tls::ca(dir, "ca");
    fs::copy(dir.join("ca.pem"), sa.join("ca.crt")).unwrap();
    fs::write(sa.join("token"), "not-a-real-token").unwrap();
    fs::write(sa.join("namespace"), "kube-ebpf-exporter").unwrap();
    sa
}

/// The exporter's container as the kubelet hands it to the runtime: everything from
/// the manifest's container and volumes.
fn exporter_container(
    pod: &Value,
    dir: &Path,
    api_port: u16,
) -> (proto::ContainerConfig, u16, String) {
    use proto::*;
    let c = &pod["containers"][0];
    let mut envs: Vec<KeyValue> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match e["value"].as_str() {
                Some(v) => v.to_string(),
                None => {
                    assert_eq!(
                        e["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
                        "{e:?}"
                    );
                    NODE.to_string()
                }
            };
            KeyValue {
                key: e["name"].as_str().unwrap().into(),
                value,
            }
        })
        .collect();
    // The kubelet's service links: the API server (nothing answers on that port here).
    for (key, value) in [
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_string()),
        ("KUBERNETES_SERVICE_PORT", api_port.to_string()),
    ] {
        envs.push(KeyValue {
            key: key.into(),
            value,
        });
    }
    let volumes = pod["volumes"].as_sequence().unwrap();
    let mut mounts: Vec<Mount> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap();
            let volume = volumes.iter().find(|v| v["name"] == name).unwrap();
            let host_path = match volume["hostPath"]["path"].as_str() {
                Some(p) => {
                    if volume["hostPath"]["type"] == "DirectoryOrCreate" {
                        fs::create_dir_all(p).unwrap();
                    }
                    PathBuf::from(p)
                }
                None => {
                    assert!(volume.get("emptyDir").is_some(), "{volume:?}");
                    let d = dir.join("emptydir").join(name);
                    fs::create_dir_all(&d).unwrap();
                    d
                }
            };
            Mount {
                container_path: m["mountPath"].as_str().unwrap().into(),
                host_path: host_path.to_string_lossy().into(),
                readonly: m["readOnly"].as_bool().unwrap_or(false),
            }
        })
        .collect();
    assert_eq!(pod["automountServiceAccountToken"], true);
    mounts.push(Mount {
        container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        host_path: service_account(dir).to_string_lossy().into(),
        readonly: true,
    });
    let sc = &c["securityContext"];
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let security = LinuxContainerSecurityContext {
        capabilities: Some(Capability {
            add_capabilities: strings(&sc["capabilities"]["add"]),
            drop_capabilities: strings(&sc["capabilities"]["drop"]),
        }),
        namespace_options: Some(NamespaceOption { network: 2, pid: 1 }),
        run_as_user: sc["runAsUser"].as_i64().map(|value| Int64Value { value }),
        readonly_rootfs: sc["readOnlyRootFilesystem"] == true,
        no_new_privs: sc["allowPrivilegeEscalation"] == false,
        seccomp: Some(SecurityProfile { profile_type: 0 }),
    };
    // The readiness probe's port, by name.
    let probe = &c["readinessProbe"]["httpGet"];
    let port = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == probe["port"])
        .unwrap()["containerPort"]
        .as_u64()
        .unwrap() as u16;
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: c["name"].as_str().unwrap().into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
        }),
        args: strings(&c["args"]),
        envs,
        mounts,
        linux: Some(LinuxContainerConfig {
            security_context: Some(security),
        }),
        ..Default::default()
    };
    (config, port, probe["path"].as_str().unwrap().into())
}

fn get(port: u16, path: &str) -> Option<String> {
    common::get(&format!("127.0.0.1:{port}"), path)
}

/// A container's `/proc/<pid>/status` line `<key>:`.
fn status(pid: &str, key: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// The pid of a running container, from containerd.
fn task_pid(containerd: &Containerd, id: &str) -> String {
    let out = containerd.ctr_output(&["tasks", "ls"]);
    out.lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no task {id}: {out}"))
        .to_string()
}

/// Removes what the kubelet would remove with the pod: its log directory and links.
struct PodLogs(Vec<PathBuf>);

impl Drop for PodLogs {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
        }
    }
}

#[test]
fn the_image_runs_as_the_daemonset_says_and_counts_a_pods_connects() {
    let test = "the_image_runs_as_the_daemonset_says_and_counts_a_pods_connects";
    if !test_support::privileged(test)
        || ![
            "buildah",
            "containerd",
            "runc",
            "ctr",
            "kubectl",
            "apt-get",
            "busybox",
            "openssl",
        ]
        .iter()
        .all(|t| test_support::tool(test, t))
    {
        return;
    }
    let dir = TempDir::new("image");
    let archive = dir.0.join("image.oci.tar");
    let built = Command::new(format!("{ROOT}/deploy/build-image.sh"))
        .arg(IMAGE)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "deploy/build-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&built.stdout).trim());

    let containerd = Containerd::start(&dir.0.join("containerd"));
    containerd.ctr(&["images", "import", &busybox_image(&dir.0).to_string_lossy()]);
    containerd.ctr(&["images", "import", &archive.to_string_lossy()]);

    let pod = daemonset_pod();
    let api_port = common::free_port();
    let (config, port, health) = exporter_container(&pod, &dir.0, api_port);
    assert!(
        get(port, "/healthz").is_none(),
        "port {port} is taken before the test"
    );

    // The pod whose connects the exporter must name, as the kubelet lays out its logs.
    let (ns, name, uid, container) = (
        "shop",
        "cart-5f7b9-xk2p4",
        "9c1d2e3f-4a5b-4c6d-8e7f-0a1b2c3d4e5f",
        "client",
    );
    let log_dir = PathBuf::from(format!("/var/log/pods/{ns}_{name}_{uid}"));
    fs::create_dir_all(log_dir.join(container)).unwrap();
    let mut cleanup = PodLogs(vec![log_dir.clone()]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().port();
    const N: usize = 9;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ch = rt.block_on(channel(&containerd.socket)).unwrap();
    let (exporter_pod, exporter) = rt.block_on(run(
        &ch,
        sandbox(
            "kube-ebpf-exporter",
            "kube-ebpf-exporter-x7k2m",
            "1f2e3d4c-5b6a-4978-8a9b-0c1d2e3f4a5b",
        ),
        config,
    ));

    // Ready as the kubelet's readiness probe sees it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, &health).is_none() {
        assert!(
            Instant::now() < deadline,
            "the exporter's container never became ready; containerd: {}",
            containerd.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It holds what the manifest grants and nothing more, under the runtime's seccomp filter.
    let pid = task_pid(&containerd, &exporter);
    assert_eq!(
        status(&pid, "CapBnd"),
        format!("{:016x}", 1u64 << 39 | 1 << 38 | 1 << 2)
    );
    assert_eq!(status(&pid, "NoNewPrivs"), "1");
    assert_eq!(status(&pid, "Seccomp"), "2", "filter mode");

    let script = format!(
        "sleep 1; for i in $(seq {N}); do nc 127.0.0.1 {target} </dev/null; done; sleep 1000000"
    );
    let client = proto::ContainerConfig {
        metadata: Some(enrich::cri::proto::ContainerMetadata {
            name: container.into(),
            attempt: 0,
        }),
        image: Some(proto::ImageSpec {
            image: BUSYBOX.into(),
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script],
        log_path: format!("{container}/0.log"),
        ..Default::default()
    };
    let mut client_pod = sandbox(ns, name, uid);
    client_pod.log_directory = log_dir.to_string_lossy().into();
    let (client_sandbox, client_id) = rt.block_on(run(&ch, client_pod, client));
    // The kubelet's link for the container's log, which names its container id.
    let link = PathBuf::from(format!(
        "/var/log/containers/{name}_{ns}_{container}-{client_id}.log"
    ));
    let _ = std::os::unix::fs::symlink(log_dir.join(container).join("0.log"), &link);
    cleanup.0.push(link);
    for _ in 0..N {
        drop(listener.accept().unwrap());
    }

    let want = [
        format!("app_namespace=\"{ns}\""),
        format!("app_pod=\"{name}\""),
        format!("app_container=\"{container}\""),
    ];
    let count = |page: &str| -> f64 {
        page.lines()
            .filter(|l| {
                l.starts_with("ebpf_exporter_tcp_connect_latency_seconds_count{")
                    && want.iter().all(|w| l.contains(w.as_str()))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut page = get(port, "/metrics").unwrap_or_default();
    while count(&page) != N as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        page = get(port, "/metrics").unwrap_or_default();
    }
    rt.block_on(async {
        remove_pod(&ch, &client_sandbox).await;
        remove_pod(&ch, &exporter_pod).await;
    });
    assert_eq!(
        count(&page),
        N as f64,
        "want {N} connects under {want:?}; /metrics:\n{}",
        page.lines()
            .filter(|l| l.contains("tcp_connect") || l.contains("config") || l.contains("metadata"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every built-in of the default set attached under those privileges.
    assert!(!page.contains("ebpf_exporter_config_failed{"), "{page}");
    assert_eq!(
        page.matches("ebpf_exporter_enabled_configs{").count(),
        7,
        "{page}"
    );
}
