//! Live model quality: ground-truth labels that arrive late, joined to this instance's own
//! recent predictions, summarised per model version and window.
//!
//! ```text
//! inference thread ── predictions of each scored batch ──► PredictionLog (bounded, TTL)
//! labels topic ──► label reader thread ── Label ──► join ──► QualityAccumulator per version
//!                                                              │ every quality.interval
//!                                                              ▼
//!                                     QualityReport on the monitoring topic + gauges/counters
//! ```
//!
//! Memory is bounded twice: predictions live in time slices ([`PredictionLog`]) that are dropped
//! whole once older than `quality.prediction_ttl`, or oldest first when `quality.max_predictions`
//! is reached; labels that come before their prediction (the service lagging behind the label
//! producer) wait at most `quality.label_grace`, at most `quality.max_waiting_labels` of them.
//! A prediction joins one label: a second label for the same event finds nothing and counts as
//! unmatched. Each instance sees every label and joins only those of events it scored itself;
//! the reports of all instances merge by adding counts (docs/quality.md).

pub mod publish;
pub mod reader;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use apache_avro::types::Value;

use crate::batcher::{Batch, EntryKind};
use crate::cache::BuildKeyHasher;
use crate::model::ModelInfo;

/// Equal-width bins of the predicted score in a reliability diagram.
pub const CALIBRATION_BINS: usize = 10;
/// Probabilities are clipped to [EPS, 1 - EPS] in the log loss.
const LOG_LOSS_EPS: f64 = 1e-7;
/// Time slices per TTL in the prediction log (a prediction lives between ttl and ttl + ttl/8).
const SLICES_PER_TTL: i64 = 8;
/// "No version" in a [`Prediction`]'s shadow slot.
const NO_VERSION: u16 = u16::MAX;

/// Bounds of the join (from `[quality]`).
#[derive(Debug, Clone, Copy)]
pub struct JoinLimits {
    pub prediction_ttl_ms: i64,
    pub max_predictions: usize,
    pub label_grace_ms: i64,
    pub max_waiting_labels: usize,
}

impl JoinLimits {
    pub fn from_config(q: &crate::config::QualityConfig) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            prediction_ttl_ms: ms(q.prediction_ttl).max(1),
            max_predictions: q.max_predictions.max(1),
            label_grace_ms: ms(q.label_grace),
            max_waiting_labels: q.max_waiting_labels,
        }
    }
}

/// One ground-truth label, as read from the labels topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// The event it is for (compared case-insensitively: UUID text).
    pub event_id: String,
    /// True = the positive class (fraud).
    pub positive: bool,
    /// When the truth became known (the record's `labelled_at`, else its Kafka timestamp).
    pub labelled_at_ms: i64,
}

/// Why a labels-topic record is not a usable label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LabelError {
    #[error("label record has no field `{0}`; the labels topic's schema must have event_id (string) and label (boolean), see schemas/label.avsc")]
    MissingField(&'static str),
    #[error("label field `{field}` has the wrong type ({found}); see schemas/label.avsc")]
    WrongType { field: &'static str, found: String },
    #[error("label record is not an Avro record")]
    NotARecord,
}

impl Label {
    /// A label from a record decoded to `schemas/label.avsc`; `kafka_timestamp_ms` stands in for
    /// a null `labelled_at`.
    pub fn from_avro(value: &Value, kafka_timestamp_ms: i64) -> Result<Self, LabelError> {
        let Value::Record(fields) = value else { return Err(LabelError::NotARecord) };
        let field = |name: &'static str| {
            fields.iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or(LabelError::MissingField(name))
        };
        let event_id = match field("event_id")? {
            Value::String(s) => s.trim().to_ascii_lowercase(),
            Value::Uuid(u) => u.hyphenated().to_string(),
            other => return Err(LabelError::WrongType { field: "event_id", found: kind(other) }),
        };
        let positive = match field("label")? {
            Value::Boolean(b) => *b,
            other => return Err(LabelError::WrongType { field: "label", found: kind(other) }),
        };
        let labelled_at_ms = match field("labelled_at") {
            Err(_) => kafka_timestamp_ms,
            Ok(v) => match unwrap_union(v) {
                Value::Null => kafka_timestamp_ms,
                Value::TimestampMillis(t) | Value::Long(t) => *t,
                other => return Err(LabelError::WrongType { field: "labelled_at", found: kind(other) }),
            },
        };
        Ok(Self { event_id, positive, labelled_at_ms })
    }
}

fn unwrap_union(v: &Value) -> &Value {
    match v {
        Value::Union(_, inner) => inner,
        other => other,
    }
}

fn kind(v: &Value) -> String {
    let s = format!("{v:?}");
    s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

/// What one prediction remembers until its label comes: ~24 bytes in the map.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Prediction {
    scored_at_ms: i64,
    score: f32,
    /// Index into [`QualityTracker::versions`].
    version: u16,
    /// The shadow challenger's score of the same event, when one ran ([`NO_VERSION`] if not).
    shadow_version: u16,
    shadow_score: f32,
}

/// One time slice of a [`Generations`] store.
struct Slice<T> {
    started_ms: i64,
    map: HashMap<u64, T, BuildKeyHasher>,
}

/// A map of keyed items in time slices: the newest slice takes inserts; whole slices expire
/// (older than `ttl_ms` past their end) or are dropped oldest first at capacity. No per-item
/// timestamps are scanned: expiry costs one slice drop.
struct Generations<T> {
    slices: VecDeque<Slice<T>>,
    slice_ms: i64,
    ttl_ms: i64,
    capacity: usize,
    len: usize,
}

/// Items that left a [`Generations`] store unjoined.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dropped {
    expired: u64,
    capacity: u64,
}

impl<T> Generations<T> {
    fn new(ttl_ms: i64, capacity: usize) -> Self {
        let slice_ms = (ttl_ms / SLICES_PER_TTL).max(1);
        Self { slices: VecDeque::new(), slice_ms, ttl_ms, capacity, len: 0 }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops the slices whose every item is older than the TTL.
    fn expire(&mut self, now_ms: i64, dropped: &mut Dropped) {
        while let Some(front) = self.slices.front() {
            if now_ms < front.started_ms.saturating_add(self.slice_ms).saturating_add(self.ttl_ms) {
                break;
            }
            if let Some(s) = self.slices.pop_front() {
                self.len -= s.map.len();
                dropped.expired += s.map.len() as u64;
            }
        }
    }

    /// Inserts (or replaces) `key`; `false` when the store holds nothing at all (capacity 0).
    /// Expiry is the caller's ([`Generations::expire`], once per batch of inserts).
    fn insert(&mut self, key: u64, item: T, now_ms: i64, dropped: &mut Dropped) -> bool {
        if self.capacity == 0 {
            return false;
        }
        if self.len >= self.capacity {
            // The oldest slice goes whole: capacity is a bound, not a target.
            if let Some(s) = self.slices.pop_front() {
                self.len -= s.map.len();
                dropped.capacity += s.map.len() as u64;
            }
        }
        let fresh = match self.slices.back() {
            Some(b) => now_ms >= b.started_ms.saturating_add(self.slice_ms),
            None => true,
        };
        if fresh {
            self.slices.push_back(Slice { started_ms: now_ms, map: HashMap::with_hasher(BuildKeyHasher) });
        }
        // A key inserted again (an input consumed again after a rebalance) in a newer slice
        // shadows its older copy: joins look newest first, and the old copy expires with its
        // slice (not searched for here: that would cost a lookup per slice per prediction).
        let Some(back) = self.slices.back_mut() else { return false };
        if back.map.insert(key, item).is_none() {
            self.len += 1;
        }
        true
    }

    /// Removes and returns `key`'s item, newest first.
    fn take(&mut self, key: u64) -> Option<T> {
        let found = self.slices.iter_mut().rev().find_map(|s| s.map.remove(&key));
        if found.is_some() {
            self.len -= 1;
        }
        found
    }
}

/// A label that came before its prediction.
#[derive(Debug, Clone, Copy)]
struct WaitingLabel {
    positive: bool,
    labelled_at_ms: i64,
}

/// What became of one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined to this instance's prediction (and to the shadow challenger's, if one ran).
    Matched,
    /// No prediction yet: waits up to `label_grace` for it.
    Waiting,
    /// No prediction and no room or time to wait: another instance's event, an event scored
    /// before this instance started, a prediction past its TTL, or a second label.
    Unmatched,
}

/// Confusion counts at a decision threshold, and the ratios made of them (`None` where the
/// denominator is 0). Shared by the service's windows and the report's merged windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    pub true_positives: u64,
    pub false_positives: u64,
    pub false_negatives: u64,
    pub true_negatives: u64,
}

impl Confusion {
    /// Counts one (prediction, truth) pair.
    pub fn add(&mut self, predicted: bool, truth: bool) {
        match (predicted, truth) {
            (true, true) => self.true_positives += 1,
            (true, false) => self.false_positives += 1,
            (false, true) => self.false_negatives += 1,
            (false, false) => self.true_negatives += 1,
        }
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &Confusion) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
        self.true_negatives += other.true_negatives;
    }

    /// All four counts.
    pub fn total(&self) -> u64 {
        self.true_positives + self.false_positives + self.false_negatives + self.true_negatives
    }

    /// tp / (tp + fp); `None` when nothing was predicted positive.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    /// tp / (tp + fn); `None` when no label was positive.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    /// Harmonic mean of precision and recall; `None` when either is undefined or both are 0.
    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        (p + r > 0.0).then(|| 2.0 * p * r / (p + r))
    }

    /// Share of positive labels; `None` without labels.
    pub fn positive_rate(&self) -> Option<f64> {
        ratio(self.true_positives + self.false_negatives, self.total())
    }
}

/// Running sums of one version's joined labels in the current window. Everything is additive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualityCounts {
    pub labels: u64,
    pub confusion: Confusion,
    pub score_sum: f64,
    pub brier_sum: f64,
    pub log_loss_sum: f64,
    pub bins: [CalibrationBin; CALIBRATION_BINS],
    pub delay_sum_seconds: f64,
    pub delay_max_seconds: f64,
}

/// One bin of the reliability diagram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CalibrationBin {
    pub count: u64,
    pub score_sum: f64,
    pub positives: u64,
}

impl QualityCounts {
    /// Adds one joined (score, label) pair; `positive_prediction` is score >= threshold.
    pub fn add(&mut self, score: f32, threshold: f32, positive: bool, delay_seconds: f64) {
        self.confusion.add(score >= threshold, positive);
        self.labels += 1;
        let p = f64::from(score);
        let y = if positive { 1.0 } else { 0.0 };
        self.score_sum += p;
        self.brier_sum += (p - y) * (p - y);
        let q = p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
        self.log_loss_sum += -(y * q.ln() + (1.0 - y) * (1.0 - q).ln());
        let bin = &mut self.bins[calibration_bin(p)];
        bin.count += 1;
        bin.score_sum += p;
        bin.positives += u64::from(positive);
        let delay = delay_seconds.max(0.0);
        self.delay_sum_seconds += delay;
        self.delay_max_seconds = self.delay_max_seconds.max(delay);
    }

    /// Adds another set of counts (merging windows or instances).
    pub fn merge(&mut self, other: &QualityCounts) {
        self.labels += other.labels;
        self.confusion.merge(&other.confusion);
        self.score_sum += other.score_sum;
        self.brier_sum += other.brier_sum;
        self.log_loss_sum += other.log_loss_sum;
        for (a, b) in self.bins.iter_mut().zip(other.bins.iter()) {
            a.count += b.count;
            a.score_sum += b.score_sum;
            a.positives += b.positives;
        }
        self.delay_sum_seconds += other.delay_sum_seconds;
        self.delay_max_seconds = self.delay_max_seconds.max(other.delay_max_seconds);
    }

    /// See [`Confusion::precision`].
    pub fn precision(&self) -> Option<f64> {
        self.confusion.precision()
    }

    /// See [`Confusion::recall`].
    pub fn recall(&self) -> Option<f64> {
        self.confusion.recall()
    }

    /// See [`Confusion::f1`].
    pub fn f1(&self) -> Option<f64> {
        self.confusion.f1()
    }

    fn mean(&self, sum: f64) -> f64 {
        if self.labels == 0 {
            0.0
        } else {
            sum / self.labels as f64
        }
    }

    pub fn positive_rate(&self) -> f64 {
        self.confusion.positive_rate().unwrap_or(0.0)
    }

    pub fn mean_score(&self) -> f64 {
        self.mean(self.score_sum)
    }

    pub fn brier_score(&self) -> f64 {
        self.mean(self.brier_sum)
    }

    pub fn log_loss(&self) -> f64 {
        self.mean(self.log_loss_sum)
    }

    pub fn label_delay_mean_seconds(&self) -> f64 {
        self.mean(self.delay_sum_seconds)
    }

    /// Expected calibration error: Σ count/labels · |mean score − positive share| over the bins.
    pub fn expected_calibration_error(&self) -> f64 {
        expected_calibration_error(self.bins.iter().map(|b| (b.count, b.score_sum, b.positives))).unwrap_or(0.0)
    }
}

/// Expected calibration error over reliability bins given as (count, Σ score, positives):
/// Σ count/n · |mean score − positive share|, n = Σ count; `None` when every bin is empty.
pub fn expected_calibration_error(bins: impl Iterator<Item = (u64, f64, u64)> + Clone) -> Option<f64> {
    let n: u64 = bins.clone().map(|(count, _, _)| count).sum();
    (n > 0).then(|| {
        bins.filter(|&(count, _, _)| count > 0)
            .map(|(count, score_sum, positives)| {
                let c = count as f64;
                c / n as f64 * (score_sum / c - positives as f64 / c).abs()
            })
            .sum()
    })
}

/// num / den; `None` when den is 0.
pub fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// The bin of score `p` (clamped to [0, 1]; 1 falls in the last bin).
pub fn calibration_bin(p: f64) -> usize {
    if p.is_nan() {
        return 0;
    }
    ((p.clamp(0.0, 1.0) * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1)
}

/// One version's quality over one window: what a `QualityReport` says.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityWindow {
    pub model_name: String,
    pub model_version: String,
    pub threshold: f32,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub counts: QualityCounts,
}

impl QualityWindow {
    /// The window as a `QualityReport` record (schemas/quality_report.avsc).
    pub fn to_avro(&self, instance_id: &str) -> Value {
        let c = &self.counts;
        let long = |v: u64| Value::Long(i64::try_from(v).unwrap_or(i64::MAX));
        let opt = |v: Option<f64>| match v {
            Some(x) => Value::Union(1, Box::new(Value::Double(x))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let step = 1.0 / CALIBRATION_BINS as f64;
        let bins = c
            .bins
            .iter()
            .enumerate()
            .map(|(i, b)| {
                Value::Record(vec![
                    ("lower".into(), Value::Double(i as f64 * step)),
                    ("upper".into(), Value::Double((i + 1) as f64 * step)),
                    ("count".into(), long(b.count)),
                    ("score_sum".into(), Value::Double(b.score_sum)),
                    ("positives".into(), long(b.positives)),
                ])
            })
            .collect();
        Value::Record(vec![
            ("model_name".into(), Value::String(self.model_name.clone())),
            ("model_version".into(), Value::String(self.model_version.clone())),
            ("instance_id".into(), Value::String(instance_id.to_string())),
            ("window_start".into(), Value::TimestampMillis(self.window_start_ms)),
            ("window_end".into(), Value::TimestampMillis(self.window_end_ms)),
            ("threshold".into(), Value::Double(f64::from(self.threshold))),
            ("labels".into(), long(c.labels)),
            ("true_positives".into(), long(c.confusion.true_positives)),
            ("false_positives".into(), long(c.confusion.false_positives)),
            ("false_negatives".into(), long(c.confusion.false_negatives)),
            ("true_negatives".into(), long(c.confusion.true_negatives)),
            ("precision".into(), opt(c.precision())),
            ("recall".into(), opt(c.recall())),
            ("f1".into(), opt(c.f1())),
            ("positive_rate".into(), Value::Double(c.positive_rate())),
            ("mean_score".into(), Value::Double(c.mean_score())),
            ("brier_score".into(), Value::Double(c.brier_score())),
            ("brier_sum".into(), Value::Double(c.brier_sum)),
            ("log_loss".into(), Value::Double(c.log_loss())),
            ("log_loss_sum".into(), Value::Double(c.log_loss_sum)),
            ("expected_calibration_error".into(), Value::Double(c.expected_calibration_error())),
            ("calibration".into(), Value::Array(bins)),
            ("label_delay_mean_seconds".into(), Value::Double(c.label_delay_mean_seconds())),
            ("label_delay_max_seconds".into(), Value::Double(c.delay_max_seconds)),
        ])
    }
}

/// One model version the tracker has seen predictions of.
struct VersionSlot {
    info: Arc<ModelInfo>,
    counts: QualityCounts,
}

/// Counters of the join since the last [`QualityTracker::take_stats`] (the publisher turns them
/// into metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JoinStats {
    pub predictions: u64,
    pub matched: u64,
    /// Of the matched ones: labels that had waited for their prediction.
    pub matched_after_waiting: u64,
    pub unmatched: u64,
    /// Labels that arrived before their prediction and had to wait (matched or not later).
    pub waited: u64,
    pub predictions_expired: u64,
    pub predictions_evicted: u64,
    pub waiting_expired: u64,
    pub waiting_evicted: u64,
}

/// The join: recent predictions, early labels and per-version window sums. Shared by the
/// inference thread (predictions, once per batch) and the label reader (labels) behind one mutex.
pub struct QualityTracker {
    limits: JoinLimits,
    hasher: RandomState,
    predictions: Generations<Prediction>,
    waiting: Generations<WaitingLabel>,
    versions: Vec<VersionSlot>,
    stats: JoinStats,
    /// Per batch: batch version index → slot (reused buffer).
    slot_of: Vec<u16>,
}

impl QualityTracker {
    pub fn new(limits: JoinLimits) -> Self {
        Self {
            limits,
            hasher: RandomState::new(),
            predictions: Generations::new(limits.prediction_ttl_ms, limits.max_predictions),
            waiting: Generations::new(limits.label_grace_ms.max(1), limits.max_waiting_labels),
            versions: Vec::new(),
            stats: JoinStats::default(),
            slot_of: Vec::with_capacity(2),
        }
    }

    fn key(&self, event_id: &str) -> u64 {
        if event_id.bytes().any(|b| b.is_ascii_uppercase()) {
            self.hasher.hash_one(event_id.to_ascii_lowercase().as_bytes())
        } else {
            self.hasher.hash_one(event_id.as_bytes())
        }
    }

    /// The slot of `info` (by version id), added on first sight.
    fn slot(&mut self, info: &Arc<ModelInfo>) -> u16 {
        if let Some(i) = self.versions.iter().position(|s| s.info.version_id == info.version_id) {
            return i as u16;
        }
        if self.versions.len() >= usize::from(NO_VERSION) {
            // 65 535 versions in one process: reuse the last slot rather than grow without bound.
            return NO_VERSION - 1;
        }
        self.versions.push(VersionSlot { info: info.clone(), counts: QualityCounts::default() });
        (self.versions.len() - 1) as u16
    }

    /// Predictions currently held for the join.
    pub fn pending_predictions(&self) -> usize {
        self.predictions.len()
    }

    /// Labels currently waiting for their prediction.
    pub fn waiting_labels(&self) -> usize {
        self.waiting.len()
    }

    /// Remembers the predictions of a scored batch (each row's version, and the shadow
    /// challenger's score when one ran), and joins labels that were waiting for them.
    pub fn observe_batch(&mut self, batch: &Batch, now_ms: i64) {
        let mut slot_of = std::mem::take(&mut self.slot_of);
        slot_of.clear();
        for info in &batch.versions {
            let s = self.slot(info);
            slot_of.push(s);
        }
        let shadow = batch.shadow.as_ref().map(|s| self.slot(s));
        // Expiry once per batch (one clock value for all its rows), not per row.
        let mut dropped = Dropped::default();
        self.predictions.expire(now_ms, &mut dropped);
        let mut early = Dropped::default();
        self.waiting.expire(now_ms, &mut early);
        self.stats.waiting_expired += early.expired;
        for entry in &batch.entries {
            let EntryKind::Row { row, identity } = &entry.kind else { continue };
            let (row, key) = (*row, self.key(batch.ids.get(identity.event_id)));
            let (Some(&score), Some(&v)) = (batch.scores.get(row), batch.row_version.get(row)) else { continue };
            let Some(&version) = slot_of.get(usize::from(v)) else { continue };
            let (shadow_version, shadow_score) = match (shadow, batch.shadow_scores.get(row)) {
                (Some(s), Some(&x)) => (s, x),
                _ => (NO_VERSION, 0.0),
            };
            let p = Prediction { scored_at_ms: now_ms, score, version, shadow_version, shadow_score };
            if !self.waiting.is_empty() {
                if let Some(w) = self.waiting.take(key) {
                    self.apply(&p, w.positive, w.labelled_at_ms);
                    self.stats.matched += 1;
                    self.stats.matched_after_waiting += 1;
                    continue;
                }
            }
            self.predictions.insert(key, p, now_ms, &mut dropped);
            self.stats.predictions += 1;
        }
        self.stats.predictions_expired += dropped.expired;
        self.stats.predictions_evicted += dropped.capacity;
        self.slot_of = slot_of;
    }

    /// Joins one label to its prediction, or keeps it waiting for one.
    pub fn join(&mut self, label: &Label, now_ms: i64) -> JoinOutcome {
        let key = self.key(&label.event_id);
        let mut dropped = Dropped::default();
        self.predictions.expire(now_ms, &mut dropped);
        self.stats.predictions_expired += dropped.expired;
        if let Some(p) = self.predictions.take(key) {
            self.apply(&p, label.positive, label.labelled_at_ms);
            self.stats.matched += 1;
            return JoinOutcome::Matched;
        }
        let mut early = Dropped::default();
        self.waiting.expire(now_ms, &mut early);
        let w = WaitingLabel { positive: label.positive, labelled_at_ms: label.labelled_at_ms };
        let waits = self.limits.label_grace_ms > 0 && self.waiting.insert(key, w, now_ms, &mut early);
        self.stats.waiting_expired += early.expired;
        self.stats.waiting_evicted += early.capacity;
        if waits {
            self.stats.waited += 1;
            JoinOutcome::Waiting
        } else {
            self.stats.unmatched += 1;
            JoinOutcome::Unmatched
        }
    }

    fn apply(&mut self, p: &Prediction, positive: bool, labelled_at_ms: i64) {
        let delay = (labelled_at_ms - p.scored_at_ms) as f64 / 1000.0;
        for (version, score) in [(p.version, p.score), (p.shadow_version, p.shadow_score)] {
            if let Some(slot) = self.versions.get_mut(usize::from(version)) {
                slot.counts.add(score, slot.info.threshold, positive, delay);
            }
        }
    }

    /// Ends the window: one [`QualityWindow`] per version with joined labels; the sums restart.
    pub fn take_windows(&mut self, window_start_ms: i64, window_end_ms: i64) -> Vec<QualityWindow> {
        self.versions
            .iter_mut()
            .filter(|s| s.counts.labels > 0)
            .map(|s| QualityWindow {
                model_name: s.info.name.clone(),
                model_version: s.info.version.clone(),
                threshold: s.info.threshold,
                window_start_ms,
                window_end_ms,
                counts: std::mem::take(&mut s.counts),
            })
            .collect()
    }

    /// The join's counters since the last call. Labels still waiting whose grace ran out are
    /// counted as unmatched here.
    pub fn take_stats(&mut self, now_ms: i64) -> JoinStats {
        let mut early = Dropped::default();
        self.waiting.expire(now_ms, &mut early);
        self.stats.waiting_expired += early.expired;
        let mut s = std::mem::take(&mut self.stats);
        s.unmatched += s.waiting_expired + s.waiting_evicted;
        s
    }
}

#[cfg(test)]
mod tests;
