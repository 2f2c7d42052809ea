//! Before 5.11 the kernel charges every BPF map to the owner's RLIMIT_MEMLOCK (64 KiB by
//! default there); from 5.11 it charges the memory cgroup instead. Raising the limit past
//! its hard value takes CAP_SYS_RESOURCE, which the base DaemonSet does not hold, so the
//! exporter lifts only its soft limit to the hard one the runtime set, and explains the
//! refusal when that is still too little.

use aya::util::KernelVersion;

/// Whether this kernel charges BPF maps to RLIMIT_MEMLOCK.
pub fn charged() -> bool {
    KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 11, 0))
}

/// (soft, hard) RLIMIT_MEMLOCK in bytes (`u64::MAX` for unlimited).
fn limits() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut l) } != 0 {
        return (0, 0);
    }
    (l.rlim_cur, l.rlim_max)
}

/// On kernels that charge maps to it, raises the soft RLIMIT_MEMLOCK to the hard limit
/// (no privilege needed). Returns the soft limit now in force there, or `None` on kernels
/// that do not charge it.
pub fn raise_soft_limit() -> Option<u64> {
    if !charged() {
        return None;
    }
    let (soft, hard) = limits();
    if soft < hard {
        let l = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given; a soft limit up to the hard
        // one needs no capability.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &l) } == 0 {
            return Some(hard);
        }
    }
    Some(soft)
}

/// The explanation for a map the kernel refused with EPERM, when RLIMIT_MEMLOCK is the
/// likely cause.
pub fn hint() -> Option<String> {
    if !charged() {
        return None;
    }
    let (soft, _) = limits();
    let limit = if soft == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{} KiB", soft / 1024)
    };
    Some(format!(
        " (before 5.11 the kernel charges BPF maps to RLIMIT_MEMLOCK, here {limit}; \
         raising it takes CAP_SYS_RESOURCE: deploy with deploy/overlays/pre-5.11-kernels, \
         or give the container runtime a higher limit, e.g. LimitMEMLOCK=infinity in containerd's systemd unit)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_never_ends_above_the_hard_one() {
        let before = limits();
        let now = raise_soft_limit();
        let (soft, hard) = limits();
        assert!(soft <= hard);
        assert_eq!(hard, before.1);
        if charged() {
            assert_eq!(now, Some(soft));
            assert!(hint().unwrap().contains("CAP_SYS_RESOURCE"));
        } else {
            assert_eq!((now, hint()), (None, None));
            assert_eq!(soft, before.0);
        }
    }
}
