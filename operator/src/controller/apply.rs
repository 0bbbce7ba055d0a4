//! Apply: server-side apply of a job's children under one field manager, and deletion of
//! labelled children that are no longer desired (writes).

use std::collections::BTreeSet;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    Error,
    desired::Children,
    names::{ChildNames, MANAGED_BY_LABEL, MANAGER},
};

/// Applies every child, the RBAC and plan before the Deployment that needs them.
pub async fn apply(client: &Client, namespace: &str, children: &Children) -> Result<(), Error> {
    apply_one(
        client,
        namespace,
        &children.service_account,
        "worker ServiceAccount",
    )
    .await?;
    apply_one(client, namespace, &children.role, "worker Role").await?;
    apply_one(
        client,
        namespace,
        &children.role_binding,
        "worker RoleBinding",
    )
    .await?;
    apply_one(client, namespace, &children.plan, "plan ConfigMap").await?;
    apply_one(client, namespace, &children.service, "worker Service").await?;
    apply_one(client, namespace, &children.deployment, "worker Deployment").await?;
    Ok(())
}

async fn apply_one<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    what: &'static str,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply { what, source })?;
    Ok(())
}

/// Deletes children of `job` (by label and owner uid) that `children` no longer contains.
pub async fn prune(
    client: &Client,
    namespace: &str,
    job_uid: &str,
    names: &ChildNames,
    children: &Children,
) -> Result<usize, Error> {
    let mut deleted = 0;
    deleted += prune_kind(
        client,
        namespace,
        job_uid,
        names,
        &children.deployment,
        "Deployment",
    )
    .await?;
    deleted += prune_kind(
        client,
        namespace,
        job_uid,
        names,
        &children.plan,
        "ConfigMap",
    )
    .await?;
    deleted += prune_kind(
        client,
        namespace,
        job_uid,
        names,
        &children.service,
        "Service",
    )
    .await?;
    deleted += prune_kind(
        client,
        namespace,
        job_uid,
        names,
        &children.service_account,
        "ServiceAccount",
    )
    .await?;
    deleted += prune_kind(client, namespace, job_uid, names, &children.role, "Role").await?;
    deleted += prune_kind(
        client,
        namespace,
        job_uid,
        names,
        &children.role_binding,
        "RoleBinding",
    )
    .await?;
    Ok(deleted)
}

/// Deletes objects of `desired`'s kind that carry the job's labels and owner but are not
/// `desired` itself.
async fn prune_kind<K>(
    client: &Client,
    namespace: &str,
    job_uid: &str,
    names: &ChildNames,
    desired: &K,
    what: &'static str,
) -> Result<usize, Error>
where
    K: Resource<Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{},{MANAGED_BY_LABEL}={MANAGER}", names.selector_string());
    let found = api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Prune { what, source })?;
    let keep: BTreeSet<String> = BTreeSet::from([desired.name_any()]);
    let mut deleted = 0;
    for object in found.items {
        let owned = object.owner_references().iter().any(|o| o.uid == job_uid);
        let name = object.name_any();
        if owned && !keep.contains(&name) {
            tracing::info!(kind = what, %name, "deleting a child that is no longer desired");
            api.delete(&name, &DeleteParams::background())
                .await
                .map_err(|source| Error::Prune { what, source })?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
