//! Running streamscore under test: in-process (`pipeline::run`) or as the real binary
//! (for kill -9 and SIGTERM), plus synthetic input and output decoding.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::sync::oneshot;

use streamscore::codec;
use streamscore::config::Config;
use streamscore::model::deploy::DeployControl;
use streamscore::pipeline::{self, PipelineError, RunSummary};
use streamscore::synth::{encode_transaction, Generator, Transaction};
use streamscore::telemetry::RunStats;

use crate::common::{self, TestRecord};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ONNX Runtime library of the project's virtualenv (`make test` sets ORT_DYLIB_PATH).
pub fn ort_library() -> PathBuf {
    streamscore::model::project_onnxruntime_library(&root())
        .unwrap_or_else(|| panic!("no libonnxruntime.so.* under .venv: run `make test`"))
}

/// The four topics of one test, with random names.
#[derive(Clone, Debug)]
pub struct Topics {
    pub input: String,
    pub scored: String,
    pub dlq: String,
    pub monitoring: String,
}

impl Topics {
    pub async fn create(bootstrap: &str, input_partitions: i32) -> Topics {
        let t = Topics {
            input: common::random_topic("in"),
            scored: common::random_topic("scored"),
            dlq: common::random_topic("dlq"),
            monitoring: common::random_topic("mon"),
        };
        common::create_topic(bootstrap, &t.input, input_partitions).await;
        common::create_topic(bootstrap, &t.scored, 3).await;
        common::create_topic(bootstrap, &t.dlq, 1).await;
        common::create_topic(bootstrap, &t.monitoring, 1).await;
        t
    }
}

/// Where writer schemas come from in a test instance.
pub enum Schemas<'a> {
    /// Local id 1 = schemas/transaction.avsc, 7 = schemas/label.avsc.
    Local,
    /// Only the registry at this URL.
    Registry(&'a str),
}

/// A complete config file for a test instance; `extra` adds whole sections (not kafka, model,
/// schemas or telemetry, which are written here).
pub fn config_toml(
    bootstrap: &str,
    topics: &Topics,
    group: &str,
    schemas: Schemas<'_>,
    http_port: Option<u16>,
    extra: &str,
) -> String {
    let root = root();
    let schema_section = match schemas {
        Schemas::Local => format!(
            "[schemas.local]\n\"1\" = \"{}\"\n\"7\" = \"{}\"\n",
            root.join("schemas/transaction.avsc").display(),
            root.join("schemas/label.avsc").display()
        ),
        Schemas::Registry(url) => format!("registry_url = \"{url}\"\n[schemas.local]\n"),
    };
    format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topics = ["{input}"]
scored_topic = "{scored}"
dead_letter_topic = "{dlq}"
monitoring_topic = "{monitoring}"

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"statistics.interval.ms" = "1000"

[model]
dir = "{model}"
onnxruntime_library = "{ort}"

[telemetry]
http_bind = "{http}"
log_level = "info,streamscore=debug"

[schemas]
reader_schema = "{reader}"
{schema_section}
{extra}
"#,
        input = topics.input,
        scored = topics.scored,
        dlq = topics.dlq,
        monitoring = topics.monitoring,
        model = root.join("models/fraud_mlp/1").display(),
        ort = ort_library().display(),
        http = http_port.map(|p| format!("127.0.0.1:{p}")).unwrap_or_default(),
        reader = root.join("schemas/transaction.avsc").display(),
    )
}

pub fn config(toml: &str) -> Config {
    Config::from_toml_str(toml, "test", &[]).unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A pipeline running inside the test process.
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<RunSummary, PipelineError>>,
    pub stats: Arc<RunStats>,
    /// The deployment control of an instance started with [`InProcess::start_with_control`].
    control: Option<DeployControl>,
}

impl InProcess {
    pub fn start(config: Config) -> InProcess {
        let stats = Arc::new(RunStats::default());
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(pipeline::run_with_stats(config, stats.clone(), async move {
            let _ = rx.await;
        }));
        InProcess { stop: Some(tx), handle, stats, control: None }
    }

    /// [`InProcess::start`] with [`config_toml`]'s local schemas and no HTTP endpoint.
    pub fn start_local(bootstrap: &str, topics: &Topics, group: &str, extra: &str) -> InProcess {
        Self::start(config(&config_toml(bootstrap, topics, group, Schemas::Local, None, extra)))
    }

    /// As [`InProcess::start`], keeping the deployment control (see [`InProcess::control`]).
    pub fn start_with_control(config: Config) -> InProcess {
        let stats = Arc::new(RunStats::default());
        let (tx, rx) = oneshot::channel();
        let (control, end) = DeployControl::channel();
        let handle = tokio::spawn(pipeline::run_with_control(config, stats.clone(), end, async move {
            let _ = rx.await;
        }));
        InProcess { stop: Some(tx), handle, stats, control: Some(control) }
    }

    /// The deployment control (what the admin API drives); only with [`InProcess::start_with_control`].
    pub fn control(&self) -> &DeployControl {
        self.control.as_ref().expect("started with InProcess::start_with_control")
    }

    pub fn outcomes(&self) -> u64 {
        self.stats.outcomes()
    }

    pub fn cache_hits(&self) -> u64 {
        self.stats.cache_hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until this instance has produced `n` outcomes.
    pub async fn wait_outcomes(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.outcomes() >= n {
                return true;
            }
            if self.handle.is_finished() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Graceful stop (what SIGTERM does in the binary).
    pub async fn stop(mut self) -> RunSummary {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(Ok(Ok(summary))) => summary,
            Ok(Ok(Err(e))) => panic!("pipeline failed: {e}"),
            Ok(Err(e)) => panic!("pipeline task panicked: {e}"),
            Err(_) => panic!("pipeline did not stop within 60 s"),
        }
    }
}

/// The real `streamscore` binary, for signals and crashes.
pub struct Binary {
    pub child: Child,
    pub http_port: u16,
    log: PathBuf,
}

impl Binary {
    pub fn start(config_toml: &str, http_port: u16, dir: &Path, name: &str) -> Binary {
        Self::start_with_env(config_toml, http_port, dir, name, &[])
    }

    pub fn start_with_env(config_toml: &str, http_port: u16, dir: &Path, name: &str, env: &[(&str, &str)]) -> Binary {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config_toml).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .envs(env.iter().copied())
            .spawn()
            .expect("start streamscore");
        Binary { child, http_port, log }
    }

    pub fn signal(&self, sig: &str) {
        let status =
            Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// kill -9: no drain, no commit.
    pub fn kill9(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until metric `name` reaches `at_least` (as a float, e.g. `n as f64`); panics with the
    /// log tail after `timeout`.
    pub async fn wait_metric(&self, name: &str, at_least: impl Into<f64>, timeout: Duration) {
        let at_least = at_least.into();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.metric(name).unwrap_or(0.0) < at_least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} did not reach {at_least} within {timeout:?}:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter from `/metrics` (summed over labels), None while the endpoint is not up.
    pub fn metric(&self, name: &str) -> Option<f64> {
        // Not listening yet (starting) or any more (killed): no reading, no panic.
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.http_port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        let url = format!("http://127.0.0.1:{}/metrics", self.http_port);
        let body = std::panic::catch_unwind(|| common::http("GET", &url, None)).ok()?;
        (body.status == 200).then(|| metric_sum(&body.body, name))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sum of every sample of metric `name` in a Prometheus text page.
pub fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Synthetic transactions framed with `schema_id`: key = account id, and a `trace-id` header
/// on some: none on every fourth record and on every record of every other stretch of 64, so
/// that the sink produces both ways (records without headers in batch calls, a record with
/// headers alone, in input order between them).
pub struct Inputs {
    pub records: Vec<TestRecord>,
    pub transactions: Vec<Transaction>,
}

pub fn synthetic(n: usize, seed: u64, schema_id: u32) -> Inputs {
    let mut gen = Generator::new(seed, 1_767_225_600_000);
    let mut records = Vec::with_capacity(n);
    let mut transactions = Vec::with_capacity(n);
    for i in 0..n {
        let tx = gen.next_transaction();
        let mut value = Vec::new();
        codec::write_frame_header(&mut value, schema_id);
        encode_transaction(&tx, &mut value);
        records.push((
            Some(tx.account_id.clone().into_bytes()),
            value,
            if has_trace_header(i) {
                vec![("trace-id".to_string(), format!("trace-{i}").into_bytes())]
            } else {
                Vec::new()
            },
            None,
        ));
        transactions.push(tx);
    }
    Inputs { records, transactions }
}

/// Whether [`synthetic`]'s record `i` carries a `trace-id` header.
fn has_trace_header(i: usize) -> bool {
    i % 4 != 0 && (i / 64) % 2 == 0
}

/// A decoded ScoredTransaction plus its Kafka envelope.
#[derive(Debug, Clone)]
pub struct Scored {
    pub schema_id: u32,
    pub fields: HashMap<String, Value>,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    /// The record's Kafka timestamp.
    pub timestamp: rdkafka::Timestamp,
}

impl Scored {
    pub fn str(&self, name: &str) -> String {
        match self.fields.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Uuid(u)) => u.to_string(),
            other => panic!("field {name} is not a string: {other:?}"),
        }
    }
    pub fn float(&self, name: &str) -> f32 {
        match self.fields.get(name) {
            Some(Value::Float(f)) => *f,
            other => panic!("field {name} is not a float: {other:?}"),
        }
    }
    pub fn bool(&self, name: &str) -> bool {
        match self.fields.get(name) {
            Some(Value::Boolean(b)) => *b,
            other => panic!("field {name} is not a boolean: {other:?}"),
        }
    }
    pub fn long(&self, name: &str) -> i64 {
        match self.fields.get(name) {
            Some(Value::Long(v)) | Some(Value::TimestampMillis(v)) => *v,
            Some(Value::Int(v)) => *v as i64,
            other => panic!("field {name} is not a long: {other:?}"),
        }
    }
}

/// Decodes a record framed in Confluent format with `schema_json` (independently of the sink's
/// hand-written encoder: apache-avro's generic reader).
pub fn decode_framed(msg: &OwnedMessage, schema: &apache_avro::Schema) -> Scored {
    let payload = msg.payload().expect("payload");
    assert_eq!(payload[0], 0, "magic byte");
    let schema_id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    let mut body = &payload[5..];
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema).build().expect("reader");
    let value = reader.read_value(&mut body).expect("decodes with the schema");
    assert!(body.is_empty(), "trailing bytes");
    let Value::Record(fields) = value else { panic!("not a record") };
    Scored {
        schema_id,
        fields: fields.into_iter().collect(),
        key: msg.key().map(<[u8]>::to_vec),
        headers: common::headers_of(msg),
        partition: msg.partition(),
        timestamp: msg.timestamp(),
    }
}

pub fn scored_schema() -> apache_avro::Schema {
    codec::parse_schema(codec::SCORED_TRANSACTION_SCHEMA).expect("scored schema")
}

pub fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Standard base64 (the reference scorer's input format); tiny, to avoid a dependency.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `n` synthetic transactions (local schema id 1) with every amount multiplied by `factor`.
pub fn shifted(n: usize, seed: u64, factor: f64) -> Vec<TestRecord> {
    synthetic(n, seed, 1)
        .transactions
        .into_iter()
        .map(|mut tx| {
            tx.amount *= factor;
            let mut value = Vec::new();
            codec::write_frame_header(&mut value, 1);
            encode_transaction(&tx, &mut value);
            (Some(tx.account_id.clone().into_bytes()), value, Vec::new(), None)
        })
        .collect()
}
