//! Pod metadata from the Kubernetes API: a watch of this node's pods
//! (`fieldSelector=spec.nodeName=<node>`) giving names, pod labels, the owning workload
//! and container ids. The watcher lists, then watches with bookmarks, and lists again
//! when the API says the resource version is too old (410 Gone).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Api as KubeApi, ListParams},
    runtime::{watcher, WatchStreamExt},
    Client,
};
use parking_lot::{Mutex, RwLock};

use crate::{background::Background, EnrichError, PodMeta, PodSource};

/// Deleted pods stay this long, for their events still in flight.
const KEEP: Duration = Duration::from_secs(300);
/// Bound on the list at start-up.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Entry {
    meta: PodMeta,
    /// container id → name
    containers: HashMap<String, String>,
    deleted: Option<Instant>,
}

/// Pods by uid.
#[derive(Debug, Default)]
struct Index {
    pods: HashMap<String, Entry>,
    /// Uids seen since the current (re-)list began.
    listing: Option<HashSet<String>>,
}

impl Index {
    fn apply(&mut self, pod: &Pod) {
        let Some((uid, entry)) = entry_of(pod) else {
            return;
        };
        if let Some(listing) = &mut self.listing {
            listing.insert(uid.clone());
        }
        self.pods.insert(uid, entry);
    }

    fn delete(&mut self, uid: &str, now: Instant) {
        if let Some(e) = self.pods.get_mut(uid) {
            e.deleted.get_or_insert(now);
        }
    }

    /// A (re-)list finished: pods it did not return were deleted meanwhile.
    fn listed(&mut self, now: Instant) {
        let Some(seen) = self.listing.take() else {
            return;
        };
        for (uid, e) in &mut self.pods {
            if !seen.contains(uid) {
                e.deleted.get_or_insert(now);
            }
        }
        self.pods
            .retain(|_, e| e.deleted.is_none_or(|t| now.duration_since(t) < KEEP));
    }
}

/// The workload a pod belongs to, from its controller owner reference: a ReplicaSet
/// made by a Deployment (its name is the Deployment's plus `-<pod-template-hash>`)
/// counts as that Deployment.
fn workload(pod: &Pod, labels: &BTreeMap<String, String>) -> Option<(String, String)> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "ReplicaSet" {
        if let Some(deployment) = labels
            .get("pod-template-hash")
            .and_then(|h| owner.name.strip_suffix(h.as_str()))
            .and_then(|n| n.strip_suffix('-'))
        {
            return Some(("Deployment".into(), deployment.into()));
        }
    }
    Some((owner.kind.clone(), owner.name.clone()))
}

fn entry_of(pod: &Pod) -> Option<(String, Entry)> {
    let m = &pod.metadata;
    let uid = m.uid.clone()?;
    let labels = m.labels.clone().unwrap_or_default();
    let mut containers = HashMap::new();
    if let Some(status) = &pod.status {
        let all = [
            &status.container_statuses,
            &status.init_container_statuses,
            &status.ephemeral_container_statuses,
        ];
        for s in all.into_iter().flatten().flatten() {
            // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`
            if let Some((_, id)) = s.container_id.as_deref().and_then(|c| c.split_once("://")) {
                containers.insert(id.to_ascii_lowercase(), s.name.clone());
            }
        }
    }
    let meta = PodMeta {
        namespace: m.namespace.clone().unwrap_or_default(),
        pod: m.name.clone().unwrap_or_default(),
        container: None,
        workload: workload(pod, &labels),
        labels,
    };
    Some((
        uid,
        Entry {
            meta,
            containers,
            deleted: None,
        },
    ))
}

/// The handling of one pod from an API server list or watch (its JSON): the pod's
/// uid, metadata and container ids, as the index keeps them. The fuzz harnesses drive
/// it with arbitrary bytes.
pub fn pod_from_json(json: &[u8]) -> Option<(String, PodMeta, usize)> {
    let pod: Pod = serde_json::from_slice(json).ok()?;
    let (uid, entry) = entry_of(&pod)?;
    Some((uid, entry.meta, entry.containers.len()))
}

/// The Kubernetes API metadata source.
pub struct KubeApiSource {
    node: String,
    index: Arc<RwLock<Index>>,
    /// Whether the last list or watch call worked.
    up: Arc<AtomicBool>,
    /// The client, until [`PodSource::start`] hands it to the watcher's thread.
    idle: Mutex<Option<(Background, Client)>>,
}

impl std::fmt::Debug for KubeApiSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiSource")
            .field("node", &self.node)
            .finish()
    }
}

/// Why the Kubernetes API gave no pods.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no API server configuration: {0}")]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("{url}: {source}")]
    Client {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error("no answer in {LIST_TIMEOUT:?}")]
    ListTimeout,
    #[error("{0}")]
    List(#[source] kube::Error),
    #[error("cannot start its thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the connecting thread panicked")]
    Panicked,
}

impl KubeApiSource {
    /// Connects with the in-cluster service account (or `$KUBECONFIG`,
    /// `~/.kube/config`) and lists the pods of node `node`, on the calling thread's
    /// behalf (no thread is left running before [`PodSource::start`]). Fails only
    /// without an API server configuration: a list that fails (API away, RBAC) is
    /// logged, and the watch retries with backoff.
    pub fn connect(node: &str) -> Result<Self, EnrichError> {
        let err = |source| EnrichError::Api {
            node: node.to_string(),
            source,
        };
        let rt = Background::new().map_err(|e| err(ApiError::Thread(e)))?;
        let index = Arc::new(RwLock::new(Index::default()));
        let selector = format!("spec.nodeName={node}");
        let (client, url, listed) = rt
            .block_on(async {
                let config = kube::Config::infer().await.map_err(ApiError::NoConfig)?;
                let url = config.cluster_url.to_string();
                let client = Client::try_from(config).map_err(|source| ApiError::Client {
                    url: url.clone(),
                    source,
                })?;
                // Pods running now, so their first events resolve at once. The API
                // being away is no reason not to start: the watch keeps trying.
                let pods: KubeApi<Pod> = KubeApi::all(client.clone());
                let list = tokio::time::timeout(
                    LIST_TIMEOUT,
                    pods.list(&ListParams::default().fields(&selector)),
                )
                .await
                .map_err(|_| ApiError::ListTimeout)
                .and_then(|r| r.map_err(ApiError::List))
                .map(|list| {
                    let mut index = index.write();
                    for pod in &list.items {
                        index.apply(pod);
                    }
                    list.items.len()
                });
                Ok::<_, ApiError>((client, url, list))
            })
            .unwrap_or(Err(ApiError::Panicked))
            .map_err(err)?;
        match &listed {
            Ok(pods) => tracing::info!(node, %url, pods, "pod metadata from the Kubernetes API"),
            Err(e) => {
                tracing::warn!(node, %url, "listing this node's pods failed (the watch keeps trying; other sources still answer): {e}")
            }
        }
        Ok(Self {
            node: node.to_string(),
            index,
            up: Arc::new(AtomicBool::new(listed.is_ok())),
            idle: Mutex::new(Some((rt, client))),
        })
    }
}

impl PodSource for KubeApiSource {
    /// Watches the node's pods from a thread of its own.
    fn start(&self) {
        let Some((rt, client)) = self.idle.lock().take() else {
            return;
        };
        let index = self.index.clone();
        let up = self.up.clone();
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.node));
        rt.run("kube-api", async move {
            let stream = watcher(KubeApi::<Pod>::all(client), config).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut failing = false;
            while let Some(event) = stream.next().await {
                up.store(event.is_ok(), Relaxed);
                let now = Instant::now();
                let mut index = index.write();
                match event {
                    Ok(watcher::Event::Init) => index.listing = Some(HashSet::new()),
                    Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                        index.apply(&pod)
                    }
                    Ok(watcher::Event::InitDone) => index.listed(now),
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(uid) = &pod.metadata.uid {
                            index.delete(uid, now);
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!("watching pods failed (retrying with backoff; other sources still answer): {e}");
                        }
                        failing = true;
                        continue;
                    }
                }
                if failing {
                    tracing::info!("watching pods again");
                    failing = false;
                }
            }
        });
    }

    fn health(&self) -> Vec<(&'static str, bool)> {
        vec![("api", self.up.load(Relaxed))]
    }

    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        let index = self.index.read();
        let e = index.pods.get(pod_uid)?;
        Some(PodMeta {
            container: container_id.and_then(|id| e.containers.get(id).cloned()),
            ..e.meta.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn workloads_from_owner_references() {
        let rs = pod(serde_json::json!({
            "metadata": {"uid": "u1", "name": "web-7d4b9c-x2v4q", "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d4b9c", "uid": "r1", "controller": true}]},
            "status": {"containerStatuses": [{"name": "nginx", "image": "nginx", "imageID": "",
                "ready": true, "restartCount": 0,
                "containerID": "containerd://ABC123"}]}
        }));
        let (uid, e) = entry_of(&rs).unwrap();
        assert_eq!(uid, "u1");
        assert_eq!(e.meta.workload, Some(("Deployment".into(), "web".into())));
        assert_eq!(e.containers["abc123"], "nginx");

        let bare_rs = pod(serde_json::json!({
            "metadata": {"uid": "u2", "name": "x", "ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "batch-rs", "uid": "r2", "controller": true}]}
        }));
        assert_eq!(
            entry_of(&bare_rs).unwrap().1.meta.workload,
            Some(("ReplicaSet".into(), "batch-rs".into()))
        );
        let not_controller = pod(serde_json::json!({
            "metadata": {"uid": "u3", "name": "y", "ownerReferences": [{"apiVersion": "v1",
                "kind": "Node", "name": "n", "uid": "n1"}]}
        }));
        assert_eq!(entry_of(&not_controller).unwrap().1.meta.workload, None);
        assert!(entry_of(&pod(serde_json::json!({"metadata": {"name": "no-uid"}}))).is_none());
    }

    #[test]
    fn a_relist_marks_pods_it_did_not_return_as_deleted() {
        let mut index = Index::default();
        let p = |uid: &str| pod(serde_json::json!({"metadata": {"uid": uid, "name": uid}}));
        index.apply(&p("a"));
        index.apply(&p("b"));
        index.listing = Some(HashSet::new());
        index.apply(&p("b"));
        let now = Instant::now();
        index.listed(now);
        assert_eq!(
            index.pods["a"].deleted,
            Some(now),
            "gone during the re-list"
        );
        assert_eq!(index.pods["b"].deleted, None);
        index.delete("b", now);
        assert!(index.pods["b"].deleted.is_some());
        index.listing = Some(HashSet::new());
        index.listed(now + KEEP);
        assert!(index.pods.is_empty(), "forgotten after KEEP");
    }
}
