//! One test per kind of bad record: it reaches `dead_letters.jsonl` with its
//! original line, line number and a reason that says what is wrong, and it
//! changes no view.
#![allow(clippy::unwrap_used, missing_docs)]

use serde_json::json;

use projector_tests::{run_lines, shipped_config_text};

const GOOD_CREATE: &str = r#"{"event_id":"e1","event_type":"OrderCreated","schema_version":1,"aggregate_id":"o-1","sequence":1,"store_id":7,"occurred_at":"2024-03-01T12:00:00Z","correlation_id":"c-1","causation_id":null,"payload":{"order_id":"o-1","customer_id":501,"currency":"USD","created_at":"2024-03-01T12:00:00Z","line_items":[{"product_id":9001,"sku":"TSHIRT-M","title":"T-shirt","quantity":2,"unit_price_cents":1999}],"total_cents":3998}}"#;

/// Runs the good create plus `bad` and checks the dead letter and that the
/// views are those of the good create alone.
fn assert_dead_letter(bad: &str, reason_contains: &str, kind: &str) {
    let lines = vec![GOOD_CREATE.to_string(), bad.to_string()];
    for workers in [1, 2] {
        let output = run_lines(&shipped_config_text(), &lines, workers, 100);
        assert_eq!(output.dead_letters.len(), 1, "{bad}");
        let letter = &output.dead_letters[0];
        assert_eq!(letter["line"], json!(bad));
        assert_eq!(letter["line_number"], json!(2));
        assert_eq!(letter["kind"], json!(kind), "{letter}");
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains(reason_contains), "reason {reason:?} should mention {reason_contains:?}");
        assert_eq!(
            output.views["order_summary"],
            vec![
                json!({"store_id":7,"date":"2024-03-01","order_count":1,"revenue_cents":3998,"average_order_value_cents":3998,"cancellation_count":0})
            ]
        );
        assert_eq!(output.views["customer_ltv"].len(), 1);
        assert_eq!(output.views["product_sales"].len(), 1);
    }
}

fn changed(from: &str, to: &str) -> String {
    assert!(GOOD_CREATE.contains(from), "{from}");
    GOOD_CREATE.replacen(from, to, 1).replacen("\"e1\"", "\"e2\"", 1).replace("o-1", "o-2")
}

#[test]
fn invalid_json() {
    assert_dead_letter(&GOOD_CREATE[..80], "not valid JSON", "invalid_json");
    assert_dead_letter("hello", "not valid JSON", "invalid_json");
    assert_dead_letter(&format!("{} {{}}", changed("o-1", "o-2")), "trailing characters", "invalid_json");
}

#[test]
fn missing_envelope_field() {
    assert_dead_letter(&changed("\"event_id\":\"e1\",", ""), "missing field `event_id`", "missing_field");
    assert_dead_letter(&changed("\"sequence\":1,", ""), "missing field `sequence`", "missing_field");
}

#[test]
fn missing_payload_field() {
    assert_dead_letter(&changed("\"customer_id\":501,", ""), "payload: missing field `customer_id`", "missing_field");
    assert_dead_letter(
        &changed("\"sku\":\"TSHIRT-M\",", ""),
        "payload.line_items[0]: missing field `sku`",
        "missing_field",
    );
}

#[test]
fn wrong_type() {
    assert_dead_letter(
        &changed("\"store_id\":7", "\"store_id\":\"7\""),
        "store_id: invalid type: string",
        "invalid_field",
    );
    assert_dead_letter(
        &changed("\"unit_price_cents\":1999", "\"unit_price_cents\":19.99"),
        "payload.line_items[0].unit_price_cents",
        "invalid_field",
    );
    assert_dead_letter(&changed("\"customer_id\":501", "\"customer_id\":-501"), "payload.customer_id", "invalid_field");
    assert_dead_letter(
        &changed("\"created_at\":\"2024-03-01T12:00:00Z\"", "\"created_at\":\"1 March\""),
        "payload.created_at: expected an RFC 3339",
        "invalid_field",
    );
    assert_dead_letter("[1,2,3]", "invalid type", "invalid_field");
}

/// Serde would read a struct from an array of its fields in order; the
/// contract's events and their parts are objects.
#[test]
fn parts_given_as_arrays() {
    assert_dead_letter(
        &changed(
            r#"{"product_id":9001,"sku":"TSHIRT-M","title":"T-shirt","quantity":2,"unit_price_cents":1999}"#,
            r#"[9001,"TSHIRT-M","T-shirt",2,1999]"#,
        ),
        "payload.line_items[0]: invalid type: sequence, expected a JSON object",
        "invalid_field",
    );
    let payload = &GOOD_CREATE[GOOD_CREATE.find("{\"order_id\"").unwrap()..GOOD_CREATE.len() - 1];
    assert_dead_letter(
        &changed(payload, r#"["o-2",501,"USD","2024-03-01T12:00:00Z",[[9001,"TSHIRT-M","T-shirt",2,1999]],3998]"#),
        "payload: invalid type: sequence, expected a JSON object",
        "invalid_field",
    );
    let envelope = r#"["e2","OrderCreated",1,"o-2",1,7,"2024-03-01T12:00:00Z","c-1",null,{"order_id":"o-2","customer_id":501,"currency":"USD","created_at":"2024-03-01T12:00:00Z","line_items":[{"product_id":9001,"sku":"TSHIRT-M","title":"T-shirt","quantity":2,"unit_price_cents":1999}],"total_cents":3998}]"#;
    assert_dead_letter(envelope, "event: invalid type: sequence, expected a JSON object", "invalid_field");
    let reserved = changed("OrderCreated", "InventoryReserved");
    let reserved = reserved.replacen(
        &reserved[reserved.find("\"payload\":").unwrap()..reserved.len() - 1],
        r#""payload":{"order_id":"o-2","reservation_id":"r-1","items":[["TSHIRT-M",2]]}"#,
        1,
    );
    assert_dead_letter(&reserved, "payload.items[0]: invalid type: sequence, expected a JSON object", "invalid_field");
}

#[test]
fn unknown_event_type() {
    assert_dead_letter(
        &changed("OrderCreated", "OrderShipped"),
        "unknown event_type \"OrderShipped\"",
        "unknown_event_type",
    );
}

#[test]
fn unsupported_schema_version() {
    assert_dead_letter(
        &changed("\"schema_version\":1", "\"schema_version\":2"),
        "schema_version 2",
        "unsupported_schema_version",
    );
}

#[test]
fn zero_quantity() {
    assert_dead_letter(
        &changed("\"quantity\":2", "\"quantity\":0"),
        "payload.line_items[0].quantity must be at least 1 (got 0)",
        "rule_violation",
    );
}

#[test]
fn negative_money() {
    assert_dead_letter(
        &changed("\"total_cents\":3998", "\"total_cents\":-1"),
        "payload.total_cents must not be negative",
        "rule_violation",
    );
    assert_dead_letter(
        &changed("\"unit_price_cents\":1999", "\"unit_price_cents\":-5"),
        "unit_price_cents must not be negative",
        "rule_violation",
    );
}

#[test]
fn no_line_items() {
    let start = GOOD_CREATE.find("[{").unwrap();
    let end = GOOD_CREATE.find("}]").unwrap() + 2;
    let line = format!("{}[]{}", &GOOD_CREATE[..start], &GOOD_CREATE[end..])
        .replace("o-1", "o-2")
        .replacen("\"e1\"", "\"e2\"", 1);
    assert_dead_letter(&line, "payload.line_items must hold at least one item", "rule_violation");
}

#[test]
fn sequence_below_one() {
    assert_dead_letter(&changed("\"sequence\":1", "\"sequence\":0"), "sequence must be at least 1", "rule_violation");
}

#[test]
fn order_id_differs_from_aggregate_id() {
    let line =
        GOOD_CREATE.replacen("\"e1\"", "\"e2\"", 1).replacen("\"aggregate_id\":\"o-1\"", "\"aggregate_id\":\"o-9\"", 1);
    assert_dead_letter(&line, "differs from aggregate_id", "rule_violation");
}

#[test]
fn not_utf8_keeps_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let mut bytes = GOOD_CREATE.as_bytes().to_vec();
    bytes.extend_from_slice(b"\n{\"event_id\":\"\xff\xfe\"}\n");
    std::fs::write(&input, bytes).unwrap();
    let plan = projector_core::config::check_text(&shipped_config_text(), "t.yaml", dir.path()).unwrap();
    let out = dir.path().join("out");
    projector::commands::run_file(plan, &input, &out, 100, Default::default()).unwrap();
    let letters = projector_tests::read_json_lines(&out.join("dead_letters.jsonl"));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["line_number"], json!(2));
    assert_eq!(letters[0]["line_hex"], json!("7b226576656e745f6964223a22fffe227d"));
}
