//! Telemetry: every event the worker reports is one type whose `emit()` writes the log line
//! and updates the metric together, so the two never drift apart.

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::snapshot::SnapshotId;

mod handover;

pub use handover::{
    FirstRecord, HandoverApplied, HandoverStarted, PartitionReleased, PartitionRunning,
    RestoreFailed, SavepointPartAwaited, SavepointPartWritten, SavepointPartsRequested,
};

/// `duration` in whole milliseconds, for log fields.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Labels of per-partition series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Source partition.
    pub partition: i32,
}

/// Labels of dead-lettered record series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// Source partition.
    pub partition: i32,
    /// Error kind (`invalid_json`, `evaluation`, `timestamp`, `aggregate`).
    pub kind: String,
}

/// Labels of plan error series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanErrorLabels {
    /// Why (`missing`, `invalid`, `wrong_job`, `stale`, `watch`, `pipeline`, `storage`).
    pub reason: &'static str,
}

/// Labels of restore series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestoreLabels {
    /// What the partition restored from: `checkpoint`, `savepoint` or `none` (no state).
    pub source: &'static str,
}

/// The worker's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    records_in: Family<PartitionLabels, Counter>,
    records_out: Family<PartitionLabels, Counter>,
    records_dead_lettered: Family<DeadLetterLabels, Counter>,
    window_results: Family<PartitionLabels, Counter>,
    late_records_dropped: Family<PartitionLabels, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    processed_offset: Family<PartitionLabels, Gauge>,
    checkpoint_offset: Family<PartitionLabels, Gauge>,
    checkpoints: Counter,
    checkpoint_failures: Counter,
    checkpoint_duration: Histogram,
    checkpoint_size: Histogram,
    snapshots_rejected: Counter,
    plan_errors: Family<PlanErrorLabels, Counter>,
    plan_epoch: Gauge,
    runs: Counter,
    handovers: Counter,
    savepoint_parts: Counter,
    partition_restores: Family<RestoreLabels, Counter>,
    partitions_restoring: Gauge,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("streamjob");
        let metrics = Self {
            records_in: Family::default(),
            records_out: Family::default(),
            records_dead_lettered: Family::default(),
            window_results: Family::default(),
            late_records_dropped: Family::default(),
            consumer_lag: Family::default(),
            processed_offset: Family::default(),
            checkpoint_offset: Family::default(),
            checkpoints: Counter::default(),
            checkpoint_failures: Counter::default(),
            checkpoint_duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            checkpoint_size: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(256.0, 4.0, 12),
            ),
            snapshots_rejected: Counter::default(),
            plan_errors: Family::default(),
            plan_epoch: Gauge::default(),
            runs: Counter::default(),
            handovers: Counter::default(),
            savepoint_parts: Counter::default(),
            partition_restores: Family::default(),
            partitions_restoring: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_in",
            "Records read from the source",
            metrics.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Records written to the sink",
            metrics.records_out.clone(),
        );
        registry.register(
            "records_dead_lettered",
            "Records sent to the dead-letter topic (or skipped without one)",
            metrics.records_dead_lettered.clone(),
        );
        registry.register(
            "window_results",
            "Window results emitted",
            metrics.window_results.clone(),
        );
        registry.register(
            "late_records_dropped",
            "Records dropped because their window closed beyond the allowed lateness",
            metrics.late_records_dropped.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records between the read position and the partition end",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "processed_offset",
            "Next source offset to process",
            metrics.processed_offset.clone(),
        );
        registry.register(
            "checkpoint_offset",
            "Source offset of the newest completed checkpoint",
            metrics.checkpoint_offset.clone(),
        );
        registry.register(
            "checkpoints",
            "Completed partition checkpoints",
            metrics.checkpoints.clone(),
        );
        registry.register(
            "checkpoint_failures",
            "Failed checkpoint write attempts",
            metrics.checkpoint_failures.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Time to write one partition checkpoint",
            metrics.checkpoint_duration.clone(),
        );
        registry.register(
            "checkpoint_size_bytes",
            "Size of one partition checkpoint",
            metrics.checkpoint_size.clone(),
        );
        registry.register(
            "snapshots_rejected",
            "Damaged snapshots skipped at restore",
            metrics.snapshots_rejected.clone(),
        );
        registry.register(
            "plan_errors",
            "Plans refused: missing, invalid, for another job, stale, or not runnable",
            metrics.plan_errors.clone(),
        );
        registry.register(
            "plan_epoch",
            "Epoch of the newest plan this worker follows",
            metrics.plan_epoch.clone(),
        );
        registry.register(
            "runs",
            "Engine runs started: for the first plan, each plan that changes this pod's work, \
             and each restart from the checkpoints",
            metrics.runs.clone(),
        );
        registry.register(
            "handovers",
            "Plans that moved this pod's partitions or ordered a savepoint without restarting \
             the run",
            metrics.handovers.clone(),
        );
        registry.register(
            "savepoint_parts",
            "Savepoint parts written (one per partition and savepoint)",
            metrics.savepoint_parts.clone(),
        );
        registry.register(
            "partition_restores",
            "Partitions restored, by what they restored from",
            metrics.partition_restores.clone(),
        );
        registry.register(
            "partitions_restoring",
            "Partitions this pod owns that do not run yet (restoring, or waiting for their \
             savepoint part)",
            metrics.partitions_restoring.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The process-wide metrics.
    pub fn global() -> &'static Metrics {
        static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
        &METRICS
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Sets a partition's consumer lag (from librdkafka statistics).
    pub fn set_consumer_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabels { partition })
            .set(lag);
    }

    /// Sets how many owned partitions do not run yet.
    pub fn set_partitions_restoring(&self, count: usize) {
        self.partitions_restoring
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

/// Something worth reporting.
pub trait Event {
    /// Logs the event and updates its metrics.
    fn emit(self);
}

/// Per-partition record counts since the last report (the hot path batches them).
#[derive(Debug, Default, Clone, Copy)]
pub struct RecordsProcessed {
    /// Source partition.
    pub partition: i32,
    /// Records read.
    pub records_in: u64,
    /// Records written to the sink.
    pub records_out: u64,
    /// Window results among them.
    pub window_results: u64,
    /// Late records dropped.
    pub late_dropped: u64,
    /// Next offset to process.
    pub next_offset: i64,
}

impl Event for RecordsProcessed {
    fn emit(self) {
        let m = Metrics::global();
        let labels = PartitionLabels {
            partition: self.partition,
        };
        m.records_in.get_or_create(&labels).inc_by(self.records_in);
        m.records_out
            .get_or_create(&labels)
            .inc_by(self.records_out);
        m.window_results
            .get_or_create(&labels)
            .inc_by(self.window_results);
        m.late_records_dropped
            .get_or_create(&labels)
            .inc_by(self.late_dropped);
        m.processed_offset
            .get_or_create(&labels)
            .set(self.next_offset);
        if self.late_dropped > 0 {
            tracing::debug!(
                partition = self.partition,
                count = self.late_dropped,
                "late records dropped"
            );
        }
    }
}

/// A record that failed and went to the dead-letter topic (or was skipped without one).
pub struct RecordDeadLettered<'a> {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Error kind.
    pub kind: &'a str,
    /// Error message.
    pub error: &'a str,
    /// Whether a dead-letter topic received it.
    pub to_topic: bool,
}

impl Event for RecordDeadLettered<'_> {
    fn emit(self) {
        tracing::warn!(
            partition = self.partition,
            offset = self.offset,
            kind = self.kind,
            error = self.error,
            dead_letter_topic = self.to_topic,
            "record failed"
        );
        Metrics::global()
            .records_dead_lettered
            .get_or_create(&DeadLetterLabels {
                partition: self.partition,
                kind: self.kind.to_owned(),
            })
            .inc();
    }
}

/// A partition checkpoint was written.
pub struct CheckpointCompleted {
    /// Partition.
    pub partition: i32,
    /// Snapshot id.
    pub id: SnapshotId,
    /// Encoded size.
    pub bytes: usize,
    /// Time from request to durable write.
    pub duration: Duration,
}

impl Event for CheckpointCompleted {
    fn emit(self) {
        tracing::debug!(
            partition = self.partition,
            epoch = self.id.epoch,
            offset = self.id.next_offset,
            bytes = self.bytes,
            millis = millis(self.duration),
            "checkpoint completed"
        );
        let m = Metrics::global();
        m.checkpoints.inc();
        m.checkpoint_duration.observe(self.duration.as_secs_f64());
        m.checkpoint_size.observe(self.bytes as f64);
        m.checkpoint_offset
            .get_or_create(&PartitionLabels {
                partition: self.partition,
            })
            .set(self.id.next_offset);
    }
}

/// A snapshot write attempt (checkpoint or savepoint part) failed; it is retried.
pub struct CheckpointFailed<'a> {
    /// Partition.
    pub partition: i32,
    /// The savepoint whose part failed; `None` for a checkpoint.
    pub savepoint: Option<&'a str>,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Error.
    pub error: &'a str,
    /// Delay before the next attempt.
    pub retry_in: Duration,
}

impl Event for CheckpointFailed<'_> {
    fn emit(self) {
        match self.savepoint {
            None => tracing::warn!(
                partition = self.partition,
                attempt = self.attempt,
                error = self.error,
                retry_in_ms = millis(self.retry_in),
                "checkpoint write failed; processing continues and the write is retried"
            ),
            Some(savepoint) => tracing::warn!(
                partition = self.partition,
                %savepoint,
                attempt = self.attempt,
                error = self.error,
                retry_in_ms = millis(self.retry_in),
                "savepoint part write failed; it is retried"
            ),
        }
        Metrics::global().checkpoint_failures.inc();
    }
}

/// A damaged snapshot was skipped at restore.
pub struct SnapshotRejected {
    /// Partition.
    pub partition: i32,
    /// Object path.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl Event for SnapshotRejected {
    fn emit(self) {
        tracing::warn!(
            partition = self.partition,
            path = %self.path,
            reason = %self.reason,
            "snapshot is damaged; falling back to the previous one"
        );
        Metrics::global().snapshots_rejected.inc();
    }
}

/// A partition was restored and is about to run.
pub struct PartitionRestored {
    /// Partition.
    pub partition: i32,
    /// Snapshot restored from, if any.
    pub from: Option<SnapshotId>,
    /// Where it restored from (checkpoint, savepoint name, or start position).
    pub source: String,
    /// The metric label: `checkpoint`, `savepoint` or `none`.
    pub origin: &'static str,
}

impl Event for PartitionRestored {
    fn emit(self) {
        match self.from {
            Some(id) => tracing::info!(
                partition = self.partition,
                epoch = id.epoch,
                offset = id.next_offset,
                source = %self.source,
                "partition restored"
            ),
            None => {
                tracing::info!(partition = self.partition, source = %self.source, "partition starts without state")
            }
        }
        Metrics::global()
            .partition_restores
            .get_or_create(&RestoreLabels {
                source: self.origin,
            })
            .inc();
    }
}

/// A plan was refused; the worker keeps running what it runs.
pub struct PlanRejected<'a> {
    /// Short reason, the metric label.
    pub reason: &'static str,
    /// The refused plan's epoch, when it has one.
    pub epoch: Option<u64>,
    /// Why, for people.
    pub error: &'a str,
}

impl Event for PlanRejected<'_> {
    fn emit(self) {
        match self.reason {
            // The operator validates pipelines and storage before publishing them, so a plan
            // that cannot run is a bug or a version skew, not an expected state.
            "pipeline" | "storage" => tracing::error!(
                reason = self.reason,
                epoch = self.epoch,
                error = self.error,
                "plan cannot run; the worker goes on with what it runs"
            ),
            _ => tracing::warn!(
                reason = self.reason,
                epoch = self.epoch,
                error = self.error,
                "plan refused; the worker goes on with what it runs"
            ),
        }
        Metrics::global()
            .plan_errors
            .get_or_create(&PlanErrorLabels {
                reason: self.reason,
            })
            .inc();
    }
}

/// An engine run started this pod's share of a plan (possibly no partitions at all).
pub struct PlanRunning<'a> {
    /// This pod.
    pub pod: &'a str,
    /// The plan's epoch.
    pub epoch: u64,
    /// The partitions it runs.
    pub partitions: &'a [i32],
}

impl Event for PlanRunning<'_> {
    fn emit(self) {
        tracing::info!(
            pod = %self.pod,
            epoch = self.epoch,
            partitions = ?self.partitions,
            "worker running"
        );
        let m = Metrics::global();
        m.plan_epoch.set(self.epoch as i64);
        m.runs.inc();
    }
}

/// A new plan leaves this pod's work as it is: the current run goes on.
pub struct PlanKept {
    /// The new plan's epoch.
    pub epoch: u64,
    /// The epoch of the plan it replaces.
    pub previous: u64,
}

impl Event for PlanKept {
    fn emit(self) {
        tracing::info!(
            epoch = self.epoch,
            previous_epoch = self.previous,
            "new plan leaves this pod's partitions and processing unchanged; keeps running"
        );
        Metrics::global().plan_epoch.set(self.epoch as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_show_up_in_the_exposition() {
        RecordsProcessed {
            partition: 9101,
            records_in: 5,
            records_out: 3,
            window_results: 1,
            late_dropped: 2,
            next_offset: 42,
        }
        .emit();
        RecordDeadLettered {
            partition: 9101,
            offset: 7,
            kind: "invalid_json",
            error: "x",
            to_topic: true,
        }
        .emit();
        let text = Metrics::global().encode();
        assert!(
            text.contains(r#"streamjob_records_in_total{partition="9101"} 5"#),
            "{text}"
        );
        assert!(text.contains(r#"streamjob_records_out_total{partition="9101"} 3"#));
        assert!(text.contains(r#"streamjob_late_records_dropped_total{partition="9101"} 2"#));
        assert!(text.contains(r#"streamjob_processed_offset{partition="9101"} 42"#));
        assert!(text.contains(
            r#"streamjob_records_dead_lettered_total{partition="9101",kind="invalid_json"} 1"#
        ));
    }

    #[test]
    fn plan_events_count_refusals_by_reason_and_show_the_epoch() {
        PlanRejected {
            reason: "test_reason",
            epoch: None,
            error: "x",
        }
        .emit();
        PlanRunning {
            pod: "a",
            epoch: 7,
            partitions: &[0],
        }
        .emit();
        let text = Metrics::global().encode();
        assert!(
            text.contains(r#"streamjob_plan_errors_total{reason="test_reason"} 1"#),
            "{text}"
        );
        assert!(text.contains("streamjob_plan_epoch 7"), "{text}");
    }
}
