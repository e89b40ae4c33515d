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
//! A restart feeds the `event` rows in as copies that touch no order (so
//! any later copy of the same `event_id` does not count, as before) and
//! the `order` rows straight into the order fold, then reads the log from
//! the snapshot's positions on. Views are computed from order state alone,
//! so a snapshot serves any set of views, also ones added since.

use std::sync::Arc;

use differential_dataflow::VecCollection;

use projector_core::event::EventId;
use projector_core::order::{LineItem, OrderChange, OrderContent, OrderHeader};
use projector_core::packed::PackedRow;
use projector_core::record::LogPosition;
use projector_core::value::{FieldType, Row, Value};

use crate::EventPosition;
use crate::decode::KeyedEvent;
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

/// The first copy of every `event_id`, as state rows.
pub fn first_copies<'scope>(
    events: VecCollection<'scope, u64, KeyedEvent>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    events
        .map(|(event_id, (position, _))| (event_id, position))
        .reduce_named("FirstCopies", |_event_id, copies: &[(&EventPosition, isize)], output| {
            output.push((*copies[0].0, 1));
        })
        .map(|(event_id, position)| (key("event", event_id.to_string(), position), Row::from(vec![Value::Null; 9])))
}

/// Order witnesses as state rows.
pub fn witness_rows<'scope>(
    witnesses: VecCollection<'scope, u64, (Arc<str>, OrderInput)>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    witnesses.flat_map(|(order_id, input)| {
        let OrderInput::Event(sequence, position, event_id, change) = input else { return None };
        let mut values = vec![Value::UInt(sequence), Value::Text(event_id.to_string().into())];
        let (kind, header, content) = match &change {
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
        Some((key("order", order_id.to_string(), position), Row::from(values)))
    })
}

/// What a snapshot's rows restore: the `event_id` copies to feed in as
/// events that touch no order, and the order witnesses for the fold.
pub type Restored = (Vec<KeyedEvent>, Vec<(Arc<str>, OrderInput)>);

/// Reads state rows back (see [`state_fields`]).
pub fn restore<'a>(rows: impl IntoIterator<Item = (&'a Row, &'a Row)>) -> Result<Restored, String> {
    let mut events = Vec::new();
    let mut orders = Vec::new();
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
                (record.as_ref(), id, (source, LogPosition { partition, offset: *offset }))
            }
            _ => return Err(bad()),
        };
        match record {
            "event" => events.push((EventId::new(id), (position, None))),
            "order" => {
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
                orders.push((Arc::clone(id), OrderInput::Event(unsigned(0)?, position, event_id, change)));
            }
            _ => return Err(bad()),
        }
    }
    Ok((events, orders))
}
