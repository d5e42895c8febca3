//! Reading the whole monitoring topic once: an assigned (not subscribed) consumer from the
//! beginning of every partition, until every partition reached its high watermark and then
//! nothing arrived for an idle grace, or until the overall timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::records::RawRecord;
use super::ReportError;
use crate::config::Config;
use crate::source;

/// How long one metadata or watermark request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll waits before the loop re-checks its conditions.
const POLL: Duration = Duration::from_millis(100);

/// The consumer's settings: the service's connection settings (TLS/SASL included), no group
/// membership, no commits (see [`source::assigned_consumer_config`]).
pub fn consumer_config(cfg: &Config) -> ClientConfig {
    source::assigned_consumer_config(cfg, "report", "earliest")
}

/// What a read returned.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub records: Vec<RawRecord>,
    pub partitions: usize,
    /// Every partition reached its end (false: the overall timeout cut the read).
    pub complete: bool,
}

/// Reads `topic` from the beginning (blocking; run it off the async reactor).
///
/// The stop condition does not trust the high watermark to be exact: Tansu answers the base
/// offset of the last record batch + 1, so reaching it only proves the last batch started
/// arriving. The read goes on until nothing more arrives for `idle_grace`.
pub fn read_topic(
    config: ClientConfig,
    topic: &str,
    timeout: Duration,
    idle_grace: Duration,
) -> Result<ReadOutcome, ReportError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let consumer: BaseConsumer =
        config.create().map_err(|source| ReportError::Kafka { what: "creating the consumer".into(), source })?;
    let request_timeout = REQUEST_TIMEOUT.min(timeout);
    let metadata = consumer
        .fetch_metadata(Some(topic), request_timeout)
        .map_err(|source| ReportError::Kafka { what: format!("fetching metadata of topic {topic}"), source })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(ReportError::NoTopic { topic: topic.to_string() });
    }
    // The offset each partition must reach (exclusive); empty partitions are done already.
    let mut targets: HashMap<i32, i64> = HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, request_timeout)
            .map_err(|source| ReportError::Kafka { what: format!("fetching the watermarks of {topic}/{p}"), source })?;
        if high > low {
            targets.insert(p, high);
        }
    }
    {
        // Built and dropped before the consumer: a partition list outliving its consumer can hang
        // librdkafka's destroy.
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|source| ReportError::Kafka { what: format!("assigning {topic}/{p}"), source })?;
        }
        consumer
            .assign(&assignment)
            .map_err(|source| ReportError::Kafka { what: format!("assigning {topic}"), source })?;
    }

    let mut out = ReadOutcome { partitions: partitions.len(), ..ReadOutcome::default() };
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut last_activity = Instant::now();
    let mut last_error = None;
    loop {
        match consumer.poll(POLL) {
            Some(Ok(m)) => {
                last_activity = Instant::now();
                next.insert(m.partition(), m.offset() + 1);
                out.records.push(RawRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().map(<[u8]>::to_vec),
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, topic, "error while reading the monitoring topic");
                last_error = Some(e);
            }
            None => {}
        }
        let reached = targets.iter().all(|(p, high)| next.get(p).is_some_and(|n| n >= high));
        if reached && last_activity.elapsed() >= idle_grace {
            out.complete = true;
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    if !out.complete && out.records.is_empty() {
        if let Some(source) = last_error {
            return Err(ReportError::Kafka { what: format!("reading {topic}"), source });
        }
    }
    Ok(out)
}
