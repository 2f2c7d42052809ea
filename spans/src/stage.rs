//! The span stage: a thread that takes the attributed batches of span streams from the
//! enrich workers, makes their spans (with the pod's attributes) and exports them in
//! batches. It never makes the pipeline wait: a full queue drops the batch, counted,
//! and a collector that is away only costs the spans it would have received.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use enrich::{Attributed, Enricher, PodLabels};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::{
    trace::{SpanData, SpanExporter as _},
    Resource,
};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::{
    export::{exporter, ExportError, Protocol},
    plan::{default_service, SpanPlan},
    record::{scope, span, Clock, Context, Memo},
    startup::{trace, Step},
};

/// Counters of the span stage.
#[derive(Debug, Default)]
pub struct SpanStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Records dropped because the stage's queue was full.
    pub dropped_queue: AtomicU64,
    /// Spans in exports that failed (collector away, refused, timed out).
    pub dropped_export: AtomicU64,
    /// Records that made no span: too short, or a label that did not decode.
    pub failed_decode: AtomicU64,
}

/// Batching, as the SDKs' batch span processor takes it from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Spans per export (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512).
    pub max_batch: usize,
    /// Longest a span waits for its export (`OTEL_BSP_SCHEDULE_DELAY` ms, default 5000).
    pub delay: Duration,
    /// Record batches queued for the stage (`OTEL_BSP_MAX_QUEUE_SIZE` spans, default
    /// 2048, over 16 records a batch at least).
    pub queue_batches: usize,
}

impl Batching {
    /// From the environment, with the SDKs' defaults.
    pub fn from_env() -> Self {
        let num = |var: &str, default: u64| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            max_batch: num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).max(1) as usize,
            delay: Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            queue_batches: (num("OTEL_BSP_MAX_QUEUE_SIZE", 2048) / 16).max(1) as usize,
        }
    }
}

/// The running stage. Dropping it (its last handle) ends the thread once it has
/// exported what it holds.
pub struct Spans {
    tx: Sender<Arc<Attributed>>,
    shared: Arc<Shared>,
}

/// What the stage's thread shares with its handle (never the sender: the thread ends
/// when every sender is gone).
#[derive(Default)]
struct Shared {
    plans: RwLock<Arc<FxHashMap<u32, Arc<SpanPlan>>>>,
    stats: SpanStats,
}

impl Spans {
    /// Starts the stage's thread exporting over `protocol` (the rest of the exporter's
    /// settings come from the environment); `node` is `k8s.node.name` on every span's
    /// resource. The start-up trace (`startup`: the root, then one step per config) is
    /// its first export.
    ///
    /// # Errors
    /// The exporter's settings (see [`exporter`]), or no thread.
    pub fn start(
        protocol: Protocol,
        enricher: Arc<Enricher>,
        node: String,
        batching: Batching,
        startup: (Step, Vec<Step>),
    ) -> Result<(Arc<Self>, JoinHandle<()>), ExportError> {
        let (tx, rx) = crossbeam_channel::bounded(batching.queue_batches);
        let shared = Arc::new(Shared::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The gRPC channel is made on the runtime it will run on.
        let exporter = {
            let _on = runtime.enter();
            exporter(protocol)?
        };
        let worker = Worker {
            shared: shared.clone(),
            exporter,
            runtime,
            enricher,
            node,
            scope: scope(),
            pods: FxHashMap::default(),
            memo: Memo::default(),
            plans: Arc::default(),
            pending: FxHashMap::from_iter([(default_service(), trace(&startup.0, &startup.1))]),
            count: 1 + startup.1.len(),
            since: Some(Instant::now()),
            warned: None,
        };
        let thread = std::thread::Builder::new()
            .name("spans".into())
            .spawn(move || worker.run(rx, batching))?;
        Ok((Arc::new(Self { tx, shared }), thread))
    }

    /// Offers an attributed batch of a span stream (shared, not copied). Never waits:
    /// a full queue drops it, counted.
    pub fn offer(&self, batch: &Arc<Attributed>) {
        if let Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) =
            self.tx.try_send(batch.clone())
        {
            self.shared
                .stats
                .dropped_queue
                .fetch_add(u64::from(b.batch.len), Relaxed);
        }
    }

    /// Makes spans of stream `id`'s records as `plan` says (before its reader starts).
    pub fn add(&self, id: u32, plan: Arc<SpanPlan>) {
        let mut plans = self.shared.plans.write();
        let mut next = plans.as_ref().clone();
        next.insert(id, plan);
        *plans = Arc::new(next);
    }

    /// Forgets streams `ids` (a reload stopped their config).
    pub fn remove(&self, ids: &[u32]) {
        let mut plans = self.shared.plans.write();
        if ids.iter().any(|id| plans.contains_key(id)) {
            let mut next = plans.as_ref().clone();
            next.retain(|id, _| !ids.contains(id));
            *plans = Arc::new(next);
        }
    }

    /// Counters.
    pub fn stats(&self) -> &SpanStats {
        &self.shared.stats
    }
}

/// Most cgroups whose pod attributes are remembered (forgotten all at once beyond).
const PODS: usize = 4096;

struct Worker {
    shared: Arc<Shared>,
    exporter: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Runtime,
    enricher: Arc<Enricher>,
    node: String,
    scope: InstrumentationScope,
    /// Per cgroup: its label set's id and the pod's attributes.
    pods: FxHashMap<u64, (u32, Arc<[KeyValue]>)>,
    memo: Memo,
    /// The plans the memo is of (cleared when a reload changes them).
    plans: Arc<FxHashMap<u32, Arc<SpanPlan>>>,
    /// Spans waiting for export, by service.
    pending: FxHashMap<String, Vec<SpanData>>,
    count: usize,
    /// When the oldest pending span came.
    since: Option<Instant>,
    /// When a failed export was last logged.
    warned: Option<Instant>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Arc<Attributed>>, b: Batching) {
        loop {
            let wait = self.since.map_or(Duration::from_secs(3600), |t| {
                (t + b.delay).saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(batch) => {
                    self.take(&batch);
                    if self.count >= b.max_batch {
                        self.export();
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.export(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.export();
        let _ = self.exporter.shutdown();
    }

    /// Makes the batch's spans.
    fn take(&mut self, batch: &Attributed) {
        let plans = self.shared.plans.read().clone();
        if !Arc::ptr_eq(&plans, &self.plans) {
            self.memo.clear();
            self.plans = plans;
        }
        let stream = batch.batch.stream;
        let Some(plan) = self.plans.get(&stream).cloned() else {
            return;
        };
        let cx = Context {
            plan: &plan,
            stream,
            clock: Clock::now(),
            scope: &self.scope,
        };
        let pending = self.pending.entry(plan.service.clone()).or_default();
        for (record, pod) in batch.records() {
            let attributes;
            let extra: &[KeyValue] = if plan.stream.has_cgroup() && pod.id != 0 {
                let cgroup = plan.stream.cgroup_id(record);
                attributes = pod_attributes(&mut self.pods, &self.enricher, cgroup, pod);
                &attributes
            } else {
                &[]
            };
            match span(&cx, &mut self.memo, record, extra) {
                Ok(Some(s)) => {
                    pending.push(s);
                    self.count += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    self.shared.stats.failed_decode.fetch_add(1, Relaxed);
                    tracing::debug!(config = %plan.config, "span: {e}");
                }
            }
        }
        if self.count > 0 && self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    /// Exports what is pending, one request per service.
    fn export(&mut self) {
        let stats = &self.shared.stats;
        for (service, spans) in self.pending.iter_mut().filter(|(_, s)| !s.is_empty()) {
            let n = spans.len() as u64;
            self.exporter.set_resource(
                &Resource::builder_empty()
                    .with_service_name(service.clone())
                    .with_attribute(KeyValue::new("k8s.node.name", self.node.clone()))
                    .build(),
            );
            match self
                .runtime
                .block_on(self.exporter.export(std::mem::take(spans)))
            {
                Ok(()) => {
                    stats.exported.fetch_add(n, Relaxed);
                }
                Err(e) => {
                    stats.dropped_export.fetch_add(n, Relaxed);
                    if self
                        .warned
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                    {
                        self.warned = Some(Instant::now());
                        tracing::warn!("exporting {n} spans failed (dropped, counted; logged at most once a minute): {e}");
                    }
                }
            }
        }
        self.count = 0;
        self.since = None;
    }
}

/// The pod's OpenTelemetry attributes for a record of cgroup `cgroup` in label set `pod`.
fn pod_attributes(
    cache: &mut FxHashMap<u64, (u32, Arc<[KeyValue]>)>,
    enricher: &Enricher,
    cgroup: u64,
    pod: &PodLabels,
) -> Arc<[KeyValue]> {
    if let Some((id, attrs)) = cache.get(&cgroup) {
        if *id == pod.id {
            return attrs.clone();
        }
    }
    if cache.len() >= PODS {
        cache.clear();
    }
    let mut attrs = vec![
        KeyValue::new("k8s.namespace.name", pod.namespace.clone()),
        KeyValue::new("k8s.pod.name", pod.pod.clone()),
    ];
    if let Some(uid) = enricher.pod_uid(cgroup) {
        attrs.push(KeyValue::new("k8s.pod.uid", uid));
    }
    if !pod.container.is_empty() {
        attrs.push(KeyValue::new("k8s.container.name", pod.container.clone()));
    }
    let attrs: Arc<[KeyValue]> = attrs.into();
    cache.insert(cgroup, (pod.id, attrs.clone()));
    attrs
}
