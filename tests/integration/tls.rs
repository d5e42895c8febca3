//! TLS to Kafka through configuration: streamscore's clients connect to a broker reachable only
//! over TLS (a CA generated in the test), score over it, and the wrong CA or plaintext fails.
//!
//! Tansu 0.6.0 cannot terminate TLS itself (see docs/security.md), so
//! [`TlsBroker`](crate::common::broker::TlsBroker) puts a TLS terminator in front of a
//! dedicated Tansu that advertises the TLS port: every connection a client makes is TLS.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::broker::{TestPki, TlsBroker};
use crate::common::{self, random_topic};
use crate::service::{self, InProcess, Schemas, Topics};

fn tls_client(broker: &TlsBroker) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap());
    for (k, v) in broker.client_properties() {
        c.set(k, v);
    }
    c
}

async fn create_topics(broker: &TlsBroker, topics: &Topics) {
    let admin: AdminClient<DefaultClientContext> = tls_client(broker).create().expect("admin client");
    let new: Vec<NewTopic<'_>> = [(&topics.input, 2), (&topics.scored, 3), (&topics.dlq, 1), (&topics.monitoring, 1)]
        .into_iter()
        .map(|(name, partitions)| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await.expect("create topics over TLS") {
        result.unwrap_or_else(|(t, code)| panic!("create topic {t}: {code}"));
    }
}

/// Creates the four topics, produces `n` synthetic transactions and has streamscore (configured
/// with `[kafka.common] security.protocol = "SSL"`, `ssl.ca.location = <generated CA>`) score
/// them, everything over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamscore_scores_over_tls_with_a_generated_ca() {
    let broker = TlsBroker::start();
    let ports = common::broker_ports(tls_client(&broker), Duration::from_secs(15)).await;
    assert_eq!(
        ports.as_deref(),
        Ok(&[i32::from(broker.bootstrap().rsplit(':').next().unwrap().parse::<u16>().unwrap())][..]),
        "metadata over TLS should list only the TLS port:\n{}",
        broker.log_tail(20)
    );

    let topics = Topics {
        input: random_topic("tls-in"),
        scored: random_topic("tls-scored"),
        dlq: random_topic("tls-dlq"),
        monitoring: random_topic("tls-mon"),
    };
    create_topics(&broker, &topics).await;

    const N: usize = 200;
    let inputs = service::synthetic(N, 7, 1);
    let mut producer_config = tls_client(&broker);
    producer_config.set("message.timeout.ms", "30000").set("linger.ms", "5");
    let producer: FutureProducer = producer_config.create().expect("TLS producer");
    for (key, value, _, _) in &inputs.records {
        let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(&topics.input).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("deliver over TLS");
    }

    let extra = format!(
        "[kafka.common]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n",
        broker.pki.ca_pem.display()
    );
    let toml =
        service::config_toml(&broker.bootstrap(), &topics, &random_topic("tls-group"), Schemas::Local, None, &extra);
    let cfg = service::config(&toml);
    assert_eq!(cfg.kafka.common.get("security.protocol").map(String::as_str), Some("SSL"));
    let instance = InProcess::start(cfg);
    let scored = instance.wait_outcomes(N as u64, Duration::from_secs(90)).await;
    let outcomes = instance.outcomes();
    let summary = instance.stop().await;
    assert!(scored, "streamscore scored {outcomes} of {N} over TLS ({summary:?}):\n{}", broker.log_tail(30));
    assert_eq!(outcomes, N as u64, "exactly one outcome per event");
}

/// A client trusting another CA fails the handshake (certificate verification), and a
/// plaintext client gets nothing from the TLS port: neither reaches the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_and_plaintext_clients_are_refused() {
    let broker = TlsBroker::start();
    // The right CA works (so the failures below are about trust, not a dead broker).
    common::broker_ports(tls_client(&broker), Duration::from_secs(15)).await.expect("metadata with the right CA");

    let other = TestPki::generate_ca(broker.pki.dir.path(), "other-ca");
    let mut wrong_ca = tls_client(&broker);
    wrong_ca.set("ssl.ca.location", other.display().to_string());
    let err =
        common::broker_ports(wrong_ca, Duration::from_secs(5)).await.expect_err("a client with the wrong CA must fail");
    eprintln!("wrong CA: {err}");

    let mut plaintext = ClientConfig::new();
    plaintext.set("bootstrap.servers", broker.bootstrap());
    let err = common::broker_ports(plaintext, Duration::from_secs(5))
        .await
        .expect_err("a plaintext client must fail on the TLS port");
    eprintln!("plaintext: {err}");
}
