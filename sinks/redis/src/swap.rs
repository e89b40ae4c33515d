//! Swapping a rebuilt view into a live Redis sink (`projector replay`).
//!
//! The rebuilt view is built into a shadow: the same sink under a prefix
//! of its own (`<prefix>projector:shadow:<sink>:<window>:`), with its own
//! checkpoint, so an interrupted build resumes like any sink. To swap, the
//! replay sets the sink's pause key (see [`crate::pause_key`]); from then
//! on no batch of the live pipeline commits (each commit watches that key),
//! so the live checkpoint stands still. The replay brings the shadow to
//! exactly that position and then, in one `MULTI`/`EXEC` under `WATCH` of
//! the live checkpoint and the pause key, makes the live rows of the
//! window equal to the shadow's: rows that differ are rewritten, rows the
//! shadow lacks are deleted, ranking entries that are missing or wrong are
//! set, and (swapping the whole view) members no row has are removed.
//! Readers see the view before or after, never between. The live pipeline
//! then goes on from the same checkpoint, on the swapped content.

use std::collections::BTreeMap;
use std::sync::Arc;

use redis::{Commands, RedisError};

use projector_core::config::RedisSinkConfig;
use projector_core::sink::{Selection, ViewRows};
use projector_core::sink::{SinkError, SourcePositions, positions_from_json, positions_to_json};
use projector_core::value::{Row, Timestamp};
use projector_core::view::ViewPlan;

use crate::reader::LiveDifferences;
use crate::{RedisViewReader, RedisViewSink, SCAN_COUNT, glob_escape, now_ms, pause_key, replay_key, state_key};

/// Deletes a hold or a claim (`KEYS[1]`) if the replay `ARGV[1]` holds it.
const DELETE_IF_HELD: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1";

/// What a swap changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapCounts {
    /// Rows of the window the shadow holds.
    pub rows: usize,
    /// Rows written because they were missing or differed.
    pub rewritten: usize,
    /// Rows deleted because the shadow does not have them.
    pub deleted: usize,
    /// Ranking entries set (missing, or a wrong score) or removed (no row
    /// has them).
    pub ranking_entries: usize,
}

/// A rebuilt view as the replay kept it while it wrote the shadow, so that
/// the swap need not read the shadow back.
pub struct Kept {
    /// The rebuilt view's rows.
    pub rows: ViewRows,
    /// The source positions they reflect.
    pub positions: SourcePositions,
    /// The latest `occurred_at` among the events they reflect.
    pub newest_event_at: Option<Timestamp>,
    /// The keys of the rows the shadow holds in Redis. A replay writes its
    /// shadow only now and then (the shadow is for resuming an interrupted
    /// replay), so these may be fewer than, or other than, `rows`' keys.
    pub stored: Vec<Row>,
}

/// One live Redis sink and its shadow.
pub struct RedisSwap {
    name: String,
    live: RedisViewSink,
    live_config: RedisSinkConfig,
    /// The shadow, to name its keys (the replay writes it through a sink
    /// of its own).
    shadow: RedisViewSink,
    shadow_config: RedisSinkConfig,
    plan: Arc<ViewPlan>,
    source_names: Vec<String>,
    /// Once a swap has read the shadow: every key it holds (its hashes,
    /// their rankings, its checkpoint), so that dropping it needs no walk
    /// over the whole keyspace.
    shadow_keys: Option<Vec<String>>,
}

impl RedisSwap {
    /// Sink `name` of `plan` as `config` declares it; `window` names the
    /// shadow (one per window, so a resumed replay finds its own).
    pub fn new(
        name: &str,
        plan: Arc<ViewPlan>,
        config: &RedisSinkConfig,
        source_names: Vec<String>,
        window: &str,
    ) -> Result<RedisSwap, SinkError> {
        let mut shadow_config = config.clone();
        shadow_config.prefix = format!("{}projector:shadow:{name}:{window}:", config.prefix);
        Ok(RedisSwap {
            name: name.to_string(),
            live: RedisViewSink::new(name, Arc::clone(&plan), config, source_names.clone())?,
            live_config: config.clone(),
            shadow: RedisViewSink::new(name, Arc::clone(&plan), &shadow_config, source_names.clone())?,
            shadow_config,
            plan,
            source_names,
            shadow_keys: None,
        })
    }

    /// The config of the shadow: a sink like the live one, elsewhere.
    pub fn shadow_config(&self) -> &RedisSinkConfig {
        &self.shadow_config
    }

    /// The live sink's checkpoint (`None`: it holds nothing).
    pub fn live_position(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.position(&state_key(&self.live_config.prefix, &self.name))
    }

    /// Whether the live sink's rows were computed by another definition of
    /// the view than the one the replay builds.
    pub fn live_definition_differs(&mut self) -> Result<bool, SinkError> {
        self.live.holds_another_definition()
    }

    /// The shadow's checkpoint (`None`: nothing built yet).
    pub fn shadow_position(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        self.position(&state_key(&self.shadow_config.prefix, &self.name))
    }

    fn position(&mut self, key: &str) -> Result<Option<SourcePositions>, SinkError> {
        let text: Option<String> =
            self.live.with_connection("cannot read a checkpoint", |c| c.hget(key, "positions"))?;
        text.map(|text| positions_from_json(&text, &self.source_names).map_err(SinkError::Fatal)).transpose()
    }

    /// Holds the live sink's writes for up to `hold` (renew it by calling
    /// again). Once this returns, no live batch commits until
    /// [`RedisSwap::release`].
    pub fn pause(&mut self, token: &str, hold: std::time::Duration) -> Result<(), SinkError> {
        let key = pause_key(&self.live_config.prefix, &self.name);
        let millis = hold.as_millis() as u64;
        self.live.with_connection("cannot pause the live sink", |c| {
            redis::cmd("SET").arg(&key).arg(token).arg("PX").arg(millis).exec(c)
        })
    }

    /// Lets the live sink write again (if `token` still holds it).
    pub fn release(&mut self, token: &str) -> Result<(), SinkError> {
        let key = pause_key(&self.live_config.prefix, &self.name);
        self.live.with_connection("cannot release the live sink", |c| {
            redis::Script::new(DELETE_IF_HELD).key(&key).arg(token).invoke::<i64>(c).map(|_| ())
        })
    }

    /// Makes the live rows in `window` equal to the shadow's, which must be
    /// at `at`, the live checkpoint, while `token` holds the live sink.
    /// `kept`: the shadow as the replay kept it; without it, the shadow is
    /// read back.
    pub fn swap(
        &mut self,
        token: &str,
        at: &SourcePositions,
        window: &Selection,
        kept: Option<Kept>,
    ) -> Result<SwapCounts, SinkError> {
        let reader = |config: &RedisSinkConfig| {
            RedisViewReader::new(&self.name, &self.plan, config, self.source_names.clone()).map_err(SinkError::Fatal)
        };
        tracing::info!(
            sink = %self.name,
            shadow = if kept.is_some() { "as the replay kept it" } else { "read back" },
            rows_in_redis = kept.as_ref().map(|kept| kept.stored.len()),
            "comparing the live rows with the shadow's"
        );
        let shadow = match kept {
            Some(kept) => {
                let hashes = kept.stored.iter().map(|key| self.shadow.hash_key(key)).collect();
                self.shadow_keys = Some(self.shadow_keys_of(&kept.stored, hashes));
                kept
            }
            None => {
                let (shadow, hashes) = reader(&self.shadow_config)?
                    .all_rows_and_keys(3)
                    .map_err(|e| SinkError::Retryable(e.to_string()))?;
                let stored: Vec<Row> = shadow.rows.iter().map(|(key, _)| key.clone()).collect();
                self.shadow_keys = Some(self.shadow_keys_of(&stored, hashes));
                Kept {
                    rows: shadow.rows.into_iter().collect(),
                    positions: shadow.positions,
                    newest_event_at: shadow.newest_event_at,
                    stored,
                }
            }
        };
        if shadow.positions != *at {
            return Err(SinkError::Fatal(format!(
                "the shadow of Redis sink {:?} is at {:?}, not at the live checkpoint {:?}",
                self.name, shadow.positions.0, at.0
            )));
        }
        let shadow_rows: Vec<(&Row, &Row)> = shadow.rows.iter().filter(|(key, _)| window.matches(key)).collect();
        // Three things at once, on connections of their own: the live
        // hashes where the shadow's rows go are read and compared, a
        // `SCAN` looks for the view's other hashes, and the ranking
        // entries of the shadow's rows are gathered and their sets read.
        // (A row's entries are the same whether or not its hash differs.)
        let reader = reader(&self.live_config)?;
        let live = &mut self.live;
        let (differences, ranked) = std::thread::scope(|scope| {
            let ranked = scope.spawn(|| {
                let mut ranks = crate::RankingWrites::default();
                for (key, values) in &shadow_rows {
                    live.queue_rankings(&mut ranks, key, values);
                }
                let sets: Vec<&String> = ranks.sets().collect();
                let held = live.read_sets(&sets)?;
                let held: BTreeMap<String, Vec<(String, f64)>> = sets.into_iter().cloned().zip(held).collect();
                Ok::<_, SinkError>((ranks, held))
            });
            let differences = reader.differences(&shadow_rows, window);
            (differences, ranked.join().unwrap_or_else(|_| Err(SinkError::Fatal("a swap's thread panicked".into()))))
        });
        let LiveDifferences { differing, others } = differences.map_err(|e| SinkError::Retryable(e.to_string()))?;
        let (mut ranks, mut held) = ranked?;
        tracing::info!(
            sink = %self.name,
            differing = differing.len(),
            others = others.len(),
            "compared the live hashes with the shadow"
        );

        let state = state_key(&self.live_config.prefix, &self.name);
        let pause = pause_key(&self.live_config.prefix, &self.name);
        let (holder, positions, generation, newest): (Option<String>, Option<String>, Option<u64>, Option<String>) =
            self.live.with_connection("cannot read the live checkpoint", |c| {
                redis::cmd("WATCH").arg(&state).arg(&pause).exec(c)?;
                redis::pipe()
                    .cmd("GET")
                    .arg(&pause)
                    .cmd("HGET")
                    .arg(&state)
                    .arg("positions")
                    .cmd("HGET")
                    .arg(&state)
                    .arg("generation")
                    .cmd("HGET")
                    .arg(&state)
                    .arg("newest_event_at")
                    .query(c)
            })?;
        let live_newest = newest.as_deref().and_then(Timestamp::parse_rfc3339);
        let live_at = positions.map(|t| positions_from_json(&t, &self.source_names)).transpose();
        let unwatch =
            |swap: &mut RedisSwap| swap.live.with_connection("cannot unwatch", |c| redis::cmd("UNWATCH").exec(c));
        if holder.as_deref() != Some(token) {
            unwatch(self)?;
            return Err(match holder {
                Some(other) => SinkError::Fatal(format!(
                    "Redis sink {:?} is held by another replay ({other}), which swaps its own rebuilt view in; run \
                     one replay of a sink at a time",
                    self.name
                )),
                None => SinkError::Retryable(format!(
                    "the hold on Redis sink {:?} expired before the swap; try again",
                    self.name
                )),
            });
        }
        match live_at {
            Ok(Some(live_at)) if live_at != *at => {
                unwatch(self)?;
                return Err(SinkError::Fatal(format!(
                    "Redis sink {:?} moved to {:?} while held at {:?}",
                    self.name, live_at.0, at.0
                )));
            }
            Err(error) => {
                unwatch(self)?;
                return Err(SinkError::Fatal(error));
            }
            _ => {}
        }

        let mut counts = SwapCounts { rows: shadow_rows.len(), ..SwapCounts::default() };
        let mut pipe = redis::pipe();
        pipe.atomic();
        // A live hash of the window where the shadow has no row is gone
        // (with its ranking entries, unless its fields name a row the
        // shadow has: that row's entries stay; and unless a row of the
        // shadow has the same entry).
        let mut removals = crate::RankingWrites::default();
        for (hash, (key, _)) in others.iter().filter(|(_, (key, _))| window.matches(key)) {
            if shadow.rows.contains_key(key) {
                pipe.del(hash).ignore();
            } else {
                self.live.queue_removal(&mut pipe, &mut removals, key);
                if *hash != self.live.hash_key(key) {
                    pipe.del(hash).ignore();
                }
            }
            counts.deleted += 1;
        }
        ranks.after(removals);
        for index in &differing {
            let (key, values) = shadow_rows[*index];
            self.live.queue_row(&mut pipe, &mut ranks, key, values);
            counts.rewritten += 1;
        }
        // The ranking entries as they are, to write only those that are
        // wrong or missing; a whole-view swap also removes members no row
        // has. (In a window, a set may hold members of rows outside it.)
        let unread: Vec<&String> = ranks.sets().filter(|set| !held.contains_key(*set)).collect();
        let read = self.live.read_sets(&unread)?;
        let unread: Vec<String> = unread.into_iter().cloned().collect();
        held.extend(unread.into_iter().zip(read));
        counts.ranking_entries = ranks.against(held, *window == Selection::default());
        ranks.queue(&mut pipe);
        let mut checkpoint =
            vec![("positions", positions_to_json(at, &self.source_names)), ("written_at_ms", now_ms().to_string())];
        if *window == Selection::default() {
            // All rows are now the rebuilt view's, of the definition the
            // replay ran with (a window's rows alone do not make it so).
            checkpoint.push(("definition", self.live.definition.clone()));
        }
        if let Some(newest) = shadow.newest_event_at.max(live_newest) {
            checkpoint.push(("newest_event_at", newest.to_rfc3339()));
        }
        if generation.is_none() {
            // A sink nothing ran into yet: the next run takes generation 1
            // and resumes from here.
            checkpoint.push(("generation", "0".to_string()));
            checkpoint.push(("upper", "0".to_string()));
        }
        pipe.hset_multiple(&state, &checkpoint).ignore();
        let done: Option<()> = self.live.with_connection("cannot swap the rebuilt view in", |c| pipe.query(c))?;
        // Both copies of the view are freed beside the release of the
        // hold, not before it (tens of milliseconds for 272,881 rows).
        drop(shadow_rows);
        drop(pipe);
        std::thread::spawn(move || drop((shadow, others, differing)));
        match done {
            Some(()) => Ok(counts),
            None => Err(SinkError::Retryable(format!(
                "Redis sink {:?} changed during the swap (its hold expired?); try again",
                self.name
            ))),
        }
    }

    /// Every key of the shadow: `hashes` (those of the rows with keys
    /// `stored`), the ranking sets of those rows, the checkpoint. The
    /// shadow writes nothing else; a ranking set whose members are all gone
    /// is gone too.
    fn shadow_keys_of(&self, stored: &[Row], mut hashes: Vec<String>) -> Vec<String> {
        let sets: std::collections::BTreeSet<String> =
            stored.iter().flat_map(|key| self.shadow.ranking_sets(key)).collect();
        hashes.extend(sets);
        let prefix = &self.shadow_config.prefix;
        hashes.push(state_key(prefix, &self.name));
        hashes.push(pause_key(prefix, &self.name));
        hashes
    }

    /// Deletes the shadow: its rows, rankings and checkpoint. After a swap
    /// they are the keys it is known to hold; otherwise they are found with
    /// `SCAN`.
    pub fn drop_shadow(&mut self) -> Result<(), SinkError> {
        let mut keys = match self.shadow_keys.take() {
            Some(keys) => keys,
            None => {
                let pattern = format!("{}*", glob_escape(&self.shadow_config.prefix));
                self.live.with_connection("cannot list the shadow's keys", |c| {
                    let options = redis::ScanOptions::default().with_pattern(&pattern).with_count(SCAN_COUNT);
                    c.scan_options(options)?.collect::<Result<Vec<String>, RedisError>>()
                })?
            }
        };
        // The checkpoint goes first: a drop cut short leaves no shadow a
        // later replay would resume, only keys its fresh start clears (the
        // checkpoint's key itself goes last, see `RedisViewSink::untouched`).
        let state = state_key(&self.shadow_config.prefix, &self.name);
        keys.retain(|key| *key != state);
        keys.push(state.clone());
        self.live.with_connection("cannot delete the shadow's checkpoint", |c| {
            c.hdel::<_, _, ()>(&state, &["positions", "written_at_ms", "newest_event_at"])
        })?;
        for chunk in keys.chunks(1000) {
            // UNLINK: the server frees the memory in the background.
            self.live.with_connection("cannot delete the shadow", |c| c.unlink::<_, ()>(chunk))?;
        }
        Ok(())
    }
}

/// A replay's claim on a live sink, so that two replays never rebuild one
/// sink at once: a key holding the replay's token that lapses after the
/// lease unless renewed (a replay that died lets go by itself).
pub struct ReplayClaim {
    sink: RedisViewSink,
    key: String,
    token: String,
    lease: std::time::Duration,
}

/// Sets the claim when nobody holds it, this replay does (a renewal), or
/// the replay named by `ARGV[3]` (known to be gone) does; answers `{1}`,
/// or `{0, holder}`.
const CLAIM_SCRIPT: &str = "local held = redis.call('GET', KEYS[1]) \
     if held == false or held == ARGV[1] or held == ARGV[3] then \
       redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {1} \
     end \
     return {0, held}";

impl ReplayClaim {
    /// Claims sink `name` (as `config` declares it) for the replay with
    /// `token`, for `lease`; refused, naming the holder, when another
    /// replay has it, unless `gone` says that replay is known to be gone
    /// (its process ended): then this one takes the claim over.
    pub fn take(
        name: &str,
        plan: Arc<ViewPlan>,
        config: &RedisSinkConfig,
        source_names: Vec<String>,
        (token, lease): (&str, std::time::Duration),
        gone: &dyn Fn(&str) -> bool,
    ) -> Result<ReplayClaim, SinkError> {
        let mut claim = ReplayClaim {
            sink: RedisViewSink::new(name, plan, config, source_names)?,
            key: replay_key(&config.prefix, name),
            token: token.to_string(),
            lease,
        };
        if let Some(holder) = claim.set(None)?
            && (!gone(&holder) || claim.set(Some(&holder))?.is_some())
        {
            return Err(SinkError::Fatal(format!(
                "another replay ({holder}) is rebuilding Redis sink {name:?}; run one replay of a sink at a time \
                 (the claim of a replay that died lapses within {} s)",
                lease.as_secs()
            )));
        }
        Ok(claim)
    }

    /// Extends the claim by its lease from now.
    pub fn renew(&mut self) -> Result<(), SinkError> {
        match self.set(None)? {
            None => Ok(()),
            Some(holder) => {
                Err(SinkError::Fatal(format!("the claim on Redis sink {:?} lapsed; {holder} holds it", self.sink.name)))
            }
        }
    }

    /// Sets the claim (over `replacing`'s, if that holds it): `Some` with
    /// the holder when another replay holds it.
    fn set(&mut self, replacing: Option<&str>) -> Result<Option<String>, SinkError> {
        let millis = self.lease.as_millis() as u64;
        let (key, token) = (&self.key, &self.token);
        let answer: Vec<String> = self.sink.with_connection("cannot claim the sink for the replay", |c| {
            redis::Script::new(CLAIM_SCRIPT).key(key).arg(token).arg(millis).arg(replacing.unwrap_or("")).invoke(c)
        })?;
        Ok(answer.get(1).cloned())
    }

    /// Lets go of the claim (if this replay still holds it).
    pub fn release(&mut self) -> Result<(), SinkError> {
        let (key, token) = (&self.key, &self.token);
        self.sink.with_connection("cannot release the sink's claim", |c| {
            redis::Script::new(DELETE_IF_HELD).key(key).arg(token).invoke::<i64>(c).map(|_| ())
        })
    }
}
