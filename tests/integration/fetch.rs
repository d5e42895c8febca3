//! The source's batch reader (`streamscore::source::fetch`) against the real broker: routed
//! partitions deliver every message through the fetch queue, in offset order, with the same key,
//! value, headers and timestamp that `poll` would give, several per read; the consumer queue
//! keeps serving the group protocol and gets none of them; a seek drops what was fetched before it;
//! a partition revoked and assigned again is routed again (librdkafka clears a route when the
//! partition's fetcher stops).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, Timestamp};
use streamscore::source::fetch::Routing;

use crate::common::{self, Broker, TestRecord};

/// What one read message carried.
#[derive(Debug, Clone, PartialEq)]
struct Read {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    create_time: bool,
}

fn routed_consumer(bootstrap: &str, topic: &str) -> BaseConsumer<Routing> {
    routed_member(bootstrap, topic, &common::random_topic("fetch-group"))
}

fn routed_member(bootstrap: &str, topic: &str, group: &str) -> BaseConsumer<Routing> {
    let consumer: BaseConsumer<Routing> = common::consumer_config(bootstrap, group)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create_with_context(Routing::default())
        .expect("create consumer");
    consumer.context().install(&consumer);
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Serves the consumer queue and reads the fetch queue until `until` says stop or `timeout`
/// passes; panics if `poll` hands out a message (every partition is routed). Returns the
/// messages read and the size of each non-empty read.
fn read_until(
    consumer: &BaseConsumer<Routing>,
    timeout: Duration,
    max: usize,
    mut until: impl FnMut(&[Read]) -> bool,
) -> (Vec<Read>, Vec<usize>) {
    use rdkafka::message::Headers;
    let deadline = Instant::now() + timeout;
    let (mut out, mut sizes) = (Vec::new(), Vec::new());
    while !until(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
            panic!("poll handed out {}/{}@{} although its partition is routed", m.topic(), m.partition(), m.offset());
        }
        let mut guard = consumer.context().queue();
        let fetched = guard.as_mut().expect("fetch queue").read(Duration::from_millis(50), max);
        if !fetched.is_empty() {
            sizes.push(fetched.len());
        }
        for m in fetched.iter() {
            assert!(m.error().is_none(), "consumer error: {:?}", m.error());
            let headers = m
                .headers()
                .map(|h| {
                    h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect()
                })
                .unwrap_or_default();
            out.push(Read {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
                create_time: matches!(m.timestamp(), Timestamp::CreateTime(t) if t > 0),
            });
        }
    }
    (out, sizes)
}

/// Drops the fetch queue before the consumer (the order librdkafka's destroy needs).
fn close(consumer: BaseConsumer<Routing>) {
    consumer.context().close();
    drop(consumer);
}

#[tokio::test]
async fn routed_partitions_come_through_the_fetch_queue_in_order_and_intact() {
    let bootstrap = Broker::shared().bootstrap();
    let topic = common::random_topic("fetch");
    common::create_topic(&bootstrap, &topic, 3).await;
    // Keys, binary and repeated headers, some records without any; a third pinned per partition.
    let records: Vec<TestRecord> = (0..600)
        .map(|i| {
            let headers = match i % 3 {
                0 => vec![],
                1 => vec![("trace".to_owned(), format!("t-{i}").into_bytes())],
                _ => vec![("dup".to_owned(), vec![0, 255, i as u8]), ("dup".to_owned(), b"second".to_vec())],
            };
            (Some(format!("key-{i}").into_bytes()), format!("value-{i}").into_bytes(), headers, Some(i % 3))
        })
        .collect();
    let placed = common::produce_values(&bootstrap, &topic, records.clone()).await;

    let (read, sizes) = tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        move || {
            let consumer = routed_consumer(&bootstrap, &topic);
            let got = read_until(&consumer, Duration::from_secs(40), 64, |r| r.len() >= 600);
            close(consumer);
            got
        }
    })
    .await
    .expect("reader thread");

    assert_eq!(read.len(), 600, "read {} of 600 messages", read.len());
    assert!(sizes.iter().all(|&n| n <= 64), "a read returned more than asked: {sizes:?}");
    assert!(sizes.iter().any(|&n| n > 1), "every read returned one message: not batched ({sizes:?})");
    let by_place: HashMap<(i32, i64), &TestRecord> = placed.iter().copied().zip(&records).collect();
    let mut next: HashMap<i32, i64> = HashMap::new();
    for r in &read {
        assert_eq!(r.topic, topic);
        // Each partition from its first offset on, none skipped, none twice.
        let expected = next.entry(r.partition).or_insert(0);
        assert_eq!(r.offset, *expected, "partition {} out of order", r.partition);
        *expected += 1;
        let (key, value, headers, _) = by_place.get(&(r.partition, r.offset)).expect("a produced record");
        assert_eq!(r.key.as_ref(), key.as_ref(), "key of {}@{}", r.partition, r.offset);
        assert_eq!(r.value.as_ref(), Some(value), "value of {}@{}", r.partition, r.offset);
        assert_eq!(&r.headers, headers, "headers of {}@{}", r.partition, r.offset);
        assert!(r.create_time, "no create time on {}@{}", r.partition, r.offset);
    }
    assert_eq!(next.values().sum::<i64>(), 600);
}

#[tokio::test]
async fn a_seek_drops_what_the_fetch_queue_held_from_before_it() {
    let bootstrap = Broker::shared().bootstrap();
    let topic = common::random_topic("fetch-seek");
    common::create_topic(&bootstrap, &topic, 1).await;
    let records: Vec<TestRecord> =
        (0..3000).map(|i| (None, format!("value-{i}").into_bytes(), vec![], Some(0))).collect();
    common::produce_values(&bootstrap, &topic, records).await;

    let (before, after) = tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        move || {
            let consumer = routed_consumer(&bootstrap, &topic);
            // A few small reads: the queue still holds (much) more of what was prefetched.
            let (before, _) = read_until(&consumer, Duration::from_secs(30), 10, |r| r.len() >= 100);
            consumer.seek(&topic, 0, Offset::Offset(5), Duration::from_secs(10)).expect("seek");
            let (after, _) = read_until(&consumer, Duration::from_secs(30), 10, |r| !r.is_empty());
            close(consumer);
            (before, after)
        }
    })
    .await
    .expect("reader thread");

    assert!(before.len() >= 100, "read {} before the seek", before.len());
    let offsets: Vec<i64> = before.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>());
    assert_eq!(after.first().map(|r| r.offset), Some(5), "first read after seeking to 5: {:?}", after.first());
    let after: Vec<i64> = after.iter().map(|r| r.offset).collect();
    assert_eq!(after, (5..5 + after.len() as i64).collect::<Vec<_>>(), "in order from the seek on");
}

/// How many partitions `consumer` owns (the list dropped at once: see TOOLCHAIN.md's hang).
fn owned(consumer: &BaseConsumer<Routing>) -> usize {
    consumer.assignment().map(|tpl| tpl.count()).unwrap_or(0)
}

/// Serves both members (the second one's messages are read and dropped) until `until` holds.
fn drive(a: &BaseConsumer<Routing>, b: &BaseConsumer<Routing>, timeout: Duration, until: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !until() {
        assert!(Instant::now() < deadline, "members did not get there within {timeout:?}");
        for c in [a, b] {
            if let Some(Ok(m)) = c.poll(Duration::ZERO) {
                panic!(
                    "poll handed out {}/{}@{} although its partition is routed",
                    m.topic(),
                    m.partition(),
                    m.offset()
                );
            }
            drop(c.context().queue().as_mut().expect("fetch queue").read(Duration::from_millis(20), 64));
        }
    }
}

#[tokio::test]
async fn a_partition_revoked_and_assigned_again_is_routed_again() {
    let bootstrap = Broker::shared().bootstrap();
    let topic = common::random_topic("fetch-again");
    common::create_topic(&bootstrap, &topic, 2).await;
    let first: Vec<TestRecord> = (0..20).map(|i| (None, format!("a-{i}").into_bytes(), vec![], Some(i % 2))).collect();
    common::produce_values(&bootstrap, &topic, first).await;

    let (a, one) = tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        move || {
            let group = common::random_topic("fetch-again-group");
            let a = routed_member(&bootstrap, &topic, &group);
            let (before, _) = read_until(&a, Duration::from_secs(30), 64, |r| r.len() >= 20);
            // A second member joins: `a` gives one partition up (cooperative-sticky), whose
            // fetcher stops; then the second member leaves and `a` is assigned it again.
            let b = routed_member(&bootstrap, &topic, &group);
            drive(&a, &b, Duration::from_secs(40), || owned(&a) == 1 && owned(&b) == 1);
            close(b);
            drive(&a, &a, Duration::from_secs(40), || owned(&a) == 2);
            (a, before)
        }
    })
    .await
    .expect("first reader thread");
    let second: Vec<TestRecord> =
        (20..40).map(|i| (None, format!("b-{i}").into_bytes(), vec![], Some(i % 2))).collect();
    common::produce_values(&bootstrap, &topic, second).await;
    let two = tokio::task::spawn_blocking(move || {
        // Nothing was committed: the partition given back is read from its start again, the kept
        // one goes on from offset 10.
        let (after, _) = read_until(&a, Duration::from_secs(40), 64, |r| {
            (0..2).all(|p| r.iter().any(|m| m.partition == p && m.offset == 19))
        });
        close(a);
        after
    })
    .await
    .expect("second reader thread");

    assert_eq!(one.len(), 20, "first member read {} of 20 before the rebalance", one.len());
    for p in 0..2 {
        let offsets: Vec<i64> = two.iter().filter(|r| r.partition == p).map(|r| r.offset).collect();
        assert!(offsets.contains(&19), "partition {p} after the rebalances: {offsets:?} (a stalled route?)");
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "partition {p} out of order: {offsets:?}");
    }
}
