//! The contract's views, recomputed the plain way.
//!
//! Nothing here uses Projector's decoder, order fold or view engine: events
//! are checked field by field on `serde_json::Value`, orders are folded in a
//! loop, and views are `BTreeMap`s. Positions are line numbers, so "first in
//! the log" means "earlier line".
#![allow(clippy::type_complexity)]

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

/// A valid line item.
#[derive(Clone, Debug)]
pub struct Item {
    pub product_id: u64,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// An order as the contract defines it.
#[derive(Clone, Debug)]
pub struct Order {
    pub order_id: String,
    pub store_id: u64,
    pub customer_id: u64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub items: Vec<Item>,
    pub total_cents: i64,
    pub cancelled: bool,
}

/// The result of reading a log.
#[derive(Debug, Default)]
pub struct Log {
    pub orders: Vec<Order>,
    /// Line numbers (from 1) of bad records.
    pub bad_lines: Vec<u64>,
}

fn text(v: &Value, key: &str) -> Result<String, String> {
    v.get(key).and_then(Value::as_str).map(str::to_string).ok_or_else(|| key.to_string())
}

fn unsigned(v: &Value, key: &str) -> Result<u64, String> {
    v.get(key).and_then(Value::as_u64).ok_or_else(|| key.to_string())
}

fn integer(v: &Value, key: &str) -> Result<i64, String> {
    v.get(key).and_then(Value::as_i64).ok_or_else(|| key.to_string())
}

fn instant(v: &Value, key: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(&text(v, key)?).map_err(|e| e.to_string())?;
    t.timestamp_nanos_opt().ok_or("range")?;
    Ok(t.with_timezone(&Utc))
}

fn items(payload: &Value) -> Result<Vec<Item>, String> {
    let list = payload.get("line_items").and_then(Value::as_array).ok_or("line_items")?;
    if list.is_empty() {
        return Err("no items".into());
    }
    list.iter()
        .map(|item| {
            text(item, "sku")?;
            text(item, "title")?;
            let quantity = integer(item, "quantity")?;
            let unit_price_cents = integer(item, "unit_price_cents")?;
            if quantity < 1 || unit_price_cents < 0 {
                return Err("rule".into());
            }
            Ok(Item { product_id: unsigned(item, "product_id")?, quantity, unit_price_cents })
        })
        .collect()
}

enum Effect {
    Create {
        store_id: u64,
        customer_id: u64,
        currency: String,
        created_at: DateTime<Utc>,
        items: Vec<Item>,
        total: i64,
    },
    Content {
        items: Vec<Item>,
        total: i64,
    },
    Cancel,
    Nothing,
}

/// Checks one line against contract section 2; returns (event_id,
/// aggregate_id, sequence, effect).
fn check(line: &str) -> Result<(String, String, i64, Effect), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let event_id = text(&v, "event_id")?;
    let aggregate_id = text(&v, "aggregate_id")?;
    if event_id.is_empty() || aggregate_id.is_empty() {
        return Err("empty id".into());
    }
    if integer(&v, "schema_version")? != 1 {
        return Err("version".into());
    }
    let sequence = integer(&v, "sequence")?;
    if sequence < 1 {
        return Err("sequence".into());
    }
    let store_id = unsigned(&v, "store_id")?;
    instant(&v, "occurred_at")?;
    for optional in ["correlation_id", "causation_id"] {
        if let Some(value) = v.get(optional)
            && !(value.is_null() || value.is_string())
        {
            return Err(optional.into());
        }
    }
    let payload = v.get("payload").filter(|p| p.is_object()).ok_or("payload")?;
    let order_id = text(payload, "order_id")?;
    let effect = match text(&v, "event_type")?.as_str() {
        "OrderCreated" => {
            let items = items(payload)?;
            let total = integer(payload, "total_cents")?;
            if total < 0 {
                return Err("negative".into());
            }
            let created_at = instant(payload, "created_at")?;
            // What every sink can keep (ClickHouse's DateTime): README.
            if created_at.timestamp() < 0 || created_at.timestamp() > i64::from(u32::MAX) {
                return Err("created_at outside 1970 to 2106".into());
            }
            Effect::Create {
                store_id,
                customer_id: unsigned(payload, "customer_id")?,
                currency: text(payload, "currency")?,
                created_at,
                items,
                total,
            }
        }
        "OrderUpdated" => {
            let items = items(payload)?;
            let total = integer(payload, "total_cents")?;
            if total < 0 {
                return Err("negative".into());
            }
            Effect::Content { items, total }
        }
        "OrderCancelled" => {
            text(payload, "reason")?;
            Effect::Cancel
        }
        "InventoryReserved" => {
            text(payload, "reservation_id")?;
            for item in payload.get("items").and_then(Value::as_array).ok_or("items")? {
                text(item, "sku")?;
                if integer(item, "quantity")? < 1 {
                    return Err("rule".into());
                }
            }
            Effect::Nothing
        }
        "PaymentInitiated" => {
            if integer(payload, "amount_cents")? < 0 {
                return Err("negative".into());
            }
            text(payload, "gateway")?;
            text(payload, "transaction_id")?;
            Effect::Nothing
        }
        other => return Err(format!("type {other}")),
    };
    if order_id.is_empty() {
        return Err("empty order id".into());
    }
    let is_order_event = !matches!(effect, Effect::Nothing);
    if is_order_event && order_id != aggregate_id {
        return Err("order_id differs".into());
    }
    Ok((event_id, aggregate_id, sequence, effect))
}

/// Reads a log: valid events, deduplicated by event_id (first line wins),
/// folded into orders.
pub fn read(lines: &[String]) -> Log {
    struct Acc {
        create: Option<(i64, usize, Effect)>,
        content: Option<(i64, usize, Vec<Item>, i64)>,
        cancelled: bool,
    }
    let mut log = Log::default();
    let mut seen = HashSet::new();
    let mut accs: BTreeMap<String, Acc> = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (event_id, aggregate_id, sequence, effect) = match check(line) {
            Ok(checked) => checked,
            Err(_) => {
                log.bad_lines.push(index as u64 + 1);
                continue;
            }
        };
        if !seen.insert(event_id) {
            continue;
        }
        let acc = accs.entry(aggregate_id).or_insert(Acc { create: None, content: None, cancelled: false });
        match effect {
            Effect::Create { ref items, total, .. } => {
                let better_content = match &acc.content {
                    None => true,
                    Some((best, ..)) => sequence > *best,
                };
                if better_content {
                    acc.content = Some((sequence, index, items.clone(), total));
                }
                let better_create = match &acc.create {
                    None => true,
                    Some((best, ..)) => sequence < *best,
                };
                if better_create {
                    acc.create = Some((sequence, index, effect));
                }
            }
            Effect::Content { items, total } => {
                let better = match &acc.content {
                    None => true,
                    Some((best, ..)) => sequence > *best,
                };
                if better {
                    acc.content = Some((sequence, index, items, total));
                }
            }
            Effect::Cancel => acc.cancelled = true,
            Effect::Nothing => {}
        }
    }
    for (order_id, acc) in accs {
        let (
            Some((_, _, Effect::Create { store_id, customer_id, currency, created_at, .. })),
            Some((_, _, items, total)),
        ) = (acc.create, acc.content)
        else {
            continue;
        };
        log.orders.push(Order {
            order_id,
            store_id,
            customer_id,
            currency,
            created_at,
            items,
            total_cents: total,
            cancelled: acc.cancelled,
        });
    }
    log
}

fn day(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `order_summary` of contract section 3, sorted by key.
pub fn order_summary(orders: &[Order]) -> Vec<Value> {
    let mut groups: BTreeMap<(u64, String), (u64, i64, u64)> = BTreeMap::new();
    for o in orders {
        let g = groups.entry((o.store_id, day(&o.created_at))).or_default();
        if o.cancelled {
            g.2 += 1;
        } else {
            g.0 += 1;
            g.1 += o.total_cents;
        }
    }
    groups
        .into_iter()
        .map(|((store_id, date), (count, revenue, cancelled))| {
            json!({"store_id": store_id, "date": date, "order_count": count, "revenue_cents": revenue,
                   "average_order_value_cents": if count == 0 { 0 } else { revenue / count as i64 },
                   "cancellation_count": cancelled})
        })
        .collect()
}

/// `product_sales` of contract section 3, sorted by key.
pub fn product_sales(orders: &[Order]) -> Vec<Value> {
    let mut groups: BTreeMap<(u64, u64, String), (i64, i64, BTreeSet<String>)> = BTreeMap::new();
    for o in orders.iter().filter(|o| !o.cancelled) {
        for item in &o.items {
            let g = groups.entry((o.store_id, item.product_id, day(&o.created_at))).or_default();
            g.0 += item.quantity;
            g.1 += item.quantity * item.unit_price_cents;
            g.2.insert(o.order_id.clone());
        }
    }
    groups
        .into_iter()
        .filter(|(_, (units, _, _))| *units > 0)
        .map(|((store_id, product_id, date), (units, revenue, orders))| {
            json!({"store_id": store_id, "product_id": product_id, "date": date, "units_sold": units,
                   "revenue_cents": revenue, "order_count": orders.len()})
        })
        .collect()
}

/// `customer_ltv` of contract section 3 with the shipped segment rules.
pub fn customer_ltv(orders: &[Order]) -> Vec<Value> {
    let mut groups: BTreeMap<(u64, u64), Vec<&Order>> = BTreeMap::new();
    for o in orders.iter().filter(|o| !o.cancelled) {
        groups.entry((o.store_id, o.customer_id)).or_default().push(o);
    }
    groups
        .into_iter()
        .map(|((store_id, customer_id), list)| {
            let count = list.len() as i64;
            let ltv: i64 = list.iter().map(|o| o.total_cents).sum();
            let first = list.iter().map(|o| o.created_at).min().unwrap();
            let last = list.iter().map(|o| o.created_at).max().unwrap();
            let segment = if ltv >= 100_000 {
                "vip"
            } else if count >= 5 {
                "loyal"
            } else if count >= 2 {
                "returning"
            } else {
                "new"
            };
            json!({"store_id": store_id, "customer_id": customer_id, "order_count": count,
                   "lifetime_value_cents": ltv, "average_order_value_cents": ltv / count,
                   "first_order_at": rfc3339(&first), "last_order_at": rfc3339(&last), "segment": segment})
        })
        .collect()
}

/// The test's fourth view: revenue per currency per UTC day, over orders
/// that are not cancelled.
pub fn revenue_by_currency(orders: &[Order]) -> Vec<Value> {
    let mut groups: BTreeMap<(String, String), (u64, i64, i64)> = BTreeMap::new();
    for o in orders.iter().filter(|o| !o.cancelled) {
        let g = groups.entry((o.currency.clone(), day(&o.created_at))).or_insert((0, 0, i64::MIN));
        g.0 += 1;
        g.1 += o.total_cents;
        g.2 = g.2.max(o.total_cents);
    }
    groups
        .into_iter()
        .map(|((currency, date), (orders, revenue, largest))| {
            json!({"currency": currency, "date": date, "orders": orders, "revenue_cents": revenue, "largest_order_cents": largest})
        })
        .collect()
}

/// The test's fifth view: distinct customers, first order and cancelled
/// orders per UTC day, over all orders.
pub fn customers_per_day(orders: &[Order]) -> Vec<Value> {
    let mut groups: BTreeMap<String, (BTreeSet<u64>, Option<DateTime<Utc>>, u64)> = BTreeMap::new();
    for o in orders {
        let g = groups.entry(day(&o.created_at)).or_default();
        g.0.insert(o.customer_id);
        g.1 = Some(g.1.map_or(o.created_at, |first| first.min(o.created_at)));
        g.2 += u64::from(o.cancelled);
    }
    groups
        .into_iter()
        .map(|(date, (customers, first, cancelled))| {
            json!({"date": date, "customers": customers.len(), "first_order_at": first.map(|f| rfc3339(&f)), "cancelled": cancelled})
        })
        .collect()
}
