//! Test builders for `StreamJob` fixtures: `StreamJob::test("name").parallelism(4)`.

use kube::api::ObjectMeta;

use crate::{
    CheckpointSpec, JobState, KafkaSink, KafkaSource, PipelineStep, SavepointsSpec, Sink, Source,
    StartPosition, StreamJob, StreamJobSpec, UpgradeSpec,
};

impl StreamJob {
    /// A valid job named `name` in namespace `default`: one worker reading topic `input` from
    /// `127.0.0.1:9092` and writing to topic `output`, with an empty pipeline.
    pub fn test(name: &str) -> Self {
        let spec = StreamJobSpec {
            parallelism: 1,
            image: None,
            image_pull_secrets: Vec::new(),
            source: Source {
                kafka: KafkaSource {
                    bootstrap_servers: "127.0.0.1:9092".to_owned(),
                    topic: "input".to_owned(),
                    start_from: StartPosition::Earliest,
                    group_id: None,
                    secret_ref: None,
                },
            },
            pipeline: Vec::new(),
            sink: Sink {
                kafka: Some(KafkaSink {
                    topic: "output".to_owned(),
                    bootstrap_servers: None,
                }),
                log: None,
            },
            checkpoint: CheckpointSpec::default(),
            dead_letter: None,
            state: JobState::Running,
            restore_from: None,
            savepoints: SavepointsSpec::default(),
            upgrade: UpgradeSpec::default(),
            processing_threads: 1,
            resources: None,
        };
        let mut job = StreamJob::new(name, spec);
        job.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("default".to_owned()),
            ..ObjectMeta::default()
        };
        job
    }

    /// Sets `spec.parallelism`.
    pub fn parallelism(mut self, parallelism: i32) -> Self {
        self.spec.parallelism = parallelism;
        self
    }

    /// Sets the source topic.
    pub fn topic(mut self, topic: &str) -> Self {
        self.spec.source.kafka.topic = topic.to_owned();
        self
    }

    /// Sets the bootstrap servers of the source.
    pub fn bootstrap(mut self, servers: &str) -> Self {
        self.spec.source.kafka.bootstrap_servers = servers.to_owned();
        self
    }

    /// Sets the checkpoint storage URL.
    pub fn storage(mut self, url: &str) -> Self {
        self.spec.checkpoint.storage = url.to_owned();
        self
    }

    /// Appends a pipeline step.
    pub fn step(mut self, step: PipelineStep) -> Self {
        self.spec.pipeline.push(step);
        self
    }

    /// Sets `spec.state`.
    pub fn state(mut self, state: JobState) -> Self {
        self.spec.state = state;
        self
    }
}

impl PipelineStep {
    /// A `filter` step.
    pub fn filter(expr: &str) -> Self {
        Self {
            filter: Some(expr.to_owned()),
            ..Self::default()
        }
    }

    /// A `map` step.
    pub fn map(expr: &str) -> Self {
        Self {
            map: Some(expr.to_owned()),
            ..Self::default()
        }
    }

    /// A `keyBy` step.
    pub fn key_by(expr: &str) -> Self {
        Self {
            key_by: Some(expr.to_owned()),
            ..Self::default()
        }
    }
}
