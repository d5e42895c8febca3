//! The pipeline end to end against the real test broker: scores, dead letters, schema
//! registry, drift, HTTP endpoints.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::producer::Producer;
use rdkafka::Message;

use streamscore::codec;
use streamscore::demo;
use streamscore::synth::{malformed_payload, Malformed};

use crate::common::{self, Broker, Registry, TestRecord};
use crate::service::{self, header, Binary, InProcess, Schemas, Topics};

const TIMEOUT: Duration = Duration::from_secs(90);

/// N valid events in → N scored out; every score equals Python onnxruntime's on the same inputs
/// (Python decodes with fastavro and extracts features from the manifest on its own); keys and
/// headers propagate; per input partition, outcomes keep input order, across records produced
/// in batch calls (no headers) and alone (headers); each lands in the partition librdkafka's
/// default partitioner picks for its key (CRC-32 of the key by Python's zlib, modulo the scored
/// topic's 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_match_python_onnxruntime_and_envelopes_propagate() {
    let n = 3000;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 3).await;
    let inputs = service::synthetic(n, 7, 1);
    let placed = common::produce_values(&bootstrap, &topics.input, inputs.records.clone()).await;

    let cfg = service::config(&service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        None,
        "",
    ));
    let running = InProcess::start(cfg);
    assert!(running.wait_outcomes(n as u64, TIMEOUT).await, "only {} outcomes of {n}", running.outcomes());
    let summary = running.stop().await;
    assert_eq!(summary.consumed, n as u64);
    assert_eq!(summary.scored, n as u64);
    assert!(summary.dead_lettered.is_empty(), "{:?}", summary.dead_lettered);

    let messages = common::consume_n(&bootstrap, &topics.scored, n, TIMEOUT).await;
    assert_eq!(messages.len(), n);
    let extra =
        common::consume_until_quiet(&bootstrap, &topics.dlq, Duration::from_secs(1), Duration::from_secs(5)).await;
    assert!(extra.is_empty(), "no dead letters expected, got {}", extra.len());

    // Independent reference: the Python scorer on the very bytes we produced.
    let dir = tempfile::tempdir().expect("tempdir");
    let input_file = dir.path().join("inputs.b64");
    let lines: Vec<String> = inputs.records.iter().map(|(_, v, _, _)| service::base64(v)).collect();
    std::fs::write(&input_file, lines.join("\n") + "\n").expect("write inputs");
    let output_file = dir.path().join("scores.jsonl");
    let root = service::root();
    let status = std::process::Command::new(common::python())
        .arg(root.join("python/reference_score.py"))
        .arg("--model-dir")
        .arg(root.join("models/fraud_mlp/1"))
        .arg("--schema")
        .arg(root.join("schemas/transaction.avsc"))
        .arg("--input")
        .arg(&input_file)
        .arg("--output")
        .arg(&output_file)
        .status()
        .expect("run python/reference_score.py");
    assert!(status.success(), "reference scorer failed");
    let mut reference: HashMap<String, (f64, bool)> = HashMap::new();
    for line in std::fs::read_to_string(&output_file).expect("scores").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let id = v["event_id"].as_str().expect("event id").to_string();
        let score = v["score"].as_f64().expect("every input scores in Python too");
        reference.insert(id, (score, v["label"].as_bool().expect("label")));
    }
    assert_eq!(reference.len(), n);

    let schema = service::scored_schema();
    let offsets: HashMap<String, (i32, i64)> =
        inputs.transactions.iter().zip(&placed).map(|(tx, p)| (tx.event_id.clone(), *p)).collect();
    let keys: HashMap<String, &str> =
        inputs.transactions.iter().map(|tx| (tx.event_id.clone(), tx.account_id.as_str())).collect();
    let traced: HashMap<String, bool> =
        inputs.transactions.iter().zip(&inputs.records).map(|(tx, r)| (tx.event_id.clone(), !r.2.is_empty())).collect();
    assert!(traced.values().any(|&t| t) && traced.values().any(|&t| !t), "inputs with and without headers");
    // Where librdkafka's default partitioner puts each key among the scored topic's 3
    // partitions (CRC-32 of the key), by Python's zlib.
    let distinct: Vec<&str> = keys.values().copied().collect::<HashSet<_>>().into_iter().collect();
    let partitions: HashMap<&str, i32> = distinct.iter().copied().zip(crc32_mod(&distinct, 3)).collect();
    let mut seen = HashSet::new();
    let mut max_diff = 0f64;
    let mut flagged = 0;
    let mut last_offset: HashMap<(i32, i32), i64> = HashMap::new();
    for m in &messages {
        let s = service::decode_framed(m, &schema);
        assert_eq!(s.schema_id, 2, "local scored schema id");
        let id = s.str("event_id");
        assert!(seen.insert(id.clone()), "duplicate outcome for {id}");
        let (ref_score, ref_label) = reference[&id];
        let diff = (s.float("score") as f64 - ref_score).abs();
        max_diff = max_diff.max(diff);
        assert!(diff <= 1e-5, "event {id}: streamscore {} vs onnxruntime {ref_score}", s.float("score"));
        assert_eq!(s.bool("label"), ref_label, "label of {id}");
        flagged += usize::from(s.bool("label"));
        assert_eq!(s.str("model_name"), "fraud_mlp");
        assert_eq!(s.str("model_version"), "1");
        assert!((s.float("threshold") - 0.241).abs() < 1e-6);
        assert_eq!(s.str("source_topic"), topics.input);
        let (partition, offset) = offsets[&id];
        assert_eq!((s.long("source_partition") as i32, s.long("source_offset")), (partition, offset), "source of {id}");
        assert_eq!(s.key.as_deref(), Some(keys[&id].as_bytes()), "key of {id}");
        assert_eq!(s.partition, partitions[keys[&id]], "partition of {id}");
        let scored_at = s.long("scored_at");
        assert!(scored_at >= s.long("event_time"));
        if traced[&id] {
            assert!(
                header(&s.headers, "trace-id").is_some_and(|v| v.starts_with("trace-")),
                "headers of {id}: {:?}",
                s.headers
            );
            // Produced alone: its Kafka timestamp is its batch's one clock reading, `scored_at`.
            assert_eq!(s.timestamp, rdkafka::Timestamp::CreateTime(scored_at), "timestamp of {id}");
        } else {
            assert!(s.headers.is_empty(), "headers of {id}: {:?}", s.headers);
            // Produced in a batch call: librdkafka's clock at that call, just after `scored_at`.
            let rdkafka::Timestamp::CreateTime(t) = s.timestamp else { panic!("timestamp of {id}: {:?}", s.timestamp) };
            assert!((scored_at..=scored_at + 10_000).contains(&t), "timestamp of {id}: {t}, scored at {scored_at}");
        }
        // Outcomes of one input partition landing in one output partition appear in input order.
        let k = (partition, s.partition);
        if let Some(prev) = last_offset.insert(k, offset) {
            assert!(prev < offset, "input partition {partition}: offset {offset} after {prev}");
        }
    }
    assert_eq!(seen.len(), n);
    assert!(flagged > 0 && flagged < n, "some, not all, flagged: {flagged}");
    eprintln!("max |streamscore - onnxruntime| = {max_diff:e}; {flagged} of {n} flagged");
}

/// `zlib.crc32(key) % n` for each of `keys` (ASCII, one per line), computed by Python.
fn crc32_mod(keys: &[&str], n: u32) -> Vec<i32> {
    let script =
        format!("import sys, zlib\nfor k in sys.stdin.read().split():\n    print(zlib.crc32(k.encode()) % {n})");
    let mut child = std::process::Command::new(common::python())
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(keys.join("\n").as_bytes()).expect("write keys");
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "python crc32 failed");
    let got: Vec<i32> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().expect("a partition")).collect();
    assert_eq!(got.len(), keys.len());
    got
}

/// Each kind of bad input goes to the dead-letter topic with its key, bytes, headers and the
/// reason headers, while the valid events around it still score. Repeats hit the cache from
/// their third sighting on (default admission `seen_twice`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_are_dead_lettered_and_valid_ones_still_score() {
    let started_ms = streamscore::sink::now_ms();
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    let valid = service::synthetic(400, 11, 1);
    let mut records: Vec<TestRecord> = Vec::new();
    let mut expected: HashMap<Vec<u8>, &str> = HashMap::new();
    let cases: [(Malformed, &str); 5] = [
        (Malformed::RandomBytes, "bad_magic"),
        (Malformed::BadMagic, "bad_magic"),
        (Malformed::UnknownSchemaId, "unknown_schema"),
        (Malformed::TruncatedBody, "undecodable"),
        (Malformed::NanAmount, "invalid_feature"),
    ];
    for (i, rec) in valid.records.iter().enumerate() {
        records.push(rec.clone());
        if i % 40 == 7 {
            let (kind, reason) = cases[(i / 40) % cases.len()];
            let key = format!("bad-{i}").into_bytes();
            let value = malformed_payload(kind, 1, i as u64);
            expected.insert(key.clone(), reason);
            records.push((Some(key), value, vec![("origin".into(), b"test".to_vec())], None));
        }
    }
    // Two more: an empty value and a value shorter than the Confluent header.
    expected.insert(b"empty".to_vec(), "truncated");
    records.push((Some(b"empty".to_vec()), Vec::new(), vec![], None));
    expected.insert(b"short".to_vec(), "truncated");
    records.push((Some(b"short".to_vec()), vec![0, 0, 0, 1], vec![], None));
    // Exact repeats of earlier feature vectors (new event ids) must hit the cache.
    let repeats = service::synthetic(50, 11, 1);
    let bad_count = expected.len();
    let placed = common::produce_values(&bootstrap, &topics.input, records.clone()).await;
    let total = records.len();

    let cfg = service::config(&service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        None,
        "",
    ));
    let running = InProcess::start(cfg);
    assert!(running.wait_outcomes(total as u64, TIMEOUT).await, "only {} outcomes of {total}", running.outcomes());
    // Repeats after the first pass: same features as the first 50 valid ones, so cache hits.
    let mut again: Vec<TestRecord> = Vec::new();
    for (i, (key, _, headers, p)) in repeats.records.iter().enumerate() {
        let mut tx = repeats.transactions[i].clone();
        tx.event_id = format!("00000000-0000-4000-8000-{:012}", i);
        let mut value = Vec::new();
        codec::write_frame_header(&mut value, 1);
        streamscore::synth::encode_transaction(&tx, &mut value);
        again.push((key.clone(), value, headers.clone(), *p));
    }
    // Default admission (`seen_twice`): the second sighting is scored and cached, the third hits.
    common::produce_values(&bootstrap, &topics.input, again.clone()).await;
    assert!(running.wait_outcomes((total + 50) as u64, TIMEOUT).await, "repeats not scored");
    let hits_after_second_sighting = running.cache_hits();
    common::produce_values(&bootstrap, &topics.input, again).await;
    assert!(running.wait_outcomes((total + 100) as u64, TIMEOUT).await, "repeats not scored");
    let summary = running.stop().await;
    assert!(
        summary.cache_hits >= hits_after_second_sighting + 50,
        "third sightings: cache hits {} after {hits_after_second_sighting}",
        summary.cache_hits
    );

    let dlq = common::consume_n(&bootstrap, &topics.dlq, bad_count, TIMEOUT).await;
    assert_eq!(dlq.len(), bad_count, "dead letters");
    let by_key: HashMap<Vec<u8>, (usize, &TestRecord)> =
        records.iter().enumerate().filter_map(|(i, r)| r.0.clone().map(|k| (k, (i, r)))).collect();
    for m in &dlq {
        let key = m.key().expect("dead letter keeps the key").to_vec();
        let (i, original) = by_key[&key];
        let headers = common::headers_of(m);
        let want = expected[&key];
        assert_eq!(
            header(&headers, "streamscore.dlq.reason"),
            Some(want),
            "reason for {:?}: {headers:?}",
            String::from_utf8_lossy(&key)
        );
        assert!(header(&headers, "streamscore.dlq.detail").is_some_and(|d| !d.is_empty()));
        assert_eq!(header(&headers, "streamscore.dlq.source.topic"), Some(topics.input.as_str()));
        assert_eq!(header(&headers, "streamscore.dlq.source.partition"), Some(placed[i].0.to_string().as_str()));
        assert_eq!(header(&headers, "streamscore.dlq.source.offset"), Some(placed[i].1.to_string().as_str()));
        assert_eq!(m.payload().unwrap_or_default(), &original.1[..], "original bytes kept");
        // Stamped with the time its batch was produced (not the input's time).
        let rdkafka::Timestamp::CreateTime(t) = m.timestamp() else { panic!("timestamp {:?}", m.timestamp()) };
        assert!((started_ms..=streamscore::sink::now_ms()).contains(&t), "dead letter stamped {t}");
        for (name, value) in &original.2 {
            assert!(headers.iter().any(|(k, v)| k == name && v == value), "input header {name} kept");
        }
    }
    let scored = common::consume_n(&bootstrap, &topics.scored, 500, TIMEOUT).await;
    assert_eq!(scored.len(), 500, "every valid input scored");
    let schema = service::scored_schema();
    let hits = scored.iter().map(|m| service::decode_framed(m, &schema)).filter(|s| s.bool("cache_hit")).count();
    assert!(hits >= 50, "cache_hit marked on repeats: {hits}");
}

/// Writer schemas from a Schema Registry (Confluent REST API), with writer→reader resolution:
/// the writer has an extra field and lacks one that the reader defaults. The schema is fetched
/// once; output schemas are registered and used in the output framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_schemas_resolve_to_the_reader_and_are_cached() {
    let n = 300;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    let registry = Registry::start();
    let mut writer: serde_json::Value = serde_json::from_str(codec::TRANSACTION_SCHEMA).expect("schema json");
    let fields = writer["fields"].as_array_mut().expect("fields");
    fields.retain(|f| f["name"] != "new_device");
    fields.push(serde_json::json!({"name": "merchant_name", "type": "string"}));
    let writer_text = writer.to_string();
    let writer_id = registry.register(&format!("{}-value", topics.input), &writer_text);
    let writer_schema = codec::parse_schema(&writer_text).expect("writer schema");
    let reader_schema = codec::parse_schema(codec::TRANSACTION_SCHEMA).expect("reader schema");

    // Encode with the evolved writer: decode our standard encoding, drop/add fields, re-encode.
    let inputs = service::synthetic(n, 5, 1);
    let mut records = Vec::new();
    for (key, value, headers, p) in &inputs.records {
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&reader_schema).build().expect("reader");
        let Value::Record(mut fs) = reader.read_value(&mut &value[5..]).expect("decode") else { panic!() };
        fs.retain(|(name, _)| name != "new_device");
        fs.push(("merchant_name".into(), Value::String("ACME".into())));
        let mut framed = Vec::new();
        codec::encode_value(&mut framed, writer_id, &writer_schema, Value::Record(fs)).expect("encode evolved");
        records.push((key.clone(), framed, headers.clone(), *p));
    }
    common::produce_values(&bootstrap, &topics.input, records).await;

    let cfg = service::config(&service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Registry(&registry.url()),
        None,
        "",
    ));
    let running = InProcess::start(cfg);
    assert!(running.wait_outcomes(n as u64, TIMEOUT).await, "only {} outcomes", running.outcomes());
    let summary = running.stop().await;
    assert_eq!(summary.scored, n as u64, "dead letters: {:?}", summary.dead_lettered);
    assert_eq!(registry.get_by_id_calls(), 1, "writer schema fetched once, then cached");

    let scored_id = registry.register(&format!("{}-value", topics.scored), codec::SCORED_TRANSACTION_SCHEMA);
    let messages = common::consume_n(&bootstrap, &topics.scored, n, TIMEOUT).await;
    assert_eq!(messages.len(), n);
    let schema = service::scored_schema();
    for m in &messages {
        assert_eq!(
            service::decode_framed(m, &schema).schema_id,
            scored_id,
            "scored records framed with the registered id"
        );
    }
}

/// Drift reports reach the monitoring topic (decodable with schemas/drift_report.avsc, rows add
/// up); /healthz, /readyz and /metrics answer with the documented names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_reports_metrics_and_health_endpoints() {
    let n = 1000;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    common::produce_values(&bootstrap, &topics.input, service::synthetic(n, 3, 1).records).await;
    let port = service::free_port();
    let cfg = service::config(&service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        Some(port),
        "[drift]\ninterval = \"500ms\"\n",
    ));
    let running = InProcess::start(cfg);
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str| {
        let url = format!("{base}{path}");
        tokio::task::spawn_blocking(move || common::http("GET", &url, None))
    };
    assert!(running.wait_outcomes(n as u64, TIMEOUT).await, "only {} outcomes", running.outcomes());
    assert_eq!(get("/healthz").await.expect("healthz").status, 200);
    assert_eq!(
        get("/readyz").await.expect("readyz").status,
        200,
        "ready once the model is loaded and the group joined"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await; // at least one drift window
    let metrics = get("/metrics").await.expect("metrics").body;
    for name in [
        "streamscore_events_consumed_total",
        "streamscore_events_scored_total",
        "streamscore_batch_size_bucket",
        "streamscore_inference_seconds_bucket",
        "streamscore_end_to_end_latency_seconds_bucket",
        "streamscore_cache_misses_total",
        "streamscore_drift_psi",
        "streamscore_ready",
        "streamscore_consumer_lag",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    // The per-event latency histograms took one observation per outcome (other tests in this
    // process may add theirs: at least n), and their +Inf bucket is their count.
    let value = |prefix: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(prefix));
        line.and_then(|l| l[prefix.len()..].trim().parse().ok()).unwrap_or_else(|| panic!("/metrics lacks {prefix}"))
    };
    for name in ["streamscore_end_to_end_latency_seconds", "streamscore_processing_latency_seconds"] {
        let count = value(&format!("{name}_count "));
        assert!(count >= n as f64, "{name}: {count} observations for {n} outcomes");
        assert_eq!(value(&format!("{name}_bucket{{le=\"+Inf\"}} ")), count, "{name}");
    }
    // Where each batch's time went: every stage counted once per acknowledged batch, and the
    // stages before the broker add up to the time in streamscore.
    let stage = |suffix: &str, stage: &str| -> f64 {
        let prefix = format!("streamscore_batch_stage_seconds_{suffix}{{stage=\"{stage}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix));
        line.and_then(|l| l[prefix.len()..].trim().parse().ok()).unwrap_or_else(|| panic!("/metrics lacks {prefix}"))
    };
    let batches = stage("count", "in_streamscore");
    assert!(batches >= 1.0);
    let before_broker = ["batching", "inference_queue", "inference", "sink_queue", "produce"];
    for s in before_broker.iter().chain(&["broker_ack"]) {
        assert_eq!(stage("count", s), batches, "stage {s}");
    }
    let parts: f64 = before_broker.iter().map(|s| stage("sum", s)).sum();
    let whole = stage("sum", "in_streamscore");
    assert!((parts - whole).abs() < 1e-6 * batches + 1e-9, "stages add up to {parts} s, in_streamscore is {whole} s");
    let summary = running.stop().await;
    assert_eq!(summary.scored, n as u64);

    let reports =
        common::consume_until_quiet(&bootstrap, &topics.monitoring, Duration::from_secs(2), Duration::from_secs(20))
            .await;
    assert!(!reports.is_empty(), "no drift report");
    let schema = codec::parse_schema(codec::DRIFT_REPORT_SCHEMA).expect("drift schema");
    let mut rows = 0;
    for m in &reports {
        let r = service::decode_framed(m, &schema);
        assert_eq!(r.schema_id, 3);
        assert!(matches!(r.fields.get("model_name"), Some(Value::String(s)) if s == "fraud_mlp"));
        rows += r.long("rows");
        let Some(Value::Array(features)) = r.fields.get("features") else { panic!("features") };
        assert_eq!(features.len(), 36, "one entry per model column");
        for f in features {
            let Value::Record(f) = f else { panic!("feature stats") };
            let psi = f.iter().find(|(k, _)| k == "psi").map(|(_, v)| v.clone());
            assert!(matches!(psi, Some(Value::Double(p)) if p.is_finite() && p >= 0.0), "psi {psi:?}");
        }
    }
    assert_eq!(rows, n as i64, "every scored row counted once across windows");
}

/// SIGTERM: the binary drains, commits and exits 0; a new member of the group then finds
/// nothing left to do (everything was committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_zero() {
    let n = 1500;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    common::produce_values(&bootstrap, &topics.input, service::synthetic(n, 21, 1).records).await;
    let group = common::random_topic("g");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let mut bin = Binary::start(
        &service::config_toml(
            &bootstrap,
            &topics,
            &group,
            Schemas::Local,
            Some(port),
            "[delivery]\ncommit_interval = \"60s\"\n",
        ),
        port,
        dir.path(),
        "first",
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while bin.metric("streamscore_events_scored_total").unwrap_or(0.0) < n as f64 {
        assert!(tokio::time::Instant::now() < deadline, "not all scored:\n{}", bin.log_tail(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The periodic commit is 60 s away: only the shutdown commit can save these offsets.
    bin.signal("TERM");
    let code = tokio::task::spawn_blocking(move || {
        let code = bin.wait_exit(Duration::from_secs(30));
        (code, bin)
    })
    .await
    .expect("wait");
    assert_eq!(code.0, Some(0), "exit code after SIGTERM:\n{}", code.1.log_tail(30));

    let cfg = service::config(&service::config_toml(&bootstrap, &topics, &group, Schemas::Local, None, ""));
    let second = InProcess::start(cfg);
    tokio::time::sleep(Duration::from_secs(8)).await; // join the group, fetch from committed offsets
    let summary = second.stop().await;
    assert_eq!(summary.consumed, 0, "offsets were committed on SIGTERM, nothing to redo");
    let scored =
        common::consume_until_quiet(&bootstrap, &topics.scored, Duration::from_secs(2), Duration::from_secs(30)).await;
    assert_eq!(scored.len(), n);
}

/// The broker is unreachable at start, in both delivery modes: no crash, /healthz answers,
/// /readyz says not ready, and a stop request still ends the run cleanly (exactly_once keeps
/// retrying its transactional start-up with backoff until then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_not_ready_and_does_not_crash() {
    for extra in ["", "[delivery]\nmode = \"exactly_once\"\n"] {
        let dead = format!("127.0.0.1:{}", service::free_port());
        let topics =
            Topics { input: "in".into(), scored: "scored".into(), dlq: "dlq".into(), monitoring: "mon".into() };
        let port = service::free_port();
        let cfg = service::config(&service::config_toml(&dead, &topics, "g", Schemas::Local, Some(port), extra));
        let running = InProcess::start(cfg);
        let base = format!("http://127.0.0.1:{port}");
        let mut health = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let url = format!("{base}/healthz");
            if let Ok(Ok(r)) =
                tokio::task::spawn_blocking(move || std::panic::catch_unwind(|| common::http("GET", &url, None))).await
            {
                health = Some(r.status);
                break;
            }
        }
        assert_eq!(health, Some(200), "/healthz answers while the broker is down ({extra})");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let url = format!("{base}/readyz");
        let ready = tokio::task::spawn_blocking(move || common::http("GET", &url, None)).await.expect("readyz");
        assert_eq!(ready.status, 503, "not ready without a group ({extra})");
        let summary = running.stop().await;
        assert_eq!(summary.consumed, 0);
    }
}

/// `streamscore produce` publishes decodable synthetic transactions (and the malformed share).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_command_publishes_synthetic_transactions() {
    let bootstrap = Broker::shared().bootstrap();
    let topic = common::random_topic("produce");
    common::create_topic(&bootstrap, &topic, 2).await;
    let args =
        ["produce", "--bootstrap-servers", &bootstrap, "--topic", &topic, "--count", "500", "--malformed-every", "50"]
            .map(str::to_string);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_streamscore")).args(args).output()
    })
    .await
    .expect("join")
    .expect("run streamscore produce");
    assert!(out.status.success(), "produce failed: {}", String::from_utf8_lossy(&out.stderr));
    let messages = common::consume_n(&bootstrap, &topic, 500, TIMEOUT).await;
    assert_eq!(messages.len(), 500);
    let store = std::sync::Arc::new(
        codec::SchemaStore::new(
            codec::parse_schema(codec::TRANSACTION_SCHEMA).expect("schema"),
            &[(1u32, service::root().join("schemas/transaction.avsc"))].into_iter().collect(),
            None,
            None,
        )
        .expect("store"),
    );
    let decoder = codec::Decoder::new(store, 1 << 20);
    let decoded = messages.iter().filter(|m| decoder.decode(m.payload().unwrap_or_default()).is_ok()).count();
    // Ten malformed: the cycle's NaN-amount records (2 of 10) decode and fail later, in features.
    assert_eq!(decoded, 492, "every 50th is malformed, the rest decode");
}

/// `streamscore produce` starts its clock only once its idempotent producer holds a producer id
/// (librdkafka asks for one on a 500 ms timer; records handed over before wait for it), and says
/// which broker it could not get one from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_is_ready_before_it_publishes() {
    let bootstrap = Broker::shared().bootstrap();
    let idempotent = |bootstrap: &str| {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", bootstrap).set("enable.idempotence", "true");
        c
    };
    let ready = tokio::task::spawn_blocking({
        let config = idempotent(&bootstrap);
        move || demo::ready_publisher(config, Duration::from_secs(30))
    })
    .await
    .expect("join")
    .expect("a publisher on the test broker gets its producer id");
    assert!(ready.context().producer_id_assigned());

    // Not idempotent: nothing to wait for, and no statistics asked for.
    let mut plain = idempotent(&bootstrap);
    plain.set("enable.idempotence", "false");
    let plain = demo::ready_publisher(plain, Duration::from_secs(30)).expect("plain publisher");
    assert!(!plain.context().producer_id_assigned());

    // Nothing listens on a port just released: the error names the broker and the way out.
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("127.0.0.1:{}", listener.local_addr().expect("addr").port())
    };
    let err = tokio::task::spawn_blocking({
        let config = idempotent(&unreachable);
        move || demo::ready_publisher(config, Duration::from_secs(2))
    })
    .await
    .expect("join")
    .err()
    .expect("no producer id from a closed port");
    let message = err.to_string();
    assert!(matches!(err, demo::PublisherError::NotReady { .. }), "{message}");
    assert!(message.contains(&unreachable) && message.contains("enable.idempotence=false"), "{message}");
}

/// The demo's configuration for tests: this checkout's ONNX Runtime library, model and schemas,
/// and the execution provider to ask for.
fn demo_overrides(provider: &'static str) -> impl FnMut(&mut streamscore::config::RawConfig) {
    let ort = service::ort_library();
    let model_dir = service::root().join("models/fraud_mlp/1");
    let reader = service::root().join("schemas/transaction.avsc");
    let labels = service::root().join("schemas/label.avsc");
    move |raw| {
        raw.model.onnxruntime_library = ort.display().to_string();
        raw.model.dir = model_dir.display().to_string();
        raw.model.execution_provider = provider.into();
        raw.schemas.reader_schema = reader.display().to_string();
        raw.schemas.local =
            [("1".to_string(), reader.display().to_string()), ("7".to_string(), labels.display().to_string())]
                .into_iter()
                .collect();
    }
}

/// The demo (`make demo`) runs the real pipeline on the in-process mock cluster and reports one
/// outcome per input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_end_to_end_on_the_mock_cluster() {
    let mut out = Vec::new();
    let summary = streamscore::demo::run(
        streamscore::demo::DemoOptions { events: 3000, seed: 5, partitions: 3 },
        demo_overrides("cpu"),
        &mut out,
    )
    .await
    .expect("demo succeeds");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("one outcome per input: yes"), "{text}");
    assert_eq!(summary.consumed, 3000);
    assert!(summary.cache_hits > 0, "the demo's repeats hit the cache");
    assert!(!summary.dead_lettered.is_empty(), "the demo's malformed events are dead-lettered");
    assert!(!summary.top_drift.is_empty(), "the summary lists drift");
    // The demo publishes the ground truth too: live quality joins it to the predictions.
    assert_eq!(summary.quality.len(), 1, "{text}");
    let joined = summary.quality[0].counts.labels;
    assert!(joined > 0 && joined <= summary.scored, "{joined} labels joined, {} scored", summary.scored);
    assert!(text.contains("live quality v1"), "{text}");
}

/// More events than librdkafka's mock keeps per partition (5 MiB: ~25 000 of these) on one
/// asked-for partition: the demo spreads them over enough partitions and loses none (before, 300 000
/// events on 3 partitions stalled at ~103 000 outcomes). It also asks for CUDA on the CPU-only ONNX
/// Runtime library: the model falls back to CPU, and the "auto" batch size with it (256, not 2048).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_spreads_events_beyond_the_mocks_retention_and_settles_on_the_active_provider() {
    let mut out = Vec::new();
    let summary = streamscore::demo::run(
        streamscore::demo::DemoOptions { events: 45_000, seed: 11, partitions: 1 },
        demo_overrides("cuda"),
        &mut out,
    )
    .await
    .expect("demo succeeds");
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("45000 events need 3 partitions on the mock cluster"), "{text}");
    assert!(text.contains("one outcome per input: yes"), "{text}");
    assert_eq!(summary.consumed, 45_000);
    let dead: u64 = summary.dead_lettered.iter().map(|(_, n)| n).sum();
    assert_eq!(summary.scored + dead, 45_000);
    assert_eq!(summary.execution_provider, "cpu", "the CPU-only library has no CUDA provider");
    assert_eq!(summary.max_batch_size, 256, "\"auto\" follows the provider that started");
    assert!(text.contains("execution provider   cpu (requested cuda; micro-batches of up to 256 rows)"), "{text}");
}

/// A model directory that does not exist stops start-up with a message naming it; an invalid
/// config file makes the binary exit 2 listing every bad key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_fail_at_start_with_clear_messages() {
    let topics = Topics { input: "in".into(), scored: "s".into(), dlq: "d".into(), monitoring: "m".into() };
    let dead = format!("127.0.0.1:{}", service::free_port());
    let toml = service::config_toml(&dead, &topics, "g", Schemas::Local, None, "")
        .replace("models/fraud_mlp/1", "models/no_such_model/1");
    let err = streamscore::pipeline::run(service::config(&toml), std::future::pending())
        .await
        .expect_err("a missing model must fail");
    let msg = err.to_string();
    assert!(msg.contains("no_such_model") && msg.contains("manifest.json"), "{msg}");

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[batch]\nmax_batch_size = 0\nmax_batch_delay = \"soon\"\n[kafka]\nbootstrap = \"x\"\n")
        .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
        .arg("run")
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run binary");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["kafka.bootstrap", "batch.max_batch_size", "batch.max_batch_delay"] {
        assert!(stderr.contains(key), "stderr names {key}: {stderr}");
    }
}

/// `kafka.consumer_threads = 3`: three group members in one instance split the input
/// partitions (each owns some, per `streamscore_assigned_partitions{member}`), and every input
/// still has exactly one outcome, in input order per partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_consumer_threads_split_the_partitions_and_keep_input_order() {
    let n = 3000;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 4).await;
    let inputs = service::synthetic(n, 23, 1);
    let placed = common::produce_values(&bootstrap, &topics.input, inputs.records.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let toml = service::config_toml(&bootstrap, &topics, &common::random_topic("g"), Schemas::Local, Some(port), "");
    let bin =
        Binary::start_with_env(&toml, port, dir.path(), "threads", &[("STREAMSCORE_KAFKA__CONSUMER_THREADS", "3")]);
    bin.wait_metric("streamscore_events_scored_total", n as f64, TIMEOUT).await;
    // Every member ends up owning partitions, and together they own the topic's four.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let owned = loop {
        let page = common::http("GET", &format!("http://127.0.0.1:{port}/metrics"), None).body;
        let owned: Vec<f64> = (0..3)
            .map(|m| {
                let prefix = format!("streamscore_assigned_partitions{{member=\"{m}\"}} ");
                page.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
            })
            .collect();
        if owned.iter().all(|&o| o >= 1.0) && owned.iter().sum::<f64>() == 4.0 {
            break owned;
        }
        assert!(tokio::time::Instant::now() < deadline, "partitions per member: {owned:?}\n{}", bin.log_tail(40));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("partitions per member: {owned:?}");
    drop(bin);

    let offsets: HashMap<String, (i32, i64)> =
        inputs.transactions.iter().zip(&placed).map(|(tx, p)| (tx.event_id.clone(), *p)).collect();
    let schema = service::scored_schema();
    let messages = common::consume_n(&bootstrap, &topics.scored, n, TIMEOUT).await;
    assert_eq!(messages.len(), n);
    let all =
        common::consume_until_quiet(&bootstrap, &topics.scored, Duration::from_secs(1), Duration::from_secs(5)).await;
    assert_eq!(all.len(), n, "nothing beyond one outcome per input on the scored topic");
    let mut seen = HashSet::new();
    let mut last_offset: HashMap<(i32, i32), i64> = HashMap::new();
    for m in &messages {
        let s = service::decode_framed(m, &schema);
        let id = s.str("event_id");
        assert!(seen.insert(id.clone()), "duplicate outcome for {id}");
        let (partition, offset) = offsets[&id];
        assert_eq!((s.long("source_partition") as i32, s.long("source_offset")), (partition, offset));
        if let Some(prev) = last_offset.insert((partition, s.partition), offset) {
            assert!(prev < offset, "input partition {partition}: offset {offset} after {prev}");
        }
    }
    assert_eq!(seen.len(), n);
}
