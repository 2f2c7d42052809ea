//! A containerd of the test's own, driven through CRI as a kubelet drives it: pods
//! from a locally built busybox image (no registry can be reached here).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use enrich::cri::call;
use tonic::transport::Channel;

/// The busybox image's name (also the pods' sandbox image).
pub const IMAGE: &str = "localhost/kebpf-busybox:1";

/// The CRI messages the test sends to run a pod (a kubelet's subset).
pub mod proto {
    use std::collections::HashMap;

    pub use enrich::cri::proto::{ContainerMetadata, PodSandboxMetadata};

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamespaceOption {
        /// 2: the node's network (no CNI here).
        #[prost(int32, tag = "1")]
        pub network: i32,
        /// 1: the container's own (what the kubelet sets for v1 pods).
        #[prost(int32, tag = "2")]
        pub pid: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxSandboxSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub namespace_options: Option<NamespaceOption>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxPodSandboxConfig {
        #[prost(string, tag = "1")]
        pub cgroup_parent: String,
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxSandboxSecurityContext>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<PodSandboxMetadata>,
        /// `/var/log/pods/<namespace>_<name>_<uid>`, as the kubelet sets it.
        #[prost(string, tag = "3")]
        pub log_directory: String,
        #[prost(map = "string, string", tag = "6")]
        pub labels: HashMap<String, String>,
        #[prost(message, optional, tag = "8")]
        pub linux: Option<LinuxPodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RunPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub config: Option<PodSandboxConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxId {
        #[prost(string, tag = "1")]
        pub id: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerConfig {
        #[prost(message, optional, tag = "1")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(message, optional, tag = "2")]
        pub image: Option<ImageSpec>,
        #[prost(string, repeated, tag = "3")]
        pub command: Vec<String>,
        #[prost(string, repeated, tag = "4")]
        pub args: Vec<String>,
        #[prost(message, repeated, tag = "6")]
        pub envs: Vec<KeyValue>,
        #[prost(message, repeated, tag = "7")]
        pub mounts: Vec<Mount>,
        /// Relative to the sandbox's log directory: `<container>/<attempt>.log`.
        #[prost(string, tag = "11")]
        pub log_path: String,
        #[prost(message, optional, tag = "15")]
        pub linux: Option<LinuxContainerConfig>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mount {
        #[prost(string, tag = "1")]
        pub container_path: String,
        #[prost(string, tag = "2")]
        pub host_path: String,
        #[prost(bool, tag = "3")]
        pub readonly: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerConfig {
        #[prost(message, optional, tag = "2")]
        pub security_context: Option<LinuxContainerSecurityContext>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Capability {
        #[prost(string, repeated, tag = "1")]
        pub add_capabilities: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub drop_capabilities: Vec<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Int64Value {
        #[prost(int64, tag = "1")]
        pub value: i64,
    }
    /// `profile_type` 0: the runtime's default profile.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SecurityProfile {
        #[prost(int32, tag = "1")]
        pub profile_type: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LinuxContainerSecurityContext {
        #[prost(message, optional, tag = "1")]
        pub capabilities: Option<Capability>,
        #[prost(message, optional, tag = "3")]
        pub namespace_options: Option<NamespaceOption>,
        #[prost(message, optional, tag = "5")]
        pub run_as_user: Option<Int64Value>,
        #[prost(bool, tag = "7")]
        pub readonly_rootfs: bool,
        #[prost(bool, tag = "11")]
        pub no_new_privs: bool,
        #[prost(message, optional, tag = "15")]
        pub seccomp: Option<SecurityProfile>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateContainerRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "2")]
        pub config: Option<ContainerConfig>,
        #[prost(message, optional, tag = "3")]
        pub sandbox_config: Option<PodSandboxConfig>,
    }
    /// `CreateContainerResponse`, `StartContainerRequest`: the container id, field 1.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerId {
        #[prost(string, tag = "1")]
        pub id: String,
    }
}

/// A containerd of the test's own, stopped (with its pods) on drop.
pub struct Containerd {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
}

impl Containerd {
    pub fn start(dir: &Path) -> Self {
        fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  # Root on these machines lacks CAP_SYS_RESOURCE, so the pause container's
  # oom_score_adj of -998 cannot be set (runc: "can't get final child's PID from
  # pipe: EOF"); clamp it to containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let child = Command::new("containerd")
            .args(["--config", &dir.join("config.toml").to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .unwrap();
        let c = Self {
            child,
            dir: dir.to_path_buf(),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` in the k8s.io namespace; its output.
    pub fn ctr_output(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .args(["--address", &self.socket.to_string_lossy(), "-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ctr(&self, args: &[&str]) {
        let out = Command::new("ctr")
            .args(["--address", &self.socket.to_string_lossy(), "-n", "k8s.io"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("containerd log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
        // Stops and removes every pod's shim and mounts before containerd goes.
        let _ = Command::new("ctr")
            .args(["--address", &self.socket.to_string_lossy(), "-n", "k8s.io"])
            .args(["tasks", "ls", "-q"])
            .output()
            .map(|o| {
                for id in String::from_utf8_lossy(&o.stdout).lines() {
                    let _ = Command::new("ctr")
                        .args(["--address", &self.socket.to_string_lossy(), "-n", "k8s.io"])
                        .args(["tasks", "kill", "-s", "SIGKILL", id])
                        .output();
                }
            });
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // Whatever is still mounted below our root (rootfs, shm) goes before the files.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let root = self.dir.display().to_string();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&root))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

/// Writes `data` as a blob of the OCI layout at `layout`; returns (digest, size).
fn blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let tmp = layout.join("blob.tmp");
    fs::write(&tmp, data).unwrap();
    let digest = sha256(&tmp);
    fs::rename(&tmp, layout.join("blobs/sha256").join(&digest)).unwrap();
    (format!("sha256:{digest}"), data.len())
}

/// An OCI image layout tarball holding Debian's static busybox, tagged [`IMAGE`]: no
/// registry can be reached here.
pub fn busybox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "nc", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let layout = dir.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let layer = dir.join("layer.tar");
    let ok = Command::new("tar")
        .args([
            "-C",
            &rootfs.to_string_lossy(),
            "-cf",
            &layer.to_string_lossy(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let (layer_digest, layer_size) = blob(&layout, &fs::read(&layer).unwrap());
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "1000000"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": IMAGE},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let image = dir.join("image.tar");
    let ok = Command::new("tar")
        .args([
            "-C",
            &layout.to_string_lossy(),
            "-cf",
            &image.to_string_lossy(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    image
}

pub async fn cri<Req, Resp>(ch: &Channel, method: &'static str, req: Req) -> Resp
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    call(ch, method, req)
        .await
        .unwrap_or_else(|e| panic!("CRI {method}: {e}"))
}

/// A pod `namespace/name` as the kubelet configures it here: host network (no CNI) and
/// a kubelet-style cgroup parent (no log directory unless the caller sets one).
pub fn sandbox(namespace: &str, name: &str, uid: &str) -> proto::PodSandboxConfig {
    use proto::*;
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        log_directory: String::new(),
        labels: HashMap::from([("app".to_string(), "checkout".to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption { network: 2, pid: 0 }),
            }),
        }),
    }
}

/// Runs `sandbox` with one container; returns (sandbox id, container id).
pub async fn run(
    ch: &Channel,
    sandbox: proto::PodSandboxConfig,
    container: proto::ContainerConfig,
) -> (String, String) {
    use proto::*;
    let id: PodSandboxId = cri(
        ch,
        "/runtime.v1.RuntimeService/RunPodSandbox",
        RunPodSandboxRequest {
            config: Some(sandbox.clone()),
        },
    )
    .await;
    let created: ContainerId = cri(
        ch,
        "/runtime.v1.RuntimeService/CreateContainer",
        CreateContainerRequest {
            pod_sandbox_id: id.id.clone(),
            config: Some(container),
            sandbox_config: Some(sandbox),
        },
    )
    .await;
    let _: Empty = cri(
        ch,
        "/runtime.v1.RuntimeService/StartContainer",
        created.clone(),
    )
    .await;
    (id.id, created.id)
}

/// Runs pod `namespace/name` with one busybox container running `script`; returns
/// the sandbox id.
pub async fn run_pod(
    ch: &Channel,
    namespace: &str,
    name: &str,
    uid: &str,
    container: &str,
    script: &str,
) -> String {
    use proto::*;
    let config = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: container.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
        }),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    run(ch, sandbox(namespace, name, uid), config).await.0
}

/// Stops and removes a pod sandbox (and its containers).
pub async fn remove_pod(ch: &Channel, id: &str) {
    for path in [
        "/runtime.v1.RuntimeService/StopPodSandbox",
        "/runtime.v1.RuntimeService/RemovePodSandbox",
    ] {
        let _: proto::Empty = cri(ch, path, proto::PodSandboxId { id: id.into() }).await;
    }
}
