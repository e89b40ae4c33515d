//! A view recomputed from the log with a plain fold, without the dataflow:
//! what `projector validate` compares the sinks with.
//!
//! The path is deliberately separate from the dataflow's: events are
//! decoded by the full decoder ([`decode_event`], not the borrowed fast
//! path the dataflow uses), deduplicated by `event_id` with one sort over
//! all copies (the dataflow splits that between the order fold and an
//! operator that keeps every `event_id`'s copies), grouped by order and by
//! view key in ordered maps, and each group aggregated once. What it
//! shares with the dataflow is the meaning of a view as declared: the
//! order fold rules ([`OrderState::fold`]) and the compiled expressions
//! and aggregates of the [`ViewPlan`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::event::{EventId, decode_event};
use crate::order::{OrderChange, OrderEvent, OrderState};
use crate::packed::PackedRow;
use crate::record::LogPosition;
use crate::relation::ValueRef;
use crate::sink::SourcePositions;
use crate::value::Row;
use crate::view::ViewPlan;

/// A place in the whole log: the source's index and the record's position.
type Place = (u16, LogPosition);

/// The events of a log prefix, as read.
#[derive(Debug, Default)]
pub struct Recomputation {
    /// Every copy of every valid event: its id, where it sits, and its
    /// effect on its order if it is an order event.
    copies: Vec<(EventId, Place, Option<OrderEvent>)>,
    /// Where each record that is not a valid event sits (it counts
    /// nowhere).
    bad: Vec<Place>,
    /// Records read.
    pub records: u64,
    /// Records that are not valid events.
    pub bad_records: u64,
}

/// Whether `place` comes before `target` (all places do when `None`).
fn before(target: Option<&SourcePositions>, (source, position): &Place) -> bool {
    target.is_none_or(|target| position.offset < target.get(*source, position.partition))
}

impl Recomputation {
    /// An empty log.
    pub fn new() -> Recomputation {
        Recomputation::default()
    }

    /// Adds the record at `position` of source number `source`.
    pub fn add(&mut self, source: u16, position: LogPosition, bytes: &[u8]) {
        self.records += 1;
        match decode_event(bytes) {
            Ok(event) => {
                let (event_id, order) = event.into_order_event();
                self.copies.push((event_id, (source, position), order));
            }
            Err(_) => {
                self.bad_records += 1;
                self.bad.push((source, position));
            }
        }
    }

    /// Records read before `target` (all when `None`).
    pub fn records_at(&self, target: Option<&SourcePositions>) -> u64 {
        let valid = self.copies.iter().filter(|(_, place, _)| before(target, place)).count();
        let bad = self.bad.iter().filter(|place| before(target, place)).count();
        (valid + bad) as u64
    }

    /// Every order's current state: each `event_id` counted once (its copy
    /// first in the log), orders without an `OrderCreated` left out.
    pub fn orders(&self) -> Vec<OrderState> {
        self.orders_at(None)
    }

    /// [`Recomputation::orders`] over the records before `target` (per
    /// source partition, the first offset left out; all records when
    /// `None`).
    pub fn orders_at(&self, target: Option<&SourcePositions>) -> Vec<OrderState> {
        let mut copies: Vec<&(EventId, Place, Option<OrderEvent>)> =
            self.copies.iter().filter(|(_, place, _)| before(target, place)).collect();
        copies.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        copies.dedup_by(|later, first| later.0 == first.0);
        let mut by_order: BTreeMap<&Arc<str>, Vec<(u64, Place, &OrderChange)>> = BTreeMap::new();
        for (_, place, order) in copies {
            if let Some(event) = order {
                by_order.entry(&event.order_id).or_default().push((event.sequence, *place, &event.change));
            }
        }
        by_order.into_iter().filter_map(|(order_id, events)| OrderState::fold(order_id, events)).collect()
    }

    /// The rows of `plan` over `orders` (from [`Recomputation::orders`]).
    pub fn view_of(&self, plan: &ViewPlan, orders: &[OrderState]) -> BTreeMap<Row, Row> {
        let mut groups: BTreeMap<PackedRow, Vec<PackedRow>> = BTreeMap::new();
        for order in orders {
            plan.relation.for_each_row(order, |row| {
                if let Some((key, inputs)) = plan.project(row) {
                    groups.entry(key).or_default().push(inputs);
                }
            });
        }
        groups
            .into_iter()
            .filter_map(|(key, inputs)| {
                let values = plan.aggregate(&key, inputs.iter().map(|input| (input, 1)))?;
                let key: Row = key.iter().map(ValueRef::to_value).collect::<Vec<_>>().into();
                Some((key, values))
            })
            .collect()
    }
}
