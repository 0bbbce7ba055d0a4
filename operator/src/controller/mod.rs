//! The StreamJob controller: reconcile is a pipeline of named phases.
//!
//! observe (reads) → validate (pure) → plan and desired (pure) → apply (server-side apply)
//! → status (pure, then written with server-side apply). Errors split into a bad spec (a
//! `Stalled` condition; wait for a change) and transient faults (requeue with backoff).

pub mod apply;
pub mod cache;
pub mod cleanup;
pub mod desired;
mod malformed;
pub mod names;
pub mod observe;
pub mod planning;
pub mod rescale;
pub mod savepoint;
pub mod status;
pub mod validate;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt as _,
        controller::{Action, Config as ControllerConfig},
        events::{Event as KubeEvent, Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use streamjob_api::{StreamJob, StreamJobSpec};
use streamjob_worker::plan::Plan;
use thiserror::Error;

use self::{
    cache::ChildCache,
    desired::{DesiredError, WorkerDefaults},
    names::{ChildNames, JOB_LABEL, MANAGED_BY_LABEL, MANAGER},
    planning::{PlanInput, next_plan},
    rescale::{Decision, Operation, RescaleInput},
    status::{StatusInput, Transition},
};
use crate::{kafka::KafkaClients, telemetry::Metrics};

/// How soon a job that is not ready yet, with no operation in flight, is looked at again
/// when no watch event comes first.
const NOT_READY_RECHECK: Duration = Duration::from_secs(15);

/// Why a job cannot run until its spec or environment changes (a `Stalled` condition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// Short CamelCase reason.
    pub reason: String,
    /// What is wrong, naming the field or object.
    pub message: String,
}

impl Blocker {
    /// A blocker with `reason` and `message`.
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// A transient failure of one reconcile (retried with backoff).
#[derive(Debug, Error)]
pub enum Error {
    /// Reading an object failed.
    #[error("failed to read the {what}: {source}")]
    Read {
        /// Which object.
        what: &'static str,
        /// API error.
        source: kube::Error,
    },
    /// Building a desired object failed.
    #[error(transparent)]
    Desired(#[from] DesiredError),
    /// Server-side apply of a child failed.
    #[error("failed to apply the {what}: {source}")]
    Apply {
        /// Which object.
        what: &'static str,
        /// API error.
        source: kube::Error,
    },
    /// Deleting an undesired child failed.
    #[error("failed to prune {what}s: {source}")]
    Prune {
        /// Which kind.
        what: &'static str,
        /// API error.
        source: kube::Error,
    },
    /// Writing status failed.
    #[error("failed to write the status: {0}")]
    Status(kube::Error),
    /// Adding or removing the finalizer failed.
    #[error("failed to update the finalizer: {0}")]
    Finalizer(kube::Error),
    /// Deleting checkpoints at job deletion failed.
    #[error("failed to delete the job's checkpoints: {0}")]
    Cleanup(String),
    /// Object storage did not answer.
    #[error("{0}")]
    Storage(String),
    /// The child cache cannot answer (its watch stopped, which happens only at shutdown).
    #[error("{0}")]
    Cache(String),
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Desired(_) => "desired",
            Error::Apply { .. } => "apply",
            Error::Prune { .. } => "prune",
            Error::Status(_) => "status",
            Error::Finalizer(_) => "finalizer",
            Error::Cleanup(_) => "cleanup",
            Error::Cache(_) => "cache",
            Error::Storage(_) => "storage",
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Cache of every operator-managed pod.
    pub pods: Store<Pod>,
    /// Cache of every StreamJob the controller watches (untyped).
    pub jobs: Store<DynamicObject>,
    /// Metadata of every operator-managed child, and what this process last applied.
    pub children: ChildCache,
    /// Kafka metadata clients.
    pub kafka: KafkaClients,
    /// Worker settings shared by every job.
    pub defaults: WorkerDefaults,
    /// Event recorder.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Arc<Metrics>,
    /// Jobs (uid, generation) whose stale children were pruned by this process.
    pruned: Mutex<HashSet<(String, i64)>>,
    /// Consecutive failures per job uid, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// How often a running job is looked at again.
    status_interval: Duration,
    /// How long workers get to write their savepoint parts before a rescale falls back.
    savepoint_timeout: jiff::SignedDuration,
}

/// How the controller is run.
pub struct ControllerOptions {
    /// Only this namespace, or every namespace.
    pub namespace: Option<String>,
    /// Worker defaults.
    pub defaults: WorkerDefaults,
    /// Name of this replica (events' reporting instance).
    pub identity: String,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// How long triggers for one job are gathered into one reconcile.
    pub debounce: Duration,
    /// How often a running job's status (offsets, lag, checkpoints, topic size) is refreshed.
    pub status_interval: Duration,
    /// How long workers get to write their parts of a rescale's savepoint; partitions whose
    /// part is missing then restore from their newest checkpoints.
    pub savepoint_timeout: Duration,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    options: ControllerOptions,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = options.namespace.as_deref();
    let managed = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let (pod_store, pod_writer) = reflector::store();
    // The planner reads only pods' metadata and status; the rest is not kept (at 1000 jobs
    // the spec and managed fields of their pods were a large part of the operator's memory).
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(scoped::<Pod>(&client, namespace), managed.clone()).modify(|pod| {
            pod.managed_fields_mut().clear();
            pod.spec = None;
        }),
    )
    .default_backoff()
    .touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(options.identity.clone()),
        },
    );
    // StreamJobs are watched untyped and decoded one by one in reconcile: an object that
    // does not decode (stored under an older schema, say) gets a Stalled condition instead
    // of failing the watch, and so the reconciliation of every other job.
    let resource = ApiResource::erase::<StreamJob>(&());
    let jobs: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let pod_owner = resource.clone();
    // As `Controller::new_with`, but the cached jobs lack their managed fields, which
    // reconcile never reads.
    let job_writer = reflector::store::Writer::new(resource.clone());
    let job_store = job_writer.as_reader();
    let (children, child_streams) = cache::child_cache(&client, namespace, &managed);
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods: pod_store,
        jobs: job_store.clone(),
        children,
        kafka: KafkaClients::default(),
        defaults: options.defaults.clone(),
        recorder,
        metrics,
        pruned: Mutex::default(),
        failures: Mutex::default(),
        status_interval: options.status_interval,
        savepoint_timeout: jiff::SignedDuration::try_from(options.savepoint_timeout)
            .unwrap_or(jiff::SignedDuration::MAX),
    });

    let job_events = reflector::reflector(
        job_writer,
        watcher(jobs, watcher::Config::default().any_semantic())
            .modify(|job| job.managed_fields_mut().clear()),
    )
    .applied_objects();
    Controller::for_stream_with(job_events, job_store, resource)
        .with_config(
            ControllerConfig::default()
                .concurrency(options.concurrency)
                .debounce(options.debounce),
        )
        .owns_stream(child_streams.deployments)
        .owns_stream(child_streams.config_maps)
        .owns_stream(child_streams.services)
        .watches_stream(pod_events, move |pod: Pod| {
            let job = pod.labels().get(JOB_LABEL)?.clone();
            Some(ObjectRef::new_with(&job, pod_owner.clone()).within(&pod.namespace()?))
        })
        // The RBAC children trigger nothing, as before; the controller only polls their
        // watches to keep the child cache filled.
        .watches_stream(child_streams.service_accounts, |_| None)
        .watches_stream(child_streams.roles, |_| None)
        .watches_stream(child_streams.role_bindings, |_| None)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not run");
            }
        })
        .await;
}

/// An API of `K` in `namespace`, or in every namespace.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn reconcile(object: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        namespace = object.namespace(),
        job = object.name_any()
    );
    let work = async {
        match decode(&object) {
            Ok(job) => reconcile_job(&job, &ctx).await,
            Err(error) => malformed::report(&object, &error, &ctx).await,
        }
    };
    let result = tracing::Instrument::instrument(work, span).await;
    // In the controller's span, which names what triggered the reconcile.
    tracing::debug!(
        millis = started.elapsed().as_millis(),
        ok = result.is_ok(),
        "reconciled"
    );
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&uid(object.as_ref()));
    }
    result
}

/// The typed job, or why the stored object does not fit the types.
fn decode(object: &DynamicObject) -> Result<StreamJob, serde_json::Error> {
    serde_json::to_value(object).and_then(serde_json::from_value)
}

fn error_policy(object: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(uid(object.as_ref())).or_default();
        *count = count.saturating_add(1);
        *count
    };
    let delay =
        Duration::from_secs(2u64.saturating_pow(attempts.min(9))).min(Duration::from_secs(300));
    tracing::warn!(namespace = object.namespace(), job = object.name_any(), %error, attempts, ?delay, "reconcile failed; retrying");
    let ctx = ctx.clone();
    let reference = object.object_ref(&ApiResource::erase::<StreamJob>(&()));
    let transition = Transition {
        type_: kube::runtime::events::EventType::Warning,
        reason: "ReconcileFailed".into(),
        note: error.to_string(),
    };
    tokio::spawn(async move { publish_to(&ctx, &reference, transition).await });
    Action::requeue(delay)
}

fn uid<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

/// One reconcile of one job.
async fn reconcile_job(job: &StreamJob, ctx: &Context) -> Result<Action, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    if job.metadata.deletion_timestamp.is_some() {
        return cleanup::on_deletion(job, ctx).await;
    }
    cleanup::ensure_finalizer(job, ctx).await?;

    // Right after a start the pod cache may not hold its first list yet: planning on it
    // would take every owner for lost.
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::Cache("the pod cache stopped".to_owned()))?;
    let observed = observe::observe(job, ctx).await?;
    // A pipeline whose window steps cannot take over the running state is a spec that
    // cannot run (unless the spec allows dropping that state).
    let spec_blocker = validate::spec_blocker(job)
        .or_else(|| {
            observed
                .plan
                .as_ref()
                .and_then(|running| validate::state_blocker(job, &running.spec))
        })
        .or_else(|| observed.restore_from.clone().and_then(Result::err));
    // Kafka's answers change without an event to watch: such a blocker is looked at again
    // sooner than one only a spec change can lift.
    let outside = observed
        .outputs
        .clone()
        .or_else(|| observed.topic.as_ref().err().cloned());
    let blocker = spec_blocker.clone().or_else(|| outside.clone());
    // Outputs that cannot take records block like a spec that cannot run.
    let cannot_run = spec_blocker.clone().or_else(|| observed.outputs.clone());

    // A pipeline or outputs that cannot run leave the workers on the last ones that could;
    // the rest of the spec (parallelism, state, image) still applies, and pods still come
    // and go, so the plan keeps following them.
    let runnable = match (&cannot_run, &observed.plan) {
        (None, _) => Some(job.clone()),
        (Some(_), Some(previous)) => {
            let mut last_good = job.clone();
            last_good.spec.pipeline = previous.spec.pipeline.clone();
            last_good.spec.sink = previous.spec.sink.clone();
            last_good.spec.dead_letter = previous.spec.dead_letter.clone();
            validate::spec_blocker(&last_good)
                .is_none()
                .then_some(last_good)
        }
        (Some(_), None) => None,
    };
    // While Kafka cannot be asked, a running job keeps the partition count it had.
    let partitions = match (&observed.topic, &observed.plan) {
        (Ok(topic), _) => Some(topic.partitions),
        (Err(_), Some(_)) => job
            .status
            .as_ref()
            .map(|s| i32::try_from(s.assignment.len()).unwrap_or(i32::MAX))
            .filter(|count| *count > 0),
        (Err(_), None) => None,
    };
    let now = jiff::Timestamp::now();
    let previous = job.status.clone().unwrap_or_default();
    let mut savepoints = previous.savepoints.clone();
    let (plan, rescale) = match (runnable, partitions) {
        (Some(runnable), Some(partitions)) => {
            let target = desired::replicas(&runnable, partitions);
            let decision =
                rescale_step(job, &runnable.spec, &observed, target, partitions, now, ctx);
            let (plan, replicas) = plan_for(&decision, &runnable, target, partitions, &observed);
            match &decision {
                Decision::HandingOver(rescale) => {
                    let completed =
                        savepoint::complete(&observed, rescale, partitions, &job.spec, now)
                            .await
                            .map_err(|e| Error::Storage(e.to_string()))?;
                    if let Some(completed) = completed {
                        if !savepoints.iter().any(|s| s.name == completed.name) {
                            savepoints.push(completed);
                        }
                    }
                }
                // Before the Deployment shrinks: the ReplicaSet then removes these pods.
                Decision::ScalingDown { remove, .. } => {
                    apply::mark_for_removal(&ctx.client, &namespace, remove).await?;
                }
                _ => {}
            }
            retain_savepoints(job, &observed, &plan, &mut savepoints, ctx).await?;
            // While a savepoint is taken, the pods keep the template they run: a changed
            // image or resources roll out once the savepoint exists.
            let mut template = runnable.clone();
            if let (Some(_), Some(published)) = (decision.status(), &observed.plan) {
                template.spec = rescale::with_pod_template_of(&runnable.spec, &published.spec);
            }
            apply_children(job, &template, replicas, &plan, ctx).await?;
            (Some(plan), decision.status().cloned())
        }
        // Nothing can be planned: the rescale in flight, if any, waits where it is.
        _ => (observed.plan.clone(), previous.rescale.clone()),
    };

    let new_status = status::status(&StatusInput {
        job,
        observed: &observed,
        plan: plan.as_ref(),
        blocker: blocker.as_ref(),
        rescale: rescale.as_ref(),
        savepoints: &savepoints,
        savepoint_request: rescale
            .as_ref()
            .filter(|r| r.reason == Operation::User.name())
            .map(|r| r.savepoint.as_str())
            .or(previous.savepoint_request.as_deref()),
        now,
    });
    let old_status = previous;
    if old_status != new_status {
        let patch = json!({
            "apiVersion": StreamJob::api_version(&()),
            "kind": StreamJob::kind(&()),
            "status": new_status,
        });
        let jobs: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace);
        jobs.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(Error::Status)?;
    }
    for transition in status::transitions(&old_status, &new_status, plan.as_ref()) {
        publish(ctx, job, transition).await;
    }

    let ready = new_status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Ok(if spec_blocker.is_some() {
        Action::requeue(Duration::from_secs(60))
    } else if outside.is_some() {
        Action::requeue(Duration::from_secs(15))
    } else if new_status.rescale.is_some() {
        // Savepoint parts landing in storage trigger no watch event: look again soon.
        Action::requeue(Duration::from_secs(2))
    } else if ready {
        Action::requeue(ctx.status_interval)
    } else {
        // Every way to readiness (pods starting, becoming ready, going away) comes with a
        // watch event; this is the safety net. Shorter, it was most of the reconciles of a
        // thousand starting jobs (docs/benchmarks.md, "Operator at scale").
        Action::requeue(NOT_READY_RECHECK)
    })
}

/// The plan to publish in this reconcile, and the worker Deployment's replicas.
fn plan_for(
    decision: &Decision,
    runnable: &StreamJob,
    target: i32,
    partitions: i32,
    observed: &observe::Observed,
) -> (Plan, i32) {
    let replicas = decision.replicas(target);
    let published = observed.plan.as_ref();
    // An operation is recorded in status before its plan is published: a plan ordering a
    // savepoint that status does not know of would never be verified.
    let starting =
        runnable.status.as_ref().is_none_or(|s| s.rescale.is_none()) && decision.status().is_some();
    // After an upgrade the whole new spec is published (a changed pod template rolls out
    // now); after a rescale a spec change that waited is the next operation.
    let upgraded = matches!(decision, Decision::Done)
        && runnable
            .status
            .as_ref()
            .and_then(|s| s.rescale.as_ref())
            .is_some_and(|r| r.reason == Operation::Upgrade.name());
    match (decision, published) {
        (_, Some(published)) if starting => (published.clone(), replicas),
        (Decision::Done, _) if upgraded => steady_plan(runnable, partitions, observed, replicas),
        (Decision::Savepointing { plan, .. } | Decision::FallingBack { plan, .. }, _) => {
            (plan.clone(), replicas)
        }
        (
            Decision::ScalingUp(_)
            | Decision::HandingOver(_)
            | Decision::ScalingDown { .. }
            | Decision::Abandoned
            | Decision::Done,
            Some(published),
        ) => (published.clone(), replicas),
        (Decision::Steady | Decision::Deferred { .. }, _) | (_, None) => {
            steady_plan(runnable, partitions, observed, replicas)
        }
    }
}

/// The plan that follows the pods (no operation in flight), with `restoreFrom` entries.
fn steady_plan(
    runnable: &StreamJob,
    partitions: i32,
    observed: &observe::Observed,
    replicas: i32,
) -> (Plan, i32) {
    let last_epoch = runnable
        .status
        .as_ref()
        .and_then(|s| s.epoch)
        .and_then(|e| u64::try_from(e).ok())
        .unwrap_or(0)
        .max(observed.newest_checkpoint_epoch());
    let mut plan = next_plan(&PlanInput {
        job: runnable,
        namespace: &runnable.namespace().unwrap_or_default(),
        previous: observed.plan.as_ref(),
        last_epoch,
        partitions,
        pods: &observed.pods,
    });
    if let Some(Ok(manifest)) = &observed.restore_from {
        plan.restore = savepoint::restore_entries(manifest, &observed.checkpoints);
    }
    (plan, replicas)
}

/// Applies the children of `runnable` running `plan` with `replicas` workers, and prunes
/// stale children once per job generation.
async fn apply_children(
    job: &StreamJob,
    runnable: &StreamJob,
    replicas: i32,
    plan: &Plan,
    ctx: &Context,
) -> Result<(), Error> {
    let namespace = job.namespace().unwrap_or_default();
    let owner = job.controller_owner_ref(&()).unwrap_or_default();
    let children = desired::children(runnable, &namespace, replicas, plan, owner, &ctx.defaults)?;
    apply::apply(&ctx.client, &ctx.children, &namespace, &children).await?;
    let generation = (uid(job), job.metadata.generation.unwrap_or(0));
    let needs_prune = !ctx
        .pruned
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&generation);
    if needs_prune {
        let names = ChildNames::new(&job.name_any());
        apply::prune(
            &ctx.client,
            &ctx.children,
            &namespace,
            &generation.0,
            &names,
            &children,
        )
        .await?;
        ctx.pruned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(generation);
    }
    Ok(())
}

/// Keeps `spec.savepoints.retained` savepoints, sparing those a restore still needs: the
/// published plan's and `restoreFrom`'s.
async fn retain_savepoints(
    job: &StreamJob,
    observed: &observe::Observed,
    plan: &Plan,
    savepoints: &mut Vec<streamjob_api::SavepointStatus>,
    ctx: &Context,
) -> Result<(), Error> {
    let retained = usize::try_from(job.spec.savepoints.retained).unwrap_or(1);
    let Some(storage) = &observed.storage else {
        return Ok(());
    };
    if savepoints.len() <= retained {
        return Ok(());
    }
    let mut protected: std::collections::BTreeSet<&str> = plan
        .restore
        .values()
        .map(|r| r.savepoint.as_str())
        .collect();
    // Any job's restoreFrom (this one's, or another's that starts from this job's state).
    let jobs = ctx.jobs.state();
    let restores = jobs
        .iter()
        .filter_map(|other| other.data.get("spec")?.get("restoreFrom")?.as_str())
        .chain(job.spec.restore_from.as_deref());
    let named = savepoint::named_by(savepoints, restores);
    protected.extend(named.iter().map(String::as_str));
    let deleted = savepoint::retain(storage, savepoints, retained, &protected)
        .await
        .map_err(|e| Error::Storage(format!("cannot delete old savepoints: {e}")))?;
    if !deleted.is_empty() {
        tracing::info!(
            ?deleted,
            retained,
            "deleted savepoints beyond the retention"
        );
    }
    Ok(())
}

/// The rescale step of this reconcile. Rescales go through a coordinated savepoint, which
/// the operator verifies in object storage; a job whose storage it cannot see (`file://`)
/// moves partitions as after a pod loss, through final checkpoints.
fn rescale_step(
    job: &StreamJob,
    spec: &StreamJobSpec,
    observed: &observe::Observed,
    target: i32,
    partitions: i32,
    now: jiff::Timestamp,
    ctx: &Context,
) -> Decision {
    let (Some(published), Some(_)) = (&observed.plan, &observed.storage) else {
        return Decision::Steady;
    };
    let parts = observed.parts.keys().copied().collect();
    let checkpoint_epochs = observed
        .checkpoints
        .iter()
        .map(|(partition, checkpoint)| (*partition, checkpoint.epoch))
        .collect();
    let status = job.status.as_ref();
    let request = spec.savepoints.request.as_deref().filter(|name| {
        status.is_none_or(|s| {
            s.savepoint_request.as_deref() != Some(*name)
                && !s.savepoints.iter().any(|taken| taken.name == *name)
        })
    });
    rescale::next_step(&RescaleInput {
        target,
        current: status.and_then(|s| s.rescale.as_ref()),
        plan: published,
        spec,
        request,
        pods: &observed.pods,
        partitions,
        parts: &parts,
        checkpoint_epochs: &checkpoint_epochs,
        now,
        part_timeout: ctx.savepoint_timeout,
    })
}

/// Publishes `transition` as a Kubernetes Event on `job`; failures are only logged.
pub(crate) async fn publish(ctx: &Context, job: &StreamJob, transition: Transition) {
    publish_to(ctx, &job.object_ref(&()), transition).await;
}

/// Publishes `transition` as a Kubernetes Event on the object `reference`.
async fn publish_to(ctx: &Context, reference: &ObjectReference, transition: Transition) {
    tracing::info!(reason = %transition.reason, note = %transition.note, "event");
    let event = KubeEvent {
        type_: transition.type_,
        reason: transition.reason,
        note: Some(transition.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(%error, "cannot publish an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "streamjob.dev/v1alpha1",
            "kind": "StreamJob",
            "metadata": { "name": "clicks", "namespace": "ns" },
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_stored_job_decodes_into_the_typed_spec() {
        let job = decode(&object(json!({
            "source": { "kafka": { "bootstrapServers": "b:9092", "topic": "t" } },
            "sink": { "log": {} },
        })))
        .unwrap();
        assert_eq!(job.spec.source.kafka.topic, "t");
        assert_eq!(job.spec.parallelism, 1);
    }

    #[test]
    fn a_job_stored_under_another_schema_fails_alone_with_a_message() {
        // As if written before `source` became required: the watch still delivers it, and
        // only this job's reconcile reports the problem.
        let error = decode(&object(json!({ "sink": { "log": {} } }))).unwrap_err();
        assert!(
            error.to_string().contains("missing field `source`"),
            "{error}"
        );
    }
}
