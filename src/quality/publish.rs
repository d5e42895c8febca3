//! Publishes the quality windows: one `QualityReport` per version with joined labels per
//! `quality.interval` on the monitoring topic, the per-version gauges and the join counters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{QualityTracker, QualityWindow};
use crate::codec;
use crate::sink::{now_ms, OutputTopic};
use crate::telemetry::names;

/// The publishing task's parts.
pub struct QualityPublisher {
    pub tracker: Arc<Mutex<QualityTracker>>,
    /// The monitoring topic.
    pub topic: OutputTopic,
    pub schema: apache_avro::Schema,
    pub schema_id: u32,
    pub instance_id: String,
    pub window_start_ms: i64,
    /// Every window's sums merged per version since the start (the run summary's quality).
    pub totals: Arc<Mutex<Vec<QualityWindow>>>,
}

impl QualityPublisher {
    /// Publishes every `interval` until `stop`, then once more for the last, partial window.
    pub async fn run(mut self, interval: Duration, stop: watch::Receiver<bool>) {
        crate::pipeline::every_interval_then_once_more(interval, stop, || self.publish()).await;
    }

    /// Ends the current window now and publishes it.
    pub fn publish(&mut self) {
        let end = now_ms();
        let (windows, stats, pending, waiting) = match self.tracker.lock() {
            Ok(mut t) => {
                let w = t.take_windows(self.window_start_ms, end);
                let s = t.take_stats(end);
                (w, s, t.pending_predictions(), t.waiting_labels())
            }
            Err(_) => return,
        };
        self.window_start_ms = end;
        metrics::counter!(names::LABELS, "outcome" => "matched").increment(stats.matched);
        metrics::counter!(names::LABELS, "outcome" => "unmatched").increment(stats.unmatched);
        metrics::counter!(names::LABELS_WAITED).increment(stats.waited);
        metrics::counter!(names::QUALITY_PREDICTIONS_DROPPED, "reason" => "expired")
            .increment(stats.predictions_expired);
        metrics::counter!(names::QUALITY_PREDICTIONS_DROPPED, "reason" => "capacity")
            .increment(stats.predictions_evicted);
        metrics::gauge!(names::QUALITY_PENDING_PREDICTIONS).set(pending as f64);
        metrics::gauge!(names::QUALITY_WAITING_LABELS).set(waiting as f64);
        if stats.predictions_evicted > 0 {
            warn!(
                evicted = stats.predictions_evicted,
                "quality: predictions dropped before their labels came (quality.max_predictions reached); raise it or shorten quality.prediction_ttl"
            );
        }
        for window in &windows {
            self.publish_window(window);
        }
        if let Ok(mut totals) = self.totals.lock() {
            for w in windows {
                match totals.iter_mut().find(|t| t.model_name == w.model_name && t.model_version == w.model_version) {
                    Some(t) => {
                        t.counts.merge(&w.counts);
                        t.window_end_ms = w.window_end_ms;
                    }
                    None => totals.push(w),
                }
            }
        }
    }

    fn publish_window(&self, w: &QualityWindow) {
        let (model, version) = (w.model_name.clone(), w.model_version.clone());
        let c = &w.counts;
        let labels = [("model", model.clone()), ("version", version.clone())];
        let nan = f64::NAN;
        metrics::gauge!(names::QUALITY_PRECISION, &labels).set(c.precision().unwrap_or(nan));
        metrics::gauge!(names::QUALITY_RECALL, &labels).set(c.recall().unwrap_or(nan));
        metrics::gauge!(names::QUALITY_CALIBRATION_ERROR, &labels).set(c.expected_calibration_error());
        metrics::gauge!(names::QUALITY_BRIER, &labels).set(c.brier_score());
        for (outcome, n) in [
            ("true_positive", c.confusion.true_positives),
            ("false_positive", c.confusion.false_positives),
            ("false_negative", c.confusion.false_negatives),
            ("true_negative", c.confusion.true_negatives),
        ] {
            metrics::counter!(names::QUALITY_LABELLED, "model" => model.clone(), "version" => version.clone(), "outcome" => outcome)
                .increment(n);
        }
        info!(
            model = %model, version = %version, labels = c.labels,
            precision = ?c.precision(), recall = ?c.recall(), ece = c.expected_calibration_error(),
            "quality window"
        );
        let mut buf = Vec::new();
        if let Err(e) = codec::encode_value(&mut buf, self.schema_id, &self.schema, w.to_avro(&self.instance_id)) {
            warn!(error = %e, "cannot encode quality report");
            return;
        }
        match self.topic.send_report(&model, &version, &buf) {
            Ok(()) => metrics::counter!(names::QUALITY_REPORTS, "model" => model, "version" => version).increment(1),
            Err(e) => warn!(error = %e, "cannot publish quality report"),
        }
    }
}
