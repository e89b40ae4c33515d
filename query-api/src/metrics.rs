//! `GET /metrics`, Prometheus text: the seed's four alert signals (command
//! latency, processing lag as each view's freshness, query duration per
//! route) and the pipeline's counters (events read, dead letters, sink
//! writes, their time and errors).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use projector_core::value::Timestamp;

use crate::ApiState;
use crate::serving::ServingStore;

/// What the pipeline has done so far, read at each scrape.
pub trait PipelineCounters: Send + Sync + std::fmt::Debug {
    /// Records read from all sources.
    fn events_read(&self) -> u64;
    /// Bad records sent to the dead letters.
    fn dead_letters(&self) -> u64;
    /// Per sink: its name, batches written, seconds those writes took, and
    /// failed attempts.
    fn sink_writes(&self) -> Vec<(String, u64, f64, u64)>;
    /// Per partition of each Kafka source: `(source index, partition, end
    /// offset)`, the end of its log as last looked up (every few seconds).
    fn source_ends(&self) -> Vec<(u16, u32, u64)>;
}

type RouteLabels = Vec<(&'static str, String)>;
type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The API's metrics.
pub struct Metrics {
    registry: Registry,
    commands: Durations,
    queries: Durations,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// 0.1 ms to about 3 s, doubling.
fn durations() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Metrics {
    /// The metrics of an API serving `store` (if any).
    pub fn new(store: Option<Arc<ServingStore>>) -> Metrics {
        let mut registry = Registry::default();
        let commands: Durations = Family::new_with_constructor(durations);
        let queries: Durations = Family::new_with_constructor(durations);
        registry.register(
            "projector_command_duration_seconds",
            "Time to answer a command request (POST, PUT), by route",
            commands.clone(),
        );
        registry.register(
            "projector_query_duration_seconds",
            "Time to answer a read request (GET), by route",
            queries.clone(),
        );
        registry.register_collector(Box::new(Scraped { store }));
        Metrics { registry, commands, queries }
    }

    fn observe(&self, method: &Method, route: String, seconds: f64) {
        let labels = vec![("route", route)];
        let family = if method == Method::GET || method == Method::HEAD { &self.queries } else { &self.commands };
        family.get_or_create(&labels).observe(seconds);
    }

    /// The metrics as Prometheus text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# the metrics could not be encoded");
        }
        text
    }
}

/// Values read at each scrape: the views' freshness and the pipeline's
/// counters.
#[derive(Debug)]
struct Scraped {
    store: Option<Arc<ServingStore>>,
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(store) = &self.store else { return Ok(()) };
        let now = Timestamp::now().0;
        let mut freshness = Vec::new();
        let mut events = Vec::new();
        let mut rows = Vec::new();
        let mut positions = Vec::new();
        for view in store.views().filter(|view| view.reader().is_none()) {
            let state = view.read();
            if let Some(newest) = state.newest_event_at {
                freshness.push((view.name.clone(), (now - newest.0).max(0) as f64 / 1e9));
            }
            events.push((view.name.clone(), state.positions.total() as i64));
            rows.push((view.name.clone(), state.rows.len() as i64));
            positions.push(state.positions.clone());
        }
        family(
            &mut encoder,
            "projector_view_freshness_seconds",
            "Age of the newest event each view reflects: how far it lags behind what happens",
            "view",
            freshness.into_iter().map(|(view, seconds)| (view, ConstGauge::new(seconds))),
        )?;
        family(
            &mut encoder,
            "projector_view_events",
            "Records of the log each view reflects (the sum of its next offsets)",
            "view",
            events.into_iter().map(|(view, count)| (view, ConstGauge::new(count))),
        )?;
        let rows = rows.into_iter().map(|(view, count)| (view, ConstGauge::new(count)));
        family(&mut encoder, "projector_view_rows", "Rows each view holds", "view", rows)?;
        let Some(pipeline) = store.pipeline() else { return Ok(()) };
        let counter = ConstCounter::new(pipeline.events_read());
        counter.encode(encoder.encode_descriptor(
            "projector_events_read",
            "Records read from all sources",
            None,
            MetricType::Counter,
        )?)?;
        let counter = ConstCounter::new(pipeline.dead_letters());
        counter.encode(encoder.encode_descriptor(
            "projector_dead_letters",
            "Bad records sent to the dead letters",
            None,
            MetricType::Counter,
        )?)?;
        // A partition's lag: the records after what the least advanced
        // view reflects.
        let source = |index: u16| store.source_names.get(usize::from(index)).cloned().unwrap_or_default();
        let ends = pipeline.source_ends();
        let partition_labels = |(index, partition, _): &(u16, u32, u64)| {
            vec![("source", source(*index)), ("partition", partition.to_string())]
        };
        labelled_family(
            &mut encoder,
            "projector_source_end_offset",
            "The offset after the last record of each Kafka partition, as last looked up",
            ends.iter().map(|end| (partition_labels(end), ConstGauge::new(end.2 as i64))),
        )?;
        if !positions.is_empty() {
            let lag = |(index, partition, end): &(u16, u32, u64)| {
                let reflected = positions.iter().map(|at| at.get(*index, *partition)).min().unwrap_or(0);
                end.saturating_sub(reflected) as i64
            };
            labelled_family(
                &mut encoder,
                "projector_source_lag_records",
                "Records of each Kafka partition that not every view reflects yet (its end offset minus the least advanced view's position)",
                ends.iter().map(|end| (partition_labels(end), ConstGauge::new(lag(end)))),
            )?;
        }
        let sinks = pipeline.sink_writes();
        family(
            &mut encoder,
            "projector_sink_writes",
            "Batches written, by sink",
            "sink",
            sinks.iter().map(|(sink, writes, _, _)| (sink.clone(), ConstCounter::new(*writes))),
        )?;
        family(
            &mut encoder,
            "projector_sink_write_seconds",
            "Seconds spent writing batches (retries included), by sink; with projector_sink_writes, the mean write latency",
            "sink",
            sinks.iter().map(|(sink, _, seconds, _)| (sink.clone(), ConstCounter::new(*seconds))),
        )?;
        family(
            &mut encoder,
            "projector_sink_write_errors",
            "Failed write attempts (each retried, or fatal), by sink",
            "sink",
            sinks.iter().map(|(sink, _, _, errors)| (sink.clone(), ConstCounter::new(*errors))),
        )?;
        Ok(())
    }
}

/// One metric family with one label: a value per label value.
fn family<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl Iterator<Item = (String, M)>,
) -> Result<(), std::fmt::Error> {
    labelled_family(encoder, name, help, values.map(|(value, metric)| (vec![(label, value)], metric)))
}

/// One metric family: a value per set of labels.
fn labelled_family<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in values {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Times every request, by method and matched route.
pub async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.observe(&method, route, started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<ApiState>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], state.metrics.encode()).into_response()
}
