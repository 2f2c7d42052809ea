//! The delimited protobuf format: each family an `io.prometheus.client.MetricFamily`
//! message prefixed by its length, written field by field (no message structs, no
//! allocation per series).

use super::{Kind, Native};

/// Field wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn double(out: &mut Vec<u8>, field: u64, v: f64) {
    key(out, field, FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    key(out, field, LEN);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The metrics of the family being written, and scratch buffers for one metric.
#[derive(Debug, Default)]
pub(super) struct Family {
    metrics: Vec<u8>,
    metric: Vec<u8>,
    histogram: Vec<u8>,
}

impl Family {
    /// Bytes of metrics waiting for [`Family::write`].
    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    /// Starts a metric: its `LabelPair`s.
    fn labels(&mut self, names: &[String], values: &[&str]) {
        let m = &mut self.metric;
        m.clear();
        for (n, v) in names.iter().zip(values) {
            key(m, 1, LEN);
            varint(
                m,
                (2 + varint_len(n.len() as u64) + n.len() + varint_len(v.len() as u64) + v.len())
                    as u64,
            );
            bytes(m, 1, n.as_bytes());
            bytes(m, 2, v.as_bytes());
        }
    }

    fn push_metric(&mut self) {
        bytes(&mut self.metrics, 4, &self.metric);
    }

    /// A counter, gauge or untyped metric.
    pub fn value(&mut self, kind: Kind, names: &[String], values: &[&str], value: f64) {
        self.labels(names, values);
        let field = match kind {
            Kind::Counter => 3,
            Kind::Gauge => 2,
            _ => 5,
        };
        key(&mut self.metric, field, LEN);
        varint(&mut self.metric, 9);
        double(&mut self.metric, 1, value);
        self.push_metric();
    }

    /// A histogram: classic buckets (`+Inf` is implied by the count) and native ones.
    pub fn histogram(
        &mut self,
        names: &[String],
        values: &[&str],
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
        native: Option<Native>,
    ) {
        self.labels(names, values);
        let h = &mut self.histogram;
        h.clear();
        // With native buckets, the count is theirs (Prometheus checks they add up);
        // classic buckets read a moment later are capped to it.
        let count = native.map_or_else(
            || counts.iter().sum(),
            |n| n.zero_count + n.buckets.iter().map(|b| b.1).sum::<u64>(),
        );
        key(h, 1, VARINT);
        varint(h, count);
        double(h, 2, sum);
        let mut cumulative = 0u64;
        for (&bound, &c) in bounds.iter().zip(counts) {
            cumulative += c;
            key(h, 3, LEN);
            varint(h, (1 + varint_len(cumulative.min(count)) + 9) as u64);
            key(h, 1, VARINT);
            varint(h, cumulative.min(count));
            double(h, 2, bound);
        }
        if let Some(n) = native {
            key(h, 5, VARINT);
            varint(h, zigzag(i64::from(n.schema)));
            double(h, 6, n.zero_threshold);
            key(h, 7, VARINT);
            varint(h, n.zero_count);
            spans(h, n.buckets);
        }
        key(&mut self.metric, 7, LEN);
        varint(&mut self.metric, h.len() as u64);
        self.metric.extend_from_slice(h);
        self.push_metric();
    }

    /// Writes the metrics gathered as one length-prefixed `MetricFamily`, if any.
    pub fn write(&mut self, out: &mut Vec<u8>, name: &str, help: &str, kind: Kind) {
        if self.metrics.is_empty() {
            return;
        }
        let kind = match kind {
            Kind::Counter => 0,
            Kind::Gauge => 1,
            Kind::Untyped => 3,
            Kind::Histogram => 4,
        };
        let head = 1
            + varint_len(name.len() as u64)
            + name.len()
            + 1
            + varint_len(help.len() as u64)
            + help.len()
            + 2;
        varint(out, (head + self.metrics.len()) as u64);
        bytes(out, 1, name.as_bytes());
        bytes(out, 2, help.as_bytes());
        key(out, 3, VARINT);
        varint(out, kind);
        out.append(&mut self.metrics);
    }
}

/// Positive spans (runs of adjacent buckets) and the count deltas of their buckets.
fn spans(h: &mut Vec<u8>, buckets: &[(i32, u64)]) {
    let span = |h: &mut Vec<u8>, offset: i32, length: u32| {
        let offset = zigzag(i64::from(offset));
        key(h, 12, LEN);
        varint(
            h,
            (2 + varint_len(offset) + varint_len(u64::from(length))) as u64,
        );
        key(h, 1, VARINT);
        varint(h, offset);
        key(h, 2, VARINT);
        varint(h, u64::from(length));
    };
    if buckets.is_empty() {
        // An empty span marks the histogram native when nothing else does.
        span(h, 0, 0);
        return;
    }
    let mut start = 0;
    let mut previous_end = 0;
    for i in 1..=buckets.len() {
        if i == buckets.len() || buckets[i].0 != buckets[i - 1].0 + 1 {
            let first = buckets[start].0;
            let offset = if start == 0 {
                first
            } else {
                first - previous_end - 1
            };
            span(h, offset, (i - start) as u32);
            previous_end = buckets[i - 1].0;
            start = i;
        }
    }
    let mut previous = 0i64;
    for &(_, c) in buckets {
        key(h, 13, VARINT);
        varint(h, zigzag(c as i64 - previous));
        previous = c as i64;
    }
}
