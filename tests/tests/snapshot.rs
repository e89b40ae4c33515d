//! State snapshots (`state:` in the YAML): a restart starts from the
//! snapshot instead of the start of the log, reads only what came after it,
//! and ends with the same views (and leaves the same snapshot) as a run
//! over the whole log, also when orders created before the snapshot change
//! after it and events from before it are delivered again after it. A snapshot ahead of a sink's
//! checkpoint, or one that cannot be read, is passed over.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use projector::commands;
use projector_core::config::{PipelinePlan, check_text};
use projector_dataflows::runner::{RunOptions, RunSummary};
use projector_datagen::{Generator, GeneratorConfig};
use projector_tests::services::{RedisServer, available};
use projector_tests::sinks::{assert_redis_holds, redis_sinks_yaml};
use projector_tests::{kafka, shipped_views_yaml, state_difference};

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "snapshot.yaml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The shipped views from the whole topic into Redis under `prefix`, with
/// snapshots at `state` if given.
fn config(topic: &str, redis: &RedisServer, prefix: &str, state: Option<&Path>) -> String {
    let state = state.map_or_else(String::new, |path| format!("state:\n  path: {}\n  every_ms: 50\n", path.display()));
    format!(
        "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    bounded: true\n{}\nsinks:\n{}{state}",
        kafka::brokers(),
        shipped_views_yaml(),
        redis_sinks_yaml(&redis.url(), prefix),
    )
}

fn run(text: &str, dir: &Path) -> RunSummary {
    let summary = commands::run_config(plan(text, dir), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    // Every run here catches up with its log (a bounded source), from a
    // snapshot or not, and says when its views were current.
    let current = summary.caught_up_after.expect("the run says when its views were current");
    assert!(current <= summary.elapsed, "current after {current:?}, but the run took {:?}", summary.elapsed);
    summary
}

#[test]
fn a_restart_from_a_snapshot_gives_the_views_of_the_whole_log() {
    if !available("redis-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::create_topic("snapshot", 4);
    let generator = GeneratorConfig {
        events: 30_000,
        seed: 3,
        redelivery_ratio: 0.02,
        bad_ratio: 0.0,
        ..GeneratorConfig::default()
    };
    let keyed: Vec<(String, String)> = Generator::new(generator).map(|r| (r.key, r.line)).collect();
    let (first, rest) = keyed.split_at(18_000);
    let state = dir.path().join("state.parquet");
    let text = config(&topic, &redis, "s:", Some(&state));

    kafka::append(&topic, first.to_vec());
    let before = run(&text, dir.path());
    assert!(before.restored_from.is_none());
    assert_eq!(before.records, first.len() as u64);
    assert!(state.exists(), "the run left a snapshot");

    // More events: later events of orders created before the snapshot, and
    // copies of events from before it. Among the later events, updates of
    // orders updated before it: each takes the place of a witness that the
    // snapshot holds (its order's latest update), which the next snapshot
    // must not keep.
    let mut more = rest.to_vec();
    more.extend(first.iter().step_by(97).cloned());
    let superseding: Vec<(String, String)> = first
        .iter()
        .filter(|(_, line)| line.contains("\"OrderUpdated\""))
        .step_by(3)
        .enumerate()
        .map(|(index, (key, line))| {
            let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["event_id"] = serde_json::Value::String(format!("update-after-the-snapshot-{index}"));
            event["sequence"] = serde_json::Value::from(9);
            (key.clone(), event.to_string())
        })
        .collect();
    assert!(superseding.len() > 50, "{} updates", superseding.len());
    more.extend(superseding);
    kafka::append(&topic, more.clone());
    let after = run(&text, dir.path());
    let (name, at) = after.restored_from.clone().expect("the restart started from the snapshot");
    assert_eq!(name, state.display().to_string());
    assert_eq!(at.total(), first.len() as u128);
    assert_eq!(after.records, more.len() as u64, "only what came after the snapshot was read");

    let mut lines: Vec<String> = first.iter().map(|(_, line)| line.clone()).collect();
    lines.extend(more.iter().map(|(_, line)| line.clone()));
    assert_redis_holds(&redis, &lines, "s:");

    // The same log from offset 0, into other keys and another snapshot.
    let whole_state = dir.path().join("whole.parquet");
    let whole = run(&config(&topic, &redis, "p:", Some(&whole_state)), dir.path());
    assert!(whole.restored_from.is_none());
    assert_eq!(whole.records, lines.len() as u64);
    assert_redis_holds(&redis, &lines, "p:");
    // The restart's snapshot (the restored rows, less what its events
    // took away, and what they added) is that run's, row for row.
    if let Some(difference) = state_difference(&state, &whole_state) {
        panic!("{difference}");
    }

    // The snapshot the second run left is at the end of the log: a third
    // run starts from it and reads nothing.
    let again = run(&text, dir.path());
    assert_eq!(again.restored_from.unwrap().1.total(), lines.len() as u128);
    assert_eq!(again.records, 0);
    assert_redis_holds(&redis, &lines, "s:");

    // The `event_id`s of the first run went from snapshot to snapshot:
    // copies of its order updates, delivered again now in other orders,
    // still do not count (a copy within its own order changes nothing
    // anyway: only the `event_id`s tell these apart).
    let orders: Vec<String> =
        first.iter().filter(|(_, line)| line.contains("\"OrderCreated\"")).map(|(key, _)| key.clone()).collect();
    let copies: Vec<(String, String)> = first
        .iter()
        .filter(|(_, line)| line.contains("\"OrderUpdated\""))
        .step_by(7)
        .zip(orders.iter().rev())
        .filter(|((key, _), other)| key != *other)
        .map(|((_, line), other)| {
            let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["aggregate_id"] = serde_json::Value::String(other.clone());
            event["payload"]["order_id"] = serde_json::Value::String(other.clone());
            (other.clone(), event.to_string())
        })
        .collect();
    assert!(copies.len() > 50, "{} copies", copies.len());
    kafka::append(&topic, copies.clone());
    let later = run(&text, dir.path());
    assert_eq!(later.restored_from.unwrap().1.total(), lines.len() as u128);
    assert_eq!(later.records, copies.len() as u64);
    lines.extend(copies.iter().map(|(_, line)| line.clone()));
    assert_redis_holds(&redis, &lines, "s:");

    // `projector status` shows the snapshot and where it stands.
    let report = projector::status::status(&plan(&text, dir.path())).unwrap();
    let line = format!("  {}: at {{\"events\":", state.display());
    assert!(report.contains("state snapshots ") && report.contains(&line), "{report}");
}

#[test]
fn a_snapshot_serves_new_sinks_and_is_passed_over_when_ahead_of_a_sink_or_unreadable() {
    if !available("redis-server") {
        return;
    }
    let redis = RedisServer::start(false);
    let dir = tempfile::tempdir().unwrap();
    let topic = kafka::create_topic("snapshot-ahead", 2);
    let generator = GeneratorConfig { events: 8_000, seed: 4, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let keyed: Vec<(String, String)> = Generator::new(generator).map(|r| (r.key, r.line)).collect();
    let lines: Vec<String> = keyed.iter().map(|(_, line)| line.clone()).collect();
    let state = dir.path().join("state.parquet");

    // Sinks under "a:" stop half way, without snapshots.
    kafka::append(&topic, keyed[..4_000].to_vec());
    run(&config(&topic, &redis, "a:", None), dir.path());
    kafka::append(&topic, keyed[4_000..].to_vec());
    // Sinks under "b:" and a snapshot at the end of the log.
    let first = run(&config(&topic, &redis, "b:", Some(&state)), dir.path());
    assert!(first.restored_from.is_none());

    // New sinks (nothing in them yet) start from the snapshot: its state
    // gives them the whole view at once.
    let fresh = run(&config(&topic, &redis, "c:", Some(&state)), dir.path());
    assert_eq!(fresh.restored_from.unwrap().1.total(), lines.len() as u128);
    assert_eq!(fresh.records, 0);
    assert_redis_holds(&redis, &lines, "c:");

    // The "a:" sinks stand before the snapshot: it would skip what they
    // still need, so the run reads the log from the start. (The snapshot
    // before it, kept as `.prev`, may be early enough; without it there is
    // none.)
    let _ = std::fs::remove_file(projector_sink_parquet::previous_path(&state));
    let behind = run(&config(&topic, &redis, "a:", Some(&state)), dir.path());
    assert!(behind.restored_from.is_none());
    assert_eq!(behind.records, lines.len() as u64);
    assert_redis_holds(&redis, &lines, "a:");

    // A damaged snapshot (and its predecessor) are passed over too.
    std::fs::write(&state, b"not parquet").unwrap();
    std::fs::write(projector_sink_parquet::previous_path(&state), b"nor this").unwrap();
    let damaged = run(&config(&topic, &redis, "d:", Some(&state)), dir.path());
    assert!(damaged.restored_from.is_none());
    assert_eq!(damaged.records, lines.len() as u64);
    assert_redis_holds(&redis, &lines, "d:");
}
