//! Running `streamjob-worker` processes and talking to the topics around them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::Headers,
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
};

use crate::{reference::Event, unique_name, workspace_bin};

/// Path of the worker binary built by `cargo build` (scripts/test builds it first).
pub fn worker_bin() -> PathBuf {
    workspace_bin("streamjob-worker")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("can bind an ephemeral port")
        .port()
}

/// A running worker process.
pub struct Worker {
    child: Child,
    /// Its metrics port.
    pub port: u16,
    /// File receiving its stderr (logs).
    pub log: PathBuf,
}

impl Worker {
    /// Starts `streamjob-worker run --job JOB` with logs appended to `log`.
    pub fn start_job(job: &Path, log: &Path) -> Self {
        Self::start_job_with_threads(job, log, 1)
    }

    /// [`Worker::start_job`] with `threads` processing threads.
    pub fn start_job_with_threads(job: &Path, log: &Path, threads: u16) -> Self {
        let threads = threads.to_string();
        Self::start(
            &[
                "run",
                "--job",
                job.to_str().expect("utf-8 path"),
                "--processing-threads",
                &threads,
            ],
            log,
            &[],
        )
    }

    /// Starts the worker with `args`, extra environment `env`, logs appended to `log`.
    pub fn start(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("can open the worker log");
        let child = Command::new(worker_bin())
            .args(args)
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .envs(env.iter().copied())
            .env("RUST_LOG", "info,streamjob::sink=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("worker starts");
        Self {
            child,
            port,
            log: log.to_path_buf(),
        }
    }

    /// SIGKILLs the worker.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERMs the worker and waits (up to `timeout`) for it to exit; returns its exit code.
    pub fn terminate(mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "worker did not exit within {timeout:?} of SIGTERM; log: {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The value of metric series `series` (full name with labels), if exposed.
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&http_get(self.port, "/metrics")?, series)
    }

    /// The next offset it will process on `partition` (`streamjob_processed_offset`).
    pub fn processed_offset(&self, partition: i32) -> Option<f64> {
        self.metric(&format!(
            "streamjob_processed_offset{{partition=\"{partition}\"}}"
        ))
    }

    /// HTTP status of `path` on the worker's port.
    pub fn status_of(&self, path: &str) -> Option<u16> {
        let response = http_get_raw(self.port, path)?;
        response.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get_raw(port: u16, path: &str) -> Option<String> {
    http_get_raw_from("127.0.0.1", port, path)
}

fn http_get_raw_from(host: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect((host, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The body of `GET path` on 127.0.0.1:`port` (HTTP/1.0, no client library needed).
pub fn http_get(port: u16, path: &str) -> Option<String> {
    http_get_from("127.0.0.1", port, path)
}

/// The body of `GET path` on `host`:`port` (a pod's IP, say).
pub fn http_get_from(host: &str, port: u16, path: &str) -> Option<String> {
    let response = http_get_raw_from(host, port, path)?;
    Some(response.split_once("\r\n\r\n")?.1.to_owned())
}

/// Parses one series' value out of a Prometheus exposition.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Creates `topic` with `partitions` partitions.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_topics");
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("creating topic {t} failed: {e}"));
    }
}

/// An idempotent producer for test input.
pub fn producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `events` to `topic` (each to its partition, keyed by user) and flushes.
pub fn produce(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, events: &[Event]) {
    send_all(producer, topic, events);
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Hands `events` to `producer` for `topic` (each to its partition, keyed by user).
fn send_all(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, events: &[Event]) {
    for event in events {
        let payload = event.payload();
        let mut record = BaseRecord::to(topic)
            .partition(event.partition)
            .key(&event.user)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
    }
}

/// `events` round-robin over their partitions (each partition's order kept), so that every
/// partition receives records for as long as they are produced.
pub fn interleaved(events: &[Event]) -> Vec<Event> {
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

/// Produces `events` interleaved over their partitions in `chunks` chunks, `pause` apart, on
/// a thread of its own: a steady stream for a while. Chunks are not flushed one by one (a
/// flush took up to a few hundred milliseconds, which set the pace instead of `pause`); the
/// producer's linger sends each within milliseconds, and the end flushes them all.
pub fn produce_paced(
    bootstrap: &str,
    topic: &str,
    events: &[Event],
    chunks: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let (bootstrap, topic, events) = (bootstrap.to_owned(), topic.to_owned(), interleaved(events));
    std::thread::spawn(move || {
        let producer = producer(&bootstrap);
        for chunk in events.chunks(events.len() / chunks.max(1) + 1) {
            send_all(&producer, &topic, chunk);
            std::thread::sleep(pause);
        }
        producer.flush(Duration::from_secs(30)).expect("flush");
    })
}

/// A consumed record: key, value and headers.
#[derive(Clone, Debug)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Key, lossy UTF-8.
    pub key: String,
    /// Value, lossy UTF-8.
    pub value: String,
    /// Headers, values lossy UTF-8.
    pub headers: BTreeMap<String, String>,
}

/// Reads every record currently in `topic` (all partitions, in offset order per partition).
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut at_end = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (at_end.len() as i32) < partitions {
        assert!(Instant::now() < deadline, "timed out reading {topic}");
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consume failed: {e}"),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    partition: m.partition(),
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    headers,
                });
            }
        }
    }
    out
}

/// Grows `topic` to `partitions` partitions.
pub async fn add_partitions(bootstrap: &str, topic: &str, partitions: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_partitions(
            &[rdkafka::admin::NewPartitions::new(topic, partitions)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create_partitions");
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("adding partitions to {t} failed: {e}"));
    }
}

/// The local S3 server's bucket, configured from the stack's environment.
pub fn s3_store() -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(crate::stack_env().s3_bucket)
        .build()
        .expect("the stack's S3 settings are valid")
}

/// The object path in the test bucket of an `s3://bucket/path` URL.
pub fn s3_path_of(url: &str) -> object_store::path::Path {
    let (_, rest) = url.split_once("://").expect("a URL with a scheme");
    let (_, path) = rest
        .split_once('/')
        .expect("a URL with a path after the bucket");
    path.into()
}

/// Every object under `prefix`.
pub async fn list_objects(
    store: &object_store::aws::AmazonS3,
    prefix: &object_store::path::Path,
) -> Vec<object_store::path::Path> {
    use futures::TryStreamExt as _;
    use object_store::ObjectStore as _;
    store
        .list(Some(prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .expect("listing the bucket works")
}
