//! The `redis` sink: a view as one hash per row, and sorted sets for
//! rankings, exactly once.
//!
//! Keys (all under the sink's `prefix`):
//! - `<key template>`: a hash per row with every field of the row (key
//!   fields, measures, labels) as plain text; a null field is absent.
//! - `<ranking key template>`: a sorted set per ranking, member from the
//!   member template, score from the ranking's numeric field.
//! - `projector:replaying:<sink name>`: while a replay rebuilds the sink,
//!   its token (it lapses unless renewed, see [`ReplayClaim`]).
//! - `projector:sink:<sink name>`: the sink's state, a hash with
//!   `generation` (the run that owns the sink), `upper` (the last batch it
//!   took in that run), `positions` (the source offsets its content
//!   reflects, JSON), `written_at_ms` and `newest_event_at` (the latest
//!   `occurred_at` among the events its content reflects).
//!
//! Each batch is one `MULTI`/`EXEC` under `WATCH` of the state key: the
//! rows, the rankings and the new checkpoint land together or not at all.
//! Before queuing it, the sink reads the state: another generation there
//! means a newer run took over, and this run stops without writing (fencing);
//! a batch not newer than the stored one changes nothing; a state key that
//! vanished means Redis lost its data (restarted without persistence): the
//! sink says so ([`SinkError::Lost`]) and the run starts over, so that this
//! sink, holding nothing, is written the whole view while the others resume. A run takes its generation when it
//! opens the sink, which also moves the state key and so aborts any
//! transaction an older run had under way.

mod reader;
mod swap;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Commands, Connection, RedisError};
use tracing::{info, warn};

use projector_core::config::RedisSinkConfig;
use projector_core::sink::{
    SinkError, SinkStatus, SourcePositions, ViewBatch, ViewChange, ViewSink, positions_from_json, positions_to_json,
};
use projector_core::template::{KeyTemplate, write_plain};
use projector_core::value::{Row, Value};
use projector_core::view::ViewPlan;

pub use reader::RedisViewReader;
pub use swap::{Kept, RedisSwap, ReplayClaim, SwapCounts};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How often a paused sink looks whether the replay released it.
const PAUSE_POLL: Duration = Duration::from_millis(10);
/// Keys a `SCAN` call examines: a sink's keys are found by pattern over
/// the whole keyspace, and big steps cost fewer round trips.
const SCAN_COUNT: usize = 10_000;

/// Takes the next generation, starts the run's batch count over, and
/// answers the stored positions (nil when the sink holds nothing) and
/// whether the view's definition (`ARGV[1]`) differs from the one stored.
/// If it does, the positions go in the same step: the rows were computed
/// by another definition, and from now on the sink claims nothing, so
/// this run (or any later one, should this one die first) rebuilds it.
const OPEN_SCRIPT: &str = r"
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'upper', 0)
local stored = redis.call('HGET', KEYS[1], 'definition')
local changed = 0
if stored and stored ~= ARGV[1] then
  redis.call('HDEL', KEYS[1], 'positions')
  changed = 1
end
redis.call('HSET', KEYS[1], 'definition', ARGV[1])
return {generation, changed, redis.call('HGET', KEYS[1], 'positions')}
";

/// Where a ranking's score comes from.
#[derive(Clone, Copy, Debug)]
enum Score {
    Key(usize),
    Value(usize),
}

#[derive(Clone, Debug)]
struct Ranking {
    key: KeyTemplate,
    member: KeyTemplate,
    score: Score,
}

/// Ranking sets by key, each with its members' scores.
pub type HeldRankings = std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>;

/// A view materialized in Redis.
pub struct RedisViewSink {
    name: String,
    client: redis::Client,
    connection: Option<Connection>,
    prefix: String,
    key: KeyTemplate,
    rankings: Vec<Ranking>,
    /// Output field names: keys, then measures and labels.
    key_fields: Vec<String>,
    value_fields: Vec<String>,
    state_key: String,
    pause_key: String,
    source_names: Vec<String>,
    generation: Option<u64>,
    /// [`ViewPlan::definition`] of the view it writes.
    definition: String,
    /// See [`RedisViewSink::keeping_rows_until_rebuilt`].
    keep_until_rebuilt: bool,
    /// Whether the next write replaces everything the sink holds: it was
    /// reset, and kept its rows until then.
    replace_held: bool,
}

fn retryable(what: &str, error: RedisError) -> SinkError {
    SinkError::Retryable(format!("Redis: {what}: {error}"))
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The key of a sink's state hash.
pub fn state_key(prefix: &str, sink_name: &str) -> String {
    format!("{prefix}projector:sink:{sink_name}")
}

/// The key a replay sets while it swaps a rebuilt view into a sink: the
/// sink's writes wait while it exists (it expires if the replay dies).
pub fn pause_key(prefix: &str, sink_name: &str) -> String {
    format!("{prefix}projector:pause:{sink_name}")
}

/// The key by which a replay claims a sink while it rebuilds it (see
/// [`ReplayClaim`]).
pub fn replay_key(prefix: &str, sink_name: &str) -> String {
    format!("{prefix}projector:replaying:{sink_name}")
}

impl RedisViewSink {
    /// A sink named `name` (its key under `sinks:`) writing `plan`'s rows as
    /// `config` says; `source_names` name the positions it stores. The
    /// templates were checked with the config; an error here means they
    /// were not.
    pub fn new(
        name: &str,
        plan: Arc<ViewPlan>,
        config: &RedisSinkConfig,
        source_names: Vec<String>,
    ) -> Result<RedisViewSink, SinkError> {
        let key_fields: Vec<String> = plan.keys.iter().map(|k| k.name.clone()).collect();
        let outputs = plan.output_fields();
        let value_fields: Vec<String> = outputs[key_fields.len()..].iter().map(|(n, _)| n.clone()).collect();
        let template = |text: &str| KeyTemplate::parse(text, &key_fields).map_err(SinkError::Fatal);
        let mut rankings = Vec::new();
        for ranking in &config.rankings {
            let field = &ranking.score.value;
            let score = match key_fields.iter().position(|f| f == field) {
                Some(index) => Score::Key(index),
                None => match value_fields.iter().position(|f| f == field) {
                    Some(index) => Score::Value(index),
                    None => return Err(SinkError::Fatal(format!("ranking score {field:?} is not a field"))),
                },
            };
            rankings.push(Ranking {
                key: template(&ranking.key.value)?,
                member: template(&ranking.member.value)?,
                score,
            });
        }
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| SinkError::Fatal(format!("Redis url {:?}: {e}", config.url)))?;
        Ok(RedisViewSink {
            name: name.to_string(),
            client,
            connection: None,
            prefix: config.prefix.clone(),
            key: template(&config.key.value)?,
            rankings,
            key_fields,
            value_fields,
            state_key: state_key(&config.prefix, name),
            pause_key: pause_key(&config.prefix, name),
            source_names,
            generation: None,
            definition: plan.definition(),
            keep_until_rebuilt: false,
            replace_held: false,
        })
    }

    /// A sink that readers read (a running pipeline's): when the runner
    /// resets it (its view's definition changed, or its position is out of
    /// line with the others'), it keeps its rows and checkpoint until its
    /// next write, which deletes them in the same transaction as it writes
    /// the rebuilt view; readers see the old view and then the new one, no
    /// empty sink between. Without this (a replay's shadow), a reset
    /// deletes at once.
    pub fn keeping_rows_until_rebuilt(mut self) -> RedisViewSink {
        self.keep_until_rebuilt = true;
        self
    }

    fn connection(&mut self) -> Result<&mut Connection, SinkError> {
        if self.connection.is_none() {
            let connection =
                self.client.get_connection_with_timeout(TIMEOUT).map_err(|e| retryable("cannot connect", e))?;
            connection.set_read_timeout(Some(TIMEOUT)).map_err(|e| retryable("cannot set a timeout", e))?;
            connection.set_write_timeout(Some(TIMEOUT)).map_err(|e| retryable("cannot set a timeout", e))?;
            self.connection = Some(connection);
        }
        self.connection.as_mut().ok_or_else(|| SinkError::Retryable("Redis: not connected".into()))
    }

    /// Runs `work` on the connection; an I/O failure drops the connection
    /// (the next attempt reconnects) and is worth a retry.
    fn with_connection<T>(
        &mut self,
        what: &str,
        work: impl FnOnce(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, SinkError> {
        let result = work(self.connection()?);
        result.map_err(|error| {
            // Down, restarting, still loading its AOF (LOADING), out of
            // memory for now: worth a retry on a fresh connection. A wrong
            // command or a type clash is not.
            let transient = !matches!(error.retry_method(), redis::RetryMethod::NoRetry)
                || error.is_timeout()
                || error.to_string().contains("OOM");
            if transient {
                self.connection = None;
                retryable(what, error)
            } else {
                SinkError::Fatal(format!("Redis: {what}: {error}"))
            }
        })
    }

    /// Takes a new generation; answers the stored positions, if any.
    fn open(&mut self) -> Result<Option<String>, SinkError> {
        let (state_key, definition) = (self.state_key.clone(), self.definition.clone());
        let (generation, changed, positions): (u64, u8, Option<String>) = self
            .with_connection("cannot open the sink", |c| {
                redis::Script::new(OPEN_SCRIPT).key(&state_key).arg(&definition).invoke(c)
            })?;
        if changed == 1 {
            warn!(
                sink = %self.name,
                "the view's definition changed since the sink was written; it is rebuilt from the log"
            );
        }
        info!(sink = %self.name, generation, "took a new generation of the Redis sink");
        self.generation = Some(generation);
        Ok(positions)
    }

    /// Whether the sink's rows were computed by another definition of its
    /// view than this one (the view changed in the config since a run last
    /// opened the sink, and no run has rebuilt it yet).
    pub fn holds_another_definition(&mut self) -> Result<bool, SinkError> {
        let state_key = self.state_key.clone();
        let stored: Option<String> =
            self.with_connection("cannot read the view's definition", |c| c.hget(&state_key, "definition"))?;
        Ok(stored.is_some_and(|stored| stored != self.definition))
    }

    /// Whether Redis holds nothing of this sink: its checkpoint's key is not
    /// there. The sink creates that key (when it opens) before it writes
    /// anything, and a shadow's drop deletes it last, so a sink without it
    /// needs no clearing (which is a `SCAN` of the whole keyspace).
    pub fn untouched(&mut self) -> Result<bool, SinkError> {
        let state_key = self.state_key.clone();
        self.with_connection("cannot read the checkpoint", |c| c.exists::<_, bool>(&state_key)).map(|exists| !exists)
    }

    /// The keys of this sink's rows and rankings: a `SCAN` of the whole
    /// keyspace per key pattern.
    fn held_keys(&mut self) -> Result<Vec<String>, SinkError> {
        let mut patterns = vec![format!("{}{}", glob_escape(&self.prefix), self.key.glob())];
        for ranking in &self.rankings {
            patterns.push(format!("{}{}", glob_escape(&self.prefix), ranking.key.glob()));
        }
        let mut held = Vec::new();
        for pattern in patterns {
            held.extend(self.with_connection("cannot list keys", |c| {
                let options = redis::ScanOptions::default().with_pattern(&pattern).with_count(SCAN_COUNT);
                c.scan_options(options)?.collect::<Result<Vec<String>, RedisError>>()
            })?);
        }
        held.retain(|key| *key != self.state_key);
        held.sort_unstable();
        held.dedup();
        Ok(held)
    }

    /// Deletes every key of this sink's rows and rankings, and its
    /// checkpoint (not its generation).
    fn clear(&mut self) -> Result<(), SinkError> {
        let state_key = self.state_key.clone();
        let keys = self.held_keys()?;
        for chunk in keys.chunks(1000) {
            self.with_connection("cannot delete keys", |c| c.unlink::<_, ()>(chunk))?;
        }
        let deleted = keys.len();
        self.with_connection("cannot clear the checkpoint", |c| {
            c.hdel::<_, _, ()>(&state_key, &["positions", "written_at_ms", "newest_event_at"])
        })?;
        if deleted > 0 {
            info!(sink = %self.name, keys = deleted, "cleared the Redis sink");
        }
        Ok(())
    }

    /// Deletes everything the sink holds: its rows, rankings and
    /// checkpoint, and takes a new generation, so a pipeline still writing
    /// it is fenced and a sink of the same name later starts from nothing.
    /// For a sink taken out of the config (`projector drop`).
    pub fn drop_all(&mut self) -> Result<(), SinkError> {
        self.clear()?;
        let (state_key, pause_key) = (self.state_key.clone(), self.pause_key.clone());
        self.with_connection("cannot fence the sink", |c| {
            redis::pipe()
                .atomic()
                .hincr(&state_key, "generation", 1)
                .ignore()
                .hdel(&state_key, "upper")
                .ignore()
                .del(&pause_key)
                .ignore()
                .exec(c)
        })
    }

    /// Queues a row's hash and ranking entries.
    fn queue_row(&self, pipe: &mut redis::Pipeline, ranks: &mut RankingWrites, key: &Row, values: &Row) {
        let hash_key = self.hash_key(key);
        let mut fields: Vec<(&str, String)> = Vec::with_capacity(key.len() + values.len());
        for (name, value) in self.key_fields.iter().zip(key.iter()).chain(self.value_fields.iter().zip(values.iter())) {
            if *value != Value::Null {
                let mut text = String::new();
                write_plain(value, &mut text);
                fields.push((name, text));
            }
        }
        // HSET replaces every field the row has; a field that is null now
        // must go too, and only DEL does that.
        if fields.len() < key.len() + values.len() {
            pipe.del(&hash_key).ignore();
        }
        if !fields.is_empty() {
            pipe.hset_multiple(&hash_key, &fields).ignore();
        }
        self.queue_rankings(ranks, key, values);
    }

    /// Queues a row's ranking entries.
    fn queue_rankings(&self, ranks: &mut RankingWrites, key: &Row, values: &Row) {
        for ranking in &self.rankings {
            let member = ranking.member.render(key);
            ranks.set_named(|set| self.ranking_set_into(ranking, key, set), member, self.score(ranking, key, values));
        }
    }

    /// A row's score in `ranking` (`None`: the row has no score, so no
    /// entry).
    fn score(&self, ranking: &Ranking, key: &Row, values: &Row) -> Option<f64> {
        let score = match ranking.score {
            Score::Key(index) => key.get(index),
            Score::Value(index) => values.get(index),
        };
        score.and_then(Value::as_i128).map(|score| score as f64)
    }

    /// Queues the removal of a row that is gone.
    fn queue_removal(&self, pipe: &mut redis::Pipeline, ranks: &mut RankingWrites, key: &Row) {
        let hash_key = self.hash_key(key);
        pipe.del(hash_key).ignore();
        for ranking in &self.rankings {
            let (set, member) = self.ranking_entry(ranking, key);
            ranks.set(set, member, None);
        }
    }

    /// The ranking entries of a row as this sink writes them: set, member
    /// and score (`None`: the row has no score, so no entry).
    pub fn ranking_entries(&self, key: &Row, values: &Row) -> Vec<(String, String, Option<f64>)> {
        self.rankings
            .iter()
            .map(|ranking| {
                let (set, member) = self.ranking_entry(ranking, key);
                (set, member, self.score(ranking, key, values))
            })
            .collect()
    }

    /// Whether the sink declares rankings.
    pub fn has_rankings(&self) -> bool {
        !self.rankings.is_empty()
    }

    /// Every ranking set the sink holds, with its members' scores: a
    /// `SCAN` (of sorted sets) per ranking's key pattern, then
    /// `ZRANGE … WITHSCORES` of each set.
    pub fn held_rankings(&mut self) -> Result<HeldRankings, SinkError> {
        let patterns: Vec<String> =
            self.rankings.iter().map(|r| format!("{}{}", glob_escape(&self.prefix), r.key.glob())).collect();
        let mut sets = Vec::new();
        for pattern in patterns {
            sets.extend(self.with_connection("cannot list the ranking sets", |c| {
                let options =
                    redis::ScanOptions::default().with_pattern(&pattern).with_type("zset").with_count(SCAN_COUNT);
                c.scan_options(options)?.collect::<Result<Vec<String>, RedisError>>()
            })?);
        }
        sets.sort();
        sets.dedup();
        let members = self.read_sets(&sets)?;
        Ok(sets.into_iter().zip(members).map(|(set, members)| (set, members.into_iter().collect())).collect())
    }

    /// The members and scores of each of `sets`, in order (`ZRANGE …
    /// WITHSCORES`, pipelined; a set that does not exist has none).
    pub(crate) fn read_sets(&mut self, sets: &[impl AsRef<str>]) -> Result<Vec<Vec<(String, f64)>>, SinkError> {
        let mut held = Vec::with_capacity(sets.len());
        for chunk in sets.chunks(1000) {
            let mut read = redis::pipe();
            for set in chunk {
                read.cmd("ZRANGE").arg(set.as_ref()).arg(0).arg(-1).arg("WITHSCORES");
            }
            held.extend(
                self.with_connection("cannot read ranking sets", |c| read.query::<Vec<Vec<(String, f64)>>>(c))?,
            );
        }
        Ok(held)
    }

    /// The ranking sets a row with `key` has an entry in.
    pub(crate) fn ranking_sets<'a>(&'a self, key: &'a Row) -> impl Iterator<Item = String> + 'a {
        self.rankings.iter().map(move |ranking| self.ranking_entry(ranking, key).0)
    }

    /// The Redis key of a row's hash.
    pub(crate) fn hash_key(&self, key: &Row) -> String {
        let mut hash_key = self.prefix.clone();
        self.key.render_into(key, &mut hash_key);
        hash_key
    }

    fn ranking_entry(&self, ranking: &Ranking, key: &Row) -> (String, String) {
        let mut set = String::new();
        self.ranking_set_into(ranking, key, &mut set);
        (set, ranking.member.render(key))
    }

    /// Appends the name of the set of `ranking` that the row with `key`
    /// has its entry in.
    fn ranking_set_into(&self, ranking: &Ranking, key: &Row, out: &mut String) {
        out.push_str(&self.prefix);
        ranking.key.render_into(key, out);
    }

    /// Queues an updated row: only the fields whose value changed, and the
    /// ranking entries whose score changed. The hash holds the old values
    /// (the sink's checkpoint says so), so the rest is already right.
    fn queue_update(&self, pipe: &mut redis::Pipeline, ranks: &mut RankingWrites, key: &Row, old: &Row, new: &Row) {
        let hash_key = self.hash_key(key);
        let mut set: Vec<(&str, String)> = Vec::new();
        let mut unset: Vec<&str> = Vec::new();
        for ((name, before), after) in self.value_fields.iter().zip(old.iter()).zip(new.iter()) {
            if before == after {
                continue;
            }
            if *after == Value::Null {
                unset.push(name);
            } else {
                let mut text = String::new();
                write_plain(after, &mut text);
                set.push((name, text));
            }
        }
        if !unset.is_empty() {
            pipe.hdel(&hash_key, unset).ignore();
        }
        if !set.is_empty() {
            pipe.hset_multiple(&hash_key, &set).ignore();
        }
        for ranking in &self.rankings {
            let Score::Value(index) = ranking.score else { continue };
            let (before, after) = (old.get(index).and_then(Value::as_i128), new.get(index).and_then(Value::as_i128));
            if before == after {
                continue;
            }
            let (set, member) = self.ranking_entry(ranking, key);
            ranks.set(set, member, after.map(|score| score as f64));
        }
    }

    /// Queues a batch's changes, which come sorted by key: a key with only
    /// an addition is written whole, one with a removal and an addition
    /// (an update) has its changed fields written, one with only a
    /// removal is deleted.
    fn queue_changes(&self, pipe: &mut redis::Pipeline, changes: &[ViewChange]) {
        let mut ranks = RankingWrites::default();
        for group in changes.chunk_by(|a, b| a.key == b.key) {
            let key = &group[0].key;
            let old = group.iter().find(|c| c.diff < 0).map(|c| &c.values);
            match (old, group.iter().find(|c| c.diff > 0).map(|c| &c.values)) {
                (_, None) => self.queue_removal(pipe, &mut ranks, key),
                (None, Some(new)) => self.queue_row(pipe, &mut ranks, key, new),
                (Some(old), Some(new)) if old.len() == new.len() => self.queue_update(pipe, &mut ranks, key, old, new),
                (Some(_), Some(new)) => self.queue_row(pipe, &mut ranks, key, new),
            }
        }
        ranks.queue(pipe);
    }

    /// Commits one batch with the checkpoint, under the state key's watch.
    fn commit(&mut self, batch: &ViewBatch<'_>) -> Result<Commit, SinkError> {
        let generation = self.generation.ok_or_else(|| SinkError::Fatal("the sink was not opened".into()))?;
        let state_key = self.state_key.clone();
        let pause_key = self.pause_key.clone();
        let ((stored, upper), paused): ((Option<u64>, Option<u64>), bool) =
            self.with_connection("cannot read the checkpoint", |c| {
                redis::cmd("WATCH").arg(&state_key).arg(&pause_key).exec(c)?;
                redis::pipe()
                    .cmd("HMGET")
                    .arg(&state_key)
                    .arg("generation")
                    .arg("upper")
                    .cmd("EXISTS")
                    .arg(&pause_key)
                    .query(c)
            })?;
        if paused && stored == Some(generation) {
            self.with_connection("cannot unwatch", |c| redis::cmd("UNWATCH").exec(c))?;
            return Ok(Commit::Paused);
        }
        match stored {
            None => {
                self.with_connection("cannot unwatch", |c| redis::cmd("UNWATCH").exec(c))?;
                return Ok(Commit::Lost);
            }
            Some(stored) if stored != generation => {
                self.with_connection("cannot unwatch", |c| redis::cmd("UNWATCH").exec(c))?;
                return Err(SinkError::Fatal(format!(
                    "fenced: generation {stored} of this Redis sink belongs to a newer run; this run \
                     (generation {generation}) writes nothing more and stops"
                )));
            }
            Some(_) if upper.unwrap_or(0) >= batch.upper => {
                self.with_connection("cannot unwatch", |c| redis::cmd("UNWATCH").exec(c))?;
                return Ok(Commit::Done);
            }
            Some(_) => {}
        }
        // Listed under the watch: a replay's swap in between moves the
        // checkpoint, and this transaction is then tried again.
        let replaced = if self.replace_held { Some(self.held_keys()?) } else { None };
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(replaced) = &replaced {
            // The rebuilt view replaces the old one in this transaction.
            for chunk in replaced.chunks(1000) {
                pipe.unlink(chunk).ignore();
            }
            pipe.hdel(&state_key, "newest_event_at").ignore();
        }
        self.queue_changes(&mut pipe, batch.changes);
        let positions = positions_to_json(batch.positions, &self.source_names);
        let mut checkpoint =
            vec![("upper", batch.upper.to_string()), ("positions", positions), ("written_at_ms", now_ms().to_string())];
        if let Some(newest) = batch.newest_event_at {
            checkpoint.push(("newest_event_at", newest.to_rfc3339()));
        }
        pipe.hset_multiple(&state_key, &checkpoint).ignore();
        let done: Option<()> = self.with_connection("cannot write a batch", |c| pipe.query(c))?;
        if done.is_none() {
            return Ok(Commit::Raced);
        }
        if let Some(replaced) = replaced {
            self.replace_held = false;
            info!(sink = %self.name, keys = replaced.len(), "the rebuilt view replaced what the sink held");
        }
        Ok(Commit::Done)
    }
}

/// The ranking entries a batch sets or removes, gathered per sorted set
/// so that each set costs one `ZADD` and one `ZREM` however many of its
/// members change (Redis pays per command as much as per member). The last
/// write of a member wins, as if the commands ran one by one. Hash maps,
/// not B-trees: a swap gathers the entries of every row (272,881 for
/// `product_sales`), and the set names share long prefixes.
#[derive(Default)]
struct RankingWrites {
    sets: std::collections::HashMap<String, std::collections::HashMap<String, Option<f64>>>,
    /// The name [`RankingWrites::set_named`] renders, kept for its
    /// allocation.
    name: String,
}

impl RankingWrites {
    /// `member` of `set` gets `score` (`None`: leaves the set).
    fn set(&mut self, set: String, member: String, score: Option<f64>) {
        self.sets.entry(set).or_default().insert(member, score);
    }

    /// Like [`RankingWrites::set`], for the set whose name `name` writes:
    /// the name is copied only for a set not written yet (a swap gathers
    /// the entries of every row, hundreds per set).
    fn set_named(&mut self, name: impl FnOnce(&mut String), member: String, score: Option<f64>) {
        self.name.clear();
        name(&mut self.name);
        if let Some(members) = self.sets.get_mut(self.name.as_str()) {
            members.insert(member, score);
        } else {
            self.sets.insert(self.name.clone(), [(member, score)].into());
        }
    }

    /// The sets the writes touch, in no particular order.
    fn sets(&self) -> impl Iterator<Item = &String> {
        self.sets.keys()
    }

    /// Takes `earlier`'s writes as if they had come before these: where
    /// both write a member, these win.
    fn after(&mut self, earlier: RankingWrites) {
        for (set, members) in earlier.sets {
            let written = self.sets.entry(set).or_default();
            for (member, score) in members {
                written.entry(member).or_insert(score);
            }
        }
    }

    /// Keeps only the writes that change `held` (the members and scores of
    /// each set as they are; a set it lacks counts as empty); with
    /// `strays`, also removes the members of those sets that no write
    /// names. Answers how many writes are left.
    fn against(&mut self, mut held: std::collections::BTreeMap<String, Vec<(String, f64)>>, strays: bool) -> usize {
        let mut left = 0;
        for (set, members) in &mut self.sets {
            let held: std::collections::HashMap<String, f64> =
                held.remove(set).unwrap_or_default().into_iter().collect();
            let stray: Vec<String> =
                if strays { held.keys().filter(|m| !members.contains_key(*m)).cloned().collect() } else { Vec::new() };
            members.retain(|member, score| match score {
                Some(score) => held.get(member) != Some(score),
                None => held.contains_key(member),
            });
            members.extend(stray.into_iter().map(|member| (member, None)));
            left += members.len();
        }
        self.sets.retain(|_, members| !members.is_empty());
        left
    }

    /// Queues the gathered writes.
    fn queue(self, pipe: &mut redis::Pipeline) {
        for (set, members) in self.sets {
            let gone: Vec<&String> = members.iter().filter(|(_, s)| s.is_none()).map(|(m, _)| m).collect();
            let scored: Vec<(f64, &String)> = members.iter().filter_map(|(m, s)| s.map(|s| (s, m))).collect();
            if !gone.is_empty() {
                pipe.zrem(&set, gone).ignore();
            }
            if !scored.is_empty() {
                pipe.zadd_multiple(&set, &scored).ignore();
            }
        }
    }
}

enum Commit {
    Done,
    /// A replay holds the sink while it swaps a rebuilt view in.
    Paused,
    /// The state key changed under the watch.
    Raced,
    /// The state key is gone: Redis lost the sink's data.
    Lost,
}

fn glob_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl ViewSink for RedisViewSink {
    fn resume(&mut self) -> Result<Option<SourcePositions>, SinkError> {
        match self.open()? {
            Some(text) => Ok(Some(positions_from_json(&text, &self.source_names).map_err(SinkError::Fatal)?)),
            None => Ok(None),
        }
    }

    fn reset(&mut self) -> Result<(), SinkError> {
        if !self.keep_until_rebuilt {
            return self.clear();
        }
        // The rows and the checkpoint stay as they are, and agree, until
        // the next write replaces both.
        info!(sink = %self.name, "the sink keeps its rows until the rebuilt view replaces them");
        self.replace_held = true;
        Ok(())
    }

    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let mut paused_since: Option<std::time::Instant> = None;
        loop {
            match self.commit(&batch)? {
                Commit::Done => {
                    if let Some(since) = paused_since {
                        info!(sink = %self.name, waited_ms = since.elapsed().as_millis() as u64, "a replay released the sink");
                    }
                    return Ok(());
                }
                Commit::Raced => continue,
                Commit::Paused => {
                    if paused_since.is_none() {
                        info!(sink = %self.name, "a replay holds the sink while it swaps a rebuilt view in; waiting");
                        paused_since = Some(std::time::Instant::now());
                    }
                    std::thread::sleep(PAUSE_POLL);
                }
                Commit::Lost => {
                    warn!(sink = %self.name, "the Redis sink's checkpoint is gone (Redis lost its data?); the run starts over to rewrite it");
                    // The next run finds no checkpoint, clears what is
                    // left and writes the whole view.
                    return Err(SinkError::Lost(format!(
                        "Redis lost the data of sink {:?} (its checkpoint is gone)",
                        self.name
                    )));
                }
            }
        }
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Reads a Redis sink's state for `projector status`.
pub fn status(config: &RedisSinkConfig, sink_name: &str) -> Result<SinkStatus, String> {
    let client = redis::Client::open(config.url.as_str()).map_err(|e| format!("Redis url {:?}: {e}", config.url))?;
    let mut connection = client.get_connection_with_timeout(TIMEOUT).map_err(|e| format!("Redis: {e}"))?;
    let (generation, positions, written): (Option<u64>, Option<String>, Option<i64>) = redis::cmd("HMGET")
        .arg(state_key(&config.prefix, sink_name))
        .arg("generation")
        .arg("positions")
        .arg("written_at_ms")
        .query(&mut connection)
        .map_err(|e| format!("Redis: {e}"))?;
    Ok(SinkStatus {
        generation,
        positions: positions.as_deref().and_then(SinkStatus::parse_positions),
        written_at_ms: written,
        rebuilding: false,
    })
}
