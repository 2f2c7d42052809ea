//! `string`: a NUL-terminated (or NUL-padded) C string.

use super::{DecodeError, Decoder};

/// Text up to the first NUL; must be UTF-8.
#[derive(Debug)]
pub struct CString;

impl Decoder for CString {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let end = input.iter().position(|&b| b == 0).unwrap_or(input.len());
        let text = &input[..end];
        std::str::from_utf8(text)
            .map_err(|e| DecodeError::Invalid(format!("string is not UTF-8: {e}")))?;
        Ok(text.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        assert_eq!(CString.decode(b"nginx\0\0\0garbage").unwrap(), b"nginx");
        assert_eq!(CString.decode(b"full").unwrap(), b"full");
        assert_eq!(CString.decode(b"").unwrap(), b"");
        assert!(CString.decode(b"\xff\xfe\0").is_err());
    }
}
