//! Helpers shared by tests: decide whether a test that needs root and BPF can run.
//!
//! Unprivileged runs skip such tests with a visible line on stderr; with
//! `KUBE_EBPF_EXPORTER_REQUIRE_PRIVILEGED=1` (set by `.ci/run`) a skip is a failure.

pub mod otlp;

use std::path::Path;

/// Variable that turns a skip into a failure.
pub const REQUIRE_VAR: &str = "KUBE_EBPF_EXPORTER_REQUIRE_PRIVILEGED";

/// Why BPF tests cannot run here, or `None` when they can.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !Path::new("/sys/kernel/tracing/events").exists()
        && !Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return Some("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)".into());
    }
    None
}

/// True when `test` may run; otherwise prints why it is skipped, or panics when
/// skips are not allowed.
pub fn privileged(test: &str) -> bool {
    runnable(test, "root and BPF", unavailable_reason())
}

/// True when nothing is `missing` for `test`, which needs `what`; otherwise prints why
/// it is skipped, or panics when skips are not allowed.
pub fn runnable(test: &str, what: &str, missing: Option<String>) -> bool {
    let Some(reason) = missing else {
        return true;
    };
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{test}: needs {what} but {reason}, and {REQUIRE_VAR}=1 forbids skipping");
    }
    // Written past the test harness's output capture, so the skip is always seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs {what}, but {reason}"
    );
    false
}

/// `/usr/include/<triple>`, where Debian keeps the `asm/` headers.
pub fn multiarch_include() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "/usr/include/x86_64-linux-gnu"
    } else {
        "/usr/include/aarch64-linux-gnu"
    }
}

/// The compiler for examples: `$CLANG`, else Debian's clang 16 where installed (what
/// upstream's newer examples need; clang 14 cannot build some), else `clang`.
fn clang() -> String {
    std::env::var("CLANG").unwrap_or_else(|_| {
        let on_path = |name: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        };
        if on_path("clang-16") {
            "clang-16"
        } else {
            "clang"
        }
        .to_string()
    })
}

/// Compiles BPF C `source` into `out` with the project's headers (`bpf/include`), as
/// the README tells users to; `extra` adds clang arguments (`-DOUTPUT_PERF`).
///
/// # Panics
/// clang is missing or the source does not compile (with clang's message).
pub fn compile_bpf(source: &Path, out: &Path, extra: &[&str]) {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bpf/include");
    let arch = if cfg!(target_arch = "x86_64") {
        "x86"
    } else {
        "arm64"
    };
    let result = std::process::Command::new(clang())
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            &format!("-D__TARGET_ARCH_{arch}"),
        ])
        .args(extra)
        .arg("-I")
        .arg(include)
        // As the README says: asm/ headers (libbpf's usdt.bpf.h needs asm/errno.h)
        // live in the multiarch directory, which -target bpf does not search.
        .args(["-idirafter", multiarch_include()])
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(out)
        .output()
        .expect("clang (install clang and libbpf-dev)");
    assert!(
        result.status.success(),
        "clang failed on {}: {}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// True when the command-line `tool` (from a Debian package `.ci/run` installs) is on
/// PATH; otherwise prints why `test` is skipped, or panics when skips are not allowed.
pub fn tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if found {
        return true;
    }
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
        panic!("{test}: needs `{tool}` on PATH, and {REQUIRE_VAR}=1 forbids skipping");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs `{tool}` on PATH");
    false
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> std::path::PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).unwrap().into())
        })
        .expect("no cgroup2 mount")
}

/// Limits the memory of a workload in `cg`: on hybrid hosts (cgroup v1 memory
/// controller) through a v1 memory cgroup it also joins; else `memory.max` on `cg`.
pub fn memory_limit(cg: &std::path::Path, bytes: u64) -> Option<std::path::PathBuf> {
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        let dir = v1.join(cg.file_name().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
        return Some(dir);
    }
    // Enable the controller down the path, then limit the leaf.
    let mount = cgroup2_mount();
    let mut at = mount.clone();
    for part in cg.strip_prefix(&mount).unwrap().components() {
        let _ = std::fs::write(at.join("cgroup.subtree_control"), "+memory");
        at = at.join(part);
    }
    std::fs::write(cg.join("memory.max"), bytes.to_string()).unwrap();
    None
}

/// The load program of tests and benchmarks (C source): one ring record per `getpid()`
/// (see the file for its switches).
pub const GETPID_RING: &str = include_str!("getpid_ring.bpf.c");
