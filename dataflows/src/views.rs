//! Order state to the rows of one declared view.
//!
//! Each order's relation rows are projected to a group key and measure
//! inputs, and each group folds into one row. A view with `buckets` above 1
//! folds in two steps: its rows are spread over buckets
//! (`ViewPlan::bucket`), each bucket folds into a partial aggregate, and the
//! partials of a group combine into its row; a change to a large group (a
//! store's day, thousands of orders) then rescans one bucket and the
//! partials instead of the whole group.
//!
//! A view whose measures all add up (`count`, `sum`, `avg`,
//! `count_distinct: order_id`; see `ViewPlan::added_up`) needs neither: each
//! order's rows of a group become one vector of sums, carried as the
//! update's difference, so differential adds them up as it consolidates and
//! a group's fold reads one total, however many orders it has.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use projector_core::order::OrderState;
use projector_core::packed::PackedRow;
use projector_core::value::Row;
use projector_core::view::{AddedUp, Partial, ViewPlan};

/// The view's rows as `(key, values)`.
pub fn view<'scope>(
    plan: Arc<ViewPlan>,
    orders: VecCollection<'scope, u64, OrderState>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    if let Some(added_up) = plan.added_up() {
        match added_up.sums.len() {
            0..=4 => return added_up_view::<4>(plan, added_up, orders),
            5..=8 => return added_up_view::<8>(plan, added_up, orders),
            _ => {}
        }
    }
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

/// The rows of a view that folds by adding up, with at most `N` sums.
fn added_up_view<'scope, const N: usize>(
    plan: Arc<ViewPlan>,
    added_up: AddedUp,
    orders: VecCollection<'scope, u64, OrderState>,
) -> VecCollection<'scope, u64, (PackedRow, Row)> {
    let added_up = Arc::new(added_up);
    let (projection, adder) = (Arc::clone(&plan), Arc::clone(&added_up));
    orders
        .explode(move |order| {
            let groups = projection.added_up_groups::<Sums<N>>(&adder, &order);
            groups.into_iter().map(|(key, sums)| ((key, ()), sums))
        })
        .reduce_named(&format!("View {}", plan.name), move |key: &PackedRow, total: &[(&(), Sums<N>)], output| {
            if let Some(values) = total.first().and_then(|(_, sums)| plan.finish_sums(&added_up, key, &sums.0)) {
                output.push((values, 1));
            }
        })
}

/// The sums one order adds to one group, and their totals: differential
/// adds them as differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Sums<const N: usize>([i128; N]);

impl<const N: usize> Default for Sums<N> {
    fn default() -> Self {
        Sums([0; N])
    }
}

impl<const N: usize> AsMut<[i128]> for Sums<N> {
    fn as_mut(&mut self) -> &mut [i128] {
        &mut self.0
    }
}

impl<const N: usize> IsZero for Sums<N> {
    fn is_zero(&self) -> bool {
        self.0.iter().all(|sum| *sum == 0)
    }
}

impl<const N: usize> Semigroup for Sums<N> {
    fn plus_equals(&mut self, rhs: &Self) {
        for (sum, other) in self.0.iter_mut().zip(&rhs.0) {
            *sum = sum.wrapping_add(*other);
        }
    }
}

impl<const N: usize> Monoid for Sums<N> {
    fn zero() -> Self {
        Sums::default()
    }
}

impl<const N: usize> Abelian for Sums<N> {
    fn negate(&mut self) {
        for sum in &mut self.0 {
            *sum = sum.wrapping_neg();
        }
    }
}

impl<const N: usize> Multiply<isize> for Sums<N> {
    type Output = Sums<N>;

    fn multiply(mut self, count: &isize) -> Sums<N> {
        for sum in &mut self.0 {
            *sum = sum.wrapping_mul(*count as i128);
        }
        self
    }
}

// Arrays of any length have no serde implementation: a slice out, a
// vector of the right length in.
impl<const N: usize> Serialize for Sums<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.as_slice().serialize(serializer)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Sums<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let sums = Vec::<i128>::deserialize(deserializer)?;
        let length = sums.len();
        sums.try_into().map(Sums).map_err(|_| serde::de::Error::invalid_length(length, &"the view's number of sums"))
    }
}
