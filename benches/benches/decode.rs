//! Decoding and validating events, the per-record hot path.
//!
//! Run: `cargo bench -p projector-benches --bench decode`

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use projector_core::event::decode_event;
use projector_core::record::{LogPosition, RecordRef};
use projector_dataflows::decode::decode_record;

fn decode(c: &mut Criterion) {
    let lines = projector_benches::generated_lines(10_000, 11);
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("decode_event (generated mix)", |b| {
        b.iter(|| lines.iter().filter(|line| decode_event(line.as_bytes()).is_ok()).count())
    });
    group.bench_function("decode_record (event id, order event)", |b| {
        b.iter(|| {
            lines
                .iter()
                .enumerate()
                .filter(|(i, line)| {
                    let position = LogPosition { partition: 0, offset: *i as u64 };
                    decode_record(0, RecordRef { position, key: None, bytes: line.as_bytes() }).is_ok()
                })
                .count()
        })
    });
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("decode_event bytes", |b| {
        b.iter(|| lines.iter().filter(|l| decode_event(l.as_bytes()).is_ok()).count())
    });
    let bad: Vec<String> = lines.iter().map(|l| l.replacen("\"quantity\":", "\"quantity\":\"", 1)).collect();
    group.throughput(Throughput::Elements(bad.len() as u64));
    group.bench_function("decode_event (bad: explains the path)", |b| {
        b.iter(|| bad.iter().filter(|l| decode_event(l.as_bytes()).is_err()).count())
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
