//! The `pipelines.yaml` model: plain data describing sources, views and
//! sinks, as written by a data engineer.
//!
//! Nothing here runs anything (Materialize keeps such descriptions apart
//! from the code that runs them). [`super::decode`] builds these structs from
//! YAML; [`super::plan`] checks them and compiles the views. The doc comment
//! of every field is the user documentation of the YAML key it reads.

use std::path::PathBuf;

use super::yaml::Pos;

/// A value with the place in the config file it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where its text starts.
    pub pos: Pos,
    /// Whether character offsets into the text map one to one to columns
    /// (a plain or simply quoted one-line scalar).
    pub exact: bool,
}

impl<T> Spanned<T> {
    /// The position `offset` characters into the value's text.
    pub fn pos_at(&self, offset: usize) -> Pos {
        if self.exact { self.pos.shifted(offset) } else { self.pos }
    }
}

/// A whole `pipelines.yaml`.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// The file it was read from, as given (used in messages).
    pub file: String,
    /// `version`: the config format version; only `1` exists.
    pub version: u32,
    /// `sources`: where events come from, by name. All sources feed one log.
    pub sources: Vec<SourceConfig>,
    /// `views`: the read models, by name.
    pub views: Vec<ViewConfig>,
    /// `sinks`: where views are materialized, by name.
    pub sinks: Vec<SinkConfig>,
    /// `api` (optional): the HTTP API; `projector run` serves it.
    pub api: Option<ApiConfig>,
    /// `commands` (optional): the command side behind the command routes.
    pub commands: Option<CommandsConfig>,
    /// `state` (optional): snapshots of the pipeline's own state, so a
    /// restart need not read the log from the start.
    pub state: Option<StateConfig>,
}

/// The `state` section: where `projector run` keeps snapshots of the
/// pipeline's state (the order state and the `event_id`s seen, as Parquet
/// with the log positions they reflect) and how often it replaces them.
#[derive(Clone, Debug, PartialEq)]
pub struct StateConfig {
    /// `path`: the snapshot file (the previous one is kept next to it with
    /// `.prev` appended). Relative paths are relative to the config file.
    pub path: PathBuf,
    /// `every_ms` (default 60000): a new snapshot at most this often.
    pub every_ms: u64,
}

/// The `api` section.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiConfig {
    /// `listen` (default `127.0.0.1:8080`): the address and port to serve on.
    pub listen: std::net::SocketAddr,
    /// `tokens` (optional): API tokens; when any is declared, every `/v1`
    /// route needs one (`Authorization: Bearer <secret>`).
    pub tokens: Vec<TokenConfig>,
    /// `read_from` (optional): views whose reads the API answers from one
    /// of their Redis or ClickHouse sinks instead of the in-process store,
    /// as `(view, sink)`.
    pub read_from: Vec<(Spanned<String>, Spanned<String>)>,
}

/// One API token of `api.tokens`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenConfig {
    /// Its name (in logs and errors; the secret never is).
    pub name: String,
    /// Where its secret comes from.
    pub secret: SecretSource,
    /// `stores`: the store ids it may touch; `None` for `"*"` (all).
    pub stores: Option<Vec<u64>>,
    /// `rights` includes `read`: the read routes.
    pub read: bool,
    /// `rights` includes `command`: the command routes.
    pub command: bool,
    /// `rate_limit` (optional): requests per second the token may make
    /// (bursts up to one second's worth); more get `429`.
    pub rate_limit: Option<u64>,
}

/// Where a token's secret comes from.
#[derive(Clone, PartialEq)]
pub enum SecretSource {
    /// `secret`: the value (usually `${ENV_VAR}`).
    Value(String),
    /// `secret_file`: a file holding it (surrounding whitespace trimmed),
    /// read when the API starts.
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Value(_) => f.write_str("Value(<hidden>)"),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// The `commands` section: where the command side keeps its log.
#[derive(Clone, Debug, PartialEq)]
pub struct CommandsConfig {
    /// `brokers`: Kafka bootstrap servers.
    pub brokers: String,
    /// `events_topic`: where the contract's events are appended (the topic
    /// the pipeline's Kafka source reads).
    pub events_topic: String,
    /// `inventory_topic` (default `<events_topic>-inventory`): stock levels.
    pub inventory_topic: String,
    /// `audit_topic` (default `<events_topic>-audit`): every command, accepted
    /// or rejected, with its answer.
    pub audit_topic: String,
    /// `state_dir` (default `.projector/commands`, relative to the config):
    /// where the state snapshot is kept so that starts stay fast.
    pub state_dir: PathBuf,
    /// `properties` (optional): more librdkafka settings.
    pub properties: Vec<(String, String)>,
}

/// A named source.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceConfig {
    /// The source's name (its key under `sources`).
    pub name: String,
    /// Where it is declared.
    pub pos: Pos,
    /// `type` and the options of that type.
    pub kind: SourceKind,
}

/// Every source type. A new source type is one variant here, its options
/// struct, and its runtime in `connectors/<type>/`.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceKind {
    /// `type: file`: a JSON Lines file of events.
    File(FileSourceConfig),
    /// `type: kafka`: a Kafka topic of events.
    Kafka(KafkaSourceConfig),
}

/// The default of a Kafka source's `catch_up_batch_ms`.
pub const DEFAULT_CATCH_UP_BATCH_MS: u64 = 1000;

/// Options of `type: kafka` sources.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSourceConfig {
    /// `brokers`: the bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// `topic`: the topic of events; its partitions are spread over the
    /// workers.
    pub topic: String,
    /// `start` (default `earliest`): where reading starts: `earliest`,
    /// `latest`, `{ offsets: { 0: 1200, 1: 0 } }` (partitions not listed
    /// start at the earliest offset) or `{ timestamp: "2024-03-01T00:00:00Z" }`
    /// (the first record at or after it).
    pub start: StartPosition,
    /// `bounded` (default false): stop at the end offsets seen when the
    /// pipeline starts instead of following the topic (for backfills and
    /// tests; `run --until-idle` then returns).
    pub bounded: bool,
    /// `batch_ms` (default 20): how long one batch collects records; the
    /// views complete, and sinks commit, once per batch.
    pub batch_ms: u64,
    /// `catch_up_batch_ms` (default 1000): while the reader is behind the
    /// topic, how long one batch may collect instead of `batch_ms`: a
    /// record's changes then reach the sinks later, but catching up in
    /// big batches is several times faster (each order folds, and each
    /// view row is written, once per batch). `projector replay` uses its
    /// checkpoint interval here.
    pub catch_up_batch_ms: u64,
    /// `dead_letter_topic` (optional): where bad records go, with the
    /// original bytes and key, and their topic, partition, offset, kind and
    /// reason as headers. Without it they are logged and counted.
    pub dead_letter_topic: Option<String>,
    /// `group_id` (default `projector-<source name>`): the consumer group
    /// under which consumed positions are committed, for lag monitoring.
    pub group_id: String,
    /// `properties` (optional): more librdkafka settings, e.g.
    /// `security.protocol: SASL_SSL`. Projector's own settings
    /// (`isolation.level: read_committed`, no auto commit) win.
    pub properties: Vec<(String, String)>,
}

/// Where a Kafka source starts reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The first offset of each partition.
    Earliest,
    /// The end of each partition at start (only new records).
    Latest,
    /// Given offsets per partition; others start at the earliest.
    Offsets(Vec<(i32, i64)>),
    /// The first record at or after this instant (nanoseconds since 1970).
    Timestamp(i64),
}

/// Options of `type: file` sources.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSourceConfig {
    /// `path`: the JSON Lines file, one event per line; relative paths are
    /// relative to the folder of the config file.
    pub path: PathBuf,
    /// `batch_records` (default 100000): lines per batch. The dataflow
    /// completes, and sinks commit, one batch at a time.
    pub batch_records: u64,
    /// `dead_letters` (optional): a JSON Lines file that receives every bad
    /// record with its line number and the reason. Without it bad records
    /// are logged and counted.
    pub dead_letters: Option<PathBuf>,
}

/// A named view (read model).
#[derive(Clone, Debug, PartialEq)]
pub struct ViewConfig {
    /// The view's name (its key under `views`); also its output file name.
    pub name: String,
    /// Where it is declared.
    pub pos: Pos,
    /// `description` (optional): what the view is for, for people.
    pub description: Option<String>,
    /// `from`: the relation it reads: `orders` or `order_lines`.
    pub from: Spanned<String>,
    /// `filter` (optional): a condition rows must meet to count at all.
    pub filter: Option<Spanned<String>>,
    /// `group_by`: the key fields: a field name, or `name: expression` for
    /// a derived key such as `date: date(created_at)`.
    pub group_by: Vec<GroupByConfig>,
    /// `measures`: the aggregated fields, in output order.
    pub measures: Vec<MeasureConfig>,
    /// `labels` (optional): fields derived from keys and measures by
    /// ordered rules; the first rule whose `when` holds gives the value.
    pub labels: Vec<LabelConfig>,
    /// `having` (optional): a condition over the output row; rows that fail
    /// it are not part of the view.
    pub having: Option<Spanned<String>>,
    /// `buckets` (default 1): a hint for views whose groups hold many rows
    /// (a store's day: thousands of orders). Each group's rows are spread
    /// over this many buckets and aggregated in two steps, so a change
    /// rescans one bucket instead of the whole group. It costs an extra step
    /// for views of small groups; 16 to 64 suits large ones. Results do not
    /// depend on it. A view that folds by adding up
    /// (`ViewPlan::added_up`) does not use it.
    pub buckets: u16,
}

/// One key of a view.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupByConfig {
    /// The output field name.
    pub name: Spanned<String>,
    /// The expression computing it (the field itself for a plain name).
    pub expr: Spanned<String>,
}

/// What a measure computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MeasureFunction {
    /// `count: "*"`: rows.
    Count,
    /// `count_distinct: field`: distinct values.
    CountDistinct,
    /// `sum: field`: sum of an integer field.
    Sum,
    /// `min: field`: smallest value.
    Min,
    /// `max: field`: largest value.
    Max,
    /// `avg: field`: sum divided by count, integer division, 0 when empty.
    Avg,
}

impl MeasureFunction {
    /// Every function, with its YAML key.
    pub const ALL: [(MeasureFunction, &'static str); 6] = [
        (MeasureFunction::Count, "count"),
        (MeasureFunction::CountDistinct, "count_distinct"),
        (MeasureFunction::Sum, "sum"),
        (MeasureFunction::Min, "min"),
        (MeasureFunction::Max, "max"),
        (MeasureFunction::Avg, "avg"),
    ];

    /// The YAML key of the function.
    pub fn key(self) -> &'static str {
        MeasureFunction::ALL.iter().find(|(f, _)| *f == self).map_or("count", |(_, k)| k)
    }
}

/// One measure of a view, e.g. `revenue_cents: { sum: total_cents, where: "status = 'placed'" }`.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasureConfig {
    /// The output field name.
    pub name: Spanned<String>,
    /// The aggregate function (the key `count`, `sum`, ...).
    pub function: MeasureFunction,
    /// Its argument: an expression over the relation, `"*"` for `count`.
    pub input: Spanned<String>,
    /// `where` (optional): only rows meeting this condition count in this
    /// measure. The row still makes its group exist.
    pub filter: Option<Spanned<String>>,
}

/// A derived label such as the customer segment.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelConfig {
    /// The output field name.
    pub name: Spanned<String>,
    /// The rules, first match wins.
    pub rules: Vec<LabelRule>,
}

/// One rule of a label.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelRule {
    /// `when` (optional): a condition over keys and measures; a rule
    /// without it always matches (the default, written last).
    pub when: Option<Spanned<String>>,
    /// `value`: the label's text when this rule is the first to match.
    pub value: Spanned<String>,
}

/// A named sink.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkConfig {
    /// The sink's name (its key under `sinks`).
    pub name: String,
    /// Where it is declared.
    pub pos: Pos,
    /// `view`: the view it materializes.
    pub view: Spanned<String>,
    /// `type` and the options of that type.
    pub kind: SinkKind,
}

/// Every sink type. A new sink type is one variant here, its options
/// struct, and its runtime in `sinks/<type>/`.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkKind {
    /// `type: file`: the view's rows as JSON Lines.
    File(FileSinkConfig),
    /// `type: redis`: one hash per row, sorted sets for rankings.
    Redis(RedisSinkConfig),
    /// `type: clickhouse`: a table of versioned rows.
    ClickHouse(ClickHouseSinkConfig),
    /// `type: parquet`: snapshots of the view as a Parquet file.
    Parquet(ParquetSinkConfig),
}

/// Options of `type: parquet` sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct ParquetSinkConfig {
    /// `path`: the Parquet file that holds a snapshot of the view's rows,
    /// sorted by key; replaced atomically. Relative paths are relative to
    /// the folder of the config file.
    pub path: PathBuf,
    /// `every_ms` (default 60000): the snapshot is replaced at most this
    /// often while the view changes, and at the end of a run.
    pub every_ms: u64,
}

/// Options of `type: redis` sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisSinkConfig {
    /// `url`: `redis://host:port[/db]` (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// `key`: the key of a row's hash, a template over the view's key
    /// fields such as `order_summary:{store_id}:{date}`; it must name every
    /// key field, so that two rows never share a hash.
    pub key: Spanned<String>,
    /// `prefix` (optional): put before every key the sink writes, its
    /// checkpoint included (several pipelines or tests on one server).
    pub prefix: String,
    /// `rankings` (optional): sorted sets kept with the rows, by name.
    pub rankings: Vec<RankingConfig>,
}

/// A sorted set of a view's rows, so a top-N read is one command.
#[derive(Clone, Debug, PartialEq)]
pub struct RankingConfig {
    /// The ranking's name.
    pub name: Spanned<String>,
    /// `key`: the sorted set's key, a template over key fields (rows with
    /// the same rendering share the set), e.g. `top_products:{store_id}:{date}`.
    pub key: Spanned<String>,
    /// `member`: the row's member in that set, a template over key fields;
    /// with `key` it must name every key field.
    pub member: Spanned<String>,
    /// `score`: the numeric field that orders the set.
    pub score: Spanned<String>,
}

/// Options of `type: clickhouse` sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct ClickHouseSinkConfig {
    /// `url`: the HTTP interface (default `http://127.0.0.1:8123`).
    pub url: String,
    /// `database` (default `default`); created when missing.
    pub database: String,
    /// `table` (default: the view's name): the view readers query. The
    /// versioned rows live in `<table>_rows`, and the sink's checkpoints
    /// in `projector_checkpoints`.
    pub table: String,
    /// `user` and `password` (optional; use `${VAR}` for secrets).
    pub user: Option<String>,
    /// See `user`.
    pub password: Option<String>,
    /// `batch_rows` (default 100000): write once this many changed rows
    /// are waiting...
    pub batch_rows: u64,
    /// `batch_ms` (default 1000): ...or once the oldest waiting change is
    /// this old (ClickHouse prefers about one insert per second).
    pub batch_ms: u64,
}

/// Options of `type: file` sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSinkConfig {
    /// `path`: the file that holds the view's current rows, one JSON object
    /// per line, sorted by key; replaced atomically at each commit. Relative
    /// paths are relative to the folder of the config file.
    pub path: PathBuf,
}
