//! `exit_reason`: a process's wait status (`task->exit_code`, decimal text after
//! `uint`) as why it ended: `code_<n>` for an exit, `signal_<NAME>` for a signal.

use super::{uint::number, DecodeError, Decoder};

/// x86-64 and arm64 signal names by number (the generic Linux numbering).
const SIGNALS: [&str; 32] = [
    "0",
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// Exit code or signal name of a wait status.
#[derive(Debug)]
pub struct ExitReason;

impl Decoder for ExitReason {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let status = number(input, 0)?;
        // Low 7 bits: the terminating signal (0: a normal exit); 0x80: core dumped.
        let signal = status & 0x7f;
        Ok(match signal {
            0 => format!("code_{}", (status >> 8) & 0xff),
            s => match SIGNALS.get(s as usize) {
                Some(name) => format!("signal_{name}"),
                None => format!("signal_{s}"),
            },
        }
        .into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_signals() {
        assert_eq!(ExitReason.decode(b"0").unwrap(), b"code_0");
        assert_eq!(ExitReason.decode(b"768").unwrap(), b"code_3");
        assert_eq!(ExitReason.decode(b"9").unwrap(), b"signal_SIGKILL");
        // SIGSEGV with a core dump.
        assert_eq!(ExitReason.decode(b"139").unwrap(), b"signal_SIGSEGV");
        assert_eq!(ExitReason.decode(b"34").unwrap(), b"signal_34");
        assert!(ExitReason.decode(b"x").is_err());
    }
}
