//! Proves the shared harness works before anything builds on it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::Message;

use crate::common::{self, Broker, Registry, TestRecord};

#[tokio::test]
async fn broker_round_trips_keys_headers_and_partitions() {
    let started = Instant::now();
    let broker = Broker::shared();
    eprintln!("shared broker ready after {:?}", started.elapsed());
    let bootstrap = broker.bootstrap();
    let topic = common::random_topic("smoke");

    let created = Instant::now();
    common::create_topic(&bootstrap, &topic, 3).await;
    eprintln!("topic created after {:?}", created.elapsed());
    assert_eq!(common::partition_count(&bootstrap, &topic).await, 3);

    // Every fourth record pins its partition; the rest go by key hash.
    let records: Vec<TestRecord> = (0..100)
        .map(|i| {
            let key = format!("key-{i}").into_bytes();
            let value = format!("value-{i}").into_bytes();
            let headers =
                vec![("seq".to_owned(), i.to_string().into_bytes()), ("bin".to_owned(), vec![0, 255, i as u8])];
            let partition = (i % 4 == 0).then_some(i % 3);
            (Some(key), value, headers, partition)
        })
        .collect();
    let produced = Instant::now();
    let placed = common::produce_values(&bootstrap, &topic, records.clone()).await;
    eprintln!("100 records delivered after {:?}", produced.elapsed());
    assert_eq!(placed.len(), 100);

    let consumed = Instant::now();
    let messages = common::consume_n(&bootstrap, &topic, 100, Duration::from_secs(30)).await;
    eprintln!("100 records consumed after {:?}", consumed.elapsed());
    if messages.len() != 100 {
        broker.dump_log(40);
    }
    assert_eq!(messages.len(), 100, "consumed {} of 100", messages.len());

    let by_key: HashMap<Vec<u8>, _> = messages.iter().map(|m| (m.key().expect("key").to_vec(), m)).collect();
    assert_eq!(by_key.len(), 100, "duplicate keys read back");
    for (i, ((key, value, headers, partition), (placed_partition, placed_offset))) in
        records.iter().zip(&placed).enumerate()
    {
        let message = by_key.get(key.as_ref().unwrap()).unwrap_or_else(|| panic!("record {i} missing"));
        assert_eq!(message.payload(), Some(value.as_slice()), "record {i} value");
        assert_eq!(&common::headers_of(message), headers, "record {i} headers");
        assert_eq!(message.partition(), *placed_partition, "record {i} partition");
        assert_eq!(message.offset(), *placed_offset, "record {i} offset");
        if let Some(p) = partition {
            assert_eq!(message.partition(), *p, "record {i} pinned partition");
        }
    }
    let used: std::collections::HashSet<i32> = messages.iter().map(|m| m.partition()).collect();
    assert_eq!(used.len(), 3, "records should land on all 3 partitions");

    let quiet = Instant::now();
    let again =
        common::consume_until_quiet(&bootstrap, &topic, Duration::from_millis(1500), Duration::from_secs(20)).await;
    eprintln!("consume_until_quiet returned after {:?}", quiet.elapsed());
    assert_eq!(again.len(), 100, "nothing more than the 100 records");
}

#[tokio::test]
async fn consumer_config_joins_a_group_on_tansu() {
    use rdkafka::consumer::{Consumer, StreamConsumer};

    let bootstrap = Broker::shared().bootstrap();
    let topic = common::random_topic("smoke-group");
    common::create_topic(&bootstrap, &topic, 2).await;
    common::produce_values(&bootstrap, &topic, vec![(None, b"hello".to_vec(), vec![], Some(1))]).await;

    let consumer: StreamConsumer =
        common::consumer_config(&bootstrap, &common::random_topic("g")).create().expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let joined = Instant::now();
    let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("no message within 20 s of subscribing")
        .expect("consumer error");
    eprintln!("group joined and first record read after {:?}", joined.elapsed());
    assert_eq!(message.payload(), Some(&b"hello"[..]));
}

#[test]
fn registry_mock_answers_the_confluent_endpoints() {
    let registry = Registry::start();
    let url = registry.url();
    let schema = r#"{"type":"record","name":"T","fields":[{"name":"amount","type":"double"}]}"#;
    let other = r#"{"type":"record","name":"U","fields":[{"name":"n","type":"long"}]}"#;

    // Registration over HTTP, with Confluent's request body.
    let body = serde_json::json!({ "schema": schema }).to_string();
    let response = common::http("POST", &format!("{url}/subjects/tx-value/versions"), Some(&body));
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.header("content-type"), Some("application/vnd.schemaregistry.v1+json"));
    let id = response.json()["id"].as_u64().expect("id") as u32;

    // Same text, same subject: same id, no new version. In-process register agrees.
    let typed = serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string();
    let again = common::http("POST", &format!("{url}/subjects/tx-value/versions"), Some(&typed));
    assert_eq!(again.json()["id"].as_u64(), Some(u64::from(id)));
    assert_eq!(registry.register("tx-value", schema), id);
    let other_id = registry.register("tx-value", other);
    assert_ne!(other_id, id);
    assert_eq!(registry.register_calls(), 2, "in-process registration is not counted");

    // By id.
    let by_id = common::http("GET", &format!("{url}/schemas/ids/{id}?deleted=true"), None);
    assert_eq!(by_id.status, 200);
    assert_eq!(by_id.header("content-type"), Some("application/vnd.schemaregistry.v1+json"));
    assert_eq!(by_id.json(), serde_json::json!({ "schema": schema }));

    // Latest version of the subject is the second schema.
    let latest = common::http("GET", &format!("{url}/subjects/tx-value/versions/latest"), None);
    assert_eq!(latest.status, 200);
    assert_eq!(
        latest.json(),
        serde_json::json!({"subject": "tx-value", "version": 2, "id": other_id, "schema": other})
    );
    let first = common::http("GET", &format!("{url}/subjects/tx-value/versions/1"), None);
    assert_eq!(first.json()["id"].as_u64(), Some(u64::from(id)));

    // Unknown things: Confluent error bodies.
    let missing = common::http("GET", &format!("{url}/schemas/ids/999"), None);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json(), serde_json::json!({"error_code": 40403, "message": "Schema not found"}));
    let no_subject = common::http("GET", &format!("{url}/subjects/nope/versions/latest"), None);
    assert_eq!(no_subject.status, 404);
    assert_eq!(no_subject.json()["error_code"], 40401);
    let bad = common::http("POST", &format!("{url}/subjects/x/versions"), Some("{\"schema\": \"{not json\"}"));
    assert_eq!(bad.status, 422);
    assert_eq!(bad.json()["error_code"], 42201);

    // Counters, including the outage switch.
    assert_eq!(registry.get_by_id_calls(), 2);
    assert_eq!(registry.get_version_calls(), 3);
    registry.set_available(false);
    let down = common::http("GET", &format!("{url}/schemas/ids/{id}"), None);
    assert_eq!(down.status, 500);
    assert_eq!(down.json()["error_code"], 50001);
    registry.set_available(true);
    assert_eq!(common::http("GET", &format!("{url}/schemas/ids/{id}"), None).status, 200);
    assert_eq!(registry.get_by_id_calls(), 4);
}

#[tokio::test]
async fn paused_broker_answers_again_after_resume() {
    let started = Instant::now();
    let broker = Broker::start();
    eprintln!("dedicated broker ready after {:?}", started.elapsed());
    let bootstrap = broker.bootstrap();
    let topic = common::random_topic("smoke-pause");
    common::create_topic(&bootstrap, &topic, 1).await;
    common::produce_values(&bootstrap, &topic, vec![(None, b"before".to_vec(), vec![], None)]).await;

    broker.pause();
    let pending = tokio::spawn({
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        async move { common::produce_values(&bootstrap, &topic, vec![(None, b"during".to_vec(), vec![], None)]).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!pending.is_finished(), "a produce completed against a paused broker");

    broker.resume();
    let resumed = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("produce did not complete within 20 s of resume")
        .expect("produce task panicked");
    eprintln!("in-flight produce completed {:?} after resume", resumed.elapsed());
    common::produce_values(&bootstrap, &topic, vec![(None, b"after".to_vec(), vec![], None)]).await;

    let messages = common::consume_n(&bootstrap, &topic, 3, Duration::from_secs(20)).await;
    let payloads: Vec<&[u8]> = messages.iter().filter_map(|m| m.payload()).collect();
    assert_eq!(payloads, vec![&b"before"[..], b"during", b"after"]);

    let pid = broker.pid();
    let stopping = Instant::now();
    drop(broker);
    eprintln!("dedicated broker stopped after {:?}", stopping.elapsed());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "tansu pid {pid} still exists after drop");
}
