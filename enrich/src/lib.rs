//! Enrich stage: cgroup id → cgroup v2 path → pod and container → label values.
//!
//! The kernel reports `bpf_get_current_cgroup_id()`; [`CgroupFs`] turns it into a path
//! in O(1) with `open_by_handle_at`, [`kubepath`] reads the kubelet's naming of that
//! path, and [`PodLogs`] finds namespace, pod and container names in the kubelet's log
//! directory. [`Enricher`] ties them together and interns each distinct label set, and
//! [`Cache`] is the per-worker front that keeps the hot path free of locks and syscalls.

mod api;
mod attributed;
mod background;
mod cache;
mod cgroupfs;
pub mod cri;
pub mod kubepath;
mod labels;
mod podlogs;
mod source;

pub use api::{pod_from_json, ApiError, KubeApiSource};
pub use attributed::{Attributed, HELD};
pub use cache::Cache;
pub use cgroupfs::{cgroup2_mount, CgroupFs};
pub use cri::{Cri, CriError};
pub use labels::{Enricher, Extra, PodLabels, Resolved};
pub use podlogs::PodLogs;
pub use source::{PodMeta, PodSource, Sources};

/// Errors of the enrich stage.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    /// No cgroup2 mount is listed in the given mountinfo.
    #[error("no cgroup2 filesystem is mounted (looked in {0})")]
    NoCgroup2(String),
    /// The container runtime's CRI socket did not answer.
    #[error("CRI socket {socket}: {source}")]
    Cri {
        /// The socket.
        socket: String,
        /// What went wrong.
        #[source]
        source: cri::CriError,
    },
    /// The Kubernetes API could not be watched.
    #[error("Kubernetes API (pods of node {node}): {source}")]
    Api {
        /// The node whose pods were to be listed.
        node: String,
        /// What went wrong.
        #[source]
        source: api::ApiError,
    },
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
