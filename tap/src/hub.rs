//! The tap's hub: takes attributed batches from the enrich workers (the pods the
//! aggregate stage gets), decodes their records, and fans JSON lines out to
//! subscribers.

use std::{
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Instant, SystemTime},
};

use aggregate::{Raw, Stream};
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use enrich::{Attributed, Enricher, PodLabels};
use parking_lot::{Mutex, RwLock};
use serde_json::{json, Map, Value};

use crate::{time::rfc3339_nanos, Filter};

/// Tap counters, exported as self-metrics.
#[derive(Debug, Default)]
pub struct TapStats {
    /// Events sent to subscribers (one per subscriber that got it).
    pub events: AtomicU64,
    /// Events a subscriber lost because its queue was full (a slow reader).
    pub dropped_slow: AtomicU64,
    /// Events skipped by a subscriber's `rate`.
    pub dropped_rate: AtomicU64,
    /// Records the tap thread could not take because its own queue was full.
    pub dropped_input: AtomicU64,
}

/// Where a subscriber's lines go.
enum Delivery {
    Http(tokio::sync::mpsc::Sender<Bytes>),
    File(Sender<Bytes>),
}

struct Subscriber {
    filter: Filter,
    out: Delivery,
    sent: u64,
    tokens: f64,
    refilled: Instant,
}

/// The tap: cheap to offer batches to, free when nobody subscribes.
pub struct Tap {
    active: AtomicUsize,
    tx: Sender<(SystemTime, Arc<Attributed>)>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// By batch stream id; a reload empties and appends slots.
    streams: RwLock<Arc<Vec<Option<Stream>>>>,
    stats: TapStats,
    queue: usize,
}

impl Tap {
    /// A tap with its own thread; its streams come by [`Tap::set_streams`].
    /// `input_batches` bounds the batches waiting for it; `queue` the lines waiting
    /// for each subscriber. `extra_labels` names the enricher's opt-in labels
    /// (workload, pod labels), shown under `labels` in each event.
    pub fn start(
        enricher: Arc<Enricher>,
        node: String,
        cluster: Option<String>,
        extra_labels: Vec<String>,
        input_batches: usize,
        queue: usize,
    ) -> Arc<Self> {
        let (tx, rx) = crossbeam_channel::bounded(input_batches.max(1));
        let tap = Arc::new(Self {
            active: AtomicUsize::new(0),
            tx,
            subscribers: Mutex::default(),
            streams: RwLock::default(),
            stats: TapStats::default(),
            queue: queue.max(1),
        });
        let worker = Worker {
            tap: Arc::downgrade(&tap),
            enricher,
            node,
            cluster,
            extra_labels,
        };
        std::thread::Builder::new()
            .name("tap".into())
            .spawn(move || worker.run(rx))
            .expect("spawning the tap thread");
        tap
    }

    /// Offers an attributed batch (shared, not copied); one relaxed load when nobody
    /// listens. Never waits: a full queue drops the batch, counted.
    #[inline]
    pub fn offer(&self, batch: &Arc<Attributed>) {
        if self.active.load(Relaxed) == 0 {
            return;
        }
        if let Err(TrySendError::Full((_, b)) | TrySendError::Disconnected((_, b))) =
            self.tx.try_send((SystemTime::now(), batch.clone()))
        {
            self.stats
                .dropped_input
                .fetch_add(u64::from(b.batch.len), Relaxed);
        }
    }

    /// Adds an HTTP subscriber: lines arrive on the returned receiver.
    pub fn subscribe_http(&self, filter: Filter) -> tokio::sync::mpsc::Receiver<Bytes> {
        let (tx, rx) = tokio::sync::mpsc::channel(self.queue);
        self.add(filter, Delivery::Http(tx));
        rx
    }

    /// Adds a subscriber that sends lines to `tx` (the file sink; several filters may
    /// share one channel).
    pub fn subscribe_channel(&self, filter: Filter, tx: Sender<Bytes>) {
        self.add(filter, Delivery::File(tx));
    }

    fn add(&self, filter: Filter, out: Delivery) {
        let tokens = filter.rate.map_or(0.0, |r| r as f64);
        let mut subs = self.subscribers.lock();
        subs.push(Subscriber {
            filter,
            out,
            sent: 0,
            tokens,
            refilled: Instant::now(),
        });
        self.active.store(subs.len(), Relaxed);
    }

    /// The streams subscribers can filter on.
    pub fn streams(&self) -> Vec<Stream> {
        let slots = self.streams.read();
        slots.iter().flatten().cloned().collect()
    }

    /// Replaces the streams (after a reload), indexed like batch streams.
    pub fn set_streams(&self, streams: Arc<Vec<Option<Stream>>>) {
        *self.streams.write() = streams;
    }

    /// Counters.
    pub fn stats(&self) -> &TapStats {
        &self.stats
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.active.load(Relaxed)
    }
}

/// The tap thread's state.
struct Worker {
    tap: std::sync::Weak<Tap>,
    enricher: Arc<Enricher>,
    node: String,
    cluster: Option<String>,
    extra_labels: Vec<String>,
}

/// What the tap tells about a record's cgroup beside its labels.
struct Explained {
    path: Option<String>,
    unknown: Option<String>,
}

/// A field of one event, decoded for filters and JSON.
struct FieldValue<'a> {
    name: &'a str,
    raw: Raw,
    label: Option<(&'a str, Result<String, aggregate::decoder::DecodeError>)>,
    scaled: Option<f64>,
}

impl<'a> FieldValue<'a> {
    fn of(f: &'a aggregate::FieldView, record: &[u8]) -> Self {
        FieldValue {
            name: &f.name,
            raw: f.raw(record),
            label: f.label(record),
            scaled: f.scale.and_then(|s| match f.raw(record) {
                Raw::Uint(n) => Some(aggregate::buckets::scaled(n, s)),
                Raw::Hex(_) => None,
            }),
        }
    }

    fn equals(&self, want: &str) -> bool {
        let raw = match &self.raw {
            Raw::Uint(n) => n.to_string(),
            Raw::Hex(h) => h.clone(),
        };
        raw == want || matches!(&self.label, Some((_, Ok(v))) if v == want)
    }

    fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "raw".into(),
            match &self.raw {
                Raw::Uint(n) => json!(n),
                Raw::Hex(h) => json!(h),
            },
        );
        if let Some((name, v)) = &self.label {
            m.insert("label".into(), json!(name));
            match v {
                Ok(v) => m.insert("value".into(), json!(v)),
                Err(e) => m.insert("error".into(), json!(e.to_string())),
            };
        }
        if let Some(s) = self.scaled {
            m.insert("scaled".into(), json!(s));
        }
        Value::Object(m)
    }
}

impl Worker {
    fn run(self, rx: Receiver<(SystemTime, Arc<Attributed>)>) {
        for (time, attributed) in rx {
            let Some(tap) = self.tap.upgrade() else {
                return;
            };
            let streams = tap.streams.read().clone();
            let Some(Some(stream)) = streams.get(attributed.batch.stream as usize) else {
                continue;
            };
            let mut subs = tap.subscribers.lock();
            // Explanations of one cgroup, for runs of its records.
            let mut last: Option<(u64, Explained)> = None;
            for (record, pod) in attributed.records() {
                self.deliver(&tap, &mut subs, stream, time, record, pod, &mut last);
                if subs.is_empty() {
                    break;
                }
            }
            tap.active.store(subs.len(), Relaxed);
        }
    }

    /// Where a record's cgroup is and, when it has no pod, why: for people reading
    /// the tap (the labels themselves are the enrich stage's).
    fn explain(&self, cgroup_id: u64, pod: &PodLabels) -> Explained {
        let unknown = (pod.id == 0).then(|| {
            self.enricher
                .resolve(cgroup_id)
                .unknown
                .unwrap_or_else(|| "its pod's metadata came after the record".into())
        });
        Explained {
            path: self.enricher.cgroup_path(cgroup_id),
            unknown,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        tap: &Tap,
        subs: &mut Vec<Subscriber>,
        stream: &Stream,
        time: SystemTime,
        record: &[u8],
        pod: &PodLabels,
        last: &mut Option<(u64, Explained)>,
    ) {
        let plan = &stream.plan;
        if record.len() < plan.record_size {
            return;
        }
        if !subs.iter().any(|s| s.wants_pod(&stream.program, pod)) {
            return;
        }
        let cgroup = plan.has_cgroup().then(|| plan.cgroup_id(record));
        let (path, unknown) = match cgroup {
            Some(id) => {
                if last.as_ref().is_none_or(|(at, _)| *at != id) {
                    *last = Some((id, self.explain(id, pod)));
                }
                let e = &last.as_ref().expect("just set").1;
                (e.path.as_deref(), e.unknown.as_deref())
            }
            None => (None, Some("this ring has no cgroup field")),
        };
        let fields: Vec<FieldValue> = plan
            .fields()
            .iter()
            .map(|f| FieldValue::of(f, record))
            .collect();
        let event = Event {
            time,
            stream,
            cgroup,
            path,
            unknown,
            pod,
            fields: &fields,
        };
        // Made once, for the first subscriber that takes it.
        let mut line: Option<Bytes> = None;
        let now = Instant::now();
        subs.retain_mut(|s| {
            if !s.wants_pod(&stream.program, pod) || !s.wants_fields(&fields) {
                return true;
            }
            if !s.take_token(now) {
                tap.stats.dropped_rate.fetch_add(1, Relaxed);
                return true;
            }
            let line = line.get_or_insert_with(|| self.line(&event));
            match s.out.send(line) {
                None => return false,
                Some(false) => {
                    tap.stats.dropped_slow.fetch_add(1, Relaxed);
                    return true;
                }
                Some(true) => {}
            }
            tap.stats.events.fetch_add(1, Relaxed);
            s.sent += 1;
            s.filter.limit.is_none_or(|l| s.sent < l)
        });
    }

    /// One event as a JSON line.
    fn line(&self, e: &Event<'_>) -> Bytes {
        let mut event = Map::new();
        event.insert("time".into(), json!(rfc3339_nanos(e.time)));
        event.insert("config".into(), json!(e.stream.program));
        event.insert("ring".into(), json!(e.stream.plan.ring));
        event.insert("node".into(), json!(self.node));
        if let Some(c) = &self.cluster {
            event.insert("cluster".into(), json!(c));
        }
        if let Some(id) = e.cgroup {
            event.insert("cgroup_id".into(), json!(id));
        }
        if let Some(p) = e.path {
            event.insert("cgroup_path".into(), json!(p));
        }
        event.insert("namespace".into(), json!(e.pod.namespace));
        event.insert("pod".into(), json!(e.pod.pod));
        event.insert("container".into(), json!(e.pod.container));
        if !self.extra_labels.is_empty() {
            let labels: Map<String, Value> = self
                .extra_labels
                .iter()
                .enumerate()
                .map(|(i, name)| (name.clone(), json!(e.pod.extra.get(i).map_or("", |v| v))))
                .collect();
            event.insert("labels".into(), Value::Object(labels));
        }
        if let Some(u) = e.unknown {
            event.insert("unknown".into(), json!(u));
        }
        let f: Map<String, Value> = e
            .fields
            .iter()
            .map(|f| (f.name.to_string(), f.json()))
            .collect();
        event.insert("fields".into(), Value::Object(f));
        if let Some(name) = &e.stream.plan.traced {
            event.insert("span".into(), span(e.fields, name));
        }
        let mut text =
            serde_json::to_vec(&Value::Object(event)).expect("JSON of strings and numbers");
        text.push(b'\n');
        Bytes::from(text)
    }
}

/// A span record's span as the span stage exports it (ids the kernel left zero are
/// made up there, so they show as zeros here).
fn span(fields: &[FieldValue<'_>], name: &str) -> Value {
    use spans::Role;
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    for f in fields {
        let Some((_, Ok(v))) = &f.label else { continue };
        let nanos = || v.parse::<u64>().ok();
        let (key, value) = match Role::of(f.name) {
            Role::TraceId => ("trace_id", json!(v)),
            Role::ParentSpanId => ("parent_span_id", json!(v)),
            Role::SpanId => ("span_id", json!(v)),
            Role::Name => ("name", json!(v)),
            Role::Start => match nanos() {
                Some(ns) => ("start", json!(rfc3339_nanos(spans::Clock::now().wall(ns)))),
                None => continue,
            },
            Role::Duration => match nanos() {
                Some(ns) => ("duration_ns", json!(ns)),
                None => continue,
            },
            Role::Attribute(_) => continue,
        };
        m.insert(key.into(), value);
    }
    Value::Object(m)
}

/// One record as the tap shows it.
struct Event<'a> {
    time: SystemTime,
    stream: &'a Stream,
    cgroup: Option<u64>,
    path: Option<&'a str>,
    unknown: Option<&'a str>,
    pod: &'a PodLabels,
    fields: &'a [FieldValue<'a>],
}

impl Subscriber {
    fn wants_pod(&self, config: &str, pod: &PodLabels) -> bool {
        self.filter
            .matches_pod(config, &pod.namespace, &pod.pod, &pod.container)
    }

    /// Every field filter matches one of the record's fields.
    fn wants_fields(&self, fields: &[FieldValue<'_>]) -> bool {
        self.filter
            .fields
            .iter()
            .all(|(k, v)| fields.iter().any(|f| f.name == k && f.equals(v)))
    }

    /// Whether its `rate` lets one more event through now (always without one).
    fn take_token(&mut self, now: Instant) -> bool {
        let Some(rate) = self.filter.rate else {
            return true;
        };
        let rate = rate as f64;
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl Delivery {
    /// Sends without waiting: whether it went (false: the queue is full), or `None`
    /// once the subscriber is gone.
    fn send(&self, line: &Bytes) -> Option<bool> {
        match self {
            Delivery::Http(tx) => match tx.try_send(line.clone()) {
                Ok(()) => Some(true),
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => Some(false),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => None,
            },
            Delivery::File(tx) => match tx.try_send(line.clone()) {
                Ok(()) => Some(true),
                Err(TrySendError::Full(_)) => Some(false),
                Err(TrySendError::Disconnected(_)) => None,
            },
        }
    }
}
