//! rdkafka against the local Kafka broker: plain and transactional produce/consume round trips.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use rdkafka::{
    ClientConfig, Message, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer},
};
use streamjob_tests::{stack_env, unique_name, worker::create_topic};

/// Reads every record of `topic` partition `partition` until the consumer reports the end of
/// the partition (which accounts for transaction markers).
fn read_partition(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    isolation: &str,
) -> Vec<(String, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("roundtrip"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}/{partition}"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("consume failed: {e}"),
            Some(Ok(message)) => {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                let value =
                    String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
                out.push((key, value));
            }
        }
    }
}

#[tokio::test]
async fn produce_and_consume_round_trip() {
    let env = stack_env();
    let topic = unique_name("roundtrip");
    create_topic(&env.kafka_bootstrap, &topic, 3).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for i in 0..10 {
        let (key, value) = (format!("k{i}"), format!(r#"{{"n":{i}}}"#));
        producer
            .send(
                FutureRecord::to(&topic)
                    .partition(1)
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    }

    let records = read_partition(&env.kafka_bootstrap, &topic, 1, "read_uncommitted");
    let expected: Vec<_> = (0..10)
        .map(|i| (format!("k{i}"), format!(r#"{{"n":{i}}}"#)))
        .collect();
    assert_eq!(records, expected);
}

#[tokio::test]
async fn committed_transactions_are_visible_and_aborted_ones_are_not() {
    let env = stack_env();
    let topic = unique_name("txn");
    create_topic(&env.kafka_bootstrap, &topic, 1).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka_bootstrap)
        .set("transactional.id", unique_name("txn-producer"))
        .create()
        .unwrap();
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init_transactions");

    producer.begin_transaction().unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key("a")
                .payload("aborted"),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    producer.abort_transaction(Duration::from_secs(30)).unwrap();

    producer.begin_transaction().unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .partition(0)
                .key("c")
                .payload("committed"),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    producer
        .commit_transaction(Duration::from_secs(30))
        .unwrap();

    let committed = read_partition(&env.kafka_bootstrap, &topic, 0, "read_committed");
    assert_eq!(committed, vec![("c".to_owned(), "committed".to_owned())]);
    let everything = read_partition(&env.kafka_bootstrap, &topic, 0, "read_uncommitted");
    assert_eq!(
        everything.len(),
        2,
        "read_uncommitted sees the aborted record too: {everything:?}"
    );
}
