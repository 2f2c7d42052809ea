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
