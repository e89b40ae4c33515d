//! The read API under load, over HTTP on loopback.
//!
//! The serving store holds the shipped views with 1,000,000 `customer_ltv`
//! rows (20 stores of 50,000 customers) and a year of `order_summary` days
//! per store. A Rust client in this process (hyper, its own runtime) then:
//!
//! 1. keeps `BENCH_CONNECTIONS` (default 32) requests in flight for
//!    `BENCH_SECONDS` and prints requests/s, for a point read (one
//!    customer's LTV) and for a range read (30 days of one store's summary);
//! 2. sends requests at a steady half of that rate, paced by a thread of
//!    its own, and prints the latency p50/p99, each request counted from
//!    when it was due.
//!
//! Run: `cargo bench -p projector-benches --bench reads_e2e`. Under
//! `cargo test` it runs small, as a smoke test. The server and the client
//! share the 2 cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use projector::http_client::ApiClient;
use projector_benches::{knob, percentile};
use projector_core::config::check_text;
use projector_core::sink::{SourcePositions, ViewBatch, ViewChange, ViewRows, ViewSink};
use projector_core::value::{FieldType, Row, Timestamp, Value};
use projector_query_api::auth::Auth;
use projector_query_api::serving::ServingStore;
use projector_tests::shipped_views_yaml;

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

const STORES: u64 = 20;

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let size = |bench: u64, test: u64| if benchmarking { bench } else { test };
    let customers = knob("BENCH_CUSTOMERS", size(1_000_000, 10_000));
    let seconds = Duration::from_secs(knob("BENCH_SECONDS", size(5, 1)));
    let connections = knob("BENCH_CONNECTIONS", 32usize);

    let started = Instant::now();
    let store = Arc::new(filled_store(customers));
    println!("reads: {customers} customer_ltv rows loaded in {:.1} s", started.elapsed().as_secs_f64());
    let api = projector::api::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), None, Some(store), Auth::default())
        .expect("api");
    let client = ApiClient::new(api.address);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let per_store = customers / STORES;
    let point = move |n: u64| format!("/v1/stores/{}/customers/{}", n % STORES, (n / STORES) % per_store.max(1));
    let range = |n: u64| {
        let day = 1 + n % 28;
        format!("/v1/stores/{}/orders/summary?from=2024-02-{day:02}&to=2024-03-{day:02}", n % STORES)
    };
    for (name, path) in
        [("point read (customer LTV)", &point as &dyn Fn(u64) -> String), ("range read (30 days of summary)", &range)]
    {
        // A second to open the connections and touch the data first.
        runtime.block_on(closed_loop(&client, path, connections, Duration::from_secs(1)));
        let rate = runtime.block_on(closed_loop(&client, path, connections, seconds));
        let (latencies, achieved) = runtime.block_on(open_loop(&client, path, rate / 2.0, seconds, connections));
        println!(
            "reads: {name}: {rate:.0} requests/s with {connections} in flight; at {achieved:.0}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    api.stop();
}

/// The shipped views with `customers` customer rows and 365 days of summary
/// per store, every value field filled by its type.
fn filled_store(customers: u64) -> ServingStore {
    let text =
        format!("version: 1\nsources:\n  events:\n    type: file\n    path: none.jsonl\n{}", shipped_views_yaml());
    let plan = check_text(&text, "reads.yaml", std::path::Path::new(".")).expect("shipped views");
    let store = ServingStore::new(&plan);
    let fill = |name: &str, keys: &mut dyn Iterator<Item = Vec<Value>>| {
        let view = store.view(name).expect("view");
        let value_types: Vec<FieldType> = view.fields[view.key_len..].iter().map(|(_, ty)| *ty).collect();
        let changes: Vec<ViewChange> = keys
            .enumerate()
            .map(|(n, key)| {
                let values: Row = value_types.iter().map(|ty| value(*ty, n as u64)).collect::<Vec<_>>().into();
                ViewChange { key: key.into(), values, diff: 1 }
            })
            .collect();
        let mut sink = store.sink(name).expect("sink");
        let positions = SourcePositions([((0, 0), 1)].into_iter().collect());
        let rows = ViewRows::new();
        let batch =
            ViewBatch { changes: &changes, upper: 1, positions: &positions, newest_event_at: None, rows: &rows };
        sink.apply(batch).expect("apply");
    };
    let per_store = customers / STORES;
    fill(
        "customer_ltv",
        &mut (0..STORES).flat_map(|s| (0..per_store).map(move |c| vec![Value::UInt(s), Value::UInt(c)])),
    );
    let first = projector_core::value::parse_date("2023-04-01").expect("date");
    fill(
        "order_summary",
        &mut (0..STORES).flat_map(|s| (0..365).map(move |d| vec![Value::UInt(s), Value::Date(first + d)])),
    );
    store
}

fn value(ty: FieldType, n: u64) -> Value {
    match ty {
        FieldType::UInt => Value::UInt(n % 1000),
        FieldType::Int => Value::Int((n % 100_000) as i64),
        FieldType::Text => Value::Text(["new", "returning", "loyal", "vip"][(n % 4) as usize].into()),
        FieldType::Date => Value::Date(19_800),
        FieldType::Timestamp => Value::Timestamp(Timestamp(1_709_294_400_000_000_000)),
        FieldType::Bool => Value::Bool(n.is_multiple_of(2)),
    }
}

/// Requests/s with `connections` requests always in flight.
async fn closed_loop(client: &ApiClient, path: &dyn Fn(u64) -> String, connections: usize, duration: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let paths: Vec<String> = (0..4096u64).map(|n| path(n * connections as u64 + c as u64)).collect();
        let (client, done, stop, failed) = (client.clone(), Arc::clone(&done), Arc::clone(&stop), Arc::clone(&failed));
        tasks.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                match client.get_status(&paths[n % paths.len()]).await {
                    Ok(200) => {}
                    _ => failed.store(true, Ordering::Relaxed),
                }
                done.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    assert!(!failed.load(Ordering::Relaxed), "some reads failed");
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Latencies (sorted) of requests sent at a steady `rate` over
/// `connections` connections, each counted from the moment it was due (so a
/// slow answer also counts against the requests queued behind it), and the
/// rate achieved.
///
/// A thread of its own keeps the schedule with the operating system's
/// sleep (tens of microseconds), not the runtime's millisecond timer, which
/// would send the requests in bursts, one per tick, and measure the
/// bursts. Requests take the connections in turn; one whose connection is
/// still busy waits for it.
async fn open_loop(
    client: &ApiClient,
    path: &dyn Fn(u64) -> String,
    rate: f64,
    duration: Duration,
    connections: usize,
) -> (Vec<Duration>, f64) {
    let count = (rate * duration.as_secs_f64()) as u64;
    let mut queues = Vec::with_capacity(connections);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (send, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
        queues.push(send);
        let client = client.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while let Some((at, path)) = due.recv().await {
                let status = client.get_status(&path).await;
                assert_eq!(status, Ok(200), "a read failed");
                latencies.push(at.elapsed());
            }
            latencies
        });
    }
    let paths: Vec<String> = (0..count.min(65_536)).map(path).collect();
    let started = Instant::now();
    let pacer = std::thread::spawn(move || {
        for n in 0..count {
            let at = started + Duration::from_secs_f64(n as f64 / rate);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let path = paths[n as usize % paths.len()].clone();
            if queues[n as usize % queues.len()].send((at, path)).is_err() {
                return;
            }
        }
    });
    let mut latencies = Vec::with_capacity(count as usize);
    while let Some(part) = tasks.join_next().await {
        latencies.extend(part.expect("read task"));
    }
    pacer.join().expect("pacer");
    latencies.sort();
    (latencies, count as f64 / started.elapsed().as_secs_f64())
}
