//! `streamscore report`: one self-contained HTML page about the monitoring topic: drift per
//! model version (PSI over time, the latest window, the score distribution, alerts), live
//! quality (precision/recall/F1 over time, the reliability diagram, merged figures) and shadow
//! agreement (docs/report.md).
//!
//! The layers: [`read`] (Kafka: the whole topic, once), [`records`] (Confluent frame, writer
//! schema by id, typed structs), [`aggregate`] (pure merging across instances and windows),
//! [`html`] and [`svg`] (the page). Only reading and writing the file can fail; a record that
//! cannot be decoded is counted and shown, never fatal.

pub mod aggregate;
pub mod html;
pub mod read;
pub mod records;
pub mod svg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use schema_registry_converter::async_impl::schema_registry::{get_schema_by_id, SrSettings};
use schema_registry_converter::schema_registry_common::SchemaType;

use crate::config::{Config, RegistryConfig};
use records::{RecordKind, WriterLookup};

/// Default `--out`.
pub const DEFAULT_OUT: &str = "streamscore-report.html";
/// Default `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time after every partition reached its high watermark before the read stops.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// What went wrong; every variant ends the command.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("Kafka: {what}: {source}; check kafka.bootstrap_servers and the kafka.common connection settings")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic} does not exist on the broker; check --topic or kafka.monitoring_topic")]
    NoTopic { topic: String },
    #[error(
        "schema registry {url}: cannot build the client: {detail}; check schemas.registry_url and its credentials"
    )]
    Registry { url: String, detail: String },
    #[error("cannot write the report to {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the topic reader stopped unexpectedly: {0}")]
    Reader(String),
}

impl ReportError {
    /// Exit status of `streamscore report`: 1 for every runtime failure (broker, file);
    /// configuration problems (2) are found before the command starts.
    pub fn exit_code(&self) -> u8 {
        1
    }
}

/// What `streamscore report` was asked for.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    pub topic: String,
    /// Only records whose window ended (or that were scored) in the last `since`.
    pub since: Option<Duration>,
    pub out: PathBuf,
    /// Overall limit of the read.
    pub timeout: Duration,
    pub idle_grace: Duration,
}

/// What the command prints.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    pub out: PathBuf,
    pub records_read: usize,
    pub counts: BTreeMap<RecordKind, usize>,
    pub undecodable: u64,
    pub complete: bool,
}

impl ReportSummary {
    /// The one-line summary.
    pub fn line(&self) -> String {
        let counts: Vec<String> = RecordKind::ALL
            .iter()
            .map(|k| format!("{} {}", self.counts.get(k).copied().unwrap_or(0), k.label()))
            .collect();
        format!(
            "read {} records: {}, {} undecodable{}; wrote {}",
            self.records_read,
            counts.join(", "),
            self.undecodable,
            if self.complete { "" } else { " (incomplete: the read timed out)" },
            self.out.display()
        )
    }
}

/// Reads the topic, aggregates, writes the page.
pub async fn run(config: &Config, opts: &ReportOptions) -> Result<ReportSummary, ReportError> {
    let client = read::consumer_config(config);
    let (topic, timeout, grace) = (opts.topic.clone(), opts.timeout, opts.idle_grace);
    let outcome = tokio::task::spawn_blocking(move || read::read_topic(client, &topic, timeout, grace))
        .await
        .map_err(|e| ReportError::Reader(e.to_string()))??;

    let ids = records::schema_ids(&outcome.records);
    let writers = match &config.schemas.registry {
        Some(registry) => registry_writers(registry, &ids).await?,
        None => local_writers(config, &ids),
    };
    let mut decoded = records::decode_all(&outcome.records, &writers);
    let now_ms = now_ms();
    let since_ms = opts.since.map(|d| now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    if let Some(cutoff) = since_ms {
        decoded.retain_since(cutoff);
    }
    let agg = aggregate::aggregate(&decoded);
    let counts: BTreeMap<RecordKind, usize> = RecordKind::ALL.into_iter().map(|k| (k, decoded.count(k))).collect();
    let info = html::PageInfo {
        topic: opts.topic.clone(),
        generated_at_ms: now_ms,
        since_ms,
        partitions: outcome.partitions,
        records_read: outcome.records.len(),
        counts: counts.clone(),
        undecodable: decoded.undecodable.clone(),
        complete: outcome.complete,
    };
    let page = html::render(&info, &agg);
    std::fs::write(&opts.out, page).map_err(|source| ReportError::Write { path: opts.out.clone(), source })?;
    Ok(ReportSummary {
        out: opts.out.clone(),
        records_read: outcome.records.len(),
        counts,
        undecodable: decoded.undecodable_total(),
        complete: outcome.complete,
    })
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Without a registry: the service's local ids, each with its bundled schema as the writer.
fn local_writers(config: &Config, ids: &BTreeSet<u32>) -> BTreeMap<u32, WriterLookup> {
    let local = records::local_ids(config.schemas.scored_schema_id, config.schemas.drift_schema_id);
    ids.iter()
        .filter_map(|id| {
            let kind = *local.get(id)?;
            let lookup = apache_avro::Schema::parse_str(kind.schema_json())
                .map(|s| (kind, s))
                .map_err(|e| format!("bundled schema of {} does not parse: {e}", kind.full_name()));
            Some((*id, lookup))
        })
        .collect()
}

/// With a registry: each id's writer schema from `GET /schemas/ids/{id}`, dispatched on the
/// record's full name. A failed lookup marks that id's records undecodable.
async fn registry_writers(
    registry: &RegistryConfig,
    ids: &BTreeSet<u32>,
) -> Result<BTreeMap<u32, WriterLookup>, ReportError> {
    let mut b = SrSettings::new_builder(registry.url.clone());
    b.set_timeout(registry.timeout);
    if let Some(user) = &registry.username {
        b.set_basic_authorization(user, registry.password.as_deref());
    }
    let settings = b.build().map_err(|e| ReportError::Registry { url: registry.url.clone(), detail: e.to_string() })?;
    let mut out = BTreeMap::new();
    for &id in ids {
        let lookup = match tokio::time::timeout(registry.timeout, get_schema_by_id(id, &settings)).await {
            Err(_) => Err(format!("schema registry did not answer for schema id {id} within {:?}", registry.timeout)),
            Ok(Err(e)) => Err(format!("schema registry lookup of schema id {id} failed: {}", e.error)),
            Ok(Ok(s)) if s.schema_type != SchemaType::Avro => Err(format!("schema id {id} is not an Avro schema")),
            Ok(Ok(s)) => records::writer_from_text(id, &s.schema),
        };
        out.insert(id, lookup);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
