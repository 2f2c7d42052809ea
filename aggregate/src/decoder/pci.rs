//! `pci_vendor`, `pci_device`, `pci_class`, `pci_subclass`: PCI ids (decimal text, e.g.
//! after `uint`) as names from the system's pci.ids database.

use std::{collections::HashMap, path::Path, sync::Arc};

use super::{uint::number, DecodeError, Decoder};

/// Where distributions install pci.ids.
pub const PCI_IDS_PATHS: &[&str] = &["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];
/// Label value when no database exists, as the reference exporter writes it.
const MISSING: &str = "missing pci.ids db";

/// The parts of pci.ids the decoders use.
#[derive(Debug, Default)]
pub struct PciDb {
    vendors: HashMap<u16, String>,
    devices: HashMap<(u16, u16), String>,
    classes: HashMap<u8, String>,
    subclasses: HashMap<(u8, u8), String>,
}

impl PciDb {
    /// Parses pci.ids text: vendors with tab-indented devices, then `C` class lines
    /// with tab-indented subclasses; deeper levels are skipped.
    pub fn parse(text: &str) -> Self {
        let mut db = Self::default();
        let (mut vendor, mut class) = (None, None);
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() || line.starts_with("\t\t") {
                continue;
            }
            let hex_name = |s: &str| {
                let (id, name) = s.split_once("  ")?;
                Some((
                    u32::from_str_radix(id.trim(), 16).ok()?,
                    name.trim().to_string(),
                ))
            };
            if let Some(rest) = line.strip_prefix('\t') {
                let Some((id, name)) = hex_name(rest) else {
                    continue;
                };
                match (vendor, class) {
                    (Some(v), None) => _ = db.devices.insert((v, id as u16), name),
                    (None, Some(c)) => _ = db.subclasses.insert((c, id as u8), name),
                    _ => {}
                }
            } else if let Some(rest) = line.strip_prefix("C ") {
                let Some((id, name)) = hex_name(rest) else {
                    continue;
                };
                (vendor, class) = (None, Some(id as u8));
                db.classes.insert(id as u8, name);
            } else if let Some((id, name)) = hex_name(line) {
                (vendor, class) = (Some(id as u16), None);
                db.vendors.insert(id as u16, name);
            }
        }
        db
    }

    /// The first database found in the usual places.
    pub fn load_system() -> Option<Self> {
        PCI_IDS_PATHS
            .iter()
            .find_map(|p| std::fs::read_to_string(Path::new(p)).ok())
            .map(|t| Self::parse(&t))
    }
}

/// Which name a PCI decoder looks up.
#[derive(Debug, Clone, Copy)]
pub enum PciKind {
    /// `0x8086` → `Intel Corporation`.
    Vendor,
    /// `vendor << 16 | device` → device name.
    Device,
    /// class byte → class name.
    Class,
    /// `class << 8 | subclass` → subclass name.
    Subclass,
}

impl PciKind {
    /// The kind a decoder name (`pci_vendor`, ...) looks up.
    pub fn named(decoder: &str) -> Option<Self> {
        Some(match decoder {
            "pci_vendor" => Self::Vendor,
            "pci_device" => Self::Device,
            "pci_class" => Self::Class,
            "pci_subclass" => Self::Subclass,
            _ => return None,
        })
    }

    /// The label value of a number the database does not name.
    fn unknown(self, n: u64) -> String {
        match self {
            Self::Vendor => format!("unknown pci vendor: 0x{:04x}", n as u16),
            Self::Device => format!("unknown pci device: 0x{:08x}", n as u32),
            Self::Class => format!("unknown pci class: 0x{:02x}", n as u8),
            Self::Subclass => format!(
                "unknown pci subclass: 0x{:02x} (class 0x{:02x})",
                n as u8,
                (n >> 8) as u8
            ),
        }
    }
}

/// A PCI name lookup.
#[derive(Debug)]
pub struct Pci {
    /// The database, when the system has one.
    pub db: Option<Arc<PciDb>>,
    /// What to look up.
    pub kind: PciKind,
}

impl Decoder for Pci {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let Some(db) = &self.db else {
            return Ok(MISSING.into());
        };
        let n = number(input, 8)?;
        let name = match self.kind {
            PciKind::Vendor => db.vendors.get(&(n as u16)),
            PciKind::Device => db.devices.get(&((n >> 16) as u16, n as u16)),
            PciKind::Class => db.classes.get(&(n as u8)),
            PciKind::Subclass => db.subclasses.get(&((n >> 8) as u8, n as u8)),
        };
        Ok(match name {
            Some(name) => name.clone().into_bytes(),
            None => self.kind.unknown(n).into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "# comment\n8086  Intel Corporation\n\t1000  82542 Gigabit Ethernet Controller (Fiber)\n\t\t8086 1000  PRO/1000 Gigabit Server Adapter\n10de  NVIDIA Corporation\nC 02  Network controller\n\t00  Ethernet controller\n\t\t00  prog-if\nC 03  Display controller\n";

    fn pci(kind: PciKind) -> Pci {
        Pci {
            db: Some(Arc::new(PciDb::parse(IDS))),
            kind,
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(
            pci(PciKind::Vendor).decode(b"32902").unwrap(),
            b"Intel Corporation"
        );
        assert_eq!(
            pci(PciKind::Device)
                .decode(format!("{}", 0x8086_1000u32).as_bytes())
                .unwrap(),
            b"82542 Gigabit Ethernet Controller (Fiber)"
        );
        assert_eq!(
            pci(PciKind::Class).decode(b"2").unwrap(),
            b"Network controller"
        );
        assert_eq!(
            pci(PciKind::Subclass).decode(b"512").unwrap(),
            b"Ethernet controller"
        );
        assert_eq!(
            pci(PciKind::Vendor).decode(b"1").unwrap(),
            b"unknown pci vendor: 0x0001"
        );
        assert_eq!(
            pci(PciKind::Subclass).decode(b"513").unwrap(),
            b"unknown pci subclass: 0x01 (class 0x02)"
        );
        assert!(pci(PciKind::Class).decode(b"zz").is_err());
        assert_eq!(
            Pci {
                db: None,
                kind: PciKind::Class
            }
            .decode(b"2")
            .unwrap(),
            b"missing pci.ids db"
        );
    }
}
