//! The command side: it validates orders, cancels and stock changes and
//! appends the resulting events to Kafka, as in event sourcing with CQRS.
//!
//! - [`request`]: reading request bodies, every field error at once;
//! - [`state`]: the state rebuilt from the log (orders, stock,
//!   reservations, answers to idempotent requests) and the decisions;
//! - [`log`]: the Kafka topics behind it: appending and rebuilding;
//! - [`service`]: the commands as async calls, for the HTTP routes.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod log;
pub mod request;
pub mod service;
pub mod state;
