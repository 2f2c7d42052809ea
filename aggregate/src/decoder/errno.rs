//! `errno`: an error number (decimal text, e.g. after `uint`) as its name, `ENOENT`.

use super::{
    tables::{self, ERRNOS},
    uint::number,
    DecodeError, Decoder,
};

/// errno name, `unknown:<n>` for numbers without one.
#[derive(Debug)]
pub struct Errno;

impl Decoder for Errno {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        // Return values carry errors negated (-2): raw signed integers are accepted too.
        let n = match input.len() {
            4 if !input.iter().all(u8::is_ascii_digit) => {
                u64::from(i32::from_ne_bytes(input.try_into().unwrap()).unsigned_abs())
            }
            8 if !input.iter().all(u8::is_ascii_digit) => {
                i64::from_ne_bytes(input.try_into().unwrap()).unsigned_abs()
            }
            _ => number(input, 0)?,
        };
        Ok(match tables::name(ERRNOS, n) {
            Some(name) => name.as_bytes().to_vec(),
            None => format!("unknown:{n}").into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Errno.decode(b"2").unwrap(), b"ENOENT");
        assert_eq!(Errno.decode(b"13").unwrap(), b"EACCES");
        assert_eq!(
            Errno.decode(&(-2i64 as u64).to_ne_bytes()).unwrap(),
            b"ENOENT"
        );
        assert_eq!(
            Errno.decode(&(-13i32 as u32).to_ne_bytes()).unwrap(),
            b"EACCES"
        );
        assert_eq!(Errno.decode(b"9999").unwrap(), b"unknown:9999");
        assert!(Errno.decode(b"abc").is_err());
    }
}
