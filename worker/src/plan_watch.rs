//! Follows the job's plan in the ConfigMap the operator publishes (I/O: watches the
//! Kubernetes API); whether a version of it may run is decided by the pure [`admit`].
//!
//! The worker's RBAC names that one ConfigMap (`resourceNames`), so it is listed and watched
//! with the field selector `metadata.name=<name>`.

use std::{pin::pin, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use thiserror::Error;
use tokio::sync::watch;

use crate::{
    plan::{Plan, PlanError},
    telemetry::{Event, PlanRejected},
};

/// Key of the ConfigMap's `data` that holds the plan, as YAML.
pub const PLAN_KEY: &str = "plan.yaml";

/// The newest plan the worker was given (`None` until the first valid one).
pub type PlanFeed = watch::Receiver<Option<Arc<Plan>>>;

/// Name of the ConfigMap holding job `job`'s plan: `<job>-plan`.
pub fn configmap_name(job: &str) -> String {
    format!("{job}-plan")
}

/// The ConfigMap a worker follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfigMap {
    /// Its namespace (the job's).
    pub namespace: String,
    /// Its name (`<job>-plan`).
    pub name: String,
}

/// Why a version of the plan ConfigMap is not run.
#[derive(Debug, Error)]
pub enum PlanRefused {
    /// The ConfigMap does not exist (yet, or any more).
    #[error("ConfigMap {namespace}/{name} does not exist")]
    Missing {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The ConfigMap has no `data["plan.yaml"]`.
    #[error("ConfigMap {name} has no data[\"{PLAN_KEY}\"]")]
    NoPlan {
        /// ConfigMap name.
        name: String,
    },
    /// `plan.yaml` is not a plan.
    #[error("data[\"{PLAN_KEY}\"] of ConfigMap {name} is not a valid plan: {source}")]
    Parse {
        /// ConfigMap name.
        name: String,
        /// Parser error.
        source: serde_yaml::Error,
    },
    /// The plan parses but contradicts itself.
    #[error("the plan in ConfigMap {name} is invalid: {source}")]
    Invalid {
        /// ConfigMap name.
        name: String,
        /// Validation error.
        source: PlanError,
    },
    /// The plan names another job than the ConfigMap belongs to.
    #[error("ConfigMap {namespace}/{name} holds the plan of job {job_namespace}/{job_name}")]
    WrongJob {
        /// ConfigMap namespace.
        namespace: String,
        /// ConfigMap name.
        name: String,
        /// The plan's job namespace.
        job_namespace: String,
        /// The plan's job name.
        job_name: String,
    },
    /// The plan is older than the newest one already accepted.
    #[error("plan epoch {epoch} is older than epoch {newest}, which is already accepted")]
    Stale {
        /// The plan's epoch.
        epoch: u64,
        /// The newest accepted epoch.
        newest: u64,
    },
    /// Watching the ConfigMap failed (retried with backoff).
    #[error("watching ConfigMap {name} failed: {source}")]
    Watch {
        /// ConfigMap name.
        name: String,
        /// Watcher error.
        source: Box<watcher::Error>,
    },
}

impl PlanRefused {
    /// Short metric label for the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } => "missing",
            Self::NoPlan { .. } | Self::Parse { .. } | Self::Invalid { .. } => "invalid",
            Self::WrongJob { .. } => "wrong_job",
            Self::Stale { .. } => "stale",
            Self::Watch { .. } => "watch",
        }
    }

    fn emit(&self) {
        let epoch = match self {
            Self::Stale { epoch, .. } => Some(*epoch),
            _ => None,
        };
        PlanRejected {
            reason: self.reason(),
            epoch,
            error: &self.to_string(),
        }
        .emit();
    }
}

/// Reads, validates and authenticates the plan in one version of `configmap`, which the
/// worker follows as `source`; `newest_epoch` is the epoch of the newest plan accepted so far.
/// A plan of the same epoch is accepted (the spec may change without partitions moving).
pub fn admit(
    configmap: &ConfigMap,
    source: &PlanConfigMap,
    newest_epoch: Option<u64>,
) -> Result<Plan, PlanRefused> {
    let name = source.name.clone();
    let text = configmap
        .data
        .as_ref()
        .and_then(|data| data.get(PLAN_KEY))
        .ok_or_else(|| PlanRefused::NoPlan { name: name.clone() })?;
    let plan: Plan = serde_yaml::from_str(text).map_err(|source| PlanRefused::Parse {
        name: name.clone(),
        source,
    })?;
    plan.validate().map_err(|source| PlanRefused::Invalid {
        name: name.clone(),
        source,
    })?;
    if plan.job.namespace != source.namespace || configmap_name(&plan.job.name) != source.name {
        return Err(PlanRefused::WrongJob {
            namespace: source.namespace.clone(),
            name,
            job_namespace: plan.job.namespace,
            job_name: plan.job.name,
        });
    }
    if let Some(newest) = newest_epoch.filter(|&newest| plan.epoch < newest) {
        return Err(PlanRefused::Stale {
            epoch: plan.epoch,
            newest,
        });
    }
    Ok(plan)
}

/// Watches `source` and publishes each new valid plan on `plans`, forever. Refused versions
/// are reported and leave the published plan as it was.
pub async fn follow(
    client: Client,
    source: PlanConfigMap,
    plans: watch::Sender<Option<Arc<Plan>>>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &source.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", source.name));
    let mut events = pin!(watcher(api, config).default_backoff());
    // Whether the current (re-)list found the ConfigMap.
    let mut listed = false;
    while let Some(event) = events.next().await {
        let configmap = match event {
            Ok(watcher::Event::Init) => {
                listed = false;
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if !listed {
                    missing(&source).emit();
                }
                continue;
            }
            Ok(watcher::Event::Delete(_)) => {
                missing(&source).emit();
                continue;
            }
            Ok(watcher::Event::InitApply(configmap) | watcher::Event::Apply(configmap)) => {
                listed = true;
                configmap
            }
            Err(source_error) => {
                PlanRefused::Watch {
                    name: source.name.clone(),
                    source: Box::new(source_error),
                }
                .emit();
                continue;
            }
        };
        let newest = plans.borrow().as_ref().map(|plan| plan.epoch);
        match admit(&configmap, &source, newest) {
            Ok(plan) => {
                tracing::debug!(
                    resource_version = configmap.resource_version().unwrap_or_default(),
                    epoch = plan.epoch,
                    "plan ConfigMap read"
                );
                // A re-list delivers the same plan again; only a different one is news.
                plans.send_if_modified(|current| {
                    if current.as_deref() == Some(&plan) {
                        return false;
                    }
                    *current = Some(Arc::new(plan));
                    true
                });
            }
            Err(refused) => refused.emit(),
        }
    }
}

fn missing(source: &PlanConfigMap) -> PlanRefused {
    PlanRefused::Missing {
        namespace: source.namespace.clone(),
        name: source.name.clone(),
    }
}

/// Plans for unit tests.
#[cfg(test)]
pub(crate) mod test_plans {
    /// A plan of job `namespace/job` at `epoch`: one `map` step; pod `a` owns partitions 0 and
    /// 1, pod `b` owns 2 and 3.
    pub(crate) fn yaml(namespace: &str, job: &str, epoch: u64) -> String {
        format!(
            r#"
job: {{namespace: {namespace}, name: {job}}}
epoch: {epoch}
spec:
  source: {{kafka: {{bootstrapServers: "127.0.0.1:9092", topic: clicks}}}}
  pipeline:
    - map: '{{user: .user}}'
  sink: {{kafka: {{topic: out}}}}
assignment:
  a: [0, 1]
  b: [2, 3]
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{test_plans::yaml as plan_text, *};

    fn source() -> PlanConfigMap {
        PlanConfigMap {
            namespace: "team-a".into(),
            name: configmap_name("clicks"),
        }
    }

    fn configmap(plan: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(PLAN_KEY.to_owned(), plan.to_owned())])),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_plan_of_this_job_is_admitted() {
        let plan = admit(
            &configmap(&plan_text("team-a", "clicks", 3)),
            &source(),
            None,
        )
        .unwrap();
        assert_eq!(plan.epoch, 3);
        assert_eq!(plan.partitions_of("a"), vec![0, 1]);
    }

    #[test]
    fn garbage_and_plans_that_contradict_themselves_are_invalid() {
        let garbage = admit(&configmap("::: [not yaml"), &source(), None).unwrap_err();
        assert_eq!(garbage.reason(), "invalid");
        let not_a_plan = admit(&configmap("epoch: 2"), &source(), None).unwrap_err();
        assert_eq!(not_a_plan.reason(), "invalid");
        let twice = plan_text("team-a", "clicks", 1).replace("[2, 3]", "[1, 3]");
        let refused = admit(&configmap(&twice), &source(), None).unwrap_err();
        assert!(matches!(refused, PlanRefused::Invalid { .. }), "{refused}");
        let empty = admit(&ConfigMap::default(), &source(), None).unwrap_err();
        assert!(matches!(empty, PlanRefused::NoPlan { .. }), "{empty}");
        assert_eq!(empty.reason(), "invalid");
    }

    #[test]
    fn a_plan_of_another_job_is_refused() {
        for (namespace, job) in [("team-b", "clicks"), ("team-a", "views")] {
            let refused =
                admit(&configmap(&plan_text(namespace, job, 1)), &source(), None).unwrap_err();
            assert_eq!(refused.reason(), "wrong_job", "{namespace}/{job}");
        }
    }

    #[test]
    fn an_older_epoch_is_stale_and_the_same_epoch_is_admitted() {
        let text = plan_text("team-a", "clicks", 4);
        let stale = admit(&configmap(&text), &source(), Some(5)).unwrap_err();
        assert!(
            matches!(
                stale,
                PlanRefused::Stale {
                    epoch: 4,
                    newest: 5
                }
            ),
            "{stale}"
        );
        assert!(admit(&configmap(&text), &source(), Some(4)).is_ok());
        assert!(admit(&configmap(&text), &source(), Some(3)).is_ok());
    }
}
