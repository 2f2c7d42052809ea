//! `cgroup`: a cgroup id (decimal text after `uint`, or 8 raw bytes) as its path.

use std::sync::Arc;

use enrich::Enricher;

use super::{uint::number, DecodeError, Decoder};

/// Full cgroup path (`/sys/fs/cgroup/system.slice/ssh.service`),
/// `unknown_cgroup_id:<id>` when it no longer exists.
#[derive(Debug)]
pub struct Cgroup(pub Arc<Enricher>);

impl Decoder for Cgroup {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let id = number(input, 8)?;
        Ok(match self.0.cgroup_path(id) {
            Some(p) => p.into_bytes(),
            None => format!("unknown_cgroup_id:{id}").into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use enrich::{CgroupFs, PodLogs};

    use super::*;

    #[test]
    fn paths_unknown_ids_and_bad_input() {
        if !test_support::privileged("cgroup decoder paths_unknown_ids_and_bad_input") {
            return;
        }
        let fs = CgroupFs::discover().unwrap();
        let root = fs.id_of("/").unwrap();
        let mount = fs.mount().display().to_string();
        let d = Cgroup(Arc::new(Enricher::new(
            fs,
            PodLogs::new("/nonexistent", "/nonexistent"),
        )));
        assert_eq!(
            d.decode(root.to_string().as_bytes()).unwrap(),
            mount.as_bytes()
        );
        assert_eq!(d.decode(&root.to_ne_bytes()).unwrap(), mount.as_bytes());
        assert_eq!(
            d.decode(b"18446744073709551557").unwrap(),
            b"unknown_cgroup_id:18446744073709551557"
        );
        assert!(d.decode(b"12x").is_err());
    }
}
