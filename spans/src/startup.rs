//! The start-up trace, as the reference exporter emits one: a root span for setting up
//! the configs and a child per config (its compile, load and attach), with its outcome.

use std::{borrow::Cow, time::SystemTime};

use opentelemetry::{trace::SpanId, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SpanData};

use crate::record::{sampled, scope};

/// One step of the start-up: when it ran, and what to say about it.
#[derive(Debug, Clone)]
pub struct Step {
    /// The span's name.
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    /// String attributes.
    pub attributes: Vec<(&'static str, String)>,
}

/// The trace of `root` with `children` under it.
pub(crate) fn trace(root: &Step, children: &[Step]) -> Vec<SpanData> {
    let ids = RandomIdGenerator::default();
    let trace_id = ids.new_trace_id();
    let root_id = ids.new_span_id();
    let scope = scope();
    let span = |step: &Step, id: SpanId, parent: SpanId| {
        let attributes = step
            .attributes
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .collect();
        sampled(
            (trace_id, id, parent),
            Cow::Owned(step.name.clone()),
            (step.start, step.end),
            attributes,
            scope.clone(),
        )
    };
    std::iter::once(span(root, root_id, SpanId::INVALID))
        .chain(children.iter().map(|c| span(c, ids.new_span_id(), root_id)))
        .collect()
}
