//! `regexp`: keeps values that match any configured pattern; any other value drops the
//! whole label set (counted, not exported).

use super::{DecodeError, Decoder};

/// Filter by regular expressions.
#[derive(Debug)]
pub struct Regexp(regex::RegexSet);

impl Regexp {
    /// Compiles the patterns.
    ///
    /// # Errors
    /// A pattern does not compile (no pattern at all is a config error, checked with
    /// the decoder's other settings).
    pub fn new(patterns: &[String]) -> Result<Self, regex::Error> {
        regex::RegexSet::new(patterns).map(Self)
    }
}

impl Decoder for Regexp {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let text = std::str::from_utf8(input)
            .map_err(|_| DecodeError::Invalid("regexp input is not UTF-8".into()))?;
        if self.0.is_match(text) {
            Ok(input.to_vec())
        } else {
            Err(DecodeError::Dropped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let d = Regexp::new(&["^systemd-journal$".into(), "^syslog".into()]).unwrap();
        assert_eq!(d.decode(b"syslog-ng").unwrap(), b"syslog-ng");
        assert_eq!(d.decode(b"bash"), Err(DecodeError::Dropped));
        assert!(d.decode(b"\xff").is_err());
        assert!(Regexp::new(&["(".into()]).is_err());
    }
}
