//! The command side's state, rebuilt from the log: orders, stock,
//! reservations, and the answers given to idempotent requests.
//!
//! Every change comes from a [`Fact`] read from (or just written to) the
//! log, applied in command order, so a rebuild after a restart gives the
//! state the service had. Decisions (may this order be placed?) read the
//! state; they never change it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use projector_core::event::{
    Event, InventoryReserved, OrderCancelled, OrderCreated, Payload, PaymentInitiated, ReservedItem,
};
use projector_core::value::Timestamp;

use crate::request::{PlaceOrder, Rejection, Shortage};

/// The namespace of Projector's name-based UUIDs (order and event ids).
const NAMESPACE: Uuid = Uuid::from_u128(0x6c1d_1b8e_52a4_4f0e_9a2c_7d3e_5f10_2b47);

/// A deterministic id: the same `name` always gives the same id.
pub fn name_id(name: &str) -> String {
    Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// The answer given to a request, kept for its idempotency key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// What request it answered (route and a hash of the body); a key
    /// reused for another request is refused.
    pub request: String,
}

/// One thing the log says.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// A contract event from the events topic.
    Event(Event),
    /// A stock level was set (inventory topic).
    StockSet {
        /// The store.
        store_id: u64,
        /// The SKU.
        sku: String,
        /// Units available.
        available: i64,
    },
    /// The answer to an idempotent request (header of the command's first
    /// record, or an audit record of a rejected command).
    Answered {
        /// The idempotency key.
        key: String,
        /// What was answered.
        answer: Answer,
    },
}

/// What the command side knows about one order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderEntry {
    /// Store of the order.
    pub store_id: u64,
    /// The `OrderCreated` payload, once seen.
    pub created: Option<OrderCreated>,
    /// Sequences of the order's events seen so far.
    pub sequences: BTreeSet<u64>,
    /// Stock the order holds (empty until `InventoryReserved`).
    pub reserved: Vec<(String, i64)>,
    /// Whether `InventoryReserved` was seen.
    pub is_reserved: bool,
    /// Whether `OrderCancelled` was seen.
    pub cancelled: bool,
}

/// The state: rebuilt from the log, snapshotted to keep starts fast.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandState {
    /// Orders by id.
    pub orders: HashMap<String, OrderEntry>,
    /// Available units by `store_id/sku`.
    pub stock: HashMap<String, i64>,
    /// Answers by idempotency key.
    pub answers: HashMap<String, Answer>,
    /// The highest command number applied.
    pub last_command: u64,
}

fn stock_key(store_id: u64, sku: &str) -> String {
    format!("{store_id}/{sku}")
}

impl CommandState {
    /// Applies one fact of command number `command`.
    pub fn apply(&mut self, command: u64, fact: Fact) {
        self.last_command = self.last_command.max(command);
        match fact {
            Fact::StockSet { store_id, sku, available } => {
                self.stock.insert(stock_key(store_id, &sku), available);
            }
            Fact::Answered { key, answer } => {
                self.answers.insert(key, answer);
            }
            Fact::Event(event) => self.apply_event(event),
        }
    }

    fn apply_event(&mut self, event: Event) {
        let store_id = event.store_id;
        let entry = self.orders.entry(event.aggregate_id.clone()).or_default();
        entry.sequences.insert(event.sequence);
        match event.payload {
            Payload::OrderCreated(created) => {
                entry.store_id = store_id;
                entry.created = Some(created);
            }
            Payload::InventoryReserved(reserved) => {
                if !entry.is_reserved {
                    entry.is_reserved = true;
                    entry.reserved = reserved.items.iter().map(|i| (i.sku.clone(), i.quantity)).collect();
                    if !entry.cancelled {
                        for (sku, quantity) in &entry.reserved {
                            *self.stock.entry(stock_key(store_id, sku)).or_default() -= quantity;
                        }
                    }
                }
            }
            Payload::OrderCancelled(_) => {
                if !entry.cancelled {
                    entry.cancelled = true;
                    if entry.is_reserved {
                        let store = if entry.created.is_some() { entry.store_id } else { store_id };
                        for (sku, quantity) in &entry.reserved {
                            *self.stock.entry(stock_key(store, sku)).or_default() += quantity;
                        }
                    }
                }
            }
            Payload::OrderUpdated(_) | Payload::PaymentInitiated(_) => {}
        }
    }

    /// Units of `sku` available in `store_id`.
    pub fn available(&self, store_id: u64, sku: &str) -> i64 {
        self.stock.get(&stock_key(store_id, sku)).copied().unwrap_or(0)
    }

    /// Whether the order may be placed: enough stock of every SKU (units of
    /// one SKU on several lines add up).
    pub fn check_stock(&self, store_id: u64, order: &PlaceOrder) -> Result<(), Rejection> {
        let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
        for item in &order.line_items {
            *wanted.entry(&item.sku).or_default() += item.quantity;
        }
        let shortages: Vec<Shortage> = wanted
            .into_iter()
            .filter_map(|(sku, requested)| {
                let available = self.available(store_id, sku);
                (requested > available).then(|| Shortage { sku: sku.to_string(), requested, available })
            })
            .collect();
        if shortages.is_empty() { Ok(()) } else { Err(Rejection::InsufficientStock(shortages)) }
    }

    /// Whether the order may be cancelled.
    pub fn check_cancel(&self, order_id: &str) -> Result<&OrderEntry, Rejection> {
        match self.orders.get(order_id) {
            Some(entry) if entry.created.is_some() && entry.cancelled => {
                Err(Rejection::AlreadyCancelled(order_id.into()))
            }
            Some(entry) if entry.created.is_some() => Ok(entry),
            _ => Err(Rejection::UnknownOrder(order_id.into())),
        }
    }

    /// The events an order placed with `OrderCreated` still lacks
    /// (`InventoryReserved`, `PaymentInitiated`): what a command that died
    /// half-way had yet to append.
    pub fn missing_events(&self, order_id: &str, correlation_id: &str, now: Timestamp) -> Vec<Event> {
        let Some(entry) = self.orders.get(order_id) else { return Vec::new() };
        let Some(created) = &entry.created else { return Vec::new() };
        order_events(order_id, entry.store_id, created, correlation_id, now)
            .into_iter()
            .filter(|event| !entry.sequences.contains(&event.sequence))
            .collect()
    }
}

/// The three events of a placed order: `OrderCreated`, `InventoryReserved`
/// and `PaymentInitiated`, each caused by the one before. Ids are derived
/// from the order id, so appending them again writes the same events.
pub fn order_events(
    order_id: &str,
    store_id: u64,
    created: &OrderCreated,
    correlation_id: &str,
    now: Timestamp,
) -> Vec<Event> {
    let event = |sequence: u64, causation_id: Option<String>, payload: Payload| Event {
        event_id: name_id(&format!("event:{order_id}:{sequence}")),
        aggregate_id: order_id.to_string(),
        sequence,
        store_id,
        occurred_at: now,
        correlation_id: Some(correlation_id.to_string()),
        causation_id,
        payload,
    };
    let created_event = event(1, None, Payload::OrderCreated(created.clone()));
    let reserved = event(
        2,
        Some(created_event.event_id.clone()),
        Payload::InventoryReserved(InventoryReserved {
            order_id: order_id.to_string(),
            reservation_id: name_id(&format!("reservation:{order_id}")),
            items: created
                .line_items
                .iter()
                .map(|i| ReservedItem { sku: i.sku.to_string(), quantity: i.quantity })
                .collect(),
        }),
    );
    let payment = event(
        3,
        Some(reserved.event_id.clone()),
        Payload::PaymentInitiated(PaymentInitiated {
            order_id: order_id.to_string(),
            amount_cents: created.total_cents,
            gateway: "card".into(),
            transaction_id: name_id(&format!("payment:{order_id}")),
        }),
    );
    vec![created_event, reserved, payment]
}

/// The `OrderCancelled` of an order, after its last event.
pub fn cancel_event(order_id: &str, entry: &OrderEntry, correlation_id: &str, now: Timestamp) -> Event {
    let sequence = entry.sequences.iter().next_back().copied().unwrap_or(0) + 1;
    Event {
        event_id: name_id(&format!("event:{order_id}:{sequence}")),
        aggregate_id: order_id.to_string(),
        sequence,
        store_id: entry.store_id,
        occurred_at: now,
        correlation_id: Some(correlation_id.to_string()),
        causation_id: None,
        payload: Payload::OrderCancelled(OrderCancelled {
            order_id: order_id.to_string(),
            reason: "cancelled by request".into(),
        }),
    }
}

/// The answer to a placed order.
pub fn placed_answer(order_id: &str, request: &str) -> Answer {
    Answer { status: 202, body: json!({"order_id": order_id, "status": "processing"}), request: request.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_core::order::LineItem;

    fn order(sku: &str, quantity: i64) -> PlaceOrder {
        PlaceOrder {
            customer_id: 1,
            currency: "USD".into(),
            line_items: vec![LineItem {
                product_id: 1,
                sku: sku.into(),
                title: "T".into(),
                quantity,
                unit_price_cents: 100,
            }],
        }
    }

    fn created(request: &PlaceOrder) -> OrderCreated {
        OrderCreated {
            order_id: "o".into(),
            customer_id: request.customer_id,
            currency: request.currency.clone(),
            created_at: Timestamp(0),
            line_items: request.line_items.clone(),
            total_cents: request.total_cents(),
        }
    }

    #[test]
    fn reservations_take_stock_and_cancels_return_it() {
        let mut state = CommandState::default();
        state.apply(1, Fact::StockSet { store_id: 7, sku: "A".into(), available: 5 });
        let request = order("A", 3);
        assert!(state.check_stock(7, &request).is_ok());
        for event in order_events("o", 7, &created(&request), "c", Timestamp(0)) {
            state.apply(2, Fact::Event(event));
        }
        assert_eq!(state.available(7, "A"), 2);
        assert_eq!(
            state.check_stock(7, &order("A", 3)),
            Err(Rejection::InsufficientStock(vec![Shortage { sku: "A".into(), requested: 3, available: 2 }]))
        );
        let cancel = cancel_event("o", state.check_cancel("o").unwrap(), "c2", Timestamp(0));
        assert_eq!(cancel.sequence, 4);
        state.apply(3, Fact::Event(cancel));
        assert_eq!(state.available(7, "A"), 5);
        assert_eq!(state.check_cancel("o"), Err(Rejection::AlreadyCancelled("o".into())));
        assert_eq!(state.check_cancel("x").unwrap_err().status(), 404);
    }

    #[test]
    fn a_half_appended_order_is_completed_with_the_same_events() {
        let mut state = CommandState::default();
        let request = order("A", 1);
        let events = order_events("o", 7, &created(&request), "c", Timestamp(0));
        state.apply(1, Fact::Event(events[0].clone()));
        let missing = state.missing_events("o", "c", Timestamp(0));
        assert_eq!(missing, events[1..]);
        for event in missing {
            state.apply(1, Fact::Event(event));
        }
        assert!(state.missing_events("o", "c", Timestamp(0)).is_empty());
    }
}
