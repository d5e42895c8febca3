//! Kafka client helpers tuned for the Tansu test broker.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::time::Instant;

/// One record for [`produce_values`]: key, value, headers, partition (`None`
/// lets the partitioner choose: by key hash when there is a key).
pub type TestRecord = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>, Option<i32>);

/// `prefix` plus a random suffix, so tests sharing a broker never collide.
pub fn random_topic(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Consumer settings that work on Tansu. With librdkafka's default session
/// timeout a group join takes ~23 s there; with these it takes ~3 s.
/// Offsets start at the earliest record and are never auto-committed, so a
/// test that starts streamscore controls its commits itself.
pub fn consumer_config(bootstrap: &str, group: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The default (1 s) stalls fetching whenever the prefetch queue fills.
        .set("fetch.queue.backoff.ms", "10");
    config
}

/// Producer settings for test input: fail a delivery after 30 s instead of
/// librdkafka's 5 minutes, so a broken broker fails the test promptly.
pub fn producer_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("message.timeout.ms", "30000").set("linger.ms", "5");
    config
}

/// Creates `name` with `partitions` partitions (replication 1) and waits until
/// broker metadata lists all of them. Panics on failure.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("create admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&topic], &options).await.unwrap_or_else(|e| panic!("create topic {name}: {e}"));
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => panic!("create topic {topic}: {code}"),
        }
    }
    wait_for_partitions(bootstrap, name, partitions, Duration::from_secs(15)).await;
}

/// Waits until metadata shows `topic` with at least `partitions` partitions.
pub async fn wait_for_partitions(bootstrap: &str, topic: &str, partitions: i32, timeout: Duration) {
    let found = partition_count_within(bootstrap, topic, partitions, timeout).await;
    assert!(found >= partitions, "topic {topic} shows {found} partitions after {timeout:?}, wanted {partitions}");
}

/// Number of partitions of `topic` as broker metadata reports it (0 if absent).
pub async fn partition_count(bootstrap: &str, topic: &str) -> i32 {
    partition_count_within(bootstrap, topic, 1, Duration::ZERO).await
}

async fn partition_count_within(bootstrap: &str, topic: &str, want: i32, timeout: Duration) -> i32 {
    let bootstrap = bootstrap.to_owned();
    let topic = topic.to_owned();
    // fetch_metadata blocks; keep it off the test's reactor.
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("create metadata client");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let found = client
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()
                .and_then(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len() as i32)
                })
                .unwrap_or(0);
            if found >= want || std::time::Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .expect("metadata task")
}

/// Produces `msgs` in order and waits for every delivery. Returns each
/// record's `(partition, offset)`, in input order. Panics on any failure.
pub async fn produce_values(bootstrap: &str, topic: &str, msgs: Vec<TestRecord>) -> Vec<(i32, i64)> {
    let producer: FutureProducer = producer_config(bootstrap).create().expect("create producer");
    let mut pending = Vec::with_capacity(msgs.len());
    for (key, value, headers, partition) in &msgs {
        let mut owned_headers = OwnedHeaders::new_with_capacity(headers.len());
        for (name, bytes) in headers {
            owned_headers = owned_headers.insert(Header { key: name, value: Some(bytes) });
        }
        let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> =
            FutureRecord::to(topic).payload(value).headers(owned_headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(*partition);
        }
        // Keep everything in flight at once; only back off when librdkafka's
        // local queue is full.
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => panic!("produce to {topic}: {e}"),
            }
        }
    }
    let mut placed = Vec::with_capacity(pending.len());
    for delivery in pending {
        match delivery.await.expect("producer dropped a delivery") {
            Ok(d) => placed.push((d.partition, d.offset)),
            Err((e, _)) => panic!("delivery to {topic} failed: {e}"),
        }
    }
    placed
}

/// Reads `topic` from the beginning until `n` messages arrived or `timeout`
/// passed, and returns what it has (the caller asserts on the count).
pub async fn consume_n(bootstrap: &str, topic: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let group = random_topic("consume-n");
    consume_n_with(consumer_config(bootstrap, &group), topic, n, timeout).await
}

/// [`consume_n`] with a caller-supplied consumer config (for example with
/// `isolation.level=read_committed`). It must contain `bootstrap.servers`
/// and `group.id`.
///
/// The consumer *assigns* every partition at the beginning rather than
/// subscribing: no group join (~3 s on Tansu), no rebalance, no commits, so
/// reading back output cannot disturb the group under test.
pub async fn consume_n_with(config: ClientConfig, topic: &str, n: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let consumer = assigned_consumer(config, topic).await;
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => out.push(message.detach()),
            Ok(Err(e)) => eprintln!("consume_n({topic}): transient error: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Reads `topic` from the beginning until no message has arrived for `quiet`
/// or `max` has passed in total, and returns everything read. Use it to
/// assert "nothing more was produced"; `quiet` should be at least ~1 s so
/// the first fetch has time to happen.
pub async fn consume_until_quiet(bootstrap: &str, topic: &str, quiet: Duration, max: Duration) -> Vec<OwnedMessage> {
    let group = random_topic("consume-quiet");
    let end = Instant::now() + max;
    let consumer = assigned_consumer(consumer_config(bootstrap, &group), topic).await;
    let mut out = Vec::new();
    loop {
        let deadline = std::cmp::min(end, Instant::now() + quiet);
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => out.push(message.detach()),
            Ok(Err(e)) => eprintln!("consume_until_quiet({topic}): transient error: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Every header of `message` as `(name, value)` pairs, in order (a null
/// value becomes empty).
pub fn headers_of(message: &OwnedMessage) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    message
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
        .unwrap_or_default()
}

async fn assigned_consumer(config: ClientConfig, topic: &str) -> StreamConsumer {
    let bootstrap = config.get("bootstrap.servers").expect("consumer config without bootstrap.servers").to_owned();
    let partitions = partition_count_within(&bootstrap, topic, 1, Duration::from_secs(10)).await;
    assert!(partitions > 0, "topic {topic} does not exist on {bootstrap}");
    let consumer: StreamConsumer = config.create().expect("create consumer");
    {
        // Built and dropped before the consumer: a partition list outliving
        // its consumer can hang librdkafka's destroy (see TOOLCHAIN.md).
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).expect("add partition");
        }
        consumer.assign(&assignment).expect("assign partitions");
    }
    consumer
}

/// Metadata over `config` within `timeout`, off the reactor: Ok(broker ports) or the error.
pub async fn broker_ports(config: ClientConfig, timeout: Duration) -> Result<Vec<i32>, String> {
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create().map_err(|e| format!("create: {e}"))?;
        client
            .fetch_metadata(None, timeout)
            .map(|m| m.brokers().iter().map(|b| b.port()).collect())
            .map_err(|e| e.to_string())
    })
    .await
    .expect("metadata task")
}
