//! Kafka clients of a worker: a consumer with explicit partition assignment and a producer
//! whose delivery failures are tracked, so a checkpoint never covers unacknowledged output.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext, Statistics,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, KafkaResult},
    message::BorrowedMessage,
    producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer},
    types::RDKafkaErrorCode,
};
use thiserror::Error;

use crate::telemetry::Metrics;

/// A Kafka client that could not be set up.
#[derive(Debug, Error)]
pub enum KafkaSetupError {
    /// A client property file could not be read.
    #[error("cannot read Kafka client properties from {path}: {source}")]
    Properties {
        /// File or directory.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// librdkafka refused the configuration.
    #[error("failed to create the Kafka {what}: {source}")]
    Create {
        /// Which client.
        what: &'static str,
        /// librdkafka error.
        source: Box<KafkaError>,
    },
    /// Topic metadata could not be fetched.
    #[error("failed to read metadata of topic {topic} from {bootstrap}: {source}")]
    Metadata {
        /// Topic.
        topic: String,
        /// Brokers.
        bootstrap: String,
        /// librdkafka error.
        source: Box<KafkaError>,
    },
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
}

/// Extra librdkafka properties from a directory with one file per property (a mounted
/// Secret): the file name is the property, its content the value.
pub fn load_properties(dir: &Path) -> Result<BTreeMap<String, String>, KafkaSetupError> {
    let err = |source| KafkaSetupError::Properties {
        path: dir.display().to_string(),
        source,
    };
    let mut props = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Secret volumes hold `..data` symlinks and dotted timestamp dirs next to the keys.
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let value = std::fs::read_to_string(entry.path()).map_err(err)?;
        props.insert(name, value.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(props)
}

/// Base configuration shared by every client of a job.
pub fn client_config(bootstrap: &str, props: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in props {
        config.set(key, value);
    }
    config
}

/// Sets the worker's tuning for every key the job's properties leave unset, so users can
/// still override each of them.
fn set_defaults(
    config: &mut ClientConfig,
    props: &BTreeMap<String, String>,
    defaults: &[(&str, &str)],
) {
    for (key, value) in defaults {
        if !props.contains_key(*key) {
            config.set(*key, *value);
        }
    }
}

/// Consumer context that turns librdkafka statistics into lag gauges.
#[derive(Default)]
pub struct SourceContext;

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let metrics = Metrics::global();
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics.set_consumer_lag(*partition, stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

/// The source consumer type.
pub type SourceConsumer = BaseConsumer<SourceContext>;

/// Creates the source consumer: no group rebalancing (partitions are assigned explicitly),
/// no auto-commit (offsets are committed after checkpoints, for lag tools only).
pub fn source_consumer(
    bootstrap: &str,
    group_id: &str,
    props: &BTreeMap<String, String>,
) -> Result<SourceConsumer, KafkaSetupError> {
    source_config(bootstrap, group_id, props)
        .create_with_context(SourceContext)
        .map_err(|source| KafkaSetupError::Create {
            what: "consumer",
            source: source.into(),
        })
}

fn source_config(
    bootstrap: &str,
    group_id: &str,
    props: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = client_config(bootstrap, props);
    set_defaults(
        &mut config,
        props,
        &[
            ("statistics.interval.ms", "5000"),
            ("fetch.wait.max.ms", "100"),
            // librdkafka stops fetching a partition for this long once its local queue is
            // full; the 1 s default starves a fast consumer (measured: 4x throughput at 10 ms).
            ("fetch.queue.backoff.ms", "10"),
        ],
    );
    // What the engine relies on: not overridable.
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    config
}

/// What one [`poll_next`] call returned.
pub struct Polled<'c> {
    /// A record, an error, or nothing within the wait.
    pub result: Option<KafkaResult<BorrowedMessage<'c>>>,
    /// Whether the call had to wait (nothing was queued): a clock read before it is stale.
    pub waited: bool,
}

/// The next record (or error) of `consumer`: taken without waiting while librdkafka has one
/// queued, otherwise waiting up to `wait`, saying which (the hot loop caches the clock and
/// must read it again after a wait).
pub fn poll_next<C: ConsumerContext>(consumer: &BaseConsumer<C>, wait: Duration) -> Polled<'_> {
    match consumer.poll(Duration::ZERO) {
        Some(result) => Polled {
            result: Some(result),
            waited: false,
        },
        None => Polled {
            result: consumer.poll(wait),
            waited: true,
        },
    }
}

/// Producer context counting deliveries that failed for good.
#[derive(Default)]
pub struct SinkContext {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SinkContext {
    /// Number of records whose delivery failed since the producer was created.
    pub fn failures(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    /// Counts a record that could not even be queued as a failed delivery.
    pub fn record_enqueue_failure(&self, error: &str) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_owned());
        }
        self.failed.fetch_add(1, Ordering::AcqRel);
    }

    /// The most recent delivery error.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

impl ClientContext for SinkContext {}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
            self.failed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The sink (and dead-letter) producer type.
pub type SinkProducer = ThreadedProducer<SinkContext>;

/// Creates the idempotent producer for results and dead letters.
pub fn sink_producer(
    bootstrap: &str,
    props: &BTreeMap<String, String>,
) -> Result<SinkProducer, KafkaSetupError> {
    sink_config(bootstrap, props)
        .create_with_context(SinkContext::default())
        .map_err(|source| KafkaSetupError::Create {
            what: "producer",
            source: source.into(),
        })
}

fn sink_config(bootstrap: &str, props: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = client_config(bootstrap, props);
    set_defaults(
        &mut config,
        props,
        &[
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            // Only failures matter to `SinkContext` (and `flush` waits for every
            // acknowledgement either way): without a report per delivered record, librdkafka
            // frees records in its broker thread instead of queueing each one to the polling
            // thread and through rdkafka's callback.
            ("delivery.report.only.error", "true"),
        ],
    );
    // Ordering and no duplicates on retries: not overridable.
    config.set("enable.idempotence", "true");
    config
}

/// Sends a record, waiting while librdkafka's queue is full. A record that cannot be queued
/// for another reason counts as a failed delivery (see [`SinkContext::failures`]).
pub fn send(producer: &SinkProducer, mut record: BaseRecord<'_, [u8], [u8]>) {
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => {
                tracing::error!(%error, "cannot enqueue output record");
                producer
                    .context()
                    .record_enqueue_failure(&error.to_string());
                return;
            }
        }
    }
}

/// Number of partitions of `topic`.
pub fn partition_count(
    bootstrap: &str,
    topic: &str,
    props: &BTreeMap<String, String>,
) -> Result<i32, KafkaSetupError> {
    let consumer: BaseConsumer =
        client_config(bootstrap, props)
            .create()
            .map_err(|source| KafkaSetupError::Create {
                what: "metadata client",
                source: source.into(),
            })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|source| KafkaSetupError::Metadata {
            topic: topic.to_owned(),
            bootstrap: bootstrap.to_owned(),
            source: source.into(),
        })?;
    let topic_meta = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .ok_or_else(|| KafkaSetupError::NoSuchTopic(topic.to_owned()))?;
    let count = topic_meta.partitions().len();
    if count == 0 {
        return Err(KafkaSetupError::NoSuchTopic(topic.to_owned()));
    }
    Ok(i32::try_from(count).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{sink_config, source_config};

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn job_properties_override_the_tuning_defaults_but_not_what_the_engine_relies_on() {
        let sink = sink_config(
            "b:9092",
            &props(&[("linger.ms", "50"), ("enable.idempotence", "false")]),
        );
        assert_eq!(sink.get("linger.ms"), Some("50"));
        assert_eq!(sink.get("compression.type"), Some("lz4"));
        assert_eq!(sink.get("delivery.report.only.error"), Some("true"));
        assert_eq!(sink.get("enable.idempotence"), Some("true"));

        let source = source_config(
            "b:9092",
            "g",
            &props(&[
                ("fetch.queue.backoff.ms", "0"),
                ("enable.auto.commit", "true"),
            ]),
        );
        assert_eq!(source.get("fetch.queue.backoff.ms"), Some("0"));
        assert_eq!(source.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(source.get("enable.auto.commit"), Some("false"));
        assert_eq!(source.get("group.id"), Some("g"));
    }
}
