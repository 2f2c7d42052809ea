//! `uint` and `hex`: native-endian unsigned integers as decimal or hex text.

use super::{DecodeError, Decoder};

fn native(input: &[u8]) -> Result<u64, DecodeError> {
    Ok(match input.len() {
        1 => u64::from(input[0]),
        2 => u64::from(u16::from_ne_bytes(input.try_into().unwrap())),
        4 => u64::from(u32::from_ne_bytes(input.try_into().unwrap())),
        8 => u64::from_ne_bytes(input.try_into().unwrap()),
        n => return Err(DecodeError::Invalid(format!("{n} bytes is not an unsigned integer size"))),
    })
}

/// Decimal text of an unsigned integer.
#[derive(Debug)]
pub struct Uint;

impl Decoder for Uint {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(native(input)?.to_string().into_bytes())
    }
}

/// `0x`-prefixed hex text of an unsigned integer.
#[derive(Debug)]
pub struct Hex;

impl Decoder for Hex {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(format!("0x{:x}", native(input)?).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Uint.decode(&[7]).unwrap(), b"7");
        assert_eq!(Uint.decode(&300u16.to_ne_bytes()).unwrap(), b"300");
        assert_eq!(Uint.decode(&70000u32.to_ne_bytes()).unwrap(), b"70000");
        assert_eq!(Uint.decode(&u64::MAX.to_ne_bytes()).unwrap(), b"18446744073709551615");
        assert_eq!(Hex.decode(&255u32.to_ne_bytes()).unwrap(), b"0xff");
    }

    #[test]
    fn malformed() {
        assert!(Uint.decode(&[1, 2, 3]).is_err());
        assert!(Uint.decode(&[]).is_err());
        assert!(Hex.decode(&[0; 16]).is_err());
    }
}
