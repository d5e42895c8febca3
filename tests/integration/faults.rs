//! Crashes and group membership changes: no input is ever left without an outcome.
//!
//! `STREAMSCORE_TEST_SCALE` (default 1) multiplies the event counts for longer soak runs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::OwnedMessage;

use crate::common::{self, Broker};
use crate::service::{self, Binary, InProcess, Schemas, Topics};

fn scale() -> usize {
    std::env::var("STREAMSCORE_TEST_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

/// Event ids of the scored outputs, with how many times each was seen.
fn outcome_ids(messages: &[OwnedMessage]) -> HashMap<String, usize> {
    let schema = service::scored_schema();
    let mut ids = HashMap::new();
    for m in messages {
        *ids.entry(service::decode_framed(m, &schema).str("event_id")).or_insert(0) += 1;
    }
    ids
}

/// Reads the scored topic until it holds an outcome for every id in `want`, or the timeout.
async fn wait_for_all(
    bootstrap: &str,
    topic: &str,
    want: &HashSet<String>,
    timeout: Duration,
) -> HashMap<String, usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let all = common::consume_until_quiet(bootstrap, topic, Duration::from_secs(2), Duration::from_secs(60)).await;
        let ids = outcome_ids(&all);
        if want.iter().all(|id| ids.contains_key(id)) || tokio::time::Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// kill -9 at random points of the stream, twice, restarting each time: every input ends up
/// with at least one outcome (at-least-once: duplicates allowed, losses not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_and_restarted_every_input_has_an_outcome() {
    let n = 8000 * scale();
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 3).await;
    let inputs = service::synthetic(n, 99, 1);
    let want: HashSet<String> = inputs.transactions.iter().map(|t| t.event_id.clone()).collect();
    common::produce_values(&bootstrap, &topics.input, inputs.records).await;
    let group = common::random_topic("g");
    let dir = tempfile::tempdir().expect("tempdir");
    // Small batches and a slow-ish commit cadence make a kill land with work in flight.
    let extra = "[batch]\nmax_batch_size = 64\n[delivery]\ncommit_interval = \"500ms\"\n";

    let mut kills = 0;
    // Random kill points (printed, so a failure can be replayed by reading the log).
    let points: Vec<usize> = (0..2).map(|_| n * rand::random_range(5..60) / 100).collect();
    eprintln!("kill -9 after these many of each run's own outcomes: {points:?}");
    for (round, kill_at) in points.into_iter().enumerate() {
        let port = service::free_port();
        let bin = Binary::start(
            &service::config_toml(&bootstrap, &topics, &group, Schemas::Local, Some(port), extra),
            port,
            dir.path(),
            &format!("round{round}"),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        // Count this process's own outcomes; kill once it is well into the stream.
        loop {
            let scored = bin.metric("streamscore_events_scored_total").unwrap_or(0.0) as usize;
            if scored >= kill_at / 2 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "round {round} made no progress:\n{}", bin.log_tail(40));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bin.kill9();
        kills += 1;
    }
    assert_eq!(kills, 2);

    // The last instance runs to the end and stops cleanly.
    let cfg = service::config(&service::config_toml(&bootstrap, &topics, &group, Schemas::Local, None, ""));
    let last = InProcess::start(cfg);
    let ids = wait_for_all(&bootstrap, &topics.scored, &want, Duration::from_secs(180)).await;
    let _ = last.stop().await;
    let missing: Vec<&String> = want.iter().filter(|id| !ids.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} inputs have no outcome after two kill -9s, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    let duplicates: usize = ids.values().map(|c| c - 1).sum();
    eprintln!("{n} inputs, {} distinct outcomes, {duplicates} duplicates from replays after kill -9", ids.len());
    assert!(ids.keys().all(|id| want.contains(id)), "outcomes only for inputs");
}

/// Two instances in one group split the partitions; when one stops, the other takes over
/// its partitions and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_partitions_and_one_takes_over() {
    let n = 6000 * scale();
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 4).await;
    let inputs = service::synthetic(n, 123, 1);
    let want: HashSet<String> = inputs.transactions.iter().map(|t| t.event_id.clone()).collect();
    let group = common::random_topic("g");
    let cfg = || service::config(&service::config_toml(&bootstrap, &topics, &group, Schemas::Local, None, ""));

    // Input keeps arriving while the group changes: a third now, a third with both members,
    // the rest after one member left.
    let mut chunks = inputs.records.chunks(n / 3 + 1).map(|c| c.to_vec());
    let a = InProcess::start(cfg());
    let b = InProcess::start(cfg());
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a.outcomes() == 0 || b.outcomes() == 0 {
        if tokio::time::Instant::now() > deadline {
            // Both joined but one may own only idle partitions: feed more.
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while (a.outcomes() == 0 || b.outcomes() == 0) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.outcomes() > 0 && b.outcomes() > 0, "both members scored: a={} b={}", a.outcomes(), b.outcomes());

    let a_summary = a.stop().await;
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let ids = wait_for_all(&bootstrap, &topics.scored, &want, Duration::from_secs(120)).await;
    let b_summary = b.stop().await;
    let missing = want.iter().filter(|id| !ids.contains_key(*id)).count();
    assert_eq!(missing, 0, "{missing} of {n} inputs lost across the membership change");
    assert!(b_summary.consumed > 0 && a_summary.consumed > 0);
    assert!(
        a_summary.consumed + b_summary.consumed >= n as u64,
        "together they consumed everything: {} + {}",
        a_summary.consumed,
        b_summary.consumed
    );
    eprintln!("a consumed {}, b consumed {}", a_summary.consumed, b_summary.consumed);
}

/// A model slower than the input: consumption pauses (and resumes) instead of queueing without
/// bound, the instance stays in its group, and every input is scored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_model_pauses_consumption_and_loses_nothing() {
    let n = 600 * scale();
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    let inputs = service::synthetic(n, 77, 1);
    let want: HashSet<String> = inputs.transactions.iter().map(|t| t.event_id.clone()).collect();
    common::produce_values(&bootstrap, &topics.input, inputs.records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let extra = "[batch]\nmax_batch_size = 32\nqueue_depth = 1\n";
    let bin = Binary::start_with_env(
        &service::config_toml(&bootstrap, &topics, &common::random_topic("g"), Schemas::Local, Some(port), extra),
        port,
        dir.path(),
        "slow",
        &[("STREAMSCORE_INJECT_INFERENCE_DELAY_MS", "700")],
    );
    bin.wait_metric("streamscore_events_scored_total", n as f64, Duration::from_secs(180)).await;
    let pauses = bin.metric("streamscore_backpressure_pauses_total").unwrap_or(0.0);
    let rebalances = bin.metric("streamscore_rebalances_total").unwrap_or(0.0);
    drop(bin);
    assert!(pauses >= 1.0, "consumption paused at least once (pauses = {pauses})");
    assert!(rebalances <= 1.0, "no eviction from the group while paused (rebalances = {rebalances})");
    let ids = wait_for_all(&bootstrap, &topics.scored, &want, Duration::from_secs(60)).await;
    assert_eq!(want.iter().filter(|id| !ids.contains_key(*id)).count(), 0, "every input scored");
    assert_eq!(ids.values().filter(|c| **c > 1).count(), 0, "no duplicates without a crash");
}

fn stall_secs() -> u64 {
    std::env::var("STREAMSCORE_TEST_STALL_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

/// The broker process is stopped for 20 s mid-stream (SIGSTOP), then continued: the service
/// recovers by itself and every input gets its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stalled_mid_stream_recovers_with_nothing_lost() {
    let n = 4000 * scale();
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    let inputs = service::synthetic(n, 88, 1);
    let want: HashSet<String> = inputs.transactions.iter().map(|t| t.event_id.clone()).collect();
    let mut chunks = inputs.records.chunks(n / 2).map(|c| c.to_vec());
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let running =
        InProcess::start_local(&bootstrap, &topics, &common::random_topic("g"), "[batch]\nmax_batch_size = 64\n");
    assert!(running.wait_outcomes((n / 8) as u64, Duration::from_secs(60)).await, "no progress before the stall");
    broker.pause();
    tokio::time::sleep(Duration::from_secs(stall_secs())).await;
    broker.resume();
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let ids = wait_for_all(&bootstrap, &topics.scored, &want, Duration::from_secs(120)).await;
    let summary = running.stop().await;
    let missing = want.iter().filter(|id| !ids.contains_key(*id)).count();
    assert_eq!(missing, 0, "{missing} of {n} inputs lost across a {} s broker stall", stall_secs());
    assert!(summary.consumed >= n as u64);
}

/// The broker stops answering (SIGSTOP) after everything was scored, before anything was
/// committed, and the service is asked to stop: neither the last commit (a synchronous commit
/// waits for the coordinator without a bound) nor leaving the group (librdkafka waits 5 s for the
/// LeaveGroup answer, other steps of its close without a bound) holds the stop beyond its
/// bounds: the last commit waits the rest of the drain (at least 1 s), the close
/// `drain_timeout` (500 ms here). Nothing is lost by giving up: inputs not committed are
/// consumed again, and the group expires the member after `session.timeout.ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_with_an_unresponsive_broker_is_bounded() {
    let n = 200;
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let topics = Topics::create(&bootstrap, 2).await;
    common::produce_values(&bootstrap, &topics.input, service::synthetic(n, 42, 1).records).await;
    // No commit before the stop: the last one is the stop's.
    let extra = "[delivery]\ncommit_interval = \"1h\"\ndrain_timeout = \"500ms\"\n";
    let running = InProcess::start_local(&bootstrap, &topics, &common::random_topic("g"), extra);
    assert!(running.wait_outcomes(n as u64, Duration::from_secs(60)).await, "every input scored");
    broker.pause();
    let started = std::time::Instant::now();
    let summary = running.stop().await;
    let took = started.elapsed();
    broker.resume();
    assert_eq!(summary.consumed, n as u64);
    // Measured here: 2.2 s with both bounds. Without the commit's bound (a synchronous commit)
    // the stop did not finish, the source waiting in `rd_kafka_commit`; without the close's
    // bound it did not finish either (librdkafka's close also waits for the commit in flight).
    assert!(took < Duration::from_millis(4500), "the stop took {took:?} with an unresponsive broker");
}

/// Three instances in one group; one is killed (-9) and a fourth joins during the stream:
/// N in, every input has an outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_killed_one_added_nothing_lost() {
    let n = 9000 * scale();
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 6).await;
    let inputs = service::synthetic(n, 99, 1);
    let want: HashSet<String> = inputs.transactions.iter().map(|t| t.event_id.clone()).collect();
    let group = common::random_topic("g");
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[batch]\nmax_batch_size = 64\n";
    let start = |name: &str, instance: &str| {
        let port = service::free_port();
        let toml = service::config_toml(&bootstrap, &topics, &group, Schemas::Local, Some(port), extra)
            .replace("[telemetry]\n", &format!("[telemetry]\ninstance_id = \"{instance}\"\n"));
        Binary::start(&toml, port, dir.path(), name)
    };
    let a = start("a", "a");
    let b = start("b", "b");
    let c = start("c", "c");
    let mut chunks = inputs.records.chunks(n / 3 + 1).map(|c| c.to_vec());
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let scored =
        |bins: &[&Binary]| bins.iter().map(|b| b.metric("streamscore_events_scored_total").unwrap_or(0.0)).sum::<f64>();
    while scored(&[&a, &b, &c]) < (n / 6) as f64 {
        assert!(tokio::time::Instant::now() < deadline, "no progress:\n{}", a.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.kill9();
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let d = start("d", "d");
    common::produce_values(&bootstrap, &topics.input, chunks.next().expect("chunk")).await;
    let ids = wait_for_all(&bootstrap, &topics.scored, &want, Duration::from_secs(180)).await;
    drop((a, c, d));
    let missing = want.iter().filter(|id| !ids.contains_key(*id)).count();
    assert_eq!(missing, 0, "{missing} of {n} inputs without an outcome after a kill and a join");
}

/// The dead-letter topic cannot take records: the service stops with exit code 1 and a clear
/// error, without committing past the undeliverable outcome; fixed and restarted, the input
/// gets its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_dead_letter_stops_without_committing_past_it() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 1).await;
    let mut records = service::synthetic(20, 5, 1).records;
    records.insert(10, (Some(b"poison".to_vec()), vec![9, 9, 9, 9, 9, 9], vec![], None));
    common::produce_values(&bootstrap, &topics.input, records).await;
    let group = common::random_topic("g");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broken = topics.clone();
    broken.dlq = "not a valid topic name!".into();
    let port = service::free_port();
    let extra = "[delivery]\nproduce_timeout = \"2s\"\n";
    let mut bin = Binary::start(
        &service::config_toml(&bootstrap, &broken, &group, Schemas::Local, Some(port), extra),
        port,
        dir.path(),
        "broken",
    );
    let code = tokio::task::spawn_blocking(move || (bin.wait_exit(Duration::from_secs(60)), bin)).await.expect("join");
    let (code, bin) = code;
    assert_eq!(code, Some(1), "stops with exit code 1:\n{}", bin.log_tail(30));
    assert!(
        bin.log_tail(60).contains("not delivered") || bin.log_tail(60).contains("cannot enqueue"),
        "{}",
        bin.log_tail(30)
    );

    let fixed = InProcess::start_local(&bootstrap, &topics, &group, "");
    let dlq = common::consume_n(&bootstrap, &topics.dlq, 1, Duration::from_secs(60)).await;
    let summary = fixed.stop().await;
    assert_eq!(dlq.len(), 1, "the poison input got its dead-letter outcome after the restart");
    assert!(summary.consumed >= 11, "consumption resumed at or before the undeliverable input ({})", summary.consumed);
}

/// SIGTERM starts a bounded drain; a second signal exits at once with 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_immediately() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 1).await;
    common::produce_values(&bootstrap, &topics.input, service::synthetic(3000, 6, 1).records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let extra = "[batch]\nmax_batch_size = 16\nqueue_depth = 8\n[delivery]\ndrain_timeout = \"60s\"\n";
    let mut bin = Binary::start_with_env(
        &service::config_toml(&bootstrap, &topics, &common::random_topic("g"), Schemas::Local, Some(port), extra),
        port,
        dir.path(),
        "signals",
        &[("STREAMSCORE_INJECT_INFERENCE_DELAY_MS", "300")],
    );
    bin.wait_metric("streamscore_events_consumed_total", 64.0, Duration::from_secs(60)).await;
    bin.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(bin.child.try_wait().expect("wait").is_none(), "still draining (a slow queue of batches)");
    bin.signal("TERM");
    let started = std::time::Instant::now();
    let code = tokio::task::spawn_blocking(move || bin.wait_exit(Duration::from_secs(10))).await.expect("join");
    assert_eq!(code, Some(130));
    assert!(started.elapsed() < Duration::from_secs(5), "exited at once");
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Documented bound (README, "Delivery guarantees"): resident memory of one instance with a
/// backlog far larger than its queues and a model slower than the input.
const RSS_BOUND_BYTES: u64 = 200 * 1024 * 1024;

/// A backlog (200 000 events by default; `STREAMSCORE_TEST_BACKLOG=5000000` for the full-size
/// run) and a model slower than the input: RSS stays under the bound, consumption pauses and
/// resumes, and the member is never evicted although `max.poll.interval.ms` is only 7 s here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_with_slow_model_stays_within_memory_bound() {
    let backlog: u64 = std::env::var("STREAMSCORE_TEST_BACKLOG").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let watch_secs: u64 = std::env::var("STREAMSCORE_TEST_WATCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 4).await;
    let (b, t) = (bootstrap.clone(), topics.input.clone());
    let produced = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_streamscore"))
            .args(["produce", "--bootstrap-servers", &b, "--topic", &t, "--count", &backlog.to_string()])
            .output()
    })
    .await
    .expect("join")
    .expect("streamscore produce");
    assert!(produced.status.success(), "{}", String::from_utf8_lossy(&produced.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let toml = service::config_toml(&bootstrap, &topics, &common::random_topic("g"), Schemas::Local, Some(port), "")
        .replace(
            "\"statistics.interval.ms\" = \"1000\"\n",
            "\"statistics.interval.ms\" = \"1000\"\n\"max.poll.interval.ms\" = \"7000\"\n",
        );
    let bin =
        Binary::start_with_env(&toml, port, dir.path(), "backlog", &[("STREAMSCORE_INJECT_INFERENCE_DELAY_MS", "700")]);
    let pid = bin.child.id();
    let mut max_rss = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(watch_secs);
    while tokio::time::Instant::now() < end {
        if let Some(rss) = rss_bytes(pid) {
            max_rss = max_rss.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let scored = bin.metric("streamscore_events_scored_total").unwrap_or(0.0);
    let pauses = bin.metric("streamscore_backpressure_pauses_total").unwrap_or(0.0);
    let batches = bin.metric("streamscore_batch_size_count").unwrap_or(0.0);
    let consumed = bin.metric("streamscore_batch_size_sum").unwrap_or(0.0);
    eprintln!("batches {batches}, mean size {:.0}", consumed / batches.max(1.0));
    let revokes = bin.log_tail(100_000).matches("partitions revoked").count();
    let log = bin.log_tail(40);
    drop(bin);
    eprintln!(
        "backlog {backlog}: max RSS {:.1} MiB, {scored} scored in {watch_secs} s, {pauses} pauses",
        max_rss as f64 / 1048576.0
    );
    assert!(scored > 0.0, "made progress:\n{log}");
    assert!(pauses >= 1.0, "consumption paused for backpressure");
    assert_eq!(revokes, 0, "never evicted from the group (max.poll.interval.ms = 7 s):\n{log}");
    assert!(max_rss < RSS_BOUND_BYTES, "max RSS {max_rss} bytes over the documented bound {RSS_BOUND_BYTES}");
}

/// An input as large as the broker takes no longer fits once the dead-letter headers are added:
/// it is dead-lettered with its bytes cut to fit (and headers saying so) instead of stopping the
/// service, and the inputs after it are scored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_limit_bad_input_is_dead_lettered_cut_to_fit() {
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 1).await;
    let mut records = service::synthetic(10, 8, 1).records;
    let big = vec![7u8; 990_000];
    records.insert(5, (Some(b"big".to_vec()), big.clone(), vec![], None));
    common::produce_values(&bootstrap, &topics.input, records).await;
    let running = InProcess::start_local(&bootstrap, &topics, &common::random_topic("g"), "");
    assert!(running.wait_outcomes(11, Duration::from_secs(60)).await, "only {} outcomes", running.outcomes());
    running.stop().await;
    let dlq = common::consume_n(&bootstrap, &topics.dlq, 1, Duration::from_secs(30)).await;
    assert_eq!(dlq.len(), 1);
    let headers = common::headers_of(&dlq[0]);
    assert_eq!(service::header(&headers, "streamscore.dlq.reason"), Some("bad_magic"));
    assert_eq!(service::header(&headers, "streamscore.dlq.truncated"), Some("true"));
    assert_eq!(service::header(&headers, "streamscore.dlq.original_size"), Some("990000"));
    let value = rdkafka::Message::payload(&dlq[0]).expect("payload");
    assert!(value.len() < big.len() && big.starts_with(value), "a prefix of the original bytes");
}

/// A partition revoked while its outcomes are still queued behind a slow model: after the
/// (short) drain the old owner drops them instead of producing for a partition it no longer
/// owns, and the new owner re-processes those inputs; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_partitions_get_no_outcome_from_the_old_owner_after_the_drain() {
    // 40 inputs per partition in batches of 64: every batch in flight spans partitions, so
    // whichever two partitions move to the new member, queued outcomes of theirs exist.
    let n = 160;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 4).await;
    let inputs = service::synthetic(n, 13, 1);
    let want: HashSet<String> = inputs.transactions.iter().map(|t| t.event_id.clone()).collect();
    let records: Vec<_> =
        inputs.records.into_iter().enumerate().map(|(i, (k, v, h, _))| (k, v, h, Some((i % 4) as i32))).collect();
    common::produce_values(&bootstrap, &topics.input, records).await;
    let group = common::random_topic("g");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let extra = "[batch]\nmax_batch_size = 64\nqueue_depth = 4\n[delivery]\ndrain_timeout = \"1s\"\n";
    let old = Binary::start_with_env(
        &service::config_toml(&bootstrap, &topics, &group, Schemas::Local, Some(port), extra),
        port,
        dir.path(),
        "old-owner",
        &[("STREAMSCORE_INJECT_INFERENCE_DELAY_MS", "3000")],
    );
    old.wait_metric("streamscore_events_consumed_total", n as f64, Duration::from_secs(60)).await;
    let new_owner = InProcess::start_local(&bootstrap, &topics, &group, "");
    old.wait_metric("streamscore_revoked_outcomes_dropped_total", 1.0, Duration::from_secs(60)).await;
    drop(old);
    // The old owner is gone (killed): the new one owns everything and catches up.
    let ids = wait_for_all(&bootstrap, &topics.scored, &want, Duration::from_secs(120)).await;
    new_owner.stop().await;
    assert_eq!(want.iter().filter(|id| !ids.contains_key(*id)).count(), 0, "every input has an outcome");
}

/// SIGTERM with more queued work than the drain allows: the drain is bounded by
/// `delivery.drain_timeout`, the process exits 0, and what was not finished is not committed
/// (a restart scores it: every input has an outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_is_bounded_and_commits_only_what_finished() {
    let n = 600;
    let bootstrap = Broker::shared().bootstrap();
    let topics = Topics::create(&bootstrap, 1).await;
    let inputs = service::synthetic(n, 17, 1);
    let want: HashSet<String> = inputs.transactions.iter().map(|t| t.event_id.clone()).collect();
    common::produce_values(&bootstrap, &topics.input, inputs.records).await;
    let group = common::random_topic("g");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = service::free_port();
    let extra = "[batch]\nmax_batch_size = 32\nqueue_depth = 8\n[delivery]\ndrain_timeout = \"2s\"\n";
    let mut bin = Binary::start_with_env(
        &service::config_toml(&bootstrap, &topics, &group, Schemas::Local, Some(port), extra),
        port,
        dir.path(),
        "bounded",
        &[("STREAMSCORE_INJECT_INFERENCE_DELAY_MS", "1000")],
    );
    bin.wait_metric("streamscore_events_scored_total", 32.0, Duration::from_secs(60)).await;
    bin.signal("TERM");
    let started = std::time::Instant::now();
    let (code, bin) =
        tokio::task::spawn_blocking(move || (bin.wait_exit(Duration::from_secs(30)), bin)).await.expect("join");
    let took = started.elapsed();
    assert_eq!(code, Some(0), "clean exit:\n{}", bin.log_tail(30));
    // 2 s of drain, the last in-progress batch (1 s) and process teardown; 8 queued batches would take 8 s.
    assert!(took < Duration::from_secs(6), "drain bounded by drain_timeout, took {took:?}");
    let restarted = InProcess::start_local(&bootstrap, &topics, &group, "");
    let ids = wait_for_all(&bootstrap, &topics.scored, &want, Duration::from_secs(60)).await;
    let summary = restarted.stop().await;
    assert!(summary.consumed > 0, "the unfinished inputs were not committed and are consumed again");
    assert_eq!(want.iter().filter(|id| !ids.contains_key(*id)).count(), 0);
}
