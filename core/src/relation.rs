//! The relations views read: `orders` and `order_lines`.
//!
//! Both are derived from [`OrderState`]: `orders` has one row per current
//! order, `order_lines` one row per line item of a current order. Views name
//! a relation and its fields in `pipelines.yaml`; [`Relation::fields`] is the
//! schema that `projector check` validates them against, and [`RowRef`]
//! reads a field of a row without building the whole row.

use std::fmt;

use crate::order::{LineItem, OrderState};
use crate::value::{FieldType, Timestamp, Value};

/// A relation a view can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Relation {
    /// One row per current order.
    Orders,
    /// One row per line item of a current order.
    OrderLines,
}

/// A field of a relation's schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldDef {
    /// Name used in `pipelines.yaml`.
    pub name: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// What it means.
    pub doc: &'static str,
}

const fn field(name: &'static str, ty: FieldType, doc: &'static str) -> FieldDef {
    FieldDef { name, ty, doc }
}

const ORDER_FIELDS: [FieldDef; 10] = [
    field("order_id", FieldType::Text, "the order id (aggregate_id)"),
    field("store_id", FieldType::UInt, "store of the order's OrderCreated"),
    field("customer_id", FieldType::UInt, "customer of the order's OrderCreated"),
    field("currency", FieldType::Text, "currency of the order's OrderCreated"),
    field("created_at", FieldType::Timestamp, "created_at of the order's OrderCreated"),
    field("day", FieldType::Date, "UTC date of created_at"),
    field("total_cents", FieldType::Int, "total of the latest OrderCreated/OrderUpdated"),
    field("status", FieldType::Text, "'placed', or 'cancelled' once an OrderCancelled is seen"),
    field("line_count", FieldType::Int, "number of current line items"),
    field("unit_count", FieldType::Int, "sum of quantity over current line items"),
];

const ORDER_LINE_FIELDS: [FieldDef; 14] = [
    field("order_id", FieldType::Text, "the order id (aggregate_id)"),
    field("store_id", FieldType::UInt, "store of the order"),
    field("customer_id", FieldType::UInt, "customer of the order"),
    field("currency", FieldType::Text, "currency of the order"),
    field("created_at", FieldType::Timestamp, "created_at of the order"),
    field("day", FieldType::Date, "UTC date of the order's created_at"),
    field("status", FieldType::Text, "status of the order: 'placed' or 'cancelled'"),
    field("line_number", FieldType::Int, "position of the item in the order, from 1"),
    field("product_id", FieldType::UInt, "the product"),
    field("sku", FieldType::Text, "stock keeping unit"),
    field("title", FieldType::Text, "product title"),
    field("quantity", FieldType::Int, "units"),
    field("unit_price_cents", FieldType::Int, "price of one unit"),
    field("line_total_cents", FieldType::Int, "quantity * unit_price_cents"),
];

impl Relation {
    /// Every relation, in documentation order.
    pub const ALL: [Relation; 2] = [Relation::Orders, Relation::OrderLines];

    /// Name used in `pipelines.yaml` (`from: orders`).
    pub fn name(self) -> &'static str {
        match self {
            Relation::Orders => "orders",
            Relation::OrderLines => "order_lines",
        }
    }

    /// Looks a relation up by its YAML name.
    pub fn from_name(name: &str) -> Option<Relation> {
        Relation::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The relation's schema.
    pub fn fields(self) -> &'static [FieldDef] {
        match self {
            Relation::Orders => &ORDER_FIELDS,
            Relation::OrderLines => &ORDER_LINE_FIELDS,
        }
    }

    /// Index of a field by name.
    pub fn field_index(self, name: &str) -> Option<usize> {
        self.fields().iter().position(|f| f.name == name)
    }

    /// Calls `visit` with each row this relation has for one order.
    pub fn for_each_row(self, order: &OrderState, mut visit: impl FnMut(RowRef<'_>)) {
        match self {
            Relation::Orders => visit(RowRef { order, line: None }),
            Relation::OrderLines => {
                for (index, item) in order.content.line_items.iter().enumerate() {
                    visit(RowRef { order, line: Some((index, item)) });
                }
            }
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed value: what filters compare and measures read, without
/// cloning text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ValueRef<'a> {
    /// See [`Value::Null`].
    Null,
    /// See [`Value::Bool`].
    Bool(bool),
    /// See [`Value::UInt`].
    UInt(u64),
    /// See [`Value::Int`].
    Int(i64),
    /// See [`Value::Date`].
    Date(i32),
    /// See [`Value::Timestamp`].
    Timestamp(Timestamp),
    /// See [`Value::Text`].
    Text(&'a str),
}

impl ValueRef<'_> {
    /// An owned copy.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::UInt(v) => Value::UInt(v),
            ValueRef::Int(v) => Value::Int(v),
            ValueRef::Date(d) => Value::Date(d),
            ValueRef::Timestamp(t) => Value::Timestamp(t),
            ValueRef::Text(s) => Value::Text(s.into()),
        }
    }
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::UInt(v) => ValueRef::UInt(*v),
            Value::Int(v) => ValueRef::Int(*v),
            Value::Date(d) => ValueRef::Date(*d),
            Value::Timestamp(t) => ValueRef::Timestamp(*t),
            Value::Text(s) => ValueRef::Text(s),
        }
    }
}

/// One row of a relation, read field by field.
#[derive(Clone, Copy, Debug)]
pub struct RowRef<'a> {
    order: &'a OrderState,
    line: Option<(usize, &'a LineItem)>,
}

impl<'a> RowRef<'a> {
    /// The value of the field at `index`, owned; the order id is shared,
    /// not copied.
    pub fn get_owned(&self, index: usize) -> Value {
        match (index, self.line) {
            (0, _) => Value::Text(std::sync::Arc::clone(&self.order.order_id)),
            _ => self.get(index).to_value(),
        }
    }

    /// The value of the field at `index` of the relation's schema.
    pub fn get(&self, index: usize) -> ValueRef<'a> {
        let order = self.order;
        let header = &order.header;
        match self.line {
            None => match index {
                0 => ValueRef::Text(&order.order_id),
                1 => ValueRef::UInt(header.store_id),
                2 => ValueRef::UInt(header.customer_id),
                3 => ValueRef::Text(&header.currency),
                4 => ValueRef::Timestamp(header.created_at),
                5 => ValueRef::Date(header.created_at.utc_day()),
                6 => ValueRef::Int(order.content.total_cents),
                7 => ValueRef::Text(order.status.as_str()),
                8 => ValueRef::Int(order.content.line_items.len() as i64),
                9 => ValueRef::Int(
                    order.content.line_items.iter().fold(0i64, |sum, item| sum.saturating_add(item.quantity)),
                ),
                _ => ValueRef::Null,
            },
            Some((line_index, item)) => match index {
                0 => ValueRef::Text(&order.order_id),
                1 => ValueRef::UInt(header.store_id),
                2 => ValueRef::UInt(header.customer_id),
                3 => ValueRef::Text(&header.currency),
                4 => ValueRef::Timestamp(header.created_at),
                5 => ValueRef::Date(header.created_at.utc_day()),
                6 => ValueRef::Text(order.status.as_str()),
                7 => ValueRef::Int(line_index as i64 + 1),
                8 => ValueRef::UInt(item.product_id),
                9 => ValueRef::Text(&item.sku),
                10 => ValueRef::Text(&item.title),
                11 => ValueRef::Int(item.quantity),
                12 => ValueRef::Int(item.unit_price_cents),
                13 => ValueRef::Int(item.line_total_cents()),
                _ => ValueRef::Null,
            },
        }
    }
}
