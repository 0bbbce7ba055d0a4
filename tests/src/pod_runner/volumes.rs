//! Volumes as local directories: what each volume holds (pure `plan`) and writing it under
//! the pod's directory (`materialise`: files, plus TokenRequests for token projections).

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccount, Volume},
};
use kube::{Api, Client, api::PostParams};

use super::{
    launch::{ConfigError, field_value},
    objects::PodObjects,
};

/// What stands in for one volume on the local filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumePlan {
    /// An empty directory that lives as long as the pod.
    EmptyDir,
    /// A directory of the host, used as is.
    HostPath(PathBuf),
    /// Files written by the runner (Secret, ConfigMap, downward API, projected volumes).
    Files(Vec<VolumeFile>),
}

/// One file of a Secret, ConfigMap, downward-API or projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// Path relative to the volume's directory.
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
    /// What to write.
    pub content: FileContent,
}

/// The content of a volume file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// Known bytes.
    Bytes(Vec<u8>),
    /// A token of the pod's ServiceAccount, requested when written.
    Token {
        /// Audience of the token (the apiserver's when absent).
        audience: Option<String>,
        /// Requested lifetime.
        expiration_seconds: i64,
    },
}

/// The directory standing in for volume `name` of the pod whose directory is `pod_dir`.
pub fn volume_dir(pod: &Pod, pod_dir: &Path, name: &str) -> Option<PathBuf> {
    let volume = pod
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)?;
    Some(match &volume.host_path {
        Some(host) => PathBuf::from(&host.path),
        None => pod_dir.join("volumes").join(name),
    })
}

/// What volume `volume` of `pod` holds, given the pod's Secrets and ConfigMaps.
pub fn plan(pod: &Pod, volume: &Volume, objects: &PodObjects) -> Result<VolumePlan, ConfigError> {
    let mode = |m: Option<i32>| m.map_or(0o644, |m| m as u32 & 0o7777);
    if volume.empty_dir.is_some() {
        return Ok(VolumePlan::EmptyDir);
    }
    if let Some(host) = &volume.host_path {
        return Ok(VolumePlan::HostPath(PathBuf::from(&host.path)));
    }
    let files = if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let optional = s.optional.unwrap_or(false);
        let data = objects.secret(&name, optional)?;
        key_files(data, &s.items, mode(s.default_mode), optional)?
    } else if let Some(c) = &volume.config_map {
        let optional = c.optional.unwrap_or(false);
        let data = objects.config_map(&c.name, optional)?;
        key_files(data, &c.items, mode(c.default_mode), optional)?
    } else if let Some(d) = &volume.downward_api {
        downward_files(pod, &d.items, mode(d.default_mode))?
    } else if let Some(p) = &volume.projected {
        let default_mode = mode(p.default_mode);
        let mut files = Vec::new();
        for source in p.sources.iter().flatten() {
            if let Some(s) = &source.secret {
                let optional = s.optional.unwrap_or(false);
                let data = objects.secret(&s.name, optional)?;
                files.extend(key_files(data, &s.items, default_mode, optional)?);
            } else if let Some(c) = &source.config_map {
                let optional = c.optional.unwrap_or(false);
                let data = objects.config_map(&c.name, optional)?;
                files.extend(key_files(data, &c.items, default_mode, optional)?);
            } else if let Some(d) = &source.downward_api {
                files.extend(downward_files(pod, &d.items, default_mode)?);
            } else if let Some(t) = &source.service_account_token {
                files.push(VolumeFile {
                    path: t.path.clone(),
                    mode: default_mode,
                    content: FileContent::Token {
                        audience: t.audience.clone(),
                        expiration_seconds: t.expiration_seconds.unwrap_or(3600),
                    },
                });
            } else {
                return Err(unsupported(&volume.name));
            }
        }
        files
    } else {
        return Err(unsupported(&volume.name));
    };
    Ok(VolumePlan::Files(files))
}

fn unsupported(volume: &str) -> ConfigError {
    ConfigError(format!(
        "volume {volume:?}: streamjob-pod-runner supports emptyDir, hostPath, secret, configMap, \
         downwardAPI and projected (secret, configMap, downwardAPI, serviceAccountToken) volumes"
    ))
}

/// Files for the keys of a Secret or ConfigMap: all keys, or the listed `items`.
fn key_files(
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: &Option<Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
) -> Result<Vec<VolumeFile>, ConfigError> {
    let Some(data) = data else {
        return Ok(Vec::new());
    };
    let file = |path: &str, mode: Option<i32>, bytes: &Vec<u8>| VolumeFile {
        path: path.to_owned(),
        mode: mode.map_or(default_mode, |m| m as u32 & 0o7777),
        content: FileContent::Bytes(bytes.clone()),
    };
    match items {
        None => Ok(data.iter().map(|(k, v)| file(k, None, v)).collect()),
        Some(items) => items
            .iter()
            .filter_map(|item| match data.get(&item.key) {
                Some(bytes) => Some(Ok(file(&item.path, item.mode, bytes))),
                None if optional => None,
                None => Some(Err(ConfigError(format!(
                    "configured key {:?} not found in the volume's source",
                    item.key
                )))),
            })
            .collect(),
    }
}

fn downward_files(
    pod: &Pod,
    items: &Option<Vec<DownwardAPIVolumeFile>>,
    default_mode: u32,
) -> Result<Vec<VolumeFile>, ConfigError> {
    items
        .iter()
        .flatten()
        .map(|item| {
            let Some(field) = &item.field_ref else {
                return Err(ConfigError(format!(
                    "downward API file {:?}: only fieldRef is supported by streamjob-pod-runner",
                    item.path
                )));
            };
            Ok(VolumeFile {
                path: item.path.clone(),
                mode: item.mode.map_or(default_mode, |m| m as u32 & 0o7777),
                content: FileContent::Bytes(field_value(pod, &field.field_path)?.into_bytes()),
            })
        })
        .collect()
}

/// Writes every volume of `pod` under `pod_dir/volumes/` (emptyDir contents are kept) and
/// returns when its service-account tokens should be refreshed (80% of their lifetime, as
/// kubelet does), if it has any.
pub async fn materialise(
    client: &Client,
    pod: &Pod,
    objects: &PodObjects,
    pod_dir: &Path,
) -> Result<Option<Duration>, ConfigError> {
    let mut refresh: Option<Duration> = None;
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = pod_dir.join("volumes").join(&volume.name);
        let files = match plan(pod, volume, objects)? {
            VolumePlan::HostPath(_) => continue,
            VolumePlan::EmptyDir => Vec::new(),
            VolumePlan::Files(files) => files,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        for file in files {
            let bytes = match file.content {
                FileContent::Bytes(bytes) => bytes,
                FileContent::Token {
                    audience,
                    expiration_seconds,
                } => {
                    let lifetime = Duration::from_secs(expiration_seconds.max(600) as u64);
                    let due = lifetime.mul_f64(0.8);
                    refresh = Some(refresh.map_or(due, |r| r.min(due)));
                    request_token(client, pod, audience, expiration_seconds)
                        .await?
                        .into_bytes()
                }
            };
            write_file(&dir.join(&file.path), &bytes, file.mode)?;
        }
    }
    Ok(refresh)
}

/// Writes through a temporary file and a rename, so a reader never sees half a token.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
    }
    let tmp = path.with_extension("streamjob-tmp");
    std::fs::write(&tmp, bytes).map_err(|e| io_error(&tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: std::io::Error) -> ConfigError {
    ConfigError(format!("cannot write {}: {e}", path.display()))
}

/// A token of the pod's ServiceAccount bound to the pod (TokenRequest API), as kubelet asks.
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    expiration_seconds: i64,
) -> Result<String, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(expiration_seconds),
        },
        ..Default::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let response = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| {
            ConfigError(format!(
                "failed to fetch token for ServiceAccount {namespace}/{account}: {e}"
            ))
        })?;
    response
        .status
        .map(|s| s.token)
        .ok_or_else(|| ConfigError("TokenRequest answered without a token".into()))
}
