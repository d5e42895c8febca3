//! SASL to Kafka through configuration: streamscore's clients log in with SCRAM-SHA-512,
//! SCRAM-SHA-256 or PLAIN, given only as `[kafka.common]` pass-through properties (the password
//! from `STREAMSCORE_KAFKA__COMMON__SASL_PASSWORD`), and score over the authenticated
//! connections; a wrong password, a plaintext client or a mechanism the broker does not offer
//! gets nothing, and the password is never printed.
//!
//! Tansu 0.6.0 cannot be given SASL users (see docs/security.md), so
//! [`SaslBroker`](crate::common::broker::SaslBroker) puts a SASL-terminating proxy in front of a
//! dedicated Tansu that advertises the proxy's port: every connection a client makes has to
//! authenticate, and the proxy reports each authentication with its mechanism and `client.id`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use streamscore::config::Config;

use crate::common::broker::{SaslBroker, SASL_MECHANISMS, SASL_USER};
use crate::common::{self, random_topic};
use crate::service::{self, Binary, InProcess, Schemas, Topics};

/// The `client.id` of the test's own clients; streamscore's are `streamscore` (the default).
const TEST_CLIENT: &str = "sasl-test";
const PASSWORD_ENV: &str = "STREAMSCORE_KAFKA__COMMON__SASL_PASSWORD";

fn sasl_client(broker: &SaslBroker, mechanism: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", broker.bootstrap()).set("client.id", TEST_CLIENT);
    for (k, v) in broker.client_properties(mechanism) {
        c.set(k, v);
    }
    c
}

/// The `[kafka.common]` table for streamscore: no password (that comes from the environment).
fn common_table(mechanism: &str) -> String {
    format!(
        "[kafka.common]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\"sasl.mechanism\" = \"{mechanism}\"\n\
         \"sasl.username\" = \"{SASL_USER}\"\n"
    )
}

async fn create_topics(broker: &SaslBroker, mechanism: &str, topics: &Topics) {
    let admin: AdminClient<DefaultClientContext> = sasl_client(broker, mechanism).create().expect("admin client");
    let new: Vec<NewTopic<'_>> = [(&topics.input, 2), (&topics.scored, 3), (&topics.dlq, 1), (&topics.monitoring, 1)]
        .into_iter()
        .map(|(name, partitions)| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await.expect("create topics over SASL") {
        result.unwrap_or_else(|(t, code)| panic!("create topic {t}: {code}"));
    }
}

/// Reads `n` records of `topic` (`partitions` partitions) from the beginning over SASL, or what
/// arrived within `timeout`.
async fn read_back(
    broker: &SaslBroker,
    mechanism: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let mut config = sasl_client(broker, mechanism);
    config.set("group.id", random_topic("sasl-read")).set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create().expect("SASL consumer");
    {
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning).expect("add partition");
        }
        consumer.assign(&assignment).expect("assign partitions");
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => out.push(message.detach()),
            Ok(Err(e)) => eprintln!("read_back({topic}): transient error: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Creates the topics, produces `N` transactions, runs streamscore in process with only the
/// SASL properties added (`[kafka.common]` plus the password from the environment), reads the
/// scored topic back, everything over SASL with `mechanism`; the proxy saw streamscore's
/// clients log in with `mechanism` and nothing else.
async fn scores_over_sasl(mechanism: &str) {
    const N: usize = 100;
    // All mechanisms enabled: the one used is the one streamscore was configured with.
    let broker = SaslBroker::start(&SASL_MECHANISMS);
    let ports = common::broker_ports(sasl_client(&broker, mechanism), Duration::from_secs(15)).await;
    assert_eq!(
        ports.as_deref(),
        Ok(&[i32::from(broker.sasl_port())][..]),
        "metadata over SASL should list only the proxy's port:\n{:?}\n{}",
        broker.auth_log(),
        broker.log_tail(20)
    );

    let topics = Topics {
        input: random_topic("sasl-in"),
        scored: random_topic("sasl-scored"),
        dlq: random_topic("sasl-dlq"),
        monitoring: random_topic("sasl-mon"),
    };
    create_topics(&broker, mechanism, &topics).await;

    let inputs = service::synthetic(N, 11, 1);
    let mut producer_config = sasl_client(&broker, mechanism);
    producer_config.set("message.timeout.ms", "30000").set("linger.ms", "5");
    let producer: FutureProducer = producer_config.create().expect("SASL producer");
    let mut deliveries = Vec::with_capacity(N);
    for (key, value, _, _) in &inputs.records {
        let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(&topics.input).payload(value);
        if let Some(key) = key {
            record = record.key(key);
        }
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).expect("queue the record"));
    }
    for delivery in deliveries {
        delivery.await.expect("delivery future").map_err(|(e, _)| e).expect("deliver over SASL");
    }

    let toml = service::config_toml(
        &broker.bootstrap(),
        &topics,
        &random_topic("sasl-group"),
        Schemas::Local,
        None,
        &common_table(mechanism),
    );
    let env = [(PASSWORD_ENV.to_string(), broker.password().to_string())];
    let cfg = Config::from_toml_str(&toml, "test", &env).unwrap_or_else(|e| panic!("test config invalid: {e}"));
    assert_eq!(cfg.kafka.common.get("sasl.password").map(String::as_str), Some(broker.password()));
    let instance = InProcess::start(cfg);
    let scored = instance.wait_outcomes(N as u64, Duration::from_secs(60)).await;
    let outcomes = instance.outcomes();
    let summary = instance.stop().await;
    assert!(
        scored,
        "streamscore scored {outcomes} of {N} over SASL {mechanism} ({summary:?}):\n{:?}\n{}",
        broker.auth_log(),
        broker.log_tail(30)
    );
    assert_eq!(outcomes, N as u64, "exactly one outcome per event");

    let back = read_back(&broker, mechanism, &topics.scored, 3, N, Duration::from_secs(30)).await;
    assert_eq!(back.len(), N, "scored records read back over SASL");
    let mut want: Vec<Vec<u8>> = inputs.records.iter().filter_map(|(k, ..)| k.clone()).collect();
    let mut got: Vec<Vec<u8>> = back.iter().filter_map(|m| m.key().map(<[u8]>::to_vec)).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "one scored record per input, keyed like it");

    // The proxy's word: streamscore's clients (client.id `streamscore`) authenticated with the
    // configured mechanism; nothing failed and nothing came in unauthenticated.
    let log = broker.auth_log();
    let ok_streamscore = format!("auth ok {mechanism} user={SASL_USER} client=streamscore");
    let ok_test = format!("auth ok {mechanism} user={SASL_USER} client={TEST_CLIENT}");
    assert!(
        log.iter().filter(|l| **l == ok_streamscore).count() >= 2,
        "streamscore's consumer and producer logged in with {mechanism}:\n{log:#?}"
    );
    assert!(log.iter().all(|l| *l == ok_streamscore || *l == ok_test), "only {mechanism} logins:\n{log:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamscore_scores_over_sasl_scram_sha_512() {
    scores_over_sasl("SCRAM-SHA-512").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamscore_scores_over_sasl_scram_sha_256() {
    scores_over_sasl("SCRAM-SHA-256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamscore_scores_over_sasl_plain() {
    scores_over_sasl("PLAIN").await;
}

/// With only SCRAM-SHA-512 enabled: the right password works (so what follows is about the
/// credentials, not a dead broker); a wrong password, a plaintext client and a client asking for
/// PLAIN get no metadata, and the proxy says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_plaintext_and_unoffered_mechanism_are_refused() {
    let broker = SaslBroker::start(&["SCRAM-SHA-512"]);
    common::broker_ports(sasl_client(&broker, "SCRAM-SHA-512"), Duration::from_secs(15))
        .await
        .expect("the right password");

    let wrong = format!("{}-wrong", broker.password());
    let mut wrong_password = sasl_client(&broker, "SCRAM-SHA-512");
    wrong_password.set("sasl.password", &wrong);
    let err =
        common::broker_ports(wrong_password, Duration::from_secs(3)).await.expect_err("a wrong password must fail");
    eprintln!("wrong password: {err}");
    assert!(!err.contains(&wrong), "the error shows the password: {err}");

    let mut plaintext = ClientConfig::new();
    plaintext.set("bootstrap.servers", broker.bootstrap()).set("client.id", TEST_CLIENT);
    let err = common::broker_ports(plaintext, Duration::from_secs(3)).await.expect_err("a plaintext client must fail");
    eprintln!("plaintext: {err}");

    let err = common::broker_ports(sasl_client(&broker, "PLAIN"), Duration::from_secs(3))
        .await
        .expect_err("PLAIN is not offered by this broker");
    eprintln!("PLAIN: {err}");

    let log = broker.auth_log();
    let failed = format!("auth failed SCRAM-SHA-512 user={SASL_USER} client={TEST_CLIENT}: invalid credentials");
    assert!(log.contains(&failed), "the proxy refused the wrong password:\n{log:#?}");
    assert!(
        log.iter().any(|l| l.starts_with("refused api_key=")
            && l.ends_with(&format!("client={TEST_CLIENT} before authentication"))),
        "the proxy refused the plaintext client's first request:\n{log:#?}"
    );
    assert!(
        log.contains(&format!("auth failed PLAIN user=- client={TEST_CLIENT}: unsupported mechanism")),
        "the proxy refused PLAIN:\n{log:#?}"
    );
    let oks: Vec<&String> = log.iter().filter(|l| l.starts_with("auth ok")).collect();
    assert!(
        oks.iter().all(|l| **l == format!("auth ok SCRAM-SHA-512 user={SASL_USER} client={TEST_CLIENT}")),
        "only the right password logged in:\n{log:#?}"
    );
}

/// The real binary with a wrong password (from the environment, as docs/security.md advises):
/// it never becomes ready, its log says authentication failed, the proxy logged streamscore's
/// failed SCRAM-SHA-512 logins, and neither the wrong nor the right password is printed (the
/// start-up line shows `sasl.password` as `<redacted>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamscore_with_a_wrong_password_is_not_ready_and_never_prints_it() {
    let broker = SaslBroker::start(&["SCRAM-SHA-512"]);
    let topics = Topics {
        input: random_topic("sasl-in"),
        scored: random_topic("sasl-scored"),
        dlq: random_topic("sasl-dlq"),
        monitoring: random_topic("sasl-mon"),
    };
    let http_port = service::free_port();
    let toml = service::config_toml(
        &broker.bootstrap(),
        &topics,
        &random_topic("sasl-group"),
        Schemas::Local,
        Some(http_port),
        &common_table("SCRAM-SHA-512"),
    );
    let wrong = format!("{}-wrong", broker.password());
    let mut bin =
        Binary::start_with_env(&toml, http_port, broker.dir(), "wrong-password", &[(PASSWORD_ENV, wrong.as_str())]);

    let failed = format!("auth failed SCRAM-SHA-512 user={SASL_USER} client=streamscore: invalid credentials");
    assert!(
        broker.wait_for_auth_log(&failed, Duration::from_secs(20)),
        "streamscore's logins were not refused:\n{:#?}\n{}",
        broker.auth_log(),
        bin.log_tail(40)
    );
    // librdkafka reports the failure within its retry backoff; streamscore logs it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = bin.log_tail(100_000);
        if log.to_ascii_lowercase().contains("sasl authentication error") || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let said = log.lines().find(|l| l.to_ascii_lowercase().contains("sasl authentication error"));
    let said = said.unwrap_or_else(|| panic!("the log does not show the SASL authentication error:\n{log}"));
    eprintln!("streamscore logged: {said}");
    assert!(bin.child.try_wait().expect("try_wait").is_none(), "streamscore keeps retrying, it does not exit:\n{log}");
    let ready = crate::common::http("GET", &format!("http://127.0.0.1:{http_port}/readyz"), None);
    assert_ne!(ready.status, 200, "ready without a Kafka login:\n{log}");
    assert_eq!(bin.metric("streamscore_ready"), Some(0.0), "streamscore_ready gauge");
    assert!(
        !broker.auth_log().iter().any(|l| l.starts_with("auth ok") || l.starts_with("refused")),
        "nothing got in: {:#?}",
        broker.auth_log()
    );

    // Stop it, then look at everything it printed.
    bin.signal("TERM");
    if bin.wait_exit(Duration::from_secs(10)).is_none() {
        bin.signal("KILL");
        bin.wait_exit(Duration::from_secs(5));
    }
    let log = bin.log_tail(100_000);
    assert!(!log.contains(&wrong), "streamscore printed the (wrong) password:\n{log}");
    assert!(!log.contains(broker.password()), "streamscore printed the password:\n{log}");
    let start =
        log.lines().find(|l| l.contains("starting streamscore")).unwrap_or_else(|| panic!("no start-up line:\n{log}"));
    assert!(start.contains(r#""sasl.password": "<redacted>""#), "the password is applied, redacted:\n{start}");
    assert!(start.contains(&format!(r#""sasl.username": "{SASL_USER}""#)), "the user is shown:\n{start}");
}
