//! The wiring behind the `projector` binary: which source and sink types
//! exist and how they are built from a checked config, and the commands.
//!
//! [`components`] is the one explicit list of component types: a new source
//! or sink type is its folder under `connectors/` or `sinks/`, its config
//! variant in `projector_core::config`, and one arm here.

pub mod commands;
pub mod components;
pub mod demo;
