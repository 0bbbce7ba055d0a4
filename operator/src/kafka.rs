//! What the operator asks Kafka: a topic's partition count and end offsets (blocking calls
//! run off the async runtime). One metadata client per distinct cluster configuration is
//! shared by every job, so a thousand jobs on one cluster cost one client.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
};
use thiserror::Error;

/// How long one metadata or offsets request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the operator could not learn about a topic.
#[derive(Debug, Error)]
pub enum KafkaProblem {
    /// The client could not be created (bad settings in the Secret).
    #[error("invalid Kafka client settings: {0}")]
    Settings(KafkaError),
    /// No broker answered.
    #[error("cannot reach Kafka at {bootstrap}: {source}")]
    Unreachable {
        /// The bootstrap servers.
        bootstrap: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The topic does not exist.
    #[error("topic {topic:?} does not exist on {bootstrap}")]
    NoSuchTopic {
        /// The topic.
        topic: String,
        /// The bootstrap servers.
        bootstrap: String,
    },
    /// The blocking task panicked (a bug).
    #[error("the Kafka metadata task failed")]
    Task,
}

/// What the operator knows about a source topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Number of partitions.
    pub partitions: i32,
    /// Partition → offset of the next record to be written (end offset).
    pub end_offsets: BTreeMap<i32, i64>,
}

/// Shared Kafka metadata clients, one per cluster configuration.
#[derive(Default)]
pub struct KafkaClients {
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl KafkaClients {
    /// Partition count and end offsets of `topic`.
    pub async fn topic(
        &self,
        bootstrap: &str,
        props: &BTreeMap<String, String>,
        topic: &str,
    ) -> Result<TopicInfo, KafkaProblem> {
        let client = self.client(bootstrap, props)?;
        let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || describe(&client, &bootstrap, &topic))
            .await
            .map_err(|_| KafkaProblem::Task)?
    }

    fn client(
        &self,
        bootstrap: &str,
        props: &BTreeMap<String, String>,
    ) -> Result<Arc<BaseConsumer>, KafkaProblem> {
        let key = format!("{bootstrap}\n{props:?}");
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client: BaseConsumer = streamjob_worker::kafka::client_config(bootstrap, props)
            .create()
            .map_err(KafkaProblem::Settings)?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn describe(
    client: &BaseConsumer,
    bootstrap: &str,
    topic: &str,
) -> Result<TopicInfo, KafkaProblem> {
    let unreachable = |source| KafkaProblem::Unreachable {
        bootstrap: bootstrap.to_owned(),
        source,
    };
    let no_such_topic = || KafkaProblem::NoSuchTopic {
        topic: topic.to_owned(),
        bootstrap: bootstrap.to_owned(),
    };
    let metadata = client
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(unreachable)?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(no_such_topic());
    };
    match meta.error() {
        None => {}
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            return Err(no_such_topic());
        }
        Some(code) => return Err(unreachable(KafkaError::MetadataFetch(code.into()))),
    }
    if meta.partitions().is_empty() {
        return Err(no_such_topic());
    }
    let mut end_offsets = BTreeMap::new();
    for partition in meta.partitions() {
        let (_, high) = client
            .fetch_watermarks(topic, partition.id(), TIMEOUT)
            .map_err(unreachable)?;
        end_offsets.insert(partition.id(), high);
    }
    Ok(TopicInfo {
        partitions: i32::try_from(end_offsets.len()).unwrap_or(i32::MAX),
        end_offsets,
    })
}
