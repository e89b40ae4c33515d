//! `projector status`: where each source partition and each sink stands.
//!
//! For every source partition: the first offset the log still holds (a
//! Kafka partition's low watermark: retention deletes what is before it),
//! the committed offset (the lowest position any checkpointing sink has
//! committed: a restart delivers everything after it), the end of the log,
//! and the lag between them. For every sink: its generation, its
//! checkpoint, and the age of its newest data. A sink or state snapshot
//! that stands before the first offset is named: the records between were
//! deleted before it read them, and a run refuses to go on from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use projector_core::config::{PipelinePlan, SinkKind, SourceKind};
use projector_core::sink::{SinkStatus, SourcePositions};
use projector_core::source::LogBounds;

use crate::commands::CommandError;

/// What one sink said, or why it could not say.
struct SinkReport {
    name: String,
    kind: &'static str,
    view: String,
    status: Result<Option<SinkStatus>, String>,
    /// A snapshot file's positions and age (it takes no part in resuming).
    snapshot: Option<Result<SinkStatus, String>>,
}

fn sink_reports(plan: &PipelinePlan) -> Vec<SinkReport> {
    plan.config
        .sinks
        .iter()
        .map(|sink| {
            let snapshot = match &sink.kind {
                SinkKind::Parquet(parquet) => Some(projector_sink_parquet::status(&parquet.path)),
                _ => None,
            };
            let (kind, status) = match &sink.kind {
                SinkKind::File(_) => ("file", Ok(None)),
                SinkKind::Parquet(_) => ("parquet", Ok(None)),
                SinkKind::Redis(redis) => ("redis", projector_sink_redis::status(redis, &sink.name).map(Some)),
                SinkKind::ClickHouse(clickhouse) => {
                    ("clickhouse", projector_sink_clickhouse::status(clickhouse, &sink.name).map(Some))
                }
            };
            SinkReport { name: sink.name.clone(), kind, view: sink.view.value.clone(), status, snapshot }
        })
        .collect()
}

fn age(written_at_ms: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let seconds = (now - written_at_ms).max(0) as f64 / 1000.0;
    if seconds < 120.0 { format!("{seconds:.1} s ago") } else { format!("{:.1} min ago", seconds / 60.0) }
}

/// The report, as text; `Err` when some source or sink could not be read
/// (the text still says everything that could be).
pub fn status(plan: &PipelinePlan) -> Result<String, (String, CommandError)> {
    let mut out = String::new();
    let mut problems = Vec::new();
    let sinks = sink_reports(plan);
    // Per source and partition, the lowest committed offset of any sink.
    let mut committed: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let checkpointing: Vec<&SinkStatus> =
        sinks.iter().filter_map(|s| s.status.as_ref().ok().and_then(Option::as_ref)).collect();
    // Per source, in order: where its log starts and ends (`None`: that
    // could not be read).
    let mut bounds: Vec<Option<LogBounds>> = Vec::new();
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    for source in &plan.config.sources {
        let read: Result<LogBounds, String> = match &source.kind {
            SourceKind::Kafka(kafka) => {
                let _ = writeln!(out, "source {} (kafka topic {} at {})", source.name, kafka.topic, kafka.brokers);
                projector_source_kafka::source::watermarks(&kafka.brokers, &kafka.properties, &kafka.topic, None)
                    .map_err(|e| e.to_string())
            }
            SourceKind::File(file) => {
                let _ = writeln!(out, "source {} (file {})", source.name, file.path.display());
                let _ = writeln!(
                    out,
                    "  positions are line numbers, the next line to read: a file of N lines ends at N + 1"
                );
                projector_source_file::end(&file.path).map(|end| [(0, (0, end))].into_iter().collect())
            }
        };
        let read = match read {
            Ok(read) => Some(read),
            Err(error) => {
                let _ = writeln!(out, "  cannot read the end of the log: {error}");
                problems.push(format!("source {}: {error}", source.name));
                None
            }
        };
        let _ =
            writeln!(out, "  {:>9}  {:>12}  {:>12}  {:>12}  {:>10}", "partition", "first", "committed", "end", "lag");
        for (partition, (first, end)) in read.iter().flatten() {
            let lowest = checkpointing
                .iter()
                .map(|status| {
                    status
                        .positions
                        .as_ref()
                        .and_then(|p| p.get(&source.name))
                        .and_then(|p| p.get(partition))
                        .copied()
                        .unwrap_or(0)
                })
                .min();
            if let Some(lowest) = lowest {
                committed.insert((source.name.clone(), *partition), lowest);
            }
            let (shown, lag) = match lowest {
                Some(lowest) => (lowest.to_string(), end.saturating_sub(lowest).to_string()),
                None => ("-".to_string(), "-".to_string()),
            };
            let _ = writeln!(out, "  {partition:>9}  {first:>12}  {shown:>12}  {end:>12}  {lag:>10}");
        }
        bounds.push(read);
    }
    for sink in &sinks {
        let _ = writeln!(out, "sink {} ({}, view {})", sink.name, sink.kind, sink.view);
        match (&sink.status, &sink.snapshot) {
            (Ok(None), Some(Ok(snapshot))) => {
                let at = snapshot.positions.as_ref().map_or("none (not written yet)".to_string(), |positions| {
                    serde_json::to_string(positions).unwrap_or_default()
                });
                let written = snapshot.written_at_ms.map_or("never".to_string(), age);
                let _ = writeln!(out, "  snapshot at {at}, written {written} (rewritten from the views at each run)");
            }
            (Ok(None), Some(Err(error))) => {
                let _ = writeln!(out, "  cannot read its snapshot: {error}");
                problems.push(format!("sink {}: {error}", sink.name));
            }
            (Ok(None), None) => {
                let _ = writeln!(out, "  no checkpoint (rewritten from the views at each run)");
            }
            (Ok(Some(status)), _) => {
                let generation = status.generation.map_or("-".to_string(), |g| g.to_string());
                let checkpoint = match &status.positions {
                    Some(positions) => serde_json::to_string(positions).unwrap_or_default(),
                    None if status.rebuilding => "none (a run is rebuilding the view in it: until it commits, the \
                                                   rows it holds are not a view of the log)"
                        .to_string(),
                    None => "none (holds nothing yet)".to_string(),
                };
                let newest = status.written_at_ms.map_or("never".to_string(), age);
                let _ = writeln!(out, "  generation {generation}, checkpoint {checkpoint}, newest data {newest}");
                if let Some((source, partition, offset, first)) =
                    status.positions.as_ref().and_then(|at| before_the_start(at, &source_names, &bounds))
                {
                    let _ = writeln!(
                        out,
                        "  before the start of the log: it stands at offset {offset} of partition {partition} of \
                         source {source}, which now starts at {first}; the records between were deleted before it \
                         read them, and `projector run` refuses to go on (see \"Kafka retention\" in the README)"
                    );
                    problems.push(format!(
                        "sink {}: stands before the start of partition {partition} of source {source} (offset \
                         {offset}, the log starts at {first})",
                        sink.name
                    ));
                }
            }
            (Err(error), _) => {
                let _ = writeln!(out, "  cannot read its state: {error}");
                problems.push(format!("sink {}: {error}", sink.name));
            }
        }
    }
    if let Some(state) = &plan.config.state {
        let _ = writeln!(out, "state snapshots {}", state.path.display());
        for path in [state.path.clone(), projector_sink_parquet::previous_path(&state.path)] {
            match projector_sink_parquet::status(&path) {
                Ok(SinkStatus { positions: Some(positions), written_at_ms, .. }) => {
                    let at = serde_json::to_string(&positions).unwrap_or_default();
                    let written = written_at_ms.map_or("never".to_string(), age);
                    let _ = writeln!(out, "  {}: at {at}, written {written}", path.display());
                    if let Some((source, partition, offset, first)) =
                        before_the_start(&positions, &source_names, &bounds)
                    {
                        let _ = writeln!(
                            out,
                            "    before the start of the log (offset {offset} of partition {partition} of source \
                             {source}, which now starts at {first}): a run refuses to start from it"
                        );
                    }
                }
                Ok(_) => {
                    let _ = writeln!(out, "  {}: none yet", path.display());
                }
                Err(error) => {
                    let _ = writeln!(out, "  {}: cannot be read ({error}); a restart passes it over", path.display());
                }
            }
        }
    }
    if problems.is_empty() { Ok(out) } else { Err((out, CommandError::Io(problems.join("; ")))) }
}

/// The first partition where `at` (positions by source name) stands
/// before the start of its log, judged as a run judges it
/// ([`projector_dataflows::runner::before_the_start`]), as (source,
/// partition, offset, first offset of the log). `bounds` are by source
/// index, named by `source_names`.
fn before_the_start(
    at: &BTreeMap<String, BTreeMap<u32, u64>>,
    source_names: &[String],
    bounds: &[Option<LogBounds>],
) -> Option<(String, u32, u64, u64)> {
    let by_index = source_names.iter().enumerate().flat_map(|(index, name)| {
        at.get(name).into_iter().flatten().map(move |(partition, offset)| ((index as u16, *partition), *offset))
    });
    let ((index, partition), offset, first) =
        projector_dataflows::runner::before_the_start(&SourcePositions(by_index.collect()), bounds)?;
    Some((source_names.get(usize::from(index))?.clone(), partition, offset, first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_before_the_first_offset_kept_is_named() {
        let names = ["events".to_string()];
        let bounds = [Some([(0, (0, 50)), (1, (40, 90))].into_iter().collect())];
        let at = |p0: u64, p1: Option<u64>| -> BTreeMap<String, BTreeMap<u32, u64>> {
            let mut partitions: BTreeMap<u32, u64> = [(0, p0)].into_iter().collect();
            partitions.extend(p1.map(|offset| (1, offset)));
            [("events".to_string(), partitions)].into_iter().collect()
        };
        assert_eq!(before_the_start(&at(10, Some(40)), &names, &bounds), None);
        assert_eq!(before_the_start(&at(50, Some(90)), &names, &bounds), None);
        assert_eq!(before_the_start(&at(10, Some(39)), &names, &bounds), Some(("events".to_string(), 1, 39, 40)));
        // A partition the position does not name stands at 0.
        assert_eq!(before_the_start(&at(0, None), &names, &bounds), Some(("events".to_string(), 1, 0, 40)));
        // Another source's bounds, or none, judge nothing.
        assert_eq!(before_the_start(&at(0, None), &names, &[]), None);
    }
}
