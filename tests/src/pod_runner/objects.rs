//! The Secrets and ConfigMaps a pod refers to: which ones (pure) and their contents (reads the API).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{Api, Client};

use super::launch::ConfigError;

/// Contents of the Secrets and ConfigMaps a pod refers to, by name; `None` when not found.
#[derive(Debug, Default, Clone)]
pub struct PodObjects {
    /// Secret data by Secret name.
    pub secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    /// ConfigMap data (`data` and `binaryData`) by ConfigMap name.
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

impl PodObjects {
    /// Reads every Secret and ConfigMap the pod's first container or its volumes refer to.
    pub async fn fetch(client: &Client, pod: &Pod) -> Result<Self, kube::Error> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (secret_names, config_map_names) = referenced(pod);
        let mut objects = Self::default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in secret_names {
            let data = secrets.get_opt(&name).await?.map(|s| {
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                // The apiserver folds stringData into data, but a stored object may still carry it.
                for (k, v) in s.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                data
            });
            objects.secrets.insert(name, data);
        }
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in config_map_names {
            let data = config_maps.get_opt(&name).await?.map(|cm| {
                let text = cm.data.unwrap_or_default().into_iter();
                let binary = cm.binary_data.unwrap_or_default().into_iter();
                text.map(|(k, v)| (k, v.into_bytes()))
                    .chain(binary.map(|(k, v)| (k, v.0)))
                    .collect()
            });
            objects.config_maps.insert(name, data);
        }
        Ok(objects)
    }

    /// A Secret's data; an absent Secret is an error unless the reference is optional.
    pub fn secret(
        &self,
        name: &str,
        optional: bool,
    ) -> Result<Option<&BTreeMap<String, Vec<u8>>>, ConfigError> {
        lookup(&self.secrets, name, optional, "secret")
    }

    /// A ConfigMap's data; an absent ConfigMap is an error unless the reference is optional.
    pub fn config_map(
        &self,
        name: &str,
        optional: bool,
    ) -> Result<Option<&BTreeMap<String, Vec<u8>>>, ConfigError> {
        lookup(&self.config_maps, name, optional, "configmap")
    }
}

fn lookup<'a>(
    map: &'a BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
    name: &str,
    optional: bool,
    kind: &str,
) -> Result<Option<&'a BTreeMap<String, Vec<u8>>>, ConfigError> {
    match map.get(name).and_then(Option::as_ref) {
        Some(data) => Ok(Some(data)),
        None if optional => Ok(None),
        // kubelet's wording, so the status reads the same as on a real node.
        None => Err(ConfigError(format!("{kind} {name:?} not found"))),
    }
}

/// Names of the Secrets and ConfigMaps that the first container's env and the pod's volumes use.
fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    let Some(spec) = &pod.spec else {
        return (secrets, config_maps);
    };
    if let Some(container) = spec.containers.first() {
        for from in container.env_from.iter().flatten() {
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
            config_maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
        }
        for source in container
            .env
            .iter()
            .flatten()
            .filter_map(|e| e.value_from.as_ref())
        {
            secrets.extend(source.secret_key_ref.as_ref().map(|r| r.name.clone()));
            config_maps.extend(source.config_map_key_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        secrets.extend(volume.secret.as_ref().and_then(|s| s.secret_name.clone()));
        config_maps.extend(volume.config_map.as_ref().map(|c| c.name.clone()));
        let projected = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        for source in projected.into_iter().flatten() {
            secrets.extend(source.secret.as_ref().map(|s| s.name.clone()));
            config_maps.extend(source.config_map.as_ref().map(|c| c.name.clone()));
        }
    }
    (secrets, config_maps)
}
