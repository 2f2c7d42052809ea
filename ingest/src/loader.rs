//! Loads one BPF object into the kernel and attaches every program by its section name.

use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::ProgramError,
    Btf, Ebpf, EbpfLoader,
};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use std::os::fd::{AsFd, OwnedFd};

use crate::{
    attach::Attacher, elf, kconfig::KernelConfig, kprobe_multi, memlock, refusal, AttachPoint,
    IngestError, MapProblem, RingConsumer, Staging,
};

/// The map libbpf's `<bpf/usdt.bpf.h>` reads each USDT site's argument spec from.
pub(crate) const USDT_SPECS: &str = "__bpf_usdt_specs";
/// Where the header looks a site's spec up by address on kernels without BPF cookies.
pub(crate) const USDT_IPS: &str = "__bpf_usdt_ip_to_spec_id";

/// Name of the per-CPU reserve-failure counter that `output.bpf.h` declares.
const DROPS_MAP: &str = "ringbuf_drops";
/// Global that `output.bpf.h` reads to decide when a submit wakes the reader.
const WAKEUP_GLOBAL: &str = "output_wakeup_bytes";
/// A batched ring `<ring>`'s per-CPU staging map is `<ring>__staged`...
const STAGED_SUFFIX: &str = "__staged";
/// ...and its flush program `<ring>__flush` (section `raw_tp`, never attached).
const FLUSH_SUFFIX: &str = "__flush";

/// How to load an object.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Ring buffers to size to `ring_bytes` (the ones the config reads).
    pub rings: Vec<String>,
    /// Ring buffer size in bytes (a power of two multiple of the page size); `None`
    /// keeps the object's own size.
    pub ring_bytes: Option<u32>,
    /// Unread bytes in a ring at which a submit wakes the reader.
    pub wakeup_bytes: u64,
    /// Globals `kaddr_<symbol>` to set to kernel addresses.
    pub kaddrs: Vec<(String, u64)>,
    /// Programs (function names) that may fail to load or attach without failing the
    /// object: variants for kernels that have their hook.
    pub optional: Vec<String>,
    /// Entries written into named maps before anything attaches (`maps:`).
    pub map_entries: Vec<crate::map_entries::MapEntries>,
}

/// Loads objects, each CO-RE-relocated against the kernel BTF it was made with. One
/// loader serves every object: aya's loader parses the kernel's BTF when it is made
/// (tens of MiB, thrown away here since ours is given), so it is made once.
pub struct Loader<'a> {
    aya: EbpfLoader<'a>,
    btf: &'a Btf,
}

impl<'a> Loader<'a> {
    /// A loader relocating against `btf` (see [`crate::kernel_btf`]).
    pub fn new(btf: &'a Btf) -> Self {
        let mut aya = EbpfLoader::new();
        aya.btf(Some(btf));
        Self { aya, btf }
    }

    /// Loads `bytes` (ELF with BTF) and attaches each program at its section's attach
    /// point; see [`LoadedObject::load`].
    ///
    /// # Errors
    /// As [`LoadedObject::load`].
    pub fn load(
        &mut self,
        name: &str,
        bytes: &[u8],
        opts: &LoadOptions,
    ) -> Result<LoadedObject, IngestError> {
        LoadedObject::load(self, name, bytes, opts)
    }
}

/// The map behind a stream, ready for a [`crate::RingReader`].
pub enum StreamMap {
    /// A mapped ring buffer.
    Ring(RingConsumer),
    /// A mapped ring buffer whose samples are batches of records staged per CPU.
    Batched(RingConsumer, Staging),
    /// A perf event array.
    Perf(MapData),
}

/// A program of a loaded object, for self-metrics.
#[derive(Debug, Clone)]
pub struct ProgramStats {
    /// Function name.
    pub name: String,
    /// Kernel program id.
    pub id: u32,
    /// Program tag (hex), as `bpftool prog` shows it.
    pub tag: String,
    /// Time spent running (needs `kernel.bpf_stats_enabled=1`).
    pub run_time: std::time::Duration,
    /// Runs (needs `kernel.bpf_stats_enabled=1`).
    pub run_count: u64,
    /// Runs the kernel skipped because the program was already running on that CPU
    /// (5.12+; always counted): events the program never saw.
    pub recursion_misses: u64,
}

/// A loaded object whose programs are attached; dropping it detaches them.
pub struct LoadedObject {
    name: String,
    ebpf: Ebpf,
    /// Key types of its BTF-defined maps, for `maps:` entries.
    map_keys: Vec<(String, crate::map_entries::KeyType)>,
    attached: Vec<(String, AttachPoint)>,
    /// Optional programs that did not load or attach, and why.
    skipped: Vec<(String, String)>,
    /// Perf events and links of USDT sites with semaphores: attached while held.
    _semaphore_links: Vec<(std::os::fd::OwnedFd, Option<std::os::fd::OwnedFd>)>,
    /// kprobe programs loaded and linked beside aya: attached while held.
    kprobe_multi_links: Vec<kprobe_multi::KprobeMultiLink>,
    /// Batched rings and their loaded flush programs.
    flushes: Vec<(String, OwnedFd)>,
}

impl std::fmt::Debug for LoadedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedObject")
            .field("name", &self.name)
            .field("attached", &self.attached)
            .finish()
    }
}

/// Maps each program (function) name to its ELF section.
pub(crate) fn program_sections(
    object: &str,
    bytes: &[u8],
) -> Result<Vec<(String, String)>, IngestError> {
    let parse = |reason: String| IngestError::Parse {
        object: object.into(),
        reason,
    };
    let file = object::File::parse(bytes).map_err(|e| parse(e.to_string()))?;
    if file.section_by_name(".BTF").is_none() {
        return Err(parse("no .BTF section: compile with clang -g".into()));
    }
    let mut out = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || !sym.is_global() {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = file
            .section_by_index(index)
            .map_err(|e| parse(e.to_string()))?;
        let (Ok(name), Ok(section)) = (sym.name(), section.name()) else {
            continue;
        };
        if section != ".text" {
            out.push((name.to_string(), section.to_string()));
        }
    }
    out.sort();
    Ok(out)
}

/// Finds a uprobe target given by name as libbpf does: libraries (`*.so*`) in the
/// usual library directories, programs on `PATH`; paths are used as they are.
pub(crate) fn resolve_uprobe_target(target: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(target);
    if target.contains('/') {
        return path.to_path_buf();
    }
    let dirs: Vec<std::path::PathBuf> = if target.contains(".so") {
        let arch = if cfg!(target_arch = "x86_64") {
            "x86_64-linux-gnu"
        } else {
            "aarch64-linux-gnu"
        };
        std::env::var("LD_LIBRARY_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|d| !d.is_empty())
            .map(Into::into)
            .chain(
                [
                    format!("/lib/{arch}"),
                    format!("/usr/lib/{arch}"),
                    "/lib64".into(),
                    "/usr/lib64".into(),
                    "/lib".into(),
                    "/usr/lib".into(),
                ]
                .map(Into::into),
            )
            .collect()
    } else {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(Into::into)
            .collect()
    };
    dirs.into_iter()
        .map(|d| d.join(target))
        .find(|p| p.exists())
        .unwrap_or_else(|| path.to_path_buf())
}

/// Keeps the end of a verifier log: the reason for a rejection is at the bottom.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = tail(&verifier_log.to_string(), 12);
            if log.is_empty() {
                io_error.to_string()
            } else {
                format!("{io_error}; verifier log (last lines):\n{log}")
            }
        }
        other => crate::chain(other),
    }
}

/// `kernel.perf_event_paranoid` (2, the upstream default, if unreadable).
pub fn perf_event_paranoid() -> i32 {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(2)
}

/// Rewrites and loads `bytes`. As libbpf does, a map the kernel refuses to create with
/// its BTF is created without it (key and value sizes only), once per map.
/// Writes `maps:` entries (see [`crate::map_entries::write`]).
fn write_entries(
    ebpf: &Ebpf,
    name: &str,
    map_keys: &[(String, crate::map_entries::KeyType)],
    had: &[crate::map_entries::MapEntries],
    want: &[crate::map_entries::MapEntries],
) -> Result<(), IngestError> {
    crate::map_entries::write(ebpf, map_keys, had, want).map_err(|e| IngestError::MapEntries {
        object: name.into(),
        source: Box::new(e),
    })
}

fn load_object(
    loader: &mut Loader<'_>,
    name: &str,
    bytes: &[u8],
    settings: &mut elf::Settings<'_>,
) -> Result<(Ebpf, Vec<u8>), IngestError> {
    let kconfig = |e: &elf::Extern| KernelConfig::running().value(&e.name, e.kind);
    loop {
        let prepared =
            elf::prepare(bytes, settings, kconfig).map_err(|e| IngestError::Prepare {
                object: name.into(),
                source: Box::new(e),
            })?;
        match loader.aya.load(&prepared) {
            Ok(ebpf) => return Ok((ebpf, prepared)),
            // EPERM before 5.11 is RLIMIT_MEMLOCK: no use retrying without BTF.
            Err(source @ aya::EbpfError::MapError(aya::maps::MapError::CreateError { .. }))
                if memlock::charged() && refused_map_errno(&source) == Some(libc::EPERM) =>
            {
                return Err(IngestError::Load {
                    object: name.into(),
                    source: Box::new(source),
                    hint: memlock::hint().unwrap_or_default(),
                    reason: refusal::Reason::Memlock,
                });
            }
            Err(aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                name: map,
                io_error,
            })) if !settings.plain_maps.contains(&map) => {
                tracing::warn!(object = name, map, "the kernel refused the map with its BTF ({io_error}); creating it without BTF, as libbpf does");
                settings.plain_maps.push(map);
            }
            Err(source) => {
                let retried = matches!(
                    &source,
                    aya::EbpfError::MapError(aya::maps::MapError::CreateError { .. })
                );
                return Err(IngestError::Load {
                    object: name.into(),
                    source: Box::new(source),
                    hint: if retried {
                        " (refused with and without its BTF: its type or flags may be newer than this kernel, e.g. cgrp_storage needs 6.2)".into()
                    } else {
                        String::new()
                    },
                    reason: refusal::Reason::Kernel,
                });
            }
        }
    }
}

fn refused_map_errno(e: &aya::EbpfError) -> Option<i32> {
    match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) => {
            io_error.raw_os_error()
        }
        _ => None,
    }
}

/// Whether `program` in `section` is a batched ring's flush program (`output.bpf.h`).
pub(crate) fn is_flush(program: &str, section: &str) -> bool {
    section == "raw_tp" && program.ends_with(FLUSH_SUFFIX)
}

/// Loads each batched ring's flush program (never attached: the reader runs it on a
/// CPU) and keeps its descriptor, by ring.
fn load_flushes(
    ebpf: &mut Ebpf,
    object: &str,
    programs: &[String],
) -> Result<Vec<(String, OwnedFd)>, IngestError> {
    let mut out = Vec::new();
    for program in programs {
        let failed = |e: ProgramError| IngestError::Program {
            object: object.into(),
            program: program.clone(),
            section: "raw_tp".into(),
            action: "load",
            reason: refusal::Reason::Kernel,
            detail: format!(": {}", program_error(&e)),
        };
        let p: &mut aya::programs::RawTracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| failed(ProgramError::NotLoaded))?
            .try_into()
            .map_err(failed)?;
        p.load().map_err(failed)?;
        let fd = p
            .fd()
            .map_err(failed)?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| failed(ProgramError::IOError(e)))?;
        let ring = program.strip_suffix(FLUSH_SUFFIX).unwrap_or(program);
        out.push((ring.to_string(), fd));
    }
    Ok(out)
}

impl LoadedObject {
    /// Loads `bytes` (ELF with BTF) and attaches each program at its section's attach point.
    ///
    /// # Errors
    /// A parse or load failure, a section this exporter cannot attach, or a program the
    /// verifier rejects (with the log's last lines) or the kernel cannot attach.
    fn load(
        loader: &mut Loader<'_>,
        name: &str,
        bytes: &[u8],
        opts: &LoadOptions,
    ) -> Result<Self, IngestError> {
        let (mut points, mut flush_programs) = (Vec::new(), Vec::new());
        for (program, section) in program_sections(name, bytes)? {
            if is_flush(&program, &section) {
                flush_programs.push(program);
                continue;
            }
            let point = AttachPoint::from_section(&section).map_err(|source| {
                IngestError::UnknownSection {
                    object: name.into(),
                    program: program.clone(),
                    section: section.clone(),
                    source: Box::new(source),
                }
            })?;
            points.push((program, section, point));
        }
        // Settings go into the object itself, so the shared loader keeps none.
        let kaddr_names: Vec<String> = opts
            .kaddrs
            .iter()
            .map(|(s, _)| format!("kaddr_{s}"))
            .collect();
        let mut settings = elf::Settings {
            globals: vec![(
                WAKEUP_GLOBAL,
                opts.wakeup_bytes.to_le_bytes().to_vec(),
                false,
            )],
            ..Default::default()
        };
        for ((_, addr), global) in opts.kaddrs.iter().zip(&kaddr_names) {
            settings
                .globals
                .push((global, addr.to_le_bytes().to_vec(), true));
        }
        if let Some(size) = opts.ring_bytes {
            settings.max_entries = opts.rings.iter().map(|r| (r.as_str(), size)).collect();
        }
        let (mut ebpf, prepared) = load_object(loader, name, bytes, &mut settings)?;
        // From the object as given: preparing it may drop key types.
        let map_keys = elf::map_key_types(bytes).map_err(|e| IngestError::Prepare {
            object: name.into(),
            source: Box::new(e),
        })?;
        write_entries(&ebpf, name, &map_keys, &[], &opts.map_entries)?;
        let flushes = load_flushes(&mut ebpf, name, &flush_programs)?;
        let mut attacher = Attacher::new(name, loader.btf, &prepared);
        let (mut attached, mut skipped) = (Vec::new(), Vec::new());
        for (program, section, point) in points {
            match attacher.attach(&mut ebpf, &program, &section, &point) {
                Ok(()) => attached.push((program, point)),
                // An optional program (a variant for kernels with its hook) fails alone.
                Err(e) if opts.optional.contains(&program) => {
                    tracing::info!(object = name, program = %program, "optional program skipped: {e}");
                    skipped.push((program, e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Self {
            name: name.into(),
            ebpf,
            map_keys,
            attached,
            skipped,
            _semaphore_links: attacher.semaphore_links,
            kprobe_multi_links: attacher.multi_links,
            flushes,
        })
    }

    /// Rewrites `maps:` entries in place (a reload that changed only them): keys in
    /// `had` but not `want` go, changed and new ones are written, the rest untouched.
    ///
    /// # Errors
    /// As at load: a map or entry that does not fit, or a refused write.
    pub fn rewrite_entries(
        &self,
        had: &[crate::map_entries::MapEntries],
        want: &[crate::map_entries::MapEntries],
    ) -> Result<(), IngestError> {
        write_entries(&self.ebpf, &self.name, &self.map_keys, had, want)
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attached programs and where.
    pub fn attached(&self) -> &[(String, AttachPoint)] {
        &self.attached
    }

    /// Optional programs that did not load or attach, with the reason.
    pub fn skipped(&self) -> &[(String, String)] {
        &self.skipped
    }

    fn map_error(&self, map: &str, problem: impl Into<MapProblem>) -> IngestError {
        IngestError::Map {
            object: self.name.clone(),
            map: map.into(),
            problem: Box::new(problem.into()),
        }
    }

    /// Takes the map a stream reads: a ring buffer, mapped for a reader, or a perf
    /// event array (the `-DOUTPUT_PERF` build of `output.bpf.h`, or a perf counter).
    ///
    /// # Errors
    /// The map is missing, is neither kind, or cannot be mapped.
    pub fn take_stream(&mut self, map: &str) -> Result<StreamMap, IngestError> {
        match self.ebpf.take_map(map) {
            Some(Map::RingBuf(data)) => {
                let ring = RingConsumer::new(data)
                    .map_err(|e| self.map_error(map, MapProblem::Mmap(e)))?;
                match self.take_staging(map)? {
                    Some(staging) => Ok(StreamMap::Batched(ring, staging)),
                    None => Ok(StreamMap::Ring(ring)),
                }
            }
            Some(Map::PerfEventArray(data)) => Ok(StreamMap::Perf(data)),
            Some(_) => Err(self.map_error(map, MapProblem::NotAStream)),
            None => Err(self.map_error(map, MapProblem::Missing)),
        }
    }

    /// The per-CPU staging of ring `map`, where the object batches it.
    fn take_staging(&mut self, map: &str) -> Result<Option<Staging>, IngestError> {
        let Some(i) = self.flushes.iter().position(|(ring, _)| ring == map) else {
            return Ok(None);
        };
        let (_, flush) = self.flushes.swap_remove(i);
        let staged = format!("{map}{STAGED_SUFFIX}");
        let Some(Map::PerCpuArray(data)) = self.ebpf.take_map(&staged) else {
            return Err(self.map_error(&staged, MapProblem::Missing));
        };
        Staging::new(data, flush)
            .map(Some)
            .map_err(|e| self.map_error(&staged, MapProblem::Staging(e)))
    }

    /// A map's key size in bytes, as the kernel has it from the object's BTF, and
    /// whether it is a per-CPU map.
    ///
    /// # Errors
    /// The map is missing.
    pub fn key_size(&self, map: &str) -> Result<(usize, bool), IngestError> {
        let (key, _) = self.key_value_size(map)?;
        let per_cpu = self
            .ebpf
            .map(map)
            .and_then(crate::table::table_data)
            .is_some_and(|(_, per_cpu)| per_cpu);
        Ok((key, per_cpu))
    }

    /// A map's key and value sizes in bytes, as the kernel has them.
    ///
    /// # Errors
    /// The map is missing.
    pub fn key_value_size(&self, map: &str) -> Result<(usize, usize), IngestError> {
        let m = self
            .ebpf
            .map(map)
            .ok_or_else(|| self.map_error(map, MapProblem::Missing))?;
        crate::table::map_data(m)
            .ok_or_else(|| self.map_error(map, MapProblem::NoInfo))?
            .info()
            .map(|i| (i.key_size() as usize, i.value_size() as usize))
            .map_err(|e| self.map_error(map, e))
    }

    /// Takes a map out of the object, for a user-space writer that outlives it.
    pub fn take_map(&mut self, map: &str) -> Option<Map> {
        self.ebpf.take_map(map)
    }

    /// Every entry of a hash or array map, for tables: per-CPU values summed, or with
    /// `split_cpus` one entry per CPU with the CPU (u16) appended to the key.
    ///
    /// # Errors
    /// The map is missing, has values that are not 8-byte counters, or a read fails.
    pub fn read_table(
        &self,
        map: &str,
        split_cpus: bool,
    ) -> Result<crate::TableContents, IngestError> {
        let m = self
            .ebpf
            .map(map)
            .ok_or_else(|| self.map_error(map, MapProblem::Missing))?;
        crate::table::read(m, split_cpus).map_err(|e| self.map_error(map, e))
    }

    /// Deletes entries of a table map by key (entries of deleted pods' cgroups).
    ///
    /// # Errors
    /// No such map, not a table, or the kernel refuses (array maps keep their keys).
    pub fn delete_table_keys(&self, map: &str, keys: &[Vec<u8>]) -> Result<usize, IngestError> {
        let m = self
            .ebpf
            .map(map)
            .ok_or_else(|| self.map_error(map, MapProblem::Missing))?;
        crate::table::delete(m, keys).map_err(|e| self.map_error(map, e))
    }

    /// Records the kernel side failed to reserve (ring full), summed over CPUs; 0 when the
    /// object does not use `output.bpf.h`.
    pub fn ring_drops(&self) -> u64 {
        let Some(map) = self.ebpf.map(DROPS_MAP) else {
            return 0;
        };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        array.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Id, tag and run statistics of each attached program.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let through_aya = self.attached.iter().filter_map(|(name, _)| {
            let fd = self.ebpf.program(name)?.fd().ok()?;
            Some((name, crate::prog_info::prog_info(fd.as_fd()).ok()?))
        });
        let kprobe_multi = self
            .kprobe_multi_links
            .iter()
            .filter_map(|link| Some((&link.program, link.info().ok()?)));
        through_aya
            .chain(kprobe_multi)
            .map(|(name, info)| ProgramStats {
                name: name.clone(),
                id: info.id,
                tag: info.tag.iter().map(|b| format!("{b:02x}")).collect(),
                run_time: std::time::Duration::from_nanos(info.run_time_ns),
                run_count: info.run_cnt,
                recursion_misses: info.recursion_misses,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_of_the_embedded_object() {
        let o = bpf_programs::find("tcp_connect_latency").unwrap();
        // Its batched ring's flush program too, which the loader loads but never attaches.
        assert_eq!(
            program_sections("t", o.bytes).unwrap(),
            vec![
                ("events__flush".to_string(), "raw_tp".to_string()),
                (
                    "tcp_connect_state".to_string(),
                    "raw_tp/inet_sock_set_state".to_string()
                )
            ]
        );
        assert_eq!(
            crate::sections("t", o.bytes).unwrap(),
            vec![(
                "tcp_connect_state".to_string(),
                "raw_tp/inet_sock_set_state".to_string()
            )]
        );
        assert!(program_sections("t", b"not elf")
            .unwrap_err()
            .to_string()
            .contains("cannot parse"));
    }

    #[test]
    fn uprobe_targets_resolve_like_libbpf() {
        assert_eq!(
            resolve_uprobe_target("/bin/app"),
            std::path::PathBuf::from("/bin/app")
        );
        assert!(
            resolve_uprobe_target("libc.so.6").is_absolute(),
            "libc is in a library dir"
        );
        assert!(resolve_uprobe_target("sh").is_absolute(), "sh is on PATH");
        assert_eq!(
            resolve_uprobe_target("no-such-lib.so.9"),
            std::path::PathBuf::from("no-such-lib.so.9")
        );
    }

    #[test]
    fn verifier_log_tail_keeps_the_reason() {
        let log = (1..=30)
            .map(|i| format!("{i}: insn"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n\ninvalid mem access\n";
        let t = tail(&log, 3);
        assert_eq!(t, "29: insn\n30: insn\ninvalid mem access");
    }
}
