//! Label decoders: raw field bytes → label value, chained as configured.
//!
//! Each decoder takes the previous one's output (the field's bytes for the first) and
//! returns bytes; the last output is the label value. Names and behaviour follow
//! cloudflare/ebpf_exporter (`uint` turns raw integers into decimal text that `errno`,
//! `syscall`, `cgroup`, `static_map`... then read). They run once per new series (event
//! streams) or per map entry and scrape (tables), never per event.

mod cgroup;
mod dname;
mod drop_reason;
mod errno;
mod exit_reason;
mod hex;
mod ifname;
mod inet_ip;
mod inet_subnet;
pub mod kallsyms;
mod ksym;
mod kube;
mod majorminor;
mod pci;
mod regexp;
mod static_map;
mod string;
mod syscall;
mod tables;
mod uint;

use std::sync::{Arc, OnceLock};

use enrich::Enricher;

pub use self::{kallsyms::Kallsyms, pci::PciDb};
use crate::{config::DecoderConfig, invalid, ConfigError};

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input does not fit the decoder (wrong size, bad encoding).
    #[error("{0}")]
    Invalid(String),
    /// The decoder drops this label set by design (`regexp` without a match).
    #[error("dropped by a filter")]
    Dropped,
}

/// One decoding step.
pub trait Decoder: Send + Sync + std::fmt::Debug {
    /// Decodes `input`.
    ///
    /// # Errors
    /// The input does not fit, or the decoder drops it.
    fn decode(&self, input: &[u8]) -> Result<Vec<u8>, DecodeError>;
}

/// Resources decoders look things up in, loaded on first use and shared.
#[derive(Debug, Default)]
pub struct Context {
    enricher: Option<Arc<Enricher>>,
    kallsyms: OnceLock<Arc<Kallsyms>>,
    pci: OnceLock<Option<Arc<PciDb>>>,
}

impl Context {
    /// A context whose kube and cgroup decoders use `enricher`.
    pub fn new(enricher: Option<Arc<Enricher>>) -> Self {
        Self {
            enricher,
            ..Self::default()
        }
    }

    /// Kernel symbols from /proc/kallsyms (empty when unreadable or unprivileged).
    pub fn kallsyms(&self) -> Arc<Kallsyms> {
        self.kallsyms
            .get_or_init(|| Arc::new(Kallsyms::load("/proc/kallsyms".as_ref()).unwrap_or_default()))
            .clone()
    }

    fn pci(&self) -> Option<Arc<PciDb>> {
        self.pci
            .get_or_init(|| PciDb::load_system().map(Arc::new))
            .clone()
    }
}

/// Every decoder name, for error messages.
const NAMES: &str = "uint, hex, string, errno, exit_reason, drop_reason, syscall, ksym, kstack, inet_ip, inet_subnet, ifname, majorminor, dname, cgroup, regexp, static_map, pci_vendor, pci_device, pci_class, pci_subclass, kube_namespace, kube_pod, kube_container, kube_podnamespace, kube_podname, kube_containername";

/// A label's decoder chain.
#[derive(Debug)]
pub struct Chain(Vec<Box<dyn Decoder>>);

impl Chain {
    /// Builds the chain for a label of `size` bytes; no decoders means `uint`.
    ///
    /// # Errors
    /// An unknown decoder, a bad decoder setting, or a first decoder that cannot take
    /// `size` bytes; named by `at` (the label's config path).
    // Long: one arm per decoder, with the input sizes it takes.
    pub fn build(
        configs: &[DecoderConfig],
        size: usize,
        at: &str,
        ctx: &Context,
    ) -> Result<Self, ConfigError> {
        let default = [DecoderConfig::named("uint")];
        let configs = if configs.is_empty() {
            &default[..]
        } else {
            configs
        };
        let mut chain: Vec<Box<dyn Decoder>> = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let at = format!("{at}.decoders[{i}]");
            let sizes = |ok: &[usize], what: &str| {
                if i == 0 && !ok.contains(&size) {
                    return Err(invalid(
                        format!("{at}.name"),
                        format!("{} takes {what}, but the label is {size} bytes", c.name),
                    ));
                }
                Ok(())
            };
            let needs_enricher = || {
                ctx.enricher.clone().ok_or_else(|| {
                    invalid(
                        format!("{at}.name"),
                        format!("{} needs the enrich stage", c.name),
                    )
                })
            };
            let kube = |key, field| -> Result<Box<dyn Decoder>, ConfigError> {
                Ok(Box::new(kube::Kube {
                    enricher: needs_enricher()?,
                    key,
                    field,
                }))
            };
            use kube::{KubeField as F, KubeKey as K};
            let d: Box<dyn Decoder> = match c.name.as_str() {
                "uint" => {
                    sizes(&[1, 2, 4, 8], "a 1, 2, 4 or 8 byte integer")?;
                    Box::new(uint::Uint)
                }
                "hex" => Box::new(hex::Hex),
                "string" => Box::new(string::CString),
                "errno" => Box::new(errno::Errno),
                "exit_reason" => Box::new(exit_reason::ExitReason),
                "drop_reason" => Box::new(drop_reason::DropReason::load()),
                "syscall" => Box::new(syscall::Syscall),
                "ksym" => {
                    sizes(&[8], "an 8 byte address")?;
                    Box::new(ksym::Ksym(ctx.kallsyms()))
                }
                "kstack" => {
                    if i == 0 && (size == 0 || !size.is_multiple_of(8)) {
                        return Err(invalid(format!("{at}.name"), format!("kstack takes an array of 8 byte addresses, but the label is {size} bytes")));
                    }
                    Box::new(ksym::Kstack(ctx.kallsyms()))
                }
                "inet_ip" => {
                    sizes(&[4, 16], "a 4 or 16 byte address")?;
                    Box::new(inet_ip::InetIp)
                }
                "inet_subnet" => {
                    sizes(&[4], "4 bytes (family u16, 2 address bytes)")?;
                    Box::new(inet_subnet::InetSubnet)
                }
                "ifname" => Box::new(ifname::IfName),
                "majorminor" => {
                    sizes(&[4, 8], "a 4 byte device number")?;
                    Box::new(majorminor::MajorMinor::new("/proc/partitions"))
                }
                "dname" => Box::new(dname::Dname),
                "cgroup" => Box::new(cgroup::Cgroup(needs_enricher()?)),
                "regexp" if c.regexps.is_empty() => {
                    return Err(invalid(
                        format!("{at}.regexps"),
                        "regexp needs at least one pattern under regexps",
                    ))
                }
                "regexp" => Box::new(regexp::Regexp::new(&c.regexps).map_err(|source| {
                    ConfigError::Pattern {
                        at: format!("{at}.regexps"),
                        source,
                    }
                })?),
                "static_map" => {
                    Box::new(static_map::StaticMap::new(&c.static_map, c.allow_unknown))
                }
                name @ ("pci_vendor" | "pci_device" | "pci_class" | "pci_subclass") => {
                    Box::new(pci::Pci {
                        db: ctx.pci(),
                        kind: pci::PciKind::named(name).expect("a PCI decoder name"),
                    })
                }
                "kube_namespace" => kube(K::Cgroup, F::Namespace)?,
                "kube_pod" => kube(K::Cgroup, F::Pod)?,
                "kube_container" => kube(K::Cgroup, F::Container)?,
                "kube_podnamespace" => kube(K::Pid, F::Namespace)?,
                "kube_podname" => kube(K::Pid, F::Pod)?,
                "kube_containername" => kube(K::Pid, F::Container)?,
                other => {
                    return Err(invalid(
                        format!("{at}.name"),
                        format!("unknown decoder {other:?}; known: {NAMES}"),
                    ))
                }
            };
            chain.push(d);
        }
        Ok(Self(chain))
    }

    /// Runs the chain; the result must be UTF-8.
    ///
    /// # Errors
    /// A step fails or drops the value, or the result is not UTF-8.
    pub fn decode(&self, input: &[u8]) -> Result<String, DecodeError> {
        let mut value = input.to_vec();
        for d in &self.0 {
            value = d.decode(&value)?;
        }
        String::from_utf8(value)
            .map_err(|_| DecodeError::Invalid("label value is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(names: &[&str], size: usize) -> Result<Chain, String> {
        let configs: Vec<DecoderConfig> = names.iter().map(|n| DecoderConfig::named(n)).collect();
        Chain::build(&configs, size, "labels[0]", &Context::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn chains_text_through_decoders() {
        assert_eq!(
            chain(&["uint", "errno"], 4)
                .unwrap()
                .decode(&2u32.to_ne_bytes())
                .unwrap(),
            "ENOENT"
        );
        assert_eq!(
            chain(&[], 2).unwrap().decode(&7u16.to_ne_bytes()).unwrap(),
            "7"
        );
        assert_eq!(
            chain(&["hex"], 2).unwrap().decode(&[0xff, 0]).unwrap(),
            "ff00"
        );
    }

    #[test]
    fn build_errors_name_the_decoder() {
        let e = chain(&["nope"], 8).unwrap_err();
        assert!(
            e.starts_with("labels[0].decoders[0].name: unknown decoder \"nope\"; known: uint"),
            "{e}"
        );
        assert!(chain(&["uint"], 3)
            .unwrap_err()
            .contains("uint takes a 1, 2, 4 or 8 byte integer, but the label is 3 bytes"));
        assert!(chain(&["ksym"], 4).unwrap_err().contains("8 byte address"));
        assert!(chain(&["kstack"], 12)
            .unwrap_err()
            .contains("array of 8 byte"));
        assert!(chain(&["kube_pod"], 8)
            .unwrap_err()
            .contains("needs the enrich stage"));
        assert!(chain(&["uint", "regexp"], 8)
            .unwrap_err()
            .contains("labels[0].decoders[1].regexps: regexp needs at least one pattern"));
        // Only the first decoder sees the raw field.
        assert!(chain(&["string", "uint"], 3).is_ok());
    }

    proptest::proptest! {
        /// No decoder panics on any input, whatever came before it in a chain.
        #[test]
        fn decoders_never_panic(input in proptest::collection::vec(proptest::num::u8::ANY, 0..48)) {
            static CTX: std::sync::LazyLock<Context> = std::sync::LazyLock::new(Context::default);
            let ctx = &*CTX;
            for name in NAMES.split(", ").filter(|n| !n.starts_with("kube_") && *n != "cgroup" && *n != "regexp") {
                let mut c = DecoderConfig::named(name);
                c.static_map.insert("1".into(), "one".into());
                if let Ok(chain) = Chain::build(&[c], input.len(), "l", ctx) {
                    let _ = chain.decode(&input);
                }
            }
        }

        /// Config parsing and compiling never panics on arbitrary label layouts.
        #[test]
        fn config_compiling_never_panics(sizes in proptest::collection::vec(0usize..80, 0..6), reuse in proptest::bool::ANY, kind in 0usize..4) {
            let labels: Vec<String> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{{ name: l{i}, size: {s}, reuse: {} }}", reuse && i > 0))
                .collect();
            let bucket = ["exp2", "exp2zero", "linear", "fixed"][kind];
            let yaml = format!(
                "metrics:\n  histograms:\n    - {{ name: h, help: h, bucket_type: {bucket}, bucket_max: 3, bucket_keys: [1, 2], labels: [{}] }}\n",
                labels.join(", ")
            );
            #[derive(serde::Deserialize)]
            struct P { metrics: crate::config::MetricsConfig }
            let p: P = serde_yaml_ng::from_str(&yaml).unwrap();
            let registry = crate::Registry::new(Default::default(), "n".into());
            let _ = crate::ProgramPlan::compile(&[], &p.metrics, &registry, &Context::default(), "");
        }
    }

    #[test]
    fn non_utf8_results_are_errors() {
        assert!(chain(&["dname"], 3)
            .unwrap()
            .decode(b"\x02\xff\xfe")
            .is_err());
    }
}
