//! `syscall`: a syscall number (decimal text, e.g. after `uint`) as its name.

use super::{tables, uint::number, DecodeError, Decoder};

/// This architecture's own syscall numbers (then [`tables::SYSCALLS_COMMON`]).
const TABLE: &[(u64, &str)] = if cfg!(target_arch = "x86_64") {
    tables::SYSCALLS_X86_64
} else {
    tables::SYSCALLS_GENERIC
};

/// Syscall name, `unknown_syscall:<n>` for numbers without one.
#[derive(Debug)]
pub struct Syscall;

impl Decoder for Syscall {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let n = number(input, 8)?;
        Ok(
            match tables::name(TABLE, n).or_else(|| tables::name(tables::SYSCALLS_COMMON, n)) {
                Some(name) => name.as_bytes().to_vec(),
                None => format!("unknown_syscall:{n}").into_bytes(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn names() {
        assert_eq!(Syscall.decode(b"39").unwrap(), b"getpid");
        assert_eq!(Syscall.decode(b"0").unwrap(), b"read");
        assert_eq!(Syscall.decode(&257u64.to_ne_bytes()).unwrap(), b"openat");
        assert_eq!(Syscall.decode(b"435").unwrap(), b"clone3");
        assert_eq!(
            Syscall.decode(b"100000").unwrap(),
            b"unknown_syscall:100000"
        );
        assert!(Syscall.decode(b"-1").is_err());
    }

    #[test]
    fn tables_are_sorted() {
        for t in [
            tables::SYSCALLS_X86_64,
            tables::SYSCALLS_GENERIC,
            tables::SYSCALLS_COMMON,
            tables::ERRNOS,
        ] {
            assert!(t.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }
}
