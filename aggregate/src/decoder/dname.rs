//! `dname`: a DNS name in wire format (`\x07example\x03com\x00`) as `example.com`.

use super::{DecodeError, Decoder};

/// Dotted DNS name; input that does not parse is passed through unchanged.
#[derive(Debug)]
pub struct Dname;

impl Decoder for Dname {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(input.len());
        let mut at = 0;
        while at < input.len() {
            let n = usize::from(input[at]);
            if n == 0 {
                break;
            }
            let Some(label) = input.get(at + 1..at + 1 + n) else {
                return Ok(input.to_vec());
            };
            if !out.is_empty() {
                out.push(b'.');
            }
            out.extend_from_slice(label);
            at += 1 + n;
        }
        if out.is_empty() {
            out.push(b'.');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            Dname.decode(b"\x07example\x03com\x00").unwrap(),
            b"example.com"
        );
        assert_eq!(
            Dname.decode(b"\x03www\x07example\x03com").unwrap(),
            b"www.example.com"
        );
        assert_eq!(Dname.decode(b"").unwrap(), b".");
        assert_eq!(Dname.decode(b"\x00\x00").unwrap(), b".");
        assert_eq!(
            Dname.decode(b"\x09short").unwrap(),
            b"\x09short",
            "truncated: unchanged"
        );
    }
}
