//! The HTTP API of Projector: read routes over the views, command routes
//! that append events, `/metrics`, `/healthz` and `/readyz`.
//!
//! Empty for now: the Kafka, query API and command issues fill it. The
//! crate exists so the workspace has the layout the rest grows in.
