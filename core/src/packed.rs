//! Rows in a compact byte encoding, for the dataflow's arrangements.
//!
//! A view's projected rows (group key and measure inputs) are the bulk of
//! the dataflow's state: one pair per relation row. As [`Value`] slices they
//! take 24 bytes a value plus headers; packed they take a tag byte plus the
//! value's own bytes, in one allocation, and compare as bytes. The encoding
//! is canonical (equal rows, equal bytes), which is all arrangements need;
//! byte order is not value order, so sorted output sorts unpacked rows.
//!
//! Per value: a tag byte, then nothing (null), 1 byte (bool), 8 bytes
//! little-endian (unsigned, signed, timestamp), 4 bytes (date), or a
//! little-endian `u32` length and the UTF-8 bytes (text).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::relation::ValueRef;
use crate::value::{Row, Timestamp, Value};

const NULL: u8 = 0;
const BOOL: u8 = 1;
const UINT: u8 = 2;
const INT: u8 = 3;
const DATE: u8 = 4;
const TIMESTAMP: u8 = 5;
const TEXT: u8 = 6;

/// A row of values, packed.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PackedRow(Box<[u8]>);

impl PackedRow {
    /// Packs values in order.
    pub fn pack<'a>(values: impl IntoIterator<Item = ValueRef<'a>>) -> PackedRow {
        let mut bytes = Vec::with_capacity(32);
        for value in values {
            push(&mut bytes, value);
        }
        PackedRow(bytes.into_boxed_slice())
    }

    /// The values, in order, borrowed from the packed bytes.
    pub fn iter(&self) -> Unpack<'_> {
        Unpack { bytes: &self.0 }
    }

    /// The values as a [`Row`].
    pub fn unpack(&self) -> Row {
        self.iter().map(ValueRef::to_value).collect::<Vec<Value>>().into()
    }

    /// Packed size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn push(bytes: &mut Vec<u8>, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => bytes.push(NULL),
        ValueRef::Bool(b) => bytes.extend_from_slice(&[BOOL, u8::from(b)]),
        ValueRef::UInt(v) => {
            bytes.push(UINT);
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        ValueRef::Int(v) => {
            bytes.push(INT);
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        ValueRef::Date(d) => {
            bytes.push(DATE);
            bytes.extend_from_slice(&d.to_le_bytes());
        }
        ValueRef::Timestamp(t) => {
            bytes.push(TIMESTAMP);
            bytes.extend_from_slice(&t.0.to_le_bytes());
        }
        ValueRef::Text(text) => {
            bytes.push(TEXT);
            // Texts of 4 GiB do not occur in events; clamp rather than wrap.
            let length = u32::try_from(text.len()).unwrap_or(u32::MAX);
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(&text.as_bytes()[..length as usize]);
        }
    }
}

/// Iterates over the values of a packed row.
pub struct Unpack<'a> {
    bytes: &'a [u8],
}

impl<'a> Unpack<'a> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.bytes.split_first_chunk::<N>()?;
        self.bytes = rest;
        Some(*head)
    }
}

impl<'a> Iterator for Unpack<'a> {
    type Item = ValueRef<'a>;

    fn next(&mut self) -> Option<ValueRef<'a>> {
        let [tag] = self.take::<1>()?;
        Some(match tag {
            BOOL => ValueRef::Bool(self.take::<1>()?[0] != 0),
            UINT => ValueRef::UInt(u64::from_le_bytes(self.take()?)),
            INT => ValueRef::Int(i64::from_le_bytes(self.take()?)),
            DATE => ValueRef::Date(i32::from_le_bytes(self.take()?)),
            TIMESTAMP => ValueRef::Timestamp(Timestamp(i64::from_le_bytes(self.take()?))),
            TEXT => {
                let length = u32::from_le_bytes(self.take()?) as usize;
                let (text, rest) = self.bytes.split_at_checked(length)?;
                self.bytes = rest;
                // Packed from a `&str`, so this is UTF-8; an empty text is
                // the answer that cannot panic if it were not.
                ValueRef::Text(std::str::from_utf8(text).unwrap_or(""))
            }
            _ => ValueRef::Null,
        })
    }
}

impl From<&[Value]> for PackedRow {
    fn from(values: &[Value]) -> Self {
        PackedRow::pack(values.iter().map(ValueRef::from))
    }
}

impl From<&PackedRow> for Arc<[Value]> {
    fn from(row: &PackedRow) -> Self {
        row.unpack()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_type() {
        let values = [
            Value::Null,
            Value::Bool(true),
            Value::UInt(u64::MAX),
            Value::Int(-5),
            Value::Date(-1),
            Value::Timestamp(Timestamp(1_709_294_400_000_000_000)),
            Value::Text("naïve ünïcode".into()),
            Value::Text("".into()),
        ];
        let packed = PackedRow::from(&values[..]);
        assert_eq!(&packed.unpack()[..], &values[..]);
        assert_eq!(PackedRow::from(&values[..]), packed);
        assert!(packed.len() < values.len() * std::mem::size_of::<Value>());
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let row = PackedRow(bytes.into_boxed_slice());
            let _ = row.iter().count();
        }
    }
}
