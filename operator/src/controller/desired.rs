//! The objects a job should have (pure: the job and its plan in, typed objects out).

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Service, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use streamjob_api::{JobState, StreamJob};
use streamjob_worker::plan::Plan;
use thiserror::Error;

use super::names::{ChildNames, PLAN_KEY, WORKER_METRICS_PORT};

/// Where a mounted Kafka client-settings Secret appears in the worker container.
pub const KAFKA_PROPERTIES_DIR: &str = "/etc/streamjob/kafka";

/// Where the worker may write: the default `file://` checkpoint directory lives under it.
pub const WORKER_DATA_DIR: &str = "/var/lib/streamjob";

/// How long the worker gets to flush and checkpoint after SIGTERM.
pub const SHUTDOWN_DEADLINE_SECONDS: i64 = 25;

/// A desired object could not be built (a bug, or a plan that does not serialise).
#[derive(Debug, Error)]
pub enum DesiredError {
    /// An object did not match its Kubernetes type.
    #[error("failed to build the {what}: {source}")]
    Build {
        /// Which object.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// The plan could not be serialised.
    #[error("failed to serialise the plan: {0}")]
    Plan(#[from] serde_yaml::Error),
}

/// Every child object of one job.
#[derive(Clone, Debug)]
pub struct Children {
    /// Worker ServiceAccount.
    pub service_account: ServiceAccount,
    /// Role allowing the workers to read their plan, and nothing else.
    pub role: Role,
    /// Binds the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The plan workers watch.
    pub plan: ConfigMap,
    /// Headless Service for worker metrics.
    pub service: Service,
    /// The workers.
    pub deployment: Deployment,
}

/// Settings of the operator that shape every job's children.
#[derive(Clone, Debug)]
pub struct WorkerDefaults {
    /// Worker image for jobs that set none.
    pub image: String,
    /// Image pull Secrets for jobs that set none.
    pub image_pull_secrets: Vec<String>,
}

/// Builds the children of `job` (in `namespace`, with `replicas` workers) running `plan`.
pub fn children(
    job: &StreamJob,
    namespace: &str,
    replicas: i32,
    plan: &Plan,
    owner: OwnerReference,
    defaults: &WorkerDefaults,
) -> Result<Children, DesiredError> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let names = ChildNames::new(&name);
    let meta = |object_name: String| {
        json!({
            "name": object_name,
            "namespace": namespace,
            "labels": names.labels(),
            "ownerReferences": [owner],
        })
    };
    let plan_yaml = serde_yaml::to_string(plan)?;

    Ok(Children {
        service_account: build(
            "worker ServiceAccount",
            json!({ "metadata": meta(names.workers()) }),
        )?,
        role: build(
            "worker Role",
            json!({
                "metadata": meta(names.workers()),
                "rules": [{
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [names.plan()],
                    "verbs": ["get", "list", "watch"],
                }],
            }),
        )?,
        role_binding: build(
            "worker RoleBinding",
            json!({
                "metadata": meta(names.workers()),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": names.workers(),
                },
                "subjects": [{
                    "kind": "ServiceAccount",
                    "name": names.workers(),
                    "namespace": namespace,
                }],
            }),
        )?,
        plan: build(
            "plan ConfigMap",
            json!({ "metadata": meta(names.plan()), "data": { PLAN_KEY: plan_yaml } }),
        )?,
        service: build(
            "worker Service",
            json!({
                "metadata": meta(names.service()),
                "spec": {
                    "clusterIP": "None",
                    "selector": names.selector(),
                    "ports": [{ "name": "metrics", "port": WORKER_METRICS_PORT }],
                },
            }),
        )?,
        deployment: build(
            "worker Deployment",
            json!({
                "metadata": meta(names.workers()),
                "spec": {
                    "replicas": replicas,
                    "selector": { "matchLabels": names.selector() },
                    "template": pod_template(job, &names, defaults),
                },
            }),
        )?,
    })
}

/// Worker count: the spec's parallelism capped at the topic's partition count (a worker
/// owns whole partitions, so more would idle), none while suspended.
pub fn replicas(job: &StreamJob, partitions: i32) -> i32 {
    match job.spec.state {
        JobState::Running => job.spec.parallelism.min(partitions.max(1)),
        JobState::Suspended => 0,
    }
}

fn pod_template(job: &StreamJob, names: &ChildNames, defaults: &WorkerDefaults) -> Value {
    let spec = &job.spec;
    let field = |path: &str| json!({ "fieldRef": { "fieldPath": path } });
    let mut env = vec![
        json!({ "name": "POD_NAME", "valueFrom": field("metadata.name") }),
        json!({ "name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace") }),
        json!({ "name": "POD_IP", "valueFrom": field("status.podIP") }),
        json!({
            "name": "STREAMJOB_METRICS_ADDR",
            "value": format!("$(POD_IP):{WORKER_METRICS_PORT}"),
        }),
        json!({ "name": "STREAMJOB_PLAN_CONFIGMAP", "value": names.plan() }),
        json!({
            "name": "STREAMJOB_SHUTDOWN_DEADLINE",
            "value": format!("{SHUTDOWN_DEADLINE_SECONDS}s"),
        }),
        json!({ "name": "STREAMJOB_LOG_FORMAT", "value": "json" }),
        json!({
            "name": "STREAMJOB_PROCESSING_THREADS",
            "value": spec.processing_threads.max(1).to_string(),
        }),
    ];
    let mut volumes = vec![
        json!({ "name": "tmp", "emptyDir": {} }),
        json!({ "name": "data", "emptyDir": {} }),
    ];
    let mut mounts = vec![
        json!({ "name": "tmp", "mountPath": "/tmp" }),
        json!({ "name": "data", "mountPath": WORKER_DATA_DIR }),
    ];
    if let Some(secret) = &spec.source.kafka.secret_ref {
        env.push(json!({ "name": "STREAMJOB_KAFKA_PROPERTIES", "value": KAFKA_PROPERTIES_DIR }));
        volumes.push(json!({ "name": "kafka", "secret": { "secretName": secret.name } }));
        mounts
            .push(json!({ "name": "kafka", "mountPath": KAFKA_PROPERTIES_DIR, "readOnly": true }));
    }
    let env_from: Vec<Value> = spec
        .checkpoint
        .secret_ref
        .iter()
        .map(|secret| json!({ "secretRef": { "name": secret.name } }))
        .collect();
    let probe = |path: &str, period: i32, failures: i32| {
        json!({
            "httpGet": { "path": path, "port": "metrics" },
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };

    let pull_secrets: Vec<Value> = if spec.image_pull_secrets.is_empty() {
        let defaults = defaults.image_pull_secrets.iter();
        defaults.map(|name| json!({ "name": name })).collect()
    } else {
        let own = spec.image_pull_secrets.iter();
        own.map(|secret| json!({ "name": secret.name })).collect()
    };
    json!({
        "metadata": { "labels": names.labels() },
        "spec": {
            "serviceAccountName": names.workers(),
            "imagePullSecrets": pull_secrets,
            "terminationGracePeriodSeconds": SHUTDOWN_DEADLINE_SECONDS + 15,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "fsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "containers": [{
                "name": "worker",
                "image": spec.image.clone().unwrap_or_else(|| defaults.image.clone()),
                "command": ["/usr/local/bin/streamjob-worker"],
                "args": ["run"],
                "env": env,
                "envFrom": env_from,
                "ports": [{ "name": "metrics", "containerPort": WORKER_METRICS_PORT }],
                "livenessProbe": probe("/healthz", 10, 3),
                "readinessProbe": probe("/readyz", 2, 1),
                "resources": spec.resources.clone().unwrap_or_default(),
                "volumeMounts": mounts,
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
            "volumes": volumes,
        },
    })
}

fn build<T: DeserializeOwned>(what: &'static str, value: Value) -> Result<T, DesiredError> {
    serde_json::from_value(value).map_err(|source| DesiredError::Build { what, source })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Container;
    use streamjob_api::SecretReference;

    use super::*;
    use crate::controller::planning::{PlanInput, PodLifecycle, WorkerPod, next_plan};

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "streamjob.dev/v1alpha1".into(),
            kind: "StreamJob".into(),
            name: "clicks".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn build_for(job: &StreamJob) -> Children {
        let pods = [WorkerPod {
            name: "clicks-worker-1".into(),
            lifecycle: PodLifecycle::Live,
            ready: true,
        }];
        let plan = next_plan(&PlanInput {
            job,
            namespace: "team-a",
            previous: None,
            last_epoch: 0,
            partitions: 2,
            pods: &pods,
        });
        let defaults = WorkerDefaults {
            image: "streamjob:test".into(),
            image_pull_secrets: vec!["registry".into()],
        };
        children(job, "team-a", replicas(job, 2), &plan, owner(), &defaults).unwrap()
    }

    fn worker(children: &Children) -> Container {
        let pod = children
            .deployment
            .spec
            .clone()
            .unwrap()
            .template
            .spec
            .unwrap();
        pod.containers[0].clone()
    }

    fn env(container: &Container, name: &str) -> Option<String> {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    #[test]
    fn every_child_is_owned_by_the_job_and_labelled() {
        let children = build_for(&StreamJob::test("clicks"));
        let metas = [
            &children.service_account.metadata,
            &children.role.metadata,
            &children.role_binding.metadata,
            &children.plan.metadata,
            &children.service.metadata,
            &children.deployment.metadata,
        ];
        for meta in metas {
            assert_eq!(meta.namespace.as_deref(), Some("team-a"));
            assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "uid-1");
            assert_eq!(meta.labels.as_ref().unwrap()["streamjob.dev/job"], "clicks");
        }
    }

    #[test]
    fn the_plan_configmap_holds_the_plan_the_worker_reads() {
        let children = build_for(&StreamJob::test("clicks"));
        let yaml = &children.plan.data.as_ref().unwrap()[PLAN_KEY];
        let plan: Plan = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(plan.epoch, 1);
        assert_eq!(plan.partitions_of("clicks-worker-1"), vec![0, 1]);
    }

    #[test]
    fn workers_may_read_only_their_own_plan() {
        let children = build_for(&StreamJob::test("clicks"));
        let rules = children.role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["configmaps".to_owned()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["clicks-plan".to_owned()][..])
        );
        assert_eq!(rules[0].verbs, vec!["get", "list", "watch"]);
    }

    #[test]
    fn the_deployment_runs_parallelism_workers_locked_down() {
        let job = StreamJob::test("clicks").parallelism(2);
        let children = build_for(&job);
        let spec = children.deployment.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.clone().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("clicks-worker"));
        assert!(pod.termination_grace_period_seconds.unwrap() > SHUTDOWN_DEADLINE_SECONDS);
        let container = worker(&children);
        assert_eq!(container.image.as_deref(), Some("streamjob:test"));
        assert_eq!(
            env(&container, "STREAMJOB_PLAN_CONFIGMAP").as_deref(),
            Some("clicks-plan")
        );
        let security = container.security_context.unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
        assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
    }

    #[test]
    fn workers_pull_with_the_jobs_secrets_or_else_the_operators() {
        let pull_secrets = |job: &StreamJob| -> Vec<String> {
            let children = build_for(job);
            let pod = children.deployment.spec.unwrap().template.spec.unwrap();
            let secrets = pod.image_pull_secrets.unwrap_or_default();
            secrets.into_iter().map(|s| s.name).collect()
        };
        let mut job = StreamJob::test("clicks");
        assert_eq!(pull_secrets(&job), ["registry"]);
        job.spec.image_pull_secrets = vec![SecretReference {
            name: "own-registry".into(),
        }];
        assert_eq!(pull_secrets(&job), ["own-registry"]);
    }

    #[test]
    fn workers_get_the_jobs_processing_threads() {
        let threads =
            |job: &StreamJob| env(&worker(&build_for(job)), "STREAMJOB_PROCESSING_THREADS");
        let mut job = StreamJob::test("clicks");
        assert_eq!(threads(&job).as_deref(), Some("1"));
        job.spec.processing_threads = 4;
        assert_eq!(threads(&job).as_deref(), Some("4"));
    }

    #[test]
    fn parallelism_is_capped_at_the_partition_count() {
        let job = StreamJob::test("clicks").parallelism(5);
        assert_eq!(replicas(&job, 2), 2);
        assert_eq!(replicas(&job, 8), 5);
    }

    #[test]
    fn a_suspended_job_has_no_workers() {
        let job = StreamJob::test("clicks")
            .parallelism(3)
            .state(JobState::Suspended);
        let children = build_for(&job);
        assert_eq!(children.deployment.spec.unwrap().replicas, Some(0));
    }

    #[test]
    fn secrets_reach_the_worker_only_by_reference() {
        let mut job = StreamJob::test("clicks");
        job.spec.source.kafka.secret_ref = Some(SecretReference {
            name: "kafka-creds".into(),
        });
        job.spec.checkpoint.secret_ref = Some(SecretReference {
            name: "s3-creds".into(),
        });
        let children = build_for(&job);
        let container = worker(&children);
        assert_eq!(
            env(&container, "STREAMJOB_KAFKA_PROPERTIES").as_deref(),
            Some(KAFKA_PROPERTIES_DIR)
        );
        let env_from = container.env_from.unwrap();
        assert_eq!(env_from[0].secret_ref.as_ref().unwrap().name, "s3-creds");
        let pod = children.deployment.spec.unwrap().template.spec.unwrap();
        let kafka = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "kafka")
            .unwrap();
        assert_eq!(
            kafka.secret.unwrap().secret_name.as_deref(),
            Some("kafka-creds")
        );
    }
}
