//! `projector replay` against real Redis and ClickHouse servers: a view
//! rebuilt while the live pipeline keeps running fixes planted corruption in
//! both sinks, and readers polling during the swap see the corrupted rows or
//! the fixed ones, never a mix; a window replay changes only the window's
//! rows; an interrupted replay resumes from its shadow's checkpoint.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use projector::commands;
use projector::validate::{ValidateOptions, validate};
use projector_core::config::{PipelinePlan, check_text};
use projector_dataflows::runner::RunOptions;
use projector_datagen::{Generator, GeneratorConfig};
use projector_tests::services::{ClickHouseServer, RedisServer, available, clickhouse_query, projector_binary};
use projector_tests::sinks::{
    assert_redis_holds, clickhouse_covered, clickhouse_sinks_yaml, redis_covered, redis_sinks_yaml,
};
use projector_tests::{kafka, shipped_views_yaml};
use redis::Commands;

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "replay.yaml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn differences(text: &str, dir: &Path, view: &str) -> (usize, String) {
    let options = ValidateOptions { view: view.to_string(), sample_size: None, seed: 1 };
    let validation = validate(&plan(text, dir), &options).unwrap();
    (validation.differences, validation.report)
}

fn replay(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(projector_binary())
        .args(["replay", "-c", config.to_str().unwrap(), "-w", "2"])
        .args(args)
        .env("RUST_LOG", "warn,projector_sink_redis=info")
        .output()
        .unwrap()
}

/// A `(store_id, customer_id)` with an order in `records[..from]` and no
/// event of any of its orders in `records[from..]`.
fn untouched_customer(records: &[(String, String)], from: usize) -> (u64, u64) {
    let mut customers = std::collections::BTreeMap::new();
    for (_, line) in records {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if event["event_type"] == "OrderCreated" {
            let customer = (event["store_id"].as_u64().unwrap(), event["payload"]["customer_id"].as_u64().unwrap());
            customers.insert(event["aggregate_id"].as_str().unwrap().to_string(), customer);
        }
    }
    let later: std::collections::BTreeSet<(u64, u64)> =
        records[from..].iter().filter_map(|(order, _)| customers.get(order).copied()).collect();
    let earlier = records[..from].iter().filter_map(|(order, _)| customers.get(order).copied());
    earlier.filter(|customer| !later.contains(customer)).min().expect("a customer the later events do not touch")
}

fn keyed(events: u64, seed: u64) -> Vec<(String, String)> {
    let generator = GeneratorConfig { events, seed, stores: 3, bad_ratio: 0.0, ..GeneratorConfig::default() };
    Generator::new(generator).map(|r| (r.key, r.line)).collect()
}

/// Two `order_summary` rows of Redis read in one transaction: whether each
/// holds its planted value.
fn planted_pair(connection: &mut redis::Connection, keys: &[String; 2]) -> (bool, bool) {
    let (first, second): (Option<String>, Option<String>) = redis::pipe()
        .atomic()
        .hget(&keys[0], "revenue_cents")
        .hget(&keys[1], "revenue_cents")
        .query(connection)
        .unwrap();
    (first.as_deref() == Some("1"), second.as_deref() == Some("1"))
}

#[test]
fn a_replay_while_the_pipeline_runs_fixes_both_sinks_and_readers_never_see_a_mix() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::create_topic("replay", 8);
    let records = keyed(40_000, 41);
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    batch_ms: 20\n{}\nsinks:\n{}{}",
        kafka::brokers(),
        shipped_views_yaml(),
        redis_sinks_yaml(&redis.url(), "r:"),
        clickhouse_sinks_yaml(&clickhouse.url(), "replay", 200),
    );
    let config = dir.path().join("replay.yaml");
    std::fs::write(&config, &text).unwrap();
    kafka::append(&topic, records[..20_000].to_vec());

    // The live pipeline, running all along.
    let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
    let stop = Arc::clone(&options.stop);
    let live_plan = plan(&text, dir.path());
    let live = std::thread::spawn(move || commands::run_config(live_plan, options).unwrap());
    let caught_up = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while redis_covered(&redis, "r:") < count || clickhouse_covered(&clickhouse, "replay") < count {
            assert!(Instant::now() < deadline, "the sinks did not catch up with {count} records");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    caught_up(20_000);

    // Corruption: two Redis rows with a wrong value, one deleted, one that
    // the log does not give; two ClickHouse rows deleted.
    let mut connection = redis.connection().unwrap();
    let mut keys: Vec<String> = connection.keys("r:order_summary:*").unwrap();
    keys.sort();
    let pair = [keys[0].clone(), keys[1].clone()];
    for key in &pair {
        let _: () = connection.hset(key, "revenue_cents", "1").unwrap();
    }
    let _: () = connection.del(&keys[2]).unwrap();
    let _: () = connection
        .hset_multiple(
            "r:order_summary:3:2001-01-01",
            &[("store_id", "3"), ("date", "2001-01-01"), ("order_count", "5")],
        )
        .unwrap();
    let rows =
        clickhouse.query("SELECT store_id, date FROM replay.order_summary ORDER BY store_id, date LIMIT 2").unwrap();
    let condition: Vec<String> = rows
        .lines()
        .map(|line| {
            let (store, date) = line.split_once('\t').unwrap();
            format!("(store_id = {store} AND date = '{date}')")
        })
        .collect();
    let condition = condition.join(" OR ");
    clickhouse.query(&format!("ALTER TABLE replay.order_summary_rows DELETE WHERE {condition}")).unwrap();
    let count_deleted = || {
        clickhouse
            .query(&format!("SELECT count() FROM replay.order_summary WHERE {condition}"))
            .unwrap()
            .trim()
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_deleted() != "0" {
        assert!(Instant::now() < deadline, "the planted delete did not apply");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (found, report) = differences(&text, dir.path(), "order_summary");
    assert_eq!(found, 6, "the planted corruption:\n{report}");
    // And a customer_ltv row in each store, of a customer the events still
    // to come do not touch (so the live pipeline does not mend it first):
    // replayed together with order_summary, in one pass over the log.
    let customer = untouched_customer(&records, 20_000);
    let customer_key = format!("r:customer_ltv:{}:{}", customer.0, customer.1);
    let _: () = connection.hset(&customer_key, "lifetime_value_cents", "7").unwrap();
    let condition_ltv = format!("store_id = {} AND customer_id = {}", customer.0, customer.1);
    clickhouse.query(&format!("ALTER TABLE replay.customer_ltv_rows DELETE WHERE {condition_ltv}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let count_sql = format!("SELECT count() FROM replay.customer_ltv WHERE {condition_ltv}");
    while clickhouse.query(&count_sql).unwrap().trim() != "0" {
        assert!(Instant::now() < deadline, "the planted delete did not apply");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (found, report) = differences(&text, dir.path(), "customer_ltv");
    assert_eq!(found, 2, "the planted corruption:\n{report}");

    // Readers poll both stores through the replay; more events flow in.
    let polling = Arc::new(AtomicBool::new(true));
    let redis_reader = {
        let polling = Arc::clone(&polling);
        let mut connection = redis.connection().unwrap();
        let pair = pair.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while polling.load(Ordering::Relaxed) {
                let observed = planted_pair(&mut connection, &pair);
                if seen.last() != Some(&observed) {
                    seen.push(observed);
                }
            }
            seen
        })
    };
    let clickhouse_reader = {
        let polling = Arc::clone(&polling);
        let port = clickhouse.http_port;
        let condition = condition.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while polling.load(Ordering::Relaxed) {
                let sql = format!("SELECT count() FROM replay.order_summary WHERE {condition}");
                let count = clickhouse_query(port, &sql);
                let count = count.unwrap().trim().to_string();
                if seen.last() != Some(&count) {
                    seen.push(count);
                }
            }
            seen
        })
    };
    // One producer sending steadily (about 5,000 events/s) through the replay.
    let writer = {
        let topic = topic.clone();
        let more = records[20_000..].to_vec();
        std::thread::spawn(move || {
            use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
            let producer: BaseProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", kafka::brokers())
                .set("linger.ms", "1")
                .create()
                .unwrap();
            for chunk in more.chunks(50) {
                for (key, line) in chunk {
                    producer.send(BaseRecord::to(&topic).key(key).payload(line)).unwrap();
                }
                producer.poll(Duration::from_millis(10));
            }
            producer.flush(Duration::from_secs(60)).unwrap();
        })
    };
    // The replay starts while the live sinks move.
    let deadline = Instant::now() + Duration::from_secs(60);
    while redis_covered(&redis, "r:") < 21_000 || clickhouse_covered(&clickhouse, "replay") < 21_000 {
        assert!(Instant::now() < deadline, "the live pipeline does not move");
        std::thread::sleep(Duration::from_millis(20));
    }

    let replayed = replay(&config, &["--view", "order_summary", "--view", "customer_ltv"]);
    let stdout = String::from_utf8_lossy(&replayed.stdout).into_owned();
    assert!(replayed.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&replayed.stderr));
    println!("{stdout}");
    let sink_line = |sink: &str| {
        let line = stdout.lines().find(|line| line.contains(&format!("sink \"{sink}\": "))).unwrap_or("");
        assert!(line.contains("built its shadow from the start; swapped in at"), "{sink}:\n{stdout}");
        line.to_string()
    };
    assert!(sink_line("order_summary_ch").contains(" 2 rewritten, 0 deleted"), "the two deleted rows:\n{stdout}");
    assert!(
        sink_line("order_summary_redis").contains(" 3 rewritten, 1 deleted"),
        "two changed, one deleted, one extra:\n{stdout}"
    );
    for sink in ["customer_ltv_redis", "customer_ltv_ch"] {
        assert!(sink_line(sink).contains(" 1 rewritten, 0 deleted"), "{stdout}");
    }
    // A shadow built from the start is compared as the replay kept it, and
    // a replay this short never writes it into Redis (only every 10 s).
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(stderr.contains("as the replay kept it") && !stderr.contains("read back"), "{stderr}");
    assert!(stderr.contains("rows_in_redis=0"), "{stderr}");
    // Swapped in where the live sinks stood, past where the replay began.
    for part in stdout.split("swapped in at ").skip(1) {
        let json = &part[..part.find("}}").unwrap() + 2];
        let positions: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
            serde_json::from_str(json).unwrap();
        let total: u64 = positions["events"].values().sum();
        assert!(total >= 21_000, "{stdout}");
    }

    writer.join().unwrap();
    caught_up(records.len() as u64);
    polling.store(false, Ordering::Relaxed);
    let redis_seen = redis_reader.join().unwrap();
    let clickhouse_seen = clickhouse_reader.join().unwrap();
    assert_eq!(redis_seen, vec![(true, true), (false, false)], "Redis readers saw the swap half done");
    assert_eq!(clickhouse_seen, vec!["0".to_string(), "2".to_string()], "ClickHouse readers saw it half done");
    stop.store(true, Ordering::Relaxed);
    live.join().unwrap();

    // The sinks of both views now agree with the whole log, and the
    // shadows are gone.
    for view in ["order_summary", "customer_ltv"] {
        let (found, report) = differences(&text, dir.path(), view);
        assert_eq!(found, 0, "{view}: {report}");
    }
    let shadows: Vec<String> = connection.keys("r:projector:shadow:*").unwrap();
    assert!(shadows.is_empty(), "{shadows:?}");
    let tables =
        clickhouse.query("SELECT count() FROM system.tables WHERE database = 'replay' AND name LIKE '%shadow%'");
    assert_eq!(tables.unwrap().trim(), "0");
}

/// The shipped views over a file into Redis under `prefix`.
fn file_config(events: &Path, url: &str, prefix: &str, batch_records: u64) -> String {
    format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n    batch_records: {batch_records}\n{}\nsinks:\n{}",
        events.display(),
        shipped_views_yaml(),
        redis_sinks_yaml(url, prefix)
    )
}

/// A file of `events` generated events (`seed`), the shipped views over
/// it into Redis under `prefix` (a batch per `batch_records`), and a run
/// of them to the end: the file's lines, the config's text and its path.
fn ran_on_file(redis: &RedisServer, dir: &Path, events: u64, seed: u64, prefix: &str, batch_records: u64) -> Ran {
    let lines: Vec<String> = keyed(events, seed).into_iter().map(|(_, line)| line).collect();
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let text = file_config(&file, &redis.url(), prefix, batch_records);
    let config = dir.join("replay.yaml");
    std::fs::write(&config, &text).unwrap();
    commands::run_config(plan(&text, dir), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    (lines, text, config)
}

/// `lines` written to `events.jsonl` in `dir`, and a config of the
/// shipped views over it into Redis (the server and a key prefix) and
/// ClickHouse (the server, a database and `batch_ms`): the file and the
/// config's text.
fn both_sinks_on_file(
    dir: &Path,
    lines: &[String],
    (redis, prefix): (&RedisServer, &str),
    (clickhouse, database, batch_ms): (&ClickHouseServer, &str, u64),
) -> (std::path::PathBuf, String) {
    let file = dir.join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let text = format!(
        "{}{}",
        file_config(&file, &redis.url(), prefix, 1000),
        clickhouse_sinks_yaml(&clickhouse.url(), database, batch_ms)
    );
    (file, text)
}

/// What [`ran_on_file`] answers.
type Ran = (Vec<String>, String, std::path::PathBuf);

#[test]
fn a_window_replay_changes_only_the_rows_of_its_window() {
    if !available("redis-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let (lines, text, config) = ran_on_file(&redis, dir.path(), 6000, 5, "w:", 1000);

    let mut connection = redis.connection().unwrap();
    let mut keys: Vec<String> = connection.keys("w:order_summary:1:*").unwrap();
    keys.sort();
    assert!(keys.len() >= 3, "{keys:?}");
    let (inside, outside) = (&keys[keys.len() / 2], &keys[0]);
    let day = inside.rsplit(':').next().unwrap().to_string();
    for key in [inside, outside] {
        let _: () = connection.hset(key, "order_count", "999").unwrap();
    }
    let (found, _) = differences(&text, dir.path(), "order_summary");
    assert_eq!(found, 2);

    let replayed = replay(&config, &["--view", "order_summary", "--from", &day, "--to", &day]);
    let stdout = String::from_utf8_lossy(&replayed.stdout).into_owned();
    assert!(replayed.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(stdout.contains("1 rewritten, 0 deleted"), "{stdout}");
    // The live hashes of other days are known by their names, not read.
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(stderr.contains("others=0"), "{stderr}");
    let (found, report) = differences(&text, dir.path(), "order_summary");
    assert_eq!(found, 1, "only the row outside the window is still wrong:\n{report}");
    let outside_key = outside.rsplit(':').next().unwrap();
    assert!(report.contains(&format!("date=\"{outside_key}\"): order_count: expected")), "{report}");

    // A replay of a view with rankings puts its sorted sets right (a wrong
    // score, a missing entry, a member no row has) and leaves nothing of
    // its shadow behind (hashes, ranking sets, checkpoint), nor does the
    // window replay.
    let mut sets: Vec<String> = connection.keys("w:top_products:*").unwrap();
    sets.sort();
    assert!(sets.len() >= 2, "{sets:?}");
    let first: Vec<(String, f64)> = connection.zrange_withscores(&sets[0], 0, -1).unwrap();
    let second: Vec<(String, f64)> = connection.zrange_withscores(&sets[1], 0, -1).unwrap();
    let _: () = connection.zadd(&sets[0], &first[0].0, first[0].1 + 1.0).unwrap();
    let _: () = connection.zrem(&sets[1], &second[0].0).unwrap();
    let _: () = connection.zadd(&sets[1], "no-such-product", 5.0).unwrap();
    // What a drop of an earlier shadow cut short leaves: its checkpoint's
    // key without positions (the drop deletes them first and the key
    // last), and a row. A fresh build clears it.
    let shadow = "w:projector:shadow:product_sales_redis:all:";
    let _: () = connection.hset(format!("{shadow}projector:sink:product_sales_redis"), "generation", 4).unwrap();
    let _: () = connection.hset(format!("{shadow}product_sales:9:9:2020-01-01"), "units_sold", 1).unwrap();
    // A copy of a row's hash under a name no row has: it goes, the row
    // and its ranking entry stay.
    let mut hashes: Vec<String> = connection.keys("w:product_sales:*").unwrap();
    hashes.sort();
    let fields: Vec<(String, String)> = connection.hgetall(&hashes[0]).unwrap();
    let copy = format!("{}9", hashes[0]);
    let _: () = connection.hset_multiple(&copy, &fields).unwrap();
    let sales = replay(&config, &["--view", "product_sales"]);
    let stdout = String::from_utf8_lossy(&sales.stdout).into_owned();
    assert!(sales.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&sales.stderr));
    assert!(stdout.contains("0 rewritten, 1 deleted, 3 ranking entries set or removed"), "{stdout}");
    let (copied, kept): (bool, bool) = (connection.exists(&copy).unwrap(), connection.exists(&hashes[0]).unwrap());
    assert_eq!((copied, kept), (false, true));
    let shadows: Vec<String> = connection.keys("w:projector:shadow:*").unwrap();
    assert!(shadows.is_empty(), "{shadows:?}");
    // Two views in one pass: the row of order_summary outside the window
    // above, and a customer_ltv row, both mended; the log is read once.
    let mut customers: Vec<String> = connection.keys("w:customer_ltv:*").unwrap();
    customers.sort();
    let _: () = connection.hset(&customers[0], "lifetime_value_cents", "7").unwrap();
    let (found, _) = differences(&text, dir.path(), "customer_ltv");
    assert_eq!(found, 1);
    let twice = replay(&config, &["--view", "order_summary", "--view", "order_summary"]);
    assert_eq!(twice.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("view \"order_summary\" is named twice"));
    let both = replay(&config, &["--view", "order_summary,customer_ltv"]);
    let stdout = String::from_utf8_lossy(&both.stdout).into_owned();
    assert!(both.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&both.stderr));
    assert!(
        stdout.starts_with(&format!("replayed views \"order_summary\", \"customer_ltv\": {} events", lines.len())),
        "{stdout}"
    );
    for sink in ["order_summary_redis", "customer_ltv_redis"] {
        assert!(stdout.contains(&format!("sink \"{sink}\": built its shadow from the start;")), "{stdout}");
    }
    assert_eq!(stdout.matches(" 1 rewritten, 0 deleted").count(), 2, "{stdout}");
    assert_redis_holds(&redis, &lines, "w:");

    // A view without a date key has no window; a bad date is named.
    let ltv = replay(&config, &["--view", "customer_ltv", "--from", "2024-01-01"]);
    assert_eq!(ltv.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&ltv.stderr);
    assert!(stderr.contains("view \"customer_ltv\" has no date key field"), "{stderr}");
    let bad = replay(&config, &["--view", "order_summary", "--from", "2024-13-01"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("\"2024-13-01\" is not a date"));
}

/// Before any run the sinks hold nothing (status and validate say so); a
/// finished replay leaves nothing a later one would resume: a second
/// replay of the same view builds its shadows from the start again and
/// finds nothing to change. (The ClickHouse shadow's emptied checkpoint was
/// once older than the one its build wrote, so the second replay resumed a
/// shadow whose tables were gone and deleted every live row.)
#[test]
fn a_second_replay_of_a_view_builds_it_again_and_changes_nothing() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let (redis, clickhouse) = (RedisServer::start(false), ClickHouseServer::start());
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = keyed(5000, 9).into_iter().map(|(_, line)| line).collect();
    let (_, text) = both_sinks_on_file(dir.path(), &lines, (&redis, "again:"), (&clickhouse, "again", 200));
    let config = dir.path().join("again.yaml");
    std::fs::write(&config, &text).unwrap();
    // Before any run, no ClickHouse database or table exists: the sinks
    // hold nothing, to status and to validate, as a Redis sink with no keys.
    let status = Command::new(projector_binary()).args(["status", "-c", config.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&status.stderr));
    assert!(
        stdout.contains("sink order_summary_ch (clickhouse, view order_summary)\n  generation -, checkpoint none (holds nothing yet)"),
        "{stdout}"
    );
    let (found, report) = differences(&text, dir.path(), "order_summary");
    assert_eq!(found, 0, "{report}");
    assert!(
        report.contains("sink \"order_summary_ch\" (clickhouse): 0 rows at no checkpoint (nothing written yet)"),
        "{report}"
    );
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let live_rows = || clickhouse.query("SELECT count() FROM again.order_summary").unwrap().trim().to_string();
    let rows = live_rows();
    assert_ne!(rows, "0");
    for round in 0..2 {
        let replayed = replay(&config, &["--view", "order_summary", "--ack-wait", "0"]);
        let stdout = String::from_utf8_lossy(&replayed.stdout).into_owned();
        assert!(replayed.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&replayed.stderr));
        for sink in ["order_summary_redis", "order_summary_ch"] {
            let line = stdout.lines().find(|line| line.contains(&format!("sink \"{sink}\": "))).unwrap_or("");
            assert!(line.contains("built its shadow from the start;"), "round {round}:\n{stdout}");
            assert!(line.contains(&format!(": {rows} rows, 0 rewritten, 0 deleted")), "round {round}:\n{stdout}");
        }
        assert_eq!(live_rows(), rows, "round {round}");
    }
    let (found, report) = differences(&text, dir.path(), "order_summary");
    assert_eq!(found, 0, "{report}");
}

#[test]
fn an_interrupted_replay_resumes_from_its_shadow() {
    if !available("redis-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let (lines, text, config) = ran_on_file(&redis, dir.path(), 150_000, 9, "i:", 500);
    let mut connection = redis.connection().unwrap();
    let mut keys: Vec<String> = connection.keys("i:customer_ltv:*").unwrap();
    keys.sort();
    let _: () = connection.hset(&keys[0], "lifetime_value_cents", "3").unwrap();

    // Killed once its shadow holds part of the view and its dataflow has
    // a checkpoint no further than the shadow.
    let shadow_state = "i:projector:shadow:customer_ltv_redis:all:projector:sink:customer_ltv_redis";
    let checkpoint = dir.path().join(".projector-replay/customer_ltv-all.parquet");
    let mut child = Command::new(projector_binary())
        .args(["replay", "-c", config.to_str().unwrap(), "-w", "2", "--view", "customer_ltv", "--checkpoint-ms", "20"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let covered = |json: &str| -> u64 {
        let positions: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
            serde_json::from_str(json).unwrap();
        positions.values().flat_map(|p| p.values()).sum()
    };
    loop {
        let shadow: Option<String> = connection.hget(shadow_state, "positions").unwrap();
        let snapshot = projector_sink_parquet::positions_of(&checkpoint).ok().flatten();
        if let (Some(shadow), Some(snapshot)) = (shadow, snapshot)
            && covered(&snapshot) <= covered(&shadow)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the shadow never got a checkpoint");
        assert!(child.try_wait().unwrap().is_none(), "the replay ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (found, _) = differences(&text, dir.path(), "customer_ltv");
    assert_eq!(found, 1, "the interrupted replay swapped nothing in");

    let replayed = replay(&config, &["--view", "customer_ltv", "--checkpoint-ms", "20"]);
    let stdout = String::from_utf8_lossy(&replayed.stdout).into_owned();
    assert!(replayed.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(stdout.contains("sink \"customer_ltv_redis\": resumed its shadow at "), "{stdout}");
    // What the shadow held before is not in this process: it is read back.
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(stderr.contains("read back"), "{stderr}");
    assert!(stdout.contains("the dataflow resumed from its checkpoint"), "{stdout}");
    let read: u64 =
        stdout.split("replayed view \"customer_ltv\": ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(read < lines.len() as u64, "the resumed replay read the whole log again:\n{stdout}");
    assert!(!checkpoint.exists(), "the replay's checkpoint is removed once it is done");
    assert!(stdout.contains("1 rewritten, 0 deleted"), "{stdout}");
    let (found, report) = differences(&text, dir.path(), "customer_ltv");
    assert_eq!(found, 0, "{report}");
}

/// A Redis shadow is written only every 10 s, but a replay stopped with a
/// signal writes it before it exits, and the next replay resumes from it.
#[test]
fn a_replay_stopped_by_a_signal_writes_its_shadow_first() {
    if !available("redis-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let (_, text, config) = ran_on_file(&redis, dir.path(), 150_000, 11, "s:", 500);

    let mut child = Command::new(projector_binary())
        .args(["replay", "-c", config.to_str().unwrap(), "-w", "2", "--view", "customer_ltv"])
        .env("RUST_LOG", "warn,projector::replay=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(read > 0, "the replay ended before its shadow took a batch:\n{seen}");
        seen.push_str(&line);
        if line.contains("the shadow took its first batch") {
            break;
        }
    }
    let shadow_state = "s:projector:shadow:customer_ltv_redis:all:projector:sink:customer_ltv_redis";
    let mut connection = redis.connection().unwrap();
    let before: Option<String> = connection.hget(shadow_state, "positions").unwrap();
    assert_eq!(before, None, "the shadow was written at its first batch");
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the replay finished before the signal:\n{seen}{rest}");
    assert!(rest.contains("stopped before it finished"), "{seen}{rest}");
    let after: Option<String> = connection.hget(shadow_state, "positions").unwrap();
    assert!(after.is_some(), "the stopped replay did not write its shadow:\n{seen}{rest}");

    let replayed = replay(&config, &["--view", "customer_ltv"]);
    let stdout = String::from_utf8_lossy(&replayed.stdout).into_owned();
    assert!(replayed.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(stdout.contains("sink \"customer_ltv_redis\": resumed its shadow at "), "{stdout}");
    let (found, report) = differences(&text, dir.path(), "customer_ltv");
    assert_eq!(found, 0, "{report}");
}

/// A log that ends before the positions its sinks stand at (a file
/// replaced by a shorter one, a topic deleted and created anew) is refused
/// by a run and by a replay with what to do, and nothing is written; once the sinks are dropped, a
/// run rebuilds them from the log as it is, and does not start from the
/// state snapshot of the old log either.
#[test]
fn a_run_refuses_sinks_past_the_end_of_the_log_until_they_are_dropped() {
    if !available("redis-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = keyed(3000, 8).into_iter().map(|(_, line)| line).collect();
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let state = dir.path().join("state.parquet");
    let text = format!(
        "{}state:\n  path: {}\n  every_ms: 600000\n",
        file_config(&file, &redis.url(), "t:", 1000),
        state.display()
    );
    let config = dir.path().join("truncated.yaml");
    std::fs::write(&config, &text).unwrap();
    let run = || commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() });
    run().unwrap();
    assert!(state.exists());

    std::fs::write(&file, lines[..100].join("\n") + "\n").unwrap();
    let error = run().unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "sink \"order_summary_redis\" stands at offset {} of partition 0 of source \"events\", past the end of \
             the log there (101)",
            lines.len() + 1
        )),
        "{error}"
    );
    assert!(error.contains("projector drop -c"), "{error}");
    assert_redis_holds(&redis, &lines, "t:");
    // So does a replay, before it builds anything (it used to read the
    // whole log and then find that the shadow could not reach the sink).
    let replayed = replay(&config, &["--view", "order_summary"]);
    assert!(!replayed.status.success());
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(
        stderr.contains(&format!(
            "sink \"order_summary_redis\" stands at offset {} of partition 0 of source \"events\", past the end of \
             the log there (101)",
            lines.len() + 1
        )),
        "{stderr}"
    );
    assert_redis_holds(&redis, &lines, "t:");
    // validate says so too, rather than listing every row as wrong.
    let options = ValidateOptions { view: "customer_ltv".to_string(), sample_size: None, seed: 1 };
    let error = validate(&plan(&text, dir.path()), &options).unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "source \"events\": the log ends before the position a sink claims ({{\"events\":{{\"0\":{}}}}})",
            lines.len() + 1
        )),
        "{error}"
    );

    for sink in ["order_summary_redis", "product_sales_redis", "customer_ltv_redis"] {
        let dropped = Command::new(projector_binary())
            .args(["drop", "-c", config.to_str().unwrap(), "--sink", sink])
            .output()
            .unwrap();
        assert!(dropped.status.success(), "{}", String::from_utf8_lossy(&dropped.stderr));
    }
    let summary = run().unwrap();
    assert_eq!(summary.restored_from, None, "the snapshot of the old log is past the end of this one");
    assert_redis_holds(&redis, &lines[..100], "t:");
}

/// A view whose definition changed in the YAML is rebuilt in its sinks
/// (Redis and ClickHouse, also when its columns changed) when the pipeline
/// restarts; the sinks of the other views resume, and a restart with the
/// same YAML rebuilds nothing. Before, the changed view's sinks resumed
/// too: rows the new events touched followed the new definition, the
/// others the old one.
#[test]
fn a_view_whose_definition_changed_is_rebuilt_and_the_others_resume() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let (redis, clickhouse) = (RedisServer::start(false), ClickHouseServer::start());
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = keyed(4000, 12).into_iter().map(|(_, line)| line).collect();
    let (file, text) = both_sinks_on_file(dir.path(), &lines[..3000], (&redis, "def:"), (&clickhouse, "def", 200));
    let run = |text: &str| {
        commands::run_config(plan(text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap()
    };
    run(&text);
    let mut connection = redis.connection().unwrap();
    let mut customers: Vec<String> = connection.keys("def:customer_ltv:*").unwrap();
    customers.sort();
    let _: () = connection.hset(&customers[0], "lifetime_value_cents", "7").unwrap();

    let revenue = "revenue_cents:             { sum: total_cents,  where: \"status = 'placed'\" }";
    let cancellations = "cancellation_count:        { count: \"*\",        where: \"status = 'cancelled'\" }";
    assert!(text.contains(revenue) && text.contains(cancellations), "{text}");
    let changed = text
        .replace(revenue, "revenue_cents: { sum: total_cents, where: \"status = 'placed' and total_cents > 10000\" }")
        .replace(cancellations, &format!("{cancellations}\n      largest_order_cents: {{ max: total_cents }}"));
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    // A replay with the changed view is refused: a pipeline still running
    // the old definition would go on updating the rebuilt rows by it.
    let config = dir.path().join("changed.yaml");
    std::fs::write(&config, &changed).unwrap();
    for view in ["order_summary", "customer_ltv,order_summary"] {
        let refused = replay(&config, &["--view", view]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("holds rows of another definition of its view than this config's"), "{stderr}");
        assert!(stderr.contains("Restart the pipeline with this config instead"), "{stderr}");
    }
    let validated = |text: &str, view: &str| {
        let options = ValidateOptions { view: view.to_string(), sample_size: None, seed: 1 };
        validate(&plan(text, dir.path()), &options).unwrap()
    };
    // `validate` says why the sinks differ from the changed view.
    let before = validated(&changed, "order_summary");
    assert_eq!(before.differences, 2, "{}", before.report);
    let hint = "its rows were computed by another definition of view \"order_summary\" than this config's";
    assert_eq!(before.report.matches(hint).count(), 2, "{}", before.report);
    run(&changed);
    let summary = validated(&changed, "order_summary");
    assert_eq!(summary.differences, 0, "{}", summary.report);
    let mut summaries: Vec<String> = connection.keys("def:order_summary:*").unwrap();
    summaries.sort();
    let largest: Option<String> = connection.hget(&summaries[0], "largest_order_cents").unwrap();
    assert!(largest.is_some(), "the new measure is in the rebuilt Redis rows");
    let columns =
        clickhouse.query("SELECT name FROM system.columns WHERE database = 'def' AND table = 'order_summary'");
    assert!(columns.unwrap().contains("largest_order_cents"), "the ClickHouse table was made again with it");
    let ltv = validated(&changed, "customer_ltv");
    assert_eq!(ltv.differences, 1, "customer_ltv resumed; the planted value stays:\n{}", ltv.report);

    // The same YAML again: nothing is rebuilt (a planted value stays).
    let _: () = connection.hset(&summaries[0], "order_count", "999").unwrap();
    run(&changed);
    let summary = validated(&changed, "order_summary");
    assert_eq!(summary.differences, 1, "{}", summary.report);
}

/// Reads with `read` on a thread of its own until `stop`: how many reads,
/// and the fewest rows one found (`None`: a read failed).
fn reading_until(
    stop: &Arc<AtomicBool>,
    mut read: impl FnMut() -> Option<usize> + Send + 'static,
) -> std::thread::JoinHandle<(usize, Option<usize>)> {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let (mut reads, mut fewest) = (0usize, Some(usize::MAX));
        while !stop.load(Ordering::Relaxed) {
            fewest = fewest.min(read());
            reads += 1;
        }
        (reads, fewest)
    })
}

/// A sink rebuilt because its view's definition changed keeps its rows
/// until the rebuilt view replaces them in one write: readers polling
/// Redis and ClickHouse all through the restart never find fewer rows than
/// the old view had (a changed `where` keeps the columns; every store's day
/// keeps its row), and then with a new measure (new ClickHouse columns),
/// with that measure's type changed, and with it removed. The ClickHouse
/// readers select every column, so a reader view over a table that lacks
/// one of its columns fails them.
/// Before, both sinks were emptied when the run started, and their readers
/// found nothing (in ClickHouse, no table) until the run had caught up.
#[test]
fn a_sink_rebuilt_for_a_changed_definition_keeps_its_rows_until_the_new_ones_replace_them() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let (redis, clickhouse) = (RedisServer::start(false), ClickHouseServer::start());
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = keyed(8000, 12).into_iter().map(|(_, line)| line).collect();
    let (file, text) = both_sinks_on_file(dir.path(), &lines[..6000], (&redis, "keep:"), (&clickhouse, "keep", 200));
    let run = |text: &str| {
        commands::run_config(plan(text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap()
    };
    run(&text);
    let redis_rows =
        |connection: &mut redis::Connection| connection.keys::<_, Vec<String>>("keep:order_summary:*").map(|k| k.len());
    // Every column, so that a reader view reading a table without one of
    // its columns fails.
    let every_column = "SELECT * FROM keep.order_summary";
    let clickhouse_rows = |port: u16| match clickhouse_query(port, every_column) {
        Ok(rows) => Some(rows.lines().count()),
        Err(error) => {
            eprintln!("a ClickHouse reader failed: {error}");
            None
        }
    };
    let mut connection = redis.connection().unwrap();
    let before = (redis_rows(&mut connection).unwrap(), clickhouse_rows(clickhouse.http_port).unwrap());
    assert!(before.0 > 50 && before.0 == before.1, "{before:?}");

    let revenue = "revenue_cents:             { sum: total_cents,  where: \"status = 'placed'\" }";
    assert!(text.contains(revenue), "{text}");
    let changed = text
        .replace(revenue, "revenue_cents: { sum: total_cents, where: \"status = 'placed' and total_cents > 10000\" }");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    // Runs `text` with readers polling both stores; each must always find
    // at least `before` rows.
    let run_while_read = |step: &str, text: &str, before: (usize, usize)| {
        let stop = Arc::new(AtomicBool::new(false));
        let mut connection = redis.connection().unwrap();
        let redis_reader = reading_until(&stop, move || redis_rows(&mut connection).ok());
        let port = clickhouse.http_port;
        let clickhouse_reader = reading_until(&stop, move || clickhouse_rows(port));
        run(text);
        stop.store(true, Ordering::Relaxed);
        let (redis_reads, redis_fewest) = redis_reader.join().unwrap();
        let (clickhouse_reads, clickhouse_fewest) = clickhouse_reader.join().unwrap();
        assert!(redis_reads > 20 && clickhouse_reads > 5, "{step}: {redis_reads} and {clickhouse_reads} reads");
        assert!(
            redis_fewest >= Some(before.0),
            "{step}: a Redis reader found {redis_fewest:?} rows, fewer than {}",
            before.0
        );
        assert!(
            clickhouse_fewest >= Some(before.1),
            "{step}: a ClickHouse reader found {clickhouse_fewest:?} rows (None: no table), fewer than {}",
            before.1
        );
        let options = ValidateOptions { view: "order_summary".into(), sample_size: None, seed: 1 };
        let summary = validate(&plan(text, dir.path()), &options).unwrap();
        assert_eq!(summary.differences, 0, "{}", summary.report);
        assert!(summary.report.matches(": ok\n").count() >= 2, "{}", summary.report);
    };
    run_while_read("a changed filter", &changed, before);

    // A new measure: the ClickHouse sink's rows go into a rows table made
    // with the new columns, which is then renamed in place with a new
    // reader view.
    let after = (redis_rows(&mut connection).unwrap(), clickhouse_rows(clickhouse.http_port).unwrap());
    let cancellations = "cancellation_count:        { count: \"*\",        where: \"status = 'cancelled'\" }";
    assert!(changed.contains(cancellations), "{changed}");
    let widened =
        changed.replace(cancellations, &format!("{cancellations}\n      largest_order_cents: {{ max: total_cents }}"));
    run_while_read("a new measure", &widened, after);
    let largest = clickhouse.query("SELECT count() FROM keep.order_summary WHERE largest_order_cents > 0").unwrap();
    assert_eq!(largest.trim().parse::<usize>().unwrap(), after.1, "every row has the new measure");
    let tables = || clickhouse.query("SELECT name FROM system.tables WHERE database = 'keep' ORDER BY name").unwrap();
    assert!(!tables().contains("__old") && !tables().contains("__next"), "{}", tables());

    // The measure's type changed, and another measure went: the old rows
    // table cannot be given the new column, so the tables are renamed one
    // after the other, and meanwhile the old reader view, reading the new
    // table, must find the measure that went.
    let largest = "largest_order_cents: { max: total_cents }";
    let retyped = widened
        .replace(largest, "largest_order_cents: { max: created_at }")
        .replace(&format!("{cancellations}\n      "), "");
    assert!(!retyped.contains("cancellation_count") && retyped.contains("max: created_at"), "{retyped}");
    run_while_read("a measure of another type, another gone", &retyped, after);
    let retyped_column = "SELECT type FROM system.columns WHERE database = 'keep' AND table = 'order_summary' \
                          AND name = 'largest_order_cents'";
    let column_type = clickhouse.query(retyped_column).unwrap();
    assert!(column_type.contains("DateTime"), "{column_type}");
    let columns = || clickhouse.query("SELECT name FROM system.columns WHERE database = 'keep'").unwrap();
    assert!(!columns().contains("cancellation_count"), "{}", columns());
    assert!(!tables().contains("__old") && !tables().contains("__next"), "{}", tables());

    // The one measure back, the other removed again: the new tables lack a
    // column the old reader view reads, so it must never read them
    // (before, the two renames let it, and its readers failed for that
    // moment).
    run_while_read("the measure removed", &changed, after);
    assert!(!columns().contains("largest_order_cents") && columns().contains("cancellation_count"), "{}", columns());
    assert!(!tables().contains("__old") && !tables().contains("__next"), "{}", tables());
}

#[test]
fn drop_deletes_what_one_sink_holds_and_a_later_run_rebuilds_it() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = keyed(3000, 6).into_iter().map(|(_, line)| line).collect();
    let (_, text) = both_sinks_on_file(dir.path(), &lines, (&redis, "d:"), (&clickhouse, "dropped", 100));
    let config = dir.path().join("replay.yaml");
    std::fs::write(&config, &text).unwrap();
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let drop = |sink: &str| {
        Command::new(projector_binary())
            .args(["drop", "-c", config.to_str().unwrap(), "--sink", sink])
            .output()
            .unwrap()
    };

    let dropped = drop("order_summary_redis");
    assert!(dropped.status.success(), "{}", String::from_utf8_lossy(&dropped.stderr));
    let mut connection = redis.connection().unwrap();
    assert!(connection.keys::<_, Vec<String>>("d:order_summary:*").unwrap().is_empty());
    assert!(!connection.keys::<_, Vec<String>>("d:customer_ltv:*").unwrap().is_empty(), "other sinks stay");
    let state: std::collections::BTreeMap<String, String> =
        connection.hgetall("d:projector:sink:order_summary_redis").unwrap();
    assert!(!state.contains_key("positions"), "{state:?}");

    let dropped = drop("order_summary_ch");
    assert!(dropped.status.success(), "{}", String::from_utf8_lossy(&dropped.stderr));
    let tables = clickhouse.query("SELECT name FROM system.tables WHERE database = 'dropped' ORDER BY name").unwrap();
    assert!(!tables.contains("order_summary"), "{tables}");
    assert!(tables.contains("customer_ltv_rows"), "{tables}");

    let unknown = drop("nope");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no sink \"nope\"; this config declares"));

    // A later run rebuilds both; the others resume.
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let (found, report) = differences(&text, dir.path(), "order_summary");
    assert_eq!(found, 0, "{report}");
    assert!(report.matches(": ok\n").count() >= 2, "{report}");
}

#[test]
fn a_window_replay_of_a_view_kept_only_in_files_says_why_it_rebuilds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = keyed(500, 3).into_iter().map(|(_, line)| line).collect();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n{}\nsinks:\n  summary_file:\n    type: file\n    \
         view: order_summary\n    path: {}\n",
        events.display(),
        shipped_views_yaml(),
        dir.path().join("order_summary.jsonl").display(),
    );
    let config = dir.path().join("replay.yaml");
    std::fs::write(&config, &text).unwrap();

    let window = replay(&config, &["--view", "order_summary", "--from", "2024-03-01", "--to", "2024-03-02"]);
    let stderr = String::from_utf8_lossy(&window.stderr);
    assert_eq!(window.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no sinks a window replay can rebuild: \"summary_file\" holds the whole view"), "{stderr}");
    assert!(stderr.contains("without --from and --to"), "{stderr}");
    assert!(!dir.path().join("order_summary.jsonl").exists(), "a window replay writes no file");

    let whole = replay(&config, &["--view", "order_summary"]);
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    let (found, report) = differences(&text, dir.path(), "order_summary");
    assert_eq!(found, 0, "{report}");
}

/// One replay of a sink at a time: a replay whose sink another replay has
/// claimed (in Redis, or in ClickHouse's `projector_pauses`) is refused
/// before it builds anything, naming the other, and lets go of the claims
/// it took meanwhile; a claim that lapsed, or was released, or whose
/// replay ran on this machine and its process ended, is no bar; a replay
/// releases its own claims when it ends. (Before, both replays
/// built into the same shadows, and the first stopped, fenced.)
#[test]
fn a_replay_is_refused_while_another_replay_claims_its_sink() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let (redis, clickhouse) = (RedisServer::start(false), ClickHouseServer::start());
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = keyed(2000, 10).into_iter().map(|(_, line)| line).collect();
    let (_, text) = both_sinks_on_file(dir.path(), &lines, (&redis, "claim:"), (&clickhouse, "claim", 200));
    let config = dir.path().join("claim.yaml");
    std::fs::write(&config, &text).unwrap();
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let mut connection = redis.connection().unwrap();
    let key = "claim:projector:replaying:order_summary_redis";
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let clickhouse_claim = |token: &str, until: u64| {
        clickhouse
            .query(&format!(
                "INSERT INTO claim.projector_pauses (sink, token, kind, at, until) VALUES \
                 ('order_summary_ch', '{token}', 'replay', {}, {until})",
                now()
            ))
            .unwrap();
    };
    let refused = |sink: &str, store: &str| {
        let replayed = replay(&config, &["--view", "order_summary", "--ack-wait", "0"]);
        let stderr = String::from_utf8_lossy(&replayed.stderr).into_owned();
        assert!(!replayed.status.success(), "{stderr}");
        let expected = format!("another replay (replay-elsewhere) is rebuilding {store} sink \"{sink}\"");
        assert!(stderr.contains(&expected), "{expected}\nnot in\n{stderr}");
    };

    let _: () =
        redis::cmd("SET").arg(key).arg("replay-elsewhere").arg("PX").arg(60_000).query(&mut connection).unwrap();
    refused("order_summary_redis", "Redis");
    let _: () = connection.del(key).unwrap();
    clickhouse_claim("replay-elsewhere", now() + 60_000);
    refused("order_summary_ch", "ClickHouse");
    let left: Option<String> = connection.get(key).unwrap();
    assert_eq!(left, None, "the refused replay let go of the Redis claim it had taken");
    clickhouse_claim("replay-elsewhere", 0);

    // Claims of a replay of this machine whose process ended (killed with
    // SIGKILL, say) are taken over at once.
    let mut ended = Command::new("true").spawn().unwrap();
    let dead =
        format!("replay-{}-{}-1", std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), ended.id());
    ended.wait().unwrap();
    let _: () = redis::cmd("SET").arg(key).arg(&dead).arg("PX").arg(60_000).query(&mut connection).unwrap();
    clickhouse_claim(&dead, now() + 60_000);
    let replayed = replay(&config, &["--view", "order_summary", "--ack-wait", "0"]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));

    // Released in ClickHouse, lapsing in Redis: no bar.
    let _: () = redis::cmd("SET").arg(key).arg("replay-elsewhere").arg("PX").arg(300).query(&mut connection).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let replayed = replay(&config, &["--view", "order_summary", "--ack-wait", "0"]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let left: Option<String> = connection.get(key).unwrap();
    assert_eq!(left, None, "the replay released its claim");
    let claims = clickhouse
        .query(
            "SELECT count() FROM (SELECT token, argMax(until, at) AS lapses FROM claim.projector_pauses \
             WHERE kind = 'replay' GROUP BY token) WHERE lapses > 0",
        )
        .unwrap();
    assert_eq!(claims.trim(), "0", "no claim is left in ClickHouse");
}
