//! Order events to order state, each event counted once.
//!
//! Deduplication by `event_id` has two parts. Copies of an event within its
//! own order (the usual redelivery) are resolved in the order fold: the
//! copy first in the log counts. Copies of one `event_id` in different
//! orders are found by [`stray_copies`], grouped by `event_id`; all but the
//! first in the log are retracted before the fold. That grouping emits
//! nothing for well-behaved logs, so it keeps no output state.

use std::sync::Arc;

use differential_dataflow::VecCollection;

use projector_core::order::{OrderChange, OrderEvent, OrderState};

use crate::EventPosition;
use crate::decode::KeyedEvent;

/// The copies of an `event_id` that lie in another order than its first
/// copy in the log. They must not count.
pub fn stray_copies<'scope>(events: VecCollection<'scope, u64, KeyedEvent>) -> VecCollection<'scope, u64, KeyedEvent> {
    events.reduce_named("StrayCopiesByEventId", |_event_id, copies: &[(&(EventPosition, OrderEvent), isize)], output| {
        // Values arrive sorted, and the position leads the value.
        let first_order = &copies[0].0.1.order_id;
        for (copy, _) in &copies[1..] {
            if copy.1.order_id != *first_order {
                output.push(((*copy).clone(), 1));
            }
        }
    })
}

/// Folds each order's events into its current state; orders whose
/// `OrderCreated` has not been seen yet have no state.
pub fn order_states<'scope>(events: VecCollection<'scope, u64, KeyedEvent>) -> VecCollection<'scope, u64, OrderState> {
    let strays = stray_copies(events.clone());
    events
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
type OrderEventAt = (u64, EventPosition, Arc<str>, OrderChange);

/// The events of one order with each `event_id` once: its copy first in
/// the log.
fn first_copies<'a>(events: &'a [(&'a OrderEventAt, isize)]) -> Vec<(u64, EventPosition, &'a OrderChange)> {
    let mut by_id: Vec<&OrderEventAt> = events.iter().filter(|(_, count)| *count > 0).map(|(event, _)| *event).collect();
    by_id.sort_by(|a, b| (&a.2, a.1).cmp(&(&b.2, b.1)));
    by_id.dedup_by(|later, first| later.2 == first.2);
    by_id.into_iter().map(|(sequence, position, _, change)| (*sequence, *position, change)).collect()
}

/// Keeps one event per `event_id` as a collection of its own (used by
/// tests and tools that need the deduplicated log itself).
pub fn dedup<'scope>(events: VecCollection<'scope, u64, KeyedEvent>) -> VecCollection<'scope, u64, (EventPosition, OrderEvent)> {
    events
        .reduce_named("DedupByEventId", |_event_id, copies, output| {
            output.push((copies[0].0.clone(), 1));
        })
        .map(|(_event_id, event)| event)
}
