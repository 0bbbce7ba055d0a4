//! The S3 server goes away for a while: processing continues, checkpoint failures are
//! counted, and checkpoints resume when it is back. Its own test binary, because it stops the
//! shared S3 server.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::{process::Command, time::Duration};

use streamjob_tests::{
    repo_root,
    scenario::{self, PARTITIONS, Scenario, assert_only_reference_emissions},
    wait_for,
    worker::{Worker, produce, producer},
};

fn s3_server(action: &str) {
    let stack = repo_root().join("tests/stack/lib");
    let script = format!(
        "set -e; source {0}/common.sh; source {0}/s3.sh; s3_{action}",
        stack.display()
    );
    let status = Command::new("bash")
        .args(["-c", &script])
        .status()
        .expect("bash runs");
    assert!(status.success(), "s3_{action} failed");
}

/// Stops the S3 server; starts it again when dropped, even if the test fails.
struct S3Outage;

impl S3Outage {
    fn start() -> Self {
        s3_server("down");
        S3Outage
    }
}

impl Drop for S3Outage {
    fn drop(&mut self) {
        s3_server("up");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn processing_continues_while_s3_is_down_and_checkpoints_resume() {
    let scenario = Scenario::new("s3down").await;
    let events = scenario::generate(6, 1600);
    let expected = scenario::expected(&events);
    let producer = producer(&scenario.bootstrap);
    // Fractions of every partition's records, each produced in partition order.
    let by_partition: Vec<Vec<_>> = (0..PARTITIONS)
        .map(|p| {
            events
                .iter()
                .filter(|e| e.partition == p)
                .cloned()
                .collect()
        })
        .collect();
    let slice = |from: f64, to: f64| -> Vec<_> {
        by_partition
            .iter()
            .flat_map(|evs| {
                let (a, b) = (
                    (evs.len() as f64 * from) as usize,
                    (evs.len() as f64 * to) as usize,
                );
                evs[a..b].to_vec()
            })
            .collect()
    };

    produce(&producer, &scenario.input, &slice(0.0, 0.3));
    let worker = Worker::start_job(&scenario.job_file, &scenario.log(0));
    wait_for("a first checkpoint", Duration::from_secs(60), || async {
        (worker.metric("streamjob_checkpoints_total").unwrap_or(0.0) >= PARTITIONS as f64)
            .then_some(())
    })
    .await;

    let outage = S3Outage::start();
    let records_before = records_in(&worker);
    produce(&producer, &scenario.input, &slice(0.3, 0.7));
    wait_for(
        "checkpoint failures while S3 is down",
        Duration::from_secs(60),
        || async {
            (worker
                .metric("streamjob_checkpoint_failures_total")
                .unwrap_or(0.0)
                >= 1.0)
                .then_some(())
        },
    )
    .await;
    wait_for(
        "processing to continue while S3 is down",
        Duration::from_secs(60),
        || async { (records_in(&worker) > records_before).then_some(()) },
    )
    .await;
    let completed_during_outage = worker.metric("streamjob_checkpoints_total").unwrap_or(0.0);

    drop(outage);
    produce(&producer, &scenario.input, &slice(0.7, 1.0));
    wait_for(
        "checkpoints to resume once S3 is back",
        Duration::from_secs(90),
        || async {
            (worker.metric("streamjob_checkpoints_total").unwrap_or(0.0) > completed_during_outage)
                .then_some(())
        },
    )
    .await;
    let results = scenario
        .await_results(&expected, Duration::from_secs(120))
        .await;
    assert_only_reference_emissions(&results, &expected);
}

fn records_in(worker: &Worker) -> f64 {
    (0..PARTITIONS)
        .filter_map(|p| worker.metric(&format!("streamjob_records_in_total{{partition=\"{p}\"}}")))
        .sum()
}
