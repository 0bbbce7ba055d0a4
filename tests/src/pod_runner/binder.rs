//! The scheduler's part: binds each unbound pod matching the selector to the runner's node
//! through the `pods/binding` subresource (writes to the API).

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;

use super::RunnerContext;

/// Binds pods as they appear, until `stop`.
pub async fn bind_pods(ctx: Arc<RunnerContext>, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = match &ctx.config.namespace {
        Some(namespace) => Api::namespaced(ctx.client.clone(), namespace),
        None => Api::all(ctx.client.clone()),
    };
    let selector = watcher::Config::default()
        .labels(&ctx.config.selector)
        .fields("spec.nodeName=");
    let mut pods = watcher(api, selector)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        let pod = tokio::select! {
            _ = stop.changed() => return,
            pod = pods.next() => pod,
        };
        match pod {
            None => return,
            Some(Ok(pod)) => bind(&ctx, &pod).await,
            Some(Err(error)) => tracing::warn!(%error, "watching unbound pods failed; retrying"),
        }
    }
}

async fn bind(ctx: &RunnerContext, pod: &Pod) {
    let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return;
    };
    if bound || pod.metadata.deletion_timestamp.is_some() {
        return;
    }
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(ctx.config.node.clone()),
            ..Default::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    for attempt in 1..=5 {
        let result = api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await;
        match result {
            Ok(_) => {
                tracing::info!(namespace, pod = name, node = ctx.config.node, "pod bound");
                return;
            }
            // Already bound (by another runner, or an earlier attempt) or gone: nothing to do.
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => return,
            Err(error) => {
                tracing::warn!(namespace, pod = name, attempt, %error, "binding the pod failed");
                tokio::time::sleep(Duration::from_secs(attempt)).await;
            }
        }
    }
}
