//! End-to-end load benchmark of a file run: a generated log of about
//! 1,000,000 events through the three seed views of the shipped
//! `pipelines.yaml` with `projector run --input --output-dir` semantics, on
//! 1 and 2 workers, with the default batch (1,000,000 lines) and with
//! 100,000-line batches (the incremental path). Each run is its own
//! process; it prints events/s, wall time and peak memory (VmHWM), and
//! checks that every run wrote the same files.
//!
//! Run: `cargo bench -p projector-benches --bench file_run`
//! (`BENCH_EVENTS=200000` for another size). Under `cargo test` it runs a
//! small log once, as a smoke test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use projector::commands;

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;
use projector_dataflows::runner::RunOptions;
use projector_datagen::GeneratorConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2..]);
        return;
    }
    let benchmarking = args.iter().any(|a| a == "--bench");
    let events: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(if benchmarking {
        1_000_000
    } else {
        20_000
    });
    let dir = std::env::temp_dir().join(format!("projector-file-run-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let input = dir.join("events.jsonl");
    let started = Instant::now();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).expect("events file"));
    let written = commands::generate(GeneratorConfig { events, seed: 42, ..GeneratorConfig::default() }, &mut out)
        .expect("generate events");
    drop(out);
    let size = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
    println!(
        "file_run: {written} events ({:.0} MiB) generated in {:.1} s",
        size as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    println!("{:>8} {:>10} {:>10} {:>12} {:>12}", "workers", "batch", "wall s", "events/s", "peak MiB");
    let batches: &[u64] = if benchmarking { &[1_000_000, 100_000] } else { &[1_000_000, 3_000] };
    let mut reference: Option<PathBuf> = None;
    for &batch in batches {
        for workers in [1usize, 2] {
            let out_dir = dir.join(format!("out-w{workers}-b{batch}"));
            let started = Instant::now();
            let output = Command::new(std::env::current_exe().expect("bench binary"))
                .args(["--child", &input.display().to_string(), &out_dir.display().to_string()])
                .args([workers.to_string(), batch.to_string()])
                .output()
                .expect("run child");
            let wall = started.elapsed().as_secs_f64();
            assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
            let peak_kib: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(f64::NAN);
            println!(
                "{workers:>8} {batch:>10} {wall:>10.2} {:>12.0} {:>12.0}",
                written as f64 / wall,
                peak_kib / 1024.0
            );
            match &reference {
                None => reference = Some(out_dir),
                Some(first) => assert_same_files(first, &out_dir),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One measured run, in its own process: prints its peak memory in KiB.
fn child(args: &[String]) {
    let [input, out_dir, workers, batch] = args else { panic!("--child INPUT OUT_DIR WORKERS BATCH") };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines.yaml");
    let plan = commands::load(&config).expect("shipped config");
    let options = RunOptions { workers: workers.parse().expect("workers"), ..RunOptions::default() };
    commands::run_file(plan, Path::new(input), Path::new(out_dir), batch.parse().expect("batch"), options)
        .expect("file run");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!("{peak}");
}

fn assert_same_files(a: &Path, b: &Path) {
    for file in ["order_summary.jsonl", "product_sales.jsonl", "customer_ltv.jsonl", "dead_letters.jsonl"] {
        let left = std::fs::read(a.join(file)).expect("output file");
        let right = std::fs::read(b.join(file)).expect("output file");
        assert!(left == right, "{file} differs between {} and {}", a.display(), b.display());
    }
}
