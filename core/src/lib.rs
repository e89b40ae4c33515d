//! Types every Projector crate shares.
//!
//! - [`event`]: the domain events of the log and their validation;
//!   [`objects`]: their parts read from JSON objects only;
//! - [`record`]: positions of records in sources, and dead letters;
//! - [`order`]: what an order's events add up to;
//! - [`relation`]: the relations views read (`orders`, `order_lines`);
//! - [`value`]: typed values and rows; [`packed`]: rows packed as bytes;
//! - [`config`]: `pipelines.yaml`, its checks and compiled views;
//! - [`view`]: a compiled view's projection and aggregation;
//! - [`source`], [`sink`]: the seams sources and sinks plug into.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod event;
pub mod objects;
pub mod order;
pub mod packed;
pub mod recompute;
pub mod record;
pub mod relation;
pub mod sink;
pub mod source;
pub mod template;
pub mod value;
pub mod view;
