//! `streamjob-pod-runner`, a test-only kubelet stand-in for the local stack: it registers a
//! Node, binds the Pods matching its selector to it (as a scheduler would), runs each bound
//! Pod's first container as a local process and reports the truth about it in the Pod's
//! status. What it fakes, and how: docs/pod-runner.md.

mod binder;
pub mod harness;
mod ip_pool;
mod launch;
mod node;
mod objects;
mod pod;
mod probe;
mod process;
mod setup;
mod status;
mod volumes;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::{sync::watch, task::JoinHandle};

use self::ip_pool::IpPool;

/// Field manager of every write the runner makes.
pub const MANAGER: &str = "streamjob-pod-runner";

/// Name of the file, in a pod's directory, that receives its process's stdout and stderr.
pub const LOG_FILE: &str = "container.log";

/// The default label selector of the pods the runner binds.
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/managed-by=streamjob-operator";

/// Where in-cluster clients look for the ServiceAccount token, CA and namespace.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How the runner is set up (the command line).
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Name of the Node it registers and runs pods for.
    pub node: String,
    /// Label selector of the unbound pods it binds to its node.
    pub selector: String,
    /// Local executables standing in for container paths (or images), by container path.
    pub bins: BTreeMap<String, PathBuf>,
    /// Directory of the per-pod directories.
    pub state_dir: PathBuf,
    /// The /24 inside 127.0.0.0/8 that pod IPs come from.
    pub pod_cidr: String,
    /// Bind only pods of this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
}

/// The directory of pod `namespace/name`: its log, volumes, home and kubeconfig.
pub fn pod_dir(state_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    state_dir.join(format!("{namespace}_{name}"))
}

/// Why the runner could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The pod CIDR is not a /24 of 127.0.0.0/8.
    #[error("{0}")]
    PodCidr(String),
    /// The state directory cannot be created.
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The apiserver URL has no host.
    #[error("the kubeconfig's server URL {0} has no host")]
    ClusterUrl(String),
    /// No client could be built from the configuration.
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// What every part of the runner shares.
struct RunnerContext {
    client: Client,
    config: RunnerConfig,
    ip_pool: Mutex<IpPool>,
    /// The apiserver URL, host and port, as the runner's own kubeconfig names them.
    api_url: String,
    api_host: String,
    api_port: u16,
    /// `PATH` given to the processes (the runner's own: the "image" is this machine).
    path_env: String,
}

/// Runs the node until `shutdown` completes, then stops every process it started (leaving
/// the pods as they are, as a kubelet that died would).
pub async fn run(
    kube_config: kube::Config,
    config: RunnerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunnerError> {
    let ip_pool = IpPool::parse(&config.pod_cidr).map_err(RunnerError::PodCidr)?;
    std::fs::create_dir_all(&config.state_dir).map_err(|source| RunnerError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let url = kube_config.cluster_url.clone();
    let api_host = url
        .host()
        .ok_or_else(|| RunnerError::ClusterUrl(url.to_string()))?
        .trim_matches(['[', ']'])
        .to_owned();
    let api_port = url.port_u16().unwrap_or(443);
    let client = Client::try_from(kube_config).map_err(RunnerError::Client)?;
    let ctx = Arc::new(RunnerContext {
        client,
        api_url: url.to_string().trim_end_matches('/').to_owned(),
        api_host,
        api_port,
        path_env: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ip_pool: Mutex::new(ip_pool),
        config,
    });
    tracing::info!(
        node = ctx.config.node,
        selector = ctx.config.selector,
        state_dir = %ctx.config.state_dir.display(),
        pod_cidr = ctx.config.pod_cidr,
        "pod runner starting"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let node = tokio::spawn(node::keep_registered(ctx.clone(), stop_rx.clone()));
    let binder = tokio::spawn(binder::bind_pods(ctx.clone(), stop_rx.clone()));
    let pods = tokio::spawn(run_bound_pods(ctx.clone(), stop_rx));
    shutdown.await;
    tracing::info!("shutting down: stopping every process, leaving the pods as they are");
    let _ = stop_tx.send(true);
    for task in [node, binder, pods] {
        if let Err(error) = task.await {
            tracing::error!(%error, "a runner task failed");
        }
    }
    tracing::info!("pod runner stopped");
    Ok(())
}

/// A pod's worker task and the channel that brings it the pod's latest state (`None`: gone).
struct PodHandle {
    updates: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

/// The kubelet loop: one worker per pod bound to the node (whatever its labels, as on a real
/// node), told about every change of its pod and about its pod vanishing.
async fn run_bound_pods(ctx: Arc<RunnerContext>, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let selector = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.config.node));
    let mut events = watcher(api, selector).default_backoff().boxed();
    let mut pods: HashMap<String, PodHandle> = HashMap::new();
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = events.next() => event,
        };
        let gone = |pods: &HashMap<String, PodHandle>, uid: &str| {
            if let Some(handle) = pods.get(uid) {
                handle.updates.send_replace(None);
            }
        };
        match event {
            None => break,
            Some(Err(error)) => tracing::warn!(%error, "watching the node's pods failed; retrying"),
            Some(Ok(watcher::Event::Init)) => listed = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitApply(pod))) => {
                if let (Some(seen), Some(uid)) = (listed.as_mut(), pod.metadata.uid.clone()) {
                    seen.insert(uid);
                }
                upsert(&ctx, &mut pods, pod, &stop);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                // Pods deleted while the watch was down.
                let seen = listed.take().unwrap_or_default();
                for uid in pods.keys().filter(|uid| !seen.contains(*uid)) {
                    gone(&pods, uid);
                }
            }
            Some(Ok(watcher::Event::Apply(pod))) => upsert(&ctx, &mut pods, pod, &stop),
            Some(Ok(watcher::Event::Delete(pod))) => {
                if let Some(uid) = &pod.metadata.uid {
                    gone(&pods, uid);
                }
            }
        }
        pods.retain(|_, handle| !handle.task.is_finished());
    }
    for (_, handle) in pods {
        let _ = handle.task.await;
    }
}

/// Passes a pod's new state to its worker, starting one for a pod seen for the first time.
fn upsert(
    ctx: &Arc<RunnerContext>,
    pods: &mut HashMap<String, PodHandle>,
    pod: Pod,
    stop: &watch::Receiver<bool>,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(handle) = pods.get(&uid) {
        handle.updates.send_replace(Some(pod));
        return;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let finished = matches!(phase, Some("Succeeded" | "Failed"));
    if finished && pod.metadata.deletion_timestamp.is_none() {
        return;
    }
    let (updates, receiver) = watch::channel(Some(pod.clone()));
    let task = pod::PodWorker::spawn(ctx.clone(), pod, receiver, stop.clone());
    pods.insert(uid, PodHandle { updates, task });
}
