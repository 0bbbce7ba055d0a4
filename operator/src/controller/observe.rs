//! Observe: everything reconcile needs to know about a job's world (reads only: the pod
//! cache, the API server, Kafka metadata and checkpoint storage).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, ResourceExt, runtime::reflector::Store};
use streamjob_api::StreamJob;
use streamjob_worker::{
    checkpoint::CheckpointStore,
    paths::JobPaths,
    plan::Plan,
    storage::{self, Storage},
};

use super::{
    Blocker, Context, Error,
    names::{ChildNames, JOB_LABEL, PLAN_KEY},
    planning::{PodLifecycle, WorkerPod},
    savepoint::{self, SavepointManifest, SavepointPart},
};
use crate::kafka::{KafkaProblem, OutputTopic, TopicInfo};

/// What reconcile found.
#[derive(Debug)]
pub struct Observed {
    /// The job's worker pods.
    pub pods: Vec<WorkerPod>,
    /// The published plan, when its ConfigMap exists and parses.
    pub plan: Option<Plan>,
    /// The source topic, or why it could not be described.
    pub topic: Result<TopicInfo, Blocker>,
    /// Newest checkpoint per partition, read from storage.
    pub checkpoints: BTreeMap<i32, SeenCheckpoint>,
    /// The job's object storage, when the operator can reach it (not `file://`).
    pub storage: Option<JobStorage>,
    /// The parts in storage of the savepoint of the rescale in flight, by partition.
    pub parts: BTreeMap<i32, SavepointPart>,
    /// The savepoint `spec.restoreFrom` names, read while some partition has no checkpoint
    /// yet (it is what such a partition starts from), or why it cannot be used.
    pub restore_from: Option<Result<SavepointManifest, Blocker>>,
    /// Why the outputs cannot take records: a sink or dead-letter topic that does not exist
    /// and that the brokers will not create (asked only while the source topic answers).
    pub outputs: Option<Blocker>,
}

/// The job's objects in storage.
#[derive(Clone, Debug)]
pub struct JobStorage {
    /// The opened store.
    pub storage: Storage,
    /// Paths of the job's objects.
    pub paths: JobPaths,
}

impl JobStorage {
    /// The job's storage, or `None` for a `file://` URL: that directory lives in the worker
    /// pods, out of the operator's sight. A store that does not open is logged.
    pub fn open(
        job: &StreamJob,
        namespace: &str,
        settings: &BTreeMap<String, String>,
    ) -> Option<Self> {
        let url = &job.spec.checkpoint.storage;
        if url.starts_with("file://") {
            return None;
        }
        match storage::open_with(url, settings) {
            Ok(storage) => {
                let paths = JobPaths::new(&storage.prefix, namespace, &job.name_any());
                Some(Self { storage, paths })
            }
            Err(error) => {
                tracing::warn!(%error, "cannot open checkpoint storage");
                None
            }
        }
    }
}

impl Observed {
    /// The highest epoch of any checkpoint in storage. A job deleted and created again
    /// under the same name and storage continues from its checkpoints, so its epochs must
    /// continue above theirs (restore ignores snapshots of later epochs than the plan's).
    pub fn newest_checkpoint_epoch(&self) -> u64 {
        self.checkpoints
            .values()
            .map(|c| c.epoch)
            .max()
            .unwrap_or(0)
    }
}

/// A partition's newest checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct SeenCheckpoint {
    /// The epoch it was written in.
    pub epoch: u64,
    /// The next offset the partition resumes from.
    pub next_offset: i64,
    /// When it was written.
    pub time: jiff::Timestamp,
}

/// Reads the job's world.
pub async fn observe(job: &StreamJob, ctx: &Context) -> Result<Observed, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let names = ChildNames::new(&job.name_any());
    let mut missing_secrets = Vec::new();
    let kafka = &job.spec.source.kafka;
    let mut kafka_props = BTreeMap::new();
    if let Some(secret) = &kafka.secret_ref {
        match secret_values(ctx, &namespace, &secret.name).await? {
            Some(values) => kafka_props = values,
            None => missing_secrets.push(secret.name.clone()),
        }
    }
    let mut storage_settings = BTreeMap::new();
    if let Some(secret) = &job.spec.checkpoint.secret_ref {
        match secret_values(ctx, &namespace, &secret.name).await? {
            Some(values) => storage_settings = values,
            None => missing_secrets.push(secret.name.clone()),
        }
    }

    let topic = if missing_secrets.is_empty() {
        ctx.kafka
            .topic(&kafka.bootstrap_servers, &kafka_props, &kafka.topic)
            .await
            .map_err(|problem| kafka_blocker(&problem))
    } else {
        Err(Blocker::new(
            "SecretNotFound",
            format!(
                "Secret {} not found in namespace {namespace}",
                missing_secrets.join(", ")
            ),
        ))
    };

    let outputs = match &topic {
        Ok(_) => output_blocker(job, ctx, &kafka_props).await,
        Err(_) => None,
    };

    // The plan this process applied last, while nobody has touched it since; else a read.
    let plan_data = match ctx.children.config_map_data(&namespace, &names.plan()) {
        Some(data) => Some(data),
        None => {
            let plans: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
            plans
                .get_opt(&names.plan())
                .await
                .map_err(|source| Error::Read {
                    what: "plan ConfigMap",
                    source,
                })?
                .and_then(|cm| cm.data)
        }
    };
    let plan = plan_data
        .and_then(|data| data.get(PLAN_KEY).cloned())
        .and_then(|yaml| match serde_yaml::from_str::<Plan>(&yaml) {
            Ok(plan) => Some(plan),
            Err(error) => {
                tracing::warn!(%error, "the published plan does not parse; planning afresh");
                None
            }
        });

    let partitions = topic.as_ref().map_or(0, |t| t.partitions);
    let storage = JobStorage::open(job, &namespace, &storage_settings);
    let checkpoints = match &storage {
        Some(storage) => read_checkpoints(storage, partitions).await,
        None => BTreeMap::new(),
    };
    let rescale = job.status.as_ref().and_then(|s| s.rescale.as_ref());
    let parts = match (&storage, rescale) {
        (Some(store), Some(rescale)) => {
            savepoint::parts(&store.storage, &store.paths, &rescale.savepoint)
                .await
                .map_err(|e| {
                    Error::Storage(format!("cannot list savepoint {}: {e}", rescale.savepoint))
                })?
        }
        _ => BTreeMap::new(),
    };

    let starting = (0..partitions).any(|p| !checkpoints.contains_key(&p));
    let restore_from = match &job.spec.restore_from {
        Some(url) if starting => Some(restore_source(job, url, &storage_settings).await),
        _ => None,
    };

    Ok(Observed {
        pods: worker_pods(&ctx.pods, &namespace, &job.name_any()),
        plan,
        topic,
        checkpoints,
        storage,
        parts,
        restore_from,
        outputs,
    })
}

/// Why the job's output topics cannot take records, if they cannot: one that does not exist
/// while the brokers do not create topics on first use (the workers' writes would fail).
async fn output_blocker(
    job: &StreamJob,
    ctx: &Context,
    props: &BTreeMap<String, String>,
) -> Option<Blocker> {
    let sink = job.spec.sink.kafka.as_ref();
    let bootstrap = sink
        .and_then(|k| k.bootstrap_servers.as_deref())
        .unwrap_or(&job.spec.source.kafka.bootstrap_servers);
    let sink_topic = sink.map(|k| ("sink.kafka.topic", &k.topic));
    let dead_letter_topic = job
        .spec
        .dead_letter
        .as_ref()
        .map(|d| ("deadLetter.topic", &d.topic));
    let mut missing = Vec::new();
    for (field, topic) in sink_topic.into_iter().chain(dead_letter_topic) {
        match ctx.kafka.output_topic(bootstrap, props, topic).await {
            Ok(OutputTopic::Missing) => missing.push(format!("{field} {topic:?}")),
            Ok(OutputTopic::Exists | OutputTopic::CreatedOnFirstUse) => {}
            Err(problem) => return Some(kafka_blocker(&problem)),
        }
    }
    (!missing.is_empty()).then(|| {
        Blocker::new(
            "OutputTopicNotFound",
            format!(
                "{} does not exist on {bootstrap}, and the brokers do not create topics on \
                 first use (auto.create.topics.enable=false): create it",
                missing.join(" and ")
            ),
        )
    })
}

/// The manifest of the savepoint at `url`, which the workers must be able to read from the
/// job's checkpoint store.
async fn restore_source(
    job: &StreamJob,
    url: &str,
    settings: &BTreeMap<String, String>,
) -> Result<SavepointManifest, Blocker> {
    let storage = &job.spec.checkpoint.storage;
    let blocker = |message: String| Blocker::new("InvalidRestoreFrom", message);
    if savepoint::bucket_of(url) != savepoint::bucket_of(storage) || storage.starts_with("file://")
    {
        return Err(blocker(format!(
            "spec.restoreFrom {url} must lie in the object store of spec.checkpoint.storage \
             ({}), where the workers read it",
            savepoint::bucket_of(storage)
        )));
    }
    match savepoint::read_manifest_at(url, settings).await {
        Ok(Some(manifest)) => Ok(manifest),
        Ok(None) => Err(blocker(format!(
            "spec.restoreFrom {url} is no complete savepoint: its manifest.json is missing"
        ))),
        Err(error) => Err(blocker(format!(
            "cannot read spec.restoreFrom {url}: {error}"
        ))),
    }
}

/// The job's pods from the shared pod cache.
fn worker_pods(store: &Store<Pod>, namespace: &str, job: &str) -> Vec<WorkerPod> {
    let mut pods: Vec<WorkerPod> = store
        .state()
        .iter()
        .filter(|pod| {
            pod.namespace().as_deref() == Some(namespace)
                && pod.labels().get(JOB_LABEL).map(String::as_str) == Some(job)
        })
        .map(|pod| worker_pod(pod))
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods
}

/// How the planner sees one pod.
pub fn worker_pod(pod: &Pod) -> WorkerPod {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    let lifecycle = if pod.metadata.deletion_timestamp.is_some() {
        PodLifecycle::Terminating
    } else if matches!(phase, Some("Failed" | "Succeeded")) {
        PodLifecycle::Finished
    } else {
        PodLifecycle::Live
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    WorkerPod {
        name: pod.name_any(),
        lifecycle,
        ready,
    }
}

/// Newest checkpoint per partition. Storage trouble is logged, not fatal: status then
/// lacks checkpoint figures.
async fn read_checkpoints(storage: &JobStorage, partitions: i32) -> BTreeMap<i32, SeenCheckpoint> {
    let mut seen = BTreeMap::new();
    let store = CheckpointStore::new(storage.storage.clone(), storage.paths.clone());
    for partition in 0..partitions {
        match store.newest(partition).await {
            Ok(Some((id, time))) => {
                seen.insert(
                    partition,
                    SeenCheckpoint {
                        epoch: id.epoch,
                        next_offset: id.next_offset,
                        time,
                    },
                );
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, partition, "cannot list checkpoints");
                break;
            }
        }
    }
    seen
}

/// The values of Secret `name`, or `None` when it does not exist.
pub async fn secret_values(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = secrets.get_opt(name).await.map_err(|source| Error::Read {
        what: "Secret",
        source,
    })?;
    Ok(secret.as_ref().map(decode))
}

fn decode(secret: &Secret) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> = secret.string_data.clone().unwrap_or_default();
    for (key, bytes) in secret.data.iter().flatten() {
        values.insert(key.clone(), String::from_utf8_lossy(&bytes.0).into_owned());
    }
    values
}

fn kafka_blocker(problem: &KafkaProblem) -> Blocker {
    let reason = match problem {
        KafkaProblem::Settings(_) => "InvalidKafkaSettings",
        KafkaProblem::Unreachable { .. } | KafkaProblem::Task => "KafkaUnreachable",
        KafkaProblem::NoSuchTopic { .. } => "TopicNotFound",
    };
    Blocker::new(reason, problem.to_string())
}
