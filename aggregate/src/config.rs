//! Config of event-stream metrics: ring record layouts and the metrics read from them.
//!
//! ```yaml
//! rings:
//!   - name: events              # BPF_MAP_TYPE_RINGBUF map in the object
//!     cgroup_field: cgroup_id   # pod labels come from this field
//!     fields:                   # the C record, in order, padding included
//!       - { name: cgroup_id, size: 8 }
//!       - { name: latency_ns, size: 8 }
//! metrics:
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

/// One metric.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Name, exported with the `ebpf_exporter_` prefix.
    pub name: String,
    /// Help text.
    pub help: String,
    /// Ring whose records feed this metric.
    pub ring: String,
    /// The field observed (histograms) or summed (counters; absent counts events).
    #[serde(default)]
    pub value: Option<ValueConfig>,
    /// Labels from record fields; pod labels are added to every metric.
    #[serde(default)]
    pub labels: Vec<LabelConfig>,
    /// Histogram bucket layout.
    #[serde(default)]
    pub bucket_type: Option<BucketType>,
    /// First bucket (exp2: power of two; linear: multiple).
    #[serde(default)]
    pub bucket_min: Option<i32>,
    /// Last bucket, inclusive.
    #[serde(default)]
    pub bucket_max: Option<i32>,
    /// Unit of a bucket bound.
    #[serde(default)]
    pub bucket_multiplier: Option<f64>,
    /// Explicit bounds for `fixed` buckets, in multiplier units.
    #[serde(default)]
    pub bucket_keys: Vec<f64>,
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

/// A label read from a record field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// Label name.
    pub name: String,
    /// Field it is read from.
    pub field: String,
    /// Decoders applied in order to the field's bytes (default: `uint`).
    #[serde(default)]
    pub decoders: Vec<DecoderConfig>,
}

/// One decoder in a label's chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Decoder name (`uint`, `hex`, `string`, `inet_subnet`, `static_map`).
    pub name: String,
    /// `static_map`: input value → label value.
    #[serde(default)]
    pub static_map: BTreeMap<String, String>,
    /// `static_map`: keep inputs missing from the map instead of dropping them.
    #[serde(default)]
    pub allow_unknown: bool,
}

/// Histogram bucket layouts, as cloudflare/ebpf_exporter names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketType {
    /// Bounds `multiplier * 2^i`, i in min..=max.
    Exp2,
    /// A first bound of 0, then as `exp2`.
    Exp2zero,
    /// Bounds `multiplier * i`, i in min..=max.
    Linear,
    /// Bounds `multiplier * k` for each of `bucket_keys`.
    Fixed,
}
