//! `projector validate`: a view's sinks checked against the log.
//!
//! For each sink of the view: read everything it holds and the log
//! position its checkpoint claims (a file sink claims none: it is checked
//! against the whole log), recompute the view from the log up to that
//! position with a plain fold ([`Recomputation`], not the dataflow), and
//! compare, all keys or a random sample of them. Every difference is a
//! line: the key, the field, what the log says and what the sink holds.
//! A Redis sink's ranking sets are checked too: the entries of the checked
//! rows (missing, or another score), and when every key is checked, the
//! members no row has.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IteratorRandom;
use rand::{SeedableRng, rngs::ChaCha8Rng};

use projector_core::config::{PipelinePlan, SinkConfig, SinkKind};
use projector_core::recompute::Recomputation;
use projector_core::sink::{Selection, SourcePositions, ViewReader, positions_from_json, positions_to_json};
use projector_core::source::Poll;
use projector_core::value::{FieldType, Row, Timestamp, Value, parse_date, split_key};
use projector_core::view::ViewPlan;
use projector_sink_clickhouse::{ClickHouseViewReader, ClickHouseViewSink};
use projector_sink_redis::{HeldRankings, RedisViewReader, RedisViewSink};

use crate::commands::CommandError;
use crate::components;

/// What `projector validate` checks.
#[derive(Clone, Debug)]
pub struct ValidateOptions {
    /// The view.
    pub view: String,
    /// Check this many keys, drawn at random (all when `None`).
    pub sample_size: Option<usize>,
    /// Seed of the sample.
    pub seed: u64,
}

/// The outcome: the report, and how many differences it lists.
#[derive(Clone, Debug)]
pub struct Validation {
    /// What was checked and every difference, for a person.
    pub report: String,
    /// Differences found over all sinks (0: the sinks agree with the log).
    pub differences: usize,
}

/// Most differences listed per sink (all are counted).
const MAX_LISTED: usize = 50;
/// Times a sink that moved while it was read is read again.
const READ_ATTEMPTS: usize = 5;
/// How long the log may stay silent before it is taken to end short of
/// a sink's checkpoint.
const SILENT_LOG: Duration = Duration::from_secs(20);

/// What one sink holds: its rows and the position it claims (`None`: no
/// checkpoint, compared with the whole log); for a Redis sink with
/// rankings, its ranking sets and the sink that says which entries a row
/// should have.
struct Held {
    rows: BTreeMap<Row, Row>,
    positions: Option<SourcePositions>,
    rankings: Option<(HeldRankings, RedisViewSink)>,
}

/// Checks every sink of `options.view` against the log.
pub fn validate(plan: &PipelinePlan, options: &ValidateOptions) -> Result<Validation, CommandError> {
    let view = plan.view(&options.view).ok_or_else(|| {
        let names: Vec<&str> = plan.views.iter().map(|v| v.name.as_str()).collect();
        CommandError::Io(format!("no view {:?}; this config declares: {}", options.view, names.join(", ")))
    })?;
    let sinks: Vec<&SinkConfig> = plan.config.sinks.iter().filter(|s| s.view.value == options.view).collect();
    if sinks.is_empty() {
        return Err(CommandError::Io(format!(
            "view {:?} has no sinks to validate; declare one under `sinks:`",
            options.view
        )));
    }
    if options.sample_size == Some(0) {
        return Err(CommandError::Io(
            "--sample-size 0 checks no key; give at least 1, or leave it out to check every key".into(),
        ));
    }
    crate::commands::refuse_a_latest_start(plan, "validate")?;
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    let held: Vec<Option<Held>> =
        sinks.iter().map(|sink| read_sink(view, sink, &source_names)).collect::<Result<_, _>>()?;
    // The log is read once, as far as the furthest sink (to its end when a
    // sink claims no position).
    let furthest = held.iter().flatten().try_fold(SourcePositions::default(), |mut furthest, held| {
        let positions = held.positions.as_ref()?;
        for (partition, offset) in &positions.0 {
            let at = furthest.0.entry(*partition).or_insert(0);
            *at = (*at).max(*offset);
        }
        Some(furthest)
    });
    let log = read_log(plan, furthest.as_ref(), &source_names)?;
    let mut report = String::new();
    for front in crate::commands::deleted_fronts(plan, &crate::commands::log_bounds(plan)) {
        let _ = writeln!(
            report,
            "note: {front}: the records between were deleted (the topic's retention), and the recomputation \
             lacks their events. If a run read them, the rows of the orders they belong to differ for that \
             reason alone"
        );
    }
    let fields = view.output_fields();
    // Recomputations by the position they reach (`None`: the whole log).
    let mut expected: BTreeMap<Option<String>, (BTreeMap<Row, Row>, u64)> = BTreeMap::new();
    let mut differences = 0;
    for (sink, held) in sinks.into_iter().zip(held) {
        let Some(held) = held else {
            // Every row may differ, and its columns may not be this view's.
            let _ = writeln!(
                report,
                "sink {:?}: its rows were computed by another definition of view {:?} than this config's (it \
                 changed since a run last opened the sink); `projector run` with this config rebuilds the sink",
                sink.name, options.view
            );
            differences += 1;
            continue;
        };
        let kind = match sink.kind {
            SinkKind::File(_) => "file",
            SinkKind::Parquet(_) => "parquet",
            SinkKind::Redis(_) => "redis",
            SinkKind::ClickHouse(_) => "clickhouse",
        };
        if matches!(sink.kind, SinkKind::ClickHouse(_))
            && held.positions.as_ref().is_some_and(|p| p.0.is_empty())
            && !held.rows.is_empty()
        {
            // A ClickHouse sink whose run found rows a dead run had written
            // and never committed (or whose view's definition changed): it
            // claims no position until it has rewritten the whole view, so
            // its rows are no prefix of the log to compare with.
            let _ = writeln!(
                report,
                "sink {:?} ({kind}): {} rows but no checkpoint: a run is rebuilding the view in it (it found rows \
                 that a run which died had written and never committed, or the view's definition changed) and has \
                 not committed it yet; validate again once it has (`projector status` then shows a checkpoint for \
                 the sink)",
                sink.name,
                held.rows.len()
            );
            differences += 1;
            continue;
        }
        let claimed = held.positions.as_ref().map(|p| positions_to_json(p, &source_names));
        let (want, records) = expected.entry(claimed.clone()).or_insert_with(|| {
            let target = held.positions.as_ref();
            (log.view_of(view, &log.orders_at(target)), log.records_at(target))
        });
        let at = match &held.positions {
            None => "the end of the log (a file sink keeps no checkpoint)",
            Some(positions) if positions.0.is_empty() => "no checkpoint (nothing written yet)",
            Some(_) => claimed.as_deref().unwrap_or_default(),
        };
        let _ = writeln!(
            report,
            "sink {:?} ({kind}): {} rows at {at}; the log up to there ({records} records) gives {} rows",
            sink.name,
            held.rows.len(),
            want.len()
        );
        let keys: BTreeSet<&Row> = want.keys().chain(held.rows.keys()).collect();
        let checked: Vec<&Row> = match options.sample_size {
            Some(size) if size < keys.len() => {
                let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
                let mut sample = keys.iter().copied().sample(&mut rng, size);
                sample.sort();
                sample
            }
            _ => keys.into_iter().collect(),
        };
        let mut lines = Vec::new();
        for key in &checked {
            compare(&fields, view.keys.len(), key, want.get(*key), held.rows.get(*key), &mut lines);
        }
        let sampled = options.sample_size.is_some_and(|size| size < want.len().max(held.rows.len()));
        if let Some((rankings, sink)) = &held.rankings {
            compare_rankings(sink, rankings, &checked, want, !sampled, &mut lines);
        }
        if sampled && held.rows.len() != want.len() {
            // The keys that differ may not be in the sample, but the counts
            // already say that some do.
            lines.push(format!(
                "row count: expected {}, found {} (validate without --sample-size to list every key that differs)",
                want.len(),
                held.rows.len()
            ));
        }
        let scope = if sampled {
            format!("{} keys drawn at random (seed {})", checked.len(), options.seed)
        } else {
            format!("all {} keys", checked.len())
        };
        if lines.is_empty() {
            let _ = writeln!(report, "  checked {scope}: ok");
        } else {
            let _ = writeln!(report, "  checked {scope}: {} differences", lines.len());
            for line in lines.iter().take(MAX_LISTED) {
                let _ = writeln!(report, "  {line}");
            }
            if lines.len() > MAX_LISTED {
                let _ = writeln!(report, "  … and {} more", lines.len() - MAX_LISTED);
            }
        }
        differences += lines.len();
    }
    Ok(Validation { report, differences })
}

/// The differences at one key: a missing row, an unexpected one, or each
/// field that differs.
fn compare(
    fields: &[(String, FieldType)],
    key_len: usize,
    key: &Row,
    want: Option<&Row>,
    found: Option<&Row>,
    lines: &mut Vec<String>,
) {
    let (key_fields, value_fields) = fields.split_at(key_len);
    let key_text: Vec<String> =
        key_fields.iter().zip(key.iter()).map(|((name, _), value)| format!("{name}={}", value.to_json())).collect();
    let key_text = key_text.join(", ");
    let object = |values: &Row| {
        let pairs: Vec<String> = value_fields
            .iter()
            .zip(values.iter())
            .map(|((name, _), value)| format!("{name}: {}", value.to_json()))
            .collect();
        format!("{{{}}}", pairs.join(", "))
    };
    match (want, found) {
        (Some(want), None) => lines.push(format!("key ({key_text}): missing; the log gives {}", object(want))),
        (None, Some(found)) => {
            lines.push(format!("key ({key_text}): the sink holds {} but the log gives no row", object(found)));
        }
        (Some(want), Some(found)) => {
            for (((name, _), expected), held) in value_fields.iter().zip(want.iter()).zip(found.iter()) {
                if expected != held {
                    lines.push(format!(
                        "key ({key_text}): {name}: expected {}, found {}",
                        expected.to_json(),
                        held.to_json()
                    ));
                }
            }
        }
        (None, None) => {}
    }
}

/// The ranking entries the rows of `checked` should have in `held`, by
/// what `want` (the log) gives for them: one line per entry that is
/// missing or has another score; with `whole`, also one per member of a
/// set that no row gives.
fn compare_rankings(
    sink: &RedisViewSink,
    held: &HeldRankings,
    checked: &[&Row],
    want: &BTreeMap<Row, Row>,
    whole: bool,
    lines: &mut Vec<String>,
) {
    let found = |set: &str, member: &str| held.get(set).and_then(|members| members.get(member)).copied();
    let mut given: BTreeSet<(String, String)> = BTreeSet::new();
    for key in checked {
        let Some(values) = want.get(*key) else { continue };
        for (set, member, score) in sink.ranking_entries(key, values) {
            let Some(score) = score else { continue };
            match found(&set, &member) {
                Some(held) if held == score => {}
                Some(held) => {
                    lines.push(format!("ranking {set:?}: member {member:?}: expected score {score}, found {held}"))
                }
                None => lines.push(format!("ranking {set:?}: member {member:?}: missing; the log gives score {score}")),
            }
            given.insert((set, member));
        }
    }
    if whole {
        for (set, members) in held {
            for (member, score) in members {
                if !given.contains(&(set.clone(), member.clone())) {
                    lines.push(format!(
                        "ranking {set:?}: member {member:?}: the sink holds score {score} but the log gives no such entry"
                    ));
                }
            }
        }
    }
}

/// Everything `sink` holds, and the position it claims; `None` for a sink
/// whose rows another definition of the view computed (the YAML changed
/// since a run last opened it), which is not read: its columns may not be
/// this view's.
fn read_sink(view: &Arc<ViewPlan>, sink: &SinkConfig, source_names: &[String]) -> Result<Option<Held>, CommandError> {
    let failed = |error: String| CommandError::Io(format!("sink {:?}: {error}", sink.name));
    match &sink.kind {
        SinkKind::Redis(redis) => {
            let reader = RedisViewReader::new(&sink.name, view, redis, source_names.to_vec()).map_err(failed)?;
            let mut ranked = RedisViewSink::new(&sink.name, Arc::clone(view), redis, source_names.to_vec())
                .map_err(|e| failed(e.to_string()))?;
            if ranked.holds_another_definition().map_err(|e| failed(e.to_string()))? {
                return Ok(None);
            }
            for _ in 0..READ_ATTEMPTS {
                let all = reader.all_rows(READ_ATTEMPTS).map_err(|e| failed(e.to_string()))?;
                // The rankings, read after the rows: both at one checkpoint.
                let rankings = match ranked.has_rankings() {
                    true => Some(ranked.held_rankings().map_err(|e| failed(e.to_string()))?),
                    false => None,
                };
                if rankings.is_none() || reader.claimed().map_err(|e| failed(e.to_string()))? == all.positions {
                    return Ok(Some(Held {
                        rows: all.rows.into_iter().collect(),
                        positions: Some(all.positions),
                        rankings: rankings.map(|rankings| (rankings, ranked)),
                    }));
                }
            }
            Err(failed(format!(
                "it kept moving while it was read ({READ_ATTEMPTS} tries); stop its pipeline and try again"
            )))
        }
        SinkKind::ClickHouse(clickhouse) => {
            let reader =
                ClickHouseViewReader::new(&sink.name, view, clickhouse, source_names.to_vec()).map_err(failed)?;
            let reader: &dyn ViewReader = &reader;
            if ClickHouseViewSink::new(&sink.name, Arc::clone(view), clickhouse, source_names.to_vec())
                .and_then(|sink| sink.holds_another_definition())
                .map_err(|e| failed(e.to_string()))?
            {
                return Ok(None);
            }
            for _ in 0..READ_ATTEMPTS {
                let all = reader.select(&Selection::default()).map_err(|e| failed(e.to_string()))?;
                let after = reader
                    .select(&Selection { limit: Some(0), ..Selection::default() })
                    .map_err(|e| failed(e.to_string()))?;
                if after.positions == all.positions {
                    return Ok(Some(Held {
                        rows: all.rows.into_iter().collect(),
                        positions: Some(all.positions),
                        rankings: None,
                    }));
                }
            }
            Err(failed(format!(
                "it kept moving while it was read ({READ_ATTEMPTS} tries); stop its pipeline and try again"
            )))
        }
        SinkKind::File(file) => {
            Ok(Some(Held { rows: read_file_sink(view, &file.path).map_err(failed)?, positions: None, rankings: None }))
        }
        // Not written yet: it holds nothing and claims no position.
        SinkKind::Parquet(parquet) if !parquet.path.exists() => {
            Ok(Some(Held { rows: BTreeMap::new(), positions: Some(SourcePositions::default()), rankings: None }))
        }
        SinkKind::Parquet(parquet) => {
            let (rows, positions) =
                projector_sink_parquet::read_parquet(&projector_sink_parquet::Shape::of(view), &parquet.path)
                    .map_err(failed)?;
            let positions = match positions {
                Some(text) => Some(positions_from_json(&text, source_names).map_err(failed)?),
                None => None,
            };
            Ok(Some(Held { rows, positions, rankings: None }))
        }
    }
}

/// The rows of a file sink (JSON Lines, one object per row).
fn read_file_sink(view: &ViewPlan, path: &Path) -> Result<BTreeMap<Row, Row>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let fields = view.output_fields();
    let mut rows = BTreeMap::new();
    for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
        let bad = |what: String| format!("{}:{}: {what}", path.display(), number + 1);
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let values = fields
            .iter()
            .map(|(name, ty)| {
                let json = object.get(name).unwrap_or(&serde_json::Value::Null);
                from_json(json, *ty).ok_or_else(|| bad(format!("field {name:?} holds {json}, not a {ty:?}")))
            })
            .collect::<Result<Vec<Value>, String>>()?;
        let (key, values) = split_key(values, view.keys.len());
        rows.insert(key, values);
    }
    Ok(rows)
}

/// A field value as the file sink writes it.
fn from_json(json: &serde_json::Value, ty: FieldType) -> Option<Value> {
    use serde_json::Value as Json;
    Some(match (json, ty) {
        (Json::Null, _) => Value::Null,
        (Json::Number(n), FieldType::UInt) => Value::UInt(n.as_u64()?),
        (Json::Number(n), FieldType::Int) => Value::Int(n.as_i64()?),
        (Json::String(s), FieldType::Text) => Value::Text(s.as_str().into()),
        (Json::String(s), FieldType::Date) => Value::Date(parse_date(s)?),
        (Json::String(s), FieldType::Timestamp) => Value::Timestamp(Timestamp::parse_rfc3339(s)?),
        (Json::Bool(b), FieldType::Bool) => Value::Bool(*b),
        _ => return None,
    })
}

/// The log read from each source's configured start up to `target` (every
/// record before its offset per partition), or to where it ends now;
/// `source_names` name the sources in messages.
fn read_log(
    plan: &PipelinePlan,
    target: Option<&SourcePositions>,
    source_names: &[String],
) -> Result<Recomputation, CommandError> {
    let mut log = Recomputation::new();
    for (index, (name, source)) in components::sources(plan).into_iter().enumerate() {
        let source_index = index as u16;
        let failed = |error: String| CommandError::Io(format!("source {name:?}: {error}"));
        let mut reader = source.reader(0, 1).map_err(|e| failed(e.to_string()))?;
        let mut heard = Instant::now();
        loop {
            let wanted = |position: projector_core::record::LogPosition| {
                target.is_none_or(|target| position.offset < target.get(source_index, position.partition))
            };
            let poll = reader
                .poll(10_000, &mut |record| {
                    if wanted(record.position) {
                        log.add(source_index, record.position, record.bytes);
                    }
                })
                .map_err(|e| failed(e.to_string()))?;
            let positions = reader.positions();
            let reached = |target: &SourcePositions| {
                target
                    .0
                    .iter()
                    .filter(|((source, _), _)| *source == source_index)
                    .all(|((_, partition), offset)| positions.get(source_index, *partition) >= *offset)
            };
            let done = match (poll, target) {
                (Poll::Records { .. }, _) => {
                    heard = Instant::now();
                    target.map_or_else(|| reader.caught_up(), reached)
                }
                (_, Some(target)) => reached(target),
                (Poll::Finished, None) => true,
                (Poll::Idle { .. }, None) => reader.caught_up(),
            };
            if done {
                break;
            }
            // A bounded log (a file) that ended short of a sink's position
            // will not reach it; an unbounded one is given a while.
            if poll == Poll::Finished || heard.elapsed() > SILENT_LOG {
                return Err(failed(format!(
                    "the log ends before the position a sink claims ({}): was it truncated, or its topic deleted \
                     and created anew? The sink's rows then come from records that are gone",
                    target.map_or_else(|| "its end".to_string(), |t| positions_to_json(t, source_names))
                )));
            }
        }
    }
    Ok(log)
}
