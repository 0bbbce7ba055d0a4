//! Writes requested snapshots to storage in the background, retrying failures with backoff
//! while processing continues. A newer request for a partition supersedes an older one that is
//! still retrying (the newer snapshot covers everything the older one did).

use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc as async_mpsc, task::JoinHandle};

use crate::{
    checkpoint::{CheckpointStore, retry_delay},
    snapshot::{SnapshotHeader, SnapshotId},
    telemetry::{CheckpointCompleted, CheckpointFailed, Event},
};

/// A snapshot to make durable.
pub struct UploadRequest {
    /// Its header.
    pub header: SnapshotHeader,
    /// Serialized (uncompressed) state.
    pub state: Vec<u8>,
    /// When the engine asked for it.
    pub requested_at: Instant,
}

/// A snapshot that is durable.
#[derive(Debug, Clone, Copy)]
pub struct UploadDone {
    /// Partition.
    pub partition: i32,
    /// Snapshot id.
    pub id: SnapshotId,
    /// Time from request to durable write.
    pub duration: Duration,
}

/// Runs until the request channel closes.
pub async fn run(
    store: CheckpointStore,
    retained: usize,
    mut requests: async_mpsc::UnboundedReceiver<UploadRequest>,
    done: mpsc::Sender<UploadDone>,
) {
    let mut in_flight: HashMap<i32, JoinHandle<()>> = HashMap::new();
    while let Some(request) = requests.recv().await {
        let partition = request.header.partition;
        if let Some(older) = in_flight.remove(&partition) {
            // Puts are create-if-absent on immutable names: aborting one midway is harmless.
            older.abort();
        }
        let task = tokio::spawn(upload(store.clone(), retained, request, done.clone()));
        in_flight.insert(partition, task);
        in_flight.retain(|_, task| !task.is_finished());
    }
    for (_, task) in in_flight {
        task.abort();
    }
}

async fn upload(
    store: CheckpointStore,
    retained: usize,
    request: UploadRequest,
    done: mpsc::Sender<UploadDone>,
) {
    let partition = request.header.partition;
    let mut attempt = 0;
    let bytes = loop {
        attempt += 1;
        match store
            .write_checkpoint(&request.header, &request.state)
            .await
        {
            Ok(bytes) => break bytes,
            Err(error) => {
                let retry_in = retry_delay(attempt);
                CheckpointFailed {
                    partition,
                    attempt,
                    error: &error.to_string(),
                    retry_in,
                }
                .emit();
                tokio::time::sleep(retry_in).await;
            }
        }
    };
    let duration = request.requested_at.elapsed();
    CheckpointCompleted {
        partition,
        id: request.header.id,
        bytes,
        duration,
    }
    .emit();
    let _ = done.send(UploadDone {
        partition,
        id: request.header.id,
        duration,
    });
    if let Err(error) = store.prune(partition, retained).await {
        tracing::warn!(%error, partition, "pruning old checkpoints failed; retried after the next checkpoint");
    }
}
