//! Helpers shared by the integration tests: a Tansu broker, Kafka client
//! helpers tuned for it, a mock Confluent Schema Registry, and the project's
//! Python interpreter for cross-check scripts.
//!
//! Every test binary module uses only some of these, hence the allow.
#![allow(dead_code)]

pub mod broker;
pub mod kafka;
pub mod registry;

use std::path::{Path, PathBuf};

pub use broker::Broker;
// Re-exported for the test modules; not every one uses every helper.
#[allow(unused_imports)]
pub use kafka::{
    broker_ports, consume_n, consume_n_with, consume_until_quiet, consumer_config, create_topic, headers_of,
    partition_count, produce_values, producer_config, random_topic, wait_for_partitions, TestRecord,
};
#[allow(unused_imports)]
pub use registry::{http, http_with_headers, HttpResponse, Registry};

/// The project's virtualenv Python (`.venv/bin/python`), for cross-check
/// scripts; `$STREAMSCORE_PYTHON` overrides it.
pub fn python() -> PathBuf {
    let path = match std::env::var_os("STREAMSCORE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
    };
    assert!(
        path.exists(),
        "python not found at {}: run `make test` (it installs the pinned test broker and the \
         Python tools into .venv)",
        path.display()
    );
    path
}
