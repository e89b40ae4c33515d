//! A Kafka-protocol broker for tests and local runs: librdkafka's mock
//! cluster, in a process of its own so that pipelines can be killed and
//! restarted against the same broker. It keeps data in memory.
//!
//! ```text
//! projector-mock-kafka [--brokers N] [--topic NAME:PARTITIONS]... [--address-file FILE]
//! ```
//!
//! Prints the bootstrap address (and writes it to FILE), then serves until
//! killed. Topics not created up front are created on first use with 4
//! partitions.

use std::time::Duration;

use rdkafka::mocking::MockCluster;

fn main() {
    let mut brokers = 1;
    let mut topics: Vec<(String, i32)> = Vec::new();
    let mut address_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--brokers" => brokers = args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage("--brokers N")),
            "--topic" => {
                let spec = args.next().unwrap_or_else(|| usage("--topic NAME:PARTITIONS"));
                let (name, partitions) = spec.split_once(':').unwrap_or((&spec, "4"));
                let partitions = partitions.parse().unwrap_or_else(|_| usage("--topic NAME:PARTITIONS"));
                topics.push((name.to_string(), partitions));
            }
            "--address-file" => address_file = Some(args.next().unwrap_or_else(|| usage("--address-file FILE"))),
            "--help" | "-h" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let cluster = match MockCluster::new(brokers) {
        Ok(cluster) => cluster,
        Err(error) => {
            eprintln!("projector-mock-kafka: cannot start the mock cluster: {error}");
            std::process::exit(1);
        }
    };
    for (name, partitions) in &topics {
        if let Err(error) = cluster.create_topic(name, *partitions, 1) {
            eprintln!("projector-mock-kafka: cannot create topic {name}: {error}");
            std::process::exit(1);
        }
    }
    let address = cluster.bootstrap_servers();
    println!("{address}");
    if let Some(file) = address_file
        && let Err(error) = std::fs::write(&file, &address)
    {
        eprintln!("projector-mock-kafka: cannot write {file}: {error}");
        std::process::exit(1);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("projector-mock-kafka: {problem}");
    }
    eprintln!("usage: projector-mock-kafka [--brokers N] [--topic NAME:PARTITIONS]... [--address-file FILE]");
    std::process::exit(2);
}
