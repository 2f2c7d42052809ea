//! Span stage: ring records of `tracing:` configs (the reference exporter's format)
//! become OpenTelemetry spans carrying their pod's `k8s.*` attributes, exported over
//! OTLP beside the metrics and never in their way.

pub mod config;
mod export;
mod plan;
mod record;
mod stage;
mod startup;

pub use export::{destination, ExportError, Nowhere, Protocol};
pub use plan::{Role, SpanPlan};
pub use record::Clock;
pub use stage::{Batching, SpanStats, Spans};
pub use startup::Step;
