//! Series storage shared by aggregate workers and the exposition.
//!
//! Each family keeps its series in a concurrent map keyed by (pod label set id, raw
//! label bytes); workers keep their own plain map of the same keys in front of it, so
//! an event costs a hash of a few bytes, a bucket search and two relaxed atomic adds.

use std::{
    fmt::Write,
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use dashmap::DashMap;
use enrich::PodLabels;
use rustc_hash::FxHashMap;

use crate::{
    buckets,
    exposition::{format_float, open_labels},
    plan::{MetricPlan, StreamPlan},
};

/// Most bytes of label fields one metric may key its series by.
pub(crate) const MAX_KEY: usize = 64;

/// Names of the pod labels added to every series.
#[derive(Debug, Clone)]
pub struct KubeLabelNames {
    /// Namespace label (default `app_namespace`).
    pub namespace: String,
    /// Pod label (default `app_pod`).
    pub pod: String,
    /// Container label (default `app_container`).
    pub container: String,
    /// Node label (default `node_id`).
    pub node: String,
}

impl Default for KubeLabelNames {
    fn default() -> Self {
        Self {
            namespace: "app_namespace".into(),
            pod: "app_pod".into(),
            container: "app_container".into(),
            node: "node_id".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeriesKey {
    pod: u32,
    len: u8,
    bytes: [u8; MAX_KEY],
}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.pod);
        state.write(&self.bytes[..usize::from(self.len)]);
    }
}

#[derive(Debug)]
pub(crate) struct Series {
    /// Label values in family order (config labels, then pod labels, then node).
    values: Vec<String>,
    /// Per-bucket counts, `+Inf` last; empty for counters.
    buckets: Box<[AtomicU64]>,
    /// Sum of raw values (counter value for counters).
    sum: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Family {
    name: String,
    help: String,
    histogram: bool,
    bounds: Vec<f64>,
    scale: f64,
    /// Label names in exposition (sorted) order, and where each value comes from.
    sorted_names: Vec<String>,
    order: Vec<usize>,
    series: DashMap<SeriesKey, Option<Arc<Series>>>,
    /// Events whose labels a decoder rejected or dropped.
    pub decode_failures: AtomicU64,
}

/// All event-stream families, for registration and exposition.
#[derive(Debug)]
pub struct Registry {
    families: Mutex<Vec<Arc<Family>>>,
    kube: KubeLabelNames,
    node: String,
}

impl Registry {
    /// A registry whose series carry `kube` label names and `node` as the node label.
    pub fn new(kube: KubeLabelNames, node: String) -> Self {
        Self {
            families: Mutex::default(),
            kube,
            node,
        }
    }

    pub(crate) fn register(
        &self,
        name: &str,
        help: &str,
        histogram: bool,
        bounds: Vec<f64>,
        scale: f64,
        mut labels: Vec<String>,
    ) -> Result<Arc<Family>, String> {
        let full = format!("ebpf_exporter_{name}");
        let valid = |s: &str| {
            s.chars().enumerate().all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
                && !s.is_empty()
        };
        if !valid(name) {
            return Err(format!("{name:?} is not a valid Prometheus metric name"));
        }
        let k = &self.kube;
        labels.extend([k.namespace.clone(), k.pod.clone(), k.container.clone(), k.node.clone()]);
        for (i, l) in labels.iter().enumerate() {
            if !valid(l) || l == "le" || l.starts_with("__") {
                return Err(format!("label {l:?} is not a valid label name here"));
            }
            if labels[..i].contains(l) {
                return Err(format!("label {l:?} appears twice (pod labels are added to every metric)"));
            }
        }
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by(|&a, &b| labels[a].cmp(&labels[b]));
        let family = Arc::new(Family {
            name: full.clone(),
            help: help.into(),
            histogram,
            bounds,
            scale,
            sorted_names: order.iter().map(|&i| labels[i].clone()).collect(),
            order,
            series: DashMap::new(),
            decode_failures: AtomicU64::new(0),
        });
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        if families.iter().any(|f| f.name == full) {
            return Err(format!("metric {full} is defined twice"));
        }
        families.push(family.clone());
        Ok(family)
    }

    /// Appends the text exposition of every family.
    pub fn render(&self, out: &mut String) {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner()).clone();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        for f in families {
            f.render(out);
        }
    }

    /// Events dropped by decoders, per metric name.
    pub fn decode_failures(&self) -> Vec<(String, u64)> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        families.iter().map(|f| (f.name.clone(), f.decode_failures.load(Relaxed))).collect()
    }
}

impl Family {
    fn render(&self, out: &mut String) {
        let mut series: Vec<Arc<Series>> = self.series.iter().filter_map(|e| e.value().clone()).collect();
        if series.is_empty() {
            return;
        }
        let sorted = |s: &Series| -> Vec<String> { self.order.iter().map(|&i| s.values[i].clone()).collect() };
        series.sort_by_cached_key(|s| sorted(s));
        let kind = if self.histogram { "histogram" } else { "counter" };
        let help = self.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {} {help}\n# TYPE {} {kind}", self.name, self.name);
        let bounds: Vec<String> = self.bounds.iter().map(|&b| format_float(b)).collect();
        for s in series {
            let values = sorted(&s);
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let sum = format_float(buckets::scaled(s.sum.load(Relaxed), self.scale));
            if !self.histogram {
                out.push_str(&self.name);
                open_labels(out, &self.sorted_names, &values);
                let _ = writeln!(out, "}} {sum}");
                continue;
            }
            let mut cumulative = 0u64;
            for (i, b) in s.buckets.iter().enumerate() {
                cumulative += b.load(Relaxed);
                let le = bounds.get(i).map_or("+Inf", String::as_str);
                let _ = write!(out, "{}_bucket", self.name);
                open_labels(out, &self.sorted_names, &values);
                let _ = writeln!(out, ",le=\"{le}\"}} {cumulative}");
            }
            for (suffix, v) in [("sum", sum), ("count", cumulative.to_string())] {
                let _ = write!(out, "{}_{suffix}", self.name);
                open_labels(out, &self.sorted_names, &values);
                let _ = writeln!(out, "}} {v}");
            }
        }
    }
}

/// Counters of one stream across its workers.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Records aggregated.
    pub records: AtomicU64,
    /// Records shorter than the configured layout (not aggregated).
    pub malformed: AtomicU64,
}

/// A worker's view of one stream: its plan and a lock-free local series cache.
pub struct StreamAggregator {
    plan: Arc<StreamPlan>,
    local: Vec<FxHashMap<SeriesKey, Option<Arc<Series>>>>,
    stats: Arc<StreamStats>,
    node: String,
    records: u64,
    malformed: u64,
}

impl StreamAggregator {
    /// A worker-local aggregator for `plan`, counting into `stats`.
    pub fn new(plan: Arc<StreamPlan>, registry: &Registry, stats: Arc<StreamStats>) -> Self {
        Self {
            local: plan.metrics.iter().map(|_| FxHashMap::default()).collect(),
            plan,
            stats,
            node: registry.node.clone(),
            records: 0,
            malformed: 0,
        }
    }

    /// The stream's plan.
    pub fn plan(&self) -> &StreamPlan {
        &self.plan
    }

    /// Adds one record, attributed to `pod`.
    #[inline]
    pub fn observe(&mut self, record: &[u8], pod: &PodLabels) {
        if record.len() < self.plan.record_size {
            self.malformed += 1;
            return;
        }
        self.records += 1;
        for (m, local) in self.plan.metrics.iter().zip(&mut self.local) {
            let mut key = SeriesKey {
                pod: pod.id,
                len: 0,
                bytes: [0; MAX_KEY],
            };
            let mut at = 0;
            for l in &m.labels {
                key.bytes[at..at + l.span.size].copy_from_slice(&record[l.span.offset..l.span.offset + l.span.size]);
                at += l.span.size;
            }
            key.len = at as u8;
            let series = match local.get(&key) {
                Some(s) => s,
                None => {
                    let s = shared_series(m, key, record, pod, &self.node);
                    local.entry(key).or_insert(s)
                }
            };
            let Some(series) = series else {
                m.family.decode_failures.fetch_add(1, Relaxed);
                continue;
            };
            let raw = m.value.map_or(1, |v| v.uint(record));
            if m.family.histogram {
                let i = m.raw_bounds.partition_point(|&b| b < raw);
                series.buckets[i].fetch_add(1, Relaxed);
            }
            series.sum.fetch_add(raw, Relaxed);
        }
    }

    /// Publishes the counts gathered since the last flush (call once per batch).
    pub fn flush_stats(&mut self) {
        self.stats.records.fetch_add(std::mem::take(&mut self.records), Relaxed);
        self.stats.malformed.fetch_add(std::mem::take(&mut self.malformed), Relaxed);
    }
}

/// The family's series for `key`, creating it (decoding its labels) on first sight.
/// `None` marks keys whose labels a decoder rejects, so they are not decoded again.
#[cold]
fn shared_series(m: &MetricPlan, key: SeriesKey, record: &[u8], pod: &PodLabels, node: &str) -> Option<Arc<Series>> {
    if let Some(s) = m.family.series.get(&key) {
        return s.clone();
    }
    let mut values = Vec::with_capacity(m.labels.len() + 4);
    for l in &m.labels {
        match l.chain.decode(&record[l.span.offset..l.span.offset + l.span.size]) {
            Ok(v) => values.push(v),
            Err(e) => {
                tracing::debug!(metric = %m.family.name, error = %e, "label decode failed");
                return m.family.series.entry(key).or_insert(None).clone();
            }
        }
    }
    values.extend([pod.namespace.clone(), pod.pod.clone(), pod.container.clone(), node.to_string()]);
    let buckets = if m.family.histogram { m.raw_bounds.len() + 1 } else { 0 };
    let series = Arc::new(Series {
        values,
        buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
        sum: AtomicU64::new(0),
    });
    m.family.series.entry(key).or_insert(Some(series)).clone()
}
