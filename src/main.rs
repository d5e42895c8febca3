//! The `streamscore` binary: parses the command line and calls into the library.
//!
//! Exit codes: 0 clean stop; 1 runtime failure (model, broker, undeliverable outcome);
//! 2 invalid command line or configuration; 130 second interrupt (immediate exit).
//! `validate`: 0 every check passed; 1 a check failed or the candidate was refused; 2 the gate
//! could not run (command line, configuration, runtime library, unreadable dataset).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rdkafka::ClientConfig;

use streamscore::config::{Config, LogFormat, RawConfig};
use streamscore::demo::{self, DemoOptions, LabelTraffic, TrafficOptions};
use streamscore::model::verify;
use streamscore::validate::{self, LimitOverrides, ValidateOptions};
use streamscore::{pipeline, report, telemetry};

#[derive(Parser)]
#[command(name = "streamscore", version, about = "Scores Kafka event streams with ONNX models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scoring service.
    Run {
        /// Configuration file (every key optional; see config/streamscore.toml).
        #[arg(long, short, env = "STREAMSCORE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print the problems, if any.
    CheckConfig {
        #[arg(long, short, env = "STREAMSCORE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Zero-infrastructure demo: in-process mock Kafka, synthetic traffic, the real pipeline.
    Demo {
        /// Transactions to publish.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Partitions of the input, scored and labels topics; raised to one per 20 000 events,
        /// since the in-process mock keeps only the last 5 MiB of each partition.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// ONNX Runtime execution provider: cpu, cuda or tensorrt (model.execution_provider;
        /// cuda/tensorrt need ORT_DYLIB_PATH to name the onnxruntime-gpu wheel's library).
        #[arg(long, default_value = "cpu")]
        execution_provider: String,
    },
    /// Publish synthetic transactions (Avro, Confluent framing) to a real broker.
    Produce {
        #[arg(long, default_value = "localhost:9092")]
        bootstrap_servers: String,
        #[arg(long, default_value = "transactions")]
        topic: String,
        /// How many transactions.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Events per second (0 = as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Schema id written in the Confluent header (the transaction schema's id).
        #[arg(long, default_value_t = 1)]
        schema_id: u32,
        /// Register schemas/transaction.avsc under <topic>-value in this registry and use its id.
        #[arg(long)]
        registry_url: Option<String>,
        /// Every n-th event is malformed (0 = none).
        #[arg(long, default_value_t = 0)]
        malformed_every: u64,
        /// Share of events repeating an earlier event's features (cache hits).
        #[arg(long, default_value_t = 0.0)]
        repeat_share: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Extra librdkafka producer properties, KEY=VALUE (TLS/SASL).
        #[arg(long = "property", short = 'X', value_parser = parse_property)]
        properties: Vec<(String, String)>,
        /// Also publish the ground truth of every valid transaction (the generator's own fraud
        /// draw) as a Label record (schemas/label.avsc) to this topic (docs/quality.md).
        #[arg(long)]
        labels_topic: Option<String>,
        /// How long after its transaction a label is published (chargebacks come late).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        label_delay: Duration,
        /// Schema id written in front of labels (7 = schemas/label.avsc in the shipped
        /// [schemas.local]); with --registry-url, the schema is registered under <labels-topic>-value.
        #[arg(long, default_value_t = 7)]
        label_schema_id: u32,
    },
    /// Validation gate: load a candidate model as the service does (with signature and checksum
    /// verification), score its labelled dataset and check parity, quality and latency limits
    /// (docs/model-validation.md). Exit 0 = passed, 1 = failed, 2 = could not run.
    Validate {
        /// Model version directory (manifest.json, model.onnx, the dataset).
        #[arg(long)]
        model: PathBuf,
        /// Labelled dataset (JSON lines); default: the manifest's `validation.dataset`.
        #[arg(long)]
        dataset: Option<PathBuf>,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Configuration file: its [model] section (ONNX Runtime library and session settings,
        /// trusted keys) and schemas.reader_schema apply; model.dir is replaced by --model.
        #[arg(long, short, env = "STREAMSCORE_CONFIG")]
        config: Option<PathBuf>,
        /// Trust this Ed25519 public key too (repeatable; added to model.trusted_public_keys).
        #[arg(long = "trusted-public-key")]
        trusted_public_keys: Vec<PathBuf>,
        /// Refuse the candidate unless its manifest is signed by a trusted key.
        #[arg(long)]
        require_signature: bool,
        /// Rows per inference call (replaces validation.batch_size).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Replaces validation.max_abs_score_diff.
        #[arg(long)]
        max_abs_score_diff: Option<f64>,
        /// Replaces validation.min_roc_auc.
        #[arg(long)]
        min_roc_auc: Option<f64>,
        /// Replaces validation.min_precision.
        #[arg(long)]
        min_precision: Option<f64>,
        /// Replaces validation.min_recall.
        #[arg(long)]
        min_recall: Option<f64>,
        /// Replaces validation.max_batch_latency_ms (p99 per batch).
        #[arg(long)]
        max_batch_latency_ms: Option<f64>,
    },
    /// Create an Ed25519 key pair for signing model manifests: OUT.key (secret, hex, mode 0600)
    /// and OUT.pub (public, hex; list it in model.trusted_public_keys).
    Keygen {
        /// Path prefix of the two files; existing files are never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a self-contained HTML drift and quality report of the monitoring topic
    /// (docs/report.md): reads the whole topic once, without joining a consumer group.
    Report {
        #[arg(long, short, env = "STREAMSCORE_CONFIG")]
        config: Option<PathBuf>,
        /// Topic to read (default: kafka.monitoring_topic).
        #[arg(long)]
        topic: Option<String>,
        /// Only windows that ended (shadow scores scored) within this long before now, e.g. `6h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// The HTML file to write.
        #[arg(long, default_value = streamscore::report::DEFAULT_OUT)]
        out: PathBuf,
        /// Overall limit of the read, e.g. `60s`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        timeout: Duration,
    },
    /// Sign DIR/manifest.json with an Ed25519 secret key: writes DIR/manifest.json.sig.
    Sign {
        /// Model version directory.
        #[arg(long)]
        model: PathBuf,
        /// Secret key: hex seed (from `keygen`) or PEM PKCS#8 (`openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
    },
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Validate {
            model,
            dataset,
            json,
            config,
            trusted_public_keys,
            require_signature,
            batch_size,
            max_abs_score_diff,
            min_roc_auc,
            min_precision,
            min_recall,
            max_batch_latency_ms,
        } => {
            let overrides = LimitOverrides {
                batch_size,
                max_abs_score_diff,
                min_roc_auc,
                min_precision,
                min_recall,
                max_batch_latency_ms,
            };
            run_validate(model, dataset, json, config, trusted_public_keys, require_signature, overrides)
        }
        Command::Report { config, topic, since, out, timeout } => {
            run_report(&runtime, config, topic, since, out, timeout)
        }
        Command::Keygen { out } => keygen(&out),
        Command::Sign { model, key } => sign(&model, &key),
        Command::Run { config } => {
            let config = match Config::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init_tracing(config.telemetry.log_format, &config.telemetry.log_level);
            match runtime.block_on(pipeline::run(config, shutdown_signal())) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "streamscore stopped with an error");
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                println!(
                    "configuration is valid: {} input topic(s), model {}",
                    c.kafka.input_topics.len(),
                    c.model.dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Demo { events, seed, partitions, execution_provider } => {
            telemetry::init_tracing(LogFormat::Human, "warn,streamscore=warn");
            let mut stdout = std::io::stdout();
            let opts = DemoOptions { events, seed, partitions };
            let set_provider = |raw: &mut RawConfig| raw.model.execution_provider = execution_provider.clone();
            match runtime.block_on(demo::run(opts, set_provider, &mut stdout)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Produce {
            bootstrap_servers,
            topic,
            count,
            rate,
            schema_id,
            registry_url,
            malformed_every,
            repeat_share,
            seed,
            properties,
            labels_topic,
            label_delay,
            label_schema_id,
        } => {
            telemetry::init_tracing(LogFormat::Human, "warn");
            let labels =
                labels_topic.map(|topic| LabelTraffic { topic, delay: label_delay, schema_id: label_schema_id });
            match runtime.block_on(produce(
                bootstrap_servers,
                topic,
                TrafficOptions { events: count, malformed_every, repeat_share, seed, schema_id, rate, labels },
                registry_url,
                properties,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `streamscore validate`: exit 0 passed, 1 failed or refused, 2 could not run.
fn run_validate(
    model: PathBuf,
    dataset: Option<PathBuf>,
    json: bool,
    config: Option<PathBuf>,
    trusted_public_keys: Vec<PathBuf>,
    require_signature: bool,
    overrides: LimitOverrides,
) -> ExitCode {
    // The report and the final error line say everything; the model's own log lines (its
    // refusal, the signature status, a GPU fallback) would repeat them (RUST_LOG shows them).
    telemetry::init_tracing(LogFormat::Human, "error,streamscore::model=off");
    let mut cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    cfg.model.dir = model;
    cfg.model.trusted_public_keys.extend(trusted_public_keys);
    cfg.model.require_signature |= require_signature;
    let opts = ValidateOptions {
        dataset,
        reader_schema: cfg.schemas.reader_schema.clone(),
        max_message_bytes: cfg.schemas.max_message_bytes,
        overrides,
    };
    match validate::validate(&cfg.model, &opts) {
        Ok(report) => {
            let text = if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => text + "\n",
                    Err(e) => {
                        eprintln!("error: cannot write the report as JSON: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                report.render_text()
            };
            // A closed pipe (`| head`) is not worth a panic; the exit code still tells the result.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `streamscore report`: exit 0 written, 1 broker or file failure, 2 bad configuration.
fn run_report(
    runtime: &tokio::runtime::Runtime,
    config: Option<PathBuf>,
    topic: Option<String>,
    since: Option<Duration>,
    out: PathBuf,
    timeout: Duration,
) -> ExitCode {
    telemetry::init_tracing(LogFormat::Human, "warn");
    let cfg = match Config::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = report::ReportOptions {
        topic: topic.unwrap_or_else(|| cfg.kafka.monitoring_topic.clone()),
        since,
        out,
        timeout,
        idle_grace: report::IDLE_GRACE,
    };
    match runtime.block_on(report::run(&cfg, &opts)) {
        Ok(summary) => {
            println!("{}", summary.line());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `streamscore keygen --out PREFIX`: PREFIX.key (secret seed, hex, 0600) and PREFIX.pub.
fn keygen(out: &std::path::Path) -> ExitCode {
    let key = verify::generate_signing_key();
    let with_suffix = |suffix: &str| {
        let mut p = out.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let (secret, public) = (with_suffix(".key"), with_suffix(".pub"));
    let write = |path: &std::path::Path, text: String, mode: u32| -> std::io::Result<()> {
        use std::io::Write as _;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
        #[cfg(not(unix))]
        let _ = mode;
        opts.open(path)?.write_all(text.as_bytes())
    };
    if let Err(e) = write(&secret, format!("{}\n", verify::secret_key_hex(&key)), 0o600) {
        eprintln!("error: cannot create {}: {e}", secret.display());
        return ExitCode::from(1);
    }
    if let Err(e) = write(&public, format!("{}\n", verify::public_key_hex(&key.verifying_key())), 0o644) {
        eprintln!("error: cannot create {}: {e}", public.display());
        return ExitCode::from(1);
    }
    println!(
        "wrote {} (secret: keep it in your CI secret store) and {} (list it in model.trusted_public_keys)",
        secret.display(),
        public.display()
    );
    ExitCode::SUCCESS
}

/// `streamscore sign --model DIR --key KEY`: writes DIR/manifest.json.sig.
fn sign(model: &std::path::Path, key_path: &std::path::Path) -> ExitCode {
    let key = match std::fs::read(key_path).map_err(|e| e.to_string()).and_then(|b| verify::parse_secret_key(&b)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: secret key {}: {e}", key_path.display());
            return ExitCode::from(2);
        }
    };
    match verify::sign_manifest(model, &key) {
        Ok(path) => {
            println!("wrote {} (public key {})", path.display(), verify::public_key_hex(&key.verifying_key()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: cannot sign {}: {e}", model.join("manifest.json").display());
            ExitCode::from(1)
        }
    }
}

async fn produce(
    bootstrap: String,
    topic: String,
    mut opts: TrafficOptions,
    registry_url: Option<String>,
    properties: Vec<(String, String)>,
) -> anyhow::Result<()> {
    if let Some(url) = registry_url {
        use streamscore::codec;
        let settings = codec::RegistrySettings {
            url: url.clone(),
            username: None,
            password: None,
            bearer_token: None,
            timeout: Duration::from_secs(10),
        };
        let reader = codec::parse_schema(codec::TRANSACTION_SCHEMA)?;
        let store = codec::SchemaStore::new(
            reader,
            &Default::default(),
            Some(settings),
            Some(tokio::runtime::Handle::current()),
        )?;
        opts.schema_id = store
            .register(&format!("{topic}-value"), codec::TRANSACTION_SCHEMA)
            .await
            .with_context(|| format!("registering the transaction schema at {url}"))?;
        println!("registered schemas/transaction.avsc as id {} under {topic}-value", opts.schema_id);
        if let Some(labels) = opts.labels.as_mut() {
            labels.schema_id = store
                .register(&format!("{}-value", labels.topic), codec::LABEL_SCHEMA)
                .await
                .with_context(|| format!("registering the label schema at {url}"))?;
            println!("registered schemas/label.avsc as id {} under {}-value", labels.schema_id, labels.topic);
        }
    }
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &bootstrap).set("linger.ms", "5").set("enable.idempotence", "true");
    for (k, v) in &properties {
        cfg.set(k, v);
    }
    let (published, elapsed) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        // Idempotent: the clock (and the rate) starts once the producer can send, not while it
        // still waits for its producer id.
        let producer = demo::ready_publisher(cfg, Duration::from_secs(30))?;
        let started = std::time::Instant::now();
        let published = demo::publish_synthetic(&producer, &topic, &opts, |n| {
            if n % 100_000 == 0 && n > 0 {
                eprintln!("  published {n}");
            }
        })
        .context("publishing failed")?;
        Ok((published, started.elapsed()))
    })
    .await
    .context("publisher panicked")??;
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "published {} transactions ({} malformed, {} repeats) in {:.1} s ({:.0}/s)",
        published.total,
        published.malformed,
        published.repeats,
        secs,
        published.total as f64 / secs
    );
    if published.labels > 0 {
        println!("published {} labels ({} fraud)", published.labels, published.fraud);
    }
    Ok(())
}

/// Resolves on the first SIGINT/SIGTERM; a second one exits at once with 130.
async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("signal received: draining (send it again to exit immediately)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting immediately");
        std::process::exit(130);
    });
    // Give the spawned watcher a chance to register before the drain starts.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
