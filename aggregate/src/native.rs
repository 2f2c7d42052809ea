//! Prometheus native histograms: sparse exponential buckets counted from each event's
//! exact value, and the reduction to a bucket limit at exposition.
//!
//! At schema `s` bucket `k` holds values in `(2^((k-1)/2^s), 2^(k/2^s)]`. A series
//! keeps its buckets at the configured schema in groups of 64 counters allocated on
//! first use, so memory follows the value range the series really sees.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    OnceLock,
};

use crate::{config::NativeHistogramConfig, invalid, ConfigError};

/// Lowest and highest schema Prometheus accepts.
pub const MIN_SCHEMA: i32 = -4;
pub const MAX_SCHEMA: i32 = 8;

const GROUP: usize = 64;
const MANTISSA: u64 = (1 << 52) - 1;

/// Schema, zero bucket and limit of one metric's native histograms, with what the
/// per-event index needs precomputed.
#[derive(Debug, Clone)]
pub struct NativePlan {
    /// Schema the buckets are counted at (the finest served).
    pub schema: i32,
    /// Values at or below it count in the zero bucket.
    pub zero_threshold: f64,
    /// Most buckets served per series; beyond it the schema is lowered.
    pub max_buckets: usize,
    scale: f64,
    /// Raw values at or below it go to the zero bucket.
    zero_raw: u64,
    /// Index of the lowest bucket a raw value above `zero_raw` can fall in.
    k_min: i32,
    groups: usize,
    thresholds: Thresholds,
}

/// Top mantissa bits that pick a cell of [`Thresholds::below`]: cells narrower than
/// the closest two bounds of schema 8, so a cell holds at most one bound.
const CELL_BITS: u32 = 10;

/// The bounds inside one power of two (schemas above 0), as mantissa bits, and per
/// cell of the mantissa range how many bounds lie below the cell.
#[derive(Debug, Clone)]
struct Thresholds {
    /// Ascending, then `u64::MAX` (so the bound after the last is there to compare).
    bounds: Box<[u64]>,
    below: Box<[u8; 1 << CELL_BITS]>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            bounds: Box::new([u64::MAX]),
            below: Box::new([0; 1 << CELL_BITS]),
        }
    }
}

impl Thresholds {
    fn new(schema: i32) -> Self {
        if schema <= 0 {
            return Self::default();
        }
        let bounds: Box<[u64]> = (1..1u32 << schema)
            .map(|j| (f64::from(j) / f64::from(1u32 << schema)).exp2().to_bits() & MANTISSA)
            .chain([u64::MAX])
            .collect();
        let mut below = Box::new([0; 1 << CELL_BITS]);
        for (c, n) in below.iter_mut().enumerate() {
            *n = bounds.partition_point(|&t| t < (c as u64) << (52 - CELL_BITS)) as u8;
        }
        Self { bounds, below }
    }

    /// How many bounds are below `mantissa`: those below its cell, plus the one bound
    /// the cell may hold: a table read and a compare, no search.
    #[inline]
    fn count_below(&self, mantissa: u64) -> i32 {
        // A mantissa's top bits index the table in full: no bounds check.
        let n = self.below[(mantissa >> (52 - CELL_BITS)) as usize & ((1 << CELL_BITS) - 1)];
        i32::from(n) + i32::from(self.bounds[usize::from(n)] < mantissa)
    }
}

/// The bucket of positive finite `v` at `schema`, by its exponent and mantissa bits.
#[inline]
fn index(v: f64, schema: i32, thresholds: &Thresholds) -> i32 {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let mantissa = bits & MANTISSA;
    if schema > 0 {
        // Bucket j of the octave holds mantissas up to bound j (the last one up to the
        // next power of two); an exact power of two ends the octave below.
        let sub = if mantissa == 0 {
            0
        } else {
            1 + thresholds.count_below(mantissa)
        };
        (exp << schema) + sub
    } else {
        let k = exp + i32::from(mantissa != 0);
        (k + (1 << -schema) - 1) >> -schema
    }
}

impl NativePlan {
    /// The plan for values `raw * scale`.
    pub fn new(config: &NativeHistogramConfig, scale: f64, at: &str) -> Result<Self, ConfigError> {
        let schema = i32::from(config.schema.unwrap_or(3));
        if !(MIN_SCHEMA..=MAX_SCHEMA).contains(&schema) {
            return Err(invalid(
                format!("{at}.native_histogram.schema"),
                format!("{schema} is outside {MIN_SCHEMA}..={MAX_SCHEMA}"),
            ));
        }
        // The Go client's default: only zero itself in practice.
        let zero_threshold = config.zero_threshold.unwrap_or(2f64.powi(-128));
        if !(zero_threshold.is_finite() && zero_threshold >= 0.0) {
            return Err(invalid(
                format!("{at}.native_histogram.zero_threshold"),
                "must be a number at or above 0",
            ));
        }
        let max_buckets = config.max_buckets.unwrap_or(160);
        if max_buckets == 0 {
            return Err(invalid(
                format!("{at}.native_histogram.max_buckets"),
                "must be at least 1",
            ));
        }
        let thresholds = Thresholds::new(schema);
        // Subnormal values never get here: the zero threshold's floor is above them.
        let zero_raw =
            crate::buckets::raw_bounds(&[zero_threshold.max(f64::MIN_POSITIVE)], scale)[0];
        let lowest = zero_raw.saturating_add(1) as f64 * scale;
        let k_min = index(lowest, schema, &thresholds);
        let k_max = index(u64::MAX as f64 * scale, schema, &thresholds);
        Ok(Self {
            schema,
            zero_threshold,
            max_buckets,
            scale,
            zero_raw,
            k_min,
            groups: (k_max - k_min) as usize / GROUP + 1,
            thresholds,
        })
    }

    /// Empty buckets for one series.
    pub fn buckets(&self) -> NativeBuckets {
        NativeBuckets {
            zero: AtomicU64::new(0),
            groups: (0..self.groups).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The bucket index of raw value `raw`, `None` for the zero bucket.
    #[inline]
    pub fn index(&self, raw: u64) -> Option<i32> {
        (raw > self.zero_raw).then(|| index(raw as f64 * self.scale, self.schema, &self.thresholds))
    }
}

/// One series' native buckets.
#[derive(Debug)]
pub struct NativeBuckets {
    zero: AtomicU64,
    groups: Box<[OnceLock<Box<[AtomicU64; GROUP]>>]>,
}

impl NativeBuckets {
    /// The counter of raw value `raw` (allocating its group the first time).
    #[inline(always)]
    pub fn cell(&self, plan: &NativePlan, raw: u64) -> &AtomicU64 {
        let Some(k) = plan.index(raw) else {
            return &self.zero;
        };
        let i = (k - plan.k_min) as usize;
        let group =
            self.groups[i / GROUP].get_or_init(|| Box::new([const { AtomicU64::new(0) }; GROUP]));
        &group[i % GROUP]
    }

    /// Asks for where the group of `raw`'s counter is kept, without waiting for it.
    #[inline(always)]
    pub fn prefetch(&self, plan: &NativePlan, raw: u64) {
        if let Some(k) = plan.index(raw) {
            crate::prefetch::prefetch(&self.groups[(k - plan.k_min) as usize / GROUP]);
        }
    }

    /// The zero bucket's count, and the non-empty buckets as (index, count) ascending
    /// into `out`.
    pub fn read(&self, plan: &NativePlan, out: &mut Vec<(i32, u64)>) -> u64 {
        out.clear();
        for (g, group) in self.groups.iter().enumerate() {
            let Some(group) = group.get() else { continue };
            for (j, c) in group.iter().enumerate() {
                let c = c.load(Relaxed);
                if c > 0 {
                    out.push((plan.k_min + (g * GROUP + j) as i32, c));
                }
            }
        }
        self.zero.load(Relaxed)
    }
}

/// Lowers the resolution of ascending `buckets` at `schema` until at most `max` are
/// left (or the schema is the lowest): each step merges bucket pairs into one of the
/// schema below. Returns the schema the buckets are now at.
pub fn limit(buckets: &mut Vec<(i32, u64)>, mut schema: i32, max: usize) -> i32 {
    while buckets.len() > max && schema > MIN_SCHEMA {
        let mut merged = 0;
        for i in 0..buckets.len() {
            // Buckets 2k-1 and 2k of schema s are bucket k of schema s-1.
            let (k, c) = buckets[i];
            let k = (k + 1) >> 1;
            if merged > 0 && buckets[merged - 1].0 == k {
                buckets[merged - 1].1 += c;
            } else {
                buckets[merged] = (k, c);
                merged += 1;
            }
        }
        buckets.truncate(merged);
        schema -= 1;
    }
    schema
}

/// The schema-0 buckets of classic bounds that are all powers of two (each bound `2^k`
/// is bucket `k`), or `None` when the bounds are not, or the `+Inf` bucket (which no
/// native bucket matches) has events. `counts` has one more entry than `bounds`.
pub fn from_exp2_bounds(bounds: &[f64], counts: &[u64], out: &mut Vec<(i32, u64)>) -> Option<()> {
    if counts.last().copied().unwrap_or(0) != 0 {
        return None;
    }
    out.clear();
    for (&b, &c) in bounds.iter().zip(counts) {
        if !power_of_two(b) {
            return None;
        }
        if c > 0 {
            out.push((index(b, 0, &Thresholds::default()), c));
        }
    }
    Some(())
}

/// Whether `b` is a positive power of two.
pub fn power_of_two(b: f64) -> bool {
    b.is_normal() && b > 0.0 && b.to_bits() & MANTISSA == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(schema: i8, scale: f64) -> NativePlan {
        let config = NativeHistogramConfig {
            schema: Some(schema),
            ..NativeHistogramConfig::default()
        };
        NativePlan::new(&config, scale, "m").unwrap()
    }

    /// The bucket by the definition: the smallest k with v <= 2^(k / 2^s).
    fn reference(v: f64, schema: i32) -> i32 {
        let k = (v.log2() * 2f64.powi(schema)).ceil() as i32;
        // log2 rounds; settle the edge by the bounds themselves.
        let bound = |k: i32| 2f64.powf(f64::from(k) / 2f64.powi(schema));
        if v > bound(k) {
            k + 1
        } else if v <= bound(k - 1) {
            k - 1
        } else {
            k
        }
    }

    #[test]
    fn powers_of_two_end_their_bucket() {
        for schema in MIN_SCHEMA..=MAX_SCHEMA {
            let p = plan(schema as i8, 1.0);
            for e in 0..40u32 {
                let v = 1u64 << e;
                assert_eq!(
                    p.index(v),
                    Some(reference(v as f64, schema)),
                    "2^{e} schema {schema}"
                );
            }
        }
        // Schema 0: 4 ends bucket 2, 5 starts bucket 3.
        assert_eq!(plan(0, 1.0).index(4), Some(2));
        assert_eq!(plan(0, 1.0).index(5), Some(3));
        assert_eq!(plan(0, 1.0).index(0), None);
    }

    proptest! {
        #[test]
        fn index_matches_the_definition(raw in 1u64..u64::MAX, schema in MIN_SCHEMA..=MAX_SCHEMA, scale_exp in -12i32..3) {
            let scale = 10f64.powi(scale_exp);
            let p = plan(schema as i8, scale);
            let v = raw as f64 * scale;
            prop_assert_eq!(p.index(raw), Some(reference(v, schema)));
            // Every value has a cell.
            let b = p.buckets();
            b.cell(&p, raw).fetch_add(1, Relaxed);
            let mut out = Vec::new();
            b.read(&p, &mut out);
            prop_assert_eq!(out, vec![(reference(v, schema), 1)]);
        }

        #[test]
        fn limiting_keeps_counts_and_is_the_coarser_schema(values in proptest::collection::vec(1u64..1 << 40, 1..300), max in 1usize..40) {
            let fine = plan(3, 1e-9);
            let b = fine.buckets();
            for &v in &values {
                b.cell(&fine, v).fetch_add(1, Relaxed);
            }
            let mut out = Vec::new();
            b.read(&fine, &mut out);
            let schema = limit(&mut out, 3, max);
            prop_assert!(out.len() <= max || schema == MIN_SCHEMA);
            prop_assert_eq!(out.iter().map(|b| b.1).sum::<u64>(), values.len() as u64);
            // The same values counted directly at the lower schema.
            let coarse = plan(schema as i8, 1e-9);
            let b = coarse.buckets();
            for &v in &values {
                b.cell(&coarse, v).fetch_add(1, Relaxed);
            }
            let mut direct = Vec::new();
            b.read(&coarse, &mut direct);
            prop_assert_eq!(out, direct);
        }
    }

    #[test]
    fn zero_threshold_takes_small_values() {
        let config = NativeHistogramConfig {
            zero_threshold: Some(1e-6),
            ..NativeHistogramConfig::default()
        };
        let p = NativePlan::new(&config, 1e-9, "m").unwrap();
        assert_eq!(p.index(1000), None);
        assert!(p.index(1001).is_some());
    }

    #[test]
    fn exp2_bounds_map_onto_schema_0() {
        let mut out = Vec::new();
        assert!(from_exp2_bounds(&[1.0, 2.0, 4.0], &[1, 0, 3, 0], &mut out).is_some());
        assert_eq!(out, vec![(0, 1), (2, 3)]);
        assert!(from_exp2_bounds(&[1.0, 2.0, 4.0], &[1, 0, 3, 1], &mut out).is_none());
        assert!(from_exp2_bounds(&[1e-6, 2e-6], &[1, 0, 0], &mut out).is_none());
    }
}
