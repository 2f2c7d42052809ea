//! Reads whole BPF hash and array maps for map-based metrics ("tables").
//!
//! Keys have whatever size the config's labels describe, so aya's typed maps (sized
//! keys) do not fit: entries are walked with `BPF_MAP_GET_NEXT_KEY` and read with
//! `BPF_MAP_LOOKUP_ELEM` on raw byte buffers. Values are u64 counters (u32 accepted);
//! per-CPU maps are summed over CPUs.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Map, MapData};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The `bpf_attr` member these two commands use.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut ElemAttr) -> std::io::Result<()> {
    // SAFETY: attr is a valid, fully initialized bpf_attr prefix of the given size whose
    // pointers refer to live buffers of the map's key and value sizes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `key` to `value` in the map behind `map_fd` (sizes are the map's).
pub(crate) fn update_elem(map_fd: i32, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map_fd as u32,
        key: key.as_ptr() as u64,
        value_or_next_key: value.as_ptr() as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
}

/// Reads `key`'s value into `value` (per-CPU maps: every possible CPU's, 8-byte strides).
pub(crate) fn lookup_elem(map_fd: i32, key: &[u8], value: &mut [u8]) -> std::io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map_fd as u32,
        key: key.as_ptr() as u64,
        value_or_next_key: value.as_mut_ptr() as u64,
        ..ElemAttr::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)
}

/// Why a table map cannot be read or pruned.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("not a hash or array map; tables read those")]
    NotATable,
    #[error("values are {0} bytes; table values are u64 (or u32) counters")]
    ValueSize(usize),
    #[error(transparent)]
    Info(#[from] aya::maps::MapError),
    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Deletes `key` from the map behind `map_fd`; `Ok(false)` when it was not there.
pub(crate) fn delete_elem(map_fd: i32, key: &[u8]) -> std::io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map_fd as u32,
        key: key.as_ptr() as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `keys` (the map's key size; per-CPU split keys are not) from a hash table;
/// keys already gone are no error. Returns how many it deleted.
pub(crate) fn delete(m: &Map, keys: &[Vec<u8>]) -> Result<usize, TableError> {
    let (data, _) = table_data(m).ok_or(TableError::NotATable)?;
    let fd = data.fd().as_fd().as_raw_fd();
    let mut deleted = 0;
    for key in keys {
        match delete_elem(fd, key) {
            Ok(gone) => deleted += usize::from(gone),
            Err(source) => {
                return Err(TableError::Syscall {
                    call: "BPF_MAP_DELETE_ELEM",
                    source,
                })
            }
        }
    }
    Ok(deleted)
}

/// The map's data and whether it is per-CPU; other map types are not tables.
pub(crate) fn table_data(m: &Map) -> Option<(&MapData, bool)> {
    Some(match m {
        Map::HashMap(d) | Map::LruHashMap(d) | Map::Array(d) => (d, false),
        Map::PerCpuHashMap(d) | Map::PerCpuLruHashMap(d) | Map::PerCpuArray(d) => (d, true),
        _ => return None,
    })
}

/// The map's data, for info queries.
pub(crate) fn map_data(m: &Map) -> Option<&MapData> {
    match m {
        Map::RingBuf(d) | Map::PerfEventArray(d) | Map::CgrpStorage(d) => Some(d),
        other => table_data(other).map(|(d, _)| d),
    }
}

/// Number of possible CPUs: the stride count of per-CPU values.
fn possible_cpus() -> Result<usize, TableError> {
    aya::util::nr_cpus().map_err(|(call, source)| TableError::Syscall { call, source })
}

/// A table map's entries as one read found them.
#[derive(Debug)]
pub struct TableContents {
    /// (key bytes, value); per-CPU values summed, or with `split_cpus` one entry per
    /// CPU, the CPU appended to the key.
    pub entries: Vec<(Vec<u8>, u64)>,
    /// Hash maps: keys held against `max_entries` (0..=1); at 1 new keys fail (or, in
    /// an LRU map, push out old ones). Arrays hold every key: `None`.
    pub fill: Option<f64>,
}

/// All entries of a table map, and how full it is.
pub(crate) fn read(m: &Map, split_cpus: bool) -> Result<TableContents, TableError> {
    let (data, per_cpu) = table_data(m).ok_or(TableError::NotATable)?;
    let hash = !matches!(m, Map::Array(_) | Map::PerCpuArray(_));
    let info = data.info()?;
    let max_entries = info.max_entries();
    let (key_size, value_size) = (info.key_size() as usize, info.value_size() as usize);
    if value_size != 8 && value_size != 4 {
        return Err(TableError::ValueSize(value_size));
    }
    let stride = value_size.next_multiple_of(8);
    let cpus = if per_cpu { possible_cpus()? } else { 1 };
    let fd = data.fd().as_fd().as_raw_fd() as u32;
    let mut out = Vec::new();
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut value = vec![0u8; if per_cpu { stride * cpus } else { value_size }];
    let mut first = true;
    let mut keys = 0u64;
    loop {
        let mut attr = ElemAttr {
            map_fd: fd,
            key: if first { 0 } else { key.as_ptr() as u64 },
            value_or_next_key: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(source) => {
                return Err(TableError::Syscall {
                    call: "BPF_MAP_GET_NEXT_KEY",
                    source,
                })
            }
        }
        first = false;
        std::mem::swap(&mut key, &mut next);
        let mut attr = ElemAttr {
            map_fd: fd,
            key: key.as_ptr() as u64,
            value_or_next_key: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => {}
            // Deleted between the two calls: skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => {
                return Err(TableError::Syscall {
                    call: "BPF_MAP_LOOKUP_ELEM",
                    source,
                })
            }
        }
        keys += 1;
        let per = |cpu: usize| {
            let v = &value[cpu * stride..cpu * stride + value_size];
            if value_size == 8 {
                u64::from_ne_bytes(v.try_into().unwrap())
            } else {
                u64::from(u32::from_ne_bytes(v.try_into().unwrap()))
            }
        };
        if split_cpus && per_cpu {
            // One entry per CPU, the CPU (u16) appended to the key: the config's `cpu`
            // label reads it.
            for cpu in 0..cpus {
                let mut k = key.clone();
                k.extend((cpu as u16).to_ne_bytes());
                out.push((k, per(cpu)));
            }
        } else {
            out.push((
                key.clone(),
                (0..cpus).map(per).fold(0u64, u64::wrapping_add),
            ));
        }
    }
    Ok(TableContents {
        entries: out,
        fill: (hash && max_entries > 0).then(|| keys as f64 / f64::from(max_entries)),
    })
}
