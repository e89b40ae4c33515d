//! Delivering completed batches to sinks.
//!
//! When the dataflow's frontier passes a batch, the batch is complete: its
//! changes are consolidated, sorted by key and handed to each sink together
//! with the source positions the view then reflects (from the
//! [`ProgressTable`] the input side keeps). A view's changes are cut on
//! worker 0; the state's, which are many, each worker cuts its own share
//! of ([`Cutting`], [`ViewCuts`]). Worker 0 owns the sinks: it starts
//! their threads. Dead letters are exchanged to worker 0, which writes
//! them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use differential_dataflow::VecCollection;
use differential_dataflow::consolidation::{consolidate, consolidate_updates};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use tracing::warn;

use projector_core::event::BadRecordKind;
use projector_core::packed::PackedRow;
use projector_core::record::DeadLetter;
use projector_core::sink::{DeadLetterSink, SinkError, SourcePositions, ViewBatch, ViewChange, ViewRows, ViewSink};
use projector_core::value::{Row, Timestamp};

/// The source positions each worker's readers had reached at each batch
/// boundary. A reader records `(upper, positions)` when it moves to batch
/// `upper`: all its records before `upper` are then in the dataflow, and
/// they are exactly the records before `positions`.
#[derive(Debug, Default)]
pub struct ProgressTable {
    entries: BTreeMap<(usize, usize), Vec<Boundary>>,
}

/// A batch boundary of one reader: the batch, the positions before it and
/// the latest `occurred_at` of the events before it.
type Boundary = (u64, SourcePositions, Option<Timestamp>);

impl ProgressTable {
    /// Records that reader `reader` of worker `worker` delivered everything
    /// before batch `upper`, which ends at `positions`, and that the latest
    /// `occurred_at` of those events is `newest`.
    pub fn record(
        &mut self,
        worker: usize,
        reader: usize,
        upper: u64,
        positions: SourcePositions,
        newest: Option<Timestamp>,
    ) {
        self.entries.entry((worker, reader)).or_default().push((upper, positions, newest));
    }

    /// The positions reflected by all output before batch `upper`.
    pub fn positions_at(&self, upper: u64) -> SourcePositions {
        let mut merged = SourcePositions::default();
        for history in self.entries.values() {
            if let Some((_, positions, _)) = history.iter().rev().find(|(u, ..)| *u <= upper) {
                merged.merge(positions);
            }
        }
        merged
    }

    /// The latest `occurred_at` of the events before batch `upper`.
    pub fn newest_at(&self, upper: u64) -> Option<Timestamp> {
        self.entries
            .values()
            .filter_map(|history| history.iter().rev().find(|(u, ..)| *u <= upper).and_then(|(.., newest)| *newest))
            .max()
    }

    /// Forgets entries that no batch at or after `upper` needs.
    pub fn prune(&mut self, upper: u64) {
        for history in self.entries.values_mut() {
            let keep_from = history.iter().rposition(|(u, ..)| *u <= upper).unwrap_or(0);
            history.drain(..keep_from);
        }
    }
}

/// What the output side shares with the runner.
#[derive(Debug, Default)]
pub struct OutputState {
    /// Input positions at batch boundaries.
    pub progress: Mutex<ProgressTable>,
    /// The first fatal sink error; the run stops when it is set.
    pub failure: Mutex<Option<String>>,
    /// Whether that error was a sink whose store lost its data.
    pub lost: std::sync::atomic::AtomicBool,
    /// Dead letters seen, by kind.
    pub dead_letters: Mutex<BTreeMap<BadRecordKind, u64>>,
    /// The run's counters (dead letters, sink writes).
    pub counters: Arc<crate::runner::RunProgress>,
    /// Current row count of each view, by view index.
    pub view_rows: Mutex<BTreeMap<usize, Arc<AtomicI64>>>,
    /// The batch each view's sinks have taken, by view index.
    pub delivered: Mutex<BTreeMap<usize, u64>>,
    /// The threads that write to view sinks; the run waits for them.
    pub sink_threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Rows, by view index, that the view's first batch adds to what the
    /// dataflow computes: the rows of a restored state, which go into the
    /// next snapshot as they are (sorted by key). The dataflow's changes
    /// take away those that no longer hold.
    pub first_rows: Mutex<BTreeMap<usize, Vec<(Row, Row)>>>,
    /// Where the workers' shares of each view's batches meet, by view
    /// index. The workers' operators own it: when the dataflow goes (the
    /// run ended or failed), so do the sinks' queues, and their threads
    /// end.
    pub(crate) cuts: Mutex<BTreeMap<usize, std::sync::Weak<Mutex<ViewCuts>>>>,
}

impl OutputState {
    /// Records the first fatal failure; every worker stops when it sees it.
    pub fn fail(&self, message: String) {
        if let Ok(mut failure) = self.failure.lock()
            && failure.is_none()
        {
            *failure = Some(message);
        }
    }

    /// The positions and the latest `occurred_at` reflected by the output
    /// before `upper`.
    fn progress_at(&self, upper: u64) -> (SourcePositions, Option<Timestamp>) {
        self.progress.lock().map(|table| (table.positions_at(upper), table.newest_at(upper))).unwrap_or_default()
    }

    /// The meeting point of view `view`'s shares, made by the first worker
    /// to ask (of `peers`).
    fn view_cuts(&self, view: usize, peers: usize) -> Option<Arc<Mutex<ViewCuts>>> {
        let mut cuts = self.cuts.lock().ok()?;
        if let Some(made) = cuts.get(&view).and_then(std::sync::Weak::upgrade) {
            return Some(made);
        }
        let made = Arc::new(Mutex::new(ViewCuts::new(view, peers)));
        cuts.insert(view, Arc::downgrade(&made));
        Some(made)
    }

    /// Notes that view `view` delivered everything before `upper`, and
    /// forgets positions no view needs any more.
    fn delivered(&self, view: usize, upper: u64) {
        let lowest = match self.delivered.lock() {
            Ok(mut delivered) => {
                delivered.insert(view, upper);
                delivered.values().copied().min().unwrap_or(upper)
            }
            Err(_) => return,
        };
        if let Ok(mut table) = self.progress.lock() {
            table.prune(lowest);
        }
    }
}

/// Calls `attempt` until it succeeds or fails for good; retryable errors are
/// retried with backoff (up to 5 s between attempts), never dropped. Gives
/// up when the run failed elsewhere (`state`).
pub(crate) fn with_retries<T>(
    what: &str,
    state: &OutputState,
    mut attempt: impl FnMut() -> Result<T, SinkError>,
) -> Result<T, String> {
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(failure) = state.failure.lock().ok().and_then(|f| f.clone()) {
            return Err(failure);
        }
        let result = attempt();
        if result.is_err() {
            state.counters.sink_failed(what);
        }
        match result {
            Ok(value) => return Ok(value),
            Err(SinkError::Retryable(message)) => {
                warn!(sink = what, error = %message, retry_in_ms = delay.as_millis() as u64, "sink failed; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(SinkError::Fatal(message)) => return Err(format!("{what}: {message}")),
            Err(SinkError::Lost(message)) => {
                state.lost.store(true, Ordering::Release);
                return Err(format!("{what}: {message}"));
            }
        }
    }
}

/// A sink of a view, and the batch up to which it already holds the view
/// (it is handed only batches with a higher upper).
pub struct ResumedSink {
    /// The sink's name, for messages.
    pub name: String,
    /// The sink.
    pub sink: Box<dyn ViewSink>,
    /// Batches with `upper <= skip_until` are already reflected in it.
    pub skip_until: u64,
}

/// What a view's output operator hands a sink's thread.
enum Delivery {
    /// A completed batch: its changes, upper, the positions it reflects and
    /// the latest `occurred_at` of its events.
    Batch(Arc<Vec<ViewChange>>, u64, Arc<SourcePositions>, Option<Timestamp>),
    /// All input was processed: flush.
    Finish,
}

/// Batches a sink's thread may have queued before the dataflow waits.
const SINK_QUEUE: usize = 64;
/// Queued batches are merged into one write up to about this many changes.
const MERGE_CHANGES: usize = 200_000;
/// After a write that took `t`, the next one gathers the batches that
/// arrive for up to `t` more, at most this long: a sink that cannot keep up
/// writes fewer, larger batches (a row changed by several of them is
/// written once), spending at most half its time writing, while one that
/// keeps up is held back by no more than its own write time.
const MAX_GATHER: Duration = Duration::from_millis(500);

/// The net effect of consecutive batches of changes: what they add and
/// remove together, sorted by key (a row added by one and changed by the
/// next appears once, with its last values).
fn net_changes(parts: &[Arc<Vec<ViewChange>>]) -> Vec<ViewChange> {
    let mut updates: Vec<((Row, Row), i64)> =
        parts.iter().flat_map(|part| part.iter().map(|c| ((c.key.clone(), c.values.clone()), c.diff))).collect();
    consolidate(&mut updates);
    updates.into_iter().map(|((key, values), diff)| ViewChange { key, values, diff }).collect()
}

/// Starts the thread that writes to one sink, in batch order, so that a
/// sink's writes overlap the dataflow's work and one slow sink does not
/// hold up the others. It keeps the view's rows for sinks that want them.
fn spawn_sink(resumed: ResumedSink, state: Arc<OutputState>) -> Option<std::sync::mpsc::SyncSender<Delivery>> {
    let (send, receive) = std::sync::mpsc::sync_channel::<Delivery>(SINK_QUEUE);
    let ResumedSink { name, mut sink, skip_until } = resumed;
    let thread_state = Arc::clone(&state);
    let spawned = std::thread::Builder::new().name(format!("sink {name}")).spawn(move || {
        let state = thread_state;
        let keep_rows = sink.wants_rows();
        let mut rows = ViewRows::default();
        let mut gather_until = std::time::Instant::now();
        let mut next = receive.recv();
        loop {
            match next {
                Ok(Delivery::Batch(changes, upper, positions, newest)) => {
                    if keep_rows {
                        apply_changes(&mut rows, &changes);
                    }
                    if upper <= skip_until {
                        next = receive.recv();
                        continue;
                    }
                    // Batches that queued up while the sink wrote go in one
                    // write: their net changes, ending at the last one.
                    let (mut parts, mut upper, mut positions, mut newest) = (vec![changes], upper, positions, newest);
                    let mut total = parts[0].len();
                    let mut after = None;
                    while total < MERGE_CHANGES {
                        // Past the deadline this waits not at all.
                        let left = gather_until.saturating_duration_since(std::time::Instant::now());
                        match receive.recv_timeout(left) {
                            Ok(Delivery::Batch(more, more_upper, more_positions, more_newest)) => {
                                if keep_rows {
                                    apply_changes(&mut rows, &more);
                                }
                                total += more.len();
                                parts.push(more);
                                (upper, positions, newest) = (more_upper, more_positions, more_newest);
                            }
                            Ok(Delivery::Finish) => {
                                after = Some(Ok(Delivery::Finish));
                                break;
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                                after = Some(Err(std::sync::mpsc::RecvError));
                                break;
                            }
                        }
                    }
                    let changes = if parts.len() == 1 { parts.swap_remove(0) } else { Arc::new(net_changes(&parts)) };
                    let batch = ViewBatch {
                        changes: &changes,
                        upper,
                        positions: &positions,
                        newest_event_at: newest,
                        rows: &rows,
                    };
                    let started = std::time::Instant::now();
                    let written = with_retries(&name, &state, || sink.apply(batch));
                    let took = started.elapsed();
                    state.counters.sink_wrote(&name, changes.len(), took.as_secs_f64());
                    gather_until = std::time::Instant::now() + took.min(MAX_GATHER);
                    if let Err(message) = written {
                        state.fail(message);
                        return;
                    }
                    next = after.unwrap_or_else(|| receive.recv());
                }
                Ok(Delivery::Finish) => {
                    if let Err(message) = with_retries(&name, &state, || sink.finish()) {
                        state.fail(message);
                    }
                    return;
                }
                // The dataflow stopped without finishing (the run failed).
                Err(_) => return,
            }
        }
    });
    match spawned {
        Ok(handle) => {
            if let Ok(mut threads) = state.sink_threads.lock() {
                threads.push(handle);
            }
            Some(send)
        }
        Err(error) => {
            state.fail(format!("cannot start a sink thread: {error}"));
            None
        }
    }
}

/// Which workers cut a view's completed batches (unpack, consolidate and
/// sort their changes) before the sinks get them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cutting {
    /// Worker 0, which every change is sent to: a batch goes out as soon as
    /// worker 0 has passed it. For the views: once a run has caught up,
    /// their batches are small and readers wait for them.
    ByWorkerZero,
    /// Each worker its own share (the changes it computed; each row's are
    /// on one worker, since the reductions spread rows by key), merged by
    /// the last worker to pass the batch: the sorting is spread over the
    /// workers, but a batch waits for all of them. For the state of a run
    /// with snapshots on, a million rows and more that no reader waits for
    /// (on worker 0 alone, cutting them was 17% of its time while worker 1
    /// idled half the run).
    ByEveryWorker,
}

/// Hands each completed batch of a view's changes to its sinks, cut as
/// `cutting` says ([`ViewCuts`] meets the shares). Worker 0 owns the
/// sinks: it starts a thread for each (other workers pass `sinks` empty);
/// each sink is written in batch order.
///
/// The first `phases` batches (uppers `1..=phases`) are delivered one by
/// one even when the frontier passes several at once: they end at the
/// positions sinks resumed from (see the runner's barriers).
pub fn deliver_view<'scope>(
    changes: VecCollection<'scope, u64, (PackedRow, Row)>,
    view_name: &str,
    view_index: usize,
    sinks: Vec<ResumedSink>,
    phases: u64,
    cutting: Cutting,
    state: Arc<OutputState>,
) {
    let (worker, peers) = (changes.inner.scope().index(), changes.inner.scope().peers());
    // The worker that cuts this worker's changes (it reports as that
    // cutter), and how many cutters there are.
    let (cutter, cutters) = match cutting {
        Cutting::ByWorkerZero => (0, 1),
        Cutting::ByEveryWorker => (worker, peers),
    };
    let Some(cuts) = state.view_cuts(view_index, cutters) else { return };
    if worker == 0 {
        let rows = Arc::new(AtomicI64::new(0));
        if let Ok(mut counts) = state.view_rows.lock() {
            counts.insert(view_index, Arc::clone(&rows));
        }
        if let Ok(mut delivered) = state.delivered.lock() {
            delivered.insert(view_index, 0);
        }
        let senders = sinks.into_iter().filter_map(|sink| spawn_sink(sink, Arc::clone(&state))).collect();
        if let Ok(mut cuts) = cuts.lock() {
            cuts.senders = senders;
            cuts.rows = rows;
        }
    }
    changes.inner.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(move |_| cutter as u64),
        &format!("Sinks of {view_name}"),
        move |_capability, _info| {
            let mut pending: Vec<((PackedRow, Row), u64, isize)> = Vec::new();
            let mut delivered_upper = 0u64;
            let mut finished = false;
            move |(input, frontier), _output| {
                input.for_each(|_time, data| pending.append(data));
                let upper = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                if worker != cutter || finished || upper <= delivered_upper && !frontier.is_empty() {
                    return;
                }
                // The batches to cut now: one per resume phase passed, then
                // one for the rest.
                let mut uppers: Vec<u64> = (delivered_upper + 1..=phases.min(upper)).collect();
                if uppers.last() != Some(&upper) && upper > delivered_upper {
                    uppers.push(upper);
                }
                for cut in uppers {
                    let (ready, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|(_, time, _)| *time < cut);
                    pending = later;
                    let share = sorted_share(ready);
                    // A full sink queue holds the dataflow back here (the
                    // sink is slow or down), and the other workers with it.
                    match cuts.lock() {
                        Ok(mut cuts) => cuts.cut(cutter, cut, share, &state),
                        Err(_) => state.fail(format!("view {view_index}: a worker panicked while cutting a batch")),
                    }
                    delivered_upper = cut;
                }
                if frontier.is_empty() {
                    finished = true;
                    if let Ok(mut cuts) = cuts.lock() {
                        cuts.finish();
                    }
                }
            }
        },
    );
}

/// One update of a view's row, unpacked: `((key, values), batch, diff)`.
type Update = ((Row, Row), u64, isize);

/// A worker's share of a batch: its upper and its updates, sorted.
type Share = (u64, Vec<Update>);

/// Where the cutters' shares of one view's batches meet (one cutter,
/// worker 0, or every worker: [`Cutting`]).
///
/// Each cutter reports, batch by batch, its share of the updates before
/// the batch's upper, sorted. Cutters may cut at different uppers (one saw
/// the frontier pass two batches at once, another one at a time); the
/// view's batch goes out at the lowest upper every cutter has passed,
/// with every share's updates before it. The first `phases` uppers are
/// cut by every cutter, so each of them goes out as a batch of its own.
pub(crate) struct ViewCuts {
    view_index: usize,
    /// Per cutter: the upper it has cut up to, and its shares not
    /// delivered yet, each with its upper, in order.
    workers: Vec<(u64, VecDeque<Share>)>,
    /// The upper of the last batch handed out.
    delivered_upper: u64,
    /// How many cutters saw their input end.
    finished: usize,
    /// The sinks' threads (set by worker 0).
    senders: Vec<std::sync::mpsc::SyncSender<Delivery>>,
    /// The view's current row count (set by worker 0).
    rows: Arc<AtomicI64>,
}

impl std::fmt::Debug for ViewCuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewCuts")
            .field("view_index", &self.view_index)
            .field("uppers", &self.workers.iter().map(|(upper, _)| *upper).collect::<Vec<_>>())
            .field("delivered_upper", &self.delivered_upper)
            .finish_non_exhaustive()
    }
}

impl ViewCuts {
    fn new(view_index: usize, peers: usize) -> ViewCuts {
        ViewCuts {
            view_index,
            workers: (0..peers).map(|_| (0, VecDeque::new())).collect(),
            delivered_upper: 0,
            finished: 0,
            senders: Vec::new(),
            rows: Arc::default(),
        }
    }

    /// Takes worker `worker`'s share of the updates before `upper` (after
    /// its previous one), and hands out the batch that completes, if any.
    fn cut(&mut self, worker: usize, upper: u64, share: Vec<Update>, state: &OutputState) {
        let Some((cut, shares)) = self.workers.get_mut(worker) else { return };
        *cut = upper;
        if !share.is_empty() {
            shares.push_back((upper, share));
        }
        let passed = self.workers.iter().map(|(cut, _)| *cut).min().unwrap_or(upper);
        if passed > self.delivered_upper {
            self.deliver(passed, state);
        }
    }

    /// Hands the batch before `upper` to the sinks: the merge of every
    /// share's updates before it.
    fn deliver(&mut self, upper: u64, state: &OutputState) {
        let mut ready = Vec::new();
        for (_, shares) in &mut self.workers {
            while let Some((cut, share)) = shares.front_mut() {
                if *cut <= upper {
                    ready.extend(shares.pop_front().map(|(_, share)| share));
                } else {
                    // This worker cut past `upper`: the part of its share
                    // before `upper` goes now (a stable partition keeps
                    // both parts sorted).
                    let (now, later) = std::mem::take(share).into_iter().partition(|(_, time, _)| *time < upper);
                    *share = later;
                    ready.push(now);
                    break;
                }
            }
        }
        let mut changes = merge_shares(ready);
        if self.delivered_upper == 0 {
            let first = state.first_rows.lock().ok().and_then(|mut rows| rows.remove(&self.view_index));
            if let Some(first) = first {
                changes = with_rows(changes, first);
            }
        }
        self.rows.fetch_add(changes.iter().map(|c| c.diff).sum::<i64>(), Ordering::Relaxed);
        let changes = Arc::new(changes);
        let (positions, newest) = state.progress_at(upper);
        let positions = Arc::new(positions);
        for sender in &self.senders {
            // A closed queue means the run failed.
            let delivery = Delivery::Batch(Arc::clone(&changes), upper, Arc::clone(&positions), newest);
            let _ = sender.send(delivery);
        }
        self.delivered_upper = upper;
        state.delivered(self.view_index, upper);
    }

    /// Notes that a worker's input ended; when every worker's has, the
    /// sinks flush.
    fn finish(&mut self) {
        self.finished += 1;
        if self.finished == self.workers.len() {
            for sender in &self.senders {
                let _ = sender.send(Delivery::Finish);
            }
        }
    }
}

/// A worker's share of a batch's updates, unpacked and sorted by row, then
/// batch (equal ones added up).
fn sorted_share(updates: Vec<((PackedRow, Row), u64, isize)>) -> Vec<Update> {
    let mut unpacked: Vec<Update> =
        updates.into_iter().map(|((key, values), time, diff)| ((key.unpack(), values), time, diff)).collect();
    consolidate_updates(&mut unpacked);
    unpacked
}

/// The net change of each row over `shares` (each sorted by row), sorted
/// by key, then values; rows whose updates cancel are left out.
fn merge_shares(shares: Vec<Vec<Update>>) -> Vec<ViewChange> {
    let mut merged: Vec<((Row, Row), isize)> = Vec::new();
    for share in shares {
        // The share's updates of one row (at several batches) added up.
        let mut net: Vec<((Row, Row), isize)> = Vec::with_capacity(share.len());
        for (row, _, diff) in share {
            match net.last_mut() {
                Some((last, sum)) if *last == row => *sum += diff,
                _ => net.push((row, diff)),
            }
        }
        merged = if merged.is_empty() { net } else { merge_sorted(merged, net) };
    }
    merged
        .into_iter()
        .filter(|(_, diff)| *diff != 0)
        .map(|((key, values), diff)| ViewChange { key, values, diff: diff as i64 })
        .collect()
}

/// Two runs sorted by row merged into one, equal rows added up.
fn merge_sorted(left: Vec<((Row, Row), isize)>, right: Vec<((Row, Row), isize)>) -> Vec<((Row, Row), isize)> {
    let mut merged = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    loop {
        let next = match (left.peek(), right.peek()) {
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Less => left.next(),
                std::cmp::Ordering::Greater => right.next(),
                std::cmp::Ordering::Equal => {
                    let ((row, a), (_, b)) = (left.next().unwrap_or_default(), right.next().unwrap_or_default());
                    Some((row, a + b))
                }
            },
            (Some(_), None) => left.next(),
            (None, Some(_)) => right.next(),
            (None, None) => return merged,
        };
        merged.extend(next);
    }
}

/// A completed batch's updates of a view as its sinks take them: the net
/// change of each row, sorted by key, then values (the sinks want them in
/// the order of the unpacked keys, which is not the packed keys' order).
pub fn batch_changes(updates: Vec<((PackedRow, Row), u64, isize)>) -> Vec<ViewChange> {
    merge_shares(vec![sorted_share(updates)])
}

/// `changes` (sorted by key, then values) with `rows` added, keeping the
/// order; a change that removes one of `rows` cancels it. They come sorted
/// by key from a snapshot the runner wrote, which the (stable) sort finds
/// in one pass.
fn with_rows(changes: Vec<ViewChange>, mut rows: Vec<(Row, Row)>) -> Vec<ViewChange> {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged = Vec::with_capacity(changes.len() + rows.len());
    let mut rows = rows.into_iter().map(|(key, values)| ViewChange { key, values, diff: 1 }).peekable();
    for mut change in changes {
        while let Some(row) = rows.next_if(|row| (&row.key, &row.values) < (&change.key, &change.values)) {
            merged.push(row);
        }
        if let Some(row) = rows.next_if(|row| row.key == change.key && row.values == change.values) {
            change.diff += row.diff;
        }
        if change.diff != 0 {
            merged.push(change);
        }
    }
    merged.extend(rows);
    merged
}

/// Applies a batch of changes to a view's rows: removals first, as an
/// update is the old row out and the new one in.
pub fn apply_changes(view: &mut ViewRows, changes: &[ViewChange]) {
    for change in changes.iter().filter(|c| c.diff < 0) {
        if view.get(&change.key) == Some(&change.values) {
            view.remove(&change.key);
        }
    }
    for change in changes.iter().filter(|c| c.diff > 0) {
        view.insert(change.key.clone(), change.values.clone());
    }
}

/// Hands each completed batch's dead letters, in log order, to the
/// dead-letter sinks (on worker 0), and counts them by kind.
pub fn deliver_dead_letters<'scope>(
    dead_letters: StreamVec<'scope, u64, DeadLetter>,
    mut sinks: Vec<(String, Box<dyn DeadLetterSink>)>,
    state: Arc<OutputState>,
) {
    dead_letters.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_| 0u64),
        "Dead letters",
        move |_capability, _info| {
            let mut pending: BTreeMap<u64, Vec<DeadLetter>> = BTreeMap::new();
            let mut finished = false;
            move |(input, frontier), _output| {
                input.for_each(|time, data| {
                    pending.entry(time.least().copied().unwrap_or_default()).or_default().append(data);
                });
                if finished {
                    return;
                }
                let upper = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                let later = pending.split_off(&upper);
                let mut ready: Vec<DeadLetter> =
                    std::mem::replace(&mut pending, later).into_values().flatten().collect();
                if !ready.is_empty() {
                    ready.sort_by_key(|letter| (letter.source, letter.position));
                    if let Ok(mut counts) = state.dead_letters.lock() {
                        for letter in &ready {
                            *counts.entry(letter.kind).or_default() += 1;
                        }
                    }
                    state.counters.dead_letters.fetch_add(ready.len() as u64, Ordering::Relaxed);
                    for (name, sink) in sinks.iter_mut() {
                        if let Err(message) = with_retries(name, &state, || sink.write(&ready)) {
                            state.fail(message);
                        }
                    }
                }
                if frontier.is_empty() {
                    finished = true;
                    for (name, sink) in sinks.iter_mut() {
                        if let Err(message) = with_retries(name, &state, || sink.finish()) {
                            state.fail(message);
                        }
                    }
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> SourcePositions {
        SourcePositions([((0, 0), offset)].into_iter().collect())
    }

    fn change(key: u64, value: i64, diff: i64) -> ViewChange {
        let key: Row = vec![projector_core::value::Value::UInt(key)].into();
        let values: Row = vec![projector_core::value::Value::Int(value)].into();
        ViewChange { key, values, diff }
    }

    /// A batch's updates come out as the net change of each row, sorted
    /// by the unpacked key then values, as consolidating and then sorting
    /// gives them; rows whose updates cancel are gone.
    #[test]
    fn a_batch_is_cut_into_net_changes_sorted_by_key() {
        use projector_core::value::Value;
        let update = |key: Value, value: i64, diff: isize| {
            let key: Row = vec![key].into();
            ((PackedRow::from(&key[..]), Row::from(vec![Value::Int(value)])), 7u64, diff)
        };
        let text = |text: &str| Value::Text(text.into());
        let updates = vec![
            update(text("b"), 1, 1),
            update(text("ab"), 2, 1),
            update(Value::UInt(300), 5, 1),
            update(text("b"), 1, -1),
            update(text("b"), 3, 1),
            update(text("c"), 4, 1),
            update(Value::UInt(7), 6, 1),
            update(text("c"), 4, -1),
            update(text("ab"), 2, 1),
            update(Value::Null, 0, -1),
        ];
        let mut expected: Vec<((Row, Row), isize)> =
            updates.iter().map(|((key, values), _, diff)| ((key.unpack(), values.clone()), *diff)).collect();
        consolidate(&mut expected);
        let expected: Vec<ViewChange> =
            expected.into_iter().map(|((key, values), diff)| ViewChange { key, values, diff: diff as i64 }).collect();
        let cut = batch_changes(updates);
        assert_eq!(cut, expected);
        assert!(cut.is_sorted());
        let keys: Vec<String> = cut.iter().map(|c| format!("{}{}", c.key[0], c.diff)).collect();
        assert_eq!(keys, ["null-1", "71", "3001", "'ab'2", "'b'1"]);
    }

    /// Two workers' shares, cut at different uppers: each batch goes out
    /// at the lowest upper both have passed, with every update before it
    /// (part of a share that reaches further waits), merged in key order.
    #[test]
    fn shares_cut_at_different_uppers_meet_in_batches_both_have_passed() {
        use projector_core::value::Value;
        let update = |key: u64, value: i64, time: u64, diff: isize| {
            ((Row::from(vec![Value::UInt(key)]), Row::from(vec![Value::Int(value)])), time, diff)
        };
        let state = OutputState::default();
        {
            let mut table = state.progress.lock().unwrap();
            for upper in 0..=4 {
                table.record(0, 0, upper, at(upper * 10), None);
                table.record(1, 0, upper, at(upper * 10 + 1), None);
            }
        }
        let (send, receive) = std::sync::mpsc::sync_channel(16);
        let mut cuts = ViewCuts::new(0, 2);
        cuts.senders = vec![send];
        let batches = || {
            let mut out = Vec::new();
            while let Ok(delivery) = receive.try_recv() {
                out.push(match delivery {
                    Delivery::Batch(changes, upper, positions, _) => {
                        Some((changes.to_vec(), upper, (*positions).clone()))
                    }
                    Delivery::Finish => None,
                });
            }
            out
        };
        let mut both = at(10);
        both.merge(&at(11));

        cuts.cut(0, 1, vec![update(2, 20, 0, 1), update(4, 40, 0, 1)], &state);
        assert_eq!(batches(), [], "worker 1 has not passed batch 1");
        cuts.cut(1, 1, vec![update(1, 10, 0, 1), update(3, 30, 0, 1)], &state);
        assert_eq!(
            batches(),
            [Some((vec![change(1, 10, 1), change(2, 20, 1), change(3, 30, 1), change(4, 40, 1)], 1, both))]
        );

        // Worker 0 passes batches 2 and 3 at once; worker 1 one at a time.
        cuts.cut(
            0,
            3,
            vec![update(2, 20, 1, -1), update(2, 21, 1, 1), update(4, 40, 2, -1), update(4, 41, 2, 1)],
            &state,
        );
        cuts.cut(1, 2, vec![update(1, 10, 1, -1)], &state);
        let mut at2 = at(20);
        at2.merge(&at(21));
        assert_eq!(batches(), [Some((vec![change(1, 10, -1), change(2, 20, -1), change(2, 21, 1)], 2, at2))]);
        cuts.cut(1, 3, Vec::new(), &state);
        let mut at3 = at(30);
        at3.merge(&at(31));
        assert_eq!(batches(), [Some((vec![change(4, 40, -1), change(4, 41, 1)], 3, at3))]);

        // Updates of one row in both shares add up; rows that cancel are
        // left out; the sinks flush once both inputs ended.
        cuts.cut(0, u64::MAX, vec![update(5, 50, 3, 1), update(6, 60, 3, 1)], &state);
        cuts.finish();
        cuts.cut(1, u64::MAX, vec![update(5, 50, 3, 1), update(6, 60, 3, -1)], &state);
        assert_eq!(batches().len(), 1);
        cuts.finish();
        assert_eq!(batches(), [None]);
        assert_eq!(cuts.rows.load(Ordering::Relaxed), 4 - 1 + 2);
    }

    /// A dataflow dropped before its input ended (a worker panicked) takes
    /// the sinks' queues with it: their threads end instead of waiting for
    /// batches that never come (the run joins them).
    #[test]
    fn the_sinks_threads_end_when_the_dataflow_goes_unfinished() {
        for cutting in [Cutting::ByWorkerZero, Cutting::ByEveryWorker] {
            sinks_end_with_an_unfinished_dataflow(cutting);
        }
    }

    fn sinks_end_with_an_unfinished_dataflow(cutting: Cutting) {
        let state = Arc::new(OutputState::default());
        let shared = Arc::clone(&state);
        timely::execute(timely::Config::process(2), move |worker| {
            let state = Arc::clone(&shared);
            let owner = worker.index() == 0;
            let sinks = if owner {
                vec![ResumedSink { name: "noting".into(), sink: Box::new(Noting(Arc::default())), skip_until: 0 }]
            } else {
                Vec::new()
            };
            let mut input: differential_dataflow::input::InputSession<u64, (PackedRow, Row), isize> =
                differential_dataflow::input::InputSession::new();
            let dataflow = worker.next_dataflow_index();
            worker.dataflow(|scope| deliver_view(input.to_collection(scope), "v", 0, sinks, 0, cutting, state));
            input.advance_to(1);
            input.flush();
            for _ in 0..10 {
                worker.step();
            }
            worker.drop_dataflow(dataflow);
        })
        .expect("timely runs");
        let threads = std::mem::take(&mut *state.sink_threads.lock().unwrap());
        assert_eq!(threads.len(), 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !threads.iter().all(|thread| thread.is_finished()) {
            assert!(std::time::Instant::now() < deadline, "{cutting:?}: a sink's thread still waits for batches");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn merged_shares_equal_one_sorted_batch() {
        use projector_core::value::Value;
        let packed = |key: &str, value: i64, time: u64, diff: isize| {
            let key: Row = vec![Value::Text(key.into())].into();
            ((PackedRow::from(&key[..]), Row::from(vec![Value::Int(value)])), time, diff)
        };
        let updates: Vec<_> = (0..200)
            .map(|i: i64| {
                packed(&format!("k{}", i * 7919 % 61), i % 3, (i % 4) as u64, if i % 5 == 0 { -1 } else { 1 })
            })
            .collect();
        let (odd, even): (Vec<_>, Vec<_>) = updates.iter().cloned().enumerate().partition(|(i, _)| i % 2 == 1);
        let (odd, even): (Vec<_>, Vec<_>) =
            (odd.into_iter().map(|(_, u)| u).collect(), even.into_iter().map(|(_, u)| u).collect());
        let whole = batch_changes(updates);
        assert!(whole.iter().all(|c| c.diff != 0));
        assert_eq!(merge_shares(vec![sorted_share(odd.clone()), sorted_share(even.clone())]), whole);
        assert_eq!(merge_shares(vec![sorted_share(even), sorted_share(odd)]), whole);
    }

    #[test]
    fn a_first_batch_takes_the_restored_rows_in_key_order_less_those_it_removes() {
        use projector_core::value::Value;
        let row = |key: u64, value: i64| (Row::from(vec![Value::UInt(key)]), Row::from(vec![Value::Int(value)]));
        let changes = vec![change(2, 20, -1), change(2, 21, 1), change(5, 50, 1)];
        // In order, as a snapshot holds them, and out of order.
        for rows in
            [vec![row(1, 10), row(3, 30), row(4, 40), row(9, 90)], vec![row(9, 90), row(1, 10), row(4, 40), row(3, 30)]]
        {
            let merged = with_rows(changes.clone(), rows);
            assert_eq!(
                merged,
                [
                    change(1, 10, 1),
                    change(2, 20, -1),
                    change(2, 21, 1),
                    change(3, 30, 1),
                    change(4, 40, 1),
                    change(5, 50, 1),
                    change(9, 90, 1)
                ]
            );
        }
        assert_eq!(with_rows(Vec::new(), vec![row(1, 10)]), [change(1, 10, 1)]);
        assert_eq!(with_rows(changes.clone(), Vec::new()), changes);
        // A change that removes a restored row cancels it; one of other
        // values for its key does not.
        let changes = vec![change(3, 30, -1), change(4, 41, -1), change(6, 60, 1)];
        assert_eq!(
            with_rows(changes, vec![row(3, 30), row(4, 40), row(9, 90)]),
            [change(4, 40, 1), change(4, 41, -1), change(6, 60, 1), change(9, 90, 1)]
        );
    }

    #[test]
    fn queued_batches_merge_into_their_net_changes() {
        let first = Arc::new(vec![change(1, 10, 1), change(3, 30, 1)]);
        // Row 1 changes, row 2 appears, row 3 appears and goes again.
        let second = Arc::new(vec![change(1, 10, -1), change(1, 11, 1), change(2, 20, 1), change(3, 30, -1)]);
        assert_eq!(net_changes(&[first, second]), vec![change(1, 11, 1), change(2, 20, 1)]);
        let third = Arc::new(vec![change(1, 11, -1), change(1, 12, 1)]);
        let before = Arc::new(vec![change(1, 10, -1), change(1, 11, 1)]);
        assert_eq!(net_changes(&[before, third]), vec![change(1, 10, -1), change(1, 12, 1)]);
    }

    /// A sink that notes the batch and the positions of every write.
    struct Noting(Arc<Mutex<Vec<(u64, SourcePositions)>>>);

    impl ViewSink for Noting {
        fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
            Ok(None)
        }

        fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
            self.0
                .lock()
                .map_err(|_| SinkError::Fatal("poisoned".into()))?
                .push((batch.upper, batch.positions.clone()));
            Ok(())
        }

        fn finish(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    /// Worker 0, which owns the sinks, is held inside the step in which
    /// it hands out batch 1, until worker 1 (no sinks) has seen the whole
    /// input done. Batch 1 must still reach the sink with its own
    /// positions: worker 1 must not let the table forget them. (Before the
    /// fix, it went out with no positions at all.)
    #[test]
    fn a_batch_keeps_its_positions_when_a_worker_without_sinks_runs_ahead() {
        for cutting in [Cutting::ByWorkerZero, Cutting::ByEveryWorker] {
            positions_kept_while_worker_1_runs_ahead(cutting);
        }
    }

    fn positions_kept_while_worker_1_runs_ahead(cutting: Cutting) {
        use std::sync::atomic::AtomicBool;
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::Probe;

        let state = Arc::new(OutputState::default());
        {
            let mut table = state.progress.lock().unwrap();
            for worker in 0..2 {
                for upper in 0..=3 {
                    table.record(worker, 0, upper, at(upper * 100), None);
                }
            }
        }
        let noted = Arc::new(Mutex::new(Vec::new()));
        // Worker 0 is in the step that delivers batch 1; worker 1 is done.
        let (delivering, ahead) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let shared = (Arc::clone(&state), Arc::clone(&noted), delivering, ahead);
        timely::execute(timely::Config::process(2), move |worker| {
            let (state, noted, delivering, ahead) = shared.clone();
            let owner = worker.index() == 0;
            let sinks = if owner {
                vec![ResumedSink { name: "noting".into(), sink: Box::new(Noting(noted)), skip_until: 0 }]
            } else {
                Vec::new()
            };
            let mut input: differential_dataflow::input::InputSession<u64, (PackedRow, Row), isize> =
                differential_dataflow::input::InputSession::new();
            let probe = worker.dataflow(|scope| {
                let changes = input.to_collection(scope);
                // Made before the sinks' operator, so it runs before it in
                // the same step, with the same view of the frontier.
                let (delivering, ahead) = (Arc::clone(&delivering), Arc::clone(&ahead));
                changes.inner.clone().sink(Pipeline, "Hold worker 0", move |(input, frontier)| {
                    input.for_each(|_, _| {});
                    if owner && !frontier.less_equal(&0) && !delivering.swap(true, Ordering::SeqCst) {
                        let deadline = std::time::Instant::now() + Duration::from_secs(20);
                        while !ahead.load(Ordering::SeqCst) {
                            assert!(std::time::Instant::now() < deadline, "worker 1 never got ahead");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                });
                let (probe, _) = changes.inner.clone().probe();
                deliver_view(changes, "v", 0, sinks, 0, cutting, state);
                probe
            });
            if owner {
                input.close();
                while worker.step() {
                    // Batches come to the sink's thread one at a time.
                    std::thread::sleep(Duration::from_millis(20));
                }
            } else {
                // No data: the batches are empty, so both operators' frontiers
                // are the inputs' (no message is in flight to either).
                input.advance_to(1);
                input.flush();
                while !delivering.load(Ordering::SeqCst) {
                    worker.step();
                }
                input.close();
                while !probe.done() {
                    worker.step();
                }
                for _ in 0..10 {
                    worker.step();
                }
                ahead.store(true, Ordering::SeqCst);
                while worker.step() {}
            }
        })
        .expect("timely runs");
        for thread in std::mem::take(&mut *state.sink_threads.lock().unwrap()) {
            thread.join().expect("sink thread");
        }
        let noted = noted.lock().unwrap().clone();
        assert_eq!(noted, vec![(1, at(100)), (u64::MAX, at(300))], "{cutting:?}");
    }

    #[test]
    fn positions_come_from_the_latest_boundary_of_every_worker() {
        let mut table = ProgressTable::default();
        let t = |seconds: i64| Some(Timestamp(seconds * 1_000_000_000));
        table.record(0, 0, 0, at(1), None);
        table.record(1, 0, 0, at(1), None);
        table.record(0, 0, 1, at(101), t(5));
        table.record(1, 0, 1, at(101), t(7));
        table.record(0, 0, 2, at(201), t(9));
        assert_eq!(table.positions_at(1), at(101));
        assert_eq!(table.newest_at(0), None);
        assert_eq!(table.newest_at(1), t(7));
        // Worker 1 has not passed batch 2 yet: the merged position waits;
        // the newest event is the latest either worker sent.
        assert_eq!(table.positions_at(2), at(101));
        assert_eq!(table.newest_at(2), t(9));
        table.prune(1);
        assert_eq!(table.positions_at(1), at(101));
    }
}
