//! Checkpoint storage: writes immutable snapshots, restores the newest valid one, prunes old
//! ones. Decisions are pure functions ([`restore_order`], [`to_prune`]); the I/O is in
//! [`CheckpointStore`].

use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, path::Path,
};
use thiserror::Error;

use crate::{
    paths::JobPaths,
    snapshot::{self, SnapshotHeader, SnapshotId},
    storage::Storage,
    telemetry::{Event, SnapshotRejected},
};

/// A checkpoint storage operation that failed.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Listing a partition's checkpoints failed.
    #[error("failed to list checkpoints of partition {partition}: {source}")]
    List {
        /// Partition.
        partition: i32,
        /// Store error.
        source: object_store::Error,
    },
    /// Writing a snapshot failed.
    #[error("failed to write snapshot {path}: {source}")]
    Write {
        /// Object path.
        path: String,
        /// Store error.
        source: object_store::Error,
    },
    /// Reading a savepoint part failed.
    #[error("failed to read {path}: {source}")]
    Read {
        /// Object path.
        path: String,
        /// Store error.
        source: object_store::Error,
    },
    /// A savepoint part is damaged (there is no older one to fall back to).
    #[error("savepoint part {path} is invalid: {source}")]
    InvalidPart {
        /// Object path.
        path: String,
        /// Why.
        source: snapshot::SnapshotError,
    },
    /// A savepoint part named for one partition holds another.
    #[error("savepoint part {path} holds partition {found}, not {partition}")]
    WrongPartition {
        /// Object path.
        path: String,
        /// The partition in its header.
        found: i32,
        /// The partition it was read for.
        partition: i32,
    },
    /// The state could not be encoded.
    #[error("failed to encode the snapshot of partition {partition}: {source}")]
    Encode {
        /// Partition.
        partition: i32,
        /// Why.
        source: snapshot::SnapshotError,
    },
}

/// Frames and compresses `state` as a snapshot (CPU-bound: callers on a runtime thread
/// should run it where blocking is allowed).
pub fn encode(header: &SnapshotHeader, state: &[u8]) -> Result<Vec<u8>, CheckpointError> {
    snapshot::encode(header, state).map_err(|source| CheckpointError::Encode {
        partition: header.partition,
        source,
    })
}

/// A snapshot read back from storage.
pub type Restored = snapshot::Decoded;

/// Candidates newest first, ignoring snapshots of epochs after `max_epoch` (written under a
/// plan this worker has not seen; never restore the future).
pub fn restore_order(mut ids: Vec<SnapshotId>, max_epoch: u64) -> Vec<SnapshotId> {
    ids.retain(|id| id.epoch <= max_epoch);
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// Snapshots to delete so that only the newest `retained` remain, never deleting `keep`
/// (the snapshot the partition was restored from until a newer one exists is among the newest
/// anyway; `keep` guards a restore that is still pending).
pub fn to_prune(
    mut ids: Vec<SnapshotId>,
    retained: usize,
    keep: Option<SnapshotId>,
) -> Vec<SnapshotId> {
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids.into_iter()
        .skip(retained.max(1))
        .filter(|id| Some(*id) != keep)
        .collect()
}

/// Reads and writes one job's snapshots.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    storage: Storage,
    paths: JobPaths,
}

impl CheckpointStore {
    /// A store for the job whose objects live under `paths`.
    pub fn new(storage: Storage, paths: JobPaths) -> Self {
        Self { storage, paths }
    }

    /// The job's path builder.
    pub fn paths(&self) -> &JobPaths {
        &self.paths
    }

    fn store(&self) -> &dyn ObjectStore {
        self.storage.store.as_ref()
    }

    async fn objects(&self, partition: i32) -> Result<Vec<ObjectMeta>, CheckpointError> {
        let dir = self.paths.checkpoint_dir(partition);
        self.store()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|source| CheckpointError::List { partition, source })
    }

    /// Ids of every checkpoint of `partition`.
    pub async fn list(&self, partition: i32) -> Result<Vec<SnapshotId>, CheckpointError> {
        Ok(self
            .objects(partition)
            .await?
            .iter()
            .filter_map(|m| JobPaths::parse_checkpoint(&m.location))
            .collect())
    }

    /// Id and write time of the newest checkpoint of `partition` (by epoch, then offset),
    /// without reading it.
    pub async fn newest(
        &self,
        partition: i32,
    ) -> Result<Option<(SnapshotId, jiff::Timestamp)>, CheckpointError> {
        Ok(self
            .objects(partition)
            .await?
            .iter()
            .filter_map(|m| {
                let id = JobPaths::parse_checkpoint(&m.location)?;
                let time = jiff::Timestamp::from_millisecond(m.last_modified.timestamp_millis());
                Some((id, time.ok()?))
            })
            .max_by_key(|(id, _)| (id.epoch, id.next_offset)))
    }

    /// The newest checkpoint of `partition` that reads back intact, skipping (and reporting)
    /// damaged ones; `None` when the partition has no valid checkpoint.
    pub async fn restore_latest(
        &self,
        partition: i32,
        max_epoch: u64,
    ) -> Result<Option<Restored>, CheckpointError> {
        for id in restore_order(self.list(partition).await?, max_epoch) {
            let path = self.paths.checkpoint(partition, id);
            match self.read(&path).await {
                Ok(bytes) => match snapshot::decode(&bytes) {
                    Ok(Restored { header, .. })
                        if header.partition != partition || header.id != id =>
                    {
                        SnapshotRejected {
                            partition,
                            path: path.to_string(),
                            reason: format!(
                                "header names partition {} {:?}",
                                header.partition, header.id
                            ),
                        }
                        .emit();
                    }
                    Ok(restored) => return Ok(Some(restored)),
                    Err(e) => SnapshotRejected {
                        partition,
                        path: path.to_string(),
                        reason: e.to_string(),
                    }
                    .emit(),
                },
                // Deleted between list and get (pruned by a concurrent writer): try the next.
                Err(CheckpointError::Read {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Reads one savepoint part of `partition`, which must be intact.
    pub async fn read_savepoint_part(
        &self,
        savepoint: &str,
        partition: i32,
    ) -> Result<Restored, CheckpointError> {
        self.read_part_at(&self.paths.savepoint_part(savepoint, partition))
            .await
    }

    /// Reads the savepoint part at `path` (another job's, say).
    pub async fn read_part_at(&self, path: &Path) -> Result<Restored, CheckpointError> {
        let bytes = self.read(path).await?;
        snapshot::decode(&bytes).map_err(|source| CheckpointError::InvalidPart {
            path: path.to_string(),
            source,
        })
    }

    async fn read(&self, path: &Path) -> Result<Bytes, CheckpointError> {
        let read_err = |source| CheckpointError::Read {
            path: path.to_string(),
            source,
        };
        self.store()
            .get(path)
            .await
            .map_err(read_err)?
            .bytes()
            .await
            .map_err(read_err)
    }

    /// Encodes and writes a checkpoint of `header.partition` (see [`Self::put_checkpoint`]).
    pub async fn write_checkpoint(
        &self,
        header: &SnapshotHeader,
        state: &[u8],
    ) -> Result<usize, CheckpointError> {
        let snapshot = encode(header, state)?;
        self.put_checkpoint(header, snapshot.into()).await
    }

    /// Writes `snapshot` (the bytes [`snapshot::encode`] made of `header` and a state) as a
    /// checkpoint of `header.partition`. Snapshot objects are immutable: the write never
    /// replaces an existing object (an identical name means identical epoch, offset and
    /// therefore state, so finding it already there is success). Returns its size.
    pub async fn put_checkpoint(
        &self,
        header: &SnapshotHeader,
        snapshot: Bytes,
    ) -> Result<usize, CheckpointError> {
        let path = self.paths.checkpoint(header.partition, header.id);
        self.put(&path, snapshot).await
    }

    /// Writes `snapshot` as `header.partition`'s part of a savepoint.
    pub async fn put_savepoint_part(
        &self,
        savepoint: &str,
        header: &SnapshotHeader,
        snapshot: Bytes,
    ) -> Result<usize, CheckpointError> {
        let path = self.paths.savepoint_part(savepoint, header.partition);
        self.put(&path, snapshot).await
    }

    async fn put(&self, path: &Path, snapshot: Bytes) -> Result<usize, CheckpointError> {
        let size = snapshot.len();
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store()
            .put_opts(path, PutPayload::from(snapshot), opts)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(size),
            Err(source) => Err(CheckpointError::Write {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Deletes all but the newest `retained` checkpoints of `partition`.
    pub async fn prune(&self, partition: i32, retained: usize) -> Result<usize, CheckpointError> {
        let doomed = to_prune(self.list(partition).await?, retained, None);
        let count = doomed.len();
        for id in doomed {
            let path = self.paths.checkpoint(partition, id);
            match self.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => {
                    return Err(CheckpointError::Write {
                        path: path.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(count)
    }
}

/// Delay before retry `attempt` (1-based) of a failed checkpoint write: doubling from 1 s,
/// capped at 30 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;

    use super::*;

    fn id(epoch: u64, next_offset: i64) -> SnapshotId {
        SnapshotId { epoch, next_offset }
    }

    fn store() -> CheckpointStore {
        let storage = Storage {
            store: Arc::new(InMemory::new()),
            prefix: Path::from("cp"),
        };
        let paths = JobPaths::new(&storage.prefix, "ns", "job");
        CheckpointStore::new(storage, paths)
    }

    fn header(partition: i32, id: SnapshotId) -> SnapshotHeader {
        SnapshotHeader {
            partition,
            id,
            created_ms: 0,
        }
    }

    #[test]
    fn restore_prefers_newer_epochs_and_ignores_future_ones() {
        let order = restore_order(vec![id(1, 900), id(2, 10), id(3, 5), id(2, 20)], 2);
        assert_eq!(order, vec![id(2, 20), id(2, 10), id(1, 900)]);
    }

    #[test]
    fn pruning_keeps_the_newest_and_the_pinned_snapshot() {
        let ids = vec![id(1, 1), id(1, 2), id(1, 3), id(2, 0), id(2, 5)];
        assert_eq!(
            to_prune(ids.clone(), 2, None),
            vec![id(1, 3), id(1, 2), id(1, 1)]
        );
        assert_eq!(
            to_prune(ids.clone(), 2, Some(id(1, 2))),
            vec![id(1, 3), id(1, 1)]
        );
        assert_eq!(
            to_prune(ids, 0, None).len(),
            4,
            "at least one snapshot is always kept"
        );
    }

    #[test]
    fn retry_delays_double_then_cap() {
        let delays: Vec<_> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[tokio::test]
    async fn restore_skips_a_corrupt_newest_snapshot() {
        let store = store();
        store
            .write_checkpoint(&header(0, id(1, 10)), b"old state")
            .await
            .unwrap();
        store
            .write_checkpoint(&header(0, id(1, 20)), b"new state")
            .await
            .unwrap();
        // Truncate the newest object in place.
        let newest = store.paths().checkpoint(0, id(1, 20));
        let bytes = store.read(&newest).await.unwrap();
        store
            .store()
            .put(&newest, PutPayload::from(bytes.slice(..bytes.len() - 3)))
            .await
            .unwrap();

        let restored = store.restore_latest(0, 1).await.unwrap().unwrap();
        assert_eq!(restored.header.id, id(1, 10));
        assert_eq!(restored.state, b"old state");
    }

    #[tokio::test]
    async fn snapshots_are_never_overwritten() {
        let store = store();
        store
            .write_checkpoint(&header(0, id(1, 10)), b"first")
            .await
            .unwrap();
        store
            .write_checkpoint(&header(0, id(1, 10)), b"second")
            .await
            .unwrap();
        let restored = store.restore_latest(0, 1).await.unwrap().unwrap();
        assert_eq!(restored.state, b"first");
    }

    #[tokio::test]
    async fn a_stale_epoch_never_wins_over_a_newer_epoch() {
        let store = store();
        store
            .write_checkpoint(&header(0, id(2, 100)), b"new owner")
            .await
            .unwrap();
        // A worker of epoch 1 that has not noticed it lost the partition keeps checkpointing.
        store
            .write_checkpoint(&header(0, id(1, 5000)), b"stale owner")
            .await
            .unwrap();
        let restored = store.restore_latest(0, 2).await.unwrap().unwrap();
        assert_eq!(restored.state, b"new owner");
    }

    #[tokio::test]
    async fn pruning_deletes_old_checkpoints_only() {
        let store = store();
        for offset in 1..=5 {
            store
                .write_checkpoint(&header(3, id(1, offset)), b"s")
                .await
                .unwrap();
        }
        assert_eq!(store.prune(3, 2).await.unwrap(), 3);
        let mut left = store.list(3).await.unwrap();
        left.sort();
        assert_eq!(left, vec![id(1, 4), id(1, 5)]);
    }
}
