//! The Redis sink against a real `redis-server`: the views land as one
//! hash per row with rankings as sorted sets and equal the recomputation;
//! a restart resumes from the sink's checkpoint; a Redis that lost its data
//! (restarted without persistence) is detected and rebuilt, also while the
//! pipeline runs; with AOF it resumes; Redis down for 30 s while events
//! flow, then up: the pipeline waits and converges; a fenced older
//! generation writes nothing.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use projector::{commands, components};
use projector_core::config::{PipelinePlan, check_text};
use projector_core::sink::{SinkError, SourcePositions, ViewBatch, ViewChange, ViewRows};
use projector_core::value::{Row, Value};
use projector_dataflows::runner::RunOptions;
use projector_datagen::{Generator, GeneratorConfig};
use projector_tests::services::{RedisServer, available};
use projector_tests::sinks::{assert_redis_holds, one_summary_row, redis_covered, redis_sinks_yaml};
use projector_tests::{kafka, shipped_views_yaml};
use redis::Commands;

/// The shipped views with `sources` and one Redis sink per view.
fn config(sources: &str, url: &str, prefix: &str) -> String {
    format!("version: 1\nsources:\n{sources}{}\nsinks:\n{}", shipped_views_yaml(), redis_sinks_yaml(url, prefix))
}

fn file_source(path: &Path) -> String {
    format!("  events:\n    type: file\n    path: {}\n", path.display())
}

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "redis.yaml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn generated(events: u64, seed: u64) -> Vec<String> {
    let config =
        GeneratorConfig { events, seed, bad_ratio: 0.01, customers_per_store: 200, ..GeneratorConfig::default() };
    Generator::new(config).map(|r| r.line).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn checkpoint(server: &RedisServer, prefix: &str, sink: &str) -> BTreeMap<String, String> {
    server.connection().unwrap().hgetall(format!("{prefix}projector:sink:{sink}")).unwrap()
}

fn run_file(text: &str, dir: &Path, workers: usize) {
    commands::run_config(plan(text, dir), RunOptions { workers, ..RunOptions::default() }).unwrap();
}

#[test]
fn redis_holds_the_views_and_resumes_after_a_restart() {
    if !available("redis-server") {
        return;
    }
    let server = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(6000, 21);
    let events = dir.path().join("events.jsonl");
    write_lines(&events, &lines[..3500]);
    let text = config(&file_source(&events), &server.url(), "resume:");
    run_file(&text, dir.path(), 2);
    assert_redis_holds(&server, &lines[..3500], "resume:");
    let first = checkpoint(&server, "resume:", "order_summary_redis");
    assert_eq!(first["generation"], "1");
    assert_eq!(first["positions"], r#"{"events":{"0":3501}}"#);

    // The log grows; the restart resumes from the checkpoint.
    write_lines(&events, &lines);
    run_file(&text, dir.path(), 1);
    assert_redis_holds(&server, &lines, "resume:");
    let second = checkpoint(&server, "resume:", "order_summary_redis");
    assert_eq!(second["generation"], "2");
    assert_eq!(second["positions"], format!(r#"{{"events":{{"0":{}}}}}"#, lines.len() + 1));

    // `projector status`: the partition is committed up to its end, and each
    // sink shows its generation and checkpoint.
    let end = lines.len() + 1;
    let text = projector::status::status(&plan(&text, dir.path())).unwrap();
    assert!(text.contains(&format!("          0             0  {end:>12}  {end:>12}           0")), "{text}");
    assert!(text.contains("a file of N lines ends at N + 1"), "{text}");
    for (view, _) in projector_tests::sinks::KEYS {
        let line = format!(
            "sink {view}_redis (redis, view {view})\n  generation 2, checkpoint {{\"events\":{{\"0\":{end}}}}}, newest data"
        );
        assert!(text.contains(&line), "{line}\nnot in\n{text}");
    }
    // A sink whose server is down is named, and the command fails.
    drop(server);
    let (text, error) = projector::status::status(&plan(&text_for_status(&events), dir.path())).unwrap_err();
    assert!(text.contains("cannot read its state"), "{text}");
    assert!(error.to_string().contains("order_summary_redis"), "{error}");
}

fn text_for_status(events: &Path) -> String {
    config(&file_source(events), "redis://127.0.0.1:1", "resume:")
}

#[test]
fn redis_restarted_without_persistence_is_rebuilt_and_with_aof_resumes() {
    if !available("redis-server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(5000, 22);
    let events = dir.path().join("events.jsonl");
    for append_only in [false, true] {
        let mut server = RedisServer::start(append_only);
        write_lines(&events, &lines[..2000]);
        let text = config(&file_source(&events), &server.url(), "restart:");
        run_file(&text, dir.path(), 2);
        server.restart();
        let kept = checkpoint(&server, "restart:", "customer_ltv_redis");
        if append_only {
            assert_eq!(kept["positions"], r#"{"events":{"0":2001}}"#, "AOF keeps the checkpoint");
        } else {
            assert!(kept.is_empty(), "without persistence the checkpoint is gone");
        }
        write_lines(&events, &lines);
        run_file(&text, dir.path(), 2);
        assert_redis_holds(&server, &lines, "restart:");
        // With AOF the run resumed (generation 2); without, Redis started
        // over and the view was rebuilt under generation 1.
        let after = checkpoint(&server, "restart:", "customer_ltv_redis");
        assert_eq!(after["generation"], if append_only { "2" } else { "1" });
    }
}

#[test]
fn a_fenced_older_generation_writes_nothing() {
    if !available("redis-server") {
        return;
    }
    let server = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let text = config(&file_source(&dir.path().join("none.jsonl")), &server.url(), "fence:");
    let plan = plan(&text, dir.path());
    let mut older = components::outputs(&plan).unwrap().view_sinks.remove(0).remove(0).1;
    let mut newer = components::outputs(&plan).unwrap().view_sinks.remove(0).remove(0).1;
    assert_eq!(older.resume().unwrap(), None);
    assert_eq!(newer.resume().unwrap(), None);

    let (changes, rows, positions) = one_summary_row();
    let batch = ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &rows };
    match older.apply(batch) {
        Err(SinkError::Fatal(message)) => assert!(message.contains("fenced"), "{message}"),
        other => panic!("the older generation's write should be refused, got {other:?}"),
    }
    let mut connection = server.connection().unwrap();
    let keys: Vec<String> = connection.keys("fence:order_summary:*").unwrap();
    assert!(keys.is_empty(), "the fenced write changed {keys:?}");
    let state = checkpoint(&server, "fence:", "order_summary_redis");
    assert_eq!(state.get("positions"), None);

    newer.apply(batch).unwrap();
    let fields: BTreeMap<String, String> = connection.hgetall("fence:order_summary:1:2022-01-08").unwrap();
    assert_eq!(fields["revenue_cents"], "500");
    // A batch that is not newer than the checkpoint changes nothing.
    let _: () = connection.del("fence:order_summary:1:2022-01-08").unwrap();
    newer.apply(batch).unwrap();
    let gone: bool = connection.exists("fence:order_summary:1:2022-01-08").unwrap();
    assert!(!gone, "a repeated batch was written again");
}

#[test]
fn updates_change_only_their_fields_and_rankings_and_follow_nulls() {
    if !available("redis-server") {
        return;
    }
    let server = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let text = config(&file_source(&dir.path().join("none.jsonl")), &server.url(), "upd:");
    let plan = plan(&text, dir.path());
    let view = plan.views.iter().position(|v| v.name == "product_sales").unwrap();
    let mut sink = components::outputs(&plan).unwrap().view_sinks.remove(view).remove(0).1;
    assert_eq!(sink.resume().unwrap(), None);
    let key: Row = vec![Value::UInt(3), Value::UInt(42), Value::Date(19_000)].into();
    let values = |v: [Value; 3]| -> Row { v.into_iter().collect::<Vec<_>>().into() };
    let change = |values: &Row, diff| ViewChange { key: key.clone(), values: values.clone(), diff };
    let first = values([Value::Int(2), Value::Int(500), Value::Int(1)]);
    let nulled = values([Value::Int(2), Value::Int(700), Value::Null]);
    let back = values([Value::Int(3), Value::Int(700), Value::Int(1)]);
    let batches: Vec<Vec<ViewChange>> = vec![
        vec![change(&first, 1)],
        vec![change(&first, -1), change(&nulled, 1)],
        vec![change(&nulled, -1), change(&back, 1)],
        vec![change(&back, -1)],
    ];
    let mut connection = server.connection().unwrap();
    let hash = "upd:product_sales:3:2022-01-08:42";
    let expected: [&[(&str, &str)]; 3] = [
        &[("units_sold", "2"), ("revenue_cents", "500"), ("order_count", "1")],
        &[("units_sold", "2"), ("revenue_cents", "700")],
        &[("units_sold", "3"), ("revenue_cents", "700"), ("order_count", "1")],
    ];
    let scores = [Some(500.0), Some(700.0), Some(700.0), None];
    for (upper, changes) in batches.iter().enumerate() {
        let positions = SourcePositions([((0, 0), upper as u64 + 1)].into_iter().collect());
        let rows = ViewRows::default();
        sink.apply(ViewBatch {
            changes,
            upper: upper as u64 + 1,
            positions: &positions,
            newest_event_at: None,
            rows: &rows,
        })
        .unwrap();
        let got: BTreeMap<String, String> = connection.hgetall(hash).unwrap();
        let want: BTreeMap<String, String> = match expected.get(upper) {
            Some(fields) => [("store_id", "3"), ("product_id", "42"), ("date", "2022-01-08")]
                .iter()
                .chain(fields.iter())
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
            None => BTreeMap::new(),
        };
        assert_eq!(got, want, "after batch {}", upper + 1);
        let score: Option<f64> = connection.zscore("upd:top_products:3:2022-01-08", "42").unwrap();
        assert_eq!(score, scores[upper], "ranking after batch {}", upper + 1);
    }
}

/// Runs the pipeline on a Kafka topic in a thread until `stop`.
struct Running {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(text: String, dir: &Path) -> Running {
        let plan = plan(&text, dir);
        let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
        let stop = Arc::clone(&options.stop);
        let thread = std::thread::spawn(move || {
            commands::run_config(plan, options).unwrap();
        });
        Running { stop, thread: Some(thread) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }
}

/// Waits until every sink's checkpoint covers `count` records of the topic.
fn wait_for(server: &RedisServer, prefix: &str, count: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while redis_covered(server, prefix) < count {
        assert!(Instant::now() < deadline, "the sinks cover {} of {count} records", redis_covered(server, prefix));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn redis_down_or_wiped_while_the_pipeline_runs() {
    if !available("redis-server") {
        return;
    }
    let mut server = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::fresh_topic("redis-live");
    // Keyed by aggregate, as the command side appends them; no stray copies
    // across orders, whose first copy in a multi-partition log is not the
    // first line (README: duplicates).
    let generator = GeneratorConfig { events: 6000, seed: 23, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let keyed: Vec<(String, String)> = Generator::new(generator).map(|r| (r.key, r.line)).collect();
    let lines: Vec<String> = keyed.iter().map(|(_, line)| line.clone()).collect();
    let records = |range: std::ops::Range<usize>| keyed[range].to_vec();
    let all = lines.len();
    kafka::append(&topic, records(0..2000));
    let sources = format!(
        "  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    batch_ms: 50\n",
        kafka::brokers()
    );
    let running = Running::start(config(&sources, &server.url(), "live:"), dir.path());
    wait_for(&server, "live:", 2000, Duration::from_secs(60));
    assert_redis_holds(&server, &lines[..2000], "live:");

    // Redis loses everything: the sink notices at its next batch and
    // rewrites the whole view.
    server.restart();
    kafka::append(&topic, records(2000..4000));
    wait_for(&server, "live:", 4000, Duration::from_secs(60));
    assert_redis_holds(&server, &lines[..4000], "live:");

    // Redis down for 30 s while events flow: the pipeline retries, then
    // converges once it is back.
    let quiet = std::env::var("REDIS_DOWN_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    server.stop();
    kafka::append(&topic, records(4000..all));
    std::thread::sleep(Duration::from_secs(quiet));
    server.restart();
    wait_for(&server, "live:", all as u64, Duration::from_secs(60));
    running.stop();
    assert_redis_holds(&server, &lines, "live:");
}

#[test]
fn a_pipeline_started_while_redis_is_down_waits_for_it() {
    if !available("redis-server") {
        return;
    }
    let mut server = RedisServer::start(false);
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(2000, 24);
    let events = dir.path().join("events.jsonl");
    write_lines(&events, &lines);
    let plan = plan(&config(&file_source(&events), &server.url(), "late:"), dir.path());
    let run = std::thread::spawn(move || {
        commands::run_config(plan, RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!run.is_finished(), "the run should wait for Redis");
    server.restart();
    run.join().unwrap();
    assert_redis_holds(&server, &lines, "late:");
}

/// A view added to the YAML fills its sinks from the log when the pipeline
/// restarts with it, while the sinks of the other views resume from their
/// checkpoints and are not written again (a value planted in one of them
/// stays, and `projector validate` finds it).
#[test]
fn a_view_added_to_the_yaml_fills_its_sinks_and_the_others_are_not_rewritten() {
    if !available("redis-server") {
        return;
    }
    let server = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let lines = generated(3000, 24);
    let events = dir.path().join("events.jsonl");
    write_lines(&events, &lines);
    let full = config(&file_source(&events), &server.url(), "added:");
    // Without customer_ltv: its view and its sink cut out of the YAML.
    let view_start = full.find("\n  # One row per store and customer").unwrap();
    let view_end = full[view_start..].find("\nsinks:").unwrap() + view_start;
    let sink_start = full.find("\n  customer_ltv_redis:").unwrap();
    let without = format!("{}{}", &full[..view_start], &full[view_end..sink_start]);
    assert!(!without.contains("customer_ltv"), "{without}");
    run_file(&without, dir.path(), 2);
    let mut connection = server.connection().unwrap();
    let held: Vec<String> = connection.keys("added:customer_ltv:*").unwrap();
    assert!(held.is_empty());

    // A value planted in a sink of an existing view.
    let mut summaries: Vec<String> = connection.keys("added:order_summary:*").unwrap();
    summaries.sort();
    let planted = &summaries[0];
    let _: () = connection.hset(planted, "revenue_cents", "1").unwrap();

    run_file(&full, dir.path(), 2);
    let options = |view: &str| projector::validate::ValidateOptions { view: view.into(), sample_size: None, seed: 1 };
    let added = projector::validate::validate(&plan(&full, dir.path()), &options("customer_ltv")).unwrap();
    assert_eq!(added.differences, 0, "{}", added.report);
    assert!(!connection.keys::<_, Vec<String>>("added:customer_ltv:*").unwrap().is_empty());
    let kept = projector::validate::validate(&plan(&full, dir.path()), &options("order_summary")).unwrap();
    assert_eq!(kept.differences, 1, "only the planted value differs:\n{}", kept.report);
    assert!(kept.report.contains("revenue_cents: expected") && kept.report.contains("found 1"), "{}", kept.report);
    assert_eq!(checkpoint(&server, "added:", "order_summary_redis")["generation"], "2");
    assert_eq!(checkpoint(&server, "added:", "customer_ltv_redis")["generation"], "1");
}

/// A Kafka source that starts at `latest` resumes from its state snapshot:
/// the events appended while it was stopped count, and the views stay
/// those of every event since the first run started. Without a snapshot a
/// restart is refused with what to do. (Before, a restart read from the
/// end of the topic again: it skipped those events, moved the checkpoints
/// past them, and folded only the orders it saw.)
#[test]
fn a_latest_start_resumes_from_its_snapshot_and_is_refused_without_one() {
    if !available("redis-server") {
        return;
    }
    let server = RedisServer::start(false);
    let topic = kafka::create_topic("latest", 4);
    let generated_keyed = |events: u64, seed: u64| -> Vec<(String, String)> {
        let config = GeneratorConfig { events, seed, customers_per_store: 300, ..GeneratorConfig::default() };
        Generator::new(config).map(|record| (record.key, record.line)).collect()
    };
    let (before, during, stopped) = (generated_keyed(1000, 81), generated_keyed(1000, 82), generated_keyed(1000, 83));
    kafka::append(&topic, before);
    let dir = tempfile::tempdir().unwrap();
    let source = format!(
        "  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    start: latest\n    batch_ms: 20\n",
        kafka::brokers()
    );
    let with_state = format!(
        "{}state:\n  path: {}\n  every_ms: 100\n",
        config(&source, &server.url(), "latest:"),
        dir.path().join("state.parquet").display()
    );
    let start = |text: &str| {
        let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
        let stop = Arc::clone(&options.stop);
        let plan = plan(text, dir.path());
        (stop, std::thread::spawn(move || commands::run_config(plan, options)))
    };
    let (stop, run) = start(&with_state);
    // Once the run has read where the topic ended, new events count.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.connection().unwrap().exists::<_, bool>("latest:projector:sink:order_summary_redis").unwrap() {
        assert!(Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    kafka::append(&topic, during.clone());
    wait_for(&server, "latest:", 2000, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    run.join().unwrap().unwrap();

    kafka::append(&topic, stopped.clone());
    let without_state = config(&source, &server.url(), "latest:");
    let refused = commands::run_config(plan(&without_state, dir.path()), RunOptions::default()).unwrap_err();
    assert!(refused.to_string().contains("source \"events\" starts at `latest`"), "{refused}");
    let options = projector::validate::ValidateOptions { view: "order_summary".into(), sample_size: None, seed: 1 };
    let refused = projector::validate::validate(&plan(&with_state, dir.path()), &options).unwrap_err();
    assert!(refused.to_string().contains("give `start:` the offsets the first run started at"), "{refused}");
    // A replay would rebuild the view from the end of the topic (nothing)
    // and swap that in; an export would write it.
    let options = projector::replay::ReplayOptions {
        views: vec!["order_summary".into()],
        from: None,
        to: None,
        ack_wait: Duration::ZERO,
        progress_bar: false,
        checkpoint_every: None,
        accept_deleted_records: false,
    };
    let refused = projector::replay::replay(&plan(&with_state, dir.path()), &options, RunOptions::default());
    let refused = refused.map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("replay computes the views from the start of the log"), "{refused}");
    let out = dir.path().join("order_summary.parquet");
    let refused = commands::export(plan(&with_state, dir.path()), "order_summary", &out, RunOptions::default());
    let refused = refused.map(|_| ()).unwrap_err();
    assert!(refused.to_string().contains("export computes the views from the start of the log"), "{refused}");
    assert!(!out.exists());
    let (stop, run) = start(&with_state);
    wait_for(&server, "latest:", 3000, Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let summary = run.join().unwrap().unwrap();
    assert!(summary.restored_from.is_some());
    let since_start: Vec<String> = during.into_iter().chain(stopped).map(|(_, line)| line).collect();
    assert_redis_holds(&server, &since_start, "latest:");
}
