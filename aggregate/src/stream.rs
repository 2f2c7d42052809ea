//! Event streams: a ring's record layout and the metrics read from each record.

use std::sync::Arc;

use crate::{
    buckets,
    config::{FieldConfig, LabelConfig, MetricConfig, MetricsConfig, RingConfig},
    decoder::{Chain, Context},
    invalid,
    native::NativePlan,
    program::metrics,
    registry::{Family, Registry, MAX_KEY},
    ConfigError,
};

/// A field's place in a record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub offset: usize,
    pub size: usize,
}

impl Span {
    /// Reads an unsigned integer of 1, 2, 4 or 8 bytes (checked at compile time).
    #[inline]
    pub fn uint(self, record: &[u8]) -> u64 {
        // Array conversions of checked slices compile to one load each (indexing byte by
        // byte took 28 instructions for a u64: a bounds check per byte).
        fn read<const N: usize>(record: &[u8], at: usize) -> [u8; N] {
            record[at..at + N].try_into().unwrap()
        }
        // Where 8 bytes are there to read, one load and a mask, no branch on the size
        // (little-endian: a field's bytes are the word's low ones).
        #[cfg(target_endian = "little")]
        if let Some(word) = record.get(self.offset..self.offset + 8) {
            let word = u64::from_le_bytes(word.try_into().unwrap());
            return word & (u64::MAX >> (64 - 8 * self.size));
        }
        match self.size {
            1 => u64::from(record[self.offset]),
            2 => u64::from(u16::from_ne_bytes(read(record, self.offset))),
            4 => u64::from(u32::from_ne_bytes(read(record, self.offset))),
            _ => u64::from_ne_bytes(read(record, self.offset)),
        }
    }

    pub fn bytes(self, record: &[u8]) -> &[u8] {
        &record[self.offset..self.offset + self.size]
    }
}

#[derive(Debug)]
pub(crate) struct LabelPlan {
    pub span: Span,
    pub chain: Arc<Chain>,
}

/// A record field as the event tap shows it: raw, as its label, as its scaled value.
#[derive(Debug, Clone)]
pub struct FieldView {
    /// Field name (the label name for perf event array keys).
    pub name: String,
    span: Span,
    /// The first label reading this field: its name and decoders.
    label: Option<(String, Arc<Chain>)>,
    /// The scale of the first metric whose value is this field.
    pub scale: Option<f64>,
}

/// A field's raw value.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    /// Fields of 1, 2, 4 or 8 bytes, as native unsigned integers.
    Uint(u64),
    /// Other sizes, as hex.
    Hex(String),
}

impl FieldView {
    /// The raw value in `record` (which the caller checked is long enough).
    pub fn raw(&self, record: &[u8]) -> Raw {
        match self.span.size {
            1 | 2 | 4 | 8 => Raw::Uint(self.span.uint(record)),
            _ => Raw::Hex(
                self.span
                    .bytes(record)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            ),
        }
    }

    /// The field's bytes in `record` (which the caller checked is long enough).
    pub fn bytes<'r>(&self, record: &'r [u8]) -> &'r [u8] {
        self.span.bytes(record)
    }

    /// The label this field feeds and its decoded value, if a label reads it.
    pub fn label(
        &self,
        record: &[u8],
    ) -> Option<(&str, Result<String, crate::decoder::DecodeError>)> {
        self.label
            .as_ref()
            .map(|(name, chain)| (name.as_str(), chain.decode(self.span.bytes(record))))
    }
}

#[derive(Debug)]
pub(crate) struct MetricPlan {
    pub family: Arc<Family>,
    pub value: Option<Span>,
    /// Histogram bounds in the value field's raw unit; empty for counters.
    pub raw_bounds: buckets::RawBounds,
    pub labels: Vec<LabelPlan>,
}

/// Everything the aggregate stage needs to turn one ring's records into series.
#[derive(Debug)]
pub struct StreamPlan {
    /// Map the records come from: a ring buffer (or, in the -DOUTPUT_PERF build, a
    /// perf event array of the same name), or a perf event array for perf counters.
    pub ring: String,
    /// Bytes a record must have at least.
    pub record_size: usize,
    pub(crate) cgroup: Option<Span>,
    pid: Option<Span>,
    pub(crate) metrics: Vec<MetricPlan>,
    fields: Vec<FieldView>,
    /// Its records are spans (a `tracing:` config), named this unless a `span_name`
    /// label names them: the span stage takes them instead of aggregate workers.
    pub traced: Option<String>,
}

/// Where field `name` is in ring `ring`'s records; an error at `at` naming the fields
/// there are when it has none of that name.
fn field_span(
    fields: &[(String, Span)],
    ring: &str,
    name: &str,
    at: String,
) -> Result<Span, ConfigError> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| {
            let known: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
            invalid(
                at,
                format!(
                    "no field {name:?} in ring {ring:?} (fields: {})",
                    known.join(", ")
                ),
            )
        })
}

/// Every field of a ring's records as the tap shows them: with the first label that
/// reads it (and its decoders) and the first value scale.
fn field_views(
    fields: &[(String, Span)],
    all: &MetricsConfig,
    ring: &str,
    plans: &[MetricPlan],
) -> Vec<FieldView> {
    let mut views: Vec<FieldView> = fields
        .iter()
        .map(|(name, span)| FieldView {
            name: name.clone(),
            span: *span,
            label: None,
            scale: None,
        })
        .collect();
    for (m, plan) in all
        .counters
        .iter()
        .chain(&all.histograms)
        .filter(|m| m.ring.as_deref() == Some(ring))
        .zip(plans)
    {
        for (l, lp) in m.labels.iter().zip(&plan.labels) {
            let view = views
                .iter_mut()
                .find(|v| Some(&v.name) == l.field.as_ref())
                .unwrap();
            view.label
                .get_or_insert_with(|| (l.name.clone(), lp.chain.clone()));
        }
        if let Some(v) = &m.value {
            let view = views.iter_mut().find(|f| f.name == v.field).unwrap();
            view.scale.get_or_insert(v.scale);
        }
    }
    views
}

impl StreamPlan {
    /// Compiles ring `ri` with the metrics that read it.
    pub(crate) fn compile(
        ring: &RingConfig,
        all: &MetricsConfig,
        registry: &Registry,
        ctx: &Context,
        at: &str,
        ri: usize,
    ) -> Result<Self, ConfigError> {
        let ring_at = format!("{at}rings[{ri}]");
        let fields = layout(&ring.fields, &ring_at)?;
        let field = |name: &str, at: String| field_span(&fields, &ring.name, name, at);
        // A field the stage itself reads, of the size it must have.
        let special = |name: &Option<String>, key: &str, size: usize, what: &str| {
            let Some(name) = name else {
                return Ok(None);
            };
            let at = format!("{ring_at}.{key}");
            let s = field(name, at.clone())?;
            if s.size != size {
                return Err(invalid(
                    at,
                    format!("{name:?} is {} bytes; {what} has {size}", s.size),
                ));
            }
            Ok(Some(s))
        };
        let cgroup = special(&ring.cgroup_field, "cgroup_field", 8, "a cgroup id")?;
        let pid = special(&ring.pid_field, "pid_field", 4, "a pid")?;
        let mut plans = Vec::new();
        for (m_at, m, histogram) in
            metrics(all, at).filter(|(_, m, _)| m.ring.as_ref() == Some(&ring.name))
        {
            let labels = m
                .labels
                .iter()
                .enumerate()
                .map(|(li, l)| {
                    let l_at = format!("{m_at}.labels[{li}]");
                    if l.size.is_some() || l.padding != 0 || l.reuse {
                        return Err(invalid(format!("{l_at}.size"), "labels of ring metrics name a field; size, padding and reuse are for tables"));
                    }
                    let name = l.field.as_deref().ok_or_else(|| invalid(format!("{l_at}.field"), "required: the record field this label reads"))?;
                    Ok((field(name, format!("{l_at}.field"))?, l, l_at))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let value = m
                .value
                .as_ref()
                .map(|v| field(&v.field, format!("{m_at}.value.field")))
                .transpose()?;
            plans.push(MetricPlan::compile(
                m, histogram, value, labels, true, registry, ctx, &m_at,
            )?);
        }
        let views = field_views(&fields, all, &ring.name, &plans);
        Ok(Self {
            ring: ring.name.clone(),
            record_size: fields
                .iter()
                .map(|(_, s)| s.offset + s.size)
                .max()
                .unwrap_or(0),
            cgroup,
            pid,
            metrics: plans,
            fields: views,
            traced: None,
        })
    }

    /// A cloudflare-style `perf_event_array` counter: each event is a key laid out like
    /// the labels, counted once, with no pod labels added (the config's labels only).
    pub(crate) fn compile_perf_counter(
        m: &MetricConfig,
        registry: &Registry,
        ctx: &Context,
        m_at: &str,
    ) -> Result<Self, ConfigError> {
        let spans = crate::table::key_layout(&m.labels, m_at)?;
        let labels = spans
            .iter()
            .zip(&m.labels)
            .enumerate()
            .map(|(li, (s, l))| (*s, l, format!("{m_at}.labels[{li}]")))
            .collect();
        let plan = MetricPlan::compile(m, false, None, labels, false, registry, ctx, m_at)?;
        let fields = m
            .labels
            .iter()
            .zip(&plan.labels)
            .map(|(l, lp)| FieldView {
                name: l.name.clone(),
                span: lp.span,
                label: Some((l.name.clone(), lp.chain.clone())),
                scale: None,
            })
            .collect();
        Ok(Self {
            ring: m.name.clone(),
            record_size: spans.iter().map(|s| s.offset + s.size).max().unwrap_or(0),
            cgroup: None,
            pid: None,
            metrics: vec![plan],
            fields,
            traced: None,
        })
    }

    /// Records of a `tracing:` span config (spans named `name` by default): laid out as its labels say (`size`, then
    /// `padding`, as table keys are), each field decoded as its label, no metrics.
    /// `cgroup` names the 8-byte label holding the cgroup id, if any.
    ///
    /// # Errors
    /// Labels without a size, unknown decoders, or a cgroup label that is not there or
    /// not 8 bytes; named from `at` (the span config's path).
    pub fn compile_traced(
        ring: &str,
        name: &str,
        labels: &[LabelConfig],
        cgroup: Option<&str>,
        ctx: &Context,
        at: &str,
    ) -> Result<Self, ConfigError> {
        // Said here in the record's terms; key_layout would speak of map keys.
        for (li, l) in labels.iter().enumerate() {
            let l_at = format!("{at}.labels[{li}]");
            if l.field.is_some() {
                return Err(invalid(format!("{l_at}.field"), "span labels lay out the record in order: they take size (and padding), not field"));
            }
            if l.size.is_none_or(|s| s == 0) {
                return Err(invalid(
                    format!("{l_at}.size"),
                    "required: bytes of the record this label takes",
                ));
            }
        }
        let spans = crate::table::key_layout(labels, at)?;
        let mut fields = Vec::with_capacity(labels.len());
        for (li, (l, span)) in labels.iter().zip(&spans).enumerate() {
            let chain = Chain::build(&l.decoders, span.size, &format!("{at}.labels[{li}]"), ctx)?;
            fields.push(FieldView {
                name: l.name.clone(),
                span: *span,
                label: Some((l.name.clone(), Arc::new(chain))),
                scale: None,
            });
        }
        let cgroup = cgroup
            .map(|name| {
                let at = format!("{at}.cgroup_field");
                match fields.iter().find(|f| f.name == name) {
                    Some(f) if f.span.size == 8 => Ok(f.span),
                    Some(f) => Err(invalid(
                        at,
                        format!("label {name:?} is {} bytes; a cgroup id has 8", f.span.size),
                    )),
                    None => Err(invalid(at, format!("no label named {name:?}"))),
                }
            })
            .transpose()?;
        Ok(Self {
            ring: ring.to_string(),
            record_size: spans.iter().map(|s| s.offset + s.size).max().unwrap_or(0),
            cgroup,
            pid: None,
            metrics: Vec::new(),
            fields,
            traced: Some(name.to_string()),
        })
    }

    /// Whether records carry a cgroup id.
    pub fn has_cgroup(&self) -> bool {
        self.cgroup.is_some()
    }

    /// The process id a record carries, when the ring has a pid field.
    #[inline]
    pub fn pid(&self, record: &[u8]) -> Option<u32> {
        match self.pid {
            Some(s) if record.len() >= self.record_size => Some(s.uint(record) as u32),
            _ => None,
        }
    }

    /// Exported names of the stream's metrics (to release them at a reload).
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.metrics.iter().map(|m| m.family.name.as_str())
    }

    /// The record's fields, for the event tap.
    pub fn fields(&self) -> &[FieldView] {
        &self.fields
    }

    /// The cgroup id a record carries (0 when the ring has no cgroup field or the
    /// record is short).
    #[inline]
    pub fn cgroup_id(&self, record: &[u8]) -> u64 {
        match self.cgroup {
            Some(s) if record.len() >= self.record_size => s.uint(record),
            _ => 0,
        }
    }
}

/// Offsets of a record's fields, in order.
fn layout(fields: &[FieldConfig], at: &str) -> Result<Vec<(String, Span)>, ConfigError> {
    let mut out: Vec<(String, Span)> = Vec::new();
    let mut offset = 0;
    for (fi, f) in fields.iter().enumerate() {
        if f.size == 0 {
            return Err(invalid(
                format!("{at}.fields[{fi}].size"),
                "must be at least 1",
            ));
        }
        if out.iter().any(|(n, _)| *n == f.name) {
            return Err(invalid(
                format!("{at}.fields[{fi}].name"),
                format!("{:?} is defined twice", f.name),
            ));
        }
        out.push((
            f.name.clone(),
            Span {
                offset,
                size: f.size,
            },
        ));
        offset += f.size;
    }
    Ok(out)
}

impl MetricPlan {
    #[allow(clippy::too_many_arguments)]
    fn compile(
        m: &MetricConfig,
        histogram: bool,
        value: Option<Span>,
        labels: Vec<(Span, &LabelConfig, String)>,
        pod_labels: bool,
        registry: &Registry,
        ctx: &Context,
        m_at: &str,
    ) -> Result<Self, ConfigError> {
        if let (Some(v), Some(s)) = (&m.value, value) {
            if !matches!(s.size, 1 | 2 | 4 | 8) {
                return Err(invalid(
                    format!("{m_at}.value.field"),
                    format!(
                        "{:?} is {} bytes; values are 1, 2, 4 or 8 byte unsigned integers",
                        v.field, s.size
                    ),
                ));
            }
            if !(v.scale.is_finite() && v.scale > 0.0) {
                return Err(invalid(
                    format!("{m_at}.value.scale"),
                    "must be a positive number",
                ));
            }
        }
        if histogram && value.is_none() {
            return Err(invalid(
                format!("{m_at}.value"),
                "histograms of ring records need a value field",
            ));
        }
        let scale = m.value.as_ref().map_or(1.0, |v| v.scale);
        let bounds = if histogram {
            buckets::layout(m, m_at)?.bounds
        } else {
            Vec::new()
        };
        let raw_bounds = buckets::RawBounds::new(buckets::raw_bounds(&bounds, scale));
        let native = (histogram && m.native_histogram.enabled)
            .then(|| NativePlan::new(&m.native_histogram, scale, m_at))
            .transpose()?;
        let key_len: usize = labels.iter().map(|(s, _, _)| s.size).sum();
        if key_len > MAX_KEY {
            return Err(invalid(
                format!("{m_at}.labels"),
                format!("label fields total {key_len} bytes; at most {MAX_KEY}"),
            ));
        }
        let names = m.labels.iter().map(|l| l.name.clone()).collect();
        let labels = labels
            .into_iter()
            .map(|(span, l, l_at)| {
                Ok(LabelPlan {
                    span,
                    chain: Arc::new(Chain::build(&l.decoders, span.size, &l_at, ctx)?),
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        let family = registry
            .register(
                &m.name,
                &m.help,
                histogram,
                bounds,
                scale,
                native,
                names,
                pod_labels,
                m.max_series.unwrap_or(registry.default_max_series()),
            )
            .map_err(|source| ConfigError::Name {
                at: format!("{m_at}.name"),
                source,
            })?;
        Ok(Self {
            family,
            value,
            raw_bounds,
            labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A field reads as its bytes in native order, whether a whole word follows it
        /// in the record or the record ends first.
        #[test]
        fn uint_reads_the_field(
            record in proptest::collection::vec(any::<u8>(), 8..24),
            size in prop::sample::select(vec![1usize, 2, 4, 8]),
            offset in 0usize..16,
        ) {
            prop_assume!(offset + size <= record.len());
            let field = &record[offset..offset + size];
            let mut word = [0u8; 8];
            if cfg!(target_endian = "little") {
                word[..size].copy_from_slice(field);
            } else {
                word[8 - size..].copy_from_slice(field);
            }
            prop_assert_eq!(Span { offset, size }.uint(&record), u64::from_ne_bytes(word));
        }
    }
}
