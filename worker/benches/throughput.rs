//! End-to-end throughput benchmark (not a test): a raw librdkafka consumer against the worker
//! on the same preloaded topic, in the same run, plus the time to checkpoint ~100 MB of state
//! to the local S3 server. Prints the ratios; `docs/benchmarks.md` records the results.
//!
//! Run with `scripts/bench` (starts the local stack, builds in release, runs this).
//! Environment: `BENCH_RECORDS` (default 5 000 000), `BENCH_PARTITIONS` (default 8),
//! `BENCH_STATE_MB` (default 100), plus the stack's exports (`tests/stack/stack env`).

// A benchmark harness: any failure aborts the run with its message.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    io::Read,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use object_store::aws::AmazonS3Builder;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    types::RDKafkaErrorCode,
};
use streamjob_api::PipelineStep;
use streamjob_worker::{
    checkpoint::CheckpointStore,
    paths::JobPaths,
    pipeline::{InputRecord, Pipeline, RecordStats},
    snapshot::{SnapshotHeader, SnapshotId},
    storage::Storage,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run through scripts/bench"))
}

fn record(i: usize) -> (String, String) {
    let user = format!("u{}", i % 5_000);
    let kind = if i % 5 == 0 { "view" } else { "click" };
    let value = format!(
        r#"{{"user":"{user}","type":"{kind}","page":"/p/{}","ts":{},"n":{}}}"#,
        i % 97,
        1_714_557_600_000_i64 + (i / 8) as i64,
        i % 100
    );
    (user, value)
}

/// Creates and fills the input topic unless a previous run left it complete.
fn preload(bootstrap: &str, topic: &str, partitions: i32, records: usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let have: i64 = (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map(|(_, h)| h)
                .unwrap_or(0)
        })
        .sum();
    if have == records as i64 {
        println!("input topic {topic} already holds {records} records");
        return;
    }
    // A partial topic left by an interrupted run must be deleted by hand first.
    create_topic(bootstrap, topic, partitions);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let start = Instant::now();
    for i in 0..records {
        let (key, value) = record(i);
        let mut r = BaseRecord::to(topic)
            .partition((i % partitions as usize) as i32)
            .key(&key)
            .payload(&value);
        loop {
            match producer.send(r) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    r = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    println!(
        "preloaded {records} records into {topic} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
}

/// The practical limit: one thread reading every partition as fast as librdkafka hands
/// records over, touching each payload.
/// A consumer assigned to every partition of `topic` from the beginning, reporting the end of
/// each partition, with the same fetch tuning as the worker's (see worker/src/kafka.rs).
fn consumer_from_beginning(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{group}-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

fn raw_consumer(bootstrap: &str, topic: &str, partitions: i32, records: usize) -> f64 {
    let consumer = consumer_from_beginning(bootstrap, "bench-raw", topic, partitions);
    let start = Instant::now();
    let (mut count, mut bytes, mut done) = (0usize, 0usize, BTreeSet::new());
    while (done.len() as i32) < partitions {
        match consumer.poll(Duration::from_secs(1)) {
            Some(Ok(m)) => {
                count += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(count, records, "raw consumer read every record");
    std::hint::black_box(bytes);
    count as f64 / secs
}

/// Consume + produce without a pipeline: forwards the click records (80%, found by a byte
/// search) unchanged with the worker's producer settings. The floor for any job that writes
/// most of its input back to Kafka on the same machine as the broker.
fn raw_forward(bootstrap: &str, topic: &str, partitions: i32, records: usize) -> f64 {
    let out_topic = format!("{topic}-forward-out-{}", std::process::id());
    create_topic(bootstrap, &out_topic, partitions);
    let consumer = consumer_from_beginning(bootstrap, "bench-forward", topic, partitions);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let start = Instant::now();
    let (mut count, mut done) = (0usize, BTreeSet::new());
    while (done.len() as i32) < partitions {
        match consumer.poll(Duration::from_secs(1)) {
            Some(Ok(m)) => {
                count += 1;
                let payload = m.payload().unwrap_or_default();
                if payload.windows(7).any(|w| w == b"\"click\"") {
                    let mut r = BaseRecord::to(&out_topic).payload(payload);
                    if let Some(key) = m.key() {
                        r = r.key(key);
                    }
                    while let Err((e, back)) = producer.send(r) {
                        assert!(
                            matches!(
                                e,
                                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                            ),
                            "produce failed: {e}"
                        );
                        r = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => {}
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(count, records, "forwarder read every record");
    count as f64 / start.elapsed().as_secs_f64()
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for r in rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap()
    {
        r.unwrap();
    }
}

fn metrics(port: u16) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    use std::io::Write;
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

fn ready(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut text = String::new();
    write!(stream, "GET /readyz HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_to_string(&mut text).is_ok()
        && text
            .lines()
            .next()
            .is_some_and(|status| status.contains(" 200 "))
}

fn processed(text: &str) -> i64 {
    text.lines()
        .filter(|l| l.starts_with("streamjob_processed_offset{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
        .sum()
}

/// Runs the real worker binary on the topic; returns records/s from readiness to the last
/// record, and the start-up time (process start to ready) in seconds.
fn worker(
    name: &str,
    pipeline_yaml: &str,
    bootstrap: &str,
    topic: &str,
    records: usize,
) -> (f64, f64) {
    let dir = std::env::temp_dir().join(format!("bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let job = dir.join("job.yaml");
    let out_topic = format!("{topic}-{name}-out-{}", std::process::id());
    create_topic(bootstrap, &out_topic, 8);
    std::fs::write(
        &job,
        format!(
            "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: bench-{name}-{pid}, namespace: bench}}\n\
             spec:\n  source: {{kafka: {{bootstrapServers: \"{bootstrap}\", topic: {topic}}}}}\n  pipeline:\n{pipeline_yaml}\n\
             \x20 sink: {{kafka: {{topic: {out_topic}}}}}\n  checkpoint: {{storage: \"s3://{bucket}/bench\", interval: 10s}}\n",
            pid = std::process::id(),
            bucket = required("STREAMJOB_S3_BUCKET"),
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_streamjob-worker"))
        .args([
            "run",
            "--job",
            job.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = start + Duration::from_secs(900);
    // Time from readiness (partitions restored and assigned), as the raw consumer's clock
    // starts after its assign(); the start-up is reported on its own.
    while !ready(port) {
        assert!(
            Instant::now() < deadline,
            "worker {name} never became ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let startup = start.elapsed().as_secs_f64();
    let start = Instant::now();
    loop {
        if metrics(port).is_some_and(|m| processed(&m) >= records as i64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker {name} did not finish; log in {}",
            dir.display()
        );
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "worker {name} exited; log in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    (records as f64 / secs, startup)
}

/// SplitMix64: a well-spread 64-bit value per input.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds a window state of about `mb` MB (serialized) and times one checkpoint of it to S3.
fn checkpoint_state(mb: usize) -> (usize, f64, f64) {
    let steps: Vec<PipelineStep> = serde_yaml::from_str(
        "- keyBy: .k\n- window: {size: 1h, timestamp: .ts, aggregates: [{name: n, function: count}, {name: s, function: sum, of: .v}, {name: m, function: max, of: .v}]}",
    )
    .unwrap();
    let pipeline = Pipeline::compile(&steps).unwrap();
    let mut state = pipeline.new_state();
    let (mut out, mut stats) = (Vec::new(), RecordStats::default());
    let mut i = 0u64;
    let mut size = 0;
    while size < mb << 20 {
        for _ in 0..100_000 {
            // Keys and values from a mixing function: state that compresses like real ids do.
            let (key, value) = (mix(i), mix(i ^ 0x5bd1_e995) % 1_000_000);
            let payload = format!(r#"{{"k":"{key:016x}","ts":1714557600000,"v":{value}}}"#);
            let record = InputRecord {
                key: None,
                payload: payload.as_bytes(),
                timestamp_ms: None,
                processing_time_ms: 0,
                partition: 0,
                offset: i as i64,
            };
            out.clear();
            pipeline
                .process(&mut state, &record, &mut out, &mut stats)
                .unwrap();
            i += 1;
        }
        size = serde_json::to_vec(&state).unwrap().len();
    }
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(required("STREAMJOB_S3_BUCKET"))
        .build()
        .unwrap();
    let storage = Storage {
        store: std::sync::Arc::new(store),
        prefix: object_store::path::Path::from("bench-state"),
    };
    let paths = JobPaths::new(
        &storage.prefix,
        "bench",
        &format!("state-{}", std::process::id()),
    );
    let checkpoints = CheckpointStore::new(storage, paths);
    let start = Instant::now();
    let bytes = serde_json::to_vec(&state).unwrap();
    let serialize = start.elapsed().as_secs_f64();
    let header = SnapshotHeader {
        partition: 0,
        id: SnapshotId {
            epoch: 1,
            next_offset: i as i64,
        },
        created_ms: 0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let written = rt
        .block_on(checkpoints.write_checkpoint(&header, &bytes))
        .unwrap();
    let total = start.elapsed().as_secs_f64();
    println!(
        "  state: {i} keys, {:.1} MB serialized, {:.1} MB written (zstd)",
        bytes.len() as f64 / 1e6,
        written as f64 / 1e6
    );
    (bytes.len(), serialize, total)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches.
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("checkpoint") {
        report_checkpoint();
        return;
    }
    let bootstrap = required("STREAMJOB_KAFKA_BOOTSTRAP");
    let records = env_or("BENCH_RECORDS", 5_000_000);
    let partitions = env_or("BENCH_PARTITIONS", 8) as i32;
    let topic = format!("bench-input-{records}-{partitions}");
    preload(&bootstrap, &topic, partitions, records);

    let raw = raw_consumer(&bootstrap, &topic, partitions, records);
    let forward = raw_forward(&bootstrap, &topic, partitions, records);
    let (filter_map, filter_map_startup) = worker(
        "filter-map",
        "    - filter: '.type == \"click\"'\n    - map: '{user: .user, n: 1}'",
        &bootstrap,
        &topic,
        records,
    );
    let (window, window_startup) = worker(
        "window",
        "    - keyBy: .user\n    - window: {size: 1m, timestamp: .ts, aggregates: [{name: clicks, function: count}]}",
        &bootstrap,
        &topic,
        records,
    );
    let raw_again = raw_consumer(&bootstrap, &topic, partitions, records);
    let raw_best = raw.max(raw_again);
    println!(
        "\n{records} records, {partitions} partitions, ~{} B each",
        record(1).1.len()
    );
    println!("| run | records/s | ratio to raw |");
    println!("| --- | ---: | ---: |");
    println!(
        "| raw librdkafka consumer (best of 2: {raw:.0}, {raw_again:.0}) | {raw_best:.0} | 1.00 |"
    );
    println!(
        "| raw consume + produce the 80% clicks, no pipeline | {forward:.0} | {:.2} |",
        forward / raw_best
    );
    println!(
        "| worker, filter + map (80% written back; start-up {filter_map_startup:.2}s excluded) | {filter_map:.0} | {:.2} |",
        filter_map / raw_best
    );
    println!(
        "| worker, keyBy + 1m tumbling count (start-up {window_startup:.2}s excluded) | {window:.0} | {:.2} |",
        window / raw_best
    );

    report_checkpoint();
}

fn report_checkpoint() {
    let mb = env_or("BENCH_STATE_MB", 100);
    let (size, serialize, total) = checkpoint_state(mb);
    println!(
        "\ncheckpoint of {:.0} MB of window state to the local S3 server: {total:.2}s (serialize {serialize:.2}s, compress + upload {:.2}s)",
        size as f64 / 1e6,
        total - serialize
    );
}
