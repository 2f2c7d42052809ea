//! Dropping capabilities once programs are attached: the running exporter keeps only
//! what its stages still use.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// What the running exporter still uses: CAP_DAC_READ_SEARCH for open_by_handle_at(2)
/// (cgroup id → path) and reading pod metadata; before Linux 6.5 also CAP_BPF, since
/// those kernels refuse bpf(2) map reads (tables, ring counters) without it when
/// unprivileged BPF is disabled.
pub fn needed(kernel: (u32, u32)) -> CapsHashSet {
    let mut keep = HashSet::from([Capability::CAP_DAC_READ_SEARCH]);
    if kernel < (6, 5) {
        keep.insert(Capability::CAP_BPF);
    }
    keep
}

/// What loading and attaching programs at a reload needs beyond [`needed`].
pub const RELOAD: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_PERFMON];

/// Parses `--capabilities.keep` names (`perfmon`, `CAP_SYS_ADMIN`).
pub fn parse(name: &str) -> Result<Capability> {
    let upper = name.trim().to_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse()
        .map_err(|_| anyhow::anyhow!("{name:?} is not a capability (e.g. perfmon, CAP_SYS_ADMIN)"))
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> Result<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading /proc/sys/kernel/osrelease")?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    match (parts.next().map(str::parse), parts.next().map(str::parse)) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
        _ => bail!("kernel release {release:?}: no major.minor version"),
    }
}

/// Lowers the effective, permitted and inheritable sets to `keep` (what of it is held)
/// and clears the ambient set. Capabilities belong to threads: call this before any
/// other thread starts, so every later thread inherits the lowered sets.
/// Returns (kept, dropped), sorted.
pub fn drop_all_but(keep: &CapsHashSet) -> Result<(Vec<Capability>, Vec<Capability>)> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    if threads > 1 {
        bail!("{threads} threads are running; only the calling one would lose its capabilities");
    }
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let kept: CapsHashSet = permitted.intersection(keep).copied().collect();
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::set(None, set, &kept).with_context(|| format!("lowering {set:?} capabilities"))?;
    }
    let mut dropped: Vec<Capability> = permitted.difference(keep).copied().collect();
    let mut kept: Vec<Capability> = kept.into_iter().collect();
    dropped.sort_by_key(|c| c.index());
    kept.sort_by_key(|c| c.index());
    Ok((kept, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_or_without_the_prefix() {
        assert_eq!(parse("perfmon").unwrap(), Capability::CAP_PERFMON);
        assert_eq!(parse("CAP_SYS_ADMIN").unwrap(), Capability::CAP_SYS_ADMIN);
        assert!(parse("superpowers")
            .unwrap_err()
            .to_string()
            .contains("not a capability"));
    }

    #[test]
    fn older_kernels_keep_cap_bpf_for_map_reads() {
        assert!(needed((6, 1)).contains(&Capability::CAP_BPF));
        assert!(!needed((6, 18)).contains(&Capability::CAP_BPF));
        assert!(needed((6, 18)).contains(&Capability::CAP_DAC_READ_SEARCH));
    }
}
