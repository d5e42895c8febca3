//! Streaming drift statistics of the model's input columns and score, per reporting window.
//!
//! One [`DriftAccumulator`] per model version is fed once per scored batch on the inference
//! thread ([`DriftAccumulator::observe`]); it never allocates after construction. At the end of a
//! reporting window [`DriftAccumulator::take_window`] hands out a [`DriftWindow`] (the body of a
//! `DriftReport`, `schemas/drift_report.avsc`) and resets the counters.
//!
//! # Statistics
//!
//! For every column (and the score), over the `n` finite values `x` of the window:
//! - `mean = (1/n) Σ x`, `std = sqrt((1/n) Σ (x - mean)²)` (population standard deviation),
//!   accumulated with Welford's update in `f64`, so large offsets don't cancel;
//! - `min`, `max` of the values; `mean`, `std`, `min`, `max` are all `0.0` when `n = 0`;
//! - `bin_counts`: a histogram on the manifest's reference bins. With interior edges
//!   `e0 < … < e(k-1)`, bin 0 = `(-inf, e0)`, bin i = `[e(i-1), e(i))`, bin k = `[e(k-1), +inf)`
//!   (see [`bin_index`]); a value equal to an edge falls in the bin above it.
//!
//! Missing inputs (the feature stage used the manifest default) count like any other value, as
//! the model saw them; `missing` additionally counts them. Non-finite values (NaN, ±inf; the
//! feature stage rejects them, but a model may emit a NaN score) are skipped entirely, so a
//! report never carries NaN.
//!
//! # PSI
//!
//! The population stability index of the window's histogram `o` against the reference `r`:
//!
//! ```text
//! p_o(i) = o(i) / Σ o + ε,   p_r(i) = r(i) / Σ r + ε,   ε = PSI_EPSILON = 1e-4
//! PSI    = Σ_i (p_o(i) - p_r(i)) · ln(p_o(i) / p_r(i))
//! ```
//!
//! The additive `ε` keeps empty bins finite (an empty bin on one side contributes about
//! `p · ln(p / 1e-4)` instead of infinity). Every term is `≥ 0`, so PSI `≥ 0`, and it is `0` for
//! identical proportions. An empty window (or an empty reference) has PSI `0.0` by definition:
//! read it together with `rows = 0` / `count = 0`, which says there was nothing to compare.
//! Rule of thumb: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 significant shift.

use apache_avro::types::Value;

use crate::model::manifest::{Histogram, Manifest};

/// Additive smoothing of each bin proportion in [`psi`].
pub const PSI_EPSILON: f64 = 1e-4;

/// The bin of `x` for interior cut points `edges` (ascending): the number of edges `<= x`.
///
/// Bin 0 = `(-inf, e0)`, bin i = `[e(i-1), e(i))`, bin k = `[e(k-1), +inf)` for `k = edges.len()`.
/// A value equal to an edge goes to the upper bin. NaN goes to the last bin, like `+inf`, as in
/// [`Histogram::bin`] (the accumulator skips NaN anyway).
pub fn bin_index(edges: &[f64], x: f64) -> usize {
    if x.is_nan() {
        return edges.len();
    }
    edges.partition_point(|&e| e <= x)
}

/// Population stability index of `observed` against `reference` (same bins), with the
/// additive smoothing `ε = PSI_EPSILON` described in the module docs.
///
/// Returns `0.0` when either histogram is empty (all counts zero): an empty window reports
/// PSI 0 together with a zero count. Bins beyond the shorter of the two slices are ignored.
pub fn psi(reference: &[u64], observed: &[u64]) -> f64 {
    debug_assert_eq!(reference.len(), observed.len(), "histograms on different bins");
    let total_r: u64 = reference.iter().sum();
    let total_o: u64 = observed.iter().sum();
    if total_r == 0 || total_o == 0 {
        return 0.0;
    }
    let (total_r, total_o) = (total_r as f64, total_o as f64);
    reference
        .iter()
        .zip(observed)
        .map(|(&r, &o)| {
            let p_r = r as f64 / total_r + PSI_EPSILON;
            let p_o = o as f64 / total_o + PSI_EPSILON;
            (p_o - p_r) * (p_o / p_r).ln()
        })
        .sum()
}

/// Statistics of one column (or the score) over a window; one `FeatureStats` of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnStats {
    /// Manifest column name, or `score`.
    pub name: String,
    /// Finite values observed, missing ones included (as their default).
    pub count: u64,
    /// Values that were null in the input and took the manifest default.
    pub missing: u64,
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// The reference histogram's interior cut points.
    pub bin_edges: Vec<f64>,
    /// `bin_edges.len() + 1` counts of this window.
    pub bin_counts: Vec<u64>,
    /// PSI of `bin_counts` against the reference histogram (0 for an empty window).
    pub psi: f64,
}

/// One reporting window of one model version: the body of a `DriftReport`.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftWindow {
    pub model_name: String,
    pub model_version: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// Scored rows in the window.
    pub rows: u64,
    /// One entry per model input column, in manifest order.
    pub features: Vec<ColumnStats>,
    pub score: ColumnStats,
}

impl DriftWindow {
    /// The `io.streamscore.monitoring.DriftReport` record (`schemas/drift_report.avsc`).
    pub fn to_avro(&self, instance_id: &str) -> Value {
        Value::Record(vec![
            ("model_name".into(), Value::String(self.model_name.clone())),
            ("model_version".into(), Value::String(self.model_version.clone())),
            ("instance_id".into(), Value::String(instance_id.to_owned())),
            ("window_start".into(), Value::TimestampMillis(self.window_start_ms)),
            ("window_end".into(), Value::TimestampMillis(self.window_end_ms)),
            ("rows".into(), Value::Long(to_long(self.rows))),
            ("features".into(), Value::Array(self.features.iter().map(ColumnStats::to_avro).collect())),
            ("score".into(), self.score.to_avro()),
        ])
    }

    /// The `k` feature columns (score excluded) with the highest PSI, highest first.
    pub fn top_psi(&self, k: usize) -> Vec<(&str, f64)> {
        let mut all: Vec<(&str, f64)> = self.features.iter().map(|c| (c.name.as_str(), c.psi)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        all.truncate(k);
        all
    }
}

impl ColumnStats {
    fn to_avro(&self) -> Value {
        Value::Record(vec![
            ("name".into(), Value::String(self.name.clone())),
            ("count".into(), Value::Long(to_long(self.count))),
            ("missing".into(), Value::Long(to_long(self.missing))),
            ("mean".into(), Value::Double(self.mean)),
            ("std".into(), Value::Double(self.std)),
            ("min".into(), Value::Double(self.min)),
            ("max".into(), Value::Double(self.max)),
            ("bin_edges".into(), Value::Array(self.bin_edges.iter().map(|&e| Value::Double(e)).collect())),
            ("bin_counts".into(), Value::Array(self.bin_counts.iter().map(|&c| Value::Long(to_long(c))).collect())),
            ("psi".into(), Value::Double(self.psi)),
        ])
    }
}

fn to_long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Running statistics of one column within the current window.
#[derive(Debug, Clone)]
struct ColumnAcc {
    name: String,
    edges: Vec<f64>,
    reference: Vec<u64>,
    counts: Vec<u64>,
    count: u64,
    missing: u64,
    mean: f64,
    /// Welford's sum of squared deviations from the running mean.
    m2: f64,
    min: f64,
    max: f64,
}

impl ColumnAcc {
    fn new(name: &str, reference: &Histogram) -> Self {
        let bins = reference.edges.len() + 1;
        // The manifest loader checks `counts.len() == edges.len() + 1`; normalising here keeps
        // `observe` panic-free whatever it is given.
        debug_assert_eq!(reference.counts.len(), bins, "reference histogram of {name}");
        let mut ref_counts = reference.counts.clone();
        ref_counts.resize(bins, 0);
        ColumnAcc {
            name: name.to_owned(),
            edges: reference.edges.clone(),
            reference: ref_counts,
            counts: vec![0; bins],
            count: 0,
            missing: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    #[inline]
    fn push(&mut self, x: f64, missing: bool) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        self.missing += u64::from(missing);
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.counts[bin_index(&self.edges, x)] += 1;
    }

    fn take(&mut self) -> ColumnStats {
        let empty = self.count == 0;
        let stats = ColumnStats {
            name: self.name.clone(),
            count: self.count,
            missing: self.missing,
            mean: if empty { 0.0 } else { self.mean },
            std: if empty { 0.0 } else { (self.m2 / self.count as f64).max(0.0).sqrt() },
            min: if empty { 0.0 } else { self.min },
            max: if empty { 0.0 } else { self.max },
            bin_edges: self.edges.clone(),
            bin_counts: self.counts.clone(),
            psi: psi(&self.reference, &self.counts),
        };
        self.count = 0;
        self.missing = 0;
        self.mean = 0.0;
        self.m2 = 0.0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
        self.counts.fill(0);
        stats
    }
}

/// Window statistics of one model version's input columns and score.
#[derive(Debug, Clone)]
pub struct DriftAccumulator {
    model_name: String,
    model_version: String,
    columns: Vec<ColumnAcc>,
    score: ColumnAcc,
    rows: u64,
}

impl DriftAccumulator {
    /// An accumulator on the reference bins of `manifest` (one histogram per column, in
    /// column order, plus the score).
    pub fn new(manifest: &Manifest) -> Self {
        debug_assert_eq!(manifest.columns.len(), manifest.reference.columns.len());
        let empty = Histogram { name: String::new(), edges: Vec::new(), counts: vec![0] };
        let columns = manifest
            .columns
            .iter()
            .enumerate()
            .map(|(i, name)| ColumnAcc::new(name, manifest.reference.columns.get(i).unwrap_or(&empty)))
            .collect();
        DriftAccumulator {
            model_name: manifest.name.clone(),
            model_version: manifest.version.clone(),
            columns,
            score: ColumnAcc::new("score", &manifest.reference.score),
            rows: 0,
        }
    }

    /// An accumulator from explicit reference histograms (column names taken from them).
    pub fn from_histograms(model_name: &str, model_version: &str, columns: &[Histogram], score: &Histogram) -> Self {
        DriftAccumulator {
            model_name: model_name.to_owned(),
            model_version: model_version.to_owned(),
            columns: columns.iter().map(|h| ColumnAcc::new(&h.name, h)).collect(),
            score: ColumnAcc::new("score", score),
            rows: 0,
        }
    }

    /// Number of input columns `F`.
    pub fn num_columns(&self) -> usize {
        self.columns.len()
    }

    /// Adds a scored batch. `rows`: `n * F` row-major features; `missing`: `n * F` flags (true =
    /// the value came from a null input); `scores`: `n`. Mismatched lengths are a caller bug
    /// (debug assertion); in release only the rows present in all three are used.
    pub fn observe(&mut self, rows: &[f32], missing: &[bool], scores: &[f32]) {
        let f = self.columns.len();
        debug_assert_eq!(rows.len(), scores.len() * f, "rows must be n * F");
        debug_assert_eq!(missing.len(), rows.len(), "missing must be n * F");
        // With no columns only the scores bound `n`.
        let per_row = |len: usize| len.checked_div(f).unwrap_or(usize::MAX);
        let n = scores.len().min(per_row(rows.len())).min(per_row(missing.len()));
        if f > 0 {
            for (row, flags) in rows.chunks_exact(f).zip(missing.chunks_exact(f)).take(n) {
                for ((acc, &x), &m) in self.columns.iter_mut().zip(row).zip(flags) {
                    acc.push(f64::from(x), m);
                }
            }
        }
        for &s in &scores[..n] {
            self.score.push(f64::from(s), false);
        }
        self.rows += n as u64;
    }

    /// Returns the window's statistics and resets for the next window.
    pub fn take_window(&mut self, window_start_ms: i64, window_end_ms: i64) -> DriftWindow {
        let rows = std::mem::take(&mut self.rows);
        DriftWindow {
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            window_start_ms,
            window_end_ms,
            rows,
            features: self.columns.iter_mut().map(ColumnAcc::take).collect(),
            score: self.score.take(),
        }
    }
}

/// The drift accumulators of every version that scores rows (champion, canary, shadow
/// challenger), each on its own manifest's reference histograms, so every report and PSI gauge
/// names the version whose scores it describes. Fed by the inference thread, drained by the
/// drift reporter; a version that stopped scoring is dropped once its last window is taken.
#[derive(Debug, Default)]
pub struct DriftSet {
    entries: Vec<DriftEntry>,
}

#[derive(Debug)]
struct DriftEntry {
    version_id: u64,
    active: bool,
    acc: DriftAccumulator,
}

impl DriftSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `version_id` (with `manifest`'s reference) one of the active versions.
    pub fn track(&mut self, version_id: u64, manifest: &Manifest) {
        match self.entries.iter_mut().find(|e| e.version_id == version_id) {
            Some(e) => e.active = true,
            None => self.entries.push(DriftEntry { version_id, active: true, acc: DriftAccumulator::new(manifest) }),
        }
    }

    /// Keeps only `active` versions active; the others are dropped after their next window.
    pub fn retain_active(&mut self, active: &[u64]) {
        for e in &mut self.entries {
            e.active = active.contains(&e.version_id);
        }
    }

    /// The accumulator of `version_id`, if tracked.
    pub fn get_mut(&mut self, version_id: u64) -> Option<&mut DriftAccumulator> {
        self.entries.iter_mut().find(|e| e.version_id == version_id).map(|e| &mut e.acc)
    }

    /// Versions tracked (active or awaiting their last window).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One window per tracked version (empty ones included); inactive versions are dropped.
    pub fn take_windows(&mut self, window_start_ms: i64, window_end_ms: i64) -> Vec<DriftWindow> {
        let windows = self.entries.iter_mut().map(|e| e.acc.take_window(window_start_ms, window_end_ms)).collect();
        self.entries.retain(|e| e.active);
        windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Schema;

    fn hist(name: &str, edges: &[f64], counts: &[u64]) -> Histogram {
        Histogram { name: name.into(), edges: edges.to_vec(), counts: counts.to_vec() }
    }

    fn two_column_acc() -> DriftAccumulator {
        DriftAccumulator::from_histograms(
            "fraud_mlp",
            "1",
            &[hist("amount", &[1.0, 2.0, 3.0], &[10, 20, 30, 40]), hist("flag", &[0.5], &[90, 10])],
            &hist("score", &[0.25, 0.5, 0.75], &[70, 15, 10, 5]),
        )
    }

    #[test]
    fn bin_index_boundaries() {
        let edges = [1.0, 2.0, 3.0];
        assert_eq!(bin_index(&edges, f64::NEG_INFINITY), 0);
        assert_eq!(bin_index(&edges, 0.999), 0);
        assert_eq!(bin_index(&edges, 1.0), 1, "a value equal to an edge goes to the upper bin");
        assert_eq!(bin_index(&edges, 1.5), 1);
        assert_eq!(bin_index(&edges, 2.0), 2);
        assert_eq!(bin_index(&edges, 3.0), 3);
        assert_eq!(bin_index(&edges, 1e300), 3);
        assert_eq!(bin_index(&[], 42.0), 0);
        assert_eq!(bin_index(&edges, f64::NAN), 3);
    }

    #[test]
    fn psi_zero_for_identical_distributions() {
        assert_eq!(psi(&[10, 20, 30, 40], &[10, 20, 30, 40]), 0.0);
        // Same proportions, different totals.
        assert!(psi(&[10, 20, 30, 40], &[100, 200, 300, 400]).abs() < 1e-15);
    }

    #[test]
    fn psi_hand_computed_value() {
        // p_r = (0.5, 0.5) + ε, p_o = (0.9, 0.1) + ε.
        let e = PSI_EPSILON;
        let expected =
            (0.9 + e - (0.5 + e)) * ((0.9 + e) / (0.5 + e)).ln() + (0.1 + e - (0.5 + e)) * ((0.1 + e) / (0.5 + e)).ln();
        let got = psi(&[50, 50], &[90, 10]);
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // ≈ 0.4·ln(1.8) + 0.4·ln(5) = 0.2351 + 0.6438
        assert!((got - 0.878_9).abs() < 1e-3, "{got}");
    }

    #[test]
    fn psi_empty_bins_finite_and_empty_window_zero() {
        let v = psi(&[100, 0], &[0, 100]);
        assert!(v.is_finite() && v > 5.0, "{v}");
        assert_eq!(psi(&[10, 20], &[0, 0]), 0.0);
        assert_eq!(psi(&[0, 0], &[10, 20]), 0.0);
    }

    #[test]
    fn psi_symmetric_sanity() {
        let a = [30, 40, 20, 10];
        let b = [10, 20, 40, 30];
        let (ab, ba) = (psi(&a, &b), psi(&b, &a));
        assert!(ab > 0.0);
        // PSI is symmetric in the proportions; only the smoothing breaks it, negligibly here.
        assert!((ab - ba).abs() < 1e-12, "{ab} vs {ba}");
        // A larger shift gives a larger PSI.
        assert!(psi(&a, &[0, 10, 40, 50]) > ab);
    }

    #[test]
    fn mean_std_min_max_match_direct_computation() {
        let mut acc = two_column_acc();
        let xs = [0.5f32, 1.0, 2.5, 3.0, 7.25, 1e3, -4.0];
        let mut rows = Vec::new();
        let mut missing = Vec::new();
        let mut scores = Vec::new();
        for (i, &x) in xs.iter().enumerate() {
            rows.extend_from_slice(&[x, (i % 2) as f32]);
            missing.extend_from_slice(&[i == 3, false]);
            scores.push(i as f32 / 10.0);
        }
        // Two batches, to exercise accumulation across calls.
        acc.observe(&rows[..6], &missing[..6], &scores[..3]);
        acc.observe(&rows[6..], &missing[6..], &scores[3..]);
        let w = acc.take_window(1_000, 2_000);

        let vals: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let amount = &w.features[0];
        assert_eq!(w.rows, 7);
        assert_eq!(amount.count, 7);
        assert_eq!(amount.missing, 1);
        assert!((amount.mean - mean).abs() < 1e-9);
        assert!((amount.std - std).abs() < 1e-9);
        assert_eq!((amount.min, amount.max), (-4.0, 1000.0));
        // -4, 0.5 | 1.0 | 2.5 | 3.0, 7.25, 1e3
        assert_eq!(amount.bin_counts, vec![2, 1, 1, 3]);
        assert_eq!(w.features[1].bin_counts, vec![4, 3]);
        assert_eq!(w.score.count, 7);
        assert!((w.score.mean - 0.3).abs() < 1e-6);
        assert_eq!(w.score.bin_counts, vec![3, 2, 2, 0]);
    }

    #[test]
    fn take_window_resets() {
        let mut acc = two_column_acc();
        acc.observe(&[5.0, 1.0, 0.5, 0.0], &[true, false, false, true], &[0.9, 0.1]);
        let first = acc.take_window(0, 10);
        assert_eq!(first.rows, 2);
        assert!(first.features[0].psi > 0.0);

        let empty = acc.take_window(10, 20);
        assert_eq!((empty.window_start_ms, empty.window_end_ms), (10, 20));
        assert_eq!(empty.rows, 0);
        for c in empty.features.iter().chain(std::iter::once(&empty.score)) {
            assert_eq!((c.count, c.missing), (0, 0));
            assert_eq!((c.mean, c.std, c.min, c.max, c.psi), (0.0, 0.0, 0.0, 0.0, 0.0));
            assert!(c.bin_counts.iter().all(|&b| b == 0));
            assert_eq!(c.bin_counts.len(), c.bin_edges.len() + 1);
        }

        acc.observe(&[2.0, 0.0], &[false, false], &[0.6]);
        let third = acc.take_window(20, 30);
        assert_eq!(third.rows, 1);
        assert_eq!(third.features[0].mean, 2.0);
        assert_eq!(third.features[0].bin_counts, vec![0, 0, 1, 0]);
        assert_eq!(third.features[0].missing, 0);
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let mut acc = two_column_acc();
        acc.observe(&[1.0, 0.0, 2.0, 0.0], &[false; 4], &[f32::NAN, 0.5]);
        let w = acc.take_window(0, 1);
        assert_eq!(w.rows, 2);
        assert_eq!(w.score.count, 1);
        assert_eq!(w.score.mean, 0.5);
    }

    #[test]
    fn top_psi_orders_highest_first() {
        let mut acc = DriftAccumulator::from_histograms(
            "m",
            "1",
            &[hist("a", &[0.5], &[50, 50]), hist("b", &[0.5], &[50, 50]), hist("c", &[0.5], &[50, 50])],
            &hist("score", &[0.5], &[50, 50]),
        );
        // a: balanced (psi 0), b: all high (large psi), c: 3:1 (moderate).
        let rows = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        acc.observe(&rows, &[false; 12], &[0.1; 4]);
        let w = acc.take_window(0, 1);
        let top = w.top_psi(2);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, "b");
        assert_eq!(top[1].0, "c");
        assert!(top[0].1 > top[1].1);
        assert_eq!(w.top_psi(10).len(), 3);
    }

    #[test]
    fn shipped_manifest_gives_one_stats_entry_per_column() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1");
        let manifest = Manifest::from_dir(&dir).unwrap();
        let mut acc = DriftAccumulator::new(&manifest);
        let f = manifest.columns.len();
        assert_eq!(acc.num_columns(), f);
        acc.observe(&vec![0.5; 3 * f], &vec![false; 3 * f], &[0.1, 0.2, 0.9]);
        let w = acc.take_window(0, 60_000);
        assert_eq!((w.model_name.as_str(), w.model_version.as_str()), ("fraud_mlp", "1"));
        assert_eq!(w.rows, 3);
        let names: Vec<&str> = w.features.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, manifest.columns);
        for (c, h) in w.features.iter().zip(&manifest.reference.columns) {
            assert_eq!(c.bin_edges, h.edges);
            assert_eq!(c.bin_counts.len(), h.counts.len());
            assert_eq!(c.bin_counts[h.bin(0.5)], 3);
        }
        assert_eq!(w.score.name, "score");
        assert_eq!(w.score.bin_edges, manifest.reference.score.edges);
    }

    #[test]
    fn to_avro_validates_and_round_trips() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/drift_report.avsc")).unwrap();
        let schema = Schema::parse_str(&text).unwrap();
        let mut acc = two_column_acc();
        acc.observe(&[1.5, 1.0, 0.2, 0.0], &[false, true, false, false], &[0.3, 0.8]);
        for w in [acc.take_window(1_700_000_000_000, 1_700_000_060_000), acc.take_window(1, 2)] {
            let value = w.to_avro("instance-a");
            assert!(value.validate(&schema), "{value:?}");
            let bytes =
                GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(value.clone()).unwrap();
            let back = GenericDatumReader::builder(&schema).build().unwrap().read_value(&mut &bytes[..]).unwrap();
            assert_eq!(back, value);
        }
    }
}
