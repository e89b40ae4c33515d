//! `projector check`: every error at once, each with file:line:column, the
//! component and field, and what is allowed; and no panic, whatever the
//! config holds.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use projector_core::config::{ConfigErrors, check_text};

fn errors(text: &str) -> Vec<String> {
    match check_text(text, "pipelines.yaml", Path::new("/cfg")) {
        Ok(_) => panic!("config should be rejected:\n{text}"),
        Err(ConfigErrors(errors)) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// `file:line:column` of the first occurrence of `needle` (1-based).
fn at(text: &str, needle: &str) -> String {
    let offset = text.find(needle).unwrap_or_else(|| panic!("{needle} not in config"));
    let line = text[..offset].matches('\n').count() + 1;
    let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("pipelines.yaml:{line}:{column}")
}

const BROKEN: &str = r#"version: 1
sources:
  events:
    type: file
    path: events.jsonl
    batch_record: 10
views:
  summary:
    from: orders
    group_by: [store_id, warehouse_id]
    measures:
      revenue: { summ: total_cents }
      orders: { count: "*", where: "status = 'placed' and totl > 1" }
      titles: { sum: currency }
  lines:
    from: order_items
    filter: status = = 'x'
sinks:
  out:
    type: file
    view: sumary
    path: out.jsonl
  db:
    type: postgres
    view: summary
"#;

#[test]
fn reports_every_error_with_its_position() {
    let found = errors(BROKEN);
    let expected = [
        format!(
            "{}: source \"events\": 'batch_record' is not a known key (did you mean 'batch_records'?); allowed here: type, path, batch_records, dead_letters",
            at(BROKEN, "batch_record:")
        ),
        format!(
            "{}: view \"summary\": 'group_by[1]' relation 'orders' has no field 'warehouse_id'; its fields are: order_id, store_id, customer_id, currency, created_at, day, total_cents, status, line_count, unit_count",
            at(BROKEN, "warehouse_id")
        ),
        format!(
            "{}: view \"summary\": 'measures.revenue.summ' is not a known key (did you mean 'sum'?); allowed here: count, count_distinct, sum, min, max, avg, where",
            at(BROKEN, "summ:")
        ),
        format!(
            "{}: view \"summary\": 'measures.revenue' needs one aggregate function: count, count_distinct, sum, min, max, avg",
            at(BROKEN, "{ summ")
        ),
        format!(
            "{}: view \"summary\": 'measures.orders.where' relation 'orders' has no field 'totl'; its fields are: order_id, store_id, customer_id, currency, created_at, day, total_cents, status, line_count, unit_count",
            at(BROKEN, "totl")
        ),
        format!(
            "{}: view \"summary\": 'measures.titles.sum' needs an integer field, but \"currency\" is a text; integer fields of relation 'orders': store_id, customer_id, total_cents, line_count, unit_count",
            at(BROKEN, "currency }")
        ),
        format!("{}: view \"lines\": has no output fields; declare `group_by` and/or `measures`", at(BROKEN, "lines:")),
        format!(
            "{}: view \"lines\": 'from' names \"order_items\", which is not a relation; relations: orders, order_lines",
            at(BROKEN, "order_items")
        ),
        // With no relation the fields cannot be checked, the syntax can.
        format!(
            "{}: view \"lines\": 'filter' expected a field name, a number or a 'text' literal, found '='",
            at(BROKEN, "= 'x'")
        ),
        format!(
            "{}: sink \"out\": 'view' names \"sumary\", which is not a declared view; declared views: summary, lines",
            at(BROKEN, "sumary")
        ),
        format!(
            "{}: sink \"db\": 'type' \"postgres\" is not a known type; allowed: file, redis, clickhouse, parquet",
            at(BROKEN, "postgres")
        ),
    ];
    for line in &expected {
        assert!(found.contains(line), "missing:\n  {line}\nfound:\n  {}", found.join("\n  "));
    }
    assert_eq!(found.len(), expected.len(), "found:\n  {}", found.join("\n  "));
    // Errors come in file order.
    let positions: Vec<(usize, usize)> = found
        .iter()
        .map(|e| {
            let mut parts = e.split(':').skip(1);
            (parts.next().unwrap().parse().unwrap(), parts.next().unwrap().parse().unwrap())
        })
        .collect();
    let mut sorted = positions.clone();
    sorted.sort();
    assert_eq!(positions, sorted);
}

#[test]
fn exact_positions_for_a_typo_in_a_filter() {
    let text = "views:\n  v:\n    from: orders\n    filter: status = 'placed' and  totl > 5\n    measures:\n      n: { count: \"*\" }\n";
    assert_eq!(
        errors(text),
        [
            "pipelines.yaml:4:36: view \"v\": 'filter' relation 'orders' has no field 'totl'; its fields are: order_id, store_id, customer_id, currency, created_at, day, total_cents, status, line_count, unit_count"
        ]
    );
    let quoted = "views:\n  v:\n    from: orders\n    filter: \"status = 'placed' and  totl > 5\"\n    measures:\n      n: { count: \"*\" }\n";
    assert!(errors(quoted)[0].starts_with("pipelines.yaml:4:37: "), "{:?}", errors(quoted));
}

#[test]
fn structural_errors() {
    let text = "views:\n  v:\n    from: orders\n    measures:\n      n: { count: total_cents }\n      m: { sum: total_cents, min: total_cents }\n    labels:\n      tier: { value: x }\n  Bad-Name:\n    from: orders\nsinks:\n  s:\n    type: file\n";
    let found = errors(text);
    let want = [
        "pipelines.yaml:5:19: view \"v\": 'measures.n.count' must be \"*\" (count rows; got \"total_cents\"); use count_distinct to count distinct values",
        "pipelines.yaml:6:30: view \"v\": 'measures.m' has both 'sum' and 'min'; a measure computes one function",
        "pipelines.yaml:8:13: view \"v\": 'labels.tier' must be a list of rules like `- { when: \"order_count >= 2\", value: returning }` (got a mapping)",
        "pipelines.yaml:9:3: config: 'views.Bad-Name' is not a valid name; use lowercase letters, digits and '_', starting with a letter or '_'",
        "pipelines.yaml:13:5: sink \"s\": 'view' is required but missing",
        "pipelines.yaml:13:5: sink \"s\": 'path' is required but missing",
    ];
    assert_eq!(found, want);
}

#[test]
fn duplicates_and_empty_files() {
    let text = "views:\n  v:\n    from: orders\n    group_by: [store_id]\n    measures:\n      store_id: { count: \"*\" }\n  v:\n    from: orders\n";
    assert_eq!(
        errors(text),
        [
            "pipelines.yaml:6:7: view \"v\": 'measures.store_id' output field \"store_id\" is already defined on line 4; output field names must be unique",
            "pipelines.yaml:7:3: config: 'views.v' is declared twice (first on line 2)",
        ]
    );
    let paging = "views:\n  v:\n    from: orders\n    group_by: [store_id, { after: day }]\n    measures:\n      limit: { count: \"*\" }\n";
    assert_eq!(
        errors(paging),
        [
            "pipelines.yaml:4:28: view \"v\": 'group_by[1]' key field \"after\" would clash with the paging parameter of the same name in GET /v1/views/v; key fields may not be named limit or after",
        ]
    );
    assert_eq!(errors(""), ["pipelines.yaml:1:1: config: the file is empty; declare at least `views:`"]);
    assert_eq!(errors("sources: {}\n"), ["pipelines.yaml:1:1: config: 'views' is missing; declare at least one view"]);
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let found = errors("views:\n  v: [from: orders\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("pipelines.yaml:3:1: config: is not valid YAML"), "{found:?}");
}

#[test]
fn expression_type_errors() {
    let text = "views:\n  v:\n    from: orders\n    group_by:\n      - month: month(total_cents)\n    measures:\n      n: { count: \"*\", where: \"created_at > 'soon'\" }\n    labels:\n      size:\n        - { when: \"n > 'x'\", value: big }\n    having: n\n";
    assert_eq!(
        errors(text),
        [
            "pipelines.yaml:5:22: view \"v\": 'group_by[0]' month() takes a timestamp or a date, not integer",
            "pipelines.yaml:7:45: view \"v\": 'measures.n.where' 'soon' is not a timestamp; write RFC 3339 ('2024-03-01T12:00:00Z') or a date ('2024-03-01')",
            "pipelines.yaml:10:24: view \"v\": 'labels.size[0].when' cannot compare unsigned integer with text 'x'",
            "pipelines.yaml:11:13: view \"v\": 'having' a condition must be true or false, but this is of type unsigned integer; compare it, e.g. `field = 'value'`",
        ]
    );
}

#[test]
fn the_shipped_config_is_valid() {
    let plan = projector_core::config::load(&projector_tests::shipped_config()).unwrap();
    let names: Vec<&str> = plan.views.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["order_summary", "product_sales", "customer_ltv"]);
}

#[test]
fn kafka_sources_api_and_commands_are_checked() {
    let text = "sources:\n  k:\n    type: kafka\n    brokers: b:9092\n    topic: t\n    start: { offsets: { x: 5, 1: -2 } }\n    bounded: maybe\n    batch_ms: 0\n    catch_up_batch_ms: soon\n    propertys: {}\napi:\n  listen: localhost\ncommands:\n  events_topic: t\nviews:\n  v:\n    from: orders\n    measures:\n      n: { count: \"*\" }\n";
    assert_eq!(
        errors(text),
        [
            "pipelines.yaml:6:25: source \"k\": 'start.offsets.x' is not a partition number; write `partition: offset`, e.g. `0: 1200`",
            "pipelines.yaml:6:34: source \"k\": 'start.offsets.1' must be an offset of at least 0 (got -2)",
            "pipelines.yaml:7:14: source \"k\": 'bounded' must be true or false (got maybe)",
            "pipelines.yaml:8:15: source \"k\": 'batch_ms' must be a whole number of at least 1 (got 0)",
            "pipelines.yaml:9:24: source \"k\": 'catch_up_batch_ms' must be a whole number of at least 1 (got soon)",
            "pipelines.yaml:10:5: source \"k\": 'propertys' is not a known key (did you mean 'properties'?); allowed here: type, brokers, topic, start, bounded, batch_ms, catch_up_batch_ms, dead_letter_topic, group_id, properties",
            "pipelines.yaml:12:11: api: 'listen' must be an address and port such as 127.0.0.1:8080 (got \"localhost\")",
            "pipelines.yaml:14:3: commands: 'brokers' is required but missing",
        ]
    );
    let no_api = "commands:\n  brokers: b\n  events_topic: t\nviews:\n  v:\n    from: orders\n    measures:\n      n: { count: \"*\" }\n";
    assert_eq!(
        errors(no_api),
        ["pipelines.yaml:1:1: commands: need the HTTP API to be reached: add `api: { listen: 127.0.0.1:8080 }`"]
    );
}

#[test]
fn environment_variables_fill_values_and_unset_ones_are_errors() {
    let text = "sources:\n  k:\n    type: kafka\n    brokers: ${PROJECTOR_TEST_SURELY_UNSET}\n    topic: ${PROJECTOR_TEST_ALSO_UNSET:-events}\nviews:\n  v:\n    from: orders\n    measures:\n      n: { count: \"*\" }\n";
    assert_eq!(
        errors(text),
        [
            "pipelines.yaml:4:14: config: environment variable PROJECTOR_TEST_SURELY_UNSET is not set; set it, or write ${PROJECTOR_TEST_SURELY_UNSET:-default} for a default"
        ]
    );
}

const BAD_SINKS: &str = r#"version: 1
sources:
  events: { type: file, path: events.jsonl }
views:
  sales:
    from: order_lines
    group_by: [store_id, product_id]
    measures:
      revenue: { sum: line_total_cents }
      first: { min: created_at }
sinks:
  hot:
    type: redis
    view: sales
    url: 127.0.0.1:6379
    key: "sales:{store_id}"
    rankings:
      top:
        key: "top:{store}"
        member: "{product_id}"
        score: first
      top_by_nothing:
        key: "top2:{store_id}"
        member: "x"
        score: revenue_cents
  cold:
    type: clickhouse
    view: sales
    database: Analytics
    url: https://ch.example:8443
    batch_ms: 0
  tls:
    type: redis
    view: sales
    url: rediss://:secret@cache.example:6380
    key: "tls:{store_id}:{product_id}"
  lost: { type: redis, view: sale }
"#;

#[test]
fn reports_bad_redis_and_clickhouse_sinks() {
    let found = errors(BAD_SINKS);
    let expected = [
        format!(
            "{}: sink \"hot\": 'key' must name every key field of view \"sales\", or rows would share a hash; missing: {{product_id}}",
            at(BAD_SINKS, "sales:{store_id}")
        ),
        format!(
            "{}: sink \"hot\": 'rankings.top.key' {{store}} at character 5 is not a key field of the view; key fields: store_id, product_id",
            at(BAD_SINKS, "top:{store}")
        ),
        format!(
            "{}: sink \"hot\": 'rankings.top.score' \"first\" is a timestamp field; a score must be a number",
            at(BAD_SINKS, "first\n")
        ),
        format!(
            "{}: sink \"hot\": 'rankings.top_by_nothing.member' with the ranking's key, must name every key field, or rows would share a member; missing: {{product_id}}",
            at(BAD_SINKS, "x\"\n")
        ),
        format!(
            "{}: sink \"hot\": 'rankings.top_by_nothing.score' \"revenue_cents\" is not a field of view \"sales\"; numeric fields: store_id, product_id, revenue",
            at(BAD_SINKS, "revenue_cents")
        ),
        format!(
            "{}: sink \"cold\": 'database' \"Analytics\" is not a valid name; use lowercase letters, digits and '_'",
            at(BAD_SINKS, "Analytics")
        ),
        format!("{}: sink \"cold\": 'batch_ms' must be a whole number of at least 1 (got 0)", at(BAD_SINKS, "0\n")),
        format!(
            "{}: sink \"hot\": 'url' \"127.0.0.1:6379\" is not a URL this sink can use; write it as redis://HOST:PORT (it may start with redis://, valkey://, unix://, redis+unix://, valkey+unix://)",
            at(BAD_SINKS, "127.0.0.1:6379")
        ),
        format!(
            "{}: sink \"cold\": 'url' \"https://ch.example:8443\": this build of Projector makes no TLS connections; use http://HOST:8123 (through a TLS proxy if the server needs one)",
            at(BAD_SINKS, "https://")
        ),
        format!(
            "{}: sink \"tls\": 'url' \"rediss://…@cache.example:6380\": this build of Projector makes no TLS connections; use redis://HOST:PORT (through a TLS proxy if the server needs one)",
            at(BAD_SINKS, "rediss://")
        ),
        // A sink with an error of its own still has its view checked.
        format!("{}: sink \"lost\": 'key' is required but missing", at(BAD_SINKS, "{ type: redis, view: sale }")),
        format!(
            "{}: sink \"lost\": 'view' names \"sale\", which is not a declared view; declared views: sales",
            at(BAD_SINKS, "sale }")
        ),
    ];
    for line in &expected {
        assert!(found.contains(line), "missing error:\n  {line}\nfound:\n  {}", found.join("\n  "));
    }
    assert_eq!(found.len(), expected.len(), "found:\n  {}", found.join("\n  "));
}

const BAD_READ_FROM: &str = r#"version: 1
sources:
  events: { type: file, path: events.jsonl }
views:
  sales:
    from: order_lines
    group_by: [store_id, product_id]
    measures:
      revenue: { sum: line_total_cents }
sinks:
  sales_file: { type: file, view: sales, path: sales.jsonl }
  sales_redis: { type: redis, view: sales, key: "sales:{store_id}:{product_id}" }
  other_redis: { type: redis, view: sales, key: "other:{store_id}:{product_id}" }
api:
  read_from:
    sales: sales_file
    salez: sales_redis
"#;

#[test]
fn read_from_names_a_redis_or_clickhouse_sink_of_the_view() {
    let found = errors(BAD_READ_FROM);
    let expected = [
        format!(
            "{}: api: 'read_from.sales' sink \"sales_file\" is a file sink; reads come from a redis or clickhouse sink; its redis and clickhouse sinks: sales_redis, other_redis",
            at(BAD_READ_FROM, "sales_file\n")
        ),
        format!(
            "{}: api: 'read_from.salez' \"salez\" is not a declared view; declared views: sales",
            at(BAD_READ_FROM, "salez")
        ),
    ];
    for line in &expected {
        assert!(found.contains(line), "missing error:\n  {line}\nfound:\n  {}", found.join("\n  "));
    }
    assert_eq!(found.len(), expected.len(), "found:\n  {}", found.join("\n  "));
}

/// What a mangled config gets spliced in: YAML's own characters, the
/// expression language's, and text that is hard to slice or read.
const SPLICES: &[&str] = &[
    "",
    "\n",
    " ",
    "\t",
    ":",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "#",
    "'",
    "\"",
    "&a",
    "*a",
    "!!str",
    "|",
    ">",
    "? ",
    "---",
    "...",
    "%YAML 1.2",
    "<<: *a",
    "${X}",
    "${",
    "é",
    "😀",
    "\u{0}",
    "\r",
    "=",
    "<=",
    " and ",
    " or ",
    "not ",
    "(",
    ")",
    "date(",
    "'x'",
    "1e400",
    "-1",
    "18446744073709551616",
    "null",
    "~",
    ".inf",
];

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

    /// Whatever a config holds, `check` answers (with errors or a plan),
    /// never a panic: cut a stretch out of a real config and splice in
    /// pieces of YAML and of the expression language.
    #[test]
    fn check_never_panics_on_a_mangled_config(
        base in 0usize..3,
        cut in 0usize..5000,
        length in 0usize..60,
        splices in proptest::collection::vec((0usize..5000, proptest::sample::select(SPLICES)), 0..4),
    ) {
        let bases = [projector_tests::shipped_config_text(), BROKEN.to_string(), BAD_READ_FROM.to_string()];
        let mut text: Vec<char> = bases[base].chars().collect();
        let start = cut % (text.len() + 1);
        let end = (start + length).min(text.len());
        text.drain(start..end);
        for (at, piece) in splices {
            let at = at % (text.len() + 1);
            text.splice(at..at, piece.chars());
        }
        let text: String = text.into_iter().collect();
        let _ = check_text(&text, "pipelines.yaml", Path::new("/cfg"));
    }
}
