//! The labels topic reader: one thread, one consumer outside any consumer group.
//!
//! Every instance must see every label (a label's partition has nothing to do with which
//! instance scored its event), so the reader assigns itself all partitions of
//! `quality.labels_topic` instead of joining a group, commits nothing, and starts at
//! `quality.start_offset`. Partitions added to the topic later are picked up (from their
//! beginning) by a metadata check every [`METADATA_EVERY`]. A topic that does not exist yet is
//! waited for, with a warning, and never stops the service: quality is an observer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::{Label, QualityTracker};
use crate::codec::Decoder;
use crate::config::{Config, LabelStart};
use crate::sink::now_ms;
use crate::source;
use crate::telemetry::names;

/// How often the topic's partitions are checked again.
const METADATA_EVERY: Duration = Duration::from_secs(30);
/// How long one poll waits (and so how fast a stop request is seen).
const POLL: Duration = Duration::from_millis(100);
/// At most one warning per this interval about undecodable labels (each is counted).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Why the reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("cannot create the labels consumer (check kafka.* settings): {0}")]
    Consumer(String),
    #[error("cannot start the labels reader thread: {0}")]
    Thread(String),
}

/// librdkafka properties of the labels consumer (see [`source::assigned_consumer_config`]).
pub fn labels_consumer_config(cfg: &Config) -> ClientConfig {
    let reset = match cfg.quality.start_offset {
        LabelStart::Latest => "latest",
        LabelStart::Earliest => "earliest",
    };
    source::assigned_consumer_config(cfg, "labels", reset)
}

/// Starts the reader thread; it stops when `stop` is set.
pub fn spawn(
    cfg: &Config,
    decoder: Decoder,
    tracker: Arc<Mutex<QualityTracker>>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ReaderError> {
    let consumer: BaseConsumer =
        labels_consumer_config(cfg).create().map_err(|e| ReaderError::Consumer(e.to_string()))?;
    let topic = cfg.quality.labels_topic.clone();
    let start = match cfg.quality.start_offset {
        LabelStart::Latest => Offset::End,
        LabelStart::Earliest => Offset::Beginning,
    };
    let close_timeout = cfg.delivery.drain_timeout;
    std::thread::Builder::new()
        .name("streamscore-labels".into())
        .spawn(move || {
            run(&consumer, &topic, start, &decoder, &tracker, &stop);
            source::close_within(consumer, close_timeout, "labels");
            info!(topic = %topic, "labels reader stopped");
        })
        .map_err(|e| ReaderError::Thread(e.to_string()))
}

fn run(
    consumer: &BaseConsumer,
    topic: &str,
    start: Offset,
    decoder: &Decoder,
    tracker: &Mutex<QualityTracker>,
    stop: &AtomicBool,
) {
    let mut assigned: i32 = 0;
    let mut next_check = Instant::now();
    let mut last_warning: Option<Instant> = None;
    let mut missing_logged = false;
    while !stop.load(Ordering::Acquire) {
        if Instant::now() >= next_check {
            next_check = Instant::now() + METADATA_EVERY;
            match partition_count(consumer, topic) {
                Ok(0) => {
                    if !missing_logged {
                        warn!(topic = %topic, "labels topic does not exist (yet); quality reports wait for it (quality.labels_topic)");
                        missing_logged = true;
                    }
                    // Check again sooner while the topic is missing.
                    next_check = Instant::now() + Duration::from_secs(2);
                }
                Ok(n) if n > assigned => {
                    // The first assignment starts at quality.start_offset; partitions added later
                    // are read from their beginning (every label in them is new).
                    let from = if assigned == 0 { start } else { Offset::Beginning };
                    if let Err(e) = add_partitions(consumer, topic, assigned, n, from) {
                        warn!(topic = %topic, error = %e, "cannot assign the labels topic's partitions; retrying");
                        next_check = Instant::now() + Duration::from_secs(2);
                    } else {
                        info!(topic = %topic, partitions = n, start = ?from, "reading labels");
                        metrics::gauge!(names::LABEL_PARTITIONS).set(f64::from(n));
                        assigned = n;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(topic = %topic, error = %e, "cannot read the labels topic's metadata; retrying");
                    next_check = Instant::now() + Duration::from_secs(2);
                }
            }
        }
        if assigned == 0 {
            std::thread::sleep(POLL);
            continue;
        }
        let Some(polled) = consumer.poll(POLL) else { continue };
        let message = match polled {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "labels poll error");
                continue;
            }
        };
        let kafka_ms = message.timestamp().to_millis().unwrap_or_else(now_ms);
        let label = match message.payload() {
            None => Err("record has no value".to_string()),
            Some(payload) => decoder
                .decode(payload)
                .map_err(|r| r.to_string())
                .and_then(|v| Label::from_avro(&v, kafka_ms).map_err(|e| e.to_string())),
        };
        let label = match label {
            Ok(l) => l,
            Err(detail) => {
                metrics::counter!(names::LABELS, "outcome" => "invalid").increment(1);
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    last_warning = Some(Instant::now());
                    warn!(
                        topic = %topic, partition = message.partition(), offset = message.offset(), error = %detail,
                        "label record skipped (counted in streamscore_labels_total{{outcome=\"invalid\"}})"
                    );
                }
                continue;
            }
        };
        // Outcomes are counted by the publisher from the tracker's stats (a waiting label may
        // still match later).
        match tracker.lock() {
            Ok(mut t) => {
                t.join(&label, now_ms());
            }
            Err(_) => return,
        }
    }
}

/// Partitions of `topic` (0 when the broker does not know it).
fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<i32, rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let n = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    Ok(n)
}

/// Adds partitions `from_partition..to` of `topic` to the assignment.
fn add_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    from_partition: i32,
    to: i32,
    offset: Offset,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in from_partition..to {
        tpl.add_partition_offset(topic, p, offset)?;
    }
    // The list is ours (not from position()/assignment()), and dropped right here.
    consumer.incremental_assign(&tpl)
}
