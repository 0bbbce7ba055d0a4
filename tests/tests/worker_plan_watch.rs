//! The worker following its plan in a ConfigMap (`run --plan-configmap`) against the real
//! apiserver, Kafka and storage: it waits for the plan, restarts for a changed pipeline, hands
//! partitions to another worker without losing records, and keeps running when the plan turns
//! invalid. Handovers with savepoints: `worker_handover.rs`.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_yaml::Value;
use streamjob_tests::{
    plan_home::{PLAN_TIMEOUT as TIMEOUT, PlanHome, TwoWorkerJob, await_running, scenario_spec},
    reference::{Event, EventKind},
    scenario::{self, Scenario, assert_only_reference_emissions, per_key},
    stack_env, unique_name, wait_for,
    worker::{create_topic, produce, producer, read_topic},
};

/// Partitions of the map job's input topic.
const MAP_PARTITIONS: i32 = 2;

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
    let mut job = TwoWorkerJob::start("cm-move", 22, 3000, 40, Duration::from_millis(150)).await;
    wait_for("a to checkpoint partitions 2 and 3", TIMEOUT, || async {
        [2, 3]
            .iter()
            .all(|p| {
                job.a
                    .metric(&format!("streamjob_checkpoint_offset{{partition=\"{p}\"}}"))
                    .is_some_and(|offset| offset > 0.0)
            })
            .then_some(())
    })
    .await;

    job.home
        .publish(2, &job.spec, &[("a", &[0, 1]), ("b", &[2, 3])])
        .await;
    await_running(&job.a, 2).await;
    await_running(&job.b, 2).await;
    job.await_produced();

    let results = job.scenario.await_results(&job.expected, TIMEOUT).await;
    assert_only_reference_emissions(&results, &job.expected);
    for (worker, partitions) in [(&job.a, [0, 1]), (&job.b, [2, 3])] {
        for p in partitions {
            let end = job.events.iter().filter(|e| e.partition == p).count() as f64;
            assert_eq!(
                worker.processed_offset(p),
                Some(end),
                "partition {p} processed to its end by its epoch-2 owner; log {}",
                worker.log.display()
            );
        }
    }
    let log = std::fs::read_to_string(&job.b.log).unwrap();
    for p in [2, 3] {
        assert!(
            log.lines().any(|line| line.contains("partition restored")
                && line.contains(&format!("partition={p} epoch=1 "))),
            "b restores partition {p} from a checkpoint a wrote in epoch 1; log {}",
            job.b.log.display()
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
