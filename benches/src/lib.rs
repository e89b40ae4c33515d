//! Shared helpers of the benchmarks.

use projector_datagen::{Generator, GeneratorConfig};

/// `n` generated event lines (seeded, so every run measures the same log).
pub fn generated_lines(n: u64, seed: u64) -> Vec<String> {
    Generator::new(GeneratorConfig { events: n, seed, ..GeneratorConfig::default() }).map(|r| r.line).collect()
}

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use projector::commands;
use projector_core::config::{KafkaSourceConfig, PipelinePlan, StartPosition};
use projector_core::sink::{SinkError, SourcePositions, ViewBatch, ViewSink};
use projector_core::source::Source;
use projector_source_kafka::KafkaSource;
use projector_source_kafka::client::producer_config;

/// CPU seconds (user and system) this process has used so far, all its
/// threads together, from `/proc/self/stat` (in ticks of 1/100 s, Linux's
/// `USER_HZ`); NaN where there is no such file.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_in("/proc/self/stat")
}

/// [`cpu_seconds`] of another process (a server the benchmark started);
/// NaN where there is none.
pub fn cpu_seconds_of(pid: Option<u32>) -> f64 {
    pid.map_or(f64::NAN, |pid| cpu_seconds_in(&format!("/proc/{pid}/stat")))
}

fn cpu_seconds_in(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else { return f64::NAN };
    // The fields after the command's name, which is in parentheses: the
    // 12th and 13th of them are utime and stime.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    match (fields.get(11).and_then(|t| t.parse::<u64>().ok()), fields.get(12).and_then(|t| t.parse::<u64>().ok())) {
        (Some(user), Some(system)) => (user + system) as f64 / 100.0,
        _ => f64::NAN,
    }
}

/// A knob from the environment.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An in-process mock cluster (kept for the life of the process) with
/// `topics` created; answers its bootstrap address.
pub fn mock_broker(topics: &[(String, i32)]) -> String {
    let (send, receive) = std::sync::mpsc::channel();
    let topics = topics.to_vec();
    std::thread::spawn(move || {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        for (name, partitions) in &topics {
            cluster.create_topic(name, *partitions, 1).expect("bench topic");
        }
        send.send(cluster.bootstrap_servers()).expect("address");
        loop {
            std::thread::park();
        }
    });
    receive.recv().expect("mock cluster address")
}

/// The shipped config.
pub fn shipped_plan() -> PipelinePlan {
    commands::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines.yaml")).expect("shipped config")
}

/// A topic name of this process.
pub fn bench_topic(name: &str) -> String {
    format!("bench-{name}-{}", std::process::id())
}

/// A Kafka source on `topic` (knobs `BENCH_BATCH_MS`, `BENCH_FETCH_WAIT_MS`).
pub fn kafka_source(brokers: &str, topic: &str, bounded: bool) -> Arc<dyn Source> {
    Arc::new(KafkaSource::new(
        0,
        KafkaSourceConfig {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            start: StartPosition::Earliest,
            bounded,
            batch_ms: knob("BENCH_BATCH_MS", 10),
            catch_up_batch_ms: projector_core::config::DEFAULT_CATCH_UP_BATCH_MS,
            dead_letter_topic: None,
            group_id: "projector-bench".into(),
            properties: consumer_properties(),
        },
        Instant::now(),
    ))
}

/// Consumer properties from `BENCH_FETCH_WAIT_MS` and `BENCH_CONSUMER`
/// (comma-separated `name=value` librdkafka properties).
fn consumer_properties() -> Vec<(String, String)> {
    let mut properties: Vec<(String, String)> = std::env::var("BENCH_CONSUMER")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    if let Ok(ms) = std::env::var("BENCH_FETCH_WAIT_MS") {
        properties.push(("fetch.wait.max.ms".to_string(), ms));
    }
    properties
}

/// Where each appended record landed and when its append was called.
pub type Sent = Vec<(i32, i64, Instant)>;

struct Acks(Arc<Mutex<Sent>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Box<Instant>) {
        if let Ok(message) = result {
            use rdkafka::message::Message;
            if let Ok(mut acks) = self.0.lock() {
                acks.push((message.partition(), message.offset(), *sent));
            }
        }
    }
}

/// Appends generated events to `topic` at a steady `rate` for `duration`
/// (producer with `linger.ms` from `BENCH_LINGER_MS`, default 5, lz4);
/// answers the records sent, the achieved rate, and where each landed.
pub fn steady_load(brokers: &str, topic: &str, rate: f64, duration: Duration) -> (u64, f64, Sent) {
    let acks = Arc::new(Mutex::new(Vec::new()));
    let producer: BaseProducer<Acks> = producer_config(brokers, &[])
        .set("linger.ms", std::env::var("BENCH_LINGER_MS").unwrap_or_else(|_| "5".into()))
        .set("compression.type", "lz4")
        .create_with_context(Acks(Arc::clone(&acks)))
        .expect("producer");
    let events = (rate * duration.as_secs_f64()) as u64;
    let mut generator = Generator::new(GeneratorConfig { events: u64::MAX, seed: 7, ..GeneratorConfig::default() });
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < events {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(events);
        while sent < due {
            let record = generator.next().expect("generated record");
            let mut record =
                BaseRecord::with_opaque_to(topic, Box::new(Instant::now())).key(&record.key).payload(&record.line);
            while let Err((_, returned)) = producer.send(record) {
                // The local queue is full: serve deliveries and retry.
                producer.poll(Duration::from_millis(1));
                record = returned;
            }
            sent += 1;
        }
        // Serve delivery reports, then wait for the next millisecond's
        // share: the load generator should not take the cores it measures.
        producer.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = producer.flush(Duration::from_secs(30));
    let achieved = sent as f64 / started.elapsed().as_secs_f64();
    let acks = std::mem::take(&mut *acks.lock().expect("acks"));
    (sent, achieved, acks)
}

/// When a sink's store took a batch, and the next offset per partition it
/// then reflected.
pub type Completion = (Instant, BTreeMap<u32, u64>);

/// Completion times of a sink, shared with the bench.
pub type Completions = Arc<Mutex<Vec<Completion>>>;

/// A sink that only notes when each batch completed (the views' own pace).
pub struct CompletionSink(pub Completions);

impl ViewSink for CompletionSink {
    fn apply(&mut self, batch: ViewBatch<'_>) -> Result<(), SinkError> {
        note(&self.0, batch.positions);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Notes that `positions` are in a store now.
pub fn note(completions: &Completions, positions: &SourcePositions) {
    let covered = positions.0.iter().map(|((_, partition), next)| (*partition, *next)).collect();
    if let Ok(mut completions) = completions.lock() {
        completions.push((Instant::now(), covered));
    }
}

/// Per sent record, the time from its append call to the first completion
/// that covers it; sorted.
pub fn latencies(sent: &Sent, completions: &[Completion]) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = Vec::new();
    for (partition, offset, at) in sent {
        let seen = completions
            .iter()
            .find(|(_, covered)| covered.get(&(*partition as u32)).is_some_and(|next| *next > *offset as u64))
            .map(|(done, _)| *done);
        if let Some(done) = seen {
            latencies.push(done.saturating_duration_since(*at));
        }
    }
    latencies.sort();
    latencies
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `p50 … ms, p99 … ms, max … ms` of sorted durations.
pub fn summary(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(sorted, 0.50).as_secs_f64() * 1e3,
        percentile(sorted, 0.99).as_secs_f64() * 1e3,
        sorted.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}
