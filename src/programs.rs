//! Turns program configs into running programs: compile metrics, find the object, load
//! and attach it. A failure names the config and its stage; whether it stops startup
//! is the caller's choice (`--config.strict`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use aggregate::{decoder::Context, ProgramPlan, Registry};
use ingest::{
    cgroup_id_map::{self, CgroupIdMap},
    LoadOptions, LoadedObject, Loader,
};
use spans::SpanPlan;

use kube_ebpf_exporter::config::{CgroupIdMapConfig, CgroupIdMapType, PipelineConfig, Program};

/// Where a program's config came from, for messages and relative object paths.
pub struct Origin {
    /// Program (config) name.
    pub name: String,
    /// Prefix of every error location (`<file>: ` or `<file>: programs.<name>.`).
    pub at: String,
    /// The object: built-in name or path.
    pub object: Object,
}

/// A program's object.
pub enum Object {
    /// Embedded in the binary.
    Builtin(&'static bpf_programs::Object),
    /// A `.bpf.o` file.
    File(PathBuf),
}

impl Origin {
    /// A program from the main config (embedded default or `--config.file`).
    pub fn inline(name: &str, program: &Program, file: Option<&Path>, source: &str) -> Self {
        let object_name = program.object.as_deref().unwrap_or(name);
        let object = match bpf_programs::find(object_name) {
            Some(o) => Object::Builtin(o),
            None => Object::File(match file.and_then(Path::parent) {
                Some(dir) if Path::new(object_name).is_relative() => dir.join(object_name),
                _ => PathBuf::from(object_name),
            }),
        };
        Self {
            name: name.into(),
            at: format!("{source}: programs.{name}."),
            object,
        }
    }

    /// A program from `<dir>/<name>.yaml`, with its object `<dir>/<name>.bpf.o`.
    pub fn dir(dir: &Path, name: &str, program: &Program) -> Self {
        let object = match &program.object {
            Some(o) => {
                bpf_programs::find(o).map_or_else(|| Object::File(dir.join(o)), Object::Builtin)
            }
            None => Object::File(dir.join(format!("{name}.bpf.o"))),
        };
        Self {
            name: name.into(),
            at: format!("{}: ", dir.join(format!("{name}.yaml")).display()),
            object,
        }
    }
}

/// `x.bpf.o` → `x.perf.bpf.o`: the `-DOUTPUT_PERF` build beside it.
pub fn perf_object(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".bpf.o")
        .or_else(|| name.strip_suffix(".o"))
        .unwrap_or(&name);
    path.with_file_name(format!("{stem}.perf.bpf.o"))
}

/// How far a program got before failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading or compiling its config.
    Config,
    /// Reading, loading (verifier) or sizing its object.
    Load,
    /// Attaching its programs.
    Attach,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Config => "config",
            Stage::Load => "load",
            Stage::Attach => "attach",
        }
    }
}

/// What a program's hooks need of the kernel (for `kube-ebpf-exporter programs`).
pub fn kernel_needs(sections: &[String], rings: bool) -> String {
    let mut needs = Vec::new();
    for s in sections {
        let need = match s.split('/').next().unwrap_or("") {
            "tracepoint" => "tracepoints (4.7)",
            "raw_tp" | "raw_tracepoint" => "raw tracepoints (4.17)",
            "tp_btf" => "BTF tracepoints (5.5, BTF)",
            "kprobe" | "kretprobe" => "CONFIG_KPROBES",
            "fentry" | "fexit" => "BPF trampolines (5.5, BTF)",
            "uprobe" | "uretprobe" | "usdt" => "CONFIG_UPROBES",
            "xdp" => "XDP",
            _ => continue,
        };
        if !needs.contains(&need) {
            needs.push(need);
        }
    }
    if rings {
        needs.push("ring buffers (5.8; perf buffers before)");
    }
    needs.join(", ")
}

/// A program that could not start.
#[derive(Debug)]
pub struct Failure {
    /// Program name.
    pub name: String,
    /// Where it failed.
    pub stage: Stage,
    /// Why: `config`, or what the kernel's refusal came from (ingest::refusal::Reason).
    pub reason: &'static str,
    /// The full error.
    pub message: String,
}

impl Failure {
    /// A failure whose reason is its stage's usual one (`config`, `object`, `kernel`).
    pub fn new(name: &str, stage: Stage, message: String) -> Self {
        let reason = match stage {
            Stage::Config => "config",
            Stage::Load => "object",
            Stage::Attach => "kernel",
        };
        Self {
            name: name.into(),
            stage,
            reason,
            message,
        }
    }

    /// `stage, reason` for messages; just the stage where the reason says nothing more.
    pub fn cause(&self) -> String {
        match self.stage.as_str() {
            s if s == self.reason => s.to_string(),
            s => format!("{s}, {}", self.reason),
        }
    }
}

/// A loaded, attached program and what aggregates its data.
pub struct Attached {
    /// Program name.
    pub name: String,
    /// The kernel side.
    pub object: LoadedObject,
    /// Streams and tables.
    pub plan: ProgramPlan,
    /// Span streams (`tracing.spans`), until they go live.
    pub spans: Vec<Arc<SpanPlan>>,
    /// Per table: read per CPU (the per-CPU map has a `cpu` label).
    pub split_cpus: Vec<bool>,
    /// The map of matching cgroups, until the cgroup stream takes it.
    pub cgroup_map: Option<CgroupIdMap>,
    /// The `maps:` entries written into its maps.
    pub map_entries: Vec<ingest::map_entries::MapEntries>,
}

impl Attached {
    /// Removes the entries of a cgroup-keyed table whose cgroups were removed at least the
    /// series grace period ago, from the map too: the kernel would keep deleted pods'
    /// counts (and their series) until its LRU map fills.
    pub fn expire_removed(
        &self,
        t: &aggregate::TablePlan,
        split_cpus: bool,
        entries: &mut Vec<(Vec<u8>, u64)>,
        enricher: &enrich::Enricher,
        grace: std::time::Duration,
    ) {
        let gone = |key: &[u8]| {
            t.cgroup_id(key)
                .and_then(|id| enricher.removed_for(id))
                .is_some_and(|removed| removed >= grace)
        };
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(entries)
            .into_iter()
            .partition(|(key, _)| gone(key));
        *entries = kept;
        if expired.is_empty() {
            return;
        }
        // Entries read per CPU carry the CPU (u16) after the map's key.
        let mut keys: Vec<Vec<u8>> = expired
            .into_iter()
            .map(|(mut k, _)| {
                k.truncate(k.len() - if split_cpus { 2 } else { 0 });
                k
            })
            .collect();
        keys.dedup();
        if let Err(e) = self.object.delete_table_keys(&t.map, &keys) {
            tracing::warn!(config = %self.name, "deleting entries of removed cgroups: {e}");
        }
    }
}

/// Starts program configs: what loading and attaching each one shares.
pub struct Starter<'a> {
    /// Load the perf event array build of programs that stream records.
    pub perf_output: bool,
    pub registry: &'a Registry,
    pub decoders: &'a Context,
    pub pipeline: &'a PipelineConfig,
    /// Relocates against the running kernel's BTF (or `--btf.path`), parsed once.
    pub loader: Loader<'a>,
    /// Where cgroup2 is mounted: cgroup id maps match full paths below it.
    pub cgroup_mount: &'a Path,
}

/// The object's bytes: the built-in's, or the file's; the `-DOUTPUT_PERF` build with
/// `perf`.
fn object_bytes(src: &Origin, perf: bool) -> Result<std::borrow::Cow<'static, [u8]>, Failure> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| {
            let builtin: Vec<&str> = bpf_programs::OBJECTS.iter().map(|o| o.name).collect();
            let why = if perf { " (ring buffers are unavailable or pipeline.output is perf: this needs the -DOUTPUT_PERF build)" } else { "" };
            Failure::new(&src.name, Stage::Load, format!("{}object: cannot read {}: {e}{why} (built-in objects: {})", src.at, path.display(), builtin.join(", ")))
        })
    };
    Ok(match &src.object {
        Object::Builtin(o) if perf => o.perf_bytes.into(),
        Object::Builtin(o) => o.bytes.into(),
        Object::File(path) if perf => read(&perf_object(path))?.into(),
        Object::File(path) => read(path)?.into(),
    })
}

/// The config's `maps:` entries, as ingest writes them.
pub fn map_entries(program: &Program) -> Vec<ingest::map_entries::MapEntries> {
    program
        .maps
        .iter()
        .map(|(map, entries)| ingest::map_entries::MapEntries {
            map: map.clone(),
            entries: entries
                .iter()
                .map(|(k, v)| (k.clone(), (*v).into()))
                .collect(),
        })
        .collect()
}

impl Starter<'_> {
    /// The kernel addresses of the symbols the config's `kaddrs` name.
    fn kaddrs(&self, src: &Origin, program: &Program) -> Result<Vec<(String, u64)>, Failure> {
        if program.kaddrs.is_empty() {
            return Ok(Vec::new());
        }
        let syms = self.decoders.kallsyms();
        let at = &src.at;
        program
            .kaddrs
            .iter()
            .enumerate()
            .map(|(i, sym)| {
                let addr = syms.address(sym).ok_or_else(|| {
                    Failure::new(&src.name, Stage::Config, format!("{at}kaddrs[{i}]: symbol {sym:?} is not in /proc/kallsyms (or it is unreadable)"))
                })?;
                Ok((sym.clone(), addr))
            })
            .collect()
    }

    /// Compiles, loads and attaches one program.
    pub fn start(&mut self, src: &Origin, program: &Program) -> Result<Attached, Failure> {
        let fail = |stage, message: String| Failure::new(&src.name, stage, message);
        let at = &src.at;
        let plan = ProgramPlan::compile(
            &program.rings,
            &program.metrics,
            self.registry,
            self.decoders,
            at,
        )
        .map_err(|e| fail(Stage::Config, format!("{at}{e}")))?;
        let spans = program
            .tracing
            .spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                SpanPlan::compile(
                    s,
                    &src.name,
                    self.decoders,
                    &format!("{at}tracing.spans[{i}]"),
                )
                .map(Arc::new)
                .map_err(|e| fail(Stage::Config, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let kaddrs = self.kaddrs(src, program)?;
        // Rings need the -DOUTPUT_PERF build where ring buffers are off the table.
        let perf = self.perf_output && !program.rings.is_empty();
        let bytes = object_bytes(src, perf)?;
        let p = self.pipeline;
        let opts = LoadOptions {
            rings: plan
                .streams
                .iter()
                .map(|s| s.ring.clone())
                .chain(spans.iter().map(|s| s.stream.ring.clone()))
                .collect(),
            ring_bytes: Some(p.ring_bytes),
            wakeup_bytes: p.wakeup_bytes.unwrap_or(u64::from(p.ring_bytes) / 4),
            kaddrs,
            optional: program.optional.clone(),
            map_entries: map_entries(program),
        };
        let written = opts.map_entries.clone();
        let mut object = self.loader.load(&src.name, &bytes, &opts).map_err(|e| {
            if let ingest::IngestError::MapEntries { source, .. } = &e {
                return fail(Stage::Config, format!("{at}{source}"));
            }
            let stage = if matches!(e, ingest::IngestError::Program { action: "attach", .. }) { Stage::Attach } else { Stage::Load };
            // SAFETY: geteuid has no preconditions.
            let hint = if unsafe { libc::geteuid() } != 0 {
                " (not running as root: loading BPF needs CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH)"
            } else {
                ""
            };
            Failure {
                reason: e.reason().as_str(),
                ..fail(stage, format!("{at}{e}{hint}"))
            }
        })?;
        let mut split_cpus = Vec::new();
        for t in &plan.tables {
            let (key, per_cpu) = object
                .key_size(&t.map)
                .map_err(|e| fail(Stage::Config, format!("{}.name: {e}", t.at)))?;
            // A per-CPU map's `cpu` label comes from the CPU, not from its key.
            let split = per_cpu && t.cpu_label;
            split_cpus.push(split);
            let key = if split { key + 2 } else { key };
            if let Some(want) = t.key_size.filter(|&want| want != key) {
                return Err(fail(
                    Stage::Config,
                    format!("{}.labels: sizes and padding add up to {want} bytes, but map {:?} has {key}-byte keys (from its BTF)", t.at, t.map),
                ));
            }
        }
        let cgroup_map = match &program.cgroup_id_map {
            Some(c) => Some(
                self.cgroup_map(c, &mut object, at)
                    .map_err(|e| fail(Stage::Config, format!("{e:#}")))?,
            ),
            None => None,
        };
        for (prog, point) in object.attached() {
            tracing::info!(program = %src.name, function = %prog, at = %point, "attached");
        }
        Ok(Attached {
            name: src.name.clone(),
            object,
            plan,
            spans,
            split_cpus,
            cgroup_map,
            map_entries: written,
        })
    }

    /// The program's `cgroup_id_map`, taken from its object.
    fn cgroup_map(
        &self,
        c: &CgroupIdMapConfig,
        object: &mut LoadedObject,
        at: &str,
    ) -> anyhow::Result<CgroupIdMap> {
        let regexps = c
            .regexps
            .iter()
            .enumerate()
            .map(|(i, r)| {
                regex::Regex::new(r)
                    .map_err(|e| anyhow::anyhow!("{at}cgroup_id_map.regexps[{i}]: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let kind = match c.kind {
            CgroupIdMapType::Hash => cgroup_id_map::Kind::Hash,
            CgroupIdMapType::CgrpStorage => cgroup_id_map::Kind::CgrpStorage,
        };
        CgroupIdMap::take(object, &c.name, kind, regexps, self.cgroup_mount)
            // The ingest error says its causes itself.
            .map_err(|e| anyhow::anyhow!("{at}cgroup_id_map.name: {e}"))
    }
}
