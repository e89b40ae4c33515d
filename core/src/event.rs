//! Domain events (contract section 2): decoding, validation and encoding.
//!
//! [`decode_event`] turns one record's bytes into an [`Event`] or a
//! [`BadRecord`] that says what is wrong and where (a JSON path such as
//! `payload.line_items[1].quantity`). It never panics, whatever the bytes.
//! [`Event::to_json_line`] writes the same format back, for the generator
//! and the command API.
//!
//! Decoding has a fast path (plain serde) and only on failure decodes again
//! with path tracking, so that good records pay nothing for good messages.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::order::{LineItem, OrderChange, OrderContent, OrderEvent, OrderHeader};
use crate::value::Timestamp;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The event types of the contract.
pub const EVENT_TYPES: [&str; 5] =
    ["OrderCreated", "OrderUpdated", "OrderCancelled", "InventoryReserved", "PaymentInitiated"];

/// A decoded, valid event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id; a repeated id is a redelivery and changes nothing.
    pub event_id: String,
    /// The aggregate (order) the event belongs to; the Kafka record key.
    pub aggregate_id: String,
    /// Position of the event within its aggregate, from 1.
    pub sequence: u64,
    /// The store the event belongs to.
    pub store_id: u64,
    /// When the event happened.
    #[serde(with = "rfc3339")]
    pub occurred_at: Timestamp,
    /// Groups the events of one command.
    pub correlation_id: Option<String>,
    /// The event that caused this one, if any.
    pub causation_id: Option<String>,
    /// What happened.
    pub payload: Payload,
}

/// The payload of an event, by `event_type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload")]
pub enum Payload {
    /// An order was placed.
    OrderCreated(OrderCreated),
    /// An order's items and total were replaced.
    OrderUpdated(OrderUpdated),
    /// An order was cancelled.
    OrderCancelled(OrderCancelled),
    /// Stock was reserved for an order.
    InventoryReserved(InventoryReserved),
    /// A payment was started for an order.
    PaymentInitiated(PaymentInitiated),
}

impl Payload {
    /// The `event_type` string of this payload.
    pub fn event_type(&self) -> &'static str {
        match self {
            Payload::OrderCreated(_) => "OrderCreated",
            Payload::OrderUpdated(_) => "OrderUpdated",
            Payload::OrderCancelled(_) => "OrderCancelled",
            Payload::InventoryReserved(_) => "InventoryReserved",
            Payload::PaymentInitiated(_) => "PaymentInitiated",
        }
    }
}

/// Payload of `OrderCreated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct OrderCreated {
    /// The order; equal to the envelope's `aggregate_id`.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: u64,
    /// ISO 4217 code of the money fields.
    pub currency: String,
    /// When the order was placed; its UTC date is the order's day.
    #[serde(with = "rfc3339")]
    pub created_at: Timestamp,
    /// One or more items.
    pub line_items: Vec<LineItem>,
    /// Order total in cents, at least 0.
    pub total_cents: i64,
}

crate::objects_only!(serialize OrderCreated);

/// Payload of `OrderUpdated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct OrderUpdated {
    /// The order; equal to the envelope's `aggregate_id`.
    pub order_id: String,
    /// The order's new items (one or more).
    pub line_items: Vec<LineItem>,
    /// The order's new total in cents, at least 0.
    pub total_cents: i64,
}

crate::objects_only!(serialize OrderUpdated);

/// Payload of `OrderCancelled`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct OrderCancelled {
    /// The order; equal to the envelope's `aggregate_id`.
    pub order_id: String,
    /// Why, for people.
    pub reason: String,
}

crate::objects_only!(serialize OrderCancelled);

/// Payload of `InventoryReserved`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct InventoryReserved {
    /// The order the stock is reserved for.
    pub order_id: String,
    /// Id of the reservation.
    pub reservation_id: String,
    /// What was reserved.
    pub items: Vec<ReservedItem>,
}

crate::objects_only!(serialize InventoryReserved);

/// One reserved SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ReservedItem {
    /// Stock keeping unit.
    pub sku: String,
    /// Units reserved, at least 1.
    pub quantity: i64,
}

crate::objects_only!(serialize ReservedItem);

/// Payload of `PaymentInitiated`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct PaymentInitiated {
    /// The order being paid.
    pub order_id: String,
    /// Amount in cents, at least 0.
    pub amount_cents: i64,
    /// Payment gateway name.
    pub gateway: String,
    /// The gateway's transaction id.
    pub transaction_id: String,
}

crate::objects_only!(serialize PaymentInitiated);

/// An event id, kept compact for deduplication: a UUID written the
/// canonical way (lowercase, hyphenated) is held as 16 bytes, any other id
/// as shared text. Two ids are equal exactly when their texts are.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventId {
    /// A canonical UUID as its high and low 64 bits: two integers, not a
    /// `u128` (which would make the id 32 bytes) nor 16 bytes (which
    /// compare through `memcmp`, and the deduplication's arrangement
    /// compares ids all the time). Their order is the UUID's.
    Uuid(u64, u64),
    /// Any other text.
    Text(Arc<str>),
}

/// The value of each lowercase hex digit; `0xFF` for any other byte.
const HEX_DIGITS: [u8; 256] = {
    let mut digits = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        digits[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        digits[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    digits
};

/// The high and low 64 bits of a UUID written the canonical way
/// (`8-4-4-4-12` lowercase hex digits); `None` for any other text. One
/// table lookup per digit, and one test at the end: ids are decoded once
/// per event, so this is on the hot path.
fn canonical_uuid(text: &[u8; 36]) -> Option<(u64, u64)> {
    if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
        return None;
    }
    let mut invalid = 0u8;
    let mut number = |digits: &[u8]| {
        digits.iter().fold(0u64, |number, byte| {
            let digit = HEX_DIGITS[usize::from(*byte)];
            invalid |= digit;
            number << 4 | u64::from(digit & 0x0F)
        })
    };
    // 16 digits each: `8-4-4` of the high half, `4-12` of the low half.
    let high = number(&text[0..8]) << 32 | number(&text[9..13]) << 16 | number(&text[14..18]);
    let low = number(&text[19..23]) << 48 | number(&text[24..36]);
    (invalid & 0xF0 == 0).then_some((high, low))
}

impl EventId {
    /// The compact form of `text`.
    pub fn new(text: &str) -> EventId {
        if let Ok(bytes) = <&[u8; 36]>::try_from(text.as_bytes())
            && let Some((high, low)) = canonical_uuid(bytes)
        {
            return EventId::Uuid(high, low);
        }
        EventId::Text(text.into())
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::Uuid(high, low) => {
                let hex = format!("{:032x}", u128::from(*high) << 64 | u128::from(*low));
                write!(f, "{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
            }
            EventId::Text(text) => f.write_str(text),
        }
    }
}

/// What kind of problem a bad record has; the label of the dead-letter metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BadRecordKind {
    /// Not UTF-8 JSON, or not one JSON value.
    InvalidJson,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an unreadable value (a float for cents,
    /// text for an id, a timestamp that is not RFC 3339).
    InvalidField,
    /// `event_type` is not one of the contract's.
    UnknownEventType,
    /// `schema_version` is not one this build reads.
    UnsupportedSchemaVersion,
    /// A contract rule is broken: quantity 0, negative money, no line items,
    /// sequence 0, an empty id, `order_id` differing from `aggregate_id`.
    RuleViolation,
}

impl BadRecordKind {
    /// Snake-case name, as in metrics and dead-letter headers.
    pub fn as_str(self) -> &'static str {
        match self {
            BadRecordKind::InvalidJson => "invalid_json",
            BadRecordKind::MissingField => "missing_field",
            BadRecordKind::InvalidField => "invalid_field",
            BadRecordKind::UnknownEventType => "unknown_event_type",
            BadRecordKind::UnsupportedSchemaVersion => "unsupported_schema_version",
            BadRecordKind::RuleViolation => "rule_violation",
        }
    }
}

/// Why a record is not a valid event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct BadRecord {
    /// The kind of problem.
    pub kind: BadRecordKind,
    /// What is wrong and where in the record.
    pub reason: String,
}

impl BadRecord {
    fn rule(reason: impl Into<String>) -> BadRecord {
        BadRecord { kind: BadRecordKind::RuleViolation, reason: reason.into() }
    }
}

/// The envelope as it is on the wire; the payload is decoded once the
/// event type is known. Strings borrow from the record where they can.
#[derive(Deserialize)]
#[serde(remote = "Self")]
struct WireEnvelope<'a> {
    #[serde(borrow)]
    event_id: WireStr<'a>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    schema_version: i64,
    #[serde(borrow)]
    aggregate_id: WireStr<'a>,
    /// Wider than the `u64` it must fit, so that a negative sequence is a
    /// rule violation that says so.
    #[serde(deserialize_with = "sequence_number")]
    sequence: i128,
    store_id: u64,
    #[serde(with = "rfc3339")]
    occurred_at: Timestamp,
    #[serde(default, borrow)]
    correlation_id: Option<WireStr<'a>>,
    #[serde(default, borrow)]
    causation_id: Option<WireStr<'a>>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

crate::objects_only!(WireEnvelope<'a>);

/// An event's envelope, decoded in one pass with its payload when
/// `event_type` comes before `payload` (as this project's writers put
/// them): the payload is then not scanned once to be held raw and again to
/// be typed. A payload before its `event_type` is held raw and typed
/// after, as [`WireEnvelope`] does. Whatever [`WireEnvelope`] rejects this
/// rejects too, and also a typed payload that does not decode: the caller
/// then decodes again the two-pass way, which says what is wrong.
struct OnePass<'a> {
    /// The envelope; its `payload` is `null` when `typed` holds it.
    envelope: WireEnvelope<'a>,
    typed: Option<WirePayload<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for OnePass<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OnePassVisitor)
    }
}

struct OnePassVisitor;

/// A timestamp field, read like `#[serde(with = "rfc3339")]`.
struct Rfc3339(Timestamp);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        rfc3339::deserialize(deserializer).map(Rfc3339)
    }
}

impl<'de> serde::de::Visitor<'de> for OnePassVisitor {
    type Value = OnePass<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OnePass<'de>, A::Error> {
        use serde::de::Error;
        fn once<T, E: Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
            match slot.replace(value) {
                Some(_) => Err(E::duplicate_field(name)),
                None => Ok(()),
            }
        }
        let (mut event_id, mut event_type, mut schema_version, mut aggregate_id) = (None, None, None, None);
        let (mut sequence, mut store_id, mut occurred_at) = (None, None, None);
        let (mut correlation_id, mut causation_id, mut payload) = (None, None, None);
        let (mut typed, mut seen_payload) = (None, false);
        while let Some(key) = map.next_key::<WireStr<'de>>()? {
            match key.0.as_ref() {
                "event_id" => once(&mut event_id, "event_id", map.next_value::<WireStr<'de>>()?)?,
                "event_type" => once(&mut event_type, "event_type", map.next_value::<WireStr<'de>>()?.0)?,
                "schema_version" => once(&mut schema_version, "schema_version", map.next_value::<i64>()?)?,
                "aggregate_id" => once(&mut aggregate_id, "aggregate_id", map.next_value::<WireStr<'de>>()?)?,
                "sequence" => once(&mut sequence, "sequence", map.next_value::<SequenceNumber>()?.0)?,
                "store_id" => once(&mut store_id, "store_id", map.next_value::<u64>()?)?,
                "occurred_at" => once(&mut occurred_at, "occurred_at", map.next_value::<Rfc3339>()?.0)?,
                "correlation_id" => once(&mut correlation_id, "correlation_id", map.next_value()?)?,
                "causation_id" => once(&mut causation_id, "causation_id", map.next_value()?)?,
                "payload" if seen_payload => return Err(A::Error::duplicate_field("payload")),
                "payload" => {
                    seen_payload = true;
                    typed = Some(match event_type.as_deref() {
                        Some("OrderCreated") => WirePayload::Created(map.next_value()?),
                        Some("OrderUpdated") => WirePayload::Updated(map.next_value()?),
                        Some("OrderCancelled") => WirePayload::Cancelled(map.next_value()?),
                        Some("InventoryReserved") => WirePayload::Reserved(map.next_value()?),
                        Some("PaymentInitiated") => WirePayload::Payment(map.next_value()?),
                        // Not known yet, or not a known type: typed after.
                        _ => {
                            payload = Some(map.next_value::<&'de RawValue>()?);
                            continue;
                        }
                    });
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let payload = match (payload, &typed) {
            (Some(raw), _) => raw,
            (None, Some(_)) => RawValue::NULL,
            (None, None) => return Err(A::Error::missing_field("payload")),
        };
        let envelope = WireEnvelope {
            event_id: event_id.ok_or_else(|| A::Error::missing_field("event_id"))?,
            event_type: event_type.ok_or_else(|| A::Error::missing_field("event_type"))?,
            schema_version: schema_version.ok_or_else(|| A::Error::missing_field("schema_version"))?,
            aggregate_id: aggregate_id.ok_or_else(|| A::Error::missing_field("aggregate_id"))?,
            sequence: sequence.ok_or_else(|| A::Error::missing_field("sequence"))?,
            store_id: store_id.ok_or_else(|| A::Error::missing_field("store_id"))?,
            occurred_at: occurred_at.ok_or_else(|| A::Error::missing_field("occurred_at"))?,
            correlation_id: correlation_id.flatten(),
            causation_id: causation_id.flatten(),
            payload,
        };
        Ok(OnePass { envelope, typed })
    }
}

/// A JSON string, borrowed from the record unless it has escapes. Decodes
/// (and fails) exactly like `String`.
struct WireStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for WireStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(WireStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl WireStr<'_> {
    fn owned(self) -> String {
        self.0.into_owned()
    }
}

/// A `sequence` as the wire has it: any JSON integer, negative (`i64`) or
/// not (`u64`), for the rules to judge. serde_json reads a larger one, or
/// one with a fraction or exponent, as a float, which is an invalid type
/// here.
struct SequenceNumber(i128);

impl<'de> Deserialize<'de> for SequenceNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SequenceNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a whole number from 1 to {}", u64::MAX)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SequenceNumber, E> {
                Ok(SequenceNumber(v.into()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SequenceNumber, E> {
                Ok(SequenceNumber(v.into()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn sequence_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i128, D::Error> {
    SequenceNumber::deserialize(deserializer).map(|number| number.0)
}

/// `InventoryReserved` as read for validation only (the views do not use
/// it): same fields and errors, borrowed strings.
#[derive(Deserialize)]
#[serde(remote = "Self")]
struct WireReserved<'a> {
    #[serde(borrow)]
    order_id: WireStr<'a>,
    #[serde(borrow)]
    reservation_id: WireStr<'a>,
    #[serde(borrow)]
    items: Vec<WireReservedItem<'a>>,
}

crate::objects_only!(WireReserved<'a>);

#[derive(Deserialize)]
#[serde(remote = "Self")]
struct WireReservedItem<'a> {
    #[serde(borrow)]
    sku: WireStr<'a>,
    quantity: i64,
}

crate::objects_only!(WireReservedItem<'a>);

/// `PaymentInitiated` as read for validation only.
#[derive(Deserialize)]
#[serde(remote = "Self")]
struct WirePayment<'a> {
    #[serde(borrow)]
    order_id: WireStr<'a>,
    amount_cents: i64,
    #[serde(borrow)]
    gateway: WireStr<'a>,
    #[serde(borrow)]
    transaction_id: WireStr<'a>,
}

crate::objects_only!(WirePayment<'a>);

/// A decoded payload before it becomes a [`Payload`].
enum WirePayload<'a> {
    Created(OrderCreated),
    Updated(OrderUpdated),
    Cancelled(OrderCancelled),
    Reserved(WireReserved<'a>),
    Payment(WirePayment<'a>),
}

/// Decodes and validates one event. Never panics.
pub fn decode_event(bytes: &[u8]) -> Result<Event, BadRecord> {
    decode_wire(bytes).map(event)
}

/// The [`Event`] of a decoded envelope and payload.
fn event((envelope, payload): (WireEnvelope<'_>, WirePayload<'_>)) -> Event {
    let payload = match payload {
        WirePayload::Created(created) => Payload::OrderCreated(created),
        WirePayload::Updated(updated) => Payload::OrderUpdated(updated),
        WirePayload::Cancelled(cancelled) => Payload::OrderCancelled(cancelled),
        WirePayload::Reserved(reserved) => Payload::InventoryReserved(InventoryReserved {
            order_id: reserved.order_id.owned(),
            reservation_id: reserved.reservation_id.owned(),
            items: reserved
                .items
                .into_iter()
                .map(|item| ReservedItem { sku: item.sku.owned(), quantity: item.quantity })
                .collect(),
        }),
        WirePayload::Payment(payment) => Payload::PaymentInitiated(PaymentInitiated {
            order_id: payment.order_id.owned(),
            amount_cents: payment.amount_cents,
            gateway: payment.gateway.owned(),
            transaction_id: payment.transaction_id.owned(),
        }),
    };
    Event {
        event_id: envelope.event_id.owned(),
        aggregate_id: envelope.aggregate_id.owned(),
        sequence: envelope.sequence as u64,
        store_id: envelope.store_id,
        occurred_at: envelope.occurred_at,
        correlation_id: envelope.correlation_id.map(WireStr::owned),
        causation_id: envelope.causation_id.map(WireStr::owned),
        payload,
    }
}

/// Decodes and validates one event like [`decode_event`] (same answer for
/// every record) and returns what the views need: its id, its effect on its
/// order if it is an order event, and when it occurred. Builds no
/// [`Event`], so the fields the views do not use are checked but not copied.
pub fn decode_order_event(bytes: &[u8]) -> Result<(EventId, Option<OrderEvent>, Timestamp), BadRecord> {
    let (envelope, payload) = decode_wire(bytes)?;
    let event_id = EventId::new(&envelope.event_id.0);
    let change = match payload {
        WirePayload::Created(created) => created_change(envelope.store_id, created),
        WirePayload::Updated(updated) => updated_change(updated),
        WirePayload::Cancelled(_) => OrderChange::Cancelled,
        WirePayload::Reserved(_) | WirePayload::Payment(_) => return Ok((event_id, None, envelope.occurred_at)),
    };
    let order_id: Arc<str> = envelope.aggregate_id.0.as_ref().into();
    Ok((event_id, Some(OrderEvent { order_id, sequence: envelope.sequence as u64, change }), envelope.occurred_at))
}

fn created_change(store_id: u64, created: OrderCreated) -> OrderChange {
    OrderChange::Created(
        Arc::new(OrderHeader {
            store_id,
            customer_id: created.customer_id,
            currency: created.currency,
            created_at: created.created_at,
        }),
        Arc::new(OrderContent { line_items: created.line_items.into(), total_cents: created.total_cents }),
    )
}

fn updated_change(updated: OrderUpdated) -> OrderChange {
    OrderChange::Updated(Arc::new(OrderContent {
        line_items: updated.line_items.into(),
        total_cents: updated.total_cents,
    }))
}

/// The envelope and payload of a valid event: decoded, schema version and
/// rules checked.
fn decode_wire(bytes: &[u8]) -> Result<(WireEnvelope<'_>, WirePayload<'_>), BadRecord> {
    // UTF-8 checked once for the whole record, not string by string.
    match std::str::from_utf8(bytes).map(serde_json::from_str::<OnePass<'_>>) {
        Ok(Ok(OnePass { envelope, typed })) => checked_wire(envelope, typed),
        _ => decode_wire_in_two_passes(bytes),
    }
}

/// [`decode_wire`] the way that can say what is wrong: the envelope with
/// its payload held raw, then the payload by its type.
fn decode_wire_in_two_passes(bytes: &[u8]) -> Result<(WireEnvelope<'_>, WirePayload<'_>), BadRecord> {
    match serde_json::from_slice::<WireEnvelope<'_>>(bytes) {
        Ok(envelope) => checked_wire(envelope, None),
        Err(_) => Err(explain::<WireEnvelope<'_>>(bytes, "")),
    }
}

/// The envelope's checks, and its payload (`typed`, or decoded from the
/// envelope's raw payload by its type) with its checks.
fn checked_wire<'a>(
    envelope: WireEnvelope<'a>,
    typed: Option<WirePayload<'a>>,
) -> Result<(WireEnvelope<'a>, WirePayload<'a>), BadRecord> {
    if envelope.schema_version != i64::from(SCHEMA_VERSION) {
        return Err(BadRecord {
            kind: BadRecordKind::UnsupportedSchemaVersion,
            reason: format!(
                "schema_version {} is not supported (this build reads version {SCHEMA_VERSION})",
                envelope.schema_version
            ),
        });
    }
    let payload_bytes = envelope.payload.get().as_bytes();
    let payload = match typed {
        Some(typed) => typed,
        None => match envelope.event_type.as_ref() {
            "OrderCreated" => WirePayload::Created(decode_payload(payload_bytes)?),
            "OrderUpdated" => WirePayload::Updated(decode_payload(payload_bytes)?),
            "OrderCancelled" => WirePayload::Cancelled(decode_payload(payload_bytes)?),
            "InventoryReserved" => WirePayload::Reserved(decode_borrowed_payload(payload_bytes)?),
            "PaymentInitiated" => WirePayload::Payment(decode_borrowed_payload(payload_bytes)?),
            other => {
                return Err(BadRecord {
                    kind: BadRecordKind::UnknownEventType,
                    reason: format!("unknown event_type {other:?}; known types are {}", EVENT_TYPES.join(", ")),
                });
            }
        },
    };
    let sequence = envelope.sequence;
    if sequence < 1 {
        return Err(BadRecord::rule(format!("sequence must be at least 1 (got {sequence})")));
    }
    check_rules(&envelope, &payload)?;
    Ok((envelope, payload))
}

fn decode_borrowed_payload<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, BadRecord> {
    serde_json::from_slice(bytes).map_err(|_| explain::<T>(bytes, "payload."))
}

fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BadRecord> {
    serde_json::from_slice(bytes).map_err(|_| explain::<T>(bytes, "payload."))
}

/// Decodes again with path tracking to say where a decoding error is.
fn explain<'de, T: Deserialize<'de>>(bytes: &'de [u8], prefix: &str) -> BadRecord {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let error = match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(_) => match deserializer.end() {
            Err(inner) => {
                return BadRecord { kind: BadRecordKind::InvalidJson, reason: format!("not valid JSON: {inner}") };
            }
            // Both decodings read the same bytes the same way, so this is
            // not reached; answer something true rather than panic.
            Ok(()) => {
                return BadRecord {
                    kind: BadRecordKind::InvalidField,
                    reason: "the record could not be decoded".into(),
                };
            }
        },
        Err(error) => error,
    };
    let path = error.path().to_string();
    let inner = error.into_inner();
    let message = strip_position(&inner.to_string());
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof | serde_json::error::Category::Io => {
            BadRecord { kind: BadRecordKind::InvalidJson, reason: format!("not valid JSON: {inner}") }
        }
        serde_json::error::Category::Data => {
            let kind = if message.starts_with("missing field") {
                BadRecordKind::MissingField
            } else {
                BadRecordKind::InvalidField
            };
            let reason = if path == "." || path.is_empty() {
                if prefix.is_empty() {
                    format!("event: {message}")
                } else {
                    format!("{}: {message}", prefix.trim_end_matches('.'))
                }
            } else {
                format!("{prefix}{path}: {message}")
            };
            BadRecord { kind, reason }
        }
    }
}

/// serde_json appends " at line L column C"; inside one record the JSON path
/// says more, so drop it.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// Checks the contract's rules that types alone do not express.
fn check_rules(envelope: &WireEnvelope<'_>, payload: &WirePayload<'_>) -> Result<(), BadRecord> {
    non_empty("event_id", &envelope.event_id.0)?;
    non_empty("aggregate_id", &envelope.aggregate_id.0)?;
    let order_id: Option<&str> = match payload {
        WirePayload::Created(created) => {
            check_items(&created.line_items)?;
            non_negative("payload.total_cents", created.total_cents)?;
            storable("payload.created_at", created.created_at)?;
            Some(&created.order_id)
        }
        WirePayload::Updated(updated) => {
            check_items(&updated.line_items)?;
            non_negative("payload.total_cents", updated.total_cents)?;
            Some(&updated.order_id)
        }
        WirePayload::Cancelled(cancelled) => Some(&cancelled.order_id),
        WirePayload::Reserved(reserved) => {
            non_empty("payload.order_id", &reserved.order_id.0)?;
            for (index, item) in reserved.items.iter().enumerate() {
                if item.quantity < 1 {
                    return Err(BadRecord::rule(format!(
                        "payload.items[{index}].quantity must be at least 1 (got {})",
                        item.quantity
                    )));
                }
            }
            None
        }
        WirePayload::Payment(payment) => {
            non_empty("payload.order_id", &payment.order_id.0)?;
            non_negative("payload.amount_cents", payment.amount_cents)?;
            None
        }
    };
    if let Some(order_id) = order_id
        && order_id != envelope.aggregate_id.0
    {
        return Err(BadRecord::rule(format!(
            "payload.order_id {order_id:?} differs from aggregate_id {:?}; an order's events must use its order id as aggregate id",
            envelope.aggregate_id.0
        )));
    }
    Ok(())
}

impl Event {
    /// The event's id, and its effect on its order if it is an order event
    /// (`OrderCreated`, `OrderUpdated`, `OrderCancelled`).
    pub fn into_order_event(self) -> (EventId, Option<OrderEvent>) {
        let change = match self.payload {
            Payload::OrderCreated(created) => created_change(self.store_id, created),
            Payload::OrderUpdated(updated) => updated_change(updated),
            Payload::OrderCancelled(_) => OrderChange::Cancelled,
            Payload::InventoryReserved(_) | Payload::PaymentInitiated(_) => {
                return (EventId::new(&self.event_id), None);
            }
        };
        (
            EventId::new(&self.event_id),
            Some(OrderEvent { order_id: self.aggregate_id.into(), sequence: self.sequence, change }),
        )
    }

    /// The event as one JSON line (no line break), in the contract's layout.
    pub fn to_json_line(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string(&WireOut::from(self)).unwrap_or_default()
    }
}

/// The contract's field order for writing events.
#[derive(Serialize)]
struct WireOut<'a> {
    event_id: &'a str,
    event_type: &'static str,
    schema_version: u32,
    aggregate_id: &'a str,
    sequence: u64,
    store_id: u64,
    #[serde(serialize_with = "rfc3339::serialize")]
    occurred_at: &'a Timestamp,
    correlation_id: &'a Option<String>,
    causation_id: &'a Option<String>,
    payload: PayloadOut<'a>,
}

struct PayloadOut<'a>(&'a Payload);

impl Serialize for PayloadOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Payload::OrderCreated(p) => p.serialize(serializer),
            Payload::OrderUpdated(p) => p.serialize(serializer),
            Payload::OrderCancelled(p) => p.serialize(serializer),
            Payload::InventoryReserved(p) => p.serialize(serializer),
            Payload::PaymentInitiated(p) => p.serialize(serializer),
        }
    }
}

impl<'a> From<&'a Event> for WireOut<'a> {
    fn from(event: &'a Event) -> Self {
        WireOut {
            event_id: &event.event_id,
            event_type: event.payload.event_type(),
            schema_version: SCHEMA_VERSION,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            store_id: event.store_id,
            occurred_at: &event.occurred_at,
            correlation_id: &event.correlation_id,
            causation_id: &event.causation_id,
            payload: PayloadOut(&event.payload),
        }
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), BadRecord> {
    if value.is_empty() {
        return Err(BadRecord::rule(format!("{field} must not be empty")));
    }
    Ok(())
}

/// The instants a view's dates and timestamps can be kept at in every
/// sink: ClickHouse's `Date` and `DateTime` hold 1970-01-01 to
/// 2106-02-07T06:28:15Z (an unsigned 32-bit count of seconds), and an
/// order created outside it would be written there as another day.
const STORABLE: (Timestamp, Timestamp) = (Timestamp(0), Timestamp(4_294_967_295 * 1_000_000_000));

fn storable(field: &str, at: Timestamp) -> Result<(), BadRecord> {
    if at < STORABLE.0 || at > STORABLE.1 {
        return Err(BadRecord::rule(format!(
            "{field} {} is outside {} to {}, the instants a view's dates and times are kept at in every sink \
             (ClickHouse's Date and DateTime)",
            at.to_rfc3339(),
            STORABLE.0.to_rfc3339(),
            STORABLE.1.to_rfc3339()
        )));
    }
    Ok(())
}

fn non_negative(field: &str, cents: i64) -> Result<(), BadRecord> {
    if cents < 0 {
        return Err(BadRecord::rule(format!("{field} must not be negative (got {cents})")));
    }
    Ok(())
}

fn check_items(items: &[LineItem]) -> Result<(), BadRecord> {
    if items.is_empty() {
        return Err(BadRecord::rule("payload.line_items must hold at least one item (got none)"));
    }
    for (index, item) in items.iter().enumerate() {
        if item.quantity < 1 {
            return Err(BadRecord::rule(format!(
                "payload.line_items[{index}].quantity must be at least 1 (got {})",
                item.quantity
            )));
        }
        if item.unit_price_cents < 0 {
            // The field's name is written only when it is wrong.
            non_negative(&format!("payload.line_items[{index}].unit_price_cents"), item.unit_price_cents)?;
        }
    }
    Ok(())
}

/// serde helpers for RFC 3339 instants.
pub mod rfc3339 {
    use super::*;

    /// Writes an instant as RFC 3339 UTC.
    pub fn serialize<S: Serializer>(value: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_rfc3339())
    }

    /// Reads an RFC 3339 instant, from the record's own text where it has
    /// no escapes (serde's `Cow<str>` would copy it into a `String`: an
    /// allocation for every event).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let WireStr(text) = WireStr::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "expected an RFC 3339 timestamp between years 1678 and 2261 such as \"2024-03-01T12:00:00Z\", got {:?}",
                text
            ))
        })
    }
}

impl fmt::Display for BadRecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = r#"{"event_id":"e1","event_type":"OrderCreated","schema_version":1,"aggregate_id":"o-1","sequence":1,"store_id":7,"occurred_at":"2024-03-01T12:00:00Z","correlation_id":"c","causation_id":null,"payload":{"order_id":"o-1","customer_id":501,"currency":"USD","created_at":"2024-03-01T12:00:00Z","line_items":[{"product_id":9001,"sku":"T","title":"T-shirt","quantity":2,"unit_price_cents":1999}],"total_cents":3998}}"#;

    fn bad(text: &str) -> BadRecord {
        let record = decode_event(text.as_bytes()).expect_err("should be rejected");
        assert_eq!(decode_order_event(text.as_bytes()).err(), Some(record.clone()), "the views' decoder differs");
        record
    }

    /// Both decoders give the same answer.
    fn agree(text: &str) {
        let full = decode_event(text.as_bytes()).map(|event| {
            let occurred_at = event.occurred_at;
            let (event_id, order_event) = event.into_order_event();
            (event_id, order_event, occurred_at)
        });
        assert_eq!(decode_order_event(text.as_bytes()), full, "{text}");
    }

    const RESERVED: &str = r#"{"event_id":"e2","event_type":"InventoryReserved","schema_version":1,"aggregate_id":"o-1","sequence":2,"store_id":7,"occurred_at":"2024-03-01T12:00:00Z","correlation_id":"c","causation_id":"e1","payload":{"order_id":"o-1","reservation_id":"r-1","items":[{"sku":"T","quantity":2}]}}"#;
    const PAYMENT: &str = r#"{"event_id":"e3","event_type":"PaymentInitiated","schema_version":1,"aggregate_id":"o-1","sequence":3,"store_id":7,"occurred_at":"2024-03-01T12:00:00Z","correlation_id":"c","causation_id":"e2","payload":{"order_id":"o-1","amount_cents":3998,"gateway":"g","transaction_id":"t"}}"#;

    #[test]
    fn the_views_decoder_agrees_with_the_full_one() {
        let variants = [
            ("", ""),
            (r#""e1""#, r#""e\u0031""#),
            (r#""o-1""#, r#""o-\u0031""#),
            (r#""o-1","s"#, r#""o-1\n","s"#),
            (r#""causation_id":"e1""#, r#""causation_id":null"#),
            (r#""causation_id":"e2""#, r#""causation_id":7"#),
            (r#""correlation_id":"c","#, ""),
            (r#""correlation_id":"c""#, r#""correlation_id":["c"]"#),
            (r#""sku":"T","#, ""),
            (r#""sku":"T""#, r#""sku":1"#),
            (r#""quantity":2"#, r#""quantity":0"#),
            (r#""reservation_id":"r-1""#, r#""reservation_id":"""#),
            (r#""items":[{"sku":"T","quantity":2}]"#, r#""items":{}"#),
            (r#""order_id":"o-1","r"#, r#""order_id":"","r"#),
            (r#""order_id":"o-1","a"#, r#""order_id":"","a"#),
            (r#""amount_cents":3998"#, r#""amount_cents":-1"#),
            (r#""gateway":"g","#, ""),
            (r#""transaction_id":"t""#, r#""transaction_id":"\"t\"""#),
            (r#""event_id":"e"#, r#""event_id":"","x":"e"#),
            (r#""aggregate_id":"o-1""#, r#""aggregate_id":"""#),
            (r#""sequence":"#, r#""sequence":-"#),
            (r#""schema_version":1"#, r#""schema_version":2"#),
            (r#""InventoryReserved""#, r#""Inventory\u0052eserved""#),
            ("}}", "}"),
        ];
        let (mut good, mut bad) = (0, 0);
        for (from, to) in variants {
            for base in [CREATED, RESERVED, PAYMENT] {
                let text = base.replacen(from, to, 1);
                agree(&text);
                one_pass_agrees(&text);
                if decode_event(text.as_bytes()).is_ok() { good += 1 } else { bad += 1 }
            }
        }
        assert!(good > 10 && bad > 30, "{good} good, {bad} bad variants");
    }

    /// The one-pass decoder answers exactly what the two-pass one does.
    fn one_pass_agrees(text: &str) {
        let two_passes = decode_wire_in_two_passes(text.as_bytes()).map(event);
        assert_eq!(decode_event(text.as_bytes()), two_passes, "{text}");
    }

    #[test]
    fn one_pass_decoding_agrees_with_two_passes() {
        let payload_first = |base: &str| {
            let at = base.find(r#","payload":"#).unwrap();
            format!("{{{},{}", &base[at + 1..base.len() - 1], &base[1..at]) + "}"
        };
        let mut texts = Vec::new();
        for base in [CREATED, RESERVED, PAYMENT] {
            let payload = &base[base.find(r#""payload":"#).unwrap()..base.len() - 1];
            texts.extend([
                base.to_string(),
                payload_first(base),
                payload_first(&base.replace("OrderCreated", "OrderShipped")),
                base.replacen(r#""event_id""#, &format!("{payload},\"event_id\""), 1),
                base.replacen('}', &format!("}},{payload}"), 1),
                base.replacen(r#""store_id":7,"#, r#""store_id":7,"store_id":7,"#, 1),
                base.replacen(r#""sequence""#, r#""unknown":[{"a":1}],"sequence""#, 1),
                base.replacen(r#""causation_id":"#, r#""causation_id":null,"x":"#, 1),
                base.replacen(r#""event_type":"#, r#""event_type":1,"y":"#, 1),
                base.replacen(r#","payload":"#, r#","event_type":"OrderCreated","payload":"#, 1),
                base.replacen(r#""schema_version":1"#, r#""schema_version":2"#, 1),
                base.replacen(r#""occurred_at":"2024"#, r#""occurred_at":"1024"#, 1),
                base.replacen(r#""order_id":"o-1""#, r#""order_id":7"#, 1),
                payload_first(&base.replacen(r#""order_id":"o-1""#, r#""order_id":7"#, 1)),
                base[..base.find(r#","payload":"#).unwrap()].to_string() + "}",
                format!("[{}]", &base[1..base.len() - 1]),
            ]);
        }
        for text in &texts {
            one_pass_agrees(text);
        }
        // The usual order (type, then payload) takes the one pass.
        for base in [CREATED, RESERVED, PAYMENT] {
            assert!(serde_json::from_slice::<OnePass<'_>>(base.as_bytes()).unwrap().typed.is_some());
        }
        let good = texts.iter().filter(|t| decode_event(t.as_bytes()).is_ok()).count();
        assert!(good >= 9 && texts.len() - good >= 20, "{good} of {} good", texts.len());
    }

    #[test]
    fn event_ids_are_equal_exactly_when_their_texts_are() {
        let uuid = "7b0e6a0e-3c1f-4a35-9d0c-1d2f6f0f3a11";
        assert!(matches!(EventId::new(uuid), EventId::Uuid(..)));
        assert_eq!(EventId::new(uuid).to_string(), uuid);
        assert_eq!(std::mem::size_of::<EventId>(), 24);
        assert!(matches!(EventId::new(&uuid.to_uppercase()), EventId::Text(_)));
        assert_ne!(EventId::new(uuid), EventId::new(&uuid.to_uppercase()));
        assert_eq!(EventId::new("e1"), EventId::Text("e1".into()));
        assert!(matches!(EventId::new("7b0e6a0e-3c1f-4a35-9d0c-1d2f6f0f3a1g"), EventId::Text(_)));
        // Every digit counts, in its place; any other byte anywhere, or a
        // hyphen elsewhere, makes it text (kept as written).
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let value = u128::from(seed) << 64 | u128::from(seed.rotate_left(29) ^ 0x5555);
            let hex = format!("{value:032x}");
            let text = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
            assert_eq!(EventId::new(&text), EventId::Uuid((value >> 64) as u64, value as u64), "{text}");
            assert_eq!(EventId::new(&text).to_string(), text);
            let at = (seed % 36) as usize;
            for other in [b'G', b'A', b'-', b'/', b':', b'`', b'{', b' '] {
                let mut bytes = text.clone().into_bytes();
                if bytes[at] == other {
                    continue;
                }
                bytes[at] = other;
                let changed = String::from_utf8(bytes).unwrap();
                assert_eq!(EventId::new(&changed), EventId::Text(changed.as_str().into()), "{changed}");
            }
        }
    }

    #[test]
    fn decodes_and_round_trips_the_contract_example() {
        let event = decode_event(CREATED.as_bytes()).unwrap();
        assert_eq!(event.sequence, 1);
        let again = decode_event(event.to_json_line().as_bytes()).unwrap();
        assert_eq!(event, again);
    }

    #[test]
    fn names_the_path_of_a_wrong_type() {
        let record = bad(&CREATED.replace(r#""quantity":2"#, r#""quantity":"2""#));
        assert_eq!(record.kind, BadRecordKind::InvalidField);
        assert!(record.reason.starts_with("payload.line_items[0].quantity: invalid type: string"), "{}", record.reason);
    }

    #[test]
    fn names_a_missing_field() {
        let record = bad(&CREATED.replace(r#""customer_id":501,"#, ""));
        assert_eq!(record.kind, BadRecordKind::MissingField);
        assert_eq!(record.reason, "payload: missing field `customer_id`");
        let record = bad(&CREATED.replace(r#""event_id":"e1","#, ""));
        assert_eq!(record.reason, "event: missing field `event_id`");
    }

    #[test]
    fn rejects_rule_violations() {
        assert_eq!(bad(&CREATED.replace(r#""quantity":2"#, r#""quantity":0"#)).kind, BadRecordKind::RuleViolation);
        assert_eq!(bad(&CREATED.replace("3998", "-1")).reason, "payload.total_cents must not be negative (got -1)");
        assert_eq!(bad(&CREATED.replace(r#""sequence":1"#, r#""sequence":0"#)).kind, BadRecordKind::RuleViolation);
        // A sequence is any whole number from 1 to 2^64-1.
        let top = CREATED.replace(r#""sequence":1"#, r#""sequence":18446744073709551615"#);
        assert_eq!(decode_event(top.as_bytes()).unwrap().sequence, u64::MAX);
        assert_eq!(decode_order_event(top.as_bytes()).unwrap().1.unwrap().sequence, u64::MAX);
        assert_eq!(
            bad(&CREATED.replace(r#""sequence":1"#, r#""sequence":-3"#)).reason,
            "sequence must be at least 1 (got -3)"
        );
        let over = bad(&CREATED.replace(r#""sequence":1"#, r#""sequence":18446744073709551616"#));
        assert_eq!(over.kind, BadRecordKind::InvalidField);
        assert_eq!(
            over.reason,
            "sequence: invalid type: floating point `1.8446744073709552e+19`, expected a whole number from 1 to 18446744073709551615"
        );
        for other in ["1.5", "1e3", "\"1\"", "true"] {
            let record = bad(&CREATED.replace(r#""sequence":1"#, &format!(r#""sequence":{other}"#)));
            assert_eq!(record.kind, BadRecordKind::InvalidField, "{other}: {}", record.reason);
        }
        let items = CREATED.find(r#""line_items":"#).unwrap();
        let end = CREATED.find(r#","total_cents""#).unwrap();
        let empty = format!("{}\"line_items\":[]{}", &CREATED[..items], &CREATED[end..]);
        assert_eq!(bad(&empty).kind, BadRecordKind::RuleViolation);
        assert_eq!(
            bad(&CREATED.replace(r#""order_id":"o-1""#, r#""order_id":"o-2""#)).kind,
            BadRecordKind::RuleViolation
        );
        // An order created where ClickHouse's Date and DateTime cannot
        // keep it; the ends of that range are kept.
        let created =
            |at: &str| CREATED.replace(r#""created_at":"2024-03-01T12:00:00Z""#, &format!(r#""created_at":"{at}""#));
        let early = bad(&created("1969-12-31T23:59:59Z"));
        assert_eq!(early.kind, BadRecordKind::RuleViolation);
        assert!(
            early.reason.starts_with(
                "payload.created_at 1969-12-31T23:59:59Z is outside 1970-01-01T00:00:00Z to 2106-02-07T06:28:15Z"
            ),
            "{}",
            early.reason
        );
        assert_eq!(bad(&created("2106-02-07T06:28:16Z")).kind, BadRecordKind::RuleViolation);
        for at in ["1970-01-01T00:00:00Z", "2106-02-07T06:28:15Z", "2106-02-07T08:28:15+02:00"] {
            assert!(decode_event(created(at).as_bytes()).is_ok(), "{at}");
        }
    }

    #[test]
    fn rejects_money_as_float_and_bad_timestamps() {
        assert_eq!(bad(&CREATED.replace("1999", "19.99")).kind, BadRecordKind::InvalidField);
        let record = bad(&CREATED.replace(r#""created_at":"2024-03-01T12:00:00Z""#, r#""created_at":"yesterday""#));
        assert!(record.reason.starts_with("payload.created_at: expected an RFC 3339"), "{}", record.reason);
    }

    #[test]
    fn classifies_unknown_types_versions_and_garbage() {
        assert_eq!(bad(&CREATED.replace("OrderCreated", "OrderShipped")).kind, BadRecordKind::UnknownEventType);
        assert_eq!(
            bad(&CREATED.replace(r#""schema_version":1"#, r#""schema_version":2"#)).kind,
            BadRecordKind::UnsupportedSchemaVersion
        );
        assert_eq!(bad("{not json").kind, BadRecordKind::InvalidJson);
        assert_eq!(bad("").kind, BadRecordKind::InvalidJson);
        assert_eq!(bad(&format!("{CREATED} trailing")).kind, BadRecordKind::InvalidJson);
        assert_eq!(bad("[1,2]").kind, BadRecordKind::InvalidField);
        assert_eq!(decode_event(&[0xff, 0xfe, b'{']).unwrap_err().kind, BadRecordKind::InvalidJson);
    }

    #[test]
    fn accepts_escaped_event_type() {
        let escaped = CREATED.replace(r#""event_type":"OrderCreated""#, r#""event_type":"Order\u0043reated""#);
        assert_eq!(decode_event(escaped.as_bytes()).unwrap().payload.event_type(), "OrderCreated");
    }

    #[test]
    fn reads_timestamps_with_escapes_as_without() {
        // Borrowed from the record when it can be, copied when an escape
        // must be decoded: the same instant either way.
        let plain = decode_event(CREATED.as_bytes()).unwrap();
        let escaped = CREATED
            .replace(r#""occurred_at":"2024-03-01T12:00:00Z""#, r#""occurred_at":"2024-03-01T12:00:00\u005A""#)
            .replace(r#""created_at":"2024-03-01T12:00:00Z""#, r#""created_at":"2024\u002d03-01T12:00:00Z""#);
        assert!(escaped.contains(r"\u005A") && escaped.contains(r"\u002d"));
        let escaped = decode_event(escaped.as_bytes()).unwrap();
        assert_eq!(escaped.occurred_at, plain.occurred_at);
        assert_eq!(escaped.payload, plain.payload);
        let bad = CREATED.replace(r#""occurred_at":"2024-03-01T12:00:00Z""#, r#""occurred_at":"2024-03-01\u0020""#);
        assert_eq!(
            decode_event(bad.as_bytes()).unwrap_err().reason,
            "occurred_at: expected an RFC 3339 timestamp between years 1678 and 2261 such as \"2024-03-01T12:00:00Z\", got \"2024-03-01 \""
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode_event(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_events(base in 0usize..3, cut in 0usize..400, insert in ".{0,3}") {
            let mut text = [CREATED, RESERVED, PAYMENT][base].to_string();
            let at = cut.min(text.len());
            if text.is_char_boundary(at) {
                text.insert_str(at, &insert);
            }
            // Neither decoder panics, and they agree; one pass or two,
            // the answer is the same.
            agree(&text);
            one_pass_agrees(&text);
        }
    }
}
