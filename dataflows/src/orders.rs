//! Events to order state, each `event_id` counted once: the copy first in
//! the log.
//!
//! Deduplication has two parts. Copies of an order event within its own
//! order (the usual redelivery) are resolved in the order fold. Every other
//! case (an `event_id` whose first copy is in another order, or is not an
//! order event at all) is found by [`stray_copies`], which groups all
//! events by `event_id` and retracts the copies that must not count. For a
//! well-behaved log it emits nothing and keeps no output state.

use std::sync::Arc;

use differential_dataflow::VecCollection;

use projector_core::event::EventId;
use projector_core::order::{OrderChange, OrderEvent, OrderState};

use crate::EventPosition;
use crate::decode::KeyedEvent;

/// An order event keyed by its `event_id`.
pub type KeyedOrderEvent = (EventId, (EventPosition, OrderEvent));

/// Order events whose `event_id` was first seen in another order or on an
/// event of another type: they must not count.
pub fn stray_copies<'scope>(events: VecCollection<'scope, u64, KeyedEvent>) -> VecCollection<'scope, u64, KeyedOrderEvent> {
    events.reduce_named(
        "StrayCopiesByEventId",
        |_event_id, copies: &[(&(EventPosition, Option<OrderEvent>), isize)], output| {
            // Values arrive sorted, and the position leads the value.
            let first_order = copies[0].0.1.as_ref().map(|event| &event.order_id);
            for (copy, _) in &copies[1..] {
                if let Some(event) = &copy.1
                    && first_order != Some(&event.order_id)
                {
                    output.push(((copy.0, event.clone()), 1));
                }
            }
        },
    )
}

/// Folds each order's events into its current state; orders whose
/// `OrderCreated` has not been seen yet have no state.
pub fn order_states<'scope>(events: VecCollection<'scope, u64, KeyedEvent>) -> VecCollection<'scope, u64, OrderState> {
    let strays = stray_copies(events.clone());
    events
        .flat_map(|(event_id, (position, event))| event.map(|event| (event_id, (position, event))))
        .concat(strays.negate())
        .map(|(event_id, (position, event))| (event.order_id, (event.sequence, position, event_id, event.change)))
        .reduce_named("OrderState", |order_id: &Arc<str>, events: &[(&OrderEventAt, isize)], output| {
            if let Some(state) = OrderState::fold(order_id, first_copies(events)) {
                output.push((state, 1));
            }
        })
        .map(|(_order_id, state)| state)
}

/// One event of an order: sequence, position, `event_id`, effect.
type OrderEventAt = (u64, EventPosition, EventId, OrderChange);

/// The events of one order with each `event_id` once: its copy first in
/// the log.
fn first_copies<'a>(events: &'a [(&'a OrderEventAt, isize)]) -> Vec<(u64, EventPosition, &'a OrderChange)> {
    let mut by_id: Vec<&OrderEventAt> = events.iter().filter(|(_, count)| *count > 0).map(|(event, _)| *event).collect();
    by_id.sort_by(|a, b| (&a.2, a.1).cmp(&(&b.2, b.1)));
    by_id.dedup_by(|later, first| later.2 == first.2);
    by_id.into_iter().map(|(sequence, position, _, change)| (*sequence, *position, change)).collect()
}
