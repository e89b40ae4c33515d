//! Reads of a view from the Redis sink's hashes, for the read API
//! (`api.read_from`).
//!
//! Redis holds one hash per row under a key rendered from the row's key
//! fields, and no index of them, so it answers the reads whose keys can be
//! rendered: every key field given, or all given but a date key field with
//! a range (the dates are enumerated, at most a year's worth). Every other
//! read (a scan of a store's products or customers) is refused with a
//! message; such views are better read from ClickHouse or from memory.
//!
//! A read is one `MULTI`/`EXEC` with the sink's checkpoint, so the rows and
//! the position they reflect come from between two batches of the sink.

use std::sync::Mutex;
use std::time::Duration;

use redis::{Commands, Connection, RedisError, Value as RedisValue};

use projector_core::config::RedisSinkConfig;
use projector_core::sink::{ReadError, Selected, Selection, ViewReader, positions_from_json};
use projector_core::template::{KeyTemplate, parse_plain, write_plain};
use projector_core::value::{FieldType, Row, Timestamp, Value, split_key};
use projector_core::view::ViewPlan;

use crate::state_key;

/// Most hashes one read may name.
const MAX_KEYS: usize = 1000;
/// How long one read may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Connections that read a whole view at once.
const READERS: usize = 2;

/// Hashes a reader names in one pipelined round trip.
const CHUNK: usize = 1000;

/// What a swap finds of the live view ([`RedisViewReader::differences`]).
#[derive(Debug, Default)]
pub struct LiveDifferences {
    /// The indexes of the expected rows whose hash is missing or holds
    /// another row, in order.
    pub differing: Vec<usize>,
    /// The view's other hashes, with their rows.
    pub others: Vec<(String, (Row, Row))>,
}

/// What a live hash holds of the row a swap expects there.
enum Holds {
    /// The row.
    Row,
    /// The row's key, with other values.
    Key,
    /// Not the row's key (or nothing: no hash).
    Other,
}

/// What the `SCAN` of a swap found: how many hashes of the view there
/// are, or their names.
enum Scanned {
    Counted(u64),
    Named(Vec<String>),
}

/// What a reader thread that panicked gives.
fn panicked<T>() -> Result<T, RedisError> {
    Err(RedisError::from((redis::ErrorKind::Client, "a reader of the hashes panicked")))
}

/// A view read from a Redis sink.
pub struct RedisViewReader {
    name: String,
    client: redis::Client,
    idle: Mutex<Vec<Connection>>,
    prefix: String,
    key: KeyTemplate,
    fields: Vec<(String, FieldType)>,
    /// The names of `fields`, for `HMGET`.
    field_names: Vec<String>,
    key_len: usize,
    state_key: String,
    source_names: Vec<String>,
}

impl RedisViewReader {
    /// Reads `plan`'s rows as sink `name` (declared with `config`) writes
    /// them.
    pub fn new(
        name: &str,
        plan: &ViewPlan,
        config: &RedisSinkConfig,
        source_names: Vec<String>,
    ) -> Result<RedisViewReader, String> {
        let fields = plan.output_fields();
        let key_names: Vec<String> = plan.keys.iter().map(|k| k.name.clone()).collect();
        let key = KeyTemplate::parse(&config.key.value, &key_names)?;
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| format!("Redis url {:?}: {e}", config.url))?;
        Ok(RedisViewReader {
            name: name.to_string(),
            client,
            idle: Mutex::new(Vec::new()),
            prefix: config.prefix.clone(),
            key,
            key_len: key_names.len(),
            field_names: fields.iter().map(|(name, _)| name.clone()).collect(),
            fields,
            state_key: state_key(&config.prefix, name),
            source_names,
        })
    }

    /// The keys a selection names, in key order.
    fn keys(&self, selection: &Selection) -> Result<Vec<Row>, ReadError> {
        let mut keys: Vec<Vec<Value>> = vec![Vec::new()];
        for (index, (name, ty)) in self.fields[..self.key_len].iter().enumerate() {
            let values: Vec<Value> = if let Some((_, value)) = selection.equal.iter().find(|(i, _)| *i == index) {
                vec![value.clone()]
            } else {
                match &selection.range {
                    Some((i, Value::Date(low), Value::Date(high))) if *i == index && *ty == FieldType::Date => {
                        (*low..=*high).map(Value::Date).collect()
                    }
                    _ => {
                        return Err(ReadError::Unsupported(format!(
                            "Redis answers reads that give every key field of view {:?} ({}), or a date range of \
                             a date key field; this read leaves {name:?} open, which needs a scan. Read the view \
                             from ClickHouse or from memory (take it out of api.read_from)",
                            self.name,
                            self.fields[..self.key_len].iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                        )));
                    }
                }
            };
            keys = keys
                .into_iter()
                .flat_map(|prefix| {
                    values.iter().map(move |value| {
                        let mut key = prefix.clone();
                        key.push(value.clone());
                        key
                    })
                })
                .collect();
            if keys.len() > MAX_KEYS {
                return Err(ReadError::Unsupported(format!("this read names more than {MAX_KEYS} rows; narrow it")));
            }
        }
        let after = selection.after.as_ref();
        Ok(keys
            .into_iter()
            .map(Row::from)
            .filter(|key| selection.matches(key) && after.is_none_or(|after| key > after))
            .collect())
    }

    fn connection(&self) -> Result<Connection, RedisError> {
        if let Some(connection) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(connection);
        }
        let connection = self.client.get_connection_with_timeout(TIMEOUT)?;
        connection.set_read_timeout(Some(TIMEOUT))?;
        connection.set_write_timeout(Some(TIMEOUT))?;
        Ok(connection)
    }

    /// The row of one hash's fields; `None` for a hash that is not there.
    fn row(&self, key: Row, hash: RedisValue) -> Option<(Row, Row)> {
        let pairs: std::collections::HashMap<String, String> = redis::from_redis_value(hash).ok()?;
        if pairs.is_empty() {
            return None;
        }
        let values: Vec<Value> = self.fields[self.key_len..]
            .iter()
            .map(|(name, ty)| pairs.get(name).and_then(|text| parse_plain(text, *ty)).unwrap_or(Value::Null))
            .collect();
        Some((key, values.into()))
    }
}

impl RedisViewReader {
    /// Every row the sink holds, with the position its checkpoint claims;
    /// for `projector validate`. The keys are found with `SCAN` (a walk
    /// over the whole keyspace) and read in pipelined `HMGET`s; the
    /// checkpoint is read before and after, and a sink that moved in
    /// between (its pipeline is writing) is read again, up to `attempts`
    /// times.
    pub fn all_rows(&self, attempts: usize) -> Result<Selected, ReadError> {
        let (mut selected, _) = self.all_rows_and_keys(attempts)?;
        selected.rows.sort();
        Ok(selected)
    }

    /// [`RedisViewReader::all_rows`], in no order, and the keys of the
    /// hashes read (a hash that does not read as a row included).
    pub fn all_rows_and_keys(&self, attempts: usize) -> Result<(Selected, Vec<String>), ReadError> {
        let unavailable = |error: RedisError| ReadError::Unavailable(format!("Redis: {error}"));
        let mut connection = self.connection().map_err(unavailable)?;
        for _ in 0..attempts.max(1) {
            let before = self.checkpoint(&mut connection).map_err(unavailable)?;
            let keys = self.scan_hashes(&mut connection, |_| true).map_err(unavailable)?;
            let rows = self.read_hashes(&keys).map_err(unavailable)?.into_iter().flatten().collect();
            let after = self.checkpoint(&mut connection).map_err(unavailable)?;
            if before == after {
                self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
                let (positions, newest_event_at) = before;
                return Ok((Selected { rows, positions, newest_event_at }, keys));
            }
        }
        Err(ReadError::Unavailable(format!(
            "the Redis sink {:?} kept moving while it was read ({attempts} tries); stop its pipeline and try again",
            self.name
        )))
    }

    /// For a replay's swap, which knows the rows it expects: which of
    /// `rows` the live hashes hold otherwise, and at the same time, on
    /// another connection, the view's other hashes (found with `SCAN`),
    /// with their rows (those that read as one). Other hashes whose name
    /// puts them outside `window` (when the name splits one way, see
    /// [`KeyTemplate::field_text`]) are not read.
    ///
    /// The rows are read in chunks of 1,000 on [`READERS`] connections at
    /// once; each reader names the hashes of its chunks, reads them
    /// (`HMGET` of the view's fields, pipelined) and compares them itself,
    /// so naming, decoding and comparing run beside Redis' answering.
    ///
    /// Swapping a whole view, the `SCAN` first only counts the view's
    /// hashes, inside Redis: when there are as many as the rows' hashes
    /// that hold their row's key, there is no other (nearly always), and
    /// the names of the view's hashes need not travel. Otherwise the
    /// `SCAN` is done again for their names.
    pub fn differences(&self, rows: &[(&Row, &Row)], window: &Selection) -> Result<LiveDifferences, ReadError> {
        let unavailable = |error: RedisError| ReadError::Unavailable(format!("Redis: {error}"));
        let types: Vec<FieldType> = self.fields[..self.key_len].iter().map(|(_, ty)| *ty).collect();
        let names = || -> Result<Vec<String>, RedisError> {
            let mut connection = self.connection()?;
            let found = self.scan_hashes(&mut connection, |hash| self.may_be_in(hash, window, &types))?;
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
            Ok(found)
        };
        let count = || -> Result<u64, RedisError> {
            let mut connection = self.connection()?;
            let count = self.count_hashes(&mut connection)?;
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
            Ok(count)
        };
        let chunks: Vec<&[(&Row, &Row)]> = rows.chunks(CHUNK).collect();
        // Part `part` reads chunks `part`, `part + READERS`, ...: the
        // indexes of the rows that differ, the hashes it named, and how
        // many of them were there holding the row's key.
        let compare = |part: usize| -> Result<(Vec<usize>, Vec<String>, u64), RedisError> {
            let mut connection = self.connection()?;
            let (mut differing, mut named, mut there) = (Vec::new(), Vec::new(), 0);
            let mut text = String::new();
            for (index, chunk) in chunks.iter().enumerate().skip(part).step_by(READERS) {
                let hashes: Vec<String> = chunk.iter().map(|(key, _)| self.hash_name(key)).collect();
                for (offset, ((key, values), live)) in
                    chunk.iter().zip(self.hmget_replies(&mut connection, &hashes)?).enumerate()
                {
                    match self.holds(&live, key, values, &mut text) {
                        // Counted once however many rows a hash's name
                        // may stand for: its fields give one key.
                        Holds::Row => there += 1,
                        Holds::Key => {
                            there += 1;
                            differing.push(index * CHUNK + offset);
                        }
                        Holds::Other => differing.push(index * CHUNK + offset),
                    }
                }
                named.extend(hashes);
            }
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
            Ok((differing, named, there))
        };
        // A window's other hashes are those whose name may be in it: only
        // their names tell.
        let whole = window.range.is_none();
        let (parts, scanned) = std::thread::scope(|scope| {
            let scanned =
                scope.spawn(move || if whole { count().map(Scanned::Counted) } else { names().map(Scanned::Named) });
            let readers: Vec<_> = (1..READERS).map(|part| scope.spawn(move || compare(part))).collect();
            let mut parts = vec![compare(0)];
            parts.extend(readers.into_iter().map(|reader| reader.join().unwrap_or_else(|_| panicked())));
            (parts, scanned.join().unwrap_or_else(|_| panicked()))
        });
        let (mut differing, mut named, mut there) = (Vec::new(), Vec::new(), 0);
        for part in parts {
            let (part_differing, part_named, part_there) = part.map_err(unavailable)?;
            differing.extend(part_differing);
            named.push(part_named);
            there += part_there;
        }
        differing.sort_unstable();
        let found = match scanned.map_err(unavailable)? {
            // Every hash of the view is one the rows name: the hashes
            // holding a row's key are among those `SCAN` counted, so equal
            // counts leave no room for another (a hash counted twice, or
            // one no row names, makes them differ).
            Scanned::Counted(count) if count == there => Vec::new(),
            Scanned::Counted(_) => names().map_err(unavailable)?,
            Scanned::Named(found) => found,
        };
        let others: Vec<String> = if found.is_empty() {
            Vec::new()
        } else {
            let named: std::collections::HashSet<String> = named.into_iter().flatten().collect();
            found.into_iter().filter(|hash| !named.contains(hash)).collect()
        };
        let other_rows = self.read_hashes(&others).map_err(unavailable)?;
        let others = others.into_iter().zip(other_rows).filter_map(|(hash, row)| Some((hash, row?))).collect();
        Ok(LiveDifferences { differing, others })
    }

    /// The name of the hash of the row with key `key`.
    fn hash_name(&self, key: &Row) -> String {
        let mut name = self.prefix.clone();
        self.key.render_into(key, &mut name);
        name
    }

    /// The `SCAN` pattern of the view's hashes.
    fn pattern(&self) -> String {
        format!("{}{}", crate::glob_escape(&self.prefix), self.key.glob())
    }

    /// How many keys a `SCAN` of the whole keyspace by the view's key
    /// pattern finds (a key it meets twice counts twice), on `connection`:
    /// a script runs each step of the `SCAN` inside Redis and answers its
    /// cursor and count, so the names stay there.
    fn count_hashes(&self, connection: &mut Connection) -> Result<u64, RedisError> {
        let pattern = self.pattern();
        let step = redis::Script::new(
            "local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3]) \
             return {found[1], #found[2]}",
        );
        let (mut cursor, mut count) = ("0".to_string(), 0);
        loop {
            let (next, found): (String, u64) =
                step.arg(&cursor).arg(&pattern).arg(crate::SCAN_COUNT).invoke(connection)?;
            count += found;
            if next == "0" {
                return Ok(count);
            }
            cursor = next;
        }
    }

    /// The keys of the view's hashes that `keep` keeps: a `SCAN` of the
    /// whole keyspace by the view's key pattern, on `connection`.
    fn scan_hashes(
        &self,
        connection: &mut Connection,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, RedisError> {
        let pattern = self.pattern();
        let options = redis::ScanOptions::default().with_pattern(&pattern).with_count(crate::SCAN_COUNT);
        let mut kept = Vec::new();
        for key in connection.scan_options::<String>(options)? {
            let key = key?;
            if keep(&key) {
                kept.push(key);
            }
        }
        Ok(kept)
    }

    /// The rows of the hashes `keys`, in order (`None` where there is no
    /// hash): pipelined `HMGET`s of the view's fields, 1,000 a round trip,
    /// on [`READERS`] connections at once (Redis answers one while the
    /// client decodes another's answer).
    fn read_hashes(&self, keys: &[String]) -> Result<Vec<Option<(Row, Row)>>, RedisError> {
        let chunks: Vec<&[String]> = keys.chunks(CHUNK).collect();
        let read = |part: usize| -> Result<Vec<Option<(Row, Row)>>, RedisError> {
            let mut connection = self.connection()?;
            let mut rows = Vec::new();
            for chunk in chunks.iter().skip(part).step_by(READERS) {
                rows.extend(self.hmget(&mut connection, chunk)?);
            }
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
            Ok(rows)
        };
        let parts = std::thread::scope(|scope| {
            let readers: Vec<_> = (1..READERS).map(|part| scope.spawn(move || read(part))).collect();
            let mut parts = vec![read(0)];
            parts.extend(readers.into_iter().map(|reader| reader.join().unwrap_or_else(|_| panicked())));
            parts
        });
        // Chunk `i` is part `i % READERS`'s `i / READERS`-th.
        let mut parts: Vec<std::vec::IntoIter<Option<(Row, Row)>>> =
            parts.into_iter().map(|part| part.map(Vec::into_iter)).collect::<Result<_, _>>()?;
        let mut rows = Vec::with_capacity(keys.len());
        for (index, chunk) in chunks.iter().enumerate() {
            rows.extend(parts[index % READERS].by_ref().take(chunk.len()));
        }
        Ok(rows)
    }

    /// Whether the hash named `hash` may hold a row of `window`: not when
    /// its name gives a date outside the window's date range (`types`: the
    /// key fields' types).
    fn may_be_in(&self, hash: &str, window: &Selection, types: &[FieldType]) -> bool {
        let Some((index, Value::Date(low), Value::Date(high))) = &window.range else { return true };
        let day = hash
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| self.key.field_text(rest, *index, types))
            .and_then(projector_core::value::parse_date);
        day.is_none_or(|day| (*low..=*high).contains(&day))
    }

    /// The rows of the hashes `keys`, in order, in one pipelined round
    /// trip of `HMGET`s (`None` where there is no hash).
    fn hmget(&self, connection: &mut Connection, keys: &[String]) -> Result<Vec<Option<(Row, Row)>>, RedisError> {
        let hashes = self.hmget_replies(connection, keys)?;
        Ok(hashes.iter().map(|reply| self.whole_row(reply)).collect())
    }

    /// The replies to `HMGET`s of the view's fields of the hashes `keys`,
    /// in order, in one pipelined round trip.
    fn hmget_replies(&self, connection: &mut Connection, keys: &[String]) -> Result<Vec<RedisValue>, RedisError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HMGET").arg(key).arg(self.field_names.as_slice());
        }
        pipe.query(connection)
    }

    /// What the hash whose `HMGET` of the view's fields gave `reply`
    /// holds of the row `key`, `values`: each field compared as the text
    /// the sink writes for it (none for null), not read into a value. A
    /// field whose text is not the one the sink writes (`07` for 7)
    /// differs, so a swap rewrites it.
    /// `text`: room for the texts.
    fn holds(&self, reply: &RedisValue, key: &Row, values: &Row, text: &mut String) -> Holds {
        let RedisValue::Array(texts) = reply else { return Holds::Other };
        if texts.len() != self.fields.len() {
            return Holds::Other;
        }
        let mut holds = Holds::Row;
        for (index, live) in texts.iter().enumerate() {
            let expected = if index < self.key_len { key.get(index) } else { values.get(index - self.key_len) };
            let same = match (expected.unwrap_or(&Value::Null), live) {
                (Value::Null, RedisValue::Nil) => true,
                (Value::Null, _) => false,
                (value, RedisValue::BulkString(live)) => {
                    text.clear();
                    write_plain(value, text);
                    text.as_bytes() == live.as_slice()
                }
                _ => false,
            };
            match (same, index < self.key_len) {
                (true, _) => {}
                (false, true) => return Holds::Other,
                (false, false) => holds = Holds::Key,
            }
        }
        holds
    }

    /// The positions the sink's checkpoint claims now.
    pub fn claimed(&self) -> Result<projector_core::sink::SourcePositions, ReadError> {
        let unavailable = |error: RedisError| ReadError::Unavailable(format!("Redis: {error}"));
        let mut connection = self.connection().map_err(unavailable)?;
        self.checkpoint(&mut connection).map(|(positions, _)| positions).map_err(unavailable)
    }

    /// The checkpoint's positions and newest event time.
    fn checkpoint(
        &self,
        connection: &mut Connection,
    ) -> Result<(projector_core::sink::SourcePositions, Option<Timestamp>), RedisError> {
        let (positions, newest): (Option<String>, Option<String>) =
            redis::cmd("HMGET").arg(&self.state_key).arg("positions").arg("newest_event_at").query(connection)?;
        let positions =
            positions.and_then(|text| positions_from_json(&text, &self.source_names).ok()).unwrap_or_default();
        Ok((positions, newest.as_deref().and_then(Timestamp::parse_rfc3339)))
    }

    /// A row from the values of all its fields (keys included), in
    /// [`RedisViewReader::field_names`]' order; `None` for a hash that is
    /// not there. A field that is missing, or not text of its type, reads
    /// as null.
    fn whole_row(&self, reply: &RedisValue) -> Option<(Row, Row)> {
        let RedisValue::Array(texts) = reply else { return None };
        if texts.iter().all(|text| matches!(text, RedisValue::Nil)) {
            return None;
        }
        let values = self
            .fields
            .iter()
            .zip(texts)
            .map(|((_, ty), text)| match text {
                RedisValue::BulkString(text) => {
                    std::str::from_utf8(text).ok().and_then(|text| parse_plain(text, *ty)).unwrap_or(Value::Null)
                }
                _ => Value::Null,
            })
            .collect();
        Some(split_key(values, self.key_len))
    }
}

impl ViewReader for RedisViewReader {
    fn describe(&self) -> String {
        format!("Redis sink {:?}", self.name)
    }

    fn select(&self, selection: &Selection) -> Result<Selected, ReadError> {
        let keys = self.keys(selection)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in &keys {
            pipe.cmd("HGETALL").arg(self.hash_name(key));
        }
        pipe.cmd("HMGET").arg(&self.state_key).arg("positions").arg("newest_event_at");
        let unavailable = |error: RedisError| ReadError::Unavailable(format!("Redis: {error}"));
        let mut connection = self.connection().map_err(unavailable)?;
        let mut answers: Vec<RedisValue> = pipe.query(&mut connection).map_err(unavailable)?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(connection);
        let state = answers.pop().unwrap_or(RedisValue::Nil);
        let (positions, newest): (Option<String>, Option<String>) =
            redis::from_redis_value(state).map_err(|e| ReadError::Unavailable(format!("Redis: {e}")))?;
        let positions = match positions {
            Some(text) => positions_from_json(&text, &self.source_names).map_err(ReadError::Unavailable)?,
            None => Default::default(),
        };
        let mut rows: Vec<(Row, Row)> =
            keys.into_iter().zip(answers).filter_map(|(key, hash)| self.row(key, hash)).collect();
        rows.truncate(selection.limit.unwrap_or(usize::MAX));
        Ok(Selected { rows, positions, newest_event_at: newest.as_deref().and_then(Timestamp::parse_rfc3339) })
    }

    fn latest(&self, _equal: &[(usize, Value)], _field: usize) -> Result<Option<Value>, ReadError> {
        // Finding it would take a scan: a range without an end ends today.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_core::config::{SinkKind, check_text};
    use projector_core::value::parse_date;

    const CONFIG: &str = r#"version: 1
sources:
  events: { type: file, path: events.jsonl }
views:
  summary:
    from: orders
    group_by: [store_id, { date: date(created_at) }]
    measures:
      orders: { count: "*" }
sinks:
  hot: { type: redis, view: summary, key: "summary:{store_id}:{date}" }
"#;

    fn reader() -> RedisViewReader {
        let plan = check_text(CONFIG, "t.yaml", std::path::Path::new("/")).unwrap();
        let SinkKind::Redis(config) = &plan.config.sinks[0].kind else { panic!("a redis sink") };
        RedisViewReader::new("hot", plan.view("summary").unwrap(), config, vec!["events".into()]).unwrap()
    }

    fn day(text: &str) -> Value {
        Value::Date(parse_date(text).unwrap())
    }

    #[test]
    fn a_swap_compares_each_field_as_the_text_the_sink_writes() {
        let reader = reader();
        let key: Row = vec![Value::UInt(7), day("2024-03-01")].into();
        let row: Row = vec![Value::Int(12)].into();
        let no_orders: Row = vec![Value::Null].into();
        let reply = |texts: &[Option<&str>]| {
            RedisValue::Array(
                texts
                    .iter()
                    .map(|text| text.map_or(RedisValue::Nil, |t| RedisValue::BulkString(t.as_bytes().to_vec())))
                    .collect(),
            )
        };
        let holds = |live: &RedisValue, values: &Row| match reader.holds(live, &key, values, &mut String::new()) {
            Holds::Row => "row",
            Holds::Key => "key",
            Holds::Other => "other",
        };
        assert_eq!(holds(&reply(&[Some("7"), Some("2024-03-01"), Some("12")]), &row), "row");
        assert_eq!(holds(&reply(&[Some("7"), Some("2024-03-01"), None]), &no_orders), "row");
        // Values that differ, or read the same but are not written so.
        assert_eq!(holds(&reply(&[Some("7"), Some("2024-03-01"), Some("13")]), &row), "key");
        assert_eq!(holds(&reply(&[Some("7"), Some("2024-03-01"), Some("012")]), &row), "key");
        assert_eq!(holds(&reply(&[Some("7"), Some("2024-03-01"), None]), &row), "key");
        assert_eq!(holds(&reply(&[Some("7"), Some("2024-03-01"), Some("x")]), &no_orders), "key");
        // Another key, or no hash.
        assert_eq!(holds(&reply(&[Some("8"), Some("2024-03-01"), Some("12")]), &row), "other");
        assert_eq!(holds(&reply(&[Some("07"), Some("2024-03-01"), Some("12")]), &row), "other");
        assert_eq!(holds(&reply(&[None, None, None]), &row), "other");
        assert_eq!(holds(&RedisValue::Nil, &row), "other");
    }

    #[test]
    fn a_date_range_names_one_hash_a_day_and_a_scan_is_refused() {
        let reader = reader();
        let range = Selection {
            equal: vec![(0, Value::UInt(7))],
            range: Some((1, day("2024-02-28"), day("2024-03-02"))),
            ..Selection::default()
        };
        let keys = reader.keys(&range).unwrap();
        let days: Vec<&Value> = keys.iter().map(|key| &key[1]).collect();
        assert_eq!(days, vec![&day("2024-02-28"), &day("2024-02-29"), &day("2024-03-01"), &day("2024-03-02")]);
        assert!(keys.iter().all(|key| key[0] == Value::UInt(7)));

        // After a page token, only the later keys; a point read, one key.
        let after = Selection { after: Some(keys[1].clone()), ..range.clone() };
        assert_eq!(reader.keys(&after).unwrap(), keys[2..].to_vec());
        let point = Selection { equal: vec![(0, Value::UInt(7)), (1, day("2024-03-01"))], ..Selection::default() };
        assert_eq!(reader.keys(&point).unwrap().len(), 1);

        // A token for other stores selects nothing.
        let scoped = Selection { scope: Some((0, vec![8])), ..range };
        assert!(reader.keys(&scoped).unwrap().is_empty());

        // Every store's rows would take a scan.
        let scan = Selection { equal: vec![(1, day("2024-03-01"))], ..Selection::default() };
        match reader.keys(&scan) {
            Err(ReadError::Unsupported(message)) => {
                assert!(message.contains("leaves \"store_id\" open"), "{message}");
            }
            other => panic!("a scan should be refused, got {other:?}"),
        }
        let long = Selection {
            equal: vec![(0, Value::UInt(7))],
            range: Some((1, day("2020-01-01"), day("2024-01-01"))),
            ..Selection::default()
        };
        assert!(matches!(reader.keys(&long), Err(ReadError::Unsupported(_))));
    }
}
