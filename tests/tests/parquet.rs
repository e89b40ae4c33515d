//! Parquet through Arrow: `projector export` writes a view with its
//! schema and the positions it reflects, from a file and from Kafka (where
//! it stops at the end the topic had when it started); a `parquet` sink
//! keeps a snapshot that `projector validate` checks against the log.
#![allow(clippy::unwrap_used, missing_docs)]

use std::fs::File;
use std::path::Path;

use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use projector::commands;
use projector::validate::{ValidateOptions, validate};
use projector_core::config::{PipelinePlan, check_text};
use projector_dataflows::runner::RunOptions;
use projector_datagen::{Generator, GeneratorConfig};
use projector_sink_parquet::{Shape, read_parquet};
use projector_tests::{first_difference, kafka, reference, shipped_views_yaml};
use serde_json::Value;

fn plan(text: &str, dir: &Path) -> PipelinePlan {
    check_text(text, "parquet.yaml", dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn generated(events: u64, seed: u64) -> Vec<(String, String)> {
    let config = GeneratorConfig { events, seed, stores: 3, bad_ratio: 0.01, ..GeneratorConfig::default() };
    Generator::new(config).map(|record| (record.key, record.line)).collect()
}

fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|row| row.to_string());
    rows
}

/// The rows of view `name` in a Parquet file, as JSON objects.
fn parquet_rows(plan: &PipelinePlan, name: &str, path: &Path) -> Vec<Value> {
    let view = plan.view(name).unwrap();
    let (rows, _) = read_parquet(&Shape::of(view), path).unwrap();
    rows.iter().map(|(key, values)| Value::Object(view.row_json(key, values))).collect()
}

fn expected(lines: &[String], name: &str) -> Vec<Value> {
    let log = reference::read(lines);
    match name {
        "order_summary" => reference::order_summary(&log.orders),
        "product_sales" => reference::product_sales(&log.orders),
        _ => reference::customer_ltv(&log.orders),
    }
}

#[test]
fn export_writes_the_view_with_its_schema_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = generated(5000, 21).into_iter().map(|(_, line)| line).collect();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n{}",
        events.display(),
        shipped_views_yaml()
    );
    for view in ["customer_ltv", "order_summary", "product_sales"] {
        let out = dir.path().join(format!("{view}.parquet"));
        let options = RunOptions { workers: 2, ..RunOptions::default() };
        commands::export(plan(&text, dir.path()), view, &out, options).unwrap();
        let rows = parquet_rows(&plan(&text, dir.path()), view, &out);
        assert!(!rows.is_empty());
        assert_eq!(first_difference(&sorted(rows), &sorted(expected(&lines, view))), None, "{view}");
    }

    // The schema and metadata as any Parquet reader sees them.
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(File::open(dir.path().join("customer_ltv.parquet")).unwrap()).unwrap();
    let schema = builder.schema();
    let columns: Vec<(&str, &DataType, bool)> =
        schema.fields().iter().map(|f| (f.name().as_str(), f.data_type(), f.is_nullable())).collect();
    let timestamp = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    assert_eq!(
        columns,
        vec![
            ("store_id", &DataType::UInt64, false),
            ("customer_id", &DataType::UInt64, false),
            ("order_count", &DataType::UInt64, true),
            ("lifetime_value_cents", &DataType::Int64, true),
            ("average_order_value_cents", &DataType::Int64, true),
            ("first_order_at", &timestamp, true),
            ("last_order_at", &timestamp, true),
            ("segment", &DataType::Utf8, true),
        ]
    );
    let metadata: Vec<(String, Option<String>)> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert!(metadata.contains(&("projector.view".into(), Some("customer_ltv".into()))), "{metadata:?}");
    let positions = format!(r#"{{"events":{{"0":{}}}}}"#, lines.len() + 1);
    assert!(metadata.contains(&("projector.positions".into(), Some(positions))), "{metadata:?}");
    let summary =
        ParquetRecordBatchReaderBuilder::try_new(File::open(dir.path().join("order_summary.parquet")).unwrap())
            .unwrap();
    assert_eq!(summary.schema().field(1).data_type(), &DataType::Date32);

    // A view that is not declared.
    let error = commands::export(plan(&text, dir.path()), "nope", &dir.path().join("x.parquet"), RunOptions::default())
        .unwrap_err();
    assert!(error.to_string().contains("no view \"nope\"; this config declares"), "{error}");

    // A file that is not named as Parquet: refused, and nothing written.
    for name in ["order_summary.csv", "order_summary"] {
        let out = dir.path().join(name);
        let error =
            commands::export(plan(&text, dir.path()), "order_summary", &out, RunOptions::default()).unwrap_err();
        let expected = format!("--out {}: export writes Parquet; name a file ending in .parquet", out.display());
        assert_eq!(error.to_string(), expected);
        assert!(!out.exists());
    }
    let upper = dir.path().join("upper.PARQUET");
    commands::export(plan(&text, dir.path()), "order_summary", &upper, RunOptions::default()).unwrap();
    assert!(upper.exists());
}

#[test]
fn export_from_kafka_stops_where_the_topic_ended() {
    let topic = kafka::fresh_topic("export");
    let records = generated(3000, 22);
    kafka::append(&topic, records.clone());
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n{}",
        kafka::brokers(),
        shipped_views_yaml()
    );
    let out = dir.path().join("ltv.parquet");
    commands::export(plan(&text, dir.path()), "customer_ltv", &out, RunOptions { workers: 2, ..RunOptions::default() })
        .unwrap();
    let lines: Vec<String> = records.into_iter().map(|(_, line)| line).collect();
    let rows = parquet_rows(&plan(&text, dir.path()), "customer_ltv", &out);
    assert_eq!(first_difference(&sorted(rows), &sorted(expected(&lines, "customer_ltv"))), None);
}

#[test]
fn a_parquet_sink_keeps_a_snapshot_that_validate_checks() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = generated(4000, 23).into_iter().map(|(_, line)| line).collect();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: file\n    path: {}\n    batch_records: 500\n{}\nsinks:\n  sales_snapshot:\n    type: parquet\n    view: product_sales\n    path: snapshots/product_sales.parquet\n    every_ms: 50\n",
        events.display(),
        shipped_views_yaml()
    );
    commands::run_config(plan(&text, dir.path()), RunOptions { workers: 2, ..RunOptions::default() }).unwrap();
    let path = dir.path().join("snapshots/product_sales.parquet");
    let rows = parquet_rows(&plan(&text, dir.path()), "product_sales", &path);
    assert_eq!(first_difference(&sorted(rows), &sorted(expected(&lines, "product_sales"))), None);

    // `projector status` shows where the snapshot stands.
    let status = projector::status::status(&plan(&text, dir.path())).unwrap();
    let line = format!(
        "sink sales_snapshot (parquet, view product_sales)\n  snapshot at {{\"events\":{{\"0\":{}}}}}, written ",
        lines.len() + 1
    );
    assert!(status.contains(&line), "{line}\nnot in\n{status}");

    let options = ValidateOptions { view: "product_sales".into(), sample_size: None, seed: 1 };
    let clean = validate(&plan(&text, dir.path()), &options).unwrap();
    assert_eq!(clean.differences, 0, "{}", clean.report);
    let at = format!(
        r#"(parquet): {} rows at {{"events":{{"0":{}}}}}"#,
        expected(&lines, "product_sales").len(),
        lines.len() + 1
    );
    assert!(clean.report.contains(&at), "{at}\n{}", clean.report);

    // A snapshot of the first half is checked against the first half of
    // the log: the positions in its metadata say where it stands.
    let half = dir.path().join("half.jsonl");
    std::fs::write(&half, lines[..2000].join("\n") + "\n").unwrap();
    let half_text = text.replace(&events.display().to_string(), &half.display().to_string());
    commands::run_config(plan(&half_text, dir.path()), RunOptions::default()).unwrap();
    let checked = validate(&plan(&text, dir.path()), &options).unwrap();
    assert_eq!(checked.differences, 0, "{}", checked.report);
    assert!(checked.report.contains(r#"{"events":{"0":2001}}"#), "{}", checked.report);
}
