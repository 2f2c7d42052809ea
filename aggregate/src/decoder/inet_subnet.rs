//! `inet_subnet`: the destination network of a connection, as the seed project shows it.
//!
//! Input is 4 bytes: the address family (native u16) and the address's first two bytes
//! (network order). IPv4 gives the first octet (`127`), IPv6 the first 16-bit group as
//! a prefix (`fe80::/16`).

use super::{DecodeError, Decoder};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Subnet label from family and leading address bytes.
#[derive(Debug)]
pub struct InetSubnet;

impl Decoder for InetSubnet {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let [f0, f1, a, b] = input else {
            return Err(DecodeError::Invalid(format!(
                "inet_subnet needs 4 bytes, got {}",
                input.len()
            )));
        };
        match u16::from_ne_bytes([*f0, *f1]) {
            AF_INET => Ok(a.to_string().into_bytes()),
            AF_INET6 => Ok(format!("{:x}::/16", u16::from_be_bytes([*a, *b])).into_bytes()),
            f => Err(DecodeError::Invalid(format!(
                "address family {f} is neither AF_INET nor AF_INET6"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(family: u16, a: u8, b: u8) -> Vec<u8> {
        let mut v = family.to_ne_bytes().to_vec();
        v.extend([a, b]);
        v
    }

    #[test]
    fn families() {
        assert_eq!(InetSubnet.decode(&input(2, 127, 0)).unwrap(), b"127");
        assert_eq!(
            InetSubnet.decode(&input(10, 0xfe, 0x80)).unwrap(),
            b"fe80::/16"
        );
        assert_eq!(InetSubnet.decode(&input(10, 0, 0)).unwrap(), b"0::/16");
        assert!(InetSubnet.decode(&input(1, 0, 0)).is_err());
        assert!(InetSubnet.decode(&[2, 0, 127]).is_err());
    }
}
