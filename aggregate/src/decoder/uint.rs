//! `uint`: a native-endian unsigned integer of 1, 2, 4 or 8 bytes as decimal text.

use super::{DecodeError, Decoder};

/// Reads a native-endian unsigned integer of 1, 2, 4 or 8 bytes.
pub(crate) fn native(input: &[u8]) -> Result<u64, DecodeError> {
    Ok(match input.len() {
        1 => u64::from(input[0]),
        2 => u64::from(u16::from_ne_bytes(input.try_into().unwrap())),
        4 => u64::from(u32::from_ne_bytes(input.try_into().unwrap())),
        8 => u64::from_ne_bytes(input.try_into().unwrap()),
        n => {
            return Err(DecodeError::Invalid(format!(
                "{n} bytes is not an unsigned integer size (1, 2, 4, 8)"
            )))
        }
    })
}

/// Reads a number that is either decimal text (a previous decoder's output, as `uint`
/// gives) or, for inputs of `raw` bytes that are not all digits, a native integer.
pub(crate) fn number(input: &[u8], raw: usize) -> Result<u64, DecodeError> {
    if !input.is_empty()
        && input.iter().all(u8::is_ascii_digit)
        && !(input.len() == raw && raw != 8)
    {
        if let Some(n) = std::str::from_utf8(input).ok().and_then(|s| s.parse().ok()) {
            return Ok(n);
        }
    }
    if input.len() == raw {
        return native(input);
    }
    Err(DecodeError::Invalid(format!(
        "expected decimal text or a {raw} byte integer, got {} bytes",
        input.len()
    )))
}

/// Decimal text of an unsigned integer.
#[derive(Debug)]
pub struct Uint;

impl Decoder for Uint {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(native(input)?.to_string().into_bytes())
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
        assert_eq!(
            Uint.decode(&u64::MAX.to_ne_bytes()).unwrap(),
            b"18446744073709551615"
        );
    }

    #[test]
    fn malformed() {
        assert!(Uint.decode(&[1, 2, 3]).is_err());
        assert!(Uint.decode(&[]).is_err());
        assert!(Uint.decode(&[0; 16]).is_err());
    }

    #[test]
    fn numbers_from_text_or_raw() {
        assert_eq!(number(b"42", 8).unwrap(), 42);
        assert_eq!(number(&42u64.to_ne_bytes(), 8).unwrap(), 42);
        assert_eq!(
            number(b"12345678", 8).unwrap(),
            12345678,
            "8 digits read as text"
        );
        assert_eq!(number(&7u32.to_ne_bytes(), 4).unwrap(), 7);
        assert!(number(b"x1", 8).is_err());
        assert!(number(b"", 8).is_err());
    }
}
