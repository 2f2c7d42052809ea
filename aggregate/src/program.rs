//! Compiles one program's metrics config into stream and table plans.

use crate::{
    config::{MetricConfig, MetricsConfig, RingConfig},
    decoder::Context,
    invalid, ConfigError, Registry, StreamPlan, TablePlan,
};

/// What the aggregate stage does for one program.
#[derive(Debug, Default)]
pub struct ProgramPlan {
    /// One per ring read.
    pub streams: Vec<StreamPlan>,
    /// One per map-based metric.
    pub tables: Vec<TablePlan>,
}

/// Metrics of both kinds with their config paths.
pub(crate) fn metrics<'a>(
    m: &'a MetricsConfig,
    at: &'a str,
) -> impl Iterator<Item = (String, &'a MetricConfig, bool)> {
    let counters = m
        .counters
        .iter()
        .enumerate()
        .map(move |(i, c)| (format!("{at}metrics.counters[{i}]"), c, false));
    let histograms = m
        .histograms
        .iter()
        .enumerate()
        .map(move |(i, h)| (format!("{at}metrics.histograms[{i}]"), h, true));
    counters.chain(histograms)
}

impl ProgramPlan {
    /// Compiles a program's rings and metrics, registering their families. `at`
    /// prefixes error locations (the config file and program).
    ///
    /// # Errors
    /// Any inconsistency, naming the key at fault: a metric's ring that is not under
    /// `rings`, fields or label sizes that do not add up, unknown decoders, bad buckets,
    /// duplicate metric names.
    pub fn compile(
        rings: &[RingConfig],
        metrics_config: &MetricsConfig,
        registry: &Registry,
        ctx: &Context,
        at: &str,
    ) -> Result<Self, ConfigError> {
        let mut tables = Vec::new();
        let mut perf = Vec::new();
        for (m_at, m, histogram) in metrics(metrics_config, at) {
            match &m.ring {
                Some(ring) if !rings.iter().any(|r| &r.name == ring) => {
                    return Err(invalid(
                        format!("{m_at}.ring"),
                        format!("no ring named {ring:?} under rings"),
                    ));
                }
                Some(_) if m.perf_event_array => {
                    return Err(invalid(
                        format!("{m_at}.perf_event_array"),
                        "a metric reads either a ring or a perf event array",
                    ));
                }
                Some(_) => {}
                None if m.perf_event_array && histogram => {
                    return Err(invalid(
                        format!("{m_at}.perf_event_array"),
                        "perf event arrays feed counters only",
                    ));
                }
                None if m.perf_event_array => {
                    perf.push(StreamPlan::compile_perf_counter(m, registry, ctx, &m_at)?)
                }
                None => tables.push(TablePlan::compile(m, histogram, registry, ctx, &m_at)?),
            }
        }
        let mut streams = rings
            .iter()
            .enumerate()
            .map(|(ri, ring)| StreamPlan::compile(ring, metrics_config, registry, ctx, at, ri))
            .collect::<Result<Vec<_>, _>>()?;
        streams.extend(perf);
        Ok(Self { streams, tables })
    }
}
