//! kube-ebpf-exporter: eBPF programs in, Prometheus metrics with pod labels out.
//!
//! Flow: bpf (kernel programs) → ingest (ring readers) → enrich (cgroup → pod) →
//! aggregate (series) → HTTP exposition. This file parses flags and config, builds
//! each stage, and serves `/metrics` and `/healthz`.

mod config;
mod pipeline;
mod telemetry;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aggregate::{Registry, StreamPlan, StreamStats};
use anyhow::{bail, Context, Result};
use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use clap::Parser;
use enrich::{CgroupFs, Enricher, PodLogs};
use ingest::{LoadOptions, LoadedObject, RingReader};
use tokio::sync::watch;

use crate::{
    config::Config,
    pipeline::{EnrichStats, Stream},
    telemetry::Telemetry,
};

/// Prometheus exporter for custom eBPF metrics, with Kubernetes pod labels.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// YAML config file; without it the embedded default config runs.
    #[arg(long = "config.file", value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// Address to serve metrics on (`host:port` or `:port`); overrides the config.
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    listen_address: Option<String>,
    /// The kubelet's pod log directory; overrides the config.
    #[arg(long = "kubelet.pod-logs-dir", value_name = "DIR")]
    pod_logs_dir: Option<String>,
    /// The kubelet's container log link directory; overrides the config.
    #[arg(long = "kubelet.container-logs-dir", value_name = "DIR")]
    container_logs_dir: Option<String>,
}

fn listen_addr(s: &str) -> Result<SocketAddr> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    full.parse().with_context(|| format!("listen address {s:?} is not host:port or :port"))
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

fn object_bytes(program: &str, object: Option<&str>, base: Option<&Path>) -> Result<Vec<u8>> {
    let name = object.unwrap_or(program);
    if let Some(o) = bpf_programs::find(name) {
        return Ok(o.bytes.to_vec());
    }
    let path = match base {
        Some(dir) if Path::new(name).is_relative() => dir.join(name),
        _ => PathBuf::from(name),
    };
    std::fs::read(&path).with_context(|| {
        let builtin: Vec<&str> = bpf_programs::OBJECTS.iter().map(|o| o.name).collect();
        format!(
            "programs.{program}.object: {name:?} is neither a built-in object ({}) nor a readable file {}",
            builtin.join(", "),
            path.display()
        )
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut config = Config::load(args.config_file.as_deref())?;
    if let Some(a) = args.listen_address {
        config.web.listen_address = a;
    }
    if let Some(d) = args.pod_logs_dir {
        config.kubernetes.pod_logs_dir = d;
    }
    if let Some(d) = args.container_logs_dir {
        config.kubernetes.container_logs_dir = d;
    }
    let source = args
        .config_file
        .as_ref()
        .map_or("embedded default config".to_string(), |p| p.display().to_string());
    let addr = listen_addr(&config.web.listen_address)
        .with_context(|| format!("{source}: web.listen_address"))?;
    let telemetry = Telemetry::install()?;

    // Compile every program's metrics before touching the kernel: config errors first.
    let node = node_id(&config);
    let registry = Arc::new(Registry::new((&config.kubernetes.labels).into(), node.clone()));
    let mut compiled = Vec::new();
    for (name, program) in &config.programs {
        let at = format!("{source}: programs.{name}.");
        let plans = StreamPlan::compile_all(&program.rings, &program.metrics, &registry, &at)?;
        let bytes = object_bytes(name, program.object.as_deref(), args.config_file.as_deref().and_then(Path::parent))?;
        compiled.push((name.clone(), plans, bytes));
    }

    let cgroups = CgroupFs::discover().context("enrich: cgroup v2 hierarchy")?;
    let pods = PodLogs::new(&config.kubernetes.pod_logs_dir, &config.kubernetes.container_logs_dir);
    let enricher = Arc::new(Enricher::new(cgroups, pods));

    let p = &config.pipeline;
    let (tx, rx) = crossbeam_channel::bounded(p.queue_batches.max(1));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut streams = Vec::new();
    let mut objects = Vec::new();
    let mut readers = Vec::new();
    for (name, plans, bytes) in compiled {
        let opts = LoadOptions {
            rings: plans.iter().map(|p| p.ring.clone()).collect(),
            ring_bytes: Some(p.ring_bytes),
            wakeup_bytes: p.wakeup_bytes.unwrap_or(u64::from(p.ring_bytes) / 4),
        };
        let mut object = LoadedObject::load(&name, &bytes, &opts).map_err(|e| {
            let hint = if unsafe { libc::geteuid() } != 0 { " (not running as root: loading BPF needs CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH)" } else { "" };
            anyhow::anyhow!("{source}: programs.{name}: {e}{hint}")
        })?;
        for (prog, point) in object.attached() {
            tracing::info!(program = %name, function = %prog, at = %point, "attached");
        }
        for plan in plans {
            let stream = streams.len() as u32;
            let ring = object.take_ring(&plan.ring)?;
            let reader = RingReader::new(
                &format!("{name}/{}", plan.ring),
                ring,
                stream,
                p.batch_bytes,
                Duration::from_millis(p.drain_interval_ms.max(1)),
            )?;
            telemetry.add_ring(&name, &plan.ring, reader.stats());
            readers.push(tokio::spawn(reader.run(tx.clone(), shutdown_rx.clone())));
            streams.push(Stream {
                program: name.clone(),
                plan: Arc::new(plan),
                stats: Arc::new(StreamStats::default()),
            });
        }
        objects.push(object);
    }
    drop(tx);
    if streams.is_empty() {
        bail!("{source}: no program reads any ring; nothing to export");
    }
    let streams = Arc::new(streams);
    let enrich_stats = Arc::new(EnrichStats::default());
    let worker = {
        let (streams, registry, enrich_stats) = (streams.clone(), registry.clone(), enrich_stats.clone());
        std::thread::Builder::new()
            .name("aggregate".into())
            .spawn(move || pipeline::run_worker(rx, streams, registry, enricher, enrich_stats))?
    };

    let state = Arc::new(AppState {
        registry,
        telemetry,
        streams,
        enrich_stats,
        objects: Mutex::new(objects),
    });
    let app = Router::new()
        .route(&config.web.telemetry_path, get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{source}: web.listen_address: cannot listen on {addr}"))?;
    tracing::info!(%addr, node = %node, path = %config.web.telemetry_path, "serving metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        })
        .await?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    for r in readers {
        let _ = r.await;
    }
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    Ok(())
}

struct AppState {
    registry: Arc<Registry>,
    telemetry: Telemetry,
    streams: Arc<Vec<Stream>>,
    enrich_stats: Arc<EnrichStats>,
    objects: Mutex<Vec<LoadedObject>>,
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::with_capacity(64 * 1024);
    s.registry.render(&mut out);
    {
        let objects = s.objects.lock().unwrap_or_else(|e| e.into_inner());
        s.telemetry.update(&objects, &s.streams, &s.enrich_stats, &s.registry);
    }
    out.push_str(&s.telemetry.render());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out)
}
