//! `inet_ip`: a 4-byte IPv4 or 16-byte IPv6 address (network order) as text.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{DecodeError, Decoder};

/// `10.0.0.1`, `fe80::1`; IPv4-mapped IPv6 addresses print as IPv4.
#[derive(Debug)]
pub struct InetIp;

impl Decoder for InetIp {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let text = match input.len() {
            4 => Ipv4Addr::from(<[u8; 4]>::try_from(input).unwrap()).to_string(),
            16 => {
                let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(input).unwrap());
                v6.to_ipv4_mapped()
                    .map_or_else(|| v6.to_string(), |v4| v4.to_string())
            }
            n => {
                return Err(DecodeError::Invalid(format!(
                    "inet_ip needs 4 or 16 bytes, got {n}"
                )))
            }
        };
        Ok(text.into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(InetIp.decode(&[1, 1, 1, 1]).unwrap(), b"1.1.1.1");
        let mut v6 = [0u8; 16];
        v6[0] = 0xfe;
        v6[1] = 0x80;
        v6[15] = 1;
        assert_eq!(InetIp.decode(&v6).unwrap(), b"fe80::1");
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 7];
        assert_eq!(InetIp.decode(&mapped).unwrap(), b"10.0.0.7");
        assert!(InetIp.decode(&[1, 2, 3]).is_err());
    }
}
