//! The four record types of the monitoring topic as typed structs, and decoding a topic's raw
//! payloads into them: Confluent frame → writer schema by id (local ids or the registry) →
//! Avro resolution to the bundled reader schema → struct.
//!
//! Nothing here is fatal: a record that cannot be decoded is counted under a short reason and
//! shown in the report, because one bad record must not hide a topic's worth of good ones.

use std::collections::{BTreeMap, BTreeSet};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::codec;

/// Statistics of one column (or the score) in one drift window (`FeatureStats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureStats {
    pub name: String,
    pub count: i64,
    pub missing: i64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub bin_edges: Vec<f64>,
    pub bin_counts: Vec<i64>,
    pub psi: f64,
    pub js: f64,
    pub test: String,
    pub test_statistic: f64,
    pub p_value: f64,
    /// Empty from writers that predate the field: such a part cannot be re-evaluated after a merge.
    pub reference_counts: Vec<i64>,
}

/// `io.streamscore.monitoring.DriftReport`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub model_name: String,
    pub model_version: String,
    pub instance_id: String,
    pub window_start: i64,
    pub window_end: i64,
    pub rows: i64,
    pub features: Vec<FeatureStats>,
    pub score: FeatureStats,
}

/// `io.streamscore.monitoring.ShadowScore` (the fields the report uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowScore {
    pub model_name: String,
    pub champion_version: String,
    pub champion_score: f32,
    pub champion_label: bool,
    pub challenger_name: String,
    pub challenger_version: String,
    pub challenger_score: f32,
    pub challenger_label: bool,
    pub scored_at: i64,
}

/// `io.streamscore.monitoring.DriftAlert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlert {
    pub model_name: String,
    pub model_version: String,
    pub instance_id: String,
    pub column: String,
    pub statistic: String,
    pub value: f64,
    pub threshold: f64,
    pub windows: i32,
    pub window_start: i64,
    pub window_end: i64,
}

/// One reliability-diagram bin of a `QualityReport`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: i64,
    pub score_sum: f64,
    pub positives: i64,
}

/// `io.streamscore.monitoring.QualityReport`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub model_name: String,
    pub model_version: String,
    pub instance_id: String,
    pub window_start: i64,
    pub window_end: i64,
    pub threshold: f64,
    pub labels: i64,
    pub true_positives: i64,
    pub false_positives: i64,
    pub false_negatives: i64,
    pub true_negatives: i64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    pub positive_rate: f64,
    pub mean_score: f64,
    pub brier_score: f64,
    pub brier_sum: f64,
    pub log_loss: f64,
    pub log_loss_sum: f64,
    pub expected_calibration_error: f64,
    pub calibration: Vec<CalibrationBin>,
    pub label_delay_mean_seconds: f64,
    pub label_delay_max_seconds: f64,
}

/// Which of the four record types a schema id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    Drift,
    Shadow,
    Alert,
    Quality,
}

/// Full name of the drift report record (the codec names only the newer three).
const DRIFT_REPORT_FULL_NAME: &str = "io.streamscore.monitoring.DriftReport";

impl RecordKind {
    pub const ALL: [RecordKind; 4] = [RecordKind::Drift, RecordKind::Shadow, RecordKind::Alert, RecordKind::Quality];

    /// The record's Avro full name.
    pub fn full_name(self) -> &'static str {
        match self {
            RecordKind::Drift => DRIFT_REPORT_FULL_NAME,
            RecordKind::Shadow => codec::SHADOW_SCORE_FULL_NAME,
            RecordKind::Alert => codec::DRIFT_ALERT_FULL_NAME,
            RecordKind::Quality => codec::QUALITY_REPORT_FULL_NAME,
        }
    }

    /// The kind whose record has `full_name`.
    pub fn from_full_name(full_name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.full_name() == full_name)
    }

    /// The bundled (reader) schema text.
    pub fn schema_json(self) -> &'static str {
        match self {
            RecordKind::Drift => codec::DRIFT_REPORT_SCHEMA,
            RecordKind::Shadow => codec::SHADOW_SCORE_SCHEMA,
            RecordKind::Alert => codec::DRIFT_ALERT_SCHEMA,
            RecordKind::Quality => codec::QUALITY_REPORT_SCHEMA,
        }
    }

    /// Short name in summaries.
    pub fn label(self) -> &'static str {
        match self {
            RecordKind::Drift => "drift reports",
            RecordKind::Shadow => "shadow scores",
            RecordKind::Alert => "drift alerts",
            RecordKind::Quality => "quality reports",
        }
    }
}

/// The local (no registry) schema ids of the four record types, as the service assigns them.
pub fn local_ids(scored_schema_id: u32, drift_schema_id: u32) -> BTreeMap<u32, RecordKind> {
    BTreeMap::from([
        (drift_schema_id, RecordKind::Drift),
        (codec::local_shadow_schema_id(scored_schema_id, drift_schema_id), RecordKind::Shadow),
        (codec::local_drift_alert_schema_id(scored_schema_id, drift_schema_id), RecordKind::Alert),
        (codec::local_quality_schema_id(scored_schema_id, drift_schema_id), RecordKind::Quality),
    ])
}

/// A writer schema by id, resolved; or why the id's records cannot be read.
pub type WriterLookup = Result<(RecordKind, Schema), String>;

/// The writer schema for a registry-supplied schema text: it must parse and be one of the four
/// record types (dispatch is on the record's full name, never on the id).
pub fn writer_from_text(id: u32, text: &str) -> WriterLookup {
    let schema =
        Schema::parse_str(text).map_err(|e| format!("schema id {id} does not parse: {}", clip(&e.to_string())))?;
    let name = match &schema {
        Schema::Record(r) => r.name.fullname(None),
        other => {
            return Err(format!("schema id {id} is a {:?}, not a record", apache_avro::schema::SchemaKind::from(other)))
        }
    };
    match RecordKind::from_full_name(&name) {
        Some(kind) => Ok((kind, schema)),
        None => Err(format!("schema id {id} is {name}, not a monitoring record")),
    }
}

/// One payload read from the topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    /// `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// Everything decoded from the topic.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub drift: Vec<DriftReport>,
    pub shadow: Vec<ShadowScore>,
    pub alerts: Vec<DriftAlert>,
    pub quality: Vec<QualityReport>,
    /// Records that could not be decoded, counted by reason.
    pub undecodable: BTreeMap<String, u64>,
}

impl Records {
    /// Records of `kind`.
    pub fn count(&self, kind: RecordKind) -> usize {
        match kind {
            RecordKind::Drift => self.drift.len(),
            RecordKind::Shadow => self.shadow.len(),
            RecordKind::Alert => self.alerts.len(),
            RecordKind::Quality => self.quality.len(),
        }
    }

    /// Undecodable records, all reasons together.
    pub fn undecodable_total(&self) -> u64 {
        self.undecodable.values().sum()
    }

    fn reject(&mut self, reason: String) {
        *self.undecodable.entry(reason).or_default() += 1;
    }

    /// Keeps only records whose window ended (or that were scored) at or after `cutoff_ms`.
    pub fn retain_since(&mut self, cutoff_ms: i64) {
        self.drift.retain(|r| r.window_end >= cutoff_ms);
        self.shadow.retain(|r| r.scored_at >= cutoff_ms);
        self.alerts.retain(|r| r.window_end >= cutoff_ms);
        self.quality.retain(|r| r.window_end >= cutoff_ms);
    }
}

/// The schema ids the payloads name (well-framed ones only).
pub fn schema_ids(raw: &[RawRecord]) -> BTreeSet<u32> {
    raw.iter()
        .filter_map(|r| r.payload.as_deref())
        .filter_map(|p| codec::split_frame(p).ok())
        .map(|(id, _)| id)
        .collect()
}

/// Decodes `raw` with the writer schemas in `writers` (by id; an id missing there is unknown).
pub fn decode_all(raw: &[RawRecord], writers: &BTreeMap<u32, WriterLookup>) -> Records {
    let mut out = Records::default();
    let readers: Vec<(RecordKind, Option<Schema>)> =
        RecordKind::ALL.into_iter().map(|k| (k, Schema::parse_str(k.schema_json()).ok())).collect();
    // Records grouped by id, so each id's datum reader is built once (building walks both schemas).
    let mut by_id: BTreeMap<u32, Vec<&[u8]>> = BTreeMap::new();
    for record in raw {
        let Some(payload) = record.payload.as_deref() else {
            out.reject("empty value (tombstone)".into());
            continue;
        };
        match codec::split_frame(payload) {
            Ok((id, body)) => by_id.entry(id).or_default().push(body),
            Err(r) => out.reject(format!("not in Confluent wire format ({})", r.reason.as_str())),
        }
    }
    for (id, bodies) in by_id {
        let (kind, writer) = match writers.get(&id) {
            Some(Ok((kind, schema))) => (*kind, schema),
            Some(Err(why)) => {
                *out.undecodable.entry(why.clone()).or_default() += bodies.len() as u64;
                continue;
            }
            None => {
                *out.undecodable.entry(format!("unknown schema id {id}")).or_default() += bodies.len() as u64;
                continue;
            }
        };
        let reader = readers.iter().find(|(k, _)| *k == kind).and_then(|(_, s)| s.as_ref());
        let datum = GenericDatumReader::builder(writer).maybe_reader_schema(reader).build();
        let datum = match datum {
            Ok(d) => d,
            Err(e) => {
                *out.undecodable
                    .entry(format!("schema id {id} cannot be read as {}: {}", kind.full_name(), clip(&e.to_string())))
                    .or_default() += bodies.len() as u64;
                continue;
            }
        };
        for mut body in bodies {
            let value = match datum.read_value(&mut body) {
                Ok(v) => v,
                Err(_) => {
                    out.reject(format!("schema id {id}: body does not decode as {}", kind.full_name()));
                    continue;
                }
            };
            if let Err(e) = push(&mut out, kind, &value) {
                out.reject(format!("schema id {id}: {e}"));
            }
        }
    }
    out
}

fn push(out: &mut Records, kind: RecordKind, value: &Value) -> Result<(), apache_avro::Error> {
    match kind {
        RecordKind::Drift => out.drift.push(apache_avro::from_value(value)?),
        RecordKind::Shadow => out.shadow.push(apache_avro::from_value(value)?),
        RecordKind::Alert => out.alerts.push(apache_avro::from_value(value)?),
        RecordKind::Quality => out.quality.push(apache_avro::from_value(value)?),
    }
    Ok(())
}

/// Library error texts can quote whole schemas; reasons are table cells.
fn clip(text: &str) -> String {
    const MAX: usize = 160;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
