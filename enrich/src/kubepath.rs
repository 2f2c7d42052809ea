//! Reads the kubelet's cgroup naming: which pod and container a cgroup path belongs to.
//!
//! systemd driver:
//! `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid, _ for ->.slice/cri-containerd-<id>.scope`
//! (guaranteed pods have no qos level; `crio-` and `docker-` scopes too).
//! cgroupfs driver: `kubepods/<qos>/pod<uid>/<id>`. Either may sit below other
//! directories (kind, k3s, nested runtimes), so the pod directory is searched for
//! below any `kubepods` ancestor. Containers outside Kubernetes (docker, podman) are
//! recognised by their scope names and labelled by container id.

/// What a cgroup path says about the workload in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeCgroup {
    /// Pod UID with dashes (`0f8fd5a6-...`).
    pub pod_uid: String,
    /// Container id (64 hex), absent for the pod-level cgroup itself.
    pub container_id: Option<String>,
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod UID named by one path component, if it is a pod directory.
fn pod_uid(component: &str) -> Option<String> {
    let systemd = component.strip_suffix(".slice").and_then(|c| {
        let (_, uid) = c.rsplit_once("-pod")?;
        c.contains("kubepods").then(|| uid.replace('_', "-"))
    });
    let uid = systemd.or_else(|| component.strip_prefix("pod").map(str::to_string))?;
    is_uid(&uid).then_some(uid)
}

/// The container id named by one path component, if it is a container directory.
fn container_id(component: &str) -> Option<String> {
    let id = match component.strip_suffix(".scope") {
        Some(scope) => ["cri-containerd-", "crio-", "docker-", "cri-dockerd-"]
            .iter()
            .find_map(|p| scope.strip_prefix(p))?,
        None => component
            .strip_prefix("cri-containerd-")
            .or_else(|| component.strip_prefix("crio-"))
            .or_else(|| component.strip_prefix("docker-"))
            .unwrap_or(component),
    };
    is_container_id(id).then(|| id.to_ascii_lowercase())
}

/// Parses a cgroup path; `None` when it is not inside a Kubernetes pod.
pub fn parse(path: &str) -> Option<KubeCgroup> {
    let mut parts = path.split('/').filter(|c| !c.is_empty());
    parts.by_ref().find(|c| c.contains("kubepods"))?;
    let pod_uid = parts.by_ref().find_map(pod_uid)?;
    let container_id = parts.next().and_then(container_id);
    Some(KubeCgroup {
        pod_uid,
        container_id,
    })
}

/// The container id of a container outside Kubernetes: docker
/// (`system.slice/docker-<id>.scope`, cgroupfs `docker/<id>`), podman
/// (`machine.slice/libpod-<id>.scope`, `libpod_parent/libpod-<id>`), or containerd
/// without Kubernetes (`<namespace>/<id>`, shown as the id alone). Paths inside pods are
/// [`parse`]'s.
pub fn standalone_container(path: &str) -> Option<String> {
    if path.contains("kubepods") {
        return None;
    }
    let mut parts = path.rsplit('/').filter(|c| !c.is_empty());
    let last = parts.next()?;
    let id = ["docker-", "libpod-", "crio-", "cri-containerd-"]
        .iter()
        .find_map(|p| last.strip_prefix(p))
        .map(|rest| rest.strip_suffix(".scope").unwrap_or(rest))
        .or_else(|| (parts.next()? == "docker").then_some(last))?;
    is_container_id(id).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5f2a7f1c8e6b4b9aa2f3c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1";
    const UID: &str = "0f8fd5a6-1c3e-4a5b-9b7d-2e4f6a8c0b1d";

    fn pod(container: bool) -> Option<KubeCgroup> {
        Some(KubeCgroup {
            pod_uid: UID.into(),
            container_id: container.then(|| ID.into()),
        })
    }

    #[test]
    fn kubelet_layouts() {
        let u = UID.replace('-', "_");
        let cases = [
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"), pod(true)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"), pod(true)),
            (format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{ID}.scope"), pod(true)),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), pod(true)),
            (format!("/kubepods/pod{UID}/{ID}"), pod(true)),
            (format!("/kubepods/besteffort/pod{UID}"), pod(false)),
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"), pod(true)),
            (format!("/system.slice/docker-{ID}.scope"), None),
            ("/".to_string(), None),
            ("/user.slice/user-0.slice/session-1.scope".to_string(), None),
            (format!("/pod{UID}/{ID}"), None),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "{path}");
        }
    }

    #[test]
    fn nested_layouts() {
        let u = UID.replace('-', "_");
        // kind: the node's own cgroup wraps the kubelet's hierarchy.
        let kind = format!("/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope");
        assert_eq!(parse(&kind), pod(true));
        let k3s = format!("/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(parse(&format!("/k3s{k3s}")), pod(true));
        let test_root =
            format!("/kebpf-test-1/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope");
        assert_eq!(parse(&test_root), pod(true));
    }

    #[test]
    fn containers_outside_kubernetes() {
        let cases = [
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            (format!("/docker/{ID}"), Some(ID)),
            (format!("/machine.slice/libpod-{ID}.scope"), Some(ID)),
            (format!("/machine.slice/libpod-{ID}.scope/container"), None),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), None),
            ("/system.slice/sshd.service".to_string(), None),
            (format!("/system.slice/docker-{}.scope", &ID[..12]), None),
            ("/".to_string(), None),
        ];
        for (path, want) in cases {
            assert_eq!(standalone_container(&path).as_deref(), want, "{path}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(path in "[a-z0-9/._-]{0,200}") {
            let _ = parse(&path);
            let _ = standalone_container(&path);
        }
    }
}
