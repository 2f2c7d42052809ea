//! Entries a config gives for named maps (`maps:`, match tables as data): each key and
//! value encoded to the map's own key type and sizes, written after load and before
//! attach, and rewritten in place when a reload changes them.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd},
};

use aya::{maps::Map, Ebpf};

use crate::table;

/// A map's key type, as the object's BTF declares it (`__type(key, T)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// An integer or enum of `size` bytes.
    Int { size: u32, signed: bool },
    /// `char[len]`: strings, zero-padded.
    Chars { len: u32 },
    /// A struct, union or other type, which config scalars cannot spell.
    Other { size: u32 },
}

/// The entries of one map: keys as written (a config file's keys are text; an integer
/// key type reads them as numbers), integer values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntries {
    pub map: String,
    pub entries: Vec<(String, i128)>,
}

/// Why a map's entries cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("maps.{map}{}: {problem}", key.as_ref().map(|k| format!("[{k:?}]")).unwrap_or_default())]
pub struct EntryError {
    pub map: String,
    /// The key at fault, if one is.
    pub key: Option<String>,
    #[source]
    pub problem: EntryProblem,
}

/// What is wrong with an entry or its map.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error("no map of this name in the object")]
    Missing,
    #[error("not a hash, LRU hash or array map (per-CPU maps take no entries from config)")]
    MapType,
    #[error("{count} entries, but the map holds {max} (max_entries)")]
    TooMany { count: usize, max: u32 },
    #[error("{len} bytes, too long for the map's char[{room}] key")]
    TooLong { len: usize, room: u32 },
    #[error("not an integer, but the map's key is a {size}-byte integer")]
    NotAnInteger { size: u32 },
    #[error("the map's key is a {size}-byte struct or union: only integer and char-array keys can be given")]
    KeyType { size: u32 },
    #[error("does not fit the map's {size}-byte {what}")]
    Range { size: u32, what: &'static str },
    #[error(
        "the map's values are {size} bytes: only integer values of 1, 2, 4 or 8 bytes can be given"
    )]
    ValueSize { size: u32 },
    #[error("an array map's index must be below its max_entries ({max})")]
    Index { max: u32 },
    #[error("the kernel refused it: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading the map's sizes: {0}")]
    Info(#[source] Box<aya::maps::MapError>),
}

/// `v` as a native-endian integer of `size` bytes, if it fits (signed where negative).
fn int_bytes(v: i128, size: u32, signed: bool) -> Option<Vec<u8>> {
    if !matches!(size, 1 | 2 | 4 | 8) {
        return None;
    }
    let bits = size * 8;
    let (min, max) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    if !(min..=max).contains(&v) {
        return None;
    }
    let u = v as u64;
    Some(match size {
        1 => (u as u8).to_ne_bytes().to_vec(),
        2 => (u as u16).to_ne_bytes().to_vec(),
        4 => (u as u32).to_ne_bytes().to_vec(),
        _ => u.to_ne_bytes().to_vec(),
    })
}

/// A map as entries are written to it.
struct Target {
    fd: i32,
    key_type: Option<KeyType>,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    array: bool,
}

impl Target {
    fn of(m: &Map, key_type: Option<KeyType>) -> Result<Self, EntryProblem> {
        let (data, per_cpu) = table::table_data(m).ok_or(EntryProblem::MapType)?;
        if per_cpu {
            return Err(EntryProblem::MapType);
        }
        let info = data.info().map_err(|e| EntryProblem::Info(Box::new(e)))?;
        Ok(Self {
            fd: data.fd().as_fd().as_raw_fd(),
            key_type,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            array: matches!(m, Map::Array(_)),
        })
    }

    /// The key's bytes, as the map's key type spells it.
    fn key(&self, k: &str) -> Result<Vec<u8>, EntryProblem> {
        let size = self.key_size;
        let number = k.parse::<i128>().ok();
        let key_type = self.key_type.unwrap_or(match number {
            // No BTF type (`__uint(key_size, N)`): a number where the size is an
            // integer's, else text.
            Some(v) if matches!(size, 1 | 2 | 4 | 8) => KeyType::Int {
                size,
                signed: v < 0,
            },
            _ => KeyType::Chars { len: size },
        });
        let bytes = match key_type {
            KeyType::Int { size, signed } => {
                let v = number.ok_or(EntryProblem::NotAnInteger { size })?;
                if self.array && v >= i128::from(self.max_entries) {
                    return Err(EntryProblem::Index {
                        max: self.max_entries,
                    });
                }
                int_bytes(v, size, signed).ok_or(EntryProblem::Range {
                    size,
                    what: "integer key",
                })?
            }
            KeyType::Chars { len } => {
                if k.len() > len as usize {
                    return Err(EntryProblem::TooLong {
                        len: k.len(),
                        room: len,
                    });
                }
                let mut b = k.as_bytes().to_vec();
                b.resize(len as usize, 0);
                b
            }
            KeyType::Other { size } => return Err(EntryProblem::KeyType { size }),
        };
        if bytes.len() != size as usize {
            return Err(EntryProblem::KeyType { size });
        }
        Ok(bytes)
    }

    fn value(&self, v: i128) -> Result<Vec<u8>, EntryProblem> {
        if !matches!(self.value_size, 1 | 2 | 4 | 8) {
            return Err(EntryProblem::ValueSize {
                size: self.value_size,
            });
        }
        int_bytes(v, self.value_size, v < 0).ok_or(EntryProblem::Range {
            size: self.value_size,
            what: "value",
        })
    }

    /// Every entry encoded, by key bytes; an error names the key at fault.
    fn encode(&self, e: &MapEntries) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, EntryError> {
        let fail = |key: Option<&String>, problem| EntryError {
            map: e.map.clone(),
            key: key.cloned(),
            problem,
        };
        if e.entries.len() > self.max_entries as usize {
            return Err(fail(
                None,
                EntryProblem::TooMany {
                    count: e.entries.len(),
                    max: self.max_entries,
                },
            ));
        }
        e.entries
            .iter()
            .map(|(k, v)| {
                let key = self.key(k).map_err(|p| fail(Some(k), p))?;
                let value = self.value(*v).map_err(|p| fail(Some(k), p))?;
                Ok((key, value))
            })
            .collect()
    }
}

/// Writes `want` into its maps, and (on a reload) removes what `had` held that `want`
/// does not: keys gone are deleted (an array's are set to 0), changed or new ones
/// written, unchanged ones not touched. Every map is checked before any is written.
///
/// # Errors
/// A map missing or of a type that takes no entries, or a key or value its types
/// cannot hold; the kernel refusing a write.
pub(crate) fn write(
    ebpf: &Ebpf,
    key_types: &[(String, KeyType)],
    had: &[MapEntries],
    want: &[MapEntries],
) -> Result<(), EntryError> {
    let mut plans = Vec::new();
    // A map no longer named keeps nothing of what was written into it.
    let dropped: Vec<MapEntries> = had
        .iter()
        .filter(|h| !want.iter().any(|w| w.map == h.map))
        .map(|h| MapEntries {
            map: h.map.clone(),
            entries: Vec::new(),
        })
        .collect();
    for e in want.iter().chain(&dropped) {
        let fail = |problem| EntryError {
            map: e.map.clone(),
            key: None,
            problem,
        };
        let m = ebpf
            .map(&e.map)
            .ok_or_else(|| fail(EntryProblem::Missing))?;
        let key_type = key_types.iter().find(|(n, _)| *n == e.map).map(|(_, t)| *t);
        let target = Target::of(m, key_type).map_err(fail)?;
        let new = target.encode(e)?;
        let old = match had.iter().find(|h| h.map == e.map) {
            // What was written before encoded as then: the map's types have not changed.
            Some(h) => target.encode(h).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        plans.push((e.map.as_str(), target, old, new));
    }
    for (map, target, old, new) in plans {
        let fail = |problem| EntryError {
            map: map.to_string(),
            key: None,
            problem,
        };
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            let done = if target.array {
                table::update_elem(target.fd, key, &vec![0; target.value_size as usize])
            } else {
                table::delete_elem(target.fd, key).map(drop)
            };
            done.map_err(|e| fail(EntryProblem::Write(e)))?;
        }
        for (key, value) in new.iter().filter(|(k, v)| old.get(*k) != Some(*v)) {
            table::update_elem(target.fd, key, value).map_err(|e| fail(EntryProblem::Write(e)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(key_type: Option<KeyType>, key_size: u32, value_size: u32) -> Target {
        Target {
            fd: -1,
            key_type,
            key_size,
            value_size,
            max_entries: 4,
            array: false,
        }
    }

    fn entries(list: &[(&str, i128)]) -> MapEntries {
        MapEntries {
            map: "comms".into(),
            entries: list.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn error(t: &Target, list: &[(&str, i128)]) -> String {
        t.encode(&entries(list)).unwrap_err().to_string()
    }

    #[test]
    fn strings_are_zero_padded_to_a_char_array_key() {
        let t = target(Some(KeyType::Chars { len: 16 }), 16, 8);
        let key = t.key("bash").unwrap();
        assert_eq!(&key[..4], b"bash");
        assert!(key[4..].iter().all(|&b| b == 0));
        assert_eq!(key.len(), 16);
        // A number is text to a char array.
        assert_eq!(&t.key("123").unwrap()[..4], b"123\0");
        assert_eq!(t.value(7).unwrap(), 7u64.to_ne_bytes());
    }

    #[test]
    fn keys_that_do_not_fit_name_the_map_the_key_and_the_reason() {
        let t = target(Some(KeyType::Chars { len: 16 }), 16, 4);
        assert_eq!(
            error(&t, &[("ok", 1), ("a-name-of-nineteen", 2)]),
            "maps.comms[\"a-name-of-nineteen\"]: 18 bytes, too long for the map's char[16] key"
        );
        assert_eq!(
            error(&t, &[("x", 1 << 40)]),
            "maps.comms[\"x\"]: does not fit the map's 4-byte value"
        );
        let ints = target(
            Some(KeyType::Int {
                size: 2,
                signed: false,
            }),
            2,
            8,
        );
        for (k, problem) in [
            ("70000", "does not fit the map's 2-byte integer key"),
            ("-1", "does not fit the map's 2-byte integer key"),
            ("x", "not an integer, but the map's key is a 2-byte integer"),
        ] {
            assert_eq!(
                error(&ints, &[(k, 1)]),
                format!("maps.comms[{k:?}]: {problem}")
            );
        }
        let structs = target(Some(KeyType::Other { size: 12 }), 12, 8);
        assert!(error(&structs, &[("1", 1)]).contains("12-byte struct or union"));
        let wide = target(Some(KeyType::Chars { len: 16 }), 16, 16);
        assert!(error(&wide, &[("a", 1)]).contains("values are 16 bytes"));
    }

    #[test]
    fn a_map_too_small_for_the_entries_is_an_error() {
        let t = target(
            Some(KeyType::Int {
                size: 4,
                signed: false,
            }),
            4,
            8,
        );
        let keys: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        let list: Vec<(&str, i128)> = keys.iter().map(|k| (k.as_str(), 1)).collect();
        assert_eq!(
            error(&t, &list),
            "maps.comms: 5 entries, but the map holds 4 (max_entries)"
        );
    }

    #[test]
    fn integer_keys_follow_the_btf_type_or_else_the_key_size() {
        let signed = target(
            Some(KeyType::Int {
                size: 4,
                signed: true,
            }),
            4,
            8,
        );
        assert_eq!(signed.key("-2").unwrap(), (-2i32).to_ne_bytes());
        assert!(signed.key("2147483648").is_err());
        let untyped = target(None, 8, 8);
        assert_eq!(untyped.key("5").unwrap(), 5u64.to_ne_bytes());
        assert_eq!(&untyped.key("sshd").unwrap()[..5], b"sshd\0");
    }
}
