//! Deletion: children go with the job through owner references (the garbage collector);
//! checkpoints stay unless the spec asks to delete them, which is what the finalizer is for.
//! The finalizer is only present on jobs that ask, so deleting any other job never waits
//! for the operator.

use std::time::Duration;

use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::controller::Action,
};
use object_store::ObjectStoreExt as _;
use serde_json::json;
use streamjob_api::StreamJob;
use streamjob_worker::{paths::JobPaths, storage};

use kube::runtime::events::EventType;

use super::{
    Context, Error,
    names::{CLEANUP_FINALIZER, ChildNames, JOB_LABEL, MANAGER},
    status::Transition,
};

/// Adds the finalizer to a job that wants its checkpoints deleted with it, and removes it
/// from a job that no longer does.
pub async fn ensure_finalizer(job: &StreamJob, ctx: &Context) -> Result<(), Error> {
    let wanted = job.spec.checkpoint.delete_on_job_deletion;
    let present = job.finalizers().iter().any(|f| f == CLEANUP_FINALIZER);
    if wanted != present {
        set_finalizer(job, ctx, wanted).await?;
    }
    Ok(())
}

/// A job being deleted: delete its checkpoints if asked, then let it go.
pub async fn on_deletion(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    if !job.finalizers().iter().any(|f| f == CLEANUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().unwrap_or_default();
    // The finalizer holds the job, and with it the garbage collection of its Deployment:
    // stop the workers first, or their final checkpoints would land after the deletion.
    let name = job.name_any();
    let workers_left = ctx.pods.state().iter().any(|pod| {
        pod.namespace().as_deref() == Some(namespace.as_str())
            && pod.labels().get(JOB_LABEL) == Some(&name)
    });
    if workers_left {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
        let workers = ChildNames::new(&name).workers();
        match deployments
            .delete(&workers, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    what: "worker Deployment deletion",
                    source,
                });
            }
        }
        tracing::info!("waiting for the workers to stop before deleting checkpoints");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let url = &job.spec.checkpoint.storage;
    if url.starts_with("file://") {
        tracing::warn!(%url, "file:// checkpoints live in the worker pods; nothing to delete here");
    } else {
        let settings = match &job.spec.checkpoint.secret_ref {
            Some(secret) => {
                match super::observe::secret_values(ctx, &namespace, &secret.name).await? {
                    Some(settings) => settings,
                    None => {
                        // Deleting a namespace deletes the Secret alongside the job; waiting for
                        // it would keep the namespace terminating forever.
                        let note = format!(
                            "checkpoints under {url} were not deleted: the storage Secret {} is gone",
                            secret.name
                        );
                        super::publish(
                            ctx,
                            job,
                            Transition {
                                type_: EventType::Warning,
                                reason: "CheckpointsNotDeleted".into(),
                                note,
                            },
                        )
                        .await;
                        set_finalizer(job, ctx, false).await?;
                        return Ok(Action::await_change());
                    }
                }
            }
            None => Default::default(),
        };
        let storage =
            storage::open_with(url, &settings).map_err(|e| Error::Cleanup(e.to_string()))?;
        let paths = JobPaths::new(&storage.prefix, &namespace, &job.name_any());
        let objects: Vec<_> = storage
            .store
            .list(Some(paths.root()))
            .try_collect()
            .await
            .map_err(|e| Error::Cleanup(e.to_string()))?;
        for object in &objects {
            storage
                .store
                .delete(&object.location)
                .await
                .map_err(|e| Error::Cleanup(e.to_string()))?;
        }
        tracing::info!(
            deleted = objects.len(),
            "deleted the job's checkpoints and savepoints"
        );
    }
    set_finalizer(job, ctx, false).await?;
    Ok(Action::requeue(Duration::from_secs(5)))
}

async fn set_finalizer(job: &StreamJob, ctx: &Context, present: bool) -> Result<(), Error> {
    let finalizers: Vec<&str> = if present {
        vec![CLEANUP_FINALIZER]
    } else {
        vec![]
    };
    let patch = json!({
        "apiVersion": StreamJob::api_version(&()),
        "kind": StreamJob::kind(&()),
        "metadata": { "name": job.name_any(), "finalizers": finalizers },
    });
    let jobs: Api<StreamJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    jobs.patch(
        &job.name_any(),
        &PatchParams::apply(MANAGER),
        &Patch::Apply(patch),
    )
    .await
    .map_err(Error::Finalizer)?;
    Ok(())
}
