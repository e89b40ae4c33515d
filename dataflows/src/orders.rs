//! Events to order state, each `event_id` counted once: the copy first in
//! the log.
//!
//! Deduplication has two parts. Copies of an order event within its own
//! order (the usual redelivery) are resolved in the order fold. Every other
//! case (an `event_id` whose first copy is in another order, or is not an
//! order event at all) is found by [`dedup`], which keeps the copies of
//! every `event_id` (only their positions and orders) and tells the fold
//! which copies to ignore. For a well-behaved log it emits nothing.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use serde::{Deserialize, Serialize};

use projector_core::event::EventId;
use projector_core::order::{OrderChange, OrderState};
use projector_core::packed::PackedRow;
use projector_core::relation::ValueRef;
use projector_core::sink::SourcePositions;

use crate::EventPosition;
use crate::decode::KeyedEvent;
use crate::dedup::{Dedup, dedup};

/// An order id as the key the fold is arranged by: packed, so that a short
/// id (most are) is held inline and the arrangement's seeks and merges
/// compare it without following a pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderKey(PackedRow);

impl OrderKey {
    fn new(order_id: &str) -> OrderKey {
        OrderKey(PackedRow::pack([ValueRef::Text(order_id)]))
    }

    fn order_id(&self) -> Arc<str> {
        match self.0.iter().next() {
            Some(ValueRef::Text(text)) => text.into(),
            _ => "".into(),
        }
    }
}

/// A collection arranged by key, for several reductions to share.
type ByKey<'scope, K, V> = Arranged<'scope, TraceAgent<ValSpine<K, V, u64, isize>>>;

/// `reduce_named` over an arrangement that other reductions share (one
/// copy of the input, not one per reduction).
fn reduce_shared<'scope, K, V, V2, L>(
    arranged: ByKey<'scope, K, V>,
    name: &str,
    logic: L,
) -> VecCollection<'scope, u64, (K, V2)>
where
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
    V2: differential_dataflow::Data,
    L: FnMut(&K, &[(&V, isize)], &mut Vec<(V2, isize)>) + 'static,
{
    arranged
        .reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<K, V2, _, _>, _, _>(name, logic, |vec, key, updates| {
            vec.clear();
            vec.extend(updates.drain(..).map(|(value, time, diff)| ((key.clone(), value), time, diff)));
        })
        .as_collection(|key, value| (key.clone(), value.clone()))
}

/// The order side of the graph.
pub struct OrderGraph<'scope> {
    /// Every order's current state.
    pub states: VecCollection<'scope, u64, OrderState>,
    /// For state snapshots: the first copy of every `event_id`.
    pub first_copies: Option<VecCollection<'scope, u64, (EventId, EventPosition)>>,
    /// For state snapshots: each order's witnesses ([`order_witnesses`]),
    /// less the restored ones.
    pub witnesses: Option<VecCollection<'scope, u64, (Arc<str>, OrderInput)>>,
}

/// Events (and `restored`, the witnesses of a state snapshot taken at
/// `restored_at`) to order states; with `snapshots`, also what a state
/// snapshot keeps. The reductions of one key share its arrangement.
pub fn order_graph<'scope>(
    events: VecCollection<'scope, u64, KeyedEvent>,
    restored: VecCollection<'scope, u64, (Arc<str>, OrderInput)>,
    restored_at: Option<Arc<SourcePositions>>,
    snapshots: bool,
) -> OrderGraph<'scope> {
    let deduped = dedup(events.clone(), snapshots);
    let first_copies = snapshots.then(|| {
        deduped.clone().flat_map(|out| match out {
            Dedup::First(event_id, position) => Some((event_id, position)),
            Dedup::Stray(..) => None,
        })
    });
    let ignored = deduped.flat_map(|out| match out {
        Dedup::Stray(order_id, position) => Some((OrderKey::new(&order_id), OrderInput::Ignore(position))),
        Dedup::First(..) => None,
    });
    let inputs = events
        .flat_map(|(event_id, (position, event))| {
            event.map(|e| (OrderKey::new(&e.order_id), OrderInput::Event(e.sequence, position, event_id, e.change)))
        })
        .concat(ignored)
        .concat(restored.map(|(order_id, input)| (OrderKey::new(&order_id), input)))
        .arrange_by_key_named("Arrange: OrderInputs");
    let witnesses =
        snapshots.then(|| order_witnesses(inputs.clone(), restored_at).map(|(key, input)| (key.order_id(), input)));
    OrderGraph { states: order_states(inputs), first_copies, witnesses }
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

/// Folds each order's inputs into its current state; orders whose
/// `OrderCreated` has not been seen yet have no state.
fn order_states<'scope>(inputs: ByKey<'scope, OrderKey, OrderInput>) -> VecCollection<'scope, u64, OrderState> {
    reduce_shared(inputs, "OrderState", |key: &OrderKey, inputs: &[(&OrderInput, isize)], output| {
        let events =
            counted_events(inputs).into_iter().map(|(sequence, position, _, change)| (sequence, position, change));
        if let Some(state) = OrderState::fold(&key.order_id(), events) {
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
///
/// After a restart from a snapshot taken at `restored_at`, the inputs
/// before it are the snapshot's witnesses, whose rows the next snapshot
/// takes as they were read. The witnesses of an order are their own
/// witnesses, so an order with no event since has nothing to output; for
/// the others the output is what changed: a new witness added, a restored
/// one no longer a witness taken away (count -1).
pub fn order_witnesses<'scope>(
    inputs: ByKey<'scope, OrderKey, OrderInput>,
    restored_at: Option<Arc<SourcePositions>>,
) -> VecCollection<'scope, u64, (OrderKey, OrderInput)> {
    let restored =
        move |(source, position): &EventPosition| restored_at.as_ref().is_some_and(|at| at.before(*source, *position));
    reduce_shared(inputs, "OrderWitnesses", move |_key: &OrderKey, inputs: &[(&OrderInput, isize)], output| {
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
        for (sequence, position, event_id, change) in &kept {
            if !restored(position) {
                output.push((OrderInput::Event(*sequence, *position, (*event_id).clone(), (*change).clone()), 1));
            }
        }
        for (input, count) in inputs {
            if let OrderInput::Event(_, position, _, _) = input
                && *count > 0
                && restored(position)
                && !kept.iter().any(|(_, kept_at, _, _)| kept_at == position)
            {
                output.push(((*input).clone(), -1));
            }
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
