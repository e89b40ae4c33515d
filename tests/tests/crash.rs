//! The crash test of the exactly-once sinks: while ~200K events flow into
//! a topic, `projector run` (Redis and ClickHouse sinks for every view) is
//! killed with SIGKILL at random moments, at least 10 times, and restarted
//! each time. Once the log is drained, Redis and ClickHouse (`FINAL`) hold
//! exactly the recomputation of the log: nothing lost, nothing counted
//! twice.
//!
//! Knobs: `CRASH_EVENTS` (default 200000), `CRASH_KILLS` (default 12).
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use projector_datagen::{Generator, GeneratorConfig};
use projector_tests::services::{ClickHouseServer, RedisServer, available, projector_binary};
use projector_tests::sinks::{
    assert_clickhouse_holds, assert_redis_holds, clickhouse_covered, clickhouse_sinks_yaml, redis_covered,
    redis_sinks_yaml,
};
use projector_tests::{kafka, report, shipped_views_yaml};

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn start(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(projector_binary())
        .args(["run", "-c"])
        .arg(config)
        .args(["-w", "2"])
        // The ClickHouse sink says which generation each run took and what
        // it deleted: the history a failed comparison is read against.
        .env("RUST_LOG", "warn,projector_sink_clickhouse=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A small xorshift, so the kill moments differ per run but the test needs
/// no extra crate; the seed is printed.
struct Moments(u64);

impl Moments {
    fn next_millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice() {
    if !available("redis-server") || !available("clickhouse-server") {
        return;
    }
    let events = knob("CRASH_EVENTS", 200_000);
    let kills = knob("CRASH_KILLS", 12);
    let redis = RedisServer::start(true);
    let clickhouse = ClickHouseServer::start();
    let dir = tempfile::tempdir().unwrap();
    // The mock broker keeps at most 5 MiB per partition.
    let topic = kafka::create_topic("crash", 32);
    let generator = GeneratorConfig { events, seed: 77, bad_ratio: 0.0, ..GeneratorConfig::default() };
    let keyed: Vec<(String, String)> = Generator::new(generator).map(|r| (r.key, r.line)).collect();
    let lines: Vec<String> = keyed.iter().map(|(_, line)| line.clone()).collect();
    let total = keyed.len();

    let config = dir.path().join("crash.yaml");
    let text = format!(
        "version: 1\nsources:\n  events:\n    type: kafka\n    brokers: {}\n    topic: {topic}\n    batch_ms: 20\n{}\nsinks:\n{}{}",
        kafka::brokers(),
        shipped_views_yaml(),
        redis_sinks_yaml(&redis.url(), "crash:"),
        clickhouse_sinks_yaml(&clickhouse.url(), "crash", 300),
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("projector.log");

    // The events flow in over the whole test, in 40 chunks.
    kafka::append(&topic, keyed[..total / 40].to_vec());
    let producer = {
        let keyed = keyed.clone();
        std::thread::spawn(move || {
            for chunk in keyed[total / 40..].chunks(total / 40 + 1) {
                kafka::append(&topic, chunk.to_vec());
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    report(&format!("crash test: kill moments seed {seed}"));
    let mut moments = Moments(seed);
    let started = Instant::now();
    for kill in 1..=kills {
        // Kill once the run writes again (after it rebuilt its state from
        // the log), at a random moment: before, during or after a write.
        let before = (redis_covered(&redis, "crash:"), clickhouse_covered(&clickhouse, "crash"));
        let mut child = start(&config, &log);
        let writing = Instant::now() + Duration::from_secs(120);
        while (redis_covered(&redis, "crash:"), clickhouse_covered(&clickhouse, "crash")) == before
            && Instant::now() < writing
            && child.try_wait().ok().flatten().is_none()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let wait = moments.next_millis(1, 1500);
        std::thread::sleep(Duration::from_millis(wait));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("projector run exited early ({status}); see {}", std::fs::read_to_string(&log).unwrap());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        report(&format!(
            "crash test: kill {kill}, {wait} ms after it wrote: Redis covers {} and ClickHouse {} of {total} records",
            redis_covered(&redis, "crash:"),
            clickhouse_covered(&clickhouse, "crash")
        ));
    }
    producer.join().unwrap();

    // Drain: one last run until every sink covers the whole log.
    let mut child = start(&config, &log);
    let deadline = Instant::now() + Duration::from_secs(300);
    while redis_covered(&redis, "crash:") < total as u64 || clickhouse_covered(&clickhouse, "crash") < total as u64 {
        assert!(Instant::now() < deadline, "the sinks did not catch up; see {}", log.display());
        if let Ok(Some(status)) = child.try_wait() {
            panic!("projector run exited ({status}): {}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // A graceful stop: SIGTERM finishes the batch and exits 0.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().unwrap().success(), "SIGTERM should exit 0");

    assert_redis_holds(&redis, &lines, "crash:");
    let compared = std::panic::catch_unwind(|| assert_clickhouse_holds(&clickhouse, "crash", &lines));
    if let Err(failure) = compared {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let runs: Vec<&str> = log.lines().filter(|line| line.contains("projector_sink_clickhouse")).collect();
        report(&format!("crash test: what the ClickHouse sinks logged, run by run:\n{}", runs.join("\n")));
        std::panic::resume_unwind(failure);
    }
    // `projector validate` agrees: every sink equals the log read back from
    // Kafka up to its checkpoint.
    for view in ["order_summary", "product_sales", "customer_ltv"] {
        let output = Command::new(projector_binary())
            .args(["validate", "-c", config.to_str().unwrap(), "--view", view, "--sample-size", "2000"])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "validate {view}:\n{report}{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(report.matches(": ok\n").count(), 2, "{report}");
    }
    let rows = |view: &str| clickhouse.query(&format!("SELECT count() FROM crash.{view}")).unwrap().trim().to_string();
    // A ClickHouse sink that finds rows a killed run never committed
    // rewrites its view above them (the sink's `Uncommitted`).
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    report(&format!(
        "crash test: {total} events, {kills} kills in {:.0} s; rows equal to the recomputation in Redis and ClickHouse: \
         order_summary {}, product_sales {}, customer_ltv {}; ClickHouse sinks that found uncommitted rows at their \
         start: {}, later: {}",
        started.elapsed().as_secs_f64(),
        rows("order_summary"),
        rows("product_sales"),
        rows("customer_ltv"),
        logged.matches("rewrites the whole view above them").count(),
        logged.matches("starts over to rewrite the view").count(),
    ));
}
