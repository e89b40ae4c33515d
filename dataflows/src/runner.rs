//! Runs a checked config: builds the dataflow on N timely workers, feeds it
//! from the sources and delivers view changes to the sinks.
//!
//! Each worker polls its share of every source (see
//! [`projector_core::source`]), sends the records into the dataflow at
//! their batch (epoch), and advances its input to the lowest batch any of
//! its readers can still produce. When every worker has passed a batch, the
//! output side delivers it. Results depend only on the input, never on the
//! number of workers or on how records were split among them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::input::InputSession;
use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::probe::Probe;
use tracing::{debug, info};

use projector_core::config::PipelinePlan;
use projector_core::event::BadRecordKind;
use projector_core::record::DeadLetter;
use projector_core::sink::{DeadLetterSink, ViewSink};
use projector_core::source::{Poll, Source, SourceError};

use crate::decode::{KeyedEvent, decode_record};
use crate::output::{OutputState, deliver_dead_letters, deliver_view};
use crate::{orders, views};

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Timely worker threads.
    pub workers: usize,
    /// Records taken from a reader per poll.
    pub poll_records: usize,
    /// Stop once every source is finished and every sink has flushed;
    /// otherwise keep running (serving) until `stop` is set.
    pub until_idle: bool,
    /// Set to stop the run.
    pub stop: Arc<AtomicBool>,
    /// Live counters others can watch while the run goes on.
    pub progress: Arc<RunProgress>,
    /// How long a worker with nothing to read sleeps before polling again
    /// (bounds the latency an idle source adds).
    pub idle_wait: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            poll_records: 8192,
            until_idle: true,
            stop: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(RunProgress::default()),
            idle_wait: Duration::from_millis(2),
        }
    }
}

/// Counters of a run in progress.
#[derive(Debug, Default)]
pub struct RunProgress {
    /// Records read from all sources so far.
    pub records: AtomicU64,
}

/// Where the run's output goes; only worker 0 writes.
#[derive(Default)]
pub struct Outputs {
    /// Sinks of each view, by view index in the plan: `(sink name, sink)`.
    pub view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>>,
    /// Dead-letter destinations.
    pub dead_letter_sinks: Vec<(String, Box<dyn DeadLetterSink>)>,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Records read from all sources.
    pub records: u64,
    /// Dead letters, by kind.
    pub dead_letters: Vec<(BadRecordKind, u64)>,
    /// Rows of each view at the end, by view name.
    pub view_rows: Vec<(String, i64)>,
    /// Wall time.
    pub elapsed: Duration,
}

impl RunSummary {
    /// All dead letters.
    pub fn dead_letter_count(&self) -> u64 {
        self.dead_letters.iter().map(|(_, n)| n).sum()
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A source failed for good.
    #[error("source {source_name:?}: {error}")]
    Source {
        /// The source's name.
        source_name: String,
        /// What went wrong.
        error: SourceError,
    },
    /// A sink or source failed for good; the message names it.
    #[error("{0}")]
    Failed(String),
    /// The timely runtime failed.
    #[error("dataflow runtime: {0}")]
    Runtime(String),
}

/// Runs the plan's views over `sources` (one per `plan.config.sources`
/// entry, or any list the caller builds) into `outputs`.
pub fn run(
    plan: Arc<PipelinePlan>,
    sources: Vec<(String, Arc<dyn Source>)>,
    outputs: Outputs,
    options: RunOptions,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let view_names: Vec<String> = plan.views.iter().map(|v| v.name.clone()).collect();
    let workers = options.workers.max(1);
    let state = Arc::new(OutputState::default());
    let outputs = Arc::new(Mutex::new(Some(outputs)));
    let records_read = Arc::clone(&options.progress);
    let config = if workers == 1 { timely::Config::thread() } else { timely::Config::process(workers) };

    let worker_state = Arc::clone(&state);
    let worker_records = Arc::clone(&records_read);
    let guards = timely::execute(config, move |worker| -> Result<(), RunError> {
        let index = worker.index();
        let peers = worker.peers();
        let state = Arc::clone(&worker_state);
        let mut outputs =
            if index == 0 { outputs.lock().ok().and_then(|mut o| o.take()) } else { None }.unwrap_or_default();

        let mut readers = Vec::new();
        for (source_name, source) in &sources {
            match source.reader(index, peers) {
                Ok(reader) => readers.push((source_name.clone(), reader)),
                Err(error) => {
                    state.fail(format!("source {source_name:?}: {error}"));
                    return Err(RunError::Source { source_name: source_name.clone(), error });
                }
            }
        }

        let mut events_input: InputSession<u64, KeyedEvent, isize> = InputSession::new();
        let mut dead_letters_input: InputHandleVec<u64, DeadLetter> = InputHandleVec::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let events = events_input.to_collection(scope);
            let dead_letters = dead_letters_input.to_stream(scope);
            let states = orders::order_states(events);
            let probe = timely::dataflow::ProbeHandle::new();
            for (view_index, view_plan) in plan.views.iter().enumerate() {
                let rows = views::view(Arc::clone(view_plan), states.clone());
                let rows = rows.probe_with(&probe);
                let sinks = outputs.view_sinks.get_mut(view_index).map(std::mem::take).unwrap_or_default();
                deliver_view(rows, &view_plan.name, view_index, index == 0, sinks, Arc::clone(&state));
            }
            let dead_letters = dead_letters.probe_with(&probe);
            deliver_dead_letters(dead_letters, std::mem::take(&mut outputs.dead_letter_sinks), Arc::clone(&state));
            probe
        });

        // Per reader: its current batch, and whether it is finished.
        let mut epochs: Vec<Option<u64>> = vec![Some(0); readers.len()];
        if let Ok(mut table) = state.progress.lock() {
            for (reader_index, (_, reader)) in readers.iter().enumerate() {
                table.record(index, reader_index, 0, reader.positions());
            }
        }
        let mut decoded: Vec<KeyedEvent> = Vec::with_capacity(options.poll_records);
        let mut bad: Vec<DeadLetter> = Vec::new();
        let mut input = Some((events_input, dead_letters_input));
        loop {
            if state.failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                break;
            }
            if options.stop.load(Ordering::Relaxed) && input.is_some() {
                // Stop reading; what was read completes and is flushed.
                info!(worker = index, "stopping: finishing the current batch");
                if let Ok(mut table) = state.progress.lock() {
                    for (reader_index, (_, reader)) in readers.iter().enumerate() {
                        if epochs[reader_index].is_some() {
                            table.record(index, reader_index, u64::MAX, reader.positions());
                        }
                    }
                }
                input = None;
            }
            let mut delivered = 0usize;
            // Whether some reader had more than one poll could take.
            let mut backlog = false;
            if let Some((events, dead_letters)) = input.as_mut() {
                for (reader_index, (source_name, reader)) in readers.iter_mut().enumerate() {
                    let Some(current) = epochs[reader_index] else { continue };
                    let before = reader.positions();
                    let source = reader_index as u16;
                    let poll = reader.poll(options.poll_records, &mut |record| match decode_record(source, record) {
                        Ok(event) => decoded.push(event),
                        Err(letter) => bad.push(letter),
                    });
                    let poll = match poll {
                        Ok(poll) => poll,
                        Err(error) => {
                            // Tell the other workers, so none waits for this one.
                            state.fail(format!("source {source_name:?}: {error}"));
                            return Err(RunError::Source { source_name: source_name.clone(), error });
                        }
                    };
                    let next = match poll {
                        Poll::Records { epoch } | Poll::Idle { epoch } => Some(epoch.max(current)),
                        Poll::Finished => None,
                    };
                    if let Ok(mut table) = state.progress.lock() {
                        match next {
                            Some(epoch) if epoch > current => table.record(index, reader_index, epoch, before),
                            None => table.record(index, reader_index, u64::MAX, reader.positions()),
                            _ => {}
                        }
                    }
                    epochs[reader_index] = next;
                    let time = next.unwrap_or(current);
                    backlog |= decoded.len() + bad.len() >= options.poll_records;
                    delivered += decoded.len() + bad.len();
                    for event in decoded.drain(..) {
                        events.update_at(event, time, 1);
                    }
                    for letter in bad.drain(..) {
                        dead_letters.send(letter);
                    }
                }
                worker_records.records.fetch_add(delivered as u64, Ordering::Relaxed);
                match epochs.iter().flatten().min() {
                    Some(&low) => {
                        if low > *events.time() {
                            events.advance_to(low);
                            dead_letters.advance_to(low);
                        }
                        events.flush();
                    }
                    None => {
                        debug!(worker = index, "all sources finished");
                        input = None;
                    }
                }
            }
            if input.is_none() && probe.done() {
                break;
            }
            if backlog {
                worker.step();
            } else {
                // Caught up: let the dataflow work, then sleep until it has
                // more to do or `idle_wait` passes, so that a trickle of
                // records does not spin the core the clients' threads need.
                worker.step_or_park(Some(options.idle_wait));
            }
        }
        if !options.until_idle && input.is_none() && !options.stop.load(Ordering::Relaxed) {
            info!(worker = index, "all bounded sources processed; serving until stopped");
            while !options.stop.load(Ordering::Relaxed) {
                worker.step_or_park(Some(Duration::from_millis(100)));
            }
        }
        Ok(())
    })
    .map_err(RunError::Runtime)?;

    for result in guards.join() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(panic) => return Err(RunError::Runtime(panic)),
        }
    }
    if let Some(message) = state.failure.lock().ok().and_then(|f| f.clone()) {
        return Err(RunError::Failed(message));
    }
    let dead_letters = state.dead_letters.lock().map(|d| d.iter().map(|(k, n)| (*k, *n)).collect()).unwrap_or_default();
    let view_rows = state
        .view_rows
        .lock()
        .map(|rows| {
            rows.iter()
                .filter_map(|(index, count)| Some((view_names.get(*index)?.clone(), count.load(Ordering::Relaxed))))
                .collect()
        })
        .unwrap_or_default();
    Ok(RunSummary {
        records: records_read.records.load(Ordering::Relaxed),
        dead_letters,
        view_rows,
        elapsed: started.elapsed(),
    })
}
