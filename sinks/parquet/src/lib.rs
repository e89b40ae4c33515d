//! The `parquet` sink: a view's rows as a Parquet file, written through
//! Arrow with the view's own schema.
//!
//! Columns are the view's output fields in order, typed from the view's
//! declaration: `UInt64` and `Int64` numbers, `Utf8` text, `Date32` days,
//! `Timestamp(Nanosecond, "UTC")` instants and `Boolean`; key columns are
//! not nullable, the others are. The file's key-value metadata says what
//! it holds: `projector.view`, `projector.keys` (the key columns, comma
//! separated) and `projector.positions` (the source offsets the rows
//! reflect, as JSON).
//!
//! The sink keeps the view's rows in key order and replaces the file
//! atomically (a temporary sibling, then a rename) at most once per
//! interval and at the end of a run, so a reader never sees half a file:
//! `projector export` writes one file at the end, a `parquet` sink in
//! `pipelines.yaml` keeps a snapshot that is at most `every_ms` old.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, compute_leaves};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use projector_core::sink::{SinkError, SnapshotRows, SourcePositions, ViewBatch, ViewSink, positions_to_json};
use projector_core::value::{FieldType, Row, Value};
use projector_core::view::ViewPlan;

/// Rows per row group (and per Arrow batch while writing).
const ROW_GROUP: usize = 65_536;

/// Threads that build and encode the row groups of a file being written.
const ENCODERS: usize = 2;

/// The columns of what a file holds: a view's output fields, or the
/// pipeline's state snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    /// What the rows are (`projector.view` in the metadata).
    pub name: String,
    /// Column names and types, keys first.
    pub fields: Vec<(String, FieldType)>,
    /// How many leading fields are the key.
    pub key_len: usize,
}

impl Shape {
    /// The shape of a view's rows.
    pub fn of(plan: &ViewPlan) -> Shape {
        Shape { name: plan.name.clone(), fields: plan.output_fields(), key_len: plan.keys.len() }
    }
}

/// The Arrow schema of rows of `shape`: keys not nullable, the rest
/// nullable.
pub fn schema(shape: &Shape) -> Schema {
    let fields: Vec<Field> = shape
        .fields
        .iter()
        .enumerate()
        .map(|(index, (name, ty))| Field::new(name, data_type(*ty), index >= shape.key_len))
        .collect();
    Schema::new(fields)
}

fn data_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::UInt => DataType::UInt64,
        FieldType::Int => DataType::Int64,
        FieldType::Text => DataType::Utf8,
        FieldType::Date => DataType::Date32,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        FieldType::Bool => DataType::Boolean,
    }
}

/// The builder of one column, as its type.
enum Builder {
    UInt(UInt64Builder),
    Int(Int64Builder),
    Text(StringBuilder),
    Date(Date32Builder),
    Timestamp(TimestampNanosecondBuilder),
    Bool(BooleanBuilder),
}

impl Builder {
    /// A builder of a column of type `ty`, with room for `rows` values.
    fn new(ty: FieldType, rows: usize) -> Builder {
        match ty {
            FieldType::UInt => Builder::UInt(UInt64Builder::with_capacity(rows)),
            FieldType::Int => Builder::Int(Int64Builder::with_capacity(rows)),
            FieldType::Text => Builder::Text(StringBuilder::with_capacity(rows, rows * 8)),
            FieldType::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            FieldType::Timestamp => {
                Builder::Timestamp(TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
            FieldType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
        }
    }

    /// Appends `value`: null when it is not of the column's type (an
    /// unsigned number goes into a signed column when it fits).
    fn append(&mut self, value: &Value) {
        match self {
            Builder::UInt(builder) => builder.append_option(match value {
                Value::UInt(v) => Some(*v),
                _ => None,
            }),
            Builder::Int(builder) => builder.append_option(match value {
                Value::Int(v) => Some(*v),
                Value::UInt(v) => i64::try_from(*v).ok(),
                _ => None,
            }),
            Builder::Text(builder) => match value {
                Value::Text(text) => builder.append_value(text),
                _ => builder.append_null(),
            },
            Builder::Date(builder) => builder.append_option(match value {
                Value::Date(days) => Some(*days),
                _ => None,
            }),
            Builder::Timestamp(builder) => builder.append_option(match value {
                Value::Timestamp(at) => Some(at.0),
                _ => None,
            }),
            Builder::Bool(builder) => builder.append_option(match value {
                Value::Bool(flag) => Some(*flag),
                _ => None,
            }),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::UInt(builder) => Arc::new(builder.finish()),
            Builder::Int(builder) => Arc::new(builder.finish()),
            Builder::Text(builder) => Arc::new(builder.finish()),
            Builder::Date(builder) => Arc::new(builder.finish()),
            Builder::Timestamp(builder) => Arc::new(builder.finish()),
            Builder::Bool(builder) => Arc::new(builder.finish()),
        }
    }
}

/// The columns of `rows` (keys first) as Arrow arrays, in one pass over
/// the rows: each row is read once, not once per column (a state snapshot
/// has 14 columns and over a million rows, each row two allocations of
/// their own).
fn columns(rows: &[(&Row, &Row)], types: &[FieldType], key_len: usize) -> Vec<ArrayRef> {
    let mut builders: Vec<Builder> = types.iter().map(|ty| Builder::new(*ty, rows.len())).collect();
    let (key_builders, value_builders) = builders.split_at_mut(key_len.min(types.len()));
    for (key, values) in rows {
        for (index, builder) in key_builders.iter_mut().enumerate() {
            builder.append(key.get(index).unwrap_or(&Value::Null));
        }
        for (index, builder) in value_builders.iter_mut().enumerate() {
            builder.append(values.get(index).unwrap_or(&Value::Null));
        }
    }
    builders.iter_mut().map(Builder::finish).collect()
}

/// Writes `rows` (in key order) of `shape` to `path` as Parquet, replacing
/// the file atomically; `positions` (JSON) go into the metadata.
pub fn write_parquet<'a>(
    shape: &Shape,
    rows: impl IntoIterator<Item = (&'a Row, &'a Row)>,
    positions: Option<&str>,
    path: &Path,
) -> Result<(), String> {
    let fail = |what: &str, error: &dyn std::fmt::Display| format!("cannot {what} {}: {error}", path.display());
    let schema = Arc::new(schema(shape));
    let types: Vec<FieldType> = shape.fields.iter().map(|(_, ty)| *ty).collect();
    let key_len = shape.key_len;
    let keys: Vec<&str> = shape.fields[..key_len].iter().map(|(name, _)| name.as_str()).collect();
    let mut metadata = vec![
        KeyValue::new("projector.view".to_string(), shape.name.clone()),
        KeyValue::new("projector.keys".to_string(), keys.join(",")),
    ];
    if let Some(positions) = positions {
        metadata.push(KeyValue::new("projector.positions".to_string(), positions.to_string()));
    }
    let properties = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .set_max_row_group_size(ROW_GROUP)
        .set_key_value_metadata(Some(metadata))
        .build();
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| fail("create the folder of", &e))?;
    }
    let temporary = path.with_extension("parquet.tmp");
    let file = File::create(&temporary).map_err(|e| fail("create", &e))?;
    let writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(properties)).map_err(|e| fail("write", &e))?;
    let (mut file_writer, row_groups) = writer.into_serialized_writer().map_err(|e| fail("write", &e))?;
    let rows: Vec<(&Row, &Row)> = rows.into_iter().collect();
    let chunks: Vec<&[(&Row, &Row)]> = rows.chunks(ROW_GROUP).collect();
    // Row groups are built and encoded on `ENCODERS` threads, each taking
    // the next one not taken, and written in order as they come (a state
    // snapshot of a million events is 21 row groups, and the run's end
    // waits for it).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let encode = |index: usize| -> parquet::errors::Result<Vec<ArrowColumnChunk>> {
        let arrays = columns(chunks[index], &types, key_len);
        let mut writers = row_groups.create_column_writers(index)?.into_iter();
        let mut encoded = Vec::with_capacity(arrays.len());
        for (field, array) in schema.fields().iter().zip(&arrays) {
            // A flat schema: one leaf, so one writer, per column.
            let mut writer = writers.next().ok_or_else(|| ParquetError::General("a column without a writer".into()))?;
            for leaf in compute_leaves(field, array)? {
                writer.write(&leaf)?;
            }
            encoded.push(writer.close()?);
        }
        Ok(encoded)
    };
    let written = std::thread::scope(|scope| {
        let (send, receive) = std::sync::mpsc::channel();
        for _ in 0..ENCODERS.min(chunks.len()) {
            let (send, next, encode, count) = (send.clone(), &next, &encode, chunks.len());
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if index >= count || send.send((index, encode(index))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(send);
        let mut waiting = BTreeMap::new();
        for written in 0..chunks.len() {
            let encoded = loop {
                if let Some(encoded) = waiting.remove(&written) {
                    break encoded;
                }
                // (Returning early drops the queue: the encoders stop
                // at their next row group.)
                let Ok((index, encoded)) = receive.recv() else {
                    return Err(ParquetError::General("a thread encoding a row group stopped".into()));
                };
                waiting.insert(index, encoded);
            };
            let mut row_group = file_writer.next_row_group()?;
            for chunk in encoded? {
                chunk.append_to_row_group(&mut row_group)?;
            }
            row_group.close()?;
        }
        Ok(())
    });
    written.map_err(|e| fail("write", &e))?;
    file_writer.close().map_err(|e| fail("write", &e))?;
    std::fs::rename(&temporary, path).map_err(|e| fail("replace", &e))?;
    Ok(())
}

/// A view materialized as a Parquet file.
pub struct ParquetViewSink {
    shape: Shape,
    path: PathBuf,
    source_names: Vec<String>,
    snapshot: SnapshotRows,
    positions: SourcePositions,
    /// Keep the file being replaced as `<path>.prev`.
    keep_previous: bool,
}

impl ParquetViewSink {
    /// Writes `plan`'s rows to `path`, replacing it at most every
    /// `write_every` (never before the end when `None`); `source_names`
    /// name the positions in the metadata.
    pub fn new(
        plan: Arc<ViewPlan>,
        path: impl AsRef<Path>,
        write_every: Option<Duration>,
        source_names: Vec<String>,
    ) -> ParquetViewSink {
        ParquetViewSink::of_shape(Shape::of(&plan), path, write_every, source_names)
    }

    /// Writes rows of `shape` (see [`ParquetViewSink::new`]).
    pub fn of_shape(
        shape: Shape,
        path: impl AsRef<Path>,
        write_every: Option<Duration>,
        source_names: Vec<String>,
    ) -> ParquetViewSink {
        ParquetViewSink {
            shape,
            path: path.as_ref().to_path_buf(),
            source_names,
            snapshot: SnapshotRows::new(write_every),
            positions: SourcePositions::default(),
            keep_previous: false,
        }
    }

    /// Keeps the file each write replaces as `<path>.prev` (see
    /// [`previous_path`]).
    pub fn keeping_previous(mut self) -> ParquetViewSink {
        self.keep_previous = true;
        self
    }

    /// Writes the first file one interval after the sink starts, not at
    /// its first batch. For state snapshots: after a restart, the first
    /// batch is the whole restored state (with what the run read first),
    /// which the file there holds nearly all of; writing it all again at
    /// once (1.3M rows for 1M events) slowed the catch-up it came with.
    pub fn first_write_after_an_interval(mut self) -> ParquetViewSink {
        self.snapshot.first_interval_from_now();
        self
    }

    fn write(&mut self) -> Result<(), SinkError> {
        let positions = positions_to_json(&self.positions, &self.source_names);
        if self.keep_previous && positions_of(&self.path).ok().flatten().as_deref() == Some(positions.as_str()) {
            // The file there holds these positions already (a run that
            // started from it and read nothing new).
            self.snapshot.written();
            return Ok(());
        }
        if self.keep_previous && self.path.exists() {
            let previous = previous_path(&self.path);
            std::fs::rename(&self.path, &previous).map_err(|e| {
                SinkError::Retryable(format!("cannot keep {} as {}: {e}", self.path.display(), previous.display()))
            })?;
        }
        let rows = &self.snapshot.rows;
        write_parquet(&self.shape, rows.iter(), Some(&positions), &self.path).map_err(SinkError::Retryable)?;
        tracing::debug!(path = %self.path.display(), rows = rows.len(), "wrote a Parquet snapshot");
        self.snapshot.written();
        Ok(())
    }
}

impl ViewSink for ParquetViewSink {
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let moved = *batch.positions != self.positions;
        self.positions = batch.positions.clone();
        if self.snapshot.apply(batch.changes, moved) {
            self.write()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if self.snapshot.due_at_end(self.path.exists()) {
            self.write()?;
        }
        Ok(())
    }
}

/// What a Parquet file of rows of `shape` holds: its rows by key, and the
/// positions in its metadata (JSON), if any. Fails when the file's columns
/// are not the shape's.
pub fn read_parquet(shape: &Shape, path: &Path) -> Result<(BTreeMap<Row, Row>, Option<String>), String> {
    let (rows, positions) = read_rows(shape, path)?;
    Ok((rows.into_iter().collect(), positions))
}

/// Rows `(key, values)` in file order, and the positions (JSON) a file
/// says they reflect.
pub type RowsAndPositions = (Vec<(Row, Row)>, Option<String>);

/// Like [`read_parquet`], the rows in file order. The file's row groups
/// are read on [`READERS`] threads, each a run of them (a state snapshot
/// of 1M events holds over a million rows, in groups of [`ROW_GROUP`],
/// read before anything else runs).
pub fn read_rows(shape: &Shape, path: &Path) -> Result<RowsAndPositions, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let fail = |what: &dyn std::fmt::Display| format!("{}: {what}", path.display());
    let open = || -> Result<ParquetRecordBatchReaderBuilder<File>, String> {
        let file = File::open(path).map_err(|e| fail(&e))?;
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| fail(&e))
    };
    let builder = open()?;
    let positions = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|kv| kv.key == "projector.positions"))
        .and_then(|kv| kv.value.clone());
    let want = schema(shape);
    let found = builder.schema();
    for (index, field) in want.fields().iter().enumerate() {
        match found.fields().get(index) {
            Some(column) if column.name() == field.name() && column.data_type() == field.data_type() => {}
            _ => {
                return Err(fail(&format!(
                    "column {} is not {} {}: this file is not of {:?}",
                    index + 1,
                    field.name(),
                    field.data_type(),
                    shape.name
                )));
            }
        }
    }
    let groups = builder.metadata().num_row_groups();
    let per_reader = groups.div_ceil(READERS).max(1);
    let runs: Vec<Vec<usize>> = (0..groups).collect::<Vec<_>>().chunks(per_reader).map(<[usize]>::to_vec).collect();
    let read_run = |run: Vec<usize>| -> Result<Vec<(Row, Row)>, String> {
        let mut rows = Vec::new();
        for batch in open()?.with_row_groups(run).build().map_err(|e| fail(&e))? {
            rows_of_batch(shape, &batch.map_err(|e| fail(&e))?, &mut rows);
        }
        Ok(rows)
    };
    let parts: Vec<Result<Vec<(Row, Row)>, String>> = std::thread::scope(|scope| {
        let mut runs = runs.into_iter();
        let first = runs.next();
        let others: Vec<_> = runs.map(|run| scope.spawn(move || read_run(run))).collect();
        let mut parts = vec![first.map_or_else(|| Ok(Vec::new()), read_run)];
        parts.extend(
            others.into_iter().map(|other| other.join().unwrap_or_else(|_| Err(fail(&"a reader thread panicked")))),
        );
        parts
    });
    let mut rows = Vec::new();
    for part in parts {
        let part = part?;
        if rows.is_empty() {
            rows = part;
        } else {
            rows.extend(part);
        }
    }
    Ok((rows, positions))
}

/// Threads that read a file's row groups.
const READERS: usize = 2;

/// One column of a batch, as its type.
enum Column<'a> {
    UInt(&'a arrow_array::UInt64Array),
    Int(&'a arrow_array::Int64Array),
    Text(&'a arrow_array::StringArray),
    Date(&'a arrow_array::Date32Array),
    Timestamp(&'a arrow_array::TimestampNanosecondArray),
    Bool(&'a arrow_array::BooleanArray),
}

impl Column<'_> {
    fn value(&self, row: usize) -> Value {
        if self.is_null(row) {
            return Value::Null;
        }
        match self {
            Column::UInt(c) => Value::UInt(c.value(row)),
            Column::Int(c) => Value::Int(c.value(row)),
            Column::Text(c) => Value::Text(c.value(row).into()),
            Column::Date(c) => Value::Date(c.value(row)),
            Column::Timestamp(c) => Value::Timestamp(projector_core::value::Timestamp(c.value(row))),
            Column::Bool(c) => Value::Bool(c.value(row)),
        }
    }

    fn is_null(&self, row: usize) -> bool {
        use arrow_array::Array;
        match self {
            Column::UInt(c) => c.is_null(row),
            Column::Int(c) => c.is_null(row),
            Column::Text(c) => c.is_null(row),
            Column::Date(c) => c.is_null(row),
            Column::Timestamp(c) => c.is_null(row),
            Column::Bool(c) => c.is_null(row),
        }
    }
}

/// Appends the rows of `batch` (of `shape`, checked) to `rows`: each key
/// and each row of values one allocation, and the rows whose values are
/// all null (a state snapshot's `event_id`s) sharing one.
fn rows_of_batch(shape: &Shape, batch: &RecordBatch, rows: &mut Vec<(Row, Row)>) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Date32Type, Int64Type, TimestampNanosecondType, UInt64Type};

    let columns: Vec<Column<'_>> = shape
        .fields
        .iter()
        .zip(batch.columns())
        .map(|((_, ty), column)| match ty {
            FieldType::UInt => Column::UInt(column.as_primitive::<UInt64Type>()),
            FieldType::Int => Column::Int(column.as_primitive::<Int64Type>()),
            FieldType::Text => Column::Text(column.as_string::<i32>()),
            FieldType::Date => Column::Date(column.as_primitive::<Date32Type>()),
            FieldType::Timestamp => Column::Timestamp(column.as_primitive::<TimestampNanosecondType>()),
            FieldType::Bool => Column::Bool(column.as_boolean()),
        })
        .collect();
    let key_len = shape.key_len.min(columns.len());
    let (keys, others) = columns.split_at(key_len);
    let nulls: Row = others.iter().map(|_| Value::Null).collect();
    rows.reserve(batch.num_rows());
    for row in 0..batch.num_rows() {
        let key: Row = keys.iter().map(|column| column.value(row)).collect();
        let values = if others.iter().all(|column| column.is_null(row)) {
            Arc::clone(&nulls)
        } else {
            others.iter().map(|column| column.value(row)).collect()
        };
        rows.push((key, values));
    }
}

/// Where a sink that keeps the previous file keeps it: `<path>.prev`.
pub fn previous_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

/// The positions (JSON) in a Parquet file's metadata, read from its footer
/// alone; `None` when the file is not there or says none.
pub fn positions_of(path: &Path) -> Result<Option<String>, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let reader = SerializedFileReader::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|kv| kv.key == "projector.positions"))
        .and_then(|kv| kv.value.clone()))
}

/// Where a snapshot file stands, for `projector status`: the positions in
/// its metadata and when it was written; `None` positions and time when
/// the file is not there yet.
pub fn status(path: &Path) -> Result<projector_core::sink::SinkStatus, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let written_at_ms = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64);
    let reader = SerializedFileReader::new(file).map_err(|e| format!("{}: {e}", path.display()))?;
    let positions = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|kv| kv.key == "projector.positions"))
        .and_then(|kv| kv.value.as_deref())
        .and_then(projector_core::sink::SinkStatus::parse_positions);
    Ok(projector_core::sink::SinkStatus { generation: None, positions, written_at_ms, rebuilding: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_many_row_groups_reads_back_in_file_order() {
        let shape = Shape {
            name: "many groups".to_string(),
            fields: vec![
                ("id".to_string(), FieldType::UInt),
                ("name".to_string(), FieldType::Text),
                ("count".to_string(), FieldType::Int),
                ("day".to_string(), FieldType::Date),
            ],
            key_len: 1,
        };
        // Three and a bit row groups; every third row's values all null.
        let rows: Vec<(Row, Row)> = (0..(3 * ROW_GROUP + 17) as u64)
            .map(|id| {
                let key = Row::from(vec![Value::UInt(id)]);
                let values = if id % 3 == 0 {
                    Row::from(vec![Value::Null; 3])
                } else {
                    Row::from(vec![Value::Text(format!("n{id}").into()), Value::Int(-(id as i64)), Value::Null])
                };
                (key, values)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.parquet");
        write_parquet(&shape, rows.iter().map(|(k, v)| (k, v)), Some("{\"s\":{}}"), &path).unwrap();

        let (read, positions) = read_rows(&shape, &path).unwrap();
        assert_eq!(positions.as_deref(), Some("{\"s\":{}}"));
        assert_eq!(read.len(), rows.len());
        assert!(read == rows, "the rows differ, or are out of order");
    }
}
