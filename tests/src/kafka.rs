//! Kafka for tests: the broker's address, fresh topics, appending and
//! reading records.
//!
//! The test command (`scripts/test-all.sh`) starts `projector-mock-kafka`
//! in its own process and sets `KAFKA_BROKERS`. With `CI=true` a missing
//! broker fails the test; elsewhere an in-process mock cluster stands in,
//! so `cargo test` works on its own.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// The bootstrap address of the test broker.
pub fn brokers() -> String {
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS")
        && !brokers.is_empty()
    {
        return brokers;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "KAFKA_BROKERS is not set: run the tests with scripts/test-all.sh, which starts the broker"
    );
    local().0.clone()
}

/// The in-process mock cluster of a plain `cargo test`: its address, and a
/// way to ask it for topics.
type TopicRequest = (String, i32, std::sync::mpsc::Sender<Result<(), String>>);

fn local() -> &'static (String, std::sync::Mutex<std::sync::mpsc::Sender<TopicRequest>>) {
    static LOCAL: OnceLock<(String, std::sync::Mutex<std::sync::mpsc::Sender<TopicRequest>>)> = OnceLock::new();
    LOCAL.get_or_init(|| {
        let (send, receive) = std::sync::mpsc::channel();
        let (create, requests) = std::sync::mpsc::channel::<TopicRequest>();
        std::thread::spawn(move || {
            let cluster = rdkafka::mocking::MockCluster::new(1).expect("in-process mock cluster");
            send.send(cluster.bootstrap_servers()).expect("address");
            for (name, partitions, reply) in requests {
                let _ = reply.send(cluster.create_topic(&name, partitions, 1).map_err(|e| e.to_string()));
            }
            loop {
                std::thread::park();
            }
        });
        (receive.recv().expect("mock cluster address"), std::sync::Mutex::new(create))
    })
}

/// A fresh topic with `partitions` partitions (the mock keeps at most
/// 5 MiB per partition, and auto-creates topics with 4). Asks the test
/// broker's control port (`KAFKA_MOCK_CONTROL`, see projector-mock-kafka).
pub fn create_topic(name: &str, partitions: i32) -> String {
    use std::io::{BufRead, BufReader, Write};
    let topic = fresh_topic(name);
    if std::env::var("KAFKA_BROKERS").is_ok_and(|b| !b.is_empty()) {
        let control = std::env::var("KAFKA_MOCK_CONTROL")
            .expect("KAFKA_MOCK_CONTROL is not set: start projector-mock-kafka with --control-file");
        let mut stream = std::net::TcpStream::connect(&control).expect("the mock broker's control port");
        writeln!(stream, "create {topic} {partitions}").unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).unwrap();
        assert_eq!(answer.trim(), "ok", "creating {topic}");
    } else {
        let (reply, answer) = std::sync::mpsc::channel();
        local().1.lock().unwrap().send((topic.clone(), partitions, reply)).unwrap();
        answer.recv().unwrap().unwrap_or_else(|e| panic!("creating {topic}: {e}"));
    }
    topic
}

/// A topic name no other test uses.
pub fn fresh_topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Appends `(key, value)` records and waits for the acknowledgements.
pub fn append(topic: &str, records: impl IntoIterator<Item = (String, String)>) -> u64 {
    projector_source_kafka::produce::append_all(&brokers(), topic, records).expect("append to the test topic")
}

/// A record read back, with its headers as text.
#[derive(Clone, Debug)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Reads `count` records of every partition of `topic` from the start
/// (waiting up to 30 s for them).
pub fn read(topic: &str, count: usize) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "projector-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("test consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    let partitions = loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata");
        let found: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    while records.len() < count && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|header| {
                            (
                                header.key.to_string(),
                                String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(ReadRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    records
}

/// Every record of `topic` now: reads each partition to its end offset.
pub fn read_all(topic: &str) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "projector-tests")
        .create()
        .expect("test consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata");
    let mut total = 0usize;
    for partition in metadata.topics().iter().filter(|t| t.name() == topic).flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(5)).expect("watermarks");
        total += (high - low) as usize;
    }
    read(topic, total)
}

/// Appends a transaction's commit marker to `partition` of `topic`, as a
/// transactional producer's commit leaves one: a control batch that takes
/// an offset and that consumers never receive. (No client here writes
/// markers by itself: the mock broker does not on a commit, so this speaks
/// the Produce request, v3, to the partition's leader.) Answers the
/// marker's offset.
pub fn append_commit_marker(topic: &str, partition: i32) -> i64 {
    use std::io::{Read, Write};
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("metadata client");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)).expect("metadata");
    let leader = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
        .find(|p| p.id() == partition)
        .unwrap_or_else(|| panic!("{topic} has no partition {partition}"))
        .leader();
    let broker = metadata.brokers().iter().find(|b| b.id() == leader).expect("the partition's leader");
    let mut stream = std::net::TcpStream::connect((broker.host(), broker.port() as u16)).expect("the leader");

    let batch = commit_marker_batch();
    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // Produce
    request.extend(3i16.to_be_bytes()); // version 3
    request.extend(1i32.to_be_bytes()); // correlation id
    request.extend((-1i16).to_be_bytes()); // no client id
    request.extend((-1i16).to_be_bytes()); // no transactional id
    request.extend((-1i16).to_be_bytes()); // acks: all
    request.extend(10_000i32.to_be_bytes()); // timeout
    request.extend(1i32.to_be_bytes()); // one topic
    request.extend((topic.len() as i16).to_be_bytes());
    request.extend(topic.as_bytes());
    request.extend(1i32.to_be_bytes()); // one partition
    request.extend(partition.to_be_bytes());
    request.extend((batch.len() as i32).to_be_bytes());
    request.extend(&batch);
    stream.write_all(&(request.len() as i32).to_be_bytes()).expect("send the marker");
    stream.write_all(&request).expect("send the marker");

    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("the Produce answer");
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut answer).expect("the Produce answer");
    // Correlation id, one topic (name), one partition: its number, error
    // code and base offset.
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error = i16::from_be_bytes([answer[at], answer[at + 1]]);
    assert_eq!(error, 0, "the broker refused the commit marker (error {error})");
    i64::from_be_bytes(answer[at + 2..at + 10].try_into().expect("8 bytes"))
}

/// A record batch (magic 2) holding one control record: a commit marker.
fn commit_marker_batch() -> Vec<u8> {
    // The control record: key (version 0, type 1: commit), value (version
    // 0, coordinator epoch 0); lengths and deltas are zigzag varints.
    let (key, value) = ([0u8, 0, 0, 1], [0u8; 6]);
    let mut record = vec![0u8, 0, 0]; // attributes, timestamp delta, offset delta
    record.push(zigzag(key.len() as i64));
    record.extend(key);
    record.push(zigzag(value.len() as i64));
    record.extend(value);
    record.push(0); // no headers
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    // From the attributes on: what the CRC covers.
    let mut covered = Vec::new();
    covered.extend(0x30i16.to_be_bytes()); // transactional, control
    covered.extend(0i32.to_be_bytes()); // last offset delta
    covered.extend(now.to_be_bytes()); // first timestamp
    covered.extend(now.to_be_bytes()); // max timestamp
    covered.extend(4242i64.to_be_bytes()); // producer id
    covered.extend(0i16.to_be_bytes()); // producer epoch
    covered.extend((-1i32).to_be_bytes()); // base sequence
    covered.extend(1i32.to_be_bytes()); // one record
    covered.push(zigzag(record.len() as i64));
    covered.extend(record);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset (the broker sets it)
    batch.extend((4 + 1 + 4 + covered.len() as i32).to_be_bytes()); // batch length
    batch.extend((-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&covered).to_be_bytes());
    batch.extend(covered);
    batch
}

/// A small number as a zigzag varint of one byte.
fn zigzag(n: i64) -> u8 {
    let encoded = ((n << 1) ^ (n >> 63)) as u64;
    assert!(encoded < 0x80, "{n} does not fit one byte");
    encoded as u8
}

/// CRC-32C (Castagnoli), bit by bit: record batches carry it.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}
