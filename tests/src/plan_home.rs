//! A job's plan ConfigMap in a namespace of its own, written the way the operator writes it,
//! and workers that follow it (`streamjob-worker run --plan-configmap`).

use std::{collections::BTreeMap, path::PathBuf, thread::JoinHandle, time::Duration};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde_yaml::{Mapping, Value};

use crate::{
    TEST_MANAGER, TempNamespace, kube_client,
    reference::{Event, Expected},
    scenario::{self, Scenario},
    temp_namespace, wait_for,
    worker::{Worker, produce_paced},
};

/// How long a worker may take to reach a plan's state.
pub const PLAN_TIMEOUT: Duration = Duration::from_secs(120);

/// What a plan orders besides its assignment: a savepoint, and partitions that restore from
/// a savepoint's parts.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanOrders<'a> {
    /// `savepoint: {id}`.
    pub savepoint: Option<&'a str>,
    /// `restore: {partition: {savepoint}}`.
    pub restore: &'a [(i32, &'a str)],
}

/// The job's plan ConfigMap in a namespace of its own, and the workers following it.
pub struct PlanHome {
    /// The namespace (also the plan's `job.namespace`).
    pub namespace: TempNamespace,
    job: String,
    configmaps: Api<ConfigMap>,
}

impl PlanHome {
    /// A fresh namespace for job `job`'s plan.
    pub async fn new(job: &str) -> Self {
        let namespace = temp_namespace("plan-watch");
        let configmaps = Api::namespaced(kube_client().await, &namespace.name);
        Self {
            namespace,
            job: job.to_owned(),
            configmaps,
        }
    }

    fn configmap(&self) -> String {
        format!("{}-plan", self.job)
    }

    /// Starts a worker for pod `pod` that follows this job's plan ConfigMap.
    pub fn start_worker(&self, pod: &str, log: PathBuf) -> Worker {
        self.start_worker_with_threads(pod, log, 1)
    }

    /// Starts a worker for pod `pod` with `threads` processing threads.
    pub fn start_worker_with_threads(&self, pod: &str, log: PathBuf, threads: u16) -> Worker {
        let configmap = self.configmap();
        let threads = threads.to_string();
        Worker::start(
            &[
                "run",
                "--plan-configmap",
                &configmap,
                "--namespace",
                &self.namespace.name,
                "--pod",
                pod,
                "--processing-threads",
                &threads,
            ],
            &log,
            &[],
        )
    }

    /// Publishes the plan of `epoch` running `spec` with `assignment`, as the operator does.
    pub async fn publish(&self, epoch: u64, spec: &Value, assignment: &[(&str, &[i32])]) {
        self.publish_with(epoch, spec, assignment, PlanOrders::default())
            .await;
    }

    /// Publishes a plan that also carries `orders`.
    pub async fn publish_with(
        &self,
        epoch: u64,
        spec: &Value,
        assignment: &[(&str, &[i32])],
        orders: PlanOrders<'_>,
    ) {
        let mut plan = Mapping::new();
        let mut job = Mapping::new();
        job.insert("namespace".into(), self.namespace.name.as_str().into());
        job.insert("name".into(), self.job.as_str().into());
        plan.insert("job".into(), job.into());
        plan.insert("epoch".into(), epoch.into());
        plan.insert("spec".into(), spec.clone());
        let assignment: Mapping = assignment
            .iter()
            .map(|(pod, partitions)| ((*pod).into(), partitions.to_vec().into()))
            .collect();
        plan.insert("assignment".into(), assignment.into());
        if !orders.restore.is_empty() {
            let restore: Mapping = orders
                .restore
                .iter()
                .map(|(partition, savepoint)| {
                    let mut from = Mapping::new();
                    from.insert("savepoint".into(), (*savepoint).into());
                    ((*partition).into(), from.into())
                })
                .collect();
            plan.insert("restore".into(), restore.into());
        }
        if let Some(id) = orders.savepoint {
            let mut order = Mapping::new();
            order.insert("id".into(), id.into());
            plan.insert("savepoint".into(), order.into());
        }
        let text = serde_yaml::to_string(&plan).expect("a plan serializes");
        self.publish_text(&text).await;
    }

    /// Writes `text` as the ConfigMap's `plan.yaml`, whatever it is.
    pub async fn publish_text(&self, text: &str) {
        let configmap = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.configmap()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("plan.yaml".to_owned(), text.to_owned())])),
            ..ConfigMap::default()
        };
        self.configmaps
            .patch(
                &self.configmap(),
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&configmap),
            )
            .await
            .expect("the plan ConfigMap can be applied");
    }
}

/// The `spec` of a scenario's job manifest.
pub fn scenario_spec(scenario: &Scenario) -> Value {
    let text = std::fs::read_to_string(&scenario.job_file).expect("the job manifest is readable");
    let manifest: Value = serde_yaml::from_str(&text).expect("the job manifest is YAML");
    manifest["spec"].clone()
}

/// Waits until `worker` runs (or idles under) plan `epoch` and is ready.
pub async fn await_running(worker: &Worker, epoch: u64) {
    wait_for(
        &format!(
            "the worker to run plan epoch {epoch}; log {}",
            worker.log.display()
        ),
        PLAN_TIMEOUT,
        || async {
            (worker.metric("streamjob_plan_epoch") == Some(epoch as f64)
                && worker.status_of("/readyz") == Some(200))
            .then_some(())
        },
    )
    .await;
}

/// A scenario's job on two workers following its plan: epoch 1 gives `a` every partition and
/// `b` none, and a steady producer writes the generated input meanwhile.
pub struct TwoWorkerJob {
    /// The job, its topics and logs.
    pub scenario: Scenario,
    /// Its plan ConfigMap.
    pub home: PlanHome,
    /// The job's spec, for the plans.
    pub spec: Value,
    /// The input being produced.
    pub events: Vec<Event>,
    /// What the job must output for it.
    pub expected: Expected,
    /// Worker `a`, running every partition in epoch 1.
    pub a: Worker,
    /// Worker `b`, idle in epoch 1.
    pub b: Worker,
    producing: Option<JoinHandle<()>>,
}

impl TwoWorkerJob {
    /// Starts both workers under epoch 1, then produces `per_partition` generated records
    /// (from `seed`) per partition in `chunks` chunks, `pause` apart.
    pub async fn start(
        prefix: &str,
        seed: u64,
        per_partition: usize,
        chunks: usize,
        pause: Duration,
    ) -> Self {
        Self::start_with_threads(prefix, seed, per_partition, chunks, pause, 1).await
    }

    /// [`TwoWorkerJob::start`] with `threads` processing threads per worker.
    pub async fn start_with_threads(
        prefix: &str,
        seed: u64,
        per_partition: usize,
        chunks: usize,
        pause: Duration,
        threads: u16,
    ) -> Self {
        let scenario = Scenario::new(prefix).await;
        let home = PlanHome::new(&scenario.name).await;
        let spec = scenario_spec(&scenario);
        let events = scenario::generate(seed, per_partition);
        let expected = scenario::expected(&events);
        home.publish(1, &spec, &[("a", &[0, 1, 2, 3])]).await;
        let a = home.start_worker_with_threads("a", scenario.log(0), threads);
        let b = home.start_worker_with_threads("b", scenario.log(1), threads);
        await_running(&a, 1).await;
        // b owns nothing in epoch 1: it idles and is ready (every partition it owns runs).
        await_running(&b, 1).await;
        let producing = produce_paced(&scenario.bootstrap, &scenario.input, &events, chunks, pause);
        Self {
            scenario,
            home,
            spec,
            events,
            expected,
            a,
            b,
            producing: Some(producing),
        }
    }

    /// Waits until every record is produced.
    pub fn await_produced(&mut self) {
        if let Some(producing) = self.producing.take() {
            producing
                .join()
                .expect("the producer thread does not panic");
        }
    }
}
