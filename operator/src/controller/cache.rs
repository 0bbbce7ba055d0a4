//! Cache: metadata-only watches of every kind of child the operator makes, so that reconcile
//! neither lists a job's children to prune them nor re-applies a child that nothing changed.
//!
//! A server-side apply is skipped only when both hold: the desired object is exactly what
//! this process last applied under that name, and the watched object still carries the
//! resourceVersion that apply returned, so nobody (a user, another controller, a deletion)
//! has touched it since. Anything else applies as before: drift is corrected as soon as the
//! watch shows it. At 1000 jobs the applies of unchanged children were most of the operator's
//! API traffic (docs/benchmarks.md).
//!
//! The same rule serves the plan ConfigMap to observe: while the watched object still has the
//! resourceVersion of this process's last apply, its data is what that apply returned, and a
//! GET would return the same; otherwise observe reads it from the API server as before.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex},
};

use futures::{Stream, TryStreamExt as _};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};

/// A kind of child object, with its cache.
pub trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The cache of this kind's objects.
    fn cached(cache: &ChildCache) -> &Store<PartialObjectMeta<Self>>;

    /// What of an applied object to keep for later reads (a ConfigMap's data).
    fn kept(&self) -> Option<BTreeMap<String, String>> {
        None
    }
}

macro_rules! child {
    ($kind:ty, $field:ident) => {
        impl Child for $kind {
            fn cached(cache: &ChildCache) -> &Store<PartialObjectMeta<Self>> {
                &cache.$field
            }
        }
    };
}
child!(Deployment, deployments);
child!(Service, services);
child!(ServiceAccount, service_accounts);
child!(Role, roles);
child!(RoleBinding, role_bindings);

impl Child for ConfigMap {
    fn cached(cache: &ChildCache) -> &Store<PartialObjectMeta<Self>> {
        &cache.config_maps
    }

    fn kept(&self) -> Option<BTreeMap<String, String>> {
        Some(self.data.clone().unwrap_or_default())
    }
}

/// Which object an apply wrote.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    kind: &'static str,
    namespace: String,
    name: String,
}

impl Key {
    fn new<K: Child>(namespace: &str, name: &str) -> Self {
        Self {
            kind: std::any::type_name::<K>(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// What the last apply of one object sent and got back.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    digest: u64,
    resource_version: String,
    kept: Option<BTreeMap<String, String>>,
}

/// Last applies by object; an object's entry goes when the watch sees it deleted.
type AppliedMap = Arc<Mutex<HashMap<Key, Applied>>>;

/// Metadata of every operator-managed child, by kind, and the last apply of each.
pub struct ChildCache {
    deployments: Store<PartialObjectMeta<Deployment>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    services: Store<PartialObjectMeta<Service>>,
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    roles: Store<PartialObjectMeta<Role>>,
    role_bindings: Store<PartialObjectMeta<RoleBinding>>,
    applied: AppliedMap,
}

/// The watch streams that fill a [`ChildCache`]; the controller must poll every one.
pub struct ChildStreams<D, C, S, A, R, B> {
    /// Deployments (they trigger their owner's reconcile).
    pub deployments: D,
    /// ConfigMaps (they trigger their owner's reconcile).
    pub config_maps: C,
    /// Services (they trigger their owner's reconcile).
    pub services: S,
    /// ServiceAccounts (cache only).
    pub service_accounts: A,
    /// Roles (cache only).
    pub roles: R,
    /// RoleBindings (cache only).
    pub role_bindings: B,
}

/// The child streams' item: a touched object's metadata.
pub type Touched<K> = Result<PartialObjectMeta<K>, watcher::Error>;

/// A [`ChildCache`] and the streams that fill it: metadata-only watches of `config` (the
/// operator's managed-by label) in `namespace`, or in every namespace.
#[allow(clippy::type_complexity)]
pub fn child_cache(
    client: &Client,
    namespace: Option<&str>,
    config: &watcher::Config,
) -> (
    ChildCache,
    ChildStreams<
        impl Stream<Item = Touched<Deployment>> + Send + use<>,
        impl Stream<Item = Touched<ConfigMap>> + Send + use<>,
        impl Stream<Item = Touched<Service>> + Send + use<>,
        impl Stream<Item = Touched<ServiceAccount>> + Send + use<>,
        impl Stream<Item = Touched<Role>> + Send + use<>,
        impl Stream<Item = Touched<RoleBinding>> + Send + use<>,
    >,
) {
    let applied = AppliedMap::default();
    let (deployments, deployment_stream) = watch(client, namespace, config, &applied);
    let (config_maps, config_map_stream) = watch(client, namespace, config, &applied);
    let (services, service_stream) = watch(client, namespace, config, &applied);
    let (service_accounts, service_account_stream) = watch(client, namespace, config, &applied);
    let (roles, role_stream) = watch(client, namespace, config, &applied);
    let (role_bindings, role_binding_stream) = watch(client, namespace, config, &applied);
    (
        ChildCache {
            deployments,
            config_maps,
            services,
            service_accounts,
            roles,
            role_bindings,
            applied,
        },
        ChildStreams {
            deployments: deployment_stream,
            config_maps: config_map_stream,
            services: service_stream,
            service_accounts: service_account_stream,
            roles: role_stream,
            role_bindings: role_binding_stream,
        },
    )
}

fn watch<K: Child>(
    client: &Client,
    namespace: Option<&str>,
    config: &watcher::Config,
    applied: &AppliedMap,
) -> (
    Store<PartialObjectMeta<K>>,
    impl Stream<Item = Touched<K>> + Send + use<K>,
) {
    let api: Api<PartialObjectMeta<K>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let applied = applied.clone();
    let events = watcher(api, config.clone())
        .modify(|meta| meta.managed_fields_mut().clear())
        .map_ok(move |event| {
            if let watcher::Event::Delete(meta) = &event {
                let key = Key::new::<K>(&meta.namespace().unwrap_or_default(), &meta.name_any());
                lock(&applied).remove(&key);
            }
            event
        });
    let stream = reflector::reflector(writer, events).touched_objects();
    (store, stream)
}

fn lock(applied: &AppliedMap) -> std::sync::MutexGuard<'_, HashMap<Key, Applied>> {
    applied.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the cache cannot answer: its watch stopped before it listed anything (only while
/// the controller shuts down).
#[derive(Debug, thiserror::Error)]
#[error("the {0} cache stopped before it was filled")]
pub struct CacheClosed(pub &'static str);

impl ChildCache {
    /// Whether applying `object` in `namespace` would send exactly what the last apply sent,
    /// to an object nobody has changed since. The digest goes to [`Self::applied`].
    pub fn unchanged<K: Child>(&self, namespace: &str, object: &K) -> (bool, u64) {
        let digest = digest(object);
        let unchanged = self
            .untouched::<K, _>(namespace, &object.name_any(), |last| last.digest == digest)
            .unwrap_or(false);
        (unchanged, digest)
    }

    /// The data of ConfigMap `name` as this process's last apply returned it, if the watch
    /// shows nobody has changed or deleted it since.
    pub fn config_map_data(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.untouched::<ConfigMap, _>(namespace, name, |last| last.kept.clone())
            .flatten()
    }

    /// `f` of the last apply of `K` `name`, if the watched object still has the
    /// resourceVersion that apply returned.
    fn untouched<K: Child, T>(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&Applied) -> T,
    ) -> Option<T> {
        let key = Key::new::<K>(namespace, name);
        let applied = lock(&self.applied);
        let last = applied.get(&key)?;
        let live = K::cached(self).get(&ObjectRef::new(name).within(namespace))?;
        (live.resource_version().as_deref() == Some(last.resource_version.as_str()))
            .then(|| f(last))
    }

    /// Records that the object applied with `digest` now has `applied`'s resourceVersion.
    pub fn applied<K: Child>(&self, namespace: &str, digest: u64, applied: &K) {
        let key = Key::new::<K>(namespace, &applied.name_any());
        match applied.resource_version() {
            Some(resource_version) => {
                lock(&self.applied).insert(
                    key,
                    Applied {
                        digest,
                        resource_version,
                        kept: applied.kept(),
                    },
                );
            }
            None => {
                lock(&self.applied).remove(&key);
            }
        }
    }

    /// Names of the `K` objects in `namespace` that carry every label of `selector` and
    /// are controlled or owned by `owner_uid`, once the cache has listed them.
    pub async fn owned<K: Child>(
        &self,
        namespace: &str,
        selector: &std::collections::BTreeMap<String, String>,
        owner_uid: &str,
    ) -> Result<Vec<String>, CacheClosed> {
        let store = K::cached(self);
        store
            .wait_until_ready()
            .await
            .map_err(|_| CacheClosed(std::any::type_name::<K>()))?;
        let mut names: Vec<String> = store
            .state()
            .iter()
            .filter(|meta| {
                meta.namespace().as_deref() == Some(namespace)
                    && selector
                        .iter()
                        .all(|(k, v)| meta.labels().get(k) == Some(v))
                    && meta.owner_references().iter().any(|o| o.uid == owner_uid)
            })
            .map(|meta| meta.name_any())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A digest of what an apply of `object` sends.
fn digest<K: Serialize>(object: &K) -> u64 {
    // An object that does not serialise cannot have been applied, so it is never skipped.
    let mut hasher = DefaultHasher::new();
    serde_json::to_vec(object)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use kube::{core::PartialObjectMetaExt as _, runtime::reflector::store::Writer};

    use super::*;

    /// A cache whose ConfigMap and Deployment watches are the returned writers.
    fn cache() -> (
        ChildCache,
        Writer<PartialObjectMeta<ConfigMap>>,
        Writer<PartialObjectMeta<Deployment>>,
    ) {
        let (config_maps, cm_writer) = reflector::store();
        let (deployments, deployment_writer) = reflector::store();
        let cache = ChildCache {
            deployments,
            config_maps,
            services: reflector::store().0,
            service_accounts: reflector::store().0,
            roles: reflector::store().0,
            role_bindings: reflector::store().0,
            applied: AppliedMap::default(),
        };
        (cache, cm_writer, deployment_writer)
    }

    fn plan(text: &str, resource_version: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("clicks-plan".into());
        cm.metadata.namespace = Some("ns".into());
        cm.metadata.resource_version = Some(resource_version.into());
        cm.data = Some(BTreeMap::from([("plan.yaml".into(), text.into())]));
        cm
    }

    fn seen<K: Child>(writer: &mut Writer<PartialObjectMeta<K>>, object: &K) {
        let meta = object.meta().clone().into_response_partial();
        writer.apply_watcher_event(&watcher::Event::Apply(meta));
    }

    fn deleted<K: Child>(writer: &mut Writer<PartialObjectMeta<K>>, object: &K) {
        let meta = object.meta().clone().into_response_partial();
        writer.apply_watcher_event(&watcher::Event::Delete(meta));
    }

    #[test]
    fn an_object_never_applied_is_applied() {
        let (cache, mut writer, _) = cache();
        let desired = plan("epoch: 1", "");
        seen(&mut writer, &plan("epoch: 1", "7"));
        assert!(!cache.unchanged("ns", &desired).0);
        assert_eq!(cache.config_map_data("ns", "clicks-plan"), None);
    }

    #[test]
    fn the_same_object_untouched_since_its_apply_is_skipped() {
        let (cache, mut writer, _) = cache();
        let desired = plan("epoch: 1", "");
        let (_, digest) = cache.unchanged("ns", &desired);
        let returned = plan("epoch: 1", "7");
        cache.applied("ns", digest, &returned);
        // Until the watch shows the apply, the object is applied again.
        assert!(!cache.unchanged("ns", &desired).0);
        seen(&mut writer, &returned);
        assert!(cache.unchanged("ns", &desired).0);
        assert_eq!(
            cache.config_map_data("ns", "clicks-plan"),
            returned.data.clone()
        );
    }

    #[test]
    fn a_changed_desired_object_is_applied() {
        let (cache, mut writer, _) = cache();
        let (_, digest) = cache.unchanged("ns", &plan("epoch: 1", ""));
        let returned = plan("epoch: 1", "7");
        cache.applied("ns", digest, &returned);
        seen(&mut writer, &returned);
        assert!(!cache.unchanged("ns", &plan("epoch: 2", "")).0);
    }

    #[test]
    fn an_object_someone_else_changed_or_deleted_is_applied_and_read_again() {
        let (cache, mut writer, _) = cache();
        let desired = plan("epoch: 1", "");
        let (_, digest) = cache.unchanged("ns", &desired);
        cache.applied("ns", digest, &plan("epoch: 1", "7"));
        seen(&mut writer, &plan("edited by hand", "8"));
        assert!(!cache.unchanged("ns", &desired).0);
        assert_eq!(cache.config_map_data("ns", "clicks-plan"), None);

        deleted(&mut writer, &plan("edited by hand", "8"));
        assert!(!cache.unchanged("ns", &desired).0);
        assert_eq!(cache.config_map_data("ns", "clicks-plan"), None);
    }

    #[test]
    fn kinds_and_namespaces_do_not_mix() {
        let (cache, mut cm_writer, mut deployment_writer) = cache();
        let desired = plan("epoch: 1", "");
        let (_, digest) = cache.unchanged("ns", &desired);
        cache.applied("ns", digest, &plan("epoch: 1", "7"));
        seen(&mut cm_writer, &plan("epoch: 1", "7"));
        assert!(!cache.unchanged("other", &desired).0);

        let mut deployment = Deployment::default();
        deployment.metadata.name = Some("clicks-plan".into());
        deployment.metadata.namespace = Some("ns".into());
        deployment.metadata.resource_version = Some("7".into());
        seen(&mut deployment_writer, &deployment);
        assert!(!cache.unchanged("ns", &deployment).0);
    }

    #[tokio::test]
    async fn owned_children_are_found_by_labels_and_owner() {
        let (cache, mut writer, _) = cache();
        let selector = BTreeMap::from([("streamjob.dev/job".to_owned(), "clicks".to_owned())]);
        let child = |name: &str, job: &str, owner: &str| {
            let mut cm = plan("", "1");
            cm.metadata.name = Some(name.into());
            cm.metadata.labels = Some(BTreeMap::from([(
                "streamjob.dev/job".to_owned(),
                job.to_owned(),
            )]));
            cm.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    uid: owner.into(),
                    ..Default::default()
                },
            ]);
            cm
        };
        // The watch's initial list fills the store and makes it ready.
        writer.apply_watcher_event(&watcher::Event::Init);
        for cm in [
            child("clicks-plan", "clicks", "uid-1"),
            child("clicks-old", "clicks", "uid-1"),
            child("orders-plan", "orders", "uid-2"),
            child("clicks-stranger", "clicks", "uid-3"),
        ] {
            let meta = cm.metadata.into_response_partial();
            writer.apply_watcher_event(&watcher::Event::InitApply(meta));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let found = cache
            .owned::<ConfigMap>("ns", &selector, "uid-1")
            .await
            .unwrap();
        assert_eq!(found, ["clicks-old", "clicks-plan"]);
    }
}
