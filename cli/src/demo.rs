//! `projector demo`: the whole loop on built-in defaults, with no services
//! and no set-up.
//!
//! - an in-process Kafka-protocol broker (librdkafka's mock cluster);
//! - the command API on `127.0.0.1:8080` (by default), appending to it;
//! - a traffic generator placing and cancelling orders through that API
//!   over HTTP, at a steady rate;
//! - the shipped views over the events topic, updating live;
//! - a summary in the terminal every second: events/s, lag, commands, and
//!   the top stores by revenue today.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use projector_commands::log::CommandLogConfig;
use projector_core::config::{self, KafkaSourceConfig, StartPosition};
use projector_core::sink::{SinkError, ViewBatch, ViewSink};
use projector_core::source::Source;
use projector_core::value::{Row, Value};
use projector_dataflows::runner::{Outputs, RunOptions, RunSummary, run};
use projector_source_kafka::KafkaSource;

use crate::commands::CommandError;
use crate::http_client::ApiClient;

/// The shipped `pipelines.yaml`, built into the binary.
pub const SHIPPED_PIPELINES: &str = include_str!("../../pipelines.yaml");

/// The demo's topic of events.
const EVENTS_TOPIC: &str = "demo-order-events";
const STORES: u64 = 10;
const PRODUCTS: u64 = 40;

/// Settings of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Orders placed per second through the API.
    pub rate: f64,
    /// Worker threads of the pipeline.
    pub workers: usize,
    /// Stop after this long (run until Ctrl-C when `None`).
    pub duration: Option<Duration>,
    /// Seed of the traffic.
    pub seed: u64,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Set to stop the demo (Ctrl-C).
    pub stop: Arc<AtomicBool>,
}

/// The `order_summary` rows and the records they reflect.
#[derive(Default)]
struct Board {
    rows: BTreeMap<Row, Row>,
    reflected: u64,
    batches: u64,
}

struct BoardSink(Arc<Mutex<Board>>);

impl ViewSink for BoardSink {
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        let mut board = self.0.lock().map_err(|_| SinkError::Fatal("board lock poisoned".into()))?;
        for change in batch.changes.iter().filter(|c| c.diff < 0) {
            board.rows.remove(&change.key);
        }
        for change in batch.changes.iter().filter(|c| c.diff > 0) {
            board.rows.insert(change.key.clone(), change.values.clone());
        }
        // A fresh topic starts at offset 0: the next offsets add up to the
        // records reflected.
        board.reflected = batch.positions.0.values().sum();
        board.batches += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What the traffic generator did.
#[derive(Default)]
struct Traffic {
    placed: AtomicU64,
    cancelled: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    /// Events the accepted commands appended.
    appended: AtomicU64,
}

/// Starts librdkafka's mock cluster in a thread of its own; returns its
/// bootstrap address.
fn start_broker() -> Result<String, CommandError> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-kafka".into())
        .spawn(move || match rdkafka::mocking::MockCluster::new(1) {
            Ok(cluster) => {
                let created = cluster.create_topic(EVENTS_TOPIC, 4, 1).map_err(|e| e.to_string());
                let _ = send.send(created.map(|()| cluster.bootstrap_servers()));
                loop {
                    std::thread::park();
                }
            }
            Err(error) => {
                let _ = send.send(Err(error.to_string()));
            }
        })
        .map_err(|e| CommandError::Io(format!("cannot start the demo broker: {e}")))?;
    receive
        .recv()
        .map_err(|_| CommandError::Io("the demo broker did not start".into()))?
        .map_err(|e| CommandError::Io(format!("the demo broker did not start: {e}")))
}

/// Runs the demo until Ctrl-C or the duration ends.
pub fn demo(options: DemoOptions) -> Result<RunSummary, CommandError> {
    let plan = config::check_text(SHIPPED_PIPELINES, "pipelines.yaml (built in)", Path::new("."))?;
    let summary_index = plan
        .views
        .iter()
        .position(|v| v.name == "order_summary")
        .ok_or_else(|| CommandError::Io("the built-in pipelines.yaml has no order_summary view".into()))?;
    let brokers = start_broker()?;
    let log = CommandLogConfig {
        brokers: brokers.clone(),
        events_topic: EVENTS_TOPIC.into(),
        inventory_topic: format!("{EVENTS_TOPIC}-inventory"),
        audit_topic: format!("{EVENTS_TOPIC}-audit"),
        properties: Vec::new(),
        state_dir: None,
    };
    let mut view_sinks: Vec<Vec<(String, Box<dyn ViewSink>)>> = plan.views.iter().map(|_| Vec::new()).collect();
    let board = Arc::new(Mutex::new(Board::default()));
    view_sinks[summary_index].push(("terminal".into(), Box::new(BoardSink(Arc::clone(&board)))));
    let mut outputs = Outputs { view_sinks, ..Outputs::default() };
    let reads = crate::components::serve_views(&plan, &mut outputs).map_err(|e| CommandError::Io(e.to_string()))?;
    let api = crate::api::start_with(options.listen, Some(log), Some(Arc::clone(&reads)), Default::default())?;
    println!(
        "command API on http://{}  (try: curl -X PUT http://{}/v1/stores/1/inventory/SKU-1 -d '{{\"available\": 5}}')",
        api.address, api.address
    );

    let source_config = KafkaSourceConfig {
        brokers,
        topic: EVENTS_TOPIC.into(),
        start: StartPosition::Earliest,
        bounded: false,
        batch_ms: 20,
        catch_up_batch_ms: config::DEFAULT_CATCH_UP_BATCH_MS,
        dead_letter_topic: None,
        group_id: "projector-demo".into(),
        properties: Vec::new(),
    };
    let source = KafkaSource::new(0, source_config.clone(), Instant::now());
    let run_options = RunOptions {
        workers: options.workers,
        until_idle: false,
        stop: Arc::clone(&options.stop),
        ..RunOptions::default()
    };
    let stop = Arc::clone(&options.stop);
    let progress = Arc::clone(&run_options.progress);
    crate::components::watch_run(&reads, &progress, vec![(0, source_config)]);
    let sources: Vec<(String, Arc<dyn Source>)> = vec![("demo events".into(), Arc::new(source))];
    let runner = std::thread::spawn(move || run(Arc::new(plan), sources, outputs, run_options));

    let traffic = Arc::new(Traffic::default());
    let traffic_stop = Arc::new(AtomicBool::new(false));
    let generator = {
        let (traffic, traffic_stop, address, rate, seed) =
            (Arc::clone(&traffic), Arc::clone(&traffic_stop), api.address, options.rate, options.seed);
        std::thread::spawn(move || generate_traffic(address, rate, seed, traffic, traffic_stop))
    };

    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let terminal = std::io::stdout().is_terminal();
    while options.duration.is_none_or(|d| started.elapsed() < d)
        && !runner.is_finished()
        && !stop.load(Ordering::Relaxed)
    {
        std::thread::sleep(Duration::from_secs(1));
        let records = progress.records.load(Ordering::Relaxed);
        let rate = (records - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), records);
        let screen = board.lock().map(|b| render(&b, &traffic, rate, started.elapsed())).unwrap_or_default();
        let mut out = std::io::stdout().lock();
        if terminal {
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = writeln!(out, "{screen}");
        let _ = out.flush();
    }
    traffic_stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    stop.store(true, Ordering::Relaxed);
    let result = runner.join();
    api.stop();
    match result {
        Ok(result) => Ok(result?),
        Err(_) => Err(CommandError::Io("the pipeline thread panicked".into())),
    }
}

/// Places and cancels orders through the API at `rate` orders a second.
fn generate_traffic(address: SocketAddr, rate: f64, seed: u64, traffic: Arc<Traffic>, stop: Arc<AtomicBool>) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    runtime.block_on(async move {
        let client = ApiClient::new(address);
        for store in 1..=STORES {
            for product in 1..=PRODUCTS {
                let body = json!({"available": 1_000}).to_string();
                let _ = client.send("PUT", &format!("/v1/stores/{store}/inventory/SKU-{product}"), None, body).await;
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut placed: Vec<String> = Vec::new();
        let started = Instant::now();
        let mut sent = 0u64;
        let mut tasks = tokio::task::JoinSet::new();
        while !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                sent += 1;
                let store = rng.random_range(1..=STORES);
                let lines: Vec<serde_json::Value> = (0..rng.random_range(1..=3))
                    .map(|_| {
                        let product = rng.random_range(1..=PRODUCTS);
                        json!({"product_id": 9000 + product, "sku": format!("SKU-{product}"), "title": format!("Product {product}"),
                               "quantity": rng.random_range(1..=3), "unit_price_cents": 500 + 250 * product})
                    })
                    .collect();
                let body = json!({"customer_id": store * 1_000 + rng.random_range(1..=300), "line_items": lines}).to_string();
                let cancel = (rng.random_bool(0.05) && !placed.is_empty()).then(|| placed.swap_remove(rng.random_range(0..placed.len())));
                let (client, traffic) = (client.clone(), Arc::clone(&traffic));
                let key = format!("demo-{seed}-{sent}");
                tasks.spawn(async move {
                    let mut outcome = None;
                    match client.send("POST", &format!("/v1/stores/{store}/orders"), Some(&key), body).await {
                        Ok(response) if response.status == 202 => {
                            traffic.placed.fetch_add(1, Ordering::Relaxed);
                            traffic.appended.fetch_add(3, Ordering::Relaxed);
                            outcome = response.body["order_id"].as_str().map(str::to_string);
                        }
                        Ok(response) if response.status == 409 => {
                            traffic.rejected.fetch_add(1, Ordering::Relaxed);
                            // Restock what ran out.
                            for item in response.body["items"].as_array().into_iter().flatten() {
                                if let Some(sku) = item["sku"].as_str() {
                                    let body = json!({"available": 1_000}).to_string();
                                    let _ = client.send("PUT", &format!("/v1/stores/{store}/inventory/{sku}"), None, body).await;
                                }
                            }
                        }
                        _ => {
                            traffic.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if let Some(order_id) = cancel
                        && let Ok(response) = client.send("POST", &format!("/v1/orders/{order_id}/cancel"), None, "").await
                        && response.status == 202
                    {
                        traffic.cancelled.fetch_add(1, Ordering::Relaxed);
                        traffic.appended.fetch_add(1, Ordering::Relaxed);
                    }
                    outcome
                });
            }
            while let Some(done) = tasks.try_join_next() {
                if let Ok(Some(order_id)) = done {
                    placed.push(order_id);
                    if placed.len() > 10_000 {
                        placed.swap_remove(0);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while tasks.join_next().await.is_some() {}
    });
}

fn render(board: &Board, traffic: &Traffic, rate: f64, elapsed: Duration) -> String {
    let today = board.rows.keys().filter_map(|k| k.get(1).cloned()).max();
    let mut stores: Vec<(&Row, &Row)> = board.rows.iter().filter(|(k, _)| k.get(1) == today.as_ref()).collect();
    let cents_at = |values: &Row, index: usize| match values.get(index) {
        Some(Value::Int(cents)) => *cents,
        _ => 0,
    };
    stores.sort_by_key(|(_, values)| std::cmp::Reverse(cents_at(values, 1)));
    let appended = traffic.appended.load(Ordering::Relaxed);
    let mut text = format!(
        "Projector demo: orders over HTTP -> Kafka (in-process) -> views, {:.0} s\n\
         commands: {} placed, {} cancelled, {} rejected (409), {} failed\n\
         views: {rate:.0} events/s, lag {} events, {} batches\n\n\
         top stores by revenue on {}\n\
         {:>6} {:>8} {:>14} {:>12} {:>10}\n",
        elapsed.as_secs_f64(),
        traffic.placed.load(Ordering::Relaxed),
        traffic.cancelled.load(Ordering::Relaxed),
        traffic.rejected.load(Ordering::Relaxed),
        traffic.failed.load(Ordering::Relaxed),
        appended.saturating_sub(board.reflected),
        board.batches,
        today.map_or("-".to_string(), |d| d.to_string()),
        "store",
        "orders",
        "revenue",
        "avg order",
        "cancelled",
    );
    for (key, values) in stores.iter().take(5) {
        let field = |row: &Row, i: usize| row.get(i).map_or("-".to_string(), ToString::to_string);
        text.push_str(&format!(
            "{:>6} {:>8} {:>14} {:>12} {:>10}\n",
            field(key, 0),
            field(values, 0),
            money(cents_at(values, 1)),
            money(cents_at(values, 2)),
            field(values, 3),
        ));
    }
    text.push_str("\nCtrl-C to stop.");
    text
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}
