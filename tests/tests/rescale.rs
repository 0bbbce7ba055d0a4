//! Rescaling on the real stack: the operator changes a running job's parallelism through a
//! coordinated savepoint while records keep coming, and nothing is lost.

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Event as KubeEvent;
use kube::{
    Api, Client,
    api::ListParams,
    runtime::{WatchStreamExt as _, watcher},
};
use object_store::ObjectStoreExt as _;
use streamjob_operator::api::{RescaleStep, StreamJob};
use streamjob_tests::{
    operator::{
        OperatorFixture, get_job, job_manifest, kubectl_apply, produce_first_half, published_plan,
        settled, signal_process, wait_for_condition, worker_ips, worker_metric, worker_process,
    },
    reference::Event,
    run_ok,
    scenario::{Scenario, expected, generate},
    wait_for,
    worker::{interleaved, produce, producer, s3_path_of, s3_store},
};
use streamjob_worker::plan::Plan;

const RESCALE_TIMEOUT: Duration = Duration::from_secs(180);
const RESULTS_TIMEOUT: Duration = Duration::from_secs(180);

/// Records produced in small batches, round-robin over the partitions, on a thread of its
/// own, until [`Stream::finish`] asks for the rest at once.
struct Stream {
    hurry: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Stream {
    fn start(scenario: &Scenario, events: &[Event]) -> Self {
        let hurry = Arc::new(AtomicBool::new(false));
        let (bootstrap, topic) = (scenario.bootstrap.clone(), scenario.input.clone());
        let events = interleaved(events);
        let thread = std::thread::spawn({
            let hurry = hurry.clone();
            move || {
                let producer = producer(&bootstrap);
                for batch in events.chunks(20) {
                    produce(&producer, &topic, batch);
                    if !hurry.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        Self { hurry, thread }
    }

    /// Produces what is left without pauses and returns once all of it is acknowledged.
    fn finish(self) {
        self.hurry.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// `kubectl scale` through the StreamJob's scale subresource, as an autoscaler would.
fn kubectl_scale(namespace: &str, job: &str, replicas: i32) {
    run_ok(
        "kubectl",
        &[
            "scale",
            &format!("streamjob/{job}"),
            "-n",
            namespace,
            &format!("--replicas={replicas}"),
        ],
    );
}

/// Waits until the job runs `parallelism` ready workers in an epoch above `after` with no
/// rescale in flight.
async fn await_rescaled(
    client: &Client,
    namespace: &str,
    job: &str,
    parallelism: i32,
    after: i64,
) -> StreamJob {
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("StreamJob {job} rescaled to {parallelism}"),
        RESCALE_TIMEOUT,
        || async {
            let found = jobs.get(job).await.ok()?;
            let status = found.status.as_ref()?;
            let done = settled(&found)
                && status.parallelism == Some(parallelism)
                && status.epoch.is_some_and(|e| e > after);
            done.then_some(found)
        },
    )
    .await
}

fn epoch_of(job: &StreamJob) -> i64 {
    job.status.as_ref().and_then(|s| s.epoch).unwrap()
}

/// Asserts that savepoint `id` is in the job's history and its manifest is in storage.
async fn assert_savepoint_recorded(job: &StreamJob, id: &str) {
    let status = job.status.as_ref().unwrap();
    let entry = status
        .savepoints
        .iter()
        .find(|s| s.name == id)
        .unwrap_or_else(|| panic!("savepoint {id} in status: {:?}", status.savepoints));
    assert_eq!(entry.reason, "rescale");
    let manifest = s3_store().head(&s3_path_of(&entry.url)).await;
    assert!(
        manifest.is_ok(),
        "manifest {} exists: {manifest:?}",
        entry.url
    );
}

/// Kept partitions' processed offsets, sampled while a rescale runs.
struct Sample {
    step: Option<RescaleStep>,
    offsets: BTreeMap<i32, f64>,
}

#[tokio::test(flavor = "multi_thread")]
async fn rescaling_2_4_1_3_under_a_continuous_stream_loses_nothing() {
    let f = OperatorFixture::start("rs-seq").await;
    let job = f.run_job(2).await;
    let (client, n, scenario) = (f.client.clone(), f.ns(), &f.scenario);
    let name = scenario.name.as_str();
    let mut epoch = epoch_of(&job);

    let events = generate(41, 2500);
    let reference = expected(&events);
    let stream = Stream::start(scenario, &events);
    wait_for("first results", RESULTS_TIMEOUT, || async {
        (!scenario.output_results().is_empty()).then_some(())
    })
    .await;

    // 2 → 4 by a changed manifest; the partitions that keep their owner are watched.
    let before = published_plan(&client, n, name).await;
    let old_pods = worker_ips(&client, n, name).await;
    let runs = |pods: &BTreeMap<String, String>| -> Vec<Option<f64>> {
        pods.values()
            .map(|ip| worker_metric(ip, "streamjob_runs_total"))
            .collect()
    };
    let runs_before = runs(&old_pods);
    kubectl_apply(scenario, &job_manifest(scenario, n, 4));
    let mut samples = Vec::new();
    let job = loop {
        let job = get_job(&client, n, name).await;
        let mut offsets = BTreeMap::new();
        for (pod, partitions) in &before.assignment {
            for &p in partitions {
                let series = format!("streamjob_processed_offset{{partition=\"{p}\"}}");
                if let Some(offset) = worker_metric(&old_pods[pod], &series) {
                    offsets.insert(p, offset);
                }
            }
        }
        let status = job.status.as_ref().unwrap();
        samples.push(Sample {
            step: status.rescale.as_ref().map(|r| r.step),
            offsets,
        });
        let done = status.observed_generation == job.metadata.generation
            && status.rescale.is_none()
            && status.parallelism == Some(4)
            && status.epoch > Some(epoch);
        if done {
            break job;
        }
        assert!(samples.len() < 1500, "the rescale to 4 did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = published_plan(&client, n, name).await;
    let owner = |plan: &Plan, p: i32| {
        plan.assignment
            .iter()
            .find(|(_, held)| held.contains(&p))
            .map(|(pod, _)| pod.clone())
    };
    let kept: Vec<i32> = (0..4)
        .filter(|p| owner(&before, *p).is_some() && owner(&before, *p) == owner(&after, *p))
        .collect();
    assert_eq!(kept.len(), 2, "one partition per old pod stays: {after:?}");
    assert_eq!(after.assignment.len(), 4, "every pod owns a partition");
    // From the last sample before the handover plan (the end of ScalingUp; the
    // savepoint step itself may pass between two samples) to the end.
    let first = samples
        .iter()
        .rposition(|s| s.step == Some(RescaleStep::ScalingUp))
        .unwrap_or(0);
    for p in &kept {
        let (start, end) = (
            samples[first].offsets[p],
            samples.last().unwrap().offsets[p],
        );
        assert!(
            end > start,
            "kept partition {p} advanced through the handover: {start} -> {end}"
        );
    }
    assert_eq!(
        runs(&old_pods),
        runs_before,
        "the old pods handed over inside their runs, without a restart"
    );
    assert_savepoint_recorded(&job, &format!("e{}-rescale", epoch + 1)).await;
    epoch = epoch_of(&job);

    // 4 → 1 and 1 → 3 through the scale subresource.
    for to in [1, 3] {
        kubectl_scale(n, name, to);
        let job = await_rescaled(&client, n, name, to, epoch).await;
        assert_savepoint_recorded(&job, &format!("e{}-rescale", epoch + 1)).await;
        let plan = published_plan(&client, n, name).await;
        assert_eq!(plan.assignment.len(), usize::try_from(to).unwrap());
        epoch = epoch_of(&job);
    }
    let pods = worker_ips(&client, n, name).await;
    assert_eq!(pods.len(), 3, "exactly the pods of parallelism 3 remain");

    stream.finish();
    scenario.await_results(&reference, RESULTS_TIMEOUT).await;
}

/// SIGKILLs and restarts the operator each time the job's rescale reaches one of `steps`
/// (in order), as written to its status.
async fn kill_operator_at(f: &mut OperatorFixture, steps: &[RescaleStep]) {
    let jobs: Api<StreamJob> = Api::namespaced(f.client.clone(), f.ns());
    let config = watcher::Config::default().fields(&format!("metadata.name={}", f.scenario.name));
    let mut updates = std::pin::pin!(watcher(jobs, config).applied_objects());
    let deadline = Instant::now() + RESCALE_TIMEOUT;
    let mut next = 0;
    while next < steps.len() {
        let job = tokio::time::timeout_at(deadline.into(), updates.next())
            .await
            .unwrap_or_else(|_| panic!("the rescale never reached {:?}", steps[next]))
            .unwrap()
            .unwrap();
        let step = job.status.and_then(|s| s.rescale).map(|r| r.step);
        if step == Some(steps[next]) {
            f.operator.kill_and_restart();
            next += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_killed_at_each_rescale_step_resumes_the_rescale() {
    let mut f = OperatorFixture::start("rs-kill").await;
    let job = f.run_job(2).await;
    let (client, n) = (f.client.clone(), f.ns().to_owned());
    let n = n.as_str();
    let name = f.scenario.name.clone();
    let epoch = epoch_of(&job);

    let events = generate(43, 1500);
    let reference = expected(&events);
    let stream = Stream::start(&f.scenario, &events);

    kubectl_scale(n, &name, 4);
    kill_operator_at(
        &mut f,
        &[
            RescaleStep::ScalingUp,
            RescaleStep::Savepointing,
            RescaleStep::HandingOver,
        ],
    )
    .await;
    let job = await_rescaled(&client, n, &name, 4, epoch).await;
    assert_savepoint_recorded(&job, &format!("e{}-rescale", epoch + 1)).await;
    let epoch = epoch_of(&job);

    kubectl_scale(n, &name, 1);
    kill_operator_at(
        &mut f,
        &[
            RescaleStep::Savepointing,
            RescaleStep::HandingOver,
            RescaleStep::ScalingDown,
        ],
    )
    .await;
    let job = await_rescaled(&client, n, &name, 1, epoch).await;
    assert_savepoint_recorded(&job, &format!("e{}-rescale", epoch + 1)).await;
    assert_eq!(worker_ips(&client, n, &name).await.len(), 1);

    stream.finish();
    f.scenario.await_results(&reference, RESULTS_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_during_the_savepoint_falls_back_to_its_checkpoints_without_loss() {
    let f = OperatorFixture::start_with("rs-fallback", &["--savepoint-timeout=15s"]).await;
    let job = f.run_job(2).await;
    let (client, n, scenario) = (f.client.clone(), f.ns(), &f.scenario);
    let name = scenario.name.as_str();
    let epoch = epoch_of(&job);

    let events = generate(47, 600);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;

    // Freeze one worker so it cannot write its parts, order 2 → 3, and kill it while the
    // operator waits for the savepoint.
    let (_, pid) = worker_process(&client, n, name).await;
    signal_process(pid, nix::sys::signal::Signal::SIGSTOP);
    kubectl_scale(n, name, 3);
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), n);
    let savepointing = wait_for("the savepoint step", RESCALE_TIMEOUT, || async {
        let job = jobs.get(name).await.ok()?;
        let rescale = job.status?.rescale?;
        (rescale.step == RescaleStep::Savepointing).then_some(rescale)
    })
    .await;
    signal_process(pid, nix::sys::signal::Signal::SIGKILL);
    produce(&producer, &scenario.input, rest);

    let job = await_rescaled(&client, n, name, 3, epoch).await;
    let status = job.status.as_ref().unwrap();
    assert!(
        status.epoch > Some(epoch + 1),
        "the fallback is an epoch of its own"
    );
    assert!(
        !status
            .savepoints
            .iter()
            .any(|s| s.name == savepointing.savepoint),
        "an incomplete savepoint is never recorded"
    );
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), n);
    let warned = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .any(|e| e.reason.as_deref() == Some("SavepointIncomplete"));
    assert!(warned, "a SavepointIncomplete event says so");

    scenario.await_results(&reference, RESULTS_TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_with_two_processing_threads_rescale_without_loss() {
    let f = OperatorFixture::start("rs-lanes").await;
    let (client, n, scenario) = (f.client.clone(), f.ns(), &f.scenario);
    let name = scenario.name.as_str();
    let mut manifest = job_manifest(scenario, n, 1);
    manifest["spec"]["processingThreads"] = serde_json::json!(2);
    kubectl_apply(scenario, &manifest);
    let job = wait_for_condition(n, name, "Ready", "True", RESCALE_TIMEOUT).await;
    let epoch = epoch_of(&job);
    let (_, pid) = worker_process(&client, n, name).await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ
            .split(|&b| b == 0)
            .any(|var| var == b"STREAMJOB_PROCESSING_THREADS=2"),
        "the worker runs two processing threads"
    );

    // One pod runs all partitions in two lanes; 1 → 2 moves half of them, from both lanes.
    let events = generate(49, 600);
    let reference = expected(&events);
    let producer = producer(&scenario.bootstrap);
    let rest = produce_first_half(scenario, &producer, &events).await;
    kubectl_scale(n, name, 2);
    let job = await_rescaled(&client, n, name, 2, epoch).await;
    assert_savepoint_recorded(&job, &format!("e{}-rescale", epoch + 1)).await;
    produce(&producer, &scenario.input, rest);
    scenario.await_results(&reference, RESULTS_TIMEOUT).await;
}
