//! End-to-end load benchmark over Kafka.
//!
//! 1. Throughput: the generator appends about 1,000,000 events to a
//!    64-partition topic; a bounded pipeline consumes them into the three
//!    seed views, on 1 and on 2 workers. Prints events/s.
//! 2. Event-to-view latency: events are appended at a steady 20,000/s to an
//!    8-partition topic (producer with librdkafka's default `linger.ms` of
//!    5) while the pipeline follows the topic; each event's latency is from
//!    the call that appends it to the first completed batch of the views
//!    that reflects it. Prints p50, p99 and max.
//! 3. Command API: orders are placed over HTTP at a steady 2,000/s; prints
//!    the answer latency p50, p99 and max, and the rate achieved.
//!
//! Run: `cargo bench -p projector-benches --bench kafka_e2e`. It starts
//! librdkafka's mock cluster in process. The mock keeps at most 5 MiB per
//! partition, and 1M events are about 460 MiB (appended lz4-compressed), so
//! the throughput topic has 64 partitions. The mock also walks a
//! partition's whole list of message sets on every fetch (no offset index,
//! unlike a real broker), which makes many small partitions slow to follow;
//! hence 8 for the latency topic. Under `cargo test` it runs each part
//! small, as a smoke test. Knobs: `BENCH_EVENTS` (throughput log size),
//! `BENCH_RATE` (latency rate), `BENCH_BATCH_MS`, `BENCH_PARTITIONS`,
//! `BENCH_LATENCY_PARTITIONS`, `BENCH_LINGER_MS` (latency producer),
//! `BENCH_FETCH_WAIT_MS`, `BENCH_WORKERS` (the throughput runs' worker
//! counts, default `1,2`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projector_benches::{
    CompletionSink, Completions, bench_topic, kafka_source, knob, latencies, mock_broker, percentile, shipped_plan,
    steady_load, summary,
};
use projector_commands::log::CommandLogConfig;
use projector_core::config::PipelinePlan;
use projector_core::sink::ViewSink;
use projector_dataflows::runner::{Outputs, RunOptions, run};
use projector_datagen::{Generator, GeneratorConfig};

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

fn main() {
    // As `projector run` does: these runs call the runner directly.
    projector::keep_freed_memory(projector::RUN_KEEPS_FREED);
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let size = |bench: u64, test: u64| if benchmarking { bench } else { test };
    // The mock broker keeps at most 5 MiB per partition: the 1M-event log
    // needs many partitions. For latency, fewer partitions: the mock scans
    // a partition's whole message-set list on every fetch (librdkafka's
    // "FIXME: Maintain an index"), which a real broker does not.
    let brokers = mock_broker(&[
        (bench_topic("throughput"), knob("BENCH_PARTITIONS", 64)),
        (bench_topic("latency"), knob("BENCH_LATENCY_PARTITIONS", 8)),
        (bench_topic("commands"), knob("BENCH_PARTITIONS", 64)),
    ]);
    let plan = shipped_plan();
    let events = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(size(1_000_000, 20_000));
    throughput(&brokers, &plan, events);
    let rate = std::env::var("BENCH_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000.0);
    latency(&brokers, &plan, rate, Duration::from_secs(size(10, 2)));
    command_api(&brokers, 2_000.0, Duration::from_secs(size(10, 2)));
}

fn throughput(brokers: &str, plan: &PipelinePlan, events: u64) {
    let topic = bench_topic("throughput");
    let started = Instant::now();
    let records =
        Generator::new(GeneratorConfig { events, seed: 42, ..GeneratorConfig::default() }).map(|r| (r.key, r.line));
    let appended = projector_source_kafka::produce::append_all(brokers, &topic, records).expect("append");
    println!(
        "kafka throughput: appended {appended} events in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        appended as f64 / started.elapsed().as_secs_f64()
    );
    let workers_list: String = knob("BENCH_WORKERS", "1,2".to_string());
    for workers in workers_list.split(',').filter_map(|w| w.trim().parse::<usize>().ok()) {
        let started = Instant::now();
        let summary = run(
            Arc::new(plan.clone()),
            vec![("bench".into(), kafka_source(brokers, &topic, true))],
            Outputs::default(),
            RunOptions { workers, ..RunOptions::default() },
        )
        .expect("pipeline");
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(summary.records, appended);
        println!(
            "kafka throughput: {workers} worker(s): {} events into the three views in {seconds:.2} s = {:.0} events/s",
            summary.records,
            summary.records as f64 / seconds
        );
    }
}

fn latency(brokers: &str, plan: &PipelinePlan, rate: f64, duration: Duration) {
    let topic = bench_topic("latency");
    let warm =
        Generator::new(GeneratorConfig { events: 1, seed: 1, ..GeneratorConfig::default() }).map(|r| (r.key, r.line));
    projector_source_kafka::produce::append_all(brokers, &topic, warm).expect("topic");
    let completions = Completions::default();
    let mut view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>> = plan.views.iter().map(|_| Vec::new()).collect();
    view_sinks[0].push(("latency".into(), Box::new(CompletionSink(Arc::clone(&completions)))));
    let options = RunOptions { workers: 2, until_idle: false, ..RunOptions::default() };
    let stop = Arc::clone(&options.stop);
    let pipeline = {
        let (plan, source) = (plan.clone(), kafka_source(brokers, &topic, false));
        std::thread::spawn(move || {
            run(Arc::new(plan), vec![("bench".into(), source)], Outputs { view_sinks, ..Outputs::default() }, options)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (sent, achieved, acks) = steady_load(brokers, &topic, rate, duration);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    pipeline.join().expect("pipeline thread").expect("pipeline");
    let latencies = latencies(&acks, &completions.lock().expect("completions"));
    println!(
        "kafka latency: {sent} events at {achieved:.0}/s; event-to-view latency of {}: {}",
        latencies.len(),
        summary(&latencies)
    );
}

fn command_api(brokers: &str, rate: f64, duration: Duration) {
    let topic = bench_topic("commands");
    let state = std::env::temp_dir().join(format!("projector-bench-commands-{}", std::process::id()));
    let log = CommandLogConfig {
        brokers: brokers.to_string(),
        events_topic: topic.clone(),
        inventory_topic: format!("{topic}-inventory"),
        audit_topic: format!("{topic}-audit"),
        properties: Vec::new(),
        state_dir: Some(state.clone()),
    };
    let api = projector::api::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), Some(log), None, Default::default())
        .expect("api");
    let client = projector::http_client::ApiClient::new(api.address);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (latencies, achieved, failures) = runtime.block_on(async move {
        for sku in 0..20 {
            let body = serde_json::json!({"available": 100_000_000}).to_string();
            client.send("PUT", &format!("/v1/stores/1/inventory/SKU-{sku}"), None, body).await.expect("stock");
        }
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicBool::new(false));
        let count = (rate * duration.as_secs_f64()) as u64;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..count {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (client, latencies, failures) = (client.clone(), Arc::clone(&latencies), Arc::clone(&failures));
            tasks.spawn(async move {
                let body = serde_json::json!({"customer_id": n % 500, "line_items": [
                    {"product_id": 1, "sku": format!("SKU-{}", n % 20), "title": "T", "quantity": 1, "unit_price_cents": 999}]})
                .to_string();
                let sent = Instant::now();
                let key = format!("bench-{n}");
                match client.send("POST", "/v1/stores/1/orders", Some(&key), body).await {
                    Ok(response) if response.status == 202 => {
                        if let Ok(mut l) = latencies.lock() {
                            l.push(sent.elapsed());
                        }
                    }
                    _ => failures.store(true, Ordering::Relaxed),
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        let achieved = count as f64 / started.elapsed().as_secs_f64();
        let latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
        (latencies, achieved, failures.load(Ordering::Relaxed))
    });
    api.stop();
    let _ = std::fs::remove_dir_all(&state);
    let mut latencies = latencies;
    latencies.sort();
    println!(
        "command API: {} orders at {achieved:.0}/s{}; answer latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        if failures { " (some failed)" } else { "" },
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}
