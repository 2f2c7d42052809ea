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
