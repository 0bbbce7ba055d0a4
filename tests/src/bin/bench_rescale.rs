//! Rescale benchmark (run by `scripts/bench-rescale`): a job holding about 100 MB of window
//! state on 8 partitions is rescaled 4 → 8 while records keep coming; prints how long each
//! partition went without progress and how long the rescale took. See docs/benchmarks.md.
//!
//! The pauses come from sampling every worker's `streamjob_processed_offset` every 50 ms:
//! a partition's pause is the longest time its offset did not advance between the spec
//! change and 2 s after Ready, while the producer feeds every partition 250 records/s (one
//! every 4 ms), so the figures have a resolution of about one sampling interval.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use kube::{Api, Client};
use rdkafka::producer::{BaseRecord, Producer as _};
use serde_json::json;
use streamjob_operator::api::{RescaleStep, StreamJob};
use streamjob_tests::{
    ensure_crd, kube_client,
    operator::{
        Operator, create_s3_secret, kubectl_apply_in, published_plan, settled, worker_ips,
        worker_metrics, worker_runner,
    },
    run_ok, stack_env, temp_namespace, unique_name, wait_for,
    worker::{create_topic, metric_value, producer},
};
use streamjob_worker::{pipeline::PartitionState, plan::Plan};

const PARTITIONS: i32 = 8;
/// Distinct keys: each holds one pane of two accumulators in the 1 h window.
const KEYS: usize = 1_000_000;
const RATE_PER_PARTITION: u64 = 250;
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// When, and each partition's highest processed offset then.
type Sample = (Instant, BTreeMap<i32, f64>);

#[tokio::main]
async fn main() {
    let env = stack_env();
    let client = kube_client().await;
    ensure_crd(&client).await;
    let namespace = temp_namespace("bench-rescale");
    let ns = namespace.name.clone();
    create_s3_secret(&ns);
    let name = unique_name("rescale");
    let (input, output) = (format!("{name}-in"), format!("{name}-out"));
    create_topic(&env.kafka_bootstrap, &input, PARTITIONS).await;
    create_topic(&env.kafka_bootstrap, &output, PARTITIONS).await;
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let runner = worker_runner(&ns);
    let _operator = Operator::start(&ns, &[], &dir.join("operator.log"));

    let manifest = json!({
        "apiVersion": "streamjob.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": { "name": name, "namespace": ns },
        "spec": {
            "parallelism": 4,
            "source": { "kafka": { "bootstrapServers": env.kafka_bootstrap, "topic": input } },
            "pipeline": [
                { "keyBy": ".k" },
                { "name": "per-hour", "window": { "size": "1h", "aggregates": [
                    { "name": "count", "function": "count" },
                    { "name": "total", "function": "sum", "of": ".v" },
                ] } },
            ],
            "sink": { "kafka": { "topic": output } },
            "checkpoint": {
                "storage": format!("s3://{}/{name}", env.s3_bucket),
                "interval": "60s",
                "retained": 2,
                "secretRef": { "name": "checkpoint-storage" },
            },
        },
    });
    kubectl_apply_in(&dir, &manifest);
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &ns);
    await_ready(&jobs, &name, 4).await;

    eprintln!("== producing {KEYS} distinct keys");
    let started = Instant::now();
    let kafka = producer(&env.kafka_bootstrap);
    for i in 0..KEYS {
        send(&kafka, &input, i);
    }
    kafka.flush(Duration::from_secs(120)).expect("flush");
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| end_offset(&env.kafka_bootstrap, &input, p))
        .collect();
    eprintln!(
        "== produced in {:.1}s; waiting until the workers processed it",
        started.elapsed().as_secs_f64()
    );
    wait_for(
        "the prefill processed",
        Duration::from_secs(600),
        || async {
            let offsets = processed_offsets(&client, &ns, &name).await;
            (0..PARTITIONS)
                .all(|p| {
                    offsets
                        .get(&p)
                        .is_some_and(|o| *o as i64 >= ends[p as usize] - 1)
                })
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "== prefill processed after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // A steady stream on every partition, over keys that already exist.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (stop, bootstrap, topic) = (stop.clone(), env.kafka_bootstrap.clone(), input.clone());
        std::thread::spawn(move || {
            let kafka = producer(&bootstrap);
            let tick = Duration::from_millis(1000 / RATE_PER_PARTITION);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..PARTITIONS {
                    send(&kafka, &topic, i % KEYS);
                    i += 1;
                }
                std::thread::sleep(tick);
            }
            kafka.flush(Duration::from_secs(30)).expect("flush");
        })
    };
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let sampler = {
        let (stop, samples, client, ns, name) = (
            stop.clone(),
            samples.clone(),
            client.clone(),
            ns.clone(),
            name.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let offsets = processed_offsets(&client, &ns, &name).await;
                samples
                    .lock()
                    .expect("samples")
                    .push((Instant::now(), offsets));
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    let before = published_plan(&client, &ns, &name).await;
    let changed = Instant::now();
    run_ok(
        "kubectl",
        &[
            "scale",
            &format!("streamjob/{name}"),
            "-n",
            &ns,
            "--replicas=8",
        ],
    );
    // The job's status every 100 ms: when the new pods existed (the rescale left ScalingUp)
    // and when it was Ready again.
    let mut pods_up = None;
    let job = loop {
        let job = jobs.get(&name).await.expect("the job");
        let status = job.status.clone().unwrap_or_default();
        let step = status.rescale.as_ref().map(|r| r.step);
        if pods_up.is_none() && step.is_some_and(|s| s != RescaleStep::ScalingUp) {
            pods_up = Some(Instant::now());
        }
        let done = settled(&job) && status.parallelism == Some(8);
        if done {
            break job;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(600),
            "the rescale did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ready = Instant::now();
    let pods_up = pods_up.unwrap_or(changed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    feeder.join().expect("feeder");

    let after = published_plan(&client, &ns, &name).await;
    let savepoint = job
        .status
        .as_ref()
        .and_then(|s| s.savepoints.last())
        .expect("the rescale's savepoint is recorded")
        .clone();
    let (part_bytes, state_bytes) = savepoint_size(&env.s3_bucket, &savepoint.url).await;

    let samples = samples.lock().expect("samples");
    let owner = |plan: &Plan, p: i32| {
        plan.assignment
            .iter()
            .find(|(_, held)| held.contains(&p))
            .map(|(pod, _)| pod.clone())
    };
    let mut moving = Vec::new();
    let mut staying = Vec::new();
    // The sampler's own noise: the longest gap it saw in the steady stream before the change.
    let (mut baseline, mut from_handover) = (Duration::ZERO, Duration::ZERO);
    let first_sample = samples.first().map_or(changed, |(at, _)| *at);
    let end = ready + Duration::from_secs(2);
    for p in 0..PARTITIONS {
        let pause = longest_stall(&samples, p, changed, end);
        baseline = baseline.max(longest_stall(&samples, p, first_sample, changed));
        if owner(&before, p) == owner(&after, p) {
            staying.push((p, pause));
            from_handover = from_handover.max(longest_stall(&samples, p, pods_up, end));
        } else {
            moving.push((p, pause));
        }
    }
    let max = |v: &[(i32, Duration)]| v.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let epoch = u64::try_from(savepoint.epoch).unwrap_or_default();
    let logged = logged_pauses(&runner.state_dir, &ns, epoch);
    println!("rescale 4 → 8, {PARTITIONS} partitions, {KEYS} keys");
    println!(
        "state: {:.1} MB as JSON ({:.1} MB in the savepoint's parts)",
        mb(state_bytes),
        mb(part_bytes)
    );
    println!(
        "moving partitions     {:?}: longest pause {:.2}s",
        moving.iter().map(|m| m.0).collect::<Vec<_>>(),
        max(&moving).as_secs_f64()
    );
    for (p, pause) in &moving {
        println!("  partition {p}: {:.2}s", pause.as_secs_f64());
    }
    println!(
        "non-moving partitions {:?}: longest pause {:.2}s (sampling every {}ms); {:.2}s from the \
         new pods being up on; the sampler's noise: longest gap in the 3 s before the change, \
         any partition, {:.2}s",
        staying.iter().map(|m| m.0).collect::<Vec<_>>(),
        max(&staying).as_secs_f64(),
        SAMPLE_EVERY.as_millis(),
        from_handover.as_secs_f64(),
        baseline.as_secs_f64()
    );
    println!("from the workers' logs (same clock):");
    for (p, pause) in &logged.moving {
        let stage = |stages: &BTreeMap<i32, f64>| {
            stages
                .get(p)
                .map_or_else(|| "?".to_owned(), |s| format!("{s:.3}s"))
        };
        println!(
            "  moving partition {p}: {pause:.3}s from its old owner taking the plan to its new \
             owner's first record (part durable at {}, restored at {}, running at {})",
            stage(&logged.written),
            stage(&logged.restored),
            stage(&logged.running)
        );
    }
    println!(
        "  kept partitions: {:.3}s longest time a worker's loop spent applying the plan (mean {:.3}s over {} workers)",
        logged.kept.iter().copied().fold(0.0, f64::max),
        logged.kept.iter().sum::<f64>() / logged.kept.len().max(1) as f64,
        logged.kept.len()
    );
    println!(
        "total: spec change → Ready {:.2}s; without pod start (the new pods exist → Ready) {:.2}s",
        ready.duration_since(changed).as_secs_f64(),
        ready.duration_since(pods_up).as_secs_f64()
    );
    println!("operator log: {}", dir.join("operator.log").display());
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

fn send(
    kafka: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    i: usize,
) {
    // Keys from a mixing function compress like real ids, not like a counter.
    let mixed = splitmix64(i as u64);
    let key = format!("{mixed:016x}");
    let payload = format!(r#"{{"k":"{key}","v":{}}}"#, mixed % 1000);
    let partition = i32::try_from(i % PARTITIONS as usize).unwrap_or(0);
    let mut record = BaseRecord::to(topic)
        .partition(partition)
        .key(&key)
        .payload(&payload);
    loop {
        match kafka.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Pauses as the workers logged them.
struct LoggedPauses {
    /// Moving partition → seconds from the old owner applying the plan (its last record
    /// came before) to the new owner's first record of the partition.
    moving: BTreeMap<i32, f64>,
    /// Moving partition → seconds from the old owner applying the plan to the new owner
    /// running the partition (assigned at its offset).
    running: BTreeMap<i32, f64>,
    /// Moving partition → seconds from the old owner applying the plan to its part durable.
    written: BTreeMap<i32, f64>,
    /// Moving partition → seconds from the old owner applying the plan to the new owner
    /// having read and decoded the part.
    restored: BTreeMap<i32, f64>,
    /// Per old worker, seconds its loop spent applying the plan (its kept partitions wait).
    kept: Vec<f64>,
}

/// Reads the pauses of the handover to `epoch` from the container logs of the namespace's
/// pods under the pod runner's `state_dir`.
fn logged_pauses(state_dir: &std::path::Path, namespace: &str, epoch: u64) -> LoggedPauses {
    let mut stops = BTreeMap::new(); // partition → when its old owner took the plan
    let mut starts = BTreeMap::new(); // partition → when its new owner ran it
    let mut written = BTreeMap::new(); // partition → when its part was durable
    let mut restored = BTreeMap::new(); // partition → when its new owner restored it
    let mut firsts = BTreeMap::new(); // partition → its new owner's first record
    let mut kept = Vec::new();
    let dirs = std::fs::read_dir(state_dir).expect("the pod runner's state dir");
    for dir in dirs.flatten() {
        if !dir.file_name().to_string_lossy().starts_with(namespace) {
            continue;
        }
        let log = std::fs::read_to_string(dir.path().join("container.log")).unwrap_or_default();
        for line in log.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let fields = &entry["fields"];
            if fields["epoch"].as_u64() != Some(epoch) {
                continue;
            }
            let at = seconds_of_day(entry["timestamp"].as_str().unwrap_or_default());
            let message = fields["message"].as_str().unwrap_or_default();
            if message.starts_with("new plan; handing over") {
                for p in partitions(fields["lose"].as_str().unwrap_or_default()) {
                    stops.insert(p, at);
                }
            } else if message.starts_with("handover applied") {
                kept.push(fields["paused_ms"].as_f64().unwrap_or_default() / 1000.0);
            } else if let Some(times) = match message {
                "partition running" => Some(&mut starts),
                "savepoint part written" => Some(&mut written),
                "partition restored" => Some(&mut restored),
                "partition's first record" => Some(&mut firsts),
                _ => None,
            } {
                if let Some(p) = fields["partition"].as_i64() {
                    times.insert(i32::try_from(p).unwrap_or_default(), at);
                }
            }
        }
    }
    let since_stop = |times: &BTreeMap<i32, f64>| {
        stops
            .iter()
            .filter_map(|(p, stop)| Some((*p, times.get(p)? - stop)))
            .collect()
    };
    LoggedPauses {
        moving: since_stop(&firsts),
        running: since_stop(&starts),
        written: since_stop(&written),
        restored: since_stop(&restored),
        kept,
    }
}

/// `[1, 3]` → 1, 3.
fn partitions(list: &str) -> Vec<i32> {
    list.trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Seconds since midnight of an RFC 3339 UTC timestamp (the bench runs within a day).
fn seconds_of_day(timestamp: &str) -> f64 {
    let time = timestamp
        .split('T')
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches('Z');
    let mut parts = time.split(':');
    let mut field = || {
        parts
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default()
    };
    let (h, m, s) = (field(), field(), field());
    h * 3600.0 + m * 60.0 + s
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn end_offset(bootstrap: &str, topic: &str, partition: i32) -> i64 {
    use rdkafka::{
        ClientConfig,
        consumer::{BaseConsumer, Consumer as _},
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
        .1
}

async fn await_ready(jobs: &Api<StreamJob>, name: &str, parallelism: i32) -> StreamJob {
    wait_for(
        &format!("{name} ready with {parallelism} workers"),
        Duration::from_secs(600),
        || async {
            let job = jobs.get(name).await.ok()?;
            let ready = settled(&job) && job.status.as_ref()?.parallelism == Some(parallelism);
            ready.then_some(job)
        },
    )
    .await
}

/// The highest processed offset of each partition over the job's pods.
async fn processed_offsets(client: &Client, ns: &str, job: &str) -> BTreeMap<i32, f64> {
    let mut offsets = BTreeMap::new();
    for ip in worker_ips(client, ns, job).await.values() {
        let Some(text) = worker_metrics(ip) else {
            continue;
        };
        for p in 0..PARTITIONS {
            let series = format!("streamjob_processed_offset{{partition=\"{p}\"}}");
            if let Some(offset) = metric_value(&text, &series) {
                let best = offsets.entry(p).or_insert(offset);
                *best = f64::max(*best, offset);
            }
        }
    }
    offsets
}

/// The longest time partition `p`'s offset did not advance within `[from, to]`.
fn longest_stall(samples: &[Sample], p: i32, from: Instant, to: Instant) -> Duration {
    let mut last_change: Option<(Instant, f64)> = None;
    let mut longest = Duration::ZERO;
    for (at, offsets) in samples {
        let Some(&offset) = offsets.get(&p) else {
            continue;
        };
        match last_change {
            Some((_, seen)) if offset <= seen => {}
            Some((since, _)) => {
                if *at >= from && *at <= to {
                    longest = longest.max(at.duration_since(since.max(from)));
                }
                last_change = Some((*at, offset));
            }
            None => last_change = Some((*at, offset)),
        }
    }
    if let Some((since, _)) = last_change {
        if since < to {
            longest = longest.max(to.duration_since(since.max(from)));
        }
    }
    longest
}

/// Sizes of the savepoint at `url`: its parts as stored, and their state uncompressed.
async fn savepoint_size(bucket: &str, url: &str) -> (u64, u64) {
    use futures::TryStreamExt as _;
    use object_store::{ObjectStore as _, ObjectStoreExt as _};
    let store = streamjob_tests::worker::s3_store();
    let manifest = url
        .strip_prefix(&format!("s3://{bucket}/"))
        .expect("a URL in the test bucket");
    let dir = manifest.trim_end_matches("/manifest.json");
    let parts: Vec<_> = store
        .list(Some(&dir.into()))
        .try_collect()
        .await
        .expect("list parts");
    let (mut stored, mut state) = (0, 0);
    for part in parts
        .iter()
        .filter(|m| m.location.as_ref().ends_with(".snap"))
    {
        let bytes = store
            .get(&part.location)
            .await
            .expect("get part")
            .bytes()
            .await
            .expect("part bytes");
        stored += bytes.len() as u64;
        // The state's size as JSON (the first snapshot format): a measure that does not
        // change with the encoding.
        let part = streamjob_worker::snapshot::decode(&bytes).expect("part decodes");
        let decoded = PartitionState::decode(part.encoding, &part.state).expect("state decodes");
        state += serde_json::to_vec(&decoded).expect("state as JSON").len() as u64;
    }
    (stored, state)
}
