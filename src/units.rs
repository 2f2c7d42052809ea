//! Program configs from prepared to live: each is prepared (compiled, loaded, attached,
//! its rings' readers made) by the same path at start-up and at a reload, goes live in
//! the pipeline, and is dropped whole (readers stopped, programs detached, maps freed,
//! series gone) when a reload removes or replaces it.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use ingest::{cgroup_id_map::CgroupIdMap, Batch, RingReader, StreamMap};
use kube_ebpf_exporter::pipeline::Stream;
use parking_lot::Mutex;
use tokio::{sync::watch, task::JoinHandle};

use kube_ebpf_exporter::config::{self, Config, Program};

use crate::{
    app::AppState,
    programs::{self, Attached, Failure, Object, Origin, Stage, Starter},
};

/// Which configs run: the flags that choose them.
#[derive(Debug, Clone)]
pub struct Selection {
    /// `--config.file` (its `programs`), else the embedded default's.
    pub file: Option<PathBuf>,
    /// `--config.dir`.
    pub dir: Option<PathBuf>,
    /// `--config.names`.
    pub names: Vec<String>,
    /// `--programs`.
    pub programs: Vec<String>,
}

impl Selection {
    /// Every program to run: the main config's, then the config dir's; a config dir
    /// file that does not parse is a [`Failure`] of its own.
    pub fn sources(
        &self,
        config: &mut Config,
        source: &str,
    ) -> Result<Vec<(Origin, Result<Program, Failure>)>> {
        let mut out = Vec::new();
        if self.dir.is_none() || self.file.is_some() {
            select_programs(&self.programs, &mut config.programs)
                .with_context(|| format!("{source}: --programs"))?;
            for (name, program) in std::mem::take(&mut config.programs) {
                out.push((
                    Origin::inline(&name, &program, self.file.as_deref(), source),
                    Ok(program),
                ));
            }
        }
        if let Some(dir) = &self.dir {
            let mut names = self.names.clone();
            if names.is_empty() {
                let entries = std::fs::read_dir(dir)
                    .with_context(|| format!("--config.dir {}", dir.display()))?;
                names = entries
                    .filter_map(|e| {
                        e.ok()?
                            .file_name()
                            .into_string()
                            .ok()?
                            .strip_suffix(".yaml")
                            .map(str::to_string)
                    })
                    .collect();
                names.sort();
            }
            for name in names {
                let loaded = Program::load(&dir.join(format!("{name}.yaml")))
                    .map_err(|e| Failure::new(&name, Stage::Config, format!("{e:#}")));
                let src = match &loaded {
                    Ok(p) => Origin::dir(dir, &name, p),
                    Err(_) => Origin {
                        name: name.clone(),
                        at: String::new(),
                        object: Object::File(PathBuf::new()),
                    },
                };
                out.push((src, loaded));
            }
        }
        Ok(out)
    }
}

/// Keeps the programs `names` chooses (`all`: every one; none given: those not marked
/// `enabled: false`).
fn select_programs(
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

/// What a config is made of, to tell an unchanged one at a reload: its parsed config
/// and its object's bytes (both builds). Its `maps:` entries are left out: a change
/// to them alone is written into the running maps (see [`rewrite_entries`]).
pub fn fingerprint(src: &Origin, program: &Program) -> u64 {
    let mut h = DefaultHasher::new();
    // The derived Debug names each field once, so the entries' text comes out whole.
    let maps = format!("maps: {:?}, ", program.maps);
    format!("{program:?}").replacen(&maps, "", 1).hash(&mut h);
    match &src.object {
        Object::Builtin(o) => o.name.hash(&mut h),
        Object::File(path) => {
            std::fs::read(path).ok().hash(&mut h);
            std::fs::read(programs::perf_object(path)).ok().hash(&mut h);
        }
    }
    h.finish()
}

/// A config ready to go live: attached in the kernel, its streams numbered from the id
/// it was given and their readers made, not yet in the pipeline.
pub struct Prepared {
    pub attached: Attached,
    pub fingerprint: u64,
    pub streams: Vec<Stream>,
    pub readers: Vec<RingReader>,
    pub cgroup_map: Option<CgroupIdMap>,
    /// Span streams, by their index in `streams`.
    pub spans: Vec<(usize, Arc<spans::SpanPlan>)>,
}

/// Sets up one config; its streams get ids from `first_id` on.
pub fn prepare(
    starter: &mut Starter,
    src: &Origin,
    program: &Program,
    first_id: u32,
    p: &config::PipelineConfig,
) -> Result<Prepared, Failure> {
    let mut running = starter.start(src, program)?;
    let fail = |message: String| Failure {
        reason: "kernel",
        ..Failure::new(&src.name, Stage::Load, message)
    };
    let drain = Duration::from_millis(p.drain_interval_ms.max(1));
    let flush = Duration::from_millis(p.flush_interval_ms.max(1));
    let (mut streams, mut readers, mut spans) = (Vec::new(), Vec::new(), Vec::new());
    // Metric streams, then span streams (whose plan the span stage shares).
    let plans = std::mem::take(&mut running.plan.streams)
        .into_iter()
        .map(|p| (Arc::new(p), None))
        .chain(
            std::mem::take(&mut running.spans)
                .into_iter()
                .map(|s| (s.stream.clone(), Some(s))),
        );
    for (plan, span) in plans {
        let id = first_id + streams.len() as u32;
        let label = format!("{}/{}", running.name, plan.ring);
        // The map decides the reader: configs say "ring", and an object built with
        // -DOUTPUT_PERF (kernels without ring buffers) has a perf array there.
        let reader = match running
            .object
            .take_stream(&plan.ring)
            .map_err(|e| fail(format!("{}{e}", src.at)))?
        {
            StreamMap::Ring(ring) => RingReader::new(&label, ring, id, p.batch_bytes, drain),
            StreamMap::Batched(ring, staging) => {
                RingReader::batched(&label, ring, staging, id, p.batch_bytes, (drain, flush))
            }
            StreamMap::Perf(array) => {
                RingReader::perf(&label, array, p.perf_pages, id, p.batch_bytes, drain)
                    .map_err(|e| fail(format!("{}{e}", src.at)))?
            }
        };
        readers.push(reader);
        if let Some(span) = span {
            spans.push((streams.len(), span));
        }
        streams.push(Stream {
            program: running.name.clone(),
            plan,
            stats: Arc::default(),
        });
    }
    Ok(Prepared {
        spans,
        cgroup_map: running.cgroup_map.take(),
        fingerprint: fingerprint(src, program),
        attached: running,
        streams,
        readers,
    })
}

/// A running config's place in the pipeline.
pub struct Live {
    pub name: String,
    pub fingerprint: u64,
    /// Its streams' ids.
    pub streams: Vec<u32>,
    /// Its ring readers' tasks.
    pub readers: Vec<JoinHandle<()>>,
}

/// What reloads need beside the state they change.
pub struct Reloading {
    pub selection: Selection,
    /// The main config's name in messages.
    pub source: String,
    pub pipeline: config::PipelineConfig,
    pub btf_path: Option<PathBuf>,
    /// Where ring readers run, and what they send to and stop on.
    pub ingest: tokio::runtime::Handle,
    pub batches: crossbeam_channel::Sender<Batch>,
    pub shutdown: watch::Receiver<bool>,
    /// One reload at a time.
    pub lock: Mutex<()>,
}

impl Reloading {
    /// Starts `unit`'s readers and records it as live; its streams must already be in
    /// the stream table under the ids they were built with.
    pub fn go_live(&self, s: &AppState, unit: Prepared, ids: Vec<u32>) -> Attached {
        for (stream, reader) in unit.streams.iter().zip(&unit.readers) {
            s.telemetry
                .add_ring(&unit.attached.name, &stream.plan.ring, reader.stats());
        }
        if let Some(stage) = &s.spans {
            for (i, plan) in unit.spans {
                stage.add(ids[i], plan);
            }
        }
        let readers = unit
            .readers
            .into_iter()
            .map(|r| {
                self.ingest
                    .spawn(r.run(self.batches.clone(), self.shutdown.clone()))
            })
            .collect();
        if let (Some(map), Some(feed)) = (unit.cgroup_map, &s.cgroup_events) {
            let mut map = map;
            s.enricher
                .cgroups()
                .walk(|id, path| map.update(id, path, false));
            feed.lock().maps.push((unit.attached.name.clone(), map));
        }
        s.live.lock().push(Live {
            name: unit.attached.name.clone(),
            fingerprint: unit.fingerprint,
            streams: ids,
            readers,
        });
        unit.attached
    }
}

/// Metric names running config `name` claimed (its tables' and its streams').
fn claimed(s: &AppState, name: &str) -> Vec<String> {
    let lives = s.live.lock();
    let running = s.running.lock();
    let (Some(live), Some(r)) = (
        lives.iter().find(|l| l.name == name),
        running.iter().find(|r| r.name == name),
    ) else {
        return Vec::new();
    };
    let streams = s.streams.snapshot();
    let mut names: Vec<String> = r.plan.tables.iter().map(|t| t.name().to_string()).collect();
    for id in &live.streams {
        if let Some(Some(stream)) = streams.get(*id as usize) {
            names.extend(stream.plan.metric_names().map(str::to_string));
        }
    }
    names
}

/// Empties the stream slots `remove`, appends `add` (returning their ids), and shows
/// the tap the new table.
fn update_streams(s: &AppState, remove: &[u32], add: Vec<Stream>) -> Vec<u32> {
    let ids = s.streams.update(remove, add);
    if let Some(tap) = &s.tap {
        tap.set_streams(s.streams.snapshot());
    }
    ids
}

/// Stops config `name`: readers, streams, cgroup map, programs and maps (dropped with
/// its object), self-metric rings.
fn stop(s: &AppState, name: &str) {
    let live = {
        let mut lives = s.live.lock();
        let Some(i) = lives.iter().position(|l| l.name == name) else {
            return;
        };
        lives.remove(i)
    };
    for r in &live.readers {
        r.abort();
    }
    update_streams(s, &live.streams, Vec::new());
    if let Some(stage) = &s.spans {
        stage.remove(&live.streams);
    }
    if let Some(feed) = &s.cgroup_events {
        feed.lock().maps.retain(|(n, _)| n != name);
    }
    s.running.lock().retain(|r| r.name != name);
    s.telemetry.stopped(name);
    tracing::info!(config = %name, "stopped");
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct Report {
    pub started: Vec<String>,
    pub replaced: Vec<String>,
    pub stopped: Vec<String>,
    /// Unchanged but for their `maps:` entries, rewritten in place.
    pub rewritten: Vec<String>,
    pub unchanged: usize,
    /// Configs that could not (re)start; a replaced one kept its old version.
    pub failed: Vec<Failure>,
}

impl Report {
    /// One line for the log and the `/-/reload` answer.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "started {:?}, replaced {:?}, stopped {:?}, entries rewritten {:?}, {} unchanged",
            self.started, self.replaced, self.stopped, self.rewritten, self.unchanged
        );
        for f in &self.failed {
            s.push_str(&format!(
                "; {} failed ({}): {}",
                f.name,
                f.stage.as_str(),
                f.message
            ));
        }
        s
    }
}

/// Reads the configs again and brings the running set in line: unchanged configs are
/// left alone (their series and counters go on), changed ones are replaced, removed
/// ones stopped, new ones started; a config that fails keeps its old version running.
pub fn reload(s: &AppState) -> Result<Report> {
    let report = reload_configs(s);
    if report.is_err() {
        s.telemetry.reloaded(false);
    }
    report
}

fn reload_configs(s: &AppState) -> Result<Report> {
    let r = &s.reloading;
    let _one = r.lock.lock();
    let mut config = Config::load(r.selection.file.as_deref())?;
    let sources = r.selection.sources(&mut config, &r.source)?;
    let mut report = Report::default();
    let live: Vec<(String, u64)> = s
        .live
        .lock()
        .iter()
        .map(|l| (l.name.clone(), l.fingerprint))
        .collect();
    for (name, _) in &live {
        if !sources.iter().any(|(src, _)| &src.name == name) {
            let names = claimed(s, name);
            stop(s, name);
            drop(s.registry.release(&names));
            report.stopped.push(name.clone());
        }
    }
    let mut todo = Vec::new();
    for (src, program) in sources {
        let old = live.iter().find(|(n, _)| *n == src.name).map(|(_, f)| *f);
        match program {
            Err(f) => report.failed.push(f),
            Ok(p) if old == Some(fingerprint(&src, &p)) => {
                rewrite_entries(s, &src, &p, &mut report)
            }
            Ok(p) => todo.push((src, p, old.is_some())),
        }
    }
    if !todo.is_empty() {
        let btf = ingest::kernel_btf(r.btf_path.as_deref())?;
        let mut starter = Starter {
            perf_output: r.pipeline.output.perf(),
            registry: &s.registry,
            decoders: &s.decoders,
            pipeline: &r.pipeline,
            loader: ingest::Loader::new(&btf),
            cgroup_mount: s.enricher.cgroups().mount(),
        };
        for (src, program, replacing) in todo {
            replace(s, r, &mut starter, &src, &program, replacing, &mut report);
        }
        crate::attach_mark::mark_attached();
    }
    let mut failures = s.failures.lock();
    failures.clear();
    failures.extend(report.failed.iter().map(|f| Failure {
        name: f.name.clone(),
        stage: f.stage,
        reason: f.reason,
        message: f.message.clone(),
    }));
    s.telemetry.reloaded(report.failed.is_empty());
    Ok(report)
}

/// Brings an otherwise unchanged config's maps in line with its `maps:` entries, in
/// place: the programs stay attached and every other entry is left alone.
fn rewrite_entries(s: &AppState, src: &Origin, program: &Program, report: &mut Report) {
    let want = programs::map_entries(program);
    let mut running = s.running.lock();
    let Some(r) = running
        .iter_mut()
        .find(|r| r.name == src.name && r.map_entries != want)
    else {
        report.unchanged += 1;
        return;
    };
    match r.object.rewrite_entries(&r.map_entries, &want) {
        Ok(()) => {
            tracing::info!(config = %src.name, "maps: entries rewritten");
            r.map_entries = want;
            report.rewritten.push(src.name.clone());
        }
        Err(e) => {
            let message = match &e {
                ingest::IngestError::MapEntries { source, .. } => format!("{}{source}", src.at),
                other => format!("{}{other}", src.at),
            };
            tracing::error!(config = %src.name, "reload: {message}");
            report
                .failed
                .push(Failure::new(&src.name, Stage::Config, message));
        }
    }
}

/// Starts `src` (replacing its running version if `replacing`, which keeps running if
/// the new one fails).
fn replace(
    s: &AppState,
    r: &Reloading,
    starter: &mut Starter,
    src: &Origin,
    program: &Program,
    replacing: bool,
    report: &mut Report,
) {
    // The new version registers the same names.
    let released = replacing.then(|| s.registry.release(&claimed(s, &src.name)));
    let first_id = s.streams.snapshot().len() as u32;
    match prepare(starter, src, program, first_id, &r.pipeline) {
        Ok(unit) => {
            if replacing {
                stop(s, &src.name);
                report.replaced.push(src.name.clone());
            } else {
                report.started.push(src.name.clone());
            }
            let ids = update_streams(s, &[], unit.streams.clone());
            let running = r.go_live(s, unit, ids);
            s.running.lock().push(running);
            tracing::info!(config = %src.name, replaced = replacing, "started");
        }
        Err(f) => {
            if let Some(released) = released {
                s.registry.restore(released);
            }
            tracing::error!(config = %f.name, stage = f.stage.as_str(), reason = f.reason, kept_old = replacing, "reload: {}", f.message);
            report.failed.push(f);
        }
    }
}

/// Reloads on SIGHUP, on any change in the watched directories (a ConfigMap update
/// swaps its `..data` link: the directory changes, not the file) and every `poll` as
/// a backstop for changes a watch misses.
pub async fn triggers(state: Arc<AppState>, watched: Vec<PathBuf>, poll: Duration) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("no SIGHUP handler: {e}");
            return;
        }
    };
    let mut changes = match crate::watch::Changes::new(&watched) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(dirs = ?watched, "cannot watch the config directories ({e}); reloading on SIGHUP and every {poll:?}");
            None
        }
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.tick().await;
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = async { match &mut changes { Some(c) => c.next().await, None => std::future::pending().await } } => "change on disk",
            _ = ticker.tick() => "poll",
        };
        let s = state.clone();
        match tokio::task::spawn_blocking(move || reload(&s)).await {
            Ok(Ok(report))
                if why == "poll"
                    && report.started.is_empty()
                    && report.replaced.is_empty()
                    && report.stopped.is_empty()
                    && report.failed.is_empty() => {}
            Ok(Ok(report)) => tracing::info!(trigger = why, "config reload: {}", report.summary()),
            Ok(Err(e)) => tracing::error!(trigger = why, "config reload failed: {e:#}"),
            Err(e) => tracing::error!("config reload panicked: {e}"),
        }
    }
}
