//! `manifest.json`: what a model version expects as input and how to build it from a `Transaction`.
//!
//! The format is specified in `docs/model-manifest.md`. Loading is strict (unknown keys are errors)
//! and validation reports every problem at once, so a broken manifest is fixed in one round trip
//! instead of one error per restart.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File name of the manifest inside a model version directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The only manifest format this build understands.
pub const SUPPORTED_FORMAT_VERSION: u32 = 1;

/// A model version's manifest (`models/<name>/<version>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format; only [`SUPPORTED_FORMAT_VERSION`] is accepted.
    pub format_version: u32,
    /// Model name, e.g. `fraud_mlp`.
    pub name: String,
    /// Model version, e.g. `1`.
    pub version: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// ONNX file, relative to the manifest's directory.
    pub model_file: String,
    /// Lowercase hex SHA-256 of `model_file`.
    pub sha256: String,
    /// The graph's single float32 `[N, F]` input.
    pub input: InputSpec,
    /// The graph output holding the score.
    pub output: OutputSpec,
    /// Decision threshold: label = `score >= threshold`.
    pub threshold: f32,
    /// How to build the input columns, in order.
    pub features: Vec<FeatureSpec>,
    /// The input column names; must equal [`Manifest::derived_columns`].
    pub columns: Vec<String>,
    /// Training-data histograms, for drift monitoring.
    pub reference: Reference,
    /// The validation gate's dataset and limits (`streamscore validate`, docs/model-validation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationSpec>,
    /// Drift alert thresholds (docs/drift.md); absent = the defaults of [`DriftSpec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,
}

/// When a drift statistic of a column (or the score) counts as crossed, and how many consecutive
/// windows make an alert (docs/drift.md). Every key is optional; an absent `drift` object means
/// all defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSpec {
    /// PSI above this crosses.
    #[serde(default = "default_drift_psi")]
    pub psi: f64,
    /// Jensen–Shannon distance (base 2, in [0, 1]) above this crosses.
    #[serde(default = "default_drift_js")]
    pub js: f64,
    /// A two-sample test p-value (KS for numeric columns, chi-square for categorical ones)
    /// below this crosses; `0` disables the test.
    #[serde(default = "default_drift_p_value")]
    pub p_value: f64,
    /// Consecutive crossed windows that raise one alert.
    #[serde(default = "default_drift_consecutive_windows")]
    pub consecutive_windows: u32,
    /// Windows with fewer values in a column are not evaluated for that column (they neither
    /// extend nor break a streak): a handful of rows gives noisy statistics.
    #[serde(default = "default_drift_min_count")]
    pub min_count: u64,
    /// Per-column overrides, keyed by column name (or `score`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub columns: std::collections::BTreeMap<String, DriftOverride>,
}

/// Per-column thresholds; an absent key takes the [`DriftSpec`] default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub js: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

/// The thresholds that apply to one column after overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriftThresholds {
    pub psi: f64,
    pub js: f64,
    pub p_value: f64,
}

fn default_drift_psi() -> f64 {
    0.25
}

fn default_drift_js() -> f64 {
    0.1
}

fn default_drift_p_value() -> f64 {
    0.01
}

fn default_drift_consecutive_windows() -> u32 {
    3
}

fn default_drift_min_count() -> u64 {
    100
}

impl Default for DriftSpec {
    fn default() -> Self {
        DriftSpec {
            psi: default_drift_psi(),
            js: default_drift_js(),
            p_value: default_drift_p_value(),
            consecutive_windows: default_drift_consecutive_windows(),
            min_count: default_drift_min_count(),
            columns: Default::default(),
        }
    }
}

impl DriftSpec {
    /// The thresholds of `column` (a column name or `score`).
    pub fn thresholds(&self, column: &str) -> DriftThresholds {
        let o = self.columns.get(column);
        DriftThresholds {
            psi: o.and_then(|o| o.psi).unwrap_or(self.psi),
            js: o.and_then(|o| o.js).unwrap_or(self.js),
            p_value: o.and_then(|o| o.p_value).unwrap_or(self.p_value),
        }
    }

    /// Appends every problem of the `drift` object to `p`; `columns` are the manifest's.
    fn check(&self, columns: &[String], p: &mut Vec<String>) {
        let mut limits = vec![("drift".to_string(), self.psi, self.js, self.p_value)];
        for name in self.columns.keys() {
            if name != "score" && !columns.contains(name) {
                p.push(format!("drift.columns has {name:?}, which is neither a column nor \"score\""));
            }
            let t = self.thresholds(name);
            limits.push((format!("drift.columns[{name:?}]"), t.psi, t.js, t.p_value));
        }
        for (at, psi, js, p_value) in limits {
            if !(psi.is_finite() && psi > 0.0) {
                p.push(format!("{at}.psi {psi} is not a finite number > 0"));
            }
            if !(js.is_finite() && js > 0.0 && js <= 1.0) {
                p.push(format!("{at}.js {js} is not in (0, 1]"));
            }
            if !(p_value.is_finite() && (0.0..1.0).contains(&p_value)) {
                p.push(format!("{at}.p_value {p_value} is not in [0, 1)"));
            }
        }
        if self.consecutive_windows == 0 {
            p.push("drift.consecutive_windows is 0; it must be at least 1".to_string());
        }
    }
}

/// How drift tests treat a column: two-sample KS on numeric columns, chi-square goodness of fit
/// on categorical ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnKind {
    /// `numeric`, `log1p`, `hour_of_day` value columns, and the score.
    Numeric,
    /// `one_hot` and `boolean` value columns and every `<source>_missing` flag.
    Categorical,
}

/// What `streamscore validate` checks a candidate against: a labelled dataset committed with the
/// model and the limits it must meet. Limits left out are reported as not configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    /// JSON lines of labelled transactions with reference scores, relative to the manifest's directory.
    pub dataset: String,
    /// Lowercase hex SHA-256 of `dataset`: makes the manifest (and its signature) cover the dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_sha256: Option<String>,
    /// Largest allowed `|score - reference_score|` over the dataset (training/serving parity).
    #[serde(default = "default_max_abs_score_diff")]
    pub max_abs_score_diff: f64,
    /// Smallest allowed ROC AUC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_roc_auc: Option<f64>,
    /// Smallest allowed precision at `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_precision: Option<f64>,
    /// Smallest allowed recall at `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_recall: Option<f64>,
    /// Rows per inference call during validation.
    #[serde(default = "default_validation_batch_size")]
    pub batch_size: usize,
    /// Largest allowed p99 inference time of one batch of `batch_size` rows, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_latency_ms: Option<f64>,
}

fn default_max_abs_score_diff() -> f64 {
    1e-5
}

fn default_validation_batch_size() -> usize {
    256
}

/// The largest `validation.batch_size` accepted (the service's `batch.max_batch_size` limit).
pub const MAX_VALIDATION_BATCH_SIZE: usize = 65_536;

/// The ONNX graph input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
}

/// The ONNX graph output that holds the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Graph output name.
    pub name: String,
    /// Column of a `[N, C]` output holding the score (ignored for `[N]` outputs).
    pub column: usize,
}

/// Reference histograms of the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Training rows the histograms were computed over.
    pub rows: u64,
    /// One histogram per input column, in column order.
    pub columns: Vec<Histogram>,
    /// Histogram of the model's score.
    pub score: Histogram,
}

/// A histogram over interior cut points: `k` edges make `k + 1` bins,
/// bin 0 = `(-inf, e0)`, bin i = `[e(i-1), e(i))`, bin k = `[e(k-1), +inf)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Histogram {
    /// Column name (or `score`).
    pub name: String,
    /// Interior cut points, strictly increasing and finite.
    pub edges: Vec<f64>,
    /// `edges.len() + 1` bin counts.
    pub counts: Vec<u64>,
}

impl Histogram {
    /// The bin `x` falls into (NaN goes to the last bin, like `+inf`).
    pub fn bin(&self, x: f64) -> usize {
        // partition_point: number of edges <= x, which is exactly the bin index for [e(i-1), e(i)).
        self.edges.partition_point(|&e| e <= x || x.is_nan())
    }
}

/// How one `Transaction` field becomes one or more input columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Field name in the reader schema.
    pub source: String,
    /// The transform applied to the value.
    pub transform: Transform,
    /// What a null value does.
    #[serde(default)]
    pub on_null: OnNull,
    /// Value used for nulls when `on_null = "default"` (not transformed; `one_hot`: all zeros).
    #[serde(default)]
    pub default: f32,
    /// Adds a `<source>_missing` column (1.0 when null) after the value column(s).
    #[serde(default)]
    pub missing_flag: bool,
    /// `one_hot` only: the categories, one column each.
    #[serde(default)]
    pub categories: Vec<String>,
    /// `one_hot` only: adds a `<source>=__other__` column for values not in `categories`.
    #[serde(default)]
    pub other: bool,
}

impl FeatureSpec {
    /// Number of value columns (without the missing flag).
    pub fn value_columns(&self) -> usize {
        match self.transform {
            Transform::OneHot => self.categories.len() + usize::from(self.other),
            _ => 1,
        }
    }

    /// Total columns this feature produces.
    pub fn width(&self) -> usize {
        self.value_columns() + usize::from(self.missing_flag)
    }

    /// Appends this feature's column names, per the naming rules of the manifest doc.
    pub fn push_column_names(&self, out: &mut Vec<String>) {
        let s = &self.source;
        match self.transform {
            Transform::Numeric | Transform::Boolean => out.push(s.clone()),
            Transform::Log1p => out.push(format!("{s}_log1p")),
            Transform::HourOfDay => out.push(format!("{s}_hour")),
            Transform::OneHot => {
                out.extend(self.categories.iter().map(|c| format!("{s}={c}")));
                if self.other {
                    out.push(format!("{s}=__other__"));
                }
            }
        }
        if self.missing_flag {
            out.push(format!("{s}_missing"));
        }
    }
}

/// The transform of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// int/long/float/double as float32.
    Numeric,
    /// `ln(1 + x)`, computed in float64.
    Log1p,
    /// true → 1.0, false → 0.0.
    Boolean,
    /// One column per category (plus optional `__other__`).
    OneHot,
    /// Hour of day (UTC) of a timestamp-millis.
    HourOfDay,
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Numeric => "numeric",
            Self::Log1p => "log1p",
            Self::Boolean => "boolean",
            Self::OneHot => "one_hot",
            Self::HourOfDay => "hour_of_day",
        })
    }
}

/// What a null source value does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNull {
    /// Use the feature's `default`.
    Default,
    /// Dead-letter the event (`missing_feature`).
    #[default]
    Reject,
}

/// Why a manifest or its model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {path}: {source}; check that the model directory exists and contains {MANIFEST_FILE}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model manifest {path} is not valid manifest JSON: {source}; compare it with docs/model-manifest.md")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("model manifest {manifest} has {} problem(s); fix them (see docs/model-manifest.md):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The manifest's path, or `name/version` when validated without a file.
        manifest: String,
        problems: Vec<String>,
    },
    #[error("cannot read model file {path} named by the manifest: {source}; check `model_file` in {MANIFEST_FILE}")]
    ModelFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} has sha256 {actual} but the manifest says {expected}; the model file or the manifest is stale: re-export them together")]
    Checksum { path: PathBuf, expected: String, actual: String },
}

impl Manifest {
    /// Reads `dir/manifest.json`, parses it strictly and validates it.
    pub fn from_dir(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Read { path: path.clone(), source })?;
        Self::from_slice(&path, &bytes)
    }

    /// Parses strictly and validates manifest bytes read from `path` (named in errors). The
    /// loader reads the file once and checks its signature over the same bytes it parses here.
    pub fn from_slice(path: &Path, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|source| ManifestError::Parse { path: path.to_path_buf(), source })?;
        manifest.validate().map_err(|e| match e {
            ManifestError::Invalid { problems, .. } => {
                ManifestError::Invalid { manifest: path.display().to_string(), problems }
            }
            other => other,
        })?;
        Ok(manifest)
    }

    /// Parses manifest JSON without validating it.
    pub fn from_json(text: &str) -> Result<Manifest, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Checks everything that can be checked without the model file or the reader schema,
    /// and reports all problems together.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut p: Vec<String> = Vec::new();

        if self.format_version != SUPPORTED_FORMAT_VERSION {
            p.push(format!(
                "format_version is {} but this build supports only {SUPPORTED_FORMAT_VERSION}",
                self.format_version
            ));
        }
        for (key, value) in [
            ("name", &self.name),
            ("version", &self.version),
            ("model_file", &self.model_file),
            ("input.name", &self.input.name),
            ("output.name", &self.output.name),
        ] {
            if value.trim().is_empty() {
                p.push(format!("{key} is empty"));
            }
        }
        let model_file = Path::new(&self.model_file);
        if model_file.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            p.push(format!("model_file {:?} must be a relative path inside the model directory", self.model_file));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            p.push(format!("sha256 {:?} is not 64 hex characters (use `sha256sum {}`)", self.sha256, self.model_file));
        }
        if !(self.threshold.is_finite() && (0.0..=1.0).contains(&self.threshold)) {
            p.push(format!("threshold {} is not in [0, 1]", self.threshold));
        }

        if self.features.is_empty() {
            p.push("features is empty".to_string());
        }
        for (i, f) in self.features.iter().enumerate() {
            let at = format!("features[{i}] (source {:?})", f.source);
            if f.source.trim().is_empty() {
                p.push(format!("{at}: source is empty"));
            }
            if !f.default.is_finite() {
                p.push(format!("{at}: default {} is not finite", f.default));
            }
            if f.transform == Transform::OneHot {
                if f.categories.is_empty() {
                    p.push(format!("{at}: one_hot needs a non-empty categories list"));
                }
                let mut seen = std::collections::HashSet::new();
                for c in &f.categories {
                    if !seen.insert(c.as_str()) {
                        p.push(format!("{at}: category {c:?} is listed twice"));
                    }
                }
            } else {
                if !f.categories.is_empty() {
                    p.push(format!("{at}: categories is only allowed with one_hot, not {}", f.transform));
                }
                if f.other {
                    p.push(format!("{at}: other is only allowed with one_hot, not {}", f.transform));
                }
            }
        }

        let derived = self.derived_columns();
        let mut seen = std::collections::HashSet::new();
        for c in &derived {
            if !seen.insert(c.as_str()) {
                p.push(format!("features derive column {c:?} more than once"));
            }
        }
        if derived != self.columns {
            for i in 0..derived.len().max(self.columns.len()) {
                match (self.columns.get(i), derived.get(i)) {
                    (Some(have), Some(want)) if have != want => {
                        p.push(format!("columns[{i}] is {have:?} but features derive {want:?} at that position"))
                    }
                    (Some(have), None) => {
                        p.push(format!("columns[{i}] is {have:?} but features derive no column at that position"))
                    }
                    (None, Some(want)) => {
                        p.push(format!("columns has no entry {i} but features derive {want:?} there"))
                    }
                    _ => {}
                }
            }
        }

        if self.reference.columns.len() != self.columns.len() {
            p.push(format!(
                "reference.columns has {} histograms but there are {} columns (one per column, in column order)",
                self.reference.columns.len(),
                self.columns.len()
            ));
        }
        for (i, (h, c)) in self.reference.columns.iter().zip(&self.columns).enumerate() {
            if &h.name != c {
                p.push(format!("reference.columns[{i}] is named {:?} but columns[{i}] is {c:?}", h.name));
            }
        }
        for (i, h) in self.reference.columns.iter().enumerate() {
            check_histogram(&format!("reference.columns[{i}] ({:?})", h.name), h, &mut p);
        }
        check_histogram("reference.score", &self.reference.score, &mut p);
        if let Some(v) = &self.validation {
            v.check(&mut p);
        }
        if let Some(d) = &self.drift {
            d.check(&self.columns, &mut p);
        }

        if p.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Invalid { manifest: format!("{}/{}", self.name, self.version), problems: p })
        }
    }

    /// The column names the features produce, in order (docs/model-manifest.md naming rules).
    pub fn derived_columns(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.columns.len());
        for f in &self.features {
            f.push_column_names(&mut out);
        }
        out
    }

    /// The drift test kind of every derived column, in column order.
    pub fn column_kinds(&self) -> Vec<ColumnKind> {
        let mut out = Vec::with_capacity(self.columns.len());
        for f in &self.features {
            let kind = match f.transform {
                Transform::OneHot | Transform::Boolean => ColumnKind::Categorical,
                Transform::Numeric | Transform::Log1p | Transform::HourOfDay => ColumnKind::Numeric,
            };
            out.extend(std::iter::repeat_n(kind, f.value_columns()));
            if f.missing_flag {
                out.push(ColumnKind::Categorical);
            }
        }
        out
    }

    /// The drift thresholds: the manifest's `drift` object, or all defaults.
    pub fn drift_spec(&self) -> DriftSpec {
        self.drift.clone().unwrap_or_default()
    }

    /// Number of model input columns (`F`).
    pub fn num_columns(&self) -> usize {
        self.columns.len()
    }

    /// Path of the ONNX file.
    pub fn model_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.model_file)
    }

    /// Hashes the model file and compares it with `sha256`.
    pub fn verify_checksum(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = self.model_path(dir);
        let actual = sha256_file(&path).map_err(|source| ManifestError::ModelFile { path: path.clone(), source })?;
        self.check_model_sha256(&path, actual)
    }

    /// Compares the model file's bytes, already read from `path`, with `sha256`: the loader
    /// hashes the very bytes it hands to ONNX Runtime.
    pub fn verify_model_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), ManifestError> {
        self.check_model_sha256(path, sha256_hex(bytes))
    }

    fn check_model_sha256(&self, path: &Path, actual: String) -> Result<(), ManifestError> {
        if actual.eq_ignore_ascii_case(&self.sha256) {
            Ok(())
        } else {
            Err(ManifestError::Checksum { path: path.to_path_buf(), expected: self.sha256.clone(), actual })
        }
    }
}

impl ValidationSpec {
    /// Appends every problem of the `validation` object to `p`.
    fn check(&self, p: &mut Vec<String>) {
        let dataset = Path::new(&self.dataset);
        if self.dataset.trim().is_empty() {
            p.push("validation.dataset is empty".to_string());
        } else if dataset.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            p.push(format!("validation.dataset {:?} must be a relative path inside the model directory", self.dataset));
        }
        if let Some(sha) = &self.dataset_sha256 {
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.push(format!(
                    "validation.dataset_sha256 {sha:?} is not 64 hex characters (use `sha256sum {}`)",
                    self.dataset
                ));
            }
        }
        if !(self.max_abs_score_diff.is_finite() && self.max_abs_score_diff >= 0.0) {
            p.push(format!("validation.max_abs_score_diff {} is not a finite number >= 0", self.max_abs_score_diff));
        }
        for (key, v) in
            [("min_roc_auc", self.min_roc_auc), ("min_precision", self.min_precision), ("min_recall", self.min_recall)]
        {
            if let Some(v) = v {
                if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                    p.push(format!("validation.{key} {v} is not in [0, 1]"));
                }
            }
        }
        if !(1..=MAX_VALIDATION_BATCH_SIZE).contains(&self.batch_size) {
            p.push(format!("validation.batch_size {} is not in 1..={MAX_VALIDATION_BATCH_SIZE}", self.batch_size));
        }
        if let Some(ms) = self.max_batch_latency_ms {
            if !(ms.is_finite() && ms > 0.0) {
                p.push(format!("validation.max_batch_latency_ms {ms} is not a number > 0"));
            }
        }
    }

    /// Path of the dataset.
    pub fn dataset_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.dataset)
    }
}

fn check_histogram(at: &str, h: &Histogram, p: &mut Vec<String>) {
    if let Some(bad) = h.edges.iter().find(|e| !e.is_finite()) {
        p.push(format!("{at}: edge {bad} is not finite"));
    }
    if let Some(i) = h.edges.windows(2).position(|w| w[0] >= w[1]) {
        p.push(format!("{at}: edges are not strictly increasing ({} then {})", h.edges[i], h.edges[i + 1]));
    }
    if h.counts.len() != h.edges.len() + 1 {
        p.push(format!("{at}: {} edges need {} counts, found {}", h.edges.len(), h.edges.len() + 1, h.counts.len()));
    }
}

/// Lowercase hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Lowercase hex SHA-256 of bytes in memory.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ZERO_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn hist(name: &str) -> serde_json::Value {
        json!({"name": name, "edges": [0.0, 1.0], "counts": [1, 2, 3]})
    }

    /// A small valid manifest: amount (log1p), channel (one_hot + other), new_device (boolean, missing flag).
    pub(crate) fn small_manifest_json() -> serde_json::Value {
        let columns = [
            "amount_log1p",
            "channel=POS",
            "channel=ECOMMERCE",
            "channel=__other__",
            "new_device",
            "new_device_missing",
        ];
        json!({
            "format_version": 1,
            "name": "tiny",
            "version": "3",
            "model_file": "model.onnx",
            "sha256": ZERO_SHA,
            "input": {"name": "features"},
            "output": {"name": "probabilities", "column": 1},
            "threshold": 0.5,
            "features": [
                {"source": "amount", "transform": "log1p"},
                {"source": "channel", "transform": "one_hot", "categories": ["POS", "ECOMMERCE"], "other": true},
                {"source": "new_device", "transform": "boolean", "on_null": "default", "default": 0.0, "missing_flag": true}
            ],
            "columns": columns,
            "reference": {
                "rows": 6,
                "columns": columns.iter().map(|c| hist(c)).collect::<Vec<_>>(),
                "score": hist("score")
            }
        })
    }

    fn parse(v: serde_json::Value) -> Manifest {
        serde_json::from_value(v).expect("manifest parses")
    }

    fn problems(m: &Manifest) -> Vec<String> {
        match m.validate() {
            Err(ManifestError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn small_manifest_is_valid_and_defaults_apply() {
        let m = parse(small_manifest_json());
        m.validate().unwrap();
        assert_eq!(m.description, "");
        assert_eq!(m.features[0].on_null, OnNull::Reject);
        assert_eq!(m.features[0].default, 0.0);
        assert!(!m.features[0].missing_flag);
        assert_eq!(m.features[1].transform, Transform::OneHot);
        assert_eq!(m.num_columns(), 6);
        assert_eq!(m.derived_columns(), m.columns);
    }

    #[test]
    fn derived_column_names_follow_the_doc() {
        let mut v = small_manifest_json();
        v["features"] = json!([
            {"source": "a", "transform": "numeric", "missing_flag": true},
            {"source": "b", "transform": "log1p"},
            {"source": "c", "transform": "boolean"},
            {"source": "d", "transform": "one_hot", "categories": ["x", "y"]},
            {"source": "e", "transform": "hour_of_day", "missing_flag": true}
        ]);
        let m = parse(v);
        assert_eq!(m.derived_columns(), ["a", "a_missing", "b_log1p", "c", "d=x", "d=y", "e_hour", "e_missing"]);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let mut v = small_manifest_json();
        v["extra"] = json!(1);
        assert!(serde_json::from_value::<Manifest>(v).is_err());
        let mut v = small_manifest_json();
        v["features"][0]["on_nul"] = json!("default");
        assert!(serde_json::from_value::<Manifest>(v).is_err());
        let mut v = small_manifest_json();
        v["features"][0]["transform"] = json!("sqrt");
        assert!(serde_json::from_value::<Manifest>(v).is_err());
    }

    #[test]
    fn validate_reports_all_problems_at_once() {
        let mut v = small_manifest_json();
        v["threshold"] = json!(1.5);
        v["sha256"] = json!("abc");
        v["features"][1]["categories"] = json!([]);
        v["columns"][0] = json!("amount");
        v["reference"]["columns"][4]["name"] = json!("nope");
        v["reference"]["columns"][2]["edges"] = json!([1.0, 1.0]);
        v["reference"]["score"]["counts"] = json!([1, 2]);
        let m = parse(v);
        let p = problems(&m);
        let all = p.join("\n");
        assert!(all.contains("threshold 1.5"), "{all}");
        assert!(all.contains("sha256"), "{all}");
        assert!(all.contains("one_hot needs a non-empty categories"), "{all}");
        assert!(all.contains("columns[0] is \"amount\" but features derive \"amount_log1p\""), "{all}");
        assert!(all.contains("reference.columns[4] is named \"nope\""), "{all}");
        assert!(all.contains("not strictly increasing"), "{all}");
        assert!(all.contains("reference.score: 2 edges need 3 counts, found 2"), "{all}");
        // Error message names the manifest and every problem.
        let msg = m.validate().unwrap_err().to_string();
        assert!(msg.contains("tiny/3") && msg.contains("threshold 1.5"), "{msg}");
    }

    #[test]
    fn validate_names_missing_and_extra_columns() {
        let mut v = small_manifest_json();
        v["columns"].as_array_mut().unwrap().push(json!("surplus"));
        let p = problems(&parse(v));
        assert!(p.iter().any(|s| s.contains("columns[6] is \"surplus\" but features derive no column")), "{p:?}");

        let mut v = small_manifest_json();
        v["columns"].as_array_mut().unwrap().pop();
        let p = problems(&parse(v));
        assert!(p.iter().any(|s| s.contains("features derive \"new_device_missing\" there")), "{p:?}");
        assert!(p.iter().any(|s| s.contains("reference.columns has 6 histograms but there are 5 columns")), "{p:?}");
    }

    #[test]
    fn validate_rejects_non_finite_edges_and_misplaced_one_hot_options() {
        let mut v = small_manifest_json();
        v["features"][0]["other"] = json!(true);
        v["features"][0]["categories"] = json!(["x"]);
        let mut m = parse(v);
        m.features[0].default = f32::INFINITY;
        m.reference.columns[0].edges = vec![0.0, f64::INFINITY];
        let p = problems(&m);
        assert!(p.iter().any(|s| s.contains("other is only allowed with one_hot")), "{p:?}");
        assert!(p.iter().any(|s| s.contains("categories is only allowed with one_hot")), "{p:?}");
        assert!(p.iter().any(|s| s.contains("edge inf is not finite")), "{p:?}");
        assert!(p.iter().any(|s| s.contains("default inf is not finite")), "{p:?}");
    }

    #[test]
    fn model_file_must_stay_inside_the_directory() {
        for bad in ["../model.onnx", "/etc/passwd"] {
            let mut v = small_manifest_json();
            v["model_file"] = json!(bad);
            let p = problems(&parse(v));
            assert!(p.iter().any(|s| s.contains("relative path")), "{p:?}");
        }
    }

    #[test]
    fn validation_object_is_optional_defaulted_and_checked() {
        let m = parse(small_manifest_json());
        assert_eq!(m.validation, None);
        // Absent stays absent when written back (older readers keep working).
        assert!(!serde_json::to_string(&m).unwrap().contains("validation"));

        let mut v = small_manifest_json();
        v["validation"] = json!({"dataset": "validation.jsonl", "min_roc_auc": 0.8});
        let m = parse(v);
        m.validate().unwrap();
        let spec = m.validation.as_ref().unwrap();
        assert_eq!((spec.batch_size, spec.max_abs_score_diff), (256, 1e-5));
        assert_eq!((spec.min_roc_auc, spec.min_precision, spec.max_batch_latency_ms), (Some(0.8), None, None));
        assert_eq!(spec.dataset_path(Path::new("/m")), Path::new("/m/validation.jsonl"));

        let mut v = small_manifest_json();
        v["validation"] = json!({"dataset": "../elsewhere.jsonl", "dataset_sha256": "xyz", "max_abs_score_diff": -1.0,
            "min_roc_auc": 1.5, "min_recall": -0.1, "batch_size": 0, "max_batch_latency_ms": 0.0});
        let p = problems(&parse(v));
        let all = p.join("\n");
        for want in [
            "validation.dataset \"../elsewhere.jsonl\" must be a relative path",
            "validation.dataset_sha256",
            "validation.max_abs_score_diff -1",
            "validation.min_roc_auc 1.5",
            "validation.min_recall -0.1",
            "validation.batch_size 0",
            "validation.max_batch_latency_ms 0",
        ] {
            assert!(all.contains(want), "missing {want:?} in {all}");
        }

        let mut v = small_manifest_json();
        v["validation"] = json!({"dataset": "v.jsonl", "min_auc": 0.8});
        assert!(serde_json::from_value::<Manifest>(v).is_err(), "unknown validation keys are rejected");
    }

    #[test]
    fn drift_object_is_optional_defaulted_overridable_and_checked() {
        let m = parse(small_manifest_json());
        assert_eq!(m.drift, None);
        assert!(!serde_json::to_string(&m).unwrap().contains("\"drift\""));
        let d = m.drift_spec();
        assert_eq!((d.psi, d.js, d.p_value, d.consecutive_windows, d.min_count), (0.25, 0.1, 0.01, 3, 100));

        let mut v = small_manifest_json();
        v["drift"] = json!({"psi": 0.2, "columns": {"amount_log1p": {"js": 0.05}, "score": {"p_value": 0.0}}});
        let m = parse(v);
        m.validate().unwrap();
        let d = m.drift_spec();
        assert_eq!(d.thresholds("amount_log1p"), DriftThresholds { psi: 0.2, js: 0.05, p_value: 0.01 });
        assert_eq!(d.thresholds("score"), DriftThresholds { psi: 0.2, js: 0.1, p_value: 0.0 });
        assert_eq!(d.thresholds("new_device"), DriftThresholds { psi: 0.2, js: 0.1, p_value: 0.01 });

        let mut v = small_manifest_json();
        v["drift"] = json!({"psi": -1.0, "js": 2.0, "p_value": 1.0, "consecutive_windows": 0,
            "columns": {"nope": {}, "score": {"psi": 0.0}}});
        let all = problems(&parse(v)).join("\n");
        for want in [
            "drift.psi -1",
            "drift.js 2",
            "drift.p_value 1",
            "drift.consecutive_windows is 0",
            "drift.columns has \"nope\"",
            "drift.columns[\"score\"].psi 0",
        ] {
            assert!(all.contains(want), "missing {want:?} in {all}");
        }

        let mut v = small_manifest_json();
        v["drift"] = json!({"psi_max": 0.2});
        assert!(serde_json::from_value::<Manifest>(v).is_err(), "unknown drift keys are rejected");
    }

    #[test]
    fn column_kinds_follow_the_transforms() {
        let m = parse(small_manifest_json());
        use ColumnKind::*;
        assert_eq!(m.column_kinds(), [Numeric, Categorical, Categorical, Categorical, Categorical, Categorical]);
        assert_eq!(m.column_kinds().len(), m.columns.len());
    }

    #[test]
    fn model_bytes_are_checked_against_the_sha256() {
        let mut m = parse(small_manifest_json());
        m.sha256 = sha256_hex(b"hello");
        m.verify_model_bytes(Path::new("model.onnx"), b"hello").unwrap();
        let err = m.verify_model_bytes(Path::new("model.onnx"), b"hell").unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
    }

    #[test]
    fn histogram_bins_follow_the_doc() {
        let h = Histogram { name: "x".into(), edges: vec![0.0, 1.0], counts: vec![0; 3] };
        assert_eq!(h.bin(-0.5), 0);
        assert_eq!(h.bin(0.0), 1);
        assert_eq!(h.bin(0.99), 1);
        assert_eq!(h.bin(1.0), 2);
        assert_eq!(h.bin(f64::INFINITY), 2);
        assert_eq!(h.bin(f64::NEG_INFINITY), 0);
    }

    #[test]
    fn from_dir_loads_validates_and_checks_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"hello").unwrap();
        let hello_sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let mut v = small_manifest_json();
        v["sha256"] = json!(hello_sha);
        std::fs::write(dir.path().join(MANIFEST_FILE), v.to_string()).unwrap();
        let m = Manifest::from_dir(dir.path()).unwrap();
        assert_eq!(m.model_path(dir.path()), dir.path().join("model.onnx"));
        m.verify_checksum(dir.path()).unwrap();

        std::fs::write(dir.path().join("model.onnx"), b"hello!").unwrap();
        let err = m.verify_checksum(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ManifestError::Checksum { .. }));
        assert!(msg.contains(hello_sha) && msg.contains("model.onnx"), "{msg}");

        std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
        assert!(matches!(m.verify_checksum(dir.path()), Err(ManifestError::ModelFile { .. })));
    }

    #[test]
    fn from_dir_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Read { .. }));
        assert!(err.to_string().contains("manifest.json"), "{err}");

        std::fs::write(dir.path().join(MANIFEST_FILE), "{ not json").unwrap();
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::Parse { .. }));
        assert!(err.to_string().contains("manifest.json"), "{err}");

        let mut v = small_manifest_json();
        v["threshold"] = json!(-1.0);
        std::fs::write(dir.path().join(MANIFEST_FILE), v.to_string()).unwrap();
        let err = Manifest::from_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains("manifest.json") && err.to_string().contains("threshold"), "{err}");
    }

    #[test]
    fn shipped_fraud_mlp_manifest_loads_and_matches_its_model() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1");
        let m = Manifest::from_dir(&dir).unwrap();
        assert_eq!((m.name.as_str(), m.version.as_str()), ("fraud_mlp", "1"));
        assert_eq!(m.num_columns(), m.derived_columns().len());
        m.verify_checksum(&dir).unwrap();
    }
}
