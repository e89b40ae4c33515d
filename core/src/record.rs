//! Where records sit in their source, and dead letters for the bad ones.
//!
//! Transport and format are separate (as in Feldera): a source hands over
//! bytes with their [`LogPosition`]; the event decoder in [`crate::event`]
//! interprets the bytes. A record that does not decode becomes a
//! [`DeadLetter`] carrying the original bytes, its place and the reason, and
//! travels as data to the dead-letter destination.

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

/// One record as its source hands it over, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Where in the source the record sits.
    pub position: LogPosition,
    /// The record key (the Kafka key; none for a file line).
    pub key: Option<&'a [u8]>,
    /// The record's bytes, exactly as read (a line without its break).
    pub bytes: &'a [u8],
}

/// A record that could not become an event, with everything needed to find
/// and replay it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Index of the source in the pipeline's source list.
    pub source: u16,
    /// Where in that source the record sits.
    pub position: LogPosition,
    /// The original key, if the record had one.
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub bytes: Vec<u8>,
    /// What kind of problem it has (the metrics label).
    pub kind: BadRecordKind,
    /// What is wrong, for a person.
    pub reason: String,
}

impl DeadLetter {
    /// The dead-letter line of `projector run --output-dir`: the original
    /// line, its line number, the reason, the kind and the source. Bytes
    /// that are not UTF-8 are also given in hex as `line_hex`, so nothing is
    /// lost.
    pub fn to_file_json(&self, source_name: &str) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            line: std::borrow::Cow<'a, str>,
            line_number: u64,
            reason: &'a str,
            kind: &'static str,
            source: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            line_hex: Option<String>,
        }
        let line_hex =
            std::str::from_utf8(&self.bytes).is_err().then(|| self.bytes.iter().map(|b| format!("{b:02x}")).collect());
        let line = Line {
            line: String::from_utf8_lossy(&self.bytes),
            line_number: self.position.offset,
            reason: &self.reason,
            kind: self.kind.as_str(),
            source: source_name,
            line_hex,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}
