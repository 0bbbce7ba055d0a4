//! Apply: server-side apply of a job's children under one field manager, and deletion of
//! labelled children that are no longer desired (writes). The child cache spares the applies
//! that would change nothing and the list calls of pruning.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};

use super::{
    Error,
    cache::{Child, ChildCache},
    desired::Children,
    names::{ChildNames, MANAGER},
};

/// Applies every child in two rounds of concurrent applies: what nothing else refers to
/// (ServiceAccount, Role, plan, Service), then what refers to them (the RoleBinding names
/// the Role, which the API server's escalation check reads; the Deployment's pods need the
/// ServiceAccount and the plan). A child that is unchanged since this process applied it,
/// and untouched since, is not sent again.
pub async fn apply(
    client: &Client,
    cache: &ChildCache,
    namespace: &str,
    children: &Children,
) -> Result<(), Error> {
    let apply = Applier {
        client,
        cache,
        namespace,
    };
    futures::try_join!(
        apply.one(&children.service_account, "worker ServiceAccount"),
        apply.one(&children.role, "worker Role"),
        apply.one(&children.plan, "plan ConfigMap"),
        apply.one(&children.service, "worker Service"),
    )?;
    futures::try_join!(
        apply.one(&children.role_binding, "worker RoleBinding"),
        apply.one(&children.deployment, "worker Deployment"),
    )?;
    Ok(())
}

struct Applier<'a> {
    client: &'a Client,
    cache: &'a ChildCache,
    namespace: &'a str,
}

impl Applier<'_> {
    async fn one<K: Child>(&self, object: &K, what: &'static str) -> Result<(), Error> {
        let (unchanged, digest) = self.cache.unchanged(self.namespace, object);
        if unchanged {
            return Ok(());
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let applied = api
            .patch(
                &object.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map_err(|source| Error::Apply { what, source })?;
        self.cache.applied(self.namespace, digest, &applied);
        Ok(())
    }
}

/// Deletes children of `job` (by label and owner uid) that `children` no longer contains.
pub async fn prune(
    client: &Client,
    cache: &ChildCache,
    namespace: &str,
    job_uid: &str,
    names: &ChildNames,
    children: &Children,
) -> Result<usize, Error> {
    let prune = Pruner {
        client,
        cache,
        namespace,
        job_uid,
        names,
    };
    Ok(prune.kind(&children.deployment, "Deployment").await?
        + prune.kind(&children.plan, "ConfigMap").await?
        + prune.kind(&children.service, "Service").await?
        + prune
            .kind(&children.service_account, "ServiceAccount")
            .await?
        + prune.kind(&children.role, "Role").await?
        + prune.kind(&children.role_binding, "RoleBinding").await?)
}

struct Pruner<'a> {
    client: &'a Client,
    cache: &'a ChildCache,
    namespace: &'a str,
    job_uid: &'a str,
    names: &'a ChildNames,
}

impl Pruner<'_> {
    /// Deletes objects of `desired`'s kind that carry the job's labels and owner but are not
    /// `desired` itself (found in the child cache, which holds only operator-managed objects).
    async fn kind<K: Child>(&self, desired: &K, what: &'static str) -> Result<usize, Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.namespace);
        let found = self
            .cache
            .owned::<K>(self.namespace, &self.names.selector(), self.job_uid)
            .await
            .map_err(|closed| Error::Cache(closed.to_string()))?;
        let keep = desired.name_any();
        let mut deleted = 0;
        for name in found.into_iter().filter(|name| *name != keep) {
            tracing::info!(kind = what, %name, "deleting a child that is no longer desired");
            api.delete(&name, &DeleteParams::background())
                .await
                .map_err(|source| Error::Prune { what, source })?;
            deleted += 1;
        }
        Ok(deleted)
    }
}

/// The annotation the ReplicaSet controller reads to pick which pods a scale-down removes.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Marks `pods` as the cheapest to delete, so that the ReplicaSet removes exactly those when
/// the Deployment shrinks (a merge patch of one annotation: idempotent).
pub async fn mark_for_removal(
    client: &Client,
    namespace: &str,
    pods: &[String],
) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "metadata": { "annotations": { DELETION_COST: "-1000" } } });
    for pod in pods {
        match api
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            // Already gone: nothing left to choose.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    what: "pod deletion cost",
                    source,
                });
            }
        }
    }
    Ok(())
}
