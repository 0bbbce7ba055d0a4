//! Everything a container needs before its process starts (I/O): the pod's Secrets and
//! ConfigMaps, its volumes on disk, its environment, its command line and the executable.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::{
    LOG_FILE, RunnerContext, SERVICE_ACCOUNT_MOUNT,
    launch::{self, MountMap},
    objects::PodObjects,
    process::{Launch, resolve_program},
    status::HOST_IP,
    volumes,
};

/// Why a container could not be started: its waiting reason and message.
pub struct StartFailure {
    /// kubelet's waiting reason for the case.
    pub reason: &'static str,
    /// What went wrong.
    pub message: String,
    /// Retry with the crash-loop backoff (else soon, as kubelet's next sync would).
    pub backoff: bool,
}

impl StartFailure {
    fn new(reason: &'static str, message: impl Into<String>, backoff: bool) -> Self {
        Self {
            reason,
            message: message.into(),
            backoff,
        }
    }

    fn creating(message: String) -> Self {
        Self::new("ContainerCreating", message, false)
    }
}

/// A container ready to start.
pub struct Prepared {
    /// How to start its process.
    pub launch: Launch,
    /// When its ServiceAccount tokens are due for a refresh, if it has any.
    pub token_refresh: Option<Duration>,
}

/// The pod as its process sees it: downward-API fields read the runner's addresses.
pub fn pod_with_addresses(pod: &Pod, ip: Ipv4Addr) -> Pod {
    let mut pod = pod.clone();
    let status = pod.status.get_or_insert_with(Default::default);
    status.pod_ip = Some(ip.to_string());
    status.host_ip = Some(HOST_IP.into());
    pod
}

/// Writes the volumes of `pod` (which has its addresses) under `dir` and builds its first
/// container's launch.
pub async fn prepare(
    ctx: &RunnerContext,
    pod: &Pod,
    container: &Container,
    dir: &Path,
) -> Result<Prepared, StartFailure> {
    let objects = PodObjects::fetch(&ctx.client, pod).await.map_err(|e| {
        StartFailure::creating(format!("cannot read the pod's Secrets and ConfigMaps: {e}"))
    })?;
    let token_refresh = volumes::materialise(&ctx.client, pod, &objects, dir)
        .await
        .map_err(|e| StartFailure::creating(format!("MountVolume.SetUp failed: {}", e.0)))?;
    let mounts = MountMap::new(container, |volume| volumes::volume_dir(pod, dir, volume));

    let (host, port) = (&ctx.api_host, ctx.api_port.to_string());
    let base = [
        ("KUBERNETES_SERVICE_HOST", host.clone()),
        ("KUBERNETES_SERVICE_PORT", port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS", port.clone()),
        ("KUBERNETES_PORT", format!("tcp://{host}:{port}")),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let mut env = launch::container_env(pod, container, &objects, &base)
        .map_err(|e| StartFailure::new("CreateContainerConfigError", e.0, false))?;
    for value in env.values_mut() {
        *value = mounts.rewrite(value);
    }
    let command = launch::command_line(container, &env);
    let home = dir.join("home");
    std::fs::create_dir_all(&home)
        .map_err(|e| StartFailure::creating(format!("cannot create {}: {e}", home.display())))?;
    let defaults = [
        ("PATH", ctx.path_env.clone()),
        ("HOSTNAME", pod.metadata.name.clone().unwrap_or_default()),
        ("HOME", home.to_string_lossy().into_owned()),
    ];
    for (key, value) in defaults {
        env.entry(key.to_owned()).or_insert(value);
    }
    if let Some(account_dir) = mounts.local(SERVICE_ACCOUNT_MOUNT) {
        let kubeconfig =
            write_kubeconfig(ctx, pod, dir, account_dir).map_err(StartFailure::creating)?;
        env.entry("KUBECONFIG".into()).or_insert(kubeconfig);
    }

    let Some((raw_program, args)) = command.split_first() else {
        return Err(StartFailure::new(
            "ErrImagePull",
            "the container has no command",
            true,
        ));
    };
    let program = resolve_program(raw_program, &ctx.config.bins, &ctx.path_env)
        .or_else(|error| {
            // A program inside one of the pod's volumes.
            let rewritten = mounts.rewrite(raw_program);
            if rewritten == *raw_program {
                Err(error)
            } else {
                resolve_program(&rewritten, &BTreeMap::new(), "")
            }
        })
        .map_err(|message| StartFailure::new("ErrImagePull", message, true))?;
    let working_dir = container
        .working_dir
        .as_deref()
        .map(|dir| PathBuf::from(mounts.rewrite(dir)))
        .filter(|dir| dir.is_dir())
        .unwrap_or(home);
    Ok(Prepared {
        launch: Launch {
            program,
            args: args.iter().map(|arg| mounts.rewrite(arg)).collect(),
            env,
            working_dir,
            log: dir.join(LOG_FILE),
        },
        token_refresh,
    })
}

/// A kubeconfig for the pod's ServiceAccount token: how a process that uses a kubeconfig
/// loader (kube's `Client::try_default`, kubectl) reaches the apiserver as the pod, since
/// in-cluster loaders read the fixed path `/var/run/secrets/...` that the runner cannot provide.
fn write_kubeconfig(
    ctx: &RunnerContext,
    pod: &Pod,
    dir: &Path,
    account_dir: &Path,
) -> Result<String, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "in-cluster", "cluster": {
            "server": ctx.api_url,
            "certificate-authority": account_dir.join("ca.crt"),
        }}],
        "users": [{ "name": "pod", "user": { "tokenFile": account_dir.join("token") } }],
        "contexts": [{ "name": "in-cluster", "context": {
            "cluster": "in-cluster", "user": "pod", "namespace": namespace,
        }}],
        "current-context": "in-cluster",
    });
    let path = dir.join("kubeconfig");
    std::fs::write(&path, config.to_string())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}
