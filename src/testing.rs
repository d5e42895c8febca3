//! Helpers for unit tests against librdkafka's in-process mock cluster.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// An in-process mock cluster with `topics` (one partition each): the client that owns the
/// cluster (it must outlive every client of it) and the cluster's bootstrap servers.
pub fn mock_cluster(topics: &[&str]) -> (BaseProducer, String) {
    let owner: BaseProducer =
        ClientConfig::new().set("test.mock.num.brokers", "1").create().expect("mock cluster owner");
    let bootstrap = {
        let cluster = owner.client().mock_cluster().expect("mock cluster");
        for t in topics {
            cluster.create_topic(t, 1, 1).expect("topic");
        }
        cluster.bootstrap_servers()
    };
    (owner, bootstrap)
}

/// A consumer in group `group` assigned partition 0 of each of `topics`, from the beginning.
pub fn assigned_consumer(bootstrap: &str, group: &str, topics: &[&str]) -> BaseConsumer {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        tpl.add_partition_offset(t, 0, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}
