//! Series storage shared by aggregate workers (see aggregator.rs) and the exposition.
//!
//! Each family keeps its series in a concurrent map keyed by (pod label set id, raw
//! label bytes); workers keep their own index of the same keys in front of it, so
//! an event costs a hash of a few bytes, a bucket search and two relaxed atomic adds.

use std::{
    collections::HashSet,
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use dashmap::DashMap;
use enrich::PodLabels;
use parking_lot::Mutex;

use crate::{
    buckets,
    exposition::{Kind, Native, PageWriter},
    native::{self, NativeBuckets, NativePlan},
    stream::{MetricPlan, Span},
};

/// Label value of the overflow series.
pub(crate) const OVERFLOW: &str = "__overflow__";

/// The identity of a series in `by_values`: its pod (for pod-labelled families) and
/// decoded config labels.
pub(crate) fn identity_of(
    m: &MetricPlan,
    pod: &PodLabels,
    labels: &[String],
) -> (u32, Box<[String]>) {
    (
        if m.family.pod_labels { pod.id } else { 0 },
        labels.to_vec().into_boxed_slice(),
    )
}

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
    /// Opt-in labels after the container's (workload, pod labels): their names, in the
    /// order of [`enrich::PodLabels::extra`].
    pub extra: Vec<String>,
}

impl Default for KubeLabelNames {
    fn default() -> Self {
        Self {
            namespace: "app_namespace".into(),
            pod: "app_pod".into(),
            container: "app_container".into(),
            node: "node_id".into(),
            extra: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SeriesKey {
    pub(crate) pod: u32,
    pub(crate) len: u8,
    pub(crate) bytes: [u8; MAX_KEY],
}

/// Every byte zero: keys are built over it, so bytes past `len` stay zero (which lets
/// keys compare by whole words).
impl Default for SeriesKey {
    fn default() -> Self {
        Self {
            pod: 0,
            len: 0,
            bytes: [0; MAX_KEY],
        }
    }
}

impl SeriesKey {
    /// Writes `record`'s field at `span` into the key's bytes from `at`.
    #[inline(always)]
    pub(crate) fn put(&mut self, at: usize, record: &[u8], span: Span) {
        let Span { offset, size } = span;
        // A field of up to 8 bytes is read as one word and written as one (bytes past
        // it zero, the next field written over them): a copy of a size known only at
        // run time is a `memcpy` call (20 instructions per event in `replay`).
        match (
            record.get(offset..offset + 8),
            self.bytes.get_mut(at..at + 8),
        ) {
            (Some(from), Some(to)) if (1..=8).contains(&size) => {
                let word = u64::from_le_bytes(from.try_into().unwrap());
                to.copy_from_slice(&(word & (u64::MAX >> (64 - 8 * size))).to_le_bytes());
            }
            _ => self.bytes[at..at + size].copy_from_slice(span.bytes(record)),
        }
    }

    #[inline]
    pub(crate) fn word(&self, w: usize) -> u64 {
        u64::from_ne_bytes(self.bytes[w * 8..w * 8 + 8].try_into().unwrap())
    }
}

impl PartialEq for SeriesKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        // Keys are short: an inlined loop over 8-byte words (bytes past `len` are zero
        // in both) beats a memcmp call and a byte loop.
        self.pod == other.pod
            && self.len == other.len
            && (0..usize::from(self.len).div_ceil(8)).all(|w| self.word(w) == other.word(w))
    }
}

impl Eq for SeriesKey {}

impl Hash for SeriesKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.pod);
        state.write(&self.bytes[..usize::from(self.len)]);
    }
}

#[derive(Debug)]
pub(crate) struct Series {
    /// The pod whose labels (and the node's) follow the config's labels (kept as the
    /// family's map key), for families that carry them.
    pub(crate) pod: Option<Arc<PodLabels>>,
    /// Per-bucket counts, `+Inf` last; empty for counters.
    pub(crate) buckets: Box<[AtomicU64]>,
    /// Sum of raw values (counter value for counters).
    pub(crate) sum: AtomicU64,
    /// Native buckets, for histograms that serve them.
    pub(crate) native: Option<NativeBuckets>,
}

impl Series {
    pub(crate) fn new(
        pod: Option<Arc<PodLabels>>,
        buckets: usize,
        native: Option<&NativePlan>,
    ) -> Self {
        Self {
            pod,
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            native: native.map(NativePlan::buckets),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) name: String,
    pub(crate) help: String,
    pub(crate) histogram: bool,
    pub(crate) bounds: Vec<f64>,
    pub(crate) scale: f64,
    /// Native buckets kept beside the classic ones.
    pub(crate) native: Option<NativePlan>,
    /// Whether series carry the pod and node labels after the config's labels.
    pub(crate) pod_labels: bool,
    /// Label names in exposition (sorted) order, and where each value comes from.
    pub(crate) sorted_names: Vec<String>,
    pub(crate) order: Vec<usize>,
    pub(crate) series: DashMap<SeriesKey, Slot>,
    /// Series by label values: keys that decode alike (`inet_subnet` reads one byte of
    /// two for IPv4, `static_map` merges values) share one series.
    pub(crate) by_values: DashMap<(u32, Box<[String]>), Arc<Series>>,
    /// Events left out because a filter decoder (`regexp`) dropped their labels.
    pub(crate) filtered: AtomicU64,
    /// Most series the family keeps; events of further label sets go to one overflow
    /// series whose labels all read `__overflow__`, so memory stays bounded.
    pub(crate) max_series: usize,
    pub(crate) overflow: std::sync::OnceLock<Arc<Series>>,
    /// Events counted in the overflow series.
    pub(crate) overflowed: AtomicU64,
    /// Events left out because a label's decoder rejected its bytes, per config label.
    pub(crate) invalid: Box<[AtomicU64]>,
}

/// All event-stream families, for registration and exposition, and the names of every
/// metric (tables included) so none is defined twice.
#[derive(Debug)]
pub struct Registry {
    families: Mutex<Vec<Arc<Family>>>,
    names: Mutex<HashSet<String>>,
    kube: KubeLabelNames,
    node: String,
    max_series: usize,
}

/// Series a stream metric keeps unless its config says otherwise.
pub const DEFAULT_MAX_SERIES: usize = 100_000;

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
}

/// Indices of `names` in sorted (exposition) order.
pub(crate) fn sorted_order(names: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(&names[b]));
    order
}

impl Registry {
    /// A registry whose series carry `kube` label names and `node` as the node label.
    pub fn new(kube: KubeLabelNames, node: String) -> Self {
        Self {
            families: Mutex::default(),
            names: Mutex::default(),
            kube,
            node,
            max_series: DEFAULT_MAX_SERIES,
        }
    }

    /// Sets the series limit of metrics whose config gives none.
    pub fn max_series(mut self, max: usize) -> Self {
        self.max_series = max.max(1);
        self
    }

    /// The node label's name and value.
    pub(crate) fn node_label(&self) -> (&str, &str) {
        (&self.kube.node, &self.node)
    }

    pub(crate) fn default_max_series(&self) -> usize {
        self.max_series
    }

    /// Checks a metric's name and label names and reserves the name; returns the
    /// exported name (`ebpf_exporter_<name>`).
    pub(crate) fn claim(&self, name: &str, labels: &[String]) -> Result<String, crate::NameError> {
        use crate::NameError;
        if !valid_name(name) {
            return Err(NameError::Metric(name.to_string()));
        }
        for (i, l) in labels.iter().enumerate() {
            if !valid_name(l) || l == "le" || l.starts_with("__") {
                return Err(NameError::Label(l.clone()));
            }
            if labels[..i].contains(l) {
                return Err(NameError::DuplicateLabel(l.clone()));
            }
        }
        let full = format!("ebpf_exporter_{name}");
        let mut names = self.names.lock();
        if !names.insert(full.clone()) {
            return Err(NameError::Taken(full));
        }
        Ok(full)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        &self,
        name: &str,
        help: &str,
        histogram: bool,
        bounds: Vec<f64>,
        scale: f64,
        native: Option<NativePlan>,
        mut labels: Vec<String>,
        pod_labels: bool,
        max_series: usize,
    ) -> Result<Arc<Family>, crate::NameError> {
        let config_labels = labels.len();
        if pod_labels {
            let k = &self.kube;
            labels.extend([k.namespace.clone(), k.pod.clone(), k.container.clone()]);
            labels.extend(k.extra.iter().cloned());
            labels.push(k.node.clone());
        }
        let full = self.claim(name, &labels)?;
        let order = sorted_order(&labels);
        let family = Arc::new(Family {
            name: full,
            help: help.into(),
            histogram,
            bounds,
            scale,
            native,
            pod_labels,
            sorted_names: order.iter().map(|&i| labels[i].clone()).collect(),
            order,
            series: DashMap::new(),
            by_values: DashMap::new(),
            filtered: AtomicU64::new(0),
            max_series,
            overflow: std::sync::OnceLock::new(),
            overflowed: AtomicU64::new(0),
            invalid: (0..config_labels).map(|_| AtomicU64::new(0)).collect(),
        });
        self.families.lock().push(family.clone());
        Ok(family)
    }

    /// Writes the text exposition of every family.
    pub fn render(&self, out: &mut PageWriter) {
        let mut families = self.families.lock().clone();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        for f in families {
            f.render(out, &self.node);
        }
    }

    /// Takes metrics `names` out (a config being replaced or removed): their names
    /// are free again and their series leave the exposition. [`Registry::restore`]
    /// puts them back.
    pub fn release(&self, names: &[String]) -> Released {
        let leaving: HashSet<&String> = names.iter().collect();
        let mut claimed = self.names.lock();
        let mut families = self.families.lock();
        claimed.retain(|n| !leaving.contains(n));
        let (gone, kept) = std::mem::take(&mut *families)
            .into_iter()
            .partition(|f| leaving.contains(&f.name));
        *families = kept;
        Released {
            names: names.to_vec(),
            families: gone,
        }
    }

    /// Puts back what [`Registry::release`] took (a replacement failed to start).
    pub fn restore(&self, released: Released) {
        self.names.lock().extend(released.names);
        self.families.lock().extend(released.families);
    }

    /// Drops the series of label sets `gone` (pods deleted past their grace period),
    /// so memory follows the pods on the node. Workers drop their references at their
    /// next cleanup; events that still arrive for a gone pod start new series.
    pub fn expire(&self, gone: &[u32]) {
        let families = self.families.lock().clone();
        for f in families.iter().filter(|f| f.pod_labels) {
            f.by_values.retain(|(pod, _), _| !gone.contains(pod));
            f.series.retain(|key, _| !gone.contains(&key.pod));
        }
    }

    /// Raw keys remembered across families (tests: memory stays bounded).
    #[cfg(test)]
    pub(crate) fn remembered_keys(&self) -> usize {
        let families = self.families.lock();
        families.iter().map(|f| f.series.len()).sum()
    }

    /// Events left out by decoders: per metric, (label, events its decoder rejected)
    /// and events filtered out by design.
    pub fn decode_failures(&self) -> Vec<DecodeFailures> {
        let families = self.families.lock();
        families
            .iter()
            .map(|f| DecodeFailures {
                metric: f.name.clone(),
                invalid: f
                    .invalid
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        (
                            f.sorted_names[f.order.iter().position(|&o| o == i).unwrap()].clone(),
                            n.load(Relaxed),
                        )
                    })
                    .collect(),
                filtered: f.filtered.load(Relaxed),
                overflowed: f.overflowed.load(Relaxed),
            })
            .collect()
    }
}

/// Metrics taken out of a registry, their series kept, until restored or dropped.
#[derive(Debug)]
pub struct Released {
    names: Vec<String>,
    families: Vec<Arc<Family>>,
}

/// Decoder outcomes of one stream metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailures {
    /// Exported metric name.
    pub metric: String,
    /// Per config label: events whose bytes its decoders rejected.
    pub invalid: Vec<(String, u64)>,
    /// Events a filter decoder dropped.
    pub filtered: u64,
    /// Events counted in the overflow series (the metric reached its series limit).
    pub overflowed: u64,
}

/// What a series key resolves to.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Series(Arc<Series>),
    /// The family is full: the overflow series.
    Overflow(Arc<Series>),
    /// A filter decoder dropped the labels.
    Filtered,
    /// The decoders of this config label rejected its bytes.
    Invalid(usize),
}

impl Family {
    /// Most raw keys remembered (per worker, and in `series`): enough for the keys of
    /// every series many times over (keys that decode alike share a series), bounded
    /// when a label's raw values are endless.
    pub(crate) fn max_keys(&self) -> usize {
        self.max_series.saturating_mul(4).max(1 << 16)
    }

    /// Remembers what `key` resolved to, unless the key limit is reached.
    pub(crate) fn remember(&self, key: SeriesKey, slot: Slot) -> Slot {
        if self.series.len() >= self.max_keys() {
            return slot;
        }
        self.series.entry(key).or_insert(slot).clone()
    }

    /// The value of label `i` of `count` (family order: config labels, then pod labels
    /// with the opt-in ones, then node).
    fn value<'a>(
        labels: &'a [String],
        s: &'a Series,
        node: &'a str,
        i: usize,
        count: usize,
    ) -> &'a str {
        let n = labels.len();
        if i < n {
            return &labels[i];
        }
        if i + 1 == count {
            return node;
        }
        match (&s.pod, i - n) {
            (Some(p), 0) => &p.namespace,
            (Some(p), 1) => &p.pod,
            (Some(p), 2) => &p.container,
            (p, j) => p
                .as_ref()
                .and_then(|p| p.extra.get(j - 3))
                .map_or("", |v| v),
        }
    }

    fn render(&self, out: &mut PageWriter, node: &str) {
        let mut series: Vec<(Box<[String]>, Arc<Series>)> = self
            .by_values
            .iter()
            .map(|e| (e.key().1.clone(), e.value().clone()))
            .collect();
        if series.is_empty() {
            return;
        }
        fn sorted<'a>(
            order: &[usize],
            (labels, s): &'a (Box<[String]>, Arc<Series>),
            node: &'a str,
        ) -> Vec<&'a str> {
            order
                .iter()
                .map(|&i| Family::value(labels, s, node, i, order.len()))
                .collect()
        }
        series.sort_by(|a, b| sorted(&self.order, a, node).cmp(&sorted(&self.order, b, node)));
        let kind = if self.histogram {
            Kind::Histogram
        } else {
            Kind::Counter
        };
        out.family(&self.name, &self.help, kind, &self.bounds);
        let mut counts = Vec::with_capacity(self.bounds.len() + 1);
        let mut native = Vec::new();
        for entry in &series {
            let values = sorted(&self.order, entry, node);
            let s = &entry.1;
            let sum = buckets::scaled(s.sum.load(Relaxed), self.scale);
            if !self.histogram {
                out.value(&self.sorted_names, &values, sum);
                continue;
            }
            let native = match (&self.native, &s.native) {
                (Some(plan), Some(b)) if out.native() => {
                    let zero_count = b.read(plan, &mut native);
                    let schema = native::limit(&mut native, plan.schema, plan.max_buckets);
                    Some(Native {
                        schema,
                        zero_threshold: plan.zero_threshold,
                        zero_count,
                        buckets: &native,
                    })
                }
                _ => None,
            };
            counts.clear();
            counts.extend(s.buckets.iter().map(|b| b.load(Relaxed)));
            out.histogram(&self.sorted_names, &values, &counts, sum, native);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Fields written one after another give the bytes they hold, in order, and
        /// zeros past them, whether they are read as words or copied.
        #[test]
        fn put_writes_fields_in_order(
            sizes in proptest::collection::vec(1usize..=16, 1..6),
            record in proptest::collection::vec(any::<u8>(), 0..96),
            gap in 0usize..8,
        ) {
            let total: usize = sizes.iter().sum();
            prop_assume!(total <= MAX_KEY && total + gap <= record.len());
            let (mut key, mut want, mut at) = (SeriesKey::default(), [0u8; MAX_KEY], 0);
            for &size in &sizes {
                // Fields in record order from `gap`, the last possibly at its end.
                let span = Span { offset: gap + at, size };
                key.put(at, &record, span);
                want[at..at + size].copy_from_slice(span.bytes(&record));
                at += size;
            }
            prop_assert_eq!(key.bytes, want);
        }
    }
}
