//! `streamscore demo`: the whole pipeline with zero infrastructure.
//!
//! librdkafka's in-process mock cluster stands in for Kafka; synthetic transactions (including
//! fraud-pattern ones, malformed ones and exact repeats that hit the cache) are published to it,
//! and the real pipeline — the same `pipeline::run` as production — scores them. The demo ends
//! when every input has its outcome and prints a summary. It reads the output topics back to
//! show the contract held: one outcome per input.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Message};

use crate::codec;
use crate::config::{Config, RawConfig};
use crate::pipeline::{self, RunSummary};
use crate::synth::{encode_transaction, malformed_payload, Generator, Malformed};
use crate::telemetry::RunStats;

/// What to publish.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    pub events: u64,
    /// Every n-th event is malformed (0 = none).
    pub malformed_every: u64,
    /// Share of events that repeat an earlier event's fields (new event id): cache hits.
    pub repeat_share: f64,
    pub seed: u64,
    pub schema_id: u32,
    /// Events per second; 0 = as fast as possible.
    pub rate: f64,
    /// Also publish a ground-truth label per valid transaction (docs/quality.md).
    pub labels: Option<LabelTraffic>,
}

/// Labels for the synthetic transactions: the generator's own fraud draw, published `delay`
/// after the transaction (as chargebacks come later), framed with `schema_id`.
#[derive(Debug, Clone)]
pub struct LabelTraffic {
    pub topic: String,
    pub delay: Duration,
    pub schema_id: u32,
}

/// What was published.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub total: u64,
    pub malformed: u64,
    pub repeats: u64,
    /// Inputs drawn as fraud by the generator's known pattern.
    pub fraud: u64,
    /// Labels published (with [`TrafficOptions::labels`]).
    pub labels: u64,
}

/// With a rate, records run at most this far ahead of their schedule before the publisher sleeps.
const RATE_SLEEP_QUANTUM: Duration = Duration::from_millis(1);

/// Publishes synthetic transactions (Confluent framing, key = account id) to `topic`, calling
/// `progress` now and then. Used by the demo and `streamscore produce`.
pub fn publish_synthetic<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    opts: &TrafficOptions,
    mut progress: impl FnMut(u64),
) -> Result<Published, rdkafka::error::KafkaError> {
    let now = crate::sink::now_ms();
    let mut gen = Generator::new(opts.seed, now);
    let mut rng_state = opts.seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut recent: Vec<crate::synth::Transaction> = Vec::with_capacity(1024);
    let mut out = Published::default();
    let mut buf = Vec::with_capacity(512);
    let malformed_kinds = [
        Malformed::RandomBytes,
        Malformed::BadMagic,
        Malformed::UnknownSchemaId,
        Malformed::TruncatedBody,
        Malformed::NanAmount,
    ];
    let started = Instant::now();
    // Labels not yet due: (due, event id, fraud), in due order (the delay is constant).
    let mut due_labels: std::collections::VecDeque<(Instant, String, bool)> = std::collections::VecDeque::new();
    let mut label_buf = Vec::with_capacity(64);
    for i in 0..opts.events {
        // splitmix64: a tiny deterministic stream for the repeat decision.
        rng_state = rng_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let u = (z ^ (z >> 31)) as f64 / u64::MAX as f64;

        let key: Vec<u8>;
        buf.clear();
        if opts.malformed_every > 0 && (i + 1) % opts.malformed_every == 0 {
            let kind = malformed_kinds[(out.malformed as usize) % malformed_kinds.len()];
            buf = malformed_payload(kind, opts.schema_id, opts.seed.wrapping_add(i));
            key = format!("malformed-{i}").into_bytes();
            out.malformed += 1;
        } else {
            let tx = if !recent.is_empty() && u < opts.repeat_share {
                out.repeats += 1;
                let mut tx = recent[(z as usize) % recent.len()].clone();
                tx.event_id = gen.next_transaction().event_id; // same features, new event
                tx
            } else {
                let tx = gen.next_transaction();
                // The pool repeats are drawn from; without repeats, no clone per record.
                if opts.repeat_share > 0.0 {
                    if recent.len() < 1024 {
                        recent.push(tx.clone());
                    } else {
                        let slot = (z as usize) % recent.len();
                        recent[slot] = tx.clone();
                    }
                }
                tx
            };
            let fraud = gen.is_fraud(&tx);
            out.fraud += u64::from(fraud);
            if let Some(l) = &opts.labels {
                due_labels.push_back((Instant::now() + l.delay, tx.event_id.clone(), fraud));
            }
            codec::write_frame_header(&mut buf, opts.schema_id);
            encode_transaction(&tx, &mut buf);
            key = tx.account_id.into_bytes();
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).key(&key[..]).payload(&buf[..]);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e),
            }
        }
        out.total += 1;
        if let Some(l) = &opts.labels {
            let now = Instant::now();
            while due_labels.front().is_some_and(|(due, _, _)| *due <= now) {
                if let Some((_, id, fraud)) = due_labels.pop_front() {
                    send_label(producer, l, &id, fraud, &mut label_buf)?;
                    out.labels += 1;
                }
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
            progress(out.total);
        }
        if opts.rate > 0.0 {
            // Sleep only once a millisecond's worth of records is ahead of the schedule: one
            // sleep per record (tens of µs apart) cost more CPU than making the records, on the
            // cores the benchmark's latency run shares with the pipeline it measures.
            let due = started + Duration::from_secs_f64(out.total as f64 / opts.rate);
            let now = Instant::now();
            if due > now + RATE_SLEEP_QUANTUM {
                std::thread::sleep(due - now);
            }
        }
    }
    if let Some(l) = &opts.labels {
        for (due, id, fraud) in due_labels {
            let now = Instant::now();
            if due > now {
                producer.poll(due - now);
            }
            send_label(producer, l, &id, fraud, &mut label_buf)?;
            out.labels += 1;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    progress(out.total);
    Ok(out)
}

/// The producer of `streamscore produce`: a `BaseProducer` whose context notes, from librdkafka's
/// statistics, when its idempotent producer holds a producer id.
pub type Publisher = BaseProducer<PublisherContext>;

/// See [`Publisher`]; deliveries are not reported, as with rdkafka's default context.
#[derive(Default)]
pub struct PublisherContext {
    producer_id_assigned: AtomicBool,
}

impl PublisherContext {
    /// Whether librdkafka's latest statistics reported the idempotent producer's id as assigned.
    pub fn producer_id_assigned(&self) -> bool {
        self.producer_id_assigned.load(Ordering::Relaxed)
    }
}

impl ClientContext for PublisherContext {
    fn stats(&self, statistics: Statistics) {
        if statistics.eos.is_some_and(|eos| eos.idemp_state == "Assigned") {
            self.producer_id_assigned.store(true, Ordering::Relaxed);
        }
    }
}

impl ProducerContext for PublisherContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// How often the publisher's statistics (and so its readiness) are refreshed.
const PUBLISHER_STATISTICS_INTERVAL: Duration = Duration::from_millis(50);

/// Why [`ready_publisher`] returned no publisher.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("cannot create the producer: {0}")]
    Create(#[from] rdkafka::error::KafkaError),
    #[error(
        "the idempotent producer got no producer id from {bootstrap} within {timeout:?}: check that \
         the broker is reachable there and allows InitProducerId (or publish with \
         -X enable.idempotence=false)"
    )]
    NotReady { bootstrap: String, timeout: Duration },
}

/// Creates the publisher for `config` and, when it is idempotent, waits until it holds its
/// producer id (read from its statistics: this sets `statistics.interval.ms`).
///
/// An idempotent librdkafka producer asks for its id only once a broker connection is up and
/// retries on a 500 ms timer; until it has one, every record it is handed waits. A generator
/// that starts its clock before that stamps the first half second of records with times they
/// were not sent at: at 190 000 events/s that held ~95 000 records for up to 0.5 s, which the
/// benchmark's latency run then counted as end-to-end latency of the pipeline under test.
pub fn ready_publisher(mut config: ClientConfig, timeout: Duration) -> Result<Publisher, PublisherError> {
    // librdkafka's booleans: "true", "t" or "1" in any case.
    let idempotent =
        config.get("enable.idempotence").is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "t" | "1"));
    if idempotent {
        config.set("statistics.interval.ms", PUBLISHER_STATISTICS_INTERVAL.as_millis().to_string());
    }
    let producer: Publisher = config.create_with_context(PublisherContext::default())?;
    if !idempotent {
        return Ok(producer);
    }
    let deadline = Instant::now() + timeout;
    while !producer.context().producer_id_assigned() {
        if Instant::now() >= deadline {
            let bootstrap = config.get("bootstrap.servers").unwrap_or_default().to_owned();
            return Err(PublisherError::NotReady { bootstrap, timeout });
        }
        producer.poll(PUBLISHER_STATISTICS_INTERVAL / 2);
    }
    Ok(producer)
}

/// Publishes one `Label` record (schemas/label.avsc) keyed by the event id.
fn send_label<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    l: &LabelTraffic,
    event_id: &str,
    fraud: bool,
    buf: &mut Vec<u8>,
) -> Result<(), rdkafka::error::KafkaError> {
    buf.clear();
    codec::write_frame_header(buf, l.schema_id);
    crate::synth::encode_label(event_id, fraud, Some(crate::sink::now_ms()), buf);
    let mut record = BaseRecord::<[u8], [u8]>::to(&l.topic).key(event_id.as_bytes()).payload(&buf[..]);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: u64,
    pub seed: u64,
    pub partitions: i32,
}

const INPUT: &str = "transactions";
const SCORED: &str = "transactions.scored";
const DLQ: &str = "transactions.dlq";
const MONITORING: &str = "streamscore.monitoring";
const LABELS: &str = "transactions.labels";

/// Events per partition of the in-process mock cluster, at most. librdkafka's mock keeps only the
/// last 5 MiB (and 100 000 message sets) of each partition and silently drops older ones, so a
/// demo publishing everything before it consumes would lose the oldest inputs (300 000 events on
/// 3 partitions stalled at ~103 000 outcomes). 20 000 events of ~200 bytes stay well inside it.
pub const MOCK_EVENTS_PER_PARTITION: u64 = 20_000;

/// Partitions for `events` on the mock cluster: `asked`, or more when the mock would drop data.
pub fn mock_partitions(events: u64, asked: i32) -> i32 {
    let needed = events.div_ceil(MOCK_EVENTS_PER_PARTITION).min(i32::MAX as u64) as i32;
    asked.max(needed).max(1)
}

/// Runs the demo, writing progress and the summary to `out`.
pub async fn run(
    opts: DemoOptions,
    mut config_overrides: impl FnMut(&mut RawConfig),
    out: &mut (impl Write + Send),
) -> anyhow::Result<RunSummary> {
    use anyhow::Context as _;
    // A client configured with test.mock.num.brokers owns an in-process cluster; it must outlive the run.
    let cluster_owner: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "1")
        .create()
        .context("cannot start librdkafka's mock cluster")?;
    let cluster = cluster_owner.client().mock_cluster().context("the mock cluster did not start")?;
    // SAFETY: the cluster handle belongs to `cluster_owner`, which is alive for this whole call.
    // Without this, the mock's first group join waits its default 3 s rebalance delay.
    unsafe {
        rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(
            rdkafka::bindings::rd_kafka_handle_mock_cluster(cluster_owner.client().native_ptr()),
            0,
        );
    }
    let partitions = mock_partitions(opts.events, opts.partitions);
    if partitions > opts.partitions {
        writeln!(
            out,
            "note: {} events need {partitions} partitions on the mock cluster (it keeps only the last 5 MiB of \
             each partition; {MOCK_EVENTS_PER_PARTITION} events per partition at most): using {partitions}, not {}",
            opts.events, opts.partitions
        )?;
    }
    // Dead letters are ~1% of the events and the monitoring topic holds a few reports: one partition.
    for (topic, partitions) in
        [(INPUT, partitions), (SCORED, partitions), (DLQ, 1), (MONITORING, 1), (LABELS, partitions)]
    {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("cannot create topic {topic} on the mock cluster"))?;
    }
    let bootstrap = cluster.bootstrap_servers();

    writeln!(out, "streamscore demo: in-process Kafka mock cluster at {bootstrap}")?;
    let publisher: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .context("cannot create the demo publisher")?;
    let traffic = TrafficOptions {
        events: opts.events,
        malformed_every: 97,
        repeat_share: 0.2,
        seed: opts.seed,
        schema_id: 1,
        rate: 0.0,
        // The ground truth of every valid transaction, at once (a real label comes much later):
        // they wait for their predictions (quality.label_grace) and are joined as they come.
        labels: Some(LabelTraffic { topic: LABELS.into(), delay: Duration::ZERO, schema_id: 7 }),
    };
    let published = tokio::task::spawn_blocking(move || publish_synthetic(&publisher, INPUT, &traffic, |_| {}))
        .await
        .context("publisher panicked")?
        .context("publishing synthetic transactions failed")?;
    writeln!(
        out,
        "published {} transactions to `{INPUT}`: {} malformed, {} repeats of earlier feature vectors, {} drawn as fraud by the known pattern",
        published.total, published.malformed, published.repeats, published.fraud
    )?;
    writeln!(out, "published {} ground-truth labels to `{LABELS}` (live quality, docs/quality.md)", published.labels)?;

    let mut raw = RawConfig::default();
    raw.kafka.bootstrap_servers = bootstrap.clone();
    raw.kafka.group_id = "streamscore-demo".into();
    raw.kafka.input_topics = vec![INPUT.into()];
    raw.kafka.scored_topic = SCORED.into();
    raw.kafka.dead_letter_topic = DLQ.into();
    raw.kafka.monitoring_topic = MONITORING.into();
    raw.kafka.consumer.insert("session.timeout.ms".into(), "6000".into());
    raw.kafka.consumer.insert("heartbeat.interval.ms".into(), "1000".into());
    raw.telemetry.http_bind = String::new();
    raw.telemetry.instance_id = "demo".into();
    raw.drift.interval = "1h".into(); // one report: the final window at shutdown
    raw.quality.enabled = true;
    raw.quality.labels_topic = LABELS.into();
    raw.quality.start_offset = "earliest".into();
    raw.quality.interval = "1h".into();
    raw.quality.label_grace = "10m".into();
    raw.quality.max_waiting_labels = published.labels.max(1000);
    config_overrides(&mut raw);
    let config: Config = raw.check().context("demo configuration")?;
    let requested_provider = config.model.execution_provider.as_str();

    let stats = Arc::new(RunStats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(pipeline::run_with_stats(config, stats.clone(), async move {
        let _ = stop_rx.await;
    }));
    let started = Instant::now();
    let mut last_print = Instant::now();
    let deadline = started + Duration::from_secs(120 + published.total / 2000);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if run.is_finished() {
            break;
        }
        let done = stats.outcomes();
        if last_print.elapsed() >= Duration::from_millis(500) || done >= published.total {
            writeln!(out, "  outcomes {done:>8} / {} ({:.1} s)", published.total, started.elapsed().as_secs_f64())?;
            last_print = Instant::now();
        }
        if done >= published.total || Instant::now() > deadline {
            break;
        }
    }
    let scoring_time = started.elapsed();
    let _ = stop_tx.send(());
    let summary = run.await.context("pipeline task panicked")??;

    let scored_records = count_records(&bootstrap, SCORED).context("reading back the scored topic")?;
    let dlq_records = count_records(&bootstrap, DLQ).context("reading back the dead-letter topic")?;
    drop(cluster);

    let dl_total: u64 = summary.dead_lettered.iter().map(|(_, n)| n).sum();
    let lookups = summary.cache_hits + summary.cache_misses;
    writeln!(out, "\n── summary ─────────────────────────────────────────────")?;
    writeln!(out, "model                {} v{}", summary.model_name, summary.model_version)?;
    writeln!(
        out,
        "execution provider   {} (requested {requested_provider}; micro-batches of up to {} rows)",
        summary.execution_provider, summary.max_batch_size
    )?;
    writeln!(out, "consumed             {}", summary.consumed)?;
    writeln!(out, "scored               {}   (records on `{SCORED}`: {})", summary.scored, scored_records.total)?;
    writeln!(
        out,
        "  flagged as fraud   {}   (known-pattern fraud drawn: {})",
        scored_records.flagged, published.fraud
    )?;
    writeln!(out, "dead-lettered        {dl_total}   (records on `{DLQ}`: {})", dlq_records.total)?;
    for (reason, n) in &summary.dead_lettered {
        writeln!(out, "  {:<18} {n}", reason.as_str())?;
    }
    writeln!(
        out,
        "cache hit rate       {:.1}%  ({} hits / {} lookups)",
        if lookups > 0 { 100.0 * summary.cache_hits as f64 / lookups as f64 } else { 0.0 },
        summary.cache_hits,
        lookups
    )?;
    writeln!(
        out,
        "micro-batches        {}   (mean {:.0} inputs each)",
        summary.batches,
        summary.consumed as f64 / summary.batches.max(1) as f64
    )?;
    writeln!(
        out,
        "throughput           {:.0} events/s (from pipeline start, group join included)",
        summary.consumed as f64 / scoring_time.as_secs_f64()
    )?;
    let ms = |v: Option<f64>| v.map(|s| format!("{:.1} ms", s * 1000.0)).unwrap_or_else(|| "n/a".into());
    writeln!(
        out,
        "latency p50 / p99    {} / {}   (Kafka timestamp → outcome acknowledged; includes the backlog wait)",
        ms(summary.latency_p50),
        ms(summary.latency_p99)
    )?;
    for q in &summary.quality {
        let c = &q.counts;
        let pct = |v: Option<f64>| v.map(|x| format!("{:.1}%", 100.0 * x)).unwrap_or_else(|| "n/a".into());
        writeln!(
            out,
            "live quality v{:<6}  precision {} · recall {} · ECE {:.3} · Brier {:.4}   ({} labels joined)",
            q.model_version,
            pct(c.precision()),
            pct(c.recall()),
            c.expected_calibration_error(),
            c.brier_score(),
            c.labels
        )?;
    }
    writeln!(out, "highest drift (PSI vs training reference):")?;
    for (name, psi) in &summary.top_drift {
        writeln!(out, "  {name:<32} {psi:.4}")?;
    }
    let complete = scored_records.total + dlq_records.total == published.total && summary.consumed == published.total;
    writeln!(out, "one outcome per input: {}", if complete { "yes" } else { "NO — see the counts above" })?;
    if !complete {
        anyhow::bail!("the demo did not see one outcome per input");
    }
    Ok(summary)
}

struct TopicCount {
    total: u64,
    flagged: u64,
}

/// Counts a topic's records from its watermarks, and reads scored records back for their labels.
fn count_records(bootstrap: &str, topic: &str) -> anyhow::Result<TopicCount> {
    use anyhow::Context as _;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("streamscore-demo-reader-{topic}"))
        .set("enable.auto.commit", "false")
        .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .context("topic missing from metadata")?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut total = 0u64;
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        total += (high - low).max(0) as u64;
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)?;
    }
    let mut count = TopicCount { total, flagged: 0 };
    if topic != SCORED {
        return Ok(count);
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let scored_schema = codec::parse_schema(codec::SCORED_TRANSACTION_SCHEMA)?;
    let mut read = 0u64;
    let give_up = Instant::now() + Duration::from_secs(60);
    while read < total && Instant::now() < give_up {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            read += 1;
            if m.payload().and_then(|p| scored_label(p, &scored_schema)) == Some(true) {
                count.flagged += 1;
            }
        }
    }
    Ok(count)
}

/// The `label` field of a framed ScoredTransaction.
fn scored_label(payload: &[u8], schema: &apache_avro::Schema) -> Option<bool> {
    let (_, mut body) = codec::split_frame(payload).ok()?;
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema).build().ok()?;
    match reader.read_value(&mut body).ok()? {
        apache_avro::types::Value::Record(fields) => {
            fields.into_iter().find_map(|(name, v)| match (name.as_str(), v) {
                ("label", apache_avro::types::Value::Boolean(b)) => Some(b),
                _ => None,
            })
        }
        _ => None,
    }
}

pub use TrafficOptions as ProduceOptions;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_partitions_keep_every_partition_inside_the_mocks_retention() {
        assert_eq!(mock_partitions(20_000, 3), 3, "the asked count when it is enough");
        assert_eq!(mock_partitions(60_000, 3), 3);
        assert_eq!(mock_partitions(60_001, 3), 4);
        assert_eq!(mock_partitions(300_000, 3), 15);
        assert_eq!(mock_partitions(300_000, 32), 32, "more than needed is kept");
        assert_eq!(mock_partitions(0, 0), 1);
        assert_eq!(mock_partitions(u64::MAX, 1), i32::MAX);
        for events in [1, 19_999, 20_000, 20_001, 123_457, 1_000_000] {
            let p = mock_partitions(events, 1) as u64;
            assert!(events.div_ceil(p) <= MOCK_EVENTS_PER_PARTITION, "{events} events on {p} partitions");
        }
    }
}
