//! The validation gate (`streamscore validate`, docs/model-validation.md).
//!
//! A candidate model version is run over the labelled dataset committed with it, through the
//! service's own path: [`Model::load`] with every verification the configuration asks for, each
//! row written as Avro with the reader schema and read back by the service's [`Decoder`] straight
//! into a feature row, then scored in batches by [`Model::infer`]. The [`ValidationReport`] holds
//! one [`Check`] per limit: parity with the reference scores stored in the dataset, ROC AUC,
//! precision and recall at the manifest's threshold, and the p99 inference time of a batch.
//!
//! The report is `serde` (de)serializable so that other front ends (an admin API promoting a
//! version) can run the same gate and return the same document.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Decoder, SchemaStore};
use crate::config::ModelConfig;
use crate::features::FeatureExtractor;
use crate::model::manifest::{sha256_hex, ValidationSpec, MAX_VALIDATION_BATCH_SIZE};
use crate::model::{Model, ModelError};

/// Schema id the dataset's rows are framed with: they are written with the reader schema, which
/// the decoder knows under this id (as in the default `schemas.local`).
const DATASET_SCHEMA_ID: u32 = 1;

/// How many rejected rows the report lists (all are counted).
const LISTED_REJECTIONS: usize = 10;

/// Where the gate's inputs come from, besides the model configuration.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The dataset; `None`: the manifest's `validation.dataset`.
    pub dataset: Option<PathBuf>,
    /// The reader schema file (`schemas.reader_schema`): rows are written with it and read back
    /// through the service's decoder.
    pub reader_schema: PathBuf,
    /// `schemas.max_message_bytes`.
    pub max_message_bytes: usize,
    /// Limits that replace the manifest's.
    pub overrides: LimitOverrides,
}

/// Limits given on the command line (or by an API caller); each replaces the manifest's value.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LimitOverrides {
    pub batch_size: Option<usize>,
    pub max_abs_score_diff: Option<f64>,
    pub min_roc_auc: Option<f64>,
    pub min_precision: Option<f64>,
    pub min_recall: Option<f64>,
    pub max_batch_latency_ms: Option<f64>,
}

/// Why the gate could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("the candidate model was refused: {0}")]
    Model(#[from] ModelError),
    #[error(
        "model {model} has no validation dataset: add a `validation` object to its manifest \
         (docs/model-validation.md) or pass --dataset"
    )]
    NoDataset { model: String },
    #[error(
        "validation dataset {path} has sha256 {actual} but the manifest says {expected}; the dataset was changed \
         after the manifest was written: regenerate them together (models/make_validation.py)"
    )]
    DatasetChecksum { path: PathBuf, expected: String, actual: String },
    #[error("cannot read validation dataset {path}: {source}")]
    DatasetRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("validation dataset {path}, line {line}: {detail} (format: docs/model-validation.md)")]
    DatasetRow { path: PathBuf, line: usize, detail: String },
    #[error("validation dataset {path} has no rows")]
    DatasetEmpty { path: PathBuf },
    #[error("reader schema {path}: {detail}")]
    Schema { path: PathBuf, detail: String },
    #[error("invalid limit: {0}")]
    Limit(String),
}

impl ValidateError {
    /// Process exit code: 1 when the candidate itself is at fault (refused model, a dataset that
    /// does not match its manifest), 2 when the gate could not run (usage, configuration,
    /// runtime library, unreadable or malformed inputs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Model(e) if e.reason() != "runtime" => 1,
            Self::DatasetChecksum { .. } => 1,
            _ => 2,
        }
    }
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    /// No limit in the manifest or the overrides: reported, not enforced.
    NotConfigured,
}

/// One check: a measured value against a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// `rows_scored`, `score_parity`, `roc_auc`, `precision_at_threshold`, `recall_at_threshold`,
    /// `batch_latency_p99_ms`.
    pub name: String,
    pub status: CheckStatus,
    /// The measured value; `None` when it is undefined (e.g. precision with no positive predictions).
    pub value: Option<f64>,
    pub limit: Option<f64>,
    /// `>=` or `<=`: how `value` must compare with `limit`.
    pub comparison: String,
    /// What the value means or what went wrong, in words.
    pub detail: String,
}

/// A dataset row the service's path dead-lettered instead of scoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedRow {
    /// 1-based line in the dataset.
    pub line: usize,
    /// The dead-letter reason (`missing_feature`, `invalid_feature`, ...).
    pub reason: String,
    pub detail: String,
}

/// Quality, parity and latency figures of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationMetrics {
    pub roc_auc: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub true_negatives: usize,
    /// Largest `|score - reference_score|` over the scored rows (infinite if a score is NaN).
    pub max_abs_score_diff: f64,
    pub mean_abs_score_diff: f64,
    /// Dataset line of the largest difference.
    pub max_diff_line: Option<usize>,
    /// Rows whose difference is above the parity limit.
    pub rows_over_diff_limit: usize,
    /// Inference time per batch, milliseconds.
    pub batch_latency_ms: LatencySummary,
}

/// Nearest-rank percentiles of per-batch inference time, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// What `streamscore validate` prints: every check with its value, limit and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub model: String,
    pub version: String,
    pub model_dir: PathBuf,
    pub dataset: PathBuf,
    pub dataset_sha256: String,
    /// Whether the dataset's sha256 was checked against the manifest's `validation.dataset_sha256`.
    pub dataset_sha256_checked: bool,
    /// What the manifest's signature check found (`verified with KEY`, `unsigned ...`, `not checked ...`).
    pub signature: String,
    pub rows: usize,
    pub positives: usize,
    pub rows_scored: usize,
    pub rows_rejected: usize,
    /// The first rejected rows.
    pub rejected: Vec<RejectedRow>,
    pub threshold: f32,
    pub batch_size: usize,
    pub batches: usize,
    pub execution_provider: String,
    pub metrics: ValidationMetrics,
    pub checks: Vec<Check>,
    /// True when no check failed.
    pub passed: bool,
}

/// One dataset row, parsed.
struct Row {
    line: usize,
    label: bool,
    reference: f64,
    payload: Vec<u8>,
}

/// Runs the gate on the model in `model.dir` (loaded with `model`'s settings and verification).
pub fn validate(model: &ModelConfig, opts: &ValidateOptions) -> Result<ValidationReport, ValidateError> {
    check_overrides(&opts.overrides)?;
    let mut candidate = Model::load(model)?;
    let manifest = candidate.manifest.clone();
    let label = format!("{}/{}", manifest.name, manifest.version);
    let spec = manifest.validation.clone();

    let (dataset, expected_sha) = match (&opts.dataset, &spec) {
        (Some(path), _) => (path.clone(), None),
        (None, Some(spec)) => (spec.dataset_path(&model.dir), spec.dataset_sha256.clone()),
        (None, None) => return Err(ValidateError::NoDataset { model: label }),
    };
    let limits = Limits::new(spec.as_ref(), &opts.overrides);

    let bytes =
        std::fs::read(&dataset).map_err(|source| ValidateError::DatasetRead { path: dataset.clone(), source })?;
    let dataset_sha256 = sha256_hex(&bytes);
    if let Some(expected) = &expected_sha {
        if !expected.eq_ignore_ascii_case(&dataset_sha256) {
            return Err(ValidateError::DatasetChecksum {
                path: dataset,
                expected: expected.clone(),
                actual: dataset_sha256,
            });
        }
    }

    // The service's decode path: reader schema, a store that knows it as writer schema id 1, and
    // a decoder that reads framed payloads straight into feature rows.
    let schema_err = |detail: String| ValidateError::Schema { path: opts.reader_schema.clone(), detail };
    let reader_text = std::fs::read_to_string(&opts.reader_schema).map_err(|e| schema_err(e.to_string()))?;
    let reader = codec::parse_schema(&reader_text).map_err(|e| schema_err(e.to_string()))?;
    let extractor = FeatureExtractor::new(&manifest, &reader).map_err(|e| schema_err(e.to_string()))?;
    let local = BTreeMap::from([(DATASET_SCHEMA_ID, opts.reader_schema.clone())]);
    let store = SchemaStore::new(reader.clone(), &local, None, None).map_err(|e| schema_err(e.to_string()))?;
    let decoder = Decoder::with_features(Arc::new(store), opts.max_message_bytes, &manifest, Arc::new(extractor));

    let rows = parse_rows(&dataset, &bytes, &reader)?;
    let f = manifest.num_columns();
    let mut features = Vec::with_capacity(rows.len() * f);
    let mut missing = vec![false; f];
    let mut scored: Vec<&Row> = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    let mut rows_rejected = 0;
    for row in &rows {
        let start = features.len();
        features.resize(start + f, 0.0);
        match decoder.decode_features(&row.payload, &mut features[start..], &mut missing) {
            Ok(_) => scored.push(row),
            Err(r) => {
                features.truncate(start);
                rows_rejected += 1;
                if rejected.len() < LISTED_REJECTIONS {
                    rejected.push(RejectedRow {
                        line: row.line,
                        reason: r.reason.as_str().to_string(),
                        detail: r.detail,
                    });
                }
            }
        }
    }

    // Untimed full batches first, as the control plane runs before a version serves: a GPU
    // provider's first calls at a new batch shape are slow (75 ms once on an H200, against
    // ~0.7 ms after), which would measure the start-up, not the serving latency.
    candidate.warm_up(limits.batch_size, crate::repository::WARM_UP_BATCHES)?;
    let mut scores = Vec::with_capacity(scored.len());
    let mut latencies = Vec::new();
    let mut out = Vec::new();
    for chunk in features.chunks(limits.batch_size * f) {
        let n = chunk.len() / f;
        let started = Instant::now();
        candidate.infer(chunk, n, &mut out)?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        scores.extend_from_slice(&out);
    }

    let labels: Vec<bool> = scored.iter().map(|r| r.label).collect();
    let threshold = manifest.threshold;
    let confusion = Confusion::at_threshold(&scores, &labels, threshold);
    let auc_scores: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
    let (mut max_diff, mut sum_diff, mut max_line, mut over) = (0.0f64, 0.0f64, None, 0);
    for (row, &s) in scored.iter().zip(&scores) {
        // At float32 precision, the service's score type: the reference is a float32 score
        // widened to a JSON number, and a float64 reference would only differ below float32 noise.
        let d = f64::from(s) - f64::from(row.reference as f32);
        let d = if d.is_nan() { f64::INFINITY } else { d.abs() };
        if max_line.is_none() || d > max_diff {
            (max_diff, max_line) = (d, Some(row.line));
        }
        sum_diff += d;
        over += usize::from(d > limits.max_abs_score_diff);
    }
    let metrics = ValidationMetrics {
        roc_auc: roc_auc(&auc_scores, &labels),
        precision: confusion.precision(),
        recall: confusion.recall(),
        true_positives: confusion.tp,
        false_positives: confusion.fp,
        false_negatives: confusion.fn_,
        true_negatives: confusion.tn,
        max_abs_score_diff: max_diff,
        mean_abs_score_diff: if scored.is_empty() { 0.0 } else { sum_diff / scored.len() as f64 },
        max_diff_line: max_line,
        rows_over_diff_limit: over,
        batch_latency_ms: latency_summary(&latencies),
    };
    let checks = checks(&limits, &metrics, rows_rejected, &rejected, &scored, &scores, &labels);
    let passed = checks.iter().all(|c| c.status != CheckStatus::Fail);
    Ok(ValidationReport {
        model: manifest.name.clone(),
        version: manifest.version.clone(),
        model_dir: model.dir.clone(),
        dataset,
        dataset_sha256,
        dataset_sha256_checked: expected_sha.is_some(),
        signature: candidate.signature.to_string(),
        rows: rows.len(),
        positives: rows.iter().filter(|r| r.label).count(),
        rows_scored: scored.len(),
        rows_rejected,
        rejected,
        threshold,
        batch_size: limits.batch_size,
        batches: latencies.len(),
        execution_provider: candidate.info.execution_provider.to_string(),
        metrics,
        checks,
        passed,
    })
}

fn check_overrides(o: &LimitOverrides) -> Result<(), ValidateError> {
    if let Some(b) = o.batch_size {
        if !(1..=MAX_VALIDATION_BATCH_SIZE).contains(&b) {
            return Err(ValidateError::Limit(format!("batch size {b} is not in 1..={MAX_VALIDATION_BATCH_SIZE}")));
        }
    }
    for (name, v) in [("min_roc_auc", o.min_roc_auc), ("min_precision", o.min_precision), ("min_recall", o.min_recall)]
    {
        if let Some(v) = v {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(ValidateError::Limit(format!("{name} {v} is not in [0, 1]")));
            }
        }
    }
    if let Some(v) = o.max_abs_score_diff {
        if !(v.is_finite() && v >= 0.0) {
            return Err(ValidateError::Limit(format!("max_abs_score_diff {v} is not a finite number >= 0")));
        }
    }
    if let Some(v) = o.max_batch_latency_ms {
        if !(v.is_finite() && v > 0.0) {
            return Err(ValidateError::Limit(format!("max_batch_latency_ms {v} is not a number > 0")));
        }
    }
    Ok(())
}

/// The limits in force: the manifest's, replaced by the overrides.
struct Limits {
    batch_size: usize,
    max_abs_score_diff: f64,
    min_roc_auc: Option<f64>,
    min_precision: Option<f64>,
    min_recall: Option<f64>,
    max_batch_latency_ms: Option<f64>,
}

impl Limits {
    fn new(spec: Option<&ValidationSpec>, o: &LimitOverrides) -> Self {
        Self {
            batch_size: o.batch_size.or(spec.map(|s| s.batch_size)).unwrap_or(256),
            max_abs_score_diff: o.max_abs_score_diff.or(spec.map(|s| s.max_abs_score_diff)).unwrap_or(1e-5),
            min_roc_auc: o.min_roc_auc.or(spec.and_then(|s| s.min_roc_auc)),
            min_precision: o.min_precision.or(spec.and_then(|s| s.min_precision)),
            min_recall: o.min_recall.or(spec.and_then(|s| s.min_recall)),
            max_batch_latency_ms: o.max_batch_latency_ms.or(spec.and_then(|s| s.max_batch_latency_ms)),
        }
    }
}

fn checks(
    limits: &Limits,
    m: &ValidationMetrics,
    rows_rejected: usize,
    rejected: &[RejectedRow],
    scored: &[&Row],
    scores: &[f32],
    labels: &[bool],
) -> Vec<Check> {
    let at_least = |name: &str, value: Option<f64>, limit: Option<f64>, detail: String| {
        let status = match (value, limit) {
            (_, None) => CheckStatus::NotConfigured,
            (Some(v), Some(l)) if v >= l => CheckStatus::Pass,
            _ => CheckStatus::Fail,
        };
        Check { name: name.into(), status, value, limit, comparison: ">=".into(), detail }
    };
    let at_most = |name: &str, value: f64, limit: Option<f64>, detail: String| {
        let status = match limit {
            None => CheckStatus::NotConfigured,
            Some(l) if value <= l => CheckStatus::Pass,
            Some(_) => CheckStatus::Fail,
        };
        Check { name: name.into(), status, value: Some(value), limit, comparison: "<=".into(), detail }
    };

    let rejected_detail = match rejected.first() {
        None => "every row was decoded and scored through the service's path".to_string(),
        Some(r) => format!(
            "{rows_rejected} row(s) were dead-lettered instead of scored; first: line {} ({}: {})",
            r.line, r.reason, r.detail
        ),
    };
    let parity_detail = match m.max_diff_line.and_then(|line| {
        let i = scored.iter().position(|r| r.line == line)?;
        Some((line, scores[i], scored[i].reference))
    }) {
        None => "no row was scored".to_string(),
        Some((line, score, reference)) if m.rows_over_diff_limit > 0 => format!(
            "{} row(s) differ from reference_score by more than the limit; largest at line {line}: score {score} vs \
             reference {reference} (training/serving skew: features, model file or runtime differ)",
            m.rows_over_diff_limit
        ),
        Some((line, score, reference)) => {
            format!("largest difference at line {line}: score {score} vs reference {reference}")
        }
    };
    let c = format!(
        "at threshold: {} true positives, {} false positives, {} false negatives",
        m.true_positives, m.false_positives, m.false_negatives
    );
    let lat = m.batch_latency_ms;
    vec![
        at_most("rows_scored", rows_rejected as f64, Some(0.0), rejected_detail),
        at_most("score_parity", m.max_abs_score_diff, Some(limits.max_abs_score_diff), parity_detail),
        at_least(
            "roc_auc",
            m.roc_auc,
            limits.min_roc_auc,
            match m.roc_auc {
                Some(_) => {
                    let positives = labels.iter().filter(|&&y| y).count();
                    format!(
                        "over {positives} positive and {} negative rows (exact, ties count one half)",
                        labels.len() - positives
                    )
                }
                None => "undefined: needs both labels and no NaN score".into(),
            },
        ),
        at_least(
            "precision_at_threshold",
            m.precision,
            limits.min_precision,
            if m.precision.is_some() { c.clone() } else { "undefined: no row reaches the threshold".into() },
        ),
        at_least(
            "recall_at_threshold",
            m.recall,
            limits.min_recall,
            if m.recall.is_some() { c } else { "undefined: no positive row".into() },
        ),
        at_most(
            "batch_latency_p99_ms",
            lat.p99,
            limits.max_batch_latency_ms,
            format!(
                "inference per batch of up to {} rows: p50 {:.3} ms, max {:.3} ms",
                limits.batch_size, lat.p50, lat.max
            ),
        ),
    ]
}

/// Parses the dataset: each non-blank line a JSON object with the reader schema's fields,
/// `label` (0/1 or a boolean) and `reference_score` (a number); each row is encoded as a framed
/// Avro payload of the reader schema.
fn parse_rows(path: &Path, bytes: &[u8], reader: &Schema) -> Result<Vec<Row>, ValidateError> {
    let mut rows = Vec::new();
    for (i, line) in bytes.lines().enumerate() {
        let line_no = i + 1;
        let err = |detail: String| ValidateError::DatasetRow { path: path.to_path_buf(), line: line_no, detail };
        let line = line.map_err(|e| err(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&line).map_err(|e| err(format!("not a JSON object: {e}")))?;
        let label = match obj.remove("label") {
            Some(serde_json::Value::Bool(b)) => b,
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(0) => false,
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => true,
            Some(other) => return Err(err(format!("`label` is {other}, expected 0, 1, true or false"))),
            None => return Err(err("`label` is missing".into())),
        };
        let reference = match obj.remove("reference_score") {
            Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(other) => return Err(err(format!("`reference_score` is {other}, expected a number"))),
            None => return Err(err("`reference_score` is missing".into())),
        };
        let value = json_to_avro(reader, &serde_json::Value::Object(obj), "").map_err(err)?;
        let mut payload = Vec::new();
        codec::encode_value(&mut payload, DATASET_SCHEMA_ID, reader, value).map_err(|e| err(e.to_string()))?;
        rows.push(Row { line: line_no, label, reference, payload });
    }
    if rows.is_empty() {
        return Err(ValidateError::DatasetEmpty { path: path.to_path_buf() });
    }
    Ok(rows)
}

/// A JSON value in the dataset's plain shape (null or the value; enums as their symbol;
/// timestamps as epoch numbers) as an Avro value of `schema`.
fn json_to_avro(schema: &Schema, json: &serde_json::Value, at: &str) -> Result<Value, String> {
    use serde_json::Value as J;
    let here = if at.is_empty() { "the row".to_string() } else { format!("field `{at}`") };
    match schema {
        Schema::Record(r) => {
            let J::Object(obj) = json else { return Err(format!("{here} is {json}, expected an object")) };
            if let Some(extra) = obj.keys().find(|k| !r.lookup.contains_key(*k)) {
                return Err(format!("{here} has `{extra}`, which is not a field of {}", r.name.fullname(None)));
            }
            let mut fields = Vec::with_capacity(r.fields.len());
            for field in &r.fields {
                let name = if at.is_empty() { field.name.clone() } else { format!("{at}.{}", field.name) };
                let value = match (obj.get(&field.name), &field.default) {
                    (Some(v), _) => json_to_avro(&field.schema, v, &name)?,
                    (None, Some(default)) => json_to_avro(&field.schema, default, &name)?,
                    (None, None) => return Err(format!("field `{name}` is missing and has no default")),
                };
                fields.push((field.name.clone(), value));
            }
            Ok(Value::Record(fields))
        }
        Schema::Union(u) => {
            let branches = u.variants();
            if json.is_null() {
                return match branches.iter().position(|s| matches!(s, Schema::Null)) {
                    Some(i) => Ok(Value::Union(i as u32, Box::new(Value::Null))),
                    None => Err(format!("{here} is null but the schema does not allow null")),
                };
            }
            branches
                .iter()
                .enumerate()
                .filter(|(_, s)| !matches!(s, Schema::Null))
                .find_map(|(i, s)| json_to_avro(s, json, at).ok().map(|v| Value::Union(i as u32, Box::new(v))))
                .ok_or_else(|| format!("{here} is {json}, which matches no branch of its union"))
        }
        Schema::Enum(e) => match json {
            J::String(s) => match e.symbols.iter().position(|sym| sym == s) {
                Some(i) => Ok(Value::Enum(i as u32, s.clone())),
                None => Err(format!(
                    "{here} is {s:?}, not a symbol of {} ({})",
                    e.name.fullname(None),
                    e.symbols.join(", ")
                )),
            },
            other => Err(format!("{here} is {other}, expected an enum symbol")),
        },
        Schema::Null
        | Schema::Boolean
        | Schema::Int
        | Schema::Long
        | Schema::Float
        | Schema::Double
        | Schema::String
        | Schema::Uuid(_)
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros => {
            let loose = match json {
                J::Null => Value::Null,
                J::Bool(b) => Value::Boolean(*b),
                J::Number(n) => match n.as_i64() {
                    Some(i) => Value::Long(i),
                    None => Value::Double(n.as_f64().unwrap_or(f64::NAN)),
                },
                // Strings stay strings; "NaN" and "Infinity" resolve to float/double as in Avro JSON.
                J::String(s) => Value::String(s.clone()),
                other => {
                    return Err(format!(
                        "{here} is {other}, expected a {:?}",
                        apache_avro::schema::SchemaKind::from(schema)
                    ))
                }
            };
            if matches!(schema, Schema::Null) != matches!(loose, Value::Null) {
                return Err(format!(
                    "{here} is {json}, expected a {:?}",
                    apache_avro::schema::SchemaKind::from(schema)
                ));
            }
            loose.resolve(schema).map_err(|e| format!("{here} is {json}: {e}"))
        }
        other => Err(format!(
            "{here} has Avro type {:?}, which JSON validation datasets do not support",
            apache_avro::schema::SchemaKind::from(other)
        )),
    }
}

/// Confusion matrix at a threshold: predicted positive = `score >= threshold` (the service's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
    pub tn: usize,
}

impl Confusion {
    /// Counts `scores` against `labels` (same length).
    pub fn at_threshold(scores: &[f32], labels: &[bool], threshold: f32) -> Self {
        assert_eq!(scores.len(), labels.len(), "one label per score");
        let mut c = Self::default();
        for (&s, &y) in scores.iter().zip(labels) {
            match (s >= threshold, y) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, true) => c.fn_ += 1,
                (false, false) => c.tn += 1,
            }
        }
        c
    }

    /// `tp / (tp + fp)`; `None` when nothing is predicted positive.
    pub fn precision(&self) -> Option<f64> {
        let predicted = self.tp + self.fp;
        (predicted > 0).then(|| self.tp as f64 / predicted as f64)
    }

    /// `tp / (tp + fn)`; `None` when there are no positives.
    pub fn recall(&self) -> Option<f64> {
        let positives = self.tp + self.fn_;
        (positives > 0).then(|| self.tp as f64 / positives as f64)
    }
}

/// Exact ROC AUC: the probability that a random positive scores above a random negative, ties
/// counting one half (Mann–Whitney U with average ranks). O(n log n). `None` when a label is
/// absent or a score is NaN.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let positives = labels.iter().filter(|&&y| y).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut positive_rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        // Ranks are 1-based; a run of ties shares the mean of its ranks.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        positive_rank_sum += rank * order[i..=j].iter().filter(|&&k| labels[k]).count() as f64;
        i = j + 1;
    }
    let p = positives as f64;
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

/// Nearest-rank percentiles (p50, p99), the maximum and the mean.
pub fn latency_summary(ms: &[f64]) -> LatencySummary {
    if ms.is_empty() {
        return LatencySummary::default();
    }
    let mut sorted = ms.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let rank = |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    LatencySummary {
        p50: rank(0.50),
        p99: rank(0.99),
        max: sorted[sorted.len() - 1],
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
    }
}

impl ValidationReport {
    /// The human-readable report `streamscore validate` prints.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model      {} v{} ({})", self.model, self.version, self.model_dir.display());
        let _ = writeln!(s, "signature  {}", self.signature);
        let _ = writeln!(
            s,
            "dataset    {} ({} rows, {} positive; sha256 {}{})",
            self.dataset.display(),
            self.rows,
            self.positives,
            &self.dataset_sha256[..12],
            if self.dataset_sha256_checked { ", matches the manifest" } else { ", not pinned by the manifest" }
        );
        let _ = writeln!(
            s,
            "scored     {} rows in {} batches of up to {} ({}); threshold {}",
            self.rows_scored, self.batches, self.batch_size, self.execution_provider, self.threshold
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "{:<24} {:>14} {:>16}  result", "check", "value", "limit");
        for c in &self.checks {
            let value = c.value.map_or_else(|| "undefined".to_string(), fmt_num);
            let limit = c.limit.map_or_else(|| "-".to_string(), |l| format!("{} {l}", c.comparison));
            let status = match c.status {
                CheckStatus::Pass => "pass",
                CheckStatus::Fail => "FAIL",
                CheckStatus::NotConfigured => "not configured",
            };
            let _ = writeln!(s, "{:<24} {:>14} {:>16}  {status}", c.name, value, limit);
            if c.status == CheckStatus::Fail {
                let _ = writeln!(s, "    {}", c.detail);
            }
        }
        let _ = writeln!(s);
        let failed: Vec<&str> =
            self.checks.iter().filter(|c| c.status == CheckStatus::Fail).map(|c| c.name.as_str()).collect();
        if failed.is_empty() {
            let _ = writeln!(s, "PASSED: {} v{} meets every configured limit", self.model, self.version);
        } else {
            let _ = writeln!(s, "FAILED: {} v{} fails {}", self.model, self.version, failed.join(", "));
        }
        s
    }
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 || v.is_infinite() {
        format!("{v}")
    } else if v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_auc_matches_hand_computed_cases() {
        // Perfect and reversed separation.
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), Some(0.0));
        // Pairs (pos, neg): (0.35 vs 0.1 ✓, vs 0.4 ✗), (0.8 vs 0.1 ✓, vs 0.4 ✓) → 3/4 (the sklearn example).
        assert_eq!(roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]), Some(0.75));
        // Ties count one half: every score equal → 0.5.
        assert_eq!(roc_auc(&[0.5; 5], &[true, false, true, false, false]), Some(0.5));
        // pos {0.5, 0.9}, neg {0.5, 0.1}: (0.5 vs 0.5 = ½, vs 0.1 = 1), (0.9: 1, 1) → 3.5 / 4.
        assert_eq!(roc_auc(&[0.5, 0.9, 0.5, 0.1], &[true, true, false, false]), Some(0.875));
        // Undefined without both labels, or with NaN.
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(roc_auc(&[0.1, f64::NAN], &[true, false]), None);
    }

    #[test]
    fn roc_auc_equals_the_pairwise_definition_on_random_data() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for _ in 0..20 {
            let n = rng.random_range(2..200);
            // Coarse scores so that ties are common.
            let scores: Vec<f64> = (0..n).map(|_| f64::from(rng.random_range(0..10u8)) / 10.0).collect();
            let labels: Vec<bool> = (0..n).map(|_| rng.random_bool(0.3)).collect();
            let mut pairs = 0.0;
            let mut wins = 0.0;
            for i in 0..n {
                for j in 0..n {
                    if labels[i] && !labels[j] {
                        pairs += 1.0;
                        wins += if scores[i] > scores[j] {
                            1.0
                        } else if scores[i] == scores[j] {
                            0.5
                        } else {
                            0.0
                        };
                    }
                }
            }
            let want = (pairs > 0.0).then(|| wins / pairs);
            match (roc_auc(&scores, &labels), want) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{a} vs {b}"),
                (a, b) => assert_eq!(a, b),
            }
        }
    }

    #[test]
    fn precision_and_recall_at_the_threshold() {
        // threshold 0.5: predicted positive = {0.5, 0.7, 0.9}; positives = {0.9, 0.5, 0.2}.
        let scores = [0.9, 0.7, 0.5, 0.2, 0.1];
        let labels = [true, false, true, true, false];
        let c = Confusion::at_threshold(&scores, &labels, 0.5);
        assert_eq!(c, Confusion { tp: 2, fp: 1, fn_: 1, tn: 1 });
        assert_eq!(c.precision(), Some(2.0 / 3.0));
        assert_eq!(c.recall(), Some(2.0 / 3.0));
        // Nothing predicted positive: precision undefined; no positives: recall undefined.
        let c = Confusion::at_threshold(&scores, &labels, 0.95);
        assert_eq!((c.precision(), c.recall()), (None, Some(0.0)));
        let c = Confusion::at_threshold(&[0.1, 0.9], &[false, false], 0.5);
        assert_eq!((c.precision(), c.recall()), (Some(0.0), None));
    }

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        let ms: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = latency_summary(&ms);
        assert_eq!((l.p50, l.p99, l.max, l.mean), (50.0, 99.0, 100.0, 50.5));
        let l = latency_summary(&[3.0]);
        assert_eq!((l.p50, l.p99, l.max), (3.0, 3.0, 3.0));
        assert_eq!(latency_summary(&[]), LatencySummary::default());
    }

    fn reader() -> Schema {
        codec::parse_schema(codec::TRANSACTION_SCHEMA).unwrap()
    }

    fn row() -> serde_json::Value {
        serde_json::json!({
            "event_id": "541a27f3-461f-4e95-afd0-a36d576d13b1", "transaction_id": "tx-1", "account_id": "acc-1",
            "merchant_id": "m-1", "amount": 12, "currency": "EUR", "merchant_category": "5411", "channel": "MOTO",
            "country": "DE", "event_time": 1766795545167i64, "account_age_days": 30, "distance_from_home_km": null,
            "txn_count_1h": 2, "card_present": false
        })
    }

    #[test]
    fn json_rows_become_reader_schema_values() {
        let v = json_to_avro(&reader(), &row(), "").unwrap();
        let Value::Record(fields) = v else { panic!("record") };
        let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap();
        assert!(matches!(get("event_id"), Value::Uuid(_)));
        assert_eq!(get("amount"), Value::Double(12.0), "integers widen to double");
        assert_eq!(get("channel"), Value::Enum(4, "MOTO".into()));
        assert_eq!(get("event_time"), Value::TimestampMillis(1766795545167));
        assert_eq!(get("account_age_days"), Value::Union(1, Box::new(Value::Int(30))));
        assert_eq!(get("distance_from_home_km"), Value::Union(0, Box::new(Value::Null)));
        // Absent fields with a default take it (card_id, new_device).
        assert_eq!(get("new_device"), Value::Union(0, Box::new(Value::Null)));
        let mut payload = Vec::new();
        codec::encode_value(&mut payload, 1, &reader(), Value::Record(fields)).unwrap();
    }

    #[test]
    fn malformed_json_rows_name_the_field() {
        let cases = [
            ("channel", serde_json::json!("FAX"), "not a symbol"),
            ("amount", serde_json::json!("12.5"), "field `amount`"),
            ("account_age_days", serde_json::json!(1.5), "matches no branch"),
            ("event_id", serde_json::json!("not-a-uuid"), "field `event_id`"),
        ];
        for (field, value, want) in cases {
            let mut r = row();
            r[field] = value;
            let err = json_to_avro(&reader(), &r, "").unwrap_err();
            assert!(err.contains(want), "{field}: {err}");
        }
        let mut r = row();
        r.as_object_mut().unwrap().remove("amount");
        assert!(json_to_avro(&reader(), &r, "").unwrap_err().contains("`amount` is missing"));
        let mut r = row();
        r["colour"] = serde_json::json!("red");
        assert!(json_to_avro(&reader(), &r, "").unwrap_err().contains("`colour`"));
    }
}
