//! Histogram bucket bounds from a bucket layout, and the raw-unit bounds used per event.

use crate::{
    config::{BucketType, MetricConfig},
    invalid, ConfigError,
};

/// Largest number of buckets a histogram may have.
const MAX_BUCKETS: usize = 512;

/// A histogram's buckets: the key of each (as tables store it) and its upper bound
/// (`le`, in exported units), ascending, without `+Inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Bucket keys.
    pub keys: Vec<f64>,
    /// Upper bounds.
    pub bounds: Vec<f64>,
}

impl Layout {
    /// The key under which a table stores the histogram's sum: one past the last key.
    pub fn sum_key(&self) -> f64 {
        self.keys.last().map_or(0.0, |k| k + 1.0)
    }
}

/// Builds the bucket layout of a histogram config.
///
/// # Errors
/// Missing or inconsistent bucket settings, named by `at`.
pub fn layout(m: &MetricConfig, at: &str) -> Result<Layout, ConfigError> {
    let kind = m.bucket_type.ok_or_else(|| {
        invalid(
            format!("{at}.bucket_type"),
            "histograms need one of exp2, exp2zero, linear, fixed",
        )
    })?;
    let mult = m.bucket_multiplier.unwrap_or(1.0);
    if !(mult.is_finite() && mult > 0.0) {
        return Err(invalid(
            format!("{at}.bucket_multiplier"),
            "must be a positive number",
        ));
    }
    let keys: Vec<f64> = if kind == BucketType::Fixed {
        m.bucket_keys.clone()
    } else {
        let min = m.bucket_min.unwrap_or(0);
        let max = m
            .bucket_max
            .ok_or_else(|| invalid(format!("{at}.bucket_max"), "required for this bucket_type"))?;
        if max < min {
            return Err(invalid(
                format!("{at}.bucket_max"),
                format!("{max} is below bucket_min {min}"),
            ));
        }
        if (max - min) as usize >= MAX_BUCKETS {
            return Err(invalid(
                format!("{at}.bucket_max"),
                format!("gives {} buckets; at most {MAX_BUCKETS}", max - min + 1),
            ));
        }
        (min..=max).map(f64::from).collect()
    };
    let bounds: Vec<f64> = keys
        .iter()
        .map(|&k| match kind {
            BucketType::Exp2 => mult * k.exp2(),
            BucketType::Exp2zero if k == 0.0 => 0.0,
            BucketType::Exp2zero => mult * (k - 1.0).exp2(),
            BucketType::Linear | BucketType::Fixed => mult * k,
        })
        .collect();
    if bounds.is_empty() || bounds.len() > MAX_BUCKETS {
        return Err(invalid(
            format!("{at}.bucket_keys"),
            format!("gives {} buckets; 1 to {MAX_BUCKETS} allowed", bounds.len()),
        ));
    }
    if bounds.windows(2).any(|w| w[0] >= w[1]) || bounds.iter().any(|b| !b.is_finite()) {
        return Err(invalid(
            format!("{at}.bucket_keys"),
            "bounds must be finite and strictly increasing",
        ));
    }
    Ok(Layout { keys, bounds })
}

/// For each bound, the largest raw value that counts as at or below it, so a raw value
/// falls in the first bucket whose raw bound is `>=` it: integer compares per event.
/// A raw value that equals a bound up to float rounding (1000 ns and 1e-06 s) is in
/// that bucket.
pub fn raw_bounds(bounds: &[f64], scale: f64) -> Vec<u64> {
    bounds
        .iter()
        .map(|&b| {
            let r = b / scale;
            (r + r.abs() * 1e-12).floor().clamp(0.0, u64::MAX as f64) as u64
        })
        .collect()
}

/// Raw-unit bucket bounds with a fast search for exp2 layouts.
#[derive(Debug, Clone, Default)]
pub struct RawBounds {
    bounds: Box<[u64]>,
    /// For bounds that double each step: the bit length of the first, so a value's bit
    /// length gives its bucket to within one step.
    exp2_base: Option<u32>,
    /// The bounds double exactly (no rounding): that one step is all there is.
    exact: bool,
}

fn bits(x: u64) -> u32 {
    u64::BITS - x.leading_zeros()
}

impl RawBounds {
    /// Wraps raw bounds (ascending).
    pub fn new(bounds: Vec<u64>) -> Self {
        let doubling = bounds.len() > 1
            && bounds
                .windows(2)
                .all(|w| w[1].abs_diff(w[0].saturating_mul(2)) <= 1)
            && bounds[0] > 0;
        // With b[k] = b[0] * 2^k, a value of j more bits than b[0] lies above b[j - 1]
        // and below b[j + 1].
        let exact = doubling && bounds.windows(2).all(|w| w[0].checked_mul(2) == Some(w[1]));
        Self {
            exp2_base: doubling.then(|| bits(bounds[0])),
            exact,
            bounds: bounds.into_boxed_slice(),
        }
    }

    /// Number of bounds (buckets without `+Inf`).
    pub fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Whether there are no bounds (counters).
    pub fn is_empty(&self) -> bool {
        self.bounds.is_empty()
    }

    /// The bucket of `raw`: the first bound at or above it (`len()` for `+Inf`).
    #[inline]
    pub fn bucket(&self, raw: u64) -> usize {
        let b = &self.bounds;
        let Some(base) = self.exp2_base else {
            return b.partition_point(|&x| x < raw);
        };
        let mut i = (bits(raw).saturating_sub(base) as usize).min(b.len());
        // The guess is the bucket or the one below: one step, decided by a compare the
        // compiler turns into arithmetic (a branch here mispredicts on half the events).
        i += usize::from(b.get(i).is_some_and(|&x| x < raw));
        if self.exact {
            return i;
        }
        // Bounds off by one from exact doubling can leave another step either way.
        while i < b.len() && b[i] < raw {
            i += 1;
        }
        while i > 0 && b[i - 1] >= raw {
            i -= 1;
        }
        i
    }
}

/// Converts a raw sum to exported units; divides by an integral inverse scale (1e9 for
/// ns → s) when there is one, which rounds exactly where a multiply by 1e-9 does not.
pub fn scaled(raw: u64, scale: f64) -> f64 {
    let inverse = 1.0 / scale;
    if scale < 1.0 && (inverse - inverse.round()).abs() < 1e-6 {
        raw as f64 / inverse.round()
    } else {
        raw as f64 * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricConfig;

    fn metric(kind: &str, extra: &str) -> MetricConfig {
        let yaml = format!("{{name: m, help: h, bucket_type: {kind}, {extra}}}");
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    #[test]
    fn exp2_matches_the_seed_buckets() {
        let l = layout(
            &metric(
                "exp2",
                "bucket_min: 0, bucket_max: 26, bucket_multiplier: 1e-06",
            ),
            "m",
        )
        .unwrap();
        assert_eq!(l.sum_key(), 27.0);
        let b = l.bounds;
        assert_eq!(b.len(), 27);
        assert_eq!(b[0], 1e-06);
        assert_eq!(b[4], 1.6e-05);
        assert_eq!(b[26], 67.108864);
        let raw = raw_bounds(&b, 1e-9);
        assert_eq!(raw[0], 1000);
        assert_eq!(raw[26], 67_108_864_000);
        assert_eq!(scaled(9_003_500, 1e-9), 0.0090035);
        assert_eq!(scaled(5, 2.0), 10.0);
    }

    #[test]
    fn other_layouts() {
        let bounds = |m| layout(&m, "m").unwrap().bounds;
        assert_eq!(
            bounds(metric("exp2zero", "bucket_max: 3")),
            vec![0.0, 1.0, 2.0, 4.0]
        );
        assert_eq!(
            bounds(metric(
                "linear",
                "bucket_min: 1, bucket_max: 3, bucket_multiplier: 10"
            )),
            vec![10.0, 20.0, 30.0]
        );
        assert_eq!(
            bounds(metric("fixed", "bucket_keys: [1, 5, 10]")),
            vec![1.0, 5.0, 10.0]
        );
        assert_eq!(
            layout(&metric("fixed", "bucket_keys: [1, 5, 10]"), "m")
                .unwrap()
                .sum_key(),
            11.0
        );
    }

    #[test]
    fn bad_layouts_name_the_field() {
        let err = |m: MetricConfig| layout(&m, "metrics.histograms[0]").unwrap_err().to_string();
        assert!(err(metric("exp2", "bucket_min: 3"))
            .contains("metrics.histograms[0].bucket_max: required"));
        assert!(err(metric("exp2", "bucket_min: 3, bucket_max: 1")).contains("below bucket_min"));
        assert!(err(metric("fixed", "bucket_keys: [3, 1]")).contains("strictly increasing"));
        assert!(err(metric("fixed", "bucket_keys: []")).contains("0 buckets"));
        assert!(err(metric("exp2", "bucket_max: 100000")).contains("100001 buckets"));
        assert!(err(metric("exp2", "bucket_max: 100000")).contains("buckets"));
        assert!(err(metric("linear", "bucket_max: 3, bucket_multiplier: -1")).contains("positive"));
    }

    proptest::proptest! {
        /// The exp2 fast path finds the same bucket as a binary search.
        #[test]
        fn exp2_search_matches_binary_search(raw in proptest::num::u64::ANY, base in 1u64..5000, n in 1usize..40, small in 0u64..100_000) {
            let bounds: Vec<u64> = (0..n).map(|i| base.saturating_mul(1 << i.min(40))).collect();
            let rb = RawBounds::new(bounds.clone());
            for v in [raw, small, base, base.saturating_sub(1), base + 1] {
                proptest::prop_assert_eq!(rb.bucket(v), bounds.partition_point(|&x| x < v));
            }
        }

        /// So it does for bounds that double only to within one (rounded from scaled
        /// bounds), at and next to every bound.
        #[test]
        fn exp2_search_matches_binary_search_off_by_one(base in 2u64..5000, n in 2usize..30, steps in proptest::num::u64::ANY, raw in proptest::num::u64::ANY) {
            let mut bounds = vec![base];
            for i in 1..n {
                let step = (steps >> (2 * i)) % 3;
                bounds.push((2 * bounds[i - 1] + step).saturating_sub(1));
            }
            let rb = RawBounds::new(bounds.clone());
            let near = bounds.iter().flat_map(|&b| [b - 1, b, b + 1]);
            for v in near.chain([raw, 0]) {
                proptest::prop_assert_eq!(rb.bucket(v), bounds.partition_point(|&x| x < v));
            }
        }

        /// raw_bounds agrees with integer arithmetic for ns values and µs bounds.
        #[test]
        fn raw_bounds_agree_with_integer_comparison(raw in 0u64..1u64 << 40, i in 0i32..30) {
            let rb = raw_bounds(&[1e-6 * 2f64.powi(i)], 1e-9);
            proptest::prop_assert_eq!(raw <= rb[0], raw <= 1000 * (1u64 << i));
        }
    }
}
