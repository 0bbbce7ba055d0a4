//! Writes requested snapshots (checkpoints and savepoint parts) to storage in the background,
//! retrying failures with backoff while processing continues. A newer request for a
//! partition's checkpoint supersedes an older one that is still retrying (the newer snapshot
//! covers everything the older one did); likewise for its savepoint parts (a newer plan's
//! savepoint supersedes an older one's). A checkpoint never supersedes a savepoint part.

use std::{
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::mpsc as async_mpsc;

use crate::{
    checkpoint::{self, CheckpointStore, retry_delay},
    pipeline::PartitionState,
    snapshot::{SnapshotHeader, SnapshotId},
    tasks::LatestTasks,
    telemetry::{CheckpointCompleted, CheckpointFailed, Event, SavepointPartWritten},
};

/// Where a snapshot is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotTarget {
    /// The partition's checkpoints (pruned to the newest `retained`).
    Checkpoint,
    /// The partition's part of the named savepoint.
    SavepointPart(Arc<str>),
}

/// A snapshot to make durable.
pub struct UploadRequest {
    /// Its header.
    pub header: SnapshotHeader,
    /// The state, encoded here (off the engine's hot loop).
    pub state: PartitionState,
    /// Where it goes.
    pub target: SnapshotTarget,
    /// When the engine asked for it.
    pub requested_at: Instant,
}

/// A snapshot that is durable.
#[derive(Debug, Clone)]
pub struct UploadDone {
    /// Partition.
    pub partition: i32,
    /// Snapshot id.
    pub id: SnapshotId,
    /// Where it was written.
    pub target: SnapshotTarget,
    /// Time from request to durable write.
    pub duration: Duration,
}

/// Uploads that supersede each other.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Slot {
    Checkpoint(i32),
    SavepointPart(i32),
}

/// Runs until the request channel closes.
pub async fn run(
    store: CheckpointStore,
    retained: usize,
    mut requests: async_mpsc::UnboundedReceiver<UploadRequest>,
    done: mpsc::Sender<UploadDone>,
) {
    // Puts are create-if-absent on immutable names: aborting one midway is harmless.
    let mut in_flight = LatestTasks::new();
    while let Some(request) = requests.recv().await {
        let partition = request.header.partition;
        let slot = match request.target {
            SnapshotTarget::Checkpoint => Slot::Checkpoint(partition),
            SnapshotTarget::SavepointPart(_) => Slot::SavepointPart(partition),
        };
        in_flight.replace(slot, upload(store.clone(), retained, request, done.clone()));
    }
}

async fn upload(
    store: CheckpointStore,
    retained: usize,
    request: UploadRequest,
    done: mpsc::Sender<UploadDone>,
) {
    let partition = request.header.partition;
    let savepoint = match &request.target {
        SnapshotTarget::Checkpoint => None,
        SnapshotTarget::SavepointPart(id) => Some(id.as_ref()),
    };
    let (state, header) = (request.state, request.header);
    // Encoding, compressing and checksumming are CPU work: off the runtime's threads.
    let encoded = tokio::task::spawn_blocking(move || {
        let state = state.encode().map_err(|e| e.to_string())?;
        checkpoint::encode(&header, &state).map_err(|e| e.to_string())
    })
    .await;
    let snapshot = match encoded {
        Ok(Ok(bytes)) => Bytes::from(bytes),
        Ok(Err(error)) => {
            // Never seen: the state is maps of bytes and numbers. Without this snapshot
            // the partition's previous one stays the newest, and replays cover the rest.
            tracing::error!(%error, partition, "cannot encode the state; snapshot skipped");
            return;
        }
        Err(_) => return, // superseded by a newer snapshot of the partition, or shutdown
    };
    let mut attempt = 0;
    let bytes = loop {
        attempt += 1;
        let written = match savepoint {
            None => store.put_checkpoint(&header, snapshot.clone()).await,
            Some(id) => {
                store
                    .put_savepoint_part(id, &header, snapshot.clone())
                    .await
            }
        };
        match written {
            Ok(bytes) => break bytes,
            Err(error) => {
                let retry_in = retry_delay(attempt);
                CheckpointFailed {
                    partition,
                    savepoint,
                    attempt,
                    error: &error.to_string(),
                    retry_in,
                }
                .emit();
                tokio::time::sleep(retry_in).await;
            }
        }
    };
    let id = header.id;
    let duration = request.requested_at.elapsed();
    match savepoint {
        None => CheckpointCompleted {
            partition,
            id,
            bytes,
            duration,
        }
        .emit(),
        Some(savepoint) => SavepointPartWritten {
            savepoint,
            partition,
            id,
            bytes,
            duration,
        }
        .emit(),
    }
    let _ = done.send(UploadDone {
        partition,
        id,
        target: request.target.clone(),
        duration,
    });
    if savepoint.is_none() {
        if let Err(error) = store.prune(partition, retained).await {
            tracing::warn!(%error, partition, "pruning old checkpoints failed; retried after the next checkpoint");
        }
    }
}
