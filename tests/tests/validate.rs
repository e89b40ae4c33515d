//! `projector validate` against real Redis and ClickHouse servers and a
//! file sink: clean sinks pass with their counts; a planted corruption in
//! Redis (a changed field, a deleted row, an extra row) and in ClickHouse
//! (a newer version of a row) is found and listed by key and field, and the
//! command exits 1.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::Command;

use projector::commands;
use projector::validate::{ValidateOptions, validate};
use projector_core::config::{PipelinePlan, check_text};
use projector_dataflows::runner::RunOptions;
use projector_datagen::{Generator, GeneratorConfig};
use projector_tests::services::{ClickHouseServer, RedisServer, available, projector_binary};
use projector_tests::sinks::{clickhouse_sinks_yaml, redis_sinks_yaml};
use projector_tests::{reference, shipped_views_yaml};
use redis::Commands;

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "validate.yaml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn options(view: &str, sample_size: Option<usize>) -> ValidateOptions {
    ValidateOptions { view: view.to_string(), sample_size, seed: 7 }
}

#[test]
fn validate_passes_clean_sinks_and_finds_planted_corruption() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let generator =
        GeneratorConfig { events: 4000, seed: 12, stores: 3, bad_ratio: 0.01, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(generator).map(|r| r.line).collect();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n{}\nsinks:\n{}{}  customer_ltv_file:\n    type: file\n    view: customer_ltv\n    path: ltv.jsonl\n",
        events.display(),
        shipped_views_yaml(),
        redis_sinks_yaml(&redis.url(), "v:"),
        clickhouse_sinks_yaml(&clickhouse.url(), "validate", 100),
    );
    let config = dir.path().join("validate.yaml");
    std::fs::write(&config, &text).unwrap();
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, until_idle: true, ..RunOptions::default() })
        .unwrap();

    // Clean: every sink of every view agrees with the log.
    let customers = reference::customer_ltv(&reference::read(&lines).orders).len();
    for view in ["order_summary", "product_sales", "customer_ltv"] {
        let clean = validate(&plan(&text, dir.path()), &options(view, None)).unwrap();
        assert_eq!(clean.differences, 0, "{}", clean.report);
        let sinks = if view == "customer_ltv" { 3 } else { 2 };
        assert_eq!(clean.report.matches(": ok\n").count(), sinks, "{}", clean.report);
    }
    let clean = validate(&plan(&text, dir.path()), &options("customer_ltv", None)).unwrap();
    let count = format!("{customers} rows at");
    assert_eq!(clean.report.matches(&count).count(), 3, "{count} in\n{}", clean.report);
    let sampled = validate(&plan(&text, dir.path()), &options("customer_ltv", Some(25))).unwrap();
    assert!(sampled.report.contains("25 keys drawn at random (seed 7): ok"), "{}", sampled.report);

    // Redis: a changed field, a deleted row, a row the log does not give.
    let mut connection = redis.connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("v:customer_ltv:*").query(&mut connection).unwrap();
    let mut keys = keys;
    keys.sort();
    let (changed, deleted) = (&keys[0], &keys[1]);
    let _: () = redis::cmd("HSET").arg(changed).arg("lifetime_value_cents").arg("1").query(&mut connection).unwrap();
    let _: () = redis::cmd("DEL").arg(deleted).query(&mut connection).unwrap();
    let _: () = redis::cmd("HSET")
        .arg("v:customer_ltv:2:999999")
        .arg("store_id")
        .arg("2")
        .arg("customer_id")
        .arg("999999")
        .arg("order_count")
        .arg("1")
        .query(&mut connection)
        .unwrap();
    let found = validate(&plan(&text, dir.path()), &options("customer_ltv", None)).unwrap();
    let redis_part: &str =
        found.report.split("sink \"customer_ltv_redis\"").nth(1).unwrap().split("\nsink ").next().unwrap();
    assert!(redis_part.contains("3 differences"), "{}", found.report);
    let parts: Vec<&str> = changed.split(':').collect();
    let changed_key = format!("key (store_id={}, customer_id={}): lifetime_value_cents: expected ", parts[2], parts[3]);
    assert!(redis_part.contains(&changed_key) && redis_part.contains(", found 1"), "{changed_key}\n{}", found.report);
    let parts: Vec<&str> = deleted.split(':').collect();
    let deleted_key =
        format!("key (store_id={}, customer_id={}): missing; the log gives {{order_count: ", parts[2], parts[3]);
    assert!(redis_part.contains(&deleted_key), "{deleted_key}\n{}", found.report);
    assert!(
        redis_part.contains("key (store_id=2, customer_id=999999): the sink holds {order_count: 1,"),
        "{}",
        found.report
    );
    assert_eq!(found.differences, 3, "the other sinks are clean:\n{}", found.report);

    // ClickHouse: a newer version of one row with a wrong value.
    let row = clickhouse.query("SELECT store_id, customer_id FROM validate.customer_ltv LIMIT 1").unwrap();
    let (store, customer) = row.trim().split_once('\t').unwrap();
    clickhouse
        .query(&format!(
            "INSERT INTO validate.customer_ltv_rows (store_id, customer_id, lifetime_value_cents, _deleted, _version) \
             VALUES ({store}, {customer}, 7, 0, 4611686018427387904)"
        ))
        .unwrap();
    let found = validate(&plan(&text, dir.path()), &options("customer_ltv", None)).unwrap();
    println!("{}", found.report);
    let clickhouse_part =
        found.report.split("sink \"customer_ltv_ch\"").nth(1).unwrap().split("\nsink ").next().unwrap();
    let wrong = format!("key (store_id={store}, customer_id={customer}): lifetime_value_cents: expected ");
    assert!(clickhouse_part.contains(&wrong) && clickhouse_part.contains("found 7"), "{wrong}\n{}", found.report);
    assert!(found.report.contains("sink \"customer_ltv_file\" (file)"), "{}", found.report);

    // Redis rankings: a wrong score, a missing entry, a member no row has.
    let mut sets: Vec<String> = redis::cmd("KEYS").arg("v:top_products:*").query(&mut connection).unwrap();
    sets.sort();
    let first: Vec<(String, f64)> = connection.zrange_withscores(&sets[0], 0, -1).unwrap();
    let second: Vec<(String, f64)> = connection.zrange_withscores(&sets[1], 0, -1).unwrap();
    let _: () = connection.zadd(&sets[0], &first[0].0, first[0].1 + 1.0).unwrap();
    let _: () = connection.zrem(&sets[1], &second[0].0).unwrap();
    let _: () = connection.zadd(&sets[1], "424242", 5.0).unwrap();
    let found = validate(&plan(&text, dir.path()), &options("product_sales", None)).unwrap();
    let redis_part: &str =
        found.report.split("sink \"product_sales_redis\"").nth(1).unwrap().split("\nsink ").next().unwrap();
    assert!(redis_part.contains("3 differences"), "{}", found.report);
    let wrong = format!(
        "ranking {:?}: member {:?}: expected score {}, found {}",
        sets[0],
        first[0].0,
        first[0].1,
        first[0].1 + 1.0
    );
    assert!(redis_part.contains(&wrong), "{wrong}\n{}", found.report);
    let missing =
        format!("ranking {:?}: member {:?}: missing; the log gives score {}", sets[1], second[0].0, second[0].1);
    assert!(redis_part.contains(&missing), "{missing}\n{}", found.report);
    let stray =
        format!("ranking {:?}: member \"424242\": the sink holds score 5 but the log gives no such entry", sets[1]);
    assert!(redis_part.contains(&stray), "{stray}\n{}", found.report);
    assert_eq!(found.differences, 3, "the ClickHouse sink is clean:\n{}", found.report);

    // The command: the report on standard output, exit 1 with a difference,
    // 0 on a view whose sinks are clean.
    let run = |view: &str| {
        Command::new(projector_binary())
            .args(["validate", "-c", config.to_str().unwrap(), "--view", view])
            .output()
            .unwrap()
    };
    let corrupted = run("customer_ltv");
    assert_eq!(corrupted.status.code(), Some(1), "{}", String::from_utf8_lossy(&corrupted.stderr));
    assert!(String::from_utf8_lossy(&corrupted.stdout).contains("lifetime_value_cents: expected"));
    assert!(String::from_utf8_lossy(&corrupted.stderr).contains("differences between its sinks and the log"));
    let clean = run("order_summary");
    assert_eq!(clean.status.code(), Some(0), "{}", String::from_utf8_lossy(&clean.stderr));
    let unknown = run("nope");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no view \"nope\"; this config declares"));
}

/// A sampled check that draws none of the keys that differ still fails
/// when the sink holds another number of rows than the log gives; a sample
/// of no keys is refused.
#[test]
fn a_sample_that_misses_the_differing_keys_still_finds_a_wrong_row_count() {
    let dir = tempfile::tempdir().unwrap();
    let generator = GeneratorConfig { events: 3000, seed: 5, stores: 2, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(generator).map(|r| r.line).collect();
    std::fs::write(dir.path().join("events.jsonl"), lines.join("\n") + "\n").unwrap();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: events.jsonl\n{}\nsinks:\n  ltv_file:\n    \
         type: file\n    view: customer_ltv\n    path: ltv.jsonl\n",
        shipped_views_yaml()
    );
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, until_idle: true, ..RunOptions::default() })
        .unwrap();
    let path = dir.path().join("ltv.jsonl");
    let rows = std::fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = rows.lines().collect();
    assert!(kept.len() > 100, "{} rows", kept.len());
    // One row gone: one key in more than a hundred differs.
    std::fs::write(&path, kept[1..].join("\n") + "\n").unwrap();

    let whole = validate(&plan(&text, dir.path()), &options("customer_ltv", None)).unwrap();
    assert_eq!(whole.differences, 1, "{}", whole.report);
    assert!(whole.report.contains("missing; the log gives"), "{}", whole.report);
    let sampled = validate(&plan(&text, dir.path()), &options("customer_ltv", Some(3))).unwrap();
    let count = format!("row count: expected {}, found {}", kept.len(), kept.len() - 1);
    assert!(sampled.report.contains(&count), "{count}\n{}", sampled.report);
    assert!(sampled.differences >= 1, "{}", sampled.report);
    assert!(sampled.report.contains("3 keys drawn at random"), "{}", sampled.report);

    let none = validate(&plan(&text, dir.path()), &options("customer_ltv", Some(0))).unwrap_err();
    assert!(none.to_string().contains("--sample-size 0 checks no key"), "{none}");
}
