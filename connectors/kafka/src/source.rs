//! Reading a topic, one worker's share of its partitions at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{info, warn};

use projector_core::config::{KafkaSourceConfig, StartPosition};
use projector_core::record::{LogPosition, RecordRef};
use projector_core::sink::SourcePositions;
use projector_core::source::{LogBounds, Poll, Source, SourceError, SourceReader};

use crate::client::client_config;

/// How long metadata and watermark requests may take before the source
/// gives up (the broker or topic is missing).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A Kafka topic as a source.
pub struct KafkaSource {
    source_index: u16,
    config: KafkaSourceConfig,
    started: Instant,
    /// The batch its readers put records in.
    batches: Arc<Mutex<Batches>>,
    /// Where a run from a state snapshot starts (see [`Source::start_at`]).
    skip_to: std::sync::Mutex<Option<SourcePositions>>,
}

impl KafkaSource {
    /// The topic of `config`, as source number `source_index`. Batches are
    /// counted from `started`, which all workers share.
    pub fn new(source_index: u16, config: KafkaSourceConfig, started: Instant) -> KafkaSource {
        KafkaSource {
            source_index,
            config,
            started,
            batches: Arc::new(Mutex::new(Batches::new())),
            skip_to: std::sync::Mutex::new(None),
        }
    }
}

/// The batch the readers of one source put the records they read in, a
/// new one every `batch_ms` except while some reader is behind the topic:
/// then one batch collects for up to `catch_up_batch_ms`.
///
/// The readers share it. A record's batch is its time in the dataflow,
/// and a batch's views are computed and written once all readers are past
/// it: readers on two workers that each held a batch of their own while
/// catching up (one a batch later than the other, as they started a
/// moment apart) had every view computed and written twice, once over one
/// worker's records and again over all (a replay of `product_sales` wrote
/// 210,304 rows, then 357,535 changes, for 272,881 rows).
#[derive(Debug)]
struct Batches {
    /// The current batch, and when it began.
    epoch: u64,
    began: Instant,
    /// The readers (by worker) that are behind the topic.
    behind: BTreeSet<usize>,
}

impl Batches {
    fn new() -> Batches {
        Batches { epoch: 0, began: Instant::now(), behind: BTreeSet::new() }
    }

    /// Notes whether the reader of `worker` is behind the topic.
    fn note(&mut self, worker: usize, behind: bool) {
        if behind {
            self.behind.insert(worker);
        } else {
            self.behind.remove(&worker);
        }
    }

    /// The batch for records read now, `by_time` batches of `batch_ms`
    /// after the run started.
    fn current(&mut self, by_time: u64, catch_up_batch: Duration) -> u64 {
        let hold = !self.behind.is_empty() && self.began.elapsed() < catch_up_batch;
        if !hold && by_time > self.epoch {
            self.epoch = by_time;
            self.began = Instant::now();
        }
        self.epoch
    }
}

fn fatal(what: &str, error: impl std::fmt::Display) -> SourceError {
    SourceError::Fatal(format!("{what}: {error}"))
}

/// How long [`Source::bounds`] waits for the broker before it says it cannot
/// tell: a run whose broker is down at the start waits for it in its
/// readers anyway.
const ENDS_TIMEOUT: Duration = Duration::from_secs(5);

impl Source for KafkaSource {
    fn bounds(&self) -> Option<LogBounds> {
        let config = &self.config;
        match watermarks(&config.brokers, &config.properties, &config.topic, Some(ENDS_TIMEOUT)) {
            Ok(marks) => Some(marks),
            Err(error) => {
                tracing::debug!(topic = %config.topic, %error, "cannot tell where the log starts and ends");
                None
            }
        }
    }

    fn start_at(&self, positions: &SourcePositions) {
        if let Ok(mut skip_to) = self.skip_to.lock() {
            *skip_to = Some(positions.clone());
        }
    }

    fn reader(&self, index: usize, peers: usize) -> Result<Box<dyn SourceReader>, SourceError> {
        let config = &self.config;
        // Tunable defaults first, then the user's properties, then the
        // settings correctness rests on.
        // With the prefetch queue full (64 MiB by default, reached within
        // a second of catching up), librdkafka puts off the next fetch for
        // `fetch.queue.backoff.ms`, 1 s by default: the workers drain the
        // queue long before that and sit idle. Look again after 10 ms.
        let mut defaults = vec![
            ("fetch.wait.max.ms".to_string(), "5".to_string()),
            ("fetch.queue.backoff.ms".to_string(), "10".to_string()),
        ];
        defaults.extend(config.properties.iter().cloned());
        let mut consumer: BaseConsumer = client_config(&config.brokers, &defaults)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| fatal("cannot create a Kafka consumer", e))?;
        let partitions = partitions_within(&consumer, &config.brokers, &config.topic, REQUEST_TIMEOUT)?;
        let skip_to = self.skip_to.lock().map(|s| s.clone()).unwrap_or(None);
        let peers = peers.max(1) as i32;
        let mine: Vec<i32> = partitions.into_iter().filter(|p| p % peers == index as i32).collect();
        let mut next = BTreeMap::new();
        let mut ends = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        let by_time = match config.start {
            StartPosition::Timestamp(nanos) => Some(offsets_at(&consumer, &config.topic, &mine, nanos)?),
            _ => None,
        };
        for &partition in &mine {
            let (low, high) = consumer
                .fetch_watermarks(&config.topic, partition, REQUEST_TIMEOUT)
                .map_err(|e| fatal(&format!("cannot read the offsets of {}/{partition}", config.topic), e))?;
            let configured = match &config.start {
                StartPosition::Earliest => low,
                StartPosition::Latest => high,
                StartPosition::Offsets(offsets) => {
                    offsets.iter().find(|(p, _)| *p == partition).map_or(low, |(_, o)| *o).clamp(low, high)
                }
                StartPosition::Timestamp(_) => {
                    by_time.as_ref().and_then(|o| o.get(&partition).copied()).unwrap_or(high).clamp(low, high)
                }
            };
            // A run from a state snapshot has what came before in it. From
            // `latest`, it starts at the snapshot: the end of the topic now
            // is past what the snapshot reflects, and the events between
            // must be read (a partition the snapshot does not know is new
            // since, and read from its start).
            let snapshot = skip_to.as_ref().map(|at| at.get(self.source_index, partition as u32) as i64);
            let start = match (&config.start, snapshot) {
                (StartPosition::Latest, Some(snapshot)) => snapshot.clamp(low, high),
                (_, snapshot) => configured.max(snapshot.unwrap_or(0).min(high)),
            };
            assignment
                .add_partition_offset(&config.topic, partition, Offset::Offset(start))
                .map_err(|e| fatal("cannot assign a partition", e))?;
            next.insert(partition, start);
            ends.insert(partition, high);
        }
        consumer.assign(&assignment).map_err(|e| fatal("cannot assign partitions", e))?;
        // The reader is made on the worker's thread, which sleeps between
        // batches while there is nothing to read: records that come wake
        // it (librdkafka calls this when the consumer's queue was empty).
        let worker_thread = std::thread::current();
        consumer.set_nonempty_callback(move || worker_thread.unpark());
        info!(topic = %config.topic, worker = index, partitions = ?mine, from = ?next, "reading");
        Ok(Box::new(KafkaReader {
            source_index: self.source_index,
            consumer,
            topic: config.topic.clone(),
            next,
            start_ends: ends.clone(),
            ends: config.bounded.then_some(ends),
            batch_millis: config.batch_ms.max(1),
            catch_up_batch: Duration::from_millis(config.catch_up_batch_ms),
            started: self.started,
            worker: index,
            batches: Arc::clone(&self.batches),
            delivered_at: Instant::now(),
        }))
    }
}

/// The partition numbers of `topic` at `brokers`, waiting up to `timeout`
/// for it to appear.
fn partitions_within(
    consumer: &BaseConsumer,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, SourceError> {
    let deadline = Instant::now() + timeout;
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), timeout);
        let found = match &metadata {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
                .filter(|p| !p.is_empty()),
            Err(_) => None,
        };
        if let Some(mut found) = found {
            found.sort_unstable();
            return Ok(found);
        }
        if Instant::now() >= deadline {
            let why = match metadata {
                Err(
                    error @ KafkaError::MetadataFetch(
                        RDKafkaErrorCode::BrokerTransportFailure
                        | RDKafkaErrorCode::AllBrokersDown
                        | RDKafkaErrorCode::Resolve,
                    ),
                ) => format!("{error}: no broker answered there"),
                Err(error) => error.to_string(),
                Ok(_) => missing_topic(consumer, brokers, topic),
            };
            return Err(SourceError::Fatal(format!("cannot read topic {topic:?} at {brokers}: {why}")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Why `topic`, which the broker does not know, cannot be read, with the
/// topics it does know (a misspelt name shows among them) and how to
/// create it: a reader takes the partitions there are when it starts.
fn missing_topic(consumer: &BaseConsumer, brokers: &str, topic: &str) -> String {
    let mut known: Vec<String> = match consumer.fetch_metadata(None, REQUEST_TIMEOUT) {
        Ok(metadata) => metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.name().starts_with("__"))
            .map(|t| t.name().to_string())
            .collect(),
        Err(_) => Vec::new(),
    };
    known.sort_unstable();
    let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    format!(
        "the topic does not exist (the broker's topics: {known}); create it with the partitions it should \
         have, e.g. `kafka-topics.sh --bootstrap-server {brokers} --create --topic {topic} --partitions 8`, \
         then start again"
    )
}

/// For each partition, the first offset at or after `nanos`.
fn offsets_at(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    nanos: i64,
) -> Result<BTreeMap<i32, i64>, SourceError> {
    let mut query = TopicPartitionList::new();
    for &partition in partitions {
        query
            .add_partition_offset(topic, partition, Offset::Offset(nanos / 1_000_000))
            .map_err(|e| fatal("cannot ask for offsets by time", e))?;
    }
    let found =
        consumer.offsets_for_times(query, REQUEST_TIMEOUT).map_err(|e| fatal("cannot find offsets by time", e))?;
    Ok(found
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            _ => None,
        })
        .collect())
}

/// A pause in deliveries shorter than this, while a reader is short of
/// where the topic ended at its start, is taken for a slow fetch, not for
/// the end of the backlog.
const FETCH_PAUSE: Duration = Duration::from_millis(250);

struct KafkaReader {
    source_index: u16,
    consumer: BaseConsumer,
    topic: String,
    /// Next offset to read, per owned partition.
    next: BTreeMap<i32, i64>,
    /// For a bounded source, where each partition ends.
    ends: Option<BTreeMap<i32, i64>>,
    /// Where each partition ended when the reader started.
    start_ends: BTreeMap<i32, i64>,
    batch_millis: u64,
    /// How long a batch may collect while a reader is behind.
    catch_up_batch: Duration,
    started: Instant,
    /// The worker this reader reads for.
    worker: usize,
    /// The batch, shared with the source's other readers.
    batches: Arc<Mutex<Batches>>,
    /// When this reader last delivered a record.
    delivered_at: Instant,
}

impl KafkaReader {
    /// The batch for records read now ([`Batches`]).
    fn current_epoch(&mut self) -> u64 {
        let by_time = self.started.elapsed().as_millis() as u64 / self.batch_millis;
        self.batches.lock().unwrap_or_else(PoisonError::into_inner).current(by_time, self.catch_up_batch)
    }

    /// Notes whether this reader is behind the topic, at once: another
    /// reader about to begin a batch holds it instead.
    fn note_behind(&mut self, behind: bool) {
        self.batches.lock().unwrap_or_else(PoisonError::into_inner).note(self.worker, behind);
    }

    /// Moves the next offsets past what the consumer took without
    /// delivering: a transaction's commit or abort marker (and an aborted
    /// transaction's records) takes an offset no message has, so a
    /// partition written by a transactional producer ends in one. Without
    /// this a bounded read would never end there, nor a catch-up, and the
    /// positions the sinks store would stay one short. Never past the end of
    /// a bounded source: the records there were taken but not delivered.
    fn step_over_undelivered(&mut self) {
        let Ok(positions) = self.consumer.position() else { return };
        for element in positions.elements_for_topic(&self.topic) {
            let partition = element.partition();
            let (Offset::Offset(position), Some(next)) = (element.offset(), self.next.get_mut(&partition)) else {
                continue;
            };
            let end = self.ends.as_ref().and_then(|ends| ends.get(&partition)).copied().unwrap_or(i64::MAX);
            *next = (*next).max(position.min(end));
        }
    }

    fn at_end(&self) -> bool {
        match &self.ends {
            Some(ends) => ends.iter().all(|(p, end)| self.next.get(p).is_some_and(|next| next >= end)),
            None => false,
        }
    }
}

impl SourceReader for KafkaReader {
    fn caught_up(&self) -> bool {
        self.start_ends.iter().all(|(partition, end)| self.next.get(partition).is_some_and(|next| next >= end))
    }

    fn poll(&mut self, max: usize, deliver: &mut dyn FnMut(RecordRef<'_>)) -> Result<Poll, SourceError> {
        if self.at_end() {
            // Done: no batch waits for this reader.
            self.note_behind(false);
            info!(topic = %self.topic, next = ?self.next, ends = ?self.ends, "reached the end of a bounded source");
            return Ok(Poll::Finished);
        }
        let epoch = self.current_epoch();
        let mut delivered = 0usize;
        // Take what is there without waiting: the worker sleeps in the
        // dataflow's own park, which other workers' messages cut short.
        while delivered < max {
            let Some(result) = self.consumer.poll(Duration::ZERO) else { break };
            match result {
                Ok(message) => {
                    let partition = message.partition();
                    let offset = message.offset();
                    if let Some(end) = self.ends.as_ref().and_then(|ends| ends.get(&partition))
                        && offset >= *end
                    {
                        // Past the end of a bounded source: not ours to read.
                        continue;
                    }
                    deliver(RecordRef {
                        position: LogPosition { partition: partition as u32, offset: offset as u64 },
                        key: message.key(),
                        bytes: message.payload().unwrap_or_default(),
                    });
                    self.next.insert(partition, offset + 1);
                    delivered += 1;
                }
                Err(KafkaError::MessageConsumption(
                    code @ (RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::UnknownTopicOrPartition),
                )) => {
                    return Err(SourceError::Fatal(format!("cannot read topic {:?}: {code}", self.topic)));
                }
                Err(error) => {
                    // librdkafka retries by itself; say so and go on.
                    warn!(topic = %self.topic, %error, "Kafka consumer error");
                    break;
                }
            }
        }
        if delivered > 0 {
            self.delivered_at = Instant::now();
        } else {
            // Drained: whatever the consumer took past the last record is
            // behind it now.
            self.step_over_undelivered();
        }
        // A poll that asked for nothing (a bounded reader holding all it
        // may) says nothing of whether the topic is ahead. One that took
        // all it could says it is. So does one that took less while the
        // reader is short of where the topic ended at its start and records
        // came a moment ago: the consumer's fetches fall behind the
        // workers now and then (right at the start, after the first poll,
        // nearly always), and a batch closed there has the views computed
        // and written over that poll's records first. Records that stop
        // coming for a while end the catch-up all the same (the last
        // offsets may be transaction markers, never delivered).
        if max > 0 {
            let catching_up = !self.caught_up() && self.delivered_at.elapsed() < FETCH_PAUSE;
            self.note_behind(delivered >= max || catching_up);
        }
        Ok(if delivered > 0 { Poll::Records { epoch } } else { Poll::Idle { epoch } })
    }

    fn positions(&self) -> SourcePositions {
        SourcePositions(self.next.iter().map(|(p, next)| ((self.source_index, *p as u32), *next as u64)).collect())
    }

    fn idle_until(&self) -> Option<Instant> {
        // Records wake the worker (the consumer's callback); the batch
        // ends at the next multiple of `batch_ms` since the start.
        let into_batch = self.started.elapsed().as_millis() as u64 % self.batch_millis;
        Some(Instant::now() + Duration::from_millis(self.batch_millis - into_batch))
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        // A reader that is gone holds no batch back.
        self.note_behind(false);
    }
}

/// Per partition of `topic`: its low and high watermarks, the offset of
/// its first record still kept and the offset after its last one.
pub fn watermarks(
    brokers: &str,
    properties: &[(String, String)],
    topic: &str,
    timeout: Option<Duration>,
) -> Result<LogBounds, SourceError> {
    Watermarks::new(brokers, properties, topic)?.look_up(timeout.unwrap_or(REQUEST_TIMEOUT))
}

/// A client that looks up the watermarks of one topic's partitions
/// ([`watermarks`]), kept for lookups over and over (`/metrics`).
pub struct Watermarks {
    consumer: BaseConsumer,
    brokers: String,
    topic: String,
}

impl Watermarks {
    /// A client of `brokers` for `topic`; it connects at the first lookup.
    pub fn new(brokers: &str, properties: &[(String, String)], topic: &str) -> Result<Watermarks, SourceError> {
        let consumer =
            client_config(brokers, properties).create().map_err(|e| fatal("cannot create a Kafka consumer", e))?;
        Ok(Watermarks { consumer, brokers: brokers.to_string(), topic: topic.to_string() })
    }

    /// The watermarks now, each request waiting at most `timeout`.
    pub fn look_up(&self, timeout: Duration) -> Result<LogBounds, SourceError> {
        let (consumer, topic) = (&self.consumer, self.topic.as_str());
        let mut marks = BTreeMap::new();
        for partition in partitions_within(consumer, &self.brokers, topic, timeout)? {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, timeout)
                .map_err(|e| fatal(&format!("cannot read the offsets of {topic}/{partition}"), e))?;
            marks.insert(partition as u32, (low.max(0) as u64, high.max(0) as u64));
        }
        Ok(marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATCH_UP: Duration = Duration::from_secs(60);

    /// The batch for the reader of `worker`, `behind` or not, `by_time`
    /// batches into the run.
    fn read(batches: &mut Batches, worker: usize, behind: bool, by_time: u64, catch_up: Duration) -> u64 {
        batches.note(worker, behind);
        batches.current(by_time, catch_up)
    }

    /// While one reader catches up, the others put their records in the
    /// same batch, however much time passes: the batch's views are
    /// computed once, over all of them.
    #[test]
    fn readers_share_the_batch_while_one_catches_up() {
        let mut batches = Batches::new();
        // Idle, a few batches into the run.
        assert_eq!(read(&mut batches, 0, false, 3, CATCH_UP), 3);
        // Worker 0 found a backlog: its batch holds.
        assert_eq!(read(&mut batches, 0, true, 4, CATCH_UP), 3);
        // Worker 1, idle or behind, joins that batch as time passes.
        assert_eq!(read(&mut batches, 1, false, 5, CATCH_UP), 3);
        assert_eq!(read(&mut batches, 1, true, 9, CATCH_UP), 3);
        // Worker 0 caught up; worker 1 still holds the batch.
        assert_eq!(read(&mut batches, 0, false, 12, CATCH_UP), 3);
        // Both caught up: the next batch begins, the same for both.
        assert_eq!(read(&mut batches, 1, false, 13, CATCH_UP), 13);
        assert_eq!(read(&mut batches, 0, false, 13, CATCH_UP), 13);
        assert_eq!(read(&mut batches, 0, false, 15, CATCH_UP), 15);
    }

    /// A batch held for a backlog closes after `catch_up_batch_ms` all the
    /// same, and batches never go back.
    #[test]
    fn a_held_batch_closes_after_the_catch_up_time() {
        let mut batches = Batches::new();
        assert_eq!(read(&mut batches, 0, true, 2, Duration::ZERO), 2);
        assert_eq!(read(&mut batches, 1, true, 3, Duration::ZERO), 3);
        assert_eq!(read(&mut batches, 0, true, 1, Duration::ZERO), 3);
    }
}
