//! Values of `.kconfig` externs (`extern ... __kconfig`), resolved as libbpf resolves
//! them: `LINUX_*` facts probed from the running kernel, `CONFIG_*` from its build
//! configuration (`/proc/config.gz`, else `/boot/config-<release>`).

use std::{collections::HashMap, io::Read, sync::OnceLock};

/// How an extern's BTF type stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `bool` / `_Bool`.
    Bool,
    /// `char`: holds `y`, `n` or `m` itself.
    Char,
    /// `enum libbpf_tristate`: no 0, yes 1, module 2.
    Tristate,
    /// An integer of `size` bytes.
    Int { size: u32, signed: bool },
    /// `char[len]`: a string, NUL-terminated.
    Str { len: u32 },
}

impl Kind {
    pub fn size(self) -> u32 {
        match self {
            Kind::Bool | Kind::Char => 1,
            Kind::Tristate => 4,
            Kind::Int { size, .. } => size,
            Kind::Str { len } => len,
        }
    }
}

/// The running kernel's configuration and probed facts.
#[derive(Debug, Default)]
pub struct KernelConfig {
    values: HashMap<String, String>,
    /// Where `CONFIG_*` values came from, or why there are none.
    source: String,
    release: String,
}

/// `KERNEL_VERSION(a, b, c)` as libbpf computes it from the release (patch capped at 255).
pub fn kernel_version(release: &str) -> Option<u32> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().ok());
    let (a, b, c) = (
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    );
    Some((a << 16) + (b << 8) + c.min(255))
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Parses a kernel `.config`: `CONFIG_X=value` lines, and `# CONFIG_X is not set` as `n`.
pub fn parse_config(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# ") {
            if let Some(name) = rest.strip_suffix(" is not set") {
                if name.starts_with("CONFIG_") {
                    out.insert(name.to_string(), "n".to_string());
                }
            }
        } else if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("CONFIG_") {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

/// Why a `.kconfig` extern has no value to store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KconfigError {
    /// libbpf does not know the name either.
    #[error("unknown kconfig extern {0} (libbpf knows LINUX_KERNEL_VERSION, LINUX_HAS_BPF_COOKIE, LINUX_HAS_SYSCALL_WRAPPER and CONFIG_*)")]
    Unknown(String),
    /// A `CONFIG_*` value that does not fit, and the kernel config it came from.
    #[error("{source} (kernel config: {file})")]
    InConfig {
        file: String,
        #[source]
        source: Box<KconfigError>,
    },
    /// `m` where the extern is a `bool`.
    #[error("value m (module) does not fit a bool: declare it enum libbpf_tristate")]
    ModuleInBool,
    /// The kernel's value cannot be stored as the extern's type.
    #[error("value {value} {problem}")]
    Value {
        /// As the kernel config has it.
        value: String,
        /// What does not fit.
        problem: ValueProblem,
    },
}

/// How a kernel config value does not fit its extern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ValueProblem {
    #[error("is not a quoted string")]
    NotQuoted,
    #[error("is not a number")]
    NotANumber,
    #[error("does not fit in {size} bytes")]
    TooBig { size: u32 },
    #[error("does not fit a {0:?}")]
    WrongKind(Kind),
}

impl KernelConfig {
    /// The running kernel's, read once per process.
    pub fn running() -> &'static KernelConfig {
        static CONFIG: OnceLock<KernelConfig> = OnceLock::new();
        CONFIG.get_or_init(|| {
            let release = release();
            let boot = format!("/boot/config-{release}");
            let gz = std::fs::File::open("/proc/config.gz").and_then(|f| {
                let mut s = String::new();
                flate2::read::GzDecoder::new(f).read_to_string(&mut s)?;
                Ok(s)
            });
            let (text, source) = match gz {
                Ok(t) => (t, "/proc/config.gz".to_string()),
                Err(_) => match std::fs::read_to_string(&boot) {
                    Ok(t) => (t, boot),
                    Err(e) => (
                        String::new(),
                        format!("no /proc/config.gz, and {boot}: {e}"),
                    ),
                },
            };
            KernelConfig {
                values: parse_config(&text),
                source,
                release,
            }
        })
    }

    /// The raw value of one extern, or `None` when the kernel does not say.
    fn raw(&self, name: &str) -> Result<Option<String>, KconfigError> {
        Ok(match name {
            "LINUX_KERNEL_VERSION" => kernel_version(&self.release).map(|v| v.to_string()),
            "LINUX_HAS_BPF_COOKIE" => Some(yn(has_bpf_cookie())),
            "LINUX_HAS_SYSCALL_WRAPPER" => Some(yn(has_syscall_wrapper())),
            n if n.starts_with("CONFIG_") => self.values.get(n).cloned(),
            n => return Err(KconfigError::Unknown(n.to_string())),
        })
    }

    /// The bytes of extern `name` stored as `kind`; `None` when the kernel does not
    /// define it (a weak extern then reads 0).
    ///
    /// # Errors
    /// The name is unknown, or the value does not fit the type.
    pub fn value(&self, name: &str, kind: Kind) -> Result<Option<Vec<u8>>, KconfigError> {
        let Some(v) = self.raw(name)? else {
            return Ok(None);
        };
        encode(&v, kind)
            .map(Some)
            .map_err(|e| match name.starts_with("CONFIG_") {
                true => KconfigError::InConfig {
                    file: self.source.clone(),
                    source: Box::new(e),
                },
                false => e,
            })
    }

    /// Where `CONFIG_*` values came from (for errors).
    pub fn source(&self) -> &str {
        &self.source
    }
}

fn yn(b: bool) -> String {
    if b { "y" } else { "n" }.to_string()
}

/// Stores a `.config` value as `kind`, with libbpf's rules: y/n/m fit bool (not m),
/// char and tristate; quoted strings fit char arrays; numbers fit integers in range.
pub fn encode(value: &str, kind: Kind) -> Result<Vec<u8>, KconfigError> {
    let value_error = |problem| KconfigError::Value {
        value: value.to_string(),
        problem,
    };
    let tri = match value {
        "y" => Some(1u8),
        "n" => Some(0),
        "m" => Some(2),
        _ => None,
    };
    match (kind, tri) {
        (Kind::Bool, Some(2)) => Err(KconfigError::ModuleInBool),
        (Kind::Bool, Some(t)) => Ok(vec![t]),
        (Kind::Char, Some(_)) => Ok(vec![value.as_bytes()[0]]),
        (Kind::Tristate, Some(t)) => Ok(u32::from(t).to_le_bytes().to_vec()),
        (Kind::Str { len }, None) => {
            let s = value
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .ok_or_else(|| value_error(ValueProblem::NotQuoted))?;
            let mut out = vec![0u8; len as usize];
            let n = s.len().min(len.saturating_sub(1) as usize);
            out[..n].copy_from_slice(&s.as_bytes()[..n]);
            Ok(out)
        }
        (Kind::Int { size, signed }, None) => {
            let (neg, digits) = match value.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, value),
            };
            let n = match digits
                .strip_prefix("0x")
                .or_else(|| digits.strip_prefix("0X"))
            {
                Some(h) => u64::from_str_radix(h, 16),
                None => digits.parse::<u64>(),
            }
            .map_err(|_| value_error(ValueProblem::NotANumber))?;
            let bits = size * 8;
            let fits = match (neg, signed) {
                (true, false) => false,
                (true, true) => n <= 1u64 << (bits - 1),
                (false, true) => bits == 64 && n < 1 << 63 || bits < 64 && n < 1 << (bits - 1),
                (false, false) => bits == 64 || n < 1 << bits,
            };
            if !fits {
                return Err(value_error(ValueProblem::TooBig { size }));
            }
            let v = if neg { n.wrapping_neg() } else { n };
            Ok(v.to_le_bytes()[..size as usize].to_vec())
        }
        (k, _) => Err(value_error(ValueProblem::WrongKind(k))),
    }
}

/// `bpf_get_attach_cookie` (5.15+), probed once as libbpf does: a program that calls it.
pub fn has_bpf_cookie() -> bool {
    use aya::{programs::ProgramType, sys::BpfHelper};
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        aya::sys::is_helper_supported(ProgramType::KProbe, BpfHelper::BPF_FUNC_get_attach_cookie)
            .unwrap_or(false)
    })
}

/// Whether syscalls enter through `__<arch>_sys_*` wrappers (pt_regs-taking), which
/// `BPF_KSYSCALL` programs must know.
fn has_syscall_wrapper() -> bool {
    let prefix = if cfg!(target_arch = "aarch64") {
        "__arm64_sys_bpf"
    } else {
        "__x64_sys_bpf"
    };
    std::fs::read_to_string("/proc/kallsyms").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().nth(2) == Some(prefix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_libbpf() {
        assert_eq!(kernel_version("6.1.0-57-cloud-amd64"), Some(0x060100));
        assert_eq!(kernel_version("5.10.300"), Some(0x050aff));
        assert_eq!(kernel_version("6.18"), Some(0x061200));
        assert_eq!(kernel_version("x"), None);
    }

    #[test]
    fn config_lines() {
        let c = parse_config(
            "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"s\"\nCONFIG_D=0x10\n# comment\n",
        );
        assert_eq!(c["CONFIG_A"], "y");
        assert_eq!(c["CONFIG_B"], "n");
        assert_eq!(c["CONFIG_C"], "\"s\"");
        assert_eq!(c["CONFIG_D"], "0x10");
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn values_fit_their_types() {
        assert_eq!(encode("y", Kind::Bool).unwrap(), [1]);
        assert!(encode("m", Kind::Bool).is_err());
        assert_eq!(encode("m", Kind::Tristate).unwrap(), [2, 0, 0, 0]);
        assert_eq!(encode("m", Kind::Char).unwrap(), [b'm']);
        assert_eq!(encode("\"abc\"", Kind::Str { len: 3 }).unwrap(), b"ab\0");
        assert!(encode("abc", Kind::Str { len: 8 }).is_err());
        assert_eq!(
            encode(
                "0x10",
                Kind::Int {
                    size: 2,
                    signed: false
                }
            )
            .unwrap(),
            [16, 0]
        );
        assert_eq!(
            encode(
                "-1",
                Kind::Int {
                    size: 1,
                    signed: true
                }
            )
            .unwrap(),
            [255]
        );
        assert!(encode(
            "256",
            Kind::Int {
                size: 1,
                signed: false
            }
        )
        .is_err());
        assert!(encode(
            "-1",
            Kind::Int {
                size: 4,
                signed: false
            }
        )
        .is_err());
        assert!(encode(
            "y",
            Kind::Int {
                size: 4,
                signed: false
            }
        )
        .is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_value_encodes_to_its_size_or_errs(v in ".{0,24}", size in proptest::sample::select(vec![1u32, 2, 4, 8]), signed: bool) {
            for kind in [Kind::Bool, Kind::Char, Kind::Tristate, Kind::Int { size, signed }, Kind::Str { len: size }] {
                if let Ok(bytes) = encode(&v, kind) {
                    proptest::prop_assert_eq!(bytes.len() as u32, kind.size());
                }
            }
        }
    }
}
