//! Tables: metrics read straight from BPF maps at scrape time, in cloudflare/ebpf_exporter's
//! format. The map named like the metric has keys laid out as the labels (`size` +
//! `padding` each, `reuse` to read the previous bytes again) and u64 values (summed over
//! CPUs for per-CPU maps). A histogram's last label is the bucket key; the key one past
//! the last bucket holds the sum.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use crate::{
    buckets::{self, Layout},
    config::{LabelConfig, MetricConfig},
    decoder::{Chain, Context, DecodeError},
    exposition::{Kind, Native, PageWriter},
    invalid,
    registry::{sorted_order, Registry},
    stream::Span,
    ConfigError,
};

/// Offsets of a map key's labels.
pub(crate) fn key_layout(labels: &[LabelConfig], at: &str) -> Result<Vec<Span>, ConfigError> {
    let mut spans: Vec<Span> = Vec::new();
    let mut cursor = 0;
    for (i, l) in labels.iter().enumerate() {
        let l_at = format!("{at}.labels[{i}]");
        if l.field.is_some() {
            return Err(invalid(format!("{l_at}.field"), "labels of map-based metrics take size (and padding), not field; set ring to read a ring"));
        }
        let size = l.size.filter(|&s| s > 0).ok_or_else(|| {
            invalid(
                format!("{l_at}.size"),
                "required: bytes of the map key this label takes",
            )
        })?;
        let offset = match (l.reuse, spans.last()) {
            (true, Some(prev)) => prev.offset,
            (true, None) => {
                return Err(invalid(
                    format!("{l_at}.reuse"),
                    "the first label has no previous bytes to reuse",
                ))
            }
            (false, _) => cursor,
        };
        spans.push(Span { offset, size });
        cursor = cursor.max(offset + size + l.padding);
    }
    Ok(spans)
}

#[derive(Debug)]
struct Label {
    span: Span,
    chain: Chain,
    errors: AtomicU64,
}

/// A compiled map-based metric.
#[derive(Debug)]
pub struct TablePlan {
    /// Map to read (the metric's name).
    pub map: String,
    /// Bytes a key must have: the labels' sizes and padding; `None` for a metric with
    /// no labels, whose entries, whatever their keys, sum into one series.
    pub key_size: Option<usize>,
    /// The metric's config path, for errors found later (key size against the map).
    pub at: String,
    /// The last label is the reference exporter's per-CPU `cpu` label (2 bytes, `uint`):
    /// on a per-CPU map it is not in the key; the reader appends each CPU to it.
    pub cpu_label: bool,
    name: String,
    help: String,
    labels: Vec<Label>,
    sorted_names: Vec<String>,
    order: Vec<usize>,
    /// Histograms: the bucket key's place and the bucket layout.
    bucket: Option<(Span, Layout, f64)>,
    /// Whether the buckets are also served as native schema-0 buckets (every bound a
    /// power of two).
    native: bool,
    /// Where the key holds a cgroup id (an 8-byte label decoded by `cgroup` or a
    /// `kube_*` cgroup decoder): entries of deleted pods can be found and removed.
    cgroup: Option<Span>,
    /// The node label's value, on tables with pod labels (the last label name).
    node: Option<String>,
    malformed: AtomicU64,
}

/// Decoders that read a cgroup id.
const CGROUP_DECODERS: &[&str] = &["cgroup", "kube_namespace", "kube_pod", "kube_container"];

/// A table's series, decoded from one read of its map.
#[derive(Default)]
pub struct Rows(BTreeMap<Vec<String>, Row>);

/// One decoded series of a table.
#[derive(Debug)]
pub struct TableEntry<'a> {
    /// (label name, value) in exposition order.
    pub labels: Vec<(&'a str, &'a str)>,
    /// Counter value, or the raw sum for histograms.
    pub value: u64,
    /// Histograms: bounds, per-bucket counts (`+Inf` last), sum in exported units.
    pub histogram: Option<(Vec<f64>, Vec<u64>, f64)>,
}

/// A table's last label that names the CPU of a per-CPU map's value (read per CPU).
fn is_cpu_label(l: &LabelConfig) -> bool {
    l.name == "cpu"
        && l.size == Some(2)
        && !l.reuse
        && l.decoders.iter().map(|d| d.name.as_str()).eq(["uint"])
}

/// A map-based histogram's bucket key (its last label), checked: its span, the bucket
/// layout and multiplier, and whether the buckets serve as native ones.
fn bucket_key(
    m: &MetricConfig,
    spans: &[Span],
    at: &str,
) -> Result<((Span, Layout, f64), bool), ConfigError> {
    let layout = buckets::layout(m, at)?;
    let Some((last, rest)) = spans.split_last() else {
        return Err(invalid(
            format!("{at}.labels"),
            "a map-based histogram's last label is its bucket key; there is none",
        ));
    };
    if !matches!(last.size, 1 | 2 | 4 | 8) {
        return Err(invalid(
            format!("{at}.labels[{}].size", rest.len()),
            format!(
                "the bucket key is an unsigned integer of 1, 2, 4 or 8 bytes, not {}",
                last.size
            ),
        ));
    }
    if layout.keys.iter().any(|k| *k < 0.0 || k.fract() != 0.0) {
        return Err(invalid(
            format!("{at}.bucket_keys"),
            "map bucket keys are non-negative integers",
        ));
    }
    let n = &m.native_histogram;
    if n.schema.is_some() || n.zero_threshold.is_some() || n.max_buckets.is_some() {
        return Err(invalid(
            format!("{at}.native_histogram"),
            "map-based histograms serve power-of-two buckets as native schema 0; only `enabled` applies",
        ));
    }
    let native = n.enabled
        && layout
            .bounds
            .iter()
            .all(|&b| crate::native::power_of_two(b));
    Ok(((*last, layout, m.bucket_multiplier.unwrap_or(1.0)), native))
}

/// One series being summed from map entries.
#[derive(Default)]
struct Row {
    counts: Vec<u64>,
    sum: u64,
}

impl TablePlan {
    pub(crate) fn compile(
        m: &MetricConfig,
        histogram: bool,
        registry: &Registry,
        ctx: &Context,
        at: &str,
    ) -> Result<Self, ConfigError> {
        if m.value.is_some() {
            return Err(invalid(
                format!("{at}.value"),
                "map-based metrics take their value from the map; value is for ring metrics",
            ));
        }
        let spans = key_layout(&m.labels, at)?;
        let key_size = m
            .labels
            .iter()
            .zip(&spans)
            .map(|(l, s)| s.offset + s.size + l.padding)
            .max();
        let (bucket, native, label_configs) = if histogram {
            let (bucket, native) = bucket_key(m, &spans, at)?;
            (Some(bucket), native, &m.labels[..spans.len() - 1])
        } else {
            (None, false, &m.labels[..])
        };
        let labels = label_configs
            .iter()
            .zip(&spans)
            .enumerate()
            .map(|(i, (l, span))| {
                Ok(Label {
                    span: *span,
                    chain: Chain::build(&l.decoders, span.size, &format!("{at}.labels[{i}]"), ctx)?,
                    errors: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let cgroup = label_configs
            .iter()
            .zip(&spans)
            .find(|(l, span)| {
                span.size == 8
                    && l.decoders
                        .iter()
                        .any(|d| CGROUP_DECODERS.contains(&d.name.as_str()))
            })
            .map(|(_, span)| *span);
        let mut names: Vec<String> = label_configs.iter().map(|l| l.name.clone()).collect();
        // Pod labels come with the node's, as on event-stream series.
        let pod_labelled = label_configs
            .iter()
            .any(|l| l.decoders.iter().any(|d| d.name.starts_with("kube_")));
        let node = pod_labelled.then(|| {
            let (label, value) = registry.node_label();
            names.push(label.to_string());
            value.to_string()
        });
        let name = registry
            .claim(&m.name, &names)
            .map_err(|source| ConfigError::Name {
                at: format!("{at}.name"),
                source,
            })?;
        let order = sorted_order(&names);
        Ok(Self {
            map: m.name.clone(),
            key_size,
            at: at.to_string(),
            cpu_label: !histogram && m.labels.last().is_some_and(is_cpu_label),
            name,
            help: m.help.clone(),
            labels,
            sorted_names: order.iter().map(|&i| names[i].clone()).collect(),
            order,
            bucket,
            native,
            cgroup,
            node,
            malformed: AtomicU64::new(0),
        })
    }

    /// The cgroup id in an entry's key, for tables keyed by cgroup.
    pub fn cgroup_id(&self, key: &[u8]) -> Option<u64> {
        let span = self.cgroup?;
        let bytes = key.get(span.offset..span.offset + 8)?;
        Some(u64::from_ne_bytes(bytes.try_into().unwrap()))
    }

    /// Decodes the map's entries (key bytes, value) into series, summing entries that
    /// decode to the same labels.
    pub fn rows(&self, entries: &[(Vec<u8>, u64)]) -> Rows {
        let buckets = self.bucket.as_ref().map_or(0, |(_, l, _)| l.keys.len() + 1);
        let mut rows: BTreeMap<Vec<String>, Row> = BTreeMap::new();
        'entry: for (key, value) in entries {
            if self.key_size.is_some_and(|size| key.len() != size) {
                self.malformed.fetch_add(1, Relaxed);
                continue;
            }
            let mut values = Vec::with_capacity(self.labels.len() + 1);
            for l in &self.labels {
                match l.chain.decode(l.span.bytes(key)) {
                    Ok(v) => values.push(v),
                    Err(DecodeError::Dropped) => continue 'entry,
                    Err(DecodeError::Invalid(_)) => {
                        l.errors.fetch_add(1, Relaxed);
                        continue 'entry;
                    }
                }
            }
            values.extend(self.node.clone());
            let sorted: Vec<String> = self
                .order
                .iter()
                .map(|&i| std::mem::take(&mut values[i]))
                .collect();
            let row = rows.entry(sorted).or_insert_with(|| Row {
                counts: vec![0; buckets],
                sum: 0,
            });
            match &self.bucket {
                None => row.sum += value,
                Some((span, layout, _)) => {
                    let k = span.uint(key) as f64;
                    if k == layout.sum_key() {
                        row.sum += value;
                    } else {
                        // Keys below the first bucket count there; above the last, in +Inf.
                        let i = layout.keys.partition_point(|&b| b < k);
                        row.counts[i] += value;
                    }
                }
            }
        }
        Rows(rows)
    }

    /// Writes the exposition of decoded rows.
    pub fn render(&self, rows: &Rows, out: &mut PageWriter) {
        if rows.0.is_empty() {
            return;
        }
        let (kind, bounds) = match &self.bucket {
            Some((_, l, _)) => (Kind::Histogram, &l.bounds[..]),
            None => (Kind::Counter, &[][..]),
        };
        out.family(&self.name, &self.help, kind, bounds);
        let mut native = Vec::new();
        for (values, row) in &rows.0 {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let Some((_, _, mult)) = &self.bucket else {
                out.value(&self.sorted_names, &values, row.sum as f64);
                continue;
            };
            let native = (self.native && out.native())
                .then(|| crate::native::from_exp2_bounds(bounds, &row.counts, &mut native))
                .flatten()
                .map(|()| Native {
                    schema: 0,
                    zero_threshold: 0.0,
                    zero_count: 0,
                    buckets: &native,
                });
            out.histogram(
                &self.sorted_names,
                &values,
                &row.counts,
                buckets::scaled(row.sum, *mult),
                native,
            );
        }
    }

    /// The rows as JSON-ready entries for the event sink: labels, and the value
    /// (counters) or bucket bounds with counts, sum and count (histograms).
    pub fn entries<'a>(&'a self, rows: &'a Rows) -> impl Iterator<Item = TableEntry<'a>> {
        rows.0.iter().map(move |(values, row)| TableEntry {
            labels: self
                .sorted_names
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(String::as_str))
                .collect(),
            value: row.sum,
            histogram: self.bucket.as_ref().map(|(_, layout, mult)| {
                (
                    layout.bounds.clone(),
                    row.counts.clone(),
                    buckets::scaled(row.sum, *mult),
                )
            }),
        })
    }

    /// Exported metric name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decode errors so far, per label name (the bucket label excluded).
    pub fn decode_errors(&self) -> Vec<(&str, u64)> {
        let names = self
            .order
            .iter()
            .zip(&self.sorted_names)
            .map(|(&i, n)| (i, n.as_str()));
        let mut out: Vec<(usize, &str)> = names.collect();
        out.sort();
        // The node label (after the config's) has no decoder.
        out.into_iter()
            .filter_map(|(i, n)| Some((n, self.labels.get(i)?.errors.load(Relaxed))))
            .collect()
    }

    /// Entries whose key size did not match the labels.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Relaxed)
    }
}
