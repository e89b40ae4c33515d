//! Order state to the rows of one declared view.
//!
//! Each order's relation rows are projected to a group key and measure
//! inputs. A group's aggregate is kept in pieces, each updated in time
//! proportional to the change, not to the group (a store's day can hold
//! thousands of orders):
//!
//! - totals (row count, and count and sum per input) are a vector-valued
//!   difference, consolidated by the arrangement itself (`explode`, `count`);
//! - extremes (`min`, `max`) and distinct counts (`count_distinct`) reduce
//!   over the group's distinct values, which the arrangement keeps once
//!   each however many rows repeat them.
//!
//! A final reduce per group, over at most a few pieces, assembles the row
//! with [`ViewPlan::finish`].

use std::sync::Arc;

use differential_dataflow::VecCollection;

use projector_core::order::OrderState;
use projector_core::packed::PackedRow;
use projector_core::value::{Row, Value};
use projector_core::view::{Partial, ViewPlan};

/// The view's rows as `(key, values)`.
pub fn view<'scope>(
    plan: Arc<ViewPlan>,
    orders: VecCollection<'scope, u64, OrderState>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    let projection = Arc::clone(&plan);
    let projected = orders.flat_map(move |order| {
        let mut rows = Vec::new();
        projection.relation.for_each_row(&order, |row| rows.extend(projection.project(row)));
        rows
    });

    let totals_plan = Arc::clone(&plan);
    let mut partials = projected
        .clone()
        .explode(move |(key, inputs)| {
            let totals = totals_plan.totals(&inputs);
            Some((key, totals))
        })
        .count()
        .map(|(key, totals)| (key, Partial::Totals(totals)));

    let extreme_slots = plan.extreme_slots();
    let distinct_slots = plan.distinct_slots();
    let mut value_slots: Vec<usize> = extreme_slots.iter().chain(&distinct_slots).copied().collect();
    value_slots.sort_unstable();
    value_slots.dedup();
    if !value_slots.is_empty() {
        let values = projected
            .flat_map(move |(key, inputs)| slot_values(&key, &inputs, &value_slots))
            .reduce_named(&format!("Values of {}", plan.name), move |_key, values: &[(&(u16, Value), isize)], output| {
                // Values arrive sorted by slot, then value, each once.
                let mut index = 0;
                while index < values.len() {
                    let slot = values[index].0.0;
                    let end = values[index..].iter().position(|((s, _), _)| *s != slot).map_or(values.len(), |n| index + n);
                    if extreme_slots.contains(&usize::from(slot)) {
                        let (min, max) = (values[index].0.1.clone(), values[end - 1].0.1.clone());
                        output.push((Partial::Extremes { slot, min, max }, 1));
                    }
                    if distinct_slots.contains(&usize::from(slot)) {
                        output.push((Partial::Distinct { slot, count: (end - index) as u64 }, 1));
                    }
                    index = end;
                }
            });
        partials = partials.concat(values);
    }

    partials.reduce_named(&format!("View {}", plan.name), move |key: &PackedRow, parts: &[(&Partial, isize)], output| {
        let parts = parts.iter().filter(|(_, count)| *count > 0).map(|(part, _)| *part);
        if let Some(values) = plan.finish(key, parts) {
            output.push((values, 1));
        }
    })
}

/// The non-null values of some slots of a projected row, with the key.
fn slot_values(key: &PackedRow, inputs: &PackedRow, slots: &[usize]) -> Vec<(PackedRow, (u16, Value))> {
    inputs
        .iter()
        .enumerate()
        .filter(|(slot, value)| slots.contains(slot) && *value != projector_core::relation::ValueRef::Null)
        .map(|(slot, value)| (key.clone(), (slot as u16, value.to_value())))
        .collect()
}
