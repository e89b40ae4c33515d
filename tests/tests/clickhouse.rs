//! The ClickHouse sink against a real `clickhouse-server` (Debian's 18.16
//! here): the views land as versioned rows and read back through the sink's
//! view (`FINAL`) equal to the recomputation; a restart resumes from the
//! sink's checkpoint; ClickHouse down for 30 s while events flow, then up:
//! the pipeline waits and converges; a fenced older generation writes
//! nothing; rows a dead run never committed (found at the start, or landing
//! later) make the view rewritten above them, so that no committed row a
//! merge put them in place of is lost; a replay of a view whose rewrite is
//! pending swaps the whole view in; a checkpoints table of an older build
//! gets the `newest_event_at` column reads report.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use projector::validate::{ValidateOptions, validate};
use projector::{commands, components};
use projector_core::config::SinkKind;
use projector_core::config::{PipelinePlan, check_text};
use projector_core::sink::{
    Selection, SinkError, SourcePositions, ViewBatch, ViewChange, ViewReader, ViewRows, ViewSink, positions_to_json,
};
use projector_core::value::{Row, Timestamp, Value};
use projector_dataflows::runner::RunOptions;
use projector_datagen::{Generator, GeneratorConfig};
use projector_sink_clickhouse::ClickHouseViewReader;
use projector_tests::services::{ClickHouseServer, available, projector_binary};
use projector_tests::sinks::{assert_clickhouse_holds, clickhouse_covered, clickhouse_sinks_yaml, one_summary_row};
use projector_tests::{kafka, shipped_views_yaml};

/// The shipped views with `sources` and one ClickHouse sink per view.
fn config(sources: &str, url: &str, database: &str) -> String {
    format!(
        "version: 1\nsources:\n{sources}{}\nsinks:\n{}",
        shipped_views_yaml(),
        clickhouse_sinks_yaml(url, database, 200)
    )
}

/// [`config`] for tests that drive a sink by hand: the source is a
/// placeholder no run reads.
fn sinks_alone(server: &ClickHouseServer, database: &str) -> String {
    config("  events:\n    type: file\n    path: none.jsonl\n", &server.url(), database)
}

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "clickhouse.yaml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// The first sink of the first view (`order_summary_ch`), made anew.
fn first_sink(plan: &PipelinePlan) -> Box<dyn ViewSink> {
    components::outputs(plan).unwrap().view_sinks.remove(0).remove(0).1
}

/// What the runner does with a sink that claims no position: resets it
/// and hands it the whole view (`rows`, at `positions`) in its first batch.
fn rewrite_whole_view(sink: &mut dyn ViewSink, rows: &ViewRows, positions: &SourcePositions) {
    let mut changes: Vec<ViewChange> =
        rows.iter().map(|(key, values)| ViewChange { key: key.clone(), values: values.clone(), diff: 1 }).collect();
    changes.sort();
    sink.reset().unwrap();
    sink.apply(ViewBatch { changes: &changes, upper: 1, positions, newest_event_at: None, rows }).unwrap();
    sink.finish().unwrap();
}

/// A reader of the first sink (`order_summary_ch`), as the read API makes it.
fn summary_reader(plan: &PipelinePlan) -> ClickHouseViewReader {
    let SinkKind::ClickHouse(sink_config) = &plan.config.sinks[0].kind else { panic!("a ClickHouse sink") };
    let view = plan.view("order_summary").unwrap();
    ClickHouseViewReader::new("order_summary_ch", view, sink_config, vec!["events".into()]).unwrap()
}

fn generation(server: &ClickHouseServer, database: &str, sink: &str) -> u64 {
    let sql = format!("SELECT max(generation) FROM {database}.projector_checkpoints WHERE sink = '{sink}'");
    server.query(&sql).unwrap().trim().parse().unwrap()
}

#[test]
fn clickhouse_holds_the_views_and_resumes_after_a_restart() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let generator = GeneratorConfig { events: 6000, seed: 31, bad_ratio: 0.01, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(generator).map(|r| r.line).collect();
    let events = dir.path().join("events.jsonl");
    write_lines(&events, &lines[..3500]);
    let text = config(&format!("  events:\n    type: file\n    path: {}\n", events.display()), &server.url(), "resume");
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    assert_clickhouse_holds(&server, "resume", &lines[..3500]);
    assert_eq!(generation(&server, "resume", "customer_ltv_ch"), 1);

    write_lines(&events, &lines);
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 1, ..RunOptions::default() }).unwrap();
    assert_clickhouse_holds(&server, "resume", &lines);
    assert_eq!(generation(&server, "resume", "customer_ltv_ch"), 2);
    let positions = server
        .query("SELECT argMax(positions, generation * 4294967296 + seq) FROM resume.projector_checkpoints WHERE sink = 'order_summary_ch'")
        .unwrap();
    assert_eq!(positions.trim(), format!(r#"{{"events":{{"0":{}}}}}"#, lines.len() + 1));

    // `projector status` shows each sink's generation and checkpoint.
    let status = projector::status::status(&plan(&text, dir.path())).unwrap();
    let end = lines.len() + 1;
    for view in projector_tests::sinks::VIEWS {
        let line = format!(
            "sink {view}_ch (clickhouse, view {view})\n  generation 2, checkpoint {{\"events\":{{\"0\":{end}}}}}, newest data"
        );
        assert!(status.contains(&line), "{line}\nnot in\n{status}");
    }
    assert!(status.contains(&format!("          0  {end:>12}  {end:>12}           0")), "{status}");
}

#[test]
fn a_fenced_older_generation_writes_nothing() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&sinks_alone(&server, "fence"), dir.path());
    let mut older = first_sink(&plan);
    let mut newer = first_sink(&plan);
    assert_eq!(older.resume().unwrap(), None);
    assert_eq!(newer.resume().unwrap(), None);

    let (changes, rows, positions) = one_summary_row();
    let batch = ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &rows };
    older.apply(batch).unwrap();
    match older.finish() {
        Err(SinkError::Fatal(message)) => assert!(message.contains("fenced"), "{message}"),
        other => panic!("the older generation's write should be refused, got {other:?}"),
    }
    assert_eq!(server.query("SELECT count() FROM fence.order_summary_rows").unwrap().trim(), "0");

    newer.apply(batch).unwrap();
    newer.finish().unwrap();
    let row = server.query("SELECT store_id, date, revenue_cents FROM fence.order_summary").unwrap();
    assert_eq!(row, "1\t2022-01-08\t500\n");

    // A run that died between its rows and its checkpoint left a row behind
    // (generation 2, batch 7, never committed): the next run claims no
    // position, rewrites the whole view above it, and then deletes it.
    let uncommitted = (2u64 << 32) | 7;
    server
        .query(&format!(
            "INSERT INTO fence.order_summary_rows VALUES (2, '2022-01-09', 1, 999, 999, 0, 0, {uncommitted})"
        ))
        .unwrap();
    assert_eq!(server.query("SELECT count() FROM fence.order_summary").unwrap().trim(), "2");
    let mut next = first_sink(&plan);
    assert_eq!(next.resume().unwrap(), None);
    rewrite_whole_view(next.as_mut(), &rows, &positions);
    assert_eq!(server.query("SELECT store_id FROM fence.order_summary").unwrap(), "1\n");
    let left = format!("SELECT count() FROM fence.order_summary_rows WHERE _version = {uncommitted}");
    assert_eq!(server.query(&left).unwrap().trim(), "0");
    // So the run after it resumes from its checkpoint.
    assert_eq!(first_sink(&plan).resume().unwrap(), Some(positions));
}

/// A run killed just after it sent an `INSERT` can have the server take
/// it only after the next run started (the server had not started it
/// yet). Such rows are void all the same, but a merge may already have put
/// them in place of committed rows (see the test below), so they cannot
/// just be deleted: the run that finds them starts over, and the next one
/// rewrites the whole view above them before it deletes them. Every run's
/// start looks at what any earlier run's claim declared void. Before, such
/// a late tombstone hid a committed row for good.
#[test]
fn rows_a_dead_run_sent_that_land_late_make_the_view_rewritten() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&sinks_alone(&server, "late"), dir.path());
    let (changes, rows, positions) = one_summary_row();
    let batch =
        |upper| ViewBatch { changes: &changes, upper, positions: &positions, newest_event_at: None, rows: &rows };
    let summary =
        || server.query("SELECT store_id, date, revenue_cents FROM late.order_summary ORDER BY store_id").unwrap();
    // A tombstone of the committed row, at batch `seq` of generation 1,
    // which it never committed: what a dead run's late `INSERT` of a
    // deletion leaves.
    let late_tombstone = |seq: u64| {
        let version = (1u64 << 32) | seq;
        server
            .query(&format!("INSERT INTO late.order_summary_rows VALUES (1, '2022-01-08', 0, 0, 0, 0, 1, {version})"))
            .unwrap();
    };
    let pause = || std::thread::sleep(Duration::from_millis(300));

    // Generation 1 commits the row, and dies.
    let mut first = first_sink(&plan);
    assert_eq!(first.resume().unwrap(), None);
    first.apply(batch(1)).unwrap();
    first.finish().unwrap();
    drop(first);
    assert_eq!(summary(), "1\t2022-01-08\t500\n");

    // Generation 2 starts; then the late tombstone lands. Its next batch
    // finds it, and the run starts over.
    let mut second = first_sink(&plan);
    assert_eq!(second.resume().unwrap(), Some(positions.clone()));
    late_tombstone(9);
    assert_eq!(summary(), "", "the late tombstone hides the committed row");
    pause();
    match second.apply(ViewBatch { changes: &[], ..batch(2) }) {
        Err(SinkError::Lost(message)) => assert!(message.contains("never committed"), "{message}"),
        other => panic!("the run should start over, got {other:?}"),
    }
    drop(second);

    // Generation 3 rewrites the view above it, and deletes it.
    let mut third = first_sink(&plan);
    assert_eq!(third.resume().unwrap(), None);
    let key: Row = vec![Value::UInt(2), Value::Date(19_001)].into();
    let values: Row = vec![Value::Int(1), Value::Int(700), Value::Int(700), Value::Int(0)].into();
    let mut both_rows = rows.clone();
    both_rows.insert(key, values);
    rewrite_whole_view(third.as_mut(), &both_rows, &positions);
    let both = "1\t2022-01-08\t500\n2\t2022-01-09\t700\n";
    assert_eq!(summary(), both);
    // Above generation 1's commit (batch 1) and below generation 3: void.
    let void = format!(
        "SELECT count() FROM late.order_summary_rows WHERE _version > {} AND _version < {}",
        (1u64 << 32) | 1,
        3u64 << 32
    );
    assert_eq!(server.query(&void).unwrap().trim(), "0");

    // Once it has rewritten the view, a late row it finds is harmless (its
    // version is below the rewrite's) and deleted.
    late_tombstone(10);
    assert_eq!(summary(), both);
    pause();
    third
        .apply(ViewBatch { changes: &[], upper: 2, positions: &positions, newest_event_at: None, rows: &both_rows })
        .unwrap();
    assert_eq!(server.query(&void).unwrap().trim(), "0");
    drop(third);

    // Generation 3 dies; a last late tombstone of generation 1 lands. The
    // next run's start finds it (generation 2's claim declared it void) and
    // rewrites the view again.
    late_tombstone(11);
    let mut fourth = first_sink(&plan);
    assert_eq!(fourth.resume().unwrap(), None);
    rewrite_whole_view(fourth.as_mut(), &both_rows, &positions);
    assert_eq!(summary(), both);
    assert_eq!(server.query(&void).unwrap().trim(), "0");
    assert_eq!(first_sink(&plan).resume().unwrap(), Some(positions));
}

/// `ReplacingMergeTree` keeps only the highest version of a key when it
/// merges parts, so a merge of the part holding a committed row with the
/// part of an uncommitted change of the same key (a run that died between
/// the two) drops the committed row. Deleting the uncommitted one then
/// left the key with no row at all: the committed `product_sales` row the
/// crash test found missing in ClickHouse on 2026-11-28 and 2026-11-29.
/// The next run must find such rows and rewrite every key above them.
#[test]
fn a_committed_row_a_merge_dropped_for_an_uncommitted_change_comes_back() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&sinks_alone(&server, "merged"), dir.path());
    let (changes, rows, positions) = one_summary_row();
    let summary = || server.query("SELECT store_id, date, revenue_cents FROM merged.order_summary").unwrap();

    // Generation 1 commits the row; then it sends a change of it (batch 9)
    // and dies before the checkpoint.
    let reader = summary_reader(&plan);
    let mut first = first_sink(&plan);
    assert_eq!(first.resume().unwrap(), None);
    // The run's claim says no position yet: the read API answers with
    // none (it once failed to parse the claim's empty positions).
    let read = reader.select(&Selection::default()).unwrap();
    assert!(read.rows.is_empty() && read.positions.0.is_empty());
    first
        .apply(ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &rows })
        .unwrap();
    first.finish().unwrap();
    drop(first);
    let uncommitted = (1u64 << 32) | 9;
    server
        .query(&format!(
            "INSERT INTO merged.order_summary_rows VALUES (1, '2022-01-08', 1, 999, 999, 0, 0, {uncommitted})"
        ))
        .unwrap();
    // A merge before the next run starts keeps the uncommitted version only.
    server.query("OPTIMIZE TABLE merged.order_summary_rows FINAL").unwrap();
    assert_eq!(server.query("SELECT count() FROM merged.order_summary_rows").unwrap().trim(), "1");

    // The next run finds the uncommitted row, claims no position, and
    // rewrites the view above it.
    let mut next = first_sink(&plan);
    assert_eq!(next.resume().unwrap(), None);
    // Until the rewrite commits, readers find the rows with no position,
    // `status` says the view is being rebuilt, and `validate` says so
    // instead of comparing rows that are no prefix of the log.
    assert_eq!(reader.select(&Selection::default()).unwrap().rows.len(), 1);
    std::fs::write(dir.path().join("none.jsonl"), "").unwrap();
    let status = projector::status::status(&plan).unwrap();
    assert!(status.contains("checkpoint none (a run is rebuilding the view in it"), "{status}");
    let options = ValidateOptions { view: "order_summary".into(), sample_size: None, seed: 1 };
    let found = validate(&plan, &options).unwrap();
    assert_eq!(found.differences, 1, "{}", found.report);
    assert!(found.report.contains("1 rows but no checkpoint: a run is rebuilding the view"), "{}", found.report);
    rewrite_whole_view(next.as_mut(), &rows, &positions);
    assert_eq!(summary(), "1\t2022-01-08\t500\n");
    let status = projector::status::status(&plan).unwrap();
    assert!(!status.contains("rebuilding"), "{status}");
}

/// End to end, in a running pipeline: a row an older run never committed
/// that lands after the run started (planted here: a tombstone of a
/// committed `order_summary` row, at a version of generation 1 above its
/// last commit) makes the run start over in the same process, and the
/// next run rewrites that view above it. The sinks end equal to the
/// recomputation.
#[test]
fn a_late_uncommitted_row_makes_a_running_pipeline_rewrite_the_view() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::fresh_topic("clickhouse-late");
    let generator = GeneratorConfig { events: 6000, seed: 35, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let keyed: Vec<(String, String)> = Generator::new(generator).map(|r| (r.key, r.line)).collect();
    let lines: Vec<String> = keyed.iter().map(|(_, line)| line.clone()).collect();
    kafka::append(&topic, keyed[..2000].to_vec());
    let sources = format!(
        "  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    batch_ms: 50\n",
        kafka::brokers()
    );
    let text = config(&sources, &server.url(), "latelive");
    // Generation 1 writes the first records, and stops.
    let bounded = config(&format!("{sources}    bounded: true\n"), &server.url(), "latelive");
    commands::run_config(plan(&bounded, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    assert_clickhouse_holds(&server, "latelive", &lines[..2000]);

    // Generation 2 runs on; the late row of generation 1 lands.
    kafka::append(&topic, keyed[2000..3000].to_vec());
    let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
    let stop: Arc<AtomicBool> = Arc::clone(&options.stop);
    let run_plan = plan(&text, dir.path());
    let pipeline = std::thread::spawn(move || commands::run_config(run_plan, options).unwrap());
    let covered = || clickhouse_covered(&server, "latelive");
    let wait_for = |count: u64| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while covered() < count {
            assert!(Instant::now() < deadline, "the sinks cover {} of {count} records", covered());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(3000);
    assert_eq!(generation(&server, "latelive", "order_summary_ch"), 2);
    let row =
        server.query("SELECT store_id, date FROM latelive.order_summary ORDER BY store_id, date LIMIT 1").unwrap();
    let (store, date) = row.trim().split_once('\t').unwrap();
    let late = (1u64 << 32) | 999_999;
    server
        .query(&format!("INSERT INTO latelive.order_summary_rows VALUES ({store}, '{date}', 0, 0, 0, 0, 1, {late})"))
        .unwrap();

    // It starts over (generation 3) and rewrites the view.
    kafka::append(&topic, keyed[3000..].to_vec());
    let deadline = Instant::now() + Duration::from_secs(60);
    while generation(&server, "latelive", "order_summary_ch") < 3 {
        assert!(Instant::now() < deadline, "the run did not start over");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(lines.len() as u64);
    stop.store(true, Ordering::Relaxed);
    pipeline.join().unwrap();
    assert_clickhouse_holds(&server, "latelive", &lines);
    let left = format!("SELECT count() FROM latelive.order_summary_rows WHERE _version = {late}");
    assert_eq!(server.query(&left).unwrap().trim(), "0");
}

/// A run that found rows a dead run never committed, and died before it
/// rewrote the view, leaves the sink claiming no position; the row a merge
/// may have dropped is missing from the table (here: hidden by a planted
/// uncommitted tombstone). A replay then rebuilds the view as from a sink
/// that holds nothing, and swaps it in above those rows; the next run still
/// finds them, rewrites the view and deletes them.
#[test]
fn a_replay_of_a_view_a_run_died_rewriting_swaps_the_whole_view_in() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let generator = GeneratorConfig { events: 3000, seed: 36, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(generator).map(|r| r.line).collect();
    write_lines(&dir.path().join("events.jsonl"), &lines);
    let text = config("  events:\n    type: file\n    path: events.jsonl\n", &server.url(), "rewriting");
    let config_path = dir.path().join("rewriting.yaml");
    std::fs::write(&config_path, &text).unwrap();
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    assert_clickhouse_holds(&server, "rewriting", &lines);

    let row =
        server.query("SELECT store_id, date FROM rewriting.order_summary ORDER BY store_id, date LIMIT 1").unwrap();
    let (store, date) = row.trim().split_once('\t').unwrap();
    let void = (1u64 << 32) | 999_999;
    server
        .query(&format!("INSERT INTO rewriting.order_summary_rows VALUES ({store}, '{date}', 0, 0, 0, 0, 1, {void})"))
        .unwrap();
    let mut dying = first_sink(&plan(&text, dir.path()));
    assert_eq!(dying.resume().unwrap(), None);
    drop(dying);
    let hidden = format!("SELECT count() FROM rewriting.order_summary WHERE store_id = {store} AND date = '{date}'");
    assert_eq!(server.query(&hidden).unwrap().trim(), "0");

    let replayed = Command::new(projector_binary())
        .args(["replay", "-c", config_path.to_str().unwrap(), "-w", "2", "--view", "order_summary", "--ack-wait", "1"])
        .output()
        .unwrap();
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    assert_clickhouse_holds(&server, "rewriting", &lines);
    let options = ValidateOptions { view: "order_summary".into(), sample_size: None, seed: 1 };
    let found = validate(&plan(&text, dir.path()), &options).unwrap();
    assert_eq!(found.differences, 0, "{}", found.report);

    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    assert_clickhouse_holds(&server, "rewriting", &lines);
    let left = format!("SELECT count() FROM rewriting.order_summary_rows WHERE _version = {void}");
    assert_eq!(server.query(&left).unwrap().trim(), "0");
}

/// The checkpoints table of a build before `newest_event_at`: a reader
/// still reads its positions, and the next run adds the column, after
/// which answers carry the time of the newest event.
#[test]
fn a_checkpoints_table_of_an_older_build_gets_the_newest_event_column() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&sinks_alone(&server, "older"), dir.path());
    let (changes, rows, positions) = one_summary_row();
    let at = positions_to_json(&positions, &["events".to_string()]);
    server.query("CREATE DATABASE older").unwrap();
    server
        .query(
            "CREATE TABLE older.projector_checkpoints (sink String, generation UInt64, seq UInt64, committed UInt64, \
             positions String, written_at DateTime('UTC'), rows UInt64) ENGINE = MergeTree ORDER BY (sink, generation, seq)",
        )
        .unwrap();
    server
        .query(&format!(
            "INSERT INTO older.projector_checkpoints VALUES ('order_summary_ch', 1, 1, 0, '{at}', now(), 0)"
        ))
        .unwrap();
    let reader = summary_reader(&plan);
    let read = reader.select(&Selection::default()).unwrap();
    assert_eq!((read.positions, read.newest_event_at), (positions.clone(), None));

    // The three sinks of the database open at once: each adds the column
    // unless another did first, and none fails for it.
    let mut sinks: Vec<Box<dyn ViewSink>> =
        components::outputs(&plan).unwrap().view_sinks.into_iter().map(|mut sinks| sinks.remove(0).1).collect();
    let resumed: Vec<Option<SourcePositions>> = std::thread::scope(|scope| {
        let opening: Vec<_> = sinks.iter_mut().map(|sink| scope.spawn(move || sink.resume().unwrap())).collect();
        opening.into_iter().map(|thread| thread.join().unwrap()).collect()
    });
    assert_eq!(resumed, vec![Some(positions.clone()), None, None]);
    let mut sink = sinks.remove(0);
    let newest = Some(Timestamp::parse_rfc3339("2022-01-08T10:00:00Z").unwrap());
    let later = SourcePositions([((0, 0), 11)].into_iter().collect());
    sink.apply(ViewBatch { changes: &changes, upper: 2, positions: &later, newest_event_at: newest, rows: &rows })
        .unwrap();
    sink.finish().unwrap();
    let read = reader.select(&Selection::default()).unwrap();
    assert_eq!((read.rows.len(), read.positions, read.newest_event_at), (1, later, newest));
}

/// A write of more rows than ClickHouse cuts an `INSERT` into by default
/// (`max_insert_block_size`, 1,048,576) is still one part, so readers see
/// all of it or none: the sink's whole-view writes (a new view, a rebuilt
/// one) rely on it. Before, 1,100,000 rows landed as two parts.
#[test]
fn a_write_larger_than_the_default_insert_block_is_one_part() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(&sinks_alone(&server, "large"), dir.path());
    let mut sink = first_sink(&plan);
    assert_eq!(sink.resume().unwrap(), None);
    let values: Row = vec![Value::Int(1), Value::Int(500), Value::Int(500), Value::Int(0)].into();
    let changes: Vec<ViewChange> = (0..1_100_000u64)
        .map(|i| ViewChange {
            key: vec![Value::UInt(i / 1000), Value::Date((i % 1000) as i32)].into(),
            values: values.clone(),
            diff: 1,
        })
        .collect();
    let positions = SourcePositions([((0, 0), 10)].into_iter().collect());
    let rows = ViewRows::default();
    sink.apply(ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &rows })
        .unwrap();
    sink.finish().unwrap();
    let parts = "SELECT count(), sum(rows) FROM system.parts \
                 WHERE database = 'large' AND table = 'order_summary_rows' AND active";
    assert_eq!(server.query(parts).unwrap(), "1\t1100000\n");
}

/// A run that finds the view's columns changed and dies before its first
/// write leaves the old tables, which readers still read, and the old
/// definition recorded: the next run finds the change again and rebuilds
/// the sink into tables with the new columns. (Had the new definition been
/// recorded first, the next run would have found a rows table with columns
/// it cannot write, and stopped.)
#[test]
fn a_run_that_dies_before_it_rebuilt_a_view_with_new_columns_leaves_the_next_one_to_do_it() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let text = sinks_alone(&server, "widen");
    let sink_of = |text: &str| first_sink(&plan(text, dir.path()));
    let mut sink = sink_of(&text);
    assert_eq!(sink.resume().unwrap(), None);
    let (changes, rows, positions) = one_summary_row();
    sink.apply(ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &rows })
        .unwrap();
    sink.finish().unwrap();

    let cancellations = "cancellation_count:        { count: \"*\",        where: \"status = 'cancelled'\" }";
    assert!(text.contains(cancellations), "{text}");
    let widened =
        text.replace(cancellations, &format!("{cancellations}\n      largest_order_cents: {{ max: total_cents }}"));
    let mut dies = sink_of(&widened);
    assert_eq!(dies.resume().unwrap(), None, "the sink claims nothing from now on");
    dies.reset().unwrap();
    drop(dies);
    let row = "SELECT store_id, date, revenue_cents FROM widen.order_summary";
    assert_eq!(server.query(row).unwrap(), "1\t2022-01-08\t500\n", "readers still read the old rows");

    let mut next = sink_of(&widened);
    assert_eq!(next.resume().unwrap(), None);
    next.reset().unwrap();
    let values: Row = vec![Value::Int(2), Value::Int(700), Value::Int(350), Value::Int(0), Value::Int(400)].into();
    let changes = vec![ViewChange { key: changes[0].key.clone(), values, diff: 1 }];
    let positions = SourcePositions([((0, 0), 12)].into_iter().collect());
    next.apply(ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &rows })
        .unwrap();
    next.finish().unwrap();
    let row = "SELECT store_id, date, revenue_cents, largest_order_cents FROM widen.order_summary";
    assert_eq!(server.query(row).unwrap(), "1\t2022-01-08\t700\t400\n");
    assert_eq!(sink_of(&widened).resume().unwrap(), Some(positions), "and it resumes from there");
}

#[test]
fn clickhouse_down_while_the_pipeline_runs() {
    if !available("clickhouse-server") {
        return;
    }
    let mut server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::fresh_topic("clickhouse-live");
    let generator = GeneratorConfig { events: 6000, seed: 33, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let keyed: Vec<(String, String)> = Generator::new(generator).map(|r| (r.key, r.line)).collect();
    let lines: Vec<String> = keyed.iter().map(|(_, line)| line.clone()).collect();
    kafka::append(&topic, keyed[..3000].to_vec());
    let sources = format!(
        "  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    batch_ms: 50\n",
        kafka::brokers()
    );
    let text = config(&sources, &server.url(), "live");
    let plan = plan(&text, dir.path());
    let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
    let stop: Arc<AtomicBool> = Arc::clone(&options.stop);
    let pipeline = std::thread::spawn(move || commands::run_config(plan, options).unwrap());

    let covered = |server: &ClickHouseServer| clickhouse_covered(server, "live");
    let wait_for = |server: &ClickHouseServer, count: u64| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while covered(server) < count {
            assert!(Instant::now() < deadline, "the sinks cover {} of {count} records", covered(server));
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(&server, 3000);
    assert_clickhouse_holds(&server, "live", &lines[..3000]);

    let quiet = std::env::var("CLICKHOUSE_DOWN_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    server.stop();
    kafka::append(&topic, keyed[3000..].to_vec());
    std::thread::sleep(Duration::from_secs(quiet));
    server.restart();
    wait_for(&server, lines.len() as u64);
    stop.store(true, Ordering::Relaxed);
    pipeline.join().unwrap();
    assert_clickhouse_holds(&server, "live", &lines);

    // `projector status` reads the topic's watermarks: every partition
    // starts at 0 and is committed to its end.
    let status = projector::status::status(&self::plan(&text, dir.path())).unwrap();
    let partitions: Vec<&str> = status.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).collect();
    assert_eq!(partitions.len(), 4, "{status}");
    for line in partitions {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (fields[1], fields[2], fields[4]),
            ("0", fields[3], "0"),
            "first 0, committed = end, lag 0: {status}"
        );
    }
}

/// A replay's swap finds how its shadow differs from the live copy inside
/// ClickHouse: a row equal in both (NULLs included) is not a difference, a
/// row with another value or only in the shadow is, and a row only in the
/// live copy is gone.
#[test]
fn two_copies_of_a_view_differ_where_they_differ_nulls_alike() {
    if !available("clickhouse-server") {
        return;
    }
    let server = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    let source = "  events:\n    type: file\n    path: none.jsonl\n";
    let row = |customer: u64, segment: Option<&str>| -> (Row, Row) {
        let key: Row = vec![Value::UInt(1), Value::UInt(customer)].into();
        let segment = segment.map_or(Value::Null, |s| Value::Text(s.into()));
        let values = vec![Value::UInt(1), Value::Int(100), Value::Int(100), Value::Null, Value::Null, segment];
        (key, values.into())
    };
    let positions = SourcePositions([((0, 0), 10)].into_iter().collect());
    let mut readers = Vec::new();
    for (database, rows) in [
        ("copy_live", vec![row(10, None), row(11, None), row(12, Some("new"))]),
        ("copy_shadow", vec![row(10, None), row(11, Some("new")), row(13, None)]),
    ] {
        let plan = plan(&config(source, &server.url(), database), dir.path());
        let mut sink = components::outputs(&plan).unwrap().view_sinks.remove(2).remove(0).1;
        assert_eq!(sink.resume().unwrap(), None);
        let changes: Vec<ViewChange> =
            rows.iter().map(|(key, values)| ViewChange { key: key.clone(), values: values.clone(), diff: 1 }).collect();
        let all: ViewRows = rows.into_iter().collect();
        let batch = ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &all };
        sink.apply(batch).unwrap();
        sink.finish().unwrap();
        let SinkKind::ClickHouse(sink_config) = &plan.config.sinks[2].kind else { panic!("a ClickHouse sink") };
        let view = plan.view("customer_ltv").unwrap();
        readers.push(ClickHouseViewReader::new("customer_ltv_ch", view, sink_config, vec!["events".into()]).unwrap());
    }
    let found = readers[1].differences(&readers[0], &Selection::default()).unwrap();
    assert_eq!(found.rows, 3);
    assert_eq!(found.differing, vec![row(11, Some("new")), row(13, None)]);
    assert_eq!(found.gone, vec![row(12, None).0]);
    assert_eq!((found.positions.clone(), found.other_positions.clone()), (positions.clone(), positions));
    assert_eq!(readers[0].differences(&readers[0], &Selection::default()).unwrap().differing, Vec::new());
}
