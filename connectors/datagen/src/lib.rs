//! A seeded generator of contract-conformant event logs.
//!
//! Orders are placed in stores by customers over a span of days, each as
//! `OrderCreated`, `InventoryReserved`, `PaymentInitiated`; some are updated
//! and some cancelled. To exercise everything the contract promises, the
//! generator also shuffles events within a small window (so a cancel or an
//! update can arrive before its create), redelivers earlier events, emits
//! events for orders that are never created, writes some `created_at` with
//! non-UTC offsets, and optionally mixes in bad records of every kind.
//!
//! The same seed and settings always give the same log.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::VecDeque;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use projector_core::event::{
    Event, InventoryReserved, OrderCancelled, OrderCreated, OrderUpdated, Payload, PaymentInitiated, ReservedItem,
};
use projector_core::order::LineItem;
use projector_core::value::Timestamp;

/// Settings of a generated log.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Random seed; the same seed gives the same log.
    pub seed: u64,
    /// About how many records to produce (the generator finishes the order
    /// in progress, so it may give a few more).
    pub events: u64,
    /// Number of stores (ids 1..=stores).
    pub stores: u64,
    /// Customers per store.
    pub customers_per_store: u64,
    /// Number of products (ids 9000+).
    pub products: u64,
    /// Days the orders' `created_at` spread over.
    pub days: u32,
    /// First day, as an instant at midnight UTC.
    pub start: Timestamp,
    /// Share of orders that get one or two `OrderUpdated`.
    pub update_ratio: f64,
    /// Share of orders that get cancelled.
    pub cancel_ratio: f64,
    /// Share of records that redeliver an earlier record.
    pub redelivery_ratio: f64,
    /// Share of records that belong to orders never created.
    pub orphan_ratio: f64,
    /// Share of records that are bad (every kind of bad record in turn).
    pub bad_ratio: f64,
    /// Events are emitted in a random order within windows of this size.
    pub shuffle_window: usize,
    /// Stamp orders with the wall clock instead of spreading them over
    /// `days` from `start` (for live demos).
    pub live: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 1,
            events: 10_000,
            stores: 20,
            customers_per_store: 2_000,
            products: 500,
            days: 30,
            start: Timestamp::parse_rfc3339("2024-03-01T00:00:00Z").unwrap_or(Timestamp(0)),
            update_ratio: 0.1,
            cancel_ratio: 0.05,
            redelivery_ratio: 0.02,
            orphan_ratio: 0.005,
            bad_ratio: 0.0,
            shuffle_window: 8,
            live: false,
        }
    }
}

/// One generated record: the Kafka key (`aggregate_id`) and the JSON line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedRecord {
    /// The record key: the event's aggregate id.
    pub key: String,
    /// The record, one line of JSON without the line break.
    pub line: String,
    /// For a bad record, which kind of bad it is.
    pub bad: Option<BadKind>,
}

/// The kinds of bad record the generator writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadKind {
    /// Cut off in the middle.
    InvalidJson,
    /// `customer_id` removed.
    MissingField,
    /// `store_id` as a string.
    WrongType,
    /// `event_type` not in the contract.
    UnknownEventType,
    /// A line item with quantity 0.
    ZeroQuantity,
    /// A negative total.
    NegativeMoney,
    /// No line items.
    NoLineItems,
    /// Money as a float.
    FloatMoney,
}

const BAD_KINDS: [BadKind; 8] = [
    BadKind::InvalidJson,
    BadKind::MissingField,
    BadKind::WrongType,
    BadKind::UnknownEventType,
    BadKind::ZeroQuantity,
    BadKind::NegativeMoney,
    BadKind::NoLineItems,
    BadKind::FloatMoney,
];

/// The generator: an iterator of records.
pub struct Generator {
    config: GeneratorConfig,
    rng: ChaCha8Rng,
    window: VecDeque<GeneratedRecord>,
    /// Recent records, for redelivery.
    recent: Vec<String>,
    produced: u64,
    orders: u64,
    bad_produced: u64,
    titles: Vec<(String, String, i64)>,
}

impl Generator {
    /// A generator with these settings.
    pub fn new(config: GeneratorConfig) -> Generator {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let products = config.products.max(1);
        let titles = (0..products)
            .map(|i| {
                let kind =
                    ["T-shirt", "Mug", "Hoodie", "Cap", "Poster", "Socks", "Tote bag", "Sticker"][(i % 8) as usize];
                // Mostly small items, some expensive ones.
                let price = if rng.random_bool(0.8) {
                    rng.random_range(199..=2_999i64)
                } else {
                    rng.random_range(3_000..=19_999i64)
                };
                (format!("SKU-{:05}", 9000 + i), format!("{kind} #{i}"), price)
            })
            .collect();
        Generator {
            config,
            rng,
            window: VecDeque::new(),
            recent: Vec::new(),
            produced: 0,
            orders: 0,
            bad_produced: 0,
            titles,
        }
    }

    fn uuid(&mut self) -> String {
        let a: u64 = self.rng.random();
        let b: u64 = self.rng.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn line_items(&mut self) -> Vec<LineItem> {
        let count = self.rng.random_range(1..=4usize);
        (0..count)
            .map(|_| {
                let index = self.rng.random_range(0..self.titles.len());
                let (sku, title, price) = self.titles[index].clone();
                LineItem {
                    product_id: 9000 + index as u64,
                    sku: sku.into(),
                    title: title.into(),
                    quantity: self.rng.random_range(1..=3i64),
                    unit_price_cents: price,
                }
            })
            .collect()
    }

    /// Where in the span of days the log currently is.
    fn now(&mut self) -> Timestamp {
        if self.config.live {
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
            return Timestamp(nanos - nanos.rem_euclid(1_000_000_000));
        }
        let span = i64::from(self.config.days.max(1)) * 86_400_000_000_000;
        let progress = self.produced as f64 / self.config.events.max(1) as f64;
        let jitter = self.rng.random_range(-7_200_000_000_000i64..=7_200_000_000_000);
        let at = self.config.start.0 + (progress.min(1.0) * span as f64) as i64 + jitter;
        let at = at.clamp(self.config.start.0, self.config.start.0 + span - 1);
        // Whole seconds, as order systems usually write them.
        Timestamp(at - at.rem_euclid(1_000_000_000))
    }

    fn event(&mut self, aggregate_id: &str, sequence: u64, store_id: u64, at: Timestamp, payload: Payload) -> Event {
        Event {
            event_id: self.uuid(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
            store_id,
            occurred_at: at,
            correlation_id: Some(format!("c-{aggregate_id}")),
            causation_id: None,
            payload,
        }
    }

    /// Queues the events of one more order (or of an order never created).
    fn queue_order(&mut self) {
        self.orders += 1;
        let order_id = format!("o-{}-{}", self.config.seed, self.orders);
        let store_id = self.rng.random_range(1..=self.config.stores.max(1));
        let customer_id = store_id * 100_000 + self.rng.random_range(1..=self.config.customers_per_store.max(1));
        let created_at = self.now();
        let orphan = self.rng.random_bool(self.config.orphan_ratio.clamp(0.0, 1.0));
        let mut events = Vec::new();
        let items = self.line_items();
        let total: i64 = items.iter().map(LineItem::line_total_cents).sum();
        if !orphan {
            events.push(self.event(
                &order_id,
                1,
                store_id,
                created_at,
                Payload::OrderCreated(OrderCreated {
                    order_id: order_id.clone(),
                    customer_id,
                    currency: if store_id % 5 == 0 { "EUR".into() } else { "USD".into() },
                    created_at,
                    line_items: items.clone(),
                    total_cents: total,
                }),
            ));
            let reserved =
                items.iter().map(|i| ReservedItem { sku: i.sku.to_string(), quantity: i.quantity }).collect();
            let reservation_id = self.uuid();
            events.push(self.event(
                &order_id,
                2,
                store_id,
                created_at,
                Payload::InventoryReserved(InventoryReserved {
                    order_id: order_id.clone(),
                    reservation_id,
                    items: reserved,
                }),
            ));
            let transaction_id = self.uuid();
            events.push(self.event(
                &order_id,
                3,
                store_id,
                created_at,
                Payload::PaymentInitiated(PaymentInitiated {
                    order_id: order_id.clone(),
                    amount_cents: total,
                    gateway: "stripe".into(),
                    transaction_id,
                }),
            ));
        }
        let mut sequence = 3;
        if orphan || self.rng.random_bool(self.config.update_ratio.clamp(0.0, 1.0)) {
            for _ in 0..self.rng.random_range(1..=2) {
                sequence += 1;
                let items = self.line_items();
                let total = items
                    .iter()
                    .map(LineItem::line_total_cents)
                    .sum::<i64>()
                    .saturating_sub(self.rng.random_range(0..100));
                events.push(self.event(
                    &order_id,
                    sequence,
                    store_id,
                    created_at,
                    Payload::OrderUpdated(OrderUpdated {
                        order_id: order_id.clone(),
                        line_items: items,
                        total_cents: total.max(0),
                    }),
                ));
            }
        }
        if orphan || self.rng.random_bool(self.config.cancel_ratio.clamp(0.0, 1.0)) {
            sequence += 1;
            events.push(self.event(
                &order_id,
                sequence,
                store_id,
                created_at,
                Payload::OrderCancelled(OrderCancelled {
                    order_id: order_id.clone(),
                    reason: "customer request".into(),
                }),
            ));
        }
        for event in events {
            let mut line = event.to_json_line();
            if let Payload::OrderCreated(created) = &event.payload
                && self.rng.random_bool(0.1)
            {
                let offset = [-300, 60, 330, -480][self.rng.random_range(0..4)];
                let utc = format!("\"created_at\":\"{}\"", created.created_at.to_rfc3339());
                let local = format!("\"created_at\":\"{}\"", created.created_at.to_rfc3339_at_offset(offset));
                line = line.replacen(&utc, &local, 1);
            }
            self.window.push_back(GeneratedRecord { key: event.aggregate_id.clone(), line, bad: None });
        }
    }

    fn bad_record(&mut self) -> GeneratedRecord {
        let kind = BAD_KINDS[(self.bad_produced % BAD_KINDS.len() as u64) as usize];
        self.bad_produced += 1;
        let order_id = format!("bad-{}-{}", self.config.seed, self.bad_produced);
        let created_at = self.now();
        let items = self.line_items();
        let total: i64 = items.iter().map(LineItem::line_total_cents).sum();
        let event = self.event(
            &order_id,
            1,
            1,
            created_at,
            Payload::OrderCreated(OrderCreated {
                order_id: order_id.clone(),
                customer_id: 1,
                currency: "USD".into(),
                created_at,
                line_items: items,
                total_cents: total,
            }),
        );
        let line = event.to_json_line();
        let line = match kind {
            BadKind::InvalidJson => line[..line.len() / 2].to_string(),
            BadKind::MissingField => line.replacen("\"customer_id\":1,", "", 1),
            BadKind::WrongType => line.replacen("\"store_id\":1,", "\"store_id\":\"1\",", 1),
            BadKind::UnknownEventType => line.replacen("OrderCreated", "OrderShipped", 1),
            BadKind::ZeroQuantity => line.replacen("\"quantity\":", "\"quantity\":0,\"was\":", 1),
            BadKind::NegativeMoney => line.replacen(&format!("\"total_cents\":{total}"), "\"total_cents\":-1", 1),
            BadKind::NoLineItems => {
                let start = line.find("\"line_items\":[").unwrap_or(0);
                let end = line.find("],\"total_cents\"").map_or(line.len(), |e| e + 1);
                format!("{}\"line_items\":[]{}", &line[..start], &line[end..])
            }
            BadKind::FloatMoney => line.replacen("\"unit_price_cents\":", "\"unit_price_cents\":0.5,\"was\":", 1),
        };
        GeneratedRecord { key: order_id, line, bad: Some(kind) }
    }
}

impl Iterator for Generator {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        if self.produced >= self.config.events && self.window.is_empty() {
            return None;
        }
        let record = if self.produced > 0 && self.rng.random_bool(self.config.bad_ratio.clamp(0.0, 1.0)) {
            self.bad_record()
        } else if !self.recent.is_empty() && self.rng.random_bool(self.config.redelivery_ratio.clamp(0.0, 1.0)) {
            let line = self.recent[self.rng.random_range(0..self.recent.len())].clone();
            let key = serde_key(&line);
            GeneratedRecord { key, line, bad: None }
        } else {
            while self.window.len() < self.config.shuffle_window.max(1) && self.produced < self.config.events {
                self.queue_order();
            }
            let pick = self.rng.random_range(0..self.window.len().min(self.config.shuffle_window.max(1)).max(1));
            let record = self.window.remove(pick)?;
            if self.recent.len() < 1024 {
                self.recent.push(record.line.clone());
            } else {
                let slot = self.rng.random_range(0..self.recent.len());
                self.recent[slot] = record.line.clone();
            }
            record
        };
        self.produced += 1;
        Some(record)
    }
}

/// The aggregate id of a generated line (for redeliveries).
fn serde_key(line: &str) -> String {
    let start = line.find("\"aggregate_id\":\"").map(|i| i + 16);
    match start {
        Some(start) => line[start..].split('"').next().unwrap_or_default().to_string(),
        None => String::new(),
    }
}

/// The generator as a live source, for `projector demo`: worker 0 produces
/// records at a steady rate, in batches of `batch` wall-clock time. Record
/// positions are partition 0 and the record's number, from 1.
pub struct DatagenSource {
    source_index: u16,
    config: GeneratorConfig,
    rate: Option<f64>,
    batch: std::time::Duration,
}

impl DatagenSource {
    /// Records from `config` at `rate` per second (as fast as possible
    /// when `None`), as source number `source_index`.
    pub fn new(
        source_index: u16,
        config: GeneratorConfig,
        rate: Option<f64>,
        batch: std::time::Duration,
    ) -> DatagenSource {
        DatagenSource { source_index, config, rate, batch }
    }
}

impl projector_core::source::Source for DatagenSource {
    fn reader(
        &self,
        index: usize,
        _peers: usize,
    ) -> Result<Box<dyn projector_core::source::SourceReader>, projector_core::source::SourceError> {
        Ok(Box::new(DatagenReader {
            source_index: self.source_index,
            generator: (index == 0).then(|| Generator::new(self.config.clone())),
            rate: self.rate,
            batch_millis: self.batch.as_millis().max(1) as u64,
            started: std::time::Instant::now(),
            produced: 0,
        }))
    }
}

struct DatagenReader {
    source_index: u16,
    generator: Option<Generator>,
    rate: Option<f64>,
    batch_millis: u64,
    started: std::time::Instant,
    produced: u64,
}

impl projector_core::source::SourceReader for DatagenReader {
    fn poll(
        &mut self,
        max: usize,
        deliver: &mut dyn FnMut(projector_core::record::RecordRef<'_>),
    ) -> Result<projector_core::source::Poll, projector_core::source::SourceError> {
        use projector_core::source::Poll;
        let Some(generator) = self.generator.as_mut() else { return Ok(Poll::Finished) };
        let elapsed = self.started.elapsed();
        let epoch = elapsed.as_millis() as u64 / self.batch_millis;
        let due = match self.rate {
            Some(rate) => (elapsed.as_secs_f64() * rate) as u64,
            None => u64::MAX,
        };
        let wanted = due.saturating_sub(self.produced).min(max as u64);
        if wanted == 0 {
            return Ok(Poll::Idle { epoch });
        }
        for taken in 0..wanted {
            let Some(record) = generator.next() else {
                self.generator = None;
                return Ok(if taken == 0 { Poll::Finished } else { Poll::Records { epoch } });
            };
            self.produced += 1;
            deliver(projector_core::record::RecordRef {
                position: projector_core::record::LogPosition { partition: 0, offset: self.produced },
                key: Some(record.key.as_bytes()),
                bytes: record.line.as_bytes(),
            });
        }
        Ok(Poll::Records { epoch })
    }

    fn positions(&self) -> projector_core::sink::SourcePositions {
        projector_core::sink::SourcePositions([((self.source_index, 0), self.produced + 1)].into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use projector_core::event::{decode_event, decode_order_event};

    #[test]
    fn same_seed_same_log_and_every_good_record_decodes() {
        let config = GeneratorConfig { events: 2_000, bad_ratio: 0.02, ..GeneratorConfig::default() };
        let first: Vec<_> = Generator::new(config.clone()).collect();
        let second: Vec<_> = Generator::new(config).collect();
        assert_eq!(first, second);
        assert!(first.len() >= 2_000);
        let mut bad = 0;
        for record in &first {
            let decoded = decode_event(record.line.as_bytes());
            let for_views = decode_order_event(record.line.as_bytes());
            let want = decoded.clone().map(|e| {
                let occurred_at = e.occurred_at;
                let (event_id, order_event) = e.into_order_event();
                (event_id, order_event, occurred_at)
            });
            assert_eq!(for_views, want, "{}", record.line);
            match record.bad {
                None => assert!(decoded.is_ok(), "{:?}: {}", decoded, record.line),
                Some(kind) => {
                    bad += 1;
                    assert!(decoded.is_err(), "{kind:?} accepted: {}", record.line);
                }
            }
        }
        assert!(bad > 10);
    }
}
