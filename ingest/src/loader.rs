//! Loads one BPF object into the kernel and attaches every program by its section name.

use std::collections::HashMap;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::{AttachPoint, IngestError};

/// Name of the per-CPU reserve-failure counter that `output.bpf.h` declares.
const DROPS_MAP: &str = "ringbuf_drops";
/// Global that `output.bpf.h` reads to decide when a submit wakes the reader.
const WAKEUP_GLOBAL: &str = "output_wakeup_bytes";

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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            rings: Vec::new(),
            ring_bytes: None,
            wakeup_bytes: 1024 * 1024,
        }
    }
}

/// A loaded object whose programs are attached; dropping it detaches them.
pub struct LoadedObject {
    name: String,
    ebpf: Ebpf,
    attached: Vec<(String, AttachPoint)>,
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
fn program_sections(object: &str, bytes: &[u8]) -> Result<HashMap<String, String>, IngestError> {
    let parse = |reason: String| IngestError::Parse {
        object: object.into(),
        reason,
    };
    let file = object::File::parse(bytes).map_err(|e| parse(e.to_string()))?;
    if file.section_by_name(".BTF").is_none() {
        return Err(parse("no .BTF section: compile with clang -g".into()));
    }
    let mut out = HashMap::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || !sym.is_global() {
            continue;
        }
        let Some(index) = sym.section_index() else { continue };
        let section = file.section_by_index(index).map_err(|e| parse(e.to_string()))?;
        let (Ok(name), Ok(section)) = (sym.name(), section.name()) else { continue };
        if section != ".text" {
            out.insert(name.to_string(), section.to_string());
        }
    }
    Ok(out)
}

/// Keeps the end of a verifier log: the reason for a rejection is at the bottom.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!(
            "{io_error}; verifier log (last lines):\n{}",
            tail(&verifier_log.to_string(), 12)
        ),
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}

impl LoadedObject {
    /// Loads `bytes` (ELF with BTF) and attaches each program at its section's attach point.
    ///
    /// # Errors
    /// A parse or load failure, a section this exporter cannot attach, or a program the
    /// verifier rejects (with the log's last lines) or the kernel cannot attach.
    pub fn load(name: &str, bytes: &[u8], opts: &LoadOptions) -> Result<Self, IngestError> {
        let sections = program_sections(name, bytes)?;
        let mut points = Vec::new();
        for (program, section) in &sections {
            match AttachPoint::from_section(section) {
                Some(point) => points.push((program.clone(), section.clone(), point)),
                None => {
                    return Err(IngestError::UnknownSection {
                        object: name.into(),
                        program: program.clone(),
                        section: section.clone(),
                    })
                }
            }
        }
        points.sort_by(|a, b| a.0.cmp(&b.0));

        let mut loader = EbpfLoader::new();
        loader.override_global(WAKEUP_GLOBAL, &opts.wakeup_bytes, false);
        if let Some(size) = opts.ring_bytes {
            for ring in &opts.rings {
                loader.map_max_entries(ring, size);
            }
        }
        let mut ebpf = loader.load(bytes).map_err(|source| IngestError::Load {
            object: name.into(),
            source,
        })?;

        let mut btf = None;
        let mut attached = Vec::new();
        for (program, section, point) in points {
            let err = |action, e: &ProgramError| IngestError::Program {
                object: name.into(),
                program: program.clone(),
                section: section.clone(),
                action,
                detail: program_error(e),
            };
            let prog = ebpf.program_mut(&program).ok_or_else(|| IngestError::Parse {
                object: name.into(),
                reason: format!("program {program} not found by the loader"),
            })?;
            match &point {
                AttachPoint::TracePoint { category, name: tp } => {
                    let p: &mut TracePoint = prog.try_into().map_err(|e| err("load", &e))?;
                    p.load().map_err(|e| err("load", &e))?;
                    p.attach(category, tp).map_err(|e| err("attach", &e))?;
                }
                AttachPoint::RawTracePoint(tp) => {
                    let p: &mut RawTracePoint = prog.try_into().map_err(|e| err("load", &e))?;
                    p.load().map_err(|e| err("load", &e))?;
                    p.attach(tp).map_err(|e| err("attach", &e))?;
                }
                AttachPoint::BtfTracePoint(tp) => {
                    if btf.is_none() {
                        btf = Some(Btf::from_sys_fs().map_err(|e| IngestError::Parse {
                            object: name.into(),
                            reason: format!("kernel BTF: {e}"),
                        })?);
                    }
                    let p: &mut BtfTracePoint = prog.try_into().map_err(|e| err("load", &e))?;
                    p.load(tp, btf.as_ref().unwrap()).map_err(|e| err("load", &e))?;
                    p.attach().map_err(|e| err("attach", &e))?;
                }
            }
            attached.push((program, point));
        }
        Ok(Self {
            name: name.into(),
            ebpf,
            attached,
        })
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attached programs and where.
    pub fn attached(&self) -> &[(String, AttachPoint)] {
        &self.attached
    }

    /// Takes a ring buffer map out of the object for a reader.
    ///
    /// # Errors
    /// The map is missing or is not a ring buffer.
    pub fn take_ring(&mut self, map: &str) -> Result<RingBuf<MapData>, IngestError> {
        let err = |reason: String| IngestError::Map {
            object: self.name.clone(),
            map: map.into(),
            reason,
        };
        let m = self
            .ebpf
            .take_map(map)
            .ok_or_else(|| err("no such map in the object".into()))?;
        RingBuf::try_from(m).map_err(|e| err(e.to_string()))
    }

    /// Records the kernel side failed to reserve (ring full), summed over CPUs; 0 when the
    /// object does not use `output.bpf.h`.
    pub fn ring_drops(&self) -> u64 {
        let Some(map) = self.ebpf.map(DROPS_MAP) else { return 0 };
        let Ok(array) = PerCpuArray::<_, u64>::try_from(map) else { return 0 };
        array.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}
