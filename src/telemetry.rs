//! Telemetry: every metric name in one place, tracing set-up, run statistics, and the HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`). The admin API has its own listener
//! (`admin.bind`, see [`crate::admin`]) so that it is never exposed with `/metrics`.
//!
//! Metrics are recorded once per batch where possible. Labels are low-cardinality: topic,
//! partition, model, version, reason, feature (a manifest column), never event ids.
//!
//! The exporter buffers every histogram sample (value and time, ~25 bytes, and a clock read)
//! until it folds them into their buckets, which it does only on a scrape or an explicit upkeep.
//! That suits the histograms sampled once per batch; [`prometheus`] starts a thread that runs
//! the upkeep every [`UPKEEP_INTERVAL`] so that they never pile up between scrapes. The two
//! latency histograms sampled once per *event* are [`EventHistogram`]s instead (bucket counts
//! only, added once per batch; see [`event_latency`]), rendered on `/metrics` after the
//! exporter's families by [`render_metrics`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::outcome::DeadLetterReason;

/// Metric names (Prometheus, base units, counters end in `_total`).
pub mod names {
    pub const EVENTS_CONSUMED: &str = "streamscore_events_consumed_total";
    pub const EVENTS_SCORED: &str = "streamscore_events_scored_total";
    pub const EVENTS_DEAD_LETTERED: &str = "streamscore_events_dead_lettered_total";
    pub const BATCH_SIZE: &str = "streamscore_batch_size";
    pub const INFERENCE_SECONDS: &str = "streamscore_inference_seconds";
    pub const END_TO_END_SECONDS: &str = "streamscore_end_to_end_latency_seconds";
    pub const PROCESSING_SECONDS: &str = "streamscore_processing_latency_seconds";
    pub const BATCH_STAGE_SECONDS: &str = "streamscore_batch_stage_seconds";
    pub const BATCH_TARGET_SIZE: &str = "streamscore_batch_target_size";
    pub const BATCH_TARGET_DELAY: &str = "streamscore_batch_target_delay_seconds";
    pub const CACHE_HITS: &str = "streamscore_cache_hits_total";
    pub const CACHE_BYPASSED: &str = "streamscore_cache_bypassed";
    pub const CACHE_BYPASSES: &str = "streamscore_cache_bypasses_total";
    pub const CACHE_MISSES: &str = "streamscore_cache_misses_total";
    pub const CONSUMER_LAG: &str = "streamscore_consumer_lag";
    pub const DRIFT_PSI: &str = "streamscore_drift_psi";
    pub const DRIFT_REPORTS: &str = "streamscore_drift_reports_total";
    pub const DRIFT_JS: &str = "streamscore_drift_js";
    pub const DRIFT_P_VALUE: &str = "streamscore_drift_p_value";
    pub const DRIFT_ALERTS: &str = "streamscore_drift_alerts_total";
    pub const DRIFT_ALERTING: &str = "streamscore_drift_alerting";
    pub const COMMITS: &str = "streamscore_offset_commits_total";
    pub const DELIVERY_FAILURES: &str = "streamscore_delivery_failures_total";
    pub const REBALANCES: &str = "streamscore_rebalances_total";
    pub const ASSIGNED_PARTITIONS: &str = "streamscore_assigned_partitions";
    pub const TRANSACTIONS: &str = "streamscore_transactions_total";
    pub const BACKPRESSURE_PAUSES: &str = "streamscore_backpressure_pauses_total";
    pub const PAUSED: &str = "streamscore_consumption_paused";
    pub const REVOKED_DROPPED: &str = "streamscore_revoked_outcomes_dropped_total";
    pub const MODEL_INFO: &str = "streamscore_model_info";
    pub const READY: &str = "streamscore_ready";
    pub const MODEL_LOAD_FAILURES: &str = crate::model::verify::MODEL_LOAD_FAILURES;
    pub const ADMIN_REQUESTS: &str = "streamscore_admin_requests_total";
    pub const MODEL_CHANGES: &str = "streamscore_model_changes_total";
    pub const DEPLOYMENTS: &str = crate::model::deploy::DEPLOYMENTS;
    pub const SHADOW_RECORDS: &str = crate::model::deploy::SHADOW_RECORDS;
    pub const SHADOW_DELIVERY_FAILURES: &str = crate::model::deploy::SHADOW_DELIVERY_FAILURES;
    pub const REPOSITORY_SCANS: &str = "streamscore_model_repository_scans_total";
    pub const LABELS: &str = "streamscore_labels_total";
    pub const LABELS_WAITED: &str = "streamscore_labels_waited_total";
    pub const LABEL_PARTITIONS: &str = "streamscore_label_partitions";
    pub const QUALITY_PENDING_PREDICTIONS: &str = "streamscore_quality_pending_predictions";
    pub const QUALITY_WAITING_LABELS: &str = "streamscore_quality_waiting_labels";
    pub const QUALITY_PREDICTIONS_DROPPED: &str = "streamscore_quality_predictions_dropped_total";
    pub const QUALITY_PRECISION: &str = "streamscore_quality_precision";
    pub const QUALITY_RECALL: &str = "streamscore_quality_recall";
    pub const QUALITY_CALIBRATION_ERROR: &str = "streamscore_quality_calibration_error";
    pub const QUALITY_BRIER: &str = "streamscore_quality_brier_score";
    pub const QUALITY_LABELLED: &str = "streamscore_quality_labelled_predictions_total";
    pub const QUALITY_REPORTS: &str = "streamscore_quality_reports_total";
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let inference = [0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(names::INFERENCE_SECONDS.into()), &inference)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), &sizes))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::BATCH_STAGE_SECONDS.into()), &PROCESSING_BUCKETS));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. an embedding application); then
            // our handle renders nothing, which is visible on /metrics rather than a crash.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            if let Err(e) = spawn_upkeep(handle.clone(), UPKEEP_INTERVAL) {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are only folded into buckets when /metrics is scraped");
            }
            handle
        })
        .clone()
}

/// Bucket bounds of the end-to-end latency (seconds).
const END_TO_END_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Bucket bounds of the processing latency and the batch stages (seconds): finer below 25 ms,
/// the latency the service itself adds (latency targets of a few ms).
const PROCESSING_BUCKETS: [f64; 18] =
    [0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often buffered histogram samples are folded into their buckets (the per-batch ones: ~10
/// samples per batch).
pub const UPKEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Starts a thread that runs the exporter's upkeep (see the module docs) every `every`, for the
/// life of the process.
pub fn spawn_upkeep(handle: PrometheusHandle, every: Duration) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("streamscore-metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(every);
        handle.run_upkeep();
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(names::EVENTS_CONSUMED, "Input messages consumed.");
    describe_counter!(names::EVENTS_SCORED, "Inputs scored and acknowledged on the scored topic.");
    describe_counter!(names::EVENTS_DEAD_LETTERED, "Inputs sent to the dead-letter topic, by reason.");
    describe_histogram!(names::BATCH_SIZE, "Inputs per micro-batch.");
    describe_histogram!(names::INFERENCE_SECONDS, Unit::Seconds, "ONNX Runtime time per batch.");
    describe_histogram!(
        names::BATCH_STAGE_SECONDS,
        Unit::Seconds,
        "Per acknowledged batch, where its oldest input's time went, by stage: batching (received to sealed), \
         inference_queue, inference, sink_queue, produce (encoding and enqueueing every outcome), broker_ack \
         (last outcome enqueued to the last one acknowledged: producer linger and broker); in_streamscore = \
         received to every outcome enqueued, the whole share before the broker."
    );
    describe_gauge!(names::BATCH_TARGET_SIZE, "Adaptive batching: the current batch size target.");
    describe_gauge!(
        names::BATCH_TARGET_DELAY,
        Unit::Seconds,
        "Adaptive batching: the current longest wait after a batch's first input."
    );
    describe_counter!(names::CACHE_HITS, "Rows served from the prediction cache.");
    describe_counter!(names::CACHE_MISSES, "Rows that needed inference.");
    describe_gauge!(
        names::CACHE_BYPASSED,
        "1 while the prediction cache is bypassed because it cost more than the inference it saved \
         (cache.bypass_unprofitable)."
    );
    describe_counter!(names::CACHE_BYPASSES, "Times the prediction cache was found unprofitable and bypassed.");
    describe_gauge!(
        names::CONSUMER_LAG,
        "Messages behind the partition's high watermark (from librdkafka statistics)."
    );
    describe_gauge!(
        names::DRIFT_PSI,
        "Population stability index of the last drift window against the training reference."
    );
    describe_counter!(names::DRIFT_REPORTS, "Drift reports published.");
    describe_gauge!(
        names::DRIFT_JS,
        "Jensen-Shannon distance (base 2) of the last drift window against the training reference."
    );
    describe_gauge!(
        names::DRIFT_P_VALUE,
        "p-value of the last drift window's two-sample test against the training reference (KS numeric, chi-square categorical)."
    );
    describe_counter!(
        names::DRIFT_ALERTS,
        "Drift alerts raised: a statistic crossed its manifest threshold for drift.consecutive_windows windows (a retraining trigger)."
    );
    describe_gauge!(
        names::DRIFT_ALERTING,
        "1 while a drift statistic of a column is in an alert (raised and not yet recovered), else 0."
    );
    describe_counter!(names::COMMITS, "Offset commits, by result.");
    describe_counter!(
        names::DELIVERY_FAILURES,
        "Outcomes the broker did not acknowledge (the service stops without committing past them)."
    );
    describe_counter!(names::REBALANCES, "Consumer group rebalances, by kind (assign/revoke).");
    describe_gauge!(
        names::ASSIGNED_PARTITIONS,
        "Input partitions owned, by member (consumer thread) of this instance."
    );
    describe_counter!(names::TRANSACTIONS, "exactly_once transactions, by result (committed/aborted).");
    describe_counter!(names::BACKPRESSURE_PAUSES, "Times consumption was paused because inference fell behind.");
    describe_gauge!(names::PAUSED, "1 while consumption is paused for backpressure.");
    describe_counter!(names::REVOKED_DROPPED, "Outcomes not produced because their partition was revoked before they were (the new owner re-processes the inputs).");
    describe_gauge!(
        names::MODEL_INFO,
        "1 for each loaded model version in its role (champion, canary, shadow, rollback); 0 once it no longer holds it."
    );
    describe_counter!(
        names::DEPLOYMENTS,
        "Deployment commands applied by the inference thread, by action and result (applied/rejected)."
    );
    describe_counter!(names::SHADOW_RECORDS, "Shadow scores published to the monitoring topic, by challenger version.");
    describe_counter!(
        names::SHADOW_DELIVERY_FAILURES,
        "Shadow records the broker did not take (best effort: they hold back no offsets)."
    );
    describe_gauge!(names::READY, "1 when the model is loaded and the consumer has joined its group.");
    describe_counter!(
        names::MODEL_LOAD_FAILURES,
        "Models refused at load, by reason (checksum, signature, mismatch, manifest, model_file, load, warmup, runtime)."
    );
    describe_counter!(
        names::ADMIN_REQUESTS,
        "Admin API requests, by route and result (ok, bad_request, unauthorized, not_found, method_not_allowed, conflict, refused, rate_limited, timeout, unavailable, error)."
    );
    describe_counter!(
        names::MODEL_CHANGES,
        "Model lifecycle changes by the admin API or the repository watcher, by action (load, promote, canary, canary_weight, shadow, clear_challenger, rollback, unload) and result (ok, refused, gate_failed, rejected, timeout, error)."
    );
    describe_counter!(names::REPOSITORY_SCANS, "Scans of the model repository by the watcher, by result (ok, error).");
    describe_counter!(
        names::LABELS,
        "Labels read from quality.labels_topic, by outcome: matched (joined to this instance's prediction), unmatched (no prediction here: another instance's event, expired, or a second label), invalid (not a Label record)."
    );
    describe_counter!(
        names::LABELS_WAITED,
        "Labels that found no prediction on arrival and waited up to quality.label_grace for it (early labels, and those of events scored elsewhere)."
    );
    describe_gauge!(names::LABEL_PARTITIONS, "Partitions of the labels topic being read.");
    describe_gauge!(
        names::QUALITY_PENDING_PREDICTIONS,
        "Predictions held for the label join (bounded by quality.max_predictions)."
    );
    describe_gauge!(names::QUALITY_WAITING_LABELS, "Early labels waiting for their prediction.");
    describe_counter!(
        names::QUALITY_PREDICTIONS_DROPPED,
        "Predictions that left the join without a label, by reason: expired (older than quality.prediction_ttl) or capacity (quality.max_predictions reached)."
    );
    describe_gauge!(
        names::QUALITY_PRECISION,
        "Precision of the last quality window (NaN when nothing was predicted positive)."
    );
    describe_gauge!(names::QUALITY_RECALL, "Recall of the last quality window (NaN when no label was positive).");
    describe_gauge!(
        names::QUALITY_CALIBRATION_ERROR,
        "Expected calibration error (10 bins) of the last quality window."
    );
    describe_gauge!(names::QUALITY_BRIER, "Brier score of the last quality window.");
    describe_counter!(
        names::QUALITY_LABELLED,
        "Predictions joined to a label, by version and outcome (true_positive, false_positive, false_negative, true_negative)."
    );
    describe_counter!(names::QUALITY_REPORTS, "Quality reports published to the monitoring topic.");
}

/// Sets up `tracing` once per process (later calls are no-ops).
pub fn init_tracing(format: LogFormat, filter: &str) {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        let _ = match format {
            LogFormat::Json => builder.json().try_init(),
            LogFormat::Human => builder.try_init(),
        };
    });
}

/// Liveness and readiness, shared by the stages and the HTTP endpoints.
#[derive(Debug, Default)]
pub struct Health {
    pub model_loaded: AtomicBool,
    pub consumer_joined: AtomicBool,
    /// Set when the service is stopping; `/readyz` turns false.
    pub stopping: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.model_loaded.load(Ordering::Acquire)
            && self.consumer_joined.load(Ordering::Acquire)
            && !self.stopping.load(Ordering::Acquire)
    }

    pub fn publish(&self) {
        metrics::gauge!(names::READY).set(if self.ready() { 1.0 } else { 0.0 });
    }
}

/// The two histograms sampled once per event (see the module docs).
#[derive(Debug)]
pub struct EventLatency {
    /// `streamscore_end_to_end_latency_seconds`.
    pub end_to_end: EventHistogram,
    /// `streamscore_processing_latency_seconds`.
    pub processing: EventHistogram,
}

impl EventLatency {
    /// An empty pair. The service keeps one, [`event_latency`]; the benchmark's passthrough
    /// (`examples/passthrough.rs`) its own, to measure itself the same way.
    pub fn new() -> Self {
        EventLatency {
            end_to_end: EventHistogram::new(
                names::END_TO_END_SECONDS,
                "Kafka timestamp of the input to its outcome acknowledged by the broker.",
                &END_TO_END_BUCKETS,
            ),
            processing: EventHistogram::new(
                names::PROCESSING_SECONDS,
                "Input received by the source to its outcome acknowledged by the broker (the latency streamscore adds).",
                &PROCESSING_BUCKETS,
            ),
        }
    }

    /// Both histograms in the Prometheus text format, as `/metrics` shows them.
    pub fn render(&self, out: &mut String) {
        self.end_to_end.render(out);
        self.processing.render(out);
    }
}

impl Default for EventLatency {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's per-event latency histograms (one set, like the exporter's registry).
pub fn event_latency() -> &'static EventLatency {
    static LATENCY: OnceLock<EventLatency> = OnceLock::new();
    LATENCY.get_or_init(EventLatency::new)
}

/// The `/metrics` page: the exporter's families, then the per-event latency histograms.
pub fn render_metrics(handle: &PrometheusHandle) -> String {
    let mut page = handle.render();
    event_latency().render(&mut page);
    page
}

/// A Prometheus histogram that keeps only its bucket counts, count and sum, recorded a batch of
/// observations at a time: the batch is counted into local buckets, then added with one atomic
/// add per bucket it touched. Nothing is buffered and nothing allocates per observation (the
/// exporter's histograms buffer a timestamped sample each, which at one per event cost ~0.1 µs
/// of the delivery thread per event, perf).
#[derive(Debug)]
pub struct EventHistogram {
    name: &'static str,
    help: &'static str,
    /// Upper bounds (inclusive, as Prometheus' `le`), increasing.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative): one per bound, then `+Inf`.
    counts: Box<[AtomicU64]>,
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl EventHistogram {
    /// Most bounds a histogram takes (the local buckets of a batch live on the stack).
    const MAX_BOUNDS: usize = 31;

    /// # Panics
    /// If `bounds` has more than 31 entries (the histograms are fixed in this module).
    pub fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        assert!(bounds.len() <= Self::MAX_BOUNDS, "{name}: at most {} bucket bounds", Self::MAX_BOUNDS);
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{name}: bounds must increase");
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        EventHistogram { name, help, bounds, counts, sum: AtomicU64::new(0.0f64.to_bits()) }
    }

    /// Records a batch of observations (NaN ones are ignored).
    pub fn record_batch(&self, values: impl IntoIterator<Item = f64>) {
        let mut local = [0u64; Self::MAX_BOUNDS + 1];
        let (mut n, mut sum, mut near) = (0u64, 0.0f64, 0);
        for v in values {
            if v.is_nan() {
                continue;
            }
            near = bucket_near(self.bounds, v, near);
            local[near] += 1;
            n += 1;
            sum += v;
        }
        if n == 0 {
            return;
        }
        for (c, &k) in self.counts.iter().zip(&local) {
            if k > 0 {
                c.fetch_add(k, Ordering::Relaxed);
            }
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + sum).to_bits()));
    }

    /// Appends the histogram in the Prometheus text format (cumulative buckets, `_sum`,
    /// `_count`); `_count` is the `+Inf` bucket of the same reading.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", f64::from_bits(self.sum.load(Ordering::Relaxed)));
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Latency histogram with log-spaced buckets (about 4% wide) for in-process percentiles: the
/// demo's summary and tests read it without scraping Prometheus.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Mutex<Vec<u64>>,
}

const LAT_BUCKETS: usize = 600;
const LAT_BASE_US: f64 = 10.0; // bucket 0 holds everything below 10 µs
const LAT_GROWTH: f64 = 1.04;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { buckets: Mutex::new(vec![0; LAT_BUCKETS]) }
    }
}

/// The buckets' upper bounds (s): bucket i holds (bound i − 1, bound i], the last one also
/// everything above.
fn latency_bounds() -> &'static [f64] {
    static BOUNDS: OnceLock<Vec<f64>> = OnceLock::new();
    BOUNDS.get_or_init(|| (0..LAT_BUCKETS).map(|i| LAT_BASE_US * LAT_GROWTH.powi(i as i32) / 1e6).collect())
}

/// The bucket of `v` among increasing upper bounds `bounds`: the first bound at least `v`, or
/// `bounds.len()` (`+Inf`) when there is none, i.e. `bounds.partition_point(|&b| b < v)`.
/// Searched from `near`, the previous observation's bucket: the inputs of one batch are
/// acknowledged together, so their latencies mostly fall in the same or a neighbouring bucket,
/// and a few comparisons replace the binary search (or, in [`LatencyHistogram`], a logarithm):
/// these run once per event and histogram on the delivery-report thread.
#[inline]
fn bucket_near(bounds: &[f64], v: f64, near: usize) -> usize {
    let n = bounds.len();
    let mut i = near.min(n);
    for _ in 0..4 {
        if i < n && bounds[i] < v {
            i += 1;
        } else if i > 0 && bounds[i - 1] >= v {
            i -= 1;
        } else {
            return i;
        }
    }
    bounds.partition_point(|&b| b < v)
}

impl LatencyHistogram {
    /// Records many observations under one lock (NaN and negative ones count as 0).
    pub fn record_all(&self, seconds: impl Iterator<Item = f64>) {
        let bounds = latency_bounds();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut near = 0;
        for s in seconds {
            // Above the last bound: the last bucket.
            near = bucket_near(bounds, s.max(0.0), near).min(LAT_BUCKETS - 1);
            b[near] += 1;
        }
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket; None when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let total: u64 = b.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in b.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(latency_bounds()[i]);
            }
        }
        Some(latency_bounds()[LAT_BUCKETS - 1])
    }
}

/// Counters of one pipeline run (also exported as metrics); read by the demo summary and tests.
#[derive(Debug, Default)]
pub struct RunStats {
    pub consumed: AtomicU64,
    pub scored: AtomicU64,
    pub dead_lettered: [AtomicU64; DeadLetterReason::ALL.len()],
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub batches: AtomicU64,
    pub latency: LatencyHistogram,
}

impl RunStats {
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn dead_lettered_by_reason(&self) -> Vec<(DeadLetterReason, u64)> {
        DeadLetterReason::ALL
            .iter()
            .zip(&self.dead_lettered)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    pub fn reason_index(reason: DeadLetterReason) -> usize {
        DeadLetterReason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
    }

    /// Outcomes acknowledged so far (scored + dead-lettered).
    pub fn outcomes(&self) -> u64 {
        self.scored.load(Ordering::Relaxed) + self.dead_lettered_total()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;

    let h_ready = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], render_metrics(&handle)) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let h = h_ready.clone();
                async move {
                    if h.ready() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds the HTTP listener (a bind error names the address and the config key).
pub async fn bind_http(addr: SocketAddr) -> Result<tokio::net::TcpListener, std::io::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} (telemetry.http_bind): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::default();
        h.record_all((1..=1000).map(|i| i as f64 / 1000.0)); // 1 ms .. 1 s
        let p50 = h.quantile(0.5).expect("non-empty");
        let p99 = h.quantile(0.99).expect("non-empty");
        assert!((p50 - 0.5).abs() / 0.5 < 0.05, "p50 {p50}");
        assert!((p99 - 0.99).abs() / 0.99 < 0.05, "p99 {p99}");
        assert!(LatencyHistogram::default().quantile(0.5).is_none());
    }

    /// `bucket_near` is `partition_point` whatever bucket the search starts from: on the
    /// latency histogram's 600 bounds and on the end-to-end histogram's, for values on, just above
    /// and just below every bound, between bounds, below the first and above the last. Away from
    /// the bounds, the latency bucket is the one the logarithm of the value names.
    #[test]
    fn buckets_are_found_from_any_start() {
        for bounds in [latency_bounds(), &END_TO_END_BUCKETS[..]] {
            let mut values = vec![0.0, 1e-9, 5e-6, 1e9, f64::INFINITY];
            for (i, &b) in bounds.iter().enumerate() {
                values.extend([b, b * (1.0 + 1e-12), b * (1.0 - 1e-12)]);
                if let Some(next) = bounds.get(i + 1) {
                    values.push((b + next) / 2.0);
                }
            }
            let n = bounds.len();
            for &v in &values {
                let want = bounds.partition_point(|&b| b < v);
                for near in
                    [0, 1, want.saturating_sub(5), want.saturating_sub(1), want, want + 1, want + 5, n / 2, n, n + 7]
                {
                    assert_eq!(bucket_near(bounds, v, near), want, "{v} from bucket {near} of {n}");
                }
            }
        }
        let bounds = latency_bounds();
        let definition = |s: f64| bounds.partition_point(|&b| b < s).min(LAT_BUCKETS - 1);
        for (i, pair) in bounds.windows(2).enumerate() {
            let mid = (pair[0] + pair[1]) / 2.0;
            let by_log = ((mid * 1e6 / LAT_BASE_US).ln() / LAT_GROWTH.ln()).ceil() as usize;
            assert_eq!(definition(mid), i + 1);
            assert_eq!(by_log, i + 1, "{mid}");
        }
        // One batch recorded under one lock: a NaN counts in the first bucket, a value above the
        // last bound in the last.
        let h = LatencyHistogram::default();
        h.record_all([0.040, 0.041, 0.039, f64::NAN, 2.0, f64::INFINITY].into_iter());
        let b = h.buckets.lock().unwrap();
        assert_eq!(b.iter().sum::<u64>(), 6);
        assert_eq!((b[0], b[LAT_BUCKETS - 1]), (1, 1));
        assert_eq!(b[definition(0.041)], 1);
        assert_eq!(b[definition(2.0)], 1);
    }

    #[test]
    fn event_histogram_counts_each_observation_once_into_prometheus_buckets() {
        static BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];
        let h = EventHistogram::new("test_seconds", "A test.", &BOUNDS);
        // A value equal to a bound belongs to that bound's bucket (`le`); NaN is ignored.
        h.record_batch([0.0, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 7.0, f64::NAN]);
        h.record_batch([]);
        h.record_batch([0.0005; 4]);
        let mut page = String::new();
        h.render(&mut page);
        let expected = "# HELP test_seconds A test.\n\
                        # TYPE test_seconds histogram\n\
                        test_seconds_bucket{le=\"0.001\"} 6\n\
                        test_seconds_bucket{le=\"0.01\"} 8\n\
                        test_seconds_bucket{le=\"0.1\"} 10\n\
                        test_seconds_bucket{le=\"+Inf\"} 12\n";
        assert!(page.starts_with(expected), "{page}");
        let sum: f64 = page.lines().find_map(|l| l.strip_prefix("test_seconds_sum ")).unwrap().parse().unwrap();
        let want = 0.001 + 0.0011 + 0.01 + 0.05 + 0.1 + 0.2 + 7.0 + 4.0 * 0.0005;
        assert!((sum - want).abs() < 1e-12, "sum {sum} vs {want}");
        assert!(page.ends_with("test_seconds_count 12\n"), "{page}");
    }

    #[test]
    fn metrics_page_has_the_per_event_latency_histograms() {
        let page = render_metrics(&prometheus());
        for name in [names::END_TO_END_SECONDS, names::PROCESSING_SECONDS] {
            assert!(page.contains(&format!("# TYPE {name} histogram\n")), "{name} missing:\n{page}");
            assert!(page.contains(&format!("{name}_bucket{{le=\"+Inf\"}} ")), "{name} missing:\n{page}");
            assert_eq!(page.matches(&format!("# TYPE {name} ")).count(), 1, "{name} rendered twice");
        }
    }

    #[test]
    fn readiness_needs_model_and_group() {
        let h = Health::default();
        assert!(!h.ready());
        h.model_loaded.store(true, Ordering::Release);
        assert!(!h.ready());
        h.consumer_joined.store(true, Ordering::Release);
        assert!(h.ready());
        h.stopping.store(true, Ordering::Release);
        assert!(!h.ready());
    }
}
