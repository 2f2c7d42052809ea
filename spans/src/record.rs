//! One record → one span, with the reference exporter's semantics: reserved labels
//! give ids, times and the name, every other label is a string attribute, and the
//! config's name is added as `ebpf_exporter.config`.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use aggregate::decoder::DecodeError;
use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue, StringValue,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData};
use rustc_hash::FxHashMap;

use crate::plan::{Role, SpanPlan};

/// Why a record made no span.
#[derive(Debug, thiserror::Error)]
pub enum SpanError {
    /// Shorter than the labels add up to.
    #[error("a record of {got} bytes; the labels take {want}")]
    Short {
        /// Its length.
        got: usize,
        /// What the labels add up to.
        want: usize,
    },
    /// A label's decoders failed.
    #[error("label {label}: {source}")]
    Decode {
        /// The label.
        label: String,
        #[source]
        source: DecodeError,
    },
    /// A reserved label's value is not what it must be (hex ids, decimal nanoseconds).
    #[error("label {label}: {value:?} is not {what}")]
    Parse {
        /// The label.
        label: String,
        /// Its decoded value.
        value: String,
        /// What it should have been.
        what: &'static str,
    },
}

/// Converts `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) to wall-clock time as the reference
/// exporter does: now, minus how long ago on the monotonic clock. Read once per batch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: SystemTime,
    monotonic_ns: u64,
}

impl Clock {
    /// The clocks now.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to write to.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Self {
            wall: SystemTime::now(),
            monotonic_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    /// The wall-clock time of `monotonic_ns`.
    pub fn wall(&self, monotonic_ns: u64) -> SystemTime {
        if monotonic_ns <= self.monotonic_ns {
            self.wall - Duration::from_nanos(self.monotonic_ns - monotonic_ns)
        } else {
            self.wall + Duration::from_nanos(monotonic_ns - self.monotonic_ns)
        }
    }
}

/// Decoded attribute values by their bytes, per stream and field: attributes repeat
/// (a device, an operation), and some decoders read files (`majorminor`, `cgroup`).
/// Bounded: a field's values are forgotten together beyond [`MEMO`].
#[derive(Debug, Default)]
pub(crate) struct Memo(FxHashMap<(u32, usize), Values>);

/// One field's values by their bytes.
type Values = FxHashMap<Box<[u8]>, StringValue>;

/// Values remembered per field.
const MEMO: usize = 1024;

impl Memo {
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    fn get(
        &mut self,
        key: (u32, usize),
        bytes: &[u8],
        decode: impl FnOnce() -> Result<String, DecodeError>,
    ) -> Result<StringValue, DecodeError> {
        let values = self.0.entry(key).or_default();
        if let Some(v) = values.get(bytes) {
            return Ok(v.clone());
        }
        let v = StringValue::from(std::sync::Arc::<str>::from(decode()?));
        if values.len() >= MEMO {
            values.clear();
        }
        values.insert(bytes.into(), v.clone());
        Ok(v)
    }
}

/// The scope every span names.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("kube-ebpf-exporter")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

fn parse<T>(
    label: &str,
    value: &str,
    what: &'static str,
    f: impl FnOnce(&str) -> Option<T>,
) -> Result<T, SpanError> {
    f(value).ok_or_else(|| SpanError::Parse {
        label: label.into(),
        value: value.into(),
        what,
    })
}

/// All zeros: an id the kernel left unset.
fn unset(hex: &str) -> bool {
    hex.bytes().all(|b| b == b'0')
}

/// What one batch's spans share.
pub(crate) struct Context<'a> {
    pub plan: &'a SpanPlan,
    /// The stream's id (its memo's key).
    pub stream: u32,
    pub clock: Clock,
    pub scope: &'a InstrumentationScope,
}

/// The span of `record`, or `None` when a decoder drops it (a `regexp` without a
/// match). `extra` attributes (the pod's) are added after the labels'.
pub(crate) fn span(
    cx: &Context,
    memo: &mut Memo,
    record: &[u8],
    extra: &[KeyValue],
) -> Result<Option<SpanData>, SpanError> {
    let (plan, clock) = (cx.plan, &cx.clock);
    let want = plan.stream.record_size;
    if record.len() < want {
        return Err(SpanError::Short {
            got: record.len(),
            want,
        });
    }
    let ids = RandomIdGenerator::default();
    let (mut trace_id, mut span_id, mut parent) =
        (TraceId::INVALID, SpanId::INVALID, SpanId::INVALID);
    let mut start = None;
    let mut duration = 0;
    let mut name: Cow<'static, str> = Cow::Owned(plan.stream.traced.clone().unwrap_or_default());
    let mut attributes = Vec::with_capacity(plan.roles.len() + extra.len() + 1);
    for (i, (field, role)) in plan.stream.fields().iter().zip(&plan.roles).enumerate() {
        let label = field.name.as_str();
        let decode = || field.label(record).map_or(Ok(String::new()), |(_, v)| v);
        let decoded = match role {
            Role::Attribute(key) => memo
                .get((cx.stream, i), field.bytes(record), decode)
                .map(|v| attributes.push(KeyValue::new(key.clone(), v)))
                .map(|()| None),
            _ => decode().map(Some),
        };
        let value = match decoded {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(DecodeError::Dropped) => return Ok(None),
            Err(source) => {
                return Err(SpanError::Decode {
                    label: label.into(),
                    source,
                })
            }
        };
        let id = |v: &str| TraceId::from_hex(v).ok();
        let span_id_of = |v: &str| SpanId::from_hex(v).ok();
        let nanos = |v: &str| v.parse::<u64>().ok();
        match role {
            Role::TraceId => trace_id = parse(label, &value, "a 16-byte hex trace id", id)?,
            Role::SpanId if !unset(&value) => {
                span_id = parse(label, &value, "an 8-byte hex span id", span_id_of)?
            }
            Role::ParentSpanId if !unset(&value) => {
                parent = parse(label, &value, "an 8-byte hex span id", span_id_of)?
            }
            Role::SpanId | Role::ParentSpanId => {}
            Role::Start => start = Some(clock.wall(parse(label, &value, "nanoseconds", nanos)?)),
            Role::Duration => duration = parse(label, &value, "nanoseconds", nanos)?,
            Role::Name => name = Cow::Owned(value),
            Role::Attribute(_) => {}
        }
    }
    attributes.push(KeyValue::new("ebpf_exporter.config", plan.config.clone()));
    attributes.extend_from_slice(extra);
    // As the reference exporter's SDK does: no trace id, a new trace (and span id);
    // no span id, a new one in the given trace.
    if trace_id == TraceId::INVALID {
        trace_id = ids.new_trace_id();
        span_id = SpanId::INVALID;
    }
    if span_id == SpanId::INVALID {
        span_id = ids.new_span_id();
    }
    let start = start.unwrap_or_else(SystemTime::now);
    let end = start + Duration::from_nanos(duration);
    Ok(Some(sampled(
        (trace_id, span_id, parent),
        name,
        (start, end),
        attributes,
        cx.scope.clone(),
    )))
}

/// A sampled, internal span: `ids` are its trace, its own and its parent's (invalid for
/// a root).
pub(crate) fn sampled(
    (trace_id, span_id, parent): (TraceId, SpanId, SpanId),
    name: Cow<'static, str>,
    (start, end): (SystemTime, SystemTime),
    attributes: Vec<KeyValue>,
    scope: InstrumentationScope,
) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name,
        start_time: start,
        end_time: end,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: Status::Unset,
        instrumentation_scope: scope,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TracingConfig;
    use aggregate::decoder::Context as Decoders;

    fn plan(extra: &str) -> SpanPlan {
        let yaml = format!(
            "
spans:
  - name: exec
    ringbuf: exec_spans
    labels:
      - {{ name: trace_id, size: 16, decoders: [{{ name: hex }}] }}
      - {{ name: parent_span_id, size: 8, decoders: [{{ name: hex }}] }}
      - {{ name: span_id, size: 8, decoders: [{{ name: hex }}] }}
      - {{ name: span_monotonic_timestamp_ns, size: 8, decoders: [{{ name: uint }}] }}
      - {{ name: span_duration_ns, size: 8, decoders: [{{ name: uint }}] }}
      {extra}"
        );
        let t: TracingConfig = serde_yaml_ng::from_str(&yaml).unwrap();
        SpanPlan::compile(&t.spans[0], "exec-trace", &Decoders::default(), "t").unwrap()
    }

    fn cx(plan: &SpanPlan, clock: Clock) -> Context<'_> {
        static SCOPE: std::sync::OnceLock<InstrumentationScope> = std::sync::OnceLock::new();
        Context {
            plan,
            stream: 0,
            clock,
            scope: SCOPE.get_or_init(scope),
        }
    }

    fn record(
        trace: [u8; 16],
        parent: u64,
        span: u64,
        start: u64,
        duration: u64,
        tail: &[u8],
    ) -> Vec<u8> {
        let mut r = trace.to_vec();
        for v in [parent, span, start, duration] {
            r.extend_from_slice(&v.to_be_bytes()[..]);
        }
        r[32..40].copy_from_slice(&start.to_ne_bytes());
        r[40..48].copy_from_slice(&duration.to_ne_bytes());
        r.extend_from_slice(tail);
        r
    }

    #[test]
    fn reserved_labels_make_ids_times_and_name() {
        let p = plan("- { name: span_name, size: 8, decoders: [{ name: string }] }\n      - { name: exe, size: 4, decoders: [{ name: string }] }");
        let clock = Clock::now();
        let mut trace = [0u8; 16];
        trace[15] = 7;
        let r = record(
            trace,
            0x11,
            0x22,
            clock.monotonic_ns - 1_000_000_000,
            2_500,
            b"bash\0\0\0\0sh\0\0",
        );
        let pod = [KeyValue::new("k8s.pod.name", "p")];
        let s = span(&cx(&p, clock), &mut Memo::default(), &r, &pod)
            .unwrap()
            .unwrap();
        assert_eq!(s.name, "bash");
        assert_eq!(s.span_context.trace_id(), TraceId::from(7u128));
        assert_eq!(s.parent_span_id, SpanId::from(0x11u64));
        assert_eq!(s.span_context.span_id(), SpanId::from(0x22u64));
        assert_eq!(
            s.start_time,
            clock.wall - Duration::from_secs(1),
            "a second ago on the monotonic clock"
        );
        assert_eq!(
            s.end_time.duration_since(s.start_time).unwrap(),
            Duration::from_nanos(2_500)
        );
        let attrs: Vec<String> = s
            .attributes
            .iter()
            .map(|kv| format!("{}={}", kv.key, kv.value))
            .collect();
        assert_eq!(
            attrs,
            [
                "exe=sh",
                "ebpf_exporter.config=exec-trace",
                "k8s.pod.name=p"
            ]
        );
    }

    #[test]
    fn unset_ids_are_made_up_and_a_zero_parent_is_a_root() {
        let p = plan("");
        let clock = Clock::now();
        let s = span(
            &cx(&p, clock),
            &mut Memo::default(),
            &record([0; 16], 0, 0, 5, 0, b""),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_ne!(s.span_context.trace_id(), TraceId::INVALID);
        assert_ne!(s.span_context.span_id(), SpanId::INVALID);
        assert_eq!(s.parent_span_id, SpanId::INVALID);
        assert_eq!(s.name, "exec", "the config's name without span_name");
        let mut trace = [0u8; 16];
        trace[0] = 1;
        let s = span(
            &cx(&p, clock),
            &mut Memo::default(),
            &record(trace, 0, 0, 5, 0, b""),
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.span_context.trace_id().to_bytes(),
            trace,
            "a given trace id is kept"
        );
    }

    #[test]
    fn short_records_and_filtered_ones_make_no_span() {
        let p = plan("- { name: exe, size: 4, decoders: [{ name: string }, { name: regexp, regexps: ['^sh$'] }] }");
        let clock = Clock::now();
        let mut memo = Memo::default();
        let err = span(&cx(&p, clock), &mut memo, &[0; 10], &[]).unwrap_err();
        assert_eq!(err.to_string(), "a record of 10 bytes; the labels take 52");
        let r = record([1; 16], 0, 0, 5, 0, b"ls\0\0");
        assert!(span(&cx(&p, clock), &mut memo, &r, &[]).unwrap().is_none());
    }
}
