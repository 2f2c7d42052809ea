//! `ifname`: a network interface index (u32) as its name, `unknown:<n>` when gone.

use super::{uint::number, DecodeError, Decoder};

/// Interface name via if_indextoname.
#[derive(Debug)]
pub struct IfName;

impl Decoder for IfName {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let raw = if input.len() >= 4 && !input.iter().all(u8::is_ascii_digit) {
            &input[..4]
        } else {
            input
        };
        let index = number(raw, 4)?;
        let mut buf = [0u8; libc::IF_NAMESIZE];
        // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
        let name = u32::try_from(index)
            .ok()
            .map(|i| unsafe { libc::if_indextoname(i, buf.as_mut_ptr().cast()) })
            .filter(|p| !p.is_null());
        Ok(match name {
            Some(_) => buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())].to_vec(),
            None => format!("unknown:{index}").into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unknown() {
        assert_eq!(IfName.decode(&1u32.to_ne_bytes()).unwrap(), b"lo");
        assert_eq!(IfName.decode(b"1").unwrap(), b"lo");
        assert_eq!(
            IfName.decode(&999_999u32.to_ne_bytes()).unwrap(),
            b"unknown:999999"
        );
        assert!(IfName.decode(&[1, 2]).is_err());
    }
}
