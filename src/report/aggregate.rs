//! The pure layer between decoded records and the page: merging across instances and windows,
//! recomputing every ratio and drift statistic from the merged counts (docs/drift.md, "Merging
//! reports across instances"; docs/report.md). No I/O and no HTML here.

use std::collections::{BTreeMap, BTreeSet};

use super::records::{CalibrationBin, DriftAlert, DriftReport, FeatureStats, QualityReport, Records, ShadowScore};
use crate::drift;
use crate::quality::{self, ratio, Confusion};

/// A model version: what the report groups by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionKey {
    pub model: String,
    pub version: String,
}

impl VersionKey {
    fn new(model: &str, version: &str) -> Self {
        VersionKey { model: model.to_string(), version: version.to_string() }
    }
}

impl std::fmt::Display for VersionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.model, self.version)
    }
}

/// One column (or the score) of a merged drift window.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedFeature {
    pub name: String,
    pub count: u64,
    pub missing: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub bin_edges: Vec<f64>,
    pub bin_counts: Vec<u64>,
    /// The manifest's reference counts on the same bins; empty when no part carried them.
    pub reference_counts: Vec<u64>,
    /// `ks`, `chi2`, or empty (writers that predate the field).
    pub test: String,
    /// Recomputed from the merged counts; `None` when that is impossible (parts without reference
    /// counts, or on different bins) and more than one part was merged.
    pub psi: Option<f64>,
    pub js: Option<f64>,
    pub test_statistic: Option<f64>,
    pub p_value: Option<f64>,
    /// Reports merged into this one.
    pub parts: usize,
}

impl MergedFeature {
    fn from_part(f: &FeatureStats) -> Self {
        MergedFeature {
            name: f.name.clone(),
            count: non_negative(f.count),
            missing: non_negative(f.missing),
            mean: f.mean,
            std: f.std,
            min: f.min,
            max: f.max,
            bin_edges: f.bin_edges.clone(),
            bin_counts: f.bin_counts.iter().map(|&c| non_negative(c)).collect(),
            reference_counts: f.reference_counts.iter().map(|&c| non_negative(c)).collect(),
            test: f.test.clone(),
            psi: Some(f.psi),
            js: Some(f.js),
            test_statistic: Some(f.test_statistic),
            p_value: Some(f.p_value),
            parts: 1,
        }
    }

    /// Adds `f` (the same column of another instance's window): counts add, min/max widen, mean
    /// and std combine with the parallel-variance formula. The statistics are recomputed by
    /// [`MergedFeature::recompute`] once every part is in.
    fn add(&mut self, f: &FeatureStats) {
        let other = MergedFeature::from_part(f);
        let (n1, n2) = (self.count as f64, other.count as f64);
        let n = n1 + n2;
        if n > 0.0 {
            let mean = (n1 * self.mean + n2 * other.mean) / n;
            let m2 = n1 * self.std * self.std
                + n2 * other.std * other.std
                + n1 * (self.mean - mean).powi(2)
                + n2 * (other.mean - mean).powi(2);
            self.mean = mean;
            self.std = (m2 / n).max(0.0).sqrt();
        }
        if other.count > 0 {
            if self.count == 0 {
                (self.min, self.max) = (other.min, other.max);
            } else {
                self.min = self.min.min(other.min);
                self.max = self.max.max(other.max);
            }
        }
        self.count += other.count;
        self.missing += other.missing;
        let same_bins = self.bin_edges == other.bin_edges && self.bin_counts.len() == other.bin_counts.len();
        if same_bins {
            for (a, b) in self.bin_counts.iter_mut().zip(&other.bin_counts) {
                *a += b;
            }
            if self.reference_counts.is_empty() {
                self.reference_counts = other.reference_counts;
            }
        } else {
            // Different manifests under one version label: the histograms cannot be merged.
            self.bin_counts.clear();
            self.reference_counts.clear();
        }
        if self.test.is_empty() {
            self.test = other.test;
        }
        self.parts += 1;
    }

    /// PSI, JS and the test from the merged counts (a single part keeps what its writer computed).
    fn recompute(&mut self) {
        if self.parts == 1 {
            return;
        }
        let comparable = !self.bin_counts.is_empty() && self.reference_counts.len() == self.bin_counts.len();
        if !comparable {
            (self.psi, self.js, self.test_statistic, self.p_value) = (None, None, None, None);
            return;
        }
        let (r, o) = (&self.reference_counts, &self.bin_counts);
        self.psi = Some(drift::psi(r, o));
        self.js = Some(drift::js_distance(r, o));
        let test = match self.test.as_str() {
            "ks" => Some(drift::ks_binned(r, o)),
            "chi2" => Some(drift::chi_square(r, o)),
            _ => None,
        };
        self.test_statistic = test.map(|t| t.statistic);
        self.p_value = test.map(|t| t.p_value);
    }

    /// Share of the merged values in each bin (empty when there are none).
    pub fn proportions(&self) -> Vec<f64> {
        proportions(&self.bin_counts)
    }

    /// Share of the reference in each bin.
    pub fn reference_proportions(&self) -> Vec<f64> {
        proportions(&self.reference_counts)
    }
}

fn proportions(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return vec![0.0; counts.len()];
    }
    counts.iter().map(|&c| c as f64 / total as f64).collect()
}

/// The drift reports of one version whose windows coincide, merged across instances.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedWindow {
    pub window_start: i64,
    pub window_end: i64,
    pub instances: BTreeSet<String>,
    pub rows: u64,
    pub features: Vec<MergedFeature>,
    pub score: MergedFeature,
}

/// Quality counts and sums of one version, merged over instances (and, for the totals, windows).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergedQuality {
    pub window_start: i64,
    pub window_end: i64,
    pub instances: BTreeSet<String>,
    /// Decision threshold (the last one seen: it is a property of the version).
    pub threshold: f64,
    pub labels: u64,
    pub confusion: Confusion,
    pub brier_sum: f64,
    pub log_loss_sum: f64,
    /// Σ mean_score · labels: the predicted score summed over the joined predictions.
    pub score_sum: f64,
    pub calibration: Vec<MergedBin>,
    /// Label delay: Σ mean · labels (for the merged mean) and the maximum.
    pub label_delay_sum_seconds: f64,
    pub label_delay_max_seconds: f64,
}

/// One reliability-diagram bin, merged.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedBin {
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
    pub score_sum: f64,
    pub positives: u64,
}

impl MergedBin {
    fn from_part(b: &CalibrationBin) -> Self {
        MergedBin {
            lower: b.lower,
            upper: b.upper,
            count: non_negative(b.count),
            score_sum: b.score_sum,
            positives: non_negative(b.positives),
        }
    }

    /// Mean predicted score in the bin (`None` when empty).
    pub fn mean_score(&self) -> Option<f64> {
        (self.count > 0).then(|| self.score_sum / self.count as f64)
    }

    /// Observed positive share in the bin (`None` when empty).
    pub fn observed_rate(&self) -> Option<f64> {
        (self.count > 0).then(|| self.positives as f64 / self.count as f64)
    }
}

impl MergedQuality {
    fn from_part(q: &QualityReport) -> Self {
        let labels = non_negative(q.labels);
        MergedQuality {
            window_start: q.window_start,
            window_end: q.window_end,
            instances: BTreeSet::from([q.instance_id.clone()]),
            threshold: q.threshold,
            labels,
            confusion: Confusion {
                true_positives: non_negative(q.true_positives),
                false_positives: non_negative(q.false_positives),
                false_negatives: non_negative(q.false_negatives),
                true_negatives: non_negative(q.true_negatives),
            },
            brier_sum: q.brier_sum,
            log_loss_sum: q.log_loss_sum,
            score_sum: q.mean_score * labels as f64,
            calibration: q.calibration.iter().map(MergedBin::from_part).collect(),
            label_delay_sum_seconds: q.label_delay_mean_seconds * labels as f64,
            label_delay_max_seconds: q.label_delay_max_seconds,
        }
    }

    /// Adds another report (or merged window): counts and sums add; calibration bins add when
    /// they are the same bins (same bounds), else the odd part's bins are appended by bounds.
    fn add(&mut self, other: &MergedQuality) {
        self.window_start = self.window_start.min(other.window_start);
        self.window_end = self.window_end.max(other.window_end);
        self.instances.extend(other.instances.iter().cloned());
        self.threshold = other.threshold;
        self.labels += other.labels;
        self.confusion.merge(&other.confusion);
        self.brier_sum += other.brier_sum;
        self.log_loss_sum += other.log_loss_sum;
        self.score_sum += other.score_sum;
        self.label_delay_sum_seconds += other.label_delay_sum_seconds;
        self.label_delay_max_seconds = self.label_delay_max_seconds.max(other.label_delay_max_seconds);
        for bin in &other.calibration {
            match self.calibration.iter_mut().find(|b| b.lower == bin.lower && b.upper == bin.upper) {
                Some(b) => {
                    b.count += bin.count;
                    b.score_sum += bin.score_sum;
                    b.positives += bin.positives;
                }
                None => self.calibration.push(bin.clone()),
            }
        }
        self.calibration.sort_by(|a, b| a.lower.total_cmp(&b.lower));
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

    /// brier_sum / labels.
    pub fn brier(&self) -> Option<f64> {
        (self.labels > 0).then(|| self.brier_sum / self.labels as f64)
    }

    /// log_loss_sum / labels.
    pub fn log_loss(&self) -> Option<f64> {
        (self.labels > 0).then(|| self.log_loss_sum / self.labels as f64)
    }

    /// Share of positive labels.
    pub fn positive_rate(&self) -> Option<f64> {
        ratio(self.confusion.true_positives + self.confusion.false_negatives, self.labels)
    }

    /// Mean predicted score of the joined predictions.
    pub fn mean_score(&self) -> Option<f64> {
        (self.labels > 0).then(|| self.score_sum / self.labels as f64)
    }

    /// Mean label delay.
    pub fn label_delay_mean_seconds(&self) -> Option<f64> {
        (self.labels > 0).then(|| self.label_delay_sum_seconds / self.labels as f64)
    }

    /// Σ over bins of count/n · |mean score − positive share|, with n the predictions in the bins.
    pub fn expected_calibration_error(&self) -> Option<f64> {
        quality::expected_calibration_error(self.calibration.iter().map(|b| (b.count, b.score_sum, b.positives)))
    }
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Everything the report shows about one model version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VersionReport {
    /// Merged drift windows, oldest first.
    pub drift: Vec<MergedWindow>,
    /// Alerts of this version, newest first.
    pub alerts: Vec<DriftAlert>,
    /// Merged quality windows, oldest first.
    pub quality: Vec<MergedQuality>,
    /// Every quality report of the version merged into one (`None` without any).
    pub quality_total: Option<MergedQuality>,
}

impl VersionReport {
    /// The newest merged drift window.
    pub fn latest_window(&self) -> Option<&MergedWindow> {
        self.drift.last()
    }

    /// Columns (or `score`) with at least one alert in the range.
    pub fn alerting_columns(&self) -> BTreeSet<&str> {
        self.alerts.iter().map(|a| a.column.as_str()).collect()
    }
}

/// Champion vs challenger agreement over the range.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSummary {
    pub model: String,
    pub champion_version: String,
    pub challenger_name: String,
    pub challenger_version: String,
    pub records: u64,
    /// Records where both decisions were the same.
    pub agreements: u64,
    pub abs_diff_sum: f64,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl ShadowSummary {
    pub fn agreement_rate(&self) -> Option<f64> {
        ratio(self.agreements, self.records)
    }

    pub fn mean_abs_diff(&self) -> Option<f64> {
        (self.records > 0).then(|| self.abs_diff_sum / self.records as f64)
    }
}

/// The aggregated content of the report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aggregate {
    pub versions: BTreeMap<VersionKey, VersionReport>,
    pub shadow: Vec<ShadowSummary>,
    pub instances: BTreeSet<String>,
    /// Earliest window start / scoring time and latest window end / scoring time.
    pub time_range: Option<(i64, i64)>,
}

impl Aggregate {
    /// Model names, in order, with their versions.
    pub fn models(&self) -> BTreeMap<&str, Vec<&VersionKey>> {
        let mut out: BTreeMap<&str, Vec<&VersionKey>> = BTreeMap::new();
        for key in self.versions.keys() {
            out.entry(key.model.as_str()).or_default().push(key);
        }
        out
    }
}

/// Aggregates decoded records.
pub fn aggregate(records: &Records) -> Aggregate {
    let mut agg = Aggregate::default();
    let mut range = RangeTracker::default();

    let mut drift: BTreeMap<VersionKey, Vec<&DriftReport>> = BTreeMap::new();
    for r in &records.drift {
        drift.entry(VersionKey::new(&r.model_name, &r.model_version)).or_default().push(r);
        agg.instances.insert(r.instance_id.clone());
        range.add(r.window_start, r.window_end);
    }
    for (key, reports) in drift {
        agg.versions.entry(key).or_default().drift = merge_drift(&reports);
    }

    for a in &records.alerts {
        agg.instances.insert(a.instance_id.clone());
        range.add(a.window_start, a.window_end);
        agg.versions.entry(VersionKey::new(&a.model_name, &a.model_version)).or_default().alerts.push(a.clone());
    }
    for v in agg.versions.values_mut() {
        v.alerts.sort_by(|a, b| b.window_end.cmp(&a.window_end).then_with(|| a.column.cmp(&b.column)));
    }

    let mut quality: BTreeMap<VersionKey, Vec<&QualityReport>> = BTreeMap::new();
    for q in &records.quality {
        quality.entry(VersionKey::new(&q.model_name, &q.model_version)).or_default().push(q);
        agg.instances.insert(q.instance_id.clone());
        range.add(q.window_start, q.window_end);
    }
    for (key, reports) in quality {
        let windows = merge_quality(&reports);
        let mut total: Option<MergedQuality> = None;
        for w in &windows {
            match &mut total {
                Some(t) => t.add(w),
                None => total = Some(w.clone()),
            }
        }
        let v = agg.versions.entry(key).or_default();
        v.quality = windows;
        v.quality_total = total;
    }

    let mut shadow: BTreeMap<(String, String, String, String), ShadowSummary> = BTreeMap::new();
    for s in &records.shadow {
        range.add(s.scored_at, s.scored_at);
        add_shadow(&mut shadow, s);
    }
    agg.shadow = shadow.into_values().collect();
    agg.time_range = range.get();
    agg
}

fn add_shadow(map: &mut BTreeMap<(String, String, String, String), ShadowSummary>, s: &ShadowScore) {
    let key =
        (s.model_name.clone(), s.champion_version.clone(), s.challenger_name.clone(), s.challenger_version.clone());
    let e = map.entry(key).or_insert_with(|| ShadowSummary {
        model: s.model_name.clone(),
        champion_version: s.champion_version.clone(),
        challenger_name: s.challenger_name.clone(),
        challenger_version: s.challenger_version.clone(),
        records: 0,
        agreements: 0,
        abs_diff_sum: 0.0,
        first_ms: s.scored_at,
        last_ms: s.scored_at,
    });
    e.records += 1;
    e.agreements += u64::from(s.champion_label == s.challenger_label);
    let diff = (f64::from(s.champion_score) - f64::from(s.challenger_score)).abs();
    if diff.is_finite() {
        e.abs_diff_sum += diff;
    }
    e.first_ms = e.first_ms.min(s.scored_at);
    e.last_ms = e.last_ms.max(s.scored_at);
}

#[derive(Default)]
struct RangeTracker(Option<(i64, i64)>);

impl RangeTracker {
    fn add(&mut self, start: i64, end: i64) {
        self.0 = Some(match self.0 {
            None => (start.min(end), end.max(start)),
            Some((a, b)) => (a.min(start), b.max(end)),
        });
    }

    fn get(&self) -> Option<(i64, i64)> {
        self.0
    }
}

/// Something with a window and an instance, for [`clusters`].
trait Windowed {
    fn start(&self) -> i64;
    fn end(&self) -> i64;
    fn instance(&self) -> &str;
}

impl Windowed for &DriftReport {
    fn start(&self) -> i64 {
        self.window_start
    }
    fn end(&self) -> i64 {
        self.window_end
    }
    fn instance(&self) -> &str {
        &self.instance_id
    }
}

impl Windowed for &QualityReport {
    fn start(&self) -> i64 {
        self.window_start
    }
    fn end(&self) -> i64 {
        self.window_end
    }
    fn instance(&self) -> &str {
        &self.instance_id
    }
}

/// Groups one version's reports into "the same window" across instances.
///
/// Instances run their own timers, so their windows line up only roughly. Reports are taken in
/// order of `window_end`; a report joins the current group when its end is within half a typical
/// window (the median length) of the group's first end and its instance is not in the group yet
/// (one instance's consecutive windows are never merged into one point).
fn clusters<T: Windowed + Copy>(reports: &[T]) -> Vec<Vec<T>> {
    let mut sorted: Vec<T> = reports.to_vec();
    sorted.sort_by(|a, b| a.end().cmp(&b.end()).then_with(|| a.instance().cmp(b.instance())));
    let mut lengths: Vec<i64> = sorted.iter().map(|r| (r.end() - r.start()).max(1)).collect();
    lengths.sort_unstable();
    let typical = lengths.get(lengths.len() / 2).copied().unwrap_or(1);
    let mut out: Vec<Vec<T>> = Vec::new();
    for r in sorted {
        let joins = out.last().and_then(|group: &Vec<T>| group.first().map(|first| (group, first.end()))).is_some_and(
            |(group, first_end)| {
                2 * (r.end() - first_end) < typical && group.iter().all(|g| g.instance() != r.instance())
            },
        );
        match (joins, out.last_mut()) {
            (true, Some(group)) => group.push(r),
            _ => out.push(vec![r]),
        }
    }
    out
}

/// Merges one version's drift reports window by window.
pub fn merge_drift(reports: &[&DriftReport]) -> Vec<MergedWindow> {
    clusters(reports).into_iter().filter_map(|group| merge_window(&group)).collect()
}

fn merge_window(group: &[&DriftReport]) -> Option<MergedWindow> {
    let first = group.first()?;
    let mut w = MergedWindow {
        window_start: first.window_start,
        window_end: first.window_end,
        instances: BTreeSet::new(),
        rows: 0,
        features: first.features.iter().map(MergedFeature::from_part).collect(),
        score: MergedFeature::from_part(&first.score),
    };
    w.instances.insert(first.instance_id.clone());
    w.rows = non_negative(first.rows);
    for r in &group[1..] {
        w.window_start = w.window_start.min(r.window_start);
        w.window_end = w.window_end.max(r.window_end);
        w.instances.insert(r.instance_id.clone());
        w.rows += non_negative(r.rows);
        // Columns are matched by name: the manifest fixes their order, but a name match also
        // survives a part from a writer with a different column list.
        for f in &r.features {
            match w.features.iter_mut().find(|m| m.name == f.name) {
                Some(m) => m.add(f),
                None => w.features.push(MergedFeature::from_part(f)),
            }
        }
        w.score.add(&r.score);
    }
    for f in &mut w.features {
        f.recompute();
    }
    w.score.recompute();
    Some(w)
}

/// Merges one version's quality reports window by window.
pub fn merge_quality(reports: &[&QualityReport]) -> Vec<MergedQuality> {
    clusters(reports)
        .into_iter()
        .filter_map(|group| {
            let mut parts = group.iter().map(|q| MergedQuality::from_part(q));
            let mut merged = parts.next()?;
            for p in parts {
                merged.add(&p);
            }
            Some(merged)
        })
        .collect()
}
