//! A view compiled from its YAML declaration: how a relation row maps to a
//! group and measure inputs, and how a group's inputs fold into a row.
//!
//! The dataflow calls [`ViewPlan::project`] on every relation row and
//! [`ViewPlan::aggregate`] on every changed group; everything a view means is
//! in these two functions, so a view is data, not code.

use std::collections::BTreeSet;

use crate::config::expr::{Evaluated, Expr, FieldSource};
use crate::config::model::MeasureFunction;
use crate::order::OrderState;
use crate::packed::PackedRow;
use crate::relation::{Relation, RowRef, ValueRef};
use crate::value::{FieldType, Row, Value};

impl<'a> FieldSource<'a> for RowRef<'a> {
    fn field(&self, index: usize) -> ValueRef<'a> {
        self.get(index)
    }

    fn field_owned(&self, index: usize) -> Value {
        self.get_owned(index)
    }
}

/// The query parameters of `GET /v1/views/<view>` that page through its
/// rows; no key field may take one of these names.
pub const PAGING_PARAMETERS: [&str; 2] = ["limit", "after"];

/// A compiled view.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewPlan {
    /// The view's name.
    pub name: String,
    /// The relation it reads.
    pub relation: Relation,
    /// Rows that fail this do not count at all.
    pub filter: Option<Expr>,
    /// The group-by keys, in output order.
    pub keys: Vec<KeyPlan>,
    /// The measures, in output order, after the keys.
    pub measures: Vec<MeasurePlan>,
    /// The labels, in output order, after the measures.
    pub labels: Vec<LabelPlan>,
    /// Output rows that fail this are left out.
    pub having: Option<Expr>,
    /// Buckets each group's rows are spread over (1: aggregate each group
    /// in one step). See [`ViewPlan::bucket`].
    pub buckets: u16,
    /// The distinct measure inputs: measures that read the same expression
    /// under the same `where` share one slot of the projected row.
    pub slots: Vec<Slot>,
}

/// One measure input of a projected row: `input` if the row meets
/// `filter`, else null (`input: None` gives `true`, for counting).
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// What the slot holds for a row that meets the filter.
    pub input: Option<Expr>,
    /// The measure's `where`.
    pub filter: Option<Expr>,
}

/// A compiled group-by key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyPlan {
    /// Output field name.
    pub name: String,
    /// Computes the key from a relation row.
    pub expr: Expr,
    /// Its type.
    pub ty: FieldType,
}

/// A compiled measure.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasurePlan {
    /// Output field name.
    pub name: String,
    /// The aggregate.
    pub function: MeasureFunction,
    /// Its argument (`None` for `count`).
    pub input: Option<Expr>,
    /// Only rows meeting this count in this measure.
    pub filter: Option<Expr>,
    /// The output type.
    pub ty: FieldType,
    /// The slot of the projected row this measure reads.
    pub slot: usize,
}

/// A compiled label.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelPlan {
    /// Output field name.
    pub name: String,
    /// Conditions over keys and measures (`None` always matches) and the
    /// value they give; the first match wins, no match gives null.
    pub rules: Vec<(Option<Expr>, Value)>,
}

impl ViewPlan {
    /// A fingerprint of what the view computes: its relation, filter, keys,
    /// measures, labels and `having`, compiled (not its name, description
    /// or `buckets`, which do not change its rows). Sinks keep it with
    /// their checkpoint; a sink that finds another one there holds rows of
    /// an older definition and is rebuilt. Stable for a given build; a
    /// build that compiles the same YAML otherwise rebuilds once.
    pub fn definition(&self) -> String {
        let text = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.relation, self.filter, self.keys, self.measures, self.labels, self.having
        );
        format!("{:016x}", twox_hash::XxHash64::oneshot(0, text.as_bytes()))
    }

    /// Gives each measure its input slot, sharing slots between measures
    /// that read the same thing. A `count` shares the slot of any measure
    /// with the same `where` whose input is a relation field (fields are
    /// never null, so counting non-null values counts rows).
    pub fn assign_slots(&mut self) {
        self.slots.clear();
        // Counts last, so they can share a slot declared after them.
        let mut order: Vec<usize> = (0..self.measures.len()).collect();
        order.sort_by_key(|&i| self.measures[i].function == MeasureFunction::Count);
        for index in order {
            let measure = &self.measures[index];
            let wanted = Slot { input: measure.input.clone(), filter: measure.filter.clone() };
            let slot = self.slots.iter().position(|s| *s == wanted);
            let slot = slot.or_else(|| {
                (measure.function == MeasureFunction::Count).then(|| {
                    self.slots.iter().position(|s| s.filter == wanted.filter && matches!(s.input, Some(Expr::Field(_))))
                })?
            });
            let slot = match slot {
                Some(slot) => slot,
                None => {
                    self.slots.push(wanted);
                    self.slots.len() - 1
                }
            };
            self.measures[index].slot = slot;
        }
    }

    /// Names and types of the output fields: keys, measures, labels.
    pub fn output_fields(&self) -> Vec<(String, FieldType)> {
        let keys = self.keys.iter().map(|k| (k.name.clone(), k.ty));
        let measures = self.measures.iter().map(|m| (m.name.clone(), m.ty));
        let labels = self.labels.iter().map(|l| (l.name.clone(), FieldType::Text));
        keys.chain(measures).chain(labels).collect()
    }

    /// The group key and the measure inputs of one relation row, or `None`
    /// when the view's filter rejects the row.
    ///
    /// Measure inputs are one value per [`Slot`].
    pub fn project(&self, row: RowRef<'_>) -> Option<(PackedRow, PackedRow)> {
        if let Some(filter) = &self.filter
            && !filter.test(&row)
        {
            return None;
        }
        let key: Vec<Evaluated<'_>> = self.keys.iter().map(|k| k.expr.eval(&row)).collect();
        let key = PackedRow::pack(key.iter().map(Evaluated::as_ref));
        let inputs: Vec<Evaluated<'_>> = self
            .slots
            .iter()
            .map(|slot| {
                if let Some(filter) = &slot.filter
                    && !filter.test(&row)
                {
                    return Evaluated::Borrowed(ValueRef::Null);
                }
                match &slot.input {
                    Some(input) => input.eval(&row),
                    None => Evaluated::Borrowed(ValueRef::Bool(true)),
                }
            })
            .collect();
        Some((key, PackedRow::pack(inputs.iter().map(Evaluated::as_ref))))
    }

    /// Which of the view's [`ViewPlan::buckets`] a projected row goes to.
    ///
    /// With more than one bucket a group is aggregated in two steps: each
    /// bucket of its rows into a [`Partial`], then the group's partials into
    /// its row, so a change rescans one bucket and the partials, not the
    /// whole group. Partials of `count_distinct` only add up when equal
    /// values share a bucket, so rows are bucketed by the value of the
    /// view's `count_distinct` input; a view with two such inputs uses one
    /// bucket.
    pub fn bucket(&self, inputs: &PackedRow) -> u16 {
        if self.buckets <= 1 {
            return 0;
        }
        use std::hash::{Hash, Hasher};
        let distinct: Vec<usize> = {
            let mut slots: Vec<usize> =
                self.measures.iter().filter(|m| m.function == MeasureFunction::CountDistinct).map(|m| m.slot).collect();
            slots.sort_unstable();
            slots.dedup();
            slots
        };
        let mut hasher = std::hash::DefaultHasher::new();
        match distinct.as_slice() {
            [] => inputs.hash(&mut hasher),
            [slot] => inputs.iter().nth(*slot).unwrap_or(ValueRef::Null).hash(&mut hasher),
            _ => return 0,
        }
        (hasher.finish() % u64::from(self.buckets)) as u16
    }

    /// The partial aggregate of some rows of a group (each projected row
    /// with its multiplicity).
    pub fn partial<'a>(&self, inputs: impl IntoIterator<Item = (&'a PackedRow, i64)>) -> Partial {
        let mut accumulators: Vec<Accumulator<'a>> =
            self.measures.iter().map(|m| Accumulator::new(m.function)).collect();
        let mut values: Vec<ValueRef<'a>> = Vec::with_capacity(self.slots.len());
        for (packed, multiplicity) in inputs {
            if multiplicity <= 0 {
                continue;
            }
            values.clear();
            values.extend(packed.iter());
            for (accumulator, measure) in accumulators.iter_mut().zip(&self.measures) {
                if let Some(value) = values.get(measure.slot) {
                    accumulator.add(*value, multiplicity);
                }
            }
        }
        Partial(accumulators.into_iter().map(Accumulator::into_partial).collect())
    }

    /// The measure and label values of a group from the partials of its
    /// buckets; `None` when `having` rejects the row.
    pub fn combine<'a>(&self, key: &PackedRow, partials: impl IntoIterator<Item = &'a Partial>) -> Option<Row> {
        let mut states: Vec<PartialMeasure> = self.measures.iter().map(|m| PartialMeasure::empty(m.function)).collect();
        for partial in partials {
            for (state, part) in states.iter_mut().zip(&partial.0) {
                state.absorb(part);
            }
        }
        let mut row: Vec<Value> = key.iter().map(ValueRef::to_value).collect();
        let key_len = row.len();
        row.extend(states.into_iter().map(PartialMeasure::finish));
        for label in &self.labels {
            let scope: &[Value] = &row;
            let value = label
                .rules
                .iter()
                .find(|(when, _)| when.as_ref().is_none_or(|condition| condition.test(&scope)))
                .map_or(Value::Null, |(_, value)| value.clone());
            row.push(value);
        }
        if let Some(having) = &self.having {
            let scope: &[Value] = &row;
            if !having.test(&scope) {
                return None;
            }
        }
        row.drain(..key_len);
        Some(row.into())
    }

    /// Folds a whole group at once: [`ViewPlan::partial`] of all its rows,
    /// then [`ViewPlan::combine`].
    pub fn aggregate<'a>(
        &self,
        key: &PackedRow,
        inputs: impl IntoIterator<Item = (&'a PackedRow, i64)>,
    ) -> Option<Row> {
        self.combine(key, [&self.partial(inputs)])
    }

    /// How the view folds by adding up, when every measure is `count`,
    /// `sum`, `avg`, or `count_distinct` of `order_id`; `None` when one is
    /// not (`min`, `max`, `count_distinct` of another field).
    ///
    /// Such a view needs no group's rows at hand: each order adds a vector
    /// of sums to each group its rows are in ([`AddedUp::add_row`]), and a
    /// group's row follows from the total of those vectors
    /// ([`ViewPlan::finish_sums`]). `count_distinct: order_id` counts
    /// orders, since an order is one `order_id`: an order adds 1 to a
    /// group, however many of its rows are in it.
    pub fn added_up(&self) -> Option<AddedUp> {
        let order_id = self.relation.field_index("order_id");
        let mut sums = vec![SumOf::Rows];
        let mut index_of = |sum: SumOf| match sums.iter().position(|s| *s == sum) {
            Some(index) => index,
            None => {
                sums.push(sum);
                sums.len() - 1
            }
        };
        let mut measures = Vec::with_capacity(self.measures.len());
        for measure in &self.measures {
            let slot = measure.slot;
            measures.push(match measure.function {
                MeasureFunction::Count => SumsRead::Count(index_of(SumOf::Values(slot))),
                MeasureFunction::Sum => SumsRead::Sum(index_of(SumOf::Total(slot))),
                MeasureFunction::Avg => SumsRead::Avg(index_of(SumOf::Total(slot)), index_of(SumOf::Values(slot))),
                MeasureFunction::CountDistinct
                    if order_id.is_some() && self.slots[slot].input == order_id.map(Expr::Field) =>
                {
                    SumsRead::Distinct(index_of(SumOf::Orders(slot)))
                }
                MeasureFunction::CountDistinct | MeasureFunction::Min | MeasureFunction::Max => return None,
            });
        }
        Some(AddedUp { sums, measures })
    }

    /// The groups `order`'s rows are in, each with the sums the order adds
    /// to it (`S`: room for at least [`AddedUp::sums`], zeroed), in key
    /// order.
    pub fn added_up_groups<S: Default + AsMut<[i128]>>(
        &self,
        added_up: &AddedUp,
        order: &OrderState,
    ) -> Vec<(PackedRow, S)> {
        let mut rows = Vec::new();
        self.relation.for_each_row(order, |row| rows.extend(self.project(row)));
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut groups: Vec<(PackedRow, S)> = Vec::new();
        for (key, inputs) in rows {
            if groups.last().is_none_or(|(last, _)| *last != key) {
                groups.push((key, S::default()));
            }
            if let Some((_, sums)) = groups.last_mut() {
                added_up.add_row(&inputs, sums.as_mut());
            }
        }
        groups
    }

    /// The measure and label values of a group from the total of its
    /// orders' sums (`AddedUp::add_row`); `None` when the group has no rows
    /// or `having` rejects it.
    pub fn finish_sums(&self, added_up: &AddedUp, key: &PackedRow, sums: &[i128]) -> Option<Row> {
        if sums.first().is_none_or(|rows| *rows <= 0) {
            return None;
        }
        let at = |index: usize| sums.get(index).copied().unwrap_or(0);
        let partial = added_up
            .measures
            .iter()
            .map(|read| match *read {
                SumsRead::Count(count) => PartialMeasure::Count(at(count)),
                SumsRead::Sum(total) => PartialMeasure::Sum(at(total)),
                SumsRead::Avg(total, count) => PartialMeasure::Avg(at(total), at(count)),
                SumsRead::Distinct(orders) => PartialMeasure::Distinct(u64::try_from(at(orders)).unwrap_or(0)),
            })
            .collect();
        self.combine(key, [&Partial(partial)])
    }

    /// One output row as a JSON object with exactly the view's fields.
    pub fn row_json(&self, key: &[Value], values: &[Value]) -> serde_json::Map<String, serde_json::Value> {
        self.output_fields()
            .into_iter()
            .zip(key.iter().chain(values))
            .map(|((name, _), v)| (name, v.to_json()))
            .collect()
    }
}

/// What one running sum of an [`AddedUp`] view counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumOf {
    /// The group's rows: it exists while they are more than 0.
    Rows,
    /// Rows with a value in the slot.
    Values(usize),
    /// The slot's integer values, added up.
    Total(usize),
    /// Orders with a value in the slot, each once.
    Orders(usize),
}

/// A view that folds by adding up ([`ViewPlan::added_up`]): the running
/// sums a group keeps, and which of them each measure reads.
#[derive(Clone, Debug, PartialEq)]
pub struct AddedUp {
    /// The sums; the first counts rows.
    pub sums: Vec<SumOf>,
    /// Per measure, the sums it reads.
    measures: Vec<SumsRead>,
}

/// Which of an [`AddedUp`] view's sums a measure reads, by index.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SumsRead {
    Count(usize),
    Sum(usize),
    /// The total, and the count it is divided by.
    Avg(usize, usize),
    /// `count_distinct: order_id`: the orders.
    Distinct(usize),
}

impl AddedUp {
    /// Adds a projected row (`inputs`, of [`ViewPlan::project`]) of one
    /// order to `sums`, the vector of that order and the row's group.
    pub fn add_row(&self, inputs: &PackedRow, sums: &mut [i128]) {
        // The first sum counts rows.
        if let Some(rows) = sums.first_mut() {
            *rows += 1;
        }
        for (slot, value) in inputs.iter().enumerate().filter(|(_, value)| *value != ValueRef::Null) {
            for (sum, of) in sums.iter_mut().zip(&self.sums) {
                match (*of, value) {
                    (SumOf::Values(s), _) if s == slot => *sum += 1,
                    (SumOf::Total(s), ValueRef::Int(v)) if s == slot => *sum += i128::from(v),
                    (SumOf::Total(s), ValueRef::UInt(v)) if s == slot => *sum += i128::from(v),
                    (SumOf::Orders(s), _) if s == slot => *sum = 1,
                    _ => {}
                }
            }
        }
    }
}

/// Running state of one measure over one group.
struct Accumulator<'a> {
    function: MeasureFunction,
    count: i128,
    sum: i128,
    min: Option<ValueRef<'a>>,
    max: Option<ValueRef<'a>>,
    distinct: BTreeSet<ValueRef<'a>>,
}

impl<'a> Accumulator<'a> {
    fn new(function: MeasureFunction) -> Self {
        Accumulator { function, count: 0, sum: 0, min: None, max: None, distinct: BTreeSet::new() }
    }

    fn add(&mut self, value: ValueRef<'a>, multiplicity: i64) {
        if value == ValueRef::Null {
            return;
        }
        let multiplicity = i128::from(multiplicity);
        match self.function {
            MeasureFunction::Count => self.count += multiplicity,
            MeasureFunction::Sum | MeasureFunction::Avg => {
                self.count += multiplicity;
                let number = match value {
                    ValueRef::UInt(v) => Some(i128::from(v)),
                    ValueRef::Int(v) => Some(i128::from(v)),
                    _ => None,
                };
                if let Some(number) = number {
                    self.sum = self.sum.saturating_add(number.saturating_mul(multiplicity));
                }
            }
            MeasureFunction::Min => {
                if self.min.is_none_or(|min| value < min) {
                    self.min = Some(value);
                }
            }
            MeasureFunction::Max => {
                if self.max.is_none_or(|max| value > max) {
                    self.max = Some(value);
                }
            }
            MeasureFunction::CountDistinct => {
                self.distinct.insert(value);
            }
        }
    }

    fn into_partial(self) -> PartialMeasure {
        match self.function {
            MeasureFunction::Count => PartialMeasure::Count(self.count),
            MeasureFunction::CountDistinct => PartialMeasure::Distinct(self.distinct.len() as u64),
            MeasureFunction::Sum => PartialMeasure::Sum(self.sum),
            MeasureFunction::Avg => PartialMeasure::Avg(self.sum, self.count),
            MeasureFunction::Min => PartialMeasure::Min(self.min.map_or(Value::Null, ValueRef::to_value)),
            MeasureFunction::Max => PartialMeasure::Max(self.max.map_or(Value::Null, ValueRef::to_value)),
        }
    }
}

/// The partial aggregate of one bucket of a group: one state per measure.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Partial(pub Vec<PartialMeasure>);

/// The state of one measure over some rows; states of disjoint rows
/// combine.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum PartialMeasure {
    /// Rows with a value.
    Count(i128),
    /// Sum of the values.
    Sum(i128),
    /// Sum and count of the values.
    Avg(i128, i128),
    /// Smallest value (null: none).
    Min(Value),
    /// Largest value (null: none).
    Max(Value),
    /// Distinct values (combine by adding: equal values share a bucket).
    Distinct(u64),
}

impl PartialMeasure {
    fn empty(function: MeasureFunction) -> PartialMeasure {
        match function {
            MeasureFunction::Count => PartialMeasure::Count(0),
            MeasureFunction::CountDistinct => PartialMeasure::Distinct(0),
            MeasureFunction::Sum => PartialMeasure::Sum(0),
            MeasureFunction::Avg => PartialMeasure::Avg(0, 0),
            MeasureFunction::Min => PartialMeasure::Min(Value::Null),
            MeasureFunction::Max => PartialMeasure::Max(Value::Null),
        }
    }

    fn absorb(&mut self, other: &PartialMeasure) {
        match (self, other) {
            (PartialMeasure::Count(a), PartialMeasure::Count(b)) => *a = a.saturating_add(*b),
            (PartialMeasure::Sum(a), PartialMeasure::Sum(b)) => *a = a.saturating_add(*b),
            (PartialMeasure::Avg(sum, count), PartialMeasure::Avg(other_sum, other_count)) => {
                *sum = sum.saturating_add(*other_sum);
                *count = count.saturating_add(*other_count);
            }
            (PartialMeasure::Distinct(a), PartialMeasure::Distinct(b)) => *a = a.saturating_add(*b),
            (PartialMeasure::Min(a), PartialMeasure::Min(b)) if *b != Value::Null && (*a == Value::Null || *b < *a) => {
                *a = b.clone();
            }
            (PartialMeasure::Max(a), PartialMeasure::Max(b)) if *b != Value::Null && (*a == Value::Null || *b > *a) => {
                *a = b.clone();
            }
            _ => {}
        }
    }

    fn finish(self) -> Value {
        let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        match self {
            PartialMeasure::Count(count) => Value::UInt(u64::try_from(count).unwrap_or(u64::MAX)),
            PartialMeasure::Distinct(count) => Value::UInt(count),
            PartialMeasure::Sum(sum) => Value::Int(clamp(sum)),
            PartialMeasure::Avg(sum, count) => Value::Int(if count == 0 { 0 } else { clamp(sum / count) }),
            PartialMeasure::Min(value) | PartialMeasure::Max(value) => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::check_text;

    /// The definition a sink keeps changes with what the view computes,
    /// not with its description or `buckets`, and not from one compile of
    /// the same YAML to the next.
    #[test]
    fn a_views_definition_follows_what_it_computes() {
        let shipped = include_str!("../../pipelines.yaml");
        let definition = |text: &str, view: &str| {
            check_text(text, "pipelines.yaml", std::path::Path::new(".")).unwrap().view(view).unwrap().definition()
        };
        let summary = definition(shipped, "order_summary");
        assert_eq!(summary, definition(shipped, "order_summary"));
        assert_ne!(summary, definition(shipped, "product_sales"));
        let described = shipped.replace(
            "description: Orders, revenue and cancellations per store and UTC day.",
            "description: Something else.\n    buckets: 4",
        );
        assert_ne!(described, shipped);
        assert_eq!(definition(&described, "order_summary"), summary);
        let filtered = shipped.replace("{ sum: total_cents,  where: \"status = 'placed'\" }", "{ sum: total_cents }");
        assert_ne!(filtered, shipped);
        assert_ne!(definition(&filtered, "order_summary"), summary);
        assert_eq!(definition(&filtered, "product_sales"), definition(shipped, "product_sales"));
    }

    #[test]
    fn measures_reading_the_same_input_share_a_slot() {
        let plan =
            check_text(include_str!("../../pipelines.yaml"), "pipelines.yaml", std::path::Path::new(".")).unwrap();
        let slots = |name: &str| plan.view(name).unwrap().slots.len();
        assert_eq!(slots("order_summary"), 2);
        assert_eq!(slots("customer_ltv"), 2);
        assert_eq!(slots("product_sales"), 3);
    }

    #[test]
    fn views_of_counts_sums_averages_and_orders_fold_by_adding_up() {
        let plan =
            check_text(include_str!("../../pipelines.yaml"), "pipelines.yaml", std::path::Path::new(".")).unwrap();
        let added_up = |name: &str| plan.view(name).unwrap().added_up().map(|a| a.sums);
        use super::SumOf::*;
        // order_summary: rows; placed totals counted and added (count, sum
        // and avg share them); cancellations counted.
        assert_eq!(added_up("order_summary"), Some(vec![Rows, Values(0), Total(0), Values(1)]));
        // product_sales: rows; units and revenue added; orders counted once.
        assert_eq!(added_up("product_sales"), Some(vec![Rows, Total(0), Total(1), Orders(2)]));
        // customer_ltv has min and max.
        assert_eq!(added_up("customer_ltv"), None);
    }

    #[test]
    fn only_order_ids_count_distinct_by_adding_up() {
        let yaml = |measure: &str| {
            format!(
                "version: 1\nsources:\n  events:\n    type: file\n    path: e.jsonl\nviews:\n  v:\n    from: order_lines\n    group_by: [store_id]\n    measures:\n      m: {measure}\n"
            )
        };
        let added_up = |measure: &str| {
            let plan = check_text(&yaml(measure), "pipelines.yaml", std::path::Path::new(".")).unwrap();
            plan.view("v").unwrap().added_up().is_some()
        };
        assert!(added_up("{ count_distinct: order_id }"));
        assert!(added_up("{ count_distinct: order_id, where: \"quantity > 1\" }"));
        assert!(!added_up("{ count_distinct: customer_id }"));
        assert!(!added_up("{ count_distinct: product_id }"));
        assert!(!added_up("{ min: quantity }"));
        assert!(!added_up("{ max: quantity }"));
    }
}
