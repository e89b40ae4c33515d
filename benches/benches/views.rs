//! The per-order work of the dataflow: folding an order's events, and
//! projecting and aggregating the three seed views (by the general fold,
//! and by adding up where a view can).
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
use projector_core::value::Row;
use projector_dataflows::output::batch_changes;

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
        // What the sinks' operator does with a completed batch of the
        // view's rows: every row added, in the order two workers' outputs
        // interleave (not sorted), and every tenth row also updated.
        let rows: Vec<(PackedRow, Row)> = groups
            .iter()
            .filter_map(|(key, inputs)| Some((key.clone(), view.aggregate(key, inputs.iter().map(|i| (i, 1)))?)))
            .collect();
        let mut batch: Vec<((PackedRow, Row), u64, isize)> = Vec::new();
        for (index, (key, values)) in rows.iter().enumerate() {
            batch.push(((key.clone(), values.clone()), 0, 1));
            if index % 10 == 0 {
                let newer = rows[(index + 1) % rows.len()].1.clone();
                batch.push(((key.clone(), values.clone()), 0, -1));
                batch.push(((key.clone(), newer), 0, 1));
            }
        }
        let half = batch.len() / 2;
        let (first, second) = batch.split_at(half);
        let batch: Vec<_> = first.iter().zip(second).flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
        group.bench_function(format!("cut a batch of {}", view.name), |b| {
            b.iter_batched(|| batch.clone(), batch_changes, criterion::BatchSize::LargeInput)
        });
        // A view that adds up: each order's vector of sums per group (what
        // the dataflow's `explode` makes), the totals per group (what the
        // arrangement consolidates), then each group's row.
        if let Some(added_up) = view.added_up() {
            let add_up = || {
                let mut totals: BTreeMap<PackedRow, [i128; 8]> = BTreeMap::new();
                for order in &orders {
                    for (key, sums) in view.added_up_groups::<[i128; 8]>(&added_up, order) {
                        let total = totals.entry(key).or_default();
                        total.iter_mut().zip(&sums).for_each(|(total, sum)| *total += sum);
                    }
                }
                totals
                    .into_iter()
                    .filter_map(|(key, sums)| Some((view.finish_sums(&added_up, &key, &sums)?, key)))
                    .collect::<Vec<_>>()
            };
            let folded: Vec<_> = groups
                .iter()
                .filter_map(|(key, inputs)| Some((view.aggregate(key, inputs.iter().map(|i| (i, 1)))?, key.clone())))
                .collect();
            assert!(add_up() == folded, "view {}: adding up differs from the general fold", view.name);
            group.bench_function(format!("add up {}", view.name), |b| b.iter(add_up));
        }
    }
    group.finish();
}

criterion_group!(benches, views);
criterion_main!(benches);
