//! Swapping a rebuilt view into a live ClickHouse sink (`projector replay`).
//!
//! The rebuilt view is built into a shadow: the same sink writing
//! `<table>__shadow_<window>_rows` under the name `<sink>@shadow:<window>`,
//! with its own checkpoints, so an interrupted build resumes like any sink.
//! To swap, the replay adds a `pause` row for the live sink to
//! `projector_pauses`; the live sink looks before every write (and every
//! quarter second when idle), answers with an `ack` row and waits, so once
//! the ack is there no write of the live run is under way and its
//! checkpoint stands still. The replay brings the shadow to exactly that
//! position, writes the live rows of the window that differ from the
//! shadow's (and tombstones for the ones it lacks) in one `INSERT` (one
//! part: readers with `FINAL` see all of it or none) as the next version of
//! the live run's generation, then that commit's checkpoint, then a
//! `release` row. The live sink takes up that checkpoint and goes on.
//!
//! While a replay rebuilds the sink, it claims it with `replay` rows in the
//! same table (see [`ReplayClaim`]), so that a second replay is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use projector_core::config::ClickHouseSinkConfig;
use projector_core::sink::{Selection, SinkError, SourcePositions, positions_from_json, positions_to_json};
use projector_core::view::ViewPlan;

use crate::{ClickHouseViewReader, ClickHouseViewSink, now_millis, quote};

/// What a swap changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapCounts {
    /// Rows of the window the shadow holds.
    pub rows: usize,
    /// Rows written because they were missing or differed.
    pub rewritten: usize,
    /// Rows deleted (tombstoned) because the shadow does not have them.
    pub deleted: usize,
}

/// One live ClickHouse sink and its shadow.
pub struct ClickHouseSwap {
    name: String,
    live: ClickHouseViewSink,
    live_config: ClickHouseSinkConfig,
    shadow: ClickHouseViewSink,
    shadow_name: String,
    shadow_config: ClickHouseSinkConfig,
    plan: Arc<ViewPlan>,
    source_names: Vec<String>,
}

impl ClickHouseSwap {
    /// Sink `name` of `plan` as `config` declares it; `window` names the
    /// shadow (letters, digits and `_`).
    pub fn new(
        name: &str,
        plan: Arc<ViewPlan>,
        config: &ClickHouseSinkConfig,
        source_names: Vec<String>,
        window: &str,
    ) -> Result<ClickHouseSwap, SinkError> {
        let table = if config.table.is_empty() { plan.name.clone() } else { config.table.clone() };
        let mut shadow_config = config.clone();
        shadow_config.table = format!("{table}__shadow_{window}");
        let shadow_name = format!("{name}@shadow:{window}");
        Ok(ClickHouseSwap {
            name: name.to_string(),
            live: ClickHouseViewSink::new(name, Arc::clone(&plan), config, source_names.clone())?,
            live_config: config.clone(),
            shadow: ClickHouseViewSink::new(&shadow_name, Arc::clone(&plan), &shadow_config, source_names.clone())?,
            shadow_name,
            shadow_config,
            plan,
            source_names,
        })
    }

    /// The shadow as a sink the replay runs into.
    pub fn shadow_sink(&self) -> Result<ClickHouseViewSink, SinkError> {
        Ok(ClickHouseViewSink::new(
            &self.shadow_name,
            Arc::clone(&self.plan),
            &self.shadow_config,
            self.source_names.clone(),
        )?
        .with_idle_checkpoint(Duration::from_millis(100)))
    }

    /// The live sink's checkpoint (`None`: it holds nothing).
    pub fn live_position(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.live.create_tables()?;
        position(&self.live, &self.source_names)
    }

    /// Whether the live sink's rows were computed by another definition of
    /// the view than the one the replay builds.
    pub fn live_definition_differs(&mut self) -> Result<bool, SinkError> {
        self.live.holds_another_definition()
    }

    /// The shadow's checkpoint (`None`: nothing built yet).
    pub fn shadow_position(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        position(&self.shadow, &self.source_names)
    }

    /// Holds the live sink's writes for up to `hold` (renew it by calling
    /// again).
    pub fn pause(&mut self, token: &str, hold: Duration) -> Result<(), SinkError> {
        self.live.create_tables()?;
        self.live.write_hold(token, "pause", now_millis() + hold.as_millis() as u64)
    }

    /// Waits up to `wait` for the live run to say it holds still. `false`:
    /// no run answered (none is running, or it is stuck in a write).
    pub fn wait_for_ack(&mut self, token: &str, wait: Duration) -> Result<bool, SinkError> {
        let deadline = Instant::now() + wait;
        loop {
            let text = self.live.select(
                "cannot read the sink's holds",
                &format!(
                    "SELECT count() FROM {} WHERE sink = {} AND kind = 'ack' AND token = {}",
                    self.live.pauses_table(),
                    quote(&self.name),
                    quote(token)
                ),
            )?;
            if text.trim().parse::<u64>().unwrap_or(0) > 0 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lets the live sink write again.
    pub fn release(&mut self, token: &str) -> Result<(), SinkError> {
        self.live.write_hold(token, "release", 0)
    }

    /// Makes the live rows in `window` equal to the shadow's, which must be
    /// at `at`, the live checkpoint, while the live sink is held.
    pub fn swap(&mut self, at: &SourcePositions, window: &Selection) -> Result<SwapCounts, SinkError> {
        let reader = |name: &str, config: &ClickHouseSinkConfig| {
            ClickHouseViewReader::new(name, &self.plan, config, self.source_names.clone()).map_err(SinkError::Fatal)
        };
        let (shadow, live) = (reader(&self.shadow_name, &self.shadow_config)?, reader(&self.name, &self.live_config)?);
        let found = shadow.differences(&live, window).map_err(|e| SinkError::Retryable(e.to_string()))?;
        if found.positions != *at {
            return Err(SinkError::Fatal(format!(
                "the shadow of ClickHouse sink {:?} is at {:?}, not at the live checkpoint {:?}",
                self.name, found.positions.0, at.0
            )));
        }
        if found.other_positions != *at && !found.other_positions.0.is_empty() {
            return Err(SinkError::Fatal(format!(
                "ClickHouse sink {:?} moved to {:?} while held at {:?}",
                self.name, found.other_positions.0, at.0
            )));
        }
        let counts = SwapCounts { rows: found.rows, rewritten: found.differing.len(), deleted: found.gone.len() };
        let changed: Vec<(&_, Option<&_>)> = found
            .differing
            .iter()
            .map(|(key, values)| (key, Some(values)))
            .chain(found.gone.iter().map(|key| (key, None)))
            .collect();
        // The swap is the next commit of the live run's generation.
        let text = self.live.select(
            "cannot read the sink's checkpoint",
            &format!(
                "SELECT generation, seq, committed FROM {} WHERE sink = {} ORDER BY generation DESC, seq DESC LIMIT 1",
                self.live.checkpoints_table(),
                quote(&self.name)
            ),
        )?;
        let numbers: Vec<u64> =
            text.lines().next().unwrap_or("0\t0\t0").split('\t').map(|f| f.parse().unwrap_or(0)).collect();
        let (generation, seq, committed) = (numbers[0], numbers.get(1).copied().unwrap_or(0) + 1, numbers[2]);
        self.live.generation = generation;
        let version = (generation << 32) | seq;
        if !changed.is_empty() {
            let body = self.live.rows_body(changed, version);
            self.live.insert_rows(body)?;
        }
        let committed = if counts.rewritten + counts.deleted > 0 { version } else { committed };
        // The swapped view reflects the newest event of either copy.
        let newest = |sink: &ClickHouseViewSink| sink.last_checkpoint().map(|last| last.and_then(|last| last.newest));
        let newest = newest(&self.shadow)?.max(newest(&self.live)?);
        let positions = positions_to_json(at, &self.source_names);
        self.live.write_checkpoint(seq, committed, &positions, newest, counts.rewritten)?;
        if *window == Selection::default() {
            // All rows are now the rebuilt view's, of the definition the
            // replay ran with (a window's rows alone do not make it so).
            self.live.record_definition()?;
        }
        Ok(counts)
    }

    /// Drops the shadow's tables and leaves it holding nothing: its empty
    /// checkpoint first, of a generation newer than the replay's (the
    /// replay's shadow sink took one of its own), so that the next replay
    /// builds its shadow from the start. An empty checkpoint of an older
    /// generation once left the replay's last one the newest: the next
    /// replay "resumed" a shadow whose tables were gone and deleted every
    /// live row.
    pub fn drop_shadow(&mut self) -> Result<(), SinkError> {
        self.shadow.drop_all()
    }
}

/// A sink's last checkpoint.
fn position(sink: &ClickHouseViewSink, source_names: &[String]) -> Result<Option<SourcePositions>, SinkError> {
    match sink.last_checkpoint()? {
        Some(crate::Checkpoint { positions, .. }) if !positions.is_empty() => {
            Ok(Some(positions_from_json(&positions, source_names).map_err(SinkError::Fatal)?))
        }
        _ => Ok(None),
    }
}

/// A replay's claim on a live sink, so that two replays never rebuild one
/// sink at once: `replay` rows in `projector_pauses`, each with the time
/// the claim lapses unless renewed (the newest row of a token counts;
/// released, it lapses at 0). Of the claims that have not lapsed, the
/// earliest holds; a replay that finds another's first takes its own back
/// and is refused. (ClickHouse has no "insert if absent"; two replays
/// that claim at once both see the same earliest claim.)
pub struct ReplayClaim {
    sink: ClickHouseViewSink,
    token: String,
    lease: Duration,
    /// When the claim was last written (ms): each row of it is written
    /// later than the one before, so that its newest row is never a tie.
    written_at: u64,
}

impl ReplayClaim {
    /// Claims sink `name` (as `config` declares it) for the replay with
    /// `token`, for `lease`; refused, naming the holder, when another
    /// replay has it, unless `gone` says that replay is known to be gone
    /// (its process ended): then its claim is released and this one's
    /// counts.
    pub fn take(
        name: &str,
        plan: Arc<ViewPlan>,
        config: &ClickHouseSinkConfig,
        source_names: Vec<String>,
        (token, lease): (&str, Duration),
        gone: &dyn Fn(&str) -> bool,
    ) -> Result<ReplayClaim, SinkError> {
        let sink = ClickHouseViewSink::new(name, plan, config, source_names)?;
        sink.create_bookkeeping_tables()?;
        let mut claim = ReplayClaim { sink, token: token.to_string(), lease, written_at: 0 };
        claim.renew()?;
        let mut holder = claim.holder()?;
        // Claims of replays that are gone, earliest first, are let go.
        while let Some(dead) = holder.as_ref().filter(|holder| **holder != claim.token && gone(holder)) {
            claim.sink.write_hold(dead, "replay", 0)?;
            holder = claim.holder()?;
        }
        match holder {
            Some(holder) if holder != claim.token => {
                let refused = SinkError::Fatal(format!(
                    "another replay ({holder}) is rebuilding ClickHouse sink {name:?}; run one replay of a sink at \
                     a time (the claim of a replay that died lapses within {} s)",
                    lease.as_secs()
                ));
                claim.release()?;
                Err(refused)
            }
            _ => Ok(claim),
        }
    }

    /// The replay whose claim holds: the earliest that has not lapsed.
    fn holder(&self) -> Result<Option<String>, SinkError> {
        let text = self.sink.select(
            "cannot read the sink's claims",
            &format!(
                "SELECT token FROM (SELECT token, argMax(until, at) AS lapses, min(at) AS since FROM {} \
                 WHERE sink = {} AND kind = 'replay' GROUP BY token) WHERE lapses > {} ORDER BY since, token LIMIT 1",
                self.sink.pauses_table(),
                quote(&self.sink.name),
                now_millis()
            ),
        )?;
        Ok(text.lines().next().map(str::to_string))
    }

    /// Extends the claim by its lease from now.
    pub fn renew(&mut self) -> Result<(), SinkError> {
        self.written_at = now_millis().max(self.written_at + 1);
        self.sink.write_hold_at(&self.token, "replay", self.written_at, self.written_at + self.lease.as_millis() as u64)
    }

    /// Lets go of the claim.
    pub fn release(&mut self) -> Result<(), SinkError> {
        self.written_at = now_millis().max(self.written_at + 1);
        self.sink.write_hold_at(&self.token, "replay", self.written_at, 0)
    }
}
