//! The single integration test binary: one process, one shared Tansu broker
//! (see `common::broker`), one module per area.

mod common;
mod harness_smoke;
