//! Attach points derived from ELF section names, the way libbpf names them.

use std::fmt;

/// Where a program attaches, parsed from its section name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachPoint {
    /// `tracepoint/<category>/<name>` (also `tp/`).
    TracePoint {
        /// Tracepoint category (e.g. `sock`).
        category: String,
        /// Tracepoint name.
        name: String,
    },
    /// `raw_tp/<name>` (also `raw_tracepoint/`).
    RawTracePoint(String),
    /// `tp_btf/<name>`.
    BtfTracePoint(String),
}

impl AttachPoint {
    /// Parses a section name; `None` for sections that are not attachable programs.
    pub fn from_section(section: &str) -> Option<Self> {
        let (kind, rest) = section.split_once('/')?;
        match kind {
            "tracepoint" | "tp" => {
                let (category, name) = rest.split_once('/')?;
                Some(Self::TracePoint {
                    category: category.into(),
                    name: name.into(),
                })
            }
            "raw_tp" | "raw_tracepoint" => Some(Self::RawTracePoint(rest.into())),
            "tp_btf" => Some(Self::BtfTracePoint(rest.into())),
            _ => None,
        }
    }
}

impl fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TracePoint { category, name } => write!(f, "tracepoint/{category}/{name}"),
            Self::RawTracePoint(n) => write!(f, "raw_tp/{n}"),
            Self::BtfTracePoint(n) => write!(f, "tp_btf/{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AttachPoint;

    #[test]
    fn parses_libbpf_section_names() {
        assert_eq!(
            AttachPoint::from_section("tracepoint/sock/inet_sock_set_state"),
            Some(AttachPoint::TracePoint {
                category: "sock".into(),
                name: "inet_sock_set_state".into()
            })
        );
        assert_eq!(
            AttachPoint::from_section("tp/syscalls/sys_enter_getpid").unwrap().to_string(),
            "tracepoint/syscalls/sys_enter_getpid"
        );
        assert_eq!(
            AttachPoint::from_section("raw_tp/sys_enter"),
            Some(AttachPoint::RawTracePoint("sys_enter".into()))
        );
        assert_eq!(
            AttachPoint::from_section("tp_btf/sched_switch"),
            Some(AttachPoint::BtfTracePoint("sched_switch".into()))
        );
        for s in ["license", ".maps", "tracepoint/nocategory", "socket", "xyz/abc"] {
            assert_eq!(AttachPoint::from_section(s), None, "{s}");
        }
    }
}
