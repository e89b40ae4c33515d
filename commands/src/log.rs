//! The Kafka topics behind the command side, and rebuilding its state.
//!
//! - the events topic holds the contract's events, keyed by `aggregate_id`;
//! - the inventory topic holds stock levels set by `PUT .../inventory/{sku}`
//!   (`{"store_id", "sku", "available"}`, keyed by `store_id/sku`); the
//!   read side never sees it, since it is not a contract event;
//! - the audit topic holds one record per command, accepted or rejected.
//!
//! Records the service writes carry the header `projector.command` (the
//! command number, increasing), and the first record of an idempotent
//! request carries `projector.idempotency-key` and `projector.answer`.
//! A rebuild reads the topics to their ends, orders the facts by command
//! number and applies them, starting from a snapshot when one is present.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::info;

use projector_core::event::decode_event;
use projector_source_kafka::client::client_config;

use crate::state::{Answer, CommandState, Fact};

/// Header with the command number.
pub const COMMAND_HEADER: &str = "projector.command";
/// Header with the idempotency key.
pub const KEY_HEADER: &str = "projector.idempotency-key";
/// Header with the answer given, as JSON.
pub const ANSWER_HEADER: &str = "projector.answer";

/// Where the command side keeps its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLogConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Topic of the contract's events (the read side's source).
    pub events_topic: String,
    /// Topic of stock levels.
    pub inventory_topic: String,
    /// Topic of the audit log: every command with its answer.
    pub audit_topic: String,
    /// More librdkafka settings.
    pub properties: Vec<(String, String)>,
    /// Where snapshots go (none kept when `None`).
    pub state_dir: Option<PathBuf>,
}

impl CommandLogConfig {
    fn topics(&self) -> [&str; 3] {
        [&self.events_topic, &self.inventory_topic, &self.audit_topic]
    }
}

/// Next offset to read per `topic/partition`.
pub type Offsets = BTreeMap<String, i64>;

/// A stock level record of the inventory topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRecord {
    /// The store.
    pub store_id: u64,
    /// The SKU.
    pub sku: String,
    /// Units available.
    pub available: i64,
}

const READ_TIMEOUT: Duration = Duration::from_secs(60);

fn header_text<'a>(message: &'a impl Message, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).and_then(|v| std::str::from_utf8(v).ok())
}

/// The facts of the three topics after `from` (the earliest offset where
/// `from` has none) up to their ends now, in command order, and the
/// offsets reached.
pub fn read_facts(config: &CommandLogConfig, from: &Offsets) -> Result<(Vec<(u64, Fact)>, Offsets), String> {
    let consumer: BaseConsumer = client_config(&config.brokers, &config.properties)
        .set("group.id", "projector-commands")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| format!("cannot create a Kafka consumer: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut reached = from.clone();
    for topic in config.topics() {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .map_err(|e| format!("cannot read the metadata of {topic} at {}: {e}", config.brokers))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(15))
                .map_err(|e| format!("cannot read the offsets of {topic}/{partition}: {e}"))?;
            let name = format!("{topic}/{partition}");
            let start = from.get(&name).copied().unwrap_or(low).max(low);
            reached.insert(name, start.max(high));
            if start < high {
                assignment.add_partition_offset(topic, partition, Offset::Offset(start)).map_err(|e| e.to_string())?;
                ends.insert((topic.to_string(), partition), high);
            }
        }
    }
    let mut facts: Vec<(u64, Fact)> = Vec::new();
    if ends.is_empty() {
        return Ok((facts, reached));
    }
    consumer.assign(&assignment).map_err(|e| format!("cannot assign partitions: {e}"))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("reading the command log timed out with {} partitions unread", ends.len()));
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            // Nothing came: the partitions may end in records a consumer
            // never sees (transaction markers); ask where each one stands.
            if let Ok(positions) = consumer.position() {
                for element in positions.elements() {
                    if let Offset::Offset(position) = element.offset() {
                        let key = (element.topic().to_string(), element.partition());
                        if ends.get(&key).is_some_and(|end| position >= *end) {
                            ends.remove(&key);
                        }
                    }
                }
            }
            continue;
        };
        let message = result.map_err(|e| format!("cannot read the command log: {e}"))?;
        let key = (message.topic().to_string(), message.partition());
        if let Some(end) = ends.get(&key)
            && message.offset() + 1 >= *end
        {
            ends.remove(&key);
        }
        let command = header_text(&message, COMMAND_HEADER).and_then(|c| c.parse().ok()).unwrap_or(0);
        let payload = message.payload().unwrap_or_default();
        if message.topic() == config.events_topic {
            if let Ok(event) = decode_event(payload) {
                facts.push((command, Fact::Event(event)));
            }
        } else if message.topic() == config.inventory_topic
            && let Ok(stock) = serde_json::from_slice::<StockRecord>(payload)
        {
            facts.push((
                command,
                Fact::StockSet { store_id: stock.store_id, sku: stock.sku, available: stock.available },
            ));
        }
        if let (Some(key), Some(answer)) = (header_text(&message, KEY_HEADER), header_text(&message, ANSWER_HEADER))
            && let Ok(answer) = serde_json::from_str::<Answer>(answer)
        {
            facts.push((command, Fact::Answered { key: key.to_string(), answer }));
        }
    }
    // A stable sort: facts of one command stay in log order.
    facts.sort_by_key(|(command, _)| *command);
    Ok((facts, reached))
}

/// A snapshot of the state and the offsets it reflects.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    topics: Vec<String>,
    offsets: Offsets,
    state: CommandState,
}

const SNAPSHOT_VERSION: u32 = 1;

fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("commands-snapshot.json")
}

/// The snapshot in `config.state_dir`, if there is one for these topics.
fn load_snapshot(config: &CommandLogConfig) -> Option<(CommandState, Offsets)> {
    let path = snapshot_path(config.state_dir.as_ref()?);
    let text = std::fs::read(&path).ok()?;
    let snapshot: Snapshot = serde_json::from_slice(&text).ok()?;
    let topics: Vec<String> = config.topics().iter().map(|t| t.to_string()).collect();
    (snapshot.version == SNAPSHOT_VERSION && snapshot.topics == topics).then_some((snapshot.state, snapshot.offsets))
}

fn save_snapshot(config: &CommandLogConfig, state: &CommandState, offsets: &Offsets) -> Result<(), String> {
    let Some(dir) = &config.state_dir else { return Ok(()) };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let snapshot = Snapshot {
        version: SNAPSHOT_VERSION,
        topics: config.topics().iter().map(|t| t.to_string()).collect(),
        offsets: offsets.clone(),
        state: state.clone(),
    };
    let path = snapshot_path(dir);
    let temporary = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(&snapshot).map_err(|e| e.to_string())?;
    std::fs::write(&temporary, bytes).map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, &path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// The state as the log has it now: the snapshot (if any) plus everything
/// appended since; the result is saved as the new snapshot.
pub fn rebuild(config: &CommandLogConfig) -> Result<CommandState, String> {
    let started = Instant::now();
    let (mut state, from) = load_snapshot(config).unwrap_or_default();
    let from_snapshot = !from.is_empty();
    let (facts, reached) = read_facts(config, &from)?;
    let count = facts.len();
    for (command, fact) in facts {
        state.apply(command, fact);
    }
    save_snapshot(config, &state, &reached)?;
    info!(
        facts = count,
        from_snapshot,
        orders = state.orders.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "command state rebuilt from the log"
    );
    Ok(state)
}
