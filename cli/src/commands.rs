//! The subcommands, callable from the binary and from tests.

use std::path::Path;
use std::sync::Arc;

use projector_core::config::{self, ConfigErrors, PipelinePlan, SourceKind, StartPosition};
use projector_core::source::LogBounds;
use projector_dataflows::runner::{RunError, RunOptions, RunSummary, run};
use projector_datagen::{Generator, GeneratorConfig};
use projector_source_file::FileSource;

use crate::components;

/// Why a command failed; the binary maps these to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The config has errors (exit code 2).
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The run failed (exit code 1).
    #[error("{0}")]
    Run(#[from] RunError),
    /// Input or output failed (exit code 1).
    #[error("{0}")]
    Io(String),
}

/// Loads and checks a config.
pub fn load(path: &Path) -> Result<PipelinePlan, CommandError> {
    Ok(config::load(path)?)
}

/// `projector run --input FILE --output-dir DIR`: the config's views over
/// one events file, final rows to `DIR/<view>.jsonl`, dead letters to
/// `DIR/dead_letters.jsonl`. Sources and sinks of the config are not used.
pub fn run_file(
    plan: PipelinePlan,
    input: &Path,
    output_dir: &Path,
    batch_records: u64,
    options: RunOptions,
) -> Result<RunSummary, CommandError> {
    crate::keep_freed_memory(crate::KeepFreed::UntilExit);
    if !input.is_file() {
        return Err(CommandError::Io(format!("--input {}: no such file", input.display())));
    }
    std::fs::create_dir_all(output_dir)
        .map_err(|e| CommandError::Io(format!("--output-dir {}: cannot create it: {e}", output_dir.display())))?;
    let source_name = input.display().to_string();
    let outputs = components::directory_outputs(&plan, output_dir, vec![source_name.clone()]);
    let sources: Vec<(String, Arc<dyn projector_core::source::Source>)> =
        vec![(source_name, Arc::new(FileSource::new(0, input, batch_records)))];
    Ok(run(Arc::new(plan), sources, outputs, RunOptions { until_idle: true, ..options })?)
}

/// `projector run -c FILE`: the config's sources into its sinks, and its
/// HTTP API (with the command side) when it declares one.
pub fn run_config(plan: PipelinePlan, options: RunOptions) -> Result<RunSummary, CommandError> {
    crate::keep_freed_memory(crate::RUN_KEEPS_FREED);
    if plan.config.sources.is_empty() {
        return Err(CommandError::Io(format!(
            "{}: no sources are declared; add one under `sources:` or pass --input EVENTS.jsonl --output-dir DIR",
            plan.config.file
        )));
    }
    let mut outputs = components::outputs(&plan).map_err(|e| CommandError::Io(e.to_string()))?;
    // With an API, the views are also served from memory.
    let reads = match plan.config.api {
        Some(_) => Some(components::serve_views(&plan, &mut outputs).map_err(|e| CommandError::Io(e.to_string()))?),
        None => None,
    };
    if let Some(store) = &reads {
        components::watch_run(store, &options.progress, components::kafka_sources(&plan));
    }
    let api = crate::api::start(&plan, reads.clone())?;
    let plan = Arc::new(plan);
    let mut result = run(Arc::clone(&plan), components::sources(&plan), outputs, options.clone());
    // A sink whose store lost its data: run again, with fresh sources and
    // sinks (the serving store stays, resuming from what it shows); that
    // sink holds nothing now and takes the whole view, the others resume.
    while let Err(RunError::SinkLost(message)) = &result {
        tracing::warn!(%message, "a sink's store lost its data; starting the run over to rewrite it");
        let mut outputs = components::outputs(&plan).map_err(|e| CommandError::Io(e.to_string()))?;
        if let Some(store) = &reads {
            components::serve_store(&plan, store, &mut outputs);
        }
        result = run(Arc::clone(&plan), components::sources(&plan), outputs, options.clone());
    }
    if let Some(api) = api {
        api.stop();
    }
    Ok(result?)
}

/// Refuses a config with a Kafka source that starts at `latest` for a
/// command (`what`) that computes the views from the start of the log:
/// `latest` names the end of the topic now, not where the pipeline's first
/// run started, so that command would see none of the events before it.
pub fn refuse_a_latest_start(plan: &PipelinePlan, what: &str) -> Result<(), CommandError> {
    match plan.source_starting_at_latest() {
        Some(source) => Err(CommandError::Io(format!(
            "source {:?} starts at `latest`, which names the end of the topic now, not where the pipeline's \
             first run started; {what} computes the views from the start of the log, so give `start:` the \
             offsets the first run started at (or `earliest`) in the config you {what} with",
            source.name
        ))),
        None => Ok(()),
    }
}

/// A Kafka partition whose log now starts after the offset the config
/// starts reading it at: retention deleted the records between, and what
/// is computed from the log now lacks their events. (Whether a run ever
/// read them, nothing kept can say: the topic may have lost them before
/// the pipeline's first run.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedFront {
    /// The source's name.
    pub source: String,
    /// The partition.
    pub partition: u32,
    /// Where the config starts reading the partition.
    pub from: u64,
    /// The first offset the partition still holds (its low watermark).
    pub first: u64,
}

impl std::fmt::Display for DeletedFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "partition {} of source {:?} now starts at offset {}, not at {} where the config starts reading it",
            self.partition, self.source, self.first, self.from
        )
    }
}

/// Where each source's log starts and ends now, by source index (`None`:
/// it cannot tell).
pub fn log_bounds(plan: &PipelinePlan) -> Vec<Option<LogBounds>> {
    components::sources(plan).iter().map(|(_, source)| source.bounds()).collect()
}

/// Every [`DeletedFront`] of the config's Kafka sources, by their `bounds`
/// (a source whose bounds are not known, or that starts at a time, is not
/// judged).
pub fn deleted_fronts(plan: &PipelinePlan, bounds: &[Option<LogBounds>]) -> Vec<DeletedFront> {
    let mut fronts = Vec::new();
    for (config, bounds) in plan.config.sources.iter().zip(bounds) {
        let SourceKind::Kafka(kafka) = &config.kind else { continue };
        let configured = |partition: u32| match &kafka.start {
            StartPosition::Earliest => Some(0),
            StartPosition::Offsets(offsets) => Some(
                offsets.iter().find(|(p, _)| u32::try_from(*p) == Ok(partition)).map_or(0, |(_, o)| (*o).max(0) as u64),
            ),
            // `latest` is refused where it matters; a time names no offset.
            StartPosition::Latest | StartPosition::Timestamp(_) => None,
        };
        for (&partition, &(first, _)) in bounds.iter().flatten() {
            if let Some(from) = configured(partition)
                && first > from
            {
                fronts.push(DeletedFront { source: config.name.clone(), partition, from, first });
            }
        }
    }
    fronts
}

/// `projector export --view NAME --out FILE.parquet`: computes the view
/// from the config's sources as they stand (each read from its configured
/// start to where it ends when the export starts) and writes its rows to
/// one Parquet file, with the positions they reflect in its metadata. The
/// config's sinks and dead-letter destinations are not touched.
pub fn export(plan: PipelinePlan, view: &str, out: &Path, options: RunOptions) -> Result<RunSummary, CommandError> {
    crate::keep_freed_memory(crate::KeepFreed::UntilExit);
    let Some(index) = plan.views.iter().position(|v| v.name == view) else {
        let names: Vec<&str> = plan.views.iter().map(|v| v.name.as_str()).collect();
        return Err(CommandError::Io(format!("no view {view:?}; this config declares: {}", names.join(", "))));
    };
    if plan.config.sources.is_empty() {
        return Err(CommandError::Io(format!("{}: no sources are declared to export from", plan.config.file)));
    }
    refuse_a_latest_start(&plan, "export")?;
    // A file named otherwise (`view.csv`) would hold Parquet under a name
    // that says something else.
    if !out.extension().is_some_and(|extension| extension.eq_ignore_ascii_case("parquet")) {
        return Err(CommandError::Io(format!(
            "--out {}: export writes Parquet; name a file ending in .parquet",
            out.display()
        )));
    }
    for front in deleted_fronts(&plan, &log_bounds(&plan)) {
        tracing::warn!(
            "{front}: the records between were deleted (the topic's retention), and the exported view lacks \
             their events"
        );
    }
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    let mut view_sinks: Vec<Vec<(String, Box<dyn projector_core::sink::ViewSink>)>> =
        plan.views.iter().map(|_| Vec::new()).collect();
    let sink = projector_sink_parquet::ParquetViewSink::new(Arc::clone(&plan.views[index]), out, None, source_names);
    view_sinks[index].push((out.display().to_string(), Box::new(sink)));
    let outputs = projector_dataflows::runner::Outputs { view_sinks, ..Default::default() };
    let sources = components::sources(&plan);
    let options = RunOptions { until_idle: true, until_caught_up: true, ..options };
    Ok(run(Arc::new(plan), sources, outputs, options)?)
}

/// `projector drop --sink NAME`: deletes everything the sink holds (see
/// the command's help); answers what was done.
pub fn drop_sink(plan: &PipelinePlan, name: &str) -> Result<String, CommandError> {
    use projector_core::config::SinkKind;
    let Some(sink) = plan.config.sinks.iter().find(|s| s.name == name) else {
        let names: Vec<&str> = plan.config.sinks.iter().map(|s| s.name.as_str()).collect();
        return Err(CommandError::Io(format!("no sink {name:?}; this config declares: {}", names.join(", "))));
    };
    let failed = |error: projector_core::sink::SinkError| CommandError::Io(format!("sink {name:?}: {error}"));
    let view = plan
        .view(&sink.view.value)
        .cloned()
        .ok_or_else(|| CommandError::Io(format!("sink {name:?}: no view {:?}", sink.view.value)))?;
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    match &sink.kind {
        SinkKind::Redis(redis) => {
            projector_sink_redis::RedisViewSink::new(name, view, redis, source_names)
                .and_then(|mut sink| sink.drop_all())
                .map_err(failed)?;
            Ok(format!("sink {name:?}: deleted its Redis keys and checkpoint under prefix {:?}", redis.prefix))
        }
        SinkKind::ClickHouse(clickhouse) => {
            projector_sink_clickhouse::ClickHouseViewSink::new(name, view, clickhouse, source_names)
                .and_then(|mut sink| sink.drop_all())
                .map_err(failed)?;
            Ok(format!("sink {name:?}: dropped its ClickHouse tables in database {}", clickhouse.database))
        }
        SinkKind::File(projector_core::config::FileSinkConfig { path })
        | SinkKind::Parquet(projector_core::config::ParquetSinkConfig { path, .. }) => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(format!("sink {name:?}: deleted {}", path.display())),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    Ok(format!("sink {name:?}: {} was not there", path.display()))
                }
                Err(error) => {
                    Err(CommandError::Io(format!("sink {name:?}: cannot delete {}: {error}", path.display())))
                }
            }
        }
    }
}

/// `projector generate`: writes a generated log, one event per line.
pub fn generate(config: GeneratorConfig, out: &mut dyn std::io::Write) -> Result<u64, CommandError> {
    let mut written = 0;
    for record in Generator::new(config) {
        out.write_all(record.line.as_bytes()).map_err(|e| CommandError::Io(format!("cannot write: {e}")))?;
        out.write_all(b"\n").map_err(|e| CommandError::Io(format!("cannot write: {e}")))?;
        written += 1;
    }
    out.flush().map_err(|e| CommandError::Io(format!("cannot write: {e}")))?;
    Ok(written)
}
