//! The wiring behind the `projector` binary: which source and sink types
//! exist and how they are built from a checked config, and the commands.
//!
//! [`components`] is the one explicit list of component types: a new source
//! or sink type is its folder under `connectors/` or `sinks/`, its config
//! variant in `projector_core::config`, and one arm here.

/// The memory allocator of the `projector` binary (and of the benchmarks,
/// so they measure what users run): mimalloc, which the dataflow's many
/// small allocations of rows and batches run about twice as fast on as on
/// the system allocator.
pub type Allocator = mimalloc::MiMalloc;

pub mod api;
pub mod commands;
pub mod components;
pub mod demo;
pub mod http_client;
pub mod replay;
pub mod status;
pub mod validate;
