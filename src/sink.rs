//! The sink: produces exactly one record per input (scored or dead-letter) and turns the
//! broker's delivery acknowledgements into offset-tracker progress.
//!
//! Records are produced in batch order, so a partition's outcomes leave in input order (the
//! producer is idempotent, which keeps that order through retries). The sink never flushes per
//! batch (a flush costs ~100 ms in rdkafka 0.39): delivery callbacks count down a per-batch
//! counter, and the batch is acknowledged to the tracker when the last of its records is.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::batcher::adaptive::BatchFeedback;
use crate::batcher::{Batch, BatchTiming, EntryKind, TopicId};
use crate::codec::{encode_scored, encode_shadow, ScoredRecord, ShadowRecord};
use crate::config::Config;
use crate::model::deploy;
use crate::offsets::same_topic;
use crate::outcome::DeadLetterReason;
use crate::pipeline::{PipelineError, Shared};
use crate::telemetry::{self, names, RunStats};

mod partition;
mod topic;
pub use topic::{OutgoingRecord, OutputTopic, RecordRun, RunBytes};

/// Header names added to dead-letter records (the input's own headers are kept too).
pub mod dlq_headers {
    pub const REASON: &str = "streamscore.dlq.reason";
    pub const DETAIL: &str = "streamscore.dlq.detail";
    pub const SOURCE_TOPIC: &str = "streamscore.dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "streamscore.dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "streamscore.dlq.source.offset";
    /// Present (`true`) when the original value was cut to fit the producer's record size limit.
    pub const TRUNCATED: &str = "streamscore.dlq.truncated";
    pub const ORIGINAL_SIZE: &str = "streamscore.dlq.original_size";
}

/// A run of scored records is produced once its encoded values reach this many bytes (or the
/// batch ends), which bounds the sink's encoding buffer whatever the records' size.
const RUN_BYTES: usize = 256 * 1024;

/// Bytes kept free for headers and framing when a dead-letter value is cut to fit.
const DLQ_HEADROOM: usize = 16 * 1024;

/// The producer's record size limit (`message.max.bytes`, librdkafka's default 1 000 000).
pub fn max_record_bytes(cfg: &Config) -> usize {
    let k = &cfg.kafka;
    k.producer
        .get("message.max.bytes")
        .or_else(|| k.common.get("message.max.bytes"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Outcome counts of one batch, settled when the broker has acknowledged all of them.
pub struct BatchAck {
    seq: u64,
    remaining: AtomicUsize,
    failed: AtomicBool,
    scored: u64,
    dead_lettered: [u64; DeadLetterReason::ALL.len()],
    /// Kafka timestamps of the inputs (ms), for end-to-end latency at acknowledgement.
    timestamps: Vec<i64>,
    /// When the source received each input, for processing latency at acknowledgement.
    received: Vec<Instant>,
    /// Inputs in the batch and when it passed each stage (adaptive batching's feedback).
    inputs: usize,
    timing: BatchTiming,
    /// When the sink had handed every record of the batch to the producer (set once they all
    /// are; a delivery report could in principle settle the batch before it is set).
    produced: OnceLock<Instant>,
}

/// What a produced record reports back to when the broker answers.
// One `Arc<Ack>` per batch (or drift report), shared by its records: boxing the large variant
// would only add a second allocation per batch.
#[allow(clippy::large_enum_variant)]
pub enum Ack {
    Batch(BatchAck),
    /// Drift reports: a failure is logged and counted, it holds back no offsets.
    Monitoring,
    /// Shadow results (best effort, like drift reports).
    Shadow,
}

/// The producer's context: routes delivery reports.
pub struct SinkContext {
    shared: Arc<Shared>,
    /// exactly_once: a batch is settled by its transaction's commit, not by delivery reports.
    transactional: bool,
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Arc<Ack>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Arc<Ack>) {
        let batch = match &*opaque {
            Ack::Monitoring => {
                if let Err((e, msg)) = result {
                    warn!(error = %e, topic = msg.topic(), "drift report not delivered");
                    metrics::counter!(names::DELIVERY_FAILURES, "topic" => "monitoring").increment(1);
                }
                return;
            }
            Ack::Shadow => {
                if let Err((e, msg)) = result {
                    warn!(error = %e, topic = msg.topic(), "shadow result not delivered (best effort: not retried)");
                    metrics::counter!(deploy::SHADOW_DELIVERY_FAILURES).increment(1);
                }
                return;
            }
            Ack::Batch(b) => b,
        };
        if let Err((e, msg)) = result {
            if self.transactional {
                // The transaction's commit fails too, and the sink aborts and rewinds (once per batch in the log).
                if !batch.failed.swap(true, Ordering::AcqRel) {
                    warn!(error = %e, topic = msg.topic(), batch = batch.seq, "outcome not delivered; the transaction will abort");
                }
                batch.remaining.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            error!(error = %e, topic = msg.topic(), batch = batch.seq, "outcome not delivered; stopping without committing past it");
            metrics::counter!(names::DELIVERY_FAILURES, "topic" => msg.topic().to_string()).increment(1);
            if !batch.failed.swap(true, Ordering::AcqRel) {
                self.shared.tracker.fail(batch.seq);
                self.shared.fail(PipelineError::Delivery(format!("{} to topic {}", e, msg.topic())));
            }
        }
        if batch.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && !batch.failed.load(Ordering::Acquire)
            && !self.transactional
        {
            settle(batch, &self.shared);
            self.shared.tracker.ack(batch.seq);
        }
    }
}

/// Counts a fully acknowledged batch (metrics once per batch, latency per input) and feeds its
/// timings to adaptive batching.
fn settle(b: &BatchAck, shared: &Shared) {
    let acked = Instant::now();
    let stats = &shared.stats;
    stats.scored.fetch_add(b.scored, Ordering::Relaxed);
    metrics::counter!(names::EVENTS_SCORED).increment(b.scored);
    for (i, n) in b.dead_lettered.iter().enumerate() {
        if *n > 0 {
            stats.dead_lettered[i].fetch_add(*n, Ordering::Relaxed);
            metrics::counter!(names::EVENTS_DEAD_LETTERED, "reason" => DeadLetterReason::ALL[i].as_str()).increment(*n);
        }
    }
    let now = now_ms();
    let latency = telemetry::event_latency();
    let seconds = b.timestamps.iter().map(|t| (now - t).max(0) as f64 / 1000.0);
    latency.end_to_end.record_batch(seconds.clone());
    stats.latency.record_all(seconds);
    latency.processing.record_batch(b.received.iter().map(|r| acked.saturating_duration_since(*r).as_secs_f64()));
    let produced = b.produced.get().copied().unwrap_or(acked);
    record_stages(b, produced, acked);
    if let Some(batching) = &shared.batching {
        if let Some(feedback) = BatchFeedback::from_timing(&b.timing, b.inputs, produced, acked) {
            batching.observe(&feedback);
        }
    }
}

/// Records `streamscore_batch_stage_seconds` for a settled batch (once per batch, from its
/// oldest input's receipt: an upper bound for every input in it).
fn record_stages(b: &BatchAck, produced: Instant, acked: Instant) {
    let (Some(&first), Some(sealed), Some(started), Some(sink)) =
        (b.received.first(), b.timing.sealed_at, b.timing.inference_started, b.timing.sink_started)
    else {
        return;
    };
    let inferred = started + b.timing.inference;
    let stages = [
        ("batching", sealed.saturating_duration_since(first)),
        ("inference_queue", started.saturating_duration_since(sealed)),
        ("inference", b.timing.inference),
        ("sink_queue", sink.saturating_duration_since(inferred)),
        ("produce", produced.saturating_duration_since(sink)),
        ("broker_ack", acked.saturating_duration_since(produced)),
        ("in_streamscore", produced.saturating_duration_since(first)),
    ];
    for (stage, d) in stages {
        metrics::histogram!(names::BATCH_STAGE_SECONDS, "stage" => stage).record(d.as_secs_f64());
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// librdkafka producer properties: ours first, then the user's pass-through ones. With
/// `transactional`, the producer gets the configured `transactional.id`.
pub fn producer_config(cfg: &Config, transactional: bool) -> ClientConfig {
    let k = &cfg.kafka;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers)
        .set("client.id", &k.client_id)
        // Idempotence keeps per-partition order through retries and avoids duplicates from them.
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", cfg.delivery.produce_timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", "1000000");
    if transactional {
        c.set("transactional.id", &cfg.delivery.transactional_id)
            .set("transaction.timeout.ms", cfg.delivery.transaction_timeout.as_millis().to_string());
    }
    for (key, value) in k.common.iter().chain(k.producer.iter()) {
        c.set(key, value);
    }
    c
}

pub type OutputProducer = ThreadedProducer<SinkContext>;

pub fn create_producer(
    cfg: &Config,
    shared: Arc<Shared>,
    transactional: bool,
) -> Result<OutputProducer, PipelineError> {
    let producer: OutputProducer = producer_config(cfg, transactional)
        .create_with_context(SinkContext { shared: shared.clone(), transactional })
        .map_err(|e| PipelineError::Kafka(format!("cannot create the producer (check kafka.* settings): {e}")))?;
    if transactional {
        init_transactions(&producer, cfg, &shared)?;
    }
    Ok(producer)
}

/// Registers the transactional.id with the broker and fences any earlier producer with the same
/// id (a zombie of this instance): its open transaction is aborted. An unreachable broker is
/// retried with backoff until the pipeline is stopped; any other failure ends start-up.
fn init_transactions(producer: &OutputProducer, cfg: &Config, shared: &Shared) -> Result<(), PipelineError> {
    let mut backoff = Duration::from_secs(1);
    loop {
        match producer.init_transactions(cfg.delivery.drain_timeout.min(cfg.delivery.transaction_timeout)) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(e)) if e.is_retriable() && !shared.stopping() => {
                warn!(error = %e, retry_in = ?backoff, "cannot initialise transactions yet (broker unreachable?); retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                return Err(PipelineError::Kafka(format!(
                    "delivery.mode = \"exactly_once\" needs a broker with transactions, but initialising transactional.id \
                     `{}` failed: {e}. Check that the brokers support transactions (and the ACLs allow the id), or use \
                     delivery.mode = \"at_least_once\"",
                    cfg.delivery.transactional_id
                )));
            }
        }
    }
}

/// Settings of the sink stage.
pub struct SinkParts {
    pub config: Arc<Config>,
    pub producer: Arc<OutputProducer>,
    pub shared: Arc<Shared>,
    pub from_inference: Receiver<Batch>,
    pub recycle: Sender<Batch>,
    /// Schema id in front of scored records.
    pub scored_schema_id: u32,
    /// exactly_once: transactions per batch.
    pub transactions: Option<TransactionSettings>,
    /// See [`max_record_bytes`].
    pub max_record_bytes: usize,
    /// Where shadow results go (the monitoring topic).
    pub shadow: ShadowOutput,
}

/// Where the sink produces shadow results: the monitoring topic, through a non-transactional
/// producer (best effort: a failed delivery is logged and counted, it never holds back offsets
/// and never fails the batch; in exactly_once mode a shadow result is outside the batch's
/// transaction, so an aborted batch can repeat it).
pub struct ShadowOutput {
    pub producer: Arc<OutputProducer>,
    pub topic: String,
    /// Schema id in front of `ShadowScore` records.
    pub schema_id: u32,
}

/// How the sink runs transactions (exactly_once).
pub struct TransactionSettings {
    /// Bound of each blocking transactional call (offsets, commit, abort): an unreachable
    /// coordinator must not hold the sink for the whole transaction timeout.
    pub timeout: Duration,
    /// Fault injection for tests: abort every n-th transaction (`STREAMSCORE_INJECT_ABORT_EVERY`).
    pub abort_every: u64,
}

/// Consecutive aborted transactions after which the sink gives up (something is persistently wrong).
const MAX_CONSECUTIVE_ABORTS: u32 = 5;

/// Starts the sink thread; it ends when inference closes its channel (or on a fatal error).
pub fn spawn(parts: SinkParts) -> Result<std::thread::JoinHandle<()>, PipelineError> {
    std::thread::Builder::new()
        .name("streamscore-sink".into())
        .spawn(move || run(parts))
        .map_err(|e| PipelineError::Internal(format!("cannot start the sink thread: {e}")))
}

/// The sink's output topics, each a handle on its producer taken once.
struct Outputs {
    scored: OutputTopic,
    dead_letter: OutputTopic,
    shadow: OutputTopic,
}

impl Outputs {
    fn new(parts: &SinkParts) -> Result<Self, PipelineError> {
        let kafka = &parts.config.kafka;
        Ok(Outputs {
            scored: OutputTopic::new(parts.producer.clone(), &kafka.scored_topic)?,
            dead_letter: OutputTopic::new(parts.producer.clone(), &kafka.dead_letter_topic)?,
            shadow: OutputTopic::new(parts.shadow.producer.clone(), &parts.shadow.topic)?,
        })
    }
}

fn run(parts: SinkParts) {
    let outputs = match Outputs::new(&parts) {
        Ok(o) => o,
        Err(e) => {
            error!(error = %e, "the sink cannot start");
            parts.shared.fail(e);
            return;
        }
    };
    let mut buf = Vec::with_capacity(256);
    let mut txn_state = TxnState::default();
    for mut batch in parts.from_inference.iter() {
        if parts.shared.abandon.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        batch.timing.sink_started = Some(Instant::now());
        let result = match &parts.transactions {
            Some(settings) => produce_transaction(&parts, &outputs, settings, &mut txn_state, &mut batch, &mut buf),
            None => {
                let stale = stale_partitions(&batch, &parts.shared);
                produce_batch(&parts, &outputs, &mut batch, &mut buf, &stale).map(|_| ())
            }
        };
        if let Err(e) = result {
            parts.shared.tracker.fail(batch.seq);
            parts.shared.fail(e);
            break;
        }
        batch.clear();
        // The source may have enough batches already; then this one is simply dropped.
        let _ = parts.recycle.try_send(batch);
    }
    info!("sink stopped");
}

#[derive(Default)]
struct TxnState {
    count: u64,
    consecutive_aborts: u32,
}

/// What to do about a failed transactional call.
enum TxnFailure {
    /// Abort the transaction, rewind the consumer, carry on.
    Abort(String),
    /// The producer is unusable (e.g. fenced by a newer instance with the same transactional.id).
    Fatal(String),
}

/// A fenced producer sometimes reports its first failure as abortable; the client's fatal-error
/// state is the authority, so it is checked too.
fn classify(producer: &OutputProducer, e: &KafkaError) -> TxnFailure {
    if let Some((code, reason)) = producer.client().fatal_error() {
        return TxnFailure::Fatal(format!("{e} (producer fatal error {code:?}: {reason})"));
    }
    match e {
        KafkaError::Transaction(err) if err.is_fatal() => TxnFailure::Fatal(e.to_string()),
        _ => TxnFailure::Abort(e.to_string()),
    }
}

/// exactly_once: the batch's records and its input offsets in one transaction.
fn produce_transaction(
    parts: &SinkParts,
    outputs: &Outputs,
    settings: &TransactionSettings,
    state: &mut TxnState,
    batch: &mut Batch,
    buf: &mut Vec<u8>,
) -> Result<(), PipelineError> {
    let stale = stale_partitions(batch, &parts.shared);
    // The input offsets this transaction commits: per partition, the last offset + 1.
    let mut offsets: Vec<(Arc<str>, i32, i64)> = Vec::new();
    for e in &batch.entries {
        let topic = batch.topic(e.topic);
        if stale.iter().any(|(t, p, ep)| *p == e.partition && *ep == e.epoch && same_topic(t, topic)) {
            continue;
        }
        match offsets.iter_mut().find(|(t, p, _)| *p == e.partition && same_topic(t, topic)) {
            Some((_, _, next)) => *next = (*next).max(e.offset + 1),
            None => offsets.push((topic.clone(), e.partition, e.offset + 1)),
        }
    }
    if offsets.is_empty() {
        // Every entry is stale (consumed before a rewind or a revoke): nothing to produce or commit.
        parts.shared.tracker.ack(batch.seq);
        batch.entries.clear();
        return Ok(());
    }
    let producer = &parts.producer;
    producer.begin_transaction().map_err(|e| PipelineError::Delivery(format!("cannot begin a transaction: {e}")))?;
    let ack = produce_batch(parts, outputs, batch, buf, &stale)?;
    let Some(ack) = ack else {
        // Nothing of this batch is ours any more: nothing to commit.
        return abort(parts, settings, state, "batch fully stale", false);
    };
    state.count += 1;
    if settings.abort_every > 0 && state.count % settings.abort_every == 0 {
        return abort(parts, settings, state, "fault injection (STREAMSCORE_INJECT_ABORT_EVERY)", true);
    }
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (topic, partition, next) in &offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
            .map_err(|e| PipelineError::Internal(format!("offset list: {e}")))?;
    }
    // Not held during the call (up to `settings.timeout`): the source replaces it on rebalances,
    // also while closing the consumer.
    let metadata = parts.shared.group_metadata.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let sent = match metadata {
        Some(m) => producer.send_offsets_to_transaction(&tpl, &m, settings.timeout),
        None => return Err(PipelineError::Kafka("no consumer group metadata for the transaction".into())),
    };
    if let Err(e) = sent {
        return match classify(&parts.producer, &e) {
            TxnFailure::Fatal(d) => Err(PipelineError::Delivery(format!("transaction failed fatally: {d}"))),
            TxnFailure::Abort(d) => abort(parts, settings, state, &d, true),
        };
    }
    let mut attempts = 0;
    loop {
        match producer.commit_transaction(settings.timeout) {
            Ok(()) => break,
            Err(KafkaError::Transaction(err)) if err.is_retriable() && attempts < 3 => {
                attempts += 1;
                warn!(error = %err, attempts, "transaction commit failed (retriable); retrying");
            }
            Err(e) => {
                return match classify(&parts.producer, &e) {
                    TxnFailure::Fatal(d) => Err(PipelineError::Delivery(format!(
                        "transaction commit failed fatally (fenced by a newer instance with the same transactional.id?): {d}"
                    ))),
                    TxnFailure::Abort(d) => abort(parts, settings, state, &d, true),
                };
            }
        }
    }
    state.consecutive_aborts = 0;
    metrics::counter!(names::TRANSACTIONS, "result" => "committed").increment(1);
    if let Ack::Batch(b) = &*ack {
        settle(b, &parts.shared);
    }
    parts.shared.tracker.ack(batch.seq);
    Ok(())
}

/// Aborts the open transaction; with `rewind`, the consumer goes back to the committed offsets
/// so the batch (and everything consumed after it) is processed again.
fn abort(
    parts: &SinkParts,
    settings: &TransactionSettings,
    state: &mut TxnState,
    why: &str,
    rewind: bool,
) -> Result<(), PipelineError> {
    if let Err(e) = parts.producer.abort_transaction(settings.timeout) {
        let fenced = parts
            .producer
            .client()
            .fatal_error()
            .map(|(c, r)| format!(" (producer fatal error {c:?}: {r})"))
            .unwrap_or_default();
        return Err(PipelineError::Delivery(format!("cannot abort a transaction ({why}): {e}{fenced}")));
    }
    if !rewind {
        return Ok(());
    }
    metrics::counter!(names::TRANSACTIONS, "result" => "aborted").increment(1);
    state.consecutive_aborts += 1;
    if state.consecutive_aborts > MAX_CONSECUTIVE_ABORTS {
        return Err(PipelineError::Delivery(format!(
            "{} transactions in a row aborted; last: {why}",
            state.consecutive_aborts
        )));
    }
    warn!(reason = why, "transaction aborted; rewinding the consumer to the committed offsets");
    parts.shared.request_rewind();
    Ok(())
}

/// Produces every outcome of `batch`, in order.
/// Returns the batch's acknowledgement, or None when nothing was produced (every entry stale).
fn produce_batch(
    parts: &SinkParts,
    outputs: &Outputs,
    batch: &mut Batch,
    buf: &mut Vec<u8>,
    stale: &[(Arc<str>, i32, u64)],
) -> Result<Option<Arc<Ack>>, PipelineError> {
    let is_stale = |e: &crate::batcher::Entry| {
        stale.iter().any(|(t, p, ep)| *p == e.partition && *ep == e.epoch && same_topic(t, e.topic.of(&batch.topics)))
    };
    let mut ack = BatchAck {
        seq: batch.seq,
        remaining: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        scored: 0,
        dead_lettered: [0; DeadLetterReason::ALL.len()],
        timestamps: Vec::with_capacity(batch.entries.len()),
        received: Vec::with_capacity(batch.entries.len()),
        inputs: batch.entries.len(),
        timing: batch.timing,
        produced: OnceLock::new(),
    };
    let mut dropped = 0u64;
    for (i, e) in batch.entries.iter().enumerate() {
        if is_stale(e) {
            dropped += 1;
            continue;
        }
        match &e.kind {
            EntryKind::Row { .. } => ack.scored += 1,
            EntryKind::Rejected { rejection, .. } => ack.dead_lettered[RunStats::reason_index(rejection.reason)] += 1,
        }
        ack.timestamps.extend(e.timestamp_ms);
        ack.received.extend(batch.received.get(i));
    }
    let to_send = batch.entries.len() - dropped as usize;
    ack.remaining = AtomicUsize::new(to_send);
    if dropped > 0 {
        metrics::counter!(names::REVOKED_DROPPED).increment(dropped);
        warn!(
            dropped,
            batch = batch.seq,
            "outcomes of revoked partitions dropped; their new owner re-processes the inputs"
        );
    }
    if to_send == 0 {
        // Nothing of this batch is ours any more (its partitions were forgotten; the ack is a no-op for them).
        parts.shared.tracker.ack(batch.seq);
        batch.entries.clear();
        return Ok(None);
    }
    let ack = Arc::new(Ack::Batch(ack));
    let scored_at = now_ms();
    let shadow_ack = batch.shadow.is_some().then(|| Arc::new(Ack::Shadow));
    let (mut shadow_sent, mut shadow_failed) = (0u64, 0u64);
    // Scored records without headers leave in runs (`rd_kafka_produce_batch` calls, one per
    // output partition), their values encoded one after another into `buf`; a record with
    // headers leaves alone, after the run so far (`sink::topic::RecordRun`).
    buf.clear();
    let mut run = RecordRun::with_capacity(to_send);
    for entry in batch.entries.drain(..) {
        if is_stale(&entry) {
            continue;
        }
        let opaque = ack.clone();
        let key = entry.key.map(|k| k.of(&batch.keys));
        match entry.kind {
            EntryKind::Row { row, identity } => {
                // The version that scored this very row (a canary serves some rows of a batch).
                let Some(model) = batch.row_version.get(row).and_then(|v| batch.versions.get(usize::from(*v))) else {
                    return Err(PipelineError::Internal("a batch with rows reached the sink without a model".into()));
                };
                if entry.headers.is_some() || buf.len() >= RUN_BYTES {
                    outputs.scored.send_run(&mut run, buf)?;
                    buf.clear();
                }
                let start = buf.len();
                let score = batch.scores[row];
                let payload = encode_scored(
                    buf,
                    parts.scored_schema_id,
                    &ScoredRecord {
                        event_id: batch.ids.get(identity.event_id),
                        transaction_id: batch.ids.get(identity.transaction_id),
                        model_name: &model.name,
                        model_version: &model.version,
                        score,
                        label: score >= model.threshold,
                        threshold: model.threshold,
                        cache_hit: batch.cache_hits[row],
                        source_topic: entry.topic.of(&batch.topics),
                        source_partition: entry.partition,
                        source_offset: entry.offset,
                        event_time_ms: identity.event_time_ms,
                        scored_at_ms: scored_at,
                    },
                );
                match entry.headers.as_ref() {
                    None => {
                        let end = start + payload.len();
                        run.push(key.into(), RunBytes::InBuffer(start..end), opaque);
                    }
                    Some(headers) => outputs.scored.send(
                        OutgoingRecord {
                            key,
                            payload: Some(payload),
                            headers: Some(headers),
                            timestamp_ms: Some(scored_at),
                        },
                        opaque,
                    )?,
                }
                if let (Some(challenger), Some(shadow_ack)) = (batch.shadow.as_deref(), &shadow_ack) {
                    // Appended after the run's values (which it leaves as they are) and sent at once.
                    let challenger_score = batch.shadow_scores[row];
                    let payload = encode_shadow(
                        buf,
                        parts.shadow.schema_id,
                        &ShadowRecord {
                            event_id: batch.ids.get(identity.event_id),
                            transaction_id: batch.ids.get(identity.transaction_id),
                            source_topic: entry.topic.of(&batch.topics),
                            source_partition: entry.partition,
                            source_offset: entry.offset,
                            model_name: &model.name,
                            champion_version: &model.version,
                            champion_score: score,
                            champion_label: score >= model.threshold,
                            challenger_name: &challenger.name,
                            challenger_version: &challenger.version,
                            challenger_score,
                            challenger_label: challenger_score >= challenger.threshold,
                            challenger_threshold: challenger.threshold,
                            scored_at_ms: scored_at,
                        },
                    );
                    let record =
                        OutgoingRecord { key, payload: Some(payload), headers: None, timestamp_ms: Some(scored_at) };
                    match outputs.shadow.send(record, shadow_ack.clone()) {
                        Ok(()) => shadow_sent += 1,
                        Err(e) => {
                            shadow_failed += 1;
                            if shadow_failed == 1 {
                                warn!(error = %e, batch = batch.seq, "shadow result not enqueued (best effort: dropped)");
                            }
                        }
                    }
                }
            }
            EntryKind::Rejected { rejection, payload } => {
                let partition = entry.partition.to_string();
                let offset = entry.offset.to_string();
                let mut headers = entry
                    .headers
                    .unwrap_or_else(OwnedHeaders::new)
                    .insert(Header { key: dlq_headers::REASON, value: Some(rejection.reason.as_str()) })
                    .insert(Header { key: dlq_headers::DETAIL, value: Some(rejection.detail.as_str()) })
                    .insert(Header { key: dlq_headers::SOURCE_TOPIC, value: Some(&**entry.topic.of(&batch.topics)) })
                    .insert(Header { key: dlq_headers::SOURCE_PARTITION, value: Some(partition.as_str()) })
                    .insert(Header { key: dlq_headers::SOURCE_OFFSET, value: Some(offset.as_str()) });
                // An input close to the size limit no longer fits once the dead-letter headers
                // are added; refusing it would stop the service on every restart (a poison
                // pill). Its bytes are cut to fit and the cut is said in headers.
                let mut body = payload.as_deref();
                let room = parts.max_record_bytes.saturating_sub(DLQ_HEADROOM + key.map_or(0, <[u8]>::len));
                if let Some(p) = body.filter(|p| p.len() > room) {
                    let original = p.len().to_string();
                    headers = headers
                        .insert(Header { key: dlq_headers::TRUNCATED, value: Some("true") })
                        .insert(Header { key: dlq_headers::ORIGINAL_SIZE, value: Some(original.as_str()) });
                    body = Some(&p[..room]);
                }
                outputs.dead_letter.send(
                    OutgoingRecord { key, payload: body, headers: Some(&headers), timestamp_ms: Some(scored_at) },
                    opaque,
                )?;
            }
        }
    }
    outputs.scored.send_run(&mut run, buf)?;
    if buf.capacity() > 4 * RUN_BYTES {
        // A batch of very large records: do not keep its high-water mark.
        buf.clear();
        buf.shrink_to(RUN_BYTES);
    }
    if let Ack::Batch(b) = &*ack {
        let _ = b.produced.set(Instant::now());
    }
    if let Some(challenger) = batch.shadow.as_deref() {
        metrics::counter!(deploy::SHADOW_RECORDS, "model" => challenger.name.clone(), "version" => challenger.version.clone())
            .increment(shadow_sent);
        if shadow_failed > 0 {
            metrics::counter!(deploy::SHADOW_DELIVERY_FAILURES).increment(shadow_failed);
        }
    }
    Ok(Some(ack))
}

/// Partitions (with the epoch the batch saw) that this instance no longer owns under that epoch:
/// revoked after a drain that timed out, or revoked and assigned again. One lock per batch.
fn stale_partitions(batch: &Batch, shared: &Shared) -> Vec<(Arc<str>, i32, u64)> {
    // The batch's distinct (topic, partition, epoch): a topic id names one topic within a batch,
    // and entries come in runs of one partition, so most are the previous entry's.
    let mut seen: Vec<(TopicId, i32, u64)> = Vec::new();
    for e in &batch.entries {
        let key = (e.topic, e.partition, e.epoch);
        if seen.last() != Some(&key) && !seen.contains(&key) {
            seen.push(key);
        }
    }
    let tps: Vec<_> = seen.iter().map(|&(t, p, _)| (batch.topic(t).clone(), p)).collect();
    let current = shared.tracker.epochs(&tps);
    seen.into_iter()
        .zip(current)
        .filter(|((_, _, ep), cur)| *cur != Some(*ep))
        .map(|((t, p, ep), _)| (batch.topic(t).clone(), p, ep))
        .collect()
}

/// Flushes the producer at shutdown (bounded).
pub fn flush(producer: &OutputProducer, timeout: Duration) {
    if let Err(e) = producer.flush(timeout) {
        warn!(error = %e, "producer flush did not complete; unacknowledged outcomes are not committed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::Entry;
    use crate::outcome::Rejection;
    use crate::telemetry::RunStats;
    use std::collections::HashMap;

    /// Partitions revoked since the batch was consumed, or assigned again (a new epoch), are
    /// stale; each stale (topic, partition, epoch) is named once, whatever the order of entries
    /// (runs of one partition, interleaved partitions and topics, a partition under two epochs).
    #[test]
    fn stale_partitions_are_the_ones_not_owned_under_the_batch_epoch() {
        let shared = Shared::new(Arc::new(RunStats::default()), None);
        let (payments, refunds) = (Arc::<str>::from("payments"), Arc::<str>::from("refunds"));
        let epochs: HashMap<(&str, i32), u64> = shared
            .tracker
            .assign(&[(payments.clone(), 0), (payments.clone(), 1), (refunds.clone(), 0), (refunds.clone(), 3)])
            .into_iter()
            .map(|((t, p), e)| ((if &*t == "payments" { "payments" } else { "refunds" }, p), e))
            .collect();
        let mut batch = Batch::new(1, 16);
        let mut push = |topic: &Arc<str>, partition: i32, epoch: u64| {
            let topic = batch.topic_id(topic);
            let entry = Entry {
                topic,
                partition,
                offset: 0,
                epoch,
                key: None,
                headers: None,
                timestamp_ms: None,
                kind: EntryKind::Rejected {
                    rejection: Rejection::new(DeadLetterReason::Truncated, "x"),
                    payload: None,
                },
            };
            batch.push_entry(entry, Instant::now());
        };
        let current = |t: &str, p: i32| epochs[&(t, p)];
        // payments/1 is assigned again: its first epoch is over.
        let old = current("payments", 1);
        let new = shared.tracker.assign(&[(payments.clone(), 1)])[0].1;
        assert_ne!(old, new);
        // payments/0 and refunds/0 current; payments/1 under its old epoch, then its new one;
        // refunds/3 current at first, then revoked; refunds/7 never owned.
        for _ in 0..3 {
            push(&payments, 0, current("payments", 0));
        }
        push(&refunds, 0, current("refunds", 0));
        push(&payments, 1, old);
        push(&payments, 0, current("payments", 0));
        push(&payments, 1, old);
        push(&refunds, 3, current("refunds", 3));
        push(&refunds, 7, 1);
        push(&payments, 1, new);
        push(&refunds, 7, 1);
        assert_eq!(stale_partitions(&batch, &shared), vec![(payments.clone(), 1, old), (refunds.clone(), 7, 1)]);
        shared.tracker.forget(&[(refunds.clone(), 3)]);
        let stale = stale_partitions(&batch, &shared);
        assert_eq!(stale.len(), 3, "{stale:?}");
        assert!(stale.contains(&(refunds.clone(), 3, current("refunds", 3))), "{stale:?}");
    }
}
