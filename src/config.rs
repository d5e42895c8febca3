//! Configuration: `config/streamscore.toml` plus `STREAMSCORE_*` environment overrides.
//!
//! Two types on purpose: [`RawConfig`] mirrors the file (strings for durations, every field
//! defaulted, unknown keys rejected) and [`Config`] is the checked form the stages accept.
//! [`Config::load`] reports *every* problem at once, each naming its key, instead of stopping
//! at the first.
//!
//! Environment overrides: `STREAMSCORE_<SECTION>__<KEY>=value` (double underscore between
//! levels), e.g. `STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or
//! `STREAMSCORE_BATCH__MAX_BATCH_SIZE=512`. For the librdkafka pass-through tables
//! (`kafka.common`, `kafka.consumer`, `kafka.producer`) the last part names the property with
//! `_` for `.`: `STREAMSCORE_KAFKA__COMMON__SASL_PASSWORD=...` sets `sasl.password`.
//! Variables without `__` (such as `STREAMSCORE_TANSU` used by tests) are not config.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// librdkafka properties that streamscore sets itself; passing them through would break a guarantee.
const RESERVED_CONSUMER_PROPS: &[&str] =
    &["enable.auto.offset.store", "enable.auto.commit", "group.id", "bootstrap.servers"];

/// One problem found in the configuration, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// All problems of a configuration, reported together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, format_problems(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn format_problems(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------------
// Raw form: exactly the file's shape.
// ---------------------------------------------------------------------------------------------

/// The configuration file as written. Every field has a default; unknown keys are errors.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub kafka: RawKafka,
    pub schemas: RawSchemas,
    pub model: RawModel,
    pub batch: RawBatch,
    pub cache: RawCache,
    pub delivery: RawDelivery,
    pub drift: RawDrift,
    pub quality: RawQuality,
    pub telemetry: RawTelemetry,
    pub admin: RawAdmin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawKafka {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Consumer group shared by every instance; scale out by starting more instances.
    pub group_id: String,
    /// Topics to consume transactions from.
    pub input_topics: Vec<String>,
    /// Topic for one `ScoredTransaction` per scored input.
    pub scored_topic: String,
    /// Topic for inputs that could not be scored (original bytes plus reason headers).
    pub dead_letter_topic: String,
    /// Topic for drift reports.
    pub monitoring_topic: String,
    /// librdkafka `client.id`.
    pub client_id: String,
    /// Group members this instance runs, each on its own thread (poll, decode, batching).
    pub consumer_threads: usize,
    /// librdkafka properties for both consumer and producer (TLS/SASL go here).
    pub common: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    pub producer: BTreeMap<String, String>,
}

impl Default for RawKafka {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "streamscore".into(),
            input_topics: vec!["transactions".into()],
            scored_topic: "transactions.scored".into(),
            dead_letter_topic: "transactions.dlq".into(),
            monitoring_topic: "streamscore.monitoring".into(),
            client_id: "streamscore".into(),
            consumer_threads: 1,
            common: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSchemas {
    /// Reader schema of the input records.
    pub reader_schema: String,
    /// Confluent Schema Registry URL; empty = no registry (local schemas only).
    pub registry_url: String,
    /// Basic-auth user for the registry (empty = none).
    pub registry_username: String,
    /// Basic-auth password for the registry.
    pub registry_password: String,
    /// Timeout of one registry request.
    pub registry_timeout: String,
    /// Writer schemas known without a registry: schema id (as a string key) → .avsc file.
    pub local: BTreeMap<String, String>,
    /// Schema id written in front of scored records when no registry is configured.
    pub scored_schema_id: u32,
    /// Schema id written in front of drift reports when no registry is configured.
    pub drift_schema_id: u32,
    /// Largest input value accepted for decoding; larger ones are dead-lettered.
    pub max_message_bytes: usize,
}

impl Default for RawSchemas {
    fn default() -> Self {
        Self {
            reader_schema: "schemas/transaction.avsc".into(),
            registry_url: String::new(),
            registry_username: String::new(),
            registry_password: String::new(),
            registry_timeout: "5s".into(),
            local: BTreeMap::from([
                ("1".to_string(), "schemas/transaction.avsc".to_string()),
                ("7".to_string(), "schemas/label.avsc".to_string()),
            ]),
            scored_schema_id: 2,
            drift_schema_id: 3,
            max_message_bytes: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawModel {
    /// Directory holding `model.onnx` and `manifest.json`.
    pub dir: String,
    /// Path of `libonnxruntime.so.*`; empty = the `ORT_DYLIB_PATH` environment variable.
    pub onnxruntime_library: String,
    /// ONNX Runtime intra-op threads (1 is best for small models; more threads spin).
    pub intra_op_threads: usize,
    /// ONNX Runtime inter-op threads.
    pub inter_op_threads: usize,
    /// Refuse a model whose sha256 differs from the manifest.
    pub verify_checksum: bool,
    /// `cpu`, `cuda` or `tensorrt`; a GPU provider that cannot start falls back to CPU (logged).
    pub execution_provider: String,
    /// GPU to use with `cuda`/`tensorrt`.
    pub device_id: i32,
    /// Let the CUDA provider run float32 MatMul/Gemm/Conv on TF32 tensor cores (faster on
    /// Ampere and newer, but scores then differ from CPU by ~1e-3 relative). Default off.
    pub cuda_tf32: bool,
    /// ONNX Runtime graph optimisation: `disable`, `basic`, `extended` or `all`.
    pub graph_optimization_level: String,
    /// ONNX Runtime's CPU memory arena (faster allocation, memory kept for reuse).
    pub memory_arena: bool,
    /// Ed25519 public key files (hex, base64 or PEM); when set, a `manifest.json.sig` must verify against one.
    pub trusted_public_keys: Vec<String>,
    /// Refuse a model whose manifest has no valid signature from a trusted key.
    pub require_signature: bool,
    /// Model repository root holding `<name>/<version>/`; empty = the grandparent of `dir`
    /// (`models` for `models/fraud_mlp/1`). `dir` must be `<repository>/<name>/<version>`.
    pub repository: String,
    /// How often the repository is scanned for new versions and changed manifests; `"0s"` = never.
    pub watch_interval: String,
    /// What the watcher does with a new version: `ignore`, `load` (verify, warm up, keep ready),
    /// `shadow`, `canary` (at `canary_weight`) or `promote` (after the validation gate).
    pub on_new_version: String,
    /// Share of keys (0.0..=1.0) a new version serves when `on_new_version = "canary"`.
    pub canary_weight: f64,
}

impl Default for RawModel {
    fn default() -> Self {
        Self {
            dir: "models/fraud_mlp/1".into(),
            onnxruntime_library: String::new(),
            intra_op_threads: 1,
            inter_op_threads: 1,
            verify_checksum: true,
            execution_provider: "cpu".into(),
            device_id: 0,
            cuda_tf32: false,
            graph_optimization_level: "all".into(),
            memory_arena: true,
            trusted_public_keys: Vec::new(),
            require_signature: false,
            repository: String::new(),
            watch_interval: "5s".into(),
            on_new_version: "load".into(),
            canary_weight: 0.05,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBatch {
    /// `fixed` (default): batches close at `max_batch_size` or `max_batch_delay`. `adaptive`:
    /// size and delay follow `latency_target`, with those two as upper bounds.
    pub mode: String,
    /// Most rows in one inference call (adaptive: the upper bound of the size target); `"auto"`:
    /// by execution provider (CPU 256, GPU 2048).
    pub max_batch_size: RawCount,
    /// Longest wait after a batch's first row before it is scored anyway (adaptive: the upper
    /// bound of the delay).
    pub max_batch_delay: String,
    /// adaptive: the latency the batch size and delay are steered toward, from an input's
    /// arrival at the source to its outcome acknowledged by the broker.
    pub latency_target: String,
    /// Batches queued between stages; a full queue stops consumption (backpressure). `"auto"`:
    /// as many as hold [`QUEUE_INPUTS`] inputs at `max_batch_size` (4 to 64 batches).
    pub queue_depth: RawCount,
}

/// A count that may be left to streamscore: `batch.max_batch_size` (rows) and
/// `batch.queue_depth` (batches), a number or `"auto"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawCount {
    Number(usize),
    Word(String),
}

/// `max_batch_size = "auto"` with `execution_provider = "cpu"`: where a small MLP's cost per row
/// has flattened out (see `benches/README.md`) while a batch still fills within a few ms.
pub const CPU_DEFAULT_BATCH_SIZE: usize = 256;
/// `max_batch_size = "auto"` with a GPU provider: a GPU call has a fixed cost of tens of µs
/// (launch, copies), so it needs thousands of rows to be worth it.
pub const GPU_DEFAULT_BATCH_SIZE: usize = 2048;

/// `queue_depth = "auto"`: each queue between stages holds about this many inputs. On a few cores
/// shared with other work, a stage thread ready to run may wait a scheduler slice (a few ms)
/// for a core; the stage before it keeps working meanwhile only while the queue has room, so
/// the queue is sized in inputs (a few ms of the source's work at saturation), not in batches.
pub const QUEUE_INPUTS: usize = 4096;

/// The `"auto"` queue depth for batches of `max_batch_size`: [`QUEUE_INPUTS`] worth of batches,
/// at least 4 (the depth before `"auto"`; also what GPU-sized batches get) and at most 64.
pub fn auto_queue_depth(max_batch_size: usize) -> usize {
    (QUEUE_INPUTS / max_batch_size.max(1)).clamp(4, 64)
}

impl Default for RawBatch {
    fn default() -> Self {
        Self {
            mode: "fixed".into(),
            max_batch_size: RawCount::Word("auto".into()),
            max_batch_delay: "5ms".into(),
            latency_target: "10ms".into(),
            queue_depth: RawCount::Word("auto".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    /// Serve repeated feature vectors from the prediction cache.
    pub enabled: bool,
    /// Most cached predictions.
    pub max_entries: u64,
    /// How long a cached prediction stays valid.
    pub ttl: String,
    /// `seen_twice` (default): a vector is cached from its second sighting on; `always`: from its first.
    pub admission: String,
    /// Bypass the cache while it costs more than the inference its hits save.
    pub bypass_unprofitable: bool,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 100_000,
            ttl: "10m".into(),
            admission: "seen_twice".into(),
            bypass_unprofitable: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDelivery {
    /// `at_least_once` (default) or `exactly_once` (transactions; downstream reads `read_committed`).
    pub mode: String,
    /// How often acknowledged offsets are committed.
    pub commit_interval: String,
    /// Longest wait for in-flight outcomes on partition revoke and on shutdown.
    pub drain_timeout: String,
    /// How long the producer retries one record before it counts as failed (`message.timeout.ms`).
    pub produce_timeout: String,
    /// exactly_once: the producer's `transactional.id`; empty = `streamscore-<group_id>-<instance_id>`.
    /// Must be stable across restarts of one instance (that is what fences its zombie) and
    /// unique among running instances.
    pub transactional_id: String,
    /// exactly_once: `transaction.timeout.ms`; the broker aborts a transaction left open longer.
    pub transaction_timeout: String,
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self {
            mode: "at_least_once".into(),
            commit_interval: "1s".into(),
            drain_timeout: "10s".into(),
            produce_timeout: "30s".into(),
            transactional_id: String::new(),
            transaction_timeout: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDrift {
    /// Publish drift reports and PSI gauges.
    pub enabled: bool,
    /// Length of one drift window.
    pub interval: String,
}

impl Default for RawDrift {
    fn default() -> Self {
        Self { enabled: true, interval: "60s".into() }
    }
}

/// Live model quality from late-arriving labels (docs/quality.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawQuality {
    /// Join labels to predictions and publish quality reports.
    pub enabled: bool,
    /// Topic of `Label` records (schemas/label.avsc).
    pub labels_topic: String,
    /// Where a start reads the labels topic from: `latest` or `earliest`.
    pub start_offset: String,
    /// Length of one quality window.
    pub interval: String,
    /// How long a prediction waits for its label.
    pub prediction_ttl: String,
    /// Most predictions kept for the join; the oldest go first.
    pub max_predictions: u64,
    /// How long a label that arrived before its prediction waits for it.
    pub label_grace: String,
    /// Most such early labels kept.
    pub max_waiting_labels: u64,
}

impl Default for RawQuality {
    fn default() -> Self {
        Self {
            enabled: false,
            labels_topic: "labels".into(),
            start_offset: "latest".into(),
            interval: "60s".into(),
            prediction_ttl: "1h".into(),
            max_predictions: 1_000_000,
            label_grace: "30s".into(),
            max_waiting_labels: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTelemetry {
    /// Address of `/metrics`, `/healthz`, `/readyz`; empty disables the HTTP server.
    pub http_bind: String,
    /// `human` or `json`.
    pub log_format: String,
    /// `tracing` filter, e.g. `info` or `streamscore=debug,rdkafka=warn`.
    pub log_level: String,
    /// Name of this instance in drift reports; empty = host name.
    pub instance_id: String,
}

/// The admin API (docs/admin-api.md). Its bearer token is never a config key (it would be
/// printed with the config): it comes from `token_file` or the `STREAMSCORE_ADMIN_TOKEN`
/// environment variable.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAdmin {
    /// Serve the admin API (model versions: list, load, promote, canary, shadow, rollback, unload).
    pub enabled: bool,
    /// Address of the admin API; separate from `telemetry.http_bind` so that it is not exposed with `/metrics`.
    pub bind: String,
    /// File holding the bearer token (surrounding whitespace ignored); empty = `STREAMSCORE_ADMIN_TOKEN`.
    pub token_file: String,
    /// Requests per minute accepted by the whole admin API (token bucket, burst of the same size).
    pub rate_limit_per_minute: u32,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self { enabled: false, bind: "127.0.0.1:9465".into(), token_file: String::new(), rate_limit_per_minute: 60 }
    }
}

impl Default for RawTelemetry {
    fn default() -> Self {
        Self {
            http_bind: "0.0.0.0:9464".into(),
            log_format: "human".into(),
            log_level: "info".into(),
            instance_id: String::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checked form: what the stages accept.
// ---------------------------------------------------------------------------------------------

/// Delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    AtLeastOnce,
    /// Outputs and input offsets committed in one Kafka transaction per batch.
    ExactlyOnce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub input_topics: Vec<String>,
    pub scored_topic: String,
    pub dead_letter_topic: String,
    pub monitoring_topic: String,
    pub client_id: String,
    /// Group members (consumer threads) of this instance; 1 unless configured.
    pub consumer_threads: usize,
    pub common: BTreeMap<String, String>,
    pub consumer: BTreeMap<String, String>,
    pub producer: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct SchemasConfig {
    pub reader_schema: PathBuf,
    pub registry: Option<RegistryConfig>,
    pub local: BTreeMap<u32, PathBuf>,
    pub scored_schema_id: u32,
    pub drift_schema_id: u32,
    pub max_message_bytes: usize,
}

#[derive(Clone)]
pub struct RegistryConfig {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

impl fmt::Debug for RegistryConfig {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// ONNX Runtime execution provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    TensorRt,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::TensorRt => "tensorrt",
        }
    }
}

/// ONNX Runtime graph optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    All,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub dir: PathBuf,
    pub onnxruntime_library: Option<PathBuf>,
    pub intra_op_threads: usize,
    pub inter_op_threads: usize,
    pub verify_checksum: bool,
    pub execution_provider: ExecutionProvider,
    pub device_id: i32,
    /// TF32 tensor cores for the CUDA provider's float32 math (`model.cuda_tf32`).
    pub cuda_tf32: bool,
    pub graph_optimization_level: GraphOptimization,
    pub memory_arena: bool,
    /// Ed25519 public keys a manifest signature must verify against (empty: signatures not checked).
    pub trusted_public_keys: Vec<PathBuf>,
    /// Refuse models without a valid signature.
    pub require_signature: bool,
}

/// How micro-batches are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchMode {
    /// Close at `max_batch_size` inputs or `max_batch_delay` after the first one.
    Fixed,
    /// Size and delay steered toward `latency_target` (see `batcher::adaptive`); the fixed
    /// settings are their upper bounds.
    Adaptive,
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub mode: BatchMode,
    pub max_batch_size: usize,
    /// `max_batch_size = "auto"`: sized for the execution provider (see [`BatchConfig::settle_for`]).
    pub auto_size: bool,
    pub max_batch_delay: Duration,
    /// adaptive: arrival at the source → outcome acknowledged, the latency batches are sized for.
    pub latency_target: Duration,
    pub queue_depth: usize,
    /// `queue_depth = "auto"`: follows `max_batch_size` (see [`auto_queue_depth`]).
    pub auto_depth: bool,
}

impl BatchConfig {
    /// Settles an `"auto"` batch size on the execution provider that actually started: when a
    /// GPU provider was asked for but the model fell back to CPU, GPU-sized batches would only
    /// add latency, so the CPU size applies. Returns `(from, to)` when the size changed; an
    /// `"auto"` queue depth follows the new size.
    pub fn settle_for(&mut self, active_provider: &str) -> Option<(usize, usize)> {
        let size = if active_provider == "cpu" { CPU_DEFAULT_BATCH_SIZE } else { GPU_DEFAULT_BATCH_SIZE };
        if !self.auto_size || self.max_batch_size == size {
            return None;
        }
        let from = std::mem::replace(&mut self.max_batch_size, size);
        if self.auto_depth {
            self.queue_depth = auto_queue_depth(size);
        }
        Some((from, size))
    }
}

/// Which scored vectors enter the prediction cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheAdmission {
    /// From a vector's second sighting on (recent sightings are remembered in a small bit set):
    /// a stream of distinct vectors costs no cache inserts. For cheap models.
    SeenTwice,
    /// Every scored vector. For models whose inference costs more than a cache insert.
    Always,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub max_entries: u64,
    pub admission: CacheAdmission,
    pub ttl: Duration,
    /// See [`crate::cache`] (the profitability check).
    pub bypass_unprofitable: bool,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub mode: DeliveryMode,
    pub commit_interval: Duration,
    pub drain_timeout: Duration,
    pub produce_timeout: Duration,
    /// Resolved `transactional.id` (exactly_once only).
    pub transactional_id: String,
    pub transaction_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DriftConfig {
    pub enabled: bool,
    pub interval: Duration,
}

/// Where the labels consumer starts when the service starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelStart {
    /// Labels published from now on (predictions from before a restart are gone anyway).
    Latest,
    /// Everything the labels topic still holds (replays, tests).
    Earliest,
}

/// `[quality]`: labels joined to predictions (see `crate::quality`).
#[derive(Debug, Clone)]
pub struct QualityConfig {
    pub enabled: bool,
    pub labels_topic: String,
    pub start_offset: LabelStart,
    pub interval: Duration,
    pub prediction_ttl: Duration,
    pub max_predictions: usize,
    pub label_grace: Duration,
    pub max_waiting_labels: usize,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub http_bind: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub instance_id: String,
}

/// What the repository watcher does with a newly appeared version (or a changed manifest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnNewVersion {
    /// Nothing: the version is listed as available.
    Ignore,
    /// Verify and warm it up beside the champion; it serves nothing until promoted.
    Load,
    /// Make it the shadow challenger.
    Shadow,
    /// Make it the canary challenger at this weight.
    Canary(f64),
    /// Promote it to champion after the validation gate (never forced).
    Promote,
}

impl OnNewVersion {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ignore => "ignore",
            Self::Load => "load",
            Self::Shadow => "shadow",
            Self::Canary(_) => "canary",
            Self::Promote => "promote",
        }
    }
}

/// The model repository: `<root>/<name>/<version>/manifest.json`, `name` being the served model's.
#[derive(Debug, Clone, PartialEq)]
pub struct RepositoryConfig {
    pub root: PathBuf,
    /// The served model's directory name (`model.dir` is `<root>/<name>/<version>`).
    pub name: String,
    /// Zero: not watched.
    pub watch_interval: Duration,
    pub on_new_version: OnNewVersion,
}

/// The admin API's bearer token. Neither `Debug` nor anything else prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The shortest token accepted: a guessable token would make the API's authentication moot.
    pub const MIN_LEN: usize = 16;

    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The secret itself: only for the constant-time comparison.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The environment variable holding the admin token when `admin.token_file` is empty.
pub const ADMIN_TOKEN_ENV: &str = "STREAMSCORE_ADMIN_TOKEN";

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Always present when `enabled`.
    pub token: Option<AdminToken>,
    pub rate_limit_per_minute: u32,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub schemas: SchemasConfig,
    pub model: ModelConfig,
    pub batch: BatchConfig,
    pub cache: CacheConfig,
    pub delivery: DeliveryConfig,
    pub drift: DriftConfig,
    pub quality: QualityConfig,
    pub telemetry: TelemetryConfig,
    /// `None` when `model.repository` is empty and `model.dir` is not `<root>/<name>/<version>`
    /// (then there is nothing to watch, and the admin API cannot be enabled).
    pub repository: Option<RepositoryConfig>,
    pub admin: AdminConfig,
    /// The file this configuration was read from (`None` for defaults or text): the model
    /// watcher re-reads it, so that changing `model.dir` there switches the served version.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Reads `path` (or only defaults when `None`), applies `STREAMSCORE_*` overrides from the
    /// process environment, and checks everything. Relative paths in the configuration (model
    /// directory, schema files) are relative to the working directory.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => {
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?
            }
            None => String::new(),
        };
        let origin = path.map(|p| p.display().to_string()).unwrap_or_else(|| "<defaults>".into());
        let mut config = Self::from_toml_str(&text, &origin, env)?;
        config.source = path.map(Path::to_path_buf);
        Ok(config)
    }

    /// Parses config text (`origin` names it in messages), applies `env` overrides, checks it.
    pub fn from_toml_str(text: &str, origin: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: PathBuf::from(origin),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        apply_env_overrides(&mut table, env, &mut problems);
        // Unknown keys are reported and removed, so that the rest is still checked: every
        // problem of the file is reported in one go, not one per attempt.
        check_unknown_keys(&mut table, &mut problems);
        let raw = deserialize_sections(table, &mut problems);
        let mut value_problems = Vec::new();
        let env_token = env.iter().find(|(k, _)| k == ADMIN_TOKEN_ENV).map(|(_, v)| v.clone());
        let checked = raw.check_into(&mut value_problems, env_token);
        problems.extend(value_problems);
        match checked {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

/// Tables whose keys are librdkafka properties, not ours.
fn is_passthrough(path: &[&str]) -> bool {
    matches!(path, ["kafka", "common" | "consumer" | "producer"] | ["schemas", "local"])
}

fn apply_env_overrides(table: &mut toml::Table, env: &[(String, String)], problems: &mut Vec<ConfigProblem>) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("STREAMSCORE_") else { continue };
        if !rest.contains("__") {
            continue;
        }
        let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let (path, key): (Vec<&str>, String) = if refs.len() == 3 && is_passthrough(&refs[..2]) {
            let key = if refs[..2] == ["schemas", "local"] { refs[2].to_string() } else { refs[2].replace('_', ".") };
            (refs[..2].to_vec(), key)
        } else if refs.len() == 2 {
            (vec![refs[0]], refs[1].to_string())
        } else {
            problems.push(ConfigProblem {
                key: name.clone(),
                message: "environment override must look like STREAMSCORE_<SECTION>__<KEY> (or STREAMSCORE_KAFKA__CONSUMER__<PROPERTY>)".into(),
            });
            continue;
        };
        let mut cursor = &mut *table;
        for part in &path {
            let entry = cursor.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => cursor = t,
                _ => {
                    problems.push(ConfigProblem { key: name.clone(), message: format!("`{part}` is not a table") });
                    return;
                }
            }
        }
        cursor.insert(key, parse_env_value(value, is_passthrough(&path)));
    }
}

/// Environment values are TOML literals when they parse as one (numbers, booleans, arrays),
/// else plain strings; pass-through properties are always strings.
fn parse_env_value(value: &str, always_string: bool) -> toml::Value {
    if always_string {
        return toml::Value::String(value.to_string());
    }
    let wrapped = format!("v = {value}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(value.to_string())),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

/// Reports (and removes) every key that is not part of the schema; the defaults' shape is the schema.
fn check_unknown_keys(table: &mut toml::Table, problems: &mut Vec<ConfigProblem>) {
    let known = match toml::Table::try_from(RawConfig::default()) {
        Ok(t) => t,
        Err(_) => return,
    };
    walk_unknown(table, &known, &mut Vec::new(), problems);
}

fn walk_unknown(
    table: &mut toml::Table,
    known: &toml::Table,
    path: &mut Vec<String>,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut unknown = Vec::new();
    for (key, value) in table.iter_mut() {
        path.push(key.clone());
        match known.get(key) {
            None => {
                let section = if path.len() > 1 { path[..path.len() - 1].join(".") } else { "top level".into() };
                let valid: Vec<&str> = known.keys().map(String::as_str).collect();
                problems.push(ConfigProblem {
                    key: path.join("."),
                    message: format!("unknown key in {section}; valid keys are: {}", valid.join(", ")),
                });
                unknown.push(key.clone());
            }
            Some(toml::Value::Table(k)) => {
                let refs: Vec<&str> = path.iter().map(String::as_str).collect();
                if !is_passthrough(&refs) {
                    if let toml::Value::Table(t) = value {
                        walk_unknown(t, k, path, problems);
                    }
                }
            }
            Some(_) => {}
        }
        path.pop();
    }
    for key in unknown {
        table.remove(&key);
    }
}

/// Deserializes section by section so that a bad value in one section does not hide the others.
fn deserialize_sections(table: toml::Table, problems: &mut Vec<ConfigProblem>) -> RawConfig {
    fn section<T: serde::de::DeserializeOwned + Default>(
        table: &toml::Table,
        name: &str,
        problems: &mut Vec<ConfigProblem>,
    ) -> T {
        match table.get(name) {
            None => T::default(),
            Some(v) => match v.clone().try_into::<T>() {
                Ok(t) => t,
                Err(e) => {
                    problems.push(ConfigProblem { key: name.to_string(), message: e.message().trim().to_string() });
                    T::default()
                }
            },
        }
    }
    RawConfig {
        kafka: section(&table, "kafka", problems),
        schemas: section(&table, "schemas", problems),
        model: section(&table, "model", problems),
        batch: section(&table, "batch", problems),
        cache: section(&table, "cache", problems),
        delivery: section(&table, "delivery", problems),
        drift: section(&table, "drift", problems),
        quality: section(&table, "quality", problems),
        telemetry: section(&table, "telemetry", problems),
        admin: section(&table, "admin", problems),
    }
}

fn duration(key: &str, value: &str, problems: &mut Vec<ConfigProblem>) -> Duration {
    match humantime::parse_duration(value.trim()) {
        Ok(d) => d,
        Err(e) => {
            problems.push(ConfigProblem {
                key: key.into(),
                message: format!("`{value}` is not a duration ({e}); write e.g. \"5ms\", \"30s\", \"10m\""),
            });
            Duration::ZERO
        }
    }
}

fn non_empty(key: &str, value: &str, problems: &mut Vec<ConfigProblem>) {
    if value.trim().is_empty() {
        problems.push(ConfigProblem { key: key.into(), message: "must not be empty".into() });
    }
}

impl RawCount {
    /// The count this setting gives, and whether it was `"auto"`: a number within `lo..=hi`, or
    /// `auto` for `"auto"`; anything else is a problem under `key` (then `auto` stands in).
    /// `what` names the unit in that message ("rows", "batches").
    fn resolve(
        &self,
        key: &str,
        what: &str,
        (lo, hi): (usize, usize),
        auto: usize,
        p: &mut Vec<ConfigProblem>,
    ) -> (usize, bool) {
        match self {
            RawCount::Number(n) => {
                in_range(key, *n, lo, hi, p);
                (*n, false)
            }
            RawCount::Word(w) if w == "auto" => (auto, true),
            RawCount::Word(w) => {
                p.push(ConfigProblem {
                    key: key.into(),
                    message: format!("`{w}` is neither a number of {what} ({lo}..={hi}) nor `auto`"),
                });
                (auto, false)
            }
        }
    }
}

fn in_range<T: PartialOrd + fmt::Display + Copy>(key: &str, v: T, lo: T, hi: T, problems: &mut Vec<ConfigProblem>) {
    if v < lo || v > hi {
        problems.push(ConfigProblem {
            key: key.into(),
            message: format!("{v} is out of range; must be between {lo} and {hi}"),
        });
    }
}

impl RawConfig {
    /// Converts to the checked form, collecting all problems.
    pub fn check(self) -> Result<Config, ConfigError> {
        let mut p = Vec::new();
        match self.check_into(&mut p, std::env::var(ADMIN_TOKEN_ENV).ok()) {
            Some(c) if p.is_empty() => Ok(c),
            _ => Err(ConfigError::Invalid(p)),
        }
    }

    /// Converts to the checked form, appending every problem to `p` (None if there were any).
    /// `env_token`: the value of `STREAMSCORE_ADMIN_TOKEN`, if set.
    fn check_into(self, p: &mut Vec<ConfigProblem>, env_token: Option<String>) -> Option<Config> {
        let k = self.kafka;
        non_empty("kafka.bootstrap_servers", &k.bootstrap_servers, p);
        non_empty("kafka.group_id", &k.group_id, p);
        non_empty("kafka.scored_topic", &k.scored_topic, p);
        non_empty("kafka.dead_letter_topic", &k.dead_letter_topic, p);
        non_empty("kafka.monitoring_topic", &k.monitoring_topic, p);
        if k.input_topics.is_empty() || k.input_topics.iter().any(|t| t.trim().is_empty()) {
            p.push(ConfigProblem {
                key: "kafka.input_topics".into(),
                message: "must list at least one non-empty topic".into(),
            });
        }
        for out in [&k.scored_topic, &k.dead_letter_topic, &k.monitoring_topic] {
            if k.input_topics.contains(out) {
                p.push(ConfigProblem {
                    key: "kafka.input_topics".into(),
                    message: format!("`{out}` is also an output topic; streamscore would consume its own output"),
                });
            }
        }
        for prop in RESERVED_CONSUMER_PROPS {
            if k.consumer.contains_key(*prop) || k.common.contains_key(*prop) {
                p.push(ConfigProblem {
                    key: format!("kafka.consumer.\"{prop}\""),
                    message:
                        "is set by streamscore itself (delivery guarantees depend on it); use the dedicated key instead"
                            .into(),
                });
            }
        }

        let s = self.schemas;
        let registry = if s.registry_url.trim().is_empty() {
            None
        } else {
            if !(s.registry_url.starts_with("http://") || s.registry_url.starts_with("https://")) {
                p.push(ConfigProblem {
                    key: "schemas.registry_url".into(),
                    message: format!("`{}` must start with http:// or https://", s.registry_url),
                });
            }
            Some(RegistryConfig {
                url: s.registry_url.trim_end_matches('/').to_string(),
                username: (!s.registry_username.is_empty()).then(|| s.registry_username.clone()),
                password: (!s.registry_password.is_empty()).then(|| s.registry_password.clone()),
                timeout: duration("schemas.registry_timeout", &s.registry_timeout, p),
            })
        };
        let mut local = BTreeMap::new();
        for (id, file) in &s.local {
            match id.parse::<u32>() {
                Ok(n) => {
                    local.insert(n, PathBuf::from(file));
                }
                Err(_) => p.push(ConfigProblem {
                    key: format!("schemas.local.\"{id}\""),
                    message: "schema ids are non-negative integers".into(),
                }),
            }
        }
        if registry.is_none() && local.is_empty() {
            p.push(ConfigProblem {
                key: "schemas.local".into(),
                message: "no writer schemas: set schemas.registry_url or map at least one schema id to a file".into(),
            });
        }
        if registry.is_none() && s.scored_schema_id == s.drift_schema_id {
            p.push(ConfigProblem {
                key: "schemas.drift_schema_id".into(),
                message: "must differ from schemas.scored_schema_id".into(),
            });
        }
        in_range("schemas.max_message_bytes", s.max_message_bytes, 64, 1_000_000_000, p);

        let m = self.model;
        non_empty("model.dir", &m.dir, p);
        let admin = check_admin(self.admin, env_token, p);
        let repository = check_repository(&m, admin.enabled, p);
        in_range("model.intra_op_threads", m.intra_op_threads, 1, 256, p);
        in_range("model.inter_op_threads", m.inter_op_threads, 1, 256, p);
        let execution_provider = match m.execution_provider.as_str() {
            "cpu" => ExecutionProvider::Cpu,
            "cuda" => ExecutionProvider::Cuda,
            "tensorrt" => ExecutionProvider::TensorRt,
            other => {
                p.push(ConfigProblem {
                    key: "model.execution_provider".into(),
                    message: format!("`{other}` is not `cpu`, `cuda` or `tensorrt`"),
                });
                ExecutionProvider::Cpu
            }
        };
        in_range("model.device_id", m.device_id, 0, 1024, p);
        let graph_optimization_level = match m.graph_optimization_level.as_str() {
            "disable" => GraphOptimization::Disable,
            "basic" => GraphOptimization::Basic,
            "extended" => GraphOptimization::Extended,
            "all" => GraphOptimization::All,
            other => {
                p.push(ConfigProblem {
                    key: "model.graph_optimization_level".into(),
                    message: format!("`{other}` is not `disable`, `basic`, `extended` or `all`"),
                });
                GraphOptimization::All
            }
        };
        if m.trusted_public_keys.iter().any(|k| k.trim().is_empty()) {
            p.push(ConfigProblem { key: "model.trusted_public_keys".into(), message: "lists an empty path".into() });
        }
        if m.require_signature && m.trusted_public_keys.is_empty() {
            p.push(ConfigProblem {
                key: "model.require_signature".into(),
                message: "is true but model.trusted_public_keys is empty: no signature could be verified".into(),
            });
        }
        if (m.require_signature || !m.trusted_public_keys.is_empty()) && !m.verify_checksum {
            p.push(ConfigProblem {
                key: "model.verify_checksum".into(),
                message: "must be true when signatures are checked: the signature covers the model file only through \
                          the manifest's sha256"
                    .into(),
            });
        }

        let b = self.batch;
        let auto_batch_size = match execution_provider {
            ExecutionProvider::Cpu => CPU_DEFAULT_BATCH_SIZE,
            ExecutionProvider::Cuda | ExecutionProvider::TensorRt => GPU_DEFAULT_BATCH_SIZE,
        };
        let (max_batch_size, auto_size) =
            b.max_batch_size.resolve("batch.max_batch_size", "rows", (1, 65_536), auto_batch_size, p);
        let (queue_depth, auto_depth) =
            b.queue_depth.resolve("batch.queue_depth", "batches", (1, 1024), auto_queue_depth(max_batch_size), p);
        let max_batch_delay = duration("batch.max_batch_delay", &b.max_batch_delay, p);
        if max_batch_delay > Duration::from_secs(10) {
            p.push(ConfigProblem { key: "batch.max_batch_delay".into(), message: "must be at most 10s".into() });
        }
        let batch_mode = match b.mode.as_str() {
            "fixed" => BatchMode::Fixed,
            "adaptive" => BatchMode::Adaptive,
            other => {
                p.push(ConfigProblem {
                    key: "batch.mode".into(),
                    message: format!("`{other}` is not a mode; use `fixed` or `adaptive`"),
                });
                BatchMode::Fixed
            }
        };
        // Checked in both modes: a bad value should not wait for the day someone switches mode.
        let parse_problems = p.len();
        let latency_target = duration("batch.latency_target", &b.latency_target, p);
        if p.len() == parse_problems && (latency_target.is_zero() || latency_target > Duration::from_secs(60)) {
            p.push(ConfigProblem {
                key: "batch.latency_target".into(),
                message: "must be greater than zero and at most 60s".into(),
            });
        }

        let c = self.cache;
        if c.enabled {
            in_range("cache.max_entries", c.max_entries, 1, 1_000_000_000, p);
        }
        let ttl = duration("cache.ttl", &c.ttl, p);
        let admission = match c.admission.as_str() {
            "seen_twice" => CacheAdmission::SeenTwice,
            "always" => CacheAdmission::Always,
            other => {
                p.push(ConfigProblem {
                    key: "cache.admission".into(),
                    message: format!("`{other}` is not `seen_twice` or `always`"),
                });
                CacheAdmission::SeenTwice
            }
        };

        let d = self.delivery;
        let mode = match d.mode.as_str() {
            "at_least_once" => DeliveryMode::AtLeastOnce,
            "exactly_once" => DeliveryMode::ExactlyOnce,
            other => {
                p.push(ConfigProblem {
                    key: "delivery.mode".into(),
                    message: format!("`{other}` is not a mode; use `at_least_once` or `exactly_once`"),
                });
                DeliveryMode::AtLeastOnce
            }
        };
        in_range("kafka.consumer_threads", k.consumer_threads, 1, 64, p);
        if mode == DeliveryMode::ExactlyOnce && k.consumer_threads > 1 {
            // One transactional producer carries one member's group metadata in every commit.
            p.push(ConfigProblem {
                key: "kafka.consumer_threads".into(),
                message: format!(
                    "is {} but delivery.mode = \"exactly_once\" needs 1 (its transactions carry one group \
                     member's metadata); scale out with more instances instead",
                    k.consumer_threads
                ),
            });
        }
        let commit_interval = duration("delivery.commit_interval", &d.commit_interval, p);
        let drain_timeout = duration("delivery.drain_timeout", &d.drain_timeout, p);
        let produce_timeout = duration("delivery.produce_timeout", &d.produce_timeout, p);
        if commit_interval.is_zero() {
            p.push(ConfigProblem {
                key: "delivery.commit_interval".into(),
                message: "must be greater than zero".into(),
            });
        }
        let transaction_timeout = duration("delivery.transaction_timeout", &d.transaction_timeout, p);
        if mode == DeliveryMode::ExactlyOnce && transaction_timeout < produce_timeout {
            p.push(ConfigProblem {
                key: "delivery.transaction_timeout".into(),
                message: "must be at least delivery.produce_timeout (librdkafka requires transaction.timeout.ms >= message.timeout.ms)".into(),
            });
        }
        for reserved in ["transactional.id", "enable.idempotence", "isolation.level"] {
            if k.producer.contains_key(reserved) || k.common.contains_key(reserved) || k.consumer.contains_key(reserved)
            {
                p.push(ConfigProblem {
                    key: format!("kafka.producer.\"{reserved}\""),
                    message: "is set by streamscore from delivery.mode; use delivery.transactional_id for the id"
                        .into(),
                });
            }
        }
        if produce_timeout < Duration::from_secs(1) {
            p.push(ConfigProblem { key: "delivery.produce_timeout".into(), message: "must be at least 1s".into() });
        }

        let dr = self.drift;
        let drift_interval = duration("drift.interval", &dr.interval, p);
        if dr.enabled && drift_interval < Duration::from_millis(100) {
            p.push(ConfigProblem { key: "drift.interval".into(), message: "must be at least 100ms".into() });
        }

        let quality = check_quality(self.quality, p);
        if quality.enabled {
            let outputs = [&k.scored_topic, &k.dead_letter_topic, &k.monitoring_topic];
            if k.input_topics.contains(&quality.labels_topic) || outputs.contains(&&quality.labels_topic) {
                p.push(ConfigProblem {
                    key: "quality.labels_topic".into(),
                    message: format!(
                        "`{}` is also an input or output topic; labels need a topic of their own",
                        quality.labels_topic
                    ),
                });
            }
        }

        let t = self.telemetry;
        let http_bind = if t.http_bind.trim().is_empty() {
            None
        } else {
            match t.http_bind.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    p.push(ConfigProblem {
                        key: "telemetry.http_bind".into(),
                        message: format!("`{}` is not an address like 0.0.0.0:9464", t.http_bind),
                    });
                    None
                }
            }
        };
        let log_format = match t.log_format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                p.push(ConfigProblem {
                    key: "telemetry.log_format".into(),
                    message: format!("`{other}` is not `human` or `json`"),
                });
                LogFormat::Human
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&t.log_level).is_err() {
            p.push(ConfigProblem {
                key: "telemetry.log_level".into(),
                message: format!("`{}` is not a valid filter (e.g. `info`)", t.log_level),
            });
        }
        let instance_id = if t.instance_id.is_empty() { default_instance_id() } else { t.instance_id };
        let transactional_id = if d.transactional_id.is_empty() {
            format!("streamscore-{}-{}", k.group_id, instance_id)
        } else {
            d.transactional_id.clone()
        };

        if !p.is_empty() {
            return None;
        }
        Some(Config {
            kafka: KafkaConfig {
                bootstrap_servers: k.bootstrap_servers,
                group_id: k.group_id,
                input_topics: k.input_topics,
                scored_topic: k.scored_topic,
                dead_letter_topic: k.dead_letter_topic,
                monitoring_topic: k.monitoring_topic,
                client_id: k.client_id,
                consumer_threads: k.consumer_threads,
                common: k.common,
                consumer: k.consumer,
                producer: k.producer,
            },
            schemas: SchemasConfig {
                reader_schema: PathBuf::from(s.reader_schema),
                registry,
                local,
                scored_schema_id: s.scored_schema_id,
                drift_schema_id: s.drift_schema_id,
                max_message_bytes: s.max_message_bytes,
            },
            model: ModelConfig {
                dir: PathBuf::from(m.dir),
                onnxruntime_library: (!m.onnxruntime_library.is_empty()).then(|| PathBuf::from(m.onnxruntime_library)),
                intra_op_threads: m.intra_op_threads,
                inter_op_threads: m.inter_op_threads,
                verify_checksum: m.verify_checksum,
                execution_provider,
                device_id: m.device_id,
                graph_optimization_level,
                memory_arena: m.memory_arena,
                cuda_tf32: m.cuda_tf32,
                trusted_public_keys: m.trusted_public_keys.iter().map(PathBuf::from).collect(),
                require_signature: m.require_signature,
            },
            batch: BatchConfig {
                mode: batch_mode,
                max_batch_size,
                auto_size,
                max_batch_delay,
                latency_target,
                queue_depth,
                auto_depth,
            },
            cache: CacheConfig {
                enabled: c.enabled,
                max_entries: c.max_entries,
                admission,
                ttl,
                bypass_unprofitable: c.bypass_unprofitable,
            },
            delivery: DeliveryConfig {
                mode,
                commit_interval,
                drain_timeout,
                produce_timeout,
                transactional_id,
                transaction_timeout,
            },
            drift: DriftConfig { enabled: dr.enabled, interval: drift_interval },
            quality,
            telemetry: TelemetryConfig { http_bind, log_format, log_level: t.log_level, instance_id },
            repository,
            admin,
            source: None,
        })
    }
}

/// `[quality]` → [`QualityConfig`].
fn check_quality(q: RawQuality, p: &mut Vec<ConfigProblem>) -> QualityConfig {
    let interval = duration("quality.interval", &q.interval, p);
    let prediction_ttl = duration("quality.prediction_ttl", &q.prediction_ttl, p);
    let label_grace = duration("quality.label_grace", &q.label_grace, p);
    let start_offset = match q.start_offset.trim() {
        "latest" => LabelStart::Latest,
        "earliest" => LabelStart::Earliest,
        other => {
            p.push(ConfigProblem {
                key: "quality.start_offset".into(),
                message: format!("`{other}` is not one of: latest, earliest"),
            });
            LabelStart::Latest
        }
    };
    if q.enabled {
        non_empty("quality.labels_topic", &q.labels_topic, p);
        if interval < Duration::from_millis(100) {
            p.push(ConfigProblem { key: "quality.interval".into(), message: "must be at least 100ms".into() });
        }
        if prediction_ttl < Duration::from_secs(1) {
            p.push(ConfigProblem {
                key: "quality.prediction_ttl".into(),
                message: "must be at least 1s (how long a prediction waits for its label)".into(),
            });
        }
        if q.max_predictions < 1000 {
            p.push(ConfigProblem {
                key: "quality.max_predictions".into(),
                message: "must be at least 1000 (each costs about 32 bytes)".into(),
            });
        }
    }
    QualityConfig {
        enabled: q.enabled,
        labels_topic: q.labels_topic.trim().to_string(),
        start_offset,
        interval,
        prediction_ttl,
        max_predictions: usize::try_from(q.max_predictions).unwrap_or(usize::MAX),
        label_grace,
        max_waiting_labels: usize::try_from(q.max_waiting_labels).unwrap_or(usize::MAX),
    }
}

/// `[model]` repository keys → [`RepositoryConfig`] (`None` when `model.dir` does not say where
/// the repository is and `model.repository` is empty).
fn check_repository(m: &RawModel, admin_enabled: bool, p: &mut Vec<ConfigProblem>) -> Option<RepositoryConfig> {
    let watch_interval = duration("model.watch_interval", &m.watch_interval, p);
    if !watch_interval.is_zero() && watch_interval < Duration::from_millis(50) {
        p.push(ConfigProblem {
            key: "model.watch_interval".into(),
            message: "must be 0s (no watching) or at least 50ms".into(),
        });
    }
    let weight_ok = (0.0..=1.0).contains(&m.canary_weight);
    if !weight_ok {
        p.push(ConfigProblem {
            key: "model.canary_weight".into(),
            message: format!("{} is not a share of keys between 0.0 and 1.0", m.canary_weight),
        });
    }
    let on_new_version = match m.on_new_version.as_str() {
        "ignore" => OnNewVersion::Ignore,
        "load" => OnNewVersion::Load,
        "shadow" => OnNewVersion::Shadow,
        "canary" => OnNewVersion::Canary(m.canary_weight.clamp(0.0, 1.0)),
        "promote" => OnNewVersion::Promote,
        other => {
            p.push(ConfigProblem {
                key: "model.on_new_version".into(),
                message: format!("`{other}` is not `ignore`, `load`, `shadow`, `canary` or `promote`"),
            });
            OnNewVersion::Load
        }
    };
    // Lexical components without `.`: `./models/x/1` and `models/x/1` are the same place.
    let parts = |s: &str| -> Vec<std::ffi::OsString> {
        Path::new(s)
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .map(|c| c.as_os_str().to_os_string())
            .collect()
    };
    let dir = parts(&m.dir);
    let name_of = |i: usize| dir.get(i).and_then(|n| n.to_str()).map(str::to_string);
    let layout = "must be <repository>/<name>/<version> (the repository layout, docs/admin-api.md)";
    if m.repository.trim().is_empty() {
        let n = dir.len();
        let named =
            n >= 2 && Path::new(&dir[n - 1]).file_name().is_some() && Path::new(&dir[n - 2]).file_name().is_some();
        if !named {
            if admin_enabled {
                p.push(ConfigProblem {
                    key: "model.repository".into(),
                    message: format!(
                        "is empty and model.dir `{}` {layout}; the admin API needs a repository: set model.repository",
                        m.dir
                    ),
                });
            }
            return None;
        }
        let root: PathBuf = if n == 2 { PathBuf::from(".") } else { dir[..n - 2].iter().collect() };
        return Some(RepositoryConfig { root, name: name_of(n - 2)?, watch_interval, on_new_version });
    }
    let root = parts(&m.repository);
    let inside = dir.len() == root.len() + 2
        && dir.starts_with(&root)
        && dir[root.len()..].iter().all(|c| Path::new(c).file_name().is_some());
    if !inside {
        p.push(ConfigProblem {
            key: "model.dir".into(),
            message: format!("`{}` is not inside model.repository `{}`: it {layout}", m.dir, m.repository),
        });
        return None;
    }
    Some(RepositoryConfig {
        root: PathBuf::from(&m.repository),
        name: name_of(root.len())?,
        watch_interval,
        on_new_version,
    })
}

/// `[admin]` → [`AdminConfig`]; the token is read here so that a missing one is reported with
/// every other problem, and it is never part of a message.
fn check_admin(a: RawAdmin, env_token: Option<String>, p: &mut Vec<ConfigProblem>) -> AdminConfig {
    let bind = match a.bind.parse::<SocketAddr>() {
        Ok(b) => b,
        Err(_) => {
            p.push(ConfigProblem {
                key: "admin.bind".into(),
                message: format!("`{}` is not an address like 127.0.0.1:9465", a.bind),
            });
            SocketAddr::from(([127, 0, 0, 1], 9465))
        }
    };
    in_range("admin.rate_limit_per_minute", a.rate_limit_per_minute, 1, 100_000, p);
    let from_file = if a.token_file.trim().is_empty() {
        None
    } else {
        match std::fs::read_to_string(a.token_file.trim()) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                // The error names the file, never what it holds.
                p.push(ConfigProblem {
                    key: "admin.token_file".into(),
                    message: format!("cannot read `{}`: {e}", a.token_file),
                });
                None
            }
        }
    };
    let env_token = env_token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    if from_file.is_some() && env_token.is_some() {
        p.push(ConfigProblem {
            key: "admin.token_file".into(),
            message: format!("is set and so is {ADMIN_TOKEN_ENV}: give the admin token one way only"),
        });
    }
    let token = from_file.or(env_token).filter(|t| !t.is_empty()).map(AdminToken);
    match &token {
        Some(t) if t.0.len() < AdminToken::MIN_LEN => p.push(ConfigProblem {
            key: "admin.token_file".into(),
            message: format!(
                "the admin token is shorter than {} characters; use a random one (e.g. `openssl rand -hex 32`)",
                AdminToken::MIN_LEN
            ),
        }),
        None if a.enabled => p.push(ConfigProblem {
            key: "admin.token_file".into(),
            message: format!(
                "admin.enabled is true but there is no token: set admin.token_file or {ADMIN_TOKEN_ENV} (the API never runs unauthenticated)"
            ),
        }),
        _ => {}
    }
    AdminConfig { enabled: a.enabled, bind, token, rate_limit_per_minute: a.rate_limit_per_minute }
}

fn default_instance_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "streamscore".into())
}

/// Property names whose values are secrets: redacted wherever config is printed.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("password")
        || n.contains("secret")
        || n.ends_with(".key")
        // `ssl.key.pem` holds the private key itself (not a path like `ssl.key.location`).
        || n.ends_with("key.pem")
        || n.contains("token")
        || n.contains("sasl.oauthbearer.config")
}

impl KafkaConfig {
    /// The pass-through properties for one client, common first, with secrets redacted (for logs).
    pub fn redacted(props: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        props
            .iter()
            .map(|(k, v)| (k.clone(), if is_secret_property(k) { "<redacted>".to_string() } else { v.clone() }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        Config::from_toml_str(text, "test.toml", &env)
    }

    fn problems(r: Result<Config, ConfigError>) -> Vec<ConfigProblem> {
        match r {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = load("", &[]).expect("defaults must be valid");
        assert_eq!(c.batch.max_batch_size, 256);
        assert_eq!(c.batch.max_batch_delay, Duration::from_millis(5));
        assert_eq!(c.delivery.mode, DeliveryMode::AtLeastOnce);
        assert_eq!(c.schemas.local.get(&1), Some(&PathBuf::from("schemas/transaction.avsc")));
    }

    #[test]
    fn shipped_config_file_is_valid_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/streamscore.toml");
        let text = std::fs::read_to_string(&path).expect("config/streamscore.toml exists");
        let c = load(&text, &[]).expect("shipped config is valid");
        let d = load("", &[]).expect("defaults");
        // The documented file states the defaults: if one changes, the other must too.
        assert_eq!(format!("{:?}", c.batch), format!("{:?}", d.batch));
        assert_eq!(format!("{:?}", c.delivery), format!("{:?}", d.delivery));
        assert_eq!(format!("{:?}", c.cache), format!("{:?}", d.cache));
        assert_eq!(format!("{:?}", c.kafka), format!("{:?}", d.kafka));
        assert_eq!(format!("{:?}", c.model), format!("{:?}", d.model));
        assert_eq!(format!("{:?}", c.drift), format!("{:?}", d.drift));
        assert_eq!(format!("{:?}", c.quality), format!("{:?}", d.quality));
        assert_eq!(format!("{:?}", c.schemas), format!("{:?}", d.schemas));
        assert_eq!(c.repository, d.repository);
        assert_eq!(format!("{:?}", c.admin), format!("{:?}", d.admin));
        // Every key of the schema appears in the documented file.
        let file: toml::Table = text.parse().expect("toml");
        let known = toml::Table::try_from(RawConfig::default()).expect("defaults serialize");
        for (section, keys) in &known {
            let toml::Value::Table(keys) = keys else { continue };
            for key in keys.keys() {
                let present = file.get(section).and_then(|s| s.get(key)).is_some();
                assert!(present, "config/streamscore.toml does not document {section}.{key}");
            }
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_all_reported() {
        let p = problems(load(
            "[kafka]\nbootstrap_server = \"x\"\n[batch]\nmax_batch_delay = \"soon\"\nmax_batch_size = 0\n[nonsense]\na = 1\n",
            &[],
        ));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"kafka.bootstrap_server"), "{p:?}");
        assert!(keys.contains(&"nonsense"), "{p:?}");
        // Unknown keys do not hide the bad values elsewhere: one run reports all of them.
        assert!(keys.contains(&"batch.max_batch_delay"), "{p:?}");
        assert!(keys.contains(&"batch.max_batch_size"), "{p:?}");
        let p = problems(load("[batch]\nmax_batch_delay = \"soon\"\nmax_batch_size = 0\n[cache]\nttl = \"-\"\n", &[]));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"batch.max_batch_delay"), "{p:?}");
        assert!(keys.contains(&"batch.max_batch_size"), "{p:?}");
        assert!(keys.contains(&"cache.ttl"), "{p:?}");
    }

    #[test]
    fn wrong_types_name_the_section() {
        let p = problems(load("[batch]\nmax_batch_delay = 5\n[cache]\nenabled = 3\n", &[]));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["batch", "cache"], "{p:?}");
        assert!(p[0].message.contains("max_batch_delay") || p[0].message.contains("invalid type"), "{p:?}");
    }

    #[test]
    fn env_overrides_apply_with_types() {
        let c = load(
            "",
            &[
                ("STREAMSCORE_BATCH__MAX_BATCH_SIZE", "512"),
                ("STREAMSCORE_KAFKA__BOOTSTRAP_SERVERS", "broker:9092"),
                ("STREAMSCORE_KAFKA__COMMON__SASL_PASSWORD", "s3cret"),
                ("STREAMSCORE_KAFKA__INPUT_TOPICS", "[\"a\", \"b\"]"),
                ("STREAMSCORE_TANSU", "/not/config"),
            ],
        )
        .expect("valid");
        assert_eq!(c.batch.max_batch_size, 512);
        assert_eq!(c.kafka.bootstrap_servers, "broker:9092");
        assert_eq!(c.kafka.common.get("sasl.password").map(String::as_str), Some("s3cret"));
        assert_eq!(c.kafka.input_topics, vec!["a", "b"]);
        assert_eq!(KafkaConfig::redacted(&c.kafka.common).get("sasl.password").map(String::as_str), Some("<redacted>"));
    }

    #[test]
    fn unknown_env_override_is_an_error() {
        let p = problems(load("", &[("STREAMSCORE_BATCH__MAX_SIZE", "1")]));
        assert_eq!(p[0].key, "batch.max_size");
    }

    #[test]
    fn reserved_and_inconsistent_settings_are_refused() {
        let p = problems(load(
            "[kafka]\ninput_topics = [\"t\"]\nscored_topic = \"t\"\n[kafka.consumer]\n\"enable.auto.offset.store\" = \"true\"\n[delivery]\nmode = \"best_effort\"\n",
            &[],
        ));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"kafka.input_topics"), "{p:?}");
        assert!(keys.contains(&"kafka.consumer.\"enable.auto.offset.store\""), "{p:?}");
        assert!(keys.contains(&"delivery.mode"), "{p:?}");
    }

    #[test]
    fn exactly_once_resolves_a_stable_transactional_id() {
        let c =
            load("[delivery]\nmode = \"exactly_once\"\n[telemetry]\ninstance_id = \"pod-3\"\n", &[]).expect("valid");
        assert_eq!(c.delivery.mode, DeliveryMode::ExactlyOnce);
        assert_eq!(c.delivery.transactional_id, "streamscore-streamscore-pod-3");
        let p = problems(load("[delivery]\nmode = \"exactly_once\"\ntransaction_timeout = \"1s\"\n[kafka.producer]\n\"transactional.id\" = \"x\"\n", &[]));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"delivery.transaction_timeout"), "{p:?}");
        assert!(keys.contains(&"kafka.producer.\"transactional.id\""), "{p:?}");
    }

    #[test]
    fn quality_is_off_by_default_and_its_keys_are_checked() {
        let d = Config::from_toml_str("", "test", &[]).unwrap();
        assert!(!d.quality.enabled);
        assert_eq!(d.quality.labels_topic, "labels");
        assert_eq!(d.quality.start_offset, LabelStart::Latest);
        assert_eq!(d.quality.prediction_ttl, Duration::from_secs(3600));
        assert_eq!(d.quality.max_predictions, 1_000_000);
        assert_eq!(d.schemas.local.get(&7), Some(&PathBuf::from("schemas/label.avsc")));
        let c = Config::from_toml_str(
            "[quality]\nenabled = true\nlabels_topic = \"truth\"\nstart_offset = \"earliest\"\ninterval = \"5s\"\n",
            "test",
            &[("STREAMSCORE_QUALITY__PREDICTION_TTL".into(), "2h".into())],
        )
        .unwrap();
        assert!(c.quality.enabled);
        assert_eq!(
            (c.quality.labels_topic.as_str(), c.quality.start_offset, c.quality.interval, c.quality.prediction_ttl),
            ("truth", LabelStart::Earliest, Duration::from_secs(5), Duration::from_secs(7200))
        );
        let err = Config::from_toml_str(
            "[quality]\nenabled = true\nlabels_topic = \"transactions\"\nstart_offset = \"middle\"\ninterval = \"1ms\"\nmax_predictions = 10\nlabel_gracee = \"1s\"\n",
            "test",
            &[],
        )
        .unwrap_err()
        .to_string();
        for key in [
            "quality.labels_topic",
            "quality.start_offset",
            "quality.interval",
            "quality.max_predictions",
            "quality.label_gracee",
        ] {
            assert!(err.contains(key), "{key} missing in: {err}");
        }
        assert!(err.contains("labels need a topic of their own"), "{err}");
    }

    #[test]
    fn batch_mode_defaults_to_fixed_and_adaptive_is_parsed() {
        let c = load("", &[]).expect("defaults");
        assert_eq!(c.batch.mode, BatchMode::Fixed);
        assert_eq!(c.batch.latency_target, Duration::from_millis(10));
        let c = load("[batch]\nmode = \"adaptive\"\nlatency_target = \"25ms\"\nmax_batch_size = 1024\n", &[])
            .expect("valid");
        assert_eq!(c.batch.mode, BatchMode::Adaptive);
        assert_eq!(c.batch.latency_target, Duration::from_millis(25));
        assert_eq!(c.batch.max_batch_size, 1024);
        let c = load("", &[("STREAMSCORE_BATCH__MODE", "adaptive"), ("STREAMSCORE_BATCH__LATENCY_TARGET", "7ms")])
            .expect("env overrides");
        assert_eq!(c.batch.mode, BatchMode::Adaptive);
        assert_eq!(c.batch.latency_target, Duration::from_millis(7));
    }

    #[test]
    fn bad_batch_mode_and_latency_target_are_all_reported() {
        for (text, why) in [
            ("[batch]\nmode = \"dynamic\"\nlatency_target = \"0ms\"\n", "zero target"),
            ("[batch]\nmode = \"Adaptive\"\nlatency_target = \"soon\"\n", "unparseable target"),
            ("[batch]\nmode = \"\"\nlatency_target = \"2m\"\n", "target above 60s"),
        ] {
            let p = problems(load(text, &[]));
            let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, vec!["batch.mode", "batch.latency_target"], "{why}: {p:?}");
        }
        // A bad target is reported in fixed mode too, and together with problems elsewhere.
        let p = problems(load("[batch]\nlatency_target = \"-1ms\"\nmax_batch_size = 0\n", &[]));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"batch.latency_target") && keys.contains(&"batch.max_batch_size"), "{p:?}");
        let p = problems(load("", &[("STREAMSCORE_BATCH__MODE", "auto")]));
        assert_eq!(p[0].key, "batch.mode");
        assert!(p[0].message.contains("`fixed` or `adaptive`"), "{p:?}");
        let p = problems(load("[batch]\nmode = 1\n", &[]));
        assert_eq!(p[0].key, "batch", "a wrong type names the section: {p:?}");
    }

    #[test]
    fn signature_settings_are_checked_together() {
        let c =
            load("[model]\ntrusted_public_keys = [\"keys/a.pub\", \"keys/b.pem\"]\nrequire_signature = true\n", &[])
                .expect("valid");
        assert_eq!(c.model.trusted_public_keys, vec![PathBuf::from("keys/a.pub"), PathBuf::from("keys/b.pem")]);
        assert!(c.model.require_signature);
        let d = load("", &[]).expect("defaults");
        assert!(d.model.trusted_public_keys.is_empty() && !d.model.require_signature);

        let p = problems(load("[model]\nrequire_signature = true\n", &[]));
        assert_eq!(p[0].key, "model.require_signature", "{p:?}");
        let p = problems(load("[model]\ntrusted_public_keys = [\"k.pub\"]\nverify_checksum = false\n", &[]));
        assert_eq!(p[0].key, "model.verify_checksum", "{p:?}");
        let c = load("", &[("STREAMSCORE_MODEL__TRUSTED_PUBLIC_KEYS", "[\"/etc/streamscore/ci.pub\"]")]).expect("env");
        assert_eq!(c.model.trusted_public_keys, vec![PathBuf::from("/etc/streamscore/ci.pub")]);
    }

    #[test]
    fn registry_password_is_not_debug_printed() {
        let c =
            load("[schemas]\nregistry_url = \"http://r:8081\"\nregistry_password = \"hunter2\"\n", &[]).expect("valid");
        let dbg = format!("{:?}", c.schemas);
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn consumer_threads_default_to_one_and_exactly_once_needs_one() {
        assert_eq!(load("", &[]).expect("defaults").kafka.consumer_threads, 1);
        let c = load("[kafka]\nconsumer_threads = 4\n", &[]).expect("four members");
        assert_eq!(c.kafka.consumer_threads, 4);
        let c = load("", &[("STREAMSCORE_KAFKA__CONSUMER_THREADS", "2")]).expect("env override");
        assert_eq!(c.kafka.consumer_threads, 2);
        for bad in ["[kafka]\nconsumer_threads = 0\n", "[kafka]\nconsumer_threads = 65\n"] {
            let p = problems(load(bad, &[]));
            assert!(p.iter().any(|p| p.key == "kafka.consumer_threads"), "{bad}: {p:?}");
        }
        let p = problems(load("[kafka]\nconsumer_threads = 2\n[delivery]\nmode = \"exactly_once\"\n", &[]));
        assert!(p.iter().any(|p| p.key == "kafka.consumer_threads" && p.message.contains("exactly_once")), "{p:?}");
    }

    #[test]
    fn repository_is_derived_from_the_model_dir_or_must_contain_it() {
        let c = load("", &[]).expect("defaults");
        let r = c.repository.expect("derived from models/fraud_mlp/1");
        assert_eq!((r.root, r.name.as_str()), (PathBuf::from("models"), "fraud_mlp"));
        assert_eq!(r.watch_interval, Duration::from_secs(5));
        assert_eq!(r.on_new_version, OnNewVersion::Load);
        let c = load(
            "[model]\ndir = \"/srv/models/m/7\"\nrepository = \"/srv/models\"\nwatch_interval = \"0s\"\non_new_version = \"canary\"\ncanary_weight = 0.2\n",
            &[],
        )
        .expect("valid");
        let r = c.repository.expect("explicit");
        assert_eq!((r.root, r.name.as_str(), r.watch_interval), (PathBuf::from("/srv/models"), "m", Duration::ZERO));
        assert_eq!(r.on_new_version, OnNewVersion::Canary(0.2));
        // A bare directory has no repository: fine until the admin API needs one.
        assert!(load("[model]\ndir = \"mymodel\"\n", &[]).expect("valid").repository.is_none());

        let p = problems(load(
            "[model]\ndir = \"/srv/models/m/7\"\nrepository = \"/elsewhere\"\nwatch_interval = \"often\"\non_new_version = \"deploy\"\ncanary_weight = 1.5\n",
            &[],
        ));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for key in ["model.dir", "model.watch_interval", "model.on_new_version", "model.canary_weight"] {
            assert!(keys.contains(&key), "{key}: {p:?}");
        }
        let c = load(
            "",
            &[("STREAMSCORE_MODEL__ON_NEW_VERSION", "promote"), ("STREAMSCORE_MODEL__WATCH_INTERVAL", "100ms")],
        )
        .expect("env overrides");
        let r = c.repository.expect("derived");
        assert_eq!((r.on_new_version, r.watch_interval), (OnNewVersion::Promote, Duration::from_millis(100)));
    }

    #[test]
    fn admin_needs_a_token_and_never_prints_it() {
        let c = load("", &[]).expect("defaults");
        assert!(!c.admin.enabled && c.admin.token.is_none());
        assert_eq!(c.admin.bind, "127.0.0.1:9465".parse().unwrap());
        assert_eq!(c.admin.rate_limit_per_minute, 60);

        let p = problems(load("[admin]\nenabled = true\n", &[]));
        assert_eq!(p[0].key, "admin.token_file", "{p:?}");
        assert!(p[0].message.contains(ADMIN_TOKEN_ENV), "{p:?}");

        let secret = "0123456789abcdef-secret";
        let c = load("[admin]\nenabled = true\n", &[(ADMIN_TOKEN_ENV, secret)]).expect("token from env");
        assert_eq!(c.admin.token.as_ref().map(|t| t.expose()), Some(secret.as_bytes()));
        assert!(!format!("{c:?}").contains(secret), "the token is redacted in Debug");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let text = format!("[admin]\nenabled = true\ntoken_file = \"{}\"\n", file.display());
        let c = load(&text, &[]).expect("token from file");
        assert_eq!(c.admin.token.as_ref().map(|t| t.expose()), Some(secret.as_bytes()), "trailing newline trimmed");

        // Both sources, a short token, a bad bind and rate: all reported, none quoting the token.
        let p = problems(load(
            &format!("{text}bind = \"nowhere\"\nrate_limit_per_minute = 0\n"),
            &[(ADMIN_TOKEN_ENV, "short")],
        ));
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"admin.bind") && keys.contains(&"admin.rate_limit_per_minute"), "{p:?}");
        assert!(keys.iter().filter(|k| **k == "admin.token_file").count() >= 1, "{p:?}");
        assert!(p.iter().all(|p| !p.message.contains(secret) && !p.message.contains("short\"")), "{p:?}");
        let p = problems(load("[admin]\nenabled = true\n", &[(ADMIN_TOKEN_ENV, "short")]));
        assert!(p[0].message.contains("shorter than"), "{p:?}");
        // The admin API needs a repository to act on.
        let p = problems(load("[model]\ndir = \"mymodel\"\n[admin]\nenabled = true\n", &[(ADMIN_TOKEN_ENV, secret)]));
        assert_eq!(p[0].key, "model.repository", "{p:?}");
        let p = problems(load("[admin]\nport = 1\n", &[]));
        assert_eq!(p[0].key, "admin.port", "{p:?}");
    }

    #[test]
    fn cuda_tf32_is_off_unless_asked_for() {
        assert!(!load("", &[]).expect("defaults").model.cuda_tf32, "scores as on CPU by default");
        assert!(load("[model]\ncuda_tf32 = true\n", &[]).expect("file").model.cuda_tf32);
        assert!(load("", &[("STREAMSCORE_MODEL__CUDA_TF32", "true")]).expect("env").model.cuda_tf32);
        let p = problems(load("[model]\ncuda_tf32 = \"yes\"\n", &[]));
        assert!(p.iter().any(|p| p.key.starts_with("model")), "{p:?}");
    }

    #[test]
    fn auto_batch_size_follows_the_execution_provider() {
        assert_eq!(load("", &[]).expect("defaults").batch.max_batch_size, CPU_DEFAULT_BATCH_SIZE);
        let gpu = load("[model]\nexecution_provider = \"cuda\"\n", &[]).expect("cuda");
        assert_eq!(gpu.batch.max_batch_size, GPU_DEFAULT_BATCH_SIZE);
        let trt = load("[model]\nexecution_provider = \"tensorrt\"\n", &[]).expect("tensorrt");
        assert_eq!(trt.batch.max_batch_size, GPU_DEFAULT_BATCH_SIZE);
        // An explicit size wins on any provider, from the file or the environment.
        let mut set =
            load("[model]\nexecution_provider = \"cuda\"\n[batch]\nmax_batch_size = 300\n", &[]).expect("set");
        assert_eq!(set.batch.max_batch_size, 300);
        // A size that was set stays when the GPU provider falls back to CPU ...
        assert_eq!(set.batch.settle_for("cpu"), None);
        assert_eq!(set.batch.max_batch_size, 300);
        // ... "auto" follows the provider that actually started.
        let mut fell_back = load("[model]\nexecution_provider = \"cuda\"\n", &[]).expect("cuda");
        assert_eq!(fell_back.batch.settle_for("cuda"), None);
        assert_eq!(fell_back.batch.settle_for("cpu"), Some((GPU_DEFAULT_BATCH_SIZE, CPU_DEFAULT_BATCH_SIZE)));
        assert_eq!(fell_back.batch.max_batch_size, CPU_DEFAULT_BATCH_SIZE);
        let mut cpu = load("", &[]).expect("defaults");
        assert_eq!(cpu.batch.settle_for("cpu"), None);
        assert_eq!(cpu.batch.max_batch_size, CPU_DEFAULT_BATCH_SIZE);
        let env = load("", &[("STREAMSCORE_BATCH__MAX_BATCH_SIZE", "777")]).expect("env");
        assert_eq!(env.batch.max_batch_size, 777);
        let env =
            load("[batch]\nmax_batch_size = 64\n", &[("STREAMSCORE_BATCH__MAX_BATCH_SIZE", "auto")]).expect("env");
        assert_eq!(env.batch.max_batch_size, CPU_DEFAULT_BATCH_SIZE);
        let p = problems(load("[batch]\nmax_batch_size = \"lots\"\n", &[]));
        assert!(p.iter().any(|p| p.key == "batch.max_batch_size" && p.message.contains("auto")), "{p:?}");
    }

    #[test]
    fn auto_queue_depth_holds_a_few_thousand_inputs() {
        // In inputs, not batches: 16 batches of the CPU default, 4 of the GPU default; 4 to 64.
        assert_eq!(auto_queue_depth(CPU_DEFAULT_BATCH_SIZE), 16);
        assert_eq!(auto_queue_depth(GPU_DEFAULT_BATCH_SIZE), 4);
        assert_eq!(auto_queue_depth(64), 64);
        assert_eq!(auto_queue_depth(1), 64);
        assert_eq!(auto_queue_depth(1000), 4);
        assert_eq!(auto_queue_depth(65_536), 4);
        let d = load("", &[]).expect("defaults");
        assert_eq!((d.batch.queue_depth, d.batch.auto_depth), (16, true));
        assert_eq!(load("[batch]\nmax_batch_size = 128\n", &[]).expect("128").batch.queue_depth, 32);
        let gpu = load("[model]\nexecution_provider = \"cuda\"\n", &[]).expect("cuda");
        assert_eq!(gpu.batch.queue_depth, 4);
        // A number is kept whatever the batch size; from the file or the environment.
        let set = load("[batch]\nqueue_depth = 3\nmax_batch_size = 64\n", &[]).expect("set");
        assert_eq!((set.batch.queue_depth, set.batch.auto_depth), (3, false));
        let env = load("", &[("STREAMSCORE_BATCH__QUEUE_DEPTH", "7")]).expect("env");
        assert_eq!(env.batch.queue_depth, 7);
        let env = load("[batch]\nqueue_depth = 2\n", &[("STREAMSCORE_BATCH__QUEUE_DEPTH", "auto")]).expect("env");
        assert_eq!(env.batch.queue_depth, 16);
        // A GPU provider that fell back to CPU: "auto" follows the size that settled ...
        let mut fell_back = load("[model]\nexecution_provider = \"cuda\"\n", &[]).expect("cuda");
        assert_eq!(fell_back.batch.settle_for("cpu"), Some((GPU_DEFAULT_BATCH_SIZE, CPU_DEFAULT_BATCH_SIZE)));
        assert_eq!(fell_back.batch.queue_depth, 16);
        // ... a set depth does not.
        let mut kept = load("[model]\nexecution_provider = \"cuda\"\n[batch]\nqueue_depth = 5\n", &[]).expect("set");
        assert!(kept.batch.settle_for("cpu").is_some());
        assert_eq!(kept.batch.queue_depth, 5);
        for bad in ["\"deep\"", "0", "1025"] {
            let p = problems(load(&format!("[batch]\nqueue_depth = {bad}\n"), &[]));
            assert!(p.iter().any(|p| p.key == "batch.queue_depth"), "{bad}: {p:?}");
        }
        let p = problems(load("[batch]\nqueue_depth = \"deep\"\n", &[]));
        assert!(p.iter().any(|p| p.message.contains("auto")), "{p:?}");
    }
}
