//! The Node object: registered once, then its status conditions and its Lease in
//! `kube-node-lease` renewed every 10 s, as kubelet does (writes to the API).

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node},
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;

use super::{MANAGER, RunnerContext, status::HOST_IP};

const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Taints the node lifecycle controller would remove once the node is Ready; it is off in
/// the stack, so the runner removes them itself.
const LIFECYCLE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Registers the node and keeps it fresh until `stop`; failures are logged and retried.
pub async fn keep_registered(ctx: Arc<RunnerContext>, mut stop: watch::Receiver<bool>) {
    let ready_since = Timestamp::now();
    let mut node_uid: Option<String> = None;
    loop {
        if let Err(error) = heartbeat(&ctx, ready_since, &mut node_uid).await {
            tracing::warn!(node = ctx.config.node, %error, "node heartbeat failed; retrying");
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

async fn heartbeat(
    ctx: &RunnerContext,
    ready_since: Timestamp,
    node_uid: &mut Option<String>,
) -> Result<(), kube::Error> {
    let name = &ctx.config.node;
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let apply = PatchParams::apply(MANAGER).force();
    let uid = match node_uid {
        Some(uid) => uid.clone(),
        None => {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let node = json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": arch,
                    },
                },
            });
            let node = nodes.patch(name, &apply, &Patch::Apply(node)).await?;
            tracing::info!(node = name, "node registered");
            let uid = node.metadata.uid.unwrap_or_default();
            *node_uid = Some(uid.clone());
            uid
        }
    };
    let node = nodes
        .patch_status(name, &apply, &Patch::Apply(node_status(ctx, ready_since)))
        .await?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    if taints
        .iter()
        .any(|t| LIFECYCLE_TAINTS.contains(&t.key.as_str()))
    {
        let kept: Vec<_> = taints
            .into_iter()
            .filter(|t| !LIFECYCLE_TAINTS.contains(&t.key.as_str()))
            .collect();
        let patch = json!({ "spec": { "taints": kept } });
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
    }
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": name, "uid": uid }],
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now()),
        },
    });
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    leases.patch(name, &apply, &Patch::Apply(lease)).await?;
    Ok(())
}

fn node_status(ctx: &RunnerContext, ready_since: Timestamp) -> serde_json::Value {
    let now = Time(Timestamp::now());
    let since = Time(ready_since);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since,
        })
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1).map(|kib| format!("{kib}Ki"))
        })
        .unwrap_or_else(|| "1Gi".into());
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let resources = json!({ "cpu": cpus.to_string(), "memory": memory, "pods": "253" });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": ctx.config.node },
        "status": {
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "streamjob-pod-runner is posting ready status"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": HOST_IP },
                { "type": "Hostname", "address": ctx.config.node },
            ],
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "architecture": std::env::consts::ARCH,
                "bootID": read("/proc/sys/kernel/random/boot_id"),
                "containerRuntimeVersion": format!("streamjob-pod-runner://{}", env!("CARGO_PKG_VERSION")),
                "kernelVersion": read("/proc/sys/kernel/osrelease"),
                "kubeProxyVersion": "",
                "kubeletVersion": format!("v{}-streamjob-pod-runner", env!("CARGO_PKG_VERSION")),
                "machineID": read("/etc/machine-id"),
                "operatingSystem": "linux",
                "osImage": "local processes (streamjob-pod-runner)",
                "systemUUID": "",
            },
        },
    })
}
