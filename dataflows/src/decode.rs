//! Raw records to order events and dead letters.
//!
//! Decoding runs on the worker that read the record (no exchange), so it
//! spreads over workers with the input. Events that do not touch order
//! state (`InventoryReserved`, `PaymentInitiated`) are validated and then
//! leave the graph; bad records leave it as dead letters.

use std::sync::Arc;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::StreamVec;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;

use projector_core::event::decode_event;
use projector_core::order::OrderEvent;
use projector_core::record::{DeadLetter, RawRecord};

use crate::EventPosition;

/// An order event keyed by its `event_id`, with its place in the log.
pub type KeyedEvent = (Arc<str>, (EventPosition, OrderEvent));

/// Splits raw records (as `(record, time, diff)` updates) into order events
/// and dead letters.
pub fn decode<'scope>(
    records: StreamVec<'scope, u64, (RawRecord, u64, isize)>,
) -> (VecCollection<'scope, u64, KeyedEvent>, StreamVec<'scope, u64, DeadLetter>) {
    let (events, dead_letters) = records
        .flat_map(|(record, time, diff)| match decode_event(&record.bytes) {
            Ok(event) => {
                let position = (record.source, record.position);
                event.into_order_event().map(|(event_id, order_event)| Ok(((event_id, (position, order_event)), time, diff)))
            }
            Err(bad) => Some(Err(DeadLetter {
                source: record.source,
                position: record.position,
                bytes: record.bytes,
                kind: bad.kind,
                reason: bad.reason,
            })),
        })
        .ok_err::<Vec<_>, _, Vec<_>, _, _>(|result| result);
    (events.as_collection(), dead_letters)
}
