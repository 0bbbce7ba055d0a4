//! Every object-store key the worker reads or writes is built here (pure, no I/O).
//!
//! Layout under the job's storage URL prefix:
//!
//! ```text
//! <prefix>/<namespace>/<job>/checkpoints/p-00003/e-0000000007-o-00000000000000012345.snap
//! <prefix>/<namespace>/<job>/savepoints/<savepoint>/p-00003.snap
//! <prefix>/<namespace>/<job>/savepoints/<savepoint>/manifest.json
//! ```
//!
//! Checkpoint names sort by (epoch, offset), zero-padded so lexical order is numeric order;
//! a snapshot of a newer epoch always sorts after every snapshot of an older one, which is
//! what fences stale workers.

use object_store::path::Path;

use crate::snapshot::SnapshotId;

/// Builds the object paths of one job.
#[derive(Clone, Debug)]
pub struct JobPaths {
    root: Path,
}

impl JobPaths {
    /// Paths of job `namespace/name` under the storage URL's `prefix`.
    pub fn new(prefix: &Path, namespace: &str, name: &str) -> Self {
        Self {
            root: prefix.clone().join(namespace).join(name),
        }
    }

    /// The job's root (everything the job stores lives below it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of one partition's checkpoints.
    pub fn checkpoint_dir(&self, partition: i32) -> Path {
        self.root
            .clone()
            .join("checkpoints")
            .join(format!("p-{partition:05}"))
    }

    /// The checkpoint object for `id` of `partition`.
    pub fn checkpoint(&self, partition: i32, id: SnapshotId) -> Path {
        self.checkpoint_dir(partition)
            .join(format!("e-{:010}-o-{:020}.snap", id.epoch, id.next_offset))
    }

    /// Parses a checkpoint object name back into its id; `None` for foreign objects.
    pub fn parse_checkpoint(path: &Path) -> Option<SnapshotId> {
        let name = path.filename()?;
        let rest = name.strip_prefix("e-")?.strip_suffix(".snap")?;
        let (epoch, offset) = rest.split_once("-o-")?;
        Some(SnapshotId {
            epoch: epoch.parse().ok()?,
            next_offset: offset.parse().ok()?,
        })
    }

    /// Directory of one savepoint.
    pub fn savepoint_dir(&self, savepoint: &str) -> Path {
        self.root.clone().join("savepoints").join(savepoint)
    }

    /// One partition's part of a savepoint.
    pub fn savepoint_part(&self, savepoint: &str, partition: i32) -> Path {
        self.savepoint_dir(savepoint)
            .join(format!("p-{partition:05}.snap"))
    }

    /// The manifest that makes a savepoint exist.
    pub fn savepoint_manifest(&self, savepoint: &str) -> Path {
        self.savepoint_dir(savepoint).join("manifest.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> JobPaths {
        JobPaths::new(&Path::from("state"), "team-a", "clicks")
    }

    #[test]
    fn checkpoint_names_round_trip_and_sort_by_epoch_then_offset() {
        let ids = [
            SnapshotId {
                epoch: 2,
                next_offset: 5,
            },
            SnapshotId {
                epoch: 1,
                next_offset: 999_999,
            },
            SnapshotId {
                epoch: 2,
                next_offset: 40,
            },
            SnapshotId {
                epoch: 10,
                next_offset: 0,
            },
        ];
        let mut names: Vec<_> = ids.iter().map(|id| paths().checkpoint(3, *id)).collect();
        for (name, id) in names.iter().zip(ids) {
            assert_eq!(JobPaths::parse_checkpoint(name), Some(id));
        }
        names.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        let sorted: Vec<_> = names
            .iter()
            .filter_map(JobPaths::parse_checkpoint)
            .collect();
        let mut expected = ids.to_vec();
        expected.sort();
        assert_eq!(sorted, expected);
    }

    #[test]
    fn layout_is_stable() {
        let p = paths();
        assert_eq!(
            p.checkpoint(
                3,
                SnapshotId {
                    epoch: 7,
                    next_offset: 12345
                }
            )
            .as_ref(),
            "state/team-a/clicks/checkpoints/p-00003/e-0000000007-o-00000000000000012345.snap"
        );
        assert_eq!(
            p.savepoint_part("sp-1", 12).as_ref(),
            "state/team-a/clicks/savepoints/sp-1/p-00012.snap"
        );
        assert_eq!(
            p.savepoint_manifest("sp-1").as_ref(),
            "state/team-a/clicks/savepoints/sp-1/manifest.json"
        );
    }

    #[test]
    fn foreign_objects_are_not_checkpoints() {
        for name in ["x.snap", "e-1-o-x.snap", "e-1-o-2.tmp", "manifest.json"] {
            assert_eq!(
                JobPaths::parse_checkpoint(&Path::from(name)),
                None,
                "{name}"
            );
        }
    }
}
