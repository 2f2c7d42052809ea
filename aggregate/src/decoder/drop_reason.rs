//! `drop_reason`: a packet drop reason number (decimal text, from `uint`) as the
//! running kernel names it. The numbering of `enum skb_drop_reason` changes between
//! kernels, so names come from the kernel's own table: the `__print_symbolic` list in
//! the `skb:kfree_skb` tracepoint's format. Numbers it does not list (and kernels
//! before 5.17, which give no reason) read `unknown`.

use std::collections::HashMap;

use super::{DecodeError, Decoder};

/// Reason names by number.
#[derive(Debug)]
pub struct DropReason(HashMap<Vec<u8>, Vec<u8>>);

impl DropReason {
    /// The running kernel's names (none when tracefs is unreadable).
    pub fn load() -> Self {
        let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|t| std::fs::read_to_string(format!("{t}/events/skb/kfree_skb/format")).ok())
            .unwrap_or_default();
        Self::parse(&format)
    }

    /// Reads `{ <number>, "<NAME>" }` pairs of `__print_symbolic(REC->reason, ...)`.
    fn parse(format: &str) -> Self {
        let mut names = HashMap::new();
        if let Some((_, list)) = format.split_once("__print_symbolic(REC->reason,") {
            for pair in list.split('{').skip(1) {
                let Some((number, rest)) = pair.split_once(',') else {
                    break;
                };
                let Some(name) = rest.split('"').nth(1) else {
                    break;
                };
                names.insert(number.trim().as_bytes().to_vec(), name.as_bytes().to_vec());
                // The list ends where the call does.
                if rest
                    .split('}')
                    .nth(1)
                    .is_some_and(|after| after.trim_start().starts_with(')'))
                {
                    break;
                }
            }
        }
        Self(names)
    }
}

impl Decoder for DropReason {
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(self
            .0
            .get(input)
            .cloned()
            .unwrap_or_else(|| b"unknown".to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_tracepoint_format() {
        let format = r#"print fmt: "skbaddr=%p reason: %s", REC->skbaddr, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }), __print_symbolic(REC->other, { 2, "X" })"#;
        let d = DropReason::parse(format);
        assert_eq!(d.decode(b"3").unwrap(), b"NO_SOCKET");
        assert_eq!(d.decode(b"2").unwrap(), b"NOT_SPECIFIED");
        assert_eq!(d.decode(b"4294967295").unwrap(), b"unknown");
        assert_eq!(d.0.len(), 2);
        assert!(DropReason::parse("print fmt: \"x\"").0.is_empty());
    }

    proptest::proptest! {
        /// Tracepoint formats are the kernel's text: any text parses without a panic.
        #[test]
        fn any_format_text_parses(tail in "\\PC{0,200}") {
            let _ = DropReason::parse(&format!("print fmt: \"%s\", __print_symbolic(REC->reason,{tail}"));
            let _ = DropReason::parse(&tail);
        }
    }

    #[test]
    fn the_running_kernel_names_no_socket_drops() {
        let d = DropReason::load();
        if d.0.is_empty() {
            eprintln!("skipped: no skb:kfree_skb format with reasons (tracefs unreadable or kernel < 5.17)");
            return;
        }
        assert!(d.0.values().any(|n| n == b"NO_SOCKET"), "{d:?}");
    }
}
