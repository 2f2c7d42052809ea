//! Ingest stage: loads BPF objects, attaches their programs and drains ring buffers
//! into batches for the enrich and aggregate stages.
//!
//! The kernel side writes fixed records through `output.bpf.h`; here a reader per ring
//! copies whatever is ready into one [`Batch`] (no allocation per record) on readiness
//! or on a short timer, and hands it downstream with `try_send`, counting what a full
//! queue refuses.

mod attach;
mod batch;
mod btf;
mod cgroup_events;
pub mod cgroup_id_map;
pub mod elf;
pub mod kconfig;
mod kprobe_multi;
mod loader;
pub mod map_entries;
pub mod memlock;
mod perf;
mod prog_info;
pub mod refusal;
mod ring;
mod ringbuf;
mod staging;
mod table;
pub mod usdt;

pub use attach::{AttachPoint, SectionError};
pub use aya::Btf;
pub use batch::{Batch, BatchBuilder, Records};
pub use btf::BtfError;
pub use cgroup_events::CgroupEvents;
pub use loader::{perf_event_paranoid, LoadOptions, LoadedObject, Loader, ProgramStats, StreamMap};
pub use ring::{RingReader, RingStats};
pub use ringbuf::RingConsumer;
pub use staging::Staging;
pub use table::{TableContents, TableError};

/// Each program an object attaches: (function name, attach-point section). Batched
/// rings' flush programs are left out: they are run, never attached.
///
/// # Errors
/// The object does not parse.
pub fn sections(object: &str, bytes: &[u8]) -> Result<Vec<(String, String)>, IngestError> {
    let mut all = loader::program_sections(object, bytes)?;
    all.retain(|(program, section)| !loader::is_flush(program, section));
    Ok(all)
}

/// Where the running kernel publishes its BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Parses the kernel BTF every object is relocated against: `path` (`--btf.path`, for
/// kernels without their own, e.g. from btfhub), else the running kernel's. Parse it
/// once and share it: it is tens of MiB while parsed.
///
/// # Errors
/// Neither is readable or parses; the message names both options.
pub fn kernel_btf(path: Option<&std::path::Path>) -> Result<Btf, IngestError> {
    let (at, parsed) = match path {
        Some(p) => (
            format!("--btf.path {}", p.display()),
            Btf::parse_file(p, Default::default()),
        ),
        None => (KERNEL_BTF.to_string(), Btf::from_sys_fs()),
    };
    parsed.map_err(|e| IngestError::KernelBtf {
        path: at,
        reason: e.to_string(),
        hint: if path.is_some() { "" } else { " (this kernel has no BTF (CONFIG_DEBUG_INFO_BTF): pass --btf.path with a BTF file for it, e.g. from btfhub)" },
    })
}

/// Whether this kernel has `BPF_MAP_TYPE_RINGBUF` (5.8+), probed once.
pub fn ring_buffers_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED
        .get_or_init(|| aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(false))
}

/// An error and every cause under it, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Some errors repeat their cause in their own text.
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

impl IngestError {
    /// What caused it, for `ebpf_exporter_config_failed{reason}`.
    pub fn reason(&self) -> refusal::Reason {
        match self {
            Self::Program { reason, .. } | Self::Load { reason, .. } => *reason,
            Self::Parse { .. }
            | Self::Prepare { .. }
            | Self::UnknownSection { .. }
            | Self::Map { .. }
            | Self::MapEntries { .. } => refusal::Reason::Object,
            Self::KernelBtf { .. } | Self::Poll { .. } => refusal::Reason::Kernel,
        }
    }
}

/// What is wrong with a map a config or the exporter needs from an object.
#[derive(Debug, thiserror::Error)]
pub enum MapProblem {
    #[error("no such map in the object")]
    Missing,
    #[error("neither a ring buffer nor a perf event array")]
    NotAStream,
    #[error("expected a ring buffer")]
    NotARing,
    #[error("not a hash, array, cgrp_storage, ring or perf event array map")]
    NoInfo,
    #[error("cannot map the ring: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("per-CPU staging of a batched ring: {0}")]
    Staging(#[source] std::io::Error),
    #[error(transparent)]
    Info(#[from] aya::maps::MapError),
    #[error(transparent)]
    Table(#[from] table::TableError),
    /// A `cgroup_id_map` whose key, value or map type is not what its kind needs.
    #[error("cgroup_id_map of type {kind}: {problem}")]
    CgroupIdMap { kind: &'static str, problem: String },
}

/// Errors of the ingest stage.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The object is not valid ELF or has no BTF.
    #[error("object {object}: cannot parse: {reason}")]
    Parse {
        /// Object name.
        object: String,
        /// What was wrong.
        reason: String,
    },
    /// The object could not be rewritten for aya (see [`elf`]).
    #[error("object {object}: cannot parse: {source}")]
    Prepare {
        /// Object name.
        object: String,
        /// What was wrong.
        #[source]
        source: Box<elf::ElfError>,
    },
    /// A program's section names no attach point this exporter can use.
    #[error("object {object}: program {program}: section {section:?}: {source}")]
    UnknownSection {
        /// Object name.
        object: String,
        /// Program (function) name.
        program: String,
        /// ELF section.
        section: String,
        /// Why it cannot be attached.
        #[source]
        source: Box<attach::SectionError>,
    },
    /// No kernel BTF to relocate objects against.
    #[error("kernel BTF ({path}): {reason}{hint}")]
    KernelBtf {
        /// Where it was looked for.
        path: String,
        /// Why it could not be used.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// aya failed to load the object.
    #[error("object {object}: load failed: {}{hint}", chain(source.as_ref()))]
    Load {
        /// Object name.
        object: String,
        /// The loader's error.
        #[source]
        source: Box<aya::EbpfError>,
        /// What it most likely means, or empty.
        hint: String,
        /// The cause, when known: `memlock` for maps refused before 5.11, else `kernel`.
        reason: refusal::Reason,
    },
    /// The verifier rejected a program, or attaching failed.
    #[error("object {object}: program {program} ({section}): {action} failed{detail}")]
    Program {
        /// Object name.
        object: String,
        /// Program name.
        program: String,
        /// ELF section.
        section: String,
        /// `load` or `attach`.
        action: &'static str,
        /// The cause, as far as it can be told.
        reason: refusal::Reason,
        /// What the failure most likely means, then the error, with the verifier log's
        /// tail when there is one (starts with ` (hint)` or `: `).
        detail: String,
    },
    /// A map named in config is missing or has the wrong type.
    #[error("object {object}: map {map}: {problem}")]
    Map {
        /// Object name.
        object: String,
        /// Map name.
        map: String,
        /// What was wrong.
        #[source]
        problem: Box<MapProblem>,
    },
    /// A config's `maps:` entries do not fit their map, or could not be written.
    #[error("object {object}: {source}")]
    MapEntries {
        /// Object name.
        object: String,
        #[source]
        source: Box<map_entries::EntryError>,
    },
    /// The ring's file descriptor could not be registered with the runtime.
    #[error("ring {ring}: cannot poll: {source}")]
    Poll {
        /// Ring name.
        ring: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
