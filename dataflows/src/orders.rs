//! Events to order state, each `event_id` counted once: the copy first in
//! the log.
//!
//! Deduplication has two parts. Copies of an order event within its own
//! order (the usual redelivery) are resolved in the order fold. Every other
//! case (an `event_id` whose first copy is in another order, or is not an
//! order event at all) is found by [`stray_copies`], which groups all
//! events by `event_id`, keeping only their positions and orders, and tells
//! the fold which copies to ignore. For a well-behaved log it emits nothing.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

use projector_core::event::EventId;
use projector_core::order::{OrderChange, OrderState};

use crate::EventPosition;
use crate::decode::KeyedEvent;

/// One copy of an event: its position, and its order if it is an order event.
type EventCopy = (EventPosition, Option<Arc<str>>);

/// For each order, the positions of copies in it that must not count:
/// their `event_id` was first seen in another order or on an event of
/// another type.
pub fn stray_copies<'scope>(
    events: VecCollection<'scope, u64, KeyedEvent>,
) -> VecCollection<'scope, u64, (Arc<str>, EventPosition)> {
    events
        .map(|(event_id, (position, event))| (event_id, (position, event.map(|e| e.order_id))))
        .reduce_named("StrayCopiesByEventId", |_event_id, copies: &[(&EventCopy, isize)], output| {
            // Values arrive sorted, and the position leads the value.
            let first_order = copies[0].0.1.as_ref();
            for (copy, _) in &copies[1..] {
                if let Some(order_id) = &copy.1
                    && first_order != Some(order_id)
                {
                    output.push(((Arc::clone(order_id), copy.0), 1));
                }
            }
        })
        .map(|(_event_id, stray)| stray)
}

/// What the order fold reads: the order's events, and the positions of
/// copies it must ignore.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OrderInput {
    /// An event of the order: sequence, position, `event_id`, effect.
    Event(u64, EventPosition, EventId, OrderChange),
    /// A copy at this position does not count.
    Ignore(EventPosition),
}

/// What the order fold reads, by order: each order event, the copies to
/// ignore, and `restored` (the witnesses of a state snapshot, see
/// [`order_witnesses`]).
pub fn order_inputs<'scope>(
    events: VecCollection<'scope, u64, KeyedEvent>,
    restored: VecCollection<'scope, u64, (Arc<str>, OrderInput)>,
) -> VecCollection<'scope, u64, (Arc<str>, OrderInput)> {
    let ignored = stray_copies(events.clone()).map(|(order_id, position)| (order_id, OrderInput::Ignore(position)));
    events
        .flat_map(|(event_id, (position, event))| {
            event.map(|e| (e.order_id, OrderInput::Event(e.sequence, position, event_id, e.change)))
        })
        .concat(ignored)
        .concat(restored)
}

/// Folds each order's inputs into its current state; orders whose
/// `OrderCreated` has not been seen yet have no state.
pub fn order_states<'scope>(
    inputs: VecCollection<'scope, u64, (Arc<str>, OrderInput)>,
) -> VecCollection<'scope, u64, OrderState> {
    inputs
        .reduce_named("OrderState", |order_id: &Arc<str>, inputs: &[(&OrderInput, isize)], output| {
            let events =
                counted_events(inputs).into_iter().map(|(sequence, position, _, change)| (sequence, position, change));
            if let Some(state) = OrderState::fold(order_id, events) {
                output.push((state, 1));
            }
        })
        .map(|(_order_id, state)| state)
}

/// For each order, the few counted events its state rests on: the
/// `OrderCreated` that gives the header (lowest sequence, then earliest),
/// the event that gives the content (highest sequence, then earliest), and
/// the earliest `OrderCancelled`. The fold picks a least or greatest
/// element on each count, so folding these with any later events gives
/// the same state as folding every event: a state snapshot keeps only
/// them.
pub fn order_witnesses<'scope>(
    inputs: VecCollection<'scope, u64, (Arc<str>, OrderInput)>,
) -> VecCollection<'scope, u64, (Arc<str>, OrderInput)> {
    inputs.reduce_named("OrderWitnesses", |_order_id: &Arc<str>, inputs: &[(&OrderInput, isize)], output| {
        let events = counted_events(inputs);
        let header = events
            .iter()
            .filter(|(_, _, _, change)| matches!(change, OrderChange::Created(..)))
            .min_by_key(|(sequence, position, _, _)| (*sequence, *position));
        let content = events
            .iter()
            .filter(|(_, _, _, change)| !matches!(change, OrderChange::Cancelled))
            .max_by_key(|(sequence, position, _, _)| (*sequence, std::cmp::Reverse(*position)));
        let cancel = events
            .iter()
            .filter(|(_, _, _, change)| matches!(change, OrderChange::Cancelled))
            .min_by_key(|(_, position, _, _)| *position);
        let mut kept: Vec<&(u64, EventPosition, &EventId, &OrderChange)> =
            [header, content, cancel].into_iter().flatten().collect();
        kept.sort_by_key(|(_, position, _, _)| *position);
        kept.dedup_by_key(|(_, position, _, _)| *position);
        for (sequence, position, event_id, change) in kept {
            output.push((OrderInput::Event(*sequence, *position, (*event_id).clone(), (*change).clone()), 1));
        }
    })
}

/// The events of one order that count: not ignored, and each `event_id`
/// once (its copy first in the log).
fn counted_events<'a>(
    inputs: &'a [(&'a OrderInput, isize)],
) -> Vec<(u64, EventPosition, &'a EventId, &'a OrderChange)> {
    let ignored: Vec<EventPosition> = inputs
        .iter()
        .filter_map(|(input, _)| match input {
            OrderInput::Ignore(position) => Some(*position),
            OrderInput::Event(..) => None,
        })
        .collect();
    let mut events: Vec<(&EventId, EventPosition, u64, &OrderChange)> = inputs
        .iter()
        .filter(|(_, count)| *count > 0)
        .filter_map(|(input, _)| match input {
            OrderInput::Event(sequence, position, event_id, change) if !ignored.contains(position) => {
                Some((event_id, *position, *sequence, change))
            }
            _ => None,
        })
        .collect();
    events.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    events.dedup_by(|later, first| later.0 == first.0);
    events.into_iter().map(|(event_id, position, sequence, change)| (sequence, position, event_id, change)).collect()
}
