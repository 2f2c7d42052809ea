//! Pod metadata sources: what the pod with a given uid, and its container with a given
//! id, are called, and (where the source knows) the pod's labels and owning workload.

use std::collections::BTreeMap;

/// What a source knows about a pod and, when asked, one of its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container name, when the container id could be matched. The pod sandbox's
    /// (pause) container is known but has no name: `Some("")`.
    pub container: Option<String>,
    /// The pod's Kubernetes labels (empty when the source does not have them).
    pub labels: BTreeMap<String, String>,
    /// The workload that owns the pod: (kind, name), e.g. ("Deployment", "web").
    pub workload: Option<(String, String)>,
}

/// A source of pod metadata. Lookups happen on the enrich stage's slow path (a cache
/// miss), so a source may take a lock, but must not block on the network: a source
/// that learns pods remotely answers from what it has and fetches in the background.
pub trait PodSource: Send + Sync + std::fmt::Debug {
    /// What is known of pod `pod_uid` (and container `container_id`), if anything.
    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta>;

    /// Starts the source's background work. Called once, after the exporter dropped
    /// its capabilities: threads started before would keep them.
    fn start(&self) {}

    /// The source's name and whether its last attempt to learn pods worked.
    fn health(&self) -> Vec<(&'static str, bool)>;
}

/// Sources asked in order: the first that knows the pod answers; one that knows the
/// pod but not the container is completed by the next that knows the container.
#[derive(Debug, Default)]
pub struct Sources(pub Vec<Box<dyn PodSource>>);

impl PodSource for Sources {
    fn start(&self) {
        for s in &self.0 {
            s.start();
        }
    }

    fn health(&self) -> Vec<(&'static str, bool)> {
        self.0.iter().flat_map(|s| s.health()).collect()
    }

    fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        let mut found: Option<PodMeta> = None;
        for source in &self.0 {
            let Some(meta) = source.lookup(pod_uid, container_id) else {
                continue;
            };
            match &mut found {
                None => found = Some(meta),
                Some(f) => {
                    if f.container.is_none() {
                        f.container = meta.container;
                    }
                    if f.labels.is_empty() {
                        f.labels = meta.labels;
                    }
                    if f.workload.is_none() {
                        f.workload = meta.workload;
                    }
                }
            }
            let f = found.as_ref().expect("set above");
            if (container_id.is_none() || f.container.is_some())
                && !f.labels.is_empty()
                && f.workload.is_some()
            {
                break;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(Option<PodMeta>);
    impl PodSource for Fixed {
        fn lookup(&self, _: &str, _: Option<&str>) -> Option<PodMeta> {
            self.0.clone()
        }
        fn health(&self) -> Vec<(&'static str, bool)> {
            vec![("fixed", self.0.is_some())]
        }
    }

    #[test]
    fn later_sources_complete_earlier_ones() {
        let pod_only = PodMeta {
            namespace: "shop".into(),
            pod: "web-1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        let with_container = PodMeta {
            namespace: "shop".into(),
            pod: "web-1".into(),
            container: Some("nginx".into()),
            ..Default::default()
        };
        let s = Sources(vec![
            Box::new(Fixed(None)),
            Box::new(Fixed(Some(pod_only.clone()))),
            Box::new(Fixed(Some(with_container))),
        ]);
        let got = s.lookup("uid", Some("id")).unwrap();
        assert_eq!(got.container.as_deref(), Some("nginx"));
        assert_eq!(
            got.labels, pod_only.labels,
            "the first source's labels stay"
        );
        assert_eq!(Sources::default().lookup("uid", None), None);
        assert_eq!(
            s.health(),
            [("fixed", false), ("fixed", true), ("fixed", true)]
        );
    }
}
