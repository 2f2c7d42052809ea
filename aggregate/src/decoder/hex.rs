//! `hex`: raw bytes as lowercase hex text, in memory order.

use super::{DecodeError, Decoder};

/// Hex text of the input bytes.
#[derive(Debug)]
pub struct Hex;

impl Decoder for Hex {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        Ok(input
            .iter()
            .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_order() {
        assert_eq!(Hex.decode(&[0xde, 0xad, 0x01]).unwrap(), b"dead01");
        assert_eq!(Hex.decode(&[]).unwrap(), b"");
    }
}
