//! Raw records as sources deliver them, and dead letters for the bad ones.
//!
//! Transport and format are separate (as in Feldera): a source yields
//! [`RawRecord`]s, bytes with the place they came from; the event decoder in
//! [`crate::event`] interprets the bytes. A record that does not decode
//! becomes a [`DeadLetter`] carrying the original bytes, its place and the
//! reason, and travels as data to the dead-letter destination.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::BadRecordKind;

/// A place in a source's log: a Kafka partition and offset, or for a file
/// source partition 0 and the 1-based line number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// Kafka partition; 0 for a file.
    pub partition: u32,
    /// Kafka offset; line number (from 1) for a file.
    pub offset: u64,
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.partition, self.offset)
    }
}

/// One record as a source delivered it, not yet interpreted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RawRecord {
    /// Index of the source in the pipeline's source list.
    pub source: u16,
    /// Where in that source the record sits.
    pub position: LogPosition,
    /// The record's bytes, exactly as read (a line without its line break).
    pub bytes: Vec<u8>,
}

/// A record that could not become an event, with everything needed to find
/// and replay it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Index of the source in the pipeline's source list.
    pub source: u16,
    /// Where in that source the record sits.
    pub position: LogPosition,
    /// The original bytes.
    pub bytes: Vec<u8>,
    /// What kind of problem it has (the metrics label).
    pub kind: BadRecordKind,
    /// What is wrong, for a person.
    pub reason: String,
}

impl DeadLetter {
    /// The dead-letter line of `projector run --output-dir`: the original
    /// line, its line number and the reason. Bytes that are not UTF-8 are
    /// also given in base64-free hex as `line_hex`, so nothing is lost.
    pub fn to_file_json(&self, source_name: &str) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        object.insert("line".into(), String::from_utf8_lossy(&self.bytes).into_owned().into());
        object.insert("line_number".into(), self.position.offset.into());
        object.insert("reason".into(), self.reason.clone().into());
        object.insert("kind".into(), self.kind.as_str().into());
        object.insert("source".into(), source_name.into());
        if std::str::from_utf8(&self.bytes).is_err() {
            let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
            object.insert("line_hex".into(), hex.into());
        }
        serde_json::Value::Object(object)
    }
}
