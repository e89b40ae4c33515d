//! Every source and sink type, built from the config.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::warn;

use std::time::Instant;

use projector_core::config::{KafkaSourceConfig, PipelinePlan, SinkKind, SourceKind};
use projector_core::record::DeadLetter;
use projector_core::sink::{DeadLetterSink, SinkError, ViewReader, ViewSink, positions_from_json};
use projector_core::source::Source;
use projector_dataflows::runner::{Outputs, Restore, RunProgress};
use projector_query_api::metrics::PipelineCounters;
use projector_query_api::serving::ServingStore;
use projector_sink_clickhouse::{ClickHouseViewReader, ClickHouseViewSink};
use projector_sink_file::{FileDeadLetterSink, FileViewSink};
use projector_sink_parquet::{ParquetViewSink, Shape};
use projector_sink_redis::{RedisViewReader, RedisViewSink};
use projector_source_file::FileSource;
use projector_source_kafka::source::Watermarks;
use projector_source_kafka::{KafkaDeadLetterSink, KafkaSource};

/// How often a file sink of a running pipeline rewrites its file.
const FILE_SINK_INTERVAL: Duration = Duration::from_secs(1);

/// The config's sources, by name.
pub fn sources(plan: &PipelinePlan) -> Vec<(String, Arc<dyn Source>)> {
    let started = Instant::now();
    plan.config
        .sources
        .iter()
        .enumerate()
        .map(|(index, source)| {
            let built: Arc<dyn Source> = match &source.kind {
                SourceKind::File(file) => Arc::new(FileSource::new(index as u16, &file.path, file.batch_records)),
                SourceKind::Kafka(kafka) => Arc::new(KafkaSource::new(index as u16, kafka.clone(), started)),
            };
            (source.name.clone(), built)
        })
        .collect()
}

/// The config's sinks, grouped by view, and its dead-letter destinations.
pub fn outputs(plan: &PipelinePlan) -> Result<Outputs, SinkError> {
    let mut view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>> = plan.views.iter().map(|_| Vec::new()).collect();
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    for sink in &plan.config.sinks {
        let Some(view_index) = plan.views.iter().position(|v| v.name == sink.view.value) else { continue };
        let built: Box<dyn ViewSink> = match &sink.kind {
            SinkKind::File(file) => {
                Box::new(FileViewSink::new(Arc::clone(&plan.views[view_index]), &file.path, Some(FILE_SINK_INTERVAL)))
            }
            // Readers read these: a rebuild replaces their rows in one write.
            SinkKind::Redis(redis) => Box::new(
                RedisViewSink::new(&sink.name, Arc::clone(&plan.views[view_index]), redis, source_names.clone())?
                    .keeping_rows_until_rebuilt(),
            ),
            SinkKind::ClickHouse(clickhouse) => Box::new(
                ClickHouseViewSink::new(
                    &sink.name,
                    Arc::clone(&plan.views[view_index]),
                    clickhouse,
                    source_names.clone(),
                )?
                .keeping_rows_until_rebuilt(),
            ),
            SinkKind::Parquet(parquet) => Box::new(ParquetViewSink::new(
                Arc::clone(&plan.views[view_index]),
                &parquet.path,
                Some(Duration::from_millis(parquet.every_ms)),
                source_names.clone(),
            )),
        };
        view_sinks[view_index].push((format!("sink {:?}", sink.name), built));
    }
    let names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    let mut routes = Vec::new();
    for source in &plan.config.sources {
        let route: Option<Box<dyn DeadLetterSink>> = match &source.kind {
            SourceKind::File(file) => {
                file.dead_letters.as_ref().map(|path| Box::new(FileDeadLetterSink::new(path, names.clone())) as _)
            }
            SourceKind::Kafka(kafka) => match &kafka.dead_letter_topic {
                Some(topic) => {
                    Some(Box::new(KafkaDeadLetterSink::new(&kafka.brokers, &kafka.properties, topic, &kafka.topic)?))
                }
                None => None,
            },
        };
        routes.push(route);
    }
    let (state_sinks, restore) = state_snapshots(plan, &source_names);
    Ok(Outputs {
        view_sinks,
        dead_letter_sinks: vec![("dead letters".to_string(), Box::new(DeadLetterRoutes { routes, names }))],
        state_sinks,
        restore,
    })
}

/// Sinks with their names.
pub type NamedSinks = Vec<(String, Box<dyn ViewSink>)>;

/// The shape of the pipeline's state snapshots.
pub fn state_shape() -> Shape {
    Shape {
        name: projector_dataflows::state::STATE_NAME.to_string(),
        fields: projector_dataflows::state::state_fields(),
        key_len: projector_dataflows::state::STATE_KEY_LEN,
    }
}

/// With a `state:` section: the sink that keeps the snapshot (and the one
/// before it), and both as candidates to start from, newest first.
fn state_snapshots(plan: &PipelinePlan, source_names: &[String]) -> (NamedSinks, Vec<Restore>) {
    match &plan.config.state {
        Some(state) => state_snapshots_at(&state.path, Duration::from_millis(state.every_ms), source_names),
        None => (Vec::new(), Vec::new()),
    }
}

/// The sink that keeps state snapshots at `path` (and the one before),
/// replaced at most `every`, and both as candidates to start from.
pub fn state_snapshots_at(path: &Path, every: Duration, source_names: &[String]) -> (NamedSinks, Vec<Restore>) {
    let sink = ParquetViewSink::of_shape(state_shape(), path, Some(every), source_names.to_vec())
        .keeping_previous()
        .first_write_after_an_interval();
    let mut restore = Vec::new();
    for path in [path.to_path_buf(), projector_sink_parquet::previous_path(path)] {
        let positions = match projector_sink_parquet::positions_of(&path) {
            Ok(Some(text)) => match positions_from_json(&text, source_names) {
                Ok(positions) => positions,
                Err(error) => {
                    warn!(snapshot = %path.display(), %error, "the snapshot's positions do not fit this config's sources");
                    continue;
                }
            },
            Ok(None) => continue,
            Err(error) => {
                warn!(snapshot = %path.display(), %error, "cannot read the state snapshot");
                continue;
            }
        };
        let name = path.display().to_string();
        let load = Box::new(move || projector_sink_parquet::read_rows(&state_shape(), &path).map(|(rows, _)| rows));
        restore.push(Restore { name, positions, load });
    }
    (vec![(format!("state snapshots {}", path.display()), Box::new(sink))], restore)
}

/// The outputs of a file run (`--output-dir`): every view to
/// `DIR/<view>.jsonl`, dead letters to `DIR/dead_letters.jsonl`, all
/// written once at the end.
pub fn directory_outputs(plan: &PipelinePlan, dir: &Path, source_names: Vec<String>) -> Outputs {
    Outputs {
        view_sinks: plan
            .views
            .iter()
            .map(|view| {
                let path = dir.join(format!("{}.jsonl", view.name));
                vec![(
                    path.display().to_string(),
                    Box::new(FileViewSink::new(Arc::clone(view), path, None)) as Box<dyn ViewSink>,
                )]
            })
            .collect(),
        dead_letter_sinks: vec![(
            "dead_letters.jsonl".to_string(),
            Box::new(FileDeadLetterSink::new(dir.join("dead_letters.jsonl"), source_names)),
        )],
        ..Outputs::default()
    }
}

/// Sends each source's dead letters to its own destination, or logs them
/// when it has none (they are still counted).
struct DeadLetterRoutes {
    routes: Vec<Option<Box<dyn DeadLetterSink>>>,
    names: Vec<String>,
}

impl DeadLetterSink for DeadLetterRoutes {
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        for (index, route) in self.routes.iter_mut().enumerate() {
            let mine: Vec<DeadLetter> = letters.iter().filter(|l| usize::from(l.source) == index).cloned().collect();
            if mine.is_empty() {
                continue;
            }
            match route {
                Some(sink) => sink.write(&mine)?,
                None => {
                    for letter in &mine {
                        warn!(
                            source = self.names.get(index).map_or("", String::as_str),
                            position = %letter.position,
                            kind = letter.kind.as_str(),
                            reason = %letter.reason,
                            "bad record"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        for sink in self.routes.iter_mut().flatten() {
            sink.finish()?;
        }
        Ok(())
    }
}

/// A serving store of the views of `plan` and of the orders, for the read
/// routes of the API: fed by one more sink per view in `outputs` and the
/// orders output, except the views `api.read_from` reads from a sink's
/// store.
pub fn serve_views(plan: &PipelinePlan, outputs: &mut Outputs) -> Result<Arc<ServingStore>, SinkError> {
    let store = Arc::new(ServingStore::new(plan));
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    for (view, sink) in plan.config.api.iter().flat_map(|api| &api.read_from) {
        let (Some(plan_view), Some(declared)) =
            (plan.views.iter().find(|v| v.name == view.value), plan.config.sinks.iter().find(|s| s.name == sink.value))
        else {
            continue;
        };
        let reader: Arc<dyn ViewReader> = match &declared.kind {
            SinkKind::Redis(redis) => Arc::new(
                RedisViewReader::new(&sink.value, plan_view, redis, source_names.clone()).map_err(SinkError::Fatal)?,
            ),
            SinkKind::ClickHouse(clickhouse) => Arc::new(
                ClickHouseViewReader::new(&sink.value, plan_view, clickhouse, source_names.clone())
                    .map_err(SinkError::Fatal)?,
            ),
            SinkKind::File(_) | SinkKind::Parquet(_) => continue,
        };
        store.read_from(&view.value, reader);
    }
    serve_store(plan, &store, outputs);
    Ok(store)
}

/// Adds the serving store's sinks to `outputs`.
pub fn serve_store(plan: &PipelinePlan, store: &ServingStore, outputs: &mut Outputs) {
    outputs.view_sinks.resize_with(plan.views.len(), Vec::new);
    for (index, view) in plan.views.iter().enumerate() {
        if let Some(sink) = store.sink(&view.name) {
            outputs.view_sinks[index].push(("serving".to_string(), Box::new(sink)));
        }
    }
    // After the views: the orders, for `GET /v1/orders/{order_id}`.
    outputs.view_sinks.push(vec![("serving".to_string(), Box::new(store.orders_sink()))]);
}

/// `(source index, partition, end offset)` of the Kafka sources, as
/// [`look_up_ends`] last found them.
type SourceEnds = Mutex<Vec<(u16, u32, u64)>>;

/// The counters of a run, for `/metrics`.
#[derive(Debug)]
struct RunCounters {
    progress: Arc<RunProgress>,
    ends: Arc<SourceEnds>,
}

impl PipelineCounters for RunCounters {
    fn events_read(&self) -> u64 {
        self.progress.records.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn dead_letters(&self) -> u64 {
        self.progress.dead_letters.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sink_writes(&self) -> Vec<(String, u64, f64, u64)> {
        self.progress.sink_writes().into_iter().map(|(name, w)| (name, w.writes, w.seconds, w.errors)).collect()
    }

    fn source_ends(&self) -> Vec<(u16, u32, u64)> {
        self.ends.lock().map(|ends| ends.clone()).unwrap_or_default()
    }
}

/// How often the end offsets of the Kafka sources are looked up for
/// `/metrics`.
const ENDS_INTERVAL: Duration = Duration::from_secs(5);

/// Connects a serving store to the run that feeds it: readiness, the run's
/// counters, and the end offsets of `kafka` (the Kafka sources, by source
/// index), looked up every few seconds while the store lives.
pub fn watch_run(store: &ServingStore, progress: &Arc<RunProgress>, kafka: Vec<(u16, KafkaSourceConfig)>) {
    let caught_up = Arc::clone(progress);
    store.set_caught_up(Box::new(move || caught_up.caught_up_upper()));
    let ends = Arc::new(Mutex::new(Vec::new()));
    if !kafka.is_empty() {
        let looking = Arc::downgrade(&ends);
        std::thread::spawn(move || look_up_ends(&kafka, &looking));
    }
    store.set_pipeline(Arc::new(RunCounters { progress: Arc::clone(progress), ends }));
}

/// The Kafka sources of `plan`, by source index.
pub fn kafka_sources(plan: &PipelinePlan) -> Vec<(u16, KafkaSourceConfig)> {
    plan.config
        .sources
        .iter()
        .enumerate()
        .filter_map(|(index, source)| match &source.kind {
            SourceKind::Kafka(kafka) => Some((index as u16, kafka.clone())),
            SourceKind::File(_) => None,
        })
        .collect()
}

/// Looks up the end offsets of `kafka` into `ends` every [`ENDS_INTERVAL`],
/// over one client per source kept between lookups, until nobody holds
/// `ends`. A topic that cannot be read keeps the ends it had (the run
/// itself says why it cannot read it).
fn look_up_ends(kafka: &[(u16, KafkaSourceConfig)], ends: &std::sync::Weak<SourceEnds>) {
    let mut found: BTreeMap<(u16, u32), u64> = BTreeMap::new();
    let mut clients: Vec<Option<Watermarks>> = kafka.iter().map(|_| None).collect();
    loop {
        for ((index, config), client) in kafka.iter().zip(&mut clients) {
            if client.is_none() {
                *client = Watermarks::new(&config.brokers, &config.properties, &config.topic)
                    .inspect_err(|error| tracing::debug!(topic = %config.topic, %error, "cannot make a Kafka client"))
                    .ok();
            }
            match client.as_ref().map(|client| client.look_up(ENDS_INTERVAL)) {
                Some(Ok(marks)) => {
                    found.extend(marks.into_iter().map(|(partition, (_, end))| ((*index, partition), end)))
                }
                Some(Err(error)) => tracing::debug!(topic = %config.topic, %error, "cannot look up the end offsets"),
                None => {}
            }
        }
        let Some(ends) = ends.upgrade() else { return };
        if let Ok(mut ends) = ends.lock() {
            *ends = found.iter().map(|((index, partition), end)| (*index, *partition, *end)).collect();
        }
        drop(ends);
        std::thread::sleep(ENDS_INTERVAL);
    }
}
