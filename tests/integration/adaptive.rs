//! Adaptive batching (`batch.mode = "adaptive"`) on the real test broker: every input is still
//! scored exactly once, and the size target moves the way the latency target says (read from
//! the `streamscore_batch_target_size` gauge on `/metrics`). Assertions are about directions and
//! bounds, never exact timings: the machine is small and shared.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::OwnedMessage;

use crate::common::{self, Broker};
use crate::service::{self, Binary, InProcess, Schemas, Topics};

const TIMEOUT: Duration = Duration::from_secs(120);
const SIZE_GAUGE: &str = "streamscore_batch_target_size";
const DELAY_GAUGE: &str = "streamscore_batch_target_delay_seconds";
/// The controller's floor (`batcher::adaptive::MIN_SIZE`) and its start, a quarter of max_batch_size.
const MIN_SIZE: f64 = 16.0;
const START_SIZE: f64 = 64.0;

/// (source partition, source offset) of every scored output, with how often each was seen.
fn scored_sources(messages: &[OwnedMessage]) -> HashMap<(i32, i64), (String, usize)> {
    let schema = service::scored_schema();
    let mut seen: HashMap<(i32, i64), (String, usize)> = HashMap::new();
    for m in messages {
        let s = service::decode_framed(m, &schema);
        let source = (s.long("source_partition") as i32, s.long("source_offset"));
        seen.entry(source).or_insert_with(|| (s.str("event_id"), 0)).1 += 1;
    }
    seen
}

/// Every input has exactly one scored outcome, matched by event id and by source offset.
fn assert_each_input_scored_once(messages: &[OwnedMessage], inputs: &service::Inputs, placed: &[(i32, i64)]) {
    let seen = scored_sources(messages);
    let duplicates: Vec<_> = seen.iter().filter(|(_, (_, n))| *n > 1).map(|(k, _)| *k).collect();
    assert!(duplicates.is_empty(), "inputs scored more than once: {duplicates:?}");
    let mut ids = HashSet::new();
    for (tx, source) in inputs.transactions.iter().zip(placed) {
        let (id, _) = seen.get(source).unwrap_or_else(|| panic!("no outcome for input at {source:?}"));
        assert_eq!(id, &tx.event_id, "the outcome at {source:?} is for another event");
        ids.insert(id.clone());
    }
    assert_eq!(ids.len(), inputs.transactions.len(), "distinct event ids");
    assert_eq!(seen.len(), inputs.transactions.len(), "no outcome for an input that was not sent");
}

/// A value read from /metrics of an instance inside this process (None until it answers).
async fn metric(port: u16, name: &str) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        let page = std::panic::catch_unwind(|| common::http("GET", &url, None)).ok()?;
        (page.status == 200 && page.body.contains(&name)).then(|| service::metric_sum(&page.body, &name))
    })
    .await
    .ok()
    .flatten()
}

/// A generous latency target and a backlog: batches are full and finish far within the target,
/// so the size target climbs from its start (a quarter of max_batch_size) to max_batch_size, and
/// never past it. Every input is scored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_mode_scores_every_input_once_and_grows_to_the_maximum_under_backlog() {
    let n = 20_000;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 3).await;
    let inputs = service::synthetic(n, 41, 1);
    let placed = common::produce_values(&bootstrap, &topics.input, inputs.records.clone()).await;
    let port = service::free_port();
    let extra = "[batch]\nmode = \"adaptive\"\nlatency_target = \"2s\"\nmax_batch_size = 256\n";
    let cfg = service::config(&service::config_toml(
        &bootstrap,
        &topics,
        &common::random_topic("g"),
        Schemas::Local,
        Some(port),
        extra,
    ));
    let running = InProcess::start(cfg);

    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (mut lowest, mut highest) = (f64::MAX, 0f64);
    while running.outcomes() < n as u64 {
        assert!(tokio::time::Instant::now() < deadline, "only {} outcomes of {n}", running.outcomes());
        if let Some(size) = metric(port, SIZE_GAUGE).await {
            lowest = lowest.min(size);
            highest = highest.max(size);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let size = metric(port, SIZE_GAUGE).await.expect("the size gauge is published in adaptive mode");
    let delay = metric(port, DELAY_GAUGE).await.expect("the delay gauge is published in adaptive mode");
    let summary = running.stop().await;
    assert_eq!(summary.consumed, n as u64);
    assert_eq!(summary.scored, n as u64);
    assert!(summary.dead_lettered.is_empty(), "{:?}", summary.dead_lettered);

    eprintln!("size target: lowest seen {lowest}, highest {highest}, final {size}; delay {delay} s");
    assert_eq!(size, 256.0, "the size target grew from {START_SIZE} to max_batch_size");
    assert!(highest <= 256.0 && lowest >= MIN_SIZE, "within [{MIN_SIZE}, 256]: {lowest}..{highest}");
    assert!(delay > 0.0 && delay <= 0.005, "the delay stays within (0, max_batch_delay]: {delay}");

    let messages = common::consume_n(&bootstrap, &topics.scored, n, TIMEOUT).await;
    assert_eq!(messages.len(), n);
    let extra =
        common::consume_until_quiet(&bootstrap, &topics.scored, Duration::from_secs(1), Duration::from_secs(5)).await;
    assert_eq!(extra.len(), n, "nothing beyond one outcome per input on the scored topic");
    assert_each_input_scored_once(&messages, &inputs, &placed);
}

/// A slow model (every batch's inference delayed by 30 ms, fault injection, so the real binary)
/// against a 5 ms target: processing a batch takes longer than the target, so the size target
/// falls below its start and the delay to zero. The backlog is still scored, each input once
/// (under overload batches grow to max_batch_size while inference is busy, whatever the target).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_latency_target_with_a_slow_model_shrinks_the_size_target() {
    let n = 3_000;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    let inputs = service::synthetic(n, 43, 1);
    let placed = common::produce_values(&bootstrap, &topics.input, inputs.records.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let extra = "[batch]\nmode = \"adaptive\"\nlatency_target = \"5ms\"\nmax_batch_size = 256\n";
    let bin = Binary::start_with_env(
        &service::config_toml(&bootstrap, &topics, &common::random_topic("g"), Schemas::Local, Some(port), extra),
        port,
        dir.path(),
        "adaptive-slow",
        &[("STREAMSCORE_INJECT_INFERENCE_DELAY_MS", "30")],
    );
    bin.wait_metric("streamscore_events_scored_total", n as f64, TIMEOUT).await;
    let size = bin.metric(SIZE_GAUGE).expect("metrics");
    let delay = bin.metric(DELAY_GAUGE).expect("metrics");
    let batches = bin.metric("streamscore_batch_size_count").unwrap_or(0.0);
    drop(bin);
    eprintln!("size target {size}, delay {delay} s after {batches} batches");
    assert!(
        (MIN_SIZE..START_SIZE).contains(&size),
        "size target {size}: below its start {START_SIZE}, not below {MIN_SIZE}"
    );
    assert_eq!(delay, 0.0, "no time left to wait for more input");

    let messages = common::consume_n(&bootstrap, &topics.scored, n, TIMEOUT).await;
    assert_eq!(messages.len(), n);
    let all =
        common::consume_until_quiet(&bootstrap, &topics.scored, Duration::from_secs(1), Duration::from_secs(5)).await;
    assert_eq!(all.len(), n, "nothing beyond one outcome per input on the scored topic");
    assert_each_input_scored_once(&messages, &inputs, &placed);
}
