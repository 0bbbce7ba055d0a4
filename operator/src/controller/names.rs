//! Names and labels of a job's child objects (pure). One place decides them, so the
//! desired-state builder, the pruner and the pod watch always agree.

use std::collections::BTreeMap;

/// The field manager of every write the operator makes.
pub const MANAGER: &str = "streamjob-operator";

/// Label naming the StreamJob an object belongs to.
pub const JOB_LABEL: &str = "streamjob.dev/job";

/// Label every operator-made object carries (and the pod runner selects on).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Key of the plan inside the plan ConfigMap (the worker reads it).
pub const PLAN_KEY: &str = "plan.yaml";

/// Port of the worker's `/metrics`, `/healthz` and `/readyz`.
pub const WORKER_METRICS_PORT: i32 = 9090;

/// Finalizer added only to jobs whose checkpoints are deleted with them.
pub const CLEANUP_FINALIZER: &str = "streamjob.dev/delete-checkpoints";

/// Longest job name whose child names and label values stay within Kubernetes limits
/// (label values: 63 characters; pod names add `-worker-<hash>-<suffix>`).
pub const MAX_JOB_NAME: usize = 40;

/// The names of one job's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    /// The StreamJob's name.
    pub job: String,
}

impl ChildNames {
    /// Names for the job called `job`.
    pub fn new(job: &str) -> Self {
        Self {
            job: job.to_owned(),
        }
    }

    /// The worker Deployment, ServiceAccount, Role and RoleBinding.
    pub fn workers(&self) -> String {
        format!("{}-worker", self.job)
    }

    /// The plan ConfigMap.
    pub fn plan(&self) -> String {
        format!("{}-plan", self.job)
    }

    /// The headless metrics Service.
    pub fn service(&self) -> String {
        format!("{}-workers", self.job)
    }

    /// Labels of every child object.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
        labels.insert("app.kubernetes.io/part-of".into(), "streamjob".into());
        labels.insert("app.kubernetes.io/instance".into(), self.job.clone());
        labels
    }

    /// Labels that select the job's worker pods (and its children, for pruning).
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "streamjob-worker".into()),
            (JOB_LABEL.into(), self.job.clone()),
        ])
    }

    /// [`Self::selector`] as a label-selector string (`status.selector`, list calls).
    pub fn selector_string(&self) -> String {
        self.selector()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_named_after_the_job() {
        let names = ChildNames::new("clicks");
        assert_eq!(names.workers(), "clicks-worker");
        assert_eq!(names.plan(), "clicks-plan");
        assert_eq!(names.service(), "clicks-workers");
        assert_eq!(
            names.selector_string(),
            "app.kubernetes.io/name=streamjob-worker,streamjob.dev/job=clicks"
        );
        assert_eq!(names.labels()[MANAGED_BY_LABEL], MANAGER);
    }
}
