//! Following newer plans inside a run, on the hot loop's tick (no I/O but Kafka assignment;
//! snapshots and restores are handed to their tasks): write the ordered savepoint, stop and
//! release lost partitions once their last snapshot is durable, restore gained ones and start
//! them where their state ends. Partitions that keep their owner never stop.

use std::{collections::BTreeMap, sync::Arc};

use rdkafka::{Offset, TopicPartitionList, consumer::Consumer, error::KafkaResult};

use super::{
    EngineExit, PartitionRun, PlanUpdate,
    process::ProcessLoop,
    request_upload,
    restore::{RestoreCommand, RestoreRequest, RestoredPartition},
    send_upload, upload_request,
};
use crate::{
    plan::{Plan, RestoreSource},
    plan_change::Handover,
    snapshot::SnapshotId,
    telemetry::{
        Event, HandoverApplied, PartitionReleased, PartitionRunning, RecordsProcessed,
        SavepointPartsRequested,
    },
    uploader::{SnapshotTarget, UploadDone, UploadRequest},
};

/// Partitions between owners.
#[derive(Default)]
pub(super) struct Transitions {
    /// Owned partitions that do not run yet, and the restore each waits for.
    restoring: BTreeMap<i32, PendingRestore>,
    /// Lost partitions, stopped, and the snapshot of their last state each waits for.
    releasing: BTreeMap<i32, Durable>,
    /// Names the newest restore request (a result of an older one is stale).
    last_ticket: u64,
    /// Savepoint parts of kept partitions, taken at the handover and sent to the uploader
    /// once every released partition's part is durable: the new owners wait for those, so
    /// they get the CPU first.
    deferred_parts: Vec<UploadRequest>,
}

impl Transitions {
    /// How many lost partitions still wait for their last snapshot.
    pub(super) fn releasing(&self) -> usize {
        self.releasing.len()
    }
}

struct PendingRestore {
    source: RestoreSource,
    ticket: u64,
}

/// A snapshot write that must become durable.
#[derive(Debug, PartialEq, Eq)]
struct Durable {
    target: SnapshotTarget,
    id: SnapshotId,
}

impl Durable {
    fn is(&self, done: &UploadDone) -> bool {
        self.target == done.target && self.id == done.id
    }

    fn report_released(&self, partition: i32) {
        let after = match &self.target {
            SnapshotTarget::Checkpoint => "checkpoint".to_owned(),
            SnapshotTarget::SavepointPart(savepoint) => format!("savepoint {savepoint}"),
        };
        PartitionReleased {
            partition,
            after: &after,
            id: self.id,
        }
        .emit();
    }
}

impl ProcessLoop {
    /// Starts restoring every partition the plan gives this pod, of this lane.
    pub(super) fn start_restores(&mut self) {
        for partition in self.lane.share(&self.plan.partitions_of(&self.pod)) {
            self.start_restore(partition);
        }
        self.report_restoring();
    }

    /// Applies newer plans, then starts partitions whose restore finished.
    pub(super) fn follow_plan(&mut self) -> Result<(), EngineExit> {
        while let Ok(update) = self.updates.try_recv() {
            self.adopt(update)?;
        }
        while let Ok(restored) = self.restored_rx.try_recv() {
            self.install(restored)?;
        }
        Ok(())
    }

    fn adopt(&mut self, PlanUpdate { plan, handover }: PlanUpdate) -> Result<(), EngineExit> {
        let started = std::time::Instant::now();
        let epoch = plan.epoch;
        self.adopt_plan(plan, &handover)?;
        // The kept partitions processed nothing meanwhile: their whole pause.
        HandoverApplied {
            epoch,
            kept: &handover.keep,
            paused: started.elapsed(),
        }
        .emit();
        Ok(())
    }

    fn adopt_plan(&mut self, plan: Arc<Plan>, handover: &Handover) -> Result<(), EngineExit> {
        let part = match &handover.savepoint {
            Some(id) => Some((
                self.write_savepoint(id, plan.epoch, &handover.lose)?,
                plan.epoch,
            )),
            None => None,
        };
        if part.is_none() && handover.lose.iter().any(|p| self.runs.contains_key(p)) {
            // Their final checkpoints must cover only delivered output.
            self.flush_for_handover()?;
        }
        for &partition in &handover.lose {
            self.release(partition, part.as_ref());
        }
        // From here on checkpoints carry the new epoch.
        self.plan = plan;
        for &partition in &handover.gain {
            self.start_restore(partition);
        }
        // A partition still restoring whose source the new plan changed (a savepoint part that
        // never came, dropped for the newest checkpoint) starts over from that source.
        let changed: Vec<i32> = self
            .transitions
            .restoring
            .iter()
            .filter(|(p, pending)| self.plan.restore_source(**p) != pending.source)
            .map(|(p, _)| *p)
            .collect();
        for partition in changed {
            self.start_restore(partition);
        }
        self.report_restoring();
        Ok(())
    }

    /// Flushes output, then hands every running partition's state to the uploader as its part
    /// of savepoint `id` (epoch `epoch`, the partition's next offset), releasing `lose`.
    fn write_savepoint(
        &mut self,
        id: &str,
        epoch: u64,
        lose: &[i32],
    ) -> Result<Arc<str>, EngineExit> {
        let started = std::time::Instant::now();
        self.flush_for_handover()?;
        let flushed = started.elapsed();
        let savepoint = self.request_parts(id, epoch, lose);
        SavepointPartsRequested {
            savepoint: id,
            flush: flushed,
            take: started.elapsed() - flushed,
        }
        .emit();
        Ok(savepoint)
    }

    /// Hands every running partition's state to the uploader as its part of savepoint `id`;
    /// the output must be flushed. Partitions of `lose` stop here and hand their state over
    /// as it is (no copy); they count as released once their part is durable.
    pub(super) fn request_parts(&mut self, id: &str, epoch: u64, lose: &[i32]) -> Arc<str> {
        let savepoint: Arc<str> = id.into();
        for partition in lose {
            let Some(run) = self.runs.remove(partition) else {
                continue;
            };
            self.unassign(run.partition);
            let part = SnapshotId {
                epoch,
                next_offset: run.next_offset,
            };
            let target = SnapshotTarget::SavepointPart(savepoint.clone());
            let request = upload_request(run.partition, run.state, part, target.clone());
            send_upload(&self.upload_tx, request);
            let awaits = Durable { target, id: part };
            self.transitions.releasing.insert(run.partition, awaits);
        }
        let kept = self.runs.values().map(|run| {
            let part = SnapshotId {
                epoch,
                next_offset: run.next_offset,
            };
            let target = SnapshotTarget::SavepointPart(savepoint.clone());
            upload_request(run.partition, run.state.clone(), part, target)
        });
        self.transitions.deferred_parts.extend(kept);
        self.send_deferred_parts();
        for partition in self.transitions.restoring.keys() {
            tracing::warn!(
                partition,
                savepoint = id,
                "partition is still restoring, so the savepoint gets no part of it from here"
            );
        }
        savepoint
    }

    /// Waits until every output so far is acknowledged: a handover snapshot must not cover
    /// output that could still be lost.
    fn flush_for_handover(&self) -> Result<(), EngineExit> {
        while !self.flush("the handover")? {
            if self.stopping() {
                return Err(EngineExit::Stopped {
                    final_checkpoint_complete: false,
                });
            }
        }
        Ok(())
    }

    /// Stops `partition` at once and drops its state; it counts as released once `part` (the
    /// savepoint part already requested, with its epoch) or else its final checkpoint is
    /// durable (the uploader holds that last state until then, and shutdown waits for it).
    pub(super) fn release(&mut self, partition: i32, part: Option<&(Arc<str>, u64)>) {
        if self.transitions.restoring.remove(&partition).is_some() {
            let _ = self.restore_tx.send(RestoreCommand::Cancel(partition));
            return;
        }
        let Some(mut run) = self.runs.remove(&partition) else {
            return;
        };
        self.unassign(partition);
        let awaits = match part {
            Some((savepoint, epoch)) => Durable {
                target: SnapshotTarget::SavepointPart(savepoint.clone()),
                id: SnapshotId {
                    epoch: *epoch,
                    next_offset: run.next_offset,
                },
            },
            None => {
                // Under the epoch it ran in: the new owner's fence sorts above it.
                let id = SnapshotId {
                    epoch: self.plan.epoch,
                    next_offset: run.next_offset,
                };
                if run.requested != id {
                    run.requested = id;
                    request_upload(&self.upload_tx, &run, id, SnapshotTarget::Checkpoint);
                }
                if run.completed == Some(id) {
                    Durable {
                        target: SnapshotTarget::Checkpoint,
                        id,
                    }
                    .report_released(partition);
                    return;
                }
                Durable {
                    target: SnapshotTarget::Checkpoint,
                    id,
                }
            }
        };
        self.transitions.releasing.insert(partition, awaits);
    }

    /// Stops consuming `partition`; a record of it still queued from the old assignment is
    /// dropped as not ours.
    fn unassign(&self, partition: i32) {
        if let Err(error) = self
            .consumer
            .incremental_unassign(&self.partition_list(partition, None))
        {
            tracing::warn!(%error, partition, "cannot unassign the partition; its records are ignored");
        }
    }

    /// Drops a released partition whose awaited snapshot `done` is; says whether it did.
    pub(super) fn release_if_durable(&mut self, done: &UploadDone) -> bool {
        let awaited = self
            .transitions
            .releasing
            .get(&done.partition)
            .is_some_and(|awaits| awaits.is(done));
        if !awaited {
            return false;
        }
        if let Some(awaits) = self.transitions.releasing.remove(&done.partition) {
            awaits.report_released(done.partition);
        }
        self.send_deferred_parts();
        if done.target == SnapshotTarget::Checkpoint {
            self.commit_offset(done.partition, done.id.next_offset);
        }
        true
    }

    /// Sends the deferred savepoint parts once no released partition waits for its own.
    fn send_deferred_parts(&mut self) {
        if !self.transitions.releasing.is_empty() {
            return;
        }
        for request in self.transitions.deferred_parts.drain(..) {
            send_upload(&self.upload_tx, request);
        }
    }

    /// Asks the restorer for `partition` from where the plan says, superseding any earlier
    /// request for it.
    fn start_restore(&mut self, partition: i32) {
        let source = self.plan.restore_source(partition);
        self.transitions.last_ticket += 1;
        let ticket = self.transitions.last_ticket;
        self.transitions.restoring.insert(
            partition,
            PendingRestore {
                source: source.clone(),
                ticket,
            },
        );
        // The restorer only stops when the engine does.
        let _ = self.restore_tx.send(RestoreCommand::Start(RestoreRequest {
            partition,
            source,
            max_epoch: self.plan.epoch,
            ticket,
        }));
    }

    /// Starts a restored partition if it is the restore it waits for: writes the epoch fence,
    /// assigns the partition at the restored offset, runs it.
    fn install(&mut self, restored: RestoredPartition) -> Result<(), EngineExit> {
        let partition = restored.partition;
        let current = self
            .transitions
            .restoring
            .get(&partition)
            .is_some_and(|pending| pending.ticket == restored.ticket);
        if !current {
            return Ok(()); // Superseded or no longer ours.
        }
        let Some(pending) = self.transitions.restoring.remove(&partition) else {
            return Ok(());
        };
        let next_offset = restored.next_offset;
        let requested = SnapshotId {
            epoch: self.plan.epoch,
            next_offset,
        };
        // Fence: record the partition under this epoch before processing, so a snapshot that
        // a stale owner of an older epoch writes later can never be the newest one. Only this
        // epoch's own checkpoint at this offset is a fence already.
        let completed = (pending.source == RestoreSource::Latest
            && restored.from == Some(requested))
        .then_some(requested);
        let run = PartitionRun {
            partition,
            state: restored.state,
            next_offset,
            requested,
            completed,
            counts: RecordsProcessed {
                partition,
                next_offset,
                ..RecordsProcessed::default()
            },
            awaits_first_record: Some(std::time::Instant::now()),
        };
        restored.report.emit();
        if completed.is_none() {
            request_upload(&self.upload_tx, &run, requested, SnapshotTarget::Checkpoint);
        }
        self.consumer
            .incremental_assign(&self.partition_list(partition, Some(next_offset)))
            .map_err(|error| {
                EngineExit::Rewind(format!("cannot assign partition {partition}: {error}"))
            })?;
        self.runs.insert(partition, run);
        PartitionRunning {
            partition,
            epoch: self.plan.epoch,
            next_offset,
        }
        .emit();
        self.report_restoring();
        Ok(())
    }

    /// Readiness: every owned partition runs (in every lane).
    fn report_restoring(&self) {
        self.restoring
            .report(self.lane, self.transitions.restoring.len());
    }

    /// `partition` of the source topic, at `offset` if given.
    fn partition_list(&self, partition: i32, offset: Option<i64>) -> TopicPartitionList {
        let topic = &self.plan.spec.source.kafka.topic;
        let mut list = TopicPartitionList::new();
        let added: KafkaResult<()> = match offset {
            Some(offset) => list.add_partition_offset(topic, partition, Offset::Offset(offset)),
            None => {
                list.add_partition(topic, partition);
                Ok(())
            }
        };
        if let Err(error) = added {
            tracing::error!(%error, partition, "cannot name the partition to Kafka");
        }
        list
    }
}
