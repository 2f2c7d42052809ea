//! Pod labels for map-based metrics: `kube_namespace`, `kube_pod`, `kube_container`
//! take a cgroup id (decimal text or 8 raw bytes); the original project's
//! `kube_podnamespace`, `kube_podname`, `kube_containername` take a pid (decimal text
//! or 4 raw bytes) and go through `/proc/<pid>/cgroup`. Outside any pod: empty.

use std::sync::Arc;

use enrich::{Enricher, PodLabels};

use super::{uint::number, DecodeError, Decoder};

/// Which pod label to produce.
#[derive(Debug, Clone, Copy)]
pub enum KubeField {
    /// Namespace.
    Namespace,
    /// Pod name.
    Pod,
    /// Container name.
    Container,
}

/// What the input identifies.
#[derive(Debug, Clone, Copy)]
pub enum KubeKey {
    /// A cgroup id.
    Cgroup,
    /// A process id.
    Pid,
}

/// One pod label from a cgroup id or pid.
#[derive(Debug)]
pub struct Kube {
    /// The enrich stage's resolver.
    pub enricher: Arc<Enricher>,
    /// Input kind.
    pub key: KubeKey,
    /// Output label.
    pub field: KubeField,
}

impl Decoder for Kube {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let labels: Arc<PodLabels> = match self.key {
            KubeKey::Cgroup => self.enricher.resolve(number(input, 8)?).labels,
            KubeKey::Pid => {
                let pid = number(input, 4)?;
                self.enricher
                    .resolve_pid(
                        u32::try_from(pid)
                            .map_err(|_| DecodeError::Invalid(format!("{pid} is not a pid")))?,
                    )
                    .labels
            }
        };
        Ok(match self.field {
            KubeField::Namespace => labels.namespace.clone(),
            KubeField::Pod => labels.pod.clone(),
            KubeField::Container => labels.container.clone(),
        }
        .into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use enrich::{CgroupFs, PodLogs};

    use super::*;

    #[test]
    fn outside_pods_is_empty_and_bad_input_is_an_error() {
        if !test_support::privileged(
            "kube decoders outside_pods_is_empty_and_bad_input_is_an_error",
        ) {
            return;
        }
        let enricher = Arc::new(Enricher::new(
            CgroupFs::discover().unwrap(),
            PodLogs::new("/nonexistent", "/nonexistent"),
        ));
        let by_pid = Kube {
            enricher: enricher.clone(),
            key: KubeKey::Pid,
            field: KubeField::Pod,
        };
        assert_eq!(
            by_pid.decode(&std::process::id().to_ne_bytes()).unwrap(),
            b""
        );
        assert_eq!(by_pid.decode(b"4294967295").unwrap(), b"", "no such pid");
        assert!(by_pid.decode(b"99999999999").is_err(), "not a pid");
        assert!(by_pid.decode(&[1, 2, 3]).is_err());
        let by_cgroup = Kube {
            enricher,
            key: KubeKey::Cgroup,
            field: KubeField::Namespace,
        };
        assert_eq!(by_cgroup.decode(&1u64.to_ne_bytes()).unwrap(), b"");
        assert!(by_cgroup.decode(b"").is_err());
    }
}
