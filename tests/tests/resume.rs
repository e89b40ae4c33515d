//! Resuming sinks from their checkpoints: after a restart the pipeline
//! rebuilds its state from the log, and each sink takes only the changes
//! after the position it holds, even when sinks stopped at different points,
//! the batches of the new run are cut differently, or a sink's position does
//! not fit the others (it is reset and rebuilt). Each ends equal to a sink
//! that took the whole log in one run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use projector_core::config::check_text;
use projector_core::sink::{SinkError, SourcePositions, ViewBatch, ViewRows, ViewSink};
use projector_core::source::Source;
use projector_dataflows::output::apply_changes;
use projector_dataflows::runner::{Outputs, RunOptions, run};
use projector_datagen::{Generator, GeneratorConfig};
use projector_source_file::FileSource;
use projector_tests::shipped_config_text;

/// What a sink holds between runs: the view's rows and the positions they
/// reflect, as an exactly-once store would keep them.
#[derive(Debug, Default)]
struct Store {
    rows: ViewRows,
    positions: Option<SourcePositions>,
    resets: usize,
    /// Batches with changes handed over again although the store held them.
    repeated: usize,
}

/// A sink over a [`Store`].
struct MemorySink {
    store: Arc<Mutex<Store>>,
}

impl ViewSink for MemorySink {
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        Ok(self.store.lock().unwrap().positions.clone())
    }

    fn reset(&mut self) -> Result<(), SinkError> {
        let mut store = self.store.lock().unwrap();
        store.rows.clear();
        store.positions = None;
        store.resets += 1;
        Ok(())
    }

    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let mut store = self.store.lock().unwrap();
        if let Some(held) = &store.positions
            && batch.positions.le(held)
            && !batch.changes.is_empty()
        {
            store.repeated += 1;
        }
        apply_changes(&mut store.rows, batch.changes);
        store.positions = Some(batch.positions.clone());
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn run_file(path: &Path, sinks: Vec<Vec<(String, Box<dyn ViewSink>)>>, workers: usize, batch: u64) {
    let dir = path.parent().unwrap();
    let plan = check_text(&shipped_config_text(), "pipelines.yaml", dir).unwrap();
    let source: Arc<dyn Source> = Arc::new(FileSource::new(0, path, batch));
    run(
        Arc::new(plan),
        vec![("events".into(), source)],
        Outputs { view_sinks: sinks, ..Outputs::default() },
        RunOptions { workers, poll_records: 50, ..RunOptions::default() },
    )
    .unwrap();
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn sinks_resume_from_their_own_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let config = GeneratorConfig { events: 6000, seed: 11, bad_ratio: 0.02, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(config).map(|r| r.line).collect();
    let (quarter, first, all) =
        (dir.path().join("quarter.jsonl"), dir.path().join("first.jsonl"), dir.path().join("all.jsonl"));
    write_lines(&quarter, &lines[..lines.len() / 4]);
    write_lines(&first, &lines[..lines.len() / 2]);
    write_lines(&all, &lines);
    let views = 3;

    // The reference: one sink per view that takes the whole log in one run.
    let whole: Vec<Arc<Mutex<Store>>> = (0..views).map(|_| Arc::default()).collect();
    let sinks = whole
        .iter()
        .map(|store| vec![("whole".to_string(), Box::new(MemorySink { store: store.clone() }) as _)])
        .collect();
    run_file(&all, sinks, 2, 500);

    // Per view: a sink that stopped after the first half of the log, one
    // that stopped after the first quarter (its process died earlier), and
    // one whose position fits neither.
    let steady: Vec<Arc<Mutex<Store>>> = (0..views).map(|_| Arc::default()).collect();
    let lagging: Vec<Arc<Mutex<Store>>> = (0..views).map(|_| Arc::default()).collect();
    let odd: Vec<Arc<Mutex<Store>>> = (0..views).map(|_| Arc::default()).collect();
    let sinks_of = |stores: &[&Vec<Arc<Mutex<Store>>>]| -> Vec<Vec<(String, Box<dyn ViewSink>)>> {
        (0..views)
            .map(|view| {
                stores
                    .iter()
                    .map(|store| ("memory".to_string(), Box::new(MemorySink { store: store[view].clone() }) as _))
                    .collect()
            })
            .collect()
    };
    run_file(&quarter, sinks_of(&[&lagging]), 2, 200);
    run_file(&first, sinks_of(&[&steady, &odd]), 2, 300);
    for view in 0..views {
        let mut odd = odd[view].lock().unwrap();
        odd.rows.insert(Default::default(), Default::default());
        odd.positions = Some(SourcePositions([((0, 0), 10), ((0, 9), 5)].into_iter().collect()));
        let (steady, lagging) = (steady[view].lock().unwrap(), lagging[view].lock().unwrap());
        assert!(lagging.positions.as_ref().unwrap().total() < steady.positions.as_ref().unwrap().total());
    }

    // Restart over the whole log, batches cut differently, on 1 worker.
    run_file(&all, sinks_of(&[&steady, &lagging, &odd]), 1, 700);
    for view in 0..views {
        let want = whole[view].lock().unwrap();
        assert!(!want.rows.is_empty());
        for (name, store) in [("steady", &steady[view]), ("lagging", &lagging[view]), ("odd", &odd[view])] {
            let got = store.lock().unwrap();
            assert_eq!(got.repeated, 0, "view {view}: {name} was handed batches it held");
            assert_eq!(got.rows.len(), want.rows.len(), "view {view}: {name} rows");
            assert!(got.rows == want.rows, "view {view}: {name} differs from the one-run sink");
            assert_eq!(got.positions, want.positions, "view {view}: {name} positions");
        }
        // Every sink that held nothing was reset at its first run; the odd
        // one again at the restart.
        assert_eq!(steady[view].lock().unwrap().resets, 1);
        assert_eq!(odd[view].lock().unwrap().resets, 2);
    }
}

/// One memory sink per view, named `sink "memory"`, over `stores`.
fn memory_sinks(stores: &[Arc<Mutex<Store>>]) -> Vec<Vec<(String, Box<dyn ViewSink>)>> {
    let sink = |store: &Arc<Mutex<Store>>| Box::new(MemorySink { store: Arc::clone(store) }) as Box<dyn ViewSink>;
    stores.iter().map(|store| vec![("sink \"memory\"".to_string(), sink(store))]).collect()
}

/// A file source that reports its log to start at `start` (partition 0),
/// as a Kafka topic's low watermark does once retention deleted records.
struct Shortened {
    inner: FileSource,
    start: u64,
}

impl Source for Shortened {
    fn reader(
        &self,
        index: usize,
        peers: usize,
    ) -> Result<Box<dyn projector_core::source::SourceReader>, projector_core::source::SourceError> {
        self.inner.reader(index, peers)
    }

    fn bounds(&self) -> Option<projector_core::source::LogBounds> {
        let end = self.inner.bounds()?[&0].1;
        Some([(0, (self.start, end))].into_iter().collect())
    }
}

/// The front of the log was deleted while the pipeline was stopped (a
/// Kafka topic's retention passed it): a sink that stands before the log's
/// start now is refused, with what to do, since the records between were
/// never read and the views would go on without them; nothing is written.
/// A sink at the start resumes. (The source here only reports a later
/// start, as a low watermark would; `kafka.rs` has the same refusal after
/// the mock broker really deleted the records.)
#[test]
fn a_run_refuses_sinks_whose_records_were_deleted_unread() {
    let dir = tempfile::tempdir().unwrap();
    let config = GeneratorConfig { events: 2000, seed: 5, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(config).map(|r| r.line).collect();
    let path = dir.path().join("events.jsonl");
    write_lines(&path, &lines[..1000]);
    let stores: Vec<Arc<Mutex<Store>>> = (0..3).map(|_| Arc::default()).collect();
    run_file(&path, memory_sinks(&stores), 2, 300);
    let held = stores[0].lock().unwrap().positions.clone().unwrap();
    let at = held.get(0, 0);
    assert!(at > 1000, "{held:?}");
    write_lines(&path, &lines);

    let plan = Arc::new(check_text(&shipped_config_text(), "pipelines.yaml", dir.path()).unwrap());
    let run_from = |start: u64| {
        let source: Arc<dyn Source> = Arc::new(Shortened { inner: FileSource::new(0, &path, 300), start });
        run(
            Arc::clone(&plan),
            vec![("events".into(), source)],
            Outputs { view_sinks: memory_sinks(&stores), ..Outputs::default() },
            RunOptions { workers: 2, ..RunOptions::default() },
        )
    };
    let refused = run_from(at + 5).map(|_| ()).unwrap_err().to_string();
    let expected = format!(
        "sink \"memory\" stands at offset {at} of partition 0 of source \"events\", but the log there now starts at {}",
        at + 5
    );
    assert!(refused.contains(&expected), "{refused}");
    assert!(refused.contains("projector drop -c"), "{refused}");
    assert_eq!(stores[0].lock().unwrap().positions, Some(held.clone()), "nothing was written");

    run_from(at).unwrap();
    let resumed = stores[0].lock().unwrap().positions.clone().unwrap();
    assert!(resumed.get(0, 0) > at, "{resumed:?}");
}

/// The same for the state snapshot a run would start from: the sinks stand
/// after the log's start, but the snapshot before it, so the events between
/// would be missing from the state the views go on from.
#[test]
fn a_run_refuses_a_state_snapshot_whose_records_were_deleted_unread() {
    let dir = tempfile::tempdir().unwrap();
    let config = GeneratorConfig { events: 3000, seed: 6, ..GeneratorConfig::default() };
    let lines: Vec<String> = Generator::new(config).map(|r| r.line).collect();
    let path = dir.path().join("events.jsonl");
    let snapshot = dir.path().join("state.parquet");
    let plan = Arc::new(check_text(&shipped_config_text(), "pipelines.yaml", dir.path()).unwrap());
    let stores: Vec<Arc<Mutex<Store>>> = (0..3).map(|_| Arc::default()).collect();
    let run_with = |start: u64, snapshots: bool| {
        let view_sinks = memory_sinks(&stores);
        let (state_sinks, restore) = match snapshots {
            true => projector::components::state_snapshots_at(&snapshot, Duration::from_secs(60), &["events".into()]),
            false => Default::default(),
        };
        let source: Arc<dyn Source> = Arc::new(Shortened { inner: FileSource::new(0, &path, 300), start });
        run(
            Arc::clone(&plan),
            vec![("events".into(), source)],
            Outputs { view_sinks, state_sinks, restore, ..Outputs::default() },
            RunOptions { workers: 2, ..RunOptions::default() },
        )
    };
    write_lines(&path, &lines[..1000]);
    run_with(0, true).unwrap();
    let at = stores[0].lock().unwrap().positions.clone().unwrap().get(0, 0);
    // The sinks go on without snapshots; the snapshot stays at `at`.
    write_lines(&path, &lines[..2000]);
    run_with(0, false).unwrap();
    write_lines(&path, &lines);

    let refused = run_with(at + 5, true).map(|_| ()).unwrap_err().to_string();
    let expected = format!(
        "the state snapshot {} stands at offset {at} of partition 0 of source \"events\", but the log there now \
         starts at {}",
        snapshot.display(),
        at + 5
    );
    assert!(refused.contains(&expected), "{refused}");
    let summary = run_with(at, true).unwrap();
    assert!(summary.restored_from.is_some(), "from the start of the log, the snapshot serves");
}
