//! Config of a program's metrics: ring record layouts, and metrics read from rings or maps.
//!
//! ```yaml
//! rings:
//!   - name: events              # BPF_MAP_TYPE_RINGBUF map in the object
//!     cgroup_field: cgroup_id   # pod labels come from this field
//!     fields:                   # the C record, in order, padding included
//!       - { name: cgroup_id, size: 8 }
//!       - { name: latency_ns, size: 8 }
//! metrics:
//!   counters:                   # a table: the map `syscalls_total` read at scrape
//!     - name: syscalls_total
//!       help: Syscalls by id
//!       labels:
//!         - { name: syscall, size: 8, decoders: [{ name: uint }, { name: syscall }] }
//!   histograms:
//!     - name: tcp_connect_latency_seconds
//!       help: TCP connect latency
//!       ring: events
//!       value: { field: latency_ns, scale: 1e-9 }
//!       bucket_type: exp2
//!       bucket_min: 0
//!       bucket_max: 26
//!       bucket_multiplier: 1e-06
//!       labels:
//!         - { name: subnet, field: subnet, decoders: [{ name: inet_subnet }] }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// A ring buffer and the layout of its records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingConfig {
    /// Name of the ring buffer map.
    pub name: String,
    /// Record fields in order, each with its size in bytes (explicit padding included).
    pub fields: Vec<FieldConfig>,
    /// The 8-byte field holding `bpf_get_current_cgroup_id()`, which gives every series
    /// its pod labels; without it, pod labels are empty.
    #[serde(default)]
    pub cgroup_field: Option<String>,
    /// The 4-byte field holding the process id (`bpf_get_current_pid_tgid() >> 32`):
    /// on hosts whose containers live only in cgroup v1 hierarchies, where the cgroup
    /// id is the v2 root's, records are attributed through /proc/<pid>/cgroup.
    #[serde(default)]
    pub pid_field: Option<String>,
}

/// One field of a record.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Field name, referred to by metrics.
    pub name: String,
    /// Size in bytes.
    pub size: usize,
}

/// Metrics of one program.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Counters: events counted, or a field summed.
    #[serde(default)]
    pub counters: Vec<MetricConfig>,
    /// Histograms of a field's value.
    #[serde(default)]
    pub histograms: Vec<MetricConfig>,
}

/// One metric: from a ring buffer's records (`ring` set) or, as cloudflare/ebpf_exporter
/// reads them, from the BPF map named like the metric (a "table"), read at scrape time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Name, exported with the `ebpf_exporter_` prefix; also the table's map name.
    pub name: String,
    /// Help text.
    pub help: String,
    /// Ring whose records feed this metric; without it, the map named `name` is read.
    #[serde(default)]
    pub ring: Option<String>,
    /// Table mode: the map is a perf event array whose events are keys to count.
    #[serde(default)]
    pub perf_event_array: bool,
    /// Accepted for compatibility: perf event array counts are kept continuously.
    #[serde(default)]
    pub flush_interval: Option<String>,
    /// Rings: the field observed (histograms) or summed (counters; absent counts events).
    #[serde(default)]
    pub value: Option<ValueConfig>,
    /// Labels. Rings: from record fields (`field`); pod labels are added to every
    /// series. Tables: from the map key, laid out by `size` and `padding` in order; a
    /// histogram's last label is the bucket key.
    #[serde(default)]
    pub labels: Vec<LabelConfig>,
    /// Histogram bucket layout.
    #[serde(default)]
    pub bucket_type: Option<BucketType>,
    /// First bucket key.
    #[serde(default)]
    pub bucket_min: Option<i32>,
    /// Last bucket key, inclusive.
    #[serde(default)]
    pub bucket_max: Option<i32>,
    /// Unit of a bucket bound.
    #[serde(default)]
    pub bucket_multiplier: Option<f64>,
    /// Bucket keys of `fixed` histograms, in multiplier units.
    #[serde(default)]
    pub bucket_keys: Vec<f64>,
    /// Rings: most series kept (default `pipeline.max_series`); events of further label
    /// sets count in one series labelled `__overflow__`.
    #[serde(default)]
    pub max_series: Option<usize>,
    /// Histograms: native (sparse exponential) buckets served beside the classic ones
    /// to scrapers that ask for the protobuf format; on by default for rings, and for
    /// tables whose bucket bounds are all powers of two.
    #[serde(default)]
    pub native_histogram: NativeHistogramConfig,
}

/// Native histogram settings of one metric (rings; tables take only `enabled`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeHistogramConfig {
    /// Whether native buckets are kept and served.
    pub enabled: bool,
    /// Resolution: bucket bounds grow by `2^(2^-schema)`; default 3, about 9 % per
    /// bucket.
    pub schema: Option<i8>,
    /// Values at or below it count in the zero bucket; default 2^-128 (the Go
    /// client's), so only zero itself.
    pub zero_threshold: Option<f64>,
    /// Most buckets per series, default 160; above it the schema is lowered, merging
    /// bucket pairs.
    pub max_buckets: Option<usize>,
}

impl Default for NativeHistogramConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            schema: None,
            zero_threshold: None,
            max_buckets: None,
        }
    }
}

/// Which field holds the value, and its unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueConfig {
    /// Field name (an unsigned integer of 1, 2, 4 or 8 bytes).
    pub field: String,
    /// Factor from the field's unit to the exported unit (`1e-9`: ns to seconds).
    #[serde(default = "one")]
    pub scale: f64,
}

const fn one() -> f64 {
    1.0
}

/// A label.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// Label name.
    pub name: String,
    /// Rings: the record field it is read from.
    #[serde(default)]
    pub field: Option<String>,
    /// Tables: bytes of the key it takes.
    #[serde(default)]
    pub size: Option<usize>,
    /// Tables: bytes skipped after it (struct alignment).
    #[serde(default)]
    pub padding: usize,
    /// Tables: decode the previous label's bytes again instead of the next ones.
    #[serde(default)]
    pub reuse: bool,
    /// Decoders applied in order to the bytes (default: `uint`).
    #[serde(default)]
    pub decoders: Vec<DecoderConfig>,
}

/// One decoder in a label's chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Decoder name (see the README for the list).
    pub name: String,
    /// `static_map`: input value → label value.
    #[serde(default)]
    pub static_map: BTreeMap<String, String>,
    /// `static_map`: keep inputs missing from the map as they are (else `unknown:<in>`).
    #[serde(default)]
    pub allow_unknown: bool,
    /// `regexp`: patterns; a value matching none drops the label set.
    #[serde(default)]
    pub regexps: Vec<String>,
}

impl DecoderConfig {
    /// A decoder with no settings.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            static_map: BTreeMap::new(),
            allow_unknown: false,
            regexps: Vec::new(),
        }
    }
}

/// Histogram bucket layouts, as cloudflare/ebpf_exporter names them. Key `i` (the
/// kernel's bucket index in tables) has the upper bound:
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketType {
    /// `multiplier * 2^i`, i in min..=max.
    Exp2,
    /// 0 for key 0, else `multiplier * 2^(i-1)`: exp2 that can hold zero.
    Exp2zero,
    /// `multiplier * i`, i in min..=max.
    Linear,
    /// `multiplier * k` for each k of `bucket_keys`.
    Fixed,
}
