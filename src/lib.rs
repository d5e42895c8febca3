//! streamscore: scores Kafka event streams with ONNX models.
//!
//! The modules mirror the data flow (see `docs/architecture.md`):
//!
//! ```text
//! source ──Envelope──► codec + features ──Row──► batcher ──Batch──► model (cache, ORT) ──► sink
//!   ▲                        │ Rejection (dead letter) ─────────────────────────────────────► sink
//!   └──────── offsets: commit only a contiguous prefix of acknowledged outcomes ◄──────────── acks
//! ```
//!
//! - [`config`]: typed, validated configuration (TOML + `STREAMSCORE_*` env).
//! - [`source`]: the Kafka consumer group; decoding and feature extraction into batches.
//! - [`codec`]: Confluent wire format, writer schemas (registry or local), Avro decode/encode.
//! - [`features`]: manifest-driven extraction of the model's float32 input row.
//! - [`batcher`]: the micro-batch policy: size or deadline from the first row, or adaptive
//!   sizing toward a latency target.
//! - [`model`]: manifest, ONNX Runtime session, inference over a batch; [`model::deploy`]:
//!   champion, canary/shadow challenger and rollback, switched between batches.
//! - [`cache`]: prediction cache keyed by (model version, feature-vector hash).
//! - [`sink`]: the producer for scored, dead-letter and shadow records; delivery acks feed [`offsets`].
//! - [`offsets`]: per-partition tracking of in-flight batches; what is safe to commit.
//! - [`drift`]: streaming statistics and PSI against the manifest's reference histograms.
//! - [`quality`]: late labels joined to recent predictions; precision, recall, calibration.
//! - [`telemetry`]: metric names, tracing set-up, the HTTP endpoints.
//! - [`pipeline`]: wires the stages; start-up and graceful shutdown.
//! - [`synth`]: the synthetic transaction generator (demo, `produce`, tests).
//! - [`demo`]: the zero-infrastructure demo on librdkafka's in-process mock cluster.
//! - [`validate`]: the validation gate a candidate model passes before it is promoted.
//! - [`repository`]: the model repository (`<root>/<name>/<version>/`), its watcher, and the
//!   [`repository::ControlPlane`] that loads versions and hands them to the inference thread.
//! - [`admin`]: the authenticated, rate-limited admin HTTP API over the control plane.
//! - [`report`]: `streamscore report`, a self-contained HTML drift/quality report of the monitoring topic.

pub mod admin;
pub mod batcher;
pub mod cache;
pub mod codec;
pub mod config;
pub mod demo;
pub mod drift;
pub mod features;
pub mod model;
pub mod offsets;
pub mod outcome;
pub mod pipeline;
pub mod quality;
pub mod report;
pub mod repository;
pub mod sink;
pub mod source;
pub mod synth;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod testing;
pub mod validate;
