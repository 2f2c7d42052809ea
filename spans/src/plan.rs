//! Compiles a `tracing.spans[]` config: the layout of its records (a stream plan, so
//! ingest and enrich treat them like any ring's) and what each label is to the span.

use std::sync::Arc;

use aggregate::{decoder::Context, ConfigError, StreamPlan};
use opentelemetry::Key;

use crate::config::SpanConfig;

/// What a label is to the span, by its name (the reference exporter's reserved names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `trace_id`: 16 bytes, as hex.
    TraceId,
    /// `parent_span_id`: 8 bytes, as hex; zero for a root span.
    ParentSpanId,
    /// `span_id`: 8 bytes, as hex; zero for one made up here.
    SpanId,
    /// `span_monotonic_timestamp_ns`: when it started, on CLOCK_MONOTONIC.
    Start,
    /// `span_duration_ns`.
    Duration,
    /// `span_name`: the span's name instead of the config's.
    Name,
    /// Anything else: a string attribute of that name.
    Attribute(Key),
}

impl Role {
    /// The role of a label named `label`.
    pub fn of(label: &str) -> Self {
        match label {
            "trace_id" => Self::TraceId,
            "parent_span_id" => Self::ParentSpanId,
            "span_id" => Self::SpanId,
            "span_monotonic_timestamp_ns" => Self::Start,
            "span_duration_ns" => Self::Duration,
            "span_name" => Self::Name,
            other => Self::Attribute(Key::from(other.to_string())),
        }
    }

    /// The size the role's bytes must have, if it has one.
    fn size(&self) -> Option<usize> {
        match self {
            Self::TraceId => Some(16),
            Self::ParentSpanId | Self::SpanId | Self::Start | Self::Duration => Some(8),
            Self::Name | Self::Attribute(_) => None,
        }
    }
}

/// Everything the span stage needs to turn one ring's records into spans.
#[derive(Debug)]
pub struct SpanPlan {
    /// The config (program) it belongs to: attribute `ebpf_exporter.config`.
    pub config: String,
    /// The resource's `service.name`.
    pub service: String,
    /// Record layout and label decoders, shared with ingest and enrich.
    pub stream: Arc<StreamPlan>,
    /// Per field of `stream`, its role.
    pub(crate) roles: Vec<Role>,
}

/// Service name when a span config names none: the SDKs' variable, else ours.
pub(crate) fn default_service() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ebpf_exporter".into())
}

impl SpanPlan {
    /// Compiles span config `c` of config `config`; `at` is its path (`file: tracing.spans[0]`).
    ///
    /// # Errors
    /// A label without a size, an unknown decoder, a reserved label of the wrong size,
    /// or a `cgroup_field` that names no 8-byte label; each naming the key at fault.
    pub fn compile(
        c: &SpanConfig,
        config: &str,
        ctx: &Context,
        at: &str,
    ) -> Result<Self, ConfigError> {
        let name = if c.name.is_empty() {
            &c.ringbuf
        } else {
            &c.name
        };
        let stream = StreamPlan::compile_traced(
            &c.ringbuf,
            name,
            &c.labels,
            c.cgroup_field.as_deref(),
            ctx,
            at,
        )?;
        let mut roles = Vec::with_capacity(c.labels.len());
        for (li, l) in c.labels.iter().enumerate() {
            let role = Role::of(&l.name);
            let size = l.size.unwrap_or(0);
            if let Some(want) = role.size().filter(|&want| want != size) {
                return Err(ConfigError::Invalid {
                    at: format!("{at}.labels[{li}].size"),
                    reason: format!("{} is {want} bytes, not {size}", l.name),
                });
            }
            roles.push(role);
        }
        Ok(Self {
            config: config.to_string(),
            service: c
                .service
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(default_service),
            stream: Arc::new(stream),
            roles,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TracingConfig;

    fn compile(yaml: &str) -> Result<SpanPlan, String> {
        let t: TracingConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        SpanPlan::compile(
            &t.spans[0],
            "cfg",
            &Context::default(),
            "cfg.yaml: tracing.spans[0]",
        )
        .map_err(|e| e.to_string())
    }

    const BASE: &str = "
spans:
  - ringbuf: exec_spans
    labels:
      - { name: trace_id, size: 16, decoders: [{ name: hex }] }
      - { name: parent_span_id, size: 8, decoders: [{ name: hex }] }
      - { name: span_id, size: 8, decoders: [{ name: hex }] }
      - { name: span_monotonic_timestamp_ns, size: 8, decoders: [{ name: uint }] }
      - { name: span_duration_ns, size: 8, decoders: [{ name: uint }] }
      - { name: cgroup_id, size: 8, decoders: [{ name: uint }] }
      - { name: exe, size: 64, decoders: [{ name: string }] }
";

    #[test]
    fn reserved_labels_get_their_roles_and_the_rest_are_attributes() {
        let p = compile(BASE).unwrap();
        assert_eq!(
            p.stream.traced.as_deref(),
            Some("exec_spans"),
            "the ring's name when none is given"
        );
        assert_eq!(p.roles[0], Role::TraceId);
        assert_eq!(p.roles[4], Role::Duration);
        assert_eq!(p.roles[6], Role::Attribute(Key::from_static_str("exe")));
        assert_eq!(p.stream.record_size, 16 + 4 * 8 + 8 + 64);
        assert_eq!(p.stream.traced.as_deref(), Some("exec_spans"));
        assert!(!p.stream.has_cgroup());
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        let short = BASE.replace("trace_id, size: 16", "trace_id, size: 8");
        assert_eq!(
            compile(&short).unwrap_err(),
            "cfg.yaml: tracing.spans[0].labels[0].size: trace_id is 16 bytes, not 8"
        );
        let cgroup = BASE.replace("labels:", "cgroup_field: exe\n    labels:");
        assert_eq!(
            compile(&cgroup).unwrap_err(),
            "cfg.yaml: tracing.spans[0].cgroup_field: label \"exe\" is 64 bytes; a cgroup id has 8"
        );
        let missing = BASE.replace("labels:", "cgroup_field: cgroup\n    labels:");
        assert!(compile(&missing)
            .unwrap_err()
            .ends_with("cgroup_field: no label named \"cgroup\""));
        let unsized_ = BASE.replace("{ name: exe, size: 64,", "{ name: exe,");
        assert_eq!(
            compile(&unsized_).unwrap_err(),
            "cfg.yaml: tracing.spans[0].labels[6].size: required: bytes of the record this label takes"
        );
        let field = BASE.replace(
            "{ name: exe, size: 64,",
            "{ name: exe, field: exe, size: 64,",
        );
        assert!(compile(&field)
            .unwrap_err()
            .ends_with("labels[6].field: span labels lay out the record in order: they take size (and padding), not field"));
        assert!(compile(&BASE.replace("ringbuf:", "ring:"))
            .unwrap_err()
            .contains("unknown field `ring`"));
    }

    #[test]
    fn a_cgroup_field_makes_records_carry_their_cgroup() {
        let p = compile(&BASE.replace("labels:", "cgroup_field: cgroup_id\n    labels:")).unwrap();
        assert!(p.stream.has_cgroup());
        let mut record = vec![0u8; p.stream.record_size];
        record[48..56].copy_from_slice(&77u64.to_ne_bytes());
        assert_eq!(p.stream.cgroup_id(&record), 77);
    }
}
