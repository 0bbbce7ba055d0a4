//! Pure: turns a Pod's first container into the local process to run (command line,
//! environment, working directory) as kubelet would build it, plus the one step kubelet never
//! does: volume mount paths rewritten to the pod's local directories.

use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::objects::PodObjects;

/// Why a container cannot be started yet; the message goes into its waiting state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// The value of a downward-API field (`fieldRef.fieldPath`) of `pod`.
///
/// `pod.status.podIP`/`hostIP` must already hold the addresses the runner gave the pod.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let map_entry = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let map_lines = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect()
    };
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => Some(map_lines(&meta.labels)),
        "metadata.annotations" => Some(map_lines(&meta.annotations)),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" | "status.hostIPs" => status.and_then(|s| s.host_ip.clone()),
        _ => {
            let bracketed = |prefix: &str| {
                path.strip_prefix(prefix)?
                    .strip_suffix("']")
                    .map(str::to_owned)
            };
            if let Some(key) = bracketed("metadata.labels['") {
                Some(map_entry(&meta.labels, &key))
            } else if let Some(key) = bracketed("metadata.annotations['") {
                Some(map_entry(&meta.annotations, &key))
            } else {
                return Err(ConfigError(format!(
                    "fieldRef {path:?} is not supported by streamjob-pod-runner"
                )));
            }
        }
    };
    Ok(value.unwrap_or_default())
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the variable's value when it is
/// defined and stays as written otherwise; `$$` is an escaped `$`.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment, in kubelet's order: the runner's base variables (service
/// discovery), then `envFrom`, then `env`, each `env` value `$(VAR)`-expanded against the
/// variables defined before it.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    objects: &PodObjects,
    base: &[(String, String)],
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut vars: BTreeMap<String, String> = base.iter().cloned().collect();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &source.config_map_ref {
            objects.config_map(&cm.name, cm.optional.unwrap_or(false))?
        } else if let Some(secret) = &source.secret_ref {
            objects.secret(&secret.name, secret.optional.unwrap_or(false))?
        } else {
            None
        };
        for (key, value) in data.into_iter().flatten() {
            vars.insert(
                format!("{prefix}{key}"),
                String::from_utf8_lossy(value).into_owned(),
            );
        }
    }
    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => Some(expand(var.value.as_deref().unwrap_or(""), &vars)),
            Some(from) => {
                if let Some(field) = &from.field_ref {
                    Some(field_value(pod, &field.field_path)?)
                } else if let Some(sel) = &from.secret_key_ref {
                    let data = objects.secret(&sel.name, sel.optional.unwrap_or(false))?;
                    key_value(data, &sel.name, &sel.key, sel.optional, "Secret")?
                } else if let Some(sel) = &from.config_map_key_ref {
                    let data = objects.config_map(&sel.name, sel.optional.unwrap_or(false))?;
                    key_value(data, &sel.name, &sel.key, sel.optional, "ConfigMap")?
                } else {
                    return Err(ConfigError(format!(
                        "env {}: only fieldRef, secretKeyRef and configMapKeyRef are supported \
                         by streamjob-pod-runner",
                        var.name
                    )));
                }
            }
        };
        if let Some(value) = value {
            vars.insert(var.name.clone(), value);
        }
    }
    Ok(vars)
}

/// One key of a Secret or ConfigMap; a missing key is an error unless the reference is optional.
fn key_value(
    data: Option<&BTreeMap<String, Vec<u8>>>,
    name: &str,
    key: &str,
    optional: Option<bool>,
    kind: &str,
) -> Result<Option<String>, ConfigError> {
    match data.and_then(|d| d.get(key)) {
        Some(bytes) => Ok(Some(String::from_utf8_lossy(bytes).into_owned())),
        None if optional.unwrap_or(false) => Ok(None),
        None => Err(ConfigError(format!(
            "couldn't find key {key} in {kind} {name:?}"
        ))),
    }
}

/// The command line: `command` then `args`, both `$(VAR)`-expanded. An empty `command`
/// means the image's entrypoint, which the runner knows only as a `--bin IMAGE=PATH` mapping,
/// so the image reference stands in as the executable's name.
pub fn command_line(container: &Container, vars: &BTreeMap<String, String>) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    let head = if command.is_empty() {
        vec![container.image.clone().unwrap_or_default()]
    } else {
        command
    };
    head.iter()
        .chain(container.args.iter().flatten())
        .map(|part| expand(part, vars))
        .collect()
}

/// Container paths of the volume mounts and the local directories that stand in for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountMap(Vec<(String, PathBuf)>);

impl MountMap {
    /// Maps each of the container's mounts to `volume_dir(volume name)` (plus its `subPath`).
    pub fn new(container: &Container, volume_dir: impl Fn(&str) -> Option<PathBuf>) -> Self {
        let mut pairs: Vec<(String, PathBuf)> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter_map(|mount| {
                let mut local = volume_dir(&mount.name)?;
                if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                    local.push(sub);
                }
                let path = mount.mount_path.trim_end_matches('/').to_owned();
                Some((path, local))
            })
            .filter(|(path, _)| !path.is_empty())
            .collect();
        // Longest first, so `/data/in` wins over `/data`.
        pairs.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Self(pairs)
    }

    /// The local directory standing in for container path `mount_path`, if mounted.
    pub fn local(&self, mount_path: &str) -> Option<&PathBuf> {
        let wanted = mount_path.trim_end_matches('/');
        self.0.iter().find(|(p, _)| p == wanted).map(|(_, l)| l)
    }

    /// `text` with every mount path that ends at a path boundary replaced by its local directory.
    pub fn rewrite(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        'scan: while i < text.len() {
            for (path, local) in &self.0 {
                if text[i..].starts_with(path.as_str()) {
                    let end = i + path.len();
                    let boundary = text[end..]
                        .chars()
                        .next()
                        .is_none_or(|c| !(c.is_alphanumeric() || "-_.".contains(c)));
                    if boundary {
                        out.push_str(&local.to_string_lossy());
                        i = end;
                        continue 'scan;
                    }
                }
            }
            let c = text[i..].chars().next().unwrap_or_default();
            out.push(c);
            i += c.len_utf8().max(1);
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let v = vars(&[("POD_IP", "127.0.0.7")]);
        assert_eq!(expand("$(POD_IP):8080", &v), "127.0.0.7:8080");
        assert_eq!(expand("$(MISSING)", &v), "$(MISSING)");
        assert_eq!(expand("$$(POD_IP)", &v), "$(POD_IP)");
        assert_eq!(expand("a$b $(", &v), "a$b $(");
    }

    #[test]
    fn mount_paths_are_rewritten_only_at_path_boundaries() {
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "cfg", "mountPath": "/data/cfg/", "subPath": "x"},
            ]
        }))
        .unwrap();
        let map = MountMap::new(&container, |v| Some(PathBuf::from(format!("/tmp/p/{v}"))));
        assert_eq!(
            map.rewrite("--in=/data/a --cfg=/data/cfg --db=/database file:///data"),
            "--in=/tmp/p/data/a --cfg=/tmp/p/cfg/x --db=/database file:///tmp/p/data"
        );
    }

    #[test]
    fn env_resolves_fields_secrets_and_expansion() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "w"}},
            "status": {"podIP": "127.0.0.9"}
        }))
        .unwrap();
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "envFrom": [{"secretRef": {"name": "s"}, "prefix": "S_"}],
            "env": [
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "ADDR", "value": "$(POD_IP):8080"},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k", "optional": true}}},
            ]
        }))
        .unwrap();
        let mut objects = PodObjects::default();
        objects.secrets.insert(
            "s".into(),
            Some(BTreeMap::from([("K".into(), b"v".to_vec())])),
        );
        objects.config_maps.insert("gone".into(), None);
        let env = container_env(&pod, &container, &objects, &[]).unwrap();
        assert_eq!(env["ADDR"], "127.0.0.9:8080");
        assert_eq!(env["APP"], "w");
        assert_eq!(env["S_K"], "v");
        assert!(!env.contains_key("OPT"));

        objects.secrets.insert("s".into(), None);
        let err = container_env(&pod, &container, &objects, &[]).unwrap_err();
        assert!(err.0.contains("secret \"s\" not found"), "{err:?}");
    }
}
