//! Start-up, while the exporter still holds its privileges: learn the cgroups and pods,
//! set up every config (compile, load, attach), start the cgroup feed, then lower the
//! capabilities to what is still used.

use std::{path::Path, sync::Arc, time::Duration};

use aggregate::{decoder::Context, Registry};
use anyhow::{bail, Context as _, Result};
use enrich::{CgroupFs, Cri, Enricher, KubeApiSource, PodLogs, PodSource, Sources};
use ingest::cgroup_id_map::CgroupIdMap;
use kube_ebpf_exporter::{
    config::{self, Config, MetadataSource, PipelineConfig, Program, CRI_SOCKETS},
    pipeline,
};

use crate::{
    attach_mark::mark_attached,
    privileges,
    programs::{Failure, Origin, Starter},
    settings::Settings,
    units,
};

/// The pod metadata sources the config lists, in its order.
fn metadata_sources(k: &config::Kubernetes, source: &str) -> Result<Sources> {
    let mut sources: Vec<Box<dyn PodSource>> = Vec::new();
    for s in &k.sources {
        match s {
            MetadataSource::Api => {
                let node = k
                    .node_name
                    .clone()
                    .or_else(|| std::env::var("NODE_NAME").ok())
                    .filter(|n| !n.is_empty())
                    .with_context(|| {
                        format!("{source}: kubernetes.sources lists api, but neither kubernetes.node_name nor NODE_NAME names the node whose pods to watch")
                    })?;
                sources.push(Box::new(
                    KubeApiSource::connect(&node)
                        .with_context(|| format!("{source}: kubernetes.sources: api"))?,
                ));
            }
            MetadataSource::Logs => sources.push(Box::new(PodLogs::new(
                &k.pod_logs_dir,
                &k.container_logs_dir,
            ))),
            MetadataSource::Cri => match &k.cri_socket {
                Some(socket) => sources.push(Box::new(
                    Cri::connect(Path::new(socket))
                        .with_context(|| format!("{source}: kubernetes.cri_socket"))?,
                )),
                None => match CRI_SOCKETS.iter().find(|p| Path::new(p).exists()) {
                    Some(socket) => match Cri::connect(Path::new(socket)) {
                        Ok(cri) => sources.push(Box::new(cri)),
                        Err(e) => tracing::warn!("skipping the cri metadata source: {e}"),
                    },
                    None => tracing::info!(
                        "no CRI socket at {} (kubernetes.cri_socket unset): the cri metadata source is skipped",
                        CRI_SOCKETS.join(", ")
                    ),
                },
            },
        }
    }
    Ok(Sources(sources))
}

fn node_id(config: &Config) -> String {
    if let Some(n) = &config.node_id {
        return n.clone();
    }
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Learns container cgroups as they come and go (so short-lived ones still resolve),
/// and keeps the programs' cgroup id maps current with them; the maps are first
/// filled with the cgroups that exist once the stream is attached.
fn cgroup_feed(
    loader: &mut ingest::Loader<'_>,
    cgroups: &CgroupFs,
    wanted: bool,
    mut maps: Vec<(String, CgroupIdMap)>,
) -> Option<pipeline::CgroupEventsHandle> {
    let events = if wanted || !maps.is_empty() {
        match bpf_programs::find("cgroup_events")
            .map(|o| ingest::CgroupEvents::load(loader, o.bytes))
        {
            Some(Ok(events)) => Some(events),
            Some(Err(e)) => {
                tracing::warn!("cgroup events unavailable ({e}); cgroups are resolved when their events arrive, and cgroup_id_maps hold only the cgroups that exist now");
                None
            }
            None => None,
        }
    } else {
        None
    };
    if !maps.is_empty() {
        cgroups.walk(|id, path| maps.iter_mut().for_each(|(_, m)| m.update(id, path, false)));
        for (_, m) in &maps {
            tracing::info!(map = ?m, matching = m.written(), "cgroup_id_map filled");
        }
    }
    events.map(|events| {
        Arc::new(parking_lot::Mutex::new(pipeline::CgroupFeed {
            events,
            maps,
        }))
    })
}

/// What the privileged start-up made: every config set up (or why not), the stages'
/// shared state, and the cgroup event stream.
pub struct Started {
    pub enricher: Arc<Enricher>,
    pub registry: Arc<Registry>,
    pub decoders: Context,
    pub units: Vec<units::Prepared>,
    pub failures: Vec<Failure>,
    pub cgroup_events: Option<pipeline::CgroupEventsHandle>,
    pub extra_names: Vec<String>,
    pub node: String,
    /// When set-up began, and each config's set-up (for the start-up trace).
    pub setup: (std::time::SystemTime, Vec<spans::Step>),
}

/// Sets up every config: learns the cgroups and pods, compiles, loads and attaches
/// (all through [`units::prepare`], as a reload does), then lowers capabilities.
pub fn start_configs(settings: &mut Settings) -> Result<Started> {
    let Settings {
        config,
        source,
        selection,
        btf_path,
        check,
        strict,
        ..
    } = &mut *settings;
    let source = source.as_str();
    let began = std::time::SystemTime::now();
    // Every object is CO-RE-relocated against this one parse; it is dropped (and its
    // memory returned) once programs are attached.
    let btf = ingest::kernel_btf(btf_path.as_deref())?;
    if let Some(limit) = ingest::memlock::raise_soft_limit() {
        tracing::info!(
            bytes = limit,
            "this kernel charges BPF maps to RLIMIT_MEMLOCK (before 5.11)"
        );
    }
    let node = node_id(config);
    let (enricher, extra_names) = enricher(config, source)?;
    let registry = Arc::new(
        Registry::new((&config.kubernetes.labels).into(), node.clone())
            .max_series(config.pipeline.max_series),
    );
    let decoders = Context::new(Some(enricher.clone()));
    let sources = selection.sources(config, source)?;
    if sources.is_empty() {
        bail!("{source}: no programs to run: add a `programs:` section (deploy/overlays/custom-config/config.yaml holds the built-in ones to copy, `kube-ebpf-exporter programs` lists them), or give --config.dir with <name>.yaml and <name>.bpf.o files; without --config.file the built-in programs run");
    }
    let perf_output = config.pipeline.output.perf();
    if perf_output {
        tracing::info!("programs that stream records use perf event arrays (pipeline.output, or no ring buffers in this kernel)");
    }
    let mut starter = Starter {
        perf_output,
        registry: &registry,
        decoders: &decoders,
        pipeline: &config.pipeline,
        loader: ingest::Loader::new(&btf),
        cgroup_mount: enricher.cgroups().mount(),
    };
    let (mut units, failures, steps) =
        prepare_all(&mut starter, sources, &config.pipeline, *strict)?;
    mark_attached();
    if *check {
        report_check(&units, &failures);
    }
    if units.is_empty() {
        let reasons: Vec<String> = failures.iter().map(|f| f.message.clone()).collect();
        bail!(
            "no config could be started; nothing to export:\n  {}",
            reasons.join("\n  ")
        );
    }
    let maps = units
        .iter_mut()
        .filter_map(|u| Some((u.attached.name.clone(), u.cgroup_map.take()?)))
        .collect();
    let cgroup_events = cgroup_feed(
        &mut starter.loader,
        enricher.cgroups(),
        config.kubernetes.cgroup_events,
        maps,
    );
    // The kernel's BTF (tens of MiB parsed) is needed only to load; give its pages back
    // rather than keep them for the process's life (a reload parses it again).
    drop(starter);
    drop(btf);
    give_back_free_memory();
    drop_capabilities(settings)?;
    Ok(Started {
        enricher,
        registry,
        decoders,
        units,
        failures,
        cgroup_events,
        extra_names,
        node,
        setup: (began, steps),
    })
}

/// Returns the heap's free pages to the kernel (the BTF parse left tens of MiB).
fn give_back_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The enrich stage's resolver: the cgroup2 hierarchy walked, the pod metadata sources
/// connected; with the names of the opt-in labels.
fn enricher(config: &Config, source: &str) -> Result<(Arc<Enricher>, Vec<String>)> {
    let cgroups = CgroupFs::discover().context("enrich: cgroup v2 hierarchy")?;
    let pods = metadata_sources(&config.kubernetes, source)?;
    let (extra, extra_names): (Vec<_>, Vec<_>) =
        config.kubernetes.labels.extra().into_iter().unzip();
    let grace = Duration::from_secs(config.kubernetes.series_grace_seconds);
    let enricher = Arc::new(
        Enricher::new(cgroups, pods)
            .with_extra(extra)
            .with_series_grace(grace),
    );
    let walked = enricher.walk();
    tracing::info!(
        containers = walked,
        "learned the container cgroups that exist now"
    );
    Ok((enricher, extra_names))
}

/// Prepares every config, numbering their streams one after another; a config that
/// fails is logged and skipped (with `strict`, it stops the start). Each config's
/// set-up is a step of the start-up trace.
fn prepare_all(
    starter: &mut Starter,
    sources: Vec<(Origin, Result<Program, Failure>)>,
    pipeline: &PipelineConfig,
    strict: bool,
) -> Result<(Vec<units::Prepared>, Vec<Failure>, Vec<spans::Step>)> {
    let (mut units, mut failures, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    let mut next_id = 0;
    for (src, program) in sources {
        let start = std::time::SystemTime::now();
        let prepared = program.and_then(|p| units::prepare(starter, &src, &p, next_id, pipeline));
        let outcome = match &prepared {
            Ok(u) => format!("{} program(s) attached", u.attached.object.attached().len()),
            Err(f) => format!("failed ({}): {}", f.cause(), f.message),
        };
        steps.push(spans::Step {
            name: format!("config {}", src.name),
            start,
            end: std::time::SystemTime::now(),
            attributes: vec![
                ("ebpf_exporter.config", src.name.clone()),
                ("outcome", outcome),
            ],
        });
        match prepared {
            Ok(u) => {
                next_id += u.streams.len() as u32;
                units.push(u);
            }
            Err(f) if strict => {
                bail!("config {} failed ({}): {}", f.name, f.cause(), f.message)
            }
            Err(f) => {
                tracing::error!(config = %f.name, stage = f.stage.as_str(), reason = f.reason, "skipping config: {}", f.message);
                failures.push(f);
            }
        }
    }
    Ok((units, failures, steps))
}

/// `--config.check`: prints each config's outcome and exits.
fn report_check(units: &[units::Prepared], failures: &[Failure]) -> ! {
    for u in units {
        let r = &u.attached;
        let skipped = r.object.skipped();
        let optional = if skipped.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
            format!(" (optional, not attached: {})", names.join(", "))
        };
        println!(
            "ok      {}: {} program(s) attached{optional}",
            r.name,
            r.object.attached().len()
        );
    }
    for f in failures {
        println!("FAILED  {} ({}): {}", f.name, f.cause(), f.message);
    }
    std::process::exit(i32::from(!failures.is_empty()));
}

/// Everything privileged is done and no other thread runs yet: lower capabilities
/// here, so every thread started from now on holds only what is still used (and,
/// with reloads, what loading programs needs).
fn drop_capabilities(settings: &Settings) -> Result<()> {
    if settings.keep.all {
        tracing::info!("keeping every capability (--capabilities.keep-all)");
        return Ok(());
    }
    let mut keep = privileges::needed(privileges::kernel_version()?);
    if settings.reload.any() {
        keep.extend(privileges::RELOAD);
        let paranoid = ingest::perf_event_paranoid();
        if paranoid > 2
            && !settings
                .keep
                .extra
                .contains(&caps::Capability::CAP_SYS_ADMIN)
        {
            tracing::warn!("kernel.perf_event_paranoid is {paranoid} (Debian, Ubuntu): configs with tracepoint, kprobe or uprobe programs will not attach at a reload without CAP_SYS_ADMIN (--capabilities.keep sys_admin) or the sysctl at 2");
        }
    }
    keep.extend(settings.keep.extra.iter().copied());
    let (kept, dropped) =
        privileges::drop_all_but(&keep).context("dropping capabilities after attaching")?;
    tracing::info!(
        ?kept,
        dropped = dropped.len(),
        "dropped capabilities no longer needed: {dropped:?}"
    );
    Ok(())
}
