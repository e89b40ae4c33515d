//! The commands as async calls: validate against the state, append the
//! events, answer. The HTTP routes are thin wrappers around these.
//!
//! A command is decided under a lock (so two orders never take the same
//! stock), applied to the state at once, and then appended without the
//! lock; the answer goes out only after the broker acknowledged every
//! record. If an append fails, the service rebuilds its state from the log
//! before the next command, so the log stays the truth.
//!
//! Idempotency: the answer to a request with an `Idempotency-Key` is kept
//! (and written to the log with its first record), and a retry gets it back
//! without appending anything. Order and event ids are derived from the key,
//! so a retry after a crash half-way through appends the missing events
//! with the same ids instead of a second order.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{error, warn};
use uuid::Uuid;

use projector_core::event::{Event, OrderCreated};
use projector_core::value::Timestamp;
use projector_source_kafka::client::producer_config;

use crate::log::{ANSWER_HEADER, COMMAND_HEADER, CommandLogConfig, KEY_HEADER, StockRecord, rebuild};
use crate::request::{self, Rejection};
use crate::state::{Answer, CommandState, Fact, cancel_event, name_id, order_events, placed_answer};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

struct Inner {
    state: CommandState,
    /// Idempotency keys of requests being appended now.
    in_flight: HashSet<String>,
    /// An append failed: rebuild from the log before the next command.
    needs_rebuild: bool,
}

/// The command side of Projector.
pub struct CommandService {
    config: CommandLogConfig,
    producer: FutureProducer,
    inner: Mutex<Inner>,
}

/// What an accepted command does: facts for the state, records for the
/// log, and its answer.
struct Decision {
    facts: Vec<Fact>,
    records: Vec<Outgoing>,
    event_ids: Vec<String>,
    status: u16,
    body: serde_json::Value,
}

impl Decision {
    /// A command that appends `events` to the events topic.
    fn of_events(service: &CommandService, events: Vec<Event>, status: u16, body: serde_json::Value) -> Decision {
        Decision {
            records: events.iter().map(|e| service.event_record(e, None)).collect(),
            event_ids: events.iter().map(|e| e.event_id.clone()).collect(),
            facts: events.into_iter().map(Fact::Event).collect(),
            status,
            body,
        }
    }
}

/// One record to append.
struct Outgoing {
    topic: String,
    key: String,
    payload: Vec<u8>,
    /// Idempotency key and answer, on the first record of a request.
    answer: Option<(String, Answer)>,
}

fn now() -> Timestamp {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    // Whole microseconds, as command services usually stamp.
    Timestamp(nanos - nanos.rem_euclid(1_000))
}

/// What a request is, for telling a retry from another request that
/// reuses its key: the route and a hash of the body.
fn request_id(route: &str, body: &[u8]) -> String {
    format!("{route} {}", Uuid::new_v5(&Uuid::NAMESPACE_OID, body))
}

fn unavailable(error: &str) -> Answer {
    Answer {
        status: 503,
        body: json!({"error": format!("the event log did not take the command ({error}); retry with the same Idempotency-Key")}),
        request: String::new(),
    }
}

impl CommandService {
    /// Starts the service: rebuilds the state from the log (and snapshot)
    /// and completes orders a crash left half-appended.
    pub async fn start(config: CommandLogConfig) -> Result<Arc<CommandService>, StartError> {
        // Answers wait for acknowledgements: send at once, do not linger.
        let producer: FutureProducer = producer_config(&config.brokers, &config.properties)
            .set("linger.ms", "0")
            .create()
            .map_err(|e| StartError(format!("cannot create a Kafka producer: {e}")))?;
        let rebuild_config = config.clone();
        let state = tokio::task::spawn_blocking(move || rebuild(&rebuild_config))
            .await
            .map_err(|e| StartError(e.to_string()))?
            .map_err(StartError)?;
        let service = Arc::new(CommandService {
            config,
            producer,
            inner: Mutex::new(Inner { state, in_flight: HashSet::new(), needs_rebuild: false }),
        });
        service.complete_half_appended_orders().await;
        if service.config.state_dir.is_some() {
            tokio::spawn(snapshot_regularly(Arc::downgrade(&service)));
        }
        Ok(service)
    }

    /// Appends what orders placed before a crash still lack.
    async fn complete_half_appended_orders(&self) {
        let (command, missing) = {
            let mut inner = self.inner.lock().await;
            let correlation = Uuid::new_v4().to_string();
            let stamp = now();
            let mut missing: Vec<Event> = Vec::new();
            let ids: Vec<String> = inner.state.orders.keys().cloned().collect();
            for id in ids {
                missing.extend(inner.state.missing_events(&id, &correlation, stamp));
            }
            if missing.is_empty() {
                return;
            }
            let command = inner.state.last_command + 1;
            for event in &missing {
                inner.state.apply(command, Fact::Event(event.clone()));
            }
            (command, missing)
        };
        warn!(events = missing.len(), "completing orders a crash left half-appended");
        let records = missing.iter().map(|e| self.event_record(e, None)).collect();
        if let Err(error) = self.append(command, records).await {
            error!(%error, "cannot complete half-appended orders");
            self.inner.lock().await.needs_rebuild = true;
        }
    }

    fn event_record(&self, event: &Event, answer: Option<(String, Answer)>) -> Outgoing {
        Outgoing {
            topic: self.config.events_topic.clone(),
            key: event.aggregate_id.clone(),
            payload: event.to_json_line().into_bytes(),
            answer,
        }
    }

    /// Appends records and waits until the broker acknowledged all.
    async fn append(&self, command: u64, records: Vec<Outgoing>) -> Result<(), String> {
        let command_text = command.to_string();
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut headers =
                OwnedHeaders::new().insert(Header { key: COMMAND_HEADER, value: Some(command_text.as_str()) });
            let answer_text;
            if let Some((key, answer)) = &record.answer {
                answer_text = serde_json::to_string(answer).unwrap_or_default();
                headers = headers
                    .insert(Header { key: KEY_HEADER, value: Some(key.as_str()) })
                    .insert(Header { key: ANSWER_HEADER, value: Some(answer_text.as_str()) });
            }
            let future = FutureRecord::to(&record.topic).key(&record.key).payload(&record.payload).headers(headers);
            deliveries.push(self.producer.send(future, Duration::from_secs(10)));
        }
        for delivery in deliveries {
            delivery.await.map_err(|(error, _)| error.to_string())?;
        }
        Ok(())
    }

    /// Writes the audit record of a command (not waited for, unless the
    /// The audit record of a command: what was asked, what was answered,
    /// which events it appended. It carries the idempotency key and answer
    /// too, so a rejection's answer survives a restart.
    fn audit_record(
        &self,
        command: u64,
        route: &str,
        key: Option<&str>,
        answer: &Answer,
        event_ids: &[String],
    ) -> Outgoing {
        let body = json!({
            "command": command,
            "at": now().to_rfc3339(),
            "route": route,
            "idempotency_key": key,
            "status": answer.status,
            "answer": answer.body,
            "event_ids": event_ids,
        });
        Outgoing {
            topic: self.config.audit_topic.clone(),
            key: command.to_string(),
            payload: body.to_string().into_bytes(),
            answer: key.map(|k| (k.to_string(), answer.clone())),
        }
    }

    /// Sends a record without waiting for its acknowledgement (a failure is
    /// logged).
    fn send_unwaited(&self, command: u64, record: Outgoing) {
        let command_text = command.to_string();
        let headers = OwnedHeaders::new().insert(Header { key: COMMAND_HEADER, value: Some(command_text.as_str()) });
        let future = FutureRecord::to(&record.topic).key(&record.key).payload(&record.payload).headers(headers);
        match self.producer.send_result(future) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if let Ok(Err((error, _))) = delivery.await {
                        warn!(%error, "cannot write the audit record");
                    }
                });
            }
            Err((error, _)) => warn!(%error, "cannot write the audit record"),
        }
    }

    /// Returns the kept answer for `key`, if the request was seen before.
    fn kept_answer(inner: &Inner, key: Option<&str>, request: &str) -> Option<Answer> {
        let key = key?;
        match inner.state.answers.get(key) {
            Some(answer) if answer.request == request => Some(answer.clone()),
            Some(_) => Some(rejection_answer(&Rejection::KeyReused, request)),
            None if inner.in_flight.contains(key) => Some(rejection_answer(&Rejection::KeyInFlight, request)),
            None => None,
        }
    }

    async fn rebuild_if_needed(&self) -> Result<(), Answer> {
        let mut inner = self.inner.lock().await;
        if !inner.needs_rebuild {
            return Ok(());
        }
        let config = self.config.clone();
        let state =
            tokio::task::spawn_blocking(move || rebuild(&config)).await.map_err(|e| unavailable(&e.to_string()))?;
        match state {
            Ok(state) => {
                inner.state = state;
                inner.needs_rebuild = false;
                Ok(())
            }
            Err(error) => Err(unavailable(&error)),
        }
    }

    /// Rejects a command: keeps the answer for its key (in the log too).
    async fn reject(&self, route: &str, key: Option<&str>, request: &str, rejection: Rejection) -> Answer {
        let answer = rejection_answer(&rejection, request);
        let command = {
            let mut inner = self.inner.lock().await;
            let command = inner.state.last_command + 1;
            if let Some(key) = key {
                inner.state.apply(command, Fact::Answered { key: key.to_string(), answer: answer.clone() });
            }
            inner.state.last_command = command;
            command
        };
        let record = self.audit_record(command, route, key, &answer, &[]);
        if let Err(error) = self.append(command, vec![record]).await {
            warn!(%error, "cannot write the audit record of a rejected command");
        }
        answer
    }

    /// Finishes an accepted command: append, then answer.
    async fn commit(
        &self,
        route: &str,
        command: u64,
        key: Option<&str>,
        answer: Answer,
        records: Vec<Outgoing>,
        event_ids: Vec<String>,
    ) -> Answer {
        // The audit record is sent with the events; the answer waits only
        // for the events (the audit log is also rebuilt from their headers).
        let mut audit = self.audit_record(command, route, key, &answer, &event_ids);
        audit.answer = None;
        self.send_unwaited(command, audit);
        let result = self.append(command, records).await;
        let mut inner = self.inner.lock().await;
        if let Some(key) = key {
            inner.in_flight.remove(key);
        }
        match result {
            Ok(()) => {
                if let Some(key) = key {
                    inner.state.apply(command, Fact::Answered { key: key.to_string(), answer: answer.clone() });
                }
                answer
            }
            Err(error) => {
                inner.needs_rebuild = true;
                drop(inner);
                let failed = unavailable(&error);
                let record = self.audit_record(command, route, key, &failed, &event_ids);
                if let Err(error) = self.append(command, vec![Outgoing { answer: None, ..record }]).await {
                    warn!(%error, "cannot write the audit record of a failed command");
                }
                failed
            }
        }
    }

    /// Runs one command: a kept answer for its key, or `decide` against the
    /// state; an accepted command's facts are applied at once and its
    /// records appended (the answer rides on the first), then answered.
    async fn execute(
        &self,
        route: String,
        body: &[u8],
        key: Option<&str>,
        decide: impl FnOnce(&CommandState) -> Result<Decision, Rejection>,
    ) -> Answer {
        let request = request_id(&route, body);
        if let Err(answer) = self.rebuild_if_needed().await {
            return answer;
        }
        let (command, answer, records, event_ids) = {
            let mut inner = self.inner.lock().await;
            if let Some(answer) = Self::kept_answer(&inner, key, &request) {
                return answer;
            }
            let decision = match decide(&inner.state) {
                Ok(decision) => decision,
                Err(rejection) => {
                    drop(inner);
                    return self.reject(&route, key, &request, rejection).await;
                }
            };
            let command = inner.state.last_command + 1;
            for fact in decision.facts {
                inner.state.apply(command, fact);
            }
            inner.state.last_command = command;
            if let Some(key) = key {
                inner.in_flight.insert(key.to_string());
            }
            let answer = Answer { status: decision.status, body: decision.body, request };
            let mut records = decision.records;
            if let (Some(first), Some(key)) = (records.first_mut(), key) {
                first.answer = Some((key.to_string(), answer.clone()));
            }
            (command, answer, records, decision.event_ids)
        };
        self.commit(&route, command, key, answer, records, event_ids).await
    }

    /// `POST /v1/stores/{store_id}/orders`.
    pub async fn place_order(&self, store_id: u64, body: &[u8], key: Option<&str>) -> Answer {
        self.execute(format!("POST /v1/stores/{store_id}/orders"), body, key, |state| {
            let order = request::place_order(body)?;
            let order_id = match key {
                Some(key) => name_id(&format!("order:{store_id}:{key}")),
                None => Uuid::new_v4().to_string(),
            };
            let correlation = Uuid::new_v4().to_string();
            let stamp = now();
            let events = if state.orders.get(&order_id).is_some_and(|o| o.created.is_some()) {
                // An earlier attempt with this key appended part of it.
                state.missing_events(&order_id, &correlation, stamp)
            } else {
                state.check_stock(store_id, &order)?;
                let created = OrderCreated {
                    order_id: order_id.clone(),
                    customer_id: order.customer_id,
                    total_cents: order.total_cents(),
                    currency: order.currency,
                    created_at: stamp,
                    line_items: order.line_items,
                };
                order_events(&order_id, store_id, &created, &correlation, stamp)
            };
            let answer = placed_answer(&order_id, "");
            Ok(Decision::of_events(self, events, answer.status, answer.body))
        })
        .await
    }

    /// `POST /v1/orders/{order_id}/cancel`.
    pub async fn cancel_order(&self, order_id: &str, key: Option<&str>) -> Answer {
        self.execute(format!("POST /v1/orders/{order_id}/cancel"), b"", key, |state| {
            let entry = state.check_cancel(order_id)?;
            let event = cancel_event(order_id, entry, &Uuid::new_v4().to_string(), now());
            let body = json!({"order_id": order_id, "status": "cancelled"});
            Ok(Decision::of_events(self, vec![event], 202, body))
        })
        .await
    }

    /// `PUT /v1/stores/{store_id}/inventory/{sku}`.
    pub async fn set_stock(&self, store_id: u64, sku: &str, body: &[u8], key: Option<&str>) -> Answer {
        self.execute(format!("PUT /v1/stores/{store_id}/inventory/{sku}"), body, key, |_state| {
            let available = request::set_stock(body)?;
            let stock = StockRecord { store_id, sku: sku.to_string(), available };
            Ok(Decision {
                facts: vec![Fact::StockSet { store_id, sku: sku.to_string(), available }],
                records: vec![Outgoing {
                    topic: self.config.inventory_topic.clone(),
                    key: format!("{store_id}/{sku}"),
                    payload: serde_json::to_vec(&stock).unwrap_or_default(),
                    answer: None,
                }],
                event_ids: Vec::new(),
                status: 200,
                body: json!({"store_id": store_id, "sku": sku, "available": available}),
            })
        })
        .await
    }

    /// The store of order `order_id`, if the command side knows the order.
    pub async fn order_store(&self, order_id: &str) -> Option<u64> {
        self.inner.lock().await.state.orders.get(order_id).map(|entry| entry.store_id)
    }

    /// Units of `sku` available in `store_id` now.
    pub async fn available(&self, store_id: u64, sku: &str) -> i64 {
        self.inner.lock().await.state.available(store_id, sku)
    }
}

/// How often a new snapshot is folded from the last one and the log since.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

/// Keeps the snapshot recent while the service runs, so that the next start
/// reads little of the log. The fold runs apart from the live state (from
/// the last snapshot and the log), so it never disagrees with the log.
async fn snapshot_regularly(service: std::sync::Weak<CommandService>) {
    let mut last_command = 0;
    loop {
        tokio::time::sleep(SNAPSHOT_EVERY).await;
        let Some(service) = service.upgrade() else { return };
        let command = service.inner.lock().await.state.last_command;
        if command == last_command {
            continue;
        }
        last_command = command;
        let config = service.config.clone();
        drop(service);
        match tokio::task::spawn_blocking(move || rebuild(&config)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => warn!(%error, "cannot refresh the command snapshot"),
            Err(error) => warn!(%error, "cannot refresh the command snapshot"),
        }
    }
}

fn rejection_answer(rejection: &Rejection, request: &str) -> Answer {
    Answer { status: rejection.status(), body: rejection.body(), request: request.to_string() }
}
