//! Adaptive batching: steers the batch size and the batching delay toward a latency target.
//!
//! The pattern is the model servers' adaptive batchers: Clipper's AIMD on the batch size against
//! a latency objective (grow additively while batches are processed within it, back off
//! multiplicatively when they are not) and the bounded queue delay of Triton's dynamic batcher.
//! For every acknowledged batch the pipeline reports two times:
//!
//! - **work**: what the stages spent processing the batch: the inference stage (cache, ONNX
//!   Runtime, drift) plus the sink encoding its records and handing them to the producer. It is
//!   what grows with the batch size, so it is what the size is steered by (Clipper's "batch
//!   latency").
//! - **after seal**: everything from sealing the batch to the broker acknowledging its last
//!   record: the work, queueing for busy stages, and the wait for the broker (the producer's
//!   linger, the round trip, a transaction commit). It is the latency an input has left once its
//!   batch is sealed, so the delay is what the target leaves of it.
//!
//! Neither queueing nor the broker's wait moves the size. Both are per-batch costs that a
//! smaller batch does not make shorter: under overload queueing grows whatever the size, and
//! answering it with smaller batches adds per-batch cost (less throughput, so more queueing: a
//! collapse); a broker or producer wait longer than the target (a busy broker, `linger.ms`) would
//! likewise drive the size to its minimum for nothing. They shorten the delay instead.
//!
//! The rules, with T the latency target and w̄, ā the smoothed work and after-seal times:
//!
//! - **size**: w̄ > T → size × 0.75, at most once per 8 batches (batches sealed before a cut are
//!   still in flight and report the old size). w̄ < 0.8·T and the batch was *full* (it reached
//!   the size target in force when it was sealed, so the size was what limited it) → size +
//!   max/32. Otherwise hold. Always within [min(16, max), max_batch_size].
//! - **delay**: 0.8·T − ā, within [0, max_batch_delay]: an input that waits the whole delay and
//!   then the average time after sealing is done within 80% of the target; the remaining 20% is
//!   margin for variance.
//! - **smoothing**: exponentially weighted averages (weight 0.2 for the newest batch); a work
//!   sample counts at most 3× the average, so one stalled batch moves the average by at most 40%
//!   and cannot halve the size on its own.
//!
//! Before the first feedback the size is max/4 and the delay min(T/2, max_batch_delay).
//! The source still lets a batch grow to `max_batch_size` while the inference queue is full, so
//! under overload batches reach the size that makes inference cheapest whatever the target.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::debug;

use super::{BatchPolicy, BatchTiming};
use crate::telemetry::names;

/// Smallest size target (or `max_batch_size` when that is smaller).
pub const MIN_SIZE: usize = 16;
/// Weight of the newest batch in the smoothed work and after-seal times.
const EWMA_WEIGHT: f64 = 0.2;
/// A work sample counts at most this multiple of the current average.
const OUTLIER_CLIP: f64 = 3.0;
/// The expected latency is aimed at this share of the target; growth stops above it.
const HEADROOM: f64 = 0.8;
/// Multiplicative decrease of the size when the work exceeds the target.
const DECREASE: f64 = 0.75;
/// Batches after a decrease during which no further decrease happens.
const COOLDOWN_BATCHES: u32 = 8;
/// The additive step is max_batch_size / this (at least 1).
const STEPS_TO_MAX: f64 = 32.0;

/// What the pipeline measured for one acknowledged batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchFeedback {
    /// Inputs in the batch.
    pub inputs: usize,
    /// The size target in force when the batch was sealed.
    pub target_size: usize,
    /// Time the stages spent processing it (see the module docs).
    pub work: Duration,
    /// Sealed → last outcome acknowledged.
    pub after_seal: Duration,
}

impl BatchFeedback {
    /// The feedback of a batch whose records were all handed to the producer at `produced` and
    /// acknowledged at `acked`: work = inference time + (produced − the sink took it);
    /// after seal = acked − sealed. None when the batch did not pass every stage.
    pub fn from_timing(timing: &BatchTiming, inputs: usize, produced: Instant, acked: Instant) -> Option<Self> {
        let sealed = timing.sealed_at?;
        let sink = timing.sink_started?;
        Some(Self {
            inputs,
            target_size: timing.target_size,
            work: timing.inference + produced.saturating_duration_since(sink),
            after_seal: acked.saturating_duration_since(sealed),
        })
    }
}

/// What one feedback did to the size target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adjustment {
    Grew,
    Shrank,
    Held,
}

/// The pure controller: feedback in, size and delay out. No clocks, no threads.
#[derive(Debug, Clone)]
pub struct AdaptiveController {
    target: f64,
    max_size: usize,
    min_size: usize,
    step: f64,
    max_delay: f64,
    size: f64,
    /// Smoothed work time (s); None until the first feedback.
    work: Option<f64>,
    /// Smoothed after-seal time (s).
    after_seal: f64,
    /// Feedbacks left before another decrease is allowed.
    cooldown: u32,
}

impl AdaptiveController {
    /// A controller for `latency_target` with `max_size` and `max_delay` as upper bounds.
    pub fn new(latency_target: Duration, max_size: usize, max_delay: Duration) -> Self {
        let max_size = max_size.max(1);
        let min_size = MIN_SIZE.min(max_size);
        Self {
            target: latency_target.as_secs_f64(),
            max_size,
            min_size,
            step: (max_size as f64 / STEPS_TO_MAX).max(1.0),
            max_delay: max_delay.as_secs_f64(),
            size: (max_size / 4).clamp(min_size, max_size) as f64,
            work: None,
            after_seal: 0.0,
            cooldown: 0,
        }
    }

    /// Learns from one acknowledged batch.
    pub fn observe(&mut self, fb: &BatchFeedback) -> Adjustment {
        let sample = fb.work.as_secs_f64();
        let after_seal = fb.after_seal.as_secs_f64();
        let work = match self.work {
            None => {
                self.after_seal = after_seal;
                sample
            }
            Some(avg) => {
                self.after_seal += EWMA_WEIGHT * (after_seal - self.after_seal);
                avg + EWMA_WEIGHT * (sample.min(OUTLIER_CLIP * avg) - avg)
            }
        };
        self.work = Some(work);
        self.cooldown = self.cooldown.saturating_sub(1);

        let full = fb.inputs >= fb.target_size.max(1);
        if work > self.target {
            if self.cooldown > 0 || self.size <= self.min_size as f64 {
                return Adjustment::Held;
            }
            self.size = (self.size * DECREASE).max(self.min_size as f64);
            self.cooldown = COOLDOWN_BATCHES;
            Adjustment::Shrank
        } else if work < HEADROOM * self.target && full && self.size < self.max_size as f64 {
            self.size = (self.size + self.step).min(self.max_size as f64);
            Adjustment::Grew
        } else {
            Adjustment::Held
        }
    }

    /// The current size target.
    pub fn size(&self) -> usize {
        (self.size as usize).clamp(self.min_size, self.max_size)
    }

    /// The current longest wait after a batch's first input.
    pub fn delay(&self) -> Duration {
        let seconds = match self.work {
            None => self.target / 2.0,
            Some(_) => HEADROOM * self.target - self.after_seal,
        };
        Duration::from_secs_f64(seconds.clamp(0.0, self.max_delay))
    }

    /// Smoothed work time, once there was feedback.
    pub fn work(&self) -> Option<Duration> {
        self.work.map(Duration::from_secs_f64)
    }

    pub fn policy(&self) -> BatchPolicy {
        BatchPolicy::new(self.size(), self.delay())
    }
}

/// The controller shared by the stages: the sink feeds it once per acknowledged batch (a lock
/// held for a few arithmetic operations); the source reads the policy once per poll turn from
/// two atomics, without the lock.
#[derive(Debug)]
pub struct AdaptiveBatching {
    controller: Mutex<AdaptiveController>,
    size: AtomicUsize,
    delay_nanos: AtomicU64,
}

impl AdaptiveBatching {
    pub fn new(controller: AdaptiveController) -> Self {
        let shared =
            Self { controller: Mutex::new(controller), size: AtomicUsize::new(0), delay_nanos: AtomicU64::new(0) };
        let c = shared.controller.lock().unwrap_or_else(|e| e.into_inner()).clone();
        shared.publish(&c);
        shared
    }

    /// The policy in force (size target and delay).
    pub fn policy(&self) -> BatchPolicy {
        BatchPolicy::new(
            self.size.load(Ordering::Relaxed),
            Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed)),
        )
    }

    /// Feeds one acknowledged batch and publishes the new targets (atomics and gauges).
    pub fn observe(&self, feedback: &BatchFeedback) -> Adjustment {
        let mut c = self.controller.lock().unwrap_or_else(|e| e.into_inner());
        let adjustment = c.observe(feedback);
        if adjustment == Adjustment::Shrank {
            debug!(
                size = c.size(),
                work = ?c.work(),
                "adaptive batching: batches take longer to process than the latency target; size target cut"
            );
        }
        self.publish(&c);
        adjustment
    }

    fn publish(&self, c: &AdaptiveController) {
        let (size, delay) = (c.size(), c.delay());
        self.size.store(size, Ordering::Relaxed);
        self.delay_nanos.store(delay.as_nanos() as u64, Ordering::Relaxed);
        metrics::gauge!(names::BATCH_TARGET_SIZE).set(size as f64);
        metrics::gauge!(names::BATCH_TARGET_DELAY).set(delay.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn fb(inputs: usize, target_size: usize, work_ms: f64, after_seal_ms: f64) -> BatchFeedback {
        BatchFeedback {
            inputs,
            target_size,
            work: Duration::from_secs_f64(work_ms / 1e3),
            after_seal: Duration::from_secs_f64(after_seal_ms / 1e3),
        }
    }

    /// Feeds `n` full batches (each as large as the current target) with the given times.
    fn feed_full(c: &mut AdaptiveController, n: usize, work_ms: f64, after_seal_ms: f64) {
        for _ in 0..n {
            let size = c.size();
            c.observe(&fb(size, size, work_ms, after_seal_ms));
        }
    }

    fn controller() -> AdaptiveController {
        AdaptiveController::new(10 * MS, 256, 5 * MS)
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn starts_at_a_quarter_of_the_maximum_and_half_the_target_as_delay() {
        let c = controller();
        assert_eq!(c.size(), 64);
        assert_eq!(c.delay(), 5 * MS, "min(target/2, max_batch_delay)");
        let c = AdaptiveController::new(4 * MS, 256, 5 * MS);
        assert_eq!(c.delay(), 2 * MS);
        let c = AdaptiveController::new(10 * MS, 8, 5 * MS);
        assert_eq!(c.size(), 8, "a maximum below the minimum is both bounds");
    }

    #[test]
    fn grows_additively_with_headroom_up_to_the_maximum() {
        let mut c = controller();
        let size = c.size();
        assert_eq!(c.observe(&fb(size, size, 1.0, 3.0)), Adjustment::Grew);
        assert_eq!(c.size(), size + 8, "step = max / 32");
        feed_full(&mut c, 100, 1.0, 3.0);
        assert_eq!(c.size(), 256, "bounded by max_batch_size");
        assert_eq!(c.observe(&fb(256, 256, 1.0, 3.0)), Adjustment::Held);
    }

    #[test]
    fn does_not_grow_when_the_size_did_not_limit_the_batch() {
        let mut c = controller();
        for _ in 0..50 {
            assert_eq!(c.observe(&fb(10, 64, 1.0, 3.0)), Adjustment::Held, "sealed by the delay, 10 of 64");
        }
        assert_eq!(c.size(), 64);
        // Filled past the target while the inference queue was full: the size did limit it.
        assert_eq!(c.observe(&fb(256, 64, 1.0, 3.0)), Adjustment::Grew);
    }

    #[test]
    fn holds_between_the_headroom_and_the_target() {
        let mut c = controller();
        feed_full(&mut c, 30, 9.0, 12.0);
        assert_eq!(c.size(), 64, "0.8·T < 9 ms < T: neither grows nor shrinks");
        assert_eq!(c.delay(), Duration::ZERO, "no time left to wait");
    }

    #[test]
    fn shrinks_multiplicatively_over_target_down_to_the_minimum() {
        let mut c = controller();
        assert_eq!(c.observe(&fb(64, 64, 20.0, 25.0)), Adjustment::Shrank);
        assert_eq!(c.size(), 48);
        // The next batches were sealed before the cut: no second cut for them.
        for _ in 0..7 {
            assert_eq!(c.observe(&fb(64, 64, 20.0, 25.0)), Adjustment::Held);
        }
        assert_eq!(c.observe(&fb(48, 48, 20.0, 25.0)), Adjustment::Shrank);
        assert_eq!(c.size(), 36);
        feed_full(&mut c, 200, 20.0, 25.0);
        assert_eq!(c.size(), MIN_SIZE, "never below the minimum");
        assert_eq!(c.delay(), Duration::ZERO);
    }

    #[test]
    fn one_slow_batch_does_not_halve_the_size() {
        let mut c = controller();
        feed_full(&mut c, 100, 4.0, 6.0);
        assert_eq!(c.size(), 256);
        let size = c.size();
        c.observe(&fb(size, size, 500.0, 500.0)); // one stall (a descheduled thread, a GC'd neighbour)
        feed_full(&mut c, 3, 4.0, 6.0);
        assert_eq!(c.size(), 256, "a clipped outlier moves the average by at most 40%: {:?}", c.work());
        // Even a run of stalls costs one cut per cooldown, never a halving at once.
        for _ in 0..3 {
            c.observe(&fb(256, 256, 500.0, 500.0));
        }
        assert!(c.size() >= 192, "{}", c.size());
    }

    #[test]
    fn queueing_does_not_shrink_the_size_under_overload() {
        // Overload: batches wait long for busy stages (after seal ≫ target) but each is processed
        // quickly. Smaller batches would only add per-batch cost; the size keeps growing instead.
        let mut c = controller();
        for _ in 0..100 {
            c.observe(&fb(256, c.size(), 2.0, 400.0));
        }
        assert_eq!(c.size(), 256);
        assert_eq!(c.delay(), Duration::ZERO, "queueing leaves no room for waiting");
    }

    #[test]
    fn a_slow_broker_acknowledgement_shortens_the_delay_not_the_size() {
        // The producer's linger plus a busy broker's round trip exceed the target: a fixed wait
        // per batch that no batch size shortens.
        let mut c = controller();
        feed_full(&mut c, 100, 1.0, 14.0);
        assert_eq!(c.size(), 256);
        assert_eq!(c.delay(), Duration::ZERO);
    }

    #[test]
    fn delay_fills_what_the_target_leaves_after_sealing() {
        let mut c = AdaptiveController::new(20 * MS, 256, 50 * MS);
        feed_full(&mut c, 60, 1.0, 8.0);
        assert!((ms(c.delay()) - (16.0 - 8.0)).abs() < 0.01, "0.8·20 − 8 = 8 ms, got {:?}", c.delay());
        feed_full(&mut c, 60, 1.0, 12.0);
        assert!((ms(c.delay()) - 4.0).abs() < 0.01, "follows the after-seal time: {:?}", c.delay());
        let mut c = controller();
        feed_full(&mut c, 60, 1.0, 2.0);
        assert_eq!(c.delay(), 5 * MS, "capped at max_batch_delay");
    }

    #[test]
    fn recovers_after_overload() {
        let mut c = controller();
        feed_full(&mut c, 200, 30.0, 130.0);
        assert_eq!(c.size(), MIN_SIZE);
        assert_eq!(c.delay(), Duration::ZERO);
        feed_full(&mut c, 200, 2.0, 4.0);
        assert_eq!(c.size(), 256, "grows back once the work has headroom");
        assert!((ms(c.delay()) - 4.0).abs() < 0.01, "delay back at 0.8·10 − 4 = 4 ms, got {:?}", c.delay());
    }

    #[test]
    fn feedback_separates_work_from_waiting() {
        let t0 = Instant::now();
        let timing = BatchTiming {
            target_size: 64,
            sealed_at: Some(t0),
            inference_started: Some(t0 + 10 * MS),
            inference: 2 * MS,
            sink_started: Some(t0 + 20 * MS),
        };
        let f = BatchFeedback::from_timing(&timing, 50, t0 + 23 * MS, t0 + 30 * MS).expect("complete timing");
        assert_eq!(f, BatchFeedback { inputs: 50, target_size: 64, work: 5 * MS, after_seal: 30 * MS });
        assert!(BatchFeedback::from_timing(&BatchTiming::default(), 50, t0, t0).is_none());
    }

    #[test]
    fn shared_controller_publishes_the_policy() {
        let shared = AdaptiveBatching::new(controller());
        assert_eq!(shared.policy(), BatchPolicy::new(64, 5 * MS));
        for _ in 0..10 {
            let size = shared.policy().max_size;
            shared.observe(&fb(size, size, 1.0, 6.0));
        }
        assert_eq!(shared.policy().max_size, 64 + 10 * 8);
        assert!((ms(shared.policy().max_delay) - 2.0).abs() < 0.01, "{:?}", shared.policy().max_delay);
    }
}
