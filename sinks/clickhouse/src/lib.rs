//! The `clickhouse` sink: a view as versioned rows, exactly once.
//!
//! Tables, in the sink's database (created when missing):
//! - `<table>_rows`: the view's key and value columns, `_deleted` (1 for the
//!   tombstone of a row that disappeared) and `_version`, in a
//!   `ReplacingMergeTree(_version)` ordered by the key: the row with the
//!   highest version is the key's current state, so writing the same row
//!   twice is harmless.
//! - `<table>`: a view over it, `SELECT … FROM <table>_rows FINAL WHERE
//!   _deleted = 0`: what readers query.
//! - `projector_checkpoints`: one row per commit of every ClickHouse sink in
//!   the database: `sink`, `generation`, `seq`, `committed` (the version of
//!   the data it covers), `positions` (the source offsets that data
//!   reflects, JSON), `written_at` and `newest_event_at` (the latest
//!   `occurred_at` of the events those offsets cover, for readers).
//!
//! A run takes a new generation when it opens the sink: it writes a claim
//! row, then looks for rows newer than the last commit (written by a run
//! that died before committing them, or was fenced). A claim says which
//! versions are void for good (those of older generations above the
//! commit it resumed from), so the look covers every claim's range: an
//! `INSERT` a run sent just before it died can land after the next run's
//! start, and the run that started then also looks for such rows at each
//! batch for two minutes. Void rows are not simply deleted, since a merge
//! may have put them in place of committed rows: the view is rewritten
//! above them first ([`Uncommitted`]). Changes are gathered per key
//! (latest state wins) and written at most every `batch_ms` or
//! `batch_rows`, each write with version `generation << 32 | seq`; the
//! checkpoint row goes in after the data it covers. Before and after each
//! data insert the sink checks that no newer generation claimed the sink;
//! if one did, it stops (fencing), and what it wrote is void.
//! ClickHouse down: every step is retried with backoff, nothing is dropped.

mod reader;
mod swap;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use projector_core::config::{ClickHouseSinkConfig, MeasureFunction};
use projector_core::sink::{
    RowHasher, SinkError, SinkStatus, SourcePositions, ViewBatch, ViewSink, positions_from_json, positions_to_json,
};
use projector_core::template::write_plain;
use projector_core::value::{FieldType, Row, Timestamp, Value};
use projector_core::view::ViewPlan;

pub use reader::{ClickHouseViewReader, Differences};
pub use swap::{ClickHouseSwap, ReplayClaim, SwapCounts};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// With no data to write, the checkpoint still follows the source at most
/// this often.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(10);
/// An idle sink looks whether a replay holds it at most this often.
const PAUSE_CHECK: Duration = Duration::from_millis(250);
/// For this long after a run took its generation, it looks at each batch
/// for rows that older runs sent before they died and that the server
/// took only after the run's delete (see [`ClickHouseViewSink::resume`]).
const LATE_INSERTS: Duration = Duration::from_secs(120);

/// A column of the rows table.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    ty: FieldType,
    nullable: bool,
}

impl Column {
    fn sql_type(&self) -> String {
        let base = match self.ty {
            FieldType::UInt => "UInt64",
            FieldType::Int => "Int64",
            FieldType::Text => "String",
            FieldType::Date => "Date",
            FieldType::Timestamp => "DateTime('UTC')",
            FieldType::Bool => "UInt8",
        };
        if self.nullable { format!("Nullable({base})") } else { base.to_string() }
    }
}

/// Rows that older runs wrote above the commit this run resumed from and
/// never committed (they died first, or were fenced). They cannot simply be
/// deleted: when ClickHouse merges the rows table's parts it keeps only the
/// highest version of each key, so such a row may have taken the place of
/// the key's committed row, and deleting it then leaves the key with no
/// row at all. So every key is first rewritten above them.
#[derive(Debug)]
enum Uncommitted {
    /// None were there when the run started. One that lands later (an
    /// `INSERT` the server took only after the run's start) makes the run
    /// start over, and the next one rewrites the view.
    NoneFound,
    /// Some were there, with versions in these ranges: the run claims no
    /// position, and its first write replaces every row the sink holds and
    /// every key they name; then they are deleted.
    Rewriting(Vec<(u64, u64)>),
    /// Every key the sink held, or they named, was rewritten above them:
    /// any found now is deleted.
    Rewritten,
}

/// A sink's last checkpoint row.
#[derive(Debug, Default)]
struct Checkpoint {
    /// The version of the newest committed rows.
    committed: u64,
    /// The positions they reflect (`""`: none).
    positions: String,
    /// The latest `occurred_at` of the events they reflect.
    newest: Option<Timestamp>,
}

/// A view materialized in ClickHouse.
pub struct ClickHouseViewSink {
    name: String,
    client: clickhouse::Client,
    runtime: tokio::runtime::Runtime,
    database: String,
    table: String,
    keys: Vec<Column>,
    values: Vec<Column>,
    batch_rows: usize,
    batch_every: Duration,
    source_names: Vec<String>,
    generation: u64,
    seq: u64,
    /// The version of the newest committed data.
    committed: u64,
    /// Above which version, until when, and when last, rows of older
    /// generations are looked for again (an `INSERT` of a run that died
    /// may land late).
    late_inserts: Option<(u64, Instant, Instant)>,
    /// What this run found and did of the rows older runs never committed.
    uncommitted: Uncommitted,
    /// Per key its latest state since the last write (`None`: deleted).
    pending: HashMap<Row, Option<Row>, RowHasher>,
    pending_since: Option<Instant>,
    /// The last batch taken, and the positions it brought the view to.
    taken_upper: u64,
    taken_positions: Option<SourcePositions>,
    /// The latest `occurred_at` of the events the taken batches reflect
    /// (readers report it with the positions).
    taken_newest: Option<Timestamp>,
    /// When the last checkpoint was written, and what it said.
    checkpoint_at: Instant,
    checkpoint_positions: Option<SourcePositions>,
    /// With no data to write, the checkpoint follows the source this often.
    idle_checkpoint: Duration,
    /// When the sink last looked whether a replay holds it.
    pause_checked: Instant,
    /// [`ViewPlan::definition`] of the view it writes.
    pub(crate) definition: String,
    /// See [`ClickHouseViewSink::keeping_rows_until_rebuilt`].
    keep_until_rebuilt: bool,
    /// Whether the next write replaces every row the sink holds: it was
    /// reset, and kept its rows until then.
    replace_held: bool,
    /// Whether the next write also makes the rows table and reader view
    /// anew: the view's columns changed, and the old ones are kept for
    /// readers until then.
    new_tables: bool,
}

/// A client of the sink's server. Validation is off: ClickHouse 18.16 has
/// no `RowBinaryWithNamesAndTypes`, and the sink sends TabSeparated anyway.
/// An `INSERT` is parsed into one block, however many rows it has: the
/// server would otherwise cut it every `max_insert_block_size` rows
/// (1,048,576), each block a part of its own that readers see before the
/// next, and a view written whole (or replaced) must appear at once.
fn client(config: &ClickHouseSinkConfig) -> clickhouse::Client {
    let mut client = clickhouse::Client::default()
        .with_url(&config.url)
        .with_validation(false)
        .with_compression(clickhouse::Compression::None)
        .with_setting("max_insert_block_size", "4294967295");
    if let Some(user) = &config.user {
        client = client.with_user(user);
    }
    if let Some(password) = &config.password {
        client = client.with_password(password);
    }
    client
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn quote(text: &str) -> String {
    let mut out = String::from("'");
    for c in text.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// One value in ClickHouse's TabSeparated text.
fn write_tsv(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("\\N"),
        Value::Bool(b) => out.push(if *b { '1' } else { '0' }),
        // Numbers and dates as every sink writes them.
        Value::UInt(_) | Value::Int(_) | Value::Date(_) => write_plain(value, out),
        // DateTime holds whole seconds; the text form is the Unix time.
        Value::Timestamp(t) => out.push_str(itoa::Buffer::new().format(t.0.div_euclid(1_000_000_000))),
        // Most texts have nothing to escape: copied whole.
        Value::Text(s) if !s.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n')) => out.push_str(s),
        Value::Text(s) => {
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    c => out.push(c),
                }
            }
        }
    }
}

/// A placeholder for a column of a tombstone.
fn write_default(column: &Column, out: &mut String) {
    if column.nullable {
        out.push_str("\\N");
        return;
    }
    out.push_str(match column.ty {
        FieldType::Date => "1970-01-01",
        FieldType::Text => "",
        _ => "0",
    });
}

impl ClickHouseViewSink {
    /// A sink named `name` writing `plan`'s rows as `config` says;
    /// `source_names` name the positions it stores.
    pub fn new(
        name: &str,
        plan: Arc<ViewPlan>,
        config: &ClickHouseSinkConfig,
        source_names: Vec<String>,
    ) -> Result<ClickHouseViewSink, SinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::Fatal(format!("cannot start the ClickHouse client's runtime: {e}")))?;
        let client = client(config);
        let keys = plan.keys.iter().map(|k| Column { name: k.name.clone(), ty: k.ty, nullable: false }).collect();
        let measures = plan.measures.iter().map(|m| Column {
            name: m.name.clone(),
            ty: m.ty,
            nullable: matches!(m.function, MeasureFunction::Min | MeasureFunction::Max),
        });
        let labels = plan.labels.iter().map(|l| Column { name: l.name.clone(), ty: FieldType::Text, nullable: true });
        Ok(ClickHouseViewSink {
            name: name.to_string(),
            client,
            runtime,
            database: config.database.clone(),
            table: if config.table.is_empty() { plan.name.clone() } else { config.table.clone() },
            keys,
            values: measures.chain(labels).collect(),
            batch_rows: config.batch_rows as usize,
            batch_every: Duration::from_millis(config.batch_ms),
            source_names,
            generation: 0,
            seq: 0,
            committed: 0,
            late_inserts: None,
            uncommitted: Uncommitted::NoneFound,
            pending: HashMap::default(),
            pending_since: None,
            taken_upper: 0,
            taken_positions: None,
            taken_newest: None,
            checkpoint_at: Instant::now(),
            checkpoint_positions: None,
            idle_checkpoint: IDLE_CHECKPOINT,
            pause_checked: Instant::now(),
            definition: plan.definition(),
            keep_until_rebuilt: false,
            replace_held: false,
            new_tables: false,
        })
    }

    /// A sink that readers read (a running pipeline's): when the runner
    /// resets it (its view's definition changed, or its position is out of
    /// line with the others'), it keeps its rows and checkpoint until its
    /// next write, which is one `INSERT` of a tombstone for every row it
    /// held and the rebuilt view at a higher version: readers see the old
    /// view and then the new one, no empty table between. When the view's
    /// columns changed, that write fills a rows table made anew and renames
    /// it and a new reader view in place of the old ones. Without this (a
    /// replay's shadow), a reset empties the table at once.
    pub fn keeping_rows_until_rebuilt(mut self) -> ClickHouseViewSink {
        self.keep_until_rebuilt = true;
        self
    }

    /// Writes the checkpoint at least this often while there is no data
    /// to write (a replay's shadow follows its source closely).
    pub fn with_idle_checkpoint(mut self, every: Duration) -> ClickHouseViewSink {
        self.idle_checkpoint = every;
        self
    }

    /// Drops the sink's tables and leaves its checkpoint empty, so a sink
    /// of the same name later starts from nothing. For a sink taken out of
    /// the config (`projector drop`).
    pub fn drop_all(&mut self) -> Result<(), SinkError> {
        // Not `create_tables`: a rows table with other columns must go too,
        // not stop the drop.
        self.create_bookkeeping_tables()?;
        self.generation = self.newest_generation()? + 1;
        self.write_checkpoint(0, 0, "", None, 0)?;
        let table = self.reader_view();
        self.execute("cannot drop the reader view", &format!("DROP TABLE IF EXISTS {table}"))?;
        self.execute("cannot drop the rows table", &format!("DROP TABLE IF EXISTS {}", self.rows_table()))
    }

    /// The positions of the last checkpoint this run wrote or resumed
    /// from: what the sink's committed data reflects.
    pub fn checkpoint(&self) -> Option<&SourcePositions> {
        self.checkpoint_positions.as_ref()
    }

    /// The reader view: the rows as they stand, under the sink's `table`.
    fn reader_view(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    fn rows_table(&self) -> String {
        format!("{}.{}", self.database, self.rows_table_name())
    }

    /// The rows table's name within the sink's database.
    fn rows_table_name(&self) -> String {
        format!("{}_rows", self.table)
    }

    /// Table `name` of the sink's database in `system.*` tables' terms.
    fn table_filter(&self, name: &str) -> String {
        format!("database = {} AND table = {}", quote(&self.database), quote(name))
    }

    fn checkpoints_table(&self) -> String {
        format!("{}.projector_checkpoints", self.database)
    }

    /// Runs a statement.
    fn execute(&self, what: &str, sql: &str) -> Result<(), SinkError> {
        let query = self.client.query(sql);
        let result = self.runtime.block_on(async { tokio::time::timeout(TIMEOUT, query.execute()).await });
        classify(what, result)
    }

    /// Runs a query and answers its TabSeparated text.
    fn select(&self, what: &str, sql: &str) -> Result<String, SinkError> {
        let cursor = self.client.query(sql).fetch_bytes("TabSeparated");
        let result = self.runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, async move {
                let mut cursor = cursor?;
                let bytes = cursor.collect().await?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            })
            .await
        });
        classify(what, result)
    }

    /// Sends TabSeparated rows with an `INSERT … FORMAT TabSeparated`.
    fn insert(&self, what: &str, sql: &str, body: String) -> Result<(), SinkError> {
        let mut insert = self.client.insert_formatted_with(sql);
        let result = self.runtime.block_on(async {
            tokio::time::timeout(TIMEOUT, async move {
                insert.send(body.into()).await?;
                insert.end().await
            })
            .await
        });
        classify(what, result)
    }

    fn column_list(&self) -> Vec<&Column> {
        self.keys.iter().chain(self.values.iter()).collect()
    }

    fn definitions_table(&self) -> String {
        format!("{}.projector_definitions", self.database)
    }

    /// Keeps the sink's rows only if they were computed by this definition
    /// of the view ([`ViewPlan::definition`]), which it then records. If
    /// another definition is recorded, the sink is dropped as by
    /// [`Self::drop_all`]: first it claims nothing (an empty checkpoint of a
    /// new generation), then its rows table and reader view go (their
    /// columns may differ too), and the run rebuilds it from the log.
    /// Should it die in between, the next run finds the other definition
    /// still recorded and does the same.
    fn keep_only_this_definition(&mut self) -> Result<(), SinkError> {
        self.create_bookkeeping_tables()?;
        match self.stored_definition()? {
            Some(stored) if stored == self.definition => return Ok(()),
            Some(_) => {
                warn!(
                    sink = %self.name,
                    "the view's definition changed since the sink was written; it is rebuilt from the log"
                );
                if self.keep_until_rebuilt {
                    // Its rows stay until the rebuilt view replaces them
                    // (in tables made anew if its columns changed), but
                    // from now on it claims no position.
                    self.new_tables = self.rows_table_columns()?.is_some_and(|found| found != self.wanted_columns());
                    let committed = self.last_checkpoint()?.map_or(0, |last| last.committed);
                    self.generation = self.newest_generation()? + 1;
                    self.write_checkpoint(0, committed, "", None, 0)?;
                } else {
                    self.drop_all()?;
                }
            }
            None => {}
        }
        if self.new_tables {
            // Recorded once the new tables are in place: a run that dies
            // before then leaves the old definition recorded, and the next
            // one finds the change again (not a rows table with columns it
            // cannot write).
            return Ok(());
        }
        self.record_definition()
    }

    /// Whether the sink's rows were computed by another definition of its
    /// view than this one (the view changed in the config since a run last
    /// opened the sink, and no run has rebuilt it yet).
    pub fn holds_another_definition(&self) -> Result<bool, SinkError> {
        match self.stored_definition() {
            Ok(stored) => Ok(stored.is_some_and(|stored| stored != self.definition)),
            Err(SinkError::Fatal(message)) if never_created(&message) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The definition of the view the sink's rows were last recorded as
    /// computed by (`None`: none recorded).
    fn stored_definition(&self) -> Result<Option<String>, SinkError> {
        let stored = self.select(
            "cannot read the view's definition",
            &format!(
                "SELECT definition FROM {} WHERE sink = {} ORDER BY at DESC LIMIT 1",
                self.definitions_table(),
                quote(&self.name)
            ),
        )?;
        Ok(stored.lines().next().map(str::to_string))
    }

    /// Records that the sink's rows are of this definition of the view.
    fn record_definition(&self) -> Result<(), SinkError> {
        self.execute(
            "cannot record the view's definition",
            &format!(
                "INSERT INTO {} (sink, definition, at) VALUES ({}, {}, {})",
                self.definitions_table(),
                quote(&self.name),
                quote(&self.definition),
                now_millis()
            ),
        )
    }

    /// The database and its tables of checkpoints, holds and definitions,
    /// when missing.
    fn create_bookkeeping_tables(&self) -> Result<(), SinkError> {
        self.execute("cannot create the database", &format!("CREATE DATABASE IF NOT EXISTS {}", self.database))?;
        self.execute(
            "cannot create the checkpoints table",
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (sink String, generation UInt64, seq UInt64, committed UInt64, \
                 positions String, written_at DateTime('UTC'), rows UInt64, newest_event_at String DEFAULT '') \
                 ENGINE = MergeTree ORDER BY (sink, generation, seq)",
                self.checkpoints_table()
            ),
        )?;
        // A table of a build before `newest_event_at` gets the column (its
        // rows read as ''; ClickHouse 18.16 has no `ADD COLUMN IF NOT
        // EXISTS`). The sinks of one database open at once: another may
        // add it first.
        let has_column = || {
            let sql = format!(
                "SELECT count() FROM system.columns WHERE database = {} AND table = 'projector_checkpoints' \
                 AND name = 'newest_event_at'",
                quote(&self.database)
            );
            self.select("cannot read the checkpoints table's columns", &sql).map(|found| found.trim() != "0")
        };
        if !has_column()? {
            let add = format!("ALTER TABLE {} ADD COLUMN newest_event_at String DEFAULT ''", self.checkpoints_table());
            if let Err(error) = self.execute("cannot add newest_event_at to the checkpoints table", &add)
                && !has_column()?
            {
                return Err(error);
            }
        }
        self.execute(
            "cannot create the holds table",
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (sink String, token String, kind String, at UInt64, until UInt64) \
                 ENGINE = MergeTree ORDER BY (sink, at)",
                self.pauses_table()
            ),
        )?;
        self.execute(
            "cannot create the definitions table",
            &format!(
                "CREATE TABLE IF NOT EXISTS {} (sink String, definition String, at UInt64) \
                 ENGINE = MergeTree ORDER BY (sink, at)",
                self.definitions_table()
            ),
        )
    }

    /// Creates the database, tables and reader view when missing, and
    /// checks that an existing rows table has this view's columns.
    fn create_tables(&self) -> Result<(), SinkError> {
        self.create_bookkeeping_tables()?;
        self.create_rows_tables()
    }

    /// Creates the rows table and reader view when missing, and checks that
    /// an existing rows table has this view's columns; a reader view with
    /// other columns (a run died while it made its tables anew) is made
    /// again.
    fn create_rows_tables(&self) -> Result<(), SinkError> {
        self.create_rows_table(&self.rows_table())?;
        let found = self.rows_table_columns()?.unwrap_or_default();
        let wanted = self.wanted_columns();
        if found != wanted {
            return Err(SinkError::Fatal(format!(
                "table {} has columns [{}] but view needs [{}]; drop the table (or name another `table:`) \
                 and the sink rebuilds it",
                self.rows_table(),
                found.join(", "),
                wanted.join(", ")
            )));
        }
        let reader_view = self.reader_view();
        let found = self.columns_of(&self.table, "cannot read the reader view's columns")?;
        let names: Vec<&str> = self.column_list().iter().map(|c| c.name.as_str()).collect();
        if !found.is_empty() && found.iter().map(|column| column_name(column)).ne(names.iter().copied()) {
            self.execute("cannot drop the reader view", &format!("DROP TABLE IF EXISTS {reader_view}"))?;
        }
        self.create_reader_view(&reader_view)
    }

    /// Creates a rows table named `name` with this view's columns, when
    /// missing.
    fn create_rows_table(&self, name: &str) -> Result<(), SinkError> {
        let columns: Vec<String> = self.column_list().iter().map(|c| format!("{} {}", c.name, c.sql_type())).collect();
        let order: Vec<&str> = self.keys.iter().map(|c| c.name.as_str()).collect();
        self.execute(
            "cannot create the rows table",
            &format!(
                "CREATE TABLE IF NOT EXISTS {name} ({}, _deleted UInt8, _version UInt64) \
                 ENGINE = ReplacingMergeTree(_version) ORDER BY ({})",
                columns.join(", "),
                order.join(", ")
            ),
        )
    }

    /// Creates a reader view named `name` over the rows table, when
    /// missing.
    fn create_reader_view(&self, name: &str) -> Result<(), SinkError> {
        let names: Vec<&str> = self.column_list().iter().map(|c| c.name.as_str()).collect();
        self.execute(
            "cannot create the reader view",
            &format!(
                "CREATE VIEW IF NOT EXISTS {name} AS SELECT {} FROM {} FINAL WHERE _deleted = 0",
                names.join(", "),
                self.rows_table()
            ),
        )
    }

    /// Puts `rows` (a rows table with this view's columns, filled) in
    /// place of the rows table, and a reader view over it in place of the
    /// reader view, then drops the old ones. A reader view cannot be made
    /// for columns its table does not have (yet), so the columns the view
    /// gained are first added to the old rows table (a change of its
    /// metadata only; the old reader view does not read them), the new
    /// reader view is made over it, and then one `RENAME` puts both tables
    /// in place: ClickHouse does it under its global lock, so a query finds
    /// the old table and view or the new ones, never the old view over the
    /// new table (which fails for a column the view lost).
    ///
    /// A query resolves the reader view and then the table it reads, not
    /// both at once: one that found the old view just before the `RENAME`
    /// reads the new table. So the columns the old view reads and the view
    /// lost are added to the new table too, for the moment of the `RENAME`
    /// (a reader found `Unknown identifier` there about once in six runs of
    /// the changed-definition test under load), and dropped after it.
    ///
    /// A column whose type changed cannot be added to the old table, so
    /// then the rows table and the reader view are renamed one after the
    /// other, and for that moment the old view reads the new table: there
    /// too it finds the columns it lost.
    fn rename_new_tables_in(&self, rows: &str) -> Result<(), SinkError> {
        let (live_rows, old_rows) = (self.rows_table(), format!("{}__old", self.rows_table()));
        let reader_view = self.reader_view();
        let (next_view, old_view) = (format!("{reader_view}__next"), format!("{reader_view}__old"));
        for name in [&old_rows, &next_view, &old_view] {
            self.execute("cannot drop a leftover table", &format!("DROP TABLE IF EXISTS {name}"))?;
        }
        let view_exists = self.table_exists(&reader_view)?;
        // `a TO b` of each pair, or just `new TO a` where there is no `a`.
        let renames = |pairs: &[(&str, &str, &str, bool)]| {
            let sql: Vec<String> = pairs
                .iter()
                .flat_map(|(table, old, new, exists)| {
                    let moved_aside = exists.then(|| format!("{table} TO {old}"));
                    moved_aside.into_iter().chain([format!("{new} TO {table}")])
                })
                .collect();
            format!("RENAME TABLE {}", sql.join(", "))
        };
        let live_columns = self.rows_table_columns()?;
        let lost = self.columns_lost()?;
        self.alter_columns(
            "cannot give the new rows table the columns the old reader view reads",
            rows,
            "ADD COLUMN",
            &lost,
        )?;
        match live_columns.as_deref().and_then(|found| self.columns_to_add(found)) {
            Some(added) => {
                self.alter_columns(
                    "cannot add the new columns to the old rows table",
                    &live_rows,
                    "ADD COLUMN",
                    &added,
                )?;
                self.create_reader_view(&next_view)?;
                self.execute(
                    "cannot put the new tables in place",
                    &renames(&[
                        (&live_rows, &old_rows, rows, true),
                        (&reader_view, &old_view, &next_view, view_exists),
                    ]),
                )?;
            }
            None => {
                self.execute(
                    "cannot put the new rows table in place",
                    &renames(&[(&live_rows, &old_rows, rows, live_columns.is_some())]),
                )?;
                self.create_reader_view(&next_view)?;
                self.execute(
                    "cannot put the new reader view in place",
                    &renames(&[(&reader_view, &old_view, &next_view, view_exists)]),
                )?;
            }
        }
        for name in [&old_rows, &old_view] {
            self.execute("cannot drop the old tables", &format!("DROP TABLE IF EXISTS {name}"))?;
        }
        // A run that dies before this finds the old definition recorded,
        // and rebuilds once more.
        let lost: Vec<String> = lost.iter().map(|column| column_name(column).to_string()).collect();
        self.alter_columns("cannot drop the columns the view lost", &live_rows, "DROP COLUMN", &lost)
    }

    /// One `ALTER TABLE table` of `change` (`ADD COLUMN`, `DROP COLUMN`)
    /// for each of `columns`; none for none.
    fn alter_columns(&self, what: &str, table: &str, change: &str, columns: &[String]) -> Result<(), SinkError> {
        if columns.is_empty() {
            return Ok(());
        }
        let clauses: Vec<String> = columns.iter().map(|column| format!("{change} {column}")).collect();
        self.execute(what, &format!("ALTER TABLE {table} {}", clauses.join(", ")))
    }

    /// Whether `table` (`database.name`) exists.
    fn table_exists(&self, table: &str) -> Result<bool, SinkError> {
        let found = self.select(
            "cannot look for a table",
            &format!(
                "SELECT count() FROM system.tables WHERE database = {} AND name = {}",
                quote(&self.database),
                quote(table.rsplit('.').next().unwrap_or(table))
            ),
        )?;
        Ok(found.trim() != "0")
    }

    /// The columns (`name type`) this view has and a rows table with
    /// columns `found` lacks: `None` when one of its columns has another
    /// type than the view's column of that name.
    fn columns_to_add(&self, found: &[String]) -> Option<Vec<String>> {
        let found: HashMap<&str, &String> = found.iter().map(|column| (column_name(column), column)).collect();
        let mut added = Vec::new();
        for column in self.wanted_columns() {
            match found.get(column_name(&column)) {
                Some(held) if **held == column => {}
                Some(_) => return None,
                None => added.push(column),
            }
        }
        Some(added)
    }

    /// The columns (`name type`) the reader view reads that this view
    /// lacks.
    fn columns_lost(&self) -> Result<Vec<String>, SinkError> {
        let found = self.columns_of(&self.table, "cannot read the reader view's columns")?;
        let kept: Vec<&str> = self.column_list().iter().map(|c| c.name.as_str()).collect();
        Ok(found.into_iter().filter(|column| !kept.contains(&column_name(column))).collect())
    }

    /// The columns of table (or view) `name` of the sink's database, as
    /// `name type`, in order (none: no such table).
    fn columns_of(&self, name: &str, what: &str) -> Result<Vec<String>, SinkError> {
        let found =
            self.select(what, &format!("SELECT name, type FROM system.columns WHERE {}", self.table_filter(name)))?;
        Ok(found.lines().map(|l| l.replace("\\'", "'").replace('\t', " ")).collect())
    }

    /// The rows table's columns as `name type` (`None`: there is no
    /// such table).
    fn rows_table_columns(&self) -> Result<Option<Vec<String>>, SinkError> {
        let found = self.columns_of(&self.rows_table_name(), "cannot read the rows table's columns")?;
        Ok((!found.is_empty()).then_some(found))
    }

    /// The columns the rows table must have for this view, as `name type`.
    fn wanted_columns(&self) -> Vec<String> {
        let mut wanted: Vec<String> =
            self.column_list().iter().map(|c| format!("{} {}", c.name, c.sql_type())).collect();
        wanted.push("_deleted UInt8".into());
        wanted.push("_version UInt64".into());
        wanted
    }

    /// The keys of every row the sink holds now, and of every row with a
    /// version in `uncommitted` (a key may come twice), as the TabSeparated
    /// lines ClickHouse writes them (and reads them back).
    fn held_keys(&self, uncommitted: &[(u64, u64)]) -> Result<String, SinkError> {
        let keys = self.keys.iter().map(|c| c.name.as_str()).collect::<Vec<&str>>().join(", ");
        let mut sql = format!("SELECT {keys} FROM {} FINAL WHERE _deleted = 0", self.rows_table());
        if let Some(condition) = versions_in(uncommitted) {
            sql.push_str(&format!(" UNION ALL SELECT {keys} FROM {} WHERE {condition}", self.rows_table()));
        }
        self.select("cannot read the keys the sink holds", &sql)
    }

    /// Tombstones at `version` for the keys in `held` ([`Self::held_keys`]).
    fn tombstones_body(&self, held: &str, version: u64, body: &mut String) {
        for key in held.lines() {
            body.push_str(key);
            for column in &self.values {
                body.push('\t');
                write_default(column, body);
            }
            body.push_str("\t1\t");
            body.push_str(itoa::Buffer::new().format(version));
            body.push('\n');
        }
    }

    fn pauses_table(&self) -> String {
        format!("{}.projector_pauses", self.database)
    }

    /// The token of the replay holding this sink, if one does.
    fn pause_holder(&mut self) -> Result<Option<String>, SinkError> {
        self.pause_checked = Instant::now();
        let text = self.select(
            "cannot read the sink's holds",
            &format!(
                "SELECT token, until FROM {} WHERE sink = {} AND kind IN ('pause', 'release') ORDER BY at DESC \
                 LIMIT 1",
                self.pauses_table(),
                quote(&self.name)
            ),
        )?;
        let Some((token, until)) = text.lines().next().and_then(|line| line.split_once('\t')) else { return Ok(None) };
        let until: u64 = until.parse().unwrap_or(0);
        Ok((until > now_millis()).then(|| token.to_string()))
    }

    /// Adds a row to the holds table.
    fn write_hold(&self, token: &str, kind: &str, until: u64) -> Result<(), SinkError> {
        self.write_hold_at(token, kind, now_millis(), until)
    }

    /// Adds a row to the holds table, written at `at` (ms).
    fn write_hold_at(&self, token: &str, kind: &str, at: u64, until: u64) -> Result<(), SinkError> {
        let mut line = String::new();
        for value in [
            Value::Text(self.name.as_str().into()),
            Value::Text(token.into()),
            Value::Text(kind.into()),
            Value::UInt(at),
            Value::UInt(until),
        ] {
            if !line.is_empty() {
                line.push('\t');
            }
            write_tsv(&value, &mut line);
        }
        line.push('\n');
        self.insert(
            "cannot write a hold",
            &format!("INSERT INTO {} (sink, token, kind, at, until) FORMAT TabSeparated", self.pauses_table()),
            line,
        )
    }

    /// While a replay holds the sink: says so (an `ack` row, so the replay
    /// knows no write of this run is under way), waits until it lets go,
    /// then takes up the checkpoint the replay left (its swap is a commit
    /// of this generation).
    fn wait_if_paused(&mut self) -> Result<(), SinkError> {
        let Some(token) = self.pause_holder()? else { return Ok(()) };
        info!(sink = %self.name, "a replay holds the sink while it swaps a rebuilt view in; waiting");
        let started = Instant::now();
        self.write_hold(&token, "ack", 0)?;
        while self.pause_holder()?.is_some() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = self.select(
            "cannot read the sink's checkpoint",
            &format!(
                "SELECT seq, committed, positions, newest_event_at FROM {} WHERE sink = {} AND generation = {} \
                 ORDER BY seq DESC LIMIT 1",
                self.checkpoints_table(),
                quote(&self.name),
                self.generation
            ),
        )?;
        if let Some(line) = text.lines().next() {
            let mut fields = line.splitn(4, '\t');
            let seq = fields.next().and_then(|f| f.parse().ok()).unwrap_or(self.seq);
            let committed = fields.next().and_then(|f| f.parse().ok()).unwrap_or(self.committed);
            let positions = fields.next().unwrap_or("").replace("\\\\", "\\");
            // The swap's view reflects the events up to its newest.
            let newest = fields.next().and_then(Timestamp::parse_rfc3339);
            self.taken_newest = self.taken_newest.max(newest);
            self.seq = self.seq.max(seq);
            self.committed = self.committed.max(committed);
            if !positions.is_empty() {
                self.checkpoint_positions =
                    Some(positions_from_json(&positions, &self.source_names).map_err(SinkError::Fatal)?);
            }
        }
        info!(sink = %self.name, waited_ms = started.elapsed().as_millis() as u64, "a replay released the sink");
        Ok(())
    }

    /// The newest generation any run took of this sink.
    fn newest_generation(&self) -> Result<u64, SinkError> {
        let text = self.select(
            "cannot read the sink's generation",
            &format!("SELECT max(generation) FROM {} WHERE sink = {}", self.checkpoints_table(), quote(&self.name)),
        )?;
        Ok(text.trim().parse().unwrap_or(0))
    }

    /// The sink's last checkpoint row, if any.
    fn last_checkpoint(&self) -> Result<Option<Checkpoint>, SinkError> {
        let text = self.select(
            "cannot read the sink's checkpoint",
            &format!(
                "SELECT committed, positions, newest_event_at FROM {} WHERE sink = {} \
                 ORDER BY generation DESC, seq DESC LIMIT 1",
                self.checkpoints_table(),
                quote(&self.name)
            ),
        )?;
        let Some(line) = text.lines().next() else { return Ok(None) };
        let mut fields = line.split('\t');
        let committed = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
        let positions = fields.next().unwrap_or("").replace("\\\\", "\\");
        let newest = fields.next().and_then(Timestamp::parse_rfc3339);
        Ok(Some(Checkpoint { committed, positions, newest }))
    }

    /// Writes a checkpoint row: the rows up to version `committed` reflect
    /// the log up to `positions` (none: `""`, and then no `newest`), whose
    /// latest `occurred_at` is `newest`.
    fn write_checkpoint(
        &self,
        seq: u64,
        committed: u64,
        positions: &str,
        newest: Option<Timestamp>,
        rows: usize,
    ) -> Result<(), SinkError> {
        let mut line = String::new();
        for value in [
            Value::Text(self.name.as_str().into()),
            Value::UInt(self.generation),
            Value::UInt(seq),
            Value::UInt(committed),
            Value::Text(positions.into()),
            Value::UInt(now_secs()),
            Value::UInt(rows as u64),
            Value::Text(newest.map(Timestamp::to_rfc3339).unwrap_or_default().into()),
        ] {
            if !line.is_empty() {
                line.push('\t');
            }
            write_tsv(&value, &mut line);
        }
        line.push('\n');
        self.insert(
            "cannot write the checkpoint",
            &format!(
                "INSERT INTO {} (sink, generation, seq, committed, positions, written_at, rows, newest_event_at) \
                 FORMAT TabSeparated",
                self.checkpoints_table()
            ),
            line,
        )
    }

    /// Waits until no `INSERT` into the rows table is under way. The server
    /// finishes an `INSERT` it has received even when its client is gone:
    /// a run killed right after it sent one would otherwise have its rows
    /// land after the next run looked for uncommitted versions (which then
    /// has to start over, see [`Self::drop_late_inserts`]).
    fn wait_for_inserts_under_way(&self) -> Result<(), SinkError> {
        let running = format!(
            "SELECT count() FROM system.processes WHERE position(query, {}) = 1",
            quote(&format!("INSERT INTO {} ", self.rows_table()))
        );
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.select("cannot list the inserts under way", &running)?.trim() == "0" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SinkError::Retryable(format!(
                    "an INSERT into {} sent before this run is still under way",
                    self.rows_table()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The versions each earlier run's claim declared void: what the runs
    /// before it wrote above the commit it resumed from, `(committed,
    /// generation << 32)`.
    fn void_ranges(&self) -> Result<Vec<(u64, u64)>, SinkError> {
        let text = self.select(
            "cannot read the sink's claims",
            &format!(
                "SELECT generation, committed FROM {} WHERE sink = {} AND seq = 0 AND generation < {}",
                self.checkpoints_table(),
                quote(&self.name),
                self.generation
            ),
        )?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (generation, committed) = line.split_once('\t')?;
                Some((committed.parse().ok()?, generation.parse::<u64>().ok()? << 32))
            })
            .collect())
    }

    /// For a while after [`Self::resume`], looks again for what older runs
    /// wrote above the commit this run resumed from: rows that a run sent
    /// just before it died, which the server took after this run's start.
    /// Once this run has rewritten every key above them they are deleted;
    /// before, they make the run start over ([`Uncommitted::NoneFound`]).
    fn drop_late_inserts(&mut self) -> Result<(), SinkError> {
        let Some((above, until, checked)) = self.late_inserts else { return Ok(()) };
        if Instant::now() >= until {
            self.late_inserts = None;
            return Ok(());
        }
        if checked.elapsed() < PAUSE_CHECK {
            return Ok(());
        }
        let late = [(above, self.generation << 32)];
        match self.uncommitted {
            // Its first write takes care of them.
            Uncommitted::Rewriting(_) => {}
            Uncommitted::Rewritten => self.delete_versions_in(&late)?,
            Uncommitted::NoneFound => {
                let found = self.count_versions_in(&late)?;
                if found > 0 {
                    warn!(
                        sink = %self.name,
                        rows = found,
                        "rows an older run wrote and never committed landed after this run started; the run \
                         starts over to rewrite the view above them"
                    );
                    return Err(SinkError::Lost(format!(
                        "{found} rows an older run of ClickHouse sink {:?} never committed landed after this run \
                         started; a merge may have put them in place of committed rows",
                        self.name
                    )));
                }
            }
        }
        self.late_inserts = Some((above, until, Instant::now()));
        Ok(())
    }

    /// How many rows have versions in any of the open ranges `ranges`.
    fn count_versions_in(&self, ranges: &[(u64, u64)]) -> Result<u64, SinkError> {
        let Some(condition) = versions_in(ranges) else { return Ok(0) };
        let found = self.select(
            "cannot count uncommitted rows",
            &format!("SELECT count() FROM {} WHERE {condition}", self.rows_table()),
        )?;
        Ok(found.trim().parse().unwrap_or(0))
    }

    /// Deletes rows with versions in any of the open ranges `ranges` and
    /// waits until the mutation is done. Only rows no committed row can be
    /// hidden under (see [`Uncommitted`]).
    fn delete_versions_in(&self, ranges: &[(u64, u64)]) -> Result<(), SinkError> {
        let Some(condition) = versions_in(ranges) else { return Ok(()) };
        // A mutation rewrites the table's parts: only when there is
        // something to delete.
        let found = self.count_versions_in(ranges)?;
        if found == 0 {
            return Ok(());
        }
        info!(sink = %self.name, rows = found, "deleting rows older runs wrote and never committed");
        self.execute(
            "cannot delete uncommitted rows",
            &format!("ALTER TABLE {} DELETE WHERE {condition}", self.rows_table()),
        )?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let open = self.select(
                "cannot read the mutation's progress",
                &format!(
                    "SELECT count() FROM system.mutations WHERE {} AND is_done = 0",
                    self.table_filter(&self.rows_table_name())
                ),
            )?;
            if open.trim() == "0" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SinkError::Retryable("the delete of uncommitted rows is still running".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn fenced(&self) -> Result<(), SinkError> {
        let newest = self.newest_generation()?;
        if newest != self.generation {
            return Err(SinkError::Fatal(format!(
                "fenced: generation {newest} of this ClickHouse sink belongs to a newer run; this run \
                 (generation {}) writes nothing more and stops",
                self.generation
            )));
        }
        Ok(())
    }

    /// Rows as the rows table takes them (`None`: a tombstone), all at
    /// `version`.
    fn rows_body<'a>(&self, rows: impl IntoIterator<Item = (&'a Row, Option<&'a Row>)>, version: u64) -> String {
        let mut body = String::new();
        for (key, values) in rows {
            for value in key.iter() {
                write_tsv(value, &mut body);
                body.push('\t');
            }
            match values {
                Some(values) => {
                    for value in values.iter() {
                        write_tsv(value, &mut body);
                        body.push('\t');
                    }
                    body.push('0');
                }
                None => {
                    for column in &self.values {
                        write_default(column, &mut body);
                        body.push('\t');
                    }
                    body.push('1');
                }
            }
            body.push('\t');
            body.push_str(itoa::Buffer::new().format(version));
            body.push('\n');
        }
        body
    }

    /// Inserts rows made by [`Self::rows_body`], in one `INSERT` (one part:
    /// readers see all of it or none).
    fn insert_rows(&self, body: String) -> Result<(), SinkError> {
        self.insert_rows_into(&self.rows_table(), body)
    }

    /// [`Self::insert_rows`] into the rows table named `table`.
    fn insert_rows_into(&self, table: &str, body: String) -> Result<(), SinkError> {
        let names: Vec<&str> = self.column_list().iter().map(|c| c.name.as_str()).collect();
        self.insert(
            "cannot write rows",
            &format!("INSERT INTO {table} ({}, _deleted, _version) FORMAT TabSeparated", names.join(", ")),
            body,
        )
    }

    /// Writes the pending rows (if any) and then the checkpoint.
    fn flush(&mut self) -> Result<(), SinkError> {
        let Some(positions) = self.taken_positions.clone() else { return Ok(()) };
        if self.pending.is_empty() && self.checkpoint_positions.as_ref() == Some(&positions) {
            return Ok(());
        }
        self.wait_if_paused()?;
        self.fenced()?;
        // Replacing what it holds: a tombstone for every row at one
        // version, the rebuilt rows at the next, in the same `INSERT`; or,
        // when the view's columns changed, the rebuilt rows alone in a
        // table made anew, which then takes the old one's place.
        let mut seq = self.seq + 1;
        let mut body = String::new();
        let mut replaced = 0;
        let new_rows = self.new_tables.then(|| format!("{}__next", self.rows_table()));
        if let Some(new_rows) = &new_rows {
            self.execute("cannot drop a leftover table", &format!("DROP TABLE IF EXISTS {new_rows}"))?;
            self.create_rows_table(new_rows)?;
        } else if self.replace_held {
            let uncommitted = match &self.uncommitted {
                Uncommitted::Rewriting(ranges) => ranges.as_slice(),
                _ => &[],
            };
            let held = self.held_keys(uncommitted)?;
            replaced = held.lines().count();
            self.tombstones_body(&held, (self.generation << 32) | seq, &mut body);
            seq += 1;
        }
        let version = (self.generation << 32) | seq;
        let rows = self.pending.len() + replaced;
        if rows > 0 {
            body.push_str(&self.rows_body(self.pending.iter().map(|(key, values)| (key, values.as_ref())), version));
            self.insert_rows_into(new_rows.as_deref().unwrap_or(&self.rows_table()), body)?;
            // A newer run took over while this one wrote: what it wrote
            // is void, and the newer run, which may find a committed row
            // merged away under it, takes care of it (see `Uncommitted`).
            self.fenced()?;
        }
        if let Some(new_rows) = &new_rows {
            self.fenced()?;
            self.rename_new_tables_in(new_rows)?;
            self.record_definition()?;
            self.new_tables = false;
            info!(sink = %self.name, rows, "the rebuilt view replaced the sink's tables (its columns changed)");
        }
        let committed = if rows > 0 { version } else { self.committed };
        let at = positions_to_json(&positions, &self.source_names);
        self.write_checkpoint(seq, committed, &at, self.taken_newest, rows)?;
        self.seq = seq;
        self.committed = committed;
        self.pending.clear();
        self.pending_since = None;
        if std::mem::take(&mut self.replace_held) {
            info!(sink = %self.name, rows = replaced, "the rebuilt view replaced the rows the sink held");
            // Every key the sink held, or void rows named, is above every
            // void version now, whatever made the sink replace its rows.
            if let Uncommitted::Rewriting(ranges) = std::mem::replace(&mut self.uncommitted, Uncommitted::Rewritten) {
                // Should this fail, the next run finds them and rewrites
                // the view again.
                if let Err(error) = self.delete_versions_in(&ranges) {
                    warn!(sink = %self.name, %error, "cannot delete rows older runs never committed");
                }
            }
        }
        self.checkpoint_at = Instant::now();
        self.checkpoint_positions = Some(positions);
        Ok(())
    }
}

/// The condition on `_version` of the open `ranges` (`None`: no version is
/// in any).
fn versions_in(ranges: &[(u64, u64)]) -> Option<String> {
    let ranges: Vec<String> = ranges
        .iter()
        .filter(|(above, below)| above.saturating_add(1) < *below)
        .map(|(above, below)| format!("(_version > {above} AND _version < {below})"))
        .collect();
    (!ranges.is_empty()).then(|| ranges.join(" OR "))
}

/// `ranges` of versions (open at both ends) with the overlapping ones
/// joined, in order.
fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut joined: Vec<(u64, u64)> = Vec::new();
    for (above, below) in ranges {
        match joined.last_mut() {
            // Versions are whole numbers: (a, b) and (c, d) leave none
            // between them when c < b.
            Some(last) if above < last.1 => last.1 = last.1.max(below),
            _ => joined.push((above, below)),
        }
    }
    joined
}

/// The name of a column given as `name type`.
fn column_name(column: &str) -> &str {
    column.split(' ').next().unwrap_or_default()
}

/// Whether a ClickHouse error says the database or table does not exist
/// (`UNKNOWN_DATABASE`, 81; `UNKNOWN_TABLE`, 60), as in 18.16's
/// `Code: 81, e.displayText() = …` and newer servers' `Code: 81. DB::…`.
pub(crate) fn never_created(message: &str) -> bool {
    ["Code: 81,", "Code: 81.", "Code: 60,", "Code: 60."].iter().any(|code| message.contains(code))
}

fn classify<T>(
    what: &str,
    result: Result<Result<T, clickhouse::error::Error>, tokio::time::error::Elapsed>,
) -> Result<T, SinkError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(clickhouse::error::Error::BadResponse(message))) => {
            // The server answered: a bad statement will not get better, but
            // an overloaded server might.
            let busy = ["TOO_MANY", "MEMORY_LIMIT", "TIMEOUT", "Too many"].iter().any(|m| message.contains(m));
            if busy {
                Err(SinkError::Retryable(format!("ClickHouse: {what}: {message}")))
            } else {
                Err(SinkError::Fatal(format!("ClickHouse: {what}: {message}")))
            }
        }
        Ok(Err(error)) => Err(SinkError::Retryable(format!("ClickHouse: {what}: {error}"))),
        Err(_) => Err(SinkError::Retryable(format!("ClickHouse: {what}: no answer within {}s", TIMEOUT.as_secs()))),
    }
}

impl ViewSink for ClickHouseViewSink {
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.keep_only_this_definition()?;
        if !self.new_tables {
            self.create_rows_tables()?;
        }
        let last = self.last_checkpoint()?;
        self.generation = self.newest_generation()? + 1;
        self.seq = 0;
        let Checkpoint { committed, positions, newest } = last.unwrap_or_default();
        // Claim the sink, then look for what older runs wrote after their
        // last commit (they died before committing it, or were fenced),
        // once what they sent has landed.
        self.write_checkpoint(0, committed, &positions, newest, 0)?;
        self.wait_for_inserts_under_way()?;
        // Every run's claim said the same of the runs before it: what they
        // wrote above the commit it resumed from is void. An `INSERT` that
        // a run sent just before it died can still land after the next
        // run's start (the server had not started it yet), so all of those
        // ranges are looked at, not only this run's.
        let mut void = self.void_ranges()?;
        void.push((committed, self.generation << 32));
        let void = merged(void);
        self.late_inserts = Some((committed, Instant::now() + LATE_INSERTS, Instant::now()));
        self.committed = committed;
        info!(sink = %self.name, generation = self.generation, "took a new generation of the ClickHouse sink");
        let found = self.count_versions_in(&void)?;
        if found > 0 {
            // A merge may have dropped committed rows for some of them: the
            // sink claims no position (a second checkpoint row says so, and
            // a run that dies before the rewrite leaves the next one to do
            // it), so the runner resets it and hands it the whole view.
            warn!(
                sink = %self.name,
                rows = found,
                "rows older runs wrote and never committed are in the table; the sink rewrites the whole view \
                 above them"
            );
            self.seq = 1;
            self.write_checkpoint(1, committed, "", None, 0)?;
            self.uncommitted = Uncommitted::Rewriting(void);
            return Ok(None);
        }
        self.uncommitted = Uncommitted::NoneFound;
        if positions.is_empty() {
            return Ok(None);
        }
        let positions = positions_from_json(&positions, &self.source_names).map_err(SinkError::Fatal)?;
        self.checkpoint_positions = Some(positions.clone());
        self.taken_positions = Some(positions.clone());
        self.taken_newest = newest;
        Ok(Some(positions))
    }

    fn reset(&mut self) -> Result<(), SinkError> {
        if self.keep_until_rebuilt {
            // The rows and the checkpoint stay as they are, and agree,
            // until the next write replaces both.
            info!(sink = %self.name, "the sink keeps its rows until the rebuilt view replaces them");
            self.replace_held = true;
            self.checkpoint_positions = None;
            self.taken_positions = None;
            self.taken_newest = None;
            return Ok(());
        }
        self.execute("cannot empty the rows table", &format!("TRUNCATE TABLE {}", self.rows_table()))?;
        self.uncommitted = Uncommitted::Rewritten;
        self.seq += 1;
        self.committed = 0;
        self.write_checkpoint(self.seq, 0, "", None, 0)?;
        self.checkpoint_positions = None;
        self.taken_positions = None;
        self.taken_newest = None;
        Ok(())
    }

    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        self.drop_late_inserts()?;
        // A retried batch was taken already; only the write is left.
        if batch.upper > self.taken_upper {
            for (index, change) in batch.changes.iter().enumerate() {
                if change.diff > 0 {
                    self.pending.insert(change.key.clone(), Some(change.values.clone()));
                } else {
                    let neighbours = &batch.changes[index.saturating_sub(1)..batch.changes.len().min(index + 2)];
                    if !neighbours.iter().any(|c| c.key == change.key && c.diff > 0) {
                        self.pending.insert(change.key.clone(), None);
                    }
                }
            }
            if !batch.changes.is_empty() && self.pending_since.is_none() {
                self.pending_since = Some(Instant::now());
            }
            self.taken_upper = batch.upper;
            self.taken_positions = Some(batch.positions.clone());
            self.taken_newest = batch.newest_event_at.or(self.taken_newest);
        }
        let due = self.pending.len() >= self.batch_rows
            || self.pending_since.is_some_and(|since| since.elapsed() >= self.batch_every)
            || self.checkpoint_at.elapsed() >= self.idle_checkpoint;
        if !due {
            if self.pause_checked.elapsed() >= PAUSE_CHECK {
                // An idle sink answers a replay's hold too.
                self.wait_if_paused()?;
            }
            return Ok(());
        }
        self.flush().inspect_err(|error| {
            if matches!(error, SinkError::Retryable(_)) {
                warn!(sink = %self.name, %error, "ClickHouse write failed");
            }
        })
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.flush()
    }
}

/// Reads a ClickHouse sink's state for `projector status`.
pub fn status(config: &ClickHouseSinkConfig, sink_name: &str) -> Result<SinkStatus, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let client = client(config);
    let sql = format!(
        "SELECT max(generation), argMax(positions, generation * 4294967296 + seq), \
         maxIf(toUnixTimestamp(written_at), rows > 0), argMax(committed, generation * 4294967296 + seq) \
         FROM {}.projector_checkpoints WHERE sink = {} HAVING count() > 0",
        config.database,
        quote(sink_name)
    );
    let text = match runtime.block_on(async {
        let mut cursor = client.query(&sql).fetch_bytes("TabSeparated")?;
        cursor.collect().await
    }) {
        Ok(text) => text,
        // No run created the sink's database or tables yet: it holds
        // nothing, as a Redis sink with no keys.
        Err(clickhouse::error::Error::BadResponse(message)) if never_created(&message) => Default::default(),
        Err(error) => return Err(format!("ClickHouse: {error}")),
    };
    let text = String::from_utf8_lossy(&text);
    let Some(line) = text.lines().next() else { return Ok(SinkStatus::default()) };
    let mut fields = line.split('\t');
    let generation = fields.next().and_then(|g| g.parse().ok());
    let positions = fields.next().map(|p| p.replace("\\\\", "\\")).filter(|p| !p.is_empty());
    let written = fields.next().and_then(|w| w.parse::<i64>().ok()).filter(|s| *s > 0).map(|s| s * 1000);
    let committed: u64 = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(SinkStatus {
        generation,
        // A last checkpoint that claims no position but keeps the version
        // of a commit: the rows of that commit are still in the table.
        rebuilding: positions.is_none() && committed > 0,
        positions: positions.as_deref().and_then(SinkStatus::parse_positions),
        written_at_ms: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn void_ranges_join_where_no_version_lies_between() {
        assert_eq!(merged(vec![]), vec![]);
        // Claims of generations 2, 3 and 5: (commit resumed from, gen << 32).
        let ranges = vec![(4 << 32 | 2, 5 << 32), (1 << 32 | 3, 2 << 32), (1 << 32 | 3, 3 << 32)];
        assert_eq!(merged(ranges), vec![(1 << 32 | 3, 3 << 32), (4 << 32 | 2, 5 << 32)]);
        // (1, 4) ends at 3, (3, 6) starts at 4: nothing between them.
        assert_eq!(merged(vec![(3, 6), (1, 4)]), vec![(1, 6)]);
        // (1, 4) and (4, 6) both leave out 4.
        assert_eq!(merged(vec![(4, 6), (1, 4)]), vec![(1, 4), (4, 6)]);
    }

    #[test]
    fn ranges_without_a_version_in_them_ask_for_nothing() {
        assert_eq!(versions_in(&[]), None);
        // (7, 8) holds no whole number; (9, 9) is empty.
        assert_eq!(versions_in(&[(7, 8), (9, 9)]), None);
        assert_eq!(
            versions_in(&[(7, 8), (1, 4), (10, 12)]).as_deref(),
            Some("(_version > 1 AND _version < 4) OR (_version > 10 AND _version < 12)")
        );
    }

    fn tsv(value: Value) -> String {
        let mut out = String::new();
        write_tsv(&value, &mut out);
        out
    }

    /// Texts go in TabSeparated's escaped form, copied whole when they need
    /// no escape.
    #[test]
    fn texts_are_escaped_for_tab_separated() {
        assert_eq!(tsv(Value::Text("Tote bag #46".into())), "Tote bag #46");
        assert_eq!(tsv(Value::Text("a\tb\nc\\d é".into())), "a\\tb\\nc\\\\d é");
        assert_eq!(tsv(Value::Null), "\\N");
        assert_eq!(tsv(Value::Timestamp(projector_core::value::Timestamp(1_700_000_000_999_999_999))), "1700000000");
    }
}
