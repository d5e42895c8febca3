//! Model lifecycle on the real broker: hot swap, canary, shadow and rollback, driven through the
//! deployment control the admin API uses. Every assertion is by event id and exact: which version
//! scored each input follows from when the command was answered (it applies between batches) or
//! from the routing hash, never from timing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rdkafka::Message;

use streamscore::codec;
use streamscore::config::{Config, ModelConfig};
use streamscore::model::deploy::{
    canary_routes, ChallengerMode, DeployCommand, DeployControl, DeployError, DeploymentState,
};
use streamscore::model::Model;

use crate::common::{self, Broker, TestRecord};
use crate::service::{self, InProcess, Schemas, Scored, Topics};

const TIMEOUT: Duration = Duration::from_secs(90);
const V1_THRESHOLD: f32 = 0.241;

/// A "version 2": a copy of the shipped model with another version string and threshold (the
/// manifest's sha256 covers only model.onnx, so it still verifies).
fn version_dir(version: &str, threshold: f64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = service::root().join("models/fraud_mlp/1");
    for f in ["manifest.json", "model.onnx"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy model");
    }
    let path = dir.path().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["version"] = serde_json::json!(version);
    m["threshold"] = serde_json::json!(threshold);
    // The validation dataset is relative to the manifest; this copy does not need it.
    m.as_object_mut().unwrap().remove("validation");
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    dir
}

/// Loads the model in `dir` the way the control plane does (off the inference thread).
async fn load(config: &Config, dir: &Path) -> Box<Model> {
    let mut cfg: ModelConfig = config.model.clone();
    cfg.dir = dir.to_path_buf();
    let model = tokio::task::spawn_blocking(move || Model::load(&cfg)).await.expect("loader").expect("model loads");
    Box::new(model)
}

async fn send(control: &DeployControl, command: DeployCommand) -> Result<DeploymentState, DeployError> {
    let control = control.clone();
    tokio::task::spawn_blocking(move || control.apply(command, TIMEOUT)).await.expect("control task")
}

struct Setup {
    bootstrap: String,
    topics: Topics,
    config: Config,
}

async fn setup(extra: &str) -> Setup {
    setup_with_http(extra, None).await
}

async fn setup_with_http(extra: &str, http_port: Option<u16>) -> Setup {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 3).await;
    let config = service::config(&service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        http_port,
        extra,
    ));
    Setup { bootstrap, topics, config }
}

/// `n` synthetic transactions (seed `seed`) with keys from `key_of(i)`; returns the records and
/// their event ids in order.
fn inputs(n: usize, seed: u64, key_of: impl Fn(usize) -> String) -> (Vec<TestRecord>, Vec<String>) {
    let mut generated = service::synthetic(n, seed, 1);
    for (i, r) in generated.records.iter_mut().enumerate() {
        r.0 = Some(key_of(i).into_bytes());
    }
    let ids = generated.transactions.iter().map(|t| t.event_id.clone()).collect();
    (generated.records, ids)
}

/// Every scored record on the topic (waits for `n`, then checks nothing more comes), by event id;
/// panics on a duplicate.
async fn scored_by_id(s: &Setup, n: usize) -> HashMap<String, Scored> {
    let schema = service::scored_schema();
    let mut messages = common::consume_n(&s.bootstrap, &s.topics.scored, n, TIMEOUT).await;
    assert_eq!(messages.len(), n, "scored records");
    let more =
        common::consume_until_quiet(&s.bootstrap, &s.topics.scored, Duration::from_secs(1), Duration::from_secs(10))
            .await;
    assert_eq!(more.len(), n, "no record beyond the {n} expected");
    messages.truncate(n);
    let mut out = HashMap::new();
    for m in &messages {
        let r = service::decode_framed(m, &schema);
        let id = r.str("event_id");
        assert!(out.insert(id.clone(), r).is_none(), "input {id} scored twice");
    }
    out
}

/// Checks that `r` was scored by `version` with that version's threshold.
fn assert_version(r: &Scored, version: &str, threshold: f32) {
    let id = r.str("event_id");
    assert_eq!(r.str("model_name"), "fraud_mlp", "{id}");
    assert_eq!(r.str("model_version"), version, "{id}");
    assert!((r.float("threshold") - threshold).abs() < 1e-6, "{id}: threshold {}", r.float("threshold"));
    assert_eq!(r.bool("label"), r.float("score") >= threshold, "{id}: label under v{version}'s threshold");
}

/// A stream is running; a new version is promoted between two waves of input: every input has
/// exactly one outcome, the first wave names v1, the second v2 (with v2's threshold), none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_mid_stream_switches_version_with_n_in_n_out() {
    let s = setup("").await;
    let v2_dir = version_dir("2", 0.3);
    let v2 = load(&s.config, v2_dir.path()).await;
    let (n1, n2) = (600, 600);
    let (records, ids) = inputs(n1 + n2, 31, |i| format!("acct-{i}"));
    let running = InProcess::start_with_control(s.config.clone());

    common::produce_values(&s.bootstrap, &s.topics.input, records[..n1].to_vec()).await;
    assert!(running.wait_outcomes(n1 as u64, TIMEOUT).await, "only {} outcomes of {n1}", running.outcomes());
    let state = send(running.control(), DeployCommand::Promote(v2)).await.expect("promote");
    assert_eq!((state.champion.version.as_str(), state.rollback.map(|r| r.version)), ("2", Some("1".to_string())));
    assert_eq!(running.control().state().map(|s| s.champion.version), Some("2".to_string()));
    common::produce_values(&s.bootstrap, &s.topics.input, records[n1..].to_vec()).await;
    assert!(running.wait_outcomes((n1 + n2) as u64, TIMEOUT).await, "only {} outcomes", running.outcomes());
    let summary = running.stop().await;
    assert_eq!((summary.consumed, summary.scored), ((n1 + n2) as u64, (n1 + n2) as u64));
    assert_eq!(summary.model_version, "2", "the summary names the champion at the end");

    let scored = scored_by_id(&s, n1 + n2).await;
    for id in &ids[..n1] {
        assert_version(&scored[id], "1", V1_THRESHOLD);
    }
    for id in &ids[n1..] {
        assert_version(&scored[id], "2", 0.3);
    }
}

/// The samples of `name` in a Prometheus page whose labels include every one of `labels`.
fn samples(page: &str, name: &str, labels: &[&str]) -> Vec<f64> {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// A canary at 20%: each key's outputs all name one version, the one the routing hash gives it,
/// and the canary's share of keys and of outputs is 20% within tolerance. Metrics carry the
/// version that did the work and the role of each loaded version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_at_20_percent_routes_each_key_to_one_version() {
    let port = service::free_port();
    let s = setup_with_http("", Some(port)).await;
    let v2_dir = version_dir("2", 0.3);
    let v2 = load(&s.config, v2_dir.path()).await;
    let (keys, repeats) = (1000, 4);
    let n = keys * repeats;
    let (records, _) = inputs(n, 47, |i| format!("cust-{:05}", i % keys));
    let running = InProcess::start_with_control(s.config.clone());
    let state =
        send(running.control(), DeployCommand::Challenger { model: v2, mode: ChallengerMode::Canary { weight: 0.2 } })
            .await
            .expect("canary");
    assert_eq!(
        state.challenger.as_ref().map(|(v, m)| (v.version.as_str(), *m)),
        Some(("2", ChallengerMode::Canary { weight: 0.2 }))
    );
    common::produce_values(&s.bootstrap, &s.topics.input, records).await;
    assert!(running.wait_outcomes(n as u64, TIMEOUT).await, "only {} outcomes of {n}", running.outcomes());
    let url = format!("http://127.0.0.1:{port}/metrics");
    let page = tokio::task::spawn_blocking(move || common::http("GET", &url, None)).await.expect("metrics").body;
    running.stop().await;
    // The recorder is process-wide (other tests run version 2 too): these check that the labels
    // exist and move in the right direction, the exact counts are checked on the outputs below.
    let v2 = r#"version="2""#;
    assert_eq!(samples(&page, "streamscore_model_info", &[v2, r#"role="canary""#]), vec![1.0], "{page}");
    assert!(samples(&page, "streamscore_cache_misses_total", &[v2]).iter().sum::<f64>() > 0.0);
    assert!(samples(&page, "streamscore_inference_seconds_count", &[v2]).iter().sum::<f64>() > 0.0);
    let applied = [r#"action="challenger""#, r#"result="applied""#];
    assert!(samples(&page, "streamscore_model_deployments_total", &applied).iter().sum::<f64>() >= 1.0);

    let scored = scored_by_id(&s, n).await;
    let mut version_of_key: HashMap<Vec<u8>, String> = HashMap::new();
    let mut on_canary = 0usize;
    for r in scored.values() {
        let key = r.key.clone().expect("the input's key is kept");
        let want = if canary_routes(&key, 0.2) { "2" } else { "1" };
        assert_version(r, want, if want == "2" { 0.3 } else { V1_THRESHOLD });
        on_canary += usize::from(want == "2");
        let v = version_of_key.entry(key).or_insert_with(|| r.str("model_version"));
        assert_eq!(*v, r.str("model_version"), "one key, one version");
    }
    assert_eq!(version_of_key.len(), keys);
    let key_share = version_of_key.values().filter(|v| *v == "2").count() as f64 / keys as f64;
    let output_share = on_canary as f64 / n as f64;
    assert!((key_share - 0.2).abs() <= 0.05, "canary share of keys {key_share}");
    assert!((output_share - 0.2).abs() <= 0.05, "canary share of outputs {output_share}");
}

/// A challenger in shadow: the scored topic carries only the champion; the monitoring topic has
/// one shadow result per scored input with the challenger's score, and a drift report per version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_results_go_to_the_monitoring_topic_only() {
    let s = setup("").await;
    let v2_dir = version_dir("2", 0.5);
    let v2 = load(&s.config, v2_dir.path()).await;
    let n = 800;
    let (records, ids) = inputs(n, 53, |i| format!("acct-{i}"));
    let running = InProcess::start_with_control(s.config.clone());
    send(running.control(), DeployCommand::Challenger { model: v2, mode: ChallengerMode::Shadow })
        .await
        .expect("shadow");
    common::produce_values(&s.bootstrap, &s.topics.input, records).await;
    assert!(running.wait_outcomes(n as u64, TIMEOUT).await, "only {} outcomes of {n}", running.outcomes());
    // Stopping publishes the last drift window of each version.
    running.stop().await;

    let scored = scored_by_id(&s, n).await;
    for id in &ids {
        assert_version(&scored[id], "1", V1_THRESHOLD);
    }
    let monitoring =
        common::consume_until_quiet(&s.bootstrap, &s.topics.monitoring, Duration::from_secs(2), TIMEOUT).await;
    let shadow_schema = codec::parse_schema(codec::SHADOW_SCORE_SCHEMA).unwrap();
    let shadow_id = codec::local_shadow_schema_id(s.config.schemas.scored_schema_id, s.config.schemas.drift_schema_id);
    let mut shadows: HashMap<String, Scored> = HashMap::new();
    let mut drift_keys = HashSet::new();
    for m in &monitoring {
        let id = u32::from_be_bytes(m.payload().unwrap()[1..5].try_into().unwrap());
        if id == shadow_id {
            let r = service::decode_framed(m, &shadow_schema);
            let event = r.str("event_id");
            assert!(shadows.insert(event.clone(), r).is_none(), "shadow result for {event} twice");
        } else {
            assert_eq!(id, s.config.schemas.drift_schema_id, "only drift reports and shadow results");
            drift_keys.insert(String::from_utf8(m.key().unwrap().to_vec()).unwrap());
        }
    }
    assert_eq!(shadows.len(), n, "one shadow result per scored input");
    for id in &ids {
        let (sh, out) = (&shadows[id], &scored[id]);
        assert_eq!(sh.str("champion_version"), "1");
        assert_eq!(sh.str("challenger_version"), "2");
        assert_eq!(sh.float("champion_score"), out.float("score"));
        // Same graph: the challenger's score equals the champion's; its label is under its own threshold.
        assert_eq!(sh.float("challenger_score"), out.float("score"));
        assert_eq!(sh.float("challenger_threshold"), 0.5);
        assert_eq!(sh.bool("challenger_label"), sh.float("challenger_score") >= 0.5);
        assert_eq!(sh.key.as_deref(), out.key.as_deref(), "keyed like the input");
        let source = (sh.str("source_topic"), sh.long("source_offset"));
        assert_eq!(source, (out.str("source_topic"), out.long("source_offset")));
    }
    assert!(
        drift_keys.contains("fraud_mlp/1") && drift_keys.contains("fraud_mlp/2"),
        "a drift report per scoring version: {drift_keys:?}"
    );
}

/// Rollback with nothing to roll back and a weight without a canary are refused; after a
/// promotion, a rollback serves the very next input with the previous version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_serves_the_next_batch_with_the_previous_version() {
    let s = setup("").await;
    let v2_dir = version_dir("2", 0.3);
    let v2 = load(&s.config, v2_dir.path()).await;
    let (n1, n2) = (400, 400);
    let (records, ids) = inputs(n1 + n2, 61, |i| format!("acct-{i}"));
    let running = InProcess::start_with_control(s.config.clone());
    let control = running.control();
    assert_eq!(send(control, DeployCommand::Rollback).await, Err(DeployError::NothingToRollBack));
    assert_eq!(send(control, DeployCommand::SetCanaryWeight(0.1)).await, Err(DeployError::NoCanary));
    send(control, DeployCommand::Promote(v2)).await.expect("promote");

    common::produce_values(&s.bootstrap, &s.topics.input, records[..n1].to_vec()).await;
    assert!(running.wait_outcomes(n1 as u64, TIMEOUT).await, "only {} outcomes of {n1}", running.outcomes());
    let state = send(control, DeployCommand::Rollback).await.expect("rollback");
    assert_eq!(state.champion.version, "1");
    assert_eq!(state.rollback.map(|r| r.version), Some("2".to_string()), "rolled back from is the new target");
    common::produce_values(&s.bootstrap, &s.topics.input, records[n1..].to_vec()).await;
    assert!(running.wait_outcomes((n1 + n2) as u64, TIMEOUT).await, "only {} outcomes", running.outcomes());
    running.stop().await;

    let scored = scored_by_id(&s, n1 + n2).await;
    for id in &ids[..n1] {
        assert_version(&scored[id], "2", 0.3);
    }
    for id in &ids[n1..] {
        assert_version(&scored[id], "1", V1_THRESHOLD);
    }
}

/// After the pipeline stopped, commands are refused (not lost in a queue nobody reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_after_stop_are_refused() {
    let s = setup("").await;
    let running = InProcess::start_with_control(s.config.clone());
    let control = running.control().clone();
    assert!(send(&control, DeployCommand::ClearChallenger).await.is_ok());
    running.stop().await;
    assert_eq!(send(&control, DeployCommand::ClearChallenger).await, Err(DeployError::Stopping));
}

/// The whole control plane on the real binary (`model.watch_interval`, `admin.enabled`): a
/// version dropped into the model repository is picked up by the watcher and promoted while the
/// stream runs; one admin call rolls back. Every input has exactly one outcome, named after the
/// version that served it: the first wave v1, the second v2, the third v1 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_dropped_into_the_repository_is_promoted_and_one_admin_call_rolls_back() {
    const TOKEN: &str = "test-admin-token-0123456789";
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 3).await;
    // The repository: <root>/fraud_mlp/1 (the shipped model, without its validation dataset).
    let root = tempfile::tempdir().expect("tempdir");
    let v1 = version_dir("1", f64::from(V1_THRESHOLD));
    let model_root = root.path().join("fraud_mlp");
    std::fs::create_dir_all(&model_root).expect("mkdir");
    copy_dir(v1.path(), &model_root.join("1"));

    let (http, admin) = (service::free_port(), service::free_port());
    let extra = format!("[admin]\nenabled = true\nbind = \"127.0.0.1:{admin}\"\n");
    let group = common::random_topic("g");
    let toml = service::config_toml(&bootstrap, &topics, &group, Schemas::Local, Some(http), &extra);
    // For reading the scored topic afterwards (the admin section needs the token from the environment).
    let s = Setup {
        bootstrap: bootstrap.clone(),
        topics: topics.clone(),
        config: service::config(&service::config_toml(&bootstrap, &topics, &group, Schemas::Local, None, "")),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = model_root.join("1").display().to_string();
    let bin = service::Binary::start_with_env(
        &toml,
        http,
        dir.path(),
        "lifecycle",
        &[
            ("STREAMSCORE_MODEL__DIR", model_dir.as_str()),
            ("STREAMSCORE_MODEL__WATCH_INTERVAL", "200ms"),
            ("STREAMSCORE_MODEL__ON_NEW_VERSION", "promote"),
            ("STREAMSCORE_ADMIN_TOKEN", TOKEN),
        ],
    );
    let admin_url = format!("http://127.0.0.1:{admin}");
    let bearer = format!("Bearer {TOKEN}");
    let listing = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        common::http_with_headers("GET", &format!("{admin_url}/admin/models"), None, &headers)
    };
    let champion = || -> Option<String> {
        let body: serde_json::Value = serde_json::from_str(&listing(Some(&bearer)).body).ok()?;
        body["deployment"]["champion"]["version"].as_str().map(str::to_string)
    };

    let n = 400;
    let (records, ids) = inputs(3 * n, 61, |i| format!("acct-{i}"));
    common::produce_values(&bootstrap, &topics.input, records[..n].to_vec()).await;
    bin.wait_metric("streamscore_events_scored_total", n as f64, TIMEOUT).await;
    assert_eq!(listing(None).status, 401, "the admin API needs the token");
    assert_eq!(champion().as_deref(), Some("1"));

    // Drop version 2 in (copied under a hidden name, then renamed: the watcher never sees half a copy).
    let v2 = version_dir("2", 0.3);
    let incoming = model_root.join(".incoming-2");
    copy_dir(v2.path(), &incoming);
    std::fs::rename(&incoming, model_root.join("2")).expect("rename into place");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while champion().as_deref() != Some("2") {
        assert!(tokio::time::Instant::now() < deadline, "v2 not promoted by the watcher:\n{}", bin.log_tail(40));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::produce_values(&bootstrap, &topics.input, records[n..2 * n].to_vec()).await;
    bin.wait_metric("streamscore_events_scored_total", (2 * n) as f64, TIMEOUT).await;

    // One admin call rolls back.
    let reply =
        common::http_with_headers("POST", &format!("{admin_url}/admin/rollback"), None, &[("Authorization", &bearer)]);
    assert_eq!(reply.status, 200, "rollback: {}", reply.body);
    assert_eq!(champion().as_deref(), Some("1"));
    common::produce_values(&bootstrap, &topics.input, records[2 * n..].to_vec()).await;
    bin.wait_metric("streamscore_events_scored_total", (3 * n) as f64, TIMEOUT).await;
    drop(bin);

    let scored = scored_by_id(&s, 3 * n).await;
    for id in &ids[..n] {
        assert_version(&scored[id], "1", V1_THRESHOLD);
    }
    for id in &ids[n..2 * n] {
        assert_version(&scored[id], "2", 0.3);
    }
    for id in &ids[2 * n..] {
        assert_version(&scored[id], "1", V1_THRESHOLD);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
