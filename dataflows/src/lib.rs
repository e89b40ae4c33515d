//! Differential-dataflow graphs: events -> order state -> relations -> views.
//!
//! The graph, one small function per step:
//!
//! ```text
//! raw records --decode--> order events ------------------> dead letters
//!                              |
//!                  dedup (by event_id, first in the log wins)
//!                              |
//!              order_states (by order: lowest-sequence create,
//!               highest-sequence content, cancelled if any cancel)
//!                              |          (shared by every view)
//!            +-----------------+-----------------+
//!         view 1            view 2     ...    view N   (project + reduce)
//!            |                 |                 |
//!          sinks             sinks             sinks
//! ```
//!
//! [`runner::run`] builds the graph for a checked config on N timely
//! workers, feeds it from sources and delivers each completed batch of view
//! changes, with the source positions it reflects, to the sinks.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod decode;
pub mod dedup;
pub mod orders;
pub mod output;
pub mod runner;
pub mod state;
pub mod views;

/// A record's place in the whole input: source index, then its position in
/// that source. Orders "first in the log" for deduplication and ties.
pub type EventPosition = (u16, projector_core::record::LogPosition);
