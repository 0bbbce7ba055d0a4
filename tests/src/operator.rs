//! Running `streamjob-operator` from tests, next to a pod runner for its workers, and the
//! StreamJob manifests and Secrets the tests apply.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Pod},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{Api, Client, api::ListParams};
use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use serde_json::{Value, json};
use streamjob_operator::api::StreamJob;
use streamjob_worker::plan::Plan;

use crate::{
    TempNamespace, ensure_crd, kube_client,
    pod_runner::harness::PodRunner,
    reference::Event,
    run_ok,
    scenario::Scenario,
    temp_namespace, terminate_child, wait_for,
    worker::{free_port, http_get, metric_value, produce, worker_bin},
    workspace_bin,
};

/// The image the tests' operator gives workers; the pod runner maps their command to the
/// locally built worker.
pub const TEST_WORKER_IMAGE: &str = "streamjob-worker:test";

/// Name of the Secret holding the local S3 server's credentials in a test namespace.
pub const S3_SECRET: &str = "checkpoint-storage";

/// A running operator process.
pub struct Operator {
    child: Child,
    args: Vec<String>,
    /// Its metrics port.
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
}

impl Operator {
    /// Starts an operator that reconciles only `namespace`, with `extra` arguments, logging
    /// to `log`.
    pub fn start(namespace: &str, extra: &[&str], log: &Path) -> Self {
        let port = free_port();
        let mut args = vec![
            "run".to_owned(),
            format!("--namespace={namespace}"),
            format!("--metrics-addr=127.0.0.1:{port}"),
            format!("--worker-image={TEST_WORKER_IMAGE}"),
            "--status-interval=2s".to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        Self {
            child: spawn(&args, log),
            args,
            port,
            log: log.to_path_buf(),
        }
    }

    /// SIGKILLs the operator and starts it again with the same arguments.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.args, &self.log);
    }

    /// SIGTERMs the operator and waits for it to exit.
    pub fn terminate(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(20));
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The value of one metric series, if the operator answers.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&http_get(self.port, "/metrics")?, series)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("can open the operator log");
    Command::new(workspace_bin("streamjob-operator"))
        .args(args)
        .env("RUST_LOG", "info,streamjob_operator=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the operator starts")
}

/// A pod runner for the operator's worker pods in `namespace`.
pub fn worker_runner(namespace: &str) -> PodRunner {
    let worker = worker_bin();
    PodRunner::for_namespace(
        namespace,
        &[(
            "/usr/local/bin/streamjob-worker",
            worker.to_str().expect("utf-8 path"),
        )],
    )
}

/// Creates the Secret with the local S3 server's credentials, as a user would for
/// `spec.checkpoint.secretRef`.
pub fn create_s3_secret(namespace: &str) {
    let literal = |name: &str| {
        let value = std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the stack"));
        format!("--from-literal={name}={value}")
    };
    run_ok(
        "kubectl",
        &[
            "create",
            "secret",
            "generic",
            S3_SECRET,
            "-n",
            namespace,
            &literal("AWS_ACCESS_KEY_ID"),
            &literal("AWS_SECRET_ACCESS_KEY"),
            &literal("AWS_REGION"),
            &literal("AWS_ENDPOINT"),
            &literal("AWS_ALLOW_HTTP"),
        ],
    );
}

/// The scenario's job as a manifest for `namespace`, with `parallelism` workers and S3
/// credentials from [`S3_SECRET`].
pub fn job_manifest(scenario: &Scenario, namespace: &str, parallelism: i32) -> Value {
    let yaml = std::fs::read_to_string(&scenario.job_file).expect("the job manifest exists");
    let mut job: Value = serde_yaml::from_str(&yaml).expect("the job manifest parses");
    job["metadata"]["namespace"] = json!(namespace);
    job["spec"]["parallelism"] = json!(parallelism);
    job["spec"]["checkpoint"]["secretRef"] = json!({ "name": S3_SECRET });
    job
}

/// `kubectl apply`s `manifest` (as a user would), saved next to the scenario's logs.
pub fn kubectl_apply(scenario: &Scenario, manifest: &Value) {
    kubectl_apply_in(&scenario.dir, manifest);
}

/// `kubectl apply`s `manifest`, saved as `applied.yaml` in `dir`.
pub fn kubectl_apply_in(dir: &Path, manifest: &Value) {
    let path = dir.join("applied.yaml");
    std::fs::write(&path, serde_yaml::to_string(manifest).expect("YAML")).expect("write");
    run_ok(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "-f",
            path.to_str().expect("utf-8"),
        ],
    );
}

/// Waits until the job's condition `type_` has status `status`; returns the job.
pub async fn wait_for_condition(
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> StreamJob {
    let jobs: Api<StreamJob> = Api::namespaced(kube_client().await, namespace);
    wait_for(
        &format!("condition {type_}={status} on StreamJob {namespace}/{name}"),
        timeout,
        || async {
            let job = jobs.get(name).await.ok()?;
            let fresh = job.status.as_ref()?.observed_generation == job.metadata.generation;
            let holds = job
                .status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == status);
            (fresh && holds).then_some(job)
        },
    )
    .await
}

/// Whether the job's status describes its current generation, no operation (rescale,
/// upgrade, savepoint) is in flight, and it is Ready.
pub fn settled(job: &StreamJob) -> bool {
    job.status.as_ref().is_some_and(|status| {
        status.observed_generation == job.metadata.generation
            && status.rescale.is_none()
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// The value of `series` in the metrics of the worker pod at `ip`.
pub fn worker_metric(ip: &str, series: &str) -> Option<f64> {
    metric_value(&worker_metrics(ip)?, series)
}

/// The metrics exposition of the worker pod at `ip` (its `STREAMJOB_METRICS_ADDR` port).
pub fn worker_metrics(ip: &str) -> Option<String> {
    crate::worker::http_get_from(ip, 9090, "/metrics")
}

/// The job's current state.
pub async fn get_job(client: &Client, namespace: &str, name: &str) -> StreamJob {
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), namespace);
    jobs.get(name).await.expect("the StreamJob exists")
}

/// One operator test's world: a namespace holding the S3 Secret, a scenario's topics, a pod
/// runner for the namespace's workers and an operator reconciling the namespace. Dropped in
/// that order reversed: operator, runner (its pods go), namespace.
pub struct OperatorFixture {
    /// The operator.
    pub operator: Operator,
    _runner: PodRunner,
    /// Topics, job manifest and expected output.
    pub scenario: Scenario,
    /// Admin client.
    pub client: Client,
    namespace: TempNamespace,
}

impl OperatorFixture {
    /// Sets up a world for the scenario named after `prefix`.
    pub async fn start(prefix: &str) -> Self {
        Self::start_with(prefix, &[]).await
    }

    /// As [`Self::start`], the operator started with `extra` arguments.
    pub async fn start_with(prefix: &str, extra: &[&str]) -> Self {
        let client = kube_client().await;
        ensure_crd(&client).await;
        let namespace = temp_namespace(&format!("op-{prefix}"));
        create_s3_secret(&namespace.name);
        let scenario = Scenario::new(prefix).await;
        let runner = worker_runner(&namespace.name);
        let operator = Operator::start(&namespace.name, extra, &scenario.dir.join("operator.log"));
        Self {
            operator,
            _runner: runner,
            scenario,
            client,
            namespace,
        }
    }

    /// The test namespace.
    pub fn ns(&self) -> &str {
        &self.namespace.name
    }
}

/// A worker pod of `job` and the process id of its container, as the pod runner reports it.
pub async fn worker_process(client: &Client, namespace: &str, job: &str) -> (String, i32) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("streamjob.dev/job={job}"));
    let pod = pods
        .list(&params)
        .await
        .expect("the job's pods can be listed")
        .items
        .into_iter()
        .next()
        .expect("the job has a pod");
    let container_id = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|statuses| statuses.into_iter().next())
        .and_then(|status| status.container_id)
        .expect("the pod's container runs");
    let pid = container_id
        .trim_start_matches("streamjob-pod-runner://")
        .parse()
        .expect("the pod runner's container ids carry the pid");
    (pod.metadata.name.unwrap_or_default(), pid)
}

/// The worker pods of `job` by name, with their IPs.
pub async fn worker_ips(
    client: &Client,
    namespace: &str,
    job: &str,
) -> std::collections::BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().labels(&format!("streamjob.dev/job={job}"));
    pods.list(&params)
        .await
        .expect("the job's pods can be listed")
        .items
        .into_iter()
        .filter_map(|pod| Some((pod.metadata.name?, pod.status?.pod_ip?)))
        .collect()
}

/// Sends `signal` to process `pid`.
pub fn signal_process(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("the process exists");
}

/// The plan in a plan ConfigMap.
pub fn plan_of(cm: &ConfigMap) -> Plan {
    let data = cm.data.as_ref().expect("the plan ConfigMap has data");
    serde_yaml::from_str(&data["plan.yaml"]).expect("the plan parses")
}

/// The plan the operator published for `job`.
pub async fn published_plan(client: &Client, namespace: &str, job: &str) -> Plan {
    let plans: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = plans
        .get(&format!("{job}-plan"))
        .await
        .expect("the plan ConfigMap exists");
    plan_of(&cm)
}

/// The job's condition `type_`.
pub fn condition(job: &StreamJob, type_: &str) -> Condition {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("the job has a {type_} condition"))
        .clone()
}

/// Produces the first half of `events` and waits until results come out; returns the rest.
pub async fn produce_first_half<'a>(
    scenario: &Scenario,
    producer: &ThreadedProducer<DefaultProducerContext>,
    events: &'a [Event],
) -> &'a [Event] {
    let (first, rest) = events.split_at(events.len() / 2);
    produce(producer, &scenario.input, first);
    wait_for("some results", Duration::from_secs(60), || async {
        (!scenario.output_results().is_empty()).then_some(())
    })
    .await;
    rest
}

impl OperatorFixture {
    /// Applies the scenario's job with `parallelism` workers and waits until it is ready.
    pub async fn run_job(&self, parallelism: i32) -> StreamJob {
        kubectl_apply(
            &self.scenario,
            &job_manifest(&self.scenario, self.ns(), parallelism),
        );
        let ready = Duration::from_secs(120);
        wait_for_condition(self.ns(), &self.scenario.name, "Ready", "True", ready).await
    }
}
