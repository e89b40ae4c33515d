//! The pipeline's own state as rows, for snapshots that spare a restart
//! reading the log from the start.
//!
//! Two kinds of rows, in one table so that one file holds both at one log
//! position:
//! - `event`: the first copy of every `event_id` seen (its position), so
//!   that a later copy is still ignored after a restart;
//! - `order`: the witnesses of every order's state
//!   ([`crate::orders::order_witnesses`]), a handful of events per order
//!   with everything the fold reads.
//!
//! A restart drops every record read later whose `event_id` is among the
//! `event` rows (its first copy is in the snapshot, so no later copy
//! counts, as before), feeds the `order` rows straight into the order fold,
//! hands the `event` rows on to the next snapshot, and reads the log from
//! the snapshot's positions on. Views are computed from order state alone,
//! so a snapshot serves any set of views, also ones added since.

use std::collections::HashSet;
use std::sync::Arc;

use differential_dataflow::VecCollection;

use projector_core::event::EventId;
use projector_core::order::{LineItem, OrderChange, OrderContent, OrderHeader};
use projector_core::packed::PackedRow;
use projector_core::record::LogPosition;
use projector_core::sink::RowHasher;
use projector_core::value::{FieldType, Row, Value};

use crate::EventPosition;
use crate::orders::OrderInput;

/// The name the state is written under.
pub const STATE_NAME: &str = "projector state";

/// How many leading fields of a state row are its key.
pub const STATE_KEY_LEN: usize = 5;

/// The columns of a state row: the key (`record`, `id`, `source`,
/// `partition`, `offset`), then what an order witness carries.
pub fn state_fields() -> Vec<(String, FieldType)> {
    [
        ("record", FieldType::Text),
        ("id", FieldType::Text),
        ("source", FieldType::UInt),
        ("partition", FieldType::UInt),
        ("offset", FieldType::UInt),
        ("sequence", FieldType::UInt),
        ("event_id", FieldType::Text),
        ("change", FieldType::Text),
        ("store_id", FieldType::UInt),
        ("customer_id", FieldType::UInt),
        ("currency", FieldType::Text),
        ("created_at", FieldType::Timestamp),
        ("total_cents", FieldType::Int),
        ("line_items", FieldType::Text),
    ]
    .into_iter()
    .map(|(name, ty)| (name.to_string(), ty))
    .collect()
}

/// The `record` of a state row that holds an `event_id`'s first copy.
const EVENT_RECORD: &str = "event";
/// The `record` of a state row that holds an order witness.
const ORDER_RECORD: &str = "order";

fn key(record: &str, id: String, position: EventPosition) -> PackedRow {
    let (source, LogPosition { partition, offset }) = position;
    PackedRow::from(
        &[
            Value::Text(record.into()),
            Value::Text(id.into()),
            Value::UInt(u64::from(source)),
            Value::UInt(u64::from(partition)),
            Value::UInt(offset),
        ][..],
    )
}

/// The first copies of `event_id`s ([`crate::orders::OrderGraph`]) as state
/// rows.
pub fn first_copy_rows<'scope>(
    first_copies: VecCollection<'scope, u64, (EventId, EventPosition)>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    // Every one has no values: one row of nulls serves them all (a
    // million `event_id`s are a million allocations fewer to make, keep
    // and free).
    let nulls = Row::from(vec![Value::Null; 9]);
    first_copies
        .map(move |(event_id, position)| (key(EVENT_RECORD, event_id.to_string(), position), Row::clone(&nulls)))
}

/// Order witnesses as state rows.
pub fn witness_rows<'scope>(
    witnesses: VecCollection<'scope, u64, (Arc<str>, OrderInput)>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    witnesses.flat_map(|(order_id, input)| witness_row(&order_id, &input))
}

/// One order witness as a state row; [`restore`] reads it back to the
/// same witness, and a restart takes a restored witness away by this row.
fn witness_row(order_id: &str, input: &OrderInput) -> Option<(PackedRow, Row)> {
    let OrderInput::Event(sequence, position, event_id, change) = input else { return None };
    let mut values = vec![Value::UInt(*sequence), Value::Text(event_id.to_string().into())];
    let (kind, header, content) = match change {
        OrderChange::Created(header, content) => ("created", Some(header), Some(content)),
        OrderChange::Updated(content) => ("updated", None, Some(content)),
        OrderChange::Cancelled => ("cancelled", None, None),
    };
    values.push(Value::Text(kind.into()));
    match header {
        Some(header) => values.extend([
            Value::UInt(header.store_id),
            Value::UInt(header.customer_id),
            Value::Text(header.currency.as_str().into()),
            Value::Timestamp(header.created_at),
        ]),
        None => values.extend([Value::Null, Value::Null, Value::Null, Value::Null]),
    }
    match content {
        Some(content) => values.extend([
            Value::Int(content.total_cents),
            Value::Text(serde_json::to_string(&content.line_items).unwrap_or_default().into()),
        ]),
        None => values.extend([Value::Null, Value::Null]),
    }
    Some((key(ORDER_RECORD, order_id.to_string(), *position), Row::from(values)))
}

/// What a snapshot restores.
#[derive(Default)]
pub struct Restored {
    /// Every `event_id` seen before the snapshot: a later copy of one of
    /// them never counts (the first copy is in the snapshot), so the run
    /// drops such records as it reads them.
    /// (With foldhash, not SipHash: a restore of 1M events spent a fifth
    /// of its one-threaded part inserting them, and every record read
    /// after it is looked up here.)
    pub event_ids: EventIds,
    /// The snapshot's rows, in its order, handed on to the next snapshot
    /// as they are (straight into the state's first batch). The dataflow
    /// adds to them only what changed: new `event_id`s, and the witnesses
    /// of the orders that changed ([`crate::orders::order_witnesses`]).
    pub rows: Vec<(Row, Row)>,
    /// The order witnesses, for the fold.
    pub witnesses: Witnesses,
}

/// The `event_id`s of a snapshot.
pub type EventIds = HashSet<EventId, RowHasher>;

/// Order witnesses: the order's id, and the witness.
pub type Witnesses = Vec<(Arc<str>, OrderInput)>;

/// Reads state rows back (see [`state_fields`]), in the rows' order: each
/// half of the work on a thread of its own (a snapshot is restored before
/// anything else runs; the line items of every witness are parsed here).
pub fn restore(rows: Vec<(Row, Row)>) -> Result<Restored, String> {
    let (first, second) = rows.split_at(half_the_work(&rows));
    let (first, second) = std::thread::scope(|scope| {
        // The first part makes room for every `event_id` of the
        // snapshot, the second's included; the second part holds the
        // later rows, nearly all witnesses (a snapshot's `event` rows come
        // first), so it makes none.
        let other = scope.spawn(|| restore_part(second, 0));
        let first = restore_part(first, rows.len());
        (first, other.join().unwrap_or_else(|_| Err("a thread restoring the state panicked".to_string())))
    });
    let ((mut event_ids, mut witnesses), (more_ids, more_witnesses)) = (first?, second?);
    event_ids.extend(more_ids);
    witnesses.extend(more_witnesses);
    Ok(Restored { event_ids, rows, witnesses })
}

/// Where to split `rows` so that each part is about half the work of
/// restoring them. An order witness (its line items parsed from JSON, its
/// parts allocated) costs about five times an `event_id`: 1.3 µs against
/// 0.26 µs, timed by hand inside the `restore` case of the `snapshot`
/// bench. A snapshot holds its `event` rows first, so halving the rows
/// gave one thread nearly all the witnesses.
fn half_the_work(rows: &[(Row, Row)]) -> usize {
    const WITNESS_COST: usize = 5;
    let cost = |(key, _): &(Row, Row)| match key.first() {
        Some(Value::Text(record)) if record.as_ref() == ORDER_RECORD => WITNESS_COST,
        _ => 1,
    };
    let total: usize = rows.iter().map(cost).sum();
    let mut done = 0;
    rows.iter()
        .position(|row| {
            done += cost(row);
            done * 2 >= total
        })
        .map_or(rows.len(), |last| last + 1)
}

/// Reads `rows` back: the `event_id`s and the witnesses they hold; `ids`:
/// how many `event_id`s to make room for.
fn restore_part(rows: &[(Row, Row)], ids: usize) -> Result<(EventIds, Witnesses), String> {
    let mut event_ids = HashSet::with_capacity_and_hasher(ids, RowHasher::default());
    let mut witnesses = Vec::new();
    for (key, values) in rows {
        let bad = || format!("a state row that is not one: {key:?} {values:?}");
        let (record, id, position) = match &key[..] {
            [
                Value::Text(record),
                Value::Text(id),
                Value::UInt(source),
                Value::UInt(partition),
                Value::UInt(offset),
            ] => {
                let source = u16::try_from(*source).map_err(|_| bad())?;
                let partition = u32::try_from(*partition).map_err(|_| bad())?;
                (record, id, (source, LogPosition { partition, offset: *offset }))
            }
            _ => return Err(bad()),
        };
        match record.as_ref() {
            EVENT_RECORD => {
                event_ids.insert(EventId::new(id));
            }
            ORDER_RECORD => {
                let text = |index: usize| match values.get(index) {
                    Some(Value::Text(text)) => Ok(text.clone()),
                    _ => Err(bad()),
                };
                let unsigned = |index: usize| match values.get(index) {
                    Some(Value::UInt(n)) => Ok(*n),
                    _ => Err(bad()),
                };
                let content = || -> Result<Arc<OrderContent>, String> {
                    let total_cents = match values.get(7) {
                        Some(Value::Int(n)) => *n,
                        _ => return Err(bad()),
                    };
                    let items: Vec<LineItem> =
                        serde_json::from_str(&text(8)?).map_err(|e| format!("{}: {e}", bad()))?;
                    Ok(Arc::new(OrderContent { line_items: items.into_boxed_slice(), total_cents }))
                };
                let change = match text(2)?.as_ref() {
                    "created" => {
                        let created_at = match values.get(6) {
                            Some(Value::Timestamp(at)) => *at,
                            _ => return Err(bad()),
                        };
                        let header = OrderHeader {
                            store_id: unsigned(3)?,
                            customer_id: unsigned(4)?,
                            currency: text(5)?.to_string(),
                            created_at,
                        };
                        OrderChange::Created(Arc::new(header), content()?)
                    }
                    "updated" => OrderChange::Updated(content()?),
                    "cancelled" => OrderChange::Cancelled,
                    _ => return Err(bad()),
                };
                let event_id = EventId::new(&text(1)?);
                witnesses.push((Arc::clone(id), OrderInput::Event(unsigned(0)?, position, event_id, change)));
            }
            _ => return Err(bad()),
        }
    }
    Ok((event_ids, witnesses))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(record: &str) -> (Row, Row) {
        (Row::from(vec![Value::Text(record.into())]), Row::from(Vec::new()))
    }

    /// A restart takes a restored witness away by the row it makes of it
    /// again: the row must be the one the snapshot holds, to the byte.
    #[test]
    fn a_witness_read_back_makes_the_same_row() {
        use projector_core::value::Timestamp;
        let item = |sku: &str, title: &str| LineItem {
            product_id: 7,
            sku: sku.into(),
            title: title.into(),
            quantity: 3,
            unit_price_cents: 1_999,
        };
        let content = Arc::new(OrderContent {
            line_items: vec![item("A-1", "plain"), item("B\\2", "\"quoted\"\ttab \u{1} é ✓ 😀 \u{7f}")].into(),
            total_cents: i64::MIN,
        });
        let header = Arc::new(OrderHeader {
            store_id: u64::MAX,
            customer_id: 0,
            currency: "EUR".into(),
            created_at: Timestamp(-1_234_567_890_123),
        });
        let at = |offset: u64| (3, LogPosition { partition: 11, offset });
        let inputs = [
            (
                "o-1",
                OrderInput::Event(0, at(5), EventId::new("e-1"), OrderChange::Created(header, Arc::clone(&content))),
            ),
            (
                "o-1",
                OrderInput::Event(
                    4,
                    at(9),
                    EventId::new("0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"),
                    OrderChange::Updated(content),
                ),
            ),
            ("o-2 \"x\"", OrderInput::Event(u64::MAX, at(0), EventId::new("e-3"), OrderChange::Cancelled)),
        ];
        let rows: Vec<(Row, Row)> = inputs
            .iter()
            .map(|(order_id, input)| witness_row(order_id, input).map(|(key, values)| (key.unpack(), values)).unwrap())
            .collect();
        let restored = restore(rows.clone()).unwrap();
        assert!(restored.event_ids.is_empty());
        assert_eq!(restored.rows, rows);
        let again: Vec<(Row, Row)> = restored
            .witnesses
            .iter()
            .map(|(order_id, input)| witness_row(order_id, input).map(|(key, values)| (key.unpack(), values)).unwrap())
            .collect();
        assert_eq!(again, rows);
        let witnesses: Vec<(Arc<str>, OrderInput)> =
            inputs.iter().map(|(order_id, input)| (Arc::from(*order_id), input.clone())).collect();
        assert_eq!(restored.witnesses, witnesses);
    }

    #[test]
    fn the_rows_are_split_at_half_the_work_not_half_the_rows() {
        // Ten `event_id`s, then two witnesses worth five each: the work is
        // half done after the ten.
        let rows: Vec<(Row, Row)> = (0..10).map(|_| row("event")).chain((0..2).map(|_| row("order"))).collect();
        assert_eq!(half_the_work(&rows), 10);
        // Witnesses first: they are half the work.
        let rows: Vec<(Row, Row)> = (0..2).map(|_| row("order")).chain((0..10).map(|_| row("event"))).collect();
        assert_eq!(half_the_work(&rows), 2);
        // Halving the rows would give one part 11 of the 14.
        let rows: Vec<(Row, Row)> = (0..4).map(|_| row("event")).chain((0..2).map(|_| row("order"))).collect();
        assert_eq!(half_the_work(&rows), 5);
        assert_eq!(half_the_work(&[]), 0);
        assert_eq!(half_the_work(&[row("event")]), 1);
    }
}
