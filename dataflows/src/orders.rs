//! Order events to order state.

use differential_dataflow::VecCollection;

use projector_core::order::{OrderChange, OrderEvent, OrderState};

use crate::EventPosition;
use crate::decode::KeyedEvent;

/// Keeps one event per `event_id`: the one first in the log. A redelivered
/// event changes nothing.
pub fn dedup<'scope>(events: VecCollection<'scope, u64, KeyedEvent>) -> VecCollection<'scope, u64, (EventPosition, OrderEvent)> {
    events
        .reduce_named("DedupByEventId", |_event_id, copies, output| {
            // Values arrive sorted, and the position leads the value.
            output.push((copies[0].0.clone(), 1));
        })
        .map(|(_event_id, event)| event)
}

/// Folds each order's events into its current state; orders whose
/// `OrderCreated` has not been seen yet have no state.
pub fn order_states<'scope>(
    events: VecCollection<'scope, u64, (EventPosition, OrderEvent)>,
) -> VecCollection<'scope, u64, OrderState> {
    events
        .map(|(position, event)| (event.order_id, (event.sequence, position, event.change)))
        .reduce_named("OrderState", |order_id: &String, events: &[(&(u64, EventPosition, OrderChange), isize)], output| {
            let events = events.iter().map(|((sequence, position, change), _)| (*sequence, *position, change));
            if let Some(state) = OrderState::fold(order_id, events) {
                output.push((state, 1));
            }
        })
        .map(|(_order_id, state)| state)
}
