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
//!   accumulated in `f64` per batch as sums of deviations from the running mean (shifted
//!   data), merged into the window with Chan et al.'s pairwise update, so large offsets don't
//!   cancel and no value costs a division;
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
//!
//! # Jensen–Shannon distance, two-sample tests, alerts
//!
//! [`js_distance`] (base 2, in `[0, 1]`), [`ks_binned`] (numeric columns and the score) and
//! [`chi_square`] (categorical columns: `one_hot`, `boolean`, missing flags) are computed on the
//! same bins; the formulas and defaults are in `docs/drift.md`. A statistic that crosses its
//! manifest threshold ([`DriftSpec`]) in `consecutive_windows` consecutive evaluated windows
//! raises one [`DriftAlert`]; the alert re-arms once a window no longer crosses.

use apache_avro::types::Value;

use crate::model::manifest::{ColumnKind, DriftSpec, DriftThresholds, Histogram, Manifest};

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

/// The totals of two histograms on the same bins, or `None` when either is empty (no evidence).
fn totals(reference: &[u64], observed: &[u64]) -> Option<(f64, f64)> {
    debug_assert_eq!(reference.len(), observed.len(), "histograms on different bins");
    let total_r: u64 = reference.iter().sum();
    let total_o: u64 = observed.iter().sum();
    (total_r > 0 && total_o > 0).then_some((total_r as f64, total_o as f64))
}

/// Population stability index of `observed` against `reference` (same bins), with the
/// additive smoothing `ε = PSI_EPSILON` described in the module docs.
///
/// Returns `0.0` when either histogram is empty (all counts zero): an empty window reports
/// PSI 0 together with a zero count. Bins beyond the shorter of the two slices are ignored.
pub fn psi(reference: &[u64], observed: &[u64]) -> f64 {
    let Some((total_r, total_o)) = totals(reference, observed) else { return 0.0 };
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

/// Jensen–Shannon distance of `observed` against `reference` (same bins), base 2:
/// `sqrt(½ Σ p·log2(p/m) + ½ Σ q·log2(q/m))` with `m = (p + q) / 2`, so `0` for identical
/// proportions and `1` for disjoint supports. No smoothing is needed (`m > 0` wherever `p` or `q`
/// is). `0.0` when either histogram is empty, like [`psi`].
pub fn js_distance(reference: &[u64], observed: &[u64]) -> f64 {
    let Some((total_r, total_o)) = totals(reference, observed) else { return 0.0 };
    let half_kl = |a: f64, m: f64| if a > 0.0 { 0.5 * a * (a / m).log2() } else { 0.0 };
    let divergence: f64 = reference
        .iter()
        .zip(observed)
        .map(|(&r, &o)| {
            let (p, q) = (r as f64 / total_r, o as f64 / total_o);
            let m = 0.5 * (p + q);
            half_kl(p, m) + half_kl(q, m)
        })
        .sum();
    // Rounding can leave a tiny negative divergence or one a hair above 1.
    divergence.clamp(0.0, 1.0).sqrt()
}

/// Which two-sample test a column gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriftTest {
    /// Kolmogorov–Smirnov on the binned CDFs ([`ks_binned`]).
    Ks,
    /// Chi-square goodness of fit against the reference proportions ([`chi_square`]).
    ChiSquare,
}

impl DriftTest {
    /// For a column of `kind`.
    pub fn for_kind(kind: ColumnKind) -> Self {
        match kind {
            ColumnKind::Numeric => DriftTest::Ks,
            ColumnKind::Categorical => DriftTest::ChiSquare,
        }
    }

    /// The name in reports (`test` field): `ks` or `chi2`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftTest::Ks => "ks",
            DriftTest::ChiSquare => "chi2",
        }
    }

    /// The statistic's name in alerts and metric labels: `ks_p_value` or `chi2_p_value`.
    pub fn p_value_statistic(self) -> &'static str {
        match self {
            DriftTest::Ks => "ks_p_value",
            DriftTest::ChiSquare => "chi2_p_value",
        }
    }

    /// Runs the test on `reference` vs `observed` counts.
    pub fn run(self, reference: &[u64], observed: &[u64]) -> TestResult {
        match self {
            DriftTest::Ks => ks_binned(reference, observed),
            DriftTest::ChiSquare => chi_square(reference, observed),
        }
    }
}

/// A test statistic and its p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    pub statistic: f64,
    pub p_value: f64,
}

/// "Nothing to compare": an empty histogram on either side, or a single bin.
const NO_EVIDENCE: TestResult = TestResult { statistic: 0.0, p_value: 1.0 };

/// Two-sample Kolmogorov–Smirnov test on binned data: `D = max_i |R(i) - O(i)|` over the
/// cumulative proportions at the bin edges, p-value from the asymptotic Kolmogorov distribution
/// with `n_e = n·m/(n+m)` and Stephens' correction `λ = (√n_e + 0.12 + 0.11/√n_e)·D`
/// ([`kolmogorov_q`]). Binning can only hide differences inside a bin, so `D` is a lower bound
/// of the unbinned statistic. [`NO_EVIDENCE`] (`D = 0`, `p = 1`) when either side is empty.
pub fn ks_binned(reference: &[u64], observed: &[u64]) -> TestResult {
    debug_assert_eq!(reference.len(), observed.len(), "histograms on different bins");
    let n: u64 = reference.iter().sum();
    let m: u64 = observed.iter().sum();
    if n == 0 || m == 0 {
        return NO_EVIDENCE;
    }
    let (n, m) = (n as f64, m as f64);
    let (mut cum_r, mut cum_o, mut d) = (0u64, 0u64, 0.0f64);
    for (&r, &o) in reference.iter().zip(observed) {
        cum_r += r;
        cum_o += o;
        d = d.max((cum_r as f64 / n - cum_o as f64 / m).abs());
    }
    let ne = n * m / (n + m);
    let sqrt_ne = ne.sqrt();
    TestResult { statistic: d, p_value: kolmogorov_q((sqrt_ne + 0.12 + 0.11 / sqrt_ne) * d) }
}

/// The Kolmogorov distribution's survival function
/// `Q(λ) = 2 Σ_{j≥1} (-1)^(j-1) exp(-2 j² λ²)` (Numerical Recipes' `probks`): `Q(0) = 1`,
/// `Q(1.36) ≈ 0.05`, `Q(1.63) ≈ 0.01`. The alternating series converges slowly for small `λ`,
/// where `Q` is 1 to double precision anyway.
pub fn kolmogorov_q(lambda: f64) -> f64 {
    // NaN counts as no evidence, like 0.
    if lambda.is_nan() || lambda <= 0.0 {
        return 1.0;
    }
    let a2 = -2.0 * lambda * lambda;
    let (mut fac, mut sum, mut previous) = (2.0f64, 0.0f64, 0.0f64);
    for j in 1..=100 {
        let j = f64::from(j);
        let term = fac * (a2 * j * j).exp();
        sum += term;
        if term.abs() <= 1e-3 * previous || term.abs() <= 1e-8 * sum {
            return sum.clamp(0.0, 1.0);
        }
        fac = -fac;
        previous = term.abs();
    }
    1.0
}

/// Additive (Jeffreys) smoothing of the reference counts in [`chi_square`]: an empty reference
/// bin gets an expected share of `0.5 / (N + 0.5·k)` instead of zero, so the statistic stays
/// finite while a window landing there still counts as strong evidence.
pub const CHI2_SMOOTHING: f64 = 0.5;

/// Chi-square goodness of fit of the window's counts `o` (total `M`) against the reference
/// proportions: `p(i) = (r(i) + α) / (N + k·α)`, `E(i) = M·p(i)`,
/// `χ² = Σ (o(i) - E(i))² / E(i)`, `dof = k - 1`, `p-value = Q(dof/2, χ²/2)` ([`gamma_q`]).
/// The reference is taken as exact (it is the training data, normally far larger than a
/// window). [`NO_EVIDENCE`] when either side is empty or there is a single bin.
pub fn chi_square(reference: &[u64], observed: &[u64]) -> TestResult {
    debug_assert_eq!(reference.len(), observed.len(), "histograms on different bins");
    let k = reference.len().min(observed.len());
    let n: u64 = reference.iter().sum();
    let m: u64 = observed.iter().sum();
    if n == 0 || m == 0 || k < 2 {
        return NO_EVIDENCE;
    }
    let denominator = n as f64 + k as f64 * CHI2_SMOOTHING;
    let m = m as f64;
    let statistic: f64 = reference
        .iter()
        .zip(observed)
        .map(|(&r, &o)| {
            let expected = m * (r as f64 + CHI2_SMOOTHING) / denominator;
            let diff = o as f64 - expected;
            diff * diff / expected
        })
        .sum();
    let dof = (k - 1) as f64;
    TestResult { statistic, p_value: gamma_q(0.5 * dof, 0.5 * statistic) }
}

/// The regularized upper incomplete gamma function `Q(a, x) = Γ(a, x) / Γ(a)` for `a > 0`,
/// `x ≥ 0` (NaN otherwise): the series of `P = 1 - Q` for `x < a + 1`, Lentz's continued
/// fraction otherwise (Numerical Recipes' `gammq`). The chi-square survival function is
/// `Q(dof/2, χ²/2)`.
pub fn gamma_q(a: f64, x: f64) -> f64 {
    if a.is_nan() || x.is_nan() || a <= 0.0 || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x.is_infinite() {
        return 0.0;
    }
    let q = if x < a + 1.0 { 1.0 - gamma_p_series(a, x) } else { gamma_q_continued_fraction(a, x) };
    q.clamp(0.0, 1.0)
}

const GAMMA_EPS: f64 = 1e-15;
const GAMMA_ITERATIONS: usize = 1_000;

/// `P(a, x)` by its series, `e^-x x^a / Γ(a+1) · Σ x^n / ((a+1)…(a+n))`.
fn gamma_p_series(a: f64, x: f64) -> f64 {
    let (mut ap, mut del) = (a, 1.0 / a);
    let mut sum = del;
    for _ in 0..GAMMA_ITERATIONS {
        ap += 1.0;
        del *= x / ap;
        sum += del;
        if del.abs() < sum.abs() * GAMMA_EPS {
            break;
        }
    }
    sum * (-x + a * x.ln() - ln_gamma(a)).exp()
}

/// `Q(a, x)` by its continued fraction, evaluated with the modified Lentz method.
fn gamma_q_continued_fraction(a: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / TINY;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..=GAMMA_ITERATIONS {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < TINY {
            d = TINY;
        }
        c = b + an / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < GAMMA_EPS {
            break;
        }
    }
    (-x + a * x.ln() - ln_gamma(a)).exp() * h
}

/// `ln Γ(x)` for `x > 0`, Lanczos approximation (g = 7, 9 coefficients; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1-x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = C.iter().enumerate().skip(1).fold(C[0], |acc, (i, &c)| acc + c / (x + i as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
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
    /// The manifest's reference counts on the same bins, so a reader (or a merge of several
    /// instances' reports) can recompute every statistic without the manifest.
    pub reference_counts: Vec<u64>,
    /// PSI of `bin_counts` against the reference histogram (0 for an empty window).
    pub psi: f64,
    /// Jensen–Shannon distance (base 2) against the reference (0 for an empty window).
    pub js: f64,
    /// The two-sample test used for this column.
    pub test: DriftTest,
    /// KS `D` or chi-square `χ²` (0 for an empty window).
    pub test_statistic: f64,
    /// The test's p-value (1 for an empty window).
    pub p_value: f64,
}

/// A retraining trigger: one statistic of one column crossed its threshold in `windows`
/// consecutive windows (`schemas/drift_alert.avsc`).
#[derive(Debug, Clone, PartialEq)]
pub struct DriftAlert {
    pub model_name: String,
    pub model_version: String,
    /// Column name, or `score`.
    pub column: String,
    /// `psi`, `js`, `ks_p_value` or `chi2_p_value`.
    pub statistic: &'static str,
    /// The statistic in the window that completed the streak.
    pub value: f64,
    pub threshold: f64,
    /// Consecutive crossed windows (the manifest's `consecutive_windows`).
    pub windows: u32,
    /// Start of the streak's first window.
    pub window_start_ms: i64,
    /// End of the streak's last window.
    pub window_end_ms: i64,
}

impl DriftAlert {
    /// The `io.streamscore.monitoring.DriftAlert` record (`schemas/drift_alert.avsc`).
    pub fn to_avro(&self, instance_id: &str) -> Value {
        Value::Record(vec![
            ("model_name".into(), Value::String(self.model_name.clone())),
            ("model_version".into(), Value::String(self.model_version.clone())),
            ("instance_id".into(), Value::String(instance_id.to_owned())),
            ("column".into(), Value::String(self.column.clone())),
            ("statistic".into(), Value::String(self.statistic.to_owned())),
            ("value".into(), Value::Double(self.value)),
            ("threshold".into(), Value::Double(self.threshold)),
            ("windows".into(), Value::Int(i32::try_from(self.windows).unwrap_or(i32::MAX))),
            ("window_start".into(), Value::TimestampMillis(self.window_start_ms)),
            ("window_end".into(), Value::TimestampMillis(self.window_end_ms)),
        ])
    }
}

/// A statistic that stopped crossing after an alert: its alerting gauge goes back to 0.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRecovery {
    pub column: String,
    pub statistic: &'static str,
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
    /// Alerts this window raised (streaks that reached `consecutive_windows` in it).
    pub alerts: Vec<DriftAlert>,
    /// Alerting statistics that recovered in this window.
    pub recovered: Vec<DriftRecovery>,
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
        let longs = |v: &[u64]| Value::Array(v.iter().map(|&c| Value::Long(to_long(c))).collect());
        Value::Record(vec![
            ("name".into(), Value::String(self.name.clone())),
            ("count".into(), Value::Long(to_long(self.count))),
            ("missing".into(), Value::Long(to_long(self.missing))),
            ("mean".into(), Value::Double(self.mean)),
            ("std".into(), Value::Double(self.std)),
            ("min".into(), Value::Double(self.min)),
            ("max".into(), Value::Double(self.max)),
            ("bin_edges".into(), Value::Array(self.bin_edges.iter().map(|&e| Value::Double(e)).collect())),
            ("bin_counts".into(), longs(&self.bin_counts)),
            ("psi".into(), Value::Double(self.psi)),
            ("js".into(), Value::Double(self.js)),
            ("test".into(), Value::String(self.test.as_str().to_owned())),
            ("test_statistic".into(), Value::Double(self.test_statistic)),
            ("p_value".into(), Value::Double(self.p_value)),
            ("reference_counts".into(), longs(&self.reference_counts)),
        ])
    }

    /// Whether each alerting statistic crossed `t`: `[psi, js, p-value]`.
    fn crossed(&self, t: &DriftThresholds) -> [(bool, f64, f64); 3] {
        [
            (self.psi > t.psi, self.psi, t.psi),
            (self.js > t.js, self.js, t.js),
            (self.p_value < t.p_value, self.p_value, t.p_value),
        ]
    }
}

fn to_long(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The consecutive-window state of one statistic of one column.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Streak {
    /// Consecutive evaluated windows that crossed.
    windows: u32,
    /// Start of the first of them.
    start_ms: i64,
    /// An alert was raised for this streak and the statistic has not recovered since.
    alerting: bool,
}

/// What one window does to a [`Streak`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreakEvent {
    None,
    /// The streak reached `k` windows: raise one alert.
    Fire,
    /// An alerting statistic stopped crossing: re-armed.
    Recover,
}

impl Streak {
    /// Advances by one evaluated window (`crossed` or not) starting at `start_ms`; `k >= 1`.
    /// Fires once when the streak reaches `k`, not again while it stays above, and re-arms on
    /// the first window that does not cross.
    fn advance(&mut self, crossed: bool, start_ms: i64, k: u32) -> StreakEvent {
        if !crossed {
            let was_alerting = self.alerting;
            *self = Streak::default();
            return if was_alerting { StreakEvent::Recover } else { StreakEvent::None };
        }
        if self.windows == 0 {
            self.start_ms = start_ms;
        }
        self.windows = self.windows.saturating_add(1);
        if self.windows >= k.max(1) && !self.alerting {
            self.alerting = true;
            return StreakEvent::Fire;
        }
        StreakEvent::None
    }
}

/// Moments of one batch of a column, as sums of deviations from `shift`.
#[derive(Debug, Default, Clone, Copy)]
struct BatchMoments {
    n: u64,
    shift: f64,
    s1: f64,
    s2: f64,
}

/// A categorical column's window while it holds only 0s and 1s (one-hot columns and missing
/// flags always do): counted, not summed. Its mean, spread, extremes and bins follow from the
/// two counts exactly (`m2` = ones × zeros / n), for a few instructions per value instead of the
/// moments' float arithmetic, extremes and bin search. Any other value (a `boolean` feature's
/// null default, say) turns the column into a numeric one for the rest of the window, the
/// counts so far carried over ([`ColumnAcc::settle_binary`]).
#[derive(Debug, Clone, Copy, Default)]
struct Binary {
    zeros: u64,
    ones: u64,
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
    /// Sum of squared deviations from the mean (merged batch by batch with Chan et al.'s
    /// pairwise formula).
    m2: f64,
    min: f64,
    max: f64,
    /// The current batch (see [`ColumnAcc::push`]): values counted, and the sums of their
    /// deviations and squared deviations from `shift`. Kept here because a batch is walked row
    /// by row across the columns: walking it column by column with these sums in locals took
    /// ~30% more instructions (strided reads; callgrind, `drift/observe`).
    batch: BatchMoments,
    /// `Some` while every value of the window so far was exactly 0 or 1 (see [`Binary`]); every
    /// window of a categorical column (the chi-square tested ones) starts so.
    binary: Option<Binary>,
    test: DriftTest,
    thresholds: DriftThresholds,
    /// PSI, JS, p-value streaks.
    streaks: [Streak; 3],
}

impl ColumnAcc {
    fn new(name: &str, reference: &Histogram, kind: ColumnKind, spec: &DriftSpec) -> Self {
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
            batch: BatchMoments::default(),
            binary: (kind == ColumnKind::Categorical).then(Binary::default),
            test: DriftTest::for_kind(kind),
            thresholds: spec.thresholds(name),
            streaks: [Streak::default(); 3],
        }
    }

    /// Starts a batch: deviations are summed from the running mean (or, before any value, from
    /// `first`, the batch's first value), which keeps the sums small and their difference exact
    /// enough (the shifted-data algorithm) without a division per value as Welford's needs.
    #[inline]
    fn begin_batch(&mut self, first: f64) {
        let shift = if self.count > 0 {
            self.mean
        } else if first.is_finite() {
            first
        } else {
            0.0
        };
        self.batch = BatchMoments { shift, ..BatchMoments::default() };
    }

    /// Adds one value to the current batch (between [`begin_batch`](Self::begin_batch) and
    /// [`end_batch`](Self::end_batch)). Non-finite values are not counted.
    #[inline]
    fn push(&mut self, x: f64, missing: bool) {
        if let Some(counts) = &mut self.binary {
            // Bit patterns, +0.0 and 1.0 only: a -0.0 takes the numeric path, so the extremes come
            // out bit for bit as a numeric column's would.
            let (zero, one) = (x.to_bits() == 0, x.to_bits() == 1f64.to_bits());
            if zero | one {
                counts.zeros += u64::from(zero);
                counts.ones += u64::from(one);
                self.missing += u64::from(missing);
                return;
            }
            if !x.is_finite() {
                return;
            }
            self.settle_binary();
            self.binary = None;
        }
        if !x.is_finite() {
            return;
        }
        let b = &mut self.batch;
        b.n += 1;
        let d = x - b.shift;
        b.s1 += d;
        b.s2 += d * d;
        self.missing += u64::from(missing);
        // x is finite: plain comparisons (f64::min/max also handle NaN, at several instructions
        // each), and the extremes rarely move after a window's first values.
        if x < self.min {
            self.min = x;
        }
        if x > self.max {
            self.max = x;
        }
        let bin = self.bin(x);
        self.counts[bin] += 1;
    }

    /// The bin of a finite `x`. Edges are finite and strictly increasing (the manifest loader
    /// checks), so the number of edges <= x is its bin; counting is branch-free for the few
    /// edges columns have, a binary search is better beyond.
    #[inline]
    fn bin(&self, x: f64) -> usize {
        match self.edges.as_slice() {
            // One edge is the common case (flags and other columns of two values): no loop.
            [edge] => usize::from(*edge <= x),
            edges if edges.len() <= 16 => edges.iter().map(|&e| usize::from(e <= x)).sum(),
            edges => bin_index(edges, x),
        }
    }

    /// Adds a batch of `n` values that a dense pass counted: `zeros` exact +0.0s, `ones` exact
    /// 1.0s, `missing` marks. Taken (true) only while the column is binary and the batch held
    /// nothing else, which is what `push` would have counted value by value; otherwise nothing
    /// is added (false) and the caller pushes the batch's values one by one.
    #[inline]
    fn add_binary_batch(&mut self, zeros: u32, ones: u32, missing: u32, n: usize) -> bool {
        let Some(counts) = &mut self.binary else { return false };
        if zeros as usize + ones as usize != n {
            return false;
        }
        counts.zeros += u64::from(zeros);
        counts.ones += u64::from(ones);
        self.missing += u64::from(missing);
        true
    }

    /// Moves a binary window's counts into the numeric statistics, which are empty while the
    /// column is binary: count, mean and `m2` from the two counts (exact up to one rounding
    /// each), extremes from which values occurred, and both counts into their bins.
    fn settle_binary(&mut self) {
        let Some(counts) = self.binary.as_mut() else { return };
        let Binary { zeros, ones } = std::mem::take(counts);
        let n = zeros + ones;
        if n == 0 {
            return;
        }
        debug_assert_eq!(self.count, 0, "a binary column keeps no numeric statistics");
        let (z, k, total) = (zeros as f64, ones as f64, n as f64);
        self.count = n;
        self.mean = k / total;
        self.m2 = k * z / total;
        self.min = if zeros > 0 { 0.0 } else { 1.0 };
        self.max = if ones > 0 { 1.0 } else { 0.0 };
        let (b0, b1) = (self.bin(0.0), self.bin(1.0));
        self.counts[b0] += zeros;
        self.counts[b1] += ones;
    }

    /// Merges the current batch into the window's count, mean and `m2` (Chan et al.).
    #[inline]
    fn end_batch(&mut self) {
        let BatchMoments { n, shift, s1, s2 } = std::mem::take(&mut self.batch);
        if n == 0 {
            return;
        }
        let nb = n as f64;
        let mean_b = shift + s1 / nb;
        let m2_b = (s2 - s1 * s1 / nb).max(0.0);
        let na = self.count as f64;
        let total = na + nb;
        let delta = mean_b - self.mean;
        self.mean += delta * (nb / total);
        self.m2 += m2_b + delta * delta * (na * nb / total);
        self.count += n;
    }

    fn take(&mut self) -> ColumnStats {
        self.settle_binary();
        let empty = self.count == 0;
        let test = self.test.run(&self.reference, &self.counts);
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
            reference_counts: self.reference.clone(),
            psi: psi(&self.reference, &self.counts),
            js: js_distance(&self.reference, &self.counts),
            test: self.test,
            test_statistic: test.statistic,
            p_value: test.p_value,
        };
        self.count = 0;
        self.missing = 0;
        self.mean = 0.0;
        self.m2 = 0.0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
        self.counts.fill(0);
        // A categorical column starts every window binary again.
        if self.test == DriftTest::ChiSquare {
            self.binary = Some(Binary::default());
        }
        stats
    }

    /// Advances the streaks with this window's `stats` (skipped below `spec.min_count` values)
    /// and appends raised alerts and recoveries.
    fn evaluate(
        &mut self,
        stats: &ColumnStats,
        spec: &DriftSpec,
        (model, version): (&str, &str),
        (start_ms, end_ms): (i64, i64),
        alerts: &mut Vec<DriftAlert>,
        recovered: &mut Vec<DriftRecovery>,
    ) {
        if stats.count < spec.min_count.max(1) {
            return;
        }
        let names = ["psi", "js", self.test.p_value_statistic()];
        for ((streak, (crossed, value, threshold)), statistic) in
            self.streaks.iter_mut().zip(stats.crossed(&self.thresholds)).zip(names)
        {
            match streak.advance(crossed, start_ms, spec.consecutive_windows) {
                StreakEvent::Fire => alerts.push(DriftAlert {
                    model_name: model.to_owned(),
                    model_version: version.to_owned(),
                    column: self.name.clone(),
                    statistic,
                    value,
                    threshold,
                    windows: spec.consecutive_windows.max(1),
                    window_start_ms: streak.start_ms,
                    window_end_ms: end_ms,
                }),
                StreakEvent::Recover => recovered.push(DriftRecovery { column: self.name.clone(), statistic }),
                StreakEvent::None => {}
            }
        }
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
    spec: DriftSpec,
    /// Per-batch scratch of [`observe`](Self::observe), reused: the dense pass's counts and
    /// the columns walked value by value.
    dense: DenseCounts,
    per_value: Vec<usize>,
}

/// One batch's exact 0s, exact 1s and missing marks per column, counted in one pass over the
/// row-major batch into dense per-column counters (a few vector instructions per row, where
/// visiting each column's accumulator per value cost ~35 instructions per value).
#[derive(Debug, Clone, Default)]
struct DenseCounts {
    zeros: Vec<u32>,
    ones: Vec<u32>,
    missing: Vec<u32>,
}

impl DenseCounts {
    /// Counts `rows` (`n * f` values, `n` < 2^32) and their `missing` flags.
    fn count(&mut self, rows: &[f32], missing: &[bool], f: usize) {
        for v in [&mut self.zeros, &mut self.ones, &mut self.missing] {
            v.clear();
            v.resize(f, 0);
        }
        let (zeros, ones, marks) = (&mut self.zeros[..f], &mut self.ones[..f], &mut self.missing[..f]);
        let one = 1f32.to_bits();
        for (row, flags) in rows.chunks_exact(f).zip(missing.chunks_exact(f)) {
            // Bit patterns, as `ColumnAcc::push` compares them: a -0.0 is not a 0.
            for ((((z, o), m), x), &flag) in
                zeros.iter_mut().zip(ones.iter_mut()).zip(marks.iter_mut()).zip(row).zip(flags)
            {
                let bits = x.to_bits();
                *z += u32::from(bits == 0);
                *o += u32::from(bits == one);
                *m += u32::from(flag);
            }
        }
    }
}

impl DriftAccumulator {
    /// An accumulator on the reference bins of `manifest` (one histogram per column, in
    /// column order, plus the score), with its drift thresholds and column kinds.
    pub fn new(manifest: &Manifest) -> Self {
        debug_assert_eq!(manifest.columns.len(), manifest.reference.columns.len());
        let empty = Histogram { name: String::new(), edges: Vec::new(), counts: vec![0] };
        let spec = manifest.drift_spec();
        let kinds = manifest.column_kinds();
        let columns = manifest
            .columns
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let kind = kinds.get(i).copied().unwrap_or(ColumnKind::Numeric);
                ColumnAcc::new(name, manifest.reference.columns.get(i).unwrap_or(&empty), kind, &spec)
            })
            .collect();
        DriftAccumulator {
            model_name: manifest.name.clone(),
            model_version: manifest.version.clone(),
            columns,
            score: ColumnAcc::new("score", &manifest.reference.score, ColumnKind::Numeric, &spec),
            rows: 0,
            spec,
            dense: DenseCounts::default(),
            per_value: Vec::new(),
        }
    }

    /// An accumulator from explicit reference histograms (column names taken from them), all
    /// numeric, with the default thresholds.
    pub fn from_histograms(model_name: &str, model_version: &str, columns: &[Histogram], score: &Histogram) -> Self {
        let kinds = vec![ColumnKind::Numeric; columns.len()];
        Self::from_parts(model_name, model_version, columns, &kinds, score, DriftSpec::default())
    }

    /// An accumulator from explicit reference histograms, column kinds (missing ones: numeric)
    /// and thresholds.
    pub fn from_parts(
        model_name: &str,
        model_version: &str,
        columns: &[Histogram],
        kinds: &[ColumnKind],
        score: &Histogram,
        spec: DriftSpec,
    ) -> Self {
        let kind = |i: usize| kinds.get(i).copied().unwrap_or(ColumnKind::Numeric);
        DriftAccumulator {
            model_name: model_name.to_owned(),
            model_version: model_version.to_owned(),
            columns: columns.iter().enumerate().map(|(i, h)| ColumnAcc::new(&h.name, h, kind(i), &spec)).collect(),
            score: ColumnAcc::new("score", score, ColumnKind::Numeric, &spec),
            rows: 0,
            spec,
            dense: DenseCounts::default(),
            per_value: Vec::new(),
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
        self.observe_with(rows, missing, scores, true);
    }

    /// [`observe`](Self::observe); `count_binary`: count the binary columns' batches in one
    /// dense pass (what `observe` does) rather than value by value (the reference the tests
    /// compare it with).
    fn observe_with(&mut self, rows: &[f32], missing: &[bool], scores: &[f32], count_binary: bool) {
        let f = self.columns.len();
        debug_assert_eq!(rows.len(), scores.len() * f, "rows must be n * F");
        debug_assert_eq!(missing.len(), rows.len(), "missing must be n * F");
        // With no columns only the scores bound `n`.
        let per_row = |len: usize| len.checked_div(f).unwrap_or(usize::MAX);
        let n = scores.len().min(per_row(rows.len())).min(per_row(missing.len()));
        if n == 0 {
            return;
        }
        let (rows, missing) = (&rows[..n * f], &missing[..n * f]);
        for (acc, &x) in self.columns.iter_mut().zip(rows) {
            acc.begin_batch(f64::from(x));
        }
        self.score.begin_batch(f64::from(scores[0]));
        // Binary columns whose batch holds only 0s and 1s take the counts of the dense pass;
        // every other column (numeric ones, and a binary one with another value in this batch,
        // which `push` turns numeric at that value) is walked value by value, in row order.
        let per_value = &mut self.per_value;
        per_value.clear();
        if count_binary && self.columns.iter().any(|c| c.binary.is_some()) {
            self.dense.count(rows, missing, f);
            for (j, acc) in self.columns.iter_mut().enumerate() {
                if !acc.add_binary_batch(self.dense.zeros[j], self.dense.ones[j], self.dense.missing[j], n) {
                    per_value.push(j);
                }
            }
        } else {
            per_value.extend(0..f);
        }
        if !per_value.is_empty() {
            for (row, flags) in rows.chunks_exact(f).zip(missing.chunks_exact(f)) {
                for &j in per_value.iter() {
                    self.columns[j].push(f64::from(row[j]), flags[j]);
                }
            }
        }
        for &s in &scores[..n] {
            self.score.push(f64::from(s), false);
        }
        for acc in &mut self.columns {
            acc.end_batch();
        }
        self.score.end_batch();
        self.rows += n as u64;
    }

    /// Returns the window's statistics, with the alerts it raised, and resets for the next
    /// window.
    pub fn take_window(&mut self, window_start_ms: i64, window_end_ms: i64) -> DriftWindow {
        let rows = std::mem::take(&mut self.rows);
        let (mut alerts, mut recovered) = (Vec::new(), Vec::new());
        let id = (self.model_name.as_str(), self.model_version.as_str());
        let span = (window_start_ms, window_end_ms);
        let mut take = |acc: &mut ColumnAcc| {
            let stats = acc.take();
            acc.evaluate(&stats, &self.spec, id, span, &mut alerts, &mut recovered);
            stats
        };
        let features = self.columns.iter_mut().map(&mut take).collect();
        let score = take(&mut self.score);
        DriftWindow {
            model_name: self.model_name.clone(),
            model_version: self.model_version.clone(),
            window_start_ms,
            window_end_ms,
            rows,
            features,
            score,
            alerts,
            recovered,
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
    use crate::model::manifest::DriftSpec;
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

    /// A deterministic pseudo-random sequence (xorshift64) for the tests' data.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// Categorical columns count their 0s and 1s ([`Binary`]); numeric ones sum moments. Fed
    /// the same values, both give the same window: counts, missing, extremes and bins exactly,
    /// mean and spread to rounding. Also when a value other than 0/1 (or a -0.0) turns the
    /// binary column numeric in the middle of a batch, when values are non-finite, and in the
    /// next window, which starts binary again.
    #[test]
    fn binary_columns_give_the_statistics_numeric_columns_give() {
        let hists = [
            hist("one_hot", &[0.5], &[80, 20]),
            hist("flag", &[0.5], &[95, 5]),
            hist("boolean", &[0.25, 0.75], &[40, 20, 40]),
            hist("edges_elsewhere", &[-1.0, 1.0, 2.0], &[1, 2, 3, 4]),
            hist("signed_zero", &[0.5], &[50, 50]),
        ];
        let score = hist("score", &[0.5], &[50, 50]);
        let f = hists.len();
        let kinds = |k: ColumnKind| vec![k; f];
        let mut binary = DriftAccumulator::from_parts(
            "m",
            "1",
            &hists,
            &kinds(ColumnKind::Categorical),
            &score,
            DriftSpec::default(),
        );
        let mut numeric =
            DriftAccumulator::from_parts("m", "1", &hists, &kinds(ColumnKind::Numeric), &score, DriftSpec::default());
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15u64);
        for window in 0..3 {
            for batch in 0..7 {
                let n = [1, 256, 3, 100, 64, 17, 256][batch];
                let (mut rows, mut missing, mut scores) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..n {
                    let r = next();
                    let bit = (r & 1) as f32;
                    // Column 2 takes a 0.5 (a boolean's null default) in the middle of batch 3
                    // of the first window; column 4 a -0.0 in batch 5; column 1 a NaN now and then.
                    let odd = window == 0 && batch == 3 && i == 1;
                    rows.extend_from_slice(&[
                        bit,
                        if r % 97 == 0 { f32::NAN } else { ((r >> 1) & 1) as f32 },
                        if odd { 0.5 } else { ((r >> 2) & 1) as f32 },
                        ((r >> 3) & 1) as f32,
                        if window == 0 && batch == 5 && i == 0 { -0.0 } else { ((r >> 4) & 1) as f32 },
                    ]);
                    missing.extend_from_slice(&[false, r % 5 == 0, r % 7 == 0, false, false]);
                    scores.push((r % 1000) as f32 / 1000.0);
                }
                binary.observe(&rows, &missing, &scores);
                numeric.observe(&rows, &missing, &scores);
            }
            let (b, nmr) = (binary.take_window(0, 1), numeric.take_window(0, 1));
            assert_eq!(b.rows, nmr.rows);
            for (x, y) in b.features.iter().zip(&nmr.features) {
                let what = format!("window {window}, column {}", x.name);
                assert_eq!((x.count, x.missing), (y.count, y.missing), "{what}");
                assert_eq!(x.bin_counts, y.bin_counts, "{what}");
                assert_eq!((x.min.to_bits(), x.max.to_bits()), (y.min.to_bits(), y.max.to_bits()), "{what}");
                assert!((x.mean - y.mean).abs() <= 1e-12, "{what}: {} vs {}", x.mean, y.mean);
                assert!((x.std - y.std).abs() <= 1e-12, "{what}: {} vs {}", x.std, y.std);
                assert_eq!((x.psi, x.js), (y.psi, y.js), "{what}");
            }
            if window == 0 {
                assert_eq!(b.features[2].min, 0.0);
                assert_eq!(b.features[2].max, 1.0);
            }
            assert!(b.features[1].count < b.rows, "NaNs are not counted");
        }
        let columns_binary =
            |acc: &DriftAccumulator| acc.columns.iter().map(|c| c.binary.is_some()).collect::<Vec<_>>();
        assert_eq!(columns_binary(&binary), vec![true; f], "every window starts binary");
        assert_eq!(columns_binary(&numeric), vec![false; f]);
    }

    #[test]
    fn the_dense_binary_pass_counts_what_pushing_value_by_value_counts() {
        // Categorical and numeric columns side by side; the categorical ones hold 0s and 1s with,
        // now and then, a NaN, an infinity, a -0.0 or a 0.5 somewhere in a batch. Fed the same
        // batches, the dense pass and the value-by-value walk must leave every accumulator in
        // the same state, bit for bit, window after window.
        let f = 7;
        let hists: Vec<Histogram> = (0..f).map(|j| hist(&format!("c{j}"), &[0.5], &[50, 50])).collect();
        let kinds: Vec<ColumnKind> =
            (0..f).map(|j| if j % 3 == 2 { ColumnKind::Numeric } else { ColumnKind::Categorical }).collect();
        let score = hist("score", &[0.5], &[50, 50]);
        let new = || DriftAccumulator::from_parts("m", "1", &hists, &kinds, &score, DriftSpec::default());
        let (mut dense, mut by_value) = (new(), new());
        let mut next = xorshift(0x2545_F491_4F6C_DD1Du64);
        let odd = [f32::NAN, f32::INFINITY, -0.0, 0.5, 2.0];
        let (mut dense_batches, mut value_batches) = (0, 0);
        for _window in 0..4 {
            for _batch in 0..40 {
                let n = 1 + (next() % 300) as usize;
                // About one batch in four gets one odd value in one of its columns (binary or not).
                let spoil =
                    (next() % 4 == 0).then(|| (next() as usize % n, next() as usize % f, odd[next() as usize % 5]));
                let (mut rows, mut missing, mut scores) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..n {
                    for (j, kind) in kinds.iter().enumerate() {
                        let r = next();
                        let x = match spoil {
                            Some((row, col, v)) if row == i && col == j => v,
                            _ if *kind == ColumnKind::Numeric => (r % 1000) as f32 / 7.0,
                            _ => (r & 1) as f32,
                        };
                        rows.push(x);
                        missing.push(r % 11 == 0);
                    }
                    scores.push((next() % 1000) as f32 / 1000.0);
                }
                if spoil.is_some() {
                    value_batches += 1;
                } else {
                    dense_batches += 1;
                }
                dense.observe(&rows, &missing, &scores);
                by_value.observe_with(&rows, &missing, &scores, false);
                assert_eq!(format!("{:?}", dense.columns), format!("{:?}", by_value.columns));
                assert_eq!(format!("{:?}", dense.score), format!("{:?}", by_value.score));
            }
            let (a, b) = (dense.take_window(0, 1), by_value.take_window(0, 1));
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
        assert!(dense_batches > 50 && value_batches > 20, "{dense_batches} / {value_batches}");
    }

    #[test]
    fn large_offsets_and_batch_sizes_do_not_change_mean_and_std() {
        // Values near 1e9 with a spread of a few units: the naive Σx² − (Σx)²/n would lose all
        // digits; shifted sums merged batch by batch must match a two-pass computation, however
        // the same values are cut into batches (including a first batch of a non-finite value).
        let xs: Vec<f32> = (0..5_000).map(|i| 1.0e9 + ((i * 7919) % 1000) as f32 / 100.0).collect();
        let vals: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        for cuts in [vec![5_000], vec![1, 4_999], vec![256; 20], vec![3, 97, 1000, 3900]] {
            let mut acc = two_column_acc();
            acc.observe(&[f32::NAN, 0.0], &[false, false], &[0.5]);
            let mut start = 0;
            for len in cuts {
                let end = (start + len).min(xs.len());
                let rows: Vec<f32> = xs[start..end].iter().flat_map(|&x| [x, 0.0]).collect();
                acc.observe(&rows, &vec![false; rows.len()], &vec![0.5; end - start]);
                start = end;
            }
            let w = acc.take_window(0, 1);
            let amount = &w.features[0];
            assert_eq!(amount.count, 5_000);
            assert!((amount.mean - mean).abs() <= 1e-12 * mean, "{} vs {mean}", amount.mean);
            assert!((amount.std - std).abs() <= 1e-9 * std, "{} vs {std}", amount.std);
            assert_eq!(amount.bin_counts, vec![0, 0, 0, 5_000]);
        }
    }

    #[test]
    fn bins_by_counting_equal_bins_by_search_for_any_number_of_edges() {
        for k in [0usize, 1, 2, 15, 16, 17, 40] {
            let edges: Vec<f64> = (0..k).map(|i| i as f64 * 0.5 - 3.0).collect();
            let mut acc = DriftAccumulator::from_histograms(
                "m",
                "1",
                &[hist("x", &edges, &vec![1; k + 1])],
                &hist("score", &[0.5], &[1, 1]),
            );
            let xs: Vec<f32> =
                (0..400).map(|i| i as f32 * 0.06 - 12.0).chain(edges.iter().map(|&e| e as f32)).collect();
            acc.observe(&xs, &vec![false; xs.len()], &vec![0.1; xs.len()]);
            let mut want = vec![0u64; k + 1];
            for &x in &xs {
                want[bin_index(&edges, f64::from(x))] += 1;
            }
            assert_eq!(acc.take_window(0, 1).features[0].bin_counts, want, "{k} edges");
        }
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

    fn close(got: f64, want: f64, tol: f64) {
        assert!((got - want).abs() <= tol, "got {got}, want {want} ± {tol}");
    }

    #[test]
    fn js_identical_is_zero_disjoint_is_one_and_hand_computed_value() {
        assert_eq!(js_distance(&[10, 20, 30], &[10, 20, 30]), 0.0);
        close(js_distance(&[10, 20, 30], &[100, 200, 300]), 0.0, 1e-7);
        close(js_distance(&[10, 0], &[0, 10]), 1.0, 1e-15);
        close(js_distance(&[5, 5, 0, 0], &[0, 0, 3, 9]), 1.0, 1e-15);
        // p = (½, ½), q = (1, 0), m = (¾, ¼):
        // JSD = ½[½·log2(⅔) + ½·log2(2)] + ½[log2(4/3)] = 0.311278; distance = sqrt = 0.557923.
        close(js_distance(&[50, 50], &[80, 0]), 0.311_278_124_459_132_8f64.sqrt(), 1e-12);
        // Symmetric, bounded, 0 for an empty side.
        close(js_distance(&[30, 70], &[60, 40]), js_distance(&[60, 40], &[30, 70]), 1e-15);
        assert_eq!(js_distance(&[0, 0], &[1, 2]), 0.0);
        assert_eq!(js_distance(&[1, 2], &[0, 0]), 0.0);
    }

    #[test]
    fn ln_gamma_and_incomplete_gamma_match_known_values() {
        close(ln_gamma(5.0), 24f64.ln(), 1e-12);
        close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-12);
        close(ln_gamma(0.1), 9.513_507_698_668_732f64.ln(), 1e-12);
        // Q(1, x) = e^-x, on both sides of the series / continued fraction switch.
        for x in [0.1, 1.5, 2.0, 10.0, 40.0] {
            close(gamma_q(1.0, x), (-x).exp(), 1e-13 + 1e-12 * (-x).exp());
        }
        // scipy.special.gammaincc values.
        close(gamma_q(0.5, 2.0), 0.045_500_263_896_358_42, 1e-12);
        close(gamma_q(3.5, 1.2), 0.934_437_079_577_971_1, 1e-10);
        close(gamma_q(10.0, 25.0), 2.214_766_382_487_835e-4, 1e-12);
        assert_eq!(gamma_q(2.0, 0.0), 1.0);
        assert_eq!(gamma_q(2.0, f64::INFINITY), 0.0);
        assert!(gamma_q(0.0, 1.0).is_nan() && gamma_q(1.0, -1.0).is_nan());
    }

    #[test]
    fn chi_square_p_values_match_the_table() {
        // Chi-square critical values: P(χ²_dof > c) = p.
        for (c, dof, p) in [
            (3.841_459, 1.0, 0.05),
            (6.634_897, 1.0, 0.01),
            (5.991_465, 2.0, 0.05),
            (11.070_498, 5.0, 0.05),
            (18.307_038, 10.0, 0.05),
            (23.209_251, 10.0, 0.01),
        ] {
            close(gamma_q(0.5 * dof, 0.5 * c), p, 1e-6);
        }
    }

    #[test]
    fn chi_square_hand_computed_and_edge_cases() {
        // Reference 50/50 (smoothed: still ½, ½), window 60/40: E = 50, 50;
        // χ² = 10²/50 + 10²/50 = 4, dof 1, p = Q(½, 2) = 0.0455.
        let t = chi_square(&[50, 50], &[60, 40]);
        close(t.statistic, 4.0, 1e-12);
        close(t.p_value, 0.045_500_263_896_358_42, 1e-12);
        // Same proportions: χ² = 0 up to the smoothing's nudge, p ≈ 1.
        let t = chi_square(&[100, 300], &[25, 75]);
        close(t.statistic, 0.0, 1e-3);
        assert!(t.p_value > 0.98, "{t:?}");
        let t = chi_square(&[100_000, 300_000], &[25, 75]);
        close(t.statistic, 0.0, 1e-6);
        // An empty reference bin stays finite and is strong evidence.
        let t = chi_square(&[1000, 0], &[90, 10]);
        assert!(t.statistic.is_finite() && t.statistic > 100.0, "{t:?}");
        assert!(t.p_value < 1e-6, "{t:?}");
        assert_eq!(chi_square(&[0, 0], &[1, 2]), NO_EVIDENCE);
        assert_eq!(chi_square(&[1, 2], &[0, 0]), NO_EVIDENCE);
        assert_eq!(chi_square(&[5], &[7]), NO_EVIDENCE);
    }

    #[test]
    fn kolmogorov_q_matches_known_values() {
        assert_eq!(kolmogorov_q(0.0), 1.0);
        assert_eq!(kolmogorov_q(0.1), 1.0);
        close(kolmogorov_q(1.36), 0.049_485_876_755_377_876, 1e-7);
        close(kolmogorov_q(1.2238), 0.100_023_427_835_677_8, 1e-7);
        close(kolmogorov_q(1.6276), 0.01, 1e-4);
        assert!(kolmogorov_q(4.0) < 1e-12);
    }

    #[test]
    fn ks_binned_known_cases() {
        // Identical proportions: D = 0, p = 1.
        assert_eq!(ks_binned(&[10, 20, 30], &[20, 40, 60]), TestResult { statistic: 0.0, p_value: 1.0 });
        // CDFs (.25, .5, .75, 1) vs (.1, .3, .6, 1): D = 0.2; n = m = 100, n_e = 50,
        // λ = (√50 + 0.12 + 0.11/√50)·0.2 = 1.441325, Q(λ) = 0.031377.
        let t = ks_binned(&[25, 25, 25, 25], &[10, 20, 30, 40]);
        close(t.statistic, 0.2, 1e-12);
        close(t.p_value, 0.031_376_652_153_073_07, 1e-8);
        // Everything in the first of two balanced bins: D = 0.5, p ≈ 0.
        let t = ks_binned(&[50, 50], &[100, 0]);
        close(t.statistic, 0.5, 1e-12);
        assert!(t.p_value < 1e-9, "{t:?}");
        assert_eq!(ks_binned(&[0, 0], &[1, 1]), NO_EVIDENCE);
    }

    #[test]
    fn streak_fires_once_and_rearms_after_recovery() {
        let mut s = Streak::default();
        let run: Vec<StreakEvent> = [true, true, true, true, true, false, true, true, false, false, true, true, true]
            .iter()
            .enumerate()
            .map(|(i, &crossed)| s.advance(crossed, i as i64, 3))
            .collect();
        use StreakEvent::*;
        assert_eq!(run, [None, None, Fire, None, None, Recover, None, None, None, None, None, None, Fire]);
        assert_eq!((s.windows, s.start_ms, s.alerting), (3, 10, true));
        // k = 1 fires on the first crossing; a break without an alert is no recovery.
        let mut s = Streak::default();
        assert_eq!(s.advance(false, 0, 1), None);
        assert_eq!(s.advance(true, 1, 1), Fire);
        assert_eq!(s.advance(true, 2, 1), None);
        assert_eq!(s.advance(false, 3, 1), Recover);
    }

    fn alerting_acc(k: u32, min_count: u64) -> DriftAccumulator {
        let spec = DriftSpec { consecutive_windows: k, min_count, ..DriftSpec::default() };
        DriftAccumulator::from_parts(
            "m",
            "7",
            &[hist("amount", &[1.0, 2.0, 3.0], &[250, 250, 250, 250]), hist("flag", &[0.5], &[500, 500])],
            &[ColumnKind::Numeric, ColumnKind::Categorical],
            &hist("score", &[0.5], &[500, 500]),
            spec,
        )
    }

    /// `n` rows: amount spread evenly over the four bins (or all in the top bin when `shifted`),
    /// flag alternating 0/1, score alternating 0.25/0.75 — so only `amount` can drift.
    fn feed(acc: &mut DriftAccumulator, n: usize, shifted: bool) {
        let mut rows = Vec::new();
        let mut scores = Vec::new();
        for i in 0..n {
            let amount = if shifted { 5.0 } else { [0.5, 1.5, 2.5, 3.5][i % 4] };
            rows.extend_from_slice(&[amount, (i % 2) as f32]);
            scores.push(if i % 2 == 0 { 0.25 } else { 0.75 });
        }
        acc.observe(&rows, &vec![false; rows.len()], &scores);
    }

    #[test]
    fn accumulator_raises_one_alert_per_crossing_for_the_shifted_column_only() {
        let mut acc = alerting_acc(2, 50);
        let mut alerts = Vec::new();
        let mut recovered = Vec::new();
        let mut window = |acc: &mut DriftAccumulator, i: i64, n: usize, shifted: bool| {
            feed(acc, n, shifted);
            let w = acc.take_window(i * 10, i * 10 + 10);
            alerts.push(w.alerts.clone());
            recovered.push(w.recovered.clone());
            w
        };
        let w0 = window(&mut acc, 0, 200, true);
        assert!(w0.features[0].psi > 0.25 && w0.features[0].js > 0.1 && w0.features[0].p_value < 0.01);
        assert_eq!(w0.features[0].test, DriftTest::Ks);
        assert_eq!(w0.features[1].test, DriftTest::ChiSquare);
        assert!(w0.features[1].p_value > 0.5, "{:?}", w0.features[1]);
        window(&mut acc, 1, 10, true); // below min_count: neither extends nor breaks the streak
        window(&mut acc, 2, 200, true); // second crossed window: fires
        window(&mut acc, 3, 200, true); // still above: no second alert
        window(&mut acc, 4, 200, false); // recovers: re-armed
        window(&mut acc, 5, 200, true);
        window(&mut acc, 6, 200, true); // fires again

        let names = |a: &[DriftAlert]| a.iter().map(|a| (a.column.clone(), a.statistic)).collect::<Vec<_>>();
        let fired: Vec<usize> = alerts.iter().enumerate().filter(|(_, a)| !a.is_empty()).map(|(i, _)| i).collect();
        assert_eq!(fired, [2, 6]);
        let want =
            vec![("amount".to_string(), "psi"), ("amount".to_string(), "js"), ("amount".to_string(), "ks_p_value")];
        assert_eq!(names(&alerts[2]), want);
        assert_eq!(names(&alerts[6]), want);
        let a = &alerts[2][0];
        assert_eq!((a.model_name.as_str(), a.model_version.as_str(), a.windows), ("m", "7", 2));
        assert_eq!((a.window_start_ms, a.window_end_ms), (0, 30), "the streak spans windows 0..=2");
        assert_eq!(a.threshold, 0.25);
        assert!(a.value > 0.25);
        assert_eq!(alerts[6][0].window_start_ms, 50);
        let rec: Vec<usize> = recovered.iter().enumerate().filter(|(_, r)| !r.is_empty()).map(|(i, _)| i).collect();
        assert_eq!(rec, [4]);
        assert_eq!(recovered[4].len(), 3);
    }

    #[test]
    fn per_column_overrides_change_what_crosses() {
        let mut spec = DriftSpec { consecutive_windows: 1, min_count: 1, ..DriftSpec::default() };
        // A PSI threshold no shift reaches and a disabled test leave only JS for `amount`.
        spec.columns.insert(
            "amount".into(),
            crate::model::manifest::DriftOverride { psi: Some(1e9), js: None, p_value: Some(0.0) },
        );
        let mut acc = DriftAccumulator::from_parts(
            "m",
            "1",
            &[hist("amount", &[1.0, 2.0, 3.0], &[250, 250, 250, 250])],
            &[ColumnKind::Numeric],
            &hist("score", &[0.5], &[500, 500]),
            spec,
        );
        acc.observe(&[5.0; 100], &[false; 100], &[0.25; 100]);
        let w = acc.take_window(0, 1);
        let fired: Vec<(&str, &str)> = w.alerts.iter().map(|a| (a.column.as_str(), a.statistic)).collect();
        // The score (all in the lower bin) drifts too, with default thresholds.
        assert_eq!(fired, [("amount", "js"), ("score", "psi"), ("score", "js"), ("score", "ks_p_value")]);
    }

    #[test]
    fn shipped_manifest_uses_chi_square_for_categorical_columns() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud_mlp/1");
        let manifest = Manifest::from_dir(&dir).unwrap();
        let mut acc = DriftAccumulator::new(&manifest);
        let f = manifest.columns.len();
        acc.observe(&vec![0.0; f], &vec![false; f], &[0.1]);
        let w = acc.take_window(0, 1);
        let test_of = |name: &str| w.features.iter().find(|c| c.name == name).unwrap().test;
        assert_eq!(test_of("amount_log1p"), DriftTest::Ks);
        assert_eq!(test_of("event_time_hour"), DriftTest::Ks);
        assert_eq!(test_of("channel=POS"), DriftTest::ChiSquare);
        assert_eq!(test_of("new_device"), DriftTest::ChiSquare);
        assert_eq!(test_of("new_device_missing"), DriftTest::ChiSquare);
        assert_eq!(w.score.test, DriftTest::Ks);
        assert!(w.alerts.is_empty(), "one row is below min_count");
    }

    fn schema_file(name: &str) -> Schema {
        let path = format!("{}/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
        Schema::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn drift_alert_round_trips_through_its_schema() {
        let schema = schema_file("drift_alert.avsc");
        let alert = DriftAlert {
            model_name: "fraud_mlp".into(),
            model_version: "1".into(),
            column: "amount_log1p".into(),
            statistic: "ks_p_value",
            value: 1e-9,
            threshold: 0.01,
            windows: 3,
            window_start_ms: 1_700_000_000_000,
            window_end_ms: 1_700_000_180_000,
        };
        let value = alert.to_avro("instance-a");
        assert!(value.validate(&schema), "{value:?}");
        let bytes = GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(value.clone()).unwrap();
        let back = GenericDatumReader::builder(&schema).build().unwrap().read_value(&mut &bytes[..]).unwrap();
        assert_eq!(back, value);
    }

    /// The report schema before js/test/test_statistic/p_value/reference_counts were added.
    fn old_report_schema() -> Schema {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/drift_report.avsc")).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let fields = json["fields"][6]["type"]["items"]["fields"].as_array_mut().unwrap();
        fields.retain(|f| f.get("default").is_none());
        assert_eq!(fields.len(), 10);
        Schema::parse(&json).unwrap()
    }

    #[test]
    fn report_schema_evolution_is_compatible_both_ways() {
        let new = schema_file("drift_report.avsc");
        let old = old_report_schema();
        let mut acc = two_column_acc();
        acc.observe(&[1.5, 1.0, 0.2, 0.0], &[false, true, false, false], &[0.3, 0.8]);
        let value = acc.take_window(1, 2).to_avro("i");

        // New writer, old reader: the added fields are skipped.
        let bytes = GenericDatumWriter::builder(&new).build().unwrap().write_value_to_vec(value).unwrap();
        let read = GenericDatumReader::builder(&new).reader_schema(&old).build().unwrap().read_value(&mut &bytes[..]);
        let Value::Record(fields) = read.unwrap() else { panic!("not a record") };
        assert_eq!(fields[5].1, Value::Long(2));

        // Old writer, new reader: the added fields take their defaults.
        let old_value = Value::Record(vec![
            ("model_name".into(), Value::String("m".into())),
            ("model_version".into(), Value::String("1".into())),
            ("instance_id".into(), Value::String("i".into())),
            ("window_start".into(), Value::TimestampMillis(1)),
            ("window_end".into(), Value::TimestampMillis(2)),
            ("rows".into(), Value::Long(0)),
            ("features".into(), Value::Array(vec![])),
            (
                "score".into(),
                Value::Record(vec![
                    ("name".into(), Value::String("score".into())),
                    ("count".into(), Value::Long(0)),
                    ("missing".into(), Value::Long(0)),
                    ("mean".into(), Value::Double(0.0)),
                    ("std".into(), Value::Double(0.0)),
                    ("min".into(), Value::Double(0.0)),
                    ("max".into(), Value::Double(0.0)),
                    ("bin_edges".into(), Value::Array(vec![])),
                    ("bin_counts".into(), Value::Array(vec![Value::Long(0)])),
                    ("psi".into(), Value::Double(0.0)),
                ]),
            ),
        ]);
        let bytes = GenericDatumWriter::builder(&old).build().unwrap().write_value_to_vec(old_value).unwrap();
        let read = GenericDatumReader::builder(&old).reader_schema(&new).build().unwrap().read_value(&mut &bytes[..]);
        let Value::Record(fields) = read.unwrap() else { panic!("not a record") };
        let Value::Record(score) = &fields[7].1 else { panic!("score is not a record") };
        let get = |name: &str| score.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("js"), Value::Double(0.0));
        assert_eq!(get("test"), Value::String(String::new()));
        assert_eq!(get("p_value"), Value::Double(1.0));
        assert_eq!(get("reference_counts"), Value::Array(vec![]));
    }

    #[test]
    fn report_carries_the_new_statistics() {
        let mut acc = two_column_acc();
        acc.observe(&[5.0, 1.0, 5.0, 1.0], &[false; 4], &[0.9, 0.9]);
        let w = acc.take_window(0, 1);
        let amount = &w.features[0];
        assert_eq!(amount.reference_counts, vec![10, 20, 30, 40]);
        assert_eq!(amount.js, js_distance(&[10, 20, 30, 40], &[0, 0, 0, 2]));
        assert_eq!(amount.test_statistic, ks_binned(&[10, 20, 30, 40], &[0, 0, 0, 2]).statistic);
        let Value::Record(fields) = w.to_avro("i") else { panic!() };
        let Value::Array(features) = &fields[6].1 else { panic!() };
        let Value::Record(first) = &features[0] else { panic!() };
        assert!(first.iter().any(|(n, v)| n == "test" && *v == Value::String("ks".into())));
    }
}
