//! The command API end to end: commands -> Kafka -> views equal the
//! recomputation of what was appended; every validation error; idempotency
//! keys across restarts; a half-appended order completed, not doubled.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use projector::api::{ApiServer, start_with};
use projector::commands;
use projector::http_client::ApiClient;
use projector_commands::log::CommandLogConfig;
use projector_commands::state::name_id;
use projector_core::config::check_text;
use projector_dataflows::runner::RunOptions;
use projector_tests::{first_difference, kafka, read_json_lines, reference, shipped_config_text};

fn log_config(topic: &str, state_dir: &Path) -> CommandLogConfig {
    CommandLogConfig {
        brokers: kafka::brokers(),
        events_topic: topic.to_string(),
        inventory_topic: format!("{topic}-inventory"),
        audit_topic: format!("{topic}-audit"),
        properties: Vec::new(),
        state_dir: Some(state_dir.to_path_buf()),
    }
}

fn start_api(topic: &str, state_dir: &Path) -> ApiServer {
    start_with(SocketAddr::from(([127, 0, 0, 1], 0)), Some(log_config(topic, state_dir)), None, Default::default())
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn order(customer: u64, items: &[(&str, i64)]) -> String {
    let lines: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, (sku, quantity))| {
            json!({"product_id": 100 + i as u64, "sku": sku, "title": format!("Item {sku}"), "quantity": quantity, "unit_price_cents": 1250})
        })
        .collect();
    json!({"customer_id": customer, "currency": "EUR", "line_items": lines}).to_string()
}

async fn send(client: &ApiClient, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
    let response = client.send(method, path, key, body.to_string()).await.unwrap();
    (response.status, response.body)
}

/// Every record of the events topic, as lines.
fn topic_lines(topic: &str, count: usize) -> Vec<String> {
    let mut records = kafka::read(topic, count);
    records.sort_by_key(|r| (r.partition, r.offset));
    records.into_iter().map(|r| String::from_utf8(r.value).unwrap()).collect()
}

#[test]
fn orders_placed_through_the_api_show_up_in_the_views() {
    let topic = kafka::fresh_topic("shop");
    let state = tempfile::tempdir().unwrap();
    let api = start_api(&topic, state.path());
    let client = ApiClient::new(api.address);
    let runtime = runtime();
    let mut placed = Vec::new();
    runtime.block_on(async {
        for store in 1..=3u64 {
            for sku in ["A", "B", "C"] {
                let (status, _) =
                    send(&client, "PUT", &format!("/v1/stores/{store}/inventory/{sku}"), None, r#"{"available": 40}"#)
                        .await;
                assert_eq!(status, 200);
            }
        }
        for n in 0..120u64 {
            let store = 1 + n % 3;
            let body = order(n % 7, &[("A", 1 + (n % 2) as i64), ("C", 1)]);
            let (status, answer) = send(&client, "POST", &format!("/v1/stores/{store}/orders"), None, &body).await;
            if status == 202 {
                placed.push(answer["order_id"].as_str().unwrap().to_string());
            } else {
                assert_eq!(status, 409, "{answer}");
            }
        }
        for id in placed.iter().step_by(5) {
            let (status, _) = send(&client, "POST", &format!("/v1/orders/{id}/cancel"), None, "").await;
            assert_eq!(status, 202);
        }
    });
    assert!(placed.len() > 30 && placed.len() < 120, "stock should run out for some orders: {}", placed.len());
    api.stop();

    // The pipeline reads the topic the commands appended to.
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_config_text();
    let start = shipped.find("\nsources:").unwrap();
    let end = shipped.find("\nviews:").unwrap();
    let config = format!(
        "{}\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    bounded: true\n{}",
        &shipped[..start],
        kafka::brokers(),
        &shipped[end..]
    );
    let plan = check_text(&config, "shop.yaml", dir.path()).unwrap();
    let summary = commands::run_config(plan, RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let appended = placed.len() * 3 + placed.len().div_ceil(5);
    assert_eq!(summary.records, appended as u64);
    assert_eq!(summary.dead_letter_count(), 0);
    let log = reference::read(&topic_lines(&topic, appended));
    assert_eq!(log.orders.len(), placed.len());
    for (view, rows) in [
        ("order_summary", reference::order_summary(&log.orders)),
        ("product_sales", reference::product_sales(&log.orders)),
        ("customer_ltv", reference::customer_ltv(&log.orders)),
    ] {
        let written = read_json_lines(&dir.path().join("out").join(format!("{view}.jsonl")));
        assert_eq!(first_difference(&written, &rows), None, "view {view}");
    }
}

#[test]
fn every_validation_error_has_its_status_and_fields() {
    let topic = kafka::fresh_topic("validation");
    let state = tempfile::tempdir().unwrap();
    let api = start_api(&topic, state.path());
    let client = ApiClient::new(api.address);
    runtime().block_on(async {
        let place = |body: &'static str| {
            let client = client.clone();
            async move { send(&client, "POST", "/v1/stores/7/orders", None, body).await }
        };
        let (status, body) = place("{not json").await;
        assert_eq!(status, 400);
        assert!(body["error"].as_str().unwrap().starts_with("the request body is not valid"));
        assert_eq!(place("[]").await.0, 400);
        let (status, body) = place(r#"{"line_items": []}"#).await;
        assert_eq!(status, 422);
        assert_eq!(
            body["fields"],
            json!([{"field": "customer_id", "message": "is required"}, {"field": "line_items", "message": "must hold at least one item"}])
        );
        let (status, body) =
            place(r#"{"customer_id": 1, "line_items": [{"product_id": 1, "sku": "A", "quantity": 0, "unit_price_cents": -5}]}"#).await;
        assert_eq!(status, 422);
        let fields: Vec<&str> = body["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["line_items[0].quantity", "line_items[0].unit_price_cents"]);
        let (status, body) = place(r#"{"customer_id": 1, "line_items": [{"product_id": 1, "sku": "A", "quantity": 2, "unit_price_cents": 5}]}"#).await;
        assert_eq!(status, 409);
        assert_eq!(body["items"], json!([{"sku": "A", "requested": 2, "available": 0}]));

        let (status, _) = send(&client, "POST", "/v1/stores/seven/orders", None, "{}").await;
        assert_eq!(status, 400);
        let (status, body) = send(&client, "POST", "/v1/stores/7/orders", Some("has space"), "{}").await;
        assert_eq!(status, 400, "{body}");
        let big = format!("{{\"customer_id\": 1, \"pad\": \"{}\"}}", "x".repeat(70_000));
        let (status, body) = send(&client, "POST", "/v1/stores/7/orders", None, &big).await;
        assert_eq!(status, 413, "{body}");
        assert!(body["error"].as_str().unwrap().contains("larger than"));
        let (status, body) = send(&client, "PUT", "/v1/stores/7/inventory/A", None, r#"{"available": "lots"}"#).await;
        assert_eq!(status, 422, "{body}");
        // A SKU in the path is 1 to 255 characters (not bytes), as the
        // OpenAPI document says.
        let sku = |chars: usize| format!("/v1/stores/7/inventory/{}", "%C3%A9".repeat(chars));
        let (status, body) = send(&client, "PUT", &sku(255), None, r#"{"available": 1}"#).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["sku"].as_str().unwrap().chars().count(), 255);
        let (status, body) = send(&client, "PUT", &sku(256), None, r#"{"available": 1}"#).await;
        assert_eq!(status, 400, "{body}");

        let (status, _) = send(&client, "POST", "/v1/orders/no-such-order/cancel", None, "").await;
        assert_eq!(status, 404);
        assert_eq!(send(&client, "PUT", "/v1/stores/7/inventory/A", None, r#"{"available": 3}"#).await.0, 200);
        let (status, body) =
            place(r#"{"customer_id": 1, "line_items": [{"product_id": 1, "sku": "A", "quantity": 2, "unit_price_cents": 5}]}"#).await;
        assert_eq!(status, 202);
        let id = body["order_id"].as_str().unwrap().to_string();
        assert_eq!(send(&client, "POST", &format!("/v1/orders/{id}/cancel"), None, "").await.0, 202);
        let (status, body) = send(&client, "POST", &format!("/v1/orders/{id}/cancel"), None, "").await;
        assert_eq!(status, 409, "{body}");

        // A key reused for another request is refused.
        let first = order(1, &[("A", 1)]);
        assert_eq!(send(&client, "POST", "/v1/stores/7/orders", Some("reuse"), &first).await.0, 202);
        let (status, body) = send(&client, "POST", "/v1/stores/7/orders", Some("reuse"), &order(2, &[("A", 1)])).await;
        assert_eq!(status, 422, "{body}");
    });
    api.stop();
}

#[test]
fn idempotency_keys_hold_across_restarts_with_and_without_a_snapshot() {
    let topic = kafka::fresh_topic("idempotent");
    let state = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let body = order(9, &[("A", 2)]);
    let api = start_api(&topic, state.path());
    let client = ApiClient::new(api.address);
    let (first, rejected) = runtime.block_on(async {
        assert_eq!(send(&client, "PUT", "/v1/stores/3/inventory/A", None, r#"{"available": 3}"#).await.0, 200);
        let first = send(&client, "POST", "/v1/stores/3/orders", Some("order-1"), &body).await;
        assert_eq!(first.0, 202);
        let again = send(&client, "POST", "/v1/stores/3/orders", Some("order-1"), &body).await;
        assert_eq!(again, first);
        // Not enough stock left: the rejection is the first answer too.
        let rejected = send(&client, "POST", "/v1/stores/3/orders", Some("order-2"), &body).await;
        assert_eq!(rejected.0, 409);
        (first, rejected)
    });
    api.stop();
    let before = kafka::read_all(&topic).len();
    assert_eq!(before, 3);
    // Every command is in the audit log with its answer: the stock, the
    // order, and the rejected order (the retry answered from memory).
    let mut audit: Vec<Value> =
        kafka::read_all(&format!("{topic}-audit")).iter().map(|r| serde_json::from_slice(&r.value).unwrap()).collect();
    audit.sort_by_key(|a| a["command"].as_u64());
    let statuses: Vec<u64> = audit.iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, [200, 202, 409], "{audit:?}");
    assert_eq!(audit[1]["event_ids"].as_array().unwrap().len(), 3);
    assert_eq!(audit[2]["idempotency_key"], json!("order-2"));

    for drop_snapshot in [false, true] {
        if drop_snapshot {
            std::fs::remove_dir_all(state.path()).unwrap();
        }
        let api = start_api(&topic, state.path());
        let client = ApiClient::new(api.address);
        runtime.block_on(async {
            assert_eq!(send(&client, "POST", "/v1/stores/3/orders", Some("order-1"), &body).await, first);
            // More stock now, yet the kept answer stands.
            assert_eq!(send(&client, "PUT", "/v1/stores/3/inventory/A", None, r#"{"available": 50}"#).await.0, 200);
            assert_eq!(send(&client, "POST", "/v1/stores/3/orders", Some("order-2"), &body).await, rejected);
        });
        api.stop();
        assert!(state.path().join("commands-snapshot.json").exists());
    }
    assert_eq!(kafka::read_all(&topic).len(), before, "retries must append nothing");
}

#[test]
fn an_order_a_crash_left_half_appended_is_completed_not_doubled() {
    let topic = kafka::fresh_topic("half");
    let state = tempfile::tempdir().unwrap();
    let order_id = name_id("order:4:retry-me");
    // What a command that died after its first append left behind.
    let created = json!({
        "event_id": name_id(&format!("event:{order_id}:1")), "event_type": "OrderCreated", "schema_version": 1,
        "aggregate_id": order_id, "sequence": 1, "store_id": 4, "occurred_at": "2026-11-26T12:00:00Z",
        "correlation_id": "c", "causation_id": null,
        "payload": {"order_id": order_id, "customer_id": 8, "currency": "USD", "created_at": "2026-11-26T12:00:00Z",
                    "line_items": [{"product_id": 1, "sku": "A", "title": "A", "quantity": 1, "unit_price_cents": 700}], "total_cents": 700}
    });
    kafka::append(&topic, [(order_id.clone(), created.to_string())]);
    let api = start_api(&topic, state.path());
    let client = ApiClient::new(api.address);
    let body = order(8, &[("A", 1)]);
    let answer = runtime().block_on(send(&client, "POST", "/v1/stores/4/orders", Some("retry-me"), &body));
    api.stop();
    assert_eq!(answer, (202, json!({"order_id": order_id, "status": "processing"})));
    let lines = topic_lines(&topic, 3);
    let sequences: Vec<u64> =
        lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, [1, 2, 3], "{lines:?}");
}

#[test]
fn the_pipeline_follows_commands_live() {
    let topic = kafka::fresh_topic("live");
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_config_text();
    let start = shipped.find("\nsources:").unwrap();
    let end = shipped.find("\nviews:").unwrap();
    let config = format!(
        "{}\nsources:\n  events:\n    type: kafka\n    brokers: {brokers}\n    topic: {topic}\napi:\n  listen: 127.0.0.1:0\ncommands:\n  brokers: {brokers}\n  events_topic: {topic}\n  state_dir: {state}\n{}",
        &shipped[..start],
        &shipped[end..],
        brokers = kafka::brokers(),
        state = state.path().display(),
    );
    let plan = check_text(&config, "live.yaml", dir.path()).unwrap();
    // The API of the config listens on a free port: start it the way run does.
    let api = projector::api::start(&plan, None).unwrap().unwrap();
    let client = ApiClient::new(api.address);
    let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
    let stop = Arc::clone(&options.stop);
    let progress = Arc::clone(&options.progress);
    let mut plan_without_api = plan.clone();
    plan_without_api.config.api = None;
    let running = std::thread::spawn(move || commands::run_config(plan_without_api, options));
    runtime().block_on(async {
        assert_eq!(send(&client, "PUT", "/v1/stores/5/inventory/A", None, r#"{"available": 100}"#).await.0, 200);
        for customer in 0..10 {
            assert_eq!(send(&client, "POST", "/v1/stores/5/orders", None, &order(customer, &[("A", 1)])).await.0, 202);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.records.load(Ordering::Relaxed) < 30 {
        assert!(Instant::now() < deadline, "the pipeline did not see the orders");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    running.join().unwrap().unwrap();
    api.stop();
    let summary = read_json_lines(&dir.path().join("out/order_summary.jsonl"));
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["order_count"], json!(10));
    assert_eq!(summary[0]["revenue_cents"], json!(12_500));
}

#[test]
fn tokens_scope_commands_to_their_stores() {
    use projector_query_api::auth::Auth;
    use projector_tests::token_config as token;
    let (store_7, store_8, reader) =
        ("store-seven-commands-0123456789", "store-eight-commands-0123456789", "read-only-secret-0123456789");
    let auth = Auth::new(&[
        token("seven", store_7, Some(vec![7]), false, true),
        token("eight", store_8, Some(vec![8]), false, true),
        token("reader", reader, None, true, false),
    ])
    .unwrap();
    let topic = kafka::fresh_topic("auth");
    let state = tempfile::tempdir().unwrap();
    let api =
        start_with(SocketAddr::from(([127, 0, 0, 1], 0)), Some(log_config(&topic, state.path())), None, auth).unwrap();
    let client = ApiClient::new(api.address);
    let (seven, eight) = (client.with_token(store_7), client.with_token(store_8));
    runtime().block_on(async {
        let stock = r#"{"available": 10}"#;
        // No token, a token without the command right, a store outside it.
        assert_eq!(send(&client, "PUT", "/v1/stores/7/inventory/A", None, stock).await.0, 401);
        let (status, body) = send(&client.with_token(reader), "PUT", "/v1/stores/7/inventory/A", None, stock).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].as_str().unwrap().contains("command right"));
        let (status, body) = send(&eight, "PUT", "/v1/stores/7/inventory/A", None, stock).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].as_str().unwrap().contains("not allowed store 7"));
        assert_eq!(send(&eight, "POST", "/v1/stores/7/orders", None, &order(1, &[("A", 1)])).await.0, 403);

        assert_eq!(send(&seven, "PUT", "/v1/stores/7/inventory/A", None, stock).await.0, 200);
        let (status, placed) = send(&seven, "POST", "/v1/stores/7/orders", None, &order(1, &[("A", 2)])).await;
        assert_eq!(status, 202, "{placed}");
        let order_id = placed["order_id"].as_str().unwrap().to_string();
        // Store 8's token cannot cancel store 7's order, nor learn it exists.
        let cancel = format!("/v1/orders/{order_id}/cancel");
        let (status, body) = send(&eight, "POST", &cancel, None, "").await;
        assert_eq!((status, body), (404, json!({"error": format!("no order {order_id:?}")})));
        assert_eq!(send(&eight, "POST", "/v1/orders/nope/cancel", None, "").await.0, 404);
        assert_eq!(send(&seven, "POST", &cancel, None, "").await.0, 202);
    });
    api.stop();
}
