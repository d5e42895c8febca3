//! The Avro side of the pipeline: Confluent framing, writer schemas (local files or a Schema
//! Registry), decoding inputs to the reader schema, and encoding outputs.
//!
//! Per-event failures are [`Rejection`](crate::outcome::Rejection)s (they dead-letter one event);
//! [`CodecError`] is for start-up and producer-side failures (schema files, registration).

use std::path::PathBuf;

use apache_avro::Schema;

mod decode;
mod encode;
mod fast;
mod store;
mod wire;

pub use decode::{Decoder, LastPlan, DEFAULT_MAX_MESSAGE_BYTES};
pub use encode::{
    encode_scored, encode_shadow, encode_value, put_bool, put_f32, put_f64, put_int, put_long, put_str,
    put_union_index, ScoredRecord, ShadowRecord,
};

pub use fast::FastPlan;
pub use store::{RegistrySettings, SchemaSource, SchemaStore, WriterSchema};
pub use wire::{split_frame, write_frame_header, HEADER_LEN, MAGIC};

/// Reader schema of the input topic.
pub const TRANSACTION_SCHEMA: &str = include_str!("../../schemas/transaction.avsc");
/// Schema of the scored output topic.
pub const SCORED_TRANSACTION_SCHEMA: &str = include_str!("../../schemas/scored_transaction.avsc");
/// Schema of the drift monitoring topic.
pub const DRIFT_REPORT_SCHEMA: &str = include_str!("../../schemas/drift_report.avsc");

/// Schema of shadow results, the second record type on the monitoring topic.
pub const SHADOW_SCORE_SCHEMA: &str = include_str!("../../schemas/shadow_score.avsc");
/// Full name of [`SHADOW_SCORE_SCHEMA`]'s record.
pub const SHADOW_SCORE_FULL_NAME: &str = "io.streamscore.monitoring.ShadowScore";

/// The registry subject of shadow results: the monitoring topic carries two record types, so
/// this one is registered under Confluent's RecordNameStrategy-style subject
/// `<monitoring_topic>-<record full name>` (drift reports keep `<monitoring_topic>-value`).
pub fn shadow_subject(monitoring_topic: &str) -> String {
    format!("{monitoring_topic}-{SHADOW_SCORE_FULL_NAME}")
}

/// The local (no registry) schema id of shadow results: one above the scored and drift ids
/// (4 with the defaults 2 and 3), so it never collides with either.
pub fn local_shadow_schema_id(scored_schema_id: u32, drift_schema_id: u32) -> u32 {
    scored_schema_id.max(drift_schema_id).saturating_add(1)
}

/// Schema of drift alerts (retraining triggers), the third record type on the monitoring topic.
pub const DRIFT_ALERT_SCHEMA: &str = include_str!("../../schemas/drift_alert.avsc");
/// Full name of [`DRIFT_ALERT_SCHEMA`]'s record.
pub const DRIFT_ALERT_FULL_NAME: &str = "io.streamscore.monitoring.DriftAlert";

/// The registry subject of drift alerts, `<monitoring_topic>-<record full name>`, like
/// [`shadow_subject`].
pub fn drift_alert_subject(monitoring_topic: &str) -> String {
    format!("{monitoring_topic}-{DRIFT_ALERT_FULL_NAME}")
}

/// The local (no registry) schema id of drift alerts: the next free id after the shadow one
/// (5 with the defaults 2, 3 and 4).
pub fn local_drift_alert_schema_id(scored_schema_id: u32, drift_schema_id: u32) -> u32 {
    local_shadow_schema_id(scored_schema_id, drift_schema_id).saturating_add(1)
}

/// Schema of live quality reports, the fourth record type on the monitoring topic.
pub const QUALITY_REPORT_SCHEMA: &str = include_str!("../../schemas/quality_report.avsc");
/// Full name of [`QUALITY_REPORT_SCHEMA`]'s record.
pub const QUALITY_REPORT_FULL_NAME: &str = "io.streamscore.monitoring.QualityReport";

/// The registry subject of quality reports, `<monitoring_topic>-<record full name>`, like
/// [`shadow_subject`].
pub fn quality_subject(monitoring_topic: &str) -> String {
    format!("{monitoring_topic}-{QUALITY_REPORT_FULL_NAME}")
}

/// The local (no registry) schema id of quality reports: the next free id after the drift
/// alert one (6 with the defaults 2 and 3).
pub fn local_quality_schema_id(scored_schema_id: u32, drift_schema_id: u32) -> u32 {
    local_drift_alert_schema_id(scored_schema_id, drift_schema_id).saturating_add(1)
}

/// Reader schema of the labels topic (ground truth joined to predictions, see `quality`).
pub const LABEL_SCHEMA: &str = include_str!("../../schemas/label.avsc");

/// Errors outside the per-event path: schemas that do not parse, registry registration.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("Avro schema {what} does not parse: {source}; fix the schema JSON")]
    SchemaParse {
        /// Which schema (file path, registry id, or a constant's name).
        what: String,
        #[source]
        source: apache_avro::Error,
    },
    #[error("cannot read Avro schema file {path}: {source}; check the local schema map in the codec configuration")]
    SchemaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode a {what} record: {source}; the value does not match the schema")]
    Encode {
        what: String,
        #[source]
        source: apache_avro::Error,
    },
    #[error("schema registry {url}: {detail}; check the registry URL, credentials and that it is reachable")]
    Registry { url: String, detail: String },
    #[error("cannot register a schema for subject {subject:?}: no schema registry is configured; configure one or use local schema ids")]
    NoRegistry { subject: String },
}

/// Parses an Avro schema from its JSON text.
pub fn parse_schema(json: &str) -> Result<Schema, CodecError> {
    Schema::parse_str(json).map_err(|source| CodecError::SchemaParse { what: schema_label(json), source })
}

/// A short label for a schema in messages: its full name when the JSON says one.
fn schema_label(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(v) => match (v.get("namespace").and_then(|n| n.as_str()), v.get("name").and_then(|n| n.as_str())) {
            (Some(ns), Some(n)) => format!("{ns}.{n}"),
            (None, Some(n)) => n.to_string(),
            _ => "(unnamed)".to_string(),
        },
        Err(_) => "(not JSON)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_schemas_parse() {
        for s in [
            TRANSACTION_SCHEMA,
            SCORED_TRANSACTION_SCHEMA,
            DRIFT_REPORT_SCHEMA,
            SHADOW_SCORE_SCHEMA,
            DRIFT_ALERT_SCHEMA,
            QUALITY_REPORT_SCHEMA,
            LABEL_SCHEMA,
        ] {
            parse_schema(s).unwrap();
        }
    }

    #[test]
    fn drift_alert_subject_and_local_id() {
        assert_eq!(drift_alert_subject("mon"), "mon-io.streamscore.monitoring.DriftAlert");
        assert_eq!(schema_label(DRIFT_ALERT_SCHEMA), DRIFT_ALERT_FULL_NAME);
        assert_eq!(local_drift_alert_schema_id(2, 3), 5);
        assert_eq!(local_drift_alert_schema_id(9, 3), 11);
        assert_eq!(local_quality_schema_id(2, 3), 6);
        assert_eq!(quality_subject("mon"), "mon-io.streamscore.monitoring.QualityReport");
        assert_eq!(schema_label(QUALITY_REPORT_SCHEMA), QUALITY_REPORT_FULL_NAME);
    }

    #[test]
    fn parse_error_names_the_schema() {
        let err =
            parse_schema(r#"{"type":"record","name":"X","namespace":"a.b","fields":[{"name":"f","type":"nope"}]}"#)
                .unwrap_err();
        assert!(err.to_string().contains("a.b.X"), "{err}");
    }
}

#[cfg(test)]
mod codec_tests;
#[cfg(test)]
mod fast_tests;
