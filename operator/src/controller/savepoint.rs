//! Savepoints in storage: which parts the workers have written, and the manifest that makes
//! a savepoint exist (reads and one create-if-absent write).

use std::collections::{BTreeMap, BTreeSet};

use futures::TryStreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use streamjob_api::{RescaleStatus, SavepointStatus, StreamJobSpec};
use streamjob_worker::{paths::JobPaths, plan::PartitionRestore, storage::Storage};

use super::observe::{JobStorage, Observed};

/// One partition's part of a savepoint, as found in storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointPart {
    /// Object path of the part.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// `savepoints/<id>/manifest.json`: written by the operator once every part is there; a
/// savepoint without it does not exist (restores never use it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavepointManifest {
    /// Savepoint id.
    pub id: String,
    /// Plan epoch the parts were written for.
    pub epoch: u64,
    /// Why it was taken (`rescale`, `upgrade`, `user`).
    pub reason: String,
    /// When the manifest was written.
    pub created: jiff::Timestamp,
    /// Partition → its part.
    pub parts: BTreeMap<i32, SavepointPart>,
}

/// The parts of savepoint `id` in storage, by partition.
pub async fn parts(
    storage: &Storage,
    paths: &JobPaths,
    id: &str,
) -> Result<BTreeMap<i32, SavepointPart>, object_store::Error> {
    let dir = paths.savepoint_dir(id);
    let objects: Vec<_> = storage.store.list(Some(&dir)).try_collect().await?;
    Ok(objects
        .into_iter()
        .filter_map(|meta| {
            let partition = part_partition(meta.location.filename()?)?;
            let part = SavepointPart {
                path: meta.location.to_string(),
                size: meta.size,
            };
            Some((partition, part))
        })
        .collect())
}

/// Whether the manifest of savepoint `id` exists.
pub async fn manifest_exists(
    storage: &Storage,
    paths: &JobPaths,
    id: &str,
) -> Result<bool, object_store::Error> {
    match storage.store.head(&paths.savepoint_manifest(id)).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Writes the manifest, create-if-absent: a manifest already there is the same savepoint.
pub async fn write_manifest(
    storage: &Storage,
    paths: &JobPaths,
    manifest: &SavepointManifest,
) -> Result<(), object_store::Error> {
    let body = serde_json::to_vec_pretty(manifest).map_err(|e| object_store::Error::Generic {
        store: "manifest",
        source: Box::new(e),
    })?;
    let options = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    let path = paths.savepoint_manifest(&manifest.id);
    match storage
        .store
        .put_opts(&path, PutPayload::from(body), options)
        .await
    {
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Completes the rescale savepoint `rescale.savepoint` when every partition's part is in
/// storage: writes its manifest (the savepoint exists from then on) and returns its status
/// entry. `None` when a part is missing (the rescale fell back) or storage is out of sight.
pub async fn complete(
    observed: &Observed,
    rescale: &RescaleStatus,
    partitions: i32,
    spec: &StreamJobSpec,
    now: jiff::Timestamp,
) -> Result<Option<SavepointStatus>, object_store::Error> {
    let Some(storage) = &observed.storage else {
        return Ok(None);
    };
    let complete = (0..partitions).all(|p| observed.parts.contains_key(&p));
    if !complete || !rescale.fallback.is_empty() {
        return Ok(None);
    }
    let manifest = SavepointManifest {
        id: rescale.savepoint.clone(),
        epoch: u64::try_from(rescale.epoch).unwrap_or(0),
        reason: rescale.reason.clone(),
        created: now,
        parts: observed
            .parts
            .iter()
            .filter(|(p, _)| (0..partitions).contains(*p))
            .map(|(p, part)| (*p, part.clone()))
            .collect(),
    };
    write_manifest(&storage.storage, &storage.paths, &manifest).await?;
    let path = storage.paths.savepoint_manifest(&manifest.id);
    Ok(Some(SavepointStatus {
        name: manifest.id,
        url: object_url(&spec.checkpoint.storage, path.as_ref()),
        epoch: rescale.epoch,
        time: Time(now),
        reason: manifest.reason,
    }))
}

/// Deletes the oldest savepoints of `history` (oldest first) beyond `retained`, except the
/// `protected` ones (a pending restore or `restoreFrom` needs them): the manifest first, so
/// a savepoint stops existing before its parts go. Returns the ids deleted.
pub async fn retain(
    storage: &JobStorage,
    history: &mut Vec<SavepointStatus>,
    retained: usize,
    protected: &BTreeSet<&str>,
) -> Result<Vec<String>, object_store::Error> {
    let mut excess = history.len().saturating_sub(retained);
    let mut doomed = Vec::new();
    for savepoint in history.iter() {
        if excess == 0 {
            break;
        }
        if !protected.contains(savepoint.name.as_str()) {
            doomed.push(savepoint.name.clone());
            excess -= 1;
        }
    }
    for id in &doomed {
        let store = storage.storage.store.as_ref();
        delete_if_present(store, &storage.paths.savepoint_manifest(id)).await?;
        let dir = storage.paths.savepoint_dir(id);
        let parts: Vec<_> = store.list(Some(&dir)).try_collect().await?;
        for part in parts {
            delete_if_present(store, &part.location).await?;
        }
        history.retain(|s| &s.name != id);
    }
    Ok(doomed)
}

/// Deletes the object at `path`; one already gone is no error.
async fn delete_if_present(
    store: &dyn object_store::ObjectStore,
    path: &object_store::path::Path,
) -> Result<(), object_store::Error> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The manifest of the savepoint at `url` (its directory or its `manifest.json`), read
/// with the job's storage `settings`; `Ok(None)` when there is none (an incomplete or
/// deleted savepoint).
pub async fn read_manifest_at(
    url: &str,
    settings: &BTreeMap<String, String>,
) -> Result<Option<SavepointManifest>, String> {
    let dir = url.trim_end_matches('/').trim_end_matches("/manifest.json");
    let storage = streamjob_worker::storage::open_with(dir, settings).map_err(|e| e.to_string())?;
    let path = storage.prefix.clone().join("manifest.json");
    let bytes = match storage.store.get(&path).await {
        Ok(found) => found.bytes().await.map_err(|e| e.to_string())?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("the manifest {url} does not parse: {e}"))
}

/// Restore entries from the parts of `manifest` (another job's savepoint, say) for every
/// partition without a checkpoint of its own.
pub fn restore_entries<V>(
    manifest: &SavepointManifest,
    checkpoints: &BTreeMap<i32, V>,
) -> BTreeMap<i32, PartitionRestore> {
    manifest
        .parts
        .iter()
        .filter(|(partition, _)| !checkpoints.contains_key(partition))
        .map(|(partition, part)| {
            let restore = PartitionRestore {
                savepoint: manifest.id.clone(),
                part: Some(part.path.clone()),
            };
            (*partition, restore)
        })
        .collect()
}

/// `scheme://bucket` of a storage URL.
pub fn bucket_of(url: &str) -> &str {
    let end = url.find("://").map_or(url.len(), |i| {
        url[i + 3..].find('/').map_or(url.len(), |j| i + 3 + j)
    });
    &url[..end]
}

/// The names of the savepoints of `history` that one of `restores` (`restoreFrom` URLs of
/// any job: a savepoint's directory or its manifest) points at.
pub fn named_by<'r>(
    history: &[SavepointStatus],
    restores: impl IntoIterator<Item = &'r str>,
) -> BTreeSet<String> {
    let directory = |url: &str| {
        let url = url.trim_end_matches('/');
        url.strip_suffix("/manifest.json").unwrap_or(url).to_owned()
    };
    let wanted: BTreeSet<String> = restores.into_iter().map(directory).collect();
    history
        .iter()
        .filter(|savepoint| wanted.contains(&directory(&savepoint.url)))
        .map(|savepoint| savepoint.name.clone())
        .collect()
}

/// The URL of the object at `path` (from the store's root) in the store of `storage_url`:
/// `s3://bucket/prefix` and `prefix/a/b` give `s3://bucket/prefix/a/b`.
fn object_url(storage_url: &str, path: &str) -> String {
    let (scheme, rest) = storage_url.split_once("://").unwrap_or(("", storage_url));
    let bucket = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{bucket}/{path}")
}

/// The partition of a part's file name, `p-00003.snap` → 3.
fn part_partition(file_name: &str) -> Option<i32> {
    file_name
        .strip_prefix("p-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use object_store::path::Path;
    use streamjob_worker::storage;

    use super::*;

    #[test]
    fn object_urls_name_the_bucket_and_the_full_path() {
        assert_eq!(
            object_url("s3://ckpt/prod", "prod/ns/job/savepoints/e4/manifest.json"),
            "s3://ckpt/prod/ns/job/savepoints/e4/manifest.json"
        );
        assert_eq!(object_url("gs://b", "ns/j/m.json"), "gs://b/ns/j/m.json");
        assert_eq!(bucket_of("s3://ckpt/prod/x"), "s3://ckpt");
        assert_eq!(bucket_of("s3://ckpt"), "s3://ckpt");
    }

    #[tokio::test]
    async fn retention_deletes_the_oldest_savepoints_but_spares_protected_ones() {
        let dir = std::env::temp_dir().join(format!("sj-retain-{}", std::process::id()));
        let storage = storage::open(&format!("file://{}", dir.display())).unwrap();
        let paths = JobPaths::new(&Path::default(), "ns", "clicks");
        let job = JobStorage {
            storage: storage.clone(),
            paths: paths.clone(),
        };
        let mut history = Vec::new();
        for id in ["a", "b", "c", "d"] {
            storage
                .store
                .put(
                    &paths.savepoint_part(id, 0),
                    PutPayload::from_static(b"part"),
                )
                .await
                .unwrap();
            storage
                .store
                .put(
                    &paths.savepoint_manifest(id),
                    PutPayload::from_static(b"{}"),
                )
                .await
                .unwrap();
            history.push(SavepointStatus {
                name: id.into(),
                url: format!("file:///{id}"),
                epoch: 1,
                time: Time(jiff::Timestamp::UNIX_EPOCH),
                reason: "user".into(),
            });
        }
        let deleted = retain(&job, &mut history, 2, &BTreeSet::from(["a"]))
            .await
            .unwrap();
        assert_eq!(deleted, vec!["b", "c"]);
        let names: Vec<&str> = history.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a", "d"], "the protected oldest one stays");
        for (id, kept) in [("a", true), ("b", false), ("c", false), ("d", true)] {
            assert_eq!(manifest_exists(&storage, &paths, id).await.unwrap(), kept);
            assert_eq!(
                parts(&storage, &paths, id).await.unwrap().is_empty(),
                !kept,
                "parts of {id}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_savepoint_is_named_by_a_restore_of_its_directory_or_manifest_only() {
        let history: Vec<SavepointStatus> = ["e2-rescale", "e4-rescale", "before-v2"]
            .into_iter()
            .map(|id| SavepointStatus {
                name: id.into(),
                url: format!("s3://b/p/ns/job/savepoints/{id}/manifest.json"),
                epoch: 1,
                time: Time(jiff::Timestamp::UNIX_EPOCH),
                reason: "rescale".into(),
            })
            .collect();
        let named = named_by(
            &history,
            [
                "s3://b/p/ns/job/savepoints/e2-rescale/manifest.json",
                "s3://b/p/ns/job/savepoints/before-v2/",
                // Another job's savepoint of the same name, another bucket: not ours.
                "s3://b/p/ns/other/savepoints/e4-rescale",
                "s3://c/p/ns/job/savepoints/e4-rescale",
            ],
        );
        assert_eq!(
            named,
            BTreeSet::from(["e2-rescale".into(), "before-v2".into()])
        );
    }

    #[test]
    fn part_names_carry_their_partition() {
        assert_eq!(part_partition("p-00003.snap"), Some(3));
        assert_eq!(part_partition("manifest.json"), None);
        assert_eq!(part_partition("p-x.snap"), None);
    }

    #[tokio::test]
    async fn parts_are_listed_and_the_manifest_is_written_once() {
        let dir = std::env::temp_dir().join(format!("sj-savepoint-{}", std::process::id()));
        let storage = storage::open(&format!("file://{}", dir.display())).unwrap();
        let paths = JobPaths::new(&Path::default(), "ns", "clicks");
        for partition in [0, 2] {
            storage
                .store
                .put(
                    &paths.savepoint_part("e4-rescale", partition),
                    PutPayload::from_static(b"part"),
                )
                .await
                .unwrap();
        }
        let found = parts(&storage, &paths, "e4-rescale").await.unwrap();
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(found[&0].size, 4);

        assert!(
            !manifest_exists(&storage, &paths, "e4-rescale")
                .await
                .unwrap()
        );
        let manifest = SavepointManifest {
            id: "e4-rescale".into(),
            epoch: 4,
            reason: "rescale".into(),
            created: jiff::Timestamp::UNIX_EPOCH,
            parts: found,
        };
        write_manifest(&storage, &paths, &manifest).await.unwrap();
        write_manifest(&storage, &paths, &manifest).await.unwrap();
        assert!(
            manifest_exists(&storage, &paths, "e4-rescale")
                .await
                .unwrap()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
