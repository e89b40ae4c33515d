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
use projector_core::packed::PackedRow;
use projector_core::record::{DeadLetter, LogPosition};
use projector_core::sink::{DeadLetterSink, SourcePositions, ViewSink};
use projector_core::source::{LogBounds, Poll, Source, SourceError};
use projector_core::value::{Row, Timestamp};

use crate::decode::{KeyedEvent, decode_record};
use crate::orders::OrderInput;
use crate::output::{Cutting, OutputState, ResumedSink, deliver_dead_letters, deliver_view, with_retries};
use crate::state::STATE_NAME;
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
    /// Stop reading once every reader has caught up with where its log
    /// ended when the run started (a file: its end; a Kafka partition: its
    /// end offset then), as if stopped then: what was read completes and
    /// is flushed. For a bounded look at an unbounded log (`export`).
    pub until_caught_up: bool,
    /// Set to stop the run.
    pub stop: Arc<AtomicBool>,
    /// Live counters others can watch while the run goes on.
    pub progress: Arc<RunProgress>,
    /// How long a worker with nothing to read sleeps before polling again
    /// (bounds the latency an idle source adds), unless every reader wakes
    /// it when records come (`SourceReader::idle_until`, as Kafka's do):
    /// then it sleeps until the first of their batches ends.
    pub idle_wait: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            poll_records: 8192,
            until_idle: true,
            until_caught_up: false,
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
    /// Workers whose readers all caught up with where their logs ended
    /// when they started.
    caught_up_workers: AtomicU64,
    /// Workers of the run.
    workers: AtomicU64,
    /// The batch after which the output reflects all of that: one past the
    /// latest batch those workers had sent records to.
    caught_up_upper: AtomicU64,
    /// Nanoseconds from the run's start until its output got past that
    /// batch (0: not yet).
    caught_up_nanos: AtomicU64,
    /// Dead letters so far.
    pub dead_letters: AtomicU64,
    /// Writes to each sink, by sink name.
    sink_writes: Mutex<std::collections::BTreeMap<String, SinkWrites>>,
}

/// What one sink's writes took so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SinkWrites {
    /// Batches written (each after its retries).
    pub writes: u64,
    /// Changes (rows written or removed) those batches held.
    pub changes: u64,
    /// Seconds those writes took, retries included.
    pub seconds: f64,
    /// Failed attempts (each retried or fatal).
    pub errors: u64,
}

impl RunProgress {
    /// Notes a write of `changes` to sink `name` that took `seconds`.
    pub fn sink_wrote(&self, name: &str, changes: usize, seconds: f64) {
        if let Ok(mut sinks) = self.sink_writes.lock() {
            let entry = sinks.entry(name.to_string()).or_default();
            entry.writes += 1;
            entry.changes += changes as u64;
            entry.seconds += seconds;
        }
    }

    /// Notes a failed attempt to write to sink `name`.
    pub fn sink_failed(&self, name: &str) {
        if let Ok(mut sinks) = self.sink_writes.lock() {
            sinks.entry(name.to_string()).or_default().errors += 1;
        }
    }

    /// Writes so far, by sink name.
    pub fn sink_writes(&self) -> Vec<(String, SinkWrites)> {
        self.sink_writes.lock().map(|s| s.iter().map(|(n, w)| (n.clone(), w.clone())).collect()).unwrap_or_default()
    }

    /// Once every reader has caught up with where its log ended when the
    /// run started: the batch whose completion means the output reflects
    /// all of it (output with an `upper` above it does).
    pub fn caught_up_upper(&self) -> Option<u64> {
        let workers = self.workers.load(Ordering::Acquire);
        (workers > 0 && self.caught_up_workers.load(Ordering::Acquire) >= workers)
            .then(|| self.caught_up_upper.load(Ordering::Acquire))
    }

    /// How long after its start the run's views first reflected all that
    /// its logs held when it started (their batch computed and handed to
    /// the sinks, which may still be writing it): for a restart, the time
    /// to be current again. `None` until then.
    pub fn caught_up_after(&self) -> Option<Duration> {
        match self.caught_up_nanos.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

/// The name the orders output is delivered under.
pub const ORDERS_OUTPUT: &str = "orders";

/// The longest a worker sleeps with nothing to read, even when every reader
/// wakes it as records come.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(100);

/// Where the run's output goes; only worker 0 writes.
#[derive(Default)]
pub struct Outputs {
    /// Sinks of each view, by view index in the plan: `(sink name, sink)`.
    /// One more entry after the last view, if present, takes the current
    /// state of every order (rows of [`projector_core::order::OrderState::to_row`], key
    /// `order_id`, the view name [`ORDERS_OUTPUT`]).
    pub view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>>,
    /// Dead-letter destinations.
    pub dead_letter_sinks: Vec<(String, Box<dyn DeadLetterSink>)>,
    /// Where snapshots of the pipeline's state go (rows of
    /// [`crate::state::state_fields`]); none: no snapshots are taken.
    pub state_sinks: Vec<(String, Box<dyn ViewSink>)>,
    /// Snapshots the run may start from instead of the start of the log,
    /// newest first: the run takes the first one at or before every sink's
    /// checkpoint.
    pub restore: Vec<Restore>,
}

/// A snapshot of the pipeline's state the run may start from.
pub struct Restore {
    /// What it is (a path), for messages.
    pub name: String,
    /// The log positions it reflects.
    pub positions: SourcePositions,
    /// Reads its rows (of [`crate::state::state_fields`]).
    #[allow(clippy::type_complexity)]
    pub load: Box<dyn FnOnce() -> Result<Vec<(Row, Row)>, String> + Send>,
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
    /// When the views first reflected all that the logs held at the start
    /// ([`RunProgress::caught_up_after`]).
    pub caught_up_after: Option<Duration>,
    /// The snapshot the run started from, and the positions it reflects.
    pub restored_from: Option<(String, SourcePositions)>,
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
    /// A sink's store lost its data
    /// ([`projector_core::sink::SinkError::Lost`]): running again
    /// rewrites that sink from the start while the others resume.
    #[error("{0}")]
    SinkLost(String),
    /// The timely runtime failed.
    #[error("dataflow runtime: {0}")]
    Runtime(String),
}

/// A record read beyond the current resume barrier, held for a later batch.
type Held = (LogPosition, Result<(KeyedEvent, Timestamp), DeadLetter>);

/// A sink, and the positions it reported at resume.
type OpenedSink = (String, Box<dyn ViewSink>, Option<SourcePositions>);

/// Sends decoded records into the dataflow at `time`, and keeps `latest`
/// at the latest time records were sent at.
fn send(
    events: &mut InputSession<u64, KeyedEvent, isize>,
    dead_letters: &mut InputHandleVec<u64, DeadLetter>,
    decoded: &mut Vec<KeyedEvent>,
    bad: &mut Vec<DeadLetter>,
    time: u64,
    latest: &mut u64,
) {
    *latest = (*latest).max(time);
    for event in decoded.drain(..) {
        events.update_at(event, time, 1);
    }
    for letter in bad.drain(..) {
        dead_letters.send(letter);
    }
}

/// Whether a record at `position` of `source` belongs after `barrier`.
fn beyond(barrier: Option<&SourcePositions>, source: u16, position: LogPosition) -> bool {
    barrier.is_some_and(|b| !b.before(source, position))
}

/// Puts a decoded record with the events or with the dead letters, and
/// keeps `newest` at the latest `occurred_at` of the events.
fn route(
    item: Result<(KeyedEvent, Timestamp), DeadLetter>,
    decoded: &mut Vec<KeyedEvent>,
    bad: &mut Vec<DeadLetter>,
    newest: &mut Option<Timestamp>,
) {
    match item {
        Ok((event, occurred_at)) => {
            *newest = (*newest).max(Some(occurred_at));
            decoded.push(event);
        }
        Err(letter) => bad.push(letter),
    }
}

/// Whether a reader at `positions` has read everything before `barrier`.
fn reached(positions: &SourcePositions, barrier: &SourcePositions) -> bool {
    positions.0.iter().all(|((source, partition), next)| *next >= barrier.get(*source, *partition))
}

/// A reader's positions, none beyond `barrier`.
fn below(positions: &SourcePositions, barrier: &SourcePositions) -> SourcePositions {
    SourcePositions(
        positions
            .0
            .iter()
            .map(|(&(source, partition), &next)| ((source, partition), next.min(barrier.get(source, partition))))
            .collect(),
    )
}

/// Asks every sink where it stands and plans the resume: the distinct
/// positions sinks hold become barriers, in order, and each sink skips the
/// batches up to its own barrier. A sink whose position is not in line with
/// the others (neither before nor after one of them) is reset and rebuilt
/// from the start.
fn resume_sinks(
    view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>>,
    state: &OutputState,
) -> Result<(Vec<Vec<ResumedSink>>, Vec<SourcePositions>), RunError> {
    let mut opened: Vec<Vec<OpenedSink>> = Vec::new();
    for sinks in view_sinks {
        let mut view = Vec::new();
        for (name, mut sink) in sinks {
            // A sink that is down at the start is waited for, like one that
            // goes down later.
            let at = with_retries(&name, state, || sink.resume()).map_err(RunError::Failed)?;
            view.push((name, sink, at));
        }
        opened.push(view);
    }
    let mut held: Vec<SourcePositions> = opened.iter().flatten().filter_map(|(_, _, at)| at.clone()).collect();
    held.sort_by_key(SourcePositions::total);
    held.dedup();
    let barriers = longest_chain(&held);
    let mut resumed = Vec::new();
    for view in opened {
        let mut sinks = Vec::new();
        for (name, mut sink, at) in view {
            let skip_until = match at.and_then(|at| barriers.iter().position(|b| *b == at)) {
                Some(index) => {
                    info!(sink = %name, batch = index + 1, "resuming from the sink's checkpoint");
                    index as u64 + 1
                }
                None => {
                    with_retries(&name, state, || sink.reset()).map_err(RunError::Failed)?;
                    0
                }
            };
            sinks.push(ResumedSink { name, sink, skip_until });
        }
        resumed.push(sinks);
    }
    Ok((resumed, barriers))
}

/// The longest list of `positions` (sorted by total) in which each is at
/// or after the one before: the most sinks that can resume in one pass.
fn longest_chain(positions: &[SourcePositions]) -> Vec<SourcePositions> {
    // best[i]: (length of the longest chain ending at i, the element before i).
    let mut best: Vec<(usize, Option<usize>)> = Vec::with_capacity(positions.len());
    for (i, position) in positions.iter().enumerate() {
        let before = (0..i).filter(|&j| positions[j].le(position)).max_by_key(|&j| best[j].0);
        best.push((before.map_or(1, |j| best[j].0 + 1), before));
    }
    let mut at = (0..positions.len()).max_by_key(|&i| best[i].0);
    let mut chain = Vec::new();
    while let Some(i) = at {
        chain.push(positions[i].clone());
        at = best[i].1;
    }
    chain.reverse();
    chain
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
    let state = Arc::new(OutputState { counters: Arc::clone(&options.progress), ..OutputState::default() });
    // Every worker builds the same dataflow; only worker 0 holds the sinks.
    let serve_orders = outputs.view_sinks.len() > plan.views.len();
    let snapshots = !outputs.state_sinks.is_empty();
    let state_index = plan.views.len() + 1;
    let mut all_sinks = outputs.view_sinks;
    if snapshots {
        all_sinks.resize_with(state_index, Vec::new);
        all_sinks.push(outputs.state_sinks);
    }
    let (view_sinks, barriers) = resume_sinks(all_sinks, &state)?;
    // Where the log starts and ends, when a sink or a snapshot holds a
    // position that could be past its end, or before its start (records
    // deleted unread); a fresh pipeline asks nothing of its brokers.
    let bounds: Vec<Option<LogBounds>> = if barriers.is_empty() && outputs.restore.is_empty() {
        Vec::new()
    } else {
        sources.iter().map(|(_, source)| source.bounds()).collect()
    };
    if let Some(error) = sink_past_the_end(&view_sinks, &barriers, &sources, &bounds, &plan.config.file) {
        return Err(RunError::Failed(error));
    }
    let (restored, restored_from) = choose_snapshot(outputs.restore, barriers.first(), &bounds);
    let held = view_sinks.iter().flatten().filter_map(|sink| {
        let at = barriers.get((sink.skip_until as usize).checked_sub(1)?)?;
        Some((sink.name.clone(), at))
    });
    let snapshot = restored_from.as_ref().map(|(name, at)| (format!("the state snapshot {name}"), at));
    if let Some(error) = records_gone_unread(held.chain(snapshot), &sources, &bounds, &plan.config.file) {
        return Err(RunError::Failed(error));
    }
    if restored_from.is_none() && !barriers.is_empty() {
        warn_of_a_shortened_log(&sources, &bounds);
    }
    if restored_from.is_none()
        && !barriers.is_empty()
        && let Some(error) = latest_cannot_resume(&plan)
    {
        return Err(RunError::Failed(error));
    }
    let restored = restored.unwrap_or_default();
    let restored_ids = Arc::new(restored.event_ids);
    if snapshots
        && !restored.rows.is_empty()
        && let Ok(mut first) = state.first_rows.lock()
    {
        first.insert(state_index, restored.rows);
    }
    let restored = Arc::new(Mutex::new(Some(restored.witnesses)));
    if let Some((_, at)) = &restored_from {
        for (_, source) in &sources {
            source.start_at(at);
        }
    }
    let skip_below = restored_from.as_ref().map(|(_, at)| Arc::new(at.clone()));
    let barriers = Arc::new(barriers);
    let phases = barriers.len() as u64;
    let outputs = Arc::new(Mutex::new(Some((view_sinks, outputs.dead_letter_sinks))));
    let records_read = Arc::clone(&options.progress);
    records_read.workers.store(workers as u64, Ordering::Release);
    // A run started over in the same process (a sink's store lost its
    // data) catches up anew: its batches count from 0 again.
    records_read.caught_up_workers.store(0, Ordering::Release);
    records_read.caught_up_upper.store(0, Ordering::Release);
    records_read.caught_up_nanos.store(0, Ordering::Release);
    let config = if workers == 1 { timely::Config::thread() } else { timely::Config::process(workers) };

    let worker_state = Arc::clone(&state);
    let worker_records = Arc::clone(&records_read);
    let guards = timely::execute(config, move |worker| -> Result<(), RunError> {
        let index = worker.index();
        let peers = worker.peers();
        let state = Arc::clone(&worker_state);
        let (mut view_sinks, mut dead_letter_sinks) =
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
        let mut restored_input: InputSession<u64, (Arc<str>, OrderInput), isize> = InputSession::new();
        let restored_ids = Arc::clone(&restored_ids);
        let mut dead_letters_input: InputHandleVec<u64, DeadLetter> = InputHandleVec::new();
        let probe = worker.dataflow::<u64, _, _>(|scope| {
            let events = events_input.to_collection(scope);
            let dead_letters = dead_letters_input.to_stream(scope);
            let witnesses = restored_input.to_collection(scope);
            let graph = orders::order_graph(events, witnesses, skip_below.clone(), snapshots);
            let states = graph.states;
            let probe = timely::dataflow::ProbeHandle::new();
            if let (Some(first_copies), Some(witnesses)) = (graph.first_copies, graph.witnesses) {
                let rows = crate::state::first_copy_rows(first_copies)
                    .concat(crate::state::witness_rows(witnesses))
                    .probe_with(&probe);
                let sinks = view_sinks.get_mut(state_index).map(std::mem::take).unwrap_or_default();
                let cutting = Cutting::ByEveryWorker;
                deliver_view(rows, STATE_NAME, state_index, sinks, phases, cutting, Arc::clone(&state));
            }
            for (view_index, view_plan) in plan.views.iter().enumerate() {
                let rows = views::view(Arc::clone(view_plan), states.clone());
                let rows = rows.probe_with(&probe);
                let sinks = view_sinks.get_mut(view_index).map(std::mem::take).unwrap_or_default();
                let cutting = Cutting::ByWorkerZero;
                deliver_view(rows, &view_plan.name, view_index, sinks, phases, cutting, Arc::clone(&state));
            }
            if serve_orders {
                let rows = states
                    .map(|order| {
                        let (key, values) = order.to_row();
                        (PackedRow::from(&key[..]), values)
                    })
                    .probe_with(&probe);
                let view_index = plan.views.len();
                let sinks = view_sinks.get_mut(view_index).map(std::mem::take).unwrap_or_default();
                let cutting = Cutting::ByWorkerZero;
                deliver_view(rows, ORDERS_OUTPUT, view_index, sinks, phases, cutting, Arc::clone(&state));
            }
            let dead_letters = dead_letters.probe_with(&probe);
            deliver_dead_letters(dead_letters, std::mem::take(&mut dead_letter_sinks), Arc::clone(&state));
            probe
        });

        // The snapshot's order witnesses, at the first batch (worker 0 feeds
        // them; the dataflow spreads them). Its `event_id` rows wait in
        // `first_rows` for the state's first batch.
        if index == 0
            && let Some(witnesses) = restored.lock().ok().and_then(|mut r| r.take())
        {
            for witness in witnesses {
                restored_input.update_at(witness, 0, 1);
            }
        }
        // Nothing more comes in that way.
        drop(restored_input);
        // Per reader: its current batch, and whether it is finished.
        let mut epochs: Vec<Option<u64>> = vec![Some(0); readers.len()];
        // Per reader: the resume phase it is in (batch `i` holds the records
        // before barrier `i`), and the records it read beyond that barrier.
        let mut phase: Vec<usize> = vec![0; readers.len()];
        let mut held: Vec<Vec<Held>> = readers.iter().map(|_| Vec::new()).collect();
        // Per reader: the latest `occurred_at` of the events it sent.
        let mut newest: Vec<Option<Timestamp>> = vec![None; readers.len()];
        if let Ok(mut table) = state.progress.lock() {
            for (reader_index, (_, reader)) in readers.iter().enumerate() {
                table.record(index, reader_index, 0, reader.positions(), None);
            }
        }
        // The latest batch this worker sent records to, and whether its
        // readers have all caught up (told once).
        let mut latest_time = 0u64;
        let mut caught_up = false;
        // Whether the output got past the batch that caught up (told once,
        // by worker 0).
        let mut current_again = false;
        let mut decoded: Vec<KeyedEvent> = Vec::with_capacity(options.poll_records);
        let mut bad: Vec<DeadLetter> = Vec::new();
        let mut input = Some((events_input, dead_letters_input));
        loop {
            if state.failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                break;
            }
            if (options.stop.load(Ordering::Relaxed) || (options.until_caught_up && caught_up)) && input.is_some() {
                // Stop reading; what was read completes and is flushed.
                if options.stop.load(Ordering::Relaxed) {
                    info!(worker = index, "stopping: finishing the current batch");
                } else {
                    debug!(worker = index, "caught up with where the logs ended at start: finishing the batch");
                }
                if let Ok(mut table) = state.progress.lock() {
                    for (reader_index, (_, reader)) in readers.iter().enumerate() {
                        if epochs[reader_index].is_some() {
                            let positions = match barriers.get(phase[reader_index]) {
                                Some(barrier) => below(&reader.positions(), barrier),
                                None => reader.positions(),
                            };
                            table.record(index, reader_index, u64::MAX, positions, newest[reader_index]);
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
                    let newest_before = newest[reader_index];
                    let source = reader_index as u16;
                    let barrier = barriers.get(phase[reader_index]);
                    let stash = &mut held[reader_index];
                    let latest = &mut newest[reader_index];
                    let skip = skip_below.as_ref();
                    // Later copies of events in the snapshot: read, not sent.
                    let mut dropped = 0usize;
                    let poll = reader.poll(options.poll_records, &mut |record| {
                        let position = record.position;
                        if skip.is_some_and(|at| at.before(source, position)) {
                            // In the snapshot the run started from.
                            return;
                        }
                        let decoded_record = decode_record(source, record);
                        if !restored_ids.is_empty()
                            && matches!(&decoded_record, Ok(((event_id, _), _)) if restored_ids.contains(event_id))
                        {
                            // A later copy of an event in the snapshot.
                            dropped += 1;
                            return;
                        }
                        if beyond(barrier, source, position) {
                            stash.push((position, decoded_record));
                        } else {
                            route(decoded_record, &mut decoded, &mut bad, latest);
                        }
                    });
                    let poll = match poll {
                        Ok(poll) => poll,
                        Err(error) => {
                            // Tell the other workers, so none waits for this one.
                            state.fail(format!("source {source_name:?}: {error}"));
                            return Err(RunError::Source { source_name: source_name.clone(), error });
                        }
                    };
                    backlog |= decoded.len() + bad.len() + held[reader_index].len() >= options.poll_records;
                    delivered += decoded.len() + bad.len() + dropped;
                    if phase[reader_index] < barriers.len() {
                        // Resuming: batch `i` ends exactly at barrier `i`.
                        let finished = matches!(poll, Poll::Finished);
                        let mut time = phase[reader_index] as u64;
                        send(events, dead_letters, &mut decoded, &mut bad, time, &mut latest_time);
                        while let Some(barrier) = barriers.get(phase[reader_index])
                            && (finished || reached(&reader.positions(), barrier))
                        {
                            phase[reader_index] += 1;
                            time = phase[reader_index] as u64;
                            if let Ok(mut table) = state.progress.lock() {
                                let positions = below(&reader.positions(), barrier);
                                table.record(index, reader_index, time, positions, newest[reader_index]);
                            }
                            let next_barrier = barriers.get(phase[reader_index]);
                            for (position, item) in std::mem::take(&mut held[reader_index]) {
                                if beyond(next_barrier, source, position) {
                                    held[reader_index].push((position, item));
                                } else {
                                    route(item, &mut decoded, &mut bad, &mut newest[reader_index]);
                                }
                            }
                            delivered += decoded.len() + bad.len();
                            send(events, dead_letters, &mut decoded, &mut bad, time, &mut latest_time);
                        }
                        epochs[reader_index] = Some(time);
                        continue;
                    }
                    let next = match poll {
                        Poll::Records { epoch } | Poll::Idle { epoch } => Some(epoch.max(current)),
                        Poll::Finished => None,
                    };
                    if let Ok(mut table) = state.progress.lock() {
                        match next {
                            Some(epoch) if epoch > current => {
                                table.record(index, reader_index, epoch, before, newest_before)
                            }
                            None => {
                                table.record(index, reader_index, u64::MAX, reader.positions(), newest[reader_index])
                            }
                            _ => {}
                        }
                    }
                    epochs[reader_index] = next;
                    send(events, dead_letters, &mut decoded, &mut bad, next.unwrap_or(current), &mut latest_time);
                }
                if !caught_up && readers.iter().all(|(_, reader)| reader.caught_up()) {
                    caught_up = true;
                    worker_records.caught_up_upper.fetch_max(latest_time.saturating_add(1), Ordering::AcqRel);
                    worker_records.caught_up_workers.fetch_add(1, Ordering::AcqRel);
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
            if index == 0
                && !current_again
                && let Some(upper) = worker_records.caught_up_upper()
                && !probe.less_than(&upper)
            {
                current_again = true;
                let took = started.elapsed();
                worker_records.caught_up_nanos.store((took.as_nanos() as u64).max(1), Ordering::Release);
                info!(seconds = took.as_secs_f64(), "the views reflect all that the logs held at the start");
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
                // Readers that wake the worker when records come let it
                // sleep until the first of their batches ends.
                let reading = readers.iter().zip(&epochs).filter(|(_, epoch)| epoch.is_some());
                let batch_ends: Option<Vec<Instant>> = reading.map(|((_, reader), _)| reader.idle_until()).collect();
                let wait = match batch_ends.and_then(|ends| ends.into_iter().min()) {
                    Some(first) => first.saturating_duration_since(Instant::now()).min(MAX_IDLE_WAIT),
                    None => options.idle_wait,
                };
                worker.step_or_park(Some(wait));
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

    let results = guards.join();
    // Every sink thread finishes its queue (or gives up, if the run failed).
    let threads = state.sink_threads.lock().map(|mut t| std::mem::take(&mut *t)).unwrap_or_default();
    for thread in threads {
        if thread.join().is_err() {
            state.fail("a sink thread panicked".to_string());
        }
    }
    for result in results {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(panic) => return Err(RunError::Runtime(panic)),
        }
    }
    if let Some(message) = state.failure.lock().ok().and_then(|f| f.clone()) {
        if state.lost.load(Ordering::Acquire) {
            return Err(RunError::SinkLost(message));
        }
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
        caught_up_after: records_read.caught_up_after(),
        restored_from,
    })
}

/// Why a run cannot resume its sinks, if a Kafka source starts at `latest`
/// and no state snapshot is there to start from. The sinks' rows come from
/// every event since the first run's start, and the state they rest on
/// (each order) must be rebuilt from there; `latest` names a later place
/// at each start. Read from there, a restart would fold only the newest
/// orders, skip the events since the sinks' positions, and move the
/// checkpoints past them: events lost, rows rewritten from part of their
/// orders.
fn latest_cannot_resume(plan: &PipelinePlan) -> Option<String> {
    let source = plan.source_starting_at_latest()?;
    Some(format!(
        "source {:?} starts at `latest`, and its sinks hold the views of every event since the first run \
         started: a restart cannot rebuild the state they rest on from `latest`, which is later now. Keep a \
         state snapshot (`state:` in the config; a restart then starts from it), or set `start:` to the \
         offsets the first run started at, or drop the sinks (`projector drop -c {} --sink NAME`) to start \
         afresh from the end of the topic",
        source.name, plan.config.file
    ))
}

/// The first position of `at` past the end of its source's log, with that
/// end: `((source index, partition), offset, end)`. A partition the source
/// no longer has ends at 0; a source that cannot tell where it ends is not
/// judged.
pub fn past_the_end(at: &SourcePositions, bounds: &[Option<LogBounds>]) -> Option<((u16, u32), u64, u64)> {
    at.0.iter().find_map(|(&(source, partition), &offset)| {
        let bounds = bounds.get(usize::from(source))?.as_ref()?;
        let end = bounds.get(&partition).map_or(0, |(_, end)| *end);
        (offset > end).then_some(((source, partition), offset, end))
    })
}

/// The first position of `at` before the start of its source's log, with
/// that start: `((source index, partition), offset, start)`. A partition
/// `at` does not name stands at 0; a source that cannot tell where its log
/// starts is not judged.
pub fn before_the_start(at: &SourcePositions, bounds: &[Option<LogBounds>]) -> Option<((u16, u32), u64, u64)> {
    bounds.iter().enumerate().find_map(|(source, bounds)| {
        let source = u16::try_from(source).ok()?;
        bounds.as_ref()?.iter().find_map(|(&partition, &(start, _))| {
            let offset = at.get(source, partition);
            (offset < start).then_some(((source, partition), offset, start))
        })
    })
}

/// Why the run cannot go on, if a sink or the state snapshot it starts
/// from (`held`: name and position) stands before the start of the log:
/// the records between were deleted before anything read them (the
/// topic's retention passed them while the pipeline was stopped), so the
/// views would go on without them, and the orders they touch would be
/// folded from part of their events.
fn records_gone_unread<'a>(
    mut held: impl Iterator<Item = (String, &'a SourcePositions)>,
    sources: &[(String, Arc<dyn Source>)],
    bounds: &[Option<LogBounds>],
    config: &str,
) -> Option<String> {
    held.find_map(|(name, at)| {
        let ((source, partition), offset, start) = before_the_start(at, bounds)?;
        let source = sources.get(usize::from(source)).map_or("?", |(name, _)| name.as_str());
        Some(format!(
            "{name} stands at offset {offset} of partition {partition} of source {source:?}, but the log there now \
             starts at {start}: the records between were deleted before they were read (the topic's retention \
             passed them while the pipeline was stopped), and the views would go on without them. Nothing can \
             bring them back; to rebuild the views from what the log still holds, delete what the sinks hold \
             (`projector drop -c {config} --sink NAME`) and the state snapshot, and start again. Keep the \
             topic's retention longer than the pipeline is ever stopped"
        ))
    })
}

/// Warns when the state is rebuilt from a log whose front was deleted
/// while sinks hold positions: if the first run read those records, the
/// orders they belong to are folded from part of their events now.
fn warn_of_a_shortened_log(sources: &[(String, Arc<dyn Source>)], bounds: &[Option<LogBounds>]) {
    for ((name, _), bounds) in sources.iter().zip(bounds) {
        let shortened: Vec<(u32, u64)> =
            bounds.iter().flatten().filter(|(_, (start, _))| *start > 0).map(|(p, (start, _))| (*p, *start)).collect();
        if !shortened.is_empty() {
            tracing::warn!(
                source = %name,
                starts = ?shortened,
                "the log no longer starts at offset 0 (retention deleted its first records), and no state \
                 snapshot is there to start from: the state is rebuilt from what the log still holds. If the \
                 pipeline's first run read the deleted records, the rows of the orders they belong to lose them; \
                 keep a state snapshot (`state:`) so that a restart does not depend on the topic's retention"
            );
        }
    }
}

/// Why the run cannot go on, if a sink stands past the end of the log: the
/// log was truncated, or its topic deleted and created anew, and offsets
/// start over. Resumed there, the sink would take the new log's first
/// records as counted already, and its rows come from records that are
/// gone; the operator decides (drop the sink to rebuild it, or point the
/// config at the right log).
fn sink_past_the_end(
    sinks: &[Vec<ResumedSink>],
    barriers: &[SourcePositions],
    sources: &[(String, Arc<dyn Source>)],
    bounds: &[Option<LogBounds>],
    config: &str,
) -> Option<String> {
    sinks.iter().flatten().find_map(|sink| {
        let at = barriers.get((sink.skip_until as usize).checked_sub(1)?)?;
        let ((source, partition), offset, end) = past_the_end(at, bounds)?;
        let source = sources.get(usize::from(source)).map_or("?", |(name, _)| name.as_str());
        Some(format!(
            "{} stands at offset {offset} of partition {partition} of source {source:?}, past the end of the log \
             there ({end}): the log was truncated, or its topic deleted and created anew, so the sink's rows come \
             from records that are gone. To rebuild the sink from the log as it is now, delete what it holds \
             (`projector drop -c {config} --sink NAME`) and start again; if the config names the wrong log, \
             correct it",
            sink.name
        ))
    })
}

/// The first snapshot at or before `first_barrier` (where the sink that
/// stands furthest back resumes) and within the log (`bounds`), loaded; a
/// snapshot that cannot be read is passed over.
fn choose_snapshot(
    candidates: Vec<Restore>,
    first_barrier: Option<&SourcePositions>,
    bounds: &[Option<LogBounds>],
) -> (Option<crate::state::Restored>, Option<(String, SourcePositions)>) {
    for candidate in candidates {
        if first_barrier.is_some_and(|barrier| !candidate.positions.le(barrier)) {
            info!(snapshot = %candidate.name, "the snapshot is ahead of a sink's checkpoint; not starting from it");
            continue;
        }
        if let Some(((_, partition), offset, end)) = past_the_end(&candidate.positions, bounds) {
            tracing::warn!(
                snapshot = %candidate.name,
                partition,
                offset,
                end,
                "the snapshot is past the end of the log (truncated, or its topic created anew); not starting from it"
            );
            continue;
        }
        let started = Instant::now();
        match (candidate.load)().and_then(crate::state::restore) {
            Ok(restored) => {
                info!(
                    snapshot = %candidate.name,
                    events = restored.event_ids.len(),
                    witnesses = restored.witnesses.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "starting from a state snapshot"
                );
                return (Some(restored), Some((candidate.name, candidate.positions)));
            }
            Err(error) => tracing::warn!(snapshot = %candidate.name, %error, "cannot start from this snapshot"),
        }
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offsets: &[((u16, u32), u64)]) -> SourcePositions {
        SourcePositions(offsets.iter().copied().collect())
    }

    #[test]
    fn positions_past_the_end_of_a_log_are_found() {
        let ends = vec![Some([(0, (0, 10)), (1, (0, 5))].into_iter().collect()), None];
        // At the end, or before it: within the log.
        assert_eq!(past_the_end(&at(&[((0, 0), 10), ((0, 1), 5)]), &ends), None);
        assert_eq!(past_the_end(&at(&[((0, 0), 3)]), &ends), None);
        // Past it, and in a partition the source no longer has.
        assert_eq!(past_the_end(&at(&[((0, 0), 10), ((0, 1), 6)]), &ends), Some(((0, 1), 6, 5)));
        assert_eq!(past_the_end(&at(&[((0, 7), 1)]), &ends), Some(((0, 7), 1, 0)));
        assert_eq!(past_the_end(&at(&[((0, 7), 0)]), &ends), None);
        // A source that cannot tell where it ends is not judged.
        assert_eq!(past_the_end(&at(&[((1, 0), 99)]), &ends), None);
        assert_eq!(past_the_end(&at(&[((2, 0), 99)]), &ends), None);
    }

    #[test]
    fn positions_before_the_start_of_a_log_are_found() {
        let at = |offsets: &[((u16, u32), u64)]| SourcePositions(offsets.iter().copied().collect());
        let starts = vec![Some([(0, (0, 99)), (1, (40, 99))].into_iter().collect()), None];
        assert_eq!(before_the_start(&at(&[((0, 0), 10), ((0, 1), 40)]), &starts), None);
        assert_eq!(before_the_start(&at(&[((0, 0), 10), ((0, 1), 41)]), &starts), None);
        assert_eq!(before_the_start(&at(&[((0, 0), 10), ((0, 1), 39)]), &starts), Some(((0, 1), 39, 40)));
        // A partition the position does not name stands at 0.
        assert_eq!(before_the_start(&at(&[((0, 0), 10)]), &starts), Some(((0, 1), 0, 40)));
        // A source that cannot tell where its log starts is not judged.
        assert_eq!(before_the_start(&at(&[((0, 1), 50), ((1, 0), 0)]), &starts), None);
        let fresh = vec![Some([(0, (0, 0)), (1, (0, 0))].into_iter().collect())];
        assert_eq!(before_the_start(&SourcePositions::default(), &fresh), None);
    }
}
