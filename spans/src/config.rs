//! The `tracing:` section of a program config, in the reference exporter's format.
//!
//! ```yaml
//! tracing:
//!   spans:
//!     - name: exec                # span name, unless a `span_name` label gives one
//!       ringbuf: exec_spans       # BPF_MAP_TYPE_RINGBUF map the records come from
//!       service: exec-trace       # resource service.name (default: $OTEL_SERVICE_NAME, else ebpf_exporter)
//!       cgroup_field: cgroup_id   # ours: the 8-byte label whose cgroup id gives the pod
//!       labels:                   # the record, in order, as table labels lay out keys
//!         - { name: trace_id, size: 16, decoders: [{ name: hex }] }
//!         - { name: span_duration_ns, size: 8, decoders: [{ name: uint }] }
//! ```

use aggregate::config::LabelConfig;
use serde::Deserialize;

/// Spans read from ring buffers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// One per ring buffer of span records.
    #[serde(default)]
    pub spans: Vec<SpanConfig>,
}

/// One ring buffer's records as spans.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanConfig {
    /// Span name (default: the ring buffer's name); a `span_name` label overrides it.
    #[serde(default)]
    pub name: String,
    /// The ring buffer map.
    pub ringbuf: String,
    /// The resource's `service.name`.
    #[serde(default)]
    pub service: Option<String>,
    /// The record's fields, in order: `size` bytes each, then `padding`.
    #[serde(default)]
    pub labels: Vec<LabelConfig>,
    /// The 8-byte label holding `bpf_get_current_cgroup_id()`: spans then carry the
    /// pod's `k8s.*` attributes (an extension; the reference format has none).
    #[serde(default)]
    pub cgroup_field: Option<String>,
}
