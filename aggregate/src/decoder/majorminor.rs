//! `majorminor`: the kernel's u32 device number (`new_encode_dev`) as a block device
//! name from /proc/partitions, else from sysfs (`/sys/dev/block/<major>:<minor>`: disks
//! that hide from /proc/partitions, such as null_blk's on 5.10), `unknown:<major>:<minor>`
//! otherwise.

use super::{DecodeError, Decoder};

/// Block device names by device number.
#[derive(Debug)]
pub struct MajorMinor {
    partitions: std::path::PathBuf,
}

impl MajorMinor {
    /// Reads names from `partitions` (normally /proc/partitions) at each decode: device
    /// numbers are decoded once per series, and disks come and go.
    pub fn new(partitions: impl Into<std::path::PathBuf>) -> Self {
        Self {
            partitions: partitions.into(),
        }
    }
}

/// Splits a `new_encode_dev` value: minor's low byte, major, minor's high bits.
pub(crate) fn split(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

impl Decoder for MajorMinor {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let Some(raw) = input.get(..4) else {
            return Err(DecodeError::Invalid(format!(
                "majorminor needs 4 bytes, got {}",
                input.len()
            )));
        };
        let (major, minor) = split(u32::from_ne_bytes(raw.try_into().unwrap()));
        let table = std::fs::read_to_string(&self.partitions).unwrap_or_default();
        let name = table.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0] == major.to_string() && f[1] == minor.to_string())
                .then(|| f[3].to_string())
        });
        let sysfs = || {
            let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
            Some(link.file_name()?.to_string_lossy().into_owned())
        };
        Ok(name
            .or_else(sysfs)
            .unwrap_or_else(|| format!("unknown:{major}:{minor}"))
            .into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_partitions() {
        let file = std::env::temp_dir().join(format!("partitions-{}", std::process::id()));
        std::fs::write(&file, "major minor  #blocks  name\n\n 259        0  500107608 nvme0n1\n   8       17  1000 sdb1\n").unwrap();
        let d = MajorMinor::new(&file);
        let enc = |major: u32, minor: u32| {
            ((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)).to_ne_bytes()
        };
        assert_eq!(d.decode(&enc(259, 0)).unwrap(), b"nvme0n1");
        assert_eq!(d.decode(&enc(8, 17)).unwrap(), b"sdb1");
        assert_eq!(d.decode(&enc(8, 300)).unwrap(), b"unknown:8:300");
        // Not in the file: sysfs names it (1:3 is /dev/null, a character device).
        assert_eq!(d.decode(&enc(1, 3)).unwrap(), b"unknown:1:3");
        assert_eq!(split(u32::from_ne_bytes(enc(8, 300))), (8, 300));
        assert!(d.decode(&[1, 2]).is_err());
        // A disk missing from the file: sysfs names it.
        std::fs::write(&file, "").unwrap();
        let sysfs = std::fs::read_dir("/sys/dev/block")
            .into_iter()
            .flatten()
            .next();
        if let Some(entry) = sysfs {
            let entry = entry.unwrap();
            let number = entry.file_name().into_string().unwrap();
            let (major, minor) = number.split_once(':').unwrap();
            let name = std::fs::read_link(entry.path()).unwrap();
            assert_eq!(
                d.decode(&enc(major.parse().unwrap(), minor.parse().unwrap()))
                    .unwrap(),
                name.file_name().unwrap().as_encoded_bytes()
            );
        }
        std::fs::remove_file(file).unwrap();
    }
}
