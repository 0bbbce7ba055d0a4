//! End-to-end throughput benchmark (not a test): a raw librdkafka consumer against the worker
//! on the same preloaded topic, in the same run, plus the time to checkpoint ~100 MB of state
//! to the local S3 server. Prints the ratios; `docs/benchmarks.md` records the results.
//!
//! Run with `scripts/bench` (starts the local stack, builds in release, runs this).
//! Environment: `BENCH_RECORDS` (default 5 000 000), `BENCH_PARTITIONS` (default 8),
//! `BENCH_ROUNDS` (default 3: every run is repeated, interleaved, and each reports its best),
//! `BENCH_WARMUP` (default 3: unmeasured consume + produce passes that warm the broker's JIT up
//! first), `BENCH_THREADS` (set: print each run's CPU per thread of its process and the
//! broker), `BENCH_PROCESSING_THREADS` (default `1,2`: each worker run with each of these
//! numbers of processing threads), `BENCH_COMPARE_WORKER` (the path of another worker binary,
//! e.g. built from an earlier commit, measured in the same rounds), `BENCH_STATE_MB` (default
//! 100), `BENCH_ONLY` (a comma-separated subset of `raw`, `forward`, `filter-map`,
//! `filter-map-10`, `window`, `checkpoint`, e.g. to profile one), `STREAMJOB_KAFKA_PROPERTIES` (a directory of librdkafka
//! properties, one file each, given to the baselines and the worker alike), plus the stack's
//! exports (`tests/stack/stack env`).

// A benchmark harness: any failure aborts the run with its message.
#![allow(clippy::unwrap_used)]

/// The worker's allocator (see its `main.rs`), so that the baselines' librdkafka clients
/// allocate and free records the way the worker's do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{
    collections::{BTreeMap, BTreeSet},
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
    producer::{BaseRecord, Producer},
};
use streamjob_api::PipelineStep;
use streamjob_worker::{
    checkpoint::CheckpointStore,
    kafka::{self, SourceConsumer},
    paths::JobPaths,
    pipeline::{InputRecord, Outputs, PartitionState, Pipeline, RecordStats},
    snapshot::{SnapshotHeader, SnapshotId, StateEncoding},
    storage::Storage,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `name` made unique to this process and call (topics, groups and jobs of repeated runs).
fn unique(name: &str) -> String {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}-{}-{run}", std::process::id())
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
    // Loading is not measured: large batches, written as fast as the broker takes them.
    let props = BTreeMap::from(
        [("linger.ms", "50"), ("batch.size", "1000000")].map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let producer = kafka::sink_producer(bootstrap, &props).unwrap();
    let start = Instant::now();
    for i in 0..records {
        let (key, value) = record(i);
        let r = BaseRecord::to(topic)
            .partition((i % partitions as usize) as i32)
            .key(key.as_bytes())
            .payload(value.as_bytes());
        kafka::send(&producer, r);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    assert_eq!(
        producer.context().failures(),
        0,
        "preload delivered everything"
    );
    println!(
        "preloaded {records} records into {topic} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
}

/// A consumer assigned to every partition of `topic` from the beginning, reporting the end of
/// each partition: the worker's own consumer (`kafka::source_consumer`), so the baselines get
/// exactly the worker's fetch tuning and any properties given to the run.
fn consumer_from_beginning(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> SourceConsumer {
    let mut props = kafka_props();
    props.insert("enable.partition.eof".to_owned(), "true".to_owned());
    let group = unique(group);
    let consumer = kafka::source_consumer(bootstrap, &group, &props).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Extra librdkafka properties for every client of the run, baselines and workers alike:
/// the directory in `STREAMJOB_KAFKA_PROPERTIES` (which the worker reads too), if set.
fn kafka_props() -> BTreeMap<String, String> {
    std::env::var_os("STREAMJOB_KAFKA_PROPERTIES")
        .map(|dir| kafka::load_properties(std::path::Path::new(&dir)).unwrap())
        .unwrap_or_default()
}

/// The practical limit: one thread reading every partition as fast as librdkafka hands
/// records over, touching each payload.
fn raw_consumer(bootstrap: &str, topic: &str, partitions: i32, records: usize) -> Measured {
    let consumer = consumer_from_beginning(bootstrap, "bench-raw", topic, partitions);
    let cpu = CpuMeter::start(std::process::id());
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
    let measured = cpu.stop(count as f64 / secs, records);
    assert_eq!(count, records, "raw consumer read every record");
    std::hint::black_box(bytes);
    measured
}

/// Consume + produce without a pipeline: forwards the click records (80%, found by a byte
/// search) unchanged through the worker's own producer (`kafka::sink_producer`, same
/// settings). The floor for any job that writes most of its input back to Kafka on the same
/// machine as the broker.
fn raw_forward(bootstrap: &str, topic: &str, partitions: i32, records: usize) -> Measured {
    let out_topic = unique(&format!("{topic}-forward-out"));
    create_topic(bootstrap, &out_topic, partitions);
    let consumer = consumer_from_beginning(bootstrap, "bench-forward", topic, partitions);
    let producer = kafka::sink_producer(bootstrap, &kafka_props()).unwrap();
    let cpu = CpuMeter::start(std::process::id());
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
                    // Forwarded with the input's timestamp: no clock read, as the worker
                    // stamps outputs with its cached clock.
                    if let Some(timestamp) = m.timestamp().to_millis() {
                        r = r.timestamp(timestamp);
                    }
                    kafka::send(&producer, r);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            None => {}
        }
    }
    // Timed, like the worker, until every record was read and handed to the producer; the
    // records still queued in librdkafka are then delivered (and checked) off the clock.
    let measured = cpu.stop(count as f64 / start.elapsed().as_secs_f64(), records);
    producer.flush(Duration::from_secs(60)).unwrap();
    assert_eq!(
        producer.context().failures(),
        0,
        "forwarder delivered everything"
    );
    assert_eq!(count, records, "forwarder read every record");
    delete_topic(bootstrap, &out_topic);
    measured
}

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let (admin, rt) = admin(bootstrap);
    let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = rt.block_on(admin.create_topics(&[topic], &AdminOptions::new()));
    for r in results.unwrap() {
        r.unwrap();
    }
}

/// Deletes a run's output topic, so repeated runs do not fill the broker's disk.
fn delete_topic(bootstrap: &str, topic: &str) {
    let (admin, rt) = admin(bootstrap);
    let results = rt.block_on(admin.delete_topics(&[topic], &AdminOptions::new()));
    for r in results.unwrap() {
        r.unwrap();
    }
}

fn admin(bootstrap: &str) -> (AdminClient<DefaultClientContext>, tokio::runtime::Runtime) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (admin, tokio::runtime::Runtime::new().unwrap())
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
    binary: &str,
    name: &str,
    pipeline_yaml: &str,
    bootstrap: &str,
    topic: &str,
    records: usize,
    threads: usize,
) -> (Measured, f64) {
    let run = unique(name);
    let dir = std::env::temp_dir().join(format!("bench-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let job = dir.join("job.yaml");
    let out_topic = format!("{topic}-{run}-out");
    create_topic(bootstrap, &out_topic, 8);
    std::fs::write(
        &job,
        format!(
            "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: bench-{run}, namespace: bench}}\n\
             spec:\n  source: {{kafka: {{bootstrapServers: \"{bootstrap}\", topic: {topic}}}}}\n  pipeline:\n{pipeline_yaml}\n\
             \x20 sink: {{kafka: {{topic: {out_topic}}}}}\n  checkpoint: {{storage: \"s3://{bucket}/bench\", interval: 10s}}\n",
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
    let mut child: Child = Command::new(binary)
        .args([
            "run",
            "--job",
            job.to_str().unwrap(),
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("RUST_LOG", "warn")
        .env("STREAMJOB_PROCESSING_THREADS", threads.to_string())
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
    let cpu = CpuMeter::start(child.id());
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
    let measured = cpu.stop(records as f64 / secs, records);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    delete_topic(bootstrap, &out_topic);
    (measured, startup)
}

/// One run: its rate, and the CPU it took per record, in its own process (consumer, hot loop
/// and producer threads; for the baselines the benchmark's process) and in the broker. CPU
/// per record is disturbed far less than the rate by the load of others on a shared machine.
struct Measured {
    rate: f64,
    cpu_us: f64,
    broker_us: f64,
    /// With `BENCH_THREADS`: the threads that took the most CPU, one line per process.
    threads: String,
}

/// CPU seconds of a process and of the local broker since a start, from `/proc` (Linux).
struct CpuMeter {
    pid: u32,
    broker: Option<u32>,
    start: (f64, f64),
    /// With `BENCH_THREADS` set: CPU seconds per thread name of both processes at the start.
    threads: Option<(ThreadCpu, ThreadCpu)>,
}

impl CpuMeter {
    fn start(pid: u32) -> Self {
        let broker = broker_pid();
        let start = (cpu_seconds(pid), broker.map_or(f64::NAN, cpu_seconds));
        let threads = std::env::var_os("BENCH_THREADS")
            .map(|_| (thread_cpu(pid), broker.map(thread_cpu).unwrap_or_default()));
        Self {
            pid,
            broker,
            start,
            threads,
        }
    }

    fn stop(&self, rate: f64, records: usize) -> Measured {
        let per_record = |seconds: f64| seconds / records as f64 * 1e6;
        let threads = self
            .threads
            .as_ref()
            .map_or(String::new(), |(own, broker)| {
                let broker_now = self.broker.map(thread_cpu).unwrap_or_default();
                format!(
                    "{}{}",
                    thread_lines("own process", own, &thread_cpu(self.pid), records),
                    thread_lines("broker", broker, &broker_now, records)
                )
            });
        Measured {
            rate,
            cpu_us: per_record(cpu_seconds(self.pid) - self.start.0),
            broker_us: per_record(self.broker.map_or(f64::NAN, cpu_seconds) - self.start.1),
            threads,
        }
    }
}

/// User + system CPU seconds of a process (NaN when unreadable).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    stat.rsplit_once(')')
        .map_or(f64::NAN, |(_, rest)| cpu_fields(rest))
}

/// utime + stime in seconds from the fields after a `stat` line's command name (the 14th and
/// 15th fields of the line); NaN when unreadable.
fn cpu_fields(rest: &str) -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (field(11), field(12)) {
        (Some(user), Some(system)) => (user + system) / ticks,
        _ => f64::NAN,
    }
}

/// Runs `BENCH_WARMUP` (default 3) unmeasured consume + produce passes first, printing the
/// CPU the broker's JIT compilers took in each: a freshly started broker JVM spends more CPU
/// compiling its produce path than running it (measured: 0.6–0.8 µs per record in its
/// compiler threads against 0.2–0.3 in its request handlers in the first runs), which a
/// long-running broker does not. It never goes fully quiet here (0.15–0.6 µs per record over
/// eight passes of 2M records, each also creating and deleting a topic), so `BENCH_THREADS`
/// shows the compilers' share of every run.
fn warm_up_broker(bootstrap: &str, topic: &str, partitions: i32, records: usize) {
    let broker = broker_pid();
    let compiling = || -> f64 {
        broker.map(thread_cpu).map_or(0.0, |cpu| {
            cpu.iter()
                .filter(|(name, _)| name.contains("CompilerThre"))
                .map(|(_, seconds)| seconds)
                .sum()
        })
    };
    for pass in 1..=env_or("BENCH_WARMUP", 3) {
        let before = compiling();
        raw_forward(bootstrap, topic, partitions, records);
        let per_record = (compiling() - before) / records as f64 * 1e6;
        println!(
            "broker warm-up pass {pass}: its JIT compilers took {per_record:.3} µs per record"
        );
    }
}

/// CPU seconds per thread name (digits folded, so a pool's threads add up) of a process.
type ThreadCpu = BTreeMap<String, f64>;

fn thread_cpu(pid: u32) -> ThreadCpu {
    let mut cpu = ThreadCpu::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name: String = stat[open + 1..close]
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let seconds = cpu_fields(&stat[close + 1..]);
        *cpu.entry(name).or_default() += seconds;
    }
    cpu
}

/// The threads that took the most CPU between two samples, in µs per record (one line).
fn thread_lines(what: &str, start: &ThreadCpu, end: &ThreadCpu, records: usize) -> String {
    let mut spent: Vec<(&String, f64)> = end
        .iter()
        .map(|(name, s)| (name, s - start.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, s)| *s > 0.0)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let list: Vec<String> = spent
        .iter()
        .take(8)
        .map(|(name, s)| format!("{name} {:.2}", s / records as f64 * 1e6))
        .collect();
    format!("    {what} threads, µs/record: {}\n", list.join(", "))
}

/// The local stack's Kafka broker (a JVM running `kafka.Kafka`), if there is one.
fn broker_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let is_broker = cmdline.split(|&b| b == 0).any(|arg| arg == b"kafka.Kafka");
            is_broker.then_some(pid)
        })
}

/// SplitMix64: a well-spread 64-bit value per input.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Timings of one checkpoint of a large state, and of the steps around it.
struct CheckpointTimes {
    /// State size as JSON (the first snapshot format), the size the bench aims at.
    json_bytes: usize,
    /// State size in the snapshot format (postcard), and as written (zstd).
    binary_bytes: usize,
    written_bytes: u64,
    /// What the processing loop pays per running partition: a copy-on-write clone.
    clone: f64,
    /// Encoding the state: snapshot format, and JSON for comparison.
    encode: f64,
    encode_json: f64,
    /// Compressing and writing the encoded state (create-if-absent PUT).
    compress_upload: f64,
    /// Reading it back, decompressing and decoding: what a new owner pays (and JSON's decode
    /// for comparison).
    restore: f64,
    decode_json: f64,
}

/// Builds a window state of about `mb` MB (as JSON) and times one checkpoint of it to S3
/// and its restore.
fn checkpoint_state(mb: usize) -> CheckpointTimes {
    let steps: Vec<PipelineStep> = serde_yaml::from_str(
        "- keyBy: .k\n- window: {size: 1h, timestamp: .ts, aggregates: [{name: n, function: count}, {name: s, function: sum, of: .v}, {name: m, function: max, of: .v}]}",
    )
    .unwrap();
    let pipeline = Pipeline::compile(&steps).unwrap();
    let mut state = pipeline.new_state();
    let (mut out, mut stats) = (Outputs::default(), RecordStats::default());
    let mut i = 0u64;
    let mut json = Vec::new();
    while json.len() < mb << 20 {
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
        json = serde_json::to_vec(&state).unwrap();
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
    let timed = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    let clone = timed(&mut || drop(std::hint::black_box(state.clone())));
    let encode_json = timed(&mut || json = serde_json::to_vec(&state).unwrap());
    let decode_json = timed(&mut || {
        let decoded = PartitionState::decode(StateEncoding::Json, &json).unwrap();
        assert!(decoded == state);
    });
    let mut bytes = Vec::new();
    let encode = timed(&mut || bytes = state.encode().unwrap());
    let header = SnapshotHeader {
        partition: 0,
        id: SnapshotId {
            epoch: 1,
            next_offset: i as i64,
        },
        created_ms: 0,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut written_bytes = 0;
    let compress_upload = timed(&mut || {
        written_bytes = rt
            .block_on(checkpoints.write_checkpoint(&header, &bytes))
            .unwrap();
    });
    let restore = timed(&mut || {
        let restored = rt
            .block_on(checkpoints.restore_latest(0, 1))
            .unwrap()
            .unwrap();
        let decoded = PartitionState::decode(restored.encoding, &restored.state).unwrap();
        assert!(decoded == state);
    });
    println!(
        "  state: {i} keys, {:.1} MB as JSON, {:.1} MB encoded, {:.1} MB written (zstd)",
        json.len() as f64 / 1e6,
        bytes.len() as f64 / 1e6,
        written_bytes as f64 / 1e6
    );
    CheckpointTimes {
        json_bytes: json.len(),
        binary_bytes: bytes.len(),
        written_bytes: written_bytes as u64,
        clone,
        encode,
        encode_json,
        compress_upload,
        restore,
        decode_json,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches.
    }
    // `BENCH_ONLY=filter-map` (a comma-separated list of raw, forward, filter-map,
    // filter-map-10, window, checkpoint) runs only those parts, e.g. under a profiler; ratios
    // need `raw`.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |part: &str| {
        only.as_deref()
            .is_none_or(|list| list.split(',').any(|p| p.trim() == part))
    };
    if ["raw", "forward", "filter-map", "filter-map-10", "window"]
        .iter()
        .any(|part| wanted(part))
    {
        report_throughput(&wanted);
    }
    if wanted("checkpoint") {
        report_checkpoint();
    }
}

/// Every rate measured for one kind of run.
struct Kind {
    label: String,
    runs: Vec<Measured>,
    /// Whether its ratio to consume + produce means something (it writes 80% back).
    produces: bool,
}

impl Kind {
    fn new(label: &str, produces: bool) -> Self {
        Self {
            label: label.to_owned(),
            runs: Vec::new(),
            produces,
        }
    }

    fn best(&self) -> f64 {
        self.runs.iter().map(|r| r.rate).fold(f64::NAN, f64::max)
    }

    /// The least CPU per record over the rounds (own process, broker).
    fn least_cpu(&self) -> (f64, f64) {
        let least = |f: fn(&Measured) -> f64| self.runs.iter().map(f).fold(f64::NAN, f64::min);
        (least(|r| r.cpu_us), least(|r| r.broker_us))
    }

    fn record(&mut self, run: Measured) {
        println!(
            "  {}: {:.0} records/s, CPU {:.2} µs/record (broker {:.2})",
            self.label, run.rate, run.cpu_us, run.broker_us
        );
        print!("{}", run.threads);
        self.runs.push(run);
    }
}

const FILTER_MAP: &str = "    - filter: '.type == \"click\"'\n    - map: '{user: .user, n: 1}'";
const FILTER_MAP_SELECTIVE: &str = "    - filter: '.n < 10'\n    - map: '{user: .user, n: 1}'";
const WINDOW: &str = "    - keyBy: .user\n    - window: {size: 1m, timestamp: .ts, aggregates: [{name: clicks, function: count}]}";

fn report_throughput(wanted: &dyn Fn(&str) -> bool) {
    let bootstrap = required("STREAMJOB_KAFKA_BOOTSTRAP");
    let records = env_or("BENCH_RECORDS", 5_000_000);
    let partitions = env_or("BENCH_PARTITIONS", 8) as i32;
    let rounds = env_or("BENCH_ROUNDS", 3);
    let topic = format!("bench-input-{records}-{partitions}");
    preload(&bootstrap, &topic, partitions, records);
    warm_up_broker(&bootstrap, &topic, partitions, records);

    // The worker binary built with this benchmark, and optionally another one (e.g. built from
    // an earlier commit) measured in the same rounds.
    let mut binaries = vec![(
        String::new(),
        env!("CARGO_BIN_EXE_streamjob-worker").to_owned(),
    )];
    if let Ok(other) = std::env::var("BENCH_COMPARE_WORKER") {
        binaries.push((format!(" [{other}]"), other));
    }
    let mut raw = Kind::new("raw librdkafka consumer", false);
    let mut forward = Kind::new("raw consume + produce the 80% clicks, no pipeline", true);
    // Each worker run with each number of processing threads in `BENCH_PROCESSING_THREADS`.
    let thread_counts: Vec<usize> = std::env::var("BENCH_PROCESSING_THREADS")
        .unwrap_or_else(|_| "1,2".to_owned())
        .split(',')
        .map(|n| n.trim().parse().expect("BENCH_PROCESSING_THREADS: numbers"))
        .collect();
    let mut workers: Vec<(Kind, &str, &str, &str, usize)> = Vec::new();
    for (suffix, binary) in &binaries {
        for (part, label, pipeline) in [
            (
                "filter-map",
                "worker, filter + map (80% written back)",
                FILTER_MAP,
            ),
            // The same steps with a selective filter: how far the rate depends on the
            // write-back rather than on the pipeline.
            (
                "filter-map-10",
                "worker, filter + map (10% written back)",
                FILTER_MAP_SELECTIVE,
            ),
            ("window", "worker, keyBy + 1m tumbling count", WINDOW),
        ] {
            if !wanted(part) {
                continue;
            }
            for &threads in &thread_counts {
                let label = format!("{label}, {threads} processing thread(s){suffix}");
                let kind = Kind::new(&label, part == "filter-map");
                workers.push((kind, part, pipeline, binary, threads));
            }
        }
    }
    // Rounds interleave the kinds, so a burst of load on this shared machine hits one run of
    // each kind rather than every run of one; each kind reports its best.
    for round in 1..=rounds {
        println!("round {round} of {rounds}");
        if wanted("raw") {
            raw.record(raw_consumer(&bootstrap, &topic, partitions, records));
        }
        if wanted("forward") {
            forward.record(raw_forward(&bootstrap, &topic, partitions, records));
        }
        for (kind, part, pipeline, binary, threads) in &mut workers {
            let (run, startup) = worker(
                binary, part, pipeline, &bootstrap, &topic, records, *threads,
            );
            kind.record(run);
            println!("    (start-up {startup:.2}s excluded)");
        }
    }
    let (raw_best, forward_best) = (raw.best(), forward.best());
    println!(
        "\n{records} records, {partitions} partitions, ~{} B each; best of {rounds} rounds",
        record(1).1.len()
    );
    println!(
        "| run | records/s (every round) | best | ratio to raw consume | ratio to raw consume + produce | CPU µs/record: own process, broker (least of the rounds) |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    // Kinds that `BENCH_ONLY` left out have no runs and no row.
    let kinds = [&raw, &forward]
        .into_iter()
        .chain(workers.iter().map(|(kind, ..)| kind))
        .filter(|kind| !kind.runs.is_empty());
    for kind in kinds {
        let best = kind.best();
        let every: Vec<String> = kind.runs.iter().map(|r| format!("{:.0}", r.rate)).collect();
        let to_forward = if kind.produces {
            format!("{:.2}", best / forward_best)
        } else {
            String::new()
        };
        let (cpu, broker) = kind.least_cpu();
        println!(
            "| {} | {} | {best:.0} | {:.2} | {to_forward} | {cpu:.2}, {broker:.2} |",
            kind.label,
            every.join(", "),
            best / raw_best
        );
    }
    if !forward.runs.is_empty() {
        print_write_back_bound(&forward, raw_best);
    }
}

/// The most any job that writes 80% of its input back can reach on this machine: the
/// forwarder's CPU per record (its own and the broker's, least of the rounds) spread over every
/// core, against the raw consumer's rate. A pipeline that cost nothing would still pay the
/// forwarder's consume and produce path, and the broker shares these cores.
fn print_write_back_bound(forward: &Kind, raw_best: f64) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let (own, broker) = forward.least_cpu();
    let bound = cores as f64 * 1e6 / (own + broker);
    println!(
        "\nbound for 80% written back: {cores} cores / ({own:.2} + {broker:.2}) µs per record (the forwarder, own + broker) = {bound:.0} records/s = {:.2} of raw consume, with a pipeline that cost nothing",
        bound / raw_best
    );
}

fn report_checkpoint() {
    let mb = env_or("BENCH_STATE_MB", 100);
    let t = checkpoint_state(mb);
    println!(
        "\ncheckpoint of {:.0} MB of window state (as JSON; {:.0} MB encoded, {:.1} MB written) to the local S3 server: {:.2}s (encode {:.2}s, compress + upload {:.2}s); restore (read, decompress, decode) {:.2}s; the loop's copy-on-write clone {:.6}s; JSON for comparison: encode {:.2}s, decode {:.2}s",
        t.json_bytes as f64 / 1e6,
        t.binary_bytes as f64 / 1e6,
        t.written_bytes as f64 / 1e6,
        t.encode + t.compress_upload,
        t.encode,
        t.compress_upload,
        t.restore,
        t.clone,
        t.encode_json,
        t.decode_json,
    );
}
