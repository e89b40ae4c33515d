//! Rows in a compact byte encoding, for the dataflow's arrangements.
//!
//! A view's projected rows (group key and measure inputs) are the bulk of
//! the dataflow's state: one pair per relation row. As [`Value`] slices they
//! take 24 bytes a value plus headers; packed they take a tag byte plus the
//! value's own bytes and compare as bytes. The encoding is canonical (equal
//! rows, equal bytes), which is all arrangements need; byte order is not
//! value order, so sorted output sorts unpacked rows.
//!
//! A row of up to [`INLINE`] bytes (a group key of two ids and a date, most
//! measure inputs) is held in the `PackedRow` itself, not behind a pointer:
//! arrangements compare keys in their hottest loops (seeking each key
//! through every batch of a trace) and copy them in every merge, and an
//! inline key costs neither a cache miss nor an allocation there.
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

/// Rows of up to this many bytes are held inline (the `PackedRow` is then
/// 32 bytes, as large as the pointer form needs with its tag and length).
pub const INLINE: usize = 30;

/// A row of values, packed. Rows compare, hash and serialize as their bytes.
#[derive(Clone)]
pub struct PackedRow(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl PackedRow {
    /// Packs values in order.
    pub fn pack<'a>(values: impl IntoIterator<Item = ValueRef<'a>>) -> PackedRow {
        let mut bytes = Bytes::default();
        for value in values {
            push(&mut bytes, value);
        }
        bytes.finish()
    }

    /// The row with these packed bytes (inline when they fit).
    fn from_bytes(bytes: &[u8]) -> PackedRow {
        if bytes.len() > INLINE {
            return PackedRow(Repr::Heap(bytes.into()));
        }
        let mut inline = [0u8; INLINE];
        inline[..bytes.len()].copy_from_slice(bytes);
        PackedRow(Repr::Inline { len: bytes.len() as u8, bytes: inline })
    }

    /// The packed bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// The values, in order, borrowed from the packed bytes.
    pub fn iter(&self) -> Unpack<'_> {
        Unpack { bytes: self.as_bytes() }
    }

    /// The values as a [`Row`].
    pub fn unpack(&self) -> Row {
        self.iter().map(ValueRef::to_value).collect::<Vec<Value>>().into()
    }

    /// Packed size in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

impl Default for PackedRow {
    fn default() -> Self {
        PackedRow(Repr::Inline { len: 0, bytes: [0; INLINE] })
    }
}

impl PartialEq for PackedRow {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for PackedRow {}

impl Ord for PackedRow {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl PartialOrd for PackedRow {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::hash::Hash for PackedRow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for PackedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PackedRow").field(&self.as_bytes()).finish()
    }
}

impl Serialize for PackedRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_bytes().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PackedRow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(deserializer).map(|bytes| PackedRow::from_bytes(&bytes))
    }
}

/// Packed bytes being written: on the stack while they fit inline.
struct Bytes {
    inline: [u8; INLINE],
    len: usize,
    heap: Vec<u8>,
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes { inline: [0; INLINE], len: 0, heap: Vec::new() }
    }
}

impl Bytes {
    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    fn extend_from_slice(&mut self, more: &[u8]) {
        if self.heap.is_empty() && self.len + more.len() <= INLINE {
            self.inline[self.len..self.len + more.len()].copy_from_slice(more);
            self.len += more.len();
            return;
        }
        if self.heap.is_empty() {
            self.heap.reserve(64.max(self.len + more.len()));
            self.heap.extend_from_slice(&self.inline[..self.len]);
        }
        self.heap.extend_from_slice(more);
    }

    fn finish(self) -> PackedRow {
        if self.heap.is_empty() {
            PackedRow(Repr::Inline { len: self.len as u8, bytes: self.inline })
        } else {
            PackedRow(Repr::Heap(self.heap.into_boxed_slice()))
        }
    }
}

fn push(bytes: &mut Bytes, value: ValueRef<'_>) {
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
        assert_eq!(std::mem::size_of::<PackedRow>(), 32);
    }

    proptest::proptest! {
        /// Inline or not, rows compare and hash as their bytes, and pack
        /// the same way however they are built.
        #[test]
        fn rows_behave_as_their_bytes(
            a in proptest::collection::vec(0u8..3, 0..2 * INLINE),
            b in proptest::collection::vec(0u8..3, 0..2 * INLINE),
        ) {
            use std::hash::{BuildHasher, RandomState};
            let (row_a, row_b) = (PackedRow::from_bytes(&a), PackedRow::from_bytes(&b));
            proptest::prop_assert_eq!(row_a.as_bytes(), &a[..]);
            proptest::prop_assert_eq!(row_a.cmp(&row_b), a.cmp(&b));
            proptest::prop_assert_eq!(row_a == row_b, a == b);
            let hasher = RandomState::new();
            proptest::prop_assert_eq!(hasher.hash_one(&row_a), hasher.hash_one(&a[..]));
            let mut built = Bytes::default();
            for chunk in a.chunks(7) {
                built.extend_from_slice(chunk);
            }
            proptest::prop_assert_eq!(built.finish(), row_a);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let row = PackedRow::from_bytes(&bytes);
            let _ = row.iter().count();
        }
    }
}
