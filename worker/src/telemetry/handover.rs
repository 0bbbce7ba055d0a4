//! Events of a handover inside a run: a plan moves partitions or orders a savepoint, parts
//! are written, lost partitions are released, gained ones wait, restore and run.

use std::time::Duration;

use super::{Event, Metrics, millis};
use crate::snapshot::SnapshotId;

/// A new plan is applied to the running engine without restarting it.
pub struct HandoverStarted<'a> {
    /// The new plan's epoch.
    pub epoch: u64,
    /// The epoch of the plan it replaces.
    pub previous: u64,
    /// Partitions that keep running.
    pub keep: &'a [i32],
    /// Partitions this pod stops.
    pub lose: &'a [i32],
    /// Partitions this pod starts.
    pub gain: &'a [i32],
    /// The savepoint ordered, if any.
    pub savepoint: Option<&'a str>,
}

impl Event for HandoverStarted<'_> {
    fn emit(self) {
        tracing::info!(
            epoch = self.epoch,
            previous_epoch = self.previous,
            keep = ?self.keep,
            lose = ?self.lose,
            gain = ?self.gain,
            savepoint = self.savepoint,
            "new plan; handing over partitions without restarting the run"
        );
        let m = Metrics::global();
        m.handovers.inc();
        m.plan_epoch
            .set(i64::try_from(self.epoch).unwrap_or(i64::MAX));
    }
}

/// A new plan is applied to the running engine: how long its loop spent on it, so how long
/// the partitions it keeps processed nothing.
pub struct HandoverApplied<'a> {
    /// The plan's epoch.
    pub epoch: u64,
    /// Partitions that keep running.
    pub kept: &'a [i32],
    /// Time the loop spent applying the plan.
    pub paused: Duration,
}

impl Event for HandoverApplied<'_> {
    fn emit(self) {
        tracing::info!(
            epoch = self.epoch,
            kept = ?self.kept,
            paused_ms = millis(self.paused),
            "handover applied; kept partitions run on"
        );
    }
}

/// The running partitions' states are handed to the uploader as parts of a savepoint.
pub struct SavepointPartsRequested<'a> {
    /// The savepoint.
    pub savepoint: &'a str,
    /// Time spent waiting until every output so far was acknowledged.
    pub flush: Duration,
    /// Time spent taking the states (clones that share their data with the running
    /// partitions) and stopping the partitions that leave.
    pub take: Duration,
}

impl Event for SavepointPartsRequested<'_> {
    fn emit(self) {
        tracing::info!(
            savepoint = self.savepoint,
            flush_ms = millis(self.flush),
            take_ms = millis(self.take),
            "savepoint parts requested"
        );
    }
}

/// A partition's part of a savepoint is durable.
pub struct SavepointPartWritten<'a> {
    /// The savepoint.
    pub savepoint: &'a str,
    /// Partition.
    pub partition: i32,
    /// Epoch and offset of the part.
    pub id: SnapshotId,
    /// Encoded size.
    pub bytes: usize,
    /// Time from request to durable write.
    pub duration: Duration,
}

impl Event for SavepointPartWritten<'_> {
    fn emit(self) {
        tracing::info!(
            savepoint = %self.savepoint,
            partition = self.partition,
            epoch = self.id.epoch,
            offset = self.id.next_offset,
            bytes = self.bytes,
            millis = millis(self.duration),
            "savepoint part written"
        );
        Metrics::global().savepoint_parts.inc();
    }
}

/// A gained partition still waits for its savepoint part (reported at a bounded rate).
pub struct SavepointPartAwaited<'a> {
    /// The savepoint.
    pub savepoint: &'a str,
    /// Partition.
    pub partition: i32,
    /// How long it has waited.
    pub waited: Duration,
}

impl Event for SavepointPartAwaited<'_> {
    fn emit(self) {
        tracing::info!(
            savepoint = %self.savepoint,
            partition = self.partition,
            waited_s = self.waited.as_secs(),
            "waiting for the partition's savepoint part; it starts once the part is written \
             or a newer plan restores it from elsewhere"
        );
    }
}

/// Restoring a partition failed; it is retried.
pub struct RestoreFailed<'a> {
    /// Partition.
    pub partition: i32,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Error.
    pub error: &'a str,
    /// Delay before the next attempt.
    pub retry_in: Duration,
}

impl Event for RestoreFailed<'_> {
    fn emit(self) {
        tracing::error!(
            partition = self.partition,
            attempt = self.attempt,
            error = self.error,
            retry_in_ms = millis(self.retry_in),
            "restoring the partition failed; retrying"
        );
    }
}

/// A restored partition is assigned and runs.
pub struct PartitionRunning {
    /// Partition.
    pub partition: i32,
    /// The plan epoch it runs under.
    pub epoch: u64,
    /// Where it starts.
    pub next_offset: i64,
}

impl Event for PartitionRunning {
    fn emit(self) {
        tracing::info!(
            partition = self.partition,
            epoch = self.epoch,
            offset = self.next_offset,
            "partition running"
        );
    }
}

/// A partition that started running processed its first record (the end of its pause, when
/// it moved here).
pub struct FirstRecord {
    /// Partition.
    pub partition: i32,
    /// The plan epoch it runs under.
    pub epoch: u64,
    /// The record's offset.
    pub offset: i64,
    /// Time since the partition started running.
    pub after: Duration,
}

impl Event for FirstRecord {
    fn emit(self) {
        tracing::info!(
            partition = self.partition,
            epoch = self.epoch,
            offset = self.offset,
            after_ms = millis(self.after),
            "partition's first record"
        );
    }
}

/// A partition this pod lost is stopped and its state dropped, now that its last snapshot is
/// durable.
pub struct PartitionReleased<'a> {
    /// Partition.
    pub partition: i32,
    /// What made it safe: `checkpoint` or `savepoint <id>`.
    pub after: &'a str,
    /// Epoch and offset of that snapshot.
    pub id: SnapshotId,
}

impl Event for PartitionReleased<'_> {
    fn emit(self) {
        tracing::info!(
            partition = self.partition,
            after = %self.after,
            epoch = self.id.epoch,
            offset = self.id.next_offset,
            "partition released"
        );
    }
}
