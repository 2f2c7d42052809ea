//! kube-ebpf-exporter: eBPF programs in, Prometheus metrics with pod labels out.
//!
//! Flow: bpf (kernel programs) → ingest (ring readers) → enrich (cgroup → pod) →
//! aggregate (series) → HTTP exposition. This file parses flags and config, starts
//! each program, wires the stages and serves `/metrics` and `/healthz`.

mod privileges;
mod programs;
mod tap_client;
mod telemetry;
mod units;
mod watch;
mod web;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aggregate::{decoder::Context, Registry};
use anyhow::{bail, Context as _, Result};
use axum::{
    extract::{RawQuery, State},
    http::header,
    response::IntoResponse,
    routing::get,
    Router,
};
use bytes::Bytes;
use clap::Parser;
use enrich::{CgroupFs, Cri, Enricher, KubeApiSource, PodLogs, PodSource, Sources};
use ingest::cgroup_id_map::CgroupIdMap;
use kube_ebpf_exporter::pipeline::{self, Pipeline, Stream};
use kube_ebpf_exporter::{config, web_config, web_config_watch::WebConfigWatch};
use tap::Tap;

use crate::{
    config::{Config, MetadataSource, Program, CRI_SOCKETS},
    programs::{Failure, Running, Setup},
    telemetry::Telemetry,
};

/// Prometheus exporter for custom eBPF metrics, with Kubernetes pod labels.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print live, enriched events from a running exporter (its /events).
    Tap(tap_client::TapArgs),
    /// List the built-in programs: what each answers, its hooks, kernel needs, and
    /// whether the embedded default runs it.
    Programs,
}

#[derive(Debug, clap::Args)]
struct Args {
    /// YAML config file; without it (and without --config.dir) the embedded default runs.
    #[arg(long = "config.file", value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Directory of `<name>.yaml` configs, each beside its compiled `<name>.bpf.o`.
    #[arg(long = "config.dir", value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Which of the main config's programs run: comma-separated names, or `all`
    /// (default: those not marked `enabled: false`).
    #[arg(
        long = "programs",
        env = "KUBE_EBPF_EXPORTER_PROGRAMS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    programs: Vec<String>,
    /// Comma-separated config names to run from --config.dir (default: every .yaml).
    #[arg(long = "config.names", value_name = "NAMES", value_delimiter = ',')]
    config_names: Vec<String>,
    /// Load and attach every config, report each, and exit (non-zero if any failed).
    #[arg(long = "config.check")]
    config_check: bool,
    /// Stop at the first config that fails, instead of skipping it and reporting it
    /// in ebpf_exporter_config_failed.
    #[arg(long = "config.strict")]
    config_strict: bool,
    /// Reload program configs without a restart: on SIGHUP, when --config.dir or the
    /// config file's directory changes, and every --config.reload-interval. Keeps
    /// CAP_BPF and CAP_PERFMON to load programs later.
    #[arg(long = "config.reload")]
    config_reload: bool,
    /// Seconds between checks of the configs on disk (with --config.reload).
    #[arg(
        long = "config.reload-interval",
        value_name = "SECONDS",
        default_value_t = 60
    )]
    config_reload_interval: u64,
    /// Serve POST /-/reload (keeps CAP_BPF and CAP_PERFMON, as --config.reload).
    #[arg(long = "web.enable-lifecycle")]
    web_enable_lifecycle: bool,
    /// Address to serve metrics on (`host:port` or `:port`); overrides the config.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    listen_address: Option<String>,
    /// Path of the metrics page; overrides the config.
    #[arg(long = "web.telemetry-path", value_name = "PATH")]
    telemetry_path: Option<String>,
    /// TLS, basic auth and headers for the metrics listener, in the Prometheus
    /// exporter-toolkit format; parsed again when one of its files changes.
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config_file: Option<PathBuf>,
    /// External kernel BTF, for kernels without /sys/kernel/btf/vmlinux.
    #[arg(long = "btf.path", value_name = "PATH")]
    btf_path: Option<PathBuf>,
    /// Capabilities to keep after attaching, beyond what the exporter still uses
    /// (e.g. perfmon,sys_admin); the rest are dropped.
    #[arg(long = "capabilities.keep", value_name = "CAPS", value_delimiter = ',', value_parser = privileges::parse)]
    capabilities_keep: Vec<caps::Capability>,
    /// Keep every capability the exporter started with.
    #[arg(long = "capabilities.keep-all")]
    capabilities_keep_all: bool,
    /// Value of the node_id label (default: $NODE_NAME, else the hostname).
    #[arg(long = "node-id", env = "NODE_ID", value_name = "NAME")]
    node_id: Option<String>,
    /// Ring reader threads; overrides pipeline.ingest_workers.
    #[arg(long = "ingest.workers", value_name = "N")]
    ingest_workers: Option<usize>,
    /// Enrich worker threads; overrides pipeline.enrich_workers.
    #[arg(long = "enrich.workers", value_name = "N")]
    enrich_workers: Option<usize>,
    /// Aggregate worker threads (shards by pod); overrides pipeline.aggregate_workers.
    #[arg(long = "aggregate.workers", value_name = "N")]
    aggregate_workers: Option<usize>,
    /// The kubelet's pod log directory; overrides the config.
    #[arg(long = "kubelet.pod-logs-dir", value_name = "DIR")]
    pod_logs_dir: Option<String>,
    /// The kubelet's container log link directory; overrides the config.
    #[arg(long = "kubelet.container-logs-dir", value_name = "DIR")]
    container_logs_dir: Option<String>,
}

fn listen_addr(s: &str) -> Result<SocketAddr> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .with_context(|| format!("listen address {s:?} is not host:port or :port"))
}

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

/// Keeps the programs `names` chooses (`all`: every one; none given: those not marked
/// `enabled: false`).
pub(crate) fn select_programs(
    names: &[String],
    programs: &mut std::collections::BTreeMap<String, Program>,
) -> Result<()> {
    if names.iter().any(|n| n == "all") {
        return Ok(());
    }
    if names.is_empty() {
        programs.retain(|_, p| p.enabled);
        return Ok(());
    }
    if let Some(unknown) = names.iter().find(|n| !programs.contains_key(*n)) {
        let known: Vec<&str> = programs.keys().map(String::as_str).collect();
        bail!(
            "no program {unknown:?}; the config has: {} (or `all`)",
            known.join(", ")
        );
    }
    programs.retain(|name, _| names.contains(name));
    Ok(())
}

/// `kube-ebpf-exporter programs`: the embedded default config's programs.
fn list_programs() -> Result<()> {
    let config = Config::load(None)?;
    for (name, program) in &config.programs {
        let object = bpf_programs::find(program.object.as_deref().unwrap_or(name))
            .with_context(|| format!("program {name}: no built-in object"))?;
        let (optional, hooks): (Vec<_>, Vec<_>) = ingest::sections(name, object.bytes)?
            .into_iter()
            .partition(|(function, _)| program.optional.contains(function));
        let hooks: Vec<String> = hooks.into_iter().map(|(_, s)| s).collect();
        let default = if program.enabled {
            "on by default"
        } else {
            "off by default"
        };
        println!(
            "{name} ({default}): {}",
            program.description.as_deref().unwrap_or("")
        );
        println!("  hooks: {}", hooks.join(", "));
        if !optional.is_empty() {
            let optional: Vec<&str> = optional.iter().map(|(_, s)| s.as_str()).collect();
            println!("  where the kernel has them: {}", optional.join(", "));
        }
        println!(
            "  needs: {}",
            programs::kernel_needs(&hooks, !program.rings.is_empty())
        );
        if let Some(cost) = &program.cost {
            println!("  cost: {cost}");
        }
    }
    Ok(())
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
    events.map(|events| Arc::new(std::sync::Mutex::new(pipeline::CgroupFeed { events, maps })))
}

/// Runs once every program is attached: configs written for cloudflare/ebpf_exporter
/// attach a uprobe here (`uprobe//proc/self/exe:post_attach_mark`) to fill their maps
/// before the first event. Exported as a dynamic symbol (build.rs), so stripped
/// binaries keep it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn post_attach_mark() {
    std::hint::black_box(());
}

/// Calls [`post_attach_mark`] through an opaque pointer, so the empty call is kept.
pub(crate) fn mark_attached() {
    let mark: extern "C" fn() = std::hint::black_box(post_attach_mark);
    mark();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Tap(t)) => tap_client::run(t),
        Some(Command::Programs) => list_programs(),
        // One thread until programs are attached and capabilities dropped (see serve);
        // HTTP needs no more, and scrapes render on blocking threads.
        None => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(serve(cli.args)),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The exporter settings: the config file (or embedded default) with flags over it,
/// checked; and the config's name for messages.
fn settings(args: &Args) -> Result<(Config, String)> {
    let mut config = Config::load(args.config_file.as_deref())?;
    if let Some(a) = &args.listen_address {
        config.web.listen_address.clone_from(a);
    }
    if let Some(p) = &args.telemetry_path {
        config.web.telemetry_path.clone_from(p);
    }
    if let Some(n) = &args.node_id {
        config.node_id = Some(n.clone());
    }
    let p = &mut config.pipeline;
    for (flag, field) in [
        (args.ingest_workers, &mut p.ingest_workers),
        (args.enrich_workers, &mut p.enrich_workers),
        (args.aggregate_workers, &mut p.aggregate_workers),
    ] {
        if let Some(n) = flag {
            *field = n;
        }
    }
    if let Some(d) = &args.pod_logs_dir {
        config.kubernetes.pod_logs_dir.clone_from(d);
    }
    if let Some(d) = &args.container_logs_dir {
        config.kubernetes.container_logs_dir.clone_from(d);
    }
    let source = args
        .config_file
        .as_ref()
        .map_or("embedded default config".to_string(), |p| {
            p.display().to_string()
        });
    let bad = config.validate();
    if !bad.is_empty() {
        bail!("{source}: settings out of range:\n  {}", bad.join("\n  "));
    }
    if !config.web.telemetry_path.starts_with('/') || config.web.telemetry_path == "/healthz" {
        bail!(
            "{source}: web.telemetry_path: {:?} must start with / and not be /healthz",
            config.web.telemetry_path
        );
    }
    Ok((config, source))
}

impl Args {
    fn selection(&self) -> units::Selection {
        units::Selection {
            file: self.config_file.clone(),
            dir: self.config_dir.clone(),
            names: self.config_names.clone(),
            programs: self.programs.clone(),
        }
    }

    fn reload(&self) -> bool {
        self.config_reload || self.web_enable_lifecycle
    }
}

/// What the privileged start-up made: every config set up (or why not), the stages'
/// shared state, and the cgroup event stream.
struct Started {
    enricher: Arc<Enricher>,
    registry: Arc<Registry>,
    decoders: Context,
    units: Vec<units::Unit>,
    failures: Vec<Failure>,
    cgroup_events: Option<pipeline::CgroupEventsHandle>,
    extra_names: Vec<String>,
    node: String,
}

/// Sets up every config: learns the cgroups and pods, compiles, loads and attaches
/// (all through [`units::build`], as a reload does), then lowers capabilities.
fn start_configs(args: &Args, config: &mut Config, source: &str) -> Result<Started> {
    // Every object is CO-RE-relocated against this one parse; it is dropped (and its
    // memory returned) once programs are attached.
    let btf = ingest::kernel_btf(args.btf_path.as_deref())?;
    if let Some(limit) = ingest::memlock::raise_soft_limit() {
        tracing::info!(
            bytes = limit,
            "this kernel charges BPF maps to RLIMIT_MEMLOCK (before 5.11)"
        );
    }
    let node = node_id(config);
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
    let registry = Arc::new(
        Registry::new((&config.kubernetes.labels).into(), node.clone())
            .max_series(config.pipeline.max_series),
    );
    let decoders = Context::new(Some(enricher.clone()));
    let sources = args.selection().sources(config, source)?;
    if sources.is_empty() {
        bail!("{source}: no programs to run: add a `programs:` section (deploy/overlays/custom-config/config.yaml holds the built-in ones to copy, `kube-ebpf-exporter programs` lists them), or give --config.dir with <name>.yaml and <name>.bpf.o files; without --config.file the built-in programs run");
    }
    let perf_output = config.pipeline.output.perf();
    if perf_output {
        tracing::info!("programs that stream records use perf event arrays (pipeline.output, or no ring buffers in this kernel)");
    }
    let mut setup = Setup {
        perf_output,
        registry: &registry,
        decoders: &decoders,
        pipeline: &config.pipeline,
        loader: ingest::Loader::new(&btf),
        cgroup_mount: enricher.cgroups().mount(),
    };
    let (mut units, mut failures) = (Vec::new(), Vec::new());
    let mut next_id = 0;
    for (src, program) in sources {
        match program.and_then(|p| units::build(&mut setup, &src, &p, next_id, &config.pipeline)) {
            Ok(u) => {
                next_id += u.streams.len() as u32;
                units.push(u);
            }
            Err(f) if args.config_strict => {
                bail!("config {} failed ({}): {}", f.name, f.cause(), f.message)
            }
            Err(f) => {
                tracing::error!(config = %f.name, stage = f.stage.as_str(), reason = f.reason, "skipping config: {}", f.message);
                failures.push(f);
            }
        }
    }
    mark_attached();
    if args.config_check {
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
        .filter_map(|u| Some((u.running.name.clone(), u.cgroup_map.take()?)))
        .collect();
    let cgroup_events = cgroup_feed(
        &mut setup.loader,
        enricher.cgroups(),
        config.kubernetes.cgroup_events,
        maps,
    );
    drop_capabilities(args)?;
    // The kernel's BTF (tens of MiB parsed) is needed only to load; give its pages back
    // rather than keep them for the process's life (a reload parses it again).
    drop(setup);
    drop(btf);
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
    Ok(Started {
        enricher,
        registry,
        decoders,
        units,
        failures,
        cgroup_events,
        extra_names,
        node,
    })
}

/// `--config.check`: prints each config's outcome and exits.
fn report_check(units: &[units::Unit], failures: &[Failure]) -> ! {
    for u in units {
        let r = &u.running;
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
fn drop_capabilities(args: &Args) -> Result<()> {
    if args.capabilities_keep_all {
        tracing::info!("keeping every capability (--capabilities.keep-all)");
        return Ok(());
    }
    let mut keep = privileges::needed(privileges::kernel_version()?);
    if args.reload() {
        keep.extend(privileges::RELOAD);
        let paranoid = ingest::perf_event_paranoid();
        if paranoid > 2
            && !args
                .capabilities_keep
                .contains(&caps::Capability::CAP_SYS_ADMIN)
        {
            tracing::warn!("kernel.perf_event_paranoid is {paranoid} (Debian, Ubuntu): configs with tracepoint, kprobe or uprobe programs will not attach at a reload without CAP_SYS_ADMIN (--capabilities.keep sys_admin) or the sysctl at 2");
        }
    }
    keep.extend(args.capabilities_keep.iter().copied());
    let (kept, dropped) =
        privileges::drop_all_but(&keep).context("dropping capabilities after attaching")?;
    tracing::info!(
        ?kept,
        dropped = dropped.len(),
        "dropped capabilities no longer needed: {dropped:?}"
    );
    Ok(())
}

/// The tap's view of the stream table.
pub(crate) fn tap_streams(streams: &[Option<Stream>]) -> Vec<Option<tap::Stream>> {
    streams
        .iter()
        .map(|s| {
            s.as_ref().map(|s| tap::Stream {
                config: s.program.clone(),
                plan: s.plan.clone(),
            })
        })
        .collect()
}

async fn serve(args: Args) -> Result<()> {
    init_tracing();
    let (mut config, source) = settings(&args)?;
    let web_config = match &args.web_config_file {
        // Checked now; parsed again whenever one of its files changes.
        Some(path) => Some(Arc::new(WebConfigWatch::new(
            path.clone(),
            web_config::load(path)?,
        ))),
        None => None,
    };
    let listen = config::TapListen::parse(&config.tap.listen).expect("validated");
    if listen == config::TapListen::Metrics
        && web_config
            .as_ref()
            .is_none_or(|w| w.current().users.is_empty())
    {
        bail!("{source}: tap.listen: metrics serves the event stream to the network, so it needs --web.config.file with basic_auth_users");
    }
    let addr = listen_addr(&config.web.listen_address)
        .with_context(|| format!("{source}: web.listen_address"))?;
    let started = start_configs(&args, &mut config, &source)?;
    let telemetry = Telemetry::install()?;
    let state = run_pipeline(&args, &config, &source, started, telemetry)?;
    serve_http(&args, &config, &source, listen, addr, web_config, state).await
}

/// Starts the stages (ingest readers, enrich and aggregate workers, the tap) over the
/// configs that started, and makes them live.
fn run_pipeline(
    args: &Args,
    config: &Config,
    source: &str,
    started: Started,
    telemetry: Telemetry,
) -> Result<Arc<AppState>> {
    let Started {
        enricher,
        registry,
        decoders,
        units,
        failures,
        cgroup_events,
        extra_names,
        node,
    } = started;
    let p = &config.pipeline;
    let (tx, rx) = crossbeam_channel::bounded(p.queue_batches.max(1));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    enricher.start_sources();
    // Ring readers get their own runtime threads, apart from HTTP.
    let ingest = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p.ingest_workers.max(1))
        .thread_name("ingest")
        .enable_all()
        .build()?;
    let streams = Arc::new(pipeline::StreamTable::new(
        units.iter().flat_map(|u| u.streams.clone()).collect(),
    ));
    let tap = config.tap.enabled.then(|| {
        let t = &config.tap;
        let tap = Tap::start(
            Vec::new(),
            enricher.clone(),
            node.clone(),
            t.cluster.clone(),
            extra_names,
            t.input_batches,
            t.queue_events,
        );
        tap.set_streams(Arc::new(tap_streams(&streams.snapshot())));
        tap
    });
    let names: Vec<&str> = units.iter().map(|u| u.running.name.as_str()).collect();
    let sink = match (&tap, &config.tap.sink) {
        (Some(tap), Some(sink)) => Some(start_sink(tap, sink, &names, &config.tap)?),
        (None, Some(_)) => bail!("{source}: tap.sink: needs tap.enabled"),
        _ => None,
    };
    let settings = pipeline::Settings {
        enrich_workers: p.enrich_workers,
        aggregate_workers: p.aggregate_workers,
        queue_batches: p.queue_batches,
        metadata_wait: Duration::from_millis(config.kubernetes.metadata_wait_ms),
    };
    let pipeline = Pipeline::start(
        rx,
        streams.clone(),
        enricher.clone(),
        cgroup_events.clone(),
        tap.clone(),
        settings,
    )?;
    tracing::info!(
        ingest = p.ingest_workers,
        enrich = p.enrich_workers,
        aggregate = p.aggregate_workers,
        "workers"
    );
    let state = Arc::new(AppState {
        registry,
        telemetry,
        streams,
        pipeline,
        running: Mutex::new(Vec::new()),
        failures: Mutex::new(failures),
        live: Mutex::new(Vec::new()),
        reloading: units::Reloading {
            selection: args.selection(),
            source: source.to_string(),
            pipeline: p.clone(),
            btf_path: args.btf_path.clone(),
            ingest: ingest.handle().clone(),
            batches: tx,
            shutdown: shutdown_rx,
            lock: Mutex::new(()),
        },
        ingest: Mutex::new(Some(ingest)),
        shutdown: shutdown_tx,
        decoders,
        cgroup_events,
        tap,
        sink,
        node,
        enricher,
        series_grace: Duration::from_secs(config.kubernetes.series_grace_seconds),
        scrapes: web::Slots::new(config.web.max_requests, "max_requests"),
        subscribers: web::Slots::new(config.tap.max_subscribers, "max_subscribers"),
    });
    let mut next = 0;
    for unit in units {
        let ids: Vec<u32> = (next..).take(unit.streams.len()).collect();
        next += ids.len() as u32;
        let running = state.reloading.go_live(&state, unit, ids);
        state
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(running);
    }
    state.telemetry.reloaded(true);
    Ok(state)
}

/// Serves metrics (and the event stream, and reloads when enabled) until SIGTERM or
/// ^C, then stops the stages in order.
async fn serve_http(
    args: &Args,
    config: &Config,
    source: &str,
    listen: config::TapListen,
    addr: SocketAddr,
    web_config: Option<Arc<WebConfigWatch>>,
    state: Arc<AppState>,
) -> Result<()> {
    let mut app = Router::new()
        .route(&config.web.telemetry_path, get(metrics))
        .route("/healthz", get(|| async { "ok\n" }));
    if state.tap.is_some() && listen == config::TapListen::Metrics {
        app = app.route("/events", get(events));
    }
    if args.web_enable_lifecycle {
        app = app.route("/-/reload", axum::routing::post(reload_endpoint));
    }
    let app = app.with_state(state.clone());
    // Otherwise the event stream has a listener of its own, local only (tap.listen).
    let tap_server = match &state.tap {
        Some(_) if listen != config::TapListen::Metrics => {
            let events = Router::new()
                .route("/events", get(events))
                .with_state(state.clone());
            let mut stop = state.shutdown.subscribe();
            serve_tap(&listen, events, async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
        }
        _ => None,
    };
    let reloads = spawn_reloads(args, state.clone());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{source}: web.listen_address: cannot listen on {addr}"))?;
    tracing::info!(%addr, node = %state.node, path = %config.web.telemetry_path, "serving metrics");
    let limits = web::Limits {
        web_config,
        auth: Arc::default(),
        max_connections: config.web.max_connections,
        header_timeout: Duration::from_secs(config.web.header_timeout_seconds),
        shutdown_timeout: Duration::from_secs(5),
    };
    web::serve(listener, app, limits, async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
    })
    .await;
    tracing::info!("shutting down");
    reloads.abort();
    shut_down(state, tap_server).await;
    Ok(())
}

/// With --config.reload: reloads on SIGHUP, on changes in the config directories and
/// every --config.reload-interval. Without, SIGHUP is only logged (not fatal).
fn spawn_reloads(args: &Args, state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    if !args.config_reload {
        return tokio::spawn(async {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::warn!("SIGHUP: reloading on signals is off (--config.reload)");
            }
        });
    }
    // A ConfigMap's update shows in the directory holding the file, not in the file.
    let file_dir = args.config_file.as_ref().and_then(|f| {
        let dir = f.parent()?;
        Some(if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        })
    });
    let watched = args.config_dir.iter().cloned().chain(file_dir).collect();
    let poll = Duration::from_secs(args.config_reload_interval.max(1));
    tokio::spawn(units::triggers(state, watched, poll))
}

/// Stops the stages in order: readers (which flush what they read), then enrich and
/// aggregate workers once every batch sender is gone.
async fn shut_down(state: Arc<AppState>, tap_server: Option<tokio::task::JoinHandle<()>>) {
    let _ = state.shutdown.send(true);
    if let Some(t) = tap_server {
        let _ = t.await;
    }
    let readers: Vec<_> = state
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
        .flat_map(|l| std::mem::take(&mut l.readers))
        .collect();
    for r in readers {
        let _ = r.await;
    }
    let ingest = state
        .ingest
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let state = Arc::into_inner(state);
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(ingest) = ingest {
            ingest.shutdown_timeout(Duration::from_secs(1));
        }
        // The reload path holds the last batch sender.
        if let Some(AppState {
            pipeline,
            reloading,
            running,
            ..
        }) = state
        {
            drop((reloading, running));
            pipeline.join();
        }
    })
    .await;
}

/// `POST /-/reload` (with --web.enable-lifecycle): 200 with what changed, or 500 with
/// what failed (the old versions of failed configs keep running).
async fn reload_endpoint(State(s): State<Arc<AppState>>) -> axum::response::Response {
    let result = tokio::task::spawn_blocking(move || units::reload(&s)).await;
    match result {
        Ok(Ok(report)) if report.failed.is_empty() => {
            tracing::info!(trigger = "/-/reload", "config reload: {}", report.summary());
            (
                axum::http::StatusCode::OK,
                format!("{}\n", report.summary()),
            )
                .into_response()
        }
        Ok(Ok(report)) => {
            tracing::error!(trigger = "/-/reload", "config reload: {}", report.summary());
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}\n", report.summary()),
            )
                .into_response()
        }
        Ok(Err(e)) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e:#}\n"),
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("reload failed: {e}\n"),
        )
            .into_response(),
    }
}

pub(crate) struct AppState {
    registry: Arc<Registry>,
    telemetry: Telemetry,
    streams: Arc<pipeline::StreamTable>,
    pipeline: Pipeline,
    running: Mutex<Vec<Running>>,
    failures: Mutex<Vec<Failure>>,
    /// Each running config's streams and readers.
    live: Mutex<Vec<units::Live>>,
    /// What set-up needs after start (reloads).
    reloading: units::Reloading,
    /// The ring readers' runtime, until shutdown takes it.
    ingest: Mutex<Option<tokio::runtime::Runtime>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    decoders: Context,
    cgroup_events: Option<pipeline::CgroupEventsHandle>,
    tap: Option<Arc<Tap>>,
    sink: Option<Sink>,
    node: String,
    enricher: Arc<Enricher>,
    series_grace: Duration,
    /// Scrapes rendering now (`web.max_requests`).
    scrapes: web::Slots,
    /// `/events` subscribers (`tap.max_subscribers`).
    subscribers: web::Slots,
}

/// The file sink's input, for tables written at each scrape.
struct Sink {
    configs: Vec<String>,
    tx: crossbeam_channel::Sender<Bytes>,
    cluster: Option<String>,
}

/// Subscribes the file sink to its configs' events and starts its thread.
fn start_sink(
    tap: &Tap,
    sink: &config::SinkConfig,
    running: &[&str],
    t: &config::TapConfig,
) -> Result<Sink> {
    for (i, name) in sink.configs.iter().enumerate() {
        if !running.contains(&name.as_str()) {
            bail!("tap.sink.configs[{i}]: no running config named {name:?}");
        }
    }
    let (tx, rx) = crossbeam_channel::bounded(t.queue_events.max(1));
    for name in &sink.configs {
        if tap.streams().iter().any(|s| &s.config == name) {
            tap.subscribe_channel(
                tap::Filter {
                    config: Some(name.clone()),
                    ..Default::default()
                },
                tx.clone(),
            );
        }
    }
    let file = tap::sink::FileSink::new(&sink.dir, sink.max_bytes)
        .with_context(|| format!("tap.sink.dir: {}", sink.dir.display()))?;
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || file.run(rx))?;
    Ok(Sink {
        configs: sink.configs.clone(),
        tx,
        cluster: t.cluster.clone(),
    })
}

/// `/events`: NDJSON of live events matching the query's filters; 400 on a bad filter.
async fn events(
    State(s): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> axum::response::Response {
    let tap = s.tap.as_ref().expect("route exists only with a tap");
    let filter = match tap::Filter::parse(query.as_deref().unwrap_or(""), &tap.streams()) {
        Ok(f) => f,
        Err(e) => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                format!("bad filter: {e}\n"),
            )
                .into_response()
        }
    };
    let Some(slot) = s.subscribers.try_take() else {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too many event subscribers (tap.max_subscribers)\n",
        )
            .into_response();
    };
    let rx = tap.subscribe_http(filter);
    // The slot is held as long as the stream is.
    let body = axum::body::Body::from_stream(tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        move |line| {
            let _held = &slot;
            Ok::<_, std::convert::Infallible>(line)
        },
    ));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

/// Writes a table's non-zero series to the sink as JSON lines.
fn sink_table(
    sink: &Sink,
    config: &str,
    node: &str,
    t: &aggregate::TablePlan,
    rows: &aggregate::Rows,
) {
    let time = tap::rfc3339_nanos(std::time::SystemTime::now());
    for e in t.entries(rows).filter(|e| {
        e.value != 0
            || e.histogram
                .as_ref()
                .is_some_and(|h| h.1.iter().any(|&c| c != 0))
    }) {
        let labels: serde_json::Map<String, serde_json::Value> = e
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let mut line = serde_json::json!({ "time": time, "config": config, "metric": t.name(), "node": node, "labels": labels });
        if let Some(c) = &sink.cluster {
            line["cluster"] = c.as_str().into();
        }
        match &e.histogram {
            Some((bounds, counts, sum)) => {
                line["buckets"] = serde_json::json!(bounds
                    .iter()
                    .map(|b| aggregate::format_float(*b))
                    .chain(["+Inf".into()])
                    .zip(counts)
                    .collect::<Vec<_>>());
                line["sum"] = (*sum).into();
                line["count"] = counts.iter().sum::<u64>().into();
            }
            None => line["value"] = e.value.into(),
        }
        let mut bytes = serde_json::to_vec(&line).expect("JSON of strings and numbers");
        bytes.push(b'\n');
        let _ = sink.tx.try_send(Bytes::from(bytes));
    }
}

/// Serves the event stream on its own local listener until `shutdown`; `None` (logged)
/// when it cannot listen: the exporter serves metrics without it.
async fn serve_tap(
    listen: &config::TapListen,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    // Subscribers are held streams: at shutdown they get a second, not five.
    let limits = web::Limits {
        web_config: None,
        auth: Arc::default(),
        max_connections: 64,
        header_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(1),
    };
    let bound = match listen {
        config::TapListen::Unix(path) => bind_unix(path).map(|l| {
            let path = path.clone();
            tokio::spawn(async move {
                web::serve(l, app, limits, shutdown).await;
                // No socket is left for `tap` to find once nobody serves it.
                let _ = std::fs::remove_file(path);
            })
        }),
        config::TapListen::Loopback(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(|l| tokio::spawn(web::serve(l, app, limits, shutdown))),
        config::TapListen::Metrics => unreachable!("served on the metrics listener"),
    };
    match bound {
        Ok(task) => {
            tracing::info!(at = ?listen, "serving the event stream (/events)");
            Some(task)
        }
        Err(e) => {
            tracing::warn!(at = ?listen, "tap.listen: cannot serve the event stream: {e}");
            None
        }
    }
}

/// A unix socket at `path` that only this user can connect to (a stale one from an
/// earlier run is replaced).
fn bind_unix(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Removes the entries of a cgroup-keyed table whose cgroups were removed at least the
/// series grace period ago, from the map too: the kernel would keep deleted pods'
/// counts (and their series) until its LRU map fills.
fn expire_entries(
    s: &AppState,
    r: &programs::Running,
    t: &aggregate::TablePlan,
    split_cpus: bool,
    entries: &mut Vec<(Vec<u8>, u64)>,
) {
    let gone = |key: &[u8]| {
        t.cgroup_id(key)
            .and_then(|id| s.enricher.removed_for(id))
            .is_some_and(|removed| removed >= s.series_grace)
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
    if let Err(e) = r.object.delete_table_keys(&t.map, &keys) {
        tracing::warn!(config = %r.name, "deleting entries of removed cgroups: {e}");
    }
}

/// `/metrics`: rendered on a blocking thread and streamed in chunks, so a scrape of
/// many series never holds the whole page.
async fn metrics(
    State(s): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let Some(slot) = s.scrapes.try_take() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too many concurrent scrapes (web.max_requests)\n",
        )
            .into_response();
    };
    let gzip = accepts_gzip(&headers);
    let format = aggregate::Format::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::task::spawn_blocking(move || {
        let _held = slot;
        // A client that went away just stops reading.
        let send = |bytes: Vec<u8>| {
            let _ = tx.blocking_send(Bytes::from(bytes));
        };
        if gzip {
            // Each chunk is flushed, so the page streams compressed as it renders.
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            render_page(&s, format, &mut |chunk: Vec<u8>| {
                use std::io::Write;
                let _ = z.write_all(&chunk).and_then(|()| z.flush());
                send(std::mem::take(z.get_mut()));
            });
            if let Ok(rest) = z.finish() {
                send(rest);
            }
        } else {
            render_page(&s, format, &mut |chunk: Vec<u8>| send(chunk));
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::StreamExt::map(
        tokio_stream::wrappers::ReceiverStream::new(rx),
        Ok::<_, std::convert::Infallible>,
    ));
    let mut response = ([(header::CONTENT_TYPE, format.content_type())], body).into_response();
    if gzip {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
    }
    response
}

/// Whether `Accept-Encoding` takes gzip (Prometheus always sends it).
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts
                .next()
                .is_some_and(|name| name.eq_ignore_ascii_case("gzip"))
                && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
}

/// Renders the metrics page in `format`, in chunks: the streams' series, every table
/// read now, the exporter's own metrics.
fn render_page(s: &AppState, format: aggregate::Format, emit: &mut dyn FnMut(Vec<u8>)) {
    let mut out = aggregate::Sink::chunked(format, 256 * 1024, &mut *emit);
    let gone = s.enricher.expire(s.series_grace);
    if !gone.is_empty() {
        s.registry.expire(&gone);
    }
    s.registry.render(&mut out);
    let running = s.running.lock().unwrap_or_else(|e| e.into_inner());
    for r in running.iter() {
        let sink = s.sink.as_ref().filter(|k| k.configs.contains(&r.name));
        for (t, &split) in r.plan.tables.iter().zip(&r.split_cpus) {
            match r.object.read_table(&t.map, split) {
                Ok(mut entries) => {
                    expire_entries(s, r, t, split, &mut entries);
                    let rows = t.rows(&entries);
                    t.render(&rows, &mut out);
                    if let Some(sink) = sink {
                        sink_table(sink, &r.name, &s.node, t, &rows);
                    }
                }
                Err(e) => {
                    tracing::warn!(config = %r.name, "{e}");
                    s.telemetry.table_read_error(&r.name, &t.map);
                }
            }
        }
    }
    let streams: Vec<Stream> = s.streams.snapshot().iter().flatten().cloned().collect();
    s.telemetry.update(
        &running,
        &s.failures.lock().unwrap_or_else(|e| e.into_inner()),
        &streams,
        &s.pipeline,
        &s.registry,
        s.tap.as_deref(),
    );
    s.telemetry.sources(&s.enricher.source_health());
    out.push_text(&s.telemetry.render());
    let rest = out.finish();
    emit(rest);
}
