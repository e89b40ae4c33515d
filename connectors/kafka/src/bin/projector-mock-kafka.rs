//! A Kafka-protocol broker for tests and local runs: librdkafka's mock
//! cluster, in a process of its own so that pipelines can be killed and
//! restarted against the same broker. It keeps data in memory.
//!
//! ```text
//! projector-mock-kafka [--brokers N] [--topic NAME:PARTITIONS]... [--address-file FILE]
//!                      [--control-file FILE]
//! ```
//!
//! Prints the bootstrap address (and writes it to FILE), then serves until
//! killed. Topics not created up front are created on first use with 4
//! partitions. The mock has no CreateTopics request; with
//! `--control-file`, it listens on a loopback port (written to that file)
//! for lines `create NAME PARTITIONS`, answered `ok` or `error: ...`, so
//! tests can make topics with more partitions (the mock keeps at most 5 MiB
//! per partition).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use rdkafka::mocking::MockCluster;

fn main() {
    let mut brokers = 1;
    let mut topics: Vec<(String, i32)> = Vec::new();
    let mut address_file = None;
    let mut control_file = None;
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
            "--control-file" => control_file = Some(args.next().unwrap_or_else(|| usage("--control-file FILE"))),
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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| fail(&format!("cannot listen: {e}")));
    if let Some(file) = control_file {
        let control = listener.local_addr().unwrap_or_else(|e| fail(&e.to_string())).to_string();
        std::fs::write(&file, control).unwrap_or_else(|e| fail(&format!("cannot write {file}: {e}")));
    }
    // The address last: whoever waits for it finds the control port ready.
    let address = cluster.bootstrap_servers();
    println!("{address}");
    if let Some(file) = address_file {
        std::fs::write(&file, &address).unwrap_or_else(|e| fail(&format!("cannot write {file}: {e}")));
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(mut writer) = stream.try_clone() else { continue };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let answer = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["create", name, partitions] => match partitions.parse() {
                    Ok(partitions) => match cluster.create_topic(name, partitions, 1) {
                        Ok(()) => "ok".to_string(),
                        Err(error) => format!("error: {error}"),
                    },
                    Err(_) => format!("error: {partitions:?} is not a partition count"),
                },
                _ => "error: expected `create NAME PARTITIONS`".to_string(),
            };
            if writeln!(writer, "{answer}").is_err() {
                break;
            }
        }
    }
}

fn fail(problem: &str) -> ! {
    eprintln!("projector-mock-kafka: {problem}");
    std::process::exit(1);
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("projector-mock-kafka: {problem}");
    }
    eprintln!(
        "usage: projector-mock-kafka [--brokers N] [--topic NAME:PARTITIONS]... [--address-file FILE] [--control-file FILE]"
    );
    std::process::exit(2);
}
