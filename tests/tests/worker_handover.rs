//! Workers following plans that move partitions between them inside their runs, against the
//! real apiserver, Kafka and S3: the coordinated savepoint of a rescale is written, kept
//! partitions never stop, moved ones continue exactly where their part ends, and a gaining
//! worker waits for a part that is not written until a newer plan restores it from elsewhere.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use object_store::{ObjectStoreExt, path::Path};
use streamjob_tests::{
    plan_home::{PLAN_TIMEOUT, PlanOrders, TwoWorkerJob},
    reference::Event,
    scenario::{PARTITIONS, assert_only_reference_emissions, per_key},
    wait_for,
    worker::{Worker, list_objects, s3_store},
};
use streamjob_worker::{
    paths::JobPaths,
    snapshot::{self, SnapshotHeader},
};

/// Records per partition: enough that production outlasts the handovers.
const PER_PARTITION: usize = 3000;
/// Production in this many chunks, `PAUSE` apart (about 20 s of steady input). A handover
/// can take little more than one 100 ms sampling interval: records must arrive more often
/// than that for a kept partition's offset to be able to advance during it.
const CHUNKS: usize = 600;
const PAUSE: Duration = Duration::from_millis(30);
const SAVEPOINT_RESTORES: &str = r#"streamjob_partition_restores_total{source="savepoint"}"#;
const CHECKPOINT_RESTORES: &str = r#"streamjob_partition_restores_total{source="checkpoint"}"#;

/// The offset after the last record of each partition.
fn end_offsets(events: &[Event]) -> Vec<f64> {
    (0..PARTITIONS)
        .map(|p| events.iter().filter(|e| e.partition == p).count() as f64)
        .collect()
}

/// The parts of savepoint `id` of `job` in S3, by partition, with their headers.
async fn savepoint_parts(job: &TwoWorkerJob, id: &str) -> BTreeMap<i32, SnapshotHeader> {
    let store = s3_store();
    let name = &job.scenario.name;
    let paths = JobPaths::new(&Path::from(name.as_str()), &job.home.namespace.name, name);
    let mut parts = BTreeMap::new();
    for location in list_objects(&store, &paths.savepoint_dir(id)).await {
        let bytes = store.get(&location).await.unwrap().bytes().await.unwrap();
        let header = snapshot::decode(&bytes).unwrap().header;
        assert_eq!(
            location,
            paths.savepoint_part(id, header.partition),
            "a part names its partition"
        );
        parts.insert(header.partition, header);
    }
    parts
}

/// The `offset=` of the first line of `worker`'s log with `message` and every one of
/// `fields`.
fn logged_offset(worker: &Worker, message: &str, fields: &[&str]) -> Option<i64> {
    let log = std::fs::read_to_string(&worker.log).unwrap();
    let line = log
        .lines()
        .find(|line| line.contains(message) && fields.iter().all(|f| line.contains(f)))?;
    let offset = line.split_once(" offset=")?.1;
    offset.split_whitespace().next()?.parse().ok()
}

/// Starts `job` and waits until `a` has processed records of every partition.
async fn started(prefix: &str, seed: u64) -> TwoWorkerJob {
    let job = TwoWorkerJob::start(prefix, seed, PER_PARTITION, CHUNKS, PAUSE).await;
    await_progress(&job.a, &[0, 1, 2, 3]).await;
    job
}

/// Waits until the input is produced and the output equals the reference: every emission,
/// in order, exactly once (a handover neither loses nor replays a record).
async fn assert_reference_output(job: &mut TwoWorkerJob) {
    job.await_produced();
    let results = job
        .scenario
        .await_results(&job.expected, PLAN_TIMEOUT)
        .await;
    assert_only_reference_emissions(&results, &job.expected);
    assert_eq!(
        per_key(&results),
        per_key(&job.expected.emissions),
        "every emission, in order, once"
    );
}

/// Waits until `worker` has processed records of every partition in `partitions`.
async fn await_progress(worker: &Worker, partitions: &[i32]) {
    wait_for("processing on every partition", PLAN_TIMEOUT, || async {
        partitions
            .iter()
            .all(|&p| worker.processed_offset(p).is_some_and(|o| o > 100.0))
            .then_some(())
    })
    .await;
}

/// Waits until each of `owners` has processed its partitions to their ends.
async fn await_processed_by(owners: &[(&Worker, &[i32])], ends: &[f64]) {
    wait_for(
        "every partition processed to its end by its owner",
        PLAN_TIMEOUT,
        || async {
            owners
                .iter()
                .all(|(worker, partitions)| {
                    partitions
                        .iter()
                        .all(|&p| worker.processed_offset(p) == Some(ends[p as usize]))
                })
                .then_some(())
        },
    )
    .await;
}

/// What a worker's kept partitions did while a handover went on.
struct KeptWhileHandingOver {
    /// Processed offsets when the plan was published, and when the handover was done.
    before: Vec<f64>,
    after: Vec<f64>,
    /// Samples in which the worker was not ready.
    unready: usize,
}

/// Samples `worker`'s offsets of `kept` and its readiness until `done` holds.
async fn watch_kept(
    worker: &Worker,
    kept: &[i32],
    done: impl Fn() -> bool,
) -> KeptWhileHandingOver {
    let offsets = || -> Vec<f64> {
        kept.iter()
            .map(|&p| worker.processed_offset(p).unwrap_or(0.0))
            .collect()
    };
    let before = offsets();
    let deadline = Instant::now() + PLAN_TIMEOUT;
    let mut unready = 0;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the handover did not finish within {PLAN_TIMEOUT:?}"
        );
        if worker.status_of("/readyz") != Some(200) {
            unready += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    KeptWhileHandingOver {
        before,
        after: offsets(),
        unready,
    }
}

/// Whether `worker` runs plan `epoch`, is ready, and restored `count` partitions from
/// savepoint parts.
fn took_over(worker: &Worker, epoch: u64, count: f64) -> bool {
    worker.metric("streamjob_plan_epoch") == Some(epoch as f64)
        && worker.metric(SAVEPOINT_RESTORES) == Some(count)
        && worker.status_of("/readyz") == Some(200)
}

/// Asserts that `worker` restored each of `partitions` exactly where its part of `savepoint`
/// ends.
fn assert_restored_from_parts(
    worker: &Worker,
    savepoint: &str,
    parts: &BTreeMap<i32, SnapshotHeader>,
    partitions: &[i32],
) {
    for &p in partitions {
        let part = parts[&p].id;
        assert_eq!(
            logged_offset(
                worker,
                "partition restored",
                &[
                    &format!("partition={p} epoch={} ", part.epoch),
                    &format!("source=savepoint {savepoint}"),
                ],
            ),
            Some(part.next_offset),
            "partition {p} restored from its part of {savepoint}; log {}",
            worker.log.display()
        );
    }
}

/// Epoch 2 of a scale-out from `a` alone to `a` and `b`: partitions 2 and 3 move to `b`
/// through savepoint `e2-rescale`. Returns when `b` runs them.
async fn scale_out(job: &TwoWorkerJob) -> KeptWhileHandingOver {
    job.home
        .publish_with(
            2,
            &job.spec,
            &[("a", &[0, 1]), ("b", &[2, 3])],
            PlanOrders {
                savepoint: Some("e2-rescale"),
                restore: &[(2, "e2-rescale"), (3, "e2-rescale")],
            },
        )
        .await;
    watch_kept(&job.a, &[0, 1], || took_over(&job.b, 2, 2.0)).await
}

/// Asserts that savepoint `id` has a part of every partition, written under `epoch`.
async fn assert_complete_savepoint(
    job: &TwoWorkerJob,
    id: &str,
    epoch: u64,
) -> BTreeMap<i32, SnapshotHeader> {
    let parts = savepoint_parts(job, id).await;
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 3],
        "every partition has its part of {id}"
    );
    assert!(parts.values().all(|h| h.id.epoch == epoch), "{parts:?}");
    parts
}

/// Asserts that `kept` partitions 0 and 1 advanced during the handover.
fn assert_advanced(kept: &KeptWhileHandingOver) {
    for (i, p) in [0, 1].iter().enumerate() {
        assert!(
            kept.after[i] > kept.before[i],
            "partition {p} advanced on a during the handover: {} -> {}",
            kept.before[i],
            kept.after[i]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_out_moves_partitions_through_a_savepoint_while_kept_ones_never_stop() {
    scaling_out_keeps_kept_partitions_running(started("ho-out", 31).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_out_workers_with_two_processing_threads_hands_over_in_each_of_them() {
    // Lanes split by partition number: on a, {0, 2} and {1, 3}; each loses one and keeps
    // one, and on b each gains one.
    let job =
        TwoWorkerJob::start_with_threads("ho-lanes", 34, PER_PARTITION, CHUNKS, PAUSE, 2).await;
    await_progress(&job.a, &[0, 1, 2, 3]).await;
    scaling_out_keeps_kept_partitions_running(job).await;
}

/// Scales `job` out and checks the handover: a complete savepoint, b restored from it, a's
/// kept partitions ran on and a stayed ready, the output is the reference exactly once.
async fn scaling_out_keeps_kept_partitions_running(mut job: TwoWorkerJob) {
    let kept = scale_out(&job).await;

    let parts = assert_complete_savepoint(&job, "e2-rescale", 2).await;
    assert_eq!(job.a.metric("streamjob_savepoint_parts_total"), Some(4.0));
    assert_restored_from_parts(&job.b, "e2-rescale", &parts, &[2, 3]);
    assert_advanced(&kept);
    assert_eq!(kept.unready, 0, "a stayed ready throughout the handover");

    assert_reference_output(&mut job).await;
    let ends = end_offsets(&job.events);
    await_processed_by(&[(&job.a, &[0, 1]), (&job.b, &[2, 3])], &ends).await;
    assert_eq!(
        job.a.metric("streamjob_runs_total"),
        Some(1.0),
        "a never restarted; log {}",
        job.a.log.display()
    );
    assert_eq!(job.a.metric("streamjob_handovers_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_back_in_hands_the_leaving_workers_partitions_back_through_a_savepoint() {
    let mut job = started("ho-in", 32).await;
    scale_out(&job).await;
    await_progress(&job.b, &[2, 3]).await;

    job.home
        .publish_with(
            3,
            &job.spec,
            &[("a", &[0, 1, 2, 3])],
            PlanOrders {
                savepoint: Some("e3-rescale"),
                restore: &[(2, "e3-rescale"), (3, "e3-rescale")],
            },
        )
        .await;
    let kept = watch_kept(&job.a, &[0, 1], || took_over(&job.a, 3, 2.0)).await;

    let parts = assert_complete_savepoint(&job, "e3-rescale", 3).await;
    let b = &job.b;
    assert_eq!(
        b.metric("streamjob_savepoint_parts_total"),
        Some(2.0),
        "b wrote the parts of the partitions it gave back"
    );
    assert_restored_from_parts(&job.a, "e3-rescale", &parts, &[2, 3]);
    for p in [2, 3] {
        assert_eq!(
            logged_offset(
                b,
                "partition released",
                &[&format!("partition={p} after=savepoint e3-rescale ")]
            ),
            Some(parts[&p].id.next_offset),
            "b released partition {p} once its part was durable; log {}",
            b.log.display()
        );
    }
    assert_advanced(&kept);

    assert_reference_output(&mut job).await;
    await_processed_by(&[(&job.a, &[0, 1, 2, 3])], &end_offsets(&job.events)).await;
    let (a, b) = (&job.a, &job.b);
    assert_eq!(
        a.metric("streamjob_runs_total"),
        Some(1.0),
        "a never restarted"
    );
    assert_eq!(
        b.metric("streamjob_runs_total"),
        Some(2.0),
        "b ran idle, then one engine run that gave its partitions back without restarting"
    );
    assert_eq!(
        b.status_of("/readyz"),
        Some(200),
        "b, owning nothing, is ready"
    );
    assert_eq!(b.metric("streamjob_partitions_restoring"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gaining_worker_waits_for_a_missing_part_until_a_newer_plan_restores_from_checkpoints() {
    let mut job = started("ho-missing", 33).await;
    let (a, b) = (&job.a, &job.b);

    // The plan restores 2 and 3 from a savepoint nobody is told to write.
    job.home
        .publish_with(
            2,
            &job.spec,
            &[("a", &[0, 1]), ("b", &[2, 3])],
            PlanOrders {
                savepoint: None,
                restore: &[(2, "e2-rescale"), (3, "e2-rescale")],
            },
        )
        .await;
    let released: Vec<i64> = wait_for(
        "a to release 2 and 3 after final checkpoints",
        PLAN_TIMEOUT,
        || async {
            [2, 3]
                .iter()
                .map(|p| {
                    logged_offset(
                        a,
                        "partition released",
                        &[&format!("partition={p} after=checkpoint epoch=1 ")],
                    )
                })
                .collect::<Option<Vec<_>>>()
        },
    )
    .await;
    wait_for("b to wait for the missing parts", PLAN_TIMEOUT, || async {
        let log = std::fs::read_to_string(&b.log).unwrap();
        let waiting = [2, 3].iter().all(|p| {
            log.lines().any(|line| {
                line.contains("waiting for the partition's savepoint part")
                    && line.contains(&format!("partition={p} "))
            })
        });
        (waiting && b.metric("streamjob_partitions_restoring") == Some(2.0)).then_some(())
    })
    .await;
    // Several polls of the part later, b still waits and has run nothing of 2 and 3.
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        assert_eq!(
            b.status_of("/readyz"),
            Some(503),
            "b is not ready while it waits"
        );
        assert_eq!(b.processed_offset(2), None, "b runs nothing of partition 2");
        assert_eq!(b.processed_offset(3), None, "b runs nothing of partition 3");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The operator's fallback: a newer epoch without the restore entries.
    job.home
        .publish(3, &job.spec, &[("a", &[0, 1]), ("b", &[2, 3])])
        .await;
    wait_for(
        "b to restore 2 and 3 from checkpoints",
        PLAN_TIMEOUT,
        || async {
            (b.metric(CHECKPOINT_RESTORES) == Some(2.0)
                && b.metric("streamjob_plan_epoch") == Some(3.0)
                && b.status_of("/readyz") == Some(200))
            .then_some(())
        },
    )
    .await;
    for (p, offset) in [2, 3].iter().zip(&released) {
        assert_eq!(
            logged_offset(
                b,
                "partition restored",
                &[
                    &format!("partition={p} epoch=1 "),
                    "source=latest checkpoint"
                ],
            ),
            Some(*offset),
            "b restored partition {p} from a's final checkpoint; log {}",
            b.log.display()
        );
    }

    assert_reference_output(&mut job).await;
    await_processed_by(
        &[(&job.a, &[0, 1]), (&job.b, &[2, 3])],
        &end_offsets(&job.events),
    )
    .await;
    assert_eq!(
        job.a.metric("streamjob_runs_total"),
        Some(1.0),
        "a never restarted"
    );
    assert_eq!(
        job.b.metric("streamjob_runs_total"),
        Some(2.0),
        "b's engine run went on when the newer plan changed where it restores from"
    );
}
