//! The desired state of a `StreamJob`.

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::pipeline::PipelineStep;
use super::status::StreamJobStatus;

/// A stream-processing job over Apache Kafka: read a topic, run a pipeline, write results.
// Each printer column repeats `type_`, which this lint mistakes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "streamjob.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    shortname = "sj",
    category = "streamjob",
    namespaced,
    doc = "A stream-processing job over Apache Kafka, run by the streamjob operator.",
    status = "StreamJobStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.parallelism",
        status_replicas_path = ".status.parallelism",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Parallelism",
        type_ = "integer",
        json_path = ".status.parallelism",
        description = "Worker pods running the job"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.epoch",
        priority = 1,
        description = "Current plan epoch"
    ),
    printcolumn(
        name = "Last Checkpoint",
        type_ = "date",
        json_path = ".status.lastCheckpoint.time",
        description = "Age of the oldest of the partitions' newest checkpoints"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.state == 'suspended' || self.parallelism >= 1")
    .message("parallelism must be at least 1 unless the job is suspended")
    .field_path(".parallelism"))]
pub struct StreamJobSpec {
    /// Number of worker pods. Each pod owns whole Kafka partitions, so values above the
    /// topic's partition count leave pods idle. Changing it (or `kubectl scale`) moves
    /// partitions to the new set of pods; each moving partition resumes from its checkpoint.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 0, max = 10000))]
    pub parallelism: i32,

    /// Worker container image. Defaults to the image the operator was configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Secrets (of type `kubernetes.io/dockerconfigjson`) for pulling the worker image from
    /// a private registry. Defaults to the operator's `--worker-image-pull-secrets` (the
    /// chart's `imagePullSecrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<SecretReference>,

    /// Where records come from.
    pub source: Source,

    /// Processing steps applied to each record, in order. An empty pipeline copies records
    /// from the source to the sink unchanged.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub pipeline: Vec<PipelineStep>,

    /// Where results go.
    pub sink: Sink,

    /// Checkpoint storage and cadence.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,

    /// Where records that cannot be parsed or processed go, with the error in headers.
    /// Without it such records are counted, logged and skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,

    /// `running` runs the job; `suspended` stops every worker after a final checkpoint, and
    /// `running` later resumes from it.
    #[serde(default)]
    pub state: JobState,

    /// Savepoint to restore from when the job first starts, as a storage URL
    /// (`s3://`, `gs://`, `az://` or `file://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(s3|gs|az|file)://.+')")
        .message("restoreFrom must be an s3://, gs://, az:// or file:// URL"))]
    #[schemars(length(max = 2048))]
    pub restore_from: Option<String>,

    /// Savepoints taken on request, and how many are kept.
    #[serde(default)]
    pub savepoints: SavepointsSpec,

    /// How a change of the pipeline treats the state the job has built.
    #[serde(default)]
    pub upgrade: UpgradeSpec,

    /// Compute resources of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Processing threads of each worker pod: its partitions are split across them (by
    /// partition number), each with its own Kafka clients. One thread processes about a
    /// core's worth of records; give the pod as many cores (`resources`). A change rolls the
    /// workers out after a savepoint, like any change of the pod template.
    #[serde(default = "default_processing_threads")]
    #[schemars(range(min = 1, max = 64))]
    pub processing_threads: i32,
}

fn default_parallelism() -> i32 {
    1
}

fn default_processing_threads() -> i32 {
    1
}

/// Input of a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Read from a Kafka topic.
    pub kafka: KafkaSource,
}

/// A Kafka topic to consume. Workers are assigned whole partitions explicitly (no consumer
/// group rebalancing); the group id is used only to commit offsets for lag monitoring.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSource {
    /// Comma-separated `host:port` list of Kafka brokers.
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: String,

    /// Topic to consume.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,

    /// Where to start a partition that has no checkpoint yet.
    #[serde(default)]
    pub start_from: StartPosition,

    /// Consumer group id under which offsets are committed after each checkpoint, so lag
    /// tools see the job. Defaults to `streamjob.<namespace>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub group_id: Option<String>,

    /// Secret whose keys are extra librdkafka client properties (for example
    /// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.pem`). Shared by every Kafka client of the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// Where a partition without a checkpoint starts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StartPosition {
    /// The oldest record still in the topic.
    #[default]
    Earliest,
    /// Only records produced after the job starts.
    Latest,
}

/// A reference to a Secret in the job's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Output of a job. At least one sink must be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.kafka) || has(self.log)")
    .message("sink needs at least one of kafka or log"))]
pub struct Sink {
    /// Write results to a Kafka topic, keyed by the record's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSink>,

    /// Write results to the worker's log, one line per record (for debugging and demos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogSink>,
}

/// A Kafka topic receiving results.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSink {
    /// Topic to write to.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,

    /// Brokers of the sink cluster, when it is not the source cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub bootstrap_servers: Option<String>,
}

/// Writes each result to the worker's log.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LogSink {}

/// Checkpoint storage and cadence.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Storage URL under which checkpoints and savepoints are written: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` or `file:///path`. The default
    /// `file://` location lives inside the worker pod and is lost with it: use object
    /// storage for anything that must survive a pod.
    #[serde(default = "default_storage")]
    #[x_kube(validation = Rule::new("self.matches('^(s3|gs|az|file)://.+')")
        .message("checkpoint storage must be an s3://, gs://, az:// or file:// URL"))]
    #[schemars(length(max = 2048))]
    pub storage: String,

    /// Time between two checkpoints of a partition, as a Go duration (`10s`, `1m`).
    #[serde(default = "default_interval")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s')")
        .message("checkpoint interval must be at least 1s"))]
    pub interval: Duration,

    /// Number of checkpoints kept per partition; older ones are deleted.
    #[serde(default = "default_retained")]
    #[schemars(range(min = 1, max = 100))]
    pub retained: i32,

    /// Secret whose keys become environment variables of the workers, for storage
    /// credentials (for example `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ENDPOINT`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,

    /// Delete the job's checkpoints and savepoints when the StreamJob is deleted.
    #[serde(default)]
    pub delete_on_job_deletion: bool,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            storage: default_storage(),
            interval: default_interval(),
            retained: default_retained(),
            secret_ref: None,
            delete_on_job_deletion: false,
        }
    }
}

fn default_storage() -> String {
    "file:///var/lib/streamjob/checkpoints".to_owned()
}

fn default_interval() -> Duration {
    std::time::Duration::from_secs(10).into()
}

fn default_retained() -> i32 {
    3
}

/// Dead-letter output for records that fail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Topic receiving failed records unchanged, with headers naming the error and origin.
    #[schemars(length(min = 1, max = 249), regex(pattern = r"^[a-zA-Z0-9._-]+$"))]
    pub topic: String,
}

/// Savepoints on request and their retention.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointsSpec {
    /// Name of a savepoint to take: a coordinated snapshot of every partition, taken while
    /// the job runs on and listed in `status.savepoints` once complete. Setting a new name
    /// takes a new savepoint; a name already taken (or tried) is not taken again, so the
    /// field can stay in a Git-managed manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub request: Option<String>,

    /// Savepoints kept (rescale, upgrade and requested ones together); the oldest beyond
    /// this count are deleted from storage, except one that `restoreFrom` or a pending
    /// restore still needs.
    #[serde(default = "default_savepoints_retained")]
    #[schemars(range(min = 1, max = 100))]
    pub retained: i32,
}

impl Default for SavepointsSpec {
    fn default() -> Self {
        Self {
            request: None,
            retained: default_savepoints_retained(),
        }
    }
}

fn default_savepoints_retained() -> i32 {
    5
}

/// How pipeline changes treat state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// What a pipeline change does when the saved window state no longer fits it (a window
    /// step added, removed or redefined): `refuse` (the default) stalls the job with
    /// `IncompatibleStateChange` while the workers go on with the previous pipeline;
    /// `dropState` starts the new pipeline's windows empty, at the saved offsets.
    #[serde(default)]
    pub incompatible_state: IncompatibleState,
}

/// What to do with state that does not fit a changed pipeline.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IncompatibleState {
    /// Refuse the change.
    #[default]
    Refuse,
    /// Drop the window state and keep the offsets.
    DropState,
}

/// Whether the job should run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    /// Workers run.
    #[default]
    Running,
    /// Workers are stopped after a final checkpoint.
    Suspended,
}
