//! Appending records to a topic in bulk (the generator's `--topic`, tests
//! and benchmarks).

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::client::producer_config;

/// Appends `(key, value)` records to `topic` with an idempotent producer
/// and waits until the broker has acknowledged all of them. Returns how
/// many were appended.
pub fn append_all<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    brokers: &str,
    topic: &str,
    records: impl IntoIterator<Item = (K, V)>,
) -> Result<u64, String> {
    // Large batches: a bulk append has no one waiting for each record (a
    // flush sends at once), and a partition of few large batches is
    // cheaper to store and to read back. librdkafka's mock broker (tests,
    // benchmarks) finds the batch of a fetched offset by walking the
    // partition's batches from the first: with the 5 ms of before, a
    // replay of 1M events from 64 partitions spent a sixth of its CPU
    // there.
    let producer: BaseProducer = producer_config(brokers, &[])
        .set("compression.type", "lz4")
        .set("linger.ms", "100")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .map_err(|e| format!("cannot create a Kafka producer: {e}"))?;
    let mut count = 0u64;
    for (key, value) in records {
        let mut record = BaseRecord::to(topic).key(key.as_ref()).payload(value.as_ref());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((error, returned)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    producer.poll(Duration::from_millis(10));
                    record = returned;
                }
                Err((error, _)) => return Err(format!("cannot append to {topic}: {error}")),
            }
        }
        count += 1;
        if count.is_multiple_of(10_000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).map_err(|e| format!("appends to {topic} not acknowledged: {e}"))?;
    Ok(count)
}
