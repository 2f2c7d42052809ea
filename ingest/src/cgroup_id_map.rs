//! A program's cgroup id map (the reference exporter's `cgroup_id_map`): the cgroups
//! whose paths match the config's regexps, written into the program's map and kept
//! current as cgroups come and go, so the program filters by cgroup in the kernel.

use std::path::{Path, PathBuf};

use aya::maps::{CgrpStorage, HashMap, Map};
use regex::Regex;

use crate::{IngestError, LoadedObject, MapProblem};

/// How the map holds the matching cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `BPF_MAP_TYPE_HASH` (or LRU): key the cgroup id (u64), value 1 (u64); removed
    /// cgroups are deleted.
    Hash,
    /// `BPF_MAP_TYPE_CGRP_STORAGE` (6.2+): value 1 (u64) in the matching cgroups'
    /// storage, which the kernel frees with the cgroup.
    CgrpStorage,
}

/// The map and what fills it.
pub struct CgroupIdMap {
    object: String,
    name: String,
    map: Map,
    regexps: Vec<Regex>,
    /// The cgroup2 mount: paths are matched in full, as `/sys/fs/cgroup/<path>`.
    mount: PathBuf,
    /// Cgroups written, for logs and tests.
    written: u64,
    /// Ids written into a hash map, so removals touch only those.
    ids: std::collections::HashSet<u64>,
}

impl std::fmt::Debug for CgroupIdMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupIdMap")
            .field("object", &self.object)
            .field("name", &self.name)
            .field("written", &self.written)
            .finish()
    }
}

impl CgroupIdMap {
    /// Takes map `name` out of `object` for `kind`, checking its key (8 bytes for
    /// hash, 4 for cgrp_storage) and value (8 bytes) sizes.
    ///
    /// # Errors
    /// The map is missing or of the wrong shape.
    pub fn take(
        object: &mut LoadedObject,
        name: &str,
        kind: Kind,
        regexps: Vec<Regex>,
        mount: &Path,
    ) -> Result<Self, IngestError> {
        let object_name = object.name().to_string();
        let error = |problem: String| IngestError::Map {
            object: object_name.clone(),
            map: name.into(),
            problem: Box::new(MapProblem::CgroupIdMap {
                kind: kind.as_str(),
                problem,
            }),
        };
        let (key, value) = object.key_value_size(name)?;
        let want = match kind {
            Kind::Hash => 8,
            Kind::CgrpStorage => 4,
        };
        if key != want {
            return Err(error(format!("keys are {want} bytes, this map has {key}")));
        }
        if value != 8 {
            return Err(error(format!(
                "values are 8 bytes (u64), this map has {value}"
            )));
        }
        let map = object.take_map(name).ok_or_else(|| IngestError::Map {
            object: object_name.clone(),
            map: name.into(),
            problem: Box::new(MapProblem::Missing),
        })?;
        match (&map, kind) {
            (Map::HashMap(_) | Map::LruHashMap(_), Kind::Hash)
            | (Map::CgrpStorage(_), Kind::CgrpStorage) => {}
            _ => {
                return Err(error(format!(
                    "the map is neither {}",
                    match kind {
                        Kind::Hash => "a hash nor an LRU hash",
                        Kind::CgrpStorage => "a cgrp_storage map",
                    }
                )))
            }
        }
        Ok(Self {
            object: object_name,
            name: name.into(),
            map,
            regexps,
            mount: mount.to_path_buf(),
            written: 0,
            ids: std::collections::HashSet::new(),
        })
    }

    fn matches(&self, full: &str) -> bool {
        self.regexps.iter().any(|r| r.is_match(full))
    }

    /// Follows one cgroup (one that exists, from a walk at start, or a creation or
    /// removal); `path` is below the cgroup2 mount.
    pub fn update(&mut self, id: u64, path: &str, removed: bool) {
        let full = format!("{}{path}", self.mount.display());
        let result = match self.kind() {
            // Only matching cgroups were written.
            Kind::Hash if removed && !self.ids.remove(&id) => return,
            Kind::Hash if removed => {
                HashMap::<_, u64, u64>::try_from(&mut self.map).and_then(|mut m| m.remove(&id))
            }
            // The kernel drops a cgroup's storage with the cgroup.
            Kind::CgrpStorage if removed => Ok(()),
            _ if !self.matches(&full) => return,
            Kind::Hash => {
                self.ids.insert(id);
                HashMap::<_, u64, u64>::try_from(&mut self.map).and_then(|mut m| m.insert(id, 1, 0))
            }
            Kind::CgrpStorage => match std::fs::File::open(&full) {
                Ok(dir) => CgrpStorage::<_, u64>::try_from(&mut self.map)
                    .and_then(|mut m| m.insert(&dir, 1u64, 0)),
                // Removed again before we saw it.
                Err(_) => return,
            },
        };
        match result {
            Ok(()) if !removed => self.written += 1,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(object = %self.object, map = %self.name, cgroup = %full, "cgroup_id_map: {e}")
            }
        }
    }

    fn kind(&self) -> Kind {
        if matches!(self.map, Map::CgrpStorage(_)) {
            Kind::CgrpStorage
        } else {
            Kind::Hash
        }
    }

    /// Cgroups written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Kind {
    /// The config's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::CgrpStorage => "cgrp_storage",
        }
    }
}
