//! A windowed-count job over a generated click stream, with everything a worker test needs:
//! topics, the job manifest, the generated events and the expected output.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::{
    reference::{self, Event, EventKind, Expected, WindowResult, Windows},
    stack_env, unique_name,
    worker::{Consumed, create_topic, read_topic},
};

/// Partitions of the input topic.
pub const PARTITIONS: i32 = 4;
const USERS: i32 = 12;
const T0: i64 = 1_700_000_000_000;
/// The test job's windows: 10 s tumbling, 2 s out-of-orderness, 5 s allowed lateness.
pub const WINDOWS: Windows = Windows {
    size: 10_000,
    out_of_orderness: 2_000,
    lateness: 5_000,
};

/// One test's job, topics and storage.
pub struct Scenario {
    /// Job name (also the storage prefix).
    pub name: String,
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Dead-letter topic.
    pub dead_letter: String,
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// The manifest file.
    pub job_file: PathBuf,
    /// Directory for logs.
    pub dir: PathBuf,
}

impl Scenario {
    /// Creates the topics and writes the job manifest.
    pub async fn new(prefix: &str) -> Self {
        let env = stack_env();
        let name = unique_name(prefix);
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let scenario = Self {
            input: format!("{name}-in"),
            output: format!("{name}-out"),
            dead_letter: format!("{name}-dlq"),
            bootstrap: env.kafka_bootstrap.clone(),
            job_file: dir.join("job.yaml"),
            dir,
            name,
        };
        create_topic(&scenario.bootstrap, &scenario.input, PARTITIONS).await;
        create_topic(&scenario.bootstrap, &scenario.output, PARTITIONS).await;
        create_topic(&scenario.bootstrap, &scenario.dead_letter, 1).await;
        let manifest = format!(
            r#"apiVersion: streamjob.dev/v1alpha1
kind: StreamJob
metadata:
  name: {name}
  namespace: tests
spec:
  source:
    kafka:
      bootstrapServers: "{bootstrap}"
      topic: {input}
  pipeline:
    - name: clicks
      filter: '.type == "click"'
    - keyBy: .user
    - name: per-10s
      window:
        size: 10s
        timestamp: .ts
        maxOutOfOrderness: 2s
        allowedLateness: 5s
        aggregates:
          - {{name: clicks, function: count}}
          - {{name: amount, function: sum, of: .amount}}
  sink:
    kafka:
      topic: {output}
  deadLetter:
    topic: {dlq}
  checkpoint:
    storage: s3://{bucket}/{name}
    interval: 1s
    retained: 3
"#,
            name = scenario.name,
            bootstrap = scenario.bootstrap,
            input = scenario.input,
            output = scenario.output,
            dlq = scenario.dead_letter,
            bucket = env.s3_bucket,
        );
        std::fs::write(&scenario.job_file, manifest).expect("write job manifest");
        scenario
    }

    /// A log file path for worker run `n`.
    pub fn log(&self, n: usize) -> PathBuf {
        self.dir.join(format!("worker-{n}.log"))
    }

    /// Every window result on the output topic, in offset order per partition.
    pub fn output_results(&self) -> Vec<WindowResult> {
        read_topic(&self.bootstrap, &self.output)
            .iter()
            .map(parse_result)
            .collect()
    }

    /// Records on the dead-letter topic.
    pub fn dead_letters(&self) -> Vec<Consumed> {
        read_topic(&self.bootstrap, &self.dead_letter)
    }

    /// Polls the output topic until its final results equal `expected`, or fails with the
    /// difference after `timeout`. Returns every result read.
    pub async fn await_results(&self, expected: &Expected, timeout: Duration) -> Vec<WindowResult> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let results = self.output_results();
            let finals = finals(&results);
            if finals == expected.finals {
                return results;
            }
            if std::time::Instant::now() > deadline {
                let missing: Vec<_> = expected
                    .finals
                    .iter()
                    .filter(|(k, v)| finals.get(*k) != Some(*v))
                    .take(10)
                    .collect();
                let extra: Vec<_> = finals
                    .iter()
                    .filter(|(k, _)| !expected.finals.contains_key(*k))
                    .take(10)
                    .collect();
                panic!(
                    "output does not match the reference after {timeout:?}: {} of {} windows \
                     differ or are missing (first: {missing:?}); unexpected windows: {extra:?}; \
                     logs in {}",
                    expected
                        .finals
                        .iter()
                        .filter(|(k, v)| finals.get(*k) != Some(*v))
                        .count(),
                    expected.finals.len(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A window result record of the test job's output.
pub fn parse_result(record: &Consumed) -> WindowResult {
    let v: serde_json::Value = serde_json::from_str(&record.value)
        .unwrap_or_else(|e| panic!("output record is not JSON ({e}): {}", record.value));
    assert_eq!(
        v["key"].as_str(),
        Some(record.key.as_str()),
        "result key field equals the record key"
    );
    WindowResult {
        key: record.key.clone(),
        start: v["windowStart"].as_i64().expect("windowStart"),
        count: v["clicks"].as_i64().expect("clicks"),
        sum: v["amount"].as_i64().expect("amount"),
    }
}

/// The last result per (key, window) in output order.
pub fn finals(results: &[WindowResult]) -> BTreeMap<(String, i64), WindowResult> {
    results
        .iter()
        .map(|r| ((r.key.clone(), r.start), r.clone()))
        .collect()
}

/// Results grouped by key, in emission order (results of one key share an output partition,
/// so their order is the emission order).
pub fn per_key(results: &[WindowResult]) -> BTreeMap<String, Vec<WindowResult>> {
    let mut out = BTreeMap::<String, Vec<WindowResult>>::new();
    for r in results {
        out.entry(r.key.clone()).or_default().push(r.clone());
    }
    out
}

/// Asserts that every emitted result is one the reference emits (duplicates in the output are
/// allowed only as identical re-emissions).
pub fn assert_only_reference_emissions(results: &[WindowResult], expected: &Expected) {
    let valid: BTreeSet<_> = expected.emissions.iter().collect();
    let invalid: Vec<_> = results
        .iter()
        .filter(|r| !valid.contains(r))
        .take(10)
        .collect();
    assert!(
        invalid.is_empty(),
        "output holds results no correct run emits: {invalid:?}"
    );
}

/// A generated stream: `per_partition` events per partition (plus one final event per
/// partition far ahead in event time, so every earlier window fires), with out-of-order,
/// late, filtered and poison records. Deterministic for a seed.
pub fn generate(seed: u64, per_partition: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut seq = 0;
    for partition in 0..PARTITIONS {
        let users: Vec<String> = (0..USERS)
            .filter(|u| u % PARTITIONS == partition)
            .map(|u| format!("u{u}"))
            .collect();
        let mut now = T0;
        for _ in 0..per_partition {
            now += rng.random_range(20..80);
            let roll: f64 = rng.random();
            let ts = if roll < 0.10 {
                now - rng.random_range(0..1_900) // out of order, within the bound
            } else if roll < 0.13 {
                now - rng.random_range(3_000..15_000) // late: some within lateness, some not
            } else {
                now
            };
            let kind = match rng.random_range(0..100) {
                0..=84 => EventKind::Click,
                85..=94 => EventKind::View,
                95..=97 => EventKind::InvalidJson,
                _ => EventKind::BadAmount,
            };
            let user = users[rng.random_range(0..users.len())].clone();
            seq += 1;
            events.push(Event {
                partition,
                user,
                ts,
                amount: rng.random_range(1..100),
                kind,
                seq,
            });
        }
        seq += 1;
        events.push(Event {
            partition,
            user: users[0].clone(),
            ts: now + 60_000,
            amount: 1,
            kind: EventKind::Click,
            seq,
        });
    }
    events
}

/// The expected output of `events` for the test job.
pub fn expected(events: &[Event]) -> Expected {
    reference::expected(events, WINDOWS)
}
