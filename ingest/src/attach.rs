//! Attach points derived from ELF section names, the way libbpf names them, so an
//! object needs no attach list in config; and attaching a loaded object's programs at
//! them.

use std::{
    fmt,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        BtfTracePoint, FEntry, FExit, KProbe, PerfEvent, ProgramError, RawTracePoint, TracePoint,
        UProbe, Xdp, XdpMode,
    },
    Btf, Ebpf,
};

use crate::{
    kprobe_multi,
    loader::{program_error, resolve_uprobe_target, USDT_IPS, USDT_SPECS},
    refusal::{self, Privileges, Reason},
    usdt, IngestError,
};

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
    // Long: one arm per section kind, as libbpf names them.
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

/// Attaches one object's programs, each at its section's attach point; holds what its
/// programs share: the kprobe-multi relocation (made once, only if needed), the next
/// free USDT spec, and the links aya does not keep.
pub(crate) struct Attacher<'a> {
    object: &'a str,
    btf: &'a Btf,
    /// The object's bytes as loaded (kprobe-multi relocates from them).
    prepared: &'a [u8],
    held: Privileges,
    relocated: Option<kprobe_multi::Relocated>,
    /// Index of the next USDT spec in the object's spec map.
    next_spec: u32,
    /// kprobe programs loaded and linked beside aya: attached while held.
    pub multi_links: Vec<kprobe_multi::KprobeMultiLink>,
    /// Perf events and links of USDT sites with semaphores (aya 0.14 cannot pass the
    /// reference counter): attached while held.
    pub semaphore_links: Vec<(OwnedFd, Option<OwnedFd>)>,
}

impl<'a> Attacher<'a> {
    pub fn new(object: &'a str, btf: &'a Btf, prepared: &'a [u8]) -> Self {
        Self {
            object,
            btf,
            prepared,
            held: Privileges::current(),
            relocated: None,
            next_spec: 0,
            multi_links: Vec::new(),
            semaphore_links: Vec::new(),
        }
    }

    /// Loads and attaches `program` (in ELF section `section`) at `point`.
    ///
    /// # Errors
    /// The verifier rejects it (with the log's last lines), or the kernel cannot attach
    /// it; the error says what that most likely means.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        program: &str,
        section: &str,
        point: &AttachPoint,
    ) -> Result<(), IngestError> {
        // kprobe-multi first (no perf event); the perf event path where the kernel
        // lacks it.
        let mut multi_failed = String::new();
        if let AttachPoint::KProbe {
            function,
            offset: 0,
            ret,
        } = point
        {
            match self.kprobe_multi(ebpf, program, function, *ret) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let why = kprobe_multi::explain(&e);
                    multi_failed = format!("; kprobe-multi, tried first: {why}");
                }
            }
        }
        // Owns what it says, so the USDT path below may still change `self`.
        let (object, held) = (self.object, self.held.clone());
        let failed = move |action, e: &ProgramError| {
            let detail = program_error(e);
            let diagnosis = refusal::diagnose(point, action, &detail, &held);
            IngestError::Program {
                object: object.into(),
                program: program.into(),
                section: section.into(),
                action,
                reason: diagnosis.reason,
                detail: format!("{}: {detail}{multi_failed}", diagnosis.hint),
            }
        };
        if let AttachPoint::Usdt {
            target,
            provider,
            name,
        } = point
        {
            let path = resolve_uprobe_target(target);
            return self.attach_usdt(ebpf, program, section, &path, (provider, name), failed);
        }
        let prog = ebpf
            .program_mut(program)
            .ok_or_else(|| IngestError::Parse {
                object: self.object.into(),
                reason: format!("program {program} not found by the loader"),
            })?;
        attach_with_aya(self.object, prog, point, self.btf, failed)
    }

    /// Links a kprobe through kprobe-multi.
    fn kprobe_multi(
        &mut self,
        ebpf: &Ebpf,
        program: &str,
        function: &str,
        ret: bool,
    ) -> Result<(), kprobe_multi::KprobeMultiError> {
        let relocated = match &mut self.relocated {
            Some(r) => r,
            slot => slot.insert(kprobe_multi::Relocated::new(self.prepared, ebpf, self.btf)?),
        };
        let link = relocated.attach(program, function, ret)?;
        self.multi_links.push(link);
        Ok(())
    }

    /// A USDT program at every site of its probe in the binary at `path`: their
    /// argument specs written first, then one uprobe per site.
    fn attach_usdt(
        &mut self,
        ebpf: &mut Ebpf,
        program: &str,
        section: &str,
        path: &Path,
        (provider, probe): (&str, &str),
        failed: impl Fn(&'static str, &ProgramError) -> IngestError,
    ) -> Result<(), IngestError> {
        let refused = |reason, detail: String| IngestError::Program {
            object: self.object.into(),
            program: program.into(),
            section: section.into(),
            action: "attach",
            reason,
            detail,
        };
        let sites = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|elf| usdt::sites(&elf, provider, probe).map_err(|e| e.to_string()))
            .map_err(|e| refused(Reason::MissingHook, format!(": {}: {e}", path.display())))?;
        // Specs go in before any site can fire.
        let first = self.write_usdt_specs(ebpf, program, &sites)?;
        // Without BPF cookies (before 5.15) the header finds a site's spec by the
        // address it fired at, known ahead only in fixed-address binaries.
        let cookies = crate::kconfig::has_bpf_cookie();
        if !cookies {
            if sites.iter().any(|s| s.fixed_ip.is_none()) {
                return Err(refused(Reason::MissingHook, format!(": {}: USDT probes in position-independent executables and shared libraries need BPF cookies (kernel 5.15+), as with libbpf; this kernel has none (a binary linked with -no-pie works)", path.display())));
            }
            self.write_usdt_ips(ebpf, program, &sites, first)?;
        }
        let prog = ebpf
            .program_mut(program)
            .ok_or_else(|| IngestError::Parse {
                object: self.object.into(),
                reason: format!("program {program} not found by the loader"),
            })?;
        let p: &mut UProbe = prog.try_into().map_err(|e| failed("load", &e))?;
        p.load().map_err(|e| failed("load", &e))?;
        for (i, site) in sites.iter().enumerate() {
            let cookie = cookies.then_some(u64::from(first) + i as u64);
            if site.semaphore == 0 {
                let location = UProbeAttachLocation::AbsoluteOffset(site.offset);
                p.attach(
                    UProbeAttachPoint { location, cookie },
                    path,
                    UProbeScope::AllProcesses,
                )
                .map_err(|e| failed("attach", &e))?;
                continue;
            }
            let fd = p.fd().map_err(|e| failed("attach", &e))?;
            let fds =
                usdt::attach_with_semaphore(fd.as_fd(), path, site.offset, site.semaphore, cookie)
                    .map_err(|e| {
                        let at = format!(": {} (with its semaphore): {e}", path.display());
                        refused(Reason::Kernel, at)
                    })?;
            self.semaphore_links.push(fds);
        }
        Ok(())
    }

    /// Writes the sites' argument specs into the object's spec map; returns the first
    /// one's index.
    fn write_usdt_specs(
        &mut self,
        ebpf: &mut Ebpf,
        program: &str,
        sites: &[usdt::Site],
    ) -> Result<u32, IngestError> {
        let parse = |reason: String| IngestError::Parse {
            object: self.object.into(),
            reason,
        };
        let map = ebpf.map_mut(USDT_SPECS).ok_or_else(|| {
            parse(format!(
                "{program}: usdt programs need the {USDT_SPECS} map: include <bpf/usdt.bpf.h>"
            ))
        })?;
        let mut specs: aya::maps::Array<_, usdt::Spec> =
            aya::maps::Array::try_from(map).map_err(|e| parse(format!("{USDT_SPECS}: {e}")))?;
        let first = self.next_spec;
        for site in sites {
            let at = self.next_spec;
            specs.set(at, site.spec, 0).map_err(|e| {
                parse(format!(
                    "{USDT_SPECS}[{at}] ({} sites so far; raise BPF_USDT_MAX_SPEC_CNT): {e}",
                    at + 1
                ))
            })?;
            self.next_spec += 1;
        }
        Ok(first)
    }

    /// Writes each site's address → spec index, for kernels without BPF cookies.
    fn write_usdt_ips(
        &self,
        ebpf: &mut Ebpf,
        program: &str,
        sites: &[usdt::Site],
        first: u32,
    ) -> Result<(), IngestError> {
        let parse = |reason: String| IngestError::Parse {
            object: self.object.into(),
            reason,
        };
        let map = ebpf.map_mut(USDT_IPS).ok_or_else(|| {
            parse(format!("{program}: this kernel has no BPF cookies, so usdt programs need the {USDT_IPS} map of <bpf/usdt.bpf.h>"))
        })?;
        let mut ips: aya::maps::HashMap<_, i64, u32> =
            aya::maps::HashMap::try_from(map).map_err(|e| parse(format!("{USDT_IPS}: {e}")))?;
        for (i, site) in sites.iter().enumerate() {
            let ip = site.fixed_ip.expect("checked by the caller") as i64;
            ips.insert(ip, first + i as u32, 0)
                .map_err(|e| parse(format!("{USDT_IPS} (raise BPF_USDT_MAX_IP_CNT): {e}")))?;
        }
        Ok(())
    }
}

/// Loads `prog` and attaches it at `point` through aya (every kind but USDT).
// Long: one arm per hook kind, each its load and attach calls.
fn attach_with_aya(
    object: &str,
    prog: &mut aya::programs::Program,
    point: &AttachPoint,
    btf: &Btf,
    failed: impl Fn(&'static str, &ProgramError) -> IngestError,
) -> Result<(), IngestError> {
    let load = |e: ProgramError| failed("load", &e);
    let attach = |e: ProgramError| failed("attach", &e);
    match point {
        AttachPoint::TracePoint { category, name } => {
            let p: &mut TracePoint = prog.try_into().map_err(load)?;
            p.load().map_err(load)?;
            p.attach(category, name).map_err(attach)?;
        }
        AttachPoint::RawTracePoint(tp) => {
            let p: &mut RawTracePoint = prog.try_into().map_err(load)?;
            p.load().map_err(load)?;
            p.attach(tp).map_err(attach)?;
        }
        AttachPoint::BtfTracePoint(tp) => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(load)?;
            p.load(tp, btf).map_err(load)?;
            p.attach().map_err(attach)?;
        }
        AttachPoint::KProbe {
            function, offset, ..
        } => {
            let p: &mut KProbe = prog.try_into().map_err(load)?;
            p.load().map_err(load)?;
            p.attach(function, *offset).map_err(attach)?;
        }
        AttachPoint::FEntry {
            function,
            exit: false,
        } => {
            let p: &mut FEntry = prog.try_into().map_err(load)?;
            p.load(function, btf).map_err(load)?;
            p.attach().map_err(attach)?;
        }
        AttachPoint::FEntry {
            function,
            exit: true,
        } => {
            let p: &mut FExit = prog.try_into().map_err(load)?;
            p.load(function, btf).map_err(load)?;
            p.attach().map_err(attach)?;
        }
        AttachPoint::UProbe {
            target,
            symbol,
            offset,
            ..
        } => {
            let p: &mut UProbe = prog.try_into().map_err(load)?;
            p.load().map_err(load)?;
            let location = match symbol {
                Some(s) if *offset != 0 => UProbeAttachLocation::SymbolOffset(s, *offset),
                Some(s) => UProbeAttachLocation::Symbol(s),
                None => UProbeAttachLocation::AbsoluteOffset(*offset),
            };
            let target = resolve_uprobe_target(target);
            p.attach(location, target, UProbeScope::AllProcesses)
                .map_err(attach)?;
        }
        AttachPoint::PerfEvent {
            kind,
            config,
            frequency,
            period,
        } => {
            let p: &mut PerfEvent = prog.try_into().map_err(load)?;
            p.load().map_err(load)?;
            let policy = match (frequency, period) {
                (Some(f), _) => SamplePolicy::Frequency(*f),
                (_, p) => SamplePolicy::Period(p.unwrap_or(1)),
            };
            let config = PerfEventConfig::Pmu {
                pmu_type: *kind,
                config: *config,
            };
            let cpus = aya::util::online_cpus().map_err(|(what, e)| IngestError::Parse {
                object: object.into(),
                reason: format!("{what}: {e}"),
            })?;
            for cpu in cpus {
                let scope = PerfEventScope::AllProcessesOneCpu { cpu };
                p.attach(config, scope, policy, false).map_err(attach)?;
            }
        }
        AttachPoint::Xdp(ifname) => {
            let p: &mut Xdp = prog.try_into().map_err(load)?;
            p.load().map_err(load)?;
            p.attach(ifname, XdpMode::Default).map_err(attach)?;
        }
        AttachPoint::Usdt { .. } => unreachable!("USDT sites attach in Attacher::attach_usdt"),
    }
    Ok(())
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
