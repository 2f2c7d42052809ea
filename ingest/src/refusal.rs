//! Why the kernel refused to load or attach a program, told from what the process holds
//! (capabilities), what the node set (perf_event_paranoid, lockdown) and what the hook
//! needs, so a failed config names its cause and the way out instead of an errno.

use std::fmt;

use crate::AttachPoint;

/// The cause of a refused load or attach, as exported in `ebpf_exporter_config_failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `kernel.perf_event_paranoid` above 2 with a distro patch (Debian, Ubuntu): perf
    /// events need CAP_SYS_ADMIN.
    PerfEventParanoid,
    /// A capability the load or attach needs is not held.
    Capability,
    /// Kernel lockdown (confidentiality) forbids the hook or a helper.
    Lockdown,
    /// The kernel lacks the hook (function, tracepoint, kprobes, trampolines).
    MissingHook,
    /// The verifier rejected the program.
    Verifier,
    /// The object is unreadable, not BPF ELF, or names what this exporter cannot attach.
    Object,
    /// Before 5.11: maps exceed RLIMIT_MEMLOCK, which only CAP_SYS_RESOURCE raises.
    Memlock,
    /// Anything else the kernel said no to.
    Kernel,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PerfEventParanoid => "perf_event_paranoid",
            Reason::Capability => "capability",
            Reason::Lockdown => "lockdown",
            Reason::MissingHook => "missing_hook",
            Reason::Verifier => "verifier",
            Reason::Object => "object",
            Reason::Memlock => "memlock",
            Reason::Kernel => "kernel",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the process holds and what the node set, read once per load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// Effective capabilities (bit n = capability n).
    pub effective: u64,
    /// `kernel.perf_event_paranoid`.
    pub paranoid: i32,
    /// The selected kernel lockdown mode (`none`, `integrity`, `confidentiality`), when
    /// securityfs shows it.
    pub lockdown: Option<String>,
}

impl Privileges {
    /// This process's, now.
    pub fn current() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
            .ok()
            .and_then(|s| selected_lockdown(&s));
        Self {
            effective,
            paranoid: crate::perf_event_paranoid(),
            lockdown,
        }
    }

    fn has(&self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }

    /// Whether this process may open perf events for kernel hooks. Debian's and Ubuntu's
    /// kernels refuse every `perf_event_open` above level 2 without CAP_SYS_ADMIN (an
    /// upstream kernel treats those levels as 2, where CAP_PERFMON suffices).
    pub fn may_open_perf_events(&self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.paranoid <= 2 && self.has(CAP_PERFMON))
    }

    /// Why a hook of this kind cannot attach with these privileges, if it cannot.
    pub fn refusal(&self, point: &AttachPoint) -> Option<Reason> {
        let bpf_and_perfmon = self.has(CAP_BPF) && self.has(CAP_PERFMON);
        if !(self.has(CAP_SYS_ADMIN) || bpf_and_perfmon) {
            return Some(Reason::Capability);
        }
        if self.lockdown.as_deref() == Some("confidentiality")
            && matches!(point, AttachPoint::KProbe { .. })
        {
            return Some(Reason::Lockdown);
        }
        if point.needs_perf_event() && !self.may_open_perf_events() {
            return Some(Reason::PerfEventParanoid);
        }
        None
    }
}

/// `none [integrity] confidentiality` → `integrity`.
fn selected_lockdown(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// A refused load or attach, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// The cause.
    pub reason: Reason,
    /// What it means and what to do, for the error text (starts with ` (`), or empty.
    pub hint: String,
}

/// Explains the kernel's answer `detail` to `action` (`load` or `attach`) of a program
/// at `point`.
pub fn diagnose(point: &AttachPoint, action: &str, detail: &str, held: &Privileges) -> Diagnosis {
    let denied = detail.contains("Permission denied") || detail.contains("not permitted");
    let missing = detail.contains("No such file")
        || detail.contains("not found")
        || detail.contains("ENOENT");
    let (reason, hint) = match (action, held.refusal(point)) {
        (_, Some(Reason::Capability)) if denied => (
            Reason::Capability,
            " (loading and attaching need CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which this process does not hold)".to_string(),
        ),
        ("load", _) if held.lockdown.as_deref() == Some("confidentiality") && detail.contains("unknown func") => (
            Reason::Lockdown,
            " (kernel lockdown is confidentiality: helpers that read kernel memory are unavailable; boot with lockdown=integrity or none)".to_string(),
        ),
        ("load", _) if matches!(point, AttachPoint::FEntry { .. }) && detail.contains("not permitted") => (
            Reason::MissingHook,
            " (this kernel refuses fentry/fexit programs: no BPF trampoline support)".to_string(),
        ),
        ("load", _) if detail.contains("verifier log") => (Reason::Verifier, String::new()),
        ("load", _) => (Reason::Kernel, String::new()),
        (_, _) if missing => (Reason::MissingHook, missing_hook(point).to_string()),
        (_, Some(Reason::PerfEventParanoid)) if denied => {
            (Reason::PerfEventParanoid, perf_event_hint(point, held.paranoid))
        }
        (_, Some(Reason::Lockdown)) if denied => (
            Reason::Lockdown,
            " (kernel lockdown is confidentiality, which forbids kprobes: use fentry/ or raw_tp/ sections, or boot with lockdown=integrity)".to_string(),
        ),
        // PERF_TYPE_HARDWARE (0) and HW_CACHE (3) need a CPU PMU, which VMs often lack.
        (_, _) if matches!(point, AttachPoint::PerfEvent { kind: 0 | 3, .. }) && detail.contains("not supported") => (
            Reason::MissingHook,
            " (this machine has no hardware PMU (no /sys/bus/event_source/devices/cpu), as many VMs: software events, type=1, work everywhere)".to_string(),
        ),
        (_, _) if matches!(point, AttachPoint::FEntry { .. }) => (
            Reason::MissingHook,
            " (fentry/fexit need CONFIG_FUNCTION_TRACER with BPF trampolines, and the function in BTF)".to_string(),
        ),
        (_, _) if denied && matches!(point, AttachPoint::TracePoint { .. }) => (
            Reason::Verifier,
            " (a tracepoint program that reads past the tracepoint's record is refused at attach)".to_string(),
        ),
        _ => (Reason::Kernel, String::new()),
    };
    Diagnosis { reason, hint }
}

fn missing_hook(point: &AttachPoint) -> &'static str {
    match point {
        AttachPoint::KProbe { .. } => " (this kernel lacks kprobes (CONFIG_KPROBES) or the function)",
        AttachPoint::TracePoint { .. } => " (no such tracepoint on this kernel: see /sys/kernel/tracing/events)",
        AttachPoint::RawTracePoint(_) | AttachPoint::BtfTracePoint(_) => {
            " (no such tracepoint on this kernel: see /sys/kernel/tracing/events)"
        }
        AttachPoint::FEntry { .. } => " (fentry/fexit need CONFIG_FUNCTION_TRACER with BPF trampolines, and the function in BTF)",
        AttachPoint::PerfEvent { kind: 0 | 3, .. } => " (this machine has no hardware PMU (no /sys/bus/event_source/devices/cpu), as many VMs: software events, type=1, work everywhere)",
        _ => "",
    }
}

/// The one message a perf-event hook gets on a Debian or Ubuntu node.
fn perf_event_hint(point: &AttachPoint, paranoid: i32) -> String {
    let instead = match point {
        AttachPoint::TracePoint { name, .. } => {
            format!("raw_tp/{name} or tp_btf/{name} (the tracepoint's arguments, not its record)")
        }
        AttachPoint::KProbe { function, ret, .. } => format!(
            "{}/{function}, or keep kprobe/ on kernels with kprobe-multi links (5.18+ with CONFIG_FPROBE), where the exporter attaches through one",
            if *ret { "fexit" } else { "fentry" }
        ),
        AttachPoint::UProbe { .. } | AttachPoint::Usdt { .. } => {
            "nothing else: uprobes need a perf event before uprobe-multi links (6.6+)".to_string()
        }
        _ => "a raw_tp/, tp_btf/ or fentry/ hook".to_string(),
    };
    format!(
        " (kernel.perf_event_paranoid is {paranoid}: Debian's kernels ship 3 and Ubuntu's 4, where attaching a {}/ section opens a perf event, which needs CAP_SYS_ADMIN; CAP_PERFMON is not enough. Write the hook as {instead}; or set kernel.perf_event_paranoid=2 on the node; or deploy with deploy/overlays/perf-events, which adds CAP_SYS_ADMIN)",
        point.kind()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_DAEMONSET: u64 = 1 << CAP_BPF | 1 << CAP_PERFMON | 1 << 2;

    fn held(effective: u64, paranoid: i32) -> Privileges {
        Privileges {
            effective,
            paranoid,
            lockdown: Some("none".into()),
        }
    }

    fn point(section: &str) -> AttachPoint {
        AttachPoint::from_section(section).unwrap()
    }

    #[test]
    fn the_base_daemonset_on_debian_and_ubuntu_cannot_open_perf_events() {
        for paranoid in [3, 4] {
            let p = held(BASE_DAEMONSET, paranoid);
            for s in [
                "tracepoint/sock/inet_sock_set_state",
                "kprobe/tcp_v4_connect",
                "uprobe/bin:main",
                "usdt/bin:p:n",
            ] {
                assert_eq!(p.refusal(&point(s)), Some(Reason::PerfEventParanoid), "{s}");
            }
            for s in [
                "raw_tp/inet_sock_set_state",
                "tp_btf/sched_switch",
                "fentry/tcp_v4_connect",
            ] {
                assert_eq!(p.refusal(&point(s)), None, "{s}");
            }
        }
        assert_eq!(
            held(BASE_DAEMONSET, 2).refusal(&point("tracepoint/a/b")),
            None
        );
        assert_eq!(
            held(BASE_DAEMONSET | 1 << CAP_SYS_ADMIN, 4).refusal(&point("tracepoint/a/b")),
            None
        );
    }

    #[test]
    fn the_message_names_the_sysctl_the_overlay_and_the_hook_to_write_instead() {
        let d = diagnose(
            &point("tracepoint/sock/inet_sock_set_state"),
            "attach",
            "Permission denied (os error 13)",
            &held(BASE_DAEMONSET, 3),
        );
        assert_eq!(d.reason, Reason::PerfEventParanoid);
        for want in [
            "kernel.perf_event_paranoid is 3",
            "CAP_SYS_ADMIN",
            "raw_tp/inet_sock_set_state",
            "tp_btf/inet_sock_set_state",
            "=2",
            "deploy/overlays/perf-events",
        ] {
            assert!(d.hint.contains(want), "{want}: {}", d.hint);
        }
        let k = diagnose(
            &point("kretprobe/do_sys_openat2"),
            "attach",
            "Permission denied",
            &held(BASE_DAEMONSET, 4),
        );
        assert!(
            k.hint.contains("fexit/do_sys_openat2") && k.hint.contains("kprobe-multi"),
            "{}",
            k.hint
        );
    }

    #[test]
    fn other_causes() {
        let p = held(BASE_DAEMONSET, 2);
        let d = diagnose(
            &point("tracepoint/a/b"),
            "attach",
            "No such file or directory",
            &p,
        );
        assert_eq!(d.reason, Reason::MissingHook);
        let d = diagnose(
            &point("raw_tp/x"),
            "attach",
            "Permission denied",
            &held(1 << 2, 2),
        );
        assert_eq!(d.reason, Reason::Capability);
        let d = diagnose(
            &point("raw_tp/x"),
            "load",
            "Permission denied; verifier log (last lines):\nR1 invalid mem access",
            &p,
        );
        assert_eq!(d.reason, Reason::Verifier);
        let mut locked = p.clone();
        locked.lockdown = Some("confidentiality".into());
        let d = diagnose(
            &point("kprobe/f"),
            "attach",
            "Operation not permitted",
            &locked,
        );
        assert_eq!(d.reason, Reason::Lockdown);
    }

    #[test]
    fn lockdown_mode_is_the_bracketed_one() {
        assert_eq!(
            selected_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(
            selected_lockdown("[none] integrity confidentiality").as_deref(),
            Some("none")
        );
        assert_eq!(selected_lockdown(""), None);
    }
}
