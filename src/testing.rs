//! Helpers for unit tests against librdkafka's in-process mock cluster.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// An in-process mock cluster with `topics` (one partition each): the client that owns the
/// cluster (it must outlive every client of it) and the cluster's bootstrap servers.
pub fn mock_cluster(topics: &[&str]) -> (BaseProducer, String) {
    mock_cluster_partitioned(&one_partition_each(topics))
}

/// [`mock_cluster`] with `topics` as (name, partition count).
pub fn mock_cluster_partitioned(topics: &[(&str, i32)]) -> (BaseProducer, String) {
    let owner: BaseProducer =
        ClientConfig::new().set("test.mock.num.brokers", "1").create().expect("mock cluster owner");
    let bootstrap = {
        let cluster = owner.client().mock_cluster().expect("mock cluster");
        for (t, partitions) in topics {
            cluster.create_topic(t, *partitions, 1).expect("topic");
        }
        cluster.bootstrap_servers()
    };
    (owner, bootstrap)
}

fn one_partition_each<'a>(topics: &[&'a str]) -> Vec<(&'a str, i32)> {
    topics.iter().map(|t| (*t, 1)).collect()
}

/// A consumer in group `group` assigned partition 0 of each of `topics`, from the beginning.
pub fn assigned_consumer(bootstrap: &str, group: &str, topics: &[&str]) -> BaseConsumer {
    assigned_partitions(bootstrap, group, &one_partition_each(topics))
}

/// A consumer in group `group` assigned partitions `0..n` of each of `topics` (name, `n`), from
/// the beginning.
pub fn assigned_partitions(bootstrap: &str, group: &str, topics: &[(&str, i32)]) -> BaseConsumer {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (t, partitions) in topics {
        for p in 0..*partitions {
            tpl.add_partition_offset(t, p, Offset::Beginning).expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}
