//! Aggregate stage: turns records into series and keeps their histograms and counters,
//! and renders map-based metrics ("tables") from map entries at scrape time.
//!
//! A [`StreamPlan`] compiled from config says where each field of a ring's records
//! lies and which metrics read them. A worker's [`StreamAggregator`] keys each record
//! by the pod label set id (from the enrich stage) and the raw bytes of its label
//! fields, so label strings are decoded once per new series, never per event; series
//! cells are atomics shared with the [`Registry`] that renders the exposition.

mod aggregator;
pub mod buckets;
pub mod config;
pub mod decoder;
mod exposition;
mod native;
mod prefetch;
mod program;
mod registry;
mod series_index;
mod stream;
mod table;

pub use aggregator::{Stream, StreamAggregator, StreamStats};
pub use exposition::{format_float, Format, Kind, Native, PageWriter};
pub use program::ProgramPlan;
pub use registry::{DecodeFailures, KubeLabelNames, Registry, Released, DEFAULT_MAX_SERIES};
pub use stream::{FieldView, Raw, StreamPlan};
pub use table::{Rows, TableEntry, TablePlan};

/// Errors in a metrics config; each names the metric and field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A metric or label refers to something the config does not define, or a value is
    /// out of range.
    #[error("{at}: {reason}")]
    Invalid {
        /// Dotted path of the offending key, e.g. `metrics.histograms[0].value.field`.
        at: String,
        /// Why it is wrong.
        reason: String,
    },
    /// A metric or label name Prometheus would refuse, or one already taken.
    #[error("{at}: {source}")]
    Name {
        /// Dotted path of the metric's name.
        at: String,
        #[source]
        source: NameError,
    },
    /// A `regexp` decoder's patterns do not compile.
    #[error("{at}: {source}")]
    Pattern {
        /// Dotted path of the patterns.
        at: String,
        #[source]
        source: regex::Error,
    },
}

/// Why a metric cannot have the name or labels it asks for.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("{0:?} is not a valid Prometheus metric name")]
    Metric(String),
    #[error("label {0:?} is not a valid label name here")]
    Label(String),
    #[error("label {0:?} appears twice (ring metrics also get the pod labels)")]
    DuplicateLabel(String),
    #[error("metric {0} is defined twice")]
    Taken(String),
}

pub(crate) fn invalid(at: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
