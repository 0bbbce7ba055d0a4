//! The worker against real Kafka and S3: window results equal an independent reference,
//! and crashes, corrupt snapshots, poison records and SIGTERM lose nothing.

// A failed step fails the test: panicking is how these harness helpers report it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, path::Path};
use rand::{Rng, SeedableRng, rngs::StdRng};
use streamjob_tests::{
    reference::{Event, EventKind},
    scenario::{self, PARTITIONS, Scenario, assert_only_reference_emissions, finals, per_key},
    stack_env, wait_for,
    worker::{Worker, produce, producer},
};

const RESULT_TIMEOUT: Duration = Duration::from_secs(120);

fn s3() -> impl ObjectStore {
    AmazonS3Builder::from_env()
        .with_bucket_name(stack_env().s3_bucket)
        .build()
        .unwrap()
}

/// Checkpoint objects of `partition`, sorted by name (= by epoch, then offset).
async fn checkpoints(job: &str, partition: i32) -> Vec<Path> {
    let dir = Path::from(format!("{job}/tests/{job}/checkpoints/p-{partition:05}"));
    let mut paths: Vec<Path> = s3()
        .list(Some(&dir))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .unwrap();
    paths.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    paths
}

/// Offsets committed by consumer group `group` on every partition of `topic`.
fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    use rdkafka::{
        ClientConfig, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            committed
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw())
                .unwrap_or(-1)
        })
        .collect()
}

/// The per-partition counts of `events`, i.e. the offset after the last one.
fn end_offsets(events: &[Event]) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| events.iter().filter(|e| e.partition == p).count() as i64)
        .collect()
}

/// Waits until the worker has processed up to `ends` on every partition.
async fn await_processed(worker: &Worker, ends: &[i64]) {
    wait_for(
        "the worker to process every produced record",
        RESULT_TIMEOUT,
        || async {
            ends.iter()
                .enumerate()
                .all(|(p, end)| {
                    worker.metric(&format!("streamjob_processed_offset{{partition=\"{p}\"}}"))
                        == Some(*end as f64)
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn window_results_equal_an_independent_reference() {
    let scenario = Scenario::new("windows").await;
    let events = scenario::generate(1, 1500);
    let expected = scenario::expected(&events);
    assert!(
        expected.late_dropped > 0,
        "the stream must contain records beyond the allowed lateness"
    );
    assert!(
        expected.emissions.len() > expected.finals.len(),
        "the stream must contain late records that update fired windows"
    );
    produce(&producer(&scenario.bootstrap), &scenario.input, &events);

    let worker = Worker::start_job(&scenario.job_file, &scenario.log(0));
    let results = scenario.await_results(&expected, RESULT_TIMEOUT).await;
    assert_eq!(
        per_key(&results),
        per_key(&expected.emissions),
        "every emission, in order, once"
    );
    let dropped: f64 = (0..PARTITIONS)
        .filter_map(|p| {
            worker.metric(&format!(
                "streamjob_late_records_dropped_total{{partition=\"{p}\"}}"
            ))
        })
        .sum();
    assert_eq!(
        dropped as u64, expected.late_dropped,
        "late records dropped are counted"
    );
    assert_eq!(worker.status_of("/readyz"), Some(200));
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dead_letter_topic_with_headers() {
    let scenario = Scenario::new("poison").await;
    let events = scenario::generate(2, 400);
    let expected = scenario::expected(&events);
    produce(&producer(&scenario.bootstrap), &scenario.input, &events);
    let _worker = Worker::start_job(&scenario.job_file, &scenario.log(0));
    scenario.await_results(&expected, RESULT_TIMEOUT).await;

    // Offsets of the poison records, per partition, as produced.
    let mut poison = Vec::new();
    for p in 0..PARTITIONS {
        for (offset, e) in events.iter().filter(|e| e.partition == p).enumerate() {
            let kind = match e.kind {
                EventKind::InvalidJson => "invalid_json",
                EventKind::BadAmount => "aggregate",
                _ => continue,
            };
            poison.push((
                p.to_string(),
                offset.to_string(),
                kind.to_owned(),
                e.payload(),
            ));
        }
    }
    assert!(poison.len() > 10, "the stream must contain poison records");
    let dead = wait_for(
        "every poison record on the dead-letter topic",
        RESULT_TIMEOUT,
        || async {
            let dead = scenario.dead_letters();
            (dead.len() >= poison.len()).then_some(dead)
        },
    )
    .await;
    let mut got: Vec<_> = dead
        .iter()
        .map(|d| {
            assert_eq!(
                d.headers.get("streamjob.source.topic"),
                Some(&scenario.input)
            );
            assert!(
                d.headers
                    .get("streamjob.error")
                    .is_some_and(|e| !e.is_empty()),
                "error header: {d:?}"
            );
            (
                d.headers["streamjob.source.partition"].clone(),
                d.headers["streamjob.source.offset"].clone(),
                d.headers["streamjob.error.kind"].clone(),
                d.value.clone(),
            )
        })
        .collect();
    got.sort();
    poison.sort();
    assert_eq!(
        got, poison,
        "dead letters carry the original value and name kind, partition and offset"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_9_at_random_moments_loses_nothing() {
    kill_dash_9_loses_nothing("kill9", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_9_of_a_worker_with_two_processing_threads_loses_nothing() {
    kill_dash_9_loses_nothing("kill9-lanes", 2).await;
}

/// Kills the worker (running `threads` processing threads) four times at random moments
/// while input is produced; the output must be the reference.
async fn kill_dash_9_loses_nothing(prefix: &str, threads: u16) {
    let scenario = Scenario::new(prefix).await;
    let start =
        |log: &std::path::Path| Worker::start_job_with_threads(&scenario.job_file, log, threads);
    let events = scenario::generate(3, 3000);
    let expected = scenario::expected(&events);
    let mut rng = StdRng::seed_from_u64(33);

    // Produce continuously in the background while the worker is killed and restarted.
    let (bootstrap, topic, to_produce) = (
        scenario.bootstrap.clone(),
        scenario.input.clone(),
        events.clone(),
    );
    let producing = std::thread::spawn(move || {
        let producer = producer(&bootstrap);
        for chunk in to_produce.chunks(to_produce.len() / 40 + 1) {
            produce(&producer, &topic, chunk);
            std::thread::sleep(Duration::from_millis(150));
        }
    });

    let mut worker = start(&scenario.log(0));
    for run in 1..=4 {
        // The checkpoint interval is 1 s: kills land before, during and after uploads.
        let delay = Duration::from_millis(rng.random_range(700..2_500));
        tokio::time::sleep(delay).await;
        assert!(
            worker.is_running(),
            "worker exited by itself; log: {}",
            worker.log.display()
        );
        worker.kill9();
        worker = start(&scenario.log(run));
    }
    producing.join().unwrap();

    let results = scenario.await_results(&expected, RESULT_TIMEOUT).await;
    assert_only_reference_emissions(&results, &expected);
    drop(worker);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let scenario = Scenario::new("corrupt").await;
    let events = scenario::generate(4, 1200);
    // The first half of every partition, then the rest.
    let half = |e: &Event, events: &[Event]| {
        let of_partition: Vec<_> = events
            .iter()
            .filter(|x| x.partition == e.partition)
            .collect();
        of_partition.iter().position(|x| x.seq == e.seq).unwrap() < of_partition.len() / 2
    };
    let first: Vec<Event> = events
        .iter()
        .filter(|e| half(e, &events))
        .cloned()
        .collect();
    let second: Vec<Event> = events
        .iter()
        .filter(|e| !half(e, &events))
        .cloned()
        .collect();
    let expected = scenario::expected(&events);
    let producer = producer(&scenario.bootstrap);

    produce(&producer, &scenario.input, &first);
    let worker = Worker::start_job(&scenario.job_file, &scenario.log(0));
    await_processed(&worker, &end_offsets(&first)).await;
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "clean exit on SIGTERM"
    );

    let snapshots = checkpoints(&scenario.name, 0).await;
    assert!(
        snapshots.len() >= 2,
        "partition 0 needs an older snapshot to fall back to: {snapshots:?}"
    );
    let newest = snapshots.last().unwrap().clone();
    let store = s3();
    let mut bytes = store
        .get(&newest)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    store.put(&newest, PutPayload::from(bytes)).await.unwrap();

    produce(&producer, &scenario.input, &second);
    let worker = Worker::start_job(&scenario.job_file, &scenario.log(1));
    let results = scenario.await_results(&expected, RESULT_TIMEOUT).await;
    assert_only_reference_emissions(&results, &expected);
    assert_eq!(
        worker.metric("streamjob_snapshots_rejected_total"),
        Some(1.0),
        "the damaged snapshot is reported"
    );
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(
        log.contains("snapshot is damaged"),
        "the fallback is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_a_final_checkpoint_and_a_restart_resumes_exactly_after_it() {
    let scenario = Scenario::new("sigterm").await;
    let events = scenario::generate(5, 1000);
    let expected = scenario::expected(&events);
    let split = |p: i32| events.iter().filter(|e| e.partition == p).count() / 2;
    let mut first = Vec::new();
    let mut second = Vec::new();
    for p in 0..PARTITIONS {
        let of_p: Vec<_> = events
            .iter()
            .filter(|e| e.partition == p)
            .cloned()
            .collect();
        first.extend_from_slice(&of_p[..split(p)]);
        second.extend_from_slice(&of_p[split(p)..]);
    }
    let producer = producer(&scenario.bootstrap);
    produce(&producer, &scenario.input, &first);

    let worker = Worker::start_job(&scenario.job_file, &scenario.log(0));
    let ends = end_offsets(&first);
    await_processed(&worker, &ends).await;
    assert_eq!(
        worker.terminate(Duration::from_secs(30)),
        Some(0),
        "clean exit on SIGTERM"
    );
    for (p, end) in ends.iter().enumerate() {
        let newest = checkpoints(&scenario.name, p as i32)
            .await
            .last()
            .cloned()
            .expect("a checkpoint");
        assert!(
            newest.as_ref().ends_with(&format!("-o-{end:020}.snap")),
            "final checkpoint of partition {p} is at offset {end}: {newest}"
        );
    }
    // Lag tools see the job: its consumer group committed the checkpointed offsets.
    let group = format!("streamjob.tests.{}", scenario.name);
    assert_eq!(
        committed_offsets(&scenario.bootstrap, &group, &scenario.input),
        ends,
        "offsets committed to {group} after the final checkpoint"
    );

    produce(&producer, &scenario.input, &second);
    let worker = Worker::start_job(&scenario.job_file, &scenario.log(1));
    let results = scenario.await_results(&expected, RESULT_TIMEOUT).await;
    // Resuming exactly after the final checkpoint means nothing is emitted twice.
    assert_eq!(
        per_key(&results),
        per_key(&expected.emissions),
        "exactly the reference emissions, none repeated"
    );
    assert_eq!(finals(&results), expected.finals);
    let log = std::fs::read_to_string(&worker.log).unwrap();
    for (p, end) in ends.iter().enumerate() {
        assert!(
            log.contains(&format!("partition={p} epoch=1 offset={end}")),
            "partition {p} restored at offset {end}; log: {}",
            worker.log.display()
        );
    }
}
