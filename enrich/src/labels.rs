//! The enricher: resolves a cgroup id to pod labels and interns each label set.

use std::{
    io,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::{kubepath, CgroupFs, PodMeta, PodSource};

/// Pod labels of one workload. Events outside any pod get [`PodLabels::id`] 0 and
/// empty names: kept, never dropped, never given another pod's labels.
#[derive(Debug, PartialEq, Eq)]
pub struct PodLabels {
    /// Small dense id, equal for equal label sets: what series are keyed by.
    pub id: u32,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name.
    pub container: String,
    /// Values of the opt-in labels ([`Extra`]), in the order configured; empty for
    /// events outside pods.
    pub extra: Box<[String]>,
}

/// An opt-in label whose value comes from the pod's metadata (sources that lack it
/// give an empty value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    /// Kind of the workload owning the pod (`Deployment`, `StatefulSet`, ...).
    WorkloadKind,
    /// Name of the workload owning the pod.
    Workload,
    /// The value of this pod label.
    PodLabel(String),
}

impl Extra {
    fn value(&self, meta: &PodMeta) -> String {
        match self {
            Extra::WorkloadKind => meta.workload.as_ref().map(|w| w.0.clone()),
            Extra::Workload => meta.workload.as_ref().map(|w| w.1.clone()),
            Extra::PodLabel(key) => meta.labels.get(key).cloned(),
        }
        .unwrap_or_default()
    }
}

/// The outcome of one resolution.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Labels to use now.
    pub labels: Arc<PodLabels>,
    /// False when the cgroup is a pod's but its names are not (all) known yet: ask again
    /// later, as the kubelet writes the log directory around container start.
    pub settled: bool,
    /// The cgroup path, when it could be found.
    pub path: Option<String>,
    /// Why the labels are empty or incomplete, for people reading the event tap.
    pub unknown: Option<String>,
}

/// Namespace, pod, container and the opt-in values: a label set's identity.
type LabelKey = (String, String, String, Box<[String]>);

/// Resolves cgroup ids to pod labels (the slow path behind [`crate::Cache`]).
#[derive(Debug)]
pub struct Enricher {
    cgroups: CgroupFs,
    pods: Box<dyn PodSource>,
    extra: Vec<Extra>,
    interned: DashMap<LabelKey, Arc<PodLabels>>,
    next_id: AtomicU32,
    none: Arc<PodLabels>,
    /// Paths of cgroups learned as they were created, kept (as tombstones) for
    /// `TOMBSTONE` after removal so late events still resolve.
    known: DashMap<u64, (String, Option<Instant>)>,
    learned: AtomicU64,
    /// The label set each resolved cgroup has, and per label set its live cgroups and
    /// when the last one was removed: label sets of deleted pods can be expired.
    owners: DashMap<u64, u32>,
    live: DashMap<u32, (u32, Option<Instant>)>,
    /// The cgroup2 root's id: what `bpf_get_current_cgroup_id()` reports for tasks in
    /// no v2 cgroup of their own (on v1-only hosts, every task).
    root_id: u64,
    /// How long tombstones are kept: `TOMBSTONE`, or longer than twice the series grace
    /// period, so a removed cgroup is still known when its grace period ends.
    keep: Duration,
}

/// How long a removed cgroup's path is kept for events still in flight.
const TOMBSTONE: Duration = Duration::from_secs(300);

impl Enricher {
    /// An enricher over a cgroup hierarchy and a pod metadata source.
    pub fn new(cgroups: CgroupFs, pods: impl PodSource + 'static) -> Self {
        let root_id = cgroups.id_of("/").unwrap_or(1);
        Self {
            root_id,
            cgroups,
            pods: Box::new(pods),
            extra: Vec::new(),
            interned: DashMap::new(),
            next_id: AtomicU32::new(1),
            none: Arc::new(PodLabels {
                id: 0,
                namespace: String::new(),
                pod: String::new(),
                container: String::new(),
                extra: Box::default(),
            }),
            known: DashMap::new(),
            learned: AtomicU64::new(0),
            owners: DashMap::new(),
            live: DashMap::new(),
            keep: TOMBSTONE,
        }
    }

    /// Keeps removed cgroups known for at least twice `grace` (the series grace period).
    pub fn with_series_grace(mut self, grace: Duration) -> Self {
        self.keep = TOMBSTONE.max(grace * 2);
        self
    }

    /// How long ago the kernel removed `cgroup_id`; `None` while it exists or when it
    /// is not known to be removed.
    pub fn removed_for(&self, cgroup_id: u64) -> Option<Duration> {
        let removed = self.known.get(&cgroup_id)?.1?;
        Some(removed.elapsed())
    }

    /// Each metadata source and whether its last attempt to learn pods worked.
    pub fn source_health(&self) -> Vec<(&'static str, bool)> {
        self.pods.health()
    }

    /// Starts the metadata sources' background work (after capabilities are dropped).
    pub fn start_sources(&self) {
        self.pods.start();
    }

    /// Adds opt-in labels to every pod's label set, in this order.
    pub fn with_extra(mut self, extra: Vec<Extra>) -> Self {
        self.extra = extra;
        self
    }

    /// Records a cgroup's creation (`removed` false) or removal, as the kernel reports
    /// it (`cgroup:cgroup_mkdir`/`cgroup_rmdir`, path relative to the cgroup2 root).
    /// Removed cgroups are forgotten `TOMBSTONE` (or twice the series grace period) after
    /// their removal.
    pub fn learn(&self, cgroup_id: u64, path: &str, removed: bool) {
        let now = Instant::now();
        if removed {
            self.known
                .entry(cgroup_id)
                .or_insert_with(|| (path.to_string(), None))
                .1 = Some(now);
            if let Some((_, id)) = self.owners.remove(&cgroup_id) {
                if let Some(mut live) = self.live.get_mut(&id) {
                    live.0 = live.0.saturating_sub(1);
                    if live.0 == 0 {
                        live.1 = Some(now);
                    }
                }
            }
        } else {
            self.known.insert(cgroup_id, (path.to_string(), None));
        }
        // Prune now and then: cgroups come and go by the thousand on busy nodes.
        if self.learned.fetch_add(1, Relaxed) % 1024 == 1023 {
            self.known.retain(|_, (_, removed)| {
                removed.is_none_or(|t| now.duration_since(t) < self.keep)
            });
        }
    }

    /// Learns every container cgroup that exists now (pods and standalone containers),
    /// so containers started before the exporter still resolve after their cgroup is
    /// gone; later ones come from cgroup events. Returns how many it learned.
    pub fn walk(&self) -> usize {
        let mut found = 0;
        self.cgroups.walk(|id, path| {
            if kubepath::parse(path).is_some_and(|k| k.container_id.is_some())
                || kubepath::standalone_container(path).is_some()
            {
                self.learn(id, path, false);
                found += 1;
            }
        });
        found
    }

    /// The cgroup2 hierarchy this enricher resolves in.
    pub fn cgroups(&self) -> &CgroupFs {
        &self.cgroups
    }

    /// What a record from `cgroup_id` is attributed by: its process (`pid()`, read only
    /// then) when it comes from the cgroup2 root, as every task does on cgroup v1-only
    /// hosts, else its cgroup. Returns a key naming the choice, for memos (cgroup ids
    /// never have the top bit set, so the two kinds never collide), and the pid to
    /// resolve with [`Enricher::resolve_pid`], if that.
    #[inline]
    pub fn attribute_by(
        &self,
        cgroup_id: u64,
        pid: impl FnOnce() -> Option<u32>,
    ) -> (u64, Option<u32>) {
        let pid = if cgroup_id == self.root_id {
            pid()
        } else {
            None
        };
        (pid.map_or(cgroup_id, |p| 1 << 63 | u64::from(p)), pid)
    }

    /// Cgroups learned so far (creations and removals).
    pub fn learned(&self) -> u64 {
        self.learned.load(Relaxed)
    }

    /// The label set of events outside any pod.
    pub fn none(&self) -> &Arc<PodLabels> {
        &self.none
    }

    fn intern(
        &self,
        namespace: String,
        pod: String,
        container: String,
        extra: Box<[String]>,
    ) -> Arc<PodLabels> {
        let key = (namespace, pod, container, extra);
        if let Some(labels) = self.interned.get(&key) {
            return labels.clone();
        }
        let labels = Arc::new(PodLabels {
            id: self.next_id.fetch_add(1, Relaxed),
            namespace: key.0.clone(),
            pod: key.1.clone(),
            container: key.2.clone(),
            extra: key.3.clone(),
        });
        self.interned.entry(key).or_insert(labels).clone()
    }

    /// Resolves one cgroup id (syscalls and directory reads: call through a cache).
    pub fn resolve(&self, cgroup_id: u64) -> Resolved {
        let known = self
            .known
            .get(&cgroup_id)
            .map(|k| (k.0.clone(), k.1.is_some()));
        let (path, removed) = match known {
            Some((path, removed)) => (Ok(path), removed),
            None => (self.cgroups.path_of(cgroup_id), false),
        };
        match path {
            Ok(path) => {
                let r = self.resolve_path(path);
                // A removed cgroup (resolved late, e.g. from a map entry at scrape
                // time) no longer keeps its pod's series alive.
                if r.labels.id != 0 && !removed {
                    self.own(cgroup_id, r.labels.id);
                }
                r
            }
            Err(e) => {
                // Gone already (ESTALE/ENOENT) or not permitted: nothing more to learn.
                let why = if e.kind() == io::ErrorKind::PermissionDenied {
                    let why = format!("cannot resolve cgroup ids: {e} (needs CAP_DAC_READ_SEARCH)");
                    tracing::warn!(cgroup_id, "{why}");
                    why
                } else {
                    format!("cgroup {cgroup_id} no longer exists ({e})")
                };
                self.unattributed(None, why)
            }
        }
    }

    /// The UID of the pod whose cgroup (or container's) `cgroup_id` is, from its path:
    /// not part of the label set (a pod recreated under its name keeps its series).
    pub fn pod_uid(&self, cgroup_id: u64) -> Option<String> {
        let path = match self.known.get(&cgroup_id) {
            Some(k) => k.0.clone(),
            None => self.cgroups.path_of(cgroup_id).ok()?,
        };
        kubepath::parse(&path).map(|k| k.pod_uid)
    }

    /// Counts `cgroup_id` as a live cgroup of label set `id`.
    fn own(&self, cgroup_id: u64, id: u32) {
        if self.owners.insert(cgroup_id, id) != Some(id) {
            let mut live = self.live.entry(id).or_insert((0, None));
            live.0 += 1;
            live.1 = None;
        }
    }

    /// Label sets whose cgroups have all been removed for at least `grace`: forgotten
    /// here, and returned so their series can go too.
    pub fn expire(&self, grace: Duration) -> Vec<u32> {
        let now = Instant::now();
        let mut gone = Vec::new();
        self.live.retain(|id, (count, since)| {
            let expired = *count == 0 && since.is_some_and(|t| now.duration_since(t) >= grace);
            if expired {
                gone.push(*id);
            }
            !expired
        });
        if !gone.is_empty() {
            self.interned.retain(|_, labels| !gone.contains(&labels.id));
        }
        gone
    }

    fn unattributed(&self, path: Option<String>, why: String) -> Resolved {
        Resolved {
            labels: self.none.clone(),
            settled: true,
            path,
            unknown: Some(why),
        }
    }

    /// Resolves the cgroup v2 membership of a process (`0::<path>` in /proc/<pid>/cgroup).
    pub fn resolve_pid(&self, pid: u32) -> Resolved {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        match membership(&text) {
            Some(path) => self.resolve_path(path.to_string()),
            None => self.unattributed(None, format!("process {pid} is gone")),
        }
    }

    /// The cgroup's full path on this host (`<mount>/<path>`), if it still exists.
    pub fn cgroup_path(&self, cgroup_id: u64) -> Option<String> {
        let rel = self.cgroups.path_of(cgroup_id).ok()?;
        Some(format!(
            "{}{}",
            self.cgroups.mount().display(),
            if rel == "/" { "" } else { &rel }
        ))
    }

    /// Resolves a cgroup path (relative to the cgroup2 mount).
    pub fn resolve_path(&self, path: String) -> Resolved {
        let Some(kube) = kubepath::parse(&path) else {
            if let Some(id) = kubepath::standalone_container(&path) {
                // Docker or podman outside Kubernetes: labelled by the short container id.
                return Resolved {
                    labels: self.intern(
                        String::new(),
                        String::new(),
                        id[..12].to_string(),
                        vec![String::new(); self.extra.len()].into(),
                    ),
                    settled: true,
                    path: Some(path),
                    unknown: Some("a container outside Kubernetes (labelled by its id)".into()),
                };
            }
            return self.unattributed(Some(path), "not in a Kubernetes pod's cgroup".into());
        };
        match self
            .pods
            .lookup(&kube.pod_uid, kube.container_id.as_deref())
        {
            Some(meta) => {
                let unknown = match (&kube.container_id, &meta.container) {
                    (Some(id), None) => Some(format!(
                        "container {id} of pod {} is not in the pod metadata",
                        kube.pod_uid
                    )),
                    _ => None,
                };
                let extra = self.extra.iter().map(|e| e.value(&meta)).collect();
                Resolved {
                    labels: self.intern(
                        meta.namespace,
                        meta.pod,
                        meta.container.unwrap_or_default(),
                        extra,
                    ),
                    settled: unknown.is_none(),
                    path: Some(path),
                    unknown,
                }
            }
            None => Resolved {
                settled: false,
                ..self.unattributed(
                    Some(path),
                    format!("pod {} is not in the pod metadata (yet)", kube.pod_uid),
                )
            },
        }
    }
}

/// The cgroup path that says which container a process is in, from its
/// /proc/<pid>/cgroup: the v2 line (`0::<path>`) when it names a container; else, on
/// hosts whose containers live in v1 hierarchies (where the v2 line reads `0::/`), the
/// first v1 line (`<n>:<controllers>:<path>`) that does; else the v2 line.
fn membership(proc_cgroup: &str) -> Option<&str> {
    let is_container = |path: &str| {
        kubepath::parse(path).is_some() || kubepath::standalone_container(path).is_some()
    };
    let unified = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"));
    if unified.is_some_and(is_container) {
        return unified;
    }
    proc_cgroup
        .lines()
        .filter_map(|l| l.splitn(3, ':').nth(2))
        .find(|path| is_container(path))
        .or(unified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PodLogs;

    #[test]
    fn membership_reads_v2_hybrid_and_v1_only_hosts() {
        let pod = "/kubepods/burstable/pod0e6f4b4e-1a5b-4e8f-9d1c-5a9e2b7c3d10/4f2a7f1c8e6b4b9aa2f3c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1";
        let v2 = format!("0::{pod}\n");
        let hybrid = format!("12:memory:{pod}\n1:name=systemd:{pod}\n0::{pod}\n");
        let v1_only =
            format!("12:memory:{pod}\n11:cpu,cpuacct:{pod}\n1:name=systemd:{pod}\n0::/\n");
        for text in [&v2, &hybrid, &v1_only] {
            assert_eq!(membership(text), Some(pod), "{text}");
        }
        let host = "12:memory:/user.slice\n0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(
            membership(host),
            Some("/user.slice/user-0.slice/session-1.scope")
        );
        assert_eq!(membership(""), None);
    }

    #[test]
    fn docker_containers_are_labelled_by_short_id() {
        let Ok(fs) = CgroupFs::discover() else { return };
        let e = Enricher::new(fs, PodLogs::new("/nonexistent", "/nonexistent"));
        let id = "5f2a7f1c8e6b4b9aa2f3c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1";
        let r = e.resolve_path(format!("/system.slice/docker-{id}.scope"));
        assert_eq!(
            (
                r.labels.namespace.as_str(),
                r.labels.pod.as_str(),
                r.labels.container.as_str()
            ),
            ("", "", "5f2a7f1c8e6b")
        );
        assert!(r.labels.id != 0 && r.settled);
        let r = e.resolve_path("/user.slice/user-0.slice/session-1.scope".into());
        assert_eq!(r.labels.id, 0);
    }

    #[test]
    fn walked_container_cgroups_resolve_after_removal() {
        if !test_support::privileged("walked_container_cgroups_resolve_after_removal") {
            return;
        }
        let fs = CgroupFs::discover().unwrap();
        let top = fs
            .mount()
            .join(format!("kebpf-walk-{}", std::process::id()));
        let uid = "0e6f4b4e-1a5b-4e8f-9d1c-5a9e2b7c3d10";
        let cid = "a".repeat(64);
        let pod = top.join(format!("kubepods/besteffort/pod{uid}"));
        let container = pod.join(&cid);
        std::fs::create_dir_all(&container).unwrap();
        let id = fs
            .id_of(
                &container
                    .strip_prefix(fs.mount())
                    .unwrap()
                    .to_string_lossy(),
            )
            .unwrap();
        let e = Enricher::new(fs, PodLogs::new("/nonexistent", "/nonexistent"));
        assert!(e.walk() >= 1);
        for d in [
            &container,
            &pod,
            &pod.parent().unwrap().to_path_buf(),
            &top.join("kubepods"),
            &top,
        ] {
            std::fs::remove_dir(d).unwrap();
        }
        // Gone from cgroupfs, yet its path is known: the pod uid is still read from it.
        let r = e.resolve(id);
        let path = r.path.unwrap_or_default();
        assert!(
            path.ends_with(&format!("pod{uid}/{cid}")),
            "{path:?} {:?}",
            r.unknown
        );
    }

    #[test]
    fn a_process_outside_pods_gets_empty_labels() {
        if !test_support::privileged("a_process_outside_pods_gets_empty_labels") {
            return;
        }
        let e = Enricher::new(
            CgroupFs::discover().unwrap(),
            PodLogs::new("/nonexistent", "/nonexistent"),
        );
        let r = e.resolve_pid(std::process::id());
        assert_eq!(r.labels.id, 0);
        assert!(r.settled);
        assert!(r.path.is_some());
        let root = e
            .cgroup_path(CgroupFs::discover().unwrap().id_of("/").unwrap())
            .unwrap();
        assert_eq!(
            root,
            CgroupFs::discover().unwrap().mount().display().to_string()
        );
        assert_eq!(e.resolve_pid(u32::MAX).labels.id, 0);
    }
}
