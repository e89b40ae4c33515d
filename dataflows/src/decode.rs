//! Records to events and dead letters, at the input boundary.
//!
//! The runtime decodes each record as its reader hands it over (borrowed,
//! without a copy), on the worker that read it, so decoding spreads over
//! workers with the input. Valid events enter the dataflow keyed by
//! `event_id`; events that do not touch order state (`InventoryReserved`,
//! `PaymentInitiated`) enter without a body, since their `event_id` still
//! counts as seen. A bad record becomes a [`DeadLetter`] with a copy of its
//! bytes and travels the dead-letter path as data.

use projector_core::event::{EventId, decode_order_event};
use projector_core::order::OrderEvent;
use projector_core::record::{DeadLetter, RecordRef};
use projector_core::value::Timestamp;

use crate::EventPosition;

/// A valid event keyed by its `event_id`, with its place in the log and,
/// for order events, its effect on the order.
pub type KeyedEvent = (EventId, (EventPosition, Option<OrderEvent>));

/// Decodes one record of source number `source`: the event, and when it
/// occurred (for the freshness of the views).
pub fn decode_record(source: u16, record: RecordRef<'_>) -> Result<(KeyedEvent, Timestamp), DeadLetter> {
    match decode_order_event(record.bytes) {
        Ok((event_id, order_event, occurred_at)) => {
            Ok(((event_id, ((source, record.position), order_event)), occurred_at))
        }
        Err(bad) => Err(DeadLetter {
            source,
            position: record.position,
            key: record.key.map(<[u8]>::to_vec),
            bytes: record.bytes.to_vec(),
            kind: bad.kind,
            reason: bad.reason,
        }),
    }
}
