//! Restores partitions in the background (I/O: storage and Kafka metadata): from a savepoint
//! part, polled until it is written, or from the newest checkpoint, retrying failures with
//! backoff. The hot loop installs a result only if it still waits for that very restore.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use rdkafka::consumer::Consumer;
use streamjob_api::{KafkaSource, StartPosition};
use tokio::sync::mpsc as async_mpsc;

use super::EngineError;
use crate::{
    checkpoint::{CheckpointError, CheckpointStore, retry_delay},
    kafka::SourceConsumer,
    pipeline::{PartitionState, Pipeline},
    plan::RestoreSource,
    snapshot::SnapshotId,
    tasks::LatestTasks,
    telemetry::{Event, PartitionRestored, RestoreFailed, SavepointPartAwaited},
};

/// How soon a missing savepoint part is looked for again: at first soon (the old owner is
/// writing it right now, and a moving partition pauses until it is found), then less often.
const PART_POLL_FIRST: Duration = Duration::from_millis(25);
/// The longest wait between two looks for a missing part.
const PART_POLL_MAX: Duration = Duration::from_millis(50);
/// How often a partition still waiting for its part says so.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(30);

/// Restore `partition` from `source`; `ticket` names this request.
#[derive(Debug)]
pub(super) struct RestoreRequest {
    pub(super) partition: i32,
    pub(super) source: RestoreSource,
    /// Newest epoch whose checkpoints may be restored (the plan's).
    pub(super) max_epoch: u64,
    pub(super) ticket: u64,
}

/// What the restorer is asked to do.
#[derive(Debug)]
pub(super) enum RestoreCommand {
    /// Restore a partition, superseding any restore of it in progress.
    Start(RestoreRequest),
    /// Stop restoring a partition.
    Cancel(i32),
}

/// A restored partition, ready to run.
pub(super) struct RestoredPartition {
    pub(super) partition: i32,
    pub(super) ticket: u64,
    pub(super) state: PartitionState,
    pub(super) next_offset: i64,
    /// The snapshot restored, if any.
    pub(super) from: Option<SnapshotId>,
    /// Reported when the partition is installed.
    pub(super) report: PartitionRestored,
}

/// What restoring needs.
pub(super) struct Restorer {
    pub(super) store: CheckpointStore,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) consumer: Arc<SourceConsumer>,
    pub(super) source: KafkaSource,
    /// Whether window state of another layout is dropped (`spec.upgrade.incompatibleState:
    /// dropState`) rather than refused.
    pub(super) drop_incompatible_state: bool,
}

/// Why one restore attempt did not restore.
enum Attempt<'a> {
    /// The savepoint part is not written (yet).
    PartMissing(&'a str),
    /// Anything else; retried with backoff.
    Failed(EngineError),
}

/// Runs restores until the command channel closes; each result goes to `restored`.
pub(super) async fn run(
    restorer: Arc<Restorer>,
    mut commands: async_mpsc::UnboundedReceiver<RestoreCommand>,
    restored: mpsc::Sender<RestoredPartition>,
) {
    let mut in_flight = LatestTasks::new();
    while let Some(command) = commands.recv().await {
        match command {
            RestoreCommand::Cancel(partition) => in_flight.cancel(&partition),
            RestoreCommand::Start(request) => {
                let (restorer, restored) = (restorer.clone(), restored.clone());
                in_flight.replace(request.partition, async move {
                    let _ = restored.send(restorer.restore(request).await);
                });
            }
        }
    }
}

impl Restorer {
    /// Restores until it succeeds (or is superseded, which aborts it).
    async fn restore(&self, request: RestoreRequest) -> RestoredPartition {
        let partition = request.partition;
        let started = Instant::now();
        let mut next_report = started;
        let mut failures = 0;
        let mut poll = PART_POLL_FIRST;
        loop {
            match self.attempt(&request).await {
                Ok(restored) => return restored,
                Err(Attempt::PartMissing(savepoint)) => {
                    if Instant::now() >= next_report {
                        SavepointPartAwaited {
                            savepoint,
                            partition,
                            waited: started.elapsed(),
                        }
                        .emit();
                        next_report = Instant::now() + WAIT_REPORT_EVERY;
                    }
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(PART_POLL_MAX);
                }
                Err(Attempt::Failed(error)) => {
                    failures += 1;
                    let retry_in = retry_delay(failures);
                    RestoreFailed {
                        partition,
                        attempt: failures,
                        error: &error.to_string(),
                        retry_in,
                    }
                    .emit();
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }

    async fn attempt<'r>(
        &self,
        request: &'r RestoreRequest,
    ) -> Result<RestoredPartition, Attempt<'r>> {
        let partition = request.partition;
        let failed = |source| Attempt::Failed(EngineError::Restore { partition, source });
        let (snapshot, source, origin) = match &request.source {
            RestoreSource::Latest => (
                self.store
                    .restore_latest(partition, request.max_epoch)
                    .await
                    .map_err(failed)?,
                "latest checkpoint".to_owned(),
                "checkpoint",
            ),
            RestoreSource::Part { savepoint, path } => {
                let part = self
                    .store
                    .read_part_at(&path.as_str().into())
                    .await
                    .map_err(failed)?;
                if part.header.partition != partition {
                    return Err(failed(CheckpointError::WrongPartition {
                        path: path.clone(),
                        found: part.header.partition,
                        partition,
                    }));
                }
                (Some(part), format!("savepoint {savepoint}"), "savepoint")
            }
            RestoreSource::Savepoint(name) => {
                match self.store.read_savepoint_part(name, partition).await {
                    Ok(part) => (Some(part), format!("savepoint {name}"), "savepoint"),
                    Err(CheckpointError::Read {
                        source: object_store::Error::NotFound { .. },
                        ..
                    }) => return Err(Attempt::PartMissing(name)),
                    Err(error) => return Err(failed(error)),
                }
            }
        };
        let Some(snapshot) = snapshot else {
            let offset = self
                .start_offset(partition)
                .await
                .map_err(Attempt::Failed)?;
            return Ok(RestoredPartition {
                partition,
                ticket: request.ticket,
                state: self.pipeline.new_state(),
                next_offset: offset,
                from: None,
                report: PartitionRestored {
                    partition,
                    from: None,
                    source: format!("{:?} offset {offset}", self.source.start_from),
                    origin: "none",
                },
            });
        };
        let saved =
            PartitionState::decode(snapshot.encoding, &snapshot.state).map_err(|source| {
                Attempt::Failed(EngineError::IncompatibleState { partition, source })
            })?;
        let id = snapshot.header.id;
        let state = if self.pipeline.reads(&saved) {
            self.pipeline.claim(saved)
        } else if self.drop_incompatible_state {
            tracing::warn!(
                partition,
                saved = Pipeline::layout_of(&saved),
                offset = id.next_offset,
                "the saved window state belongs to another window layout: dropped, as the spec \
                 allows; the partition resumes at the saved offset with empty windows"
            );
            self.pipeline.new_state()
        } else {
            return Err(Attempt::Failed(EngineError::StateLayoutChanged {
                partition,
                saved: Pipeline::layout_of(&saved).unwrap_or_default().to_owned(),
            }));
        };
        Ok(RestoredPartition {
            partition,
            ticket: request.ticket,
            state,
            next_offset: id.next_offset,
            from: Some(id),
            report: PartitionRestored {
                partition,
                from: Some(id),
                source,
                origin,
            },
        })
    }

    /// The concrete offset where a partition without state starts (so its first checkpoint
    /// names a real offset even for `latest`).
    async fn start_offset(&self, partition: i32) -> Result<i64, EngineError> {
        let topic = self.source.topic.clone();
        let earliest = matches!(self.source.start_from, StartPosition::Earliest);
        let consumer = self.consumer.clone();
        let (low, high) = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, partition, Duration::from_secs(30))
        })
        .await
        .map_err(|_| EngineError::Panicked)?
        .map_err(|source| EngineError::Position {
            partition,
            source: source.into(),
        })?;
        Ok(if earliest { low } else { high })
    }
}
