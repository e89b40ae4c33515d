//! The per-order work of the dataflow: folding an order's events, and
//! projecting and aggregating the three seed views.
//!
//! Run: `cargo bench -p projector-benches --bench views`

use std::collections::BTreeMap;
use std::path::Path;

#[global_allocator]
static ALLOCATOR: projector::Allocator = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use projector_core::config::check_text;
use projector_core::event::decode_event;
use projector_core::order::{OrderEvent, OrderState};
use projector_core::packed::PackedRow;

fn orders() -> Vec<OrderState> {
    let mut by_order: BTreeMap<std::sync::Arc<str>, Vec<(u64, u64, OrderEvent)>> = BTreeMap::new();
    for (index, line) in projector_benches::generated_lines(20_000, 5).iter().enumerate() {
        if let Ok(event) = decode_event(line.as_bytes())
            && let (_, Some(order_event)) = event.into_order_event()
        {
            by_order.entry(order_event.order_id.clone()).or_default().push((
                order_event.sequence,
                index as u64,
                order_event,
            ));
        }
    }
    by_order
        .iter()
        .filter_map(|(id, events)| OrderState::fold(id, events.iter().map(|(s, p, e)| (*s, *p, &e.change))))
        .collect()
}

fn views(c: &mut Criterion) {
    let plan =
        check_text(include_str!("../../pipelines.yaml"), "pipelines.yaml", Path::new(".")).expect("shipped config");
    let orders = orders();
    let mut group = c.benchmark_group("views");
    group.throughput(Throughput::Elements(orders.len() as u64));
    for view in &plan.views {
        group.bench_function(format!("project {}", view.name), |b| {
            b.iter(|| {
                let mut rows = 0usize;
                for order in &orders {
                    view.relation.for_each_row(order, |row| rows += usize::from(view.project(row).is_some()));
                }
                rows
            })
        });
        // What an arrangement of the projected rows does first: sort them
        // (the packed rows' comparison is its inner loop).
        let mut projected: Vec<(PackedRow, PackedRow)> = Vec::new();
        for order in &orders {
            view.relation.for_each_row(order, |row| projected.extend(view.project(row)));
        }
        group.bench_function(format!("sort projected rows of {}", view.name), |b| {
            b.iter_batched(
                || projected.clone(),
                |mut rows| {
                    rows.sort_unstable();
                    rows
                },
                criterion::BatchSize::LargeInput,
            )
        });
        let mut groups: BTreeMap<PackedRow, Vec<PackedRow>> = BTreeMap::new();
        for (key, inputs) in projected {
            groups.entry(key).or_default().push(inputs);
        }
        group.bench_function(format!("aggregate {}", view.name), |b| {
            b.iter(|| {
                groups.iter().filter_map(|(key, inputs)| view.aggregate(key, inputs.iter().map(|i| (i, 1)))).count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, views);
criterion_main!(benches);
