//! Replay and restart, end to end, with the broker (librdkafka's mock
//! cluster) in this process and real `redis-server` and
//! `clickhouse-server` processes on loopback.
//!
//! 1. Replay: about 1,000,000 events in a 64-partition topic, run into the
//!    three views and both sinks of every view; then `projector replay` of
//!    each view in turn, and of the three in one pass (2 workers; no
//!    pipeline runs meanwhile, so the sinks hold still): prints events/s and
//!    wall time of each, and the CPU seconds this process and the Redis
//!    and ClickHouse servers used meanwhile.
//! 2. Restart: the same log with state snapshots on (`state:`): the run that
//!    writes the snapshot, then a restart from it, then the same restart
//!    without a snapshot (from offset 0); then, with a tenth more events
//!    appended (`BENCH_MORE_EVENTS`), a restart from the snapshot that
//!    reads them. Each run ends once it has caught up with the log (a
//!    bounded source); its wall time is the time to be current again plus
//!    the end of a run (a new snapshot written when the run read something,
//!    its state freed), which a running pipeline does not wait for, and
//!    each restart also prints when its views were current
//!    (`RunSummary::caught_up_after`).
//!
//! Run: `cargo bench -p projector-benches --bench replay_restart`. Under
//! `cargo test` it runs small. Knobs: `BENCH_EVENTS`, `BENCH_PARTITIONS`,
//! `BENCH_PARTS` (a comma list of replay, restart), `BENCH_VIEWS` (a comma
//! list of the views to replay; all three by default), `BENCH_DAY` (replay
//! only that day's rows, `--from DAY --to DAY`, for the views with a date
//! key).

use std::path::Path;
use std::time::{Duration, Instant};

use projector::commands;
use projector::replay::{ReplayOptions, replay};
use projector_benches::{bench_topic, cpu_seconds, cpu_seconds_of, knob, mock_broker};
use projector_core::config::{PipelinePlan, check_text};
use projector_core::value::parse_date;
use projector_dataflows::runner::{RunOptions, RunSummary};
use projector_datagen::{Generator, GeneratorConfig};
use projector_tests::services::{ClickHouseServer, RedisServer, available};
use projector_tests::shipped_views_yaml;
use projector_tests::sinks::{VIEWS, clickhouse_sinks_yaml, redis_sinks_yaml};

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let size = |bench: u64, test: u64| if benchmarking { bench } else { test };
    let events = knob("BENCH_EVENTS", size(1_000_000, 20_000));
    let partitions = knob("BENCH_PARTITIONS", 64);
    let topic = bench_topic("replay");
    let brokers = mock_broker(&[(topic.clone(), partitions)]);
    let records =
        Generator::new(GeneratorConfig { events, seed: 42, ..GeneratorConfig::default() }).map(|r| (r.key, r.line));
    let appended = projector_source_kafka::produce::append_all(&brokers, &topic, records).expect("append");
    let source = format!("  events:\n    type: kafka\n    brokers: {brokers}\n    topic: {topic}\n    bounded: true\n");
    let parts: String = knob("BENCH_PARTS", "replay,restart".to_string());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    if part("replay") && available("redis-server") && available("clickhouse-server") {
        replay_views(&source, appended);
    }
    if part("restart") {
        restart(&source, appended, &|events| {
            let records = Generator::new(GeneratorConfig { events, seed: 43, ..GeneratorConfig::default() })
                .map(|r| (r.key, r.line));
            projector_source_kafka::produce::append_all(&brokers, &topic, records).expect("append")
        });
    }
}

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "bench.yaml", dir).unwrap_or_else(|e| panic!("{e}"))
}

fn run(plan: PipelinePlan) -> (RunSummary, f64) {
    let started = Instant::now();
    let summary = commands::run_config(plan, RunOptions { workers: 2, ..RunOptions::default() }).expect("run");
    (summary, started.elapsed().as_secs_f64())
}

fn replay_views(source: &str, appended: u64) {
    let redis = RedisServer::start(false);
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().expect("scratch folder");
    let text = format!(
        "version: 1\nsources:\n{source}{}\nsinks:\n{}{}",
        shipped_views_yaml(),
        redis_sinks_yaml(&redis.url(), "bench:"),
        clickhouse_sinks_yaml(&clickhouse.url(), "bench", 1000)
    );
    let (summary, seconds) = run(plan(&text, dir.path()));
    assert_eq!(summary.records, appended);
    println!("ingest into the views and both sinks: {appended} events in {seconds:.2} s (2 workers)");
    let chosen: String = knob("BENCH_VIEWS", VIEWS.join(","));
    let views: Vec<&str> = chosen.split(',').map(str::trim).filter(|v| VIEWS.contains(v)).collect();
    let day: String = knob("BENCH_DAY", String::new());
    let day = (!day.is_empty()).then(|| parse_date(&day).expect("BENCH_DAY is a date, YYYY-MM-DD"));
    let servers = [("redis-server", redis.pid()), ("clickhouse-server", clickhouse.pid())];
    let mut total = 0.0;
    for &view in &views {
        total += replay_once(&plan(&text, dir.path()), &[view], day, &servers);
    }
    println!(
        "replay of {} views one by one: {:.2} s, {:.0} events/s per view on average",
        views.len(),
        total,
        views.len() as f64 * appended as f64 / total
    );
    if views.len() > 1 {
        let together = replay_once(&plan(&text, dir.path()), &views, day, &servers);
        println!(
            "replay of {} views in one pass: {together:.2} s, {:.0} events/s, {:.0} events/s per view",
            views.len(),
            appended as f64 / together,
            views.len() as f64 * appended as f64 / together
        );
    }
}

/// One `projector replay` of `views` (of `day` alone, for those with a
/// date key), printed with the CPU seconds this process and each of
/// `servers` (name, process id) used meanwhile: on 2 cores shared by all
/// of them, their sum is what the replay costs; answers its wall time in
/// seconds.
fn replay_once(plan: &PipelinePlan, views: &[&str], day: Option<i32>, servers: &[(&str, Option<u32>)]) -> f64 {
    let dated = views.iter().all(|view| {
        plan.view(view).is_some_and(|v| v.keys.iter().any(|k| k.ty == projector_core::value::FieldType::Date))
    });
    let day = day.filter(|_| dated);
    let options = ReplayOptions {
        views: views.iter().map(|view| view.to_string()).collect(),
        from: day,
        to: day,
        // No pipeline runs: no ClickHouse sink answers a hold.
        ack_wait: Duration::ZERO,
        progress_bar: false,
        checkpoint_every: None,
        accept_deleted_records: false,
    };
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let servers_before: Vec<f64> = servers.iter().map(|(_, pid)| cpu_seconds_of(*pid)).collect();
    let replayed = replay(plan, &options, RunOptions { workers: 2, ..RunOptions::default() }).expect("replay");
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let servers_cpu: Vec<String> = servers
        .iter()
        .zip(servers_before)
        .map(|((name, pid), before)| format!("{name} {:.2}", cpu_seconds_of(*pid) - before))
        .collect();
    let dataflow = replayed.run.elapsed.as_secs_f64();
    let rows: Vec<String> =
        replayed.swaps.iter().map(|s| format!("{} {} rows, held {} ms", s.sink, s.rows, s.held.as_millis())).collect();
    println!(
        "replay {}: {} events in {seconds:.2} s = {:.0} events/s end to end (dataflow into the shadows {dataflow:.2} s = {:.0} events/s; {cpu:.2} CPU s in this process, {}); {}",
        views.join("+"),
        replayed.run.records,
        replayed.run.records as f64 / seconds,
        replayed.run.records as f64 / dataflow,
        servers_cpu.join(", "),
        rows.join(", ")
    );
    seconds
}

/// The restart part; `append` appends that many more events (new orders)
/// and answers how many records it appended.
fn restart(source: &str, appended: u64, append: &dyn Fn(u64) -> u64) {
    let dir = tempfile::tempdir().expect("scratch folder");
    let state = dir.path().join("state.parquet");
    let views = shipped_views_yaml();
    let with_state =
        format!("version: 1\nsources:\n{source}{views}\nstate:\n  path: {}\n  every_ms: 600000\n", state.display());
    let without = format!("version: 1\nsources:\n{source}{views}\n");

    let (first, seconds) = run(plan(&with_state, dir.path()));
    assert!(first.restored_from.is_none());
    let size = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
    println!(
        "first run with snapshots on: {} events in {seconds:.2} s; snapshot {:.1} MiB",
        first.records,
        size as f64 / (1 << 20) as f64
    );
    let (restored, with_snapshot) = run(plan(&with_state, dir.path()));
    assert!(restored.restored_from.is_some(), "the restart did not start from the snapshot");
    assert_eq!(restored.records, 0);
    let (full, from_zero) = run(plan(&without, dir.path()));
    assert_eq!(full.records, appended);
    println!(
        "restart after {appended} events: from the snapshot {with_snapshot:.2} s ({}), from offset 0 {from_zero:.2} s ({}; {:.1}x)",
        current_after(&restored),
        current_after(&full),
        from_zero / with_snapshot
    );
    // A restart as it mostly is: the log went on after the snapshot.
    let added = append(knob("BENCH_MORE_EVENTS", appended / 10));
    let (later, seconds) = run(plan(&with_state, dir.path()));
    assert!(later.restored_from.is_some(), "the restart did not start from the snapshot");
    assert_eq!(later.records, added);
    println!("restart from the snapshot with {added} events after it: {seconds:.2} s ({})", current_after(&later));
}

/// When a run's views were current again, as the bench prints it.
fn current_after(summary: &RunSummary) -> String {
    let after = summary.caught_up_after.expect("a bounded run catches up");
    format!("current after {:.2} s", after.as_secs_f64())
}
