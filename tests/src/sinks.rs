//! What the Redis and ClickHouse sinks should hold for a log, read back and
//! compared with the plain recomputation; the YAML that declares them.

use std::collections::{BTreeMap, BTreeSet};

use projector_core::sink::{SourcePositions, ViewChange, ViewRows};
use projector_core::value::{Row, Value};
use redis::Commands;
use serde_json::Value as Json;

use crate::reference;
use crate::services::{ClickHouseServer, RedisServer};

/// The shipped views, in order.
pub const VIEWS: [&str; 3] = ["order_summary", "product_sales", "customer_ltv"];

/// Hash templates of the shipped views, as the test config declares them.
pub const KEYS: [(&str, &[&str]); 3] = [
    ("order_summary", &["store_id", "date"]),
    ("product_sales", &["store_id", "date", "product_id"]),
    ("customer_ltv", &["store_id", "customer_id"]),
];

/// One Redis sink per shipped view (the `sinks:` entries), named
/// `<view>_redis`, keys under `prefix`.
pub fn redis_sinks_yaml(url: &str, prefix: &str) -> String {
    let mut text = String::new();
    for (view, keys) in KEYS {
        let key: Vec<String> = keys.iter().map(|k| format!("{{{k}}}")).collect();
        text.push_str(&format!(
            "  {view}_redis:\n    type: redis\n    view: {view}\n    url: {url}\n    prefix: \"{prefix}\"\n    key: \"{view}:{}\"\n",
            key.join(":")
        ));
        if view == "product_sales" {
            text.push_str(
                "    rankings:\n      top_products:\n        key: \"top_products:{store_id}:{date}\"\n        member: \"{product_id}\"\n        score: revenue_cents\n",
            );
        }
    }
    text
}

fn plain(value: &Json) -> Option<String> {
    match value {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

pub type Hashes = BTreeMap<String, BTreeMap<String, String>>;
/// Per view its hashes, and per sorted set its members by descending score.
pub type Content = (BTreeMap<&'static str, Hashes>, BTreeMap<String, Vec<(String, f64)>>);

/// What Redis should hold for `lines`: per view, hash key -> fields.
fn redis_expected(lines: &[String], prefix: &str) -> Content {
    let log = reference::read(lines);
    let rows = [
        reference::order_summary(&log.orders),
        reference::product_sales(&log.orders),
        reference::customer_ltv(&log.orders),
    ];
    let mut views = BTreeMap::new();
    let mut rankings: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    for ((view, keys), rows) in KEYS.iter().zip(rows) {
        let mut hashes = Hashes::new();
        for row in rows {
            let object = row.as_object().unwrap();
            let parts: Vec<String> = keys.iter().map(|k| plain(&object[*k]).unwrap()).collect();
            let fields = object.iter().filter_map(|(k, v)| Some((k.clone(), plain(v)?))).collect();
            hashes.insert(format!("{prefix}{view}:{}", parts.join(":")), fields);
            if *view == "product_sales" {
                let set = format!("{prefix}top_products:{}:{}", parts[0], parts[1]);
                rankings.entry(set).or_default().push((parts[2].clone(), object["revenue_cents"].as_f64().unwrap()));
            }
        }
        views.insert(*view, hashes);
    }
    for members in rankings.values_mut() {
        members.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    }
    (views, rankings)
}

/// What Redis holds under `prefix`, in the same shape.
pub fn redis_held(connection: &mut redis::Connection, prefix: &str) -> Content {
    let mut views = BTreeMap::new();
    for (view, _) in KEYS {
        let keys: Vec<String> = connection.keys(format!("{prefix}{view}:*")).unwrap();
        let mut hashes = Hashes::new();
        for key in keys {
            let fields: BTreeMap<String, String> = connection.hgetall(&key).unwrap();
            hashes.insert(key, fields);
        }
        views.insert(view, hashes);
    }
    let mut rankings = BTreeMap::new();
    let sets: Vec<String> = connection.keys(format!("{prefix}top_products:*")).unwrap();
    for set in sets {
        let members: Vec<(String, f64)> = connection.zrevrange_withscores(&set, 0, -1).unwrap();
        rankings.insert(set, members);
    }
    (views, rankings)
}

pub fn assert_redis_holds(server: &RedisServer, lines: &[String], prefix: &str) {
    let (want_views, want_rankings) = redis_expected(lines, prefix);
    let (got_views, got_rankings) = redis_held(&mut server.connection().unwrap(), prefix);
    for (view, want) in &want_views {
        let got = &got_views[view];
        assert!(!want.is_empty());
        for (key, fields) in want {
            assert_eq!(got.get(key), Some(fields), "{view}: hash {key}");
        }
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
        assert!(extra.is_empty(), "{view}: hashes that should not be there: {extra:?}");
    }
    assert_eq!(got_rankings, want_rankings, "top_products sorted sets");
}

/// The output fields of each shipped view, in order.
fn fields(view: &str) -> Vec<String> {
    fields_and_keys(view).0
}

/// [`fields`], and how many of them (the first) are the view's key.
fn fields_and_keys(view: &str) -> (Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: none.jsonl\n{}",
        crate::shipped_views_yaml()
    );
    let plan = projector_core::config::check_text(&text, "fields.yaml", dir.path()).unwrap();
    let view = plan.views.iter().find(|v| v.name == view).unwrap();
    (view.output_fields().into_iter().map(|(name, _)| name).collect(), view.keys.len())
}

/// A reference row as the TabSeparated line ClickHouse gives back.
fn tsv(row: &Json, fields: &[String]) -> String {
    let fields: Vec<String> = fields
        .iter()
        .map(|field| match &row[field.as_str()] {
            Json::Null => "\\N".to_string(),
            Json::String(s) if s.len() >= 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T' => {
                // An instant: DateTime keeps whole seconds, shown in UTC.
                s[..19].replace('T', " ")
            }
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    fields.join("\t")
}

pub fn assert_clickhouse_holds(server: &ClickHouseServer, database: &str, lines: &[String]) {
    let log = reference::read(lines);
    let expected = [
        reference::order_summary(&log.orders),
        reference::product_sales(&log.orders),
        reference::customer_ltv(&log.orders),
    ];
    for (view, rows) in VIEWS.iter().zip(expected) {
        assert!(!rows.is_empty());
        let names = fields(view);
        let want: BTreeSet<String> = rows.iter().map(|row| tsv(row, &names)).collect();
        let text = server.query(&format!("SELECT * FROM {database}.{view}")).unwrap();
        let got: BTreeSet<String> = text.lines().map(str::to_string).collect();
        assert_eq!(text.lines().count(), got.len(), "{view}: a key appears twice");
        let missing: Vec<&String> = want.difference(&got).take(3).collect();
        let extra: Vec<&String> = got.difference(&want).take(3).collect();
        if !missing.is_empty() || !extra.is_empty() {
            let history = clickhouse_history(server, database, view, missing.iter().chain(&extra).copied());
            panic!("{view}: missing {missing:?}, extra {extra:?}\n{history}");
        }
    }
}

/// What a ClickHouse sink wrote of the keys of `lines` (rows as the reader
/// view gives them), every version of each, and the sink's last
/// checkpoints: the evidence a failed comparison needs.
fn clickhouse_history<'a>(
    server: &ClickHouseServer,
    database: &str,
    view: &str,
    lines: impl Iterator<Item = &'a String>,
) -> String {
    let (names, keys) = fields_and_keys(view);
    let mut out = String::new();
    for line in lines {
        // Compared as text, as the reader view gives each value back.
        let filter: Vec<String> = names
            .iter()
            .zip(line.split('\t'))
            .take(keys)
            .map(|(name, value)| format!("toString({name}) = '{value}'"))
            .collect();
        let sql = format!(
            "SELECT *, intDiv(_version, 4294967296) AS generation, _version % 4294967296 AS seq \
             FROM {database}.{view}_rows WHERE {} ORDER BY _version",
            filter.join(" AND ")
        );
        let versions = server.query(&sql).unwrap_or_else(|error| format!("(cannot read them: {error:?})\n"));
        out.push_str(&format!("every version of ({}):\n{versions}", filter.join(", ")));
    }
    let sql = format!(
        "SELECT generation, seq, committed, positions, written_at, rows FROM {database}.projector_checkpoints \
         WHERE sink = '{view}_ch' ORDER BY generation DESC, seq DESC LIMIT 40"
    );
    let checkpoints = server.query(&sql).unwrap_or_else(|error| format!("(cannot read them: {error:?})\n"));
    out.push_str(&format!(
        "the sink's last checkpoints (generation, seq, committed, positions, written_at, rows):\n{checkpoints}"
    ));
    out
}

/// One ClickHouse sink per shipped view (the `sinks:` entries), named
/// `<view>_ch`, in `database`.
pub fn clickhouse_sinks_yaml(url: &str, database: &str, batch_ms: u64) -> String {
    let mut text = String::new();
    for view in VIEWS {
        text.push_str(&format!(
            "  {view}_ch:\n    type: clickhouse\n    view: {view}\n    url: {url}\n    database: {database}\n    batch_ms: {batch_ms}\n"
        ));
    }
    text
}

/// Sums the offsets of positions JSON (records covered, for a log read
/// from offset 0).
fn covered(positions: &str) -> u64 {
    serde_json::from_str::<BTreeMap<String, BTreeMap<String, u64>>>(positions)
        .map_or(0, |p| p.values().flat_map(|parts| parts.values()).sum())
}

/// The fewest records any of the Redis sinks' checkpoints covers.
pub fn redis_covered(server: &RedisServer, prefix: &str) -> u64 {
    let Some(mut connection) = server.connection() else { return 0 };
    KEYS.iter()
        .map(|(view, _)| {
            let state = format!("{prefix}projector:sink:{view}_redis");
            let positions: Option<String> = connection.hget(state, "positions").ok().flatten();
            positions.map_or(0, |p| covered(&p))
        })
        .min()
        .unwrap_or(0)
}

/// The fewest records any of the ClickHouse sinks' checkpoints covers.
pub fn clickhouse_covered(server: &ClickHouseServer, database: &str) -> u64 {
    VIEWS
        .iter()
        .map(|view| {
            let sql = format!(
                "SELECT argMax(positions, generation * 4294967296 + seq) FROM {database}.projector_checkpoints \
                 WHERE sink = '{view}_ch'"
            );
            server.query(&sql).map_or(0, |text| covered(text.trim()))
        })
        .min()
        .unwrap_or(0)
}

/// One `order_summary` row (store 1, 2022-01-08, revenue 500) as a batch's
/// changes, the whole view, and positions: for tests that call a sink
/// directly.
pub fn one_summary_row() -> (Vec<ViewChange>, ViewRows, SourcePositions) {
    let key: Row = vec![Value::UInt(1), Value::Date(19_000)].into();
    let values: Row = vec![Value::Int(1), Value::Int(500), Value::Int(500), Value::Int(0)].into();
    let changes = vec![ViewChange { key: key.clone(), values: values.clone(), diff: 1 }];
    let rows: ViewRows = [(key, values)].into_iter().collect();
    (changes, rows, SourcePositions([((0, 0), 10)].into_iter().collect()))
}
