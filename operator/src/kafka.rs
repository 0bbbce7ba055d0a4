//! What the operator asks Kafka: a topic's partition count and end offsets (blocking calls
//! run off the async runtime). One metadata client per distinct cluster configuration is
//! shared by every job, so a thousand jobs on one cluster cost one client.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    client::DefaultClientContext,
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

/// Whether an output topic (sink, dead letters) can take records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputTopic {
    /// The topic exists.
    Exists,
    /// It does not exist, and the brokers create topics on first use
    /// (`auto.create.topics.enable`), or cannot say whether they do.
    CreatedOnFirstUse,
    /// It does not exist, and the brokers do not create topics.
    Missing,
}

/// How long a topic's description serves every job that reads that topic: a thousand jobs
/// of one topic ask Kafka once, not a thousand times.
const TOPIC_TTL: Duration = Duration::from_secs(1);

/// Shared Kafka metadata clients, one per cluster configuration.
#[derive(Default)]
pub struct KafkaClients {
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    admins: Mutex<HashMap<String, Arc<AdminClient<DefaultClientContext>>>>,
    /// Recent topic descriptions by cluster configuration and topic.
    topics: Mutex<HashMap<(String, String), (Instant, TopicInfo)>>,
}

impl KafkaClients {
    /// Partition count and end offsets of `topic` (at most [`TOPIC_TTL`] old).
    pub async fn topic(
        &self,
        bootstrap: &str,
        props: &BTreeMap<String, String>,
        topic: &str,
    ) -> Result<TopicInfo, KafkaProblem> {
        let key = (client_key(bootstrap, props), topic.to_owned());
        let recent = lock(&self.topics)
            .get(&key)
            .filter(|(at, _)| at.elapsed() < TOPIC_TTL)
            .map(|(_, info)| info.clone());
        if let Some(info) = recent {
            return Ok(info);
        }
        let info = self.blocking(bootstrap, props, topic, describe).await?;
        let mut topics = lock(&self.topics);
        topics.retain(|_, (at, _)| at.elapsed() < TOPIC_TTL);
        topics.insert(key, (Instant::now(), info.clone()));
        Ok(info)
    }

    /// Whether output `topic` exists, or else whether the brokers will create it when the
    /// workers first write to it.
    pub async fn output_topic(
        &self,
        bootstrap: &str,
        props: &BTreeMap<String, String>,
        topic: &str,
    ) -> Result<OutputTopic, KafkaProblem> {
        let broker = match self.blocking(bootstrap, props, topic, lookup).await? {
            Lookup::Found(_) => return Ok(OutputTopic::Exists),
            Lookup::Missing { broker } => broker,
        };
        let admin = cached(&self.admins, bootstrap, props)?;
        let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
        let configs = admin
            .describe_configs(&[ResourceSpecifier::Broker(broker)], &options)
            .await;
        let auto_create = configs.ok().and_then(|configs| {
            let config = configs.into_iter().next()?.ok()?;
            config.get("auto.create.topics.enable")?.value.clone()
        });
        Ok(match auto_create.as_deref() {
            Some("false") => OutputTopic::Missing,
            Some(_) => OutputTopic::CreatedOnFirstUse,
            None => {
                tracing::warn!(
                    topic,
                    bootstrap,
                    broker,
                    "output topic does not exist, and the broker's auto.create.topics.enable \
                     cannot be read (DescribeConfigs); assuming the broker creates it"
                );
                OutputTopic::CreatedOnFirstUse
            }
        })
    }

    /// Runs `request` (blocking calls about `topic`) with this cluster's metadata client,
    /// off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        bootstrap: &str,
        props: &BTreeMap<String, String>,
        topic: &str,
        request: fn(&BaseConsumer, &str, &str) -> Result<T, KafkaProblem>,
    ) -> Result<T, KafkaProblem> {
        let client = cached(&self.clients, bootstrap, props)?;
        let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || request(&client, &bootstrap, &topic))
            .await
            .map_err(|_| KafkaProblem::Task)?
    }
}

/// The client of `clients` for this cluster configuration, created on first use.
fn cached<C: rdkafka::config::FromClientConfig>(
    clients: &Mutex<HashMap<String, Arc<C>>>,
    bootstrap: &str,
    props: &BTreeMap<String, String>,
) -> Result<Arc<C>, KafkaProblem> {
    let key = client_key(bootstrap, props);
    let mut clients = lock(clients);
    if let Some(client) = clients.get(&key) {
        return Ok(client.clone());
    }
    let client: C = streamjob_worker::kafka::client_config(bootstrap, props)
        .create()
        .map_err(KafkaProblem::Settings)?;
    let client = Arc::new(client);
    clients.insert(key, client.clone());
    Ok(client)
}

/// Names a cluster configuration.
fn client_key(bootstrap: &str, props: &BTreeMap<String, String>) -> String {
    format!("{bootstrap}\n{props:?}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turns a failed request to the cluster at `bootstrap` into the problem it reports.
fn unreachable(bootstrap: &str) -> impl Fn(KafkaError) -> KafkaProblem + '_ {
    move |source| KafkaProblem::Unreachable {
        bootstrap: bootstrap.to_owned(),
        source,
    }
}

/// A topic's partitions, or the broker that said it has none.
enum Lookup {
    Found(Vec<i32>),
    Missing { broker: i32 },
}

fn lookup(client: &BaseConsumer, bootstrap: &str, topic: &str) -> Result<Lookup, KafkaProblem> {
    let unreachable = unreachable(bootstrap);
    let metadata = client
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(&unreachable)?;
    let missing = Lookup::Missing {
        broker: metadata.orig_broker_id(),
    };
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(missing);
    };
    match meta.error() {
        None => {}
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            return Ok(missing);
        }
        Some(code) => return Err(unreachable(KafkaError::MetadataFetch(code.into()))),
    }
    if meta.partitions().is_empty() {
        return Ok(missing);
    }
    Ok(Lookup::Found(
        meta.partitions().iter().map(|p| p.id()).collect(),
    ))
}

fn describe(
    client: &BaseConsumer,
    bootstrap: &str,
    topic: &str,
) -> Result<TopicInfo, KafkaProblem> {
    let Lookup::Found(partitions) = lookup(client, bootstrap, topic)? else {
        return Err(KafkaProblem::NoSuchTopic {
            topic: topic.to_owned(),
            bootstrap: bootstrap.to_owned(),
        });
    };
    let mut end_offsets = BTreeMap::new();
    for partition in partitions {
        let (_, high) = client
            .fetch_watermarks(topic, partition, TIMEOUT)
            .map_err(unreachable(bootstrap))?;
        end_offsets.insert(partition, high);
    }
    Ok(TopicInfo {
        partitions: i32::try_from(end_offsets.len()).unwrap_or(i32::MAX),
        end_offsets,
    })
}
