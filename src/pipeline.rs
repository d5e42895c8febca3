//! Wires the stages and owns start-up and shutdown.
//!
//! ```text
//! source thread ──Batch──► inference thread ──Batch──► sink thread ──► producer ──acks──► offset tracker
//!   (poll, decode,   bounded   (cache, ORT, drift)  bounded  (encode, produce)                  │
//!    features)                                                                                  ▼
//!   ◄──────────────────────────── recycled batches ◄──────────────           commits (source thread)
//! ```
//!
//! Shutdown (mini-redis style): only the source is told to stop. It seals its open batch and
//! drops its sender; inference and sink finish as their input channels close; the source waits
//! (bounded by `delivery.drain_timeout`) until every outcome is acknowledged, commits, and leaves
//! the group. A fatal error anywhere (undeliverable outcome, inference failure) takes the same
//! path, and nothing past the failure is committed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tracing::{error, info, info_span, warn};

use crate::batcher::adaptive::{AdaptiveBatching, AdaptiveController};
use crate::batcher::Batch;
use crate::cache::PredictionCache;
use crate::codec::{self, Decoder, SchemaStore};
use crate::config::{BatchMode, Config, DeliveryMode, KafkaConfig};
use crate::drift::{DriftSet, DriftWindow};
use crate::features::FeatureExtractor;
use crate::model::deploy::{
    self, DeployControl, DeployEnd, DeployError, DeployReceiver, DeployRequest, DeploymentView, Role,
};
use crate::model::{Model, ModelError, ModelInfo, Scorer};
use crate::offsets::OffsetTracker;
use crate::outcome::DeadLetterReason;
use crate::quality::publish::QualityPublisher;
use crate::quality::{self, JoinLimits, QualityTracker, QualityWindow};
use crate::sink;
use crate::telemetry::{self, names, Health, RunStats};
use crate::{sink::now_ms, source};

/// Why the pipeline could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("schemas: {0}")]
    Schema(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("an outcome could not be delivered: {0}")]
    Delivery(String),
    #[error("inference: {0}")]
    Inference(String),
    #[error("http: {0}")]
    Http(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// State shared by the stage threads.
pub struct Shared {
    stop: AtomicBool,
    fatal: Mutex<Option<PipelineError>>,
    wake: Notify,
    pub tracker: Arc<OffsetTracker>,
    pub health: Arc<Health>,
    pub stats: Arc<RunStats>,
    /// exactly_once: the consumer's current group metadata (generation), which every
    /// transaction's `send_offsets_to_transaction` must carry. Set by the source on rebalances;
    /// the sink takes a reference and does not hold the lock during its call.
    pub group_metadata: Mutex<Option<Arc<rdkafka::consumer::ConsumerGroupMetadata>>>,
    /// exactly_once: a transaction was aborted; the source must rewind to the committed offsets.
    rewind: AtomicBool,
    /// The shutdown drain is over: inference and sink drop what they still hold.
    pub abandon: AtomicBool,
    /// `batch.mode = "adaptive"`: the controller the sink feeds and the source reads.
    pub batching: Option<AdaptiveBatching>,
    /// Sequence numbers of sealed batches, unique across the instance's consumer threads.
    next_seq: AtomicU64,
    /// What serves now, as the inference thread last published it (the admin API lists it).
    pub deployment: DeploymentView,
}

impl Shared {
    pub fn new(stats: Arc<RunStats>, batching: Option<AdaptiveBatching>) -> Arc<Self> {
        Self::with_deployment(stats, batching, DeploymentView::default())
    }

    /// As [`Shared::new`], publishing the deployment into `deployment` (a [`DeployControl`]'s view).
    pub fn with_deployment(
        stats: Arc<RunStats>,
        batching: Option<AdaptiveBatching>,
        deployment: DeploymentView,
    ) -> Arc<Self> {
        Arc::new(Self {
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
            wake: Notify::new(),
            tracker: OffsetTracker::new(),
            health: Arc::new(Health::default()),
            stats,
            group_metadata: Mutex::new(None),
            rewind: AtomicBool::new(false),
            abandon: AtomicBool::new(false),
            batching,
            next_seq: AtomicU64::new(0),
            deployment,
        })
    }

    /// The next batch sequence number (1, 2, …), unique in this instance. Per partition, batches
    /// are registered in consumption order by the one consumer thread that owns the partition.
    pub fn next_batch_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// After an aborted transaction: every in-flight batch becomes stale (new ownership epochs)
    /// and the source is asked to seek back to the committed offsets.
    pub fn request_rewind(&self) {
        self.tracker.rebase_owned();
        self.rewind.store(true, Ordering::Release);
    }

    /// Whether a rewind was requested (and clears the request).
    pub fn take_rewind(&self) -> bool {
        self.rewind.swap(false, Ordering::AcqRel)
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks the source to stop intake; the rest of the pipeline drains behind it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.health.stopping.store(true, Ordering::Release);
        self.health.publish();
        self.wake.notify_one();
    }

    /// Records a fatal error (the first one wins) and stops the pipeline.
    pub fn fail(&self, e: PipelineError) {
        {
            let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                error!(error = %e, "fatal error; stopping");
                *f = Some(e);
            }
        }
        self.request_stop();
    }

    fn take_fatal(&self) -> Option<PipelineError> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub consumed: u64,
    pub scored: u64,
    pub dead_lettered: Vec<(DeadLetterReason, u64)>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Micro-batches scored.
    pub batches: u64,
    pub elapsed: Duration,
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    /// Highest-PSI columns of the last drift window (name, PSI), highest first.
    pub top_drift: Vec<(String, f64)>,
    /// Live quality per version over the whole run (`[quality]`; empty when off or when no
    /// label was joined): every window's sums merged.
    pub quality: Vec<QualityWindow>,
    pub model_name: String,
    pub model_version: String,
    /// The execution provider of the model loaded at start (`cpu` when a GPU provider was asked
    /// for but could not start; every version loads with the same `[model]` settings).
    pub execution_provider: &'static str,
    /// `batch.max_batch_size` as it applied (`"auto"` settled on the active provider).
    pub max_batch_size: usize,
}

/// Runs the pipeline until `shutdown` resolves or a fatal error happens.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<RunSummary, PipelineError> {
    run_with_stats(config, Arc::new(RunStats::default()), shutdown).await
}

/// As [`run`], recording into `stats` (so a caller can watch progress while it runs).
pub async fn run_with_stats(
    config: Config,
    stats: Arc<RunStats>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, PipelineError> {
    // The control plane: the model repository watcher (`model.watch_interval`) and the admin
    // API (`admin.enabled`); with neither configured, nothing holds the control and the
    // deployment stays the configured model.
    let (control, end) = DeployControl::channel();
    let plane = crate::admin::start(&config, &control)
        .await
        .map_err(|e| PipelineError::Http(format!("admin API on {}: {e}", config.admin.bind)))?;
    drop(control);
    let result = run_with_control(config, stats, end, shutdown).await;
    plane.stop().await;
    result
}

/// As [`run_with_stats`], taking deployment commands from the [`DeployControl`] that `deploy`
/// belongs to (`DeployControl::channel()`): the control plane (model repository watcher, admin
/// API, tests) loads versions and sends them; the inference thread applies them between batches
/// and publishes what serves into the control's view.
pub async fn run_with_control(
    config: Config,
    stats: Arc<RunStats>,
    deploy: DeployEnd,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<RunSummary, PipelineError> {
    let DeployEnd { receiver: deploy_rx, state: deployment_view } = deploy;
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    // The recorder first: model loading counts its failures, and the adaptive controller
    // publishes its initial targets as gauges.
    let handle = telemetry::prometheus();
    let mut config = config;
    // Then the model: everything that can be wrong with it fails here, before consuming, and
    // an "auto" batch size settles on the execution provider that actually started.
    let model_cfg = config.model.clone();
    let model = tokio::task::spawn_blocking(move || Model::load(&model_cfg))
        .await
        .map_err(|e| PipelineError::Internal(format!("model loader panicked: {e}")))??;
    if let Some((from, to)) = config.batch.settle_for(model.info.execution_provider) {
        warn!(
            requested = config.model.execution_provider.as_str(),
            active = model.info.execution_provider,
            from,
            to,
            "batch.max_batch_size = \"auto\": sized for the provider that started, not the one requested"
        );
    }
    // Full batches before the first real one, as for every version the control plane loads
    // (a GPU provider's first call at a new shape is slow).
    let warm_rows = config.batch.max_batch_size;
    let model = tokio::task::spawn_blocking(move || {
        let mut model = model;
        model.warm_up(warm_rows, crate::repository::WARM_UP_BATCHES).map(|()| model)
    })
    .await
    .map_err(|e| PipelineError::Internal(format!("model warm-up panicked: {e}")))??;
    let cfg = Arc::new(config);
    // apache-avro pre-allocates a string's or array's claimed length; a hostile 20-byte value could
    // claim gigabytes. Nothing decoded can be larger than the message it came in.
    apache_avro::util::max_allocation_bytes(cfg.schemas.max_message_bytes.max(1024));
    let batching = (cfg.batch.mode == BatchMode::Adaptive).then(|| {
        info!(
            latency_target = ?cfg.batch.latency_target,
            max_batch_size = cfg.batch.max_batch_size,
            max_batch_delay = ?cfg.batch.max_batch_delay,
            "adaptive batching"
        );
        AdaptiveBatching::new(AdaptiveController::new(
            cfg.batch.latency_target,
            cfg.batch.max_batch_size,
            cfg.batch.max_batch_delay,
        ))
    });
    let shared = Shared::with_deployment(stats.clone(), batching, deployment_view);
    info!(
        brokers = %cfg.kafka.bootstrap_servers,
        group = %cfg.kafka.group_id,
        inputs = ?cfg.kafka.input_topics,
        common = ?KafkaConfig::redacted(&cfg.kafka.common),
        consumer = ?KafkaConfig::redacted(&cfg.kafka.consumer),
        producer = ?KafkaConfig::redacted(&cfg.kafka.producer),
        "starting streamscore"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    // Stops the HTTP server and the drift reporter on every way out of this function,
    // including a start-up error after the server came up.
    let stop_tasks = StopOnDrop(stop_tx);
    let http = match cfg.telemetry.http_bind {
        Some(addr) => {
            let listener = telemetry::bind_http(addr).await.map_err(|e| PipelineError::Http(e.to_string()))?;
            info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /metrics, /healthz, /readyz");
            let mut rx = stop_rx.clone();
            let health = shared.health.clone();
            Some(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = telemetry::serve_http(listener, handle, health, stop).await {
                    warn!(error = %e, "http server stopped");
                }
            }))
        }
        None => None,
    };

    // Schemas: everything that can be wrong with them fails here too, before consuming.
    let info: Arc<ModelInfo> = model.info.clone();
    info!(
        model = %info.name,
        version = %info.version,
        columns = info.num_columns,
        threshold = info.threshold,
        execution_provider = info.execution_provider,
        "model loaded"
    );
    model_info_gauge(&info, Role::Champion).set(1.0);
    shared.health.model_loaded.store(true, Ordering::Release);
    shared.health.publish();

    let reader_text = std::fs::read_to_string(&cfg.schemas.reader_schema).map_err(|e| {
        PipelineError::Schema(format!(
            "cannot read reader schema {} (schemas.reader_schema): {e}",
            cfg.schemas.reader_schema.display()
        ))
    })?;
    let reader = codec::parse_schema(&reader_text).map_err(|e| PipelineError::Schema(e.to_string()))?;
    let features = FeatureExtractor::new(&model.manifest, &reader)
        .map_err(|e| PipelineError::Schema(format!("model {} does not fit the reader schema: {e}", info.name)))?;
    let registry = cfg.schemas.registry.as_ref().map(|r| codec::RegistrySettings {
        url: r.url.clone(),
        username: r.username.clone(),
        password: r.password.clone(),
        bearer_token: None,
        timeout: r.timeout,
    });
    let store = Arc::new(
        SchemaStore::new(reader, &cfg.schemas.local, registry.clone(), Some(tokio::runtime::Handle::current()))
            .map_err(|e| PipelineError::Schema(e.to_string()))?,
    );
    // Decoding goes straight to the feature row through a plan per writer schema (the generic
    // decode + extract path is the fallback for schemas the plan does not cover).
    let width = features.num_columns();
    // One decoder per consumer thread (each plans writer schemas for itself; they share the
    // schema store).
    let features = Arc::new(features);
    let decoders: Vec<Decoder> = (0..cfg.kafka.consumer_threads)
        .map(|_| {
            Decoder::with_features(store.clone(), cfg.schemas.max_message_bytes, &model.manifest, features.clone())
        })
        .collect();
    let drift_schema =
        codec::parse_schema(codec::DRIFT_REPORT_SCHEMA).map_err(|e| PipelineError::Schema(e.to_string()))?;
    let alert_schema =
        codec::parse_schema(codec::DRIFT_ALERT_SCHEMA).map_err(|e| PipelineError::Schema(e.to_string()))?;
    // The monitoring topic carries drift reports (subject `<topic>-value`), shadow results
    // (subject `<topic>-io.streamscore.monitoring.ShadowScore`, see `codec::shadow_subject`) and
    // drift alerts (`<topic>-io.streamscore.monitoring.DriftAlert`, `codec::drift_alert_subject`).
    let (scored_schema_id, drift_schema_id, shadow_schema_id, alert_schema_id) = if cfg.schemas.registry.is_some() {
        let scored = store
            .register(&format!("{}-value", cfg.kafka.scored_topic), codec::SCORED_TRANSACTION_SCHEMA)
            .await
            .map_err(|e| PipelineError::Schema(e.to_string()))?;
        let drift = store
            .register(&format!("{}-value", cfg.kafka.monitoring_topic), codec::DRIFT_REPORT_SCHEMA)
            .await
            .map_err(|e| PipelineError::Schema(e.to_string()))?;
        let shadow = store
            .register(&codec::shadow_subject(&cfg.kafka.monitoring_topic), codec::SHADOW_SCORE_SCHEMA)
            .await
            .map_err(|e| PipelineError::Schema(e.to_string()))?;
        // Only registered when drift runs: alerts are never produced otherwise.
        let alert = if cfg.drift.enabled {
            store
                .register(&codec::drift_alert_subject(&cfg.kafka.monitoring_topic), codec::DRIFT_ALERT_SCHEMA)
                .await
                .map_err(|e| PipelineError::Schema(e.to_string()))?
        } else {
            0
        };
        (scored, drift, shadow, alert)
    } else {
        let (scored, drift) = (cfg.schemas.scored_schema_id, cfg.schemas.drift_schema_id);
        (scored, drift, codec::local_shadow_schema_id(scored, drift), codec::local_drift_alert_schema_id(scored, drift))
    };
    // Quality reports (`<topic>-io.streamscore.monitoring.QualityReport`), only when labels are read.
    let quality_schema_id = match (cfg.quality.enabled, cfg.schemas.registry.is_some()) {
        (false, _) => 0,
        (true, true) => store
            .register(&codec::quality_subject(&cfg.kafka.monitoring_topic), codec::QUALITY_REPORT_SCHEMA)
            .await
            .map_err(|e| PipelineError::Schema(e.to_string()))?,
        (true, false) => codec::local_quality_schema_id(cfg.schemas.scored_schema_id, cfg.schemas.drift_schema_id),
    };
    // Labels decode to schemas/label.avsc through a store of their own (same local files and
    // registry as the inputs, another reader schema).
    let label_decoder = if cfg.quality.enabled {
        let label_reader =
            codec::parse_schema(codec::LABEL_SCHEMA).map_err(|e| PipelineError::Schema(e.to_string()))?;
        let label_store =
            SchemaStore::new(label_reader, &cfg.schemas.local, registry, Some(tokio::runtime::Handle::current()))
                .map_err(|e| PipelineError::Schema(e.to_string()))?;
        Some(Decoder::new(Arc::new(label_store), cfg.schemas.max_message_bytes))
    } else {
        None
    };

    let transactional = cfg.delivery.mode == DeliveryMode::ExactlyOnce;
    let producer = {
        let (c, s) = (cfg.clone(), shared.clone());
        let create = tokio::task::spawn_blocking(move || sink::create_producer(&c, s, transactional));
        // exactly_once start-up waits for the broker; a stop request must not wait for it.
        tokio::select! {
            created = create => Arc::new(
                created.map_err(|e| PipelineError::Internal(format!("producer start-up panicked: {e}")))??,
            ),
            _ = &mut shutdown => {
                info!("shutdown requested during start-up");
                shared.request_stop();
                return Ok(summarize(&stats, started, (&info.name, &info.version, info.execution_provider), cfg.batch.max_batch_size, Vec::new(), Vec::new()));
            }
        }
    };
    if transactional {
        info!(transactional_id = %cfg.delivery.transactional_id, "exactly_once: transactions initialised");
    }
    // Drift reports are not part of any batch's transaction: they go through a plain producer.
    let monitoring_producer =
        if transactional { Arc::new(sink::create_producer(&cfg, shared.clone(), false)?) } else { producer.clone() };
    let monitoring_topic = || sink::OutputTopic::new(monitoring_producer.clone(), &cfg.kafka.monitoring_topic);
    let depth = cfg.batch.queue_depth;
    let (to_inference, inference_rx) = crossbeam_channel::bounded::<Batch>(depth);
    let (to_sink, sink_rx) = crossbeam_channel::bounded::<Batch>(depth);
    let (recycle_tx, recycle_rx) = crossbeam_channel::bounded::<Batch>(2 * depth + 2);

    let drift = cfg.drift.enabled.then(|| {
        let mut set = DriftSet::new();
        set.track(info.version_id, &model.manifest);
        Arc::new(Mutex::new(set))
    });
    let drift_topic = drift.as_ref().map(|_| monitoring_topic()).transpose()?;
    let quality =
        cfg.quality.enabled.then(|| Arc::new(Mutex::new(QualityTracker::new(JoinLimits::from_config(&cfg.quality)))));
    // The labels reader stops on every way out of this function (StopFlagOnDrop), like the
    // tasks above.
    let labels_stop = Arc::new(AtomicBool::new(false));
    let stop_labels = StopFlagOnDrop(labels_stop.clone());
    let quality_totals: Arc<Mutex<Vec<QualityWindow>>> = Arc::default();
    let mut labels_reader = None;
    let mut quality_publisher = None;
    if let (Some(tracker), Some(decoder)) = (quality.clone(), label_decoder) {
        let quality_schema =
            codec::parse_schema(codec::QUALITY_REPORT_SCHEMA).map_err(|e| PipelineError::Schema(e.to_string()))?;
        labels_reader = Some(
            quality::reader::spawn(&cfg, decoder, tracker.clone(), labels_stop.clone())
                .map_err(|e| PipelineError::Kafka(e.to_string()))?,
        );
        let publisher = QualityPublisher {
            tracker,
            topic: monitoring_topic()?,
            schema: quality_schema,
            schema_id: quality_schema_id,
            instance_id: cfg.telemetry.instance_id.clone(),
            window_start_ms: now_ms(),
            totals: quality_totals.clone(),
        };
        info!(labels_topic = %cfg.quality.labels_topic, interval = ?cfg.quality.interval, "live quality: joining labels to predictions");
        quality_publisher = Some(tokio::spawn(publisher.run(cfg.quality.interval, stop_rx.clone())));
    }
    let scorer = Scorer::new(model, PredictionCache::new(&cfg.cache));
    publish_deployment(&shared, &scorer);
    let taps = Taps { drift: drift.clone(), quality: quality.clone() };
    let inference = spawn_inference(scorer, inference_rx, deploy_rx, to_sink, shared.clone(), taps)?;
    let sink = sink::spawn(sink::SinkParts {
        config: cfg.clone(),
        producer: producer.clone(),
        shared: shared.clone(),
        from_inference: sink_rx,
        recycle: recycle_tx,
        scored_schema_id,
        max_record_bytes: sink::max_record_bytes(&cfg),
        shadow: sink::ShadowOutput {
            producer: monitoring_producer.clone(),
            topic: cfg.kafka.monitoring_topic.clone(),
            schema_id: shadow_schema_id,
        },
        transactions: transactional.then(|| sink::TransactionSettings {
            timeout: cfg.delivery.drain_timeout.min(cfg.delivery.transaction_timeout),
            abort_every: injected_abort_every(),
        }),
    })?;
    let mut sources = Vec::with_capacity(decoders.len());
    for (member, decoder) in decoders.into_iter().enumerate() {
        sources.push(source::spawn(source::SourceParts {
            config: cfg.clone(),
            decoder,
            width,
            shared: shared.clone(),
            to_inference: to_inference.clone(),
            recycled: recycle_rx.clone(),
            member,
        })?);
    }
    drop((to_inference, recycle_rx));

    let last_drift: Arc<Mutex<Vec<(String, f64)>>> = Arc::default();
    let reporter = drift.clone().zip(drift_topic).map(|(acc, topic)| {
        let reporter = DriftReporter {
            acc,
            topic,
            schema: drift_schema,
            schema_id: drift_schema_id,
            alert_schema,
            alert_schema_id,
            instance_id: cfg.telemetry.instance_id.clone(),
            window_start: now_ms(),
            last: last_drift.clone(),
        };
        tokio::spawn(reporter.run(cfg.drift.interval, stop_rx.clone()))
    });
    tokio::select! {
        _ = &mut shutdown => info!("shutdown requested; draining"),
        _ = shared.wake.notified() => {}
    }
    shared.request_stop();
    // The drain is bounded: the source waits at most drain_timeout for outstanding outcomes;
    // whatever inference and the sink still hold after that is abandoned (not committed, so it
    // is consumed again after a restart), and the final flush gets what is left of the budget.
    let drain_deadline = Instant::now() + cfg.delivery.drain_timeout;
    for source in sources {
        let joined = tokio::task::spawn_blocking(move || source.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            shared.fail(PipelineError::Internal("a source thread panicked".into()));
        }
    }
    shared.abandon.store(true, Ordering::Release);
    for (name, handle) in [("inference", inference), ("sink", sink)] {
        let joined = tokio::task::spawn_blocking(move || handle.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            error!(thread = name, "stage thread panicked");
            shared.fail(PipelineError::Internal(format!("the {name} thread panicked")));
        }
    }
    drop(stop_labels);
    if let Some(reader) = labels_reader {
        let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    }
    drop(stop_tasks);
    if let Some(r) = reporter {
        let _ = r.await;
    }
    if let Some(p) = quality_publisher {
        let _ = p.await;
    }
    let drain = drain_deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(200));
    let (p, m) = (producer.clone(), monitoring_producer.clone());
    let _ = tokio::task::spawn_blocking(move || {
        sink::flush(&p, drain);
        sink::flush(&m, drain);
    })
    .await;
    if let Some(h) = http {
        let _ = h.await;
    }

    if let Some(e) = shared.take_fatal() {
        return Err(e);
    }
    let top_drift = last_drift.lock().map(|v| v.clone()).unwrap_or_default();
    info!(
        consumed = stats.consumed.load(Ordering::Relaxed),
        scored = stats.scored.load(Ordering::Relaxed),
        dead_lettered = stats.dead_lettered_total(),
        "stopped cleanly"
    );
    // The summary names the champion at the end (a deployment may have changed it).
    let (name, version) = match shared.deployment.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(s) => (s.champion.name.clone(), s.champion.version.clone()),
        None => (info.name.clone(), info.version.clone()),
    };
    let quality_totals = quality_totals.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(summarize(
        &stats,
        started,
        (&name, &version, info.execution_provider),
        cfg.batch.max_batch_size,
        top_drift,
        quality_totals,
    ))
}

fn summarize(
    stats: &RunStats,
    started: Instant,
    (model_name, model_version, execution_provider): (&str, &str, &'static str),
    max_batch_size: usize,
    top_drift: Vec<(String, f64)>,
    quality: Vec<QualityWindow>,
) -> RunSummary {
    RunSummary {
        consumed: stats.consumed.load(Ordering::Relaxed),
        scored: stats.scored.load(Ordering::Relaxed),
        dead_lettered: stats.dead_lettered_by_reason(),
        cache_hits: stats.cache_hits.load(Ordering::Relaxed),
        cache_misses: stats.cache_misses.load(Ordering::Relaxed),
        batches: stats.batches.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency_p50: stats.latency.quantile(0.5),
        latency_p99: stats.latency.quantile(0.99),
        top_drift,
        quality,
        model_name: model_name.to_owned(),
        model_version: model_version.to_owned(),
        execution_provider,
        max_batch_size,
    }
}

/// Tells the labels reader thread to stop when dropped.
struct StopFlagOnDrop(Arc<AtomicBool>);

impl Drop for StopFlagOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Signals the async tasks to stop when dropped.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// The `streamscore_model_info` gauge of one version in one role.
fn model_info_gauge(info: &ModelInfo, role: Role) -> metrics::Gauge {
    metrics::gauge!(
        names::MODEL_INFO,
        "model" => info.name.clone(),
        "version" => info.version.clone(),
        "execution_provider" => info.execution_provider,
        "role" => role.as_str()
    )
}

/// Publishes the scorer's deployment into [`Shared::deployment`].
fn publish_deployment(shared: &Shared, scorer: &Scorer) {
    *shared.deployment.lock().unwrap_or_else(|p| p.into_inner()) = Some(scorer.deployment.state());
}

/// Applies one deployment command on the inference thread (between two batches): logs it,
/// counts it, moves the `streamscore_model_info` gauges, publishes the new state, points drift
/// statistics at the versions that now score, and answers the sender.
fn apply_deploy_request(
    scorer: &mut Scorer,
    (command, reply): DeployRequest,
    shared: &Shared,
    drift: Option<&Arc<Mutex<DriftSet>>>,
) {
    let action = deploy::action_label(&command);
    let what = format!("{command:?}");
    let before = scorer.deployment.roles();
    let result = scorer.deployment.apply(command);
    match &result {
        Ok(state) => {
            let after = scorer.deployment.roles();
            for (info, role) in &before {
                if !after.iter().any(|(i, r)| i.version_id == info.version_id && r == role) {
                    model_info_gauge(info, *role).set(0.0);
                }
            }
            for (info, role) in &after {
                model_info_gauge(info, *role).set(1.0);
            }
            publish_deployment(shared, scorer);
            if let Some(d) = drift {
                let mut set = d.lock().unwrap_or_else(|p| p.into_inner());
                let mut scoring = vec![scorer.deployment.champion.info.version_id];
                set.track(scorer.deployment.champion.info.version_id, &scorer.deployment.champion.manifest);
                if let Some((m, _)) = &scorer.deployment.challenger {
                    set.track(m.info.version_id, &m.manifest);
                    scoring.push(m.info.version_id);
                }
                set.retain_active(&scoring);
            }
            metrics::counter!(deploy::DEPLOYMENTS, "action" => action, "result" => "applied").increment(1);
            info!(
                command = %what,
                champion = %format!("{}/{}", state.champion.name, state.champion.version),
                challenger = ?state.challenger.as_ref().map(|(v, mode)| (format!("{}/{}", v.name, v.version), *mode)),
                rollback = ?state.rollback.as_ref().map(|v| format!("{}/{}", v.name, v.version)),
                "deployment changed; takes effect with the next batch"
            );
        }
        Err(e) => {
            metrics::counter!(deploy::DEPLOYMENTS, "action" => action, "result" => "rejected").increment(1);
            warn!(command = %what, error = %e, "deployment command refused; nothing changed");
        }
    }
    // The sender may have given up waiting.
    let _ = reply.send(result);
}

/// What watches the scored batches besides the sink: drift statistics and the label join.
#[derive(Clone, Default)]
struct Taps {
    drift: Option<Arc<Mutex<DriftSet>>>,
    quality: Option<Arc<Mutex<QualityTracker>>>,
}

/// Per-version metrics, drift and the label join's predictions of one scored batch.
fn record_batch(scorer: &Scorer, batch: &crate::batcher::Batch, taps: &Taps) {
    if let Some(q) = &taps.quality {
        if let Ok(mut tracker) = q.lock() {
            tracker.observe_batch(batch, now_ms());
        }
    }
    record_metrics_and_drift(scorer, batch, taps.drift.as_ref());
}

fn record_metrics_and_drift(scorer: &Scorer, batch: &crate::batcher::Batch, drift: Option<&Arc<Mutex<DriftSet>>>) {
    for v in scorer.last_counts() {
        let (model, version) = (v.info.name.clone(), v.info.version.clone());
        if v.counts.cache_misses > 0 {
            metrics::histogram!(names::INFERENCE_SECONDS, "model" => model.clone(), "version" => version.clone())
                .record(v.counts.inference.as_secs_f64());
        }
        if v.counts.cache_hits > 0 {
            metrics::counter!(names::CACHE_HITS, "model" => model.clone(), "version" => version.clone())
                .increment(v.counts.cache_hits as u64);
        }
        if v.counts.cache_misses > 0 {
            metrics::counter!(names::CACHE_MISSES, "model" => model, "version" => version)
                .increment(v.counts.cache_misses as u64);
        }
    }
    let Some(d) = drift else { return };
    let Ok(mut set) = d.lock() else { return };
    let (f, n) = (batch.width(), batch.rows);
    let (features, missing) = (&batch.features[..n * f], &batch.missing[..n * f]);
    if batch.versions.len() == 1 {
        if let Some(acc) = set.get_mut(batch.versions[0].version_id) {
            acc.observe(features, missing, &batch.scores[..n]);
        }
    } else {
        // A canary split the batch: each row goes to the statistics of the version that scored it.
        for (index, info) in batch.versions.iter().enumerate() {
            let Some(acc) = set.get_mut(info.version_id) else { continue };
            for (i, _) in batch.row_version.iter().enumerate().filter(|(_, v)| usize::from(**v) == index) {
                let r = i * f..(i + 1) * f;
                acc.observe(&features[r.clone()], &missing[r], &batch.scores[i..i + 1]);
            }
        }
    }
    if let Some(shadow) = &batch.shadow {
        if let Some(acc) = set.get_mut(shadow.version_id) {
            acc.observe(features, missing, &batch.shadow_scores[..n]);
        }
    }
}

/// What the inference thread woke up for.
// A batch moves through here once per batch, as it does through the channels: boxing it would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    Batch(Batch),
    InputClosed,
    Command(DeployRequest),
    ControlClosed,
}

/// The inference stage: one dedicated thread that owns the ONNX Runtime sessions (never on the
/// async reactor). One span per batch.
///
/// Deployment commands are applied between batches: the thread waits on the batch channel and
/// the command channel together (so a command applies at once when no input flows), and drains
/// every pending command before it scores a batch (so a command answered before a batch was
/// taken applies to that batch).
fn spawn_inference(
    mut scorer: Scorer,
    input: crossbeam_channel::Receiver<Batch>,
    commands: DeployReceiver,
    output: crossbeam_channel::Sender<Batch>,
    shared: Arc<Shared>,
    taps: Taps,
) -> Result<std::thread::JoinHandle<()>, PipelineError> {
    let drift = taps.drift.clone();
    std::thread::Builder::new()
        .name("streamscore-inference".into())
        .spawn(move || {
            let injected_delay = injected_inference_delay();
            // Once every control handle is gone, wait on the batches only.
            let never = crossbeam_channel::never();
            let mut control_open = true;
            loop {
                let control = if control_open { &commands } else { &never };
                // What woke the thread is handled outside the macro (it expands to its own
                // control flow, so `continue`/`break` stay out of it).
                let next = crossbeam_channel::select! {
                    recv(input) -> b => b.map_or(Next::InputClosed, Next::Batch),
                    recv(control) -> r => r.map_or(Next::ControlClosed, Next::Command),
                };
                let mut batch = match next {
                    Next::Batch(b) => b,
                    Next::InputClosed => break,
                    Next::Command(request) => {
                        apply_deploy_request(&mut scorer, request, &shared, drift.as_ref());
                        continue;
                    }
                    Next::ControlClosed => {
                        control_open = false;
                        continue;
                    }
                };
                if shared.abandon.load(Ordering::Acquire) {
                    break;
                }
                while let Ok(request) = commands.try_recv() {
                    apply_deploy_request(&mut scorer, request, &shared, drift.as_ref());
                }
                // Before the injected delay: a deliberately slow model is slow inference.
                let started = Instant::now();
                batch.timing.inference_started = Some(started);
                if let Some(d) = injected_delay {
                    std::thread::sleep(d);
                }
                let span = info_span!("batch", seq = batch.seq, inputs = batch.len(), rows = batch.rows);
                let _enter = span.enter();
                match scorer.score(&mut batch) {
                    Ok(c) => {
                        shared.stats.cache_hits.fetch_add(c.cache_hits as u64, Ordering::Relaxed);
                        shared.stats.cache_misses.fetch_add(c.cache_misses as u64, Ordering::Relaxed);
                        shared.stats.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.tracker.fail(batch.seq);
                        shared.fail(PipelineError::Inference(e.to_string()));
                        break;
                    }
                }
                record_batch(&scorer, &batch, &taps);
                batch.timing.inference = started.elapsed();
                if output.send(batch).is_err() {
                    break;
                }
            }
            // Commands that arrive from now on find the channel closed (the receiver is dropped
            // with this thread); those already queued are told the pipeline is stopping.
            while let Ok((_, reply)) = commands.try_recv() {
                let _ = reply.send(Err(DeployError::Stopping));
            }
            info!("inference stopped");
        })
        .map_err(|e| PipelineError::Internal(format!("cannot start the inference thread: {e}")))
}

/// Fault injection for tests and benchmarks: `STREAMSCORE_INJECT_INFERENCE_DELAY_MS` makes every
/// batch's inference that much slower (a deliberately slow model). Never set in production.
fn injected_inference_delay() -> Option<Duration> {
    let ms: u64 = std::env::var("STREAMSCORE_INJECT_INFERENCE_DELAY_MS").ok()?.parse().ok()?;
    warn!(ms, "fault injection: every batch's inference is delayed (STREAMSCORE_INJECT_INFERENCE_DELAY_MS)");
    Some(Duration::from_millis(ms))
}

/// Fault injection for tests: `STREAMSCORE_INJECT_ABORT_EVERY=n` aborts every n-th transaction
/// (exactly_once), exercising abort and rewind. Never set in production.
fn injected_abort_every() -> u64 {
    let n = std::env::var("STREAMSCORE_INJECT_ABORT_EVERY").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    if n > 0 {
        warn!(n, "fault injection: every n-th transaction is aborted (STREAMSCORE_INJECT_ABORT_EVERY)");
    }
    n
}

/// Publishes one drift report per window to the monitoring topic and the PSI, JS and p-value
/// gauges; and a drift alert (plus its counter and alerting gauge) for every streak of
/// threshold crossings that reached the manifest's `drift.consecutive_windows`.
struct DriftReporter {
    acc: Arc<Mutex<DriftSet>>,
    /// The monitoring topic.
    topic: sink::OutputTopic,
    schema: apache_avro::Schema,
    schema_id: u32,
    alert_schema: apache_avro::Schema,
    alert_schema_id: u32,
    instance_id: String,
    window_start: i64,
    last: Arc<Mutex<Vec<(String, f64)>>>,
}

/// Calls `tick` every `interval` until `stop` turns true, then once more: the last, partial
/// window of a reporter would otherwise never be published.
pub(crate) async fn every_interval_then_once_more(
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    mut tick: impl FnMut(),
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => tick(),
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    tick();
}

impl DriftReporter {
    async fn run(mut self, interval: Duration, stop: watch::Receiver<bool>) {
        every_interval_then_once_more(interval, stop, || self.publish()).await;
    }

    fn publish(&mut self) {
        let end = now_ms();
        let windows: Vec<DriftWindow> = match self.acc.lock() {
            Ok(mut set) => set.take_windows(self.window_start, end),
            Err(_) => return,
        };
        self.window_start = end;
        // The summary's "highest drift" is the busiest version's (the champion, normally).
        if let Some(w) = windows.iter().filter(|w| w.rows > 0).max_by_key(|w| w.rows) {
            if let Ok(mut last) = self.last.lock() {
                *last = w.top_psi(5).into_iter().map(|(n, p)| (n.to_string(), p)).collect();
            }
        }
        for window in windows.iter().filter(|w| w.rows > 0) {
            self.publish_window(window);
        }
        // Alerts and recoveries of empty windows too: the accumulator decides what counts.
        for window in &windows {
            self.publish_alerts(window);
        }
    }

    /// One version's report and PSI, JS and p-value gauges.
    fn publish_window(&self, window: &DriftWindow) {
        let (model, version) = (window.model_name.clone(), window.model_version.clone());
        for f in window.features.iter().chain(std::iter::once(&window.score)) {
            let labels = [("model", model.clone()), ("version", version.clone()), ("feature", f.name.clone())];
            metrics::gauge!(names::DRIFT_PSI, &labels).set(f.psi);
            metrics::gauge!(names::DRIFT_JS, &labels).set(f.js);
            metrics::gauge!(names::DRIFT_P_VALUE, &labels).set(f.p_value);
        }
        let mut buf = Vec::new();
        if let Err(e) = codec::encode_value(&mut buf, self.schema_id, &self.schema, window.to_avro(&self.instance_id)) {
            warn!(error = %e, "cannot encode drift report");
            return;
        }
        match self.topic.send_report(&model, &version, &buf) {
            Ok(()) => {
                metrics::counter!(names::DRIFT_REPORTS, "model" => model, "version" => version).increment(1);
            }
            Err(e) => warn!(error = %e, "cannot publish drift report"),
        }
    }

    /// The window's alerts (record, counter, gauge 1) and recoveries (gauge 0).
    fn publish_alerts(&self, window: &DriftWindow) {
        let (model, version) = (&window.model_name, &window.model_version);
        for r in &window.recovered {
            info!(model = %model, version = %version, column = %r.column, statistic = r.statistic, "drift recovered");
            let labels = [
                ("model", model.clone()),
                ("version", version.clone()),
                ("column", r.column.clone()),
                ("statistic", r.statistic.to_string()),
            ];
            metrics::gauge!(names::DRIFT_ALERTING, &labels).set(0.0);
        }
        for alert in &window.alerts {
            warn!(
                model = %model, version = %version, column = %alert.column, statistic = alert.statistic,
                value = alert.value, threshold = alert.threshold, windows = alert.windows,
                "drift alert: threshold crossed in consecutive windows (retraining trigger)"
            );
            let labels = [
                ("model", model.clone()),
                ("version", version.clone()),
                ("column", alert.column.clone()),
                ("statistic", alert.statistic.to_string()),
            ];
            metrics::counter!(names::DRIFT_ALERTS, &labels).increment(1);
            metrics::gauge!(names::DRIFT_ALERTING, &labels).set(1.0);
            let mut buf = Vec::new();
            let value = alert.to_avro(&self.instance_id);
            if let Err(e) = codec::encode_value(&mut buf, self.alert_schema_id, &self.alert_schema, value) {
                warn!(error = %e, "cannot encode drift alert");
                continue;
            }
            if let Err(e) = self.topic.send_report(model, version, &buf) {
                warn!(error = %e, "cannot publish drift alert");
            }
        }
    }
}
