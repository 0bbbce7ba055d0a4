//! The observed state of a `StreamJob`, written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the operator last observed of a job. Never an echo of the spec.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Summary of the job's lifecycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Worker pods currently running the job (the scale subresource's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,

    /// Label selector of the job's worker pods, for the scale subresource (HPA, KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Epoch of the current plan; it grows each time partitions change owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,

    /// Standard conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Owner and progress of every partition of the source topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["partition".into()]))]
    pub assignment: Vec<PartitionStatus>,

    /// The newest checkpoint found in storage for all partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointSummary>,

    /// Completed savepoints, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub savepoints: Vec<SavepointStatus>,

    /// The last `spec.savepoints.request` the operator acted on (taken, or tried and
    /// failed: see the events), so that it is not taken again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_request: Option<String>,

    /// Progress of a rescale in flight; absent when none runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale: Option<RescaleStatus>,
}

/// Lifecycle summary of a job.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted, workers not yet running.
    Pending,
    /// Every partition is owned by a running worker.
    Running,
    /// Partitions are being handed over between workers.
    Rescaling,
    /// Stopped on request after a final checkpoint.
    Suspended,
    /// Cannot run until the spec or the environment changes; see the `Stalled` condition.
    Failed,
}

/// One partition's owner and progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Partition number in the source topic.
    pub partition: i32,
    /// Pod that owns the partition in the current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Next offset the partition resumes from: the newest checkpoint's, read from storage
    /// (the job's consumer group gets the same offset committed, for lag tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_offset: Option<i64>,
    /// Records between the committed offset and the end of the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Time of the partition's newest checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<Time>,
}

/// The newest checkpoint covering every partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSummary {
    /// Time of the oldest of the partitions' newest checkpoints.
    pub time: Time,
    /// Number of partitions with at least one checkpoint.
    pub partitions: i32,
}

/// A savepoint: a complete, verified snapshot of every partition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    /// Savepoint id, unique within the job.
    pub name: String,
    /// Storage URL of the savepoint manifest.
    pub url: String,
    /// Plan epoch the savepoint was taken for.
    pub epoch: i64,
    /// When the manifest was written.
    pub time: Time,
    /// Why it was taken: `rescale`, `upgrade`, `user` or `suspend`.
    pub reason: String,
}

/// Progress of a rescale, recorded step by step so a restarted operator resumes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RescaleStatus {
    /// What the coordinated savepoint is for: `rescale`, `upgrade` (a changed pipeline) or
    /// `user` (`spec.savepoints.request`).
    #[serde(default = "default_operation")]
    pub reason: String,
    /// Parallelism before the rescale.
    pub from: i32,
    /// Parallelism after the rescale.
    pub to: i32,
    /// Epoch of the plan that hands partitions over.
    pub epoch: i64,
    /// Savepoint taken for the handover.
    pub savepoint: String,
    /// Current step.
    pub step: RescaleStep,
    /// When the rescale started.
    pub started: Time,
    /// When the current step started (the savepoint timeout counts from the start of
    /// `Savepointing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started: Option<Time>,
    /// Partitions whose savepoint part did not come in time: they restored from their
    /// newest checkpoints instead and replayed from its offset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<i32>,
}

fn default_operation() -> String {
    "rescale".to_owned()
}

/// Steps of the rescale protocol, in order.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RescaleStep {
    /// Waiting for the Deployment to reach the larger size.
    ScalingUp,
    /// Workers are snapshotting every partition into the savepoint.
    Savepointing,
    /// Partitions that change owner are being restored by their new owners.
    HandingOver,
    /// Removing the pods left without partitions.
    ScalingDown,
}
