//! `static_map`: replaces a value by the one configured for it.

use std::collections::{BTreeMap, HashMap};

use super::{DecodeError, Decoder};

/// Looks the input up in a fixed table.
#[derive(Debug)]
pub struct StaticMap {
    map: HashMap<Vec<u8>, Vec<u8>>,
    allow_unknown: bool,
}

impl StaticMap {
    /// A table; inputs missing from it become `unknown:<input>`, or stay as they are
    /// with `allow_unknown`.
    pub fn new(map: &BTreeMap<String, String>, allow_unknown: bool) -> Self {
        Self {
            map: map
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            allow_unknown,
        }
    }
}

impl Decoder for StaticMap {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(match self.map.get(input) {
            Some(v) => v.clone(),
            None if self.allow_unknown => input.to_vec(),
            None => [b"unknown:", input].concat(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_marks_unknown() {
        let table: BTreeMap<String, String> = [("1".to_string(), "read".to_string())].into();
        assert_eq!(StaticMap::new(&table, false).decode(b"1").unwrap(), b"read");
        assert_eq!(
            StaticMap::new(&table, false).decode(b"2").unwrap(),
            b"unknown:2"
        );
        assert_eq!(StaticMap::new(&table, true).decode(b"2").unwrap(), b"2");
    }
}
