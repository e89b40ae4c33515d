//! The exactly-once sinks under load, against real `redis-server` and
//! `clickhouse-server` processes on loopback (started here, as the tests
//! do).
//!
//! Each part starts servers of its own. They run in this order: 3, 1, 2.
//!
//! 1. Sink throughput: the rows of the three views over a generated log,
//!    written in one batch into a fresh Redis sink and a fresh ClickHouse
//!    sink; prints rows/s for each.
//! 2. Ingest with both sinks: about 1,000,000 events from a 64-partition
//!    topic into the three views and both sinks of every view, 2 workers;
//!    prints events/s (the views alone: `--bench kafka_e2e`).
//! 3. Event-to-sink latency at a steady 20,000 events/s with both sinks on:
//!    from the call that appends an event to the commit (data and
//!    checkpoint) of the first Redis transaction / ClickHouse checkpoint
//!    that covers it, for `product_sales` (the view with the most rows).
//! 4. The swap of a rebuilt view into its live sinks (`projector replay`'s
//!    last step): the three views' rows in live Redis sinks, `product_sales`
//!    in a live ClickHouse sink and its shadow; then swaps of
//!    `product_sales`, the Redis one rebuilt as the replay keeps it (in
//!    memory), each timed from its call to its return. The first Redis swap
//!    finds `BENCH_PLANTED` rows changed behind the sink's back and
//!    rewrites them; then `BENCH_SWAPS` rounds of a swap into each store
//!    alone and of both at once (as a replay swaps them).
//!
//! Run: `cargo bench -p projector-benches --bench sinks_e2e`. Under
//! `cargo test` it runs each part small. Knobs: `BENCH_EVENTS` (log size of
//! 1, 2 and 4), `BENCH_RATE`, `BENCH_SECONDS` (of 3), `BENCH_PARTS` (a comma
//! list of latency, sinks, ingest, swap), plus those of kafka_e2e.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projector_benches::{
    Completions, bench_topic, cpu_seconds, generated_lines, kafka_source, knob, latencies, mock_broker, note,
    steady_load, summary,
};
use projector_core::config::{PipelinePlan, SinkKind, check_text};
use projector_core::sink::{Selection, SinkError, SourcePositions, ViewBatch, ViewChange, ViewRows, ViewSink};
use projector_core::source::Source;
use projector_dataflows::output::apply_changes;
use projector_dataflows::runner::{Outputs, RunOptions, run};
use projector_datagen::{Generator, GeneratorConfig};
use projector_sink_clickhouse::{ClickHouseSwap, ClickHouseViewSink};
use projector_sink_redis::{Kept, RedisSwap, RedisViewSink};
use projector_source_file::FileSource;
use projector_tests::services::{ClickHouseServer, RedisServer, available};
use projector_tests::shipped_views_yaml;
use projector_tests::sinks::{clickhouse_sinks_yaml, redis_sinks_yaml};

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

fn main() {
    // As `projector run` does: these runs call the runner directly.
    projector::keep_freed_memory(projector::RUN_KEEPS_FREED);
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let size = |bench: u64, test: u64| if benchmarking { bench } else { test };
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let events = knob("BENCH_EVENTS", size(1_000_000, 20_000));
    let brokers = mock_broker(&[
        (bench_topic("ingest"), knob("BENCH_PARTITIONS", 64)),
        (bench_topic("latency"), knob("BENCH_LATENCY_PARTITIONS", 8)),
    ]);
    // Each part on servers of its own, started for it: the bulk writes of
    // a part leave ClickHouse merging in the background for a while, on
    // the same 2 cores, and Redis holding their keys.
    let servers = || (RedisServer::start(false), ClickHouseServer::start());
    // `BENCH_PARTS`: which parts run (default all: latency,sinks,ingest,swap).
    let parts: String = knob("BENCH_PARTS", "latency,sinks,ingest,swap".to_string());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    if part("latency") {
        let (redis, clickhouse) = servers();
        let rate = knob("BENCH_RATE", 20_000.0);
        latency(&brokers, &redis, &clickhouse, rate, Duration::from_secs(knob("BENCH_SECONDS", size(10, 2))));
    }
    if part("sinks") {
        let (redis, clickhouse) = servers();
        sink_throughput(&redis, &clickhouse, events);
    }
    if part("ingest") {
        let (redis, clickhouse) = servers();
        ingest(&brokers, &redis, &clickhouse, events);
    }
    if part("swap") {
        let (redis, clickhouse) = servers();
        swap(&redis, &clickhouse, events, knob("BENCH_SWAPS", size(5, 2) as usize), knob("BENCH_PLANTED", 100));
    }
}

/// `BENCH_SINKS`: both (default), redis or clickhouse.
fn chosen_sinks() -> String {
    knob("BENCH_SINKS", "both".to_string())
}

/// The shipped views with Redis and ClickHouse sinks for each (`which`:
/// both, redis or clickhouse), reading `sources`.
fn plan(
    sources: &str,
    redis: &RedisServer,
    prefix: &str,
    clickhouse: &ClickHouseServer,
    database: &str,
    which: &str,
) -> PipelinePlan {
    let redis_yaml = if which == "clickhouse" { String::new() } else { redis_sinks_yaml(&redis.url(), prefix) };
    let clickhouse_yaml =
        if which == "redis" { String::new() } else { clickhouse_sinks_yaml(&clickhouse.url(), database, 1000) };
    let text =
        format!("version: 1\nsources:\n{sources}{}\nsinks:\n{redis_yaml}{clickhouse_yaml}", shipped_views_yaml());
    check_text(&text, "bench.yaml", std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

fn kafka_sources(brokers: &str, topic: &str) -> String {
    format!("  events:\n    type: kafka\n    brokers: {brokers}\n    topic: {topic}\n")
}

/// Notes each commit of a Redis sink (every batch is one transaction).
struct TimedRedis(RedisViewSink, Completions);

impl ViewSink for TimedRedis {
    fn wants_rows(&self) -> bool {
        self.0.wants_rows()
    }
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.0.resume()
    }
    fn reset(&mut self) -> Result<(), SinkError> {
        self.0.reset()
    }
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        self.0.apply(batch)?;
        note(&self.1, batch.positions);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        self.0.finish()
    }
}

/// Notes each checkpoint a ClickHouse sink writes.
struct TimedClickHouse(ClickHouseViewSink, Completions);

impl TimedClickHouse {
    fn after(&mut self, before: Option<SourcePositions>) {
        if let Some(now) = self.0.checkpoint()
            && Some(now) != before.as_ref()
        {
            note(&self.1, now);
        }
    }
}

impl ViewSink for TimedClickHouse {
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.0.resume()
    }
    fn reset(&mut self) -> Result<(), SinkError> {
        self.0.reset()
    }
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let before = self.0.checkpoint().cloned();
        self.0.apply(batch)?;
        self.after(before);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        let before = self.0.checkpoint().cloned();
        self.0.finish()?;
        self.after(before);
        Ok(())
    }
}

/// The config's sinks; those of `timed_view` note their commits.
fn sinks(plan: &PipelinePlan, timed_view: &str, redis_done: &Completions, clickhouse_done: &Completions) -> Outputs {
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    let mut view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>> = plan.views.iter().map(|_| Vec::new()).collect();
    for sink in &plan.config.sinks {
        let index = plan.views.iter().position(|v| v.name == sink.view.value).expect("view");
        let view = Arc::clone(&plan.views[index]);
        let timed = view.name == timed_view;
        let built: Box<dyn ViewSink> = match &sink.kind {
            SinkKind::Redis(config) => {
                let inner = RedisViewSink::new(&sink.name, view, config, source_names.clone()).expect("redis sink");
                if timed { Box::new(TimedRedis(inner, Arc::clone(redis_done))) } else { Box::new(inner) }
            }
            SinkKind::ClickHouse(config) => {
                let inner =
                    ClickHouseViewSink::new(&sink.name, view, config, source_names.clone()).expect("clickhouse sink");
                if timed { Box::new(TimedClickHouse(inner, Arc::clone(clickhouse_done))) } else { Box::new(inner) }
            }
            SinkKind::File(_) | SinkKind::Parquet(_) => continue,
        };
        view_sinks[index].push((sink.name.clone(), built));
    }
    Outputs { view_sinks, ..Outputs::default() }
}

/// Keeps a view's rows.
struct Capture(Arc<Mutex<ViewRows>>);

impl ViewSink for Capture {
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        apply_changes(&mut self.0.lock().expect("rows"), batch.changes);
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// The views' rows over a generated log of `events` events (a plan with
/// sinks as [`plan`] makes it, reading a file), and the positions they
/// reflect.
fn view_rows(
    redis: &RedisServer,
    prefix: &str,
    clickhouse: &ClickHouseServer,
    database: &str,
    events: u64,
    which: &str,
) -> (PipelinePlan, Vec<ViewRows>, SourcePositions) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, generated_lines(events, 42).join("\n") + "\n").expect("events file");
    let files = format!("  events:\n    type: file\n    path: {}\n", path.display());
    let plan = plan(&files, redis, prefix, clickhouse, database, which);
    let captured: Vec<Arc<Mutex<ViewRows>>> = plan.views.iter().map(|_| Arc::default()).collect();
    let view_sinks =
        captured.iter().map(|rows| vec![("capture".to_string(), Box::new(Capture(Arc::clone(rows))) as _)]).collect();
    let source: Arc<dyn Source> = Arc::new(FileSource::new(0, &path, 1_000_000));
    run(
        Arc::new(plan.clone()),
        vec![("events".into(), source)],
        Outputs { view_sinks, ..Outputs::default() },
        RunOptions { workers: 2, ..RunOptions::default() },
    )
    .expect("file run");
    let positions = SourcePositions([((0, 0), events + 1)].into_iter().collect());
    let rows = captured.into_iter().map(|rows| std::mem::take(&mut *rows.lock().expect("rows"))).collect();
    (plan, rows, positions)
}

fn sink_throughput(redis: &RedisServer, clickhouse: &ClickHouseServer, events: u64) {
    let (plan, captured, positions) =
        view_rows(redis, "throughput:", clickhouse, "throughput", events, &chosen_sinks());
    let source_names = vec!["events".to_string()];
    let kinds: Vec<&str> = ["redis", "clickhouse"]
        .into_iter()
        .filter(|kind| {
            plan.config.sinks.iter().any(|s| s.name.ends_with(if *kind == "redis" { "_redis" } else { "_ch" }))
        })
        .collect();
    for kind in kinds {
        let (mut rows_written, mut elapsed) = (0usize, Duration::ZERO);
        for (index, view) in plan.views.iter().enumerate() {
            let rows = &captured[index];
            let changes: Vec<ViewChange> = rows
                .iter()
                .map(|(key, values)| ViewChange { key: key.clone(), values: values.clone(), diff: 1 })
                .collect();
            let sink = plan
                .config
                .sinks
                .iter()
                .find(|s| s.view.value == view.name && s.name.ends_with(if kind == "redis" { "_redis" } else { "_ch" }))
                .expect("sink");
            let mut built: Box<dyn ViewSink> = match &sink.kind {
                SinkKind::Redis(config) => Box::new(
                    RedisViewSink::new(&sink.name, Arc::clone(view), config, source_names.clone()).expect("sink"),
                ),
                SinkKind::ClickHouse(config) => Box::new(
                    ClickHouseViewSink::new(&sink.name, Arc::clone(view), config, source_names.clone()).expect("sink"),
                ),
                SinkKind::File(_) | SinkKind::Parquet(_) => unreachable!("no file sinks here"),
            };
            built.resume().expect("resume");
            let started = Instant::now();
            let batch = ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows };
            built.apply(batch).expect("write");
            built.finish().expect("flush");
            elapsed += started.elapsed();
            rows_written += changes.len();
        }
        println!(
            "sink throughput: {kind}: {rows_written} rows of the three views in {:.2} s = {:.0} rows/s",
            elapsed.as_secs_f64(),
            rows_written as f64 / elapsed.as_secs_f64()
        );
    }
}

fn ingest(brokers: &str, redis: &RedisServer, clickhouse: &ClickHouseServer, events: u64) {
    let topic = bench_topic("ingest");
    let records =
        Generator::new(GeneratorConfig { events, seed: 42, ..GeneratorConfig::default() }).map(|r| (r.key, r.line));
    let appended = projector_source_kafka::produce::append_all(brokers, &topic, records).expect("append");
    let plan = plan(&kafka_sources(brokers, &topic), redis, "ingest:", clickhouse, "ingest", &chosen_sinks());
    let outputs = sinks(&plan, "", &Completions::default(), &Completions::default());
    let started = Instant::now();
    let options = RunOptions { workers: 2, ..RunOptions::default() };
    let progress = Arc::clone(&options.progress);
    let summary = run(Arc::new(plan), vec![("events".into(), kafka_source(brokers, &topic, true))], outputs, options)
        .expect("pipeline");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(summary.records, appended);
    for (sink, writes) in progress.sink_writes() {
        println!("  {sink}: {} writes of {} changes in {:.2} s", writes.writes, writes.changes, writes.seconds);
    }
    println!(
        "ingest with {} sinks on every view: {} events in {seconds:.2} s = {:.0} events/s (2 workers)",
        chosen_sinks(),
        summary.records,
        summary.records as f64 / seconds
    );
}

fn latency(brokers: &str, redis: &RedisServer, clickhouse: &ClickHouseServer, rate: f64, duration: Duration) {
    let topic = bench_topic("latency");
    let warm =
        Generator::new(GeneratorConfig { events: 1, seed: 1, ..GeneratorConfig::default() }).map(|r| (r.key, r.line));
    projector_source_kafka::produce::append_all(brokers, &topic, warm).expect("topic");
    let plan = plan(&kafka_sources(brokers, &topic), redis, "latency:", clickhouse, "latency", &chosen_sinks());
    let (redis_done, clickhouse_done) = (Completions::default(), Completions::default());
    let outputs = sinks(&plan, "product_sales", &redis_done, &clickhouse_done);
    let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
    let stop = Arc::clone(&options.stop);
    let source = kafka_source(brokers, &topic, false);
    let pipeline = std::thread::spawn(move || run(Arc::new(plan), vec![("events".into(), source)], outputs, options));
    std::thread::sleep(Duration::from_millis(1500));
    let (sent, achieved, acks) = steady_load(brokers, &topic, rate, duration);
    std::thread::sleep(Duration::from_millis(2500));
    stop.store(true, Ordering::Relaxed);
    pipeline.join().expect("pipeline thread").expect("pipeline");
    for (name, done) in [("Redis", &redis_done), ("ClickHouse", &clickhouse_done)] {
        let latencies = latencies(&acks, &done.lock().expect("completions"));
        println!(
            "event-to-sink latency, {name}, product_sales, {sent} events at {achieved:.0}/s with {} sinks on: {} of them, {}",
            chosen_sinks(),
            latencies.len(),
            summary(&latencies)
        );
    }
}

fn swap(redis: &RedisServer, clickhouse: &ClickHouseServer, events: u64, swaps: usize, planted: usize) {
    // Both stores whatever `BENCH_SINKS` says: the part swaps into each
    // alone and into both at once.
    let (plan, rows, positions) = view_rows(redis, "swap:", clickhouse, "swap", events, "both");
    let source_names = vec!["events".to_string()];
    let index = plan.views.iter().position(|v| v.name == "product_sales").expect("product_sales");
    let view = &plan.views[index];
    let batch_of = |rows: &ViewRows, write: &mut dyn FnMut(ViewBatch<'_>)| {
        let changes: Vec<ViewChange> =
            rows.iter().map(|(key, values)| ViewChange { key: key.clone(), values: values.clone(), diff: 1 }).collect();
        write(ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows });
    };
    let write = |sink: &mut dyn ViewSink, rows: &ViewRows| {
        sink.resume().expect("resume");
        batch_of(rows, &mut |batch| sink.apply(batch).expect("write"));
        sink.finish().expect("flush");
    };
    // The live sinks, written as a pipeline would have written them (all
    // three views in Redis: the `SCAN` walks them all), and the
    // ClickHouse shadow as the replay writes it.
    let (mut redis_sink, mut clickhouse_sink) = (None, None);
    for sink in &plan.config.sinks {
        let view_index = plan.views.iter().position(|v| v.name == sink.view.value).expect("view");
        let plan_view = Arc::clone(&plan.views[view_index]);
        match &sink.kind {
            SinkKind::Redis(config) => {
                let mut live = RedisViewSink::new(&sink.name, plan_view, config, source_names.clone()).expect("sink");
                write(&mut live, &rows[view_index]);
                if view_index == index {
                    redis_sink = Some((sink.name.clone(), config.clone()));
                }
            }
            SinkKind::ClickHouse(config) if view_index == index => {
                let mut live =
                    ClickHouseViewSink::new(&sink.name, plan_view, config, source_names.clone()).expect("sink");
                write(&mut live, &rows[index]);
                let swap = ClickHouseSwap::new(&sink.name, Arc::clone(view), config, source_names.clone(), "bench")
                    .expect("swap");
                write(&mut swap.shadow_sink().expect("shadow"), &rows[index]);
                clickhouse_sink = Some(swap);
            }
            _ => {}
        }
    }
    let (name, config) = redis_sink.expect("a Redis sink of product_sales");
    let mut clickhouse = clickhouse_sink.expect("a ClickHouse sink of product_sales");
    // Rows changed behind the sink's back, for the first swap to mend.
    let mut connection = redis::Client::open(redis.url()).expect("client").get_connection().expect("connection");
    let pattern = format!("{}product_sales:*", config.prefix);
    let changed: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query::<Vec<String>>(&mut connection)
        .expect("keys")
        .into_iter()
        .take(planted)
        .collect();
    for hash in &changed {
        redis::cmd("HSET").arg(hash).arg("units_sold").arg("-1").exec(&mut connection).expect("plant");
    }
    let redis_swap = || {
        let mut swap = RedisSwap::new(&name, Arc::clone(view), &config, source_names.clone(), "bench").expect("swap");
        let kept =
            Kept { rows: rows[index].clone(), positions: positions.clone(), newest_event_at: None, stored: Vec::new() };
        swap.pause("bench", Duration::from_secs(60)).expect("pause");
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let counts = swap.swap("bench", &positions, &Selection::default(), Some(kept)).expect("swap");
        let (took, cpu) = (started.elapsed(), cpu_seconds() - cpu);
        swap.release("bench").expect("release");
        assert_eq!(counts.rows, rows[index].len());
        (took, cpu, counts.rewritten)
    };
    let mut clickhouse_swap = || {
        clickhouse.pause("bench", Duration::from_secs(60)).expect("pause");
        let started = Instant::now();
        let counts = clickhouse.swap(&positions, &Selection::default()).expect("swap");
        let took = started.elapsed();
        clickhouse.release("bench").expect("release");
        assert_eq!((counts.rows, counts.rewritten), (rows[index].len(), 0));
        took
    };
    let (first, _, mended) = redis_swap();
    assert_eq!(mended, changed.len());
    println!(
        "swap of product_sales ({} rows): Redis, mending {} rows: {:.2} s",
        rows[index].len(),
        changed.len(),
        first.as_secs_f64()
    );
    // Then each alone, and both at once as a replay swaps them.
    let (mut alone, mut beside) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    let mut client_cpu = Vec::new();
    for _ in 0..swaps {
        let (took, cpu, mended) = redis_swap();
        assert_eq!(mended, 0);
        alone.0.push(took);
        client_cpu.push(cpu);
        alone.1.push(clickhouse_swap());
        let (redis_took, clickhouse_took) = std::thread::scope(|scope| {
            let clickhouse = scope.spawn(&mut clickhouse_swap);
            let (took, _, mended) = redis_swap();
            assert_eq!(mended, 0);
            (took, clickhouse.join().expect("ClickHouse swap"))
        });
        beside.0.push(redis_took);
        beside.1.push(clickhouse_took);
    }
    let range = |times: &mut Vec<Duration>| {
        times.sort();
        format!(
            "{:.2} to {:.2} s, median {:.2} s",
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64(),
            times[times.len() / 2].as_secs_f64()
        )
    };
    client_cpu.sort_by(f64::total_cmp);
    println!(
        "  nothing to mend, {swaps} swaps each: Redis alone {} (CPU s in this process: median {:.2}); ClickHouse alone {}",
        range(&mut alone.0),
        client_cpu[client_cpu.len() / 2],
        range(&mut alone.1)
    );
    println!("  both at once: Redis {}; ClickHouse {}", range(&mut beside.0), range(&mut beside.1));
}
