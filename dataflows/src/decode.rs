//! Raw records to order events and dead letters.
//!
//! Decoding runs on the worker that read the record (no exchange), so it
//! spreads over workers with the input. Events that do not touch order
//! state (`InventoryReserved`, `PaymentInitiated`) go on without a body:
//! their `event_id` still counts as seen. Bad records leave as dead letters.

use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;

use projector_core::event::decode_event;
use projector_core::order::OrderEvent;
use projector_core::record::{DeadLetter, RawRecord};

use crate::EventPosition;

/// A valid event keyed by its `event_id`, with its place in the log and,
/// for order events, its effect on the order.
pub type KeyedEvent = (Arc<str>, (EventPosition, Option<OrderEvent>));

/// Splits raw records (as `(record, time, diff)` updates) into order events
/// and dead letters.
pub fn decode<'scope>(
    records: StreamVec<'scope, u64, (RawRecord, u64, isize)>,
) -> (VecCollection<'scope, u64, KeyedEvent>, StreamVec<'scope, u64, DeadLetter>) {
    let (events, dead_letters) = records
        .map(|(record, time, diff)| match decode_event(&record.bytes) {
            Ok(event) => {
                let position = (record.source, record.position);
                let (event_id, order_event) = event.into_order_event();
                Ok(((event_id, (position, order_event)), time, diff))
            }
            Err(bad) => Err(DeadLetter {
                source: record.source,
                position: record.position,
                bytes: record.bytes,
                kind: bad.kind,
                reason: bad.reason,
            }),
        })
        .ok_err::<Vec<_>, _, Vec<_>, _, _>(|result| result);
    (events.as_collection(), dead_letters)
}
