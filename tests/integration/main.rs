//! The single integration test binary: one process, one shared Tansu broker
//! (see `common::broker`), one module per area.

mod adaptive;
mod common;
mod deploy;
mod drift;
mod exactly_once;
mod faults;
mod fetch;
mod harness_smoke;
mod pipeline;
mod quality;
mod report;
mod sasl;
mod service;
mod serving_graph;
mod tls;
