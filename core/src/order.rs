//! Order state: what the events of one order add up to (contract section 2,
//! "Meaning").
//!
//! The dataflow deduplicates events by `event_id`, groups them by order and
//! folds each group with [`OrderState::fold`]. The fold depends only on the
//! set of events, never on the order they arrived in.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::value::Timestamp;

/// One line item of an order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct LineItem {
    /// The product.
    pub product_id: u64,
    /// Stock keeping unit.
    pub sku: Box<str>,
    /// Product title at the time of ordering.
    pub title: Box<str>,
    /// Units, at least 1.
    pub quantity: i64,
    /// Price of one unit in cents, at least 0.
    pub unit_price_cents: i64,
}

crate::objects_only!(serialize LineItem);

impl LineItem {
    /// `quantity * unit_price_cents`, saturating instead of overflowing.
    pub fn line_total_cents(&self) -> i64 {
        self.quantity.saturating_mul(self.unit_price_cents)
    }
}

/// What an order's `OrderCreated` fixes for good: store, customer, currency
/// and creation time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderHeader {
    /// From the envelope of the `OrderCreated`.
    pub store_id: u64,
    /// Who ordered.
    pub customer_id: u64,
    /// Currency of the money fields.
    pub currency: String,
    /// When the order was placed.
    pub created_at: Timestamp,
}

/// What `OrderCreated` and `OrderUpdated` set and the later one replaces.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderContent {
    /// The items (a boxed slice: exactly as long as needed, since order
    /// state holds hundreds of thousands of them).
    pub line_items: Box<[LineItem]>,
    /// The total in cents.
    pub total_cents: i64,
}

/// The effect of one order event.
///
/// Header and content are shared (`Arc`): the same items travel from the
/// event through deduplication into the order state, and each arrangement
/// holding them stores a pointer, not a copy.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderChange {
    /// `OrderCreated`.
    Created(Arc<OrderHeader>, Arc<OrderContent>),
    /// `OrderUpdated`.
    Updated(Arc<OrderContent>),
    /// `OrderCancelled`.
    Cancelled,
}

/// An order event reduced to what the read models need.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderEvent {
    /// The order (`aggregate_id`).
    pub order_id: Arc<str>,
    /// The event's `sequence`.
    pub sequence: u64,
    /// What it does to the order.
    pub change: OrderChange,
}

/// Whether an order stands or was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Created and not cancelled.
    Placed,
    /// An `OrderCancelled` was seen.
    Cancelled,
}

impl OrderStatus {
    /// `placed` or `cancelled`, as in the `status` field of the relations.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

/// The fields of an order as the orders output carries it: the key
/// (`order_id`), then these values.
pub const ORDER_FIELDS: [&str; 7] =
    ["store_id", "customer_id", "status", "currency", "created_at", "total_cents", "line_items"];

impl OrderState {
    /// The order as a row of the orders output: key `[order_id]`, values in
    /// the order of [`ORDER_FIELDS`], the line items as one JSON text.
    pub fn to_row(&self) -> (crate::value::Row, crate::value::Row) {
        use crate::value::Value;
        let items = serde_json::to_string(&self.content.line_items).unwrap_or_default();
        let key = vec![Value::Text(Arc::clone(&self.order_id))];
        let values = vec![
            Value::UInt(self.header.store_id),
            Value::UInt(self.header.customer_id),
            Value::Text(self.status.as_str().into()),
            Value::Text(self.header.currency.as_str().into()),
            Value::Timestamp(self.header.created_at),
            Value::Int(self.content.total_cents),
            Value::Text(items.into()),
        ];
        (key.into(), values.into())
    }
}

/// The current state of one order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderState {
    /// The order id.
    pub order_id: Arc<str>,
    /// From the `OrderCreated` with the lowest sequence.
    pub header: Arc<OrderHeader>,
    /// From the `OrderCreated` or `OrderUpdated` with the highest sequence.
    pub content: Arc<OrderContent>,
    /// Cancelled once any `OrderCancelled` is seen.
    pub status: OrderStatus,
}

impl OrderState {
    /// Folds the (deduplicated) events of one order into its state; `None`
    /// while no `OrderCreated` has been seen.
    ///
    /// Ties (two creates or two content events with the same sequence) go to
    /// the event earlier in the log, so the fold is a function of the set of
    /// events and their log positions, never of arrival order.
    pub fn fold<'a, P: Ord + Copy>(
        order_id: &Arc<str>,
        events: impl IntoIterator<Item = (u64, P, &'a OrderChange)>,
    ) -> Option<OrderState> {
        // The best candidate so far and its rank.
        type Best<'b, R, T> = Option<(R, &'b Arc<T>)>;
        let mut header: Best<'_, (u64, P), OrderHeader> = None;
        let mut content: Best<'_, (u64, std::cmp::Reverse<P>), OrderContent> = None;
        let mut cancelled = false;
        for (sequence, position, change) in events {
            let (created_header, new_content) = match change {
                OrderChange::Created(h, c) => (Some(h), Some(c)),
                OrderChange::Updated(c) => (None, Some(c)),
                OrderChange::Cancelled => {
                    cancelled = true;
                    (None, None)
                }
            };
            if let Some(h) = created_header
                && header.is_none_or(|(rank, _)| (sequence, position) < rank)
            {
                header = Some(((sequence, position), h));
            }
            if let Some(c) = new_content {
                let rank = (sequence, std::cmp::Reverse(position));
                if content.is_none_or(|(best, _)| rank > best) {
                    content = Some((rank, c));
                }
            }
        }
        let (_, header) = header?;
        let (_, content) = content?;
        Some(OrderState {
            order_id: Arc::clone(order_id),
            header: Arc::clone(header),
            content: Arc::clone(content),
            status: if cancelled { OrderStatus::Cancelled } else { OrderStatus::Placed },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LogPosition;

    fn header(store_id: u64) -> Arc<OrderHeader> {
        Arc::new(OrderHeader { store_id, customer_id: 1, currency: "USD".into(), created_at: Timestamp(0) })
    }

    fn content(total_cents: i64) -> Arc<OrderContent> {
        Arc::new(OrderContent { line_items: Box::new([]), total_cents })
    }

    fn at(offset: u64) -> LogPosition {
        LogPosition { partition: 0, offset }
    }

    #[test]
    fn lowest_create_and_highest_content_win() {
        let events = [
            (3, at(1), OrderChange::Updated(content(30))),
            (2, at(2), OrderChange::Created(header(8), content(20))),
            (1, at(3), OrderChange::Created(header(7), content(10))),
        ];
        let state = OrderState::fold(&Arc::from("o"), events.iter().map(|(s, p, c)| (*s, *p, c))).unwrap();
        assert_eq!(state.header.store_id, 7);
        assert_eq!(state.content.total_cents, 30);
        assert_eq!(state.status, OrderStatus::Placed);
    }

    #[test]
    fn ties_go_to_the_earlier_event_and_cancel_is_sticky() {
        let events = [
            (2, at(9), OrderChange::Updated(content(99))),
            (2, at(4), OrderChange::Updated(content(44))),
            (1, at(5), OrderChange::Cancelled),
            (1, at(1), OrderChange::Created(header(7), content(10))),
        ];
        let state = OrderState::fold(&Arc::from("o"), events.iter().map(|(s, p, c)| (*s, *p, c))).unwrap();
        assert_eq!(state.content.total_cents, 44);
        assert_eq!(state.status, OrderStatus::Cancelled);
    }

    #[test]
    fn no_create_means_no_order() {
        let events = [(2, at(1), OrderChange::Updated(content(5))), (3, at(2), OrderChange::Cancelled)];
        assert!(OrderState::fold(&Arc::from("o"), events.iter().map(|(s, p, c)| (*s, *p, c))).is_none());
    }
}
