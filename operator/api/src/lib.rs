//! The `StreamJob` custom resource (`streamjob.dev/v1alpha1`): spec, pipeline and status types.
//!
//! The CRD in `crds/streamjob.yaml` is generated from these types; doc comments become the
//! field descriptions users see in `kubectl explain`.

#[cfg(any(test, feature = "fixtures"))]
mod fixtures;
mod pipeline;
mod spec;
mod status;

pub use pipeline::{
    Aggregate, AggregateFunction, PipelineStep, StepKind, WindowStep, state_layout,
};
pub use spec::{
    CheckpointSpec, DeadLetterSpec, IncompatibleState, JobState, KafkaSink, KafkaSource,
    SavepointsSpec, SecretReference, Sink, Source, StartPosition, StreamJob, StreamJobSpec,
    UpgradeSpec,
};
pub use status::{
    CheckpointSummary, PartitionStatus, Phase, RescaleStatus, RescaleStep, SavepointStatus,
    StreamJobStatus,
};

/// The API group of every streamjob resource.
pub const GROUP: &str = "streamjob.dev";
