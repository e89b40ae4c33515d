//! The `kafka` source: a topic of events, its partitions spread over the
//! timely workers.
//!
//! - [`source`]: the reader. Each worker is assigned the partitions whose
//!   number modulo the worker count is its own (`assign`, not a consumer
//!   group: Projector owns its positions). Records are handed to the
//!   dataflow without a copy; a batch is `batch_ms` of wall-clock time, and
//!   an idle topic still advances the batches, so sinks keep committing.
//!   Reads use `isolation.level = read_committed`.
//! - [`dead_letters`]: bad records to a dead-letter topic, with the original
//!   key and bytes and their source position, kind and reason as headers.
//! - [`client`]: the client settings both use.
//!
//! Transport only: the bytes are interpreted by the event decoder.

pub mod client;
pub mod dead_letters;
pub mod produce;
pub mod source;

pub use dead_letters::KafkaDeadLetterSink;
pub use source::KafkaSource;
