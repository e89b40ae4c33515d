//! `projector replay`: rebuilds a view (or several, in one pass over the
//! log) into its sinks through a shadow that is swapped in only when
//! complete, while the live pipeline keeps running.
//!
//! The view is computed by a dataflow of its own, reading the sources from
//! the start up to a [`Bound`] and writing into a shadow of each Redis and
//! ClickHouse sink (see `projector_sink_redis::RedisSwap` and
//! `projector_sink_clickhouse::ClickHouseSwap`). The bound first trails the
//! live sinks' checkpoints, so the shadow never gets ahead of them. Once the
//! shadow has caught up, the replay holds the live sinks (their writes wait),
//! reads the checkpoint each stands at, moves the bound to it, and when the
//! shadow is exactly there swaps the window's rows in atomically and lets the
//! sink go: the live pipeline goes on from the same position, on the rebuilt
//! content. The shadows are sinks with checkpoints of their own, so a
//! replay that is interrupted resumes its writes where it stopped (the
//! dataflow itself reads the log from the start again). A Redis shadow
//! built from the start is kept in memory and written only now and then
//! (see `Keeping`): the swap compares the kept rows with the live ones.
//!
//! File and Parquet sinks hold the whole view in one file, rewritten at
//! once; a whole-view replay rewrites them at the end, a window replay
//! leaves them alone.

use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use projector_core::config::{PipelinePlan, SinkKind, SourceKind};
use projector_core::sink::{
    Selection, SinkError, SourcePositions, ViewBatch, ViewChange, ViewRows, ViewSink, positions_to_json,
};
use projector_core::source::{Bound, BoundedSource, Source};
use projector_core::value::{FieldType, Row, Timestamp, Value, format_date};
use projector_core::view::ViewPlan;
use projector_dataflows::runner::{Outputs, RunError, RunOptions, RunSummary, before_the_start, past_the_end, run};
use projector_sink_clickhouse::ClickHouseSwap;
use projector_sink_file::FileViewSink;
use projector_sink_parquet::ParquetViewSink;
use projector_sink_redis::{Kept, RedisSwap, RedisViewSink};

use crate::commands::CommandError;
use crate::components;

/// How long a hold on a live sink lasts unless renewed: if the replay dies
/// while holding, the live pipeline goes on after this.
const HOLD: Duration = Duration::from_secs(30);
/// The earliest and latest dates a window may name.
const FIRST_DAY: i32 = 0;
const LAST_DAY: i32 = 49_710; // 2106-02-07, ClickHouse's last Date

/// What to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The views, rebuilt together: the log is read once for all of them.
    pub views: Vec<String>,
    /// Only rows whose date key is on or after this day (days since
    /// 1970-01-01).
    pub from: Option<i32>,
    /// Only rows whose date key is on or before this day.
    pub to: Option<i32>,
    /// How long to wait for a running ClickHouse sink to say it holds
    /// still; with no answer the replay goes on as if none runs.
    pub ack_wait: Duration,
    /// Draw a progress bar on the terminal.
    pub progress_bar: bool,
    /// Snapshot the replay's own dataflow state this often, so that an
    /// interrupted replay also resumes its reading of the log (see
    /// [`checkpoint_path`]); `None`: only the shadows' writes resume. Also
    /// how often a Redis shadow is written (`None`: every 10 s).
    pub checkpoint_every: Option<Duration>,
    /// Rebuild from what the log still holds when retention deleted the
    /// first records of a partition (otherwise refused: see
    /// [`crate::commands::deleted_fronts`]).
    pub accept_deleted_records: bool,
}

/// Where a replay keeps the snapshots of its dataflow's state: next to the
/// config, `.projector-replay/<views>-<window>.parquet`, the views' names
/// joined by `+` in the order given.
pub fn checkpoint_path(plan: &PipelinePlan, views: &[&str], window: &str) -> std::path::PathBuf {
    let config = std::path::Path::new(&plan.config.file);
    let dir = config.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    dir.join(".projector-replay").join(format!("{}-{window}.parquet", views.join("+")))
}

/// What one sink's swap did.
#[derive(Clone, Debug)]
pub struct SwapReport {
    /// The sink's name.
    pub sink: String,
    /// Where its shadow resumed from (`None`: from the start).
    pub resumed_from: Option<SourcePositions>,
    /// The position swapped in at.
    pub at: SourcePositions,
    /// The same, as the sink's checkpoint writes it (by source name).
    pub at_text: String,
    /// Rows of the window in the rebuilt view.
    pub rows: usize,
    /// Rows rewritten because they were missing or differed.
    pub rewritten: usize,
    /// Rows deleted because the rebuilt view lacks them.
    pub deleted: usize,
    /// Redis: ranking entries set (missing or wrong) or removed (no row
    /// has them); `None` for a sink without rankings' sets (ClickHouse).
    pub ranking_entries: Option<usize>,
    /// How long the live sink was held.
    pub held: Duration,
}

/// What a replay did.
#[derive(Clone, Debug)]
pub struct ReplaySummary {
    /// The dataflow run.
    pub run: RunSummary,
    /// Wall time of the whole replay, its swaps included.
    pub elapsed: Duration,
    /// Per Redis or ClickHouse sink.
    pub swaps: Vec<SwapReport>,
    /// File and Parquet sinks rewritten (whole-view replays).
    pub rewritten_files: Vec<String>,
    /// File and Parquet sinks left alone (window replays).
    pub skipped_files: Vec<String>,
}

impl ReplaySummary {
    /// The summary printed at the end.
    pub fn report(&self, views: &[String]) -> String {
        let seconds = self.elapsed.as_secs_f64();
        let names = views.iter().map(|view| format!("{view:?}")).collect::<Vec<_>>().join(", ");
        let mut out = format!(
            "replayed view{} {names}: {} events in {seconds:.2} s ({:.0} events/s end to end; the dataflow into \
             the shadows {:.2} s)\n",
            if views.len() == 1 { "" } else { "s" },
            self.run.records,
            self.run.records as f64 / seconds.max(1e-9),
            self.run.elapsed.as_secs_f64()
        );
        if let Some((snapshot, at)) = &self.run.restored_from {
            out.push_str(&format!(
                "  the dataflow resumed from its checkpoint {snapshot} ({} records of the log in it)\n",
                at.total()
            ));
        }
        for swap in &self.swaps {
            let resumed = match &swap.resumed_from {
                Some(at) => format!("resumed its shadow at {} events in", at.total()),
                None => "built its shadow from the start".to_string(),
            };
            let rankings =
                swap.ranking_entries.map(|n| format!(", {n} ranking entries set or removed")).unwrap_or_default();
            out.push_str(&format!(
                "  sink {:?}: {resumed}; swapped in at {}: {} rows, {} rewritten, {} deleted{rankings}; live writes \
                 held {} ms\n",
                swap.sink,
                swap.at_text,
                swap.rows,
                swap.rewritten,
                swap.deleted,
                swap.held.as_millis()
            ));
        }
        for file in &self.rewritten_files {
            out.push_str(&format!("  sink {file:?}: rewritten whole\n"));
        }
        for file in &self.skipped_files {
            out.push_str(&format!(
                "  sink {file:?}: holds the whole view in one file; not touched by a window replay\n"
            ));
        }
        out
    }
}

/// A live sink with a shadow.
enum Target {
    /// A Redis sink, and what the replay wrote into its shadow.
    Redis(Box<RedisSwap>, Arc<Mutex<Built>>),
    ClickHouse(Box<ClickHouseSwap>),
}

/// Rows a replay keeps of what it wrote into a shadow: more than this, and
/// the swap reads the shadow back instead.
const KEEP_AT_MOST: usize = 5_000_000;

/// How often a Redis shadow whose rows the replay keeps is written, when
/// `--checkpoint-ms` does not say: what an interrupted replay would build
/// again.
const WRITE_SHADOW_EVERY: Duration = Duration::from_secs(10);

/// The rebuilt view of a Redis sink as the replay computed it, kept as it
/// goes, so that the swap need not read the shadow back (a walk over the
/// whole keyspace and a `HGETALL` per row), and the shadow in Redis need
/// only be written now and then, as the checkpoint an interrupted replay
/// resumes from. `rows` is `None` when the shadow resumed what an earlier
/// replay wrote (that is not here) or grew past [`KEEP_AT_MOST`]; then
/// every batch is written through.
#[derive(Default)]
struct Built {
    rows: Option<ViewRows>,
    /// Whether the kept rows were ever written into the shadow. Until
    /// then it holds none of them, and every kept row is unwritten.
    written: bool,
    /// Whether the kept rows went to the swap ([`Built::at`]): the shadow
    /// is then about to be dropped, and takes no more batches (what it
    /// holds stays what its checkpoint says, should the swap fail).
    handed_over: bool,
    /// Once the shadow was written, the kept rows changed since, each with
    /// what the shadow holds for it (`None`: nothing).
    unwritten: ViewChanges,
    /// Where the rows stand (`None`: no batch yet).
    positions: Option<SourcePositions>,
    upper: u64,
    newest_event_at: Option<Timestamp>,
}

/// Per key changed since the last write, the values written then.
type ViewChanges = std::collections::HashMap<Row, Option<Row>, projector_core::sink::RowHasher>;

fn lock(built: &Mutex<Built>) -> MutexGuard<'_, Built> {
    built.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Built {
    /// Nothing written yet: rows are kept from here on.
    fn fresh() -> Built {
        Built { rows: Some(ViewRows::default()), ..Built::default() }
    }

    /// The rows, once they stand at `at` (the sink's thread notes a batch
    /// as it takes it: wait a moment for it), with the keys of the rows the
    /// shadow holds.
    fn at(built: &Mutex<Built>, at: &SourcePositions) -> Option<Kept> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            {
                let mut built = lock(built);
                built.rows.as_ref()?;
                if built.positions.as_ref() == Some(at) {
                    let rows = built.rows.take()?;
                    built.handed_over = true;
                    let unwritten = std::mem::take(&mut built.unwritten);
                    let stored = if built.written {
                        rows.keys()
                            .filter(|key| !unwritten.contains_key(*key))
                            .chain(unwritten.iter().filter(|(_, held)| held.is_some()).map(|(key, _)| key))
                            .cloned()
                            .collect()
                    } else {
                        Vec::new()
                    };
                    return Some(Kept { rows, positions: at.clone(), newest_event_at: built.newest_event_at, stored });
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Takes `batch` into the kept rows, noting what the shadow held of
    /// each row it changes.
    fn take(&mut self, batch: &ViewBatch<'_>) {
        if let Some(rows) = self.rows.as_mut() {
            if self.written {
                for change in batch.changes {
                    self.unwritten.entry(change.key.clone()).or_insert_with(|| rows.get(&change.key).cloned());
                }
            }
            // A changed row is retracted and added: take the old one out
            // first.
            for change in batch.changes.iter().filter(|c| c.diff < 0) {
                if let Entry::Occupied(kept) = rows.entry(change.key.clone())
                    && *kept.get() == change.values
                {
                    kept.remove();
                }
            }
            for change in batch.changes.iter().filter(|c| c.diff > 0) {
                rows.insert(change.key.clone(), change.values.clone());
            }
        }
        self.positions = Some(batch.positions.clone());
        self.upper = batch.upper;
        self.newest_event_at = self.newest_event_at.max(batch.newest_event_at);
    }

    /// The shadow now holds the kept rows.
    fn wrote(&mut self) {
        self.written = true;
        self.unwritten.clear();
    }

    /// What the shadow must be told to hold the kept rows: a retraction of
    /// what it holds and an addition of what is kept, per key that differs,
    /// sorted by key. (Kept in `unwritten` until the write succeeds.)
    fn unwritten_changes(&self) -> Vec<ViewChange> {
        let Some(rows) = self.rows.as_ref() else { return Vec::new() };
        if !self.written {
            let mut changes: Vec<ViewChange> = rows
                .iter()
                .map(|(key, values)| ViewChange { key: key.clone(), values: values.clone(), diff: 1 })
                .collect();
            changes.sort_by(|a, b| a.key.cmp(&b.key));
            return changes;
        }
        let mut changes = Vec::new();
        for (key, held) in &self.unwritten {
            let now = rows.get(key);
            if held.as_ref() == now {
                continue;
            }
            if let Some(held) = held {
                changes.push(ViewChange { key: key.clone(), values: held.clone(), diff: -1 });
            }
            if let Some(now) = now {
                changes.push(ViewChange { key: key.clone(), values: now.clone(), diff: 1 });
            }
        }
        changes.sort_by(|a, b| a.key.cmp(&b.key).then(a.diff.cmp(&b.diff)));
        changes
    }
}

/// A Redis shadow sink that keeps the view in [`Built`], and writes it
/// into the shadow every `every` (and when the replay is stopped), not at
/// every batch.
struct Keeping {
    inner: RedisViewSink,
    /// Whether Redis held nothing of the shadow when it was opened: then
    /// there is nothing to clear.
    untouched: bool,
    built: Arc<Mutex<Built>>,
    every: Duration,
    written_at: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Keeping {
    /// Writes what the shadow lacks of the kept rows, at the kept rows'
    /// position.
    fn write(&mut self, built: &mut Built) -> Result<(), SinkError> {
        let Some(positions) = built.positions.clone() else { return Ok(()) };
        let changes = built.unwritten_changes();
        let rows = ViewRows::default();
        let batch = ViewBatch {
            changes: &changes,
            upper: built.upper,
            positions: &positions,
            newest_event_at: built.newest_event_at,
            rows: &rows,
        };
        // A write that fails is tried again with the next batch the runner
        // hands over (the same one, retried): what it lacked stays noted.
        self.inner.apply(batch)?;
        built.wrote();
        self.written_at = Instant::now();
        info!(rows = changes.len(), at = positions.total(), "wrote the shadow");
        Ok(())
    }
}

impl ViewSink for Keeping {
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.untouched = self.inner.untouched()?;
        let at = self.inner.resume()?;
        *lock(&self.built) = if at.is_none() { Built::fresh() } else { Built::default() };
        self.written_at = Instant::now();
        Ok(at)
    }

    fn wants_rows(&self) -> bool {
        self.inner.wants_rows()
    }

    fn reset(&mut self) -> Result<(), SinkError> {
        if !std::mem::take(&mut self.untouched) {
            self.inner.reset()?;
        }
        *lock(&self.built) = Built::fresh();
        Ok(())
    }

    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let built = Arc::clone(&self.built);
        let mut built = lock(&built);
        if built.handed_over {
            return Ok(());
        }
        if built.rows.is_none() {
            self.inner.apply(batch)?;
            built.take(&batch);
            return Ok(());
        }
        if built.positions.is_none() {
            info!("the shadow took its first batch; it is written into Redis every {:?}", self.every);
        }
        built.take(&batch);
        if built.rows.as_ref().is_some_and(|rows| rows.len() > KEEP_AT_MOST) {
            // Too many to keep: write them, and write through from here.
            self.write(&mut built)?;
            built.rows = None;
        } else if self.written_at.elapsed() >= self.every {
            self.write(&mut built)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        if self.stop.load(Ordering::Relaxed) {
            // Interrupted: the next replay resumes from what is written.
            let built = Arc::clone(&self.built);
            let mut built = lock(&built);
            if built.rows.is_some() {
                self.write(&mut built)?;
            }
        }
        self.inner.finish()
    }
}

impl Target {
    fn live_definition_differs(&mut self) -> Result<bool, SinkError> {
        match self {
            Target::Redis(swap, _) => swap.live_definition_differs(),
            Target::ClickHouse(swap) => swap.live_definition_differs(),
        }
    }

    fn live_position(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        match self {
            Target::Redis(swap, _) => swap.live_position(),
            Target::ClickHouse(swap) => swap.live_position(),
        }
    }

    /// Where the shadow stands: as written, or as kept (a Redis shadow
    /// whose rows the replay keeps is written only now and then).
    fn shadow_position(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        match self {
            Target::Redis(swap, built) => {
                let kept = {
                    let built = lock(built);
                    built.rows.is_some().then(|| built.positions.clone())
                };
                kept.map_or_else(|| swap.shadow_position(), Ok)
            }
            Target::ClickHouse(swap) => swap.shadow_position(),
        }
    }

    fn pause(&mut self, token: &str) -> Result<(), SinkError> {
        match self {
            Target::Redis(swap, _) => swap.pause(token, HOLD),
            Target::ClickHouse(swap) => swap.pause(token, HOLD),
        }
    }

    /// Waits until no write of a live run is under way. Redis needs no
    /// wait: every live commit watches the hold.
    fn settle(&mut self, token: &str, wait: Duration, name: &str) -> Result<(), SinkError> {
        if let Target::ClickHouse(swap) = self
            && !swap.wait_for_ack(token, wait)?
        {
            info!(sink = %name, "no running pipeline answered the hold; swapping as if none writes the sink");
        }
        Ok(())
    }

    fn release(&mut self, token: &str) -> Result<(), SinkError> {
        match self {
            Target::Redis(swap, _) => swap.release(token),
            Target::ClickHouse(swap) => swap.release(token),
        }
    }

    fn swap(
        &mut self,
        token: &str,
        at: &SourcePositions,
        window: &Selection,
    ) -> Result<(usize, usize, usize, Option<usize>), SinkError> {
        match self {
            Target::Redis(swap, built) => swap
                .swap(token, at, window, Built::at(built, at))
                .map(|c| (c.rows, c.rewritten, c.deleted, Some(c.ranking_entries))),
            Target::ClickHouse(swap) => swap.swap(at, window).map(|c| (c.rows, c.rewritten, c.deleted, None)),
        }
    }

    /// The Redis server of a Redis target: its swaps take turns there
    /// ([`SwapIn::each`]).
    fn redis_server(&self) -> Option<&str> {
        match self {
            Target::Redis(swap, _) => Some(&swap.shadow_config().url),
            Target::ClickHouse(_) => None,
        }
    }

    /// The rows the replay kept for the swap (`usize::MAX` when it kept
    /// none and the swap reads the shadow back).
    fn kept_rows(&self) -> usize {
        match self {
            Target::Redis(_, built) => lock(built).rows.as_ref().map_or(usize::MAX, |rows| rows.len()),
            Target::ClickHouse(_) => usize::MAX,
        }
    }

    fn drop_shadow(&mut self) -> Result<(), SinkError> {
        match self {
            Target::Redis(swap, _) => swap.drop_shadow(),
            Target::ClickHouse(swap) => swap.drop_shadow(),
        }
    }
}

/// How long a replay's claim on a sink lasts unless renewed: a replay that
/// died lets go after this.
const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// How often the claims are renewed.
const RENEW_CLAIMS_EVERY: Duration = Duration::from_secs(10);

/// A replay's claim on one live sink.
enum Claim {
    Redis(Box<projector_sink_redis::ReplayClaim>),
    ClickHouse(Box<projector_sink_clickhouse::ReplayClaim>),
}

impl Claim {
    fn renew(&mut self) -> Result<(), SinkError> {
        match self {
            Claim::Redis(claim) => claim.renew(),
            Claim::ClickHouse(claim) => claim.renew(),
        }
    }

    fn release(&mut self) -> Result<(), SinkError> {
        match self {
            Claim::Redis(claim) => claim.release(),
            Claim::ClickHouse(claim) => claim.release(),
        }
    }
}

/// The claims of a replay on the Redis and ClickHouse sinks of its views,
/// so that a second replay of one of them is refused at once instead of
/// taking over the shadows (the first then stopped, fenced). A thread
/// renews them until they are dropped, and then releases them.
struct Claims {
    stop: Arc<std::sync::atomic::AtomicBool>,
    renewing: Option<JoinHandle<()>>,
}

impl Claims {
    fn take(
        plan: &PipelinePlan,
        views: &[Arc<ViewPlan>],
        source_names: &[String],
        token: &str,
    ) -> Result<Claims, CommandError> {
        let mut taken: Vec<(String, Claim)> = Vec::new();
        let sinks = plan.config.sinks.iter().filter(|sink| views.iter().any(|view| view.name == sink.view.value));
        for sink in sinks {
            let Some(view) = plan.view(&sink.view.value) else { continue };
            let names = source_names.to_vec();
            let claim = match &sink.kind {
                SinkKind::Redis(config) => projector_sink_redis::ReplayClaim::take(
                    &sink.name,
                    Arc::clone(view),
                    config,
                    names,
                    (token, CLAIM_LEASE),
                    &gone,
                )
                .map(|claim| Claim::Redis(Box::new(claim))),
                SinkKind::ClickHouse(config) => projector_sink_clickhouse::ReplayClaim::take(
                    &sink.name,
                    Arc::clone(view),
                    config,
                    names,
                    (token, CLAIM_LEASE),
                    &gone,
                )
                .map(|claim| Claim::ClickHouse(Box::new(claim))),
                SinkKind::File(_) | SinkKind::Parquet(_) => continue,
            };
            match claim {
                Ok(claim) => taken.push((sink.name.clone(), claim)),
                Err(error) => {
                    for (_, claim) in &mut taken {
                        let _ = claim.release();
                    }
                    return Err(failed(&sink.name)(error));
                }
            }
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let renewing = std::thread::spawn(move || {
            let mut renewed = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if renewed.elapsed() >= RENEW_CLAIMS_EVERY {
                    renewed = Instant::now();
                    for (name, claim) in &mut taken {
                        if let Err(error) = claim.renew() {
                            tracing::warn!(sink = %name, %error, "cannot renew the replay's claim");
                        }
                    }
                }
            }
            for (name, claim) in &mut taken {
                if let Err(error) = claim.release() {
                    tracing::warn!(sink = %name, %error, "cannot release the replay's claim (it lapses by itself)");
                }
            }
        });
        Ok(Claims { stop, renewing: Some(renewing) })
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(renewing) = self.renewing.take() {
            let _ = renewing.join();
        }
    }
}

/// This machine's name, in a replay's token (`replay-<host>-<pid>-<nanos>`).
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".to_string(), |h| h.trim().to_string())
}

/// Whether the replay with `token` is known to be gone: it ran on this
/// machine, and its process is no more (a replay killed with SIGKILL
/// leaves its claims until they lapse; its resumption need not wait).
fn gone(token: &str) -> bool {
    let mut parts = token.rsplitn(3, '-');
    let (Some(_nanos), Some(pid), Some(rest)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let Some(holder_host) = rest.strip_prefix("replay-") else { return false };
    holder_host == host()
        && pid.parse::<u32>().is_ok_and(|pid| pid != std::process::id())
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A sink's error as the command's.
/// (A replay tries nothing again by itself: a retryable error is said
/// without the sink's "(will retry)".)
fn failed(sink: &str) -> impl Fn(SinkError) -> CommandError + '_ {
    move |error| match error {
        SinkError::Retryable(message) | SinkError::Fatal(message) | SinkError::Lost(message) => {
            CommandError::Io(format!("sink {sink:?}: {message}"))
        }
    }
}

/// The views a replay names, in the order named: each must be declared,
/// and named once.
fn chosen_views(plan: &PipelinePlan, names: &[String]) -> Result<Vec<Arc<ViewPlan>>, CommandError> {
    if names.is_empty() {
        return Err(CommandError::Io("name the view to replay (--view NAME)".into()));
    }
    let mut views: Vec<Arc<ViewPlan>> = Vec::new();
    for name in names {
        if name.trim().is_empty() {
            return Err(CommandError::Io(format!(
                "--view {:?}: a view name is empty; separate names with single commas, nothing before or after",
                names.join(",")
            )));
        }
        let Some(view) = plan.view(name) else {
            let declared: Vec<&str> = plan.views.iter().map(|v| v.name.as_str()).collect();
            return Err(CommandError::Io(format!("no view {name:?}; this config declares: {}", declared.join(", "))));
        };
        if views.iter().any(|chosen| chosen.name == view.name) {
            return Err(CommandError::Io(format!("view {name:?} is named twice; name each view once")));
        }
        views.push(Arc::clone(view));
    }
    Ok(views)
}

/// The window as a selection of the view's rows, and its name.
fn window(view: &ViewPlan, options: &ReplayOptions) -> Result<(Selection, String), CommandError> {
    if options.from.is_none() && options.to.is_none() {
        return Ok((Selection::default(), "all".to_string()));
    }
    let Some(index) = view.keys.iter().position(|k| k.ty == FieldType::Date) else {
        return Err(CommandError::Io(format!(
            "view {:?} has no date key field ({}), so it has no rows of a date window; replay it whole \
             (without --from and --to)",
            view.name,
            view.keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    };
    let from = options.from.unwrap_or(FIRST_DAY);
    let to = options.to.unwrap_or(LAST_DAY);
    if from > to {
        return Err(CommandError::Io(format!(
            "--from {} is after --to {}: the window is empty",
            format_date(from),
            format_date(to)
        )));
    }
    let name = format!("{}_{}", format_date(from).replace('-', ""), format_date(to).replace('-', ""));
    Ok((Selection { range: Some((index, Value::Date(from), Value::Date(to))), ..Selection::default() }, name))
}

/// Keeps only the changes and rows of a window: the shadow of a window
/// replay holds the window's rows alone.
struct Windowed {
    inner: Box<dyn ViewSink>,
    window: Selection,
}

impl ViewSink for Windowed {
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.inner.resume()
    }

    fn wants_rows(&self) -> bool {
        self.inner.wants_rows()
    }

    fn reset(&mut self) -> Result<(), SinkError> {
        self.inner.reset()
    }

    fn apply(&mut self, batch: projector_core::sink::ViewBatch<'_>) -> Result<(), SinkError> {
        if self.window == Selection::default() {
            return self.inner.apply(batch);
        }
        let changes: Vec<_> = batch.changes.iter().filter(|c| self.window.matches(&c.key)).cloned().collect();
        let rows: projector_core::sink::ViewRows = if self.inner.wants_rows() {
            batch.rows.iter().filter(|(key, _)| self.window.matches(key)).map(|(k, v)| (k.clone(), v.clone())).collect()
        } else {
            Default::default()
        };
        self.inner.apply(projector_core::sink::ViewBatch { changes: &changes, rows: &rows, ..batch })
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish()
    }
}

/// Per partition the lower of two positions: a cut at or before both.
fn lowest(positions: impl Iterator<Item = SourcePositions>) -> Option<SourcePositions> {
    positions.reduce(|mut low, next| {
        for (partition, offset) in &next.0 {
            low.0.entry(*partition).and_modify(|o| *o = (*o).min(*offset)).or_insert(0);
        }
        for (partition, offset) in low.0.iter_mut() {
            if !next.0.contains_key(partition) {
                *offset = 0;
            }
        }
        low
    })
}

/// What a replay rebuilds: the live sinks with shadows, and the window of
/// each (it names the date key of the sink's view); the shadows and
/// rewritten files as the run's sinks, per view; the file sinks rewritten
/// whole, and those a window replay leaves alone.
#[derive(Default)]
struct Rebuilt {
    targets: Vec<(String, Target)>,
    windows: Vec<Selection>,
    view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>>,
    rewritten_files: Vec<String>,
    skipped_files: Vec<String>,
}

impl Rebuilt {
    /// Adds the sinks of `view`; answers the window's name. A view with no
    /// sink the replay can rebuild is an error that says why.
    fn add_view(
        &mut self,
        plan: &PipelinePlan,
        view: &Arc<ViewPlan>,
        options: &ReplayOptions,
        source_names: &[String],
        every: Duration,
        stop: &Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<String, CommandError> {
        let (selection, window_name) = window(view, options)?;
        let rebuilt = self.targets.len() + self.rewritten_files.len();
        let skipped = self.skipped_files.len();
        let mut shadows: Vec<(String, Box<dyn ViewSink>)> = Vec::new();
        for sink in plan.config.sinks.iter().filter(|s| s.view.value == view.name) {
            let name = sink.name.clone();
            let wrap =
                |inner: Box<dyn ViewSink>| Box::new(Windowed { inner, window: selection.clone() }) as Box<dyn ViewSink>;
            match &sink.kind {
                SinkKind::Redis(config) => {
                    let swap = RedisSwap::new(&name, Arc::clone(view), config, source_names.to_vec(), &window_name)
                        .map_err(failed(&name))?;
                    let shadow =
                        RedisViewSink::new(&name, Arc::clone(view), swap.shadow_config(), source_names.to_vec())
                            .map_err(failed(&name))?;
                    let built = Arc::new(Mutex::new(Built::default()));
                    let keeping = Keeping {
                        inner: shadow,
                        untouched: false,
                        built: Arc::clone(&built),
                        every,
                        written_at: Instant::now(),
                        stop: Arc::clone(stop),
                    };
                    shadows.push((format!("shadow of sink {name:?}"), wrap(Box::new(keeping))));
                    self.targets.push((name, Target::Redis(Box::new(swap), built)));
                    self.windows.push(selection.clone());
                }
                SinkKind::ClickHouse(config) => {
                    let swap =
                        ClickHouseSwap::new(&name, Arc::clone(view), config, source_names.to_vec(), &window_name)
                            .map_err(failed(&name))?;
                    let shadow = swap.shadow_sink().map_err(failed(&name))?;
                    shadows.push((format!("shadow of sink {name:?}"), wrap(Box::new(shadow))));
                    self.targets.push((name, Target::ClickHouse(Box::new(swap))));
                    self.windows.push(selection.clone());
                }
                SinkKind::File(_) | SinkKind::Parquet(_) if options.from.is_some() || options.to.is_some() => {
                    self.skipped_files.push(name);
                }
                SinkKind::File(file) => {
                    let sink = FileViewSink::new(Arc::clone(view), &file.path, None);
                    shadows.push((format!("sink {name:?}"), Box::new(sink)));
                    self.rewritten_files.push(name);
                }
                SinkKind::Parquet(parquet) => {
                    let sink = ParquetViewSink::new(Arc::clone(view), &parquet.path, None, source_names.to_vec());
                    shadows.push((format!("sink {name:?}"), Box::new(sink)));
                    self.rewritten_files.push(name);
                }
            }
        }
        if self.targets.len() + self.rewritten_files.len() == rebuilt {
            if self.skipped_files.len() > skipped {
                let files = &self.skipped_files[skipped..];
                return Err(CommandError::Io(format!(
                    "view {:?} has no sinks a window replay can rebuild: {} hold{} the whole view in one file, \
                     which a window replay does not touch; replay the whole view (without --from and --to)",
                    view.name,
                    files.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", "),
                    if files.len() == 1 { "s" } else { "" },
                )));
            }
            return Err(CommandError::Io(format!("view {:?} has no sinks to replay into", view.name)));
        }
        self.view_sinks.push(shadows);
        Ok(window_name)
    }
}

/// Replays `options.views` of `plan` into their sinks, in one run of the
/// dataflow.
pub fn replay(
    plan: &PipelinePlan,
    options: &ReplayOptions,
    run_options: RunOptions,
) -> Result<ReplaySummary, CommandError> {
    let started = Instant::now();
    crate::keep_freed_memory(crate::KeepFreed::UntilExit);
    let views = chosen_views(plan, &options.views)?;
    if plan.config.sources.is_empty() {
        return Err(CommandError::Io(format!("{}: no sources are declared to replay from", plan.config.file)));
    }
    // Rebuilt from the end of the topic, the view would hold nothing, and
    // the swap would delete every live row.
    crate::commands::refuse_a_latest_start(plan, "replay")?;
    // Rebuilt from what the topic still holds, the view would lack the
    // deleted events, and the swap would take them out of the live rows.
    let log = crate::commands::log_bounds(plan);
    let fronts = crate::commands::deleted_fronts(plan, &log);
    if let Some(front) = fronts.first() {
        if !options.accept_deleted_records {
            return Err(CommandError::Io(format!(
                "{front}{}: the records between were deleted (the topic's retention). A view rebuilt from what \
                 the topic holds lacks their events, and swapping it in would take them out of the live view (a \
                 customer's lifetime value would shrink). If no run ever read them (the topic had lost them \
                 before the pipeline's first run), replay with --accept-deleted-records",
                if fronts.len() > 1 { format!(" (and {} more partitions)", fronts.len() - 1) } else { String::new() }
            )));
        }
        for front in &fronts {
            tracing::warn!("{front}: rebuilding from what the log holds (--accept-deleted-records)");
        }
    }
    let source_names: Vec<String> = plan.config.sources.iter().map(|s| s.name.clone()).collect();
    let every = options.checkpoint_every.unwrap_or(WRITE_SHADOW_EVERY);

    let mut rebuilt = Rebuilt::default();
    let mut window_name = String::new();
    for view in &views {
        window_name = rebuilt.add_view(plan, view, options, &source_names, every, &run_options.stop)?;
    }
    let Rebuilt { mut targets, windows, view_sinks, rewritten_files, skipped_files } = rebuilt;
    let token = format!("replay-{}-{}-{}", host(), std::process::id(), now_nanos());
    // One replay of a sink at a time: held until this function returns.
    let _claims = Claims::take(plan, &views, &source_names, &token)?;

    // A sink whose rows another definition of its view computed: the
    // rebuilt rows would be updated by that definition again by a pipeline
    // still running it, and the sink would then claim this one.
    for (name, target) in &mut targets {
        if target.live_definition_differs().map_err(failed(name))? {
            return Err(CommandError::Io(format!(
                "sink {name:?} holds rows of another definition of its view than this config's (the view changed \
                 since a run last opened the sink); a pipeline still running that definition would go on updating \
                 the rebuilt rows by it. Restart the pipeline with this config instead: it rebuilds the view's sinks \
                 by itself, and their readers keep the old rows until the rebuilt ones replace them. Or replay \
                 with the config the pipeline runs"
            )));
        }
    }
    let mut resumed_from = Vec::new();
    let mut live_at = Vec::new();
    for (name, target) in &mut targets {
        // The live position first: reading it creates the live sink's
        // database and tables, where the shadow's checkpoint is kept.
        live_at.push(target.live_position().map_err(failed(name))?);
        resumed_from.push(target.shadow_position().map_err(failed(name))?);
    }
    // A live sink that stands past the end of the log, or before its
    // start, cannot be caught up with (a run refuses it too): the shadow
    // would wait for records that will never come, or that are gone. (The
    // log is asked where it ends after the sinks said where they stand:
    // a live pipeline may have read records appended since the check
    // above.)
    let bounds = crate::commands::log_bounds(plan);
    let source = |index: u16| source_names.get(usize::from(index)).map_or("?", String::as_str);
    for ((name, _), at) in targets.iter().zip(&live_at) {
        let Some(at) = at else { continue };
        if let Some(((index, partition), offset, end)) = past_the_end(at, &bounds) {
            return Err(CommandError::Io(format!(
                "sink {name:?} stands at offset {offset} of partition {partition} of source {:?}, past the end of \
                 the log there ({end}): the log was truncated, or its topic deleted and created anew, so the \
                 sink's rows come from records that are gone, and no replay can reach where it stands. `projector \
                 drop -c {} --sink {name}` and a run rebuild it from the log as it is now; if the config names the \
                 wrong log, correct it",
                source(index),
                plan.config.file
            )));
        }
        if let Some(((index, partition), offset, first)) = before_the_start(at, &bounds) {
            return Err(CommandError::Io(format!(
                "sink {name:?} stands at offset {offset} of partition {partition} of source {:?}, before the start \
                 of the log ({first}): the records between were deleted before it read them, and no replay can \
                 bring it to where it stands. `projector drop -c {} --sink {name}` and a run rebuild it from what \
                 the log holds",
                source(index),
                plan.config.file
            )));
        }
    }
    // With no live checkpoint at all, nothing runs into these sinks: build
    // up to where the log ends now and swap at the end. Otherwise trail the
    // slowest live sink.
    let following = live_at.iter().any(Option::is_some);
    let bound = Arc::new(Bound::new(lowest(live_at.iter().flatten().cloned())));

    let replay_plan = replay_plan(plan, &views, every);
    let sources: Vec<(String, Arc<dyn Source>)> = components::sources(&replay_plan)
        .into_iter()
        .enumerate()
        .map(|(index, (name, source))| {
            (name, Arc::new(BoundedSource::new(source, index as u16, Arc::clone(&bound))) as Arc<dyn Source>)
        })
        .collect();
    let names: Vec<&str> = views.iter().map(|view| view.name.as_str()).collect();
    let checkpoint = options.checkpoint_every.map(|every| (checkpoint_path(plan, &names, &window_name), every));
    let (state_sinks, restore) = match &checkpoint {
        Some((path, every)) => components::state_snapshots_at(path, *every, &source_names),
        None => (Vec::new(), Vec::new()),
    };
    let outputs = Outputs { view_sinks, state_sinks, restore, ..Outputs::default() };
    let progress = Arc::clone(&run_options.progress);
    let stop = Arc::clone(&run_options.stop);
    let run_options = RunOptions { until_idle: true, until_caught_up: !following, ..run_options };
    let plan_for_run = Arc::new(replay_plan);
    let runner: JoinHandle<Result<RunSummary, RunError>> =
        std::thread::spawn(move || run(plan_for_run, sources, outputs, run_options));

    // The bar's length: where the replay stops, the live sinks' position;
    // with no live sink, the end of the log.
    let length = bound.limit().map(|b| b.total() as u64).or_else(|| records_in(&log));
    let bar = progress_bar(options.progress_bar, length);
    let watch = Watch { runner: &runner, bar: &bar, progress: &progress, stop: &stop };
    let mut swaps = Vec::new();
    let outcome = if following {
        follow_and_swap(
            &mut targets,
            &bound,
            &windows,
            &token,
            options,
            &watch,
            &resumed_from,
            &source_names,
            &mut swaps,
        )
    } else {
        watch.until_finished();
        Ok(())
    };
    if outcome.is_err() {
        // Whatever happens, the live sinks go on.
        for (_, target) in &mut targets {
            let _ = target.release(&token);
        }
        stop.store(true, Ordering::Relaxed);
    }
    bound.close();
    let summary = runner.join().map_err(|_| CommandError::Io("the replay's dataflow panicked".into()))?;
    bar.finish_and_clear();
    // A dataflow that failed is why the shadows did not get where the
    // coordinator waited for them: its error says what happened.
    let summary = summary?;
    outcome?;
    if stop.load(Ordering::Relaxed) {
        return Err(stopped());
    }
    if !following {
        // Built to where the log ended: swap each sink in at its shadow.
        let mut picks = Vec::new();
        for (index, (name, target)) in targets.iter_mut().enumerate() {
            picks.push((index, target.shadow_position().map_err(failed(name))?.unwrap_or_default()));
        }
        let swap = SwapIn { token: &token, windows: &windows, source_names: &source_names, held_since: Instant::now() };
        swaps.extend(swap.each(&mut targets, &picks, &resumed_from)?);
    }
    for (name, target) in &mut targets {
        target.drop_shadow().map_err(failed(name))?;
    }
    if let Some((path, _)) = &checkpoint {
        for file in [path.clone(), projector_sink_parquet::previous_path(path)] {
            let _ = std::fs::remove_file(file);
        }
    }
    Ok(ReplaySummary { run: summary, elapsed: started.elapsed(), swaps, rewritten_files, skipped_files })
}

/// How many records the logs hold now (`None` when a source cannot tell).
fn records_in(bounds: &[Option<projector_core::source::LogBounds>]) -> Option<u64> {
    bounds.iter().try_fold(0, |total, bounds| {
        Some(total + bounds.as_ref()?.values().map(|(start, end)| end.saturating_sub(*start)).sum::<u64>())
    })
}

/// The pipeline a replay runs: `views` alone, its Kafka sources catching
/// up in batches as long as the replay's checkpoint interval, `every`.
///
/// No reader sees a replay's batches before the swap, so their length only
/// trades what an interrupted replay builds again against speed. In
/// `replay_restart` 1 s batches (a live pipeline's catch-up default) cost
/// about 6% more CPU than 10 s batches in a `product_sales` replay and 15%
/// in a `customer_ltv` one: each batch folds again every order it touches
/// and rewrites its view rows.
/// The extra memory is bounded by the state itself: the fold's arrangement
/// holds every event of the replay anyway, and a batch's events wait
/// beside it.
fn replay_plan(plan: &PipelinePlan, views: &[Arc<ViewPlan>], every: Duration) -> PipelinePlan {
    let mut replay_plan = plan.clone();
    replay_plan.views = views.to_vec();
    for source in &mut replay_plan.config.sources {
        if let SourceKind::Kafka(kafka) = &mut source.kind {
            kafka.catch_up_batch_ms = (every.as_millis() as u64).max(kafka.batch_ms);
        }
    }
    replay_plan
}

/// What a replay stopped by a signal says.
fn stopped() -> CommandError {
    CommandError::Io(
        "the replay was stopped before it finished; run it again to resume from the shadows' checkpoints".into(),
    )
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// What the coordinator watches while it waits for the shadow.
struct Watch<'a> {
    runner: &'a JoinHandle<Result<RunSummary, RunError>>,
    bar: &'a ProgressBar,
    progress: &'a Arc<projector_dataflows::runner::RunProgress>,
    stop: &'a Arc<std::sync::atomic::AtomicBool>,
}

impl Watch<'_> {
    /// Moves the bar along until the dataflow has ended.
    fn until_finished(&self) {
        while !self.runner.is_finished() {
            self.bar.set_position(self.progress.records.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        self.bar.set_position(self.progress.records.load(Ordering::Relaxed));
    }

    /// Waits until every shadow is at `at`.
    fn until_shadows_at(&self, targets: &mut [(String, Target)], at: &SourcePositions) -> Result<(), CommandError> {
        loop {
            self.bar.set_position(self.progress.records.load(Ordering::Relaxed));
            // A bounded source (a file) may end the run: look at the
            // shadows before asking whether it still runs.
            let finished = self.runner.is_finished();
            if self.stop.load(Ordering::Relaxed) {
                return Err(stopped());
            }
            let mut all = true;
            for (name, target) in targets.iter_mut() {
                if target.shadow_position().map_err(failed(name))?.as_ref() != Some(at) {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(());
            }
            if finished {
                return Err(CommandError::Io(format!(
                    "the replay's dataflow ended before the shadow reached {:?}; was the log truncated?",
                    at.0
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Trails the live sinks until the shadow caught up, then holds them,
/// brings the shadow to each one's checkpoint and swaps it in.
#[allow(clippy::too_many_arguments)]
fn follow_and_swap(
    targets: &mut [(String, Target)],
    bound: &Bound,
    windows: &[Selection],
    token: &str,
    options: &ReplayOptions,
    watch: &Watch<'_>,
    resumed_from: &[Option<SourcePositions>],
    source_names: &[String],
    swaps: &mut Vec<SwapReport>,
) -> Result<(), CommandError> {
    // Catch up with the live sinks as they were at the start, then once more
    // with where they went meanwhile, so the hold below is short.
    for round in 0..2 {
        let at = bound.limit().unwrap_or_default();
        watch.until_shadows_at(targets, &at)?;
        if round == 1 {
            break;
        }
        let mut now = Vec::new();
        for (name, target) in targets.iter_mut() {
            now.extend(target.live_position().map_err(failed(name))?);
        }
        match lowest(now.into_iter()) {
            Some(next) if next != at && at.le(&next) => {
                watch.bar.set_length(next.total() as u64);
                bound.set(next);
            }
            _ => break,
        }
    }
    let held_since = Instant::now();
    for (name, target) in targets.iter_mut() {
        target.pause(token).map_err(failed(name))?;
    }
    let mut stands = Vec::new();
    for (index, (name, target)) in targets.iter_mut().enumerate() {
        target.settle(token, options.ack_wait, name).map_err(failed(name))?;
        let at = match target.live_position().map_err(failed(name))? {
            Some(at) => at,
            None => bound.limit().unwrap_or_default(),
        };
        stands.push((index, at));
    }
    stands.sort_by_key(|(_, at)| at.total());
    // The sinks that stand at the same position swap together.
    let swap = SwapIn { token, windows, source_names, held_since };
    for group in stands.chunk_by(|(_, a), (_, b)| a == b) {
        let at = &group[0].1;
        let current = bound.limit().unwrap_or_default();
        if !current.le(at) {
            return Err(CommandError::Io(format!(
                "sink {:?} stands at {:?}, behind the other sinks of the replay at {:?}; replay its sinks \
                 one by one once they agree (`projector status` shows where each stands)",
                targets[group[0].0].0, at.0, current.0
            )));
        }
        bound.set(at.clone());
        for (index, _) in group {
            watch.until_shadows_at(std::slice::from_mut(&mut targets[*index]), at)?;
        }
        swaps.extend(swap.each(targets, group, resumed_from)?);
    }
    Ok(())
}

/// Targets swapped one after another, each with its index.
type Lane<'a> = Vec<(usize, &'a mut (String, Target))>;

/// What a swap of one sink needs besides the sink.
struct SwapIn<'a> {
    token: &'a str,
    /// Each target's window, by the target's index.
    windows: &'a [Selection],
    source_names: &'a [String],
    /// Since when the live sink has been held (for the report).
    held_since: Instant,
}

impl SwapIn<'_> {
    /// Swaps in each target of `picks` (its index, and the position to
    /// swap in at) at once, each on a thread of its own: one sink's swap
    /// (reading both copies of its view back and writing their
    /// differences) does not wait for another's. Except on one Redis
    /// server, which does one thing at a time: there the sinks take turns,
    /// the one with the fewest rows first, so that a small view's live
    /// writes are held for its own swap, not for a large one's beside it
    /// (in a one-pass replay of the three views, `order_summary_redis` was
    /// held 1.7 s, against 0.3 s when replayed alone).
    fn each(
        &self,
        targets: &mut [(String, Target)],
        picks: &[(usize, SourcePositions)],
        resumed_from: &[Option<SourcePositions>],
    ) -> Result<Vec<SwapReport>, CommandError> {
        // Lanes of targets swapped one after another: one per Redis
        // server, one per other target.
        let mut lanes: Vec<(Option<String>, Lane<'_>)> = Vec::new();
        for (index, target) in targets.iter_mut().enumerate() {
            if !picks.iter().any(|(pick, _)| *pick == index) {
                continue;
            }
            let server = target.1.redis_server().map(str::to_string);
            match lanes.iter_mut().find(|(lane, _)| server.is_some() && *lane == server) {
                Some((_, lane)) => lane.push((index, target)),
                None => lanes.push((server, vec![(index, target)])),
            }
        }
        for (_, lane) in &mut lanes {
            lane.sort_by_key(|(index, target)| (target.1.kept_rows(), *index));
        }
        let swapped: Vec<(usize, Result<SwapReport, CommandError>)> = std::thread::scope(|scope| {
            let running: Vec<_> = lanes
                .into_iter()
                .map(|(_, lane)| {
                    scope.spawn(move || {
                        let mut reports = Vec::new();
                        let mut lane = lane.into_iter();
                        while let Some((index, (name, target))) = lane.next() {
                            // The holds of those waiting their turn are
                            // renewed, so none lapses while they wait.
                            for (_, (waiting, later)) in lane.as_mut_slice() {
                                if let Err(error) = later.pause(self.token) {
                                    tracing::warn!(sink = %waiting, %error, "cannot renew the hold");
                                }
                            }
                            let Some((_, at)) = picks.iter().find(|(pick, _)| *pick == index) else { continue };
                            let resumed = resumed_from.get(index).cloned().flatten();
                            let window = &self.windows[index];
                            reports.push((index, self.run(name, target, at.clone(), window, resumed)));
                        }
                        reports
                    })
                })
                .collect();
            running
                .into_iter()
                .flat_map(|lane| {
                    lane.join().unwrap_or_else(|_| vec![(0, Err(CommandError::Io("a swap panicked".into())))])
                })
                .collect()
        });
        // Reported in the order of the targets, as before.
        let mut swapped = swapped;
        swapped.sort_by_key(|(index, _)| *index);
        swapped.into_iter().map(|(_, report)| report).collect()
    }

    /// Holds `target` (or renews the hold), swaps its shadow in at `at`,
    /// lets it go, and reports.
    fn run(
        &self,
        name: &str,
        target: &mut Target,
        at: SourcePositions,
        window: &Selection,
        resumed_from: Option<SourcePositions>,
    ) -> Result<SwapReport, CommandError> {
        target.pause(self.token).map_err(failed(name))?;
        let swapped = target.swap(self.token, &at, window);
        let released = target.release(self.token);
        let (rows, rewritten, deleted, ranking_entries) = swapped.map_err(failed(name))?;
        released.map_err(failed(name))?;
        Ok(SwapReport {
            sink: name.to_string(),
            resumed_from,
            at_text: positions_to_json(&at, self.source_names),
            at,
            rows,
            rewritten,
            deleted,
            ranking_entries,
            held: self.held_since.elapsed(),
        })
    }
}

fn progress_bar(shown: bool, length: Option<u64>) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = match length {
        Some(length) => ProgressBar::new(length),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(
        "{spinner} replaying [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events {rate} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    // Whole events per second ({per_sec} shows four decimals).
    .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{}/s", indicatif::HumanCount(state.per_sec() as u64));
    });
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[u64]) -> Row {
        values.iter().map(|v| Value::UInt(*v)).collect::<Vec<_>>().into()
    }

    fn change(key: u64, value: u64, diff: i64) -> ViewChange {
        ViewChange { key: row(&[key]), values: row(&[value]), diff }
    }

    fn take(built: &mut Built, at: u64, changes: &[ViewChange]) {
        let positions = SourcePositions([((0, 0), at)].into_iter().collect());
        let rows = ViewRows::default();
        built.take(&ViewBatch { changes, upper: at, positions: &positions, newest_event_at: None, rows: &rows });
    }

    /// What a kept shadow writes is the net change since its last write,
    /// also across a write that failed (nothing is forgotten until one
    /// succeeds), and the swap learns which rows Redis holds.
    #[test]
    fn a_kept_shadow_writes_net_changes_and_knows_what_redis_holds() {
        let mut built = Built::fresh();
        take(&mut built, 1, &[change(1, 10, 1), change(2, 20, 1)]);
        assert_eq!(built.unwritten_changes(), vec![change(1, 10, 1), change(2, 20, 1)]);
        // That write failed: the next one still carries it.
        take(&mut built, 2, &[change(1, 10, -1), change(1, 11, 1), change(3, 30, 1)]);
        assert_eq!(built.unwritten_changes(), vec![change(1, 11, 1), change(2, 20, 1), change(3, 30, 1)]);
        built.wrote();
        take(&mut built, 3, &[change(2, 20, -1), change(3, 30, -1), change(3, 31, 1), change(4, 40, 1)]);
        assert_eq!(
            built.unwritten_changes(),
            vec![change(2, 20, -1), change(3, 30, -1), change(3, 31, 1), change(4, 40, 1)]
        );
        let at = SourcePositions([((0, 0), 3)].into_iter().collect());
        let built = Mutex::new(built);
        let kept = Built::at(&built, &at).unwrap();
        let mut stored = kept.stored.clone();
        stored.sort();
        // Redis holds what was written at 2: rows 1, 2 and 3.
        assert_eq!(stored, vec![row(&[1]), row(&[2]), row(&[3])]);
        let mut rows: Vec<(Row, Row)> = kept.rows.into_iter().collect();
        rows.sort();
        assert_eq!(rows, vec![(row(&[1]), row(&[11])), (row(&[3]), row(&[31])), (row(&[4]), row(&[40]))]);
    }

    /// A shadow never written holds nothing: the swap is told so, and the
    /// kept rows are the batches' net result.
    #[test]
    fn a_kept_shadow_never_written_holds_nothing() {
        let mut built = Built::fresh();
        take(&mut built, 1, &[change(1, 10, 1), change(2, 20, 1)]);
        take(&mut built, 2, &[change(1, 10, -1), change(1, 11, 1), change(2, 21, -1), change(3, 30, 1)]);
        let at = SourcePositions([((0, 0), 2)].into_iter().collect());
        let kept = Built::at(&Mutex::new(built), &at).unwrap();
        assert!(kept.stored.is_empty());
        let mut rows: Vec<(Row, Row)> = kept.rows.into_iter().collect();
        rows.sort();
        // Row 2's retraction was of values it did not hold: it stays.
        assert_eq!(rows, vec![(row(&[1]), row(&[11])), (row(&[2]), row(&[20])), (row(&[3]), row(&[30]))]);
    }

    /// The bar of a replay that follows no live sink is as long as the
    /// logs hold records; a source that cannot tell leaves it a spinner.
    #[test]
    fn a_replay_bar_is_as_long_as_the_logs() {
        let two: projector_core::source::LogBounds = [(0, (0, 10)), (1, (4, 9))].into_iter().collect();
        let one: projector_core::source::LogBounds = [(0, (0, 7))].into_iter().collect();
        assert_eq!(records_in(&[Some(two.clone()), Some(one)]), Some(22));
        assert_eq!(records_in(&[Some(two), None]), None);
        assert_eq!(records_in(&[]), Some(0));
    }

    /// A replay on this machine whose process ended is gone; one still
    /// running, this one, or one of another machine is not known to be.
    #[test]
    fn a_replay_is_gone_when_its_process_on_this_machine_ended() {
        let mut ended = std::process::Command::new("true").spawn().unwrap();
        let pid = ended.id();
        ended.wait().unwrap();
        let here = host();
        assert!(gone(&format!("replay-{here}-{pid}-17")));
        assert!(!gone(&format!("replay-{here}-{}-17", std::process::id())));
        assert!(!gone(&format!("replay-elsewhere-{pid}-17")));
        assert!(!gone("replay-elsewhere"));
        assert!(!gone("replay-other"));
    }

    /// While the dataflow runs, the bar follows the records it has read.
    #[test]
    fn the_bar_follows_the_records_read_until_the_dataflow_ends() {
        let progress = Arc::new(projector_dataflows::runner::RunProgress::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counting = Arc::clone(&progress);
        let runner: JoinHandle<Result<RunSummary, RunError>> = std::thread::spawn(move || {
            for _ in 0..5 {
                counting.records.fetch_add(1000, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(60));
            }
            Err(RunError::Failed("only counting".into()))
        });
        let bar = ProgressBar::hidden();
        let watch = Watch { runner: &runner, bar: &bar, progress: &progress, stop: &stop };
        watch.until_finished();
        assert!(runner.is_finished());
        assert_eq!(bar.position(), 5000);
    }

    /// A replay runs its one view, and its Kafka sources catch up in
    /// batches as long as its checkpoint interval (never shorter than the
    /// source's `batch_ms`); a file source is left as it is.
    #[test]
    fn a_replay_catches_up_in_batches_as_long_as_its_checkpoints() {
        let shipped = crate::demo::SHIPPED_PIPELINES;
        let views = &shipped[shipped.find("\nviews:").unwrap()..shipped.find("\nsinks:").unwrap()];
        let text = format!(
            "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: 127.0.0.1:9\n    topic: t\n    batch_ms: 50\n  \
             more:\n    type: file\n    path: events.jsonl\n{views}\n"
        );
        let plan = projector_core::config::check_text(&text, "test.yaml", std::path::Path::new(".")).unwrap();
        let views = [Arc::clone(plan.view("product_sales").unwrap()), Arc::clone(plan.view("order_summary").unwrap())];
        let catch_up = |plan: &PipelinePlan| match &plan.config.sources[0].kind {
            SourceKind::Kafka(kafka) => kafka.catch_up_batch_ms,
            SourceKind::File(_) => panic!("the first source is Kafka"),
        };
        assert_eq!(catch_up(&plan), projector_core::config::DEFAULT_CATCH_UP_BATCH_MS);
        let replayed = replay_plan(&plan, &views[..1], WRITE_SHADOW_EVERY);
        assert_eq!(catch_up(&replayed), 10_000);
        assert_eq!(replayed.views.len(), 1);
        assert_eq!(replayed.views[0].name, "product_sales");
        // Several views run together, in the order named.
        let both = replay_plan(&plan, &views, WRITE_SHADOW_EVERY);
        let names: Vec<&str> = both.views.iter().map(|view| view.name.as_str()).collect();
        assert_eq!(names, ["product_sales", "order_summary"]);
        assert_eq!(replayed.config.sources[1], plan.config.sources[1]);
        assert_eq!(catch_up(&replay_plan(&plan, &views, Duration::from_millis(10))), 50);
    }
}
