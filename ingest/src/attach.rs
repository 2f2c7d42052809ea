//! Attach points derived from ELF section names, the way libbpf names them, so an
//! object needs no attach list in config.

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
    /// `kprobe/<fn>[+offset]` or `kretprobe/<fn>`.
    KProbe {
        /// Kernel function.
        function: String,
        /// Byte offset into it.
        offset: u64,
        /// A return probe.
        ret: bool,
    },
    /// `fentry/<fn>` or `fexit/<fn>`.
    FEntry {
        /// Kernel function.
        function: String,
        /// On exit rather than entry.
        exit: bool,
    },
    /// `uprobe/<binary>:<symbol>[+offset]`, `uprobe/<binary>:0x<offset>`, `uretprobe/...`.
    UProbe {
        /// Binary or library path (or a name found in the usual library paths).
        target: String,
        /// Symbol, when attaching by name.
        symbol: Option<String>,
        /// Offset from the symbol, or into the file without one.
        offset: u64,
        /// A return probe.
        ret: bool,
    },
    /// `usdt/<binary>:<provider>:<name>`.
    Usdt {
        /// Binary path.
        target: String,
        /// Provider.
        provider: String,
        /// Probe name.
        name: String,
    },
    /// `perf_event/type=T,config=C,frequency=F` (or `period=P`), on every online CPU.
    PerfEvent {
        /// `perf_event_attr.type` (0 hardware, 1 software, ...).
        kind: u32,
        /// `perf_event_attr.config`.
        config: u64,
        /// Samples per second, or
        frequency: Option<u64>,
        /// events per sample.
        period: Option<u64>,
    },
    /// `xdp/<ifname>`.
    Xdp(String),
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Why a section name is no attach point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SectionError {
    #[error("{kind} needs a target: {kind}/{form}")]
    NoTarget { kind: String, form: &'static str },
    #[error("{kind} needs {form}")]
    Malformed {
        kind: &'static str,
        form: &'static str,
    },
    #[error("bad offset {0:?}")]
    BadOffset(String),
    #[error("{0:?} is not key=value")]
    NotKeyValue(String),
    #[error("{key}: {value:?} is not a number")]
    NotANumber { key: String, value: String },
    #[error("type out of range")]
    TypeOutOfRange,
    #[error("unknown perf_event key {0:?} (type, config, frequency, period)")]
    UnknownPerfKey(String),
    #[error("perf_event needs exactly one of frequency and period")]
    FrequencyOrPeriod,
    #[error("not an attach point this exporter supports (tracepoint, raw_tp, tp_btf, kprobe, kretprobe, fentry, fexit, uprobe, uretprobe, usdt, perf_event, xdp)")]
    Unsupported,
}

impl AttachPoint {
    /// Parses a section name.
    ///
    /// # Errors
    /// A section that is not an attachable program, or whose target is malformed,
    /// with the reason.
    pub fn from_section(section: &str) -> Result<Self, SectionError> {
        let (kind, rest) = section.split_once('/').unwrap_or((section, ""));
        let need = |form: &'static str| -> Result<(), SectionError> {
            if rest.is_empty() {
                Err(SectionError::NoTarget {
                    kind: kind.to_string(),
                    form,
                })
            } else {
                Ok(())
            }
        };
        let malformed = |kind, form| SectionError::Malformed { kind, form };
        let bad_offset = |off: &str| SectionError::BadOffset(off.to_string());
        Ok(match kind {
            "tracepoint" | "tp" => {
                need("<category>/<name>")?;
                let (category, name) = rest
                    .split_once('/')
                    .ok_or(malformed("tracepoint", "<category>/<name>"))?;
                Self::TracePoint {
                    category: category.into(),
                    name: name.into(),
                }
            }
            "raw_tp" | "raw_tracepoint" => {
                need("<name>")?;
                Self::RawTracePoint(rest.into())
            }
            "tp_btf" => {
                need("<name>")?;
                Self::BtfTracePoint(rest.into())
            }
            "kprobe" | "kretprobe" => {
                need("<function>")?;
                let (function, offset) = match rest.split_once('+') {
                    Some((f, off)) => (f, number(off).ok_or_else(|| bad_offset(off))?),
                    None => (rest, 0),
                };
                Self::KProbe {
                    function: function.into(),
                    offset,
                    ret: kind == "kretprobe",
                }
            }
            "fentry" | "fexit" => {
                need("<function>")?;
                Self::FEntry {
                    function: rest.into(),
                    exit: kind == "fexit",
                }
            }
            "uprobe" | "uretprobe" => {
                need("<binary>:<symbol>")?;
                let (target, at) = rest
                    .rsplit_once(':')
                    .ok_or(malformed("uprobe", "<binary>:<symbol>"))?;
                let (symbol, offset) = if let Some(off) = at.strip_prefix("0x") {
                    (
                        None,
                        u64::from_str_radix(off, 16).map_err(|_| bad_offset(at))?,
                    )
                } else {
                    match at.split_once('+') {
                        Some((s, off)) => (
                            Some(s.to_string()),
                            number(off).ok_or_else(|| bad_offset(off))?,
                        ),
                        None => (Some(at.to_string()), 0),
                    }
                };
                Self::UProbe {
                    target: target.into(),
                    symbol,
                    offset,
                    ret: kind == "uretprobe",
                }
            }
            "usdt" => {
                need("<binary>:<provider>:<name>")?;
                let mut parts = rest.rsplitn(3, ':');
                let (Some(name), Some(provider), Some(target)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(malformed("usdt", "<binary>:<provider>:<name>"));
                };
                Self::Usdt {
                    target: target.into(),
                    provider: provider.into(),
                    name: name.into(),
                }
            }
            "perf_event" => {
                need("type=T,config=C,frequency=F")?;
                let (mut kind, mut config, mut frequency, mut period) = (None, None, None, None);
                for kv in rest.split(',') {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| SectionError::NotKeyValue(kv.to_string()))?;
                    let n = number(v).ok_or_else(|| SectionError::NotANumber {
                        key: k.to_string(),
                        value: v.to_string(),
                    })?;
                    match k {
                        "type" => {
                            kind = Some(u32::try_from(n).map_err(|_| SectionError::TypeOutOfRange)?)
                        }
                        "config" => config = Some(n),
                        "frequency" => frequency = Some(n),
                        "period" => period = Some(n),
                        other => return Err(SectionError::UnknownPerfKey(other.to_string())),
                    }
                }
                if frequency.is_some() == period.is_some() {
                    return Err(SectionError::FrequencyOrPeriod);
                }
                Self::PerfEvent {
                    kind: kind.ok_or(malformed("perf_event", "type="))?,
                    config: config.ok_or(malformed("perf_event", "config="))?,
                    frequency,
                    period,
                }
            }
            "xdp" => {
                need("<interface>")?;
                Self::Xdp(rest.into())
            }
            _ => return Err(SectionError::Unsupported),
        })
    }
}

impl AttachPoint {
    /// The hook's kind as sections name it (`tracepoint`, `kprobe`, ...), for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TracePoint { .. } => "tracepoint",
            Self::RawTracePoint(_) => "raw_tp",
            Self::BtfTracePoint(_) => "tp_btf",
            Self::KProbe { ret: false, .. } => "kprobe",
            Self::KProbe { ret: true, .. } => "kretprobe",
            Self::FEntry { exit: false, .. } => "fentry",
            Self::FEntry { exit: true, .. } => "fexit",
            Self::UProbe { ret: false, .. } => "uprobe",
            Self::UProbe { ret: true, .. } => "uretprobe",
            Self::Usdt { .. } => "usdt",
            Self::PerfEvent { .. } => "perf_event",
            Self::Xdp(_) => "xdp",
        }
    }

    /// Whether attaching opens a perf event (`perf_event_open`), which Debian's and
    /// Ubuntu's kernels refuse above perf_event_paranoid 2 without CAP_SYS_ADMIN.
    pub fn needs_perf_event(&self) -> bool {
        matches!(
            self,
            Self::TracePoint { .. }
                | Self::KProbe { .. }
                | Self::UProbe { .. }
                | Self::Usdt { .. }
                | Self::PerfEvent { .. }
        )
    }
}

impl fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TracePoint { category, name } => write!(f, "tracepoint/{category}/{name}"),
            Self::RawTracePoint(n) => write!(f, "raw_tp/{n}"),
            Self::BtfTracePoint(n) => write!(f, "tp_btf/{n}"),
            Self::KProbe {
                function,
                offset,
                ret,
            } => {
                write!(
                    f,
                    "{}/{function}",
                    if *ret { "kretprobe" } else { "kprobe" }
                )?;
                if *offset != 0 {
                    write!(f, "+{offset}")?;
                }
                Ok(())
            }
            Self::FEntry { function, exit } => {
                write!(f, "{}/{function}", if *exit { "fexit" } else { "fentry" })
            }
            Self::UProbe {
                target,
                symbol,
                offset,
                ret,
            } => {
                write!(f, "{}/{target}:", if *ret { "uretprobe" } else { "uprobe" })?;
                match symbol {
                    Some(s) if *offset != 0 => write!(f, "{s}+{offset}"),
                    Some(s) => write!(f, "{s}"),
                    None => write!(f, "0x{offset:x}"),
                }
            }
            Self::Usdt {
                target,
                provider,
                name,
            } => write!(f, "usdt/{target}:{provider}:{name}"),
            Self::PerfEvent {
                kind,
                config,
                frequency,
                period,
            } => {
                write!(f, "perf_event/type={kind},config={config},")?;
                match (frequency, period) {
                    (Some(fr), _) => write!(f, "frequency={fr}"),
                    (_, p) => write!(f, "period={}", p.unwrap_or(0)),
                }
            }
            Self::Xdp(ifname) => write!(f, "xdp/{ifname}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AttachPoint;

    #[test]
    fn parses_and_prints_every_kind() {
        for s in [
            "tracepoint/sock/inet_sock_set_state",
            "raw_tp/sys_enter",
            "tp_btf/sched_switch",
            "kprobe/tcp_v4_connect",
            "kprobe/do_sys_openat2+8",
            "kretprobe/tcp_v4_connect",
            "fentry/tcp_v4_connect",
            "fexit/vfs_read",
            "uprobe//usr/lib/libc.so.6:malloc",
            "uprobe//bin/app:main+16",
            "uprobe//bin/app:0x1234",
            "uretprobe//bin/bash:readline",
            "usdt//usr/bin/python3:python:function__entry",
            "perf_event/type=1,config=0,frequency=99",
            "perf_event/type=0,config=0,period=100000",
            "xdp/eth0",
        ] {
            let p = AttachPoint::from_section(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            AttachPoint::from_section("tp/syscalls/sys_enter_getpid")
                .unwrap()
                .to_string(),
            "tracepoint/syscalls/sys_enter_getpid"
        );
        assert_eq!(
            AttachPoint::from_section("uprobe//bin/app:main").unwrap(),
            AttachPoint::UProbe {
                target: "/bin/app".into(),
                symbol: Some("main".into()),
                offset: 0,
                ret: false
            }
        );
    }

    #[test]
    fn malformed_sections_say_why() {
        let err = |s| AttachPoint::from_section(s).unwrap_err().to_string();
        assert!(err("kprobe").contains("kprobe needs a target"));
        assert!(err("tracepoint/nocategory").contains("<category>/<name>"));
        assert!(err("uprobe/nocolon").contains("<binary>:<symbol>"));
        assert!(err("perf_event/type=1,config=0").contains("exactly one of frequency and period"));
        assert!(err("perf_event/type=1,cfg=0,frequency=1").contains("unknown perf_event key"));
        assert!(err("socket").contains("not an attach point"));
        assert!(err("usdt/bin:only").contains("<provider>:<name>"));
    }
}
