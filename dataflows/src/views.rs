//! Order state to the rows of one declared view.
//!
//! Each order's relation rows are projected to a group key and measure
//! inputs, and each group folds into one row. A view with `buckets` above 1
//! folds in two steps: its rows are spread over buckets
//! (`ViewPlan::bucket`), each bucket folds into a partial aggregate, and the
//! partials of a group combine into its row; a change to a large group (a
//! store's day, thousands of orders) then rescans one bucket and the
//! partials instead of the whole group.

use std::sync::Arc;

use differential_dataflow::VecCollection;

use projector_core::order::OrderState;
use projector_core::packed::PackedRow;
use projector_core::value::Row;
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
    if plan.buckets <= 1 {
        return projected.reduce_named(
            &format!("View {}", plan.name),
            move |key: &PackedRow, inputs: &[(&PackedRow, isize)], output| {
                let inputs = inputs.iter().map(|(values, count)| (*values, *count as i64));
                if let Some(values) = plan.aggregate(key, inputs) {
                    output.push((values, 1));
                }
            },
        );
    }
    let bucket_plan = Arc::clone(&plan);
    let partial_plan = Arc::clone(&plan);
    projected
        .map(move |(key, inputs)| {
            let bucket = bucket_plan.bucket(&inputs);
            ((key, bucket), inputs)
        })
        .reduce_named(
            &format!("Buckets of {}", plan.name),
            move |_key: &(PackedRow, u16), inputs: &[(&PackedRow, isize)], output| {
                let inputs = inputs.iter().map(|(values, count)| (*values, *count as i64));
                output.push((partial_plan.partial(inputs), 1));
            },
        )
        // The bucket stays in the value: two buckets with equal partials
        // must both count.
        .map(|((key, bucket), partial)| (key, (bucket, partial)))
        .reduce_named(
            &format!("View {}", plan.name),
            move |key: &PackedRow, partials: &[(&(u16, Partial), isize)], output| {
                let partials = partials.iter().filter(|(_, count)| *count > 0).map(|((_, partial), _)| partial);
                if let Some(values) = plan.combine(key, partials) {
                    output.push((values, 1));
                }
            },
        )
}
