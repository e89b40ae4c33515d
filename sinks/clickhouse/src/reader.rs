//! Reads of a view from the ClickHouse sink's table, for the read API
//! (`api.read_from`).
//!
//! A read first takes the sink's last checkpoint, then selects the rows
//! from the rows table with `FINAL` (the latest version of each key, no
//! tombstones), filtered, ordered and limited in SQL. One flush of the sink
//! is one insert into the table, so the rows are those of one flush: the
//! checkpoint's, or one the sink is committing right then. The answer
//! reports the checkpoint's positions, the conservative of the two.
//! The checkpoint also carries the latest `occurred_at` of the events its
//! positions reflect, which answers report as `newest_event_at`.

use std::fmt::Write as _;
use std::time::Duration;

use projector_core::config::ClickHouseSinkConfig;
use projector_core::sink::{ReadError, Selected, Selection, SourcePositions, ViewReader, positions_from_json};
use projector_core::value::{FieldType, Row, Timestamp, Value, format_date, parse_date, split_key};
use projector_core::view::ViewPlan;

use crate::{client, quote};

/// How long one read may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A view read from a ClickHouse sink.
pub struct ClickHouseViewReader {
    name: String,
    client: clickhouse::Client,
    rows_table: String,
    checkpoints_table: String,
    fields: Vec<(String, FieldType)>,
    key_len: usize,
    source_names: Vec<String>,
    /// For calls from outside a runtime (the API calls from its own).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ClickHouseViewReader {
    fn drop(&mut self) {
        // The reader may go with the API's state, inside its runtime, where
        // a runtime may not wait for its threads.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ClickHouseViewReader {
    /// Reads `plan`'s rows as sink `name` (declared with `config`) writes
    /// them.
    pub fn new(
        name: &str,
        plan: &ViewPlan,
        config: &ClickHouseSinkConfig,
        source_names: Vec<String>,
    ) -> Result<ClickHouseViewReader, String> {
        let table = if config.table.is_empty() { plan.name.clone() } else { config.table.clone() };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the ClickHouse client's runtime: {e}"))?;
        Ok(ClickHouseViewReader {
            name: name.to_string(),
            client: client(config),
            rows_table: format!("{}.{table}_rows", config.database),
            checkpoints_table: format!("{}.projector_checkpoints", config.database),
            fields: plan.output_fields(),
            key_len: plan.keys.len(),
            source_names,
            runtime: Some(runtime),
        })
    }

    /// Runs a query; its TabSeparated answer.
    fn query(&self, sql: &str) -> Result<String, ReadError> {
        self.query_as(sql, "TabSeparated")
    }

    /// [`Self::query`] with a first line of the columns' names.
    fn query_with_names(&self, sql: &str) -> Result<String, ReadError> {
        self.query_as(sql, "TabSeparatedWithNames")
    }

    fn query_as(&self, sql: &str, format: &str) -> Result<String, ReadError> {
        let cursor = self.client.query(sql).fetch_bytes(format);
        let run = async {
            tokio::time::timeout(TIMEOUT, async move {
                let mut cursor = cursor?;
                cursor.collect().await
            })
            .await
        };
        let result = match (tokio::runtime::Handle::try_current(), &self.runtime) {
            (Ok(handle), _) => tokio::task::block_in_place(|| handle.block_on(run)),
            (Err(_), Some(runtime)) => runtime.block_on(run),
            (Err(_), None) => return Err(ReadError::Unavailable("the ClickHouse reader is closed".into())),
        };
        match result {
            Ok(Ok(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            // No run created the sink's database or tables yet: it holds
            // nothing (no rows, no checkpoint), as a Redis sink with no keys.
            Ok(Err(clickhouse::error::Error::BadResponse(message))) if crate::never_created(&message) => {
                Ok(String::new())
            }
            Ok(Err(error)) => Err(ReadError::Unavailable(format!("ClickHouse: {error}"))),
            Err(_) => Err(ReadError::Unavailable(format!("ClickHouse did not answer within {TIMEOUT:?}"))),
        }
    }

    /// The `WHERE` conditions of a selection on the key columns.
    fn conditions(&self, selection: &Selection) -> String {
        let mut sql = String::from("_deleted = 0");
        let column = |index: usize| &self.fields[index].0;
        for (index, value) in &selection.equal {
            let _ = write!(sql, " AND {} = {}", column(*index), literal(value));
        }
        if let Some((index, low, high)) = &selection.range {
            let _ = write!(sql, " AND {} BETWEEN {} AND {}", column(*index), literal(low), literal(high));
        }
        if let Some((index, stores)) = &selection.scope {
            let list: Vec<String> = stores.iter().map(u64::to_string).collect();
            let list = if list.is_empty() { "NULL".to_string() } else { list.join(", ") };
            let _ = write!(sql, " AND {} IN ({list})", column(*index));
        }
        if let Some(after) = &selection.after {
            let keys: Vec<&str> = self.fields[..self.key_len].iter().map(|(name, _)| name.as_str()).collect();
            let values: Vec<String> = after.iter().map(literal).collect();
            let _ = write!(sql, " AND ({}) > ({})", keys.join(", "), values.join(", "));
        }
        sql
    }

    /// The select list: timestamps as Unix seconds, so they parse alike on
    /// every server version.
    fn columns(&self) -> String {
        Self::select_list(&self.fields)
    }

    fn select_list(fields: &[(String, FieldType)]) -> String {
        fields
            .iter()
            .map(|(name, ty)| match ty {
                FieldType::Timestamp => format!("toUnixTimestamp({name})"),
                _ => name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The positions of the sink's last checkpoint and the latest
    /// `occurred_at` of the events they reflect.
    fn checkpoint(&self) -> Result<(SourcePositions, Option<Timestamp>), ReadError> {
        // `*`, by name: a table that no run of a build with
        // `newest_event_at` has opened yet lacks that column.
        let text = self.query_with_names(&format!(
            "SELECT * FROM {} WHERE sink = {} ORDER BY generation DESC, seq DESC LIMIT 1",
            self.checkpoints_table,
            quote(&self.name)
        ))?;
        let mut lines = text.lines();
        let names: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let fields: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let field = |name: &str| names.iter().position(|n| *n == name).and_then(|i| fields.get(i)).copied();
        let newest = field("newest_event_at").and_then(Timestamp::parse_rfc3339);
        // No checkpoint, or one that claims no position (a run's claim
        // before its first commit, a reset, a rewrite after rows a dead
        // run never committed): no position.
        match field("positions").filter(|text| !text.is_empty()) {
            Some(text) => {
                Ok((positions_from_json(&unescape(text), &self.source_names).map_err(ReadError::Unavailable)?, newest))
            }
            None => Ok(Default::default()),
        }
    }

    /// How this reader's copy of the view differs, in `selection`, from
    /// `other`'s, a copy in the same server (a replay's shadow and the live
    /// sink): found by ClickHouse, so only the differences travel.
    pub fn differences(&self, other: &ClickHouseViewReader, selection: &Selection) -> Result<Differences, ReadError> {
        let (positions, _) = self.checkpoint()?;
        let (other_positions, _) = other.checkpoint()?;
        // Each column as (is it null, its value): NULL matches NULL in `IN`
        // (18.16 has no `transform_null_in`).
        let compared: Vec<String> =
            self.fields.iter().map(|(name, _)| format!("isNull({name}), assumeNotNull({name})")).collect();
        let (all, keys) = (compared.join(", "), compared[..self.key_len].join(", "));
        let order: Vec<&str> = self.fields[..self.key_len].iter().map(|(name, _)| name.as_str()).collect();
        let order = order.join(", ");
        let (mine, theirs) = (self.conditions(selection), other.conditions(selection));
        let count = self.query(&format!("SELECT count() FROM {} FINAL WHERE {mine}", self.rows_table))?;
        let rows = count.trim().parse().map_err(|_| ReadError::Unavailable(format!("ClickHouse counted {count:?}")))?;
        let differing = self.query(&format!(
            "SELECT {} FROM {} FINAL WHERE {mine} AND ({all}) NOT IN (SELECT {all} FROM {} FINAL WHERE {theirs}) \
             ORDER BY {order}",
            self.columns(),
            self.rows_table,
            other.rows_table,
        ))?;
        let gone = other.query(&format!(
            "SELECT {} FROM {} FINAL WHERE {theirs} AND ({keys}) NOT IN (SELECT {keys} FROM {} FINAL WHERE {mine}) \
             ORDER BY {order}",
            Self::select_list(&other.fields[..other.key_len]),
            other.rows_table,
            self.rows_table,
        ))?;
        Ok(Differences {
            rows,
            differing: differing.lines().filter_map(|line| self.parse_row(line)).collect(),
            gone: gone.lines().filter_map(|line| self.parse_key(line)).collect(),
            positions,
            other_positions,
        })
    }

    fn parse_key(&self, line: &str) -> Option<Row> {
        self.parse_values(line, self.key_len).map(Row::from)
    }

    fn parse_row(&self, line: &str) -> Option<(Row, Row)> {
        self.parse_values(line, self.fields.len()).map(|values| split_key(values, self.key_len))
    }

    /// A line of the first `count` fields' values; `None` if it has other
    /// than `count`.
    fn parse_values(&self, line: &str, count: usize) -> Option<Vec<Value>> {
        let texts: Vec<&str> = line.split('\t').collect();
        (texts.len() == count)
            .then(|| texts.iter().zip(&self.fields).map(|(text, (_, ty))| parse_tsv(text, *ty)).collect())
    }
}

/// How one copy of a view differs from another
/// ([`ClickHouseViewReader::differences`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Differences {
    /// Rows of this copy.
    pub rows: usize,
    /// Rows of this copy the other lacks or holds with other values.
    pub differing: Vec<(Row, Row)>,
    /// Keys of rows the other holds and this copy lacks.
    pub gone: Vec<Row>,
    /// Where this copy's checkpoint stands.
    pub positions: SourcePositions,
    /// Where the other's stands.
    pub other_positions: SourcePositions,
}

impl ViewReader for ClickHouseViewReader {
    fn describe(&self) -> String {
        format!("ClickHouse sink {:?}", self.name)
    }

    fn select(&self, selection: &Selection) -> Result<Selected, ReadError> {
        let (positions, newest_event_at) = self.checkpoint()?;
        let keys: Vec<&str> = self.fields[..self.key_len].iter().map(|(name, _)| name.as_str()).collect();
        let mut sql = format!(
            "SELECT {} FROM {} FINAL WHERE {} ORDER BY {}",
            self.columns(),
            self.rows_table,
            self.conditions(selection),
            keys.join(", ")
        );
        if let Some(limit) = selection.limit {
            let _ = write!(sql, " LIMIT {limit}");
        }
        let text = self.query(&sql)?;
        let rows = text.lines().filter_map(|line| self.parse_row(line)).collect();
        Ok(Selected { rows, positions, newest_event_at })
    }

    fn latest(&self, equal: &[(usize, Value)], field: usize) -> Result<Option<Value>, ReadError> {
        let selection = Selection { equal: equal.to_vec(), ..Selection::default() };
        let (name, ty) = &self.fields[field];
        let text = self.query(&format!(
            "SELECT max({name}), count() FROM {} FINAL WHERE {}",
            self.rows_table,
            self.conditions(&selection)
        ))?;
        let Some((latest, count)) = text.lines().next().and_then(|line| line.split_once('\t')) else {
            return Ok(None);
        };
        if count == "0" {
            return Ok(None);
        }
        Ok(Some(parse_tsv(latest, *ty)).filter(|v| *v != Value::Null))
    }
}

/// A value as a SQL literal.
fn literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Bool(b) => if *b { "1" } else { "0" }.into(),
        Value::UInt(v) => v.to_string(),
        Value::Int(v) => v.to_string(),
        Value::Date(d) => format!("toDate({})", quote(&format_date(*d))),
        Value::Timestamp(t) => format!("toDateTime({}, 'UTC')", t.0.div_euclid(1_000_000_000)),
        Value::Text(text) => quote(text),
    }
}

/// Undoes TabSeparated escaping.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// One TabSeparated field of a column of type `ty`.
fn parse_tsv(text: &str, ty: FieldType) -> Value {
    if text == "\\N" {
        return Value::Null;
    }
    let parsed = match ty {
        FieldType::UInt => text.parse().ok().map(Value::UInt),
        FieldType::Int => text.parse().ok().map(Value::Int),
        FieldType::Text => Some(Value::Text(unescape(text).into())),
        FieldType::Date => parse_date(text).map(Value::Date),
        FieldType::Timestamp => text.parse::<i64>().ok().map(|s| Value::Timestamp(Timestamp(s * 1_000_000_000))),
        FieldType::Bool => Some(Value::Bool(text == "1")),
    };
    parsed.unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_separated_fields_read_back() {
        assert_eq!(parse_tsv("a\\tb\\\\c\\nd", FieldType::Text), Value::Text("a\tb\\c\nd".into()));
        assert_eq!(parse_tsv("\\N", FieldType::Int), Value::Null);
        assert_eq!(
            parse_tsv("1709294400", FieldType::Timestamp),
            Value::Timestamp(Timestamp(1_709_294_400_000_000_000))
        );
        assert_eq!(parse_tsv("2024-03-01", FieldType::Date), Value::Date(parse_date("2024-03-01").unwrap()));
        assert_eq!(literal(&Value::Text("it's".into())), "'it\\'s'");
    }

    #[test]
    fn a_selection_becomes_where_conditions_on_the_key_columns() {
        let text = r#"version: 1
sources:
  events: { type: file, path: events.jsonl }
views:
  summary:
    from: orders
    group_by: [store_id, { date: date(created_at) }]
    measures:
      orders: { count: "*" }
sinks:
  cold: { type: clickhouse, view: summary, database: analytics }
"#;
        let plan = projector_core::config::check_text(text, "t.yaml", std::path::Path::new("/")).unwrap();
        let projector_core::config::SinkKind::ClickHouse(config) = &plan.config.sinks[0].kind else {
            panic!("a clickhouse sink")
        };
        let reader = ClickHouseViewReader::new("cold", plan.view("summary").unwrap(), config, Vec::new()).unwrap();
        let day = |text: &str| Value::Date(parse_date(text).unwrap());
        let selection = Selection {
            equal: vec![(0, Value::UInt(7))],
            range: Some((1, day("2024-03-01"), day("2024-03-30"))),
            scope: Some((0, vec![7, 9])),
            after: Some(vec![Value::UInt(7), day("2024-03-10")].into()),
            limit: Some(5),
        };
        assert_eq!(
            reader.conditions(&selection),
            "_deleted = 0 AND store_id = 7 AND date BETWEEN toDate('2024-03-01') AND toDate('2024-03-30') \
             AND store_id IN (7, 9) AND (store_id, date) > (7, toDate('2024-03-10'))"
        );
        let nobody = Selection { scope: Some((0, Vec::new())), ..Selection::default() };
        assert_eq!(reader.conditions(&nobody), "_deleted = 0 AND store_id IN (NULL)");
        assert_eq!(reader.rows_table, "analytics.summary_rows");
    }
}
