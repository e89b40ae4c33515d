//! Writing and reading a pipeline state snapshot (Parquet through Arrow):
//! what a run with `state:` does at every snapshot and at its end, and
//! what a restart does before anything else runs (reading the file, and
//! making the restored state of its rows), and freeing the rows
//! the state sink kept, as at the end of a run.
//!
//! The rows are a real snapshot's: the shipped views over 1,000,000
//! generated events (`BENCH_EVENTS`), run once with snapshots on in the
//! set-up, as in the restart part of `replay_restart`.
//!
//! Run: `cargo bench -p projector-benches --bench snapshot`

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use projector_core::sink::{SnapshotRows, ViewChange};
use projector_dataflows::runner::RunOptions;
use projector_sink_parquet::{read_rows, write_parquet};

fn snapshot(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("scratch folder");
    let events = dir.path().join("events.jsonl");
    let count: u64 = projector_benches::knob("BENCH_EVENTS", 1_000_000);
    std::fs::write(&events, projector_benches::generated_lines(count, 7).join("\n") + "\n").expect("events");
    let state = dir.path().join("state.parquet");
    let views = projector_tests::shipped_views_yaml();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n{views}\nstate:\n  path: {}\n  every_ms: 600000\n",
        events.display(),
        state.display()
    );
    let plan = projector_core::config::check_text(&text, "snapshot.yaml", dir.path()).expect("config");
    projector::commands::run_config(plan, RunOptions { workers: 2, ..RunOptions::default() }).expect("run");

    let shape = projector::components::state_shape();
    let (rows, positions) = read_rows(&shape, &state).expect("the snapshot");
    let out = dir.path().join("again.parquet");

    let mut group = c.benchmark_group("state snapshot");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows.len() as u64));
    group.bench_function(format!("write {} rows", rows.len()), |b| {
        b.iter(|| {
            write_parquet(&shape, rows.iter().map(|(key, values)| (key, values)), positions.as_deref(), &out)
                .expect("write")
        })
    });
    group.bench_function(format!("read {} rows", rows.len()), |b| {
        b.iter(|| read_rows(&shape, &state).expect("read").0.len())
    });
    // What a restart makes of the rows read: the `event_id`s to drop
    // later copies of, and the witnesses for the order fold.
    group.bench_function(format!("restore {} rows", rows.len()), |b| {
        b.iter_batched(
            || rows.clone(),
            |rows| projector_dataflows::state::restore(rows).expect("restore"),
            criterion::BatchSize::PerIteration,
        )
    });
    // What the state sink keeps (the rows as read, in a `SnapshotRows`),
    // freed as at the end of a run.
    group.bench_function(format!("free {} rows", rows.len()), |b| {
        b.iter_batched(
            || {
                let changes: Vec<ViewChange> = read_rows(&shape, &state)
                    .expect("read")
                    .0
                    .into_iter()
                    .map(|(key, values)| ViewChange { key, values, diff: 1 })
                    .collect();
                let mut kept = SnapshotRows::new(None);
                kept.apply(&changes, true);
                kept
            },
            drop,
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
