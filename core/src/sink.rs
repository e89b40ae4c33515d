//! The seam between the dataflow and the places views and dead letters go.
//!
//! The runtime delivers each view's changes to its sinks one completed
//! batch at a time, together with the log positions that batch reflects, so
//! a sink can store data and its checkpoint together (exactly-once sinks
//! build on that). All calls for one sink come from one thread.

use std::collections::{BTreeMap, HashMap};

use crate::record::{DeadLetter, LogPosition};
use crate::value::{Row, Timestamp, Value};

/// For each source partition, the next offset to read: everything before it
/// is reflected in the output that carries these positions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcePositions(pub BTreeMap<(u16, u32), u64>);

impl SourcePositions {
    /// Combines the positions reported by several workers; a partition
    /// reported twice keeps the lower (more conservative) position.
    pub fn merge(&mut self, other: &SourcePositions) {
        for (partition, offset) in &other.0 {
            self.0.entry(*partition).and_modify(|o| *o = (*o).min(*offset)).or_insert(*offset);
        }
    }
}

/// One change of a view: the row with this key and these values appears
/// (`diff` > 0) or disappears (`diff` < 0). An updated row is a removal of
/// the old values and an addition of the new ones in the same batch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ViewChange {
    /// The group-by key fields.
    pub key: Row,
    /// The measure and label fields.
    pub values: Row,
    /// +1 added, -1 removed.
    pub diff: i64,
}

impl SourcePositions {
    /// Whether every partition is at or before its position in `other`
    /// (a partition missing from either side is at offset 0).
    pub fn le(&self, other: &SourcePositions) -> bool {
        let at = |positions: &SourcePositions, partition| positions.0.get(partition).copied().unwrap_or(0);
        self.0.keys().chain(other.0.keys()).all(|partition| at(self, partition) <= at(other, partition))
    }

    /// The next offset of one partition (0 when it is not listed).
    pub fn get(&self, source: u16, partition: u32) -> u64 {
        self.0.get(&(source, partition)).copied().unwrap_or(0)
    }

    /// Whether the record at `position` of source `source` is before these
    /// positions (what they reflect).
    pub fn before(&self, source: u16, position: LogPosition) -> bool {
        position.offset < self.get(source, position.partition)
    }

    /// The sum of all offsets: a total order consistent with [`Self::le`].
    pub fn total(&self) -> u128 {
        self.0.values().map(|o| u128::from(*o)).sum()
    }
}

/// A view's rows, by key: what a view holds after a batch (in no order;
/// sinks that write in key order sort). Hashed with foldhash, seeded per
/// process: SipHash took about a seventh of the shadow sinks' time in a
/// `product_sales` replay's run.
pub type ViewRows = HashMap<Row, Row, RowHasher>;

/// How maps keyed by rows hash them (see [`ViewRows`]).
pub type RowHasher = foldhash::fast::RandomState;

/// A completed batch of one view's changes.
#[derive(Clone, Copy, Debug)]
pub struct ViewBatch<'a> {
    /// The changes, consolidated, sorted by key.
    pub changes: &'a [ViewChange],
    /// The batch is complete for all input before this epoch.
    pub upper: u64,
    /// The source positions the view reflects after this batch.
    pub positions: &'a SourcePositions,
    /// The latest `occurred_at` of the events the view reflects, if any:
    /// with the time now, how fresh the view is.
    pub newest_event_at: Option<Timestamp>,
    /// The whole view after this batch, for a sink that must rewrite all of
    /// it (for example after its store lost its data); kept only for sinks
    /// whose [`ViewSink::wants_rows`] says so, empty for the others.
    pub rows: &'a ViewRows,
}

/// Why a sink could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A retry may succeed (the destination is down or busy).
    #[error("{0} (will retry)")]
    Retryable(String),
    /// A retry will not help (bad configuration, no permission).
    #[error("{0}")]
    Fatal(String),
    /// The store lost what the sink wrote (its checkpoint is gone, as
    /// after a restart without persistence): the run starts over, and the
    /// sink, holding nothing, takes the whole view from the start, while
    /// the other sinks resume from their checkpoints.
    #[error("{0}")]
    Lost(String),
}

/// The destination of one view.
///
/// Calling order: [`ViewSink::resume`] once before anything else (and
/// [`ViewSink::reset`] if the runner cannot start from what it holds);
/// [`ViewSink::apply`] once per completed batch after the position the sink
/// resumed from, in log order (a batch may have no changes when only
/// progress advanced); then [`ViewSink::finish`] once, when the run ends
/// after all bounded input was processed.
pub trait ViewSink: Send {
    /// Opens the sink for this run and says which source positions the view
    /// it already holds reflects (`None`: it holds nothing). The runner then
    /// hands it only the changes after that position. A sink that fences
    /// older runs takes its new generation here.
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        Ok(None)
    }
    /// Whether [`ViewBatch::rows`] must hold the whole view (the runner
    /// then keeps a copy of it for this sink).
    fn wants_rows(&self) -> bool {
        false
    }
    /// Drops what the sink holds: the runner cannot start from the position
    /// it reported and will hand it the whole view from the start. A sink
    /// that readers read may keep its rows until its next write and replace
    /// them there, in the same transaction.
    fn reset(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Takes one completed batch.
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError>;
    /// Flushes everything; called once at the end of a bounded run.
    fn finish(&mut self) -> Result<(), SinkError>;
}

/// The destination of bad records.
///
/// Calling order: [`DeadLetterSink::write`] with the dead letters of each
/// completed batch, in log order within a source partition; then
/// [`DeadLetterSink::finish`] once at the end of a bounded run.
pub trait DeadLetterSink: Send {
    /// Takes the dead letters of one completed batch.
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError>;
    /// Flushes everything.
    fn finish(&mut self) -> Result<(), SinkError>;
}

/// Source positions as sinks store them in their checkpoints: by source
/// name (indexes change when the config changes) and partition, e.g.
/// `{"orders":{"0":1200,"1":1187}}`.
pub fn positions_to_json(positions: &SourcePositions, source_names: &[String]) -> String {
    positions_to_value(positions, source_names).to_string()
}

/// [`positions_to_json`] as a JSON value, for a document that embeds it.
pub fn positions_to_value(positions: &SourcePositions, source_names: &[String]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for ((source, partition), next) in &positions.0 {
        let name = source_names.get(usize::from(*source)).map_or("?", String::as_str);
        let entry = out.entry(name).or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
        if let serde_json::Value::Object(partitions) = entry {
            partitions.insert(partition.to_string(), serde_json::Value::from(*next));
        }
    }
    serde_json::Value::Object(out)
}

/// Reads [`positions_to_json`]'s text back; sources no longer configured
/// are left out (nothing of theirs is read again).
pub fn positions_from_json(text: &str, source_names: &[String]) -> Result<SourcePositions, String> {
    let parsed: BTreeMap<String, BTreeMap<String, u64>> =
        serde_json::from_str(text).map_err(|e| format!("the stored positions {text:?} are not valid: {e}"))?;
    let mut positions = SourcePositions::default();
    for (name, partitions) in parsed {
        let Some(source) = source_names.iter().position(|n| *n == name) else { continue };
        for (partition, next) in partitions {
            let partition: u32 =
                partition.parse().map_err(|_| format!("the stored positions name partition {partition:?}"))?;
            positions.0.insert((source as u16, partition), next);
        }
    }
    Ok(positions)
}

/// What a sink says about itself, for `projector status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStatus {
    /// The generation of the run that last opened it.
    pub generation: Option<u64>,
    /// Its checkpoint: the positions its content reflects, by source name
    /// and partition (`None`: it holds nothing yet).
    pub positions: Option<BTreeMap<String, BTreeMap<u32, u64>>>,
    /// When its newest data was written (Unix milliseconds).
    pub written_at_ms: Option<i64>,
    /// It holds rows it claims no position for: a run is rebuilding the
    /// view in it and has not committed yet (a ClickHouse sink that found
    /// rows a dead run never committed, or whose view's definition
    /// changed, keeps its rows until the rebuilt view replaces them).
    pub rebuilding: bool,
}

impl SinkStatus {
    /// Reads positions in [`positions_to_json`]'s form.
    pub fn parse_positions(text: &str) -> Option<BTreeMap<String, BTreeMap<u32, u64>>> {
        let parsed: BTreeMap<String, BTreeMap<String, u64>> = serde_json::from_str(text).ok()?;
        Some(
            parsed
                .into_iter()
                .map(|(name, partitions)| {
                    (name, partitions.into_iter().filter_map(|(p, next)| Some((p.parse().ok()?, next))).collect())
                })
                .collect(),
        )
    }
}

/// Which rows of a view a read wants, as a store is asked for them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Key fields equal to a value: `(key index, value)`.
    pub equal: Vec<(usize, Value)>,
    /// A key field within an inclusive range: `(key index, low, high)`.
    pub range: Option<(usize, Value, Value)>,
    /// Only rows whose key field (by index) is one of these store ids.
    pub scope: Option<(usize, Vec<u64>)>,
    /// Only keys after this one.
    pub after: Option<Row>,
    /// At most this many rows, the first in key order.
    pub limit: Option<usize>,
}

impl Selection {
    /// Whether the row with key `key` is selected (`after` and `limit`
    /// aside).
    pub fn matches(&self, key: &Row) -> bool {
        self.equal.iter().all(|(index, value)| key.get(*index) == Some(value))
            && self
                .range
                .as_ref()
                .is_none_or(|(index, low, high)| key.get(*index).is_some_and(|v| v >= low && v <= high))
            && self
                .scope
                .as_ref()
                .is_none_or(|(index, stores)| matches!(key.get(*index), Some(Value::UInt(id)) if stores.contains(id)))
    }
}

/// Rows a store answered, in key order, and the position of the log they
/// reflect.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selected {
    /// `(key, values)`, in key order.
    pub rows: Vec<(Row, Row)>,
    /// The source positions the rows reflect.
    pub positions: SourcePositions,
    /// The latest `occurred_at` among the events they reflect, if the store
    /// keeps it.
    pub newest_event_at: Option<Timestamp>,
}

/// Why a store could not answer a read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The store cannot answer this kind of read (a key-value store asked
    /// for a scan); the message says which reads it answers.
    #[error("{0}")]
    Unsupported(String),
    /// The store is down or failed; worth a retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// A view as a sink's store holds it, for the read API: the reads are
/// answered from the store (Redis, ClickHouse) instead of the process.
/// Calls block; the API runs them off its event loop.
pub trait ViewReader: Send + Sync {
    /// Names the store in messages (`Redis sink "ltv_redis"`).
    fn describe(&self) -> String;

    /// The selected rows, all as of one position of the log.
    fn select(&self, selection: &Selection) -> Result<Selected, ReadError>;

    /// The greatest value of key field `field` among rows whose key fields
    /// equal `equal` (for a default date range).
    fn latest(&self, equal: &[(usize, Value)], field: usize) -> Result<Option<Value>, ReadError>;
}

impl std::fmt::Debug for dyn ViewReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A view's rows in key order, for a sink that rewrites a whole file (a
/// JSON Lines file, a Parquet file) at most once per interval and at the
/// end of a run.
#[derive(Debug, Default)]
pub struct SnapshotRows {
    /// The rows, by key.
    pub rows: BTreeMap<Row, Row>,
    write_every: Option<std::time::Duration>,
    last_write: Option<std::time::Instant>,
    dirty: bool,
}

impl SnapshotRows {
    /// Rows to rewrite at most every `write_every` (only at the end when
    /// `None`).
    pub fn new(write_every: Option<std::time::Duration>) -> SnapshotRows {
        SnapshotRows { rows: BTreeMap::new(), write_every, last_write: None, dirty: true }
    }

    /// Applies one batch's changes (`moved`: something else the file
    /// records changed too); answers whether the file is due for a rewrite.
    pub fn apply(&mut self, changes: &[ViewChange], moved: bool) -> bool {
        if self.rows.is_empty() {
            // The first batch (a whole view, or the state a run restored):
            // built in one go, not one insertion at a time (a restored state
            // is a million rows and more, and its batch comes sorted by key,
            // which the build takes in one pass). With no rows yet, a
            // removal removes nothing.
            self.rows = changes.iter().filter(|c| c.diff > 0).map(|c| (c.key.clone(), c.values.clone())).collect();
        } else {
            // Removals first: an update is the old row out and the new one in.
            for change in changes.iter().filter(|c| c.diff < 0) {
                if self.rows.get(&change.key) == Some(&change.values) {
                    self.rows.remove(&change.key);
                }
            }
            for change in changes.iter().filter(|c| c.diff > 0) {
                self.rows.insert(change.key.clone(), change.values.clone());
            }
        }
        self.dirty |= moved || !changes.is_empty();
        self.write_every.is_some_and(|every| self.dirty && self.last_write.is_none_or(|at| at.elapsed() >= every))
    }

    /// Counts the first interval from now, so that the first batch does
    /// not make the file due at once.
    pub fn first_interval_from_now(&mut self) {
        self.last_write = Some(std::time::Instant::now());
    }

    /// Whether the file needs a rewrite at the end (`exists`: it is there).
    pub fn due_at_end(&self, exists: bool) -> bool {
        self.dirty || !exists
    }

    /// Notes that the file was rewritten with the current rows.
    pub fn written(&mut self) {
        self.last_write = Some(std::time::Instant::now());
        self.dirty = false;
    }
}

/// From this many rows on, half of them are freed on a second thread.
const FREE_IN_HALVES: usize = 100_000;

impl Drop for SnapshotRows {
    /// A state snapshot's rows (a million and more) are freed in two
    /// halves at once: freeing them on one thread took 1.5 s at the end
    /// of a run, which waits for it.
    fn drop(&mut self) {
        let len = self.rows.len();
        if len < FREE_IN_HALVES {
            return;
        }
        let Some(middle) = self.rows.keys().nth(len / 2).cloned() else { return };
        let upper = self.rows.split_off(&middle);
        let lower = std::mem::take(&mut self.rows);
        std::thread::scope(|scope| {
            // Should the thread not start, its half is freed here.
            let _ = std::thread::Builder::new().name("free rows".into()).spawn_scoped(scope, move || drop(upper));
            drop(lower);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: u64, value: i64, diff: i64) -> ViewChange {
        ViewChange { key: Row::from(vec![Value::UInt(key)]), values: Row::from(vec![Value::Int(value)]), diff }
    }

    fn rows(snapshot: &SnapshotRows) -> Vec<(u64, i64)> {
        snapshot
            .rows
            .iter()
            .map(|(key, values)| match (&key[0], &values[0]) {
                (Value::UInt(key), Value::Int(value)) => (*key, *value),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn snapshot_rows_take_a_first_batch_whole_and_later_ones_change_by_change() {
        let mut snapshot = SnapshotRows::new(Some(std::time::Duration::from_secs(3600)));
        // The first batch, sorted by key as batches come: an update of a
        // row nothing holds yet adds its new values.
        let first = [change(1, 10, 1), change(2, 5, -1), change(2, 20, 1), change(3, 30, 1), change(4, 7, -1)];
        assert!(snapshot.apply(&first, true), "a first batch is due at once");
        assert_eq!(rows(&snapshot), [(1, 10), (2, 20), (3, 30)]);
        snapshot.written();

        // Later: an update, a removal, a removal of values not held, an
        // addition.
        let later = [change(1, 10, -1), change(1, 11, 1), change(2, 20, -1), change(3, 99, -1), change(5, 50, 1)];
        assert!(!snapshot.apply(&later, true), "not due before the interval");
        assert_eq!(rows(&snapshot), [(1, 11), (3, 30), (5, 50)]);
        assert!(snapshot.due_at_end(true));

        // Emptied, it takes the next batch whole again.
        let gone = [change(1, 11, -1), change(3, 30, -1), change(5, 50, -1)];
        snapshot.apply(&gone, false);
        assert!(snapshot.rows.is_empty());
        snapshot.apply(&[change(6, 60, 1)], false);
        assert_eq!(rows(&snapshot), [(6, 60)]);

        // Counting the first interval from its start, a first batch is
        // not due at once, only at the end.
        let mut snapshot = SnapshotRows::new(Some(std::time::Duration::from_secs(3600)));
        snapshot.first_interval_from_now();
        assert!(!snapshot.apply(&first, true), "not due before the interval");
        assert!(snapshot.due_at_end(true));
    }
}
