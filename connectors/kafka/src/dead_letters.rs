//! Bad records to a dead-letter topic.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use projector_core::record::DeadLetter;
use projector_core::sink::{DeadLetterSink, SinkError};

use crate::client::producer_config;

/// Writes each dead letter to a topic: the original key and bytes, and the
/// headers `projector.source.topic`, `projector.source.partition`,
/// `projector.source.offset`, `projector.kind` and `projector.reason`.
pub struct KafkaDeadLetterSink {
    producer: BaseProducer,
    topic: String,
    source_topic: String,
}

impl KafkaDeadLetterSink {
    /// A producer to `topic` for bad records read from `source_topic`.
    pub fn new(
        brokers: &str,
        properties: &[(String, String)],
        topic: &str,
        source_topic: &str,
    ) -> Result<Self, SinkError> {
        let producer = producer_config(brokers, properties)
            .create()
            .map_err(|e| SinkError::Fatal(format!("cannot create a Kafka producer: {e}")))?;
        Ok(KafkaDeadLetterSink { producer, topic: topic.to_string(), source_topic: source_topic.to_string() })
    }
}

impl DeadLetterSink for KafkaDeadLetterSink {
    fn write(&mut self, letters: &[DeadLetter]) -> Result<(), SinkError> {
        for letter in letters {
            let partition = letter.position.partition.to_string();
            let offset = letter.position.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "projector.source.topic", value: Some(self.source_topic.as_bytes()) })
                .insert(Header { key: "projector.source.partition", value: Some(partition.as_bytes()) })
                .insert(Header { key: "projector.source.offset", value: Some(offset.as_bytes()) })
                .insert(Header { key: "projector.kind", value: Some(letter.kind.as_str().as_bytes()) })
                .insert(Header { key: "projector.reason", value: Some(letter.reason.as_bytes()) });
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&self.topic).payload(&letter.bytes[..]).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(&key[..]);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((error, returned)) => {
                        // The local queue is full: let deliveries drain.
                        if matches!(error.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)) {
                            self.producer.poll(Duration::from_millis(50));
                            record = returned;
                        } else {
                            return Err(SinkError::Retryable(format!(
                                "cannot send a dead letter to {}: {error}",
                                self.topic
                            )));
                        }
                    }
                }
            }
        }
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| SinkError::Retryable(format!("dead letters to {} not acknowledged: {e}", self.topic)))
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.producer
            .flush(Duration::from_secs(30))
            .map_err(|e| SinkError::Retryable(format!("dead letters to {} not acknowledged: {e}", self.topic)))
    }
}
