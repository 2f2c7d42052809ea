//! Compiles ring layouts and metric configs into offsets, bounds and decoder chains.

use std::sync::Arc;

use crate::{
    buckets,
    config::{MetricsConfig, RingConfig},
    decoder::Chain,
    invalid,
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
        let b = &record[self.offset..self.offset + self.size];
        match self.size {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_ne_bytes([b[0], b[1]])),
            4 => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            _ => u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        }
    }
}

#[derive(Debug)]
pub(crate) struct LabelPlan {
    pub span: Span,
    pub chain: Chain,
}

#[derive(Debug)]
pub(crate) struct MetricPlan {
    pub family: Arc<Family>,
    pub value: Option<Span>,
    /// Histogram bounds in the value field's raw unit; empty for counters.
    pub raw_bounds: Box<[u64]>,
    pub labels: Vec<LabelPlan>,
}

/// Everything the aggregate stage needs to turn one ring's records into series.
#[derive(Debug)]
pub struct StreamPlan {
    /// Ring buffer map name.
    pub ring: String,
    /// Bytes a record must have at least.
    pub record_size: usize,
    pub(crate) cgroup: Option<Span>,
    pub(crate) metrics: Vec<MetricPlan>,
}

impl StreamPlan {
    /// Compiles every ring of a program and registers its metrics' families.
    /// `at` prefixes error locations (e.g. the config file).
    ///
    /// # Errors
    /// Unknown rings or fields, bad sizes, unknown decoders, bad buckets, duplicate
    /// metric names: each error names the key at fault.
    pub fn compile_all(
        rings: &[RingConfig],
        metrics: &MetricsConfig,
        registry: &Registry,
        at: &str,
    ) -> Result<Vec<StreamPlan>, ConfigError> {
        let kinds = [("counters", &metrics.counters, false), ("histograms", &metrics.histograms, true)];
        for (kind, list, _) in kinds {
            for (i, m) in list.iter().enumerate() {
                if !rings.iter().any(|r| r.name == m.ring) {
                    return Err(invalid(
                        format!("{at}metrics.{kind}[{i}].ring"),
                        format!("no ring named {:?} under rings", m.ring),
                    ));
                }
            }
        }
        let mut plans = Vec::new();
        for (ri, ring) in rings.iter().enumerate() {
            let ring_at = format!("{at}rings[{ri}]");
            let mut offset = 0;
            let mut fields = Vec::new();
            for (fi, f) in ring.fields.iter().enumerate() {
                if f.size == 0 {
                    return Err(invalid(format!("{ring_at}.fields[{fi}].size"), "must be at least 1"));
                }
                if fields.iter().any(|(n, _): &(&str, Span)| *n == f.name) {
                    return Err(invalid(format!("{ring_at}.fields[{fi}].name"), format!("{:?} is defined twice", f.name)));
                }
                fields.push((f.name.as_str(), Span { offset, size: f.size }));
                offset += f.size;
            }
            let field = |name: &str, at: String| {
                fields.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).ok_or_else(|| {
                    let known: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                    invalid(at, format!("no field {name:?} in ring {:?} (fields: {})", ring.name, known.join(", ")))
                })
            };
            let cgroup = match &ring.cgroup_field {
                Some(name) => {
                    let s = field(name, format!("{ring_at}.cgroup_field"))?;
                    if s.size != 8 {
                        return Err(invalid(format!("{ring_at}.cgroup_field"), format!("{name:?} is {} bytes; a cgroup id has 8", s.size)));
                    }
                    Some(s)
                }
                None => None,
            };
            let mut metric_plans = Vec::new();
            for (kind, list, histogram) in kinds {
                for (i, m) in list.iter().enumerate().filter(|(_, m)| m.ring == ring.name) {
                    let m_at = format!("{at}metrics.{kind}[{i}]");
                    let value = match &m.value {
                        Some(v) => {
                            let s = field(&v.field, format!("{m_at}.value.field"))?;
                            if !matches!(s.size, 1 | 2 | 4 | 8) {
                                return Err(invalid(format!("{m_at}.value.field"), format!("{:?} is {} bytes; values are 1, 2, 4 or 8 byte unsigned integers", v.field, s.size)));
                            }
                            if !(v.scale.is_finite() && v.scale > 0.0) {
                                return Err(invalid(format!("{m_at}.value.scale"), "must be a positive number"));
                            }
                            Some(s)
                        }
                        None if histogram => {
                            return Err(invalid(format!("{m_at}.value"), "histograms need a value field"))
                        }
                        None => None,
                    };
                    let scale = m.value.as_ref().map_or(1.0, |v| v.scale);
                    let bounds = if histogram { buckets::bounds(m, &m_at)? } else { Vec::new() };
                    let raw_bounds = buckets::raw_bounds(&bounds, scale).into_boxed_slice();
                    let mut labels = Vec::new();
                    let mut key_len = 0;
                    for (li, l) in m.labels.iter().enumerate() {
                        let l_at = format!("{m_at}.labels[{li}]");
                        let span = field(&l.field, format!("{l_at}.field"))?;
                        key_len += span.size;
                        labels.push(LabelPlan {
                            span,
                            chain: Chain::build(&l.decoders, span.size, &l_at)?,
                        });
                    }
                    if key_len > MAX_KEY {
                        return Err(invalid(format!("{m_at}.labels"), format!("label fields total {key_len} bytes; at most {MAX_KEY}")));
                    }
                    let names = m.labels.iter().map(|l| l.name.clone()).collect();
                    let family = registry
                        .register(&m.name, &m.help, histogram, bounds, scale, names)
                        .map_err(|reason| invalid(format!("{m_at}.name"), reason))?;
                    metric_plans.push(MetricPlan {
                        family,
                        value,
                        raw_bounds,
                        labels,
                    });
                }
            }
            plans.push(StreamPlan {
                ring: ring.name.clone(),
                record_size: offset,
                cgroup,
                metrics: metric_plans,
            });
        }
        Ok(plans)
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
