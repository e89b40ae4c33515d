//! A view compiled from its YAML declaration: how a relation row maps to a
//! group and measure inputs, and how a group's inputs fold into a row.
//!
//! The dataflow calls [`ViewPlan::project`] on every relation row and
//! [`ViewPlan::aggregate`] on every changed group; everything a view means is
//! in these two functions, so a view is data, not code.

use std::collections::BTreeSet;

use crate::config::expr::{Evaluated, Expr, FieldSource};
use crate::config::model::MeasureFunction;
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

    /// What one projected row adds to its group's totals: the number of
    /// rows, then per slot the number of non-null values and their sum.
    /// Totals add up, so the dataflow keeps them per group in O(1) per
    /// change, however large the group.
    pub fn totals(&self, inputs: &PackedRow) -> Vec<isize> {
        let mut totals = vec![0isize; 1 + 2 * self.slots.len()];
        totals[0] = 1;
        for (slot, value) in inputs.iter().enumerate().take(self.slots.len()) {
            let number = match value {
                ValueRef::Null => continue,
                ValueRef::UInt(v) => v as isize,
                ValueRef::Int(v) => v as isize,
                _ => 0,
            };
            totals[1 + 2 * slot] = 1;
            totals[2 + 2 * slot] = number;
        }
        totals
    }

    /// Slots whose smallest and largest values some measure needs.
    pub fn extreme_slots(&self) -> Vec<usize> {
        self.slots_of(&[MeasureFunction::Min, MeasureFunction::Max])
    }

    /// Slots whose number of distinct values some measure needs.
    pub fn distinct_slots(&self) -> Vec<usize> {
        self.slots_of(&[MeasureFunction::CountDistinct])
    }

    fn slots_of(&self, functions: &[MeasureFunction]) -> Vec<usize> {
        let mut slots: Vec<usize> =
            self.measures.iter().filter(|m| functions.contains(&m.function)).map(|m| m.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        slots
    }

    /// The measure and label values of a group from its partial
    /// aggregates; `None` when the group is empty or `having` rejects it.
    pub fn finish<'a>(&self, key: &PackedRow, partials: impl IntoIterator<Item = &'a Partial>) -> Option<Row> {
        let mut totals: Option<&Vec<isize>> = None;
        let mut extremes: Vec<(usize, &Value, &Value)> = Vec::new();
        let mut distinct: Vec<(usize, u64)> = Vec::new();
        for partial in partials {
            match partial {
                Partial::Totals(t) => totals = Some(t),
                Partial::Extremes { slot, min, max } => extremes.push((usize::from(*slot), min, max)),
                Partial::Distinct { slot, count } => distinct.push((usize::from(*slot), *count)),
            }
        }
        let totals = totals.filter(|t| t.first().is_some_and(|rows| *rows > 0))?;
        let total = |index: usize| totals.get(index).copied().unwrap_or(0);
        let mut row: Vec<Value> = key.iter().map(ValueRef::to_value).collect();
        let key_len = row.len();
        for measure in &self.measures {
            let slot = measure.slot;
            let (count, sum) = (total(1 + 2 * slot), total(2 + 2 * slot));
            row.push(match measure.function {
                MeasureFunction::Count => Value::UInt(count.max(0) as u64),
                MeasureFunction::Sum => Value::Int(sum as i64),
                MeasureFunction::Avg => Value::Int(if count == 0 { 0 } else { (sum / count) as i64 }),
                MeasureFunction::CountDistinct => {
                    Value::UInt(distinct.iter().find(|(s, _)| *s == slot).map_or(0, |(_, count)| *count))
                }
                MeasureFunction::Min => extremes.iter().find(|(s, ..)| *s == slot).map_or(Value::Null, |(_, min, _)| (*min).clone()),
                MeasureFunction::Max => extremes.iter().find(|(s, ..)| *s == slot).map_or(Value::Null, |(_, _, max)| (*max).clone()),
            });
        }
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

    /// Folds a whole group at once (each projected row with its
    /// multiplicity): the partial aggregates the dataflow keeps, computed
    /// directly, then [`ViewPlan::finish`].
    pub fn aggregate<'a>(&self, key: &PackedRow, inputs: impl IntoIterator<Item = (&'a PackedRow, i64)>) -> Option<Row> {
        let mut totals = vec![0isize; 1 + 2 * self.slots.len()];
        let extreme_slots = self.extreme_slots();
        let distinct_slots = self.distinct_slots();
        let mut extremes: Vec<Option<(Value, Value)>> = vec![None; self.slots.len()];
        let mut distinct: Vec<BTreeSet<Value>> = vec![BTreeSet::new(); self.slots.len()];
        for (packed, multiplicity) in inputs {
            if multiplicity <= 0 {
                continue;
            }
            for (total, add) in totals.iter_mut().zip(self.totals(packed)) {
                *total = total.wrapping_add(add.wrapping_mul(multiplicity as isize));
            }
            for (slot, value) in packed.iter().enumerate() {
                if value == ValueRef::Null {
                    continue;
                }
                if extreme_slots.contains(&slot) {
                    let value = value.to_value();
                    extremes[slot] = Some(match extremes[slot].take() {
                        None => (value.clone(), value),
                        Some((min, max)) => (min.min(value.clone()), max.max(value)),
                    });
                }
                if distinct_slots.contains(&slot) {
                    distinct[slot].insert(value.to_value());
                }
            }
        }
        let mut partials = vec![Partial::Totals(totals)];
        for slot in extreme_slots {
            if let Some((min, max)) = extremes[slot].take() {
                partials.push(Partial::Extremes { slot: slot as u16, min, max });
            }
        }
        for slot in distinct_slots {
            partials.push(Partial::Distinct { slot: slot as u16, count: distinct[slot].len() as u64 });
        }
        self.finish(key, &partials)
    }

    /// One output row as a JSON object with exactly the view's fields.
    pub fn row_json(&self, key: &[Value], values: &[Value]) -> serde_json::Map<String, serde_json::Value> {
        self.output_fields().into_iter().zip(key.iter().chain(values)).map(|((name, _), v)| (name, v.to_json())).collect()
    }
}

/// A piece of a group's aggregate, as the dataflow keeps it: totals that
/// add up, the extremes of a slot, or its number of distinct values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Partial {
    /// See [`ViewPlan::totals`].
    Totals(Vec<isize>),
    /// The smallest and largest non-null value of a slot.
    Extremes {
        /// The slot.
        slot: u16,
        /// Smallest value.
        min: Value,
        /// Largest value.
        max: Value,
    },
    /// The number of distinct non-null values of a slot.
    Distinct {
        /// The slot.
        slot: u16,
        /// How many.
        count: u64,
    },
}

#[cfg(test)]
mod tests {
    use crate::config::check_text;

    #[test]
    fn measures_reading_the_same_input_share_a_slot() {
        let plan = check_text(include_str!("../../pipelines.yaml"), "pipelines.yaml", std::path::Path::new(".")).unwrap();
        let slots = |name: &str| plan.view(name).unwrap().slots.len();
        assert_eq!(slots("order_summary"), 2);
        assert_eq!(slots("customer_ltv"), 2);
        assert_eq!(slots("product_sales"), 3);
    }
}
