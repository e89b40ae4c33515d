//! Property tests: random event logs, with redeliveries, conflicting
//! duplicates, shuffled arrival, updates, cancels before creates, orders
//! never created and bad records, give views equal to the plain
//! recomputation in `projector_tests::reference`, with 1 and 2 workers and
//! with one or many batches (so retractions flow through the dataflow).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use proptest::prelude::*;
use serde_json::{Value, json};

use projector_tests::{first_difference, reference, run_lines, shipped_config_text, state_difference};

/// The shipped views plus a fourth declared only in YAML.
fn config_with_fourth_view() -> String {
    let mut text = shipped_config_text();
    let at = text.find("\nsinks:").unwrap();
    text.insert_str(
        at,
        r#"
  revenue_by_currency:
    from: orders
    filter: status != 'cancelled'
    group_by:
      - currency
      - date: date(created_at)
    buckets: 3
    measures:
      orders: { count: "*" }
      revenue_cents: { sum: total_cents }
      largest_order_cents: { max: total_cents }
  customers_per_day:
    from: orders
    buckets: 5
    group_by:
      - date: date(created_at)
    measures:
      customers: { count_distinct: customer_id }
      first_order_at: { min: created_at }
      cancelled: { count: "*", where: "status = 'cancelled'" }
"#,
    );
    text
}

const INSTANTS: [&str; 7] = [
    "2024-03-01T00:00:00Z",
    "2024-03-01T23:59:59Z",
    "2024-03-01T20:00:00-05:00",
    "2024-03-02T08:00:00+09:00",
    "2024-02-29T12:00:00.5Z",
    "2024-03-02T12:30:00Z",
    "2024-03-03T00:00:00.000001Z",
];

#[derive(Clone, Debug)]
enum Kind {
    Created { store: u64, customer: u64, instant: usize, currency: bool },
    Updated,
    Cancelled,
    Reserved,
    Paid,
}

#[derive(Clone, Debug)]
struct Spec {
    order: u8,
    sequence: u8,
    kind: Kind,
    items: Vec<(u64, i64, i64)>,
    total: i64,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (1u64..3, 1u64..4, 0..INSTANTS.len(), any::<bool>())
            .prop_map(|(store, customer, instant, currency)| Kind::Created { store, customer, instant, currency }),
        2 => Just(Kind::Updated),
        1 => Just(Kind::Cancelled),
        1 => Just(Kind::Reserved),
        1 => Just(Kind::Paid),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u8..10, 1u8..6, kind(), prop::collection::vec((1u64..5, 1i64..4, 0i64..3000), 1..4), 0i64..40_000)
        .prop_map(|(order, sequence, kind, items, total)| Spec { order, sequence, kind, items, total })
}

fn line(spec: &Spec, event_id: &str) -> String {
    let order_id = format!("o-{}", spec.order);
    let items: Vec<Value> = spec
        .items
        .iter()
        .map(|(product, quantity, price)| {
            json!({"product_id": product, "sku": format!("S{product}"), "title": "Thing", "quantity": quantity, "unit_price_cents": price})
        })
        .collect();
    let (event_type, store, payload) = match &spec.kind {
        Kind::Created { store, customer, instant, currency } => (
            "OrderCreated",
            *store,
            json!({"order_id": order_id, "customer_id": customer, "currency": if *currency { "USD" } else { "EUR" },
                   "created_at": INSTANTS[*instant], "line_items": items, "total_cents": spec.total}),
        ),
        Kind::Updated => {
            ("OrderUpdated", 9, json!({"order_id": order_id, "line_items": items, "total_cents": spec.total}))
        }
        Kind::Cancelled => ("OrderCancelled", 9, json!({"order_id": order_id, "reason": "changed mind"})),
        Kind::Reserved => (
            "InventoryReserved",
            9,
            json!({"order_id": order_id, "reservation_id": "r", "items": [{"sku": "S1", "quantity": 1}]}),
        ),
        Kind::Paid => (
            "PaymentInitiated",
            9,
            json!({"order_id": order_id, "amount_cents": spec.total, "gateway": "g", "transaction_id": "t"}),
        ),
    };
    json!({"event_id": event_id, "event_type": event_type, "schema_version": 1, "aggregate_id": order_id,
           "sequence": spec.sequence, "store_id": store, "occurred_at": "2024-03-01T00:00:00Z",
           "correlation_id": "c", "causation_id": null, "payload": payload})
    .to_string()
}

const BAD_LINES: [&str; 6] = [
    "{\"event_id\": \"bad-1\", \"event_type\": ",
    "not json at all",
    r#"{"event_id":"bad-2","event_type":"OrderShipped","schema_version":1,"aggregate_id":"o-1","sequence":1,"store_id":1,"occurred_at":"2024-03-01T00:00:00Z","payload":{"order_id":"o-1"}}"#,
    r#"{"event_id":"bad-3","event_type":"OrderCancelled","schema_version":1,"aggregate_id":"o-1","sequence":"2","store_id":1,"occurred_at":"2024-03-01T00:00:00Z","payload":{"order_id":"o-1","reason":"x"}}"#,
    r#"{"event_id":"bad-4","event_type":"OrderUpdated","schema_version":1,"aggregate_id":"o-2","sequence":3,"store_id":1,"occurred_at":"2024-03-01T00:00:00Z","payload":{"order_id":"o-2","line_items":[],"total_cents":5}}"#,
    r#"{"event_id":"bad-5","event_type":"OrderCreated","schema_version":1,"aggregate_id":"o-3","sequence":1,"store_id":1,"occurred_at":"2024-03-01T00:00:00Z","payload":{"order_id":"o-3","customer_id":1,"currency":"USD","created_at":"2024-03-01T00:00:00Z","line_items":[{"product_id":1,"sku":"S","title":"T","quantity":0,"unit_price_cents":5}],"total_cents":5}}"#,
];

/// A random log as lines, in arrival order.
fn log() -> impl Strategy<Value = Vec<String>> {
    (
        prop::collection::vec(spec(), 0..40),
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        prop::collection::vec((any::<prop::sample::Index>(), spec()), 0..3),
        prop::collection::vec(0..BAD_LINES.len(), 0..4),
    )
        .prop_flat_map(|(specs, redeliveries, conflicts, bad)| {
            let mut lines: Vec<String> = specs.iter().enumerate().map(|(i, s)| line(s, &format!("e{i}"))).collect();
            if !specs.is_empty() {
                for index in &redeliveries {
                    lines.push(lines[index.index(specs.len())].clone());
                }
                // Same event_id, other content: the first in the log counts.
                for (index, other) in &conflicts {
                    lines.push(line(other, &format!("e{}", index.index(specs.len()))));
                }
            }
            lines.extend(bad.iter().map(|b| BAD_LINES[*b].to_string()));
            Just(lines).prop_shuffle()
        })
}

fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|row| row.to_string());
    rows
}

/// The five views of the test config, recomputed by the reference.
fn reference_views(log: &reference::Log) -> [(&'static str, Vec<Value>); 5] {
    [
        ("order_summary", reference::order_summary(&log.orders)),
        ("product_sales", reference::product_sales(&log.orders)),
        ("customer_ltv", reference::customer_ltv(&log.orders)),
        ("revenue_by_currency", reference::revenue_by_currency(&log.orders)),
        ("customers_per_day", reference::customers_per_day(&log.orders)),
    ]
}

fn check_run(config: &str, lines: &[String], workers: usize, batch: u64) -> Result<(), TestCaseError> {
    let expected = reference::read(lines);
    let output = run_lines(config, lines, workers, batch);
    for (name, rows) in reference_views(&expected) {
        if let Some(difference) = first_difference(&sorted(output.views[name].clone()), &sorted(rows)) {
            return Err(TestCaseError::fail(format!(
                "view {name} with {workers} workers, batch {batch}: {difference}"
            )));
        }
    }
    let dead: Vec<u64> = output.dead_letters.iter().map(|d| d["line_number"].as_u64().unwrap()).collect();
    prop_assert_eq!(dead, expected.bad_lines);
    check_validate_fold(config, lines)
}

/// `projector validate`'s plain fold of `lines`, one partition.
fn validate_fold(lines: &[String]) -> projector_core::recompute::Recomputation {
    let mut log = projector_core::recompute::Recomputation::new();
    for (index, line) in lines.iter().enumerate() {
        let position = projector_core::record::LogPosition { partition: 0, offset: index as u64 + 1 };
        log.add(0, position, line.as_bytes());
    }
    log
}

/// `projector validate`'s plain fold gives the recomputation too.
fn check_validate_fold(config: &str, lines: &[String]) -> Result<(), TestCaseError> {
    let plan = projector_core::config::check_text(config, "pipelines.yaml", std::path::Path::new("/")).unwrap();
    let log = validate_fold(lines);
    let expected = reference::read(lines);
    prop_assert_eq!(log.bad_records, expected.bad_lines.len() as u64);
    let orders = log.orders();
    for (name, rows) in reference_views(&expected) {
        let view = plan.view(name).unwrap();
        let got: Vec<Value> =
            log.view_of(view, &orders).iter().map(|(key, values)| Value::Object(view.row_json(key, values))).collect();
        if let Some(difference) = first_difference(&sorted(got), &sorted(rows)) {
            return Err(TestCaseError::fail(format!("validate's fold, view {name}: {difference}")));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn views_equal_the_plain_recomputation(lines in log()) {
        let config = config_with_fourth_view();
        check_run(&config, &lines, 1, 1_000)?;
        check_run(&config, &lines, 1, 4)?;
        check_run(&config, &lines, 2, 3)?;
    }
}

/// Runs the test config's views over `lines[..cut]` with state snapshots,
/// then over all of `lines` from the snapshot: the views equal the
/// recomputation of all of them, and the snapshot it leaves is that of a
/// run over all of them from the start.
fn check_restart_from_snapshot(lines: &[String], cut: usize) -> Result<(), TestCaseError> {
    let text = config_with_fourth_view();
    let views = &text[text.find("\nviews:").unwrap()..text.find("\nsinks:").unwrap()];
    let names = ["order_summary", "product_sales", "customer_ltv", "revenue_by_currency", "customers_per_day"];
    let sinks: String = names
        .iter()
        .map(|view| format!("  {view}_file:\n    type: file\n    view: {view}\n    path: {view}.jsonl\n"))
        .collect();
    let config = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: events.jsonl\n    batch_records: 3\n{views}\nsinks:\n{sinks}state:\n  path: state.parquet\n  every_ms: 1\n"
    );
    let (dir, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let run = |lines: &[String], dir: &Path| {
        // The log only grows: the longer file starts with the shorter one.
        let body: String = lines.iter().map(|line| format!("{line}\n")).collect();
        std::fs::write(dir.join("events.jsonl"), body).unwrap();
        let plan = projector_core::config::check_text(&config, "pipelines.yaml", dir).unwrap();
        let options = projector_dataflows::runner::RunOptions { workers: 2, poll_records: 7, ..Default::default() };
        projector::commands::run_config(plan, options).unwrap()
    };
    run(&lines[..cut], dir.path());
    let summary = run(lines, dir.path());
    prop_assert!(summary.restored_from.is_some(), "the second run did not start from the snapshot");
    run(lines, fresh.path());
    if let Some(difference) = state_difference(&dir.path().join("state.parquet"), &fresh.path().join("state.parquet")) {
        return Err(TestCaseError::fail(format!("the snapshot after a restart at line {cut}: {difference}")));
    }
    let expected = reference::read(lines);
    for (name, rows) in reference_views(&expected) {
        let got = projector_tests::read_json_lines(&dir.path().join(format!("{name}.jsonl")));
        if let Some(difference) = first_difference(&sorted(got), &sorted(rows)) {
            return Err(TestCaseError::fail(format!("view {name} after a restart at line {cut}: {difference}")));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn a_restart_from_a_snapshot_anywhere_equals_the_recomputation(
        lines in log(),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(lines.len() + 1);
        check_restart_from_snapshot(&lines, cut)?;
    }
}

/// Views that fold by adding up (`ViewPlan::added_up`), with `where`s,
/// nulls, averages and `count_distinct: order_id` over lines: the dataflow
/// gives what the general fold of `projector validate` gives.
const ADDED_UP_VIEWS: &str = r#"
  lines_per_store:
    from: order_lines
    group_by: [store_id, status]
    measures:
      lines: { count: "*" }
      placed_lines: { count: "*", where: "status = 'placed'" }
      orders_with_lines: { count_distinct: order_id }
      orders_with_many: { count_distinct: order_id, where: "quantity > 1" }
      average_price_cents: { avg: unit_price_cents, where: "quantity > 1" }
      units: { sum: quantity }
    having: units > 2
  orders_per_currency:
    from: orders
    buckets: 4
    group_by: [currency]
    measures:
      orders: { count_distinct: order_id }
      placed_lines: { sum: line_count, where: "status = 'placed'" }
      average_total_cents: { avg: total_cents }
"#;

fn check_added_up(lines: &[String], workers: usize, batch: u64) -> Result<(), TestCaseError> {
    let mut config = shipped_config_text();
    config.insert_str(config.find("\nsinks:").unwrap(), ADDED_UP_VIEWS);
    let plan = projector_core::config::check_text(&config, "pipelines.yaml", std::path::Path::new("/")).unwrap();
    let log = validate_fold(lines);
    let orders = log.orders();
    let output = run_lines(&config, lines, workers, batch);
    for name in ["lines_per_store", "orders_per_currency", "order_summary", "product_sales"] {
        let view = plan.view(name).unwrap();
        let sums = view.added_up().map(|added_up| added_up.sums.len());
        prop_assert!(sums.is_some(), "view {name} should fold by adding up");
        // The dataflow holds up to 4 sums in one type, up to 8 in another.
        if name == "lines_per_store" {
            prop_assert!(sums > Some(4), "{sums:?}: the wider type untested");
        }
        let folded: Vec<Value> =
            log.view_of(view, &orders).iter().map(|(key, values)| Value::Object(view.row_json(key, values))).collect();
        if let Some(difference) = first_difference(&sorted(output.views[name].clone()), &sorted(folded)) {
            return Err(TestCaseError::fail(format!(
                "view {name} with {workers} workers, batch {batch}: {difference}"
            )));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn views_that_add_up_equal_the_general_fold(lines in log()) {
        check_added_up(&lines, 1, 1_000)?;
        check_added_up(&lines, 2, 3)?;
    }
}

/// A larger generated log (with every kind of bad record) agrees with the
/// recomputation, and 1 and 2 workers give identical files.
#[test]
fn generated_log_matches_the_recomputation_with_any_worker_count() {
    use projector_datagen::{Generator, GeneratorConfig};
    let config = GeneratorConfig {
        events: 30_000,
        seed: 7,
        stores: 4,
        customers_per_store: 600,
        bad_ratio: 0.01,
        redelivery_ratio: 0.03,
        ..GeneratorConfig::default()
    };
    let lines: Vec<String> = Generator::new(config).map(|r| r.line).collect();
    let text = config_with_fourth_view();
    check_run(&text, &lines, 1, 5_000).unwrap();
    let one = run_lines(&text, &lines, 1, 2_000);
    let two = run_lines(&text, &lines, 2, 2_000);
    for (name, rows) in &one.views {
        assert_eq!(first_difference(&two.views[name], rows), None, "view {name}: 2 workers against 1");
    }
    assert_eq!(first_difference(&two.dead_letters, &one.dead_letters), None);
    let segments: std::collections::BTreeSet<String> =
        one.views["customer_ltv"].iter().map(|r| r["segment"].as_str().unwrap().to_string()).collect();
    assert_eq!(segments.len(), 4, "the log should reach every segment: {segments:?}");
    assert!(one.dead_letters.len() > 100);
}
