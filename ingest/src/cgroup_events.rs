//! The built-in `cgroup_events` program's stream: cgroup v2 directories as they are
//! created and removed, for the enrich stage to learn paths ahead of (and after) the
//! events of the containers inside them.

use crate::{batch::Records, IngestError, LoadOptions, LoadedObject, RingConsumer, StreamMap};

const RING: &str = "cgroup_events";
const MKDIR: u32 = 1;
const RMDIR: u32 = 2;
/// `struct cgroup_event` in bpf/cgroup_events.bpf.c: id u64, kind u32, len u32, path.
const PATH_AT: usize = 16;

/// The loaded program and its ring.
pub struct CgroupEvents {
    object: LoadedObject,
    ring: RingConsumer,
}

impl CgroupEvents {
    /// Loads and attaches the program from its object `bytes` (the ring buffer build).
    ///
    /// # Errors
    /// The kernel lacks the tracepoints or ring buffers, or loading fails.
    pub fn load(loader: &mut crate::Loader<'_>, bytes: &[u8]) -> Result<Self, IngestError> {
        let opts = LoadOptions {
            rings: vec![RING.into()],
            ring_bytes: Some(1 << 20),
            wakeup_bytes: 1 << 20,
            kaddrs: Vec::new(),
            optional: Vec::new(),
            map_entries: Vec::new(),
        };
        let mut object = loader.load("cgroup_events", bytes, &opts)?;
        match object.take_stream(RING)? {
            StreamMap::Ring(ring) => Ok(Self { object, ring }),
            StreamMap::Perf(_) | StreamMap::Batched(..) => Err(IngestError::Map {
                object: "cgroup_events".into(),
                map: RING.into(),
                problem: Box::new(crate::MapProblem::NotARing),
            }),
        }
    }

    /// Hands each creation (`removed` false) and removal to `f`, in order.
    pub fn drain(&mut self, mut f: impl FnMut(u64, &str, bool)) -> u64 {
        let mut n = 0;
        while self.ring.drain(1 << 16, |run, _| {
            for record in Records::new(run) {
                if let Some((id, path, removed)) = parse(record) {
                    f(id, path, removed);
                    n += 1;
                }
            }
        }) > 0
        {}
        n
    }

    /// Events the program could not write (ring full): paths learned the slow way.
    pub fn drops(&self) -> u64 {
        self.object.ring_drops()
    }
}

fn parse(record: &[u8]) -> Option<(u64, &str, bool)> {
    let id = u64::from_ne_bytes(record.get(..8)?.try_into().ok()?);
    let kind = u32::from_ne_bytes(record.get(8..12)?.try_into().ok()?);
    let len = u32::from_ne_bytes(record.get(12..16)?.try_into().ok()?) as usize;
    let path = std::str::from_utf8(record.get(PATH_AT..PATH_AT + len)?).ok()?;
    match kind {
        MKDIR => Some((id, path, false)),
        RMDIR => Some((id, path, true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_records() {
        let mut r = 42u64.to_ne_bytes().to_vec();
        r.extend(2u32.to_ne_bytes());
        r.extend(4u32.to_ne_bytes());
        r.extend(b"/a/b\0\0\0\0");
        assert_eq!(parse(&r), Some((42, "/a/b", true)));
        r[8] = 9;
        assert_eq!(parse(&r), None, "unknown kind");
        assert_eq!(parse(&r[..10]), None, "short");
        r[8] = 1;
        r[12] = 200;
        assert_eq!(parse(&r), None, "length past the record");
    }
}
