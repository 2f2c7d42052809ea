//! The running exporter: its stages started over the configs that started, the state
//! that serving and reloading share, reload triggers, and shutdown in flow order.

use std::{sync::Arc, time::Duration};

use aggregate::{decoder::Context, Registry};
use anyhow::{bail, Context as _, Result};
use enrich::Enricher;
use kube_ebpf_exporter::{
    config,
    pipeline::{self, Pipeline},
};
use parking_lot::Mutex;
use tap::Tap;

use crate::{
    programs::{Attached, Failure},
    settings::{Reload, Settings},
    startup::Started,
    telemetry::Telemetry,
    units, web,
};

/// What the running exporter holds: its stages, its configs, and what serving and
/// reloading them needs.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub telemetry: Telemetry,
    pub streams: Arc<pipeline::StreamTable>,
    pub pipeline: Pipeline,
    pub running: Mutex<Vec<Attached>>,
    pub failures: Mutex<Vec<Failure>>,
    /// Each running config's streams and readers.
    pub live: Mutex<Vec<units::Live>>,
    /// What set-up needs after start (reloads).
    pub reloading: units::Reloading,
    /// The ring readers' runtime, until shutdown takes it.
    pub ingest: Mutex<Option<tokio::runtime::Runtime>>,
    pub shutdown: tokio::sync::watch::Sender<bool>,
    pub decoders: Context,
    pub cgroup_events: Option<pipeline::CgroupEventsHandle>,
    pub tap: Option<Arc<Tap>>,
    pub sink: Option<tap::sink::SinkFeed>,
    /// The span stage, when spans are exported.
    pub spans: Option<Arc<spans::Spans>>,
    /// Its thread, joined at shutdown once the stage is dropped (its last spans sent).
    pub spans_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub node: String,
    pub enricher: Arc<Enricher>,
    pub series_grace: Duration,
    /// Scrapes rendering now (`web.max_requests`).
    pub scrapes: web::Slots,
    /// `/events` subscribers (`tap.max_subscribers`).
    pub subscribers: web::Slots,
}

/// Starts the stages (ingest readers, enrich and aggregate workers, the tap) over the
/// configs that started, and makes them live.
// Long: most of it is the state it fills in, field by field.
pub fn start_pipeline(
    settings: &Settings,
    started: Started,
    telemetry: Telemetry,
) -> Result<Arc<AppState>> {
    let (config, source) = (&settings.config, settings.source.as_str());
    let Started {
        enricher,
        registry,
        decoders,
        units,
        failures,
        cgroup_events,
        extra_names,
        node,
        setup,
    } = started;
    let p = &config.pipeline;
    let (tx, rx) = crossbeam_channel::bounded(p.queue_batches.max(1));
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    enricher.start_sources();
    let ingest = ingest_runtime(p.ingest_workers)?;
    let streams = Arc::new(pipeline::StreamTable::new(
        units.iter().flat_map(|u| u.streams.clone()).collect(),
    ));
    let tap = start_tap(&config.tap, &streams, &enricher, &node, extra_names);
    let names: Vec<&str> = units.iter().map(|u| u.attached.name.as_str()).collect();
    let sink = match (&tap, &config.tap.sink) {
        (Some(tap), Some(sink)) => Some(start_sink(tap, sink, &names, &config.tap)?),
        (None, Some(_)) => bail!("{source}: tap.sink: needs tap.enabled"),
        _ => None,
    };
    let (spans, spans_thread) = start_spans(&enricher, &node, setup)?.unzip();
    let workers = pipeline::Settings {
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
        spans.clone(),
        workers,
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
            selection: settings.selection.clone(),
            source: source.to_string(),
            pipeline: p.clone(),
            btf_path: settings.btf_path.clone(),
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
        spans,
        spans_thread: Mutex::new(spans_thread),
        node,
        enricher,
        series_grace: Duration::from_secs(config.kubernetes.series_grace_seconds),
        scrapes: web::Slots::new(config.web.max_requests, "max_requests"),
        subscribers: web::Slots::new(config.tap.max_subscribers, "max_subscribers"),
    });
    go_live(&state, units);
    state.telemetry.reloaded(true);
    Ok(state)
}

/// The span stage, when the environment names an OTLP endpoint (said once either way);
/// its first spans are the start-up trace: `setup` (when it began, each config's step)
/// under a root span that ends now.
fn start_spans(
    enricher: &Arc<Enricher>,
    node: &str,
    setup: (std::time::SystemTime, Vec<spans::Step>),
) -> Result<Option<(Arc<spans::Spans>, std::thread::JoinHandle<()>)>> {
    let (protocol, endpoint) = match spans::destination() {
        Ok(d) => d,
        Err(why) => {
            tracing::info!("spans of tracing: configs are not exported: {why}");
            return Ok(None);
        }
    };
    let (began, steps) = setup;
    let root = spans::Step {
        name: "start".into(),
        start: began,
        end: std::time::SystemTime::now(),
        attributes: vec![("configs", steps.len().to_string())],
    };
    let stage = spans::Spans::start(
        protocol,
        enricher.clone(),
        node.to_string(),
        spans::Batching::from_env(),
        (root, steps),
    )
    .context("OpenTelemetry span export")?;
    tracing::info!(%endpoint, ?protocol, "spans of tracing: configs are exported over OTLP");
    Ok(Some(stage))
}

/// The ring readers' runtime: threads of their own, apart from HTTP.
fn ingest_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name("ingest")
        .enable_all()
        .build()
}

/// The event tap over `streams`, when `tap.enabled`.
fn start_tap(
    t: &config::TapConfig,
    streams: &pipeline::StreamTable,
    enricher: &Arc<Enricher>,
    node: &str,
    extra_names: Vec<String>,
) -> Option<Arc<Tap>> {
    if !t.enabled {
        return None;
    }
    let tap = Tap::start(
        enricher.clone(),
        node.to_string(),
        t.cluster.clone(),
        extra_names,
        t.input_batches,
        t.queue_events,
    );
    tap.set_streams(streams.snapshot());
    Some(tap)
}

/// Starts the readers of the configs that started, their streams numbered in order.
fn go_live(state: &Arc<AppState>, units: Vec<units::Prepared>) {
    let mut next = 0;
    for unit in units {
        let ids: Vec<u32> = (next..).take(unit.streams.len()).collect();
        next += ids.len() as u32;
        let running = state.reloading.go_live(state, unit, ids);
        state.running.lock().push(running);
    }
}

/// Subscribes the file sink to its configs' events and starts its thread.
fn start_sink(
    tap: &Tap,
    sink: &config::SinkConfig,
    running: &[&str],
    t: &config::TapConfig,
) -> Result<tap::sink::SinkFeed> {
    for (i, name) in sink.configs.iter().enumerate() {
        if !running.contains(&name.as_str()) {
            bail!("tap.sink.configs[{i}]: no running config named {name:?}");
        }
    }
    tap::sink::SinkFeed::start(
        tap,
        &sink.dir,
        sink.max_bytes,
        sink.configs.clone(),
        t.queue_events,
        t.cluster.clone(),
    )
    .with_context(|| format!("tap.sink.dir: {}", sink.dir.display()))
}

/// With --config.reload: reloads on SIGHUP, on changes in the config directories and
/// every --config.reload-interval. Without, SIGHUP is only logged (not fatal).
pub fn spawn_reloads(reload: &Reload, state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    if !reload.on_change {
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
    tokio::spawn(units::triggers(
        state,
        reload.watched.clone(),
        reload.interval,
    ))
}

/// Stops the stages in order: readers (which flush what they read), then enrich and
/// aggregate workers once every batch sender is gone.
pub async fn shut_down(state: Arc<AppState>, tap_server: Option<tokio::task::JoinHandle<()>>) {
    let _ = state.shutdown.send(true);
    if let Some(t) = tap_server {
        let _ = t.await;
    }
    let readers: Vec<_> = state
        .live
        .lock()
        .iter_mut()
        .flat_map(|l| std::mem::take(&mut l.readers))
        .collect();
    for r in readers {
        let _ = r.await;
    }
    let ingest = state.ingest.lock().take();
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
            spans,
            spans_thread,
            ..
        }) = state
        {
            drop((reloading, running));
            pipeline.join();
            // The enrich workers are gone: this was the stage's last handle.
            drop(spans);
            if let Some(t) = spans_thread.into_inner() {
                let _ = t.join();
            }
        }
    })
    .await;
}
