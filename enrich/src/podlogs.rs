//! Pod metadata from the kubelet's log directories, the source that needs nothing but
//! the node's filesystem.
//!
//! `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` names each pod and its
//! containers; `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` ties a
//! container id to its name. Namespace, pod and container names cannot contain `_`
//! (they are DNS labels), so both split unambiguously.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use crate::{PodMeta, PodSource};

#[derive(Default)]
struct Index {
    /// pod uid → (namespace, pod, pod log dir)
    pods: HashMap<String, (String, String, PathBuf)>,
    /// container id → container name
    containers: HashMap<String, String>,
    scanned: Option<Instant>,
    /// Modification times of the two directories at the last scan.
    stamp: Option<(Option<std::time::SystemTime>, Option<std::time::SystemTime>)>,
}

fn dir_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(dir).and_then(|m| m.modified()).ok()
}

/// The kubelet's log directories, indexed on demand.
pub struct PodLogs {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    min_rescan: Duration,
    index: Mutex<Index>,
}

impl std::fmt::Debug for PodLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodLogs")
            .field("pods_dir", &self.pods_dir)
            .field("containers_dir", &self.containers_dir)
            .finish()
    }
}

/// `<namespace>_<pod>_<uid>` → parts.
fn split_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut it = name.splitn(3, '_');
    Some((it.next()?, it.next()?, it.next()?))
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log` → (container, id).
fn split_container_log(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_suffix(".log")?;
    let (prefix, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let container = prefix.splitn(3, '_').nth(2)?;
    Some((container, id))
}

fn dir_names(dir: &Path) -> impl Iterator<Item = String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
}

impl PodLogs {
    /// Reads pods from `pods_dir` (`/var/log/pods`) and container ids from
    /// `containers_dir` (`/var/log/containers`); a missing directory just finds nothing.
    pub fn new(pods_dir: impl Into<PathBuf>, containers_dir: impl Into<PathBuf>) -> Self {
        Self {
            pods_dir: pods_dir.into(),
            containers_dir: containers_dir.into(),
            min_rescan: Duration::from_millis(250),
            index: Mutex::default(),
        }
    }

    fn rescan(&self, index: &mut Index) {
        index.pods.clear();
        for name in dir_names(&self.pods_dir) {
            if let Some((ns, pod, uid)) = split_pod_dir(&name) {
                index.pods.insert(
                    uid.to_string(),
                    (ns.to_string(), pod.to_string(), self.pods_dir.join(&name)),
                );
            }
        }
        index.containers.clear();
        for name in dir_names(&self.containers_dir) {
            if let Some((container, id)) = split_container_log(&name) {
                index
                    .containers
                    .insert(id.to_ascii_lowercase(), container.to_string());
            }
        }
        index.scanned = Some(Instant::now());
    }
}

impl PodSource for PodLogs {
    /// Up while the pod log directory exists.
    fn health(&self) -> Vec<(&'static str, bool)> {
        vec![("logs", self.pods_dir.is_dir())]
    }

    /// Names for a pod uid and optional container id. Rescans the directories (at most
    /// every 250 ms) when the pod or container is not indexed yet.
    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        let mut index = self.index.lock();
        let known = index.pods.contains_key(pod_uid)
            && container_id.is_none_or(|c| index.containers.contains_key(c));
        // A directory whose mtime moved has new entries: rescan at once, so a pod that
        // just started is found; otherwise at most every `min_rescan`.
        let stamp = (dir_mtime(&self.pods_dir), dir_mtime(&self.containers_dir));
        let changed = index.stamp != Some(stamp);
        if !known && (changed || index.scanned.is_none_or(|t| t.elapsed() >= self.min_rescan)) {
            self.rescan(&mut index);
            index.stamp = Some(stamp);
        }
        let (namespace, pod, dir) = index.pods.get(pod_uid)?;
        let container = container_id.and_then(|id| {
            index
                .containers
                .get(id)
                .cloned()
                .or_else(|| container_from_pod_dir(dir, id))
        });
        Some(PodMeta {
            namespace: namespace.clone(),
            pod: pod.clone(),
            container,
            ..Default::default()
        })
    }
}

/// Without a container log link: the pod's only container, or the one whose log
/// symlink (docker's json logs) names the id.
fn container_from_pod_dir(dir: &Path, id: &str) -> Option<String> {
    let names: Vec<String> = dir_names(dir).filter(|n| dir.join(n).is_dir()).collect();
    if let [only] = names.as_slice() {
        return Some(only.clone());
    }
    names.into_iter().find(|n| {
        dir_names(&dir.join(n)).any(|log| {
            fs::read_link(dir.join(n).join(log)).is_ok_and(|t| t.to_string_lossy().contains(id))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5f2a7f1c8e6b4b9aa2f3c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1";
    const ID2: &str = "aaaa7f1c8e6b4b9aa2f3c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1";
    const UID: &str = "0f8fd5a6-1c3e-4a5b-9b7d-2e4f6a8c0b1d";

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("podlogs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn splits_names() {
        assert_eq!(
            split_pod_dir("kube-system_coredns-5d78c9869d-x2v4q_0f8f"),
            Some(("kube-system", "coredns-5d78c9869d-x2v4q", "0f8f"))
        );
        assert_eq!(split_pod_dir("nounderscore"), None);
        assert_eq!(
            split_container_log(&format!("coredns-abc_kube-system_coredns-{ID}.log")),
            Some(("coredns", ID))
        );
        assert_eq!(split_container_log("a_b_c-123.log"), None);
        assert_eq!(split_container_log(&format!("a_b-{ID}.log")), None);
        assert_eq!(split_container_log(&format!("a_b_c-{ID}.txt")), None);
    }

    #[test]
    fn resolves_pods_and_containers_and_sees_new_pods() {
        let root = tmp("resolve");
        let (pods, containers) = (root.join("pods"), root.join("containers"));
        fs::create_dir_all(&containers).unwrap();
        let logs = PodLogs::new(&pods, &containers);
        assert_eq!(logs.lookup(UID, Some(ID)), None, "no directories yet");

        let pod_dir = pods.join(format!("shop_web-7d4b9_{UID}"));
        fs::create_dir_all(pod_dir.join("nginx")).unwrap();
        fs::create_dir_all(pod_dir.join("sidecar")).unwrap();
        fs::write(
            containers.join(format!("web-7d4b9_shop_sidecar-{ID2}.log")),
            "",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(260));
        let meta = |c: Option<&str>| PodMeta {
            namespace: "shop".into(),
            pod: "web-7d4b9".into(),
            container: c.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(logs.lookup(UID, Some(ID2)), Some(meta(Some("sidecar"))));
        // Two containers and no link for ID: the pod is known, the container is not.
        assert_eq!(logs.lookup(UID, Some(ID)), Some(meta(None)));
        assert_eq!(logs.lookup(UID, None), Some(meta(None)));
        fs::remove_dir_all(pod_dir.join("sidecar")).unwrap();
        assert_eq!(
            logs.lookup(UID, Some(ID)),
            Some(meta(Some("nginx"))),
            "only container"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
