//! The source: a Kafka consumer group member that turns messages into batches.
//!
//! It runs on its own OS thread (not on the async reactor): polling, Avro decoding and feature
//! extraction are CPU work, and the rebalance callback must be able to *block* while in-flight
//! work of revoked partitions drains. Each message is decoded straight into the open batch's
//! feature buffer; a message that cannot be scored becomes a dead-letter entry in the same batch,
//! so every input has exactly one outcome and a partition's outcomes keep their input order.
//!
//! Backpressure: the channel to inference is bounded. When it is full, the sealed batch waits
//! here and every assigned partition is *paused* (Kafka's per-partition pause): the thread keeps
//! polling, so heartbeats, rebalances and `max.poll.interval.ms` stay healthy, but no new input
//! arrives until inference has room again; then the partitions are resumed.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::batcher::{Batch, BatchPolicy, Entry, EntryKind};
use crate::codec::{Decoder, LastPlan};
use crate::config::{Config, DeliveryMode};
use crate::features::{IdArena, IdSpans};
use crate::offsets::{same_topic, OffsetTracker, TopicPartition};
use crate::outcome::{DeadLetterReason, Rejection};
use crate::pipeline::{PipelineError, Shared};
use crate::telemetry::names;

mod commit;
pub mod fetch;

use commit::CommitQueue;
use fetch::{FetchQueue, FetchedMessage, Routing, TopicMemo};

/// How long one read may block when no batch is open (bounds the reaction time to a stop and
/// how long a rebalance event waits on the consumer queue while nothing arrives).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How long the loop waits for room in the inference queue before serving the group protocol again.
const BACKPRESSURE_WAIT: Duration = Duration::from_millis(20);
/// Poll budget while a sealed batch waits but consumption goes on (the batch is retried each turn).
const PENDING_POLL: Duration = Duration::from_millis(1);
/// How long both the waiting and the open batch may stay full before the assignment is paused.
/// Pausing costs a refetch of everything librdkafka had prefetched, so momentary congestion is
/// waited out; sustained overload pauses (and keeps `max.poll.interval.ms` safe indefinitely).
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// Retries of a schema lookup while the registry is unreachable, before dead-lettering.
const REGISTRY_RETRIES: u32 = 3;
/// The most messages one read of the fetch queue takes (it also stops at the open batch's room).
const READ_MAX: usize = 1024;
/// The least the last commit on stop waits for the broker's answer, when the drain has used up
/// `delivery.drain_timeout`.
const COMMIT_WAIT: Duration = Duration::from_secs(1);

/// librdkafka properties of a consumer that reads whole topics by `assign` (the labels reader,
/// `streamscore report`): the service's connection settings (`kafka.common`: TLS, SASL), a
/// client id with `-<purpose>`, no group membership and no commits; `auto_offset_reset` for
/// partitions without a position. `kafka.consumer` is not applied: those are the scoring group's.
pub fn assigned_consumer_config(cfg: &Config, purpose: &str, auto_offset_reset: &str) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers)
        // librdkafka wants a group id for a consumer handle; with `assign` it never joins it.
        .set("group.id", format!("{}-{purpose}", k.group_id))
        .set("client.id", format!("{}-{purpose}", k.client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", auto_offset_reset)
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.wait.max.ms", "100");
    for (key, value) in &k.common {
        c.set(key, value);
    }
    c
}

/// librdkafka consumer properties of group member `member` (0-based) of this instance: ours
/// first, then the user's pass-through ones. With several consumer threads, each member's
/// `client.id` (and `group.instance.id`, when static membership is configured) gets `-<member>`.
pub fn consumer_config(cfg: &Config, member: usize) -> ClientConfig {
    let k = &cfg.kafka;
    let several = k.consumer_threads > 1;
    let client_id = if several { format!("{}-{member}", k.client_id) } else { k.client_id.clone() };
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers)
        .set("group.id", &k.group_id)
        .set("client.id", client_id)
        // Offsets are stored and committed explicitly, only for acknowledged outcomes.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Incremental rebalancing: a member joining or leaving moves only the partitions that
        // change owner; the others keep flowing (each revoked one is drained, see pre_rebalance).
        .set("partition.assignment.strategy", "cooperative-sticky")
        // The default (1000 ms) idles fetching for a second whenever the prefetch queue fills.
        .set("fetch.queue.backoff.ms", "10")
        // Brokers that hold a fetch for its full wait when little data is there (Tansu does)
        // would add up to 500 ms (the default) of latency after a resume.
        .set("fetch.wait.max.ms", "100")
        // Prefetch per partition: the default (100 000 messages) held ~30 MB of fetched messages
        // on a backlog with 4 partitions; 20 000 (~0.3 s at 300 000 events/s over 4 partitions)
        // measured the same CPU and throughput with that memory freed.
        .set("queued.min.messages", "20000")
        .set("statistics.interval.ms", "5000");
    if cfg.delivery.mode == DeliveryMode::ExactlyOnce {
        // Never score records of aborted or still-open upstream transactions.
        c.set("isolation.level", "read_committed");
    }
    for (key, value) in k.common.iter().chain(k.consumer.iter()) {
        if several && key == "group.instance.id" {
            c.set(key, format!("{value}-{member}"));
        } else {
            c.set(key, value);
        }
    }
    c
}

/// What the consumer thread needs; moved into it by [`spawn`].
pub struct SourceParts {
    pub config: Arc<Config>,
    pub decoder: Decoder,
    /// Feature columns per row (the model's input width).
    pub width: usize,
    pub shared: Arc<Shared>,
    pub to_inference: Sender<Batch>,
    pub recycled: Receiver<Batch>,
    /// Which of the instance's `kafka.consumer_threads` group members this is (0-based).
    pub member: usize,
}

/// Input topic names, each held once (entries share it). Asked once per run of one topic in a
/// read (`fetch::TopicMemo` remembers the name across the run), per polled message and per
/// rebalance, so it needs no memo of its own.
#[derive(Default)]
struct TopicNames {
    names: HashMap<String, Arc<str>>,
}

impl TopicNames {
    fn get(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(name);
                self.names.insert(name.to_owned(), t.clone());
                t
            }
        }
    }

    /// The partitions of `tpl`, their topics named by the same `Arc`s as the entries'.
    fn partitions_of(&mut self, tpl: &TopicPartitionList) -> Vec<TopicPartition> {
        tpl.elements().iter().map(|e| (self.get(e.topic()), e.partition())).collect()
    }
}

/// The open batch and what it takes to seal it, shared by the poll loop and the rebalance
/// callback (which runs inside `poll` on the same thread, so the lock is never contended across
/// threads; it exists because the callback only gets `&self`).
struct Builder {
    batch: Batch,
    /// A sealed batch that did not fit into the full inference queue: consumption stays paused
    /// until it is handed over. At most one, so memory stays bounded.
    pending: Option<Batch>,
    /// Whether this thread paused the assignment for backpressure.
    paused: bool,
    /// The assignment changed while paused: the new partitions must be paused too.
    repause: bool,
    /// Since when both the waiting and the open batch have been full.
    full_since: Option<Instant>,
    /// The size target of the policy in force (recorded in each sealed batch for adaptive batching).
    target_size: usize,
    to_inference: Option<Sender<Batch>>,
    recycled: Receiver<Batch>,
    width: usize,
    capacity: usize,
    /// Highest offset per partition in the open batch (few partitions per batch: a Vec beats a map).
    last_offsets: Vec<(TopicPartition, i64)>,
    /// Ownership epoch of each assigned partition (see `OffsetTracker::assign`), kept here so
    /// that tagging an input costs no lock.
    epochs: Vec<(TopicPartition, u64)>,
    topics: TopicNames,
    /// `streamscore_events_consumed_total` and `streamscore_batch_size`, looked up once when
    /// the thread starts (after the pipeline installed the recorder): looking the histogram up
    /// in the recorder's registry per sealed batch cost ~1.7 µs a batch here (`perf`).
    consumed: metrics::Counter,
    batch_sizes: metrics::Histogram,
}

/// What happened to a sealed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handoff {
    /// Inference took it (or there was nothing to hand over).
    Done,
    /// The queue is full; the batch waits in `pending`.
    Full,
    /// Inference is gone: the pipeline is stopping.
    Closed,
}

impl Builder {
    fn note_offset(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        match self.last_offsets.iter_mut().find(|((t, p), _)| *p == partition && same_topic(t, topic)) {
            Some((_, last)) => *last = (*last).max(offset),
            None => self.last_offsets.push(((topic.clone(), partition), offset)),
        }
    }

    /// The partitions this member owns (other members of this instance commit their own).
    fn owned(&self) -> Vec<TopicPartition> {
        self.epochs.iter().map(|(tp, _)| tp.clone()).collect()
    }

    fn epoch(&self, topic: &Arc<str>, partition: i32, shared: &Shared) -> u64 {
        match self.epochs.iter().find(|((t, p), _)| *p == partition && same_topic(t, topic)) {
            Some((_, e)) => *e,
            // Not seen in an assignment callback (should not happen): ask the tracker; an
            // unowned partition gets epoch 0, which the sink treats as stale.
            None => shared.tracker.epochs(&[(topic.clone(), partition)])[0].unwrap_or(0),
        }
    }

    /// Hands the waiting batch to inference, waiting at most `timeout` for room.
    fn push_pending(&mut self, timeout: Duration) -> Handoff {
        let Some(batch) = self.pending.take() else { return Handoff::Done };
        let Some(tx) = self.to_inference.as_ref() else {
            self.pending = Some(batch);
            return Handoff::Closed;
        };
        // No wait: try_send. (send_timeout with a zero timeout spins through crossbeam's whole
        // back-off before it looks at the deadline; called on every poll turn while a batch
        // waits, that spinning was a tenth of the service's CPU.)
        let result = if timeout.is_zero() {
            tx.try_send(batch).map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(b) => crossbeam_channel::SendTimeoutError::Timeout(b),
                crossbeam_channel::TrySendError::Disconnected(b) => {
                    crossbeam_channel::SendTimeoutError::Disconnected(b)
                }
            })
        } else {
            tx.send_timeout(batch, timeout)
        };
        match result {
            Ok(()) => Handoff::Done,
            Err(crossbeam_channel::SendTimeoutError::Timeout(batch)) => {
                self.pending = Some(batch);
                Handoff::Full
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(batch)) => {
                self.pending = Some(batch);
                Handoff::Closed
            }
        }
    }

    /// Seals the open batch (registering it with the offset tracker) and hands it, after any
    /// batch already waiting, to inference; waits at most `timeout` for room.
    fn seal(&mut self, shared: &Shared, timeout: Duration) -> Handoff {
        let deadline = Instant::now() + timeout;
        match self.push_pending(timeout) {
            Handoff::Done => {}
            other => return other,
        }
        if self.batch.is_empty() {
            return Handoff::Done;
        }
        let fresh = self.recycled.try_recv().unwrap_or_else(|_| Batch::new(self.width, self.capacity));
        let mut batch = std::mem::replace(&mut self.batch, fresh);
        batch.seq = shared.next_batch_seq();
        batch.timing.sealed_at = Some(Instant::now());
        batch.timing.target_size = self.target_size;
        shared.tracker.register(batch.seq, &self.last_offsets);
        self.last_offsets.clear();
        shared.stats.consumed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.consumed.increment(batch.len() as u64);
        self.batch_sizes.record(batch.len() as f64);
        self.pending = Some(batch);
        self.push_pending(deadline.saturating_duration_since(Instant::now()))
    }

    /// The inference queue is at most half full.
    fn queue_low(&self) -> bool {
        self.to_inference.as_ref().is_none_or(|tx| tx.len() * 2 <= tx.capacity().unwrap_or(1))
    }

    /// Pauses (or resumes) every assigned partition.
    fn set_paused(&mut self, consumer: &BaseConsumer<SourceContext>, paused: bool) {
        // The list from assignment() is dropped right here: a live one at consumer drop can hang librdkafka.
        let result =
            consumer.assignment().and_then(|tpl| if paused { consumer.pause(&tpl) } else { consumer.resume(&tpl) });
        match result {
            Ok(()) => {
                if paused && !self.paused {
                    metrics::counter!(names::BACKPRESSURE_PAUSES).increment(1);
                    debug!("inference queue full: partitions paused");
                } else if !paused && self.paused {
                    debug!("inference queue has room: partitions resumed");
                }
                self.paused = paused;
                self.repause = false;
                metrics::gauge!(names::PAUSED).set(if paused { 1.0 } else { 0.0 });
            }
            Err(e) => warn!(error = %e, paused, "cannot pause/resume partitions"),
        }
    }
}

/// The consumer's context: rebalance handling (drain, commit, release) and statistics.
struct SourceContext {
    builder: Mutex<Builder>,
    shared: Arc<Shared>,
    drain_timeout: Duration,
    /// exactly_once: offsets are committed inside the sink's transactions, never by the consumer.
    transactional: bool,
    /// This member's index, as the `member` label of its metrics.
    member: String,
    /// Where the fetched messages of assigned partitions go (routed on assignment); closed
    /// before the consumer is dropped.
    routing: Routing,
    /// Where offset commits report their results (see `commit`); dropped before the consumer.
    commits: Mutex<Option<CommitQueue>>,
}

impl SourceContext {
    /// Publishes how many partitions this member owns.
    fn publish_assignment(&self, owned: usize) {
        metrics::gauge!(names::ASSIGNED_PARTITIONS, "member" => self.member.clone()).set(owned as f64);
    }
}

impl SourceContext {
    fn builder(&self) -> MutexGuard<'_, Builder> {
        self.builder.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fetch(&self) -> MutexGuard<'_, Option<FetchQueue>> {
        self.routing.queue()
    }

    fn commits(&self) -> MutexGuard<'_, Option<CommitQueue>> {
        self.commits.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for SourceContext {
    /// Consumer lag per partition from librdkafka's statistics, parsed loosely (only the fields
    /// used) so that a field some broker leaves out cannot drop the whole document.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            debug!("unparseable librdkafka statistics");
            return;
        };
        let Some(topics) = doc.get("topics").and_then(|t| t.as_object()) else { return };
        for (topic, t) in topics {
            let Some(partitions) = t.get("partitions").and_then(|p| p.as_object()) else { continue };
            for (partition, p) in partitions {
                // Messages not yet consumed: high watermark minus the application's position.
                // (librdkafka's own `consumer_lag` is measured from the *committed* offset and
                // stays -1 until a commit is visible in its statistics.) Negative = unknown.
                let field = |k: &str| p.get(k).and_then(|v| v.as_i64()).unwrap_or(-1);
                let (high, position) = (field("hi_offset"), field("app_offset"));
                let lag = if high >= 0 && position >= 0 { (high - position).max(0) } else { field("consumer_lag") };
                // "-1" is librdkafka's internal unassigned partition.
                if lag >= 0 && partition != "-1" {
                    metrics::gauge!(names::CONSUMER_LAG, "topic" => topic.clone(), "partition" => partition.clone())
                        .set(lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                metrics::counter!(names::REBALANCES, "kind" => "assign").increment(1);
                info!(partitions = %describe(tpl), "partitions assigned");
                let assigned = self.builder().topics.partitions_of(tpl);
                // Before librdkafka starts fetching them: their messages go to the fetch queue.
                self.routing.on_assign(tpl);
                let epochs = self.shared.tracker.assign(&assigned);
                let mut b = self.builder();
                for (tp, epoch) in epochs {
                    b.epochs.retain(|(t, _)| *t != tp);
                    b.epochs.push((tp, epoch));
                }
                self.publish_assignment(b.epochs.len());
                // New partitions of a paused consumer start fetching: pause them too.
                b.repause = b.paused;
                drop(b);
                self.shared.health.consumer_joined.store(true, Ordering::Release);
                self.shared.health.publish();
            }
            Rebalance::Revoke(tpl) => {
                metrics::counter!(names::REBALANCES, "kind" => "revoke").increment(1);
                let revoked = self.builder().topics.partitions_of(tpl);
                info!(partitions = %describe(tpl), "partitions revoked; draining in-flight outcomes");
                // Finish what was consumed from these partitions before they go to another member.
                let deadline = Instant::now() + self.drain_timeout;
                let handoff = self.builder().seal(&self.shared, self.drain_timeout);
                let drained = handoff == Handoff::Done
                    && self
                        .shared
                        .tracker
                        .wait_drained(Some(&revoked), deadline.saturating_duration_since(Instant::now()));
                if !drained {
                    warn!(
                        in_flight = self.shared.tracker.in_flight(Some(&revoked)),
                        timeout = ?self.drain_timeout,
                        "drain incomplete on revoke; outcomes not yet produced for these partitions are dropped \
                         and their inputs re-processed by the new owner (at-least-once)"
                    );
                }
                if !self.transactional {
                    // Bounded on its own (a lost assignment's commit fails at once).
                    let deadline = Instant::now() + self.drain_timeout;
                    commit_and_wait(self, &self.shared.tracker, &revoked, deadline);
                }
                // From here on the sink drops unproduced outcomes of these partitions.
                self.shared.tracker.forget(&revoked);
                let mut b = self.builder();
                b.epochs.retain(|(tp, _)| !revoked.contains(tp));
                self.publish_assignment(b.epochs.len());
                // This instance no longer reads them: its last lag reading would go stale (the
                // new owner reports theirs; dashboards take the maximum per partition).
                for (topic, partition) in &revoked {
                    metrics::gauge!(names::CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string())
                        .set(0.0);
                }
            }
            Rebalance::Error(e) => error!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        if self.transactional {
            // The generation changed: transactions must carry the new one (a zombie's old one is fenced).
            *self.shared.group_metadata.lock().unwrap_or_else(|e| e.into_inner()) =
                consumer.group_metadata().map(Arc::new);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // Our commits report on a queue of their own (`commit`); this catches any other.
            debug!(error = %e, "commit callback reported an error");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

/// Sends a commit of what the tracker says is safe for the `only` partitions; true when one was
/// sent. Its result is applied by [`collect_commits`]: commits never wait for the broker here
/// (a synchronous commit waits without a bound while the coordinator is unreachable).
fn send_commit(ctx: &SourceContext, tracker: &OffsetTracker, only: &[TopicPartition]) -> bool {
    let offsets: Vec<(TopicPartition, i64)> =
        tracker.committable().into_iter().filter(|(tp, _)| only.contains(tp)).collect();
    if offsets.is_empty() {
        return false;
    }
    let commits = ctx.commits();
    let Some(queue) = commits.as_ref() else {
        // The consumer is closing: the last commit was made before.
        return false;
    };
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for ((topic, partition), offset) in &offsets {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            warn!(error = %e, topic = %topic, partition, "cannot add offset to commit list");
        }
    }
    match queue.send(&tpl) {
        Ok(()) => true,
        Err(code) => {
            // Not fatal: the offsets stay committable and the next commit retries them.
            metrics::counter!(names::COMMITS, "result" => "error").increment(1);
            warn!(error = %code, "cannot send an offset commit; will retry");
            false
        }
    }
}

/// Applies the results of commits sent earlier, waiting up to `wait` for a first one; true when
/// any failed. Failed offsets stay committable: the next commit retries them.
fn collect_commits(ctx: &SourceContext, tracker: &OffsetTracker, wait: Duration) -> bool {
    let commits = ctx.commits();
    let Some(queue) = commits.as_ref() else { return false };
    let mut failed = false;
    let mut wait = wait;
    while let Some(result) = queue.result(wait) {
        wait = Duration::ZERO;
        let done: Vec<(TopicPartition, i64)> =
            result.committed.iter().map(|(t, p, o)| ((Arc::from(t.as_str()), *p), *o)).collect();
        tracker.mark_committed(&done);
        if result.is_ok() {
            metrics::counter!(names::COMMITS, "result" => "ok").increment(1);
            debug!(partitions = done.len(), "committed offsets");
        } else {
            failed = true;
            metrics::counter!(names::COMMITS, "result" => "error").increment(1);
            let refused: Vec<String> = result.refused.iter().map(|(t, p, code)| format!("{t}/{p}: {code}")).collect();
            match result.error {
                Some(code) => warn!(error = %code, "offset commit failed; will retry"),
                None => {
                    warn!(partitions = %refused.join(", "), "offset commit refused for some partitions; will retry")
                }
            }
        }
    }
    failed
}

/// Commits what is safe for `only` and waits until the commit is confirmed, a commit fails, or
/// `deadline`; true when nothing committable is left unconfirmed for `only`.
fn commit_and_wait(ctx: &SourceContext, tracker: &OffsetTracker, only: &[TopicPartition], deadline: Instant) -> bool {
    send_commit(ctx, tracker, only);
    loop {
        let pending = tracker.committable().iter().any(|(tp, _)| only.contains(tp));
        if !pending {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || ctx.commits().is_none() {
            return false;
        }
        if collect_commits(ctx, tracker, left.min(Duration::from_millis(100))) {
            return false;
        }
    }
}

/// Starts the consumer thread. It subscribes, runs until `shared` says stop (or a fatal error),
/// then seals the open batch, waits (bounded) for every outcome to be acknowledged, and commits.
pub fn spawn(parts: SourceParts) -> Result<std::thread::JoinHandle<()>, PipelineError> {
    let cfg = parts.config.clone();
    let width = parts.width;
    let capacity = cfg.batch.max_batch_size;
    let context = SourceContext {
        builder: Mutex::new(Builder {
            batch: Batch::new(width, capacity),
            pending: None,
            paused: false,
            repause: false,
            full_since: None,
            target_size: capacity,
            to_inference: Some(parts.to_inference),
            recycled: parts.recycled,
            width,
            capacity,
            last_offsets: Vec::new(),
            epochs: Vec::new(),
            topics: TopicNames::default(),
            consumed: metrics::counter!(names::EVENTS_CONSUMED),
            batch_sizes: metrics::histogram!(names::BATCH_SIZE),
        }),
        shared: parts.shared.clone(),
        drain_timeout: cfg.delivery.drain_timeout,
        transactional: cfg.delivery.mode == DeliveryMode::ExactlyOnce,
        member: parts.member.to_string(),
        routing: Routing::default(),
        commits: Mutex::new(None),
    };
    let consumer: BaseConsumer<SourceContext> = consumer_config(&cfg, parts.member)
        .create_with_context(context)
        .map_err(|e| PipelineError::Kafka(format!("cannot create the consumer (check kafka.* settings): {e}")))?;
    let topics: Vec<&str> = cfg.kafka.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|e| PipelineError::Kafka(format!("cannot subscribe to {topics:?}: {e}")))?;
    info!(topics = ?cfg.kafka.input_topics, group = %cfg.kafka.group_id, "consumer subscribed");

    let decoder = parts.decoder;
    let shared = parts.shared;
    std::thread::Builder::new()
        .name(format!("streamscore-source-{}", parts.member))
        .spawn(move || run(consumer, &cfg, &decoder, &shared))
        .map_err(|e| PipelineError::Internal(format!("cannot start the source thread: {e}")))
}

fn run(consumer: BaseConsumer<SourceContext>, cfg: &Config, decoder: &Decoder, shared: &Shared) {
    {
        // Before the first poll, which serves the first assignment; dropped before the consumer
        // (also when `serve` panics).
        let _routed = consumer.context().routing.installed(&consumer);
        *consumer.context().commits() = Some(CommitQueue::new(&consumer));
        let _commits = CommitsInstalled(consumer.context());
        serve(&consumer, cfg, decoder, shared);
    }
    if close_within(consumer, cfg.delivery.drain_timeout, "consumer") {
        info!("consumer stopped");
    }
}

/// Drops its context's commit queue when dropped: before the consumer, also when `serve` panics.
struct CommitsInstalled<'c>(&'c SourceContext);

impl Drop for CommitsInstalled<'_> {
    fn drop(&mut self) {
        drop(self.0.commits().take());
    }
}

/// Unsubscribes and closes `consumer` (librdkafka serves the last revocation through the
/// context, stops the fetchers and leaves the group), waiting at most `timeout` for that; true
/// when it finished. The last commit was made (or given up on) before, so giving up loses
/// nothing: inputs not committed are consumed again, and the group expires the member after
/// `session.timeout.ms` and hands its partitions on. The close runs on a thread
/// of its own, which finishes (or not) by itself: rdkafka's close polls until librdkafka says the
/// consumer is closed, without a bound, and librdkafka's own steps wait on the broker and on
/// requests its main thread must answer.
pub fn close_within<C: ConsumerContext + 'static>(consumer: BaseConsumer<C>, timeout: Duration, what: &str) -> bool {
    let finished = within(timeout, &format!("streamscore-close-{what}"), move || {
        consumer.unsubscribe();
        drop(consumer);
    });
    if !finished {
        warn!(
            what,
            ?timeout,
            "the Kafka consumer did not close in time; stopping without waiting for it (nothing is lost: its last \
             commit was made before; the group reassigns its partitions after session.timeout.ms)"
        );
    }
    finished
}

/// Runs `f` on a new thread named `name` and waits at most `timeout` for it to finish; true when
/// nothing is left running: `f` returned or panicked (the panic is reported by the panic hook),
/// or no thread could be started (then `f` is dropped unrun, here: what it owns is dropped on
/// this thread). When `f` does not finish in time, its thread is left to finish by itself.
fn within(timeout: Duration, name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    let (done, finished) = crossbeam_channel::bounded::<()>(1);
    let started = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        f();
        let _ = done.send(());
    });
    match started {
        // Disconnected: `f` panicked, dropping the sender unsent.
        Ok(_) => !matches!(finished.recv_timeout(timeout), Err(crossbeam_channel::RecvTimeoutError::Timeout)),
        Err(e) => {
            warn!(error = %e, thread = name, "cannot start a thread; finished here instead, without a bound");
            true
        }
    }
}

/// The poll loop, then the drain and the last commit.
fn serve(consumer: &BaseConsumer<SourceContext>, cfg: &Config, decoder: &Decoder, shared: &Shared) {
    let fixed = BatchPolicy::new(cfg.batch.max_batch_size, cfg.batch.max_batch_delay);
    // The hard bound, in both modes: how far a batch may grow while inference has no room.
    let max_size = fixed.max_size;
    let mut next_commit = Instant::now() + cfg.delivery.commit_interval;
    let mut last_poll_error: Option<Instant> = None;
    let ctx = consumer.context();
    // The plan of the schema id decoded last: most inputs share one, so they skip the decoder's
    // shared plan map (a lock and a lookup per event).
    let mut last_plan = LastPlan::default();

    let transactional = ctx.transactional;
    if transactional {
        *shared.group_metadata.lock().unwrap_or_else(|e| e.into_inner()) = consumer.group_metadata().map(Arc::new);
    }
    // One clock read per turn, right after the poll: it stamps the input's arrival, decides
    // whether the open batch is due, and (a few microseconds stale at most) serves the next
    // turn's commit timer and poll budget.
    let mut now = Instant::now();
    while !shared.stopping() {
        // Fixed mode: the configuration. Adaptive: the controller's current targets (two atomic
        // loads per turn; the sink updates them once per acknowledged batch).
        let policy = shared.batching.as_ref().map_or(fixed, |a| a.policy());
        if now >= next_commit {
            let owned = ctx.builder().owned();
            if !transactional {
                // The results of earlier commits, then the next one: neither waits. One commit at a
                // time: while the coordinator is unreachable librdkafka holds the commit until it
                // finds one, and the next tick after its result sends the latest offsets.
                collect_commits(ctx, &shared.tracker, Duration::ZERO);
                if ctx.commits().as_ref().is_some_and(|q| q.pending() == 0) {
                    send_commit(ctx, &shared.tracker, &owned);
                }
            }
            // Routes are set on every assignment; this heals one that a fetcher stop cleared after
            // that (see `fetch`), within a commit interval.
            if let Some(fetch) = ctx.fetch().as_ref() {
                for (topic, partition) in &owned {
                    fetch.route(topic, *partition);
                }
            }
            next_commit = now + cfg.delivery.commit_interval;
        }
        if shared.take_rewind() {
            rewind(consumer, &mut ctx.builder(), shared);
        }
        // Backpressure. A sealed batch that found the inference queue full waits in `pending`.
        // A full queue is usually momentary, and pausing is costly (librdkafka drops what it
        // prefetched and fetches it again), so meanwhile the open batch keeps filling, and the
        // assignment is paused only once it is full too: two batches of slack. While paused,
        // polling goes on only to serve the group protocol.
        let budget = {
            let mut b = ctx.builder();
            b.target_size = policy.max_size;
            let both_full = b.pending.is_some() && b.batch.len() >= max_size;
            let wait = if b.paused || both_full { BACKPRESSURE_WAIT } else { Duration::ZERO };
            let handoff = b.push_pending(wait);
            if !wait.is_zero() {
                // The hand-off may have waited: the poll budget below needs the time now.
                now = Instant::now();
            }
            match handoff {
                Handoff::Closed => break,
                Handoff::Full => {
                    // Both batches full: wait for inference (polling in between). Only sustained
                    // overload (a slow model, a stalled producer) pauses the assignment.
                    let now = Instant::now();
                    let since = if both_full { *b.full_since.get_or_insert(now) } else { now };
                    if (!b.paused || b.repause) && now.duration_since(since) >= PAUSE_AFTER {
                        b.set_paused(consumer, true);
                    }
                    if b.paused || both_full {
                        Duration::ZERO
                    } else {
                        PENDING_POLL
                    }
                }
                Handoff::Done => {
                    b.full_since = None;
                    // Hysteresis: resume only once inference has caught up to half its queue, so
                    // that a resumed fetch fills whole batches instead of flapping per batch.
                    if b.paused && b.queue_low() {
                        b.set_paused(consumer, false);
                    }
                    if b.paused {
                        Duration::ZERO
                    } else {
                        policy.wait_budget(&b.batch, now, IDLE_POLL)
                    }
                }
            }
        };
        // The consumer queue first: rebalances, commit results, statistics and errors (and a
        // message of a partition not routed to the fetch queue, see `fetch`). Never blocks: the
        // waiting happens on the fetch queue below.
        let polled = consumer.poll(Duration::ZERO);
        // One lock for the input and the sealing decision (not during the poll: the rebalance
        // callback, which runs inside it, takes the builder too).
        let mut b = ctx.builder();
        // Then what the fetch queue holds, up to what the open batch may still take (one at least,
        // as `poll` would give while both batches are full), waiting up to the budget for a first
        // message when it holds none (not when `poll` just gave one). A rebalance in the poll
        // above may have sealed the batch: the budget is then at most one idle poll too long.
        let wait = match &polled {
            Some(Ok(msg)) => {
                now = Instant::now();
                let msg = FetchedMessage::from(msg);
                let topic = b.topics.get(msg.topic());
                accept(&mut b, &topic, &msg, cfg, (decoder, &mut last_plan), shared, now);
                Duration::ZERO
            }
            Some(Err(e)) => {
                log_poll_error(e, &mut last_poll_error);
                budget
            }
            None => budget,
        };
        drop(polled);
        let want = policy.max_size.saturating_sub(b.batch.len()).clamp(1, READ_MAX);
        let got = match ctx.fetch().as_mut() {
            Some(queue) => {
                let fetched = queue.read(wait, want);
                now = Instant::now();
                let mut topics = TopicMemo::new();
                for msg in fetched.iter() {
                    match msg.error() {
                        None => {
                            let topic = topics.name(&msg, |name| b.topics.get(name));
                            accept(&mut b, topic, &msg, cfg, (decoder, &mut last_plan), shared, now);
                        }
                        Some(e) => log_poll_error(&e, &mut last_poll_error),
                    }
                }
                fetched.len()
            }
            None => {
                now = Instant::now();
                0
            }
        };
        // Whether the consumer found nothing more already fetched (adaptive mode's seal, below).
        let caught_up = got < want;
        // A due batch is sealed at once when inference has room. When it has none, the batch
        // keeps filling up to max_batch_size first: under load, batches grow to the size that
        // makes inference cheapest, and only a full batch waits (and pauses consumption).
        // Adaptive mode: a batch whose delay is up still takes what the consumer has already
        // fetched (up to the size target) before it is sealed: that input costs no waiting, and a
        // delay near zero then gives batches of what arrived, not one batch per message.
        let room = b.to_inference.as_ref().is_some_and(|tx| !tx.is_full());
        let len = b.batch.len();
        let due = if shared.batching.is_some() {
            len >= policy.max_size || (caught_up && policy.is_due(&b.batch, now))
        } else {
            policy.is_due(&b.batch, now)
        };
        if b.pending.is_none() && due && (room || len >= max_size) {
            match b.seal(shared, Duration::ZERO) {
                Handoff::Closed => break,
                // The sealed batch waits in `pending`; the next turn decides about pausing.
                Handoff::Full | Handoff::Done => {}
            }
        }
    }

    // Stop intake, finish in-flight work, commit, release: all within one drain_timeout.
    let drain_deadline = Instant::now() + cfg.delivery.drain_timeout;
    {
        let mut b = ctx.builder();
        if b.seal(shared, cfg.delivery.drain_timeout) != Handoff::Done {
            warn!("inference did not take the last batch in time; its inputs will be consumed again after restart");
        }
        b.to_inference = None; // inference and sink finish as their input channels close
        b.pending = None;
    }
    let drained = shared.tracker.wait_drained(None, drain_deadline.saturating_duration_since(Instant::now()));
    if !drained {
        warn!(
            in_flight = shared.tracker.in_flight(None),
            "shutdown drain incomplete; uncommitted inputs will be consumed again after restart"
        );
    }
    // Commits the contiguous acknowledged prefix only: the tracker never offers an offset past
    // an outcome that failed or is still in flight. (exactly_once: the transactions did.) Waits
    // for the broker's answer within what is left of the drain, at least COMMIT_WAIT.
    if !transactional {
        let owned = ctx.builder().owned();
        let deadline = drain_deadline.max(Instant::now() + COMMIT_WAIT);
        if !commit_and_wait(ctx, &shared.tracker, &owned, deadline) {
            warn!("the last offset commit was not confirmed; inputs after the last confirmed commit will be consumed again after restart");
        }
    }
}

/// After an aborted transaction: drop everything consumed since the last commit and seek every
/// assigned partition back to its committed offset (the beginning when none is committed yet).
fn rewind(consumer: &BaseConsumer<SourceContext>, b: &mut Builder, shared: &Shared) {
    b.batch.clear();
    b.pending = None;
    b.last_offsets.clear();
    b.epochs = shared.tracker.owned();
    let timeout = Duration::from_secs(10);
    match consumer.committed(timeout) {
        Ok(tpl) => {
            for e in tpl.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    _ => Offset::Beginning,
                };
                match consumer.seek(e.topic(), e.partition(), offset, timeout) {
                    Ok(()) => debug!(topic = e.topic(), partition = e.partition(), ?offset, "rewound"),
                    Err(err) => {
                        // Cannot rewind: stopping is the only way not to lose these inputs.
                        shared.fail(PipelineError::Kafka(format!(
                            "cannot rewind {}/{} after an aborted transaction: {err}",
                            e.topic(),
                            e.partition()
                        )));
                    }
                }
            }
            info!(partitions = tpl.count(), "transaction aborted: consumer rewound to the committed offsets");
        }
        Err(err) => shared.fail(PipelineError::Kafka(format!("cannot read committed offsets to rewind: {err}"))),
    }
}

/// Consumer errors: transient ones (broker down, rebalance in progress) are retried by librdkafka;
/// logged at most once per 10 s so that an outage does not flood the log.
fn log_poll_error(e: &KafkaError, last: &mut Option<Instant>) {
    if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
        warn!(error = %e, "consumer error (librdkafka retries on its own)");
        *last = Some(Instant::now());
    }
}

/// Decodes one message, received at `received`, into the open batch (a scored row or a
/// dead-letter entry). Also while paused (already fetched, or a partition assigned meanwhile):
/// it joins the open batch, which waits for the pending one.
fn accept(
    b: &mut Builder,
    topic: &Arc<str>,
    msg: &FetchedMessage<'_>,
    cfg: &Config,
    decoder: (&Decoder, &mut LastPlan),
    shared: &Shared,
    received: Instant,
) {
    let (partition, offset) = (msg.partition(), msg.offset());
    b.note_offset(topic, partition, offset);
    let epoch = b.epoch(topic, partition, shared);
    let kind = match msg.payload() {
        None => EntryKind::Rejected {
            rejection: Rejection::new(DeadLetterReason::Truncated, "message has no value (null payload)"),
            payload: None,
        },
        Some(bytes) if bytes.len() > cfg.schemas.max_message_bytes => EntryKind::Rejected {
            rejection: Rejection::new(
                DeadLetterReason::Oversized,
                format!(
                    "value of {} bytes exceeds schemas.max_message_bytes = {}",
                    bytes.len(),
                    cfg.schemas.max_message_bytes
                ),
            ),
            payload: Some(bytes.to_vec()),
        },
        Some(bytes) => {
            // Decoded straight into the batch's next row; a rejected input gives the row back.
            let (row, values, missing, ids) = b.batch.push_row_with_ids();
            match decode_with_retry(decoder, bytes, values, missing, ids, shared) {
                Ok(identity) => EntryKind::Row { row, identity },
                Err(rejection) => {
                    b.batch.pop_row();
                    EntryKind::Rejected { rejection, payload: Some(bytes.to_vec()) }
                }
            }
        }
    };
    let entry = Entry {
        topic: b.batch.topic_id(topic),
        partition,
        offset,
        epoch,
        key: msg.key().map(|k| b.batch.store_key(k)),
        headers: msg.headers(),
        timestamp_ms: msg.timestamp().to_millis(),
        kind,
    };
    b.batch.push_entry(entry, received);
}

/// A registry outage should not dead-letter good events: retry a few times with backoff first.
fn decode_with_retry(
    (decoder, last_plan): (&Decoder, &mut LastPlan),
    bytes: &[u8],
    values: &mut [f32],
    missing: &mut [bool],
    ids: &mut IdArena,
    shared: &Shared,
) -> Result<IdSpans, Rejection> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        match decoder.decode_features_into(last_plan, bytes, values, missing, ids) {
            Err(r)
                if r.reason == DeadLetterReason::RegistryUnavailable
                    && attempt < REGISTRY_RETRIES
                    && !shared.stopping() =>
            {
                warn!(detail = %r.detail, retry_in = ?delay, "schema registry unavailable; retrying");
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{within, TopicNames};

    #[test]
    fn topic_names_are_held_once_and_the_last_one_is_not_mistaken_for_another() {
        let mut names = TopicNames::default();
        let a = names.get("payments");
        let b = names.get("refunds");
        assert_eq!((&*a, &*b), ("payments", "refunds"));
        // Back and forth, and a name that extends the last one: always the right name, and the
        // same allocation for the same topic.
        for (name, same_as) in [("payments", &a), ("payments", &a), ("refunds", &b), ("payments", &a)] {
            let t = names.get(name);
            assert_eq!(&*t, name);
            assert!(Arc::ptr_eq(&t, same_as), "{name} held once");
        }
        assert_eq!(&*names.get("payments-eu"), "payments-eu");
        assert_eq!(&*names.get("payment"), "payment");
        assert_eq!(names.names.len(), 4);
    }

    /// `within` waits for a quick job, and gives up on a stuck one after its timeout, leaving it
    /// to finish by itself (what the consumer's close relies on).
    #[test]
    fn within_waits_for_a_finished_job_and_gives_up_on_a_stuck_one() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        assert!(within(Duration::from_secs(30), "test-quick", move || flag.store(true, Ordering::SeqCst)));
        assert!(ran.load(Ordering::SeqCst), "the job ran before `within` returned");
        // A job that panics is over too (not reported as still running).
        let started = Instant::now();
        assert!(within(Duration::from_secs(30), "test-panics", || panic!("the job panics (expected)")));
        assert!(started.elapsed() < Duration::from_secs(20), "did not wait for the timeout");

        let (release, stuck) = crossbeam_channel::bounded::<()>(0);
        let (finished_tx, finished) = crossbeam_channel::bounded::<()>(1);
        let started = Instant::now();
        // Stuck for 10 s at most, so that a `within` that waits for it fails instead of hanging.
        let done = within(Duration::from_millis(200), "test-stuck", move || {
            let _ = stuck.recv_timeout(Duration::from_secs(10));
            let _ = finished_tx.send(());
        });
        assert!(!done, "a job that does not finish is reported as such");
        assert!(started.elapsed() < Duration::from_secs(5), "gave up after its timeout, not when the job ended");
        assert!(finished.try_recv().is_err(), "the job was still running");
        release.send(()).expect("the stuck job still waits");
        finished.recv_timeout(Duration::from_secs(30)).expect("the job finished by itself afterwards");
    }
}
