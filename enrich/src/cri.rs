//! Pod metadata from the container runtime (containerd, CRI-O) over its CRI socket:
//! pod sandboxes and containers are listed over gRPC into an index that lookups read;
//! a lookup that misses wakes the lister, so a pod that just started is found within
//! one round trip while its first events wait (see [`crate::Cache::await_metadata`]).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use parking_lot::{Mutex, RwLock};
use tokio::{net::UnixStream, sync::Notify};
use tonic::{
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint, Uri},
};

use crate::{background::Background, EnrichError, PodMeta, PodSource};

/// Everything is listed again this often even when no lookup missed, to forget pods.
const RESYNC: Duration = Duration::from_secs(10);
/// At most one listing per this interval, however many lookups miss.
const MIN_GAP: Duration = Duration::from_millis(50);
/// Pods and containers gone from the runtime stay this long for events in flight.
const KEEP: Duration = Duration::from_secs(300);
/// Bound on connecting and on each call.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The subset of the CRI `runtime.v1` messages the exporter reads (field numbers as in
/// k8s.io/cri-api's api.proto; unknown fields are skipped by the decoder).
pub mod proto {
    use std::collections::HashMap;

    /// `VersionRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionRequest {
        /// The kubelet's API version.
        #[prost(string, tag = "1")]
        pub version: String,
    }
    /// `VersionResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        /// API version.
        #[prost(string, tag = "1")]
        pub version: String,
        /// e.g. `containerd`.
        #[prost(string, tag = "2")]
        pub runtime_name: String,
        /// e.g. `1.6.20`.
        #[prost(string, tag = "3")]
        pub runtime_version: String,
        /// e.g. `v1`.
        #[prost(string, tag = "4")]
        pub runtime_api_version: String,
    }
    /// `PodSandboxMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        /// Pod name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Pod uid.
        #[prost(string, tag = "2")]
        pub uid: String,
        /// Pod namespace.
        #[prost(string, tag = "3")]
        pub namespace: String,
        /// Attempt.
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }
    /// `ListPodSandboxRequest` (no filter: every sandbox).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {}
    /// `PodSandbox`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        /// Sandbox id: the pause container's id.
        #[prost(string, tag = "1")]
        pub id: String,
        /// Pod metadata.
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        /// The pod's labels (plus the kubelet's `io.kubernetes.pod.*`).
        #[prost(map = "string, string", tag = "5")]
        pub labels: HashMap<String, String>,
    }
    /// `ListPodSandboxResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        /// Sandboxes.
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }
    /// `ContainerMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerMetadata {
        /// Container name in the pod spec.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Attempt.
        #[prost(uint32, tag = "2")]
        pub attempt: u32,
    }
    /// `ListContainersRequest` (no filter: every container).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersRequest {}
    /// `Container`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        /// Container id.
        #[prost(string, tag = "1")]
        pub id: String,
        /// Its sandbox.
        #[prost(string, tag = "2")]
        pub pod_sandbox_id: String,
        /// Its name.
        #[prost(message, optional, tag = "3")]
        pub metadata: Option<ContainerMetadata>,
    }
    /// `ListContainersResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersResponse {
        /// Containers.
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }
}

/// Why the CRI socket gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect: {}", ingest::chain(.0))]
    Connect(#[source] tonic::transport::Error),
    #[error("{method}: {source}")]
    NotReady {
        method: &'static str,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{method}: no answer in {TIMEOUT:?}")]
    Timeout { method: &'static str },
    #[error("{method}: {}", .source.message())]
    Status {
        method: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("cannot start its thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the connecting thread panicked")]
    Panicked,
}

/// A unary call on the CRI runtime service (`method`: `/runtime.v1.RuntimeService/...`).
pub async fn call<Req, Resp>(
    channel: &Channel,
    method: &'static str,
    req: Req,
) -> Result<Resp, CriError>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|source| CriError::NotReady { method, source })?;
    let path = PathAndQuery::from_static(method);
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    let resp = tokio::time::timeout(TIMEOUT, grpc.unary(tonic::Request::new(req), path, codec))
        .await
        .map_err(|_| CriError::Timeout { method })?
        .map_err(|source| CriError::Status { method, source })?;
    Ok(resp.into_inner())
}

struct Pod {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    seen: Instant,
}

#[derive(Default)]
struct Index {
    /// pod uid → pod
    pods: HashMap<String, Pod>,
    /// container id → (pod uid, container name; "" for the sandbox), last seen
    containers: HashMap<String, (String, String, Instant)>,
}

impl Index {
    fn update(
        &mut self,
        sandboxes: proto::ListPodSandboxResponse,
        containers: proto::ListContainersResponse,
    ) {
        let now = Instant::now();
        let mut sandbox_pod = HashMap::new();
        for s in sandboxes.items {
            let Some(m) = s.metadata else { continue };
            sandbox_pod.insert(s.id.clone(), m.uid.clone());
            self.containers
                .insert(s.id, (m.uid.clone(), String::new(), now));
            // Kubelet's own keys are not the pod's labels.
            let labels = s
                .labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with("io.kubernetes."))
                .collect();
            self.pods.insert(
                m.uid,
                Pod {
                    namespace: m.namespace,
                    name: m.name,
                    labels,
                    seen: now,
                },
            );
        }
        for c in containers.containers {
            let (Some(uid), Some(m)) = (sandbox_pod.get(&c.pod_sandbox_id), c.metadata) else {
                continue;
            };
            self.containers.insert(c.id, (uid.clone(), m.name, now));
        }
        self.pods.retain(|_, p| now.duration_since(p.seen) < KEEP);
        self.containers
            .retain(|_, c| now.duration_since(c.2) < KEEP);
    }
}

/// The handling of one CRI listing (`ListPodSandbox` and `ListContainers` responses
/// as they arrive on the wire) into a fresh index; returns the containers resolved
/// to a pod. The fuzz harnesses drive it with arbitrary bytes.
///
/// # Errors
/// Bytes that are not the responses' protobuf encoding.
pub fn index_listing(sandboxes: &[u8], containers: &[u8]) -> Result<usize, prost::DecodeError> {
    use prost::Message;
    let mut index = Index::default();
    index.update(
        proto::ListPodSandboxResponse::decode(sandboxes)?,
        proto::ListContainersResponse::decode(containers)?,
    );
    Ok(index
        .containers
        .values()
        .filter(|(uid, _, _)| index.pods.contains_key(uid))
        .count())
}

struct Shared {
    index: RwLock<Index>,
    wake: Notify,
    /// Whether the last listing worked.
    up: AtomicBool,
}

/// The CRI metadata source.
pub struct Cri {
    socket: PathBuf,
    shared: Arc<Shared>,
    /// The connection, until [`PodSource::start`] hands it to the lister's thread.
    idle: Mutex<Option<(Background, Channel)>>,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cri").field("socket", &self.socket).finish()
    }
}

/// Lists sandboxes and containers and folds them into the index.
async fn refresh(channel: &Channel, shared: &Shared) -> Result<(), CriError> {
    let sandboxes = call(
        channel,
        "/runtime.v1.RuntimeService/ListPodSandbox",
        proto::ListPodSandboxRequest {},
    )
    .await?;
    let containers = call(
        channel,
        "/runtime.v1.RuntimeService/ListContainers",
        proto::ListContainersRequest {},
    )
    .await?;
    shared.index.write().update(sandboxes, containers);
    Ok(())
}

impl Cri {
    /// Connects to the runtime's CRI socket (`/run/containerd/containerd.sock`,
    /// `/var/run/crio/crio.sock`) and lists what runs now, on the calling thread (no
    /// thread is started before [`PodSource::start`]). Fails when the socket does not
    /// answer CRI calls.
    pub fn connect(socket: &Path) -> Result<Self, EnrichError> {
        let err = |source| EnrichError::Cri {
            socket: socket.display().to_string(),
            source,
        };
        let shared = Arc::new(Shared {
            index: RwLock::default(),
            wake: Notify::new(),
            up: AtomicBool::new(true),
        });
        let rt = Background::new().map_err(|e| err(CriError::Thread(e)))?;
        let connect = async move {
            let channel = channel(socket).await?;
            let v: proto::VersionResponse = call(
                &channel,
                "/runtime.v1.RuntimeService/Version",
                proto::VersionRequest {
                    version: "v1".into(),
                },
            )
            .await?;
            Ok::<_, CriError>((channel, v))
        };
        let (channel, version) = rt
            .block_on(async {
                let (channel, version) = connect.await?;
                refresh(&channel, &shared).await?;
                Ok::<_, CriError>((channel, version))
            })
            .unwrap_or(Err(CriError::Panicked))
            .map_err(err)?;
        tracing::info!(
            socket = %socket.display(),
            runtime = %version.runtime_name,
            version = %version.runtime_version,
            pods = shared.index.read().pods.len(),
            "pod metadata from the container runtime (CRI)"
        );
        Ok(Self {
            socket: socket.to_path_buf(),
            shared,
            idle: Mutex::new(Some((rt, channel))),
        })
    }
}

/// A gRPC channel over the unix socket `socket`.
pub async fn channel(socket: &Path) -> Result<Channel, CriError> {
    let path = socket.to_path_buf();
    // The authority is never used: every connection goes to the socket.
    Endpoint::from_static("http://cri.sock")
        .connect_timeout(TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(CriError::Connect)
}

impl PodSource for Cri {
    /// Keeps listing from a thread of its own: at once when a lookup missed, else every
    /// `RESYNC`.
    fn start(&self) {
        let Some((rt, channel)) = self.idle.lock().take() else {
            return;
        };
        let s = self.shared.clone();
        let name = self.socket.display().to_string();
        rt.run("cri", async move {
            let mut failing = false;
            loop {
                let _ = tokio::time::timeout(RESYNC, s.wake.notified()).await;
                let listed = refresh(&channel, &s).await;
                s.up.store(listed.is_ok(), Relaxed);
                match listed {
                    Ok(()) if failing => {
                        tracing::info!(socket = %name, "CRI answers again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        tracing::warn!(socket = %name, "CRI listing failed (other sources still answer): {e}");
                        failing = true;
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(MIN_GAP).await;
            }
        });
    }

    fn health(&self) -> Vec<(&'static str, bool)> {
        vec![("cri", self.shared.up.load(Relaxed))]
    }

    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        let index = self.shared.index.read();
        let container = container_id.and_then(|id| {
            index
                .containers
                .get(id)
                .filter(|c| c.0 == pod_uid)
                .map(|c| c.1.clone())
        });
        let pod = index.pods.get(pod_uid);
        if pod.is_none() || (container_id.is_some() && container.is_none()) {
            // Not listed yet: list again now; the caller asks again shortly.
            self.shared.wake.notify_one();
        }
        let pod = pod?;
        Some(PodMeta {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container,
            labels: pod.labels.clone(),
            workload: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{proto::*, *};

    #[test]
    fn index_keeps_gone_pods_for_a_while_and_drops_kubelet_labels() {
        let mut index = Index::default();
        let sandbox = PodSandbox {
            id: "s1".into(),
            metadata: Some(PodSandboxMetadata {
                name: "web-1".into(),
                uid: "u1".into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            labels: [
                ("app".to_string(), "web".to_string()),
                ("io.kubernetes.pod.name".to_string(), "web-1".to_string()),
            ]
            .into(),
        };
        let container = proto::Container {
            id: "c1".into(),
            pod_sandbox_id: "s1".into(),
            metadata: Some(ContainerMetadata {
                name: "nginx".into(),
                attempt: 0,
            }),
        };
        let orphan = proto::Container {
            id: "c2".into(),
            pod_sandbox_id: "unknown".into(),
            metadata: None,
        };
        index.update(
            ListPodSandboxResponse {
                items: vec![sandbox],
            },
            ListContainersResponse {
                containers: vec![container, orphan],
            },
        );
        assert_eq!(index.containers["c1"].1, "nginx");
        assert_eq!(
            index.containers["s1"].1, "",
            "the sandbox is known, unnamed"
        );
        assert!(!index.containers.contains_key("c2"));
        assert_eq!(
            index.pods["u1"].labels,
            [("app".to_string(), "web".to_string())].into()
        );
        // Gone from the next listing: kept (events in flight still resolve).
        index.update(Default::default(), Default::default());
        assert!(index.pods.contains_key("u1") && index.containers.contains_key("c1"));
    }

    #[test]
    fn a_socket_that_is_not_there_is_a_clear_error() {
        let e = Cri::connect(Path::new("/nonexistent/containerd.sock")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/containerd.sock") && msg.contains("No such file"),
            "{msg}"
        );
    }
}
