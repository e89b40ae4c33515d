//! Order state to the rows of one declared view.

use std::sync::Arc;

use differential_dataflow::VecCollection;

use projector_core::order::OrderState;
use projector_core::packed::PackedRow;
use projector_core::value::Row;
use projector_core::view::ViewPlan;

/// The view's rows as `(key, values)`: each order's relation rows are
/// projected to a group key and measure inputs (packed), and each group
/// folds into one row.
pub fn view<'scope>(
    plan: Arc<ViewPlan>,
    orders: VecCollection<'scope, u64, OrderState>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    let projection = Arc::clone(&plan);
    orders
        .flat_map(move |order| {
            let mut rows = Vec::new();
            projection.relation.for_each_row(&order, |row| rows.extend(projection.project(row)));
            rows
        })
        .reduce_named(&format!("View {}", plan.name), move |key: &PackedRow, inputs: &[(&PackedRow, isize)], output| {
            let inputs = inputs.iter().map(|(values, count)| (*values, *count as i64));
            if let Some(values) = plan.aggregate(key, inputs) {
                output.push((values, 1));
            }
        })
}
