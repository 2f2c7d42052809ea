//! Histogram bucket bounds from a bucket layout, and the raw-unit bounds used per event.

use crate::{
    config::{BucketType, MetricConfig},
    invalid, ConfigError,
};

/// Largest number of buckets a histogram may have.
const MAX_BUCKETS: usize = 512;

/// Upper bounds (`le`) in exported units, ascending, without `+Inf`.
///
/// # Errors
/// Missing or inconsistent bucket settings, named by `at`.
pub fn bounds(m: &MetricConfig, at: &str) -> Result<Vec<f64>, ConfigError> {
    let kind = m
        .bucket_type
        .ok_or_else(|| invalid(format!("{at}.bucket_type"), "histograms need one of exp2, exp2zero, linear, fixed"))?;
    let mult = m.bucket_multiplier.unwrap_or(1.0);
    if !(mult.is_finite() && mult > 0.0) {
        return Err(invalid(format!("{at}.bucket_multiplier"), "must be a positive number"));
    }
    let range = || -> Result<std::ops::RangeInclusive<i32>, ConfigError> {
        let min = m.bucket_min.unwrap_or(0);
        let max = m
            .bucket_max
            .ok_or_else(|| invalid(format!("{at}.bucket_max"), "required for this bucket_type"))?;
        if max < min {
            return Err(invalid(format!("{at}.bucket_max"), format!("{max} is below bucket_min {min}")));
        }
        Ok(min..=max)
    };
    let out: Vec<f64> = match kind {
        BucketType::Exp2 => range()?.map(|i| mult * 2f64.powi(i)).collect(),
        BucketType::Exp2zero => std::iter::once(0.0)
            .chain(range()?.map(|i| mult * 2f64.powi(i)))
            .collect(),
        BucketType::Linear => range()?.map(|i| mult * f64::from(i)).collect(),
        BucketType::Fixed => m.bucket_keys.iter().map(|k| mult * k).collect(),
    };
    if out.is_empty() || out.len() > MAX_BUCKETS {
        return Err(invalid(format!("{at}.bucket_max"), format!("gives {} buckets; 1 to {MAX_BUCKETS} allowed", out.len())));
    }
    if out.windows(2).any(|w| w[0] >= w[1]) || out.iter().any(|b| !b.is_finite()) {
        return Err(invalid(format!("{at}.bucket_keys"), "bounds must be finite and strictly increasing"));
    }
    Ok(out)
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
        let yaml = format!("{{name: m, help: h, ring: r, bucket_type: {kind}, {extra}}}");
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    #[test]
    fn exp2_matches_the_seed_buckets() {
        let b = bounds(&metric("exp2", "bucket_min: 0, bucket_max: 26, bucket_multiplier: 1e-06"), "m").unwrap();
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
        assert_eq!(bounds(&metric("exp2zero", "bucket_max: 2"), "m").unwrap(), vec![0.0, 1.0, 2.0, 4.0]);
        assert_eq!(bounds(&metric("linear", "bucket_min: 1, bucket_max: 3, bucket_multiplier: 10"), "m").unwrap(), vec![10.0, 20.0, 30.0]);
        assert_eq!(bounds(&metric("fixed", "bucket_keys: [1, 5, 10]"), "m").unwrap(), vec![1.0, 5.0, 10.0]);
    }

    #[test]
    fn bad_layouts_name_the_field() {
        let err = |m: MetricConfig| bounds(&m, "metrics.histograms[0]").unwrap_err().to_string();
        assert!(err(metric("exp2", "bucket_min: 3")).contains("metrics.histograms[0].bucket_max: required"));
        assert!(err(metric("exp2", "bucket_min: 3, bucket_max: 1")).contains("below bucket_min"));
        assert!(err(metric("fixed", "bucket_keys: [3, 1]")).contains("strictly increasing"));
        assert!(err(metric("fixed", "bucket_keys: []")).contains("0 buckets"));
        assert!(err(metric("exp2", "bucket_max: 100000")).contains("buckets"));
        assert!(err(metric("linear", "bucket_max: 3, bucket_multiplier: -1")).contains("positive"));
    }

    proptest::proptest! {
        /// raw_bounds agrees with integer arithmetic for ns values and µs bounds.
        #[test]
        fn raw_bounds_agree_with_integer_comparison(raw in 0u64..1u64 << 40, i in 0i32..30) {
            let rb = raw_bounds(&[1e-6 * 2f64.powi(i)], 1e-9);
            proptest::prop_assert_eq!(raw <= rb[0], raw <= 1000 * (1u64 << i));
        }
    }
}
