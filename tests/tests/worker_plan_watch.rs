//! The worker following its plan in a ConfigMap (`run --plan-configmap`) against the real
//! apiserver, Kafka and storage: it waits for the plan, restarts for a changed pipeline or
//! assignment without losing records, and keeps running when the plan turns invalid.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams},
};
use serde_yaml::{Mapping, Value};
use streamjob_tests::{
    TEST_MANAGER, TempNamespace, kube_client,
    reference::{Event, EventKind},
    scenario::{self, Scenario, assert_only_reference_emissions, per_key},
    stack_env, temp_namespace, unique_name, wait_for,
    worker::{Worker, create_topic, produce, producer, read_topic},
};

const TIMEOUT: Duration = Duration::from_secs(120);
/// Partitions of the map job's input topic.
const MAP_PARTITIONS: i32 = 2;

/// The job's plan ConfigMap in a namespace of its own, and the workers following it.
struct PlanHome {
    namespace: TempNamespace,
    job: String,
    configmaps: Api<ConfigMap>,
}

impl PlanHome {
    async fn new(job: &str) -> Self {
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
    fn start_worker(&self, pod: &str, log: PathBuf) -> Worker {
        let configmap = self.configmap();
        Worker::start(
            &[
                "run",
                "--plan-configmap",
                &configmap,
                "--namespace",
                &self.namespace.name,
                "--pod",
                pod,
            ],
            &log,
            &[],
        )
    }

    /// Publishes the plan of `epoch` running `spec` with `assignment`, as the operator does.
    async fn publish(&self, epoch: u64, spec: &Value, assignment: &[(&str, &[i32])]) {
        let mut plan = Mapping::new();
        let job: Value = serde_yaml::from_str(&format!(
            "{{namespace: {}, name: {}}}",
            self.namespace.name, self.job
        ))
        .unwrap();
        plan.insert("job".into(), job);
        plan.insert("epoch".into(), epoch.into());
        plan.insert("spec".into(), spec.clone());
        let assignment: Mapping = assignment
            .iter()
            .map(|(pod, partitions)| ((*pod).into(), partitions.to_vec().into()))
            .collect();
        plan.insert("assignment".into(), assignment.into());
        self.publish_text(&serde_yaml::to_string(&plan).unwrap())
            .await;
    }

    /// Writes `text` as the ConfigMap's `plan.yaml`, whatever it is.
    async fn publish_text(&self, text: &str) {
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
            .unwrap();
    }
}

/// The `spec` of a scenario's job manifest.
fn scenario_spec(scenario: &Scenario) -> Value {
    let manifest: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&scenario.job_file).unwrap()).unwrap();
    manifest["spec"].clone()
}

/// Waits until `worker` runs (or idles under) plan `epoch` and is ready.
async fn await_running(worker: &Worker, epoch: u64) {
    wait_for(
        &format!(
            "the worker to run plan epoch {epoch}; log {}",
            worker.log.display()
        ),
        TIMEOUT,
        || async {
            (worker.metric("streamjob_plan_epoch") == Some(epoch as f64)
                && worker.status_of("/readyz") == Some(200))
            .then_some(())
        },
    )
    .await;
}

/// `events` round-robin over their partitions (each partition's order kept), so that every
/// partition receives records for as long as they are produced.
fn interleaved(events: &[Event]) -> Vec<Event> {
    let mut produced = BTreeMap::<i32, usize>::new();
    let mut ordered: Vec<(usize, i32, &Event)> = events
        .iter()
        .map(|event| {
            let position = produced.entry(event.partition).or_default();
            *position += 1;
            (*position, event.partition, event)
        })
        .collect();
    ordered.sort_by_key(|&(position, partition, _)| (position, partition));
    ordered
        .into_iter()
        .map(|(_, _, event)| event.clone())
        .collect()
}

/// A job whose pipeline is one `map` giving each record a `shape`, checkpointed to a local
/// directory: what came out shows which pipeline handled each input record.
struct MapJob {
    name: String,
    input: String,
    output: String,
    bootstrap: String,
    dir: PathBuf,
    sent: u64,
}

impl MapJob {
    async fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = Self {
            input: format!("{name}-in"),
            output: format!("{name}-out"),
            bootstrap: stack_env().kafka_bootstrap,
            dir,
            name,
            sent: 0,
        };
        create_topic(&job.bootstrap, &job.input, MAP_PARTITIONS).await;
        create_topic(&job.bootstrap, &job.output, MAP_PARTITIONS).await;
        job
    }

    fn spec(&self, shape: u32) -> Value {
        serde_yaml::from_str(&format!(
            r#"
source: {{kafka: {{bootstrapServers: "{bootstrap}", topic: {input}}}}}
pipeline:
  - map: '{{seq: .seq, shape: {shape}}}'
sink: {{kafka: {{topic: {output}}}}}
checkpoint: {{storage: "file://{dir}/checkpoints", interval: 1s}}
"#,
            bootstrap = self.bootstrap,
            input = self.input,
            output = self.output,
            dir = self.dir.display(),
        ))
        .unwrap()
    }

    /// Produces `count` more records (sequence numbers continue), spread over the partitions;
    /// returns their sequence numbers.
    fn produce(&mut self, count: u64) -> Vec<u64> {
        let events: Vec<Event> = (self.sent..self.sent + count)
            .map(|seq| Event {
                partition: (seq % MAP_PARTITIONS as u64) as i32,
                user: format!("u{}", seq % 7),
                ts: 1_700_000_000_000 + seq as i64,
                amount: 1,
                kind: EventKind::Click,
                seq,
            })
            .collect();
        self.sent += count;
        produce(&producer(&self.bootstrap), &self.input, &events);
        events.iter().map(|e| e.seq).collect()
    }

    /// Waits until every record sent so far came out; returns the shapes each got, by seq.
    async fn await_output(&self) -> BTreeMap<u64, Vec<u64>> {
        wait_for(
            &format!("all {} records on {}", self.sent, self.output),
            TIMEOUT,
            || async {
                let shapes = self.shapes();
                (shapes.len() as u64 == self.sent).then_some(shapes)
            },
        )
        .await
    }

    fn shapes(&self) -> BTreeMap<u64, Vec<u64>> {
        let mut shapes = BTreeMap::<u64, Vec<u64>>::new();
        for record in read_topic(&self.bootstrap, &self.output) {
            let value: serde_json::Value = serde_json::from_str(&record.value).unwrap();
            shapes
                .entry(value["seq"].as_u64().unwrap())
                .or_default()
                .push(value["shape"].as_u64().unwrap());
        }
        shapes
    }

    fn log(&self, pod: &str) -> PathBuf {
        self.dir.join(format!("worker-{pod}.log"))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_waits_for_its_plan_configmap_then_runs_its_partitions() {
    let scenario = Scenario::new("cm-wait").await;
    let home = PlanHome::new(&scenario.name).await;
    let events = scenario::generate(21, 600);
    let expected = scenario::expected(&events);
    produce(&producer(&scenario.bootstrap), &scenario.input, &events);

    let worker = home.start_worker("a", scenario.log(0));
    wait_for(
        "the worker to report the missing ConfigMap",
        TIMEOUT,
        || async {
            worker
                .metric(r#"streamjob_plan_errors_total{reason="missing"}"#)
                .filter(|&n| n >= 1.0)
        },
    )
    .await;
    assert_eq!(
        worker.status_of("/readyz"),
        Some(503),
        "not ready without a plan"
    );
    assert!(
        scenario.output_results().is_empty(),
        "nothing runs without a plan"
    );

    home.publish(1, &scenario_spec(&scenario), &[("a", &[0, 1, 2, 3])])
        .await;
    let results = scenario.await_results(&expected, TIMEOUT).await;
    assert_eq!(
        per_key(&results),
        per_key(&expected.emissions),
        "every emission, in order, once"
    );
    await_running(&worker, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_map_expression_applies_to_records_produced_after_the_change() {
    let mut job = MapJob::new("cm-map").await;
    let home = PlanHome::new(&job.name).await;
    home.publish(1, &job.spec(1), &[("a", &[0, 1])]).await;
    let worker = home.start_worker("a", job.log("a"));
    await_running(&worker, 1).await;
    let before = job.produce(200);
    job.await_output().await;

    // The operator keeps the epoch when only the spec changes.
    home.publish(1, &job.spec(2), &[("a", &[0, 1])]).await;
    wait_for("a second engine run", TIMEOUT, || async {
        worker.metric("streamjob_runs_total").filter(|&n| n == 2.0)
    })
    .await;
    await_running(&worker, 1).await;
    let after = job.produce(200);
    let shapes = job.await_output().await;

    for seq in before {
        assert_eq!(shapes[&seq], vec![1], "record {seq} from before the change");
    }
    for seq in after {
        assert_eq!(shapes[&seq], vec![2], "record {seq} from after the change");
    }
    assert!(
        (0..job.sent).all(|seq| shapes.contains_key(&seq)),
        "every input record came out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn moving_partitions_to_a_second_worker_continues_from_the_first_ones_checkpoints() {
    let scenario = Scenario::new("cm-move").await;
    let home = PlanHome::new(&scenario.name).await;
    let spec = scenario_spec(&scenario);
    let events = scenario::generate(22, 3000);
    let expected = scenario::expected(&events);

    home.publish(1, &spec, &[("a", &[0, 1, 2, 3])]).await;
    let a = home.start_worker("a", scenario.log(0));
    let b = home.start_worker("b", scenario.log(1));
    await_running(&a, 1).await;
    // b owns nothing in epoch 1: it idles and is ready (every partition it owns runs).
    await_running(&b, 1).await;

    let (bootstrap, topic, to_produce) = (
        scenario.bootstrap.clone(),
        scenario.input.clone(),
        interleaved(&events),
    );
    let producing = std::thread::spawn(move || {
        let producer = producer(&bootstrap);
        for chunk in to_produce.chunks(to_produce.len() / 40 + 1) {
            produce(&producer, &topic, chunk);
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    wait_for("a to checkpoint partitions 2 and 3", TIMEOUT, || async {
        [2, 3]
            .iter()
            .all(|p| {
                a.metric(&format!("streamjob_checkpoint_offset{{partition=\"{p}\"}}"))
                    .is_some_and(|offset| offset > 0.0)
            })
            .then_some(())
    })
    .await;

    home.publish(2, &spec, &[("a", &[0, 1]), ("b", &[2, 3])])
        .await;
    await_running(&a, 2).await;
    await_running(&b, 2).await;
    producing.join().unwrap();

    let results = scenario.await_results(&expected, TIMEOUT).await;
    assert_only_reference_emissions(&results, &expected);
    for (worker, partitions) in [(&a, [0, 1]), (&b, [2, 3])] {
        for p in partitions {
            let end = events.iter().filter(|e| e.partition == p).count() as f64;
            assert_eq!(
                worker.metric(&format!("streamjob_processed_offset{{partition=\"{p}\"}}")),
                Some(end),
                "partition {p} processed to its end by its epoch-2 owner; log {}",
                worker.log.display()
            );
        }
    }
    let log = std::fs::read_to_string(&b.log).unwrap();
    for p in [2, 3] {
        assert!(
            log.lines().any(|line| line.contains("partition restored")
                && line.contains(&format!("partition={p} epoch=1 "))),
            "b restores partition {p} from a checkpoint a wrote in epoch 1; log {}",
            b.log.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_plan_leaves_the_worker_running_its_current_plan() {
    let mut job = MapJob::new("cm-invalid").await;
    let home = PlanHome::new(&job.name).await;
    home.publish(1, &job.spec(1), &[("a", &[0, 1])]).await;
    let mut worker = home.start_worker("a", job.log("a"));
    await_running(&worker, 1).await;
    job.produce(100);
    job.await_output().await;

    home.publish_text("job: [this is not, a plan\n").await;
    wait_for("the invalid plan to be counted", TIMEOUT, || async {
        worker
            .metric(r#"streamjob_plan_errors_total{reason="invalid"}"#)
            .filter(|&n| n >= 1.0)
    })
    .await;

    job.produce(100);
    let shapes = job.await_output().await;
    assert!(
        shapes.values().all(|s| s == &vec![1]),
        "every record ran through the epoch-1 pipeline, once"
    );
    assert!(worker.is_running(), "the worker keeps running");
    assert_eq!(worker.status_of("/readyz"), Some(200), "and stays ready");
    assert_eq!(worker.metric("streamjob_plan_epoch"), Some(1.0));
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(log.contains("plan refused"), "the refusal is logged");
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "SIGTERM still ends the process cleanly"
    );
}
