//! Kafka end to end: generated logs appended to a topic flow into the views
//! and equal the plain recomputation; bad records reach the dead-letter
//! topic; a restart rebuilds and loses nothing; a stop finishes and
//! flushes; partitions spread over workers; start positions; records that
//! retention deleted before the sinks read them.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use projector::commands;
use projector_core::config::{KafkaSourceConfig, StartPosition, check_text};
use projector_core::source::Source;
use projector_dataflows::runner::RunOptions;
use projector_datagen::{Generator, GeneratorConfig};
use projector_tests::{first_difference, kafka, read_json_lines, reference, shipped_config_text};

/// The shipped views and file sinks, fed from `topic`.
fn config_for(topic: &str, source_options: &str) -> String {
    let shipped = shipped_config_text();
    let start = shipped.find("\nsources:").unwrap();
    let end = shipped.find("\nviews:").unwrap();
    format!(
        "{}\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    dead_letter_topic: {topic}-dlq\n{source_options}{}",
        &shipped[..start],
        kafka::brokers(),
        &shipped[end..]
    )
}

fn generated(events: u64, seed: u64, bad_ratio: f64) -> Vec<(String, String)> {
    let config = GeneratorConfig { events, seed, bad_ratio, customers_per_store: 300, ..GeneratorConfig::default() };
    Generator::new(config).map(|record| (record.key, record.line)).collect()
}

fn run(config_text: &str, dir: &Path, options: RunOptions) {
    let plan = check_text(config_text, "kafka.yaml", dir).unwrap_or_else(|e| panic!("{e}"));
    commands::run_config(plan, options).unwrap();
}

/// The three views the run wrote equal the recomputation over `lines`.
fn assert_views_match(dir: &Path, lines: &[String]) {
    let log = reference::read(lines);
    let expected = [
        ("order_summary", reference::order_summary(&log.orders)),
        ("product_sales", reference::product_sales(&log.orders)),
        ("customer_ltv", reference::customer_ltv(&log.orders)),
    ];
    for (view, rows) in expected {
        let written = read_json_lines(&dir.join("out").join(format!("{view}.jsonl")));
        assert!(!rows.is_empty(), "the log should give {view} rows");
        assert_eq!(first_difference(&written, &rows), None, "view {view}");
    }
}

fn lines(records: &[(String, String)]) -> Vec<String> {
    records.iter().map(|(_, line)| line.clone()).collect()
}

#[test]
fn views_from_kafka_equal_the_recomputation_and_bad_records_reach_the_dead_letter_topic() {
    let topic = kafka::fresh_topic("views");
    let records = generated(12_000, 21, 0.01);
    kafka::append(&topic, records.clone());
    let dir = tempfile::tempdir().unwrap();
    run(&config_for(&topic, "    bounded: true\n"), dir.path(), RunOptions { workers: 2, ..RunOptions::default() });
    let all = lines(&records);
    assert_views_match(dir.path(), &all);

    let bad = reference::read(&all).bad_lines.len();
    assert!(bad > 50);
    let dead = kafka::read(&format!("{topic}-dlq"), bad);
    assert_eq!(dead.len(), bad);
    for letter in &dead {
        let header = |name: &str| letter.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(header("projector.source.topic").as_deref(), Some(topic.as_str()));
        assert!(header("projector.reason").is_some_and(|r| !r.is_empty()));
        assert!(header("projector.kind").is_some());
        let partition: u32 = header("projector.source.partition").unwrap().parse().unwrap();
        let offset: u64 = header("projector.source.offset").unwrap().parse().unwrap();
        assert!(partition < 4 && offset < records.len() as u64);
        // The original record: its bytes and its key.
        let original = records.iter().find(|(_, line)| line.as_bytes() == letter.value.as_slice());
        assert!(original.is_some(), "dead letter bytes are not an appended record");
        assert_eq!(letter.key.as_deref(), original.map(|(key, _)| key.as_bytes()));
    }
}

#[test]
fn a_restart_rebuilds_from_the_log_and_loses_or_doubles_nothing() {
    let topic = kafka::fresh_topic("restart");
    let first = generated(6_000, 31, 0.0);
    let second = generated(6_000, 32, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&topic, "    bounded: true\n");
    kafka::append(&topic, first.clone());
    run(&config, dir.path(), RunOptions { workers: 2, ..RunOptions::default() });
    assert_views_match(dir.path(), &lines(&first));
    kafka::append(&topic, second.clone());
    run(&config, dir.path(), RunOptions { workers: 1, ..RunOptions::default() });
    let mut both = lines(&first);
    both.extend(lines(&second));
    assert_views_match(dir.path(), &both);
}

#[test]
fn an_unbounded_run_follows_the_topic_and_a_stop_finishes_and_flushes() {
    let topic = kafka::fresh_topic("follow");
    let first = generated(3_000, 41, 0.0);
    kafka::append(&topic, first.clone());
    let dir = tempfile::tempdir().unwrap();
    let plan = check_text(&config_for(&topic, ""), "kafka.yaml", dir.path()).unwrap();
    let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
    let stop = Arc::clone(&options.stop);
    let progress = Arc::clone(&options.progress);
    let running = std::thread::spawn(move || commands::run_config(plan, options));
    let second = generated(3_000, 42, 0.0);
    let total = (first.len() + second.len()) as u64;
    kafka::append(&topic, second.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.records.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "the run did not read the appended records");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let summary = running.join().unwrap().unwrap();
    assert_eq!(summary.records, total);
    let mut both = lines(&first);
    both.extend(lines(&second));
    assert_views_match(dir.path(), &both);
}

fn source_config(topic: &str, start: StartPosition) -> KafkaSourceConfig {
    KafkaSourceConfig {
        brokers: kafka::brokers(),
        topic: topic.to_string(),
        start,
        bounded: true,
        batch_ms: 20,
        catch_up_batch_ms: projector_core::config::DEFAULT_CATCH_UP_BATCH_MS,
        dead_letter_topic: None,
        group_id: "projector-tests".into(),
        properties: Vec::new(),
    }
}

/// Records that come to a reader with nothing to read wake the thread it
/// was made on (a worker, which sleeps meanwhile).
#[test]
fn records_wake_the_thread_of_an_idle_reader() {
    let topic = kafka::fresh_topic("wake");
    let appended = kafka::append(&topic, generated(50, 55, 0.0));
    let source = projector_source_kafka::KafkaSource::new(
        0,
        KafkaSourceConfig { bounded: false, ..source_config(&topic, StartPosition::Earliest) },
        Instant::now(),
    );
    let mut reader = source.reader(0, 1).unwrap();
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < appended {
        assert!(Instant::now() < deadline, "read {read} of {appended}");
        reader.poll(1000, &mut |_| read += 1).unwrap();
    }
    // Empty now: a poll finds nothing, and the thread may sleep.
    reader.poll(1000, &mut |_| panic!("nothing more was appended")).unwrap();
    let topic_again = topic.clone();
    let appending = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        kafka::append(&topic_again, generated(5, 56, 0.0))
    });
    let asleep = Instant::now();
    // Parking may return early (spuriously, or for the token of an
    // earlier wake): sleep until records are there or a minute passed.
    let mut more = 0;
    while more == 0 && asleep.elapsed() < Duration::from_secs(60) {
        std::thread::park_timeout(Duration::from_secs(60));
        reader.poll(1000, &mut |_| more += 1).unwrap();
    }
    assert!(more > 0, "no records after a minute");
    assert!(
        asleep.elapsed() < Duration::from_secs(10),
        "the records woke the thread only after {:?}",
        asleep.elapsed()
    );
    appending.join().unwrap();
}

#[test]
fn partitions_spread_over_the_workers() {
    let topic = kafka::fresh_topic("spread");
    kafka::append(&topic, generated(200, 51, 0.0));
    let source =
        projector_source_kafka::KafkaSource::new(0, source_config(&topic, StartPosition::Earliest), Instant::now());
    let owned = |worker| -> Vec<u32> {
        let reader = source.reader(worker, 2).unwrap();
        reader.positions().0.keys().map(|(_, partition)| *partition).collect()
    };
    assert_eq!(owned(0), [0, 2]);
    assert_eq!(owned(1), [1, 3]);
}

/// The value of the `/metrics` line that starts with `prefix`, if any.
fn metric(address: &str, prefix: &str) -> Option<u64> {
    let text = projector_tests::services::http_get(address, "/metrics")?;
    text.lines().find_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
}

/// An idle run's workers sleep until their batch ends, not a minute
/// (`idle_wait`), so the batch of records that come meanwhile ends on time.
#[test]
fn the_batch_of_records_that_come_to_an_idle_run_ends_on_time() {
    const BATCH: Duration = Duration::from_secs(1);
    let topic = kafka::fresh_topic("wake");
    let first = generated(100, 54, 0.0);
    let mut total = kafka::append(&topic, first);
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", projector_tests::services::free_port());
    let ms = BATCH.as_millis();
    let options = format!("    batch_ms: {ms}\n    catch_up_batch_ms: {ms}\napi:\n  listen: {address}\n");
    let plan = check_text(&config_for(&topic, &options), "kafka.yaml", dir.path()).unwrap();
    let options =
        RunOptions { workers: 2, until_idle: false, idle_wait: Duration::from_secs(60), ..RunOptions::default() };
    let stop = Arc::clone(&options.stop);
    let running = std::thread::spawn(move || commands::run_config(plan, options));
    let reflected = || metric(&address, "projector_view_events{view=\"order_summary\"}").unwrap_or(0);
    let until = |what: &str, done: &dyn Fn() -> bool, within: Duration| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < within, "{what} took over {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until("the first records", &|| reflected() >= total, Duration::from_secs(30));
    for round in 0..4 {
        // Idle a while, then a few records.
        std::thread::sleep(Duration::from_millis(300));
        total += kafka::append(&topic, generated(20, 60 + round, 0.0));
        until("the batch of appended records", &|| reflected() >= total, BATCH * 2);
    }
    stop.store(true, Ordering::Relaxed);
    let summary = running.join().unwrap().unwrap();
    assert_eq!(summary.records, total);
}

/// The `projector_source_*` lines of `/metrics` at `address`: per
/// partition, its end offset and its lag.
fn source_metrics(address: &str) -> (std::collections::BTreeMap<u32, u64>, std::collections::BTreeMap<u32, u64>) {
    let text = projector_tests::services::http_get(address, "/metrics").unwrap_or_default();
    let (mut ends, mut lags) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for line in text.lines() {
        let Some((name, rest)) = line.split_once("{source=\"events\",partition=\"") else { continue };
        let (partition, value) = rest.split_once("\"} ").unwrap();
        let found = match name {
            "projector_source_end_offset" => &mut ends,
            "projector_source_lag_records" => &mut lags,
            _ => continue,
        };
        found.insert(partition.parse().unwrap(), value.parse().unwrap());
    }
    (ends, lags)
}

/// `/metrics` gives each partition's end offset and its lag: the records
/// not every view reflects. A run whose batches have not closed yet lags
/// by every record; one that caught up, by none.
#[test]
fn metrics_give_each_partition_s_end_offset_and_lag() {
    let topic = kafka::fresh_topic("lag");
    let appended = kafka::append(&topic, generated(400, 53, 0.0));
    for (batch_ms, lagging) in [(600_000, true), (20, false)] {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", projector_tests::services::free_port());
        let options =
            format!("    batch_ms: {batch_ms}\n    catch_up_batch_ms: {batch_ms}\napi:\n  listen: {address}\n");
        let plan = check_text(&config_for(&topic, &options), "kafka.yaml", dir.path()).unwrap();
        let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
        let stop = Arc::clone(&options.stop);
        let running = std::thread::spawn(move || commands::run_config(plan, options));
        let deadline = Instant::now() + Duration::from_secs(30);
        let (ends, lags) = loop {
            let (ends, lags) = source_metrics(&address);
            let settled = if lagging { !lags.is_empty() } else { !lags.is_empty() && lags.values().all(|l| *l == 0) };
            if ends.values().sum::<u64>() == appended && settled {
                break (ends, lags);
            }
            assert!(Instant::now() < deadline, "/metrics: ends {ends:?}, lags {lags:?}");
            std::thread::sleep(Duration::from_millis(100));
        };
        stop.store(true, Ordering::Relaxed);
        running.join().unwrap().unwrap();
        assert_eq!(ends.len(), 4, "{ends:?}");
        let expected: std::collections::BTreeMap<u32, u64> =
            ends.iter().map(|(partition, end)| (*partition, if lagging { *end } else { 0 })).collect();
        assert_eq!(lags, expected);
    }
}

/// A topic that does not exist is named with the broker's topics (a
/// misspelt name shows among them) and how to create it.
#[test]
fn a_missing_topic_is_named_with_the_topics_there_are() {
    let topic = kafka::fresh_topic("present");
    kafka::append(&topic, generated(10, 52, 0.0));
    let misspelt = format!("{topic}x");
    let error =
        projector_source_kafka::source::watermarks(&kafka::brokers(), &[], &misspelt, Some(Duration::from_secs(1)))
            .unwrap_err()
            .to_string();
    let at = kafka::brokers();
    assert!(error.contains(&format!("cannot read topic {misspelt:?} at {at}: the topic does not exist")), "{error}");
    let known = error.split("the broker's topics: ").nth(1).and_then(|rest| rest.split(')').next()).unwrap();
    assert!(known.split(", ").any(|name| name == topic), "{topic} is not among {known}");
    assert!(error.contains(&format!("--create --topic {misspelt} --partitions")), "{error}");
}

/// While the readers of a topic catch up, the records of both workers go
/// to one batch, though the readers started apart and time passes: else
/// each view would be computed and written once over one worker's records,
/// then again over all.
#[test]
fn readers_catching_up_on_two_workers_share_one_batch() {
    let topic = kafka::fresh_topic("one-batch");
    let appended = kafka::append(&topic, generated(4_000, 71, 0.0));
    let config =
        KafkaSourceConfig { batch_ms: 1, catch_up_batch_ms: 600_000, ..source_config(&topic, StartPosition::Earliest) };
    let source = projector_source_kafka::KafkaSource::new(0, config, Instant::now());
    let mut readers = vec![source.reader(0, 2).unwrap()];
    // The second worker starts some batches later.
    std::thread::sleep(Duration::from_millis(30));
    readers.push(source.reader(1, 2).unwrap());
    let (mut epochs, mut records, mut finished) = (std::collections::BTreeSet::new(), 0u64, [false, false]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished != [true, true] {
        assert!(Instant::now() < deadline, "the readers did not reach the end of the topic");
        for (worker, reader) in readers.iter_mut().enumerate() {
            if finished[worker] {
                continue;
            }
            match reader.poll(100, &mut |_| records += 1).unwrap() {
                projector_core::source::Poll::Records { epoch } => {
                    epochs.insert(epoch);
                }
                projector_core::source::Poll::Idle { .. } => {}
                projector_core::source::Poll::Finished => finished[worker] = true,
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert_eq!(records, appended);
    assert_eq!(epochs.len(), 1, "the records went to batches {epochs:?}");
}

/// A transactional producer's commit leaves a marker at the end of each
/// partition it wrote: an offset no consumer receives. A bounded read still
/// ends there, a reader counts as caught up there (readiness, `export`, a
/// restart's catch-up), and the positions it reports (the sinks'
/// checkpoints) are past the marker, so `status` shows no lag.
#[test]
fn reads_end_at_a_topic_that_ends_in_transaction_markers() {
    let topic = kafka::create_topic("txn-markers", 2);
    let records = generated(1_000, 81, 0.0);
    let appended = kafka::append(&topic, records.clone());
    let ends: Vec<i64> = (0..2).map(|partition| kafka::append_commit_marker(&topic, partition) + 1).collect();

    let source =
        projector_source_kafka::KafkaSource::new(0, source_config(&topic, StartPosition::Earliest), Instant::now());
    let mut reader = source.reader(0, 1).unwrap();
    let (mut read, deadline) = (0u64, Instant::now() + Duration::from_secs(30));
    loop {
        assert!(Instant::now() < deadline, "the bounded read did not end; at {:?}, ends {ends:?}", reader.positions());
        match reader.poll(500, &mut |_| read += 1).unwrap() {
            projector_core::source::Poll::Finished => break,
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    assert_eq!(read, appended);
    assert!(reader.caught_up());
    let at: Vec<i64> = reader.positions().0.values().map(|next| *next as i64).collect();
    assert_eq!(at, ends, "the positions stop short of the markers");

    // A whole run, bounded, on two workers, in a thread: on a reader that
    // waits for the markers it would never end.
    let (done, finished) = std::sync::mpsc::channel();
    let text = config_for(&topic, "    bounded: true\n");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_path_buf();
    std::thread::spawn(move || {
        run(&text, &out, RunOptions { workers: 2, ..RunOptions::default() });
        let _ = done.send(());
    });
    finished.recv_timeout(Duration::from_secs(60)).expect("the bounded run did not end at the markers");
    assert_views_match(dir.path(), &lines(&records));
}

#[test]
fn start_positions_choose_what_is_read() {
    let topic = kafka::fresh_topic("start");
    let first = generated(2_000, 61, 0.0);
    kafka::append(&topic, first.clone());
    // Where the first part ends, per partition.
    let source =
        projector_source_kafka::KafkaSource::new(0, source_config(&topic, StartPosition::Latest), Instant::now());
    let ends: Vec<(u32, u64)> =
        source.reader(0, 1).unwrap().positions().0.iter().map(|((_, partition), next)| (*partition, *next)).collect();
    let second = generated(2_000, 62, 0.0);
    kafka::append(&topic, second.clone());

    let offsets: String = ends.iter().map(|(p, o)| format!("        {p}: {o}\n")).collect();
    let dir = tempfile::tempdir().unwrap();
    run(
        &config_for(&topic, &format!("    bounded: true\n    start:\n      offsets:\n{offsets}")),
        dir.path(),
        RunOptions { workers: 2, ..RunOptions::default() },
    );
    assert_views_match(dir.path(), &lines(&second));

    let latest = tempfile::tempdir().unwrap();
    run(&config_for(&topic, "    bounded: true\n    start: latest\n"), latest.path(), RunOptions::default());
    assert!(read_json_lines(&latest.path().join("out/order_summary.jsonl")).is_empty());
}

#[test]
fn a_timestamp_start_takes_the_offsets_the_broker_gives() {
    // The mock broker answers every offsets-for-times request with the end
    // of the partition (SERVICES.md), so a timestamp start reads nothing
    // there; on a real broker it is the first record at or after the time.
    let topic = kafka::fresh_topic("by-time");
    kafka::append(&topic, generated(500, 71, 0.0));
    let dir = tempfile::tempdir().unwrap();
    run(
        &config_for(&topic, "    bounded: true\n    start: { timestamp: \"2024-03-01T00:00:00Z\" }\n"),
        dir.path(),
        RunOptions::default(),
    );
    let rows = read_json_lines(&dir.path().join("out/order_summary.jsonl"));
    assert!(rows.is_empty(), "the mock gives the end offsets: {rows:?}");
}

/// Retention for real: the mock broker keeps at most 5 MiB per partition
/// and deletes its oldest records beyond that, as a topic's retention
/// would. A pipeline with Redis sinks reads a one-partition topic and
/// stops; the topic then grows until records the sinks had not read are
/// deleted. `status` shows the partition's first offset, names the sinks
/// that stand before it and fails; `run` refuses to go on and writes
/// nothing; `validate` says that the log lacks the deleted records, and
/// `export` warns of it;
/// `replay` refuses to rebuild from what is left unless told the records
/// were never read, and refuses sinks that stand before the start anyway.
/// The state snapshot that stands before the start is marked by `status`
/// and refused by `run` until deleted. Dropped and rebuilt by a run, the
/// sinks then replay and validate clean.
#[test]
fn records_deleted_before_the_sinks_read_them_are_named_by_status_and_refused_by_run_and_replay() {
    use projector_tests::services::{RedisServer, available};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use redis::Commands;
    if !available("redis-server") {
        return;
    }
    let server = RedisServer::start(false);
    let topic = kafka::create_topic("retention", 1);
    let records = generated(2_000, 51, 0.0);
    kafka::append(&topic, records[..2_000].iter().cloned());
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("state.parquet");
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    bounded: true\n{}\nsinks:\n{}state:\n  path: {}\n  every_ms: 600000\n",
        kafka::brokers(),
        projector_tests::shipped_views_yaml(),
        projector_tests::sinks::redis_sinks_yaml(&server.url(), "retention:"),
        snapshot.display()
    );
    let plan = || check_text(&text, "retention.yaml", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    commands::run_config(plan(), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let mut connection = server.connection().unwrap();
    let state = "retention:projector:sink:order_summary_redis";
    let checkpoint: String = connection.hget(state, "positions").unwrap();
    assert_eq!(checkpoint, r#"{"events":{"0":2000}}"#);

    // More, until the broker drops the oldest records (it keeps 5 MiB of
    // lz4 batches), the sinks' next ones among them.
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka::brokers()).create().unwrap();
    let mut total = 2_000;
    let (first, end) = loop {
        total += kafka::append(&topic, generated(10_000, 52 + total as u64, 0.0)) as i64;
        let (first, end) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap();
        if first > 2_000 || total > 300_000 {
            break (first, end);
        }
    };
    assert_eq!(end, total);
    assert!(first > 2_000, "the broker still holds the records from {first} on, of {total}");
    let (report, error) = projector::status::status(&plan()).unwrap_err();
    let row = format!("          0  {first:>12}          2000  {total:>12}  {:>10}", total - 2000);
    assert!(report.contains(&row), "{row}\nnot in\n{report}");
    let named = format!(
        "before the start of the log: it stands at offset 2000 of partition 0 of source events, which now starts \
         at {first}"
    );
    assert_eq!(report.matches(&named).count(), 3, "{named}\nnot three times in\n{report}");
    let marked = format!("{}: at {{\"events\":{{\"0\":2000}}}}, written", snapshot.display());
    assert!(report.contains(&marked), "{marked}\nnot in\n{report}");
    let snapshot_before = format!(
        "before the start of the log (offset 2000 of partition 0 of source events, which now starts at {first}): a \
         run refuses to start from it"
    );
    assert!(report.contains(&snapshot_before), "{snapshot_before}\nnot in\n{report}");
    assert!(error.to_string().contains("sink order_summary_redis: stands before the start"), "{error}");

    let refused = commands::run_config(plan(), RunOptions { workers: 2, ..RunOptions::default() }).unwrap_err();
    let expected =
        format!("stands at offset 2000 of partition 0 of source \"events\", but the log there now starts at {first}");
    assert!(refused.to_string().contains(&expected), "{refused}");
    let after: String = connection.hget(state, "positions").unwrap();
    assert_eq!(after, checkpoint, "the refused run wrote nothing");

    // `validate` says why the log cannot give the sinks' rows any more.
    let options = projector::validate::ValidateOptions { view: "order_summary".into(), sample_size: None, seed: 1 };
    let validation = projector::validate::validate(&plan(), &options).unwrap();
    let note =
        format!("note: partition 0 of source \"events\" now starts at offset {first}, not at 0 where the config");
    assert!(validation.report.starts_with(&note), "{note}\nnot first in\n{}", validation.report);
    assert!(validation.differences > 0, "{}", validation.report);
    // `export` warns that its view lacks them.
    let config = dir.path().join("retention.yaml");
    std::fs::write(&config, &text).unwrap();
    let exported = std::process::Command::new(projector_tests::services::projector_binary())
        .args(["export", "-c", config.to_str().unwrap(), "--view", "order_summary", "--out"])
        .arg(dir.path().join("order_summary.parquet"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert!(exported.status.success(), "{stderr}");
    let warned = format!(
        "partition 0 of source \"events\" now starts at offset {first}, not at 0 where the config starts reading \
         it: the records between were deleted"
    );
    assert!(stderr.contains(&warned), "{warned}\nnot in\n{stderr}");

    // `replay` refuses: the view rebuilt from what the topic holds would
    // lack the deleted events. Told they were never read, it still refuses
    // sinks that stand before the start of the log.
    let replay = |accept_deleted_records: bool| {
        let options = projector::replay::ReplayOptions {
            views: vec!["order_summary".into()],
            from: None,
            to: None,
            ack_wait: Duration::ZERO,
            progress_bar: false,
            checkpoint_every: None,
            accept_deleted_records,
        };
        projector::replay::replay(&plan(), &options, RunOptions { workers: 2, ..RunOptions::default() })
    };
    let refused = replay(false).map(|_| ()).unwrap_err().to_string();
    let front = format!("partition 0 of source \"events\" now starts at offset {first}, not at 0 where the config");
    assert!(refused.contains(&front) && refused.contains("--accept-deleted-records"), "{refused}");
    let refused = replay(true).map(|_| ()).unwrap_err().to_string();
    let before = format!(
        "sink \"order_summary_redis\" stands at offset 2000 of partition 0 of source \"events\", before the start of \
         the log ({first})"
    );
    assert!(refused.contains(&before), "{refused}");

    // The way out: drop the sinks and run again, from what the log holds.
    // Then a replay told the deleted records were never read rebuilds the
    // view from the same records, and changes nothing.
    for view in ["order_summary", "product_sales", "customer_ltv"] {
        commands::drop_sink(&plan(), &format!("{view}_redis")).unwrap();
    }
    // The state snapshot stands before the start too: the run refuses it
    // until it is deleted, as the README says.
    let refused = commands::run_config(plan(), RunOptions { workers: 2, ..RunOptions::default() }).unwrap_err();
    let expected = format!(
        "the state snapshot {} stands at offset 2000 of partition 0 of source \"events\", but the log there now \
         starts at {first}",
        snapshot.display()
    );
    assert!(refused.to_string().contains(&expected), "{expected}\nnot in\n{refused}");
    std::fs::remove_file(&snapshot).unwrap();
    let _ = std::fs::remove_file(projector_sink_parquet::previous_path(&snapshot));
    commands::run_config(plan(), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let rebuilt: String = connection.hget(state, "positions").unwrap();
    assert_eq!(rebuilt, format!(r#"{{"events":{{"0":{total}}}}}"#));
    assert!(replay(false).is_err());
    let replayed = replay(true).unwrap();
    assert_eq!(replayed.swaps.len(), 1);
    assert!(replayed.swaps[0].rows > 0);
    assert_eq!((replayed.swaps[0].rewritten, replayed.swaps[0].deleted), (0, 0));
    let validation = projector::validate::validate(&plan(), &options).unwrap();
    assert!(validation.report.starts_with(&note), "{}", validation.report);
    assert_eq!(validation.differences, 0, "{}", validation.report);
}

/// A replay whose live sinks stand past the end of the topic (the topic was
/// deleted and created anew, or the config names another one) is refused
/// at once, as a run is. Before, the replay read what the topic held and
/// then waited for its shadow to reach the sinks' offsets, forever.
#[test]
fn a_replay_refuses_sinks_past_the_end_of_the_topic() {
    use projector_tests::services::{RedisServer, available};
    if !available("redis-server") {
        return;
    }
    let server = RedisServer::start(false);
    let (first, second) = (kafka::create_topic("old-log", 1), kafka::create_topic("new-log", 1));
    let old = kafka::append(&first, generated(2_000, 61, 0.0));
    let new = kafka::append(&second, generated(100, 62, 0.0));
    let dir = tempfile::tempdir().unwrap();
    let text = |topic: &str, bounded: bool| {
        format!(
            "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    bounded: {bounded}\n{}\nsinks:\n{}",
            kafka::brokers(),
            projector_tests::shipped_views_yaml(),
            projector_tests::sinks::redis_sinks_yaml(&server.url(), "moved:")
        )
    };
    let plan = |text: &str| check_text(text, "moved.yaml", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    commands::run_config(plan(&text(&first, true)), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();

    let options = projector::replay::ReplayOptions {
        views: vec!["customer_ltv".into()],
        from: None,
        to: None,
        ack_wait: Duration::ZERO,
        progress_bar: false,
        checkpoint_every: None,
        accept_deleted_records: false,
    };
    // The live config: the topic is followed, not read to its end.
    let moved = plan(&text(&second, false));
    let (done, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let replayed = projector::replay::replay(&moved, &options, RunOptions { workers: 2, ..RunOptions::default() });
        let _ = done.send(replayed.map(|_| ()).map_err(|e| e.to_string()));
    });
    let refused = answer.recv_timeout(Duration::from_secs(60)).expect("the replay did not end").unwrap_err();
    let expected = format!(
        "sink \"customer_ltv_redis\" stands at offset {old} of partition 0 of source \"events\", past the end of the \
         log there ({new})"
    );
    assert!(refused.contains(&expected), "{refused}");
}
